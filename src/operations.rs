//! What a DBA does by habit loses nothing: a restore, and DROP EXTENSION.
//!
//! **A restore is told apart from ordinary writes by facts no ordinary role can
//! fake: the statement being run is a `COPY … FROM` (what `pg_restore` and a
//! dump replayed by `psql` send for table data) into deal_store's table whose
//! trigger asks, and the role running it is a superuser, both outside any
//! SECURITY DEFINER function and as the current user.** Rows another table's
//! COPY writes through someone's trigger or function, a `COPY (…) TO`, and
//! anything run through SPI inside another statement are ordinary writes, and
//! so is the COPY Citus sends a worker for a statement on the coordinator (an
//! `INSERT … SELECT` arrives so, and a restore too: a logical dump of a Citus
//! database restores into plain PostgreSQL; a cluster is restored node by node).
//! While it holds, deal_store's triggers take the rows as the dump holds them: no audit entry is written again, the
//! who / when columns, checksums and fact histories are kept, and a deal's
//! owner is not added to its team a second time (the team is in the dump). A
//! superuser could switch the triggers off anyway; anyone else's COPY is an
//! ordinary write, checked and audited like an INSERT, so replaying a dump as a
//! non-superuser cannot forge a history row or a log entry.
//!
//! **A DROP that would take deal_store is refused while a deal exists** (an
//! event trigger at `ddl_command_start`, which sees the statement before
//! anything is dropped): `DROP EXTENSION deal_store`, a `CASCADE` drop of an
//! extension it needs (pg_trgm, plpgsql) or of a schema holding one, `DROP
//! SCHEMA deal_store`, and `DROP OWNED BY` the role owning any of them. A
//! superuser who means it sets `deal_store.allow_drop = on` first.
use crate::errors::{raise, raise_hinted};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

thread_local! {
    /// The GUC nest level at which a restore's COPY switched its own triggers off
    /// (`session_replication_role = replica`), until the statement ends.
    static REPLICA_LEVEL: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
    /// the (sub)transaction nesting depth at which the switch was made
    static REPLICA_DEPTH: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Registers the callbacks that forget a switch an abort undid.
pub fn init() {
    // SAFETY: plain functions registered once per backend
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(_event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    REPLICA_LEVEL.set(None);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // SAFETY: reads this backend's transaction state
    let depth = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    let ends = event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB || event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB;
    if ends && REPLICA_LEVEL.get().is_some() && REPLICA_DEPTH.get() >= depth {
        REPLICA_LEVEL.set(None); // the end of the subtransaction that switched popped its level
    }
}

/// The table that a superuser's `COPY … FROM`, the statement the active portal
/// runs, loads: None for any other statement, role or caller.
fn restore_target() -> Option<pg_sys::Oid> {
    // on Citus a worker receives the coordinator's INSERT … SELECT (and COPY) as
    // Citus's COPY into the shard: the coordinator's statement, an ordinary write
    if crate::shard::citus_task() {
        return None;
    }
    // SAFETY: ActivePortal is this backend's running portal or NULL; its statement list
    // and the nodes in it are the portal's own, alive while it runs
    unsafe {
        let portal = pg_sys::ActivePortal;
        if portal.is_null() || (*portal).commandTag != pg_sys::CommandTag::CMDTAG_COPY {
            return None;
        }
        let stmts = (*portal).stmts;
        if stmts.is_null() || (*stmts).length != 1 {
            return None;
        }
        let stmt = (*(*stmts).elements).ptr_value as *mut pg_sys::Node;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_PlannedStmt {
            return None;
        }
        let utility = (*(stmt as *mut pg_sys::PlannedStmt)).utilityStmt;
        if utility.is_null() || (*utility).type_ != pg_sys::NodeTag::T_CopyStmt {
            return None;
        }
        let copy = utility as *mut pg_sys::CopyStmt;
        if !(*copy).is_from || (*copy).relation.is_null() {
            return None;
        }
        let outer = pg_sys::GetOuterUserId();
        if !pg_sys::superuser_arg(outer) || pg_sys::GetUserId() != outer {
            return None;
        }
        let oid = pg_sys::RangeVarGetRelidExtended((*copy).relation, pg_sys::NoLock as _, pg_sys::RVROption::RVR_MISSING_OK as _, None, std::ptr::null_mut());
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// True when `rel` is one of deal_store's tables.
pub fn in_deal_store(rel: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups by oid and name, missing_ok
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"deal_store".as_ptr(), true);
        schema != pg_sys::InvalidOid && pg_sys::get_rel_namespace(rel) == schema
    }
}

/// True while a superuser restores rows of `rel` with COPY (see the module documentation).
///
/// The first row of such a COPY also switches the rest of the statement to
/// `session_replication_role = replica`: the rows are taken as they are, in any
/// order (a parallel `pg_restore` loads a table before the one it refers to),
/// without a trigger or a foreign-key check per row. The statement trigger
/// `deal_store_restored` (enabled ALWAYS) switches it back when the COPY ends;
/// an error ends the switch with the transaction.
pub fn restoring(rel: pg_sys::Oid) -> bool {
    let restoring = restore_target() == Some(rel) && in_deal_store(rel);
    if restoring && REPLICA_LEVEL.get().is_none() {
        // SAFETY: as fmgr does for a function's SET clause: a nest level of our own, popped by
        // restored() at the end of the statement or by the transaction's abort; the caller is a superuser
        let level = unsafe { crate::settings::push_setting(c"session_replication_role", c"replica", pg_sys::GucContext::PGC_SUSET) };
        REPLICA_LEVEL.set(Some(level));
        // SAFETY: reads this backend's transaction state
        REPLICA_DEPTH.set(unsafe { pg_sys::GetCurrentTransactionNestLevel() });
    }
    restoring
}

/// Statement trigger `deal_store_restored` (AFTER INSERT, enabled ALWAYS): ends
/// the switch a restore's COPY made (see [`restoring`]).
#[pg_trigger]
fn restored<'a>(_trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    if let Some(level) = REPLICA_LEVEL.get() {
        // SAFETY: a probe of the current nest level (opened and closed at once); the level
        // restoring() opened is popped (and forgotten) only while it is the innermost one: a
        // statement nested deeper (in a function with a SET clause) leaves it to the COPY's own end
        unsafe {
            let probe = pg_sys::NewGUCNestLevel();
            pg_sys::AtEOXact_GUC(true, probe);
            if level == probe - 1 {
                pg_sys::AtEOXact_GUC(true, level);
                REPLICA_LEVEL.set(None);
            }
        }
    }
    Ok(None)
}

/// `deal_store_internal._restoring()`: true while a superuser's COPY FROM loads one of
/// deal_store's tables (for the PL/pgSQL triggers; switches nothing).
#[pg_extern(schema = "deal_store_internal", name = "_restoring", stable, parallel_safe)]
fn restoring_sql() -> bool {
    restore_target().is_some_and(in_deal_store)
}

/// What a DROP statement names, when it may take deal_store with it.
enum Dropping {
    /// `DROP EXTENSION names [CASCADE]`
    Extensions(Vec<String>, bool),
    /// `DROP SCHEMA names [CASCADE]`
    Schemas(Vec<String>, bool),
    /// `DROP OWNED BY roles`
    Owned(Vec<pg_sys::Oid>),
}

/// The names in a list of String nodes.
///
/// # Safety
/// `list` must be NULL or a List of nodes.
unsafe fn names_of(list: *mut pg_sys::List) -> Vec<String> {
    let mut names = Vec::new();
    if list.is_null() {
        return names;
    }
    // SAFETY: a List of `length` cells, each a node pointer (caller)
    unsafe {
        for i in 0..(*list).length as usize {
            let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
            if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_String {
                names.push(CStr::from_ptr((*(node as *mut pg_sys::String)).sval).to_string_lossy().into_owned());
            }
        }
    }
    names
}

/// What the DROP statement an event trigger fires for names; None for another command.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger call.
unsafe fn dropping(fcinfo: pg_sys::FunctionCallInfo) -> Option<Dropping> {
    // SAFETY: an event trigger is called with its EventTriggerData as the context (caller);
    // the parse tree and its lists are alive for the call
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "deal_store_internal._guard_drop must be called as an event trigger",
                None,
            );
        }
        let tree = (*(context as *mut pg_sys::EventTriggerData)).parsetree;
        if tree.is_null() {
            return None;
        }
        match (*tree).type_ {
            pg_sys::NodeTag::T_DropStmt => {
                let drop = tree as *mut pg_sys::DropStmt;
                let cascade = (*drop).behavior == pg_sys::DropBehavior::DROP_CASCADE;
                match (*drop).removeType {
                    pg_sys::ObjectType::OBJECT_EXTENSION => Some(Dropping::Extensions(names_of((*drop).objects), cascade)),
                    pg_sys::ObjectType::OBJECT_SCHEMA => Some(Dropping::Schemas(names_of((*drop).objects), cascade)),
                    _ => None,
                }
            }
            pg_sys::NodeTag::T_DropOwnedStmt => {
                let list = (*(tree as *mut pg_sys::DropOwnedStmt)).roles;
                let mut roles = Vec::new();
                if !list.is_null() {
                    for i in 0..(*list).length as usize {
                        let spec = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RoleSpec;
                        roles.push(pg_sys::get_rolespec_oid(spec, true));
                    }
                }
                Some(Dropping::Owned(roles))
            }
            _ => None,
        }
    }
}

/// The extensions deal_store cannot live without: those it requires, and those
/// owning an object one of its own objects depends on (plpgsql, for its language).
const NEEDED_EXTENSIONS: &str = "
    SELECT d.refobjid FROM pg_catalog.pg_depend d
    WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
      AND d.objid OPERATOR(pg_catalog.=) x.oid
      AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
    UNION
    SELECT o.refobjid FROM pg_catalog.pg_depend m
    JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) m.classid AND d.objid OPERATOR(pg_catalog.=) m.objid
                                AND d.deptype OPERATOR(pg_catalog.=) 'n'
    JOIN pg_catalog.pg_depend o ON o.classid OPERATOR(pg_catalog.=) d.refclassid AND o.objid OPERATOR(pg_catalog.=) d.refobjid
                                AND o.deptype OPERATOR(pg_catalog.=) 'e'
                                AND o.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
    WHERE m.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
      AND m.refobjid OPERATOR(pg_catalog.=) x.oid AND m.deptype OPERATOR(pg_catalog.=) 'e'";

/// True when the DROP would take deal_store (the extension, its schema, or what it needs) with it.
fn takes_deal_store(what: &Dropping) -> bool {
    let (sql, arg): (String, pgrx::datum::DatumWithOid<'_>) = match what {
        Dropping::Extensions(names, cascade) => (
            format!(
                "SELECT x.extname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                     OR ({cascade} AND EXISTS (SELECT 1 FROM pg_catalog.pg_extension e
                                               WHERE e.extname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                                                 AND e.oid IN ({NEEDED_EXTENSIONS})))
                 FROM pg_catalog.pg_extension x WHERE x.extname OPERATOR(pg_catalog.=) 'deal_store'"
            ),
            names.to_vec().into(),
        ),
        Dropping::Schemas(names, cascade) => (
            format!(
                "SELECT 'deal_store' OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                     OR ({cascade} AND EXISTS (SELECT 1 FROM pg_catalog.pg_extension e
                                               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
                                               WHERE n.nspname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                                                 AND e.oid IN ({NEEDED_EXTENSIONS})))
                 FROM pg_catalog.pg_extension x WHERE x.extname OPERATOR(pg_catalog.=) 'deal_store'"
            ),
            names.to_vec().into(),
        ),
        Dropping::Owned(roles) => (
            format!(
                "SELECT x.extowner OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'deal_store'
                                AND n.nspowner OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]))
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extowner OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])
                                AND e.oid IN ({NEEDED_EXTENSIONS}))
                 FROM pg_catalog.pg_extension x WHERE x.extname OPERATOR(pg_catalog.=) 'deal_store'"
            ),
            roles.to_vec().into(),
        ),
    };
    crate::spi::get_one::<bool>(&sql, &[arg]).ok().flatten().unwrap_or(false)
}

/// Refuses a DROP that would take deal_store while it holds deals.
fn guard(what: &Dropping) {
    if crate::settings::ALLOW_DROP.get() {
        return;
    }
    // SAFETY: a catalog lookup by name, missing_ok
    let installed = unsafe { pg_sys::get_extension_oid(c"deal_store".as_ptr(), true) } != pg_sys::InvalidOid;
    if !installed || !takes_deal_store(what) {
        return;
    }
    let counts = crate::spi::connect(|client| {
        client
            .select(
                "SELECT (SELECT pg_catalog.count(*) FROM deal_store.deals), (SELECT pg_catalog.count(*) FROM deal_store.facts),
                        (SELECT pg_catalog.count(*) FROM deal_store.deal_activity_log)",
                None,
                &[],
            )
            .ok()
            .and_then(|t| t.first().get_three::<i64, i64, i64>().ok())
    });
    let (deals, facts, entries) = match counts {
        Some((Some(d), Some(f), Some(e))) => (d, f, e),
        _ => return, // the tables are gone already: nothing left to keep
    };
    if deals == 0 {
        return;
    }
    raise_hinted(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        "this would drop deal_store: every deal, its facts and the audit log",
        Some(format!("deal_store holds {deals} deal(s), {facts} fact row(s) and {entries} log entries. Nothing was dropped.")),
        Some(
            "Keep what you need first (pg_dump, or deal_store.export_deal for each deal). \
             To drop anyway, a superuser runs SET deal_store.allow_drop = on, then the DROP."
                .into(),
        ),
    );
}

/// The V1 call convention record of [`deal_store_guard_drop`].
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_deal_store_guard_drop() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// `deal_store_internal._guard_drop()`: the event trigger function (ddl_command_start,
/// DROP EXTENSION) that refuses to drop deal_store while it holds deals.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn deal_store_guard_drop(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL calls this as an event trigger (its SQL declaration returns event_trigger)
    if let Some(what) = unsafe { dropping(fcinfo) } {
        guard(&what);
    }
    pg_sys::Datum::from(0)
}

/// The version of this library (Cargo.toml).
const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

thread_local! {
    /// whether this session has compared the library's version with the catalog's
    static VERSION_CHECKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The installed catalog's version (`pg_extension.extversion`), None without the extension.
fn catalog_version() -> Option<String> {
    crate::spi::get_one::<String>(
        "SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'deal_store'",
        &[],
    )
    .ok()
    .flatten()
}

/// A WARNING when the library serves a catalog of another version (a library
/// installed, `ALTER EXTENSION deal_store UPDATE` not run yet); once per session.
pub fn check_version_once() {
    if VERSION_CHECKED.replace(true) {
        return;
    }
    warn_if_differs(catalog_version().as_deref());
}

fn warn_if_differs(catalog: Option<&str>) {
    if let Some(catalog) = catalog.filter(|c| *c != LIBRARY_VERSION) {
        pgrx::warning!(
            "deal_store: the library is version {LIBRARY_VERSION} but this database's extension is at {catalog}; \
             run ALTER EXTENSION deal_store UPDATE"
        );
    }
}

/// `deal_store.version()`: the library's version and the version of the
/// extension installed in this database; a WARNING when they differ.
#[pg_extern(volatile)]
fn version() -> TableIterator<'static, (name!(library, String), name!(catalog, Option<String>))> {
    let catalog = catalog_version();
    warn_if_differs(catalog.as_deref());
    TableIterator::once((LIBRARY_VERSION.to_string(), catalog))
}
