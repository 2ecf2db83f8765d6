//! What a DBA does by habit loses nothing: a restore, and DROP EXTENSION.
//!
//! **A restore is told apart from ordinary writes by two facts no ordinary role
//! can fake: the statement is a `COPY ... FROM` (what `pg_restore` and a dump
//! replayed by `psql` send for table data), and the role outside any SECURITY
//! DEFINER function is a superuser.** While both hold, deal_store's triggers
//! take the rows as the dump holds them: no audit entry is written again, the
//! who / when columns, checksums and fact histories are kept, and a deal's
//! owner is not added to its team a second time (the team is in the dump). A
//! superuser could switch the triggers off anyway; anyone else's COPY is an
//! ordinary write, checked and audited like an INSERT, so replaying a dump as a
//! non-superuser cannot forge a history row or a log entry.
//!
//! **DROP EXTENSION deal_store is refused while a deal exists** (an event
//! trigger at `ddl_command_start`, which sees the statement before anything is
//! dropped, also when deal_store would go with a `CASCADE` of an extension it
//! requires). A superuser who means it sets `deal_store.allow_drop = on` first.
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
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB && REPLICA_LEVEL.get().is_some() && REPLICA_DEPTH.get() >= depth {
        REPLICA_LEVEL.set(None); // the abort of the subtransaction that switched popped its level
    }
}

/// True while a superuser restores rows with COPY (see the module documentation).
///
/// The first row of such a COPY also switches the rest of the statement to
/// `session_replication_role = replica`: the rows are taken as they are, in any
/// order (a parallel `pg_restore` loads a table before the one it refers to),
/// without a trigger or a foreign-key check per row. The statement trigger
/// `deal_store_restored` (enabled ALWAYS) switches it back when the COPY ends;
/// an error ends the switch with the transaction.
pub fn restoring() -> bool {
    // SAFETY: ActivePortal is this backend's running portal, or NULL
    let copy = unsafe {
        let portal = pg_sys::ActivePortal;
        !portal.is_null() && (*portal).commandTag == pg_sys::CommandTag::CMDTAG_COPY
    };
    // SAFETY: role lookups of this backend's outer role (outside SECURITY DEFINER functions)
    let restoring = copy && unsafe { pg_sys::superuser_arg(pg_sys::GetOuterUserId()) };
    if restoring && REPLICA_LEVEL.get().is_none() {
        // SAFETY: as fmgr does for a function's SET clause: a nest level of our own, popped by
        // restored() at the end of the statement or by the transaction's abort; the caller is a superuser
        let level = unsafe {
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"session_replication_role".as_ptr(),
                c"replica".as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            level
        };
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
    if let Some(level) = REPLICA_LEVEL.take() {
        // SAFETY: pops the nest level restoring() opened in this statement; the levels of
        // functions called since then were popped when they returned
        unsafe { pg_sys::AtEOXact_GUC(true, level) };
    }
    Ok(None)
}

/// `deal_store._restoring()`: [`restoring`] for the PL/pgSQL triggers.
#[pg_extern(name = "_restoring", stable, parallel_safe)]
fn restoring_sql() -> bool {
    restoring()
}

/// The extensions a `DROP EXTENSION` names, and whether it cascades; None for another command.
///
/// # Safety
/// `fcinfo` must be the call info of an event trigger call.
unsafe fn dropped_extensions(fcinfo: pg_sys::FunctionCallInfo) -> Option<(Vec<String>, bool)> {
    // SAFETY: an event trigger is called with its EventTriggerData as the context (caller)
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "deal_store._guard_drop must be called as an event trigger",
                None,
            );
        }
        let data = context as *mut pg_sys::EventTriggerData;
        let tree = (*data).parsetree;
        if tree.is_null() || (*tree).type_ != pg_sys::NodeTag::T_DropStmt {
            return None;
        }
        let drop = tree as *mut pg_sys::DropStmt;
        if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
            return None;
        }
        let list = (*drop).objects;
        let mut names = Vec::new();
        if !list.is_null() {
            for i in 0..(*list).length as usize {
                let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
                if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_String {
                    let s = node as *mut pg_sys::String;
                    names.push(CStr::from_ptr((*s).sval).to_string_lossy().into_owned());
                }
            }
        }
        Some((names, (*drop).behavior == pg_sys::DropBehavior::DROP_CASCADE))
    }
}

/// Refuses a DROP EXTENSION that would take deal_store while it holds deals.
fn guard(names: &[String], cascade: bool) {
    if crate::settings::ALLOW_DROP.get() {
        return;
    }
    let ours = names.iter().any(|n| n == "deal_store");
    let through = || {
        cascade
            && crate::spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                 JOIN pg_catalog.pg_extension x ON x.oid OPERATOR(pg_catalog.=) d.objid
                 JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
                 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                   AND x.extname OPERATOR(pg_catalog.=) 'deal_store'
                   AND e.extname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]))",
                &[names.to_vec().into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false)
    };
    // SAFETY: a catalog lookup by name, missing_ok
    let installed = unsafe { pg_sys::get_extension_oid(c"deal_store".as_ptr(), true) } != pg_sys::InvalidOid;
    if !installed || !(ours || through()) {
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
        "DROP EXTENSION deal_store would delete every deal, its facts and the audit log",
        Some(format!("deal_store holds {deals} deal(s), {facts} fact row(s) and {entries} log entries. Nothing was dropped.")),
        Some(
            "Keep what you need first (pg_dump, or deal_store.export_deal for each deal). \
             To drop anyway, a superuser runs SET deal_store.allow_drop = on, then DROP EXTENSION."
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

/// `deal_store._guard_drop()`: the event trigger function (ddl_command_start,
/// DROP EXTENSION) that refuses to drop deal_store while it holds deals.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn deal_store_guard_drop(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL calls this as an event trigger (its SQL declaration returns event_trigger)
    if let Some((names, cascade)) = unsafe { dropped_extensions(fcinfo) } {
        guard(&names, cascade);
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
