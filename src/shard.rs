//! Where a trigger's rows live: the table itself on plain PostgreSQL, or one
//! shard of a Citus table (`deal_store.facts_102099` on a worker).
//!
//! A trigger on a shard must not name the distributed table: a query on it is
//! planned by Citus again, from inside a query on a shard, and fails or reads
//! other nodes. So triggers ask here what their relation *is* (the table it
//! belongs to, which gives the log's `entity_type`) and which relation holds
//! the co-located rows of another table (the log entry of a fact goes to the
//! log's shard on the same node, covering the same hash range).
//!
//! On plain PostgreSQL (no `pg_dist_shard`) every relation is its own table and
//! nothing is looked up; on Citus the answer is read from Citus's metadata once
//! per relation and session.
use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

/// What a trigger's relation is.
#[derive(Clone)]
pub struct Placement {
    /// the table the rows belong to (the distributed table for a shard, else
    /// the relation itself): its oid, schema and name
    pub table_oid: pg_sys::Oid,
    pub schema: Rc<str>,
    pub table: Rc<str>,
    /// the shard this relation is, when it is one
    pub shard: Option<i64>,
    /// a shard of a Citus reference table (one copy per node)
    pub reference: bool,
}

/// A relation found to be a Citus shard.
struct Shard {
    table_oid: pg_sys::Oid,
    table: Rc<str>,
    id: i64,
    reference: bool,
}

thread_local! {
    /// per relation: the shard it is, or None for a relation of its own. Only
    /// that is cached, never a relation's own name (a RENAME shows at once); a
    /// shard keeps its identity for its life.
    static SHARDS: RefCell<HashMap<pg_sys::Oid, Option<Rc<Shard>>>> = RefCell::new(HashMap::new());
    /// (shard, table) -> the co-located shard's qualified name
    static COLOCATED: RefCell<HashMap<(i64, &'static str), Rc<str>>> = RefCell::new(HashMap::new());
    /// reference table -> its shard's qualified name
    static REFERENCE: RefCell<HashMap<&'static str, Rc<str>>> = RefCell::new(HashMap::new());
    /// the log's shard for entries without a deal, if on this node (asked once)
    static LOCAL_NIL_LOG: RefCell<Option<Option<Rc<str>>>> = const { RefCell::new(None) };
}

/// True when Citus's metadata is in this database.
fn citus_metadata() -> bool {
    // SAFETY: a catalog lookup by name; with missing_ok it returns InvalidOid instead of raising
    unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// `deal_store_internal._distributed()`: true when Citus distributes deal_store's deal
/// tables (`pending_changes` is hashed), the answer SQL and Rust share.
#[pg_extern(schema = "deal_store_internal", name = "_distributed", stable, parallel_safe)]
fn distributed_sql() -> bool {
    distributed("pending_changes")
}

/// True when Citus distributes (hashes) `deal_store.<table>`; false on plain PostgreSQL.
pub fn distributed(table: &str) -> bool {
    citus_metadata()
        && crate::spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
                            WHERE p.logicalrelid = pg_catalog.to_regclass(pg_catalog.format('deal_store.%I', $1))
                              AND p.partmethod = 'h')",
            &[table.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The shard the relation `oid` (named `schema.name`) is, if it is one; looked
/// up once per relation and session.
fn shard_of(oid: pg_sys::Oid, schema: &str, name: &str) -> Option<Rc<Shard>> {
    if let Some(known) = SHARDS.with(|m| m.borrow().get(&oid).cloned()) {
        return known;
    }
    // a shard is named <table>_<shardid> in its table's schema (Citus's naming);
    // the metadata confirms it, so a table that merely ends in digits stays itself
    let found = citus_metadata().then(|| {
        crate::spi::connect(|client| {
            client
                .select(
                    "SELECT s.logicalrelid::pg_catalog.oid, c.relname::pg_catalog.text, s.shardid, p.partmethod = 'n'
                     FROM pg_catalog.pg_dist_shard s
                     JOIN pg_catalog.pg_class c ON c.oid = s.logicalrelid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = s.logicalrelid
                     WHERE n.nspname = $1
                       AND s.shardid = pg_catalog.substring($2, '_([0-9]+)$')::pg_catalog.int8
                       AND c.relname::pg_catalog.text || '_' || s.shardid::pg_catalog.text = $2",
                    Some(1),
                    &[schema.into(), name.into()],
                )
                .ok()
                .and_then(|mut t| t.next())
                .and_then(|r| {
                    Some(Rc::new(Shard {
                        table_oid: r.get::<pg_sys::Oid>(1).ok().flatten()?,
                        table: r.get::<String>(2).ok().flatten()?.into(),
                        id: r.get::<i64>(3).ok().flatten()?,
                        reference: r.get::<bool>(4).ok().flatten().unwrap_or(false),
                    }))
                })
        })
    });
    let found = found.flatten();
    SHARDS.with(|m| m.borrow_mut().insert(oid, found.clone()));
    found
}

/// What the relation `oid` (named `schema.name`) is.
pub fn placement(oid: pg_sys::Oid, schema: &str, name: &str) -> Placement {
    match shard_of(oid, schema, name) {
        Some(s) => {
            Placement { table_oid: s.table_oid, schema: schema.into(), table: s.table.clone(), shard: Some(s.id), reference: s.reference }
        }
        None => Placement { table_oid: oid, schema: schema.into(), table: name.into(), shard: None, reference: false },
    }
}

/// The qualified name of the shard of `deal_store.<table>` co-located with
/// shard `shard` (same hash range, so on the same node).
pub fn colocated(shard: i64, table: &'static str) -> Rc<str> {
    if let Some(n) = COLOCATED.with(|c| c.borrow().get(&(shard, table)).cloned()) {
        return n;
    }
    let name = crate::spi::get_one::<String>(
        "SELECT pg_catalog.format('%I.%I', 'deal_store', $2 || '_' || o.shardid::pg_catalog.text)
         FROM pg_catalog.pg_dist_shard s
         JOIN pg_catalog.pg_dist_shard o ON o.logicalrelid = pg_catalog.format('deal_store.%I', $2)::pg_catalog.regclass
                                        AND o.shardminvalue = s.shardminvalue
         WHERE s.shardid = $1",
        &[shard.into(), table.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("deal_store.{table} has no shard co-located with shard {shard}"),
            Some("Distribute deal_store with deal_store.distribute().".into()),
        )
    });
    let name: Rc<str> = name.into();
    COLOCATED.with(|c| c.borrow_mut().insert((shard, table), name.clone()));
    name
}

/// The qualified name of the one shard of the reference table
/// `deal_store.<table>` (a copy of it is on every node).
pub fn reference_shard(table: &'static str) -> Rc<str> {
    if let Some(n) = REFERENCE.with(|c| c.borrow().get(table).cloned()) {
        return n;
    }
    let name = crate::spi::get_one::<String>(
        "SELECT pg_catalog.format('%I.%I', 'deal_store', $1 || '_' || s.shardid::pg_catalog.text)
         FROM pg_catalog.pg_dist_shard s
         JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = s.logicalrelid AND p.partmethod = 'n'
         WHERE s.logicalrelid = pg_catalog.format('deal_store.%I', $1)::pg_catalog.regclass",
        &[table.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("deal_store.{table} is not a reference table"),
            Some("Distribute deal_store with deal_store.distribute().".into()),
        )
    });
    let name: Rc<str> = name.into();
    REFERENCE.with(|c| c.borrow_mut().insert(table, name.clone()));
    name
}

/// The log's shard that holds the entries of `deal`, when its placement is on
/// this node (None: another node's). The nil uuid's answer (entries without a
/// deal) is kept for the session.
pub fn local_log_shard(deal: pgrx::Uuid) -> Option<Rc<str>> {
    let nil = deal == crate::audit::no_deal_uuid();
    if let Some(known) = nil.then(|| LOCAL_NIL_LOG.with(|c| c.borrow().clone())).flatten() {
        return known;
    }
    let name: Option<Rc<str>> = crate::spi::get_one::<String>(
        "SELECT (SELECT pg_catalog.format('%I.%I', 'deal_store', 'deal_activity_log_' || p.shardid::pg_catalog.text)
                 FROM pg_catalog.pg_dist_placement p
                 JOIN pg_catalog.pg_dist_local_group g ON g.groupid = p.groupid
                 WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column('deal_store.deal_activity_log', $1))",
        &[deal.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("the log's shard for deal {deal}: {e}"), None))
    .map(Into::into);
    if nil {
        LOCAL_NIL_LOG.with(|c| *c.borrow_mut() = Some(name.clone()));
    }
    name
}

/// `schema.name` of a relation, quoted as needed.
pub fn qualified(rel: &pgrx::PgRelation) -> String {
    pgrx::spi::quote_qualified_identifier(rel.namespace(), rel.name())
}

/// True when `name` is the trigger `base`, or its copy on a shard
/// (Citus names a shard's triggers `<trigger>_<shardid>`).
pub fn is_trigger(name: &std::ffi::CStr, base: &str) -> bool {
    let name = name.to_bytes();
    name.strip_prefix(base.as_bytes()).is_some_and(|rest| {
        rest.is_empty() || rest.strip_prefix(b"_").is_some_and(|id| !id.is_empty() && id.iter().all(u8::is_ascii_digit))
    })
}

/// What the relation `rel` is, by its oid (None: no such relation).
pub fn placement_of(rel: pg_sys::Oid) -> Option<Placement> {
    // SAFETY: catalog lookups by oid; NULL (no such relation) is handled, the names are copied at once
    let (schema, name) = unsafe {
        let name = pg_sys::get_rel_name(rel);
        if name.is_null() {
            return None;
        }
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(rel));
        if schema.is_null() {
            return None;
        }
        (CStr::from_ptr(schema).to_string_lossy().into_owned(), CStr::from_ptr(name).to_string_lossy().into_owned())
    };
    Some(placement(rel, &schema, &name))
}

/// The table a relation's rows belong to: the relation itself, or on Citus the
/// distributed table of a shard (`deal_store.facts_102099` -> `deal_store.facts`).
/// Triggers written in SQL identify their table with it instead of `TG_RELID`.
#[pg_extern(schema = "deal_store_internal", name = "_table_of", stable, strict, parallel_safe)]
fn table_of(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    placement_of(rel).map(|p| p.table_oid)
}

/// True on the Citus coordinator of a database whose deal tables Citus
/// distributes: the node whose transactions send statements to the workers.
/// Asked once per transaction by `access` (plain PostgreSQL: one catalog lookup).
pub fn coordinating() -> bool {
    citus_metadata()
        && crate::spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
                            WHERE p.logicalrelid = pg_catalog.to_regclass('deal_store.pending_changes') AND p.partmethod = 'h')
                    AND (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) = 0",
            &[],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Makes every node this transaction writes on see the settings `values`
/// (name, value) as the coordinator resolved them, for the rest of the
/// transaction: the triggers that write the log and the "who" columns run
/// there. Each is a `SET LOCAL` that Citus passes on to the workers the
/// transaction uses and will use (`citus.propagate_set_commands = local`, set
/// here whatever the session says); run inside a function call, as Citus needs
/// outside a transaction block. The coordinator's own settings are left as
/// they were.
pub fn carry(values: &[(&str, String)]) {
    let set = format!("SELECT {}._set_local($1, $2)", crate::spi::internal_schema());
    for (name, value) in values {
        if let Err(e) = crate::spi::run(&set, &[(*name).into(), value.as_str().into()]) {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("passing {name} on to the Citus workers: {e}"), None);
        }
    }
}

thread_local! {
    /// deal_store's own SET LOCAL is running (`_set_local`): the one Citus passes on
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// `deal_store_internal._set_local(setting, value)`: `SET LOCAL` of one of
/// deal_store's settings for the rest of the transaction, as the caller (the
/// superuser-only ones stay superuser-only). On Citus it is the one SET that
/// reaches the workers: it runs as a statement of its own, with Citus's
/// passing-on switched on (`citus.propagate_set_commands = local`) and the
/// call's statements kept in a distributed transaction block
/// (`citus.function_opens_transaction_block = on`), whatever the session says.
/// Any other SET stays on the node it runs on (see [`gate_settings`]).
#[pg_extern(schema = "deal_store_internal", name = "_set_local", volatile)]
fn set_local(setting: Option<&str>, value: Option<&str>) {
    const OURS: [&str; 7] = [
        "deal_store.actor",
        "deal_store.reason",
        "deal_store.run_id",
        "deal_store.hard_delete",
        "deal_store.audit_purge",
        "deal_store.importing_history",
        "deal_store.undeleting",
    ];
    let Some(setting) = setting.filter(|s| OURS.contains(s)) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "deal_store_internal._set_local sets deal_store.actor, reason, run_id, hard_delete, audit_purge, importing_history or undeleting, not {}",
                setting.unwrap_or("NULL")
            ),
            None,
        )
    };
    // the superuser-only ones are refused here, before Citus could pass them on
    const SUPERUSER_ONLY: [&str; 4] = ["deal_store.hard_delete", "deal_store.audit_purge", "deal_store.importing_history", "deal_store.undeleting"];
    // SAFETY: reads the current user's role attributes
    if SUPERUSER_ONLY.contains(&setting) && !unsafe { pg_sys::superuser() } {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to set parameter \"{setting}\""), None);
    }
    let sql = format!("SET LOCAL {setting} = {}", pgrx::spi::quote_literal(value.unwrap_or("")));
    let citus = citus_metadata();
    if citus {
        // SAFETY: NUL-terminated constants; a SET LOCAL of a user-settable Citus setting,
        // for the rest of the transaction
        unsafe {
            pg_sys::set_config_option(
                c"citus.function_opens_transaction_block".as_ptr(),
                c"on".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_LOCAL,
                true,
                0,
                false,
            );
        }
    }
    // SAFETY: a new GUC nest level, popped below (an error pops it with the (sub)transaction)
    let level = citus.then(|| unsafe { crate::settings::push_setting(c"citus.propagate_set_commands", c"local", pg_sys::GucContext::PGC_USERSET) });
    struct Done(Option<i32>);
    impl Drop for Done {
        fn drop(&mut self) {
            FORWARDING.set(false);
        }
    }
    FORWARDING.set(true);
    let done = Done(level);
    if let Err(e) = crate::spi::run(&sql, &[]) {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{sql}: {e}"), None);
    }
    if let Some(level) = done.0 {
        // SAFETY: pops exactly the nest level opened above; with isCommit the SET LOCAL
        // made inside it stays, the pushed setting goes back
        unsafe { pg_sys::AtEOXact_GUC(true, level) };
    }
}

/// The ProcessUtility hook's check for SET, RESET and SET TRANSACTION on
/// Citus: Citus passes such a statement on to every connection the transaction
/// has and will open on other nodes, those that API functions open as the
/// extension's owner included, and it sends the whole query string the
/// statement came in. Only deal_store's own `_set_local` is passed on; any
/// other runs with `citus.propagate_set_commands = none` (it takes effect on
/// this node alone). Returns the nest level to pop after the statement.
fn gate_settings(stmt: *const pg_sys::Node) -> Option<i32> {
    // SAFETY: the utility statement being run, read by its tag
    let is_set = unsafe { !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_VariableSetStmt };
    if !is_set || FORWARDING.get() || !citus_metadata() {
        return None;
    }
    // SAFETY: a new GUC nest level, popped by the hook after the statement (or by the abort)
    Some(unsafe { crate::settings::push_setting(c"citus.propagate_set_commands", c"none", pg_sys::GucContext::PGC_USERSET) })
}

/// True in a session Citus opened to run its tasks on this node (a query on a
/// shard, sent by a coordinator): Citus names such sessions `citus_internal gpid=…`.
pub fn citus_task() -> bool {
    // SAFETY: application_name is a GUC's C string, NULL or NUL-terminated; it is read, not kept
    let name = unsafe { pg_sys::application_name };
    // SAFETY: checked non-NULL; a GUC's value is NUL-terminated
    !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes().starts_with(b"citus_internal gpid=")
}

thread_local! {
    /// the post-parse-analysis and executor-start hooks installed before ours
    static PREVIOUS_ANALYZE: Cell<pg_sys::post_parse_analyze_hook_type> = const { Cell::new(None) };
    static PREVIOUS_START: Cell<pg_sys::ExecutorStart_hook_type> = const { Cell::new(None) };
    static PREVIOUS_UTILITY: Cell<pg_sys::ProcessUtility_hook_type> = const { Cell::new(None) };
}

/// Installs the checks of [`refuse_view_writes`], [`refuse_nested`] and [`utility`] (from
/// `_PG_init`; on Citus the library is in `shared_preload_libraries`, so they
/// see every statement). On plain PostgreSQL each returns at its first test.
pub fn init() {
    // SAFETY: PostgreSQL's hook chains, set once per process from _PG_init
    unsafe {
        PREVIOUS_ANALYZE.set(pg_sys::post_parse_analyze_hook);
        pg_sys::post_parse_analyze_hook = Some(refuse_view_writes);
        PREVIOUS_START.set(pg_sys::ExecutorStart_hook);
        pg_sys::ExecutorStart_hook = Some(refuse_nested);
        if citus_preloaded() {
            PREVIOUS_UTILITY.set(pg_sys::ProcessUtility_hook);
            pg_sys::ProcessUtility_hook = Some(utility);
        }
    }
}

/// A statement of a function, run in a session Citus opened to run a task on
/// this node (a query on a shard), outside a trigger, that reads deal_store's
/// tables themselves rather than this node's shards: a deal_store function that
/// Citus sent along inside the task (a subquery argument over a deal table, a
/// deal_store function in a query over one). Citus would refuse it as it runs
/// (a distributed query nested in a shard's: an internal error); it is refused
/// here, before it starts, with what to do instead. Checked at every start, so
/// plans cached earlier in the session (in a trigger, where such a statement
/// is allowed) are checked too. Triggers on shards and the policies' lookups
/// read the shards, and pass.
#[pg_guard]
unsafe extern "C-unwind" fn refuse_nested(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    if citus_task() {
        // SAFETY: the QueryDesc PostgreSQL is starting: its plan and source text are
        // alive for the call; debug_query_string is the task's statement or NULL
        unsafe { check_nested(&*query) };
    }
    // SAFETY: the executor chain with PostgreSQL's own arguments
    unsafe {
        match PREVIOUS_START.get() {
            Some(previous) => previous(query, eflags),
            None => pg_sys::standard_ExecutorStart(query, eflags),
        }
    }
}

/// See [`refuse_nested`].
///
/// # Safety
/// `query` is the QueryDesc of the statement being started.
unsafe fn check_nested(query: &pg_sys::QueryDesc) {
    // SAFETY: plain globals of this backend (a flag, a C string or NULL, read not
    // kept), the statement's own text, and pg_trigger_depth (no argument, a counter)
    let nested_call = unsafe {
        let top = pg_sys::debug_query_string;
        let own = query.sourceText;
        // a statement of a function (PL/pgSQL, SQL, SPI), not the task's own statement
        let nested = own.is_null() || top.is_null() || CStr::from_ptr(own) != CStr::from_ptr(top);
        nested && !pg_sys::creating_extension && pgrx::direct_function_call::<i32>(pg_sys::pg_trigger_depth, &[]).unwrap_or(0) == 0
    };
    if !nested_call || query.plannedstmt.is_null() {
        return;
    }
    // SAFETY: the statement's plan; its rtable is a List of the RangeTblEntry it reads
    // (views expanded), each alive with the plan; only plain fields are read
    let table = unsafe {
        let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*query.plannedstmt).rtable);
        let found = rtable.iter_ptr().find_map(|rte| {
            (!rte.is_null() && (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION).then(|| deal_store_table((*rte).relid)).flatten()
        });
        found
    };
    let Some(table) = table else { return };
    crate::errors::raise_hinted(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("a deal_store function cannot run inside a query Citus runs on a shard (it reads deal_store.{table})"),
        Some("Citus sends a query that reads one deal's shard to that shard's node with the function calls in it: a deal_store function given a subquery over a deal table (fact_history((SELECT id FROM deal_store.facts …))), or called in a query over one.".into()),
        Some("Read the value in a statement of its own, then pass it: SELECT id … \\gset in psql, a variable in PL/pgSQL or in the client.".into()),
    )
}

/// The ProcessUtility hook: a SET, RESET or SET TRANSACTION other than
/// deal_store's own stays on this node ([`gate_settings`]); after a SET of one
/// of deal_store's settings in a transaction block, the coordinator passes on
/// the actor, reason and run it resolves from them, checked.
///
/// Installed only where Citus is loaded with the server: plain PostgreSQL runs
/// its utility statements without it.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: a guarded call with the statement PostgreSQL is running
    let level = unsafe { before_utility(pstmt) };
    // SAFETY: the utility chain with PostgreSQL's own arguments (an error's abort pops
    // the nest level)
    unsafe {
        match PREVIOUS_UTILITY.get() {
            Some(previous) => previous(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        }
    }
    if level >= 0 {
        // SAFETY: a guarded call with the nest level before_utility opened
        unsafe { after_utility(pstmt, level) };
    }
}

/// True when the server loads Citus (`shared_preload_libraries`), read once in _PG_init.
fn citus_preloaded() -> bool {
    // SAFETY: a GUC lookup by a NUL-terminated name; the value is read at once, not kept
    unsafe {
        let v = pg_sys::GetConfigOption(c"shared_preload_libraries".as_ptr(), true, false);
        !v.is_null() && CStr::from_ptr(v).to_string_lossy().split(',').any(|l| l.trim().trim_matches('"') == "citus")
    }
}

/// [`gate_settings`] for the statement: the nest level to pop after it, or -1.
#[pg_guard]
unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) -> i32 {
    // SAFETY: the statement PostgreSQL is running; its utility node is read by its tag
    let stmt = unsafe { if pstmt.is_null() { std::ptr::null() } else { (*pstmt).utilityStmt as *const pg_sys::Node } };
    gate_settings(stmt).unwrap_or(-1)
}

/// Pops the nest level of [`gate_settings`] (the statement's own settings stay),
/// then passes on deal_store's settings a SET in a transaction block named.
#[pg_guard]
unsafe extern "C-unwind" fn after_utility(pstmt: *mut pg_sys::PlannedStmt, level: i32) {
    // SAFETY: pops exactly the nest level gate_settings opened; isCommit keeps what the
    // statement set there, the pushed setting goes back
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    // SAFETY: gate_settings opened a level only for a VariableSetStmt
    let ours = unsafe { names_own_setting((*pstmt).utilityStmt as *const pg_sys::VariableSetStmt) };
    // SAFETY: reads this backend's transaction state
    if ours && unsafe { pg_sys::IsTransactionBlock() } && !citus_task() && coordinating() {
        crate::access::carry_resolved();
    }
}

/// True when a VariableSetStmt names one of deal_store's settings (in any case,
/// as PostgreSQL matches names) or resets them all.
///
/// # Safety
/// `set` is a VariableSetStmt.
unsafe fn names_own_setting(set: *const pg_sys::VariableSetStmt) -> bool {
    // SAFETY: the caller's node; its name is NULL or NUL-terminated
    unsafe {
        let name = (*set).name;
        name.is_null() || CStr::from_ptr(name).to_bytes().to_ascii_lowercase().starts_with(b"deal_store.")
    }
}

/// True for a SET, SET LOCAL or RESET of one of deal_store's settings, and a
/// RESET ALL: statements Citus may pass on to the workers by itself.
///
/// # Safety
/// `query` is an analyzed query.
unsafe fn sets_own_setting(query: &pg_sys::Query) -> bool {
    if query.commandType != pg_sys::CmdType::CMD_UTILITY || query.utilityStmt.is_null() {
        return false;
    }
    // SAFETY: the caller's query; the node is a VariableSetStmt when its tag says so
    unsafe {
        (*query.utilityStmt).type_ == pg_sys::NodeTag::T_VariableSetStmt
            && names_own_setting(query.utilityStmt as *const pg_sys::VariableSetStmt)
    }
}

/// The name of relation `oid` when it is in schema deal_store.
fn deal_store_relation(oid: pg_sys::Oid) -> Option<String> {
    if !crate::operations::in_deal_store(oid) {
        return None;
    }
    // SAFETY: a catalog lookup by oid (NULL for no such relation); the name is copied at once
    unsafe {
        let name = pg_sys::get_rel_name(oid);
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// The name of `oid` when it is one of deal_store's tables (in schema
/// deal_store, not one of its Citus shards, which end in `_<shard id>`).
fn deal_store_table(oid: pg_sys::Oid) -> Option<String> {
    let name = deal_store_relation(oid)?;
    let shard = name.rsplit_once('_').is_some_and(|(_, id)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    (!shard).then_some(name)
}

/// A SET of one of deal_store's settings: [`crate::access::settings_touched`].
/// An UPDATE or DELETE through one of deal_store's views on a database that
/// Citus distributes: Citus does not modify views over its tables (an UPDATE
/// fails in its planner, a DELETE on a worker), so it is refused here, before
/// Citus plans it, with the statement on the table that does the same.
#[pg_guard]
unsafe extern "C-unwind" fn refuse_view_writes(pstate: *mut pg_sys::ParseState, query: *mut pg_sys::Query, jstate: *mut pg_sys::JumbleState) {
    if let Some(previous) = PREVIOUS_ANALYZE.get() {
        // SAFETY: the hook installed before ours, with PostgreSQL's own arguments
        unsafe { previous(pstate, query, jstate) };
    }
    // SAFETY: PostgreSQL passes the analyzed query; a utility statement's node is read by its tag
    if unsafe { sets_own_setting(&*query) } {
        crate::access::settings_touched();
        return;
    }
    // SAFETY: PostgreSQL passes the analyzed query; resultRelation indexes its range
    // table, a List of RangeTblEntry; only plain fields are read
    let view = unsafe {
        let q = &*query;
        let write = q.commandType == pg_sys::CmdType::CMD_UPDATE || q.commandType == pg_sys::CmdType::CMD_DELETE;
        if !write || q.resultRelation <= 0 || q.rtable.is_null() {
            return;
        }
        let rte = pg_sys::list_nth(q.rtable, q.resultRelation - 1) as *const pg_sys::RangeTblEntry;
        if rte.is_null() || (*rte).relkind != pg_sys::RELKIND_VIEW as std::ffi::c_char {
            return;
        }
        (*rte).relid
    };
    let Some(name) = deal_store_relation(view) else { return };
    if !distributed("pending_changes") {
        return;
    }
    let table = name.strip_prefix("active_").unwrap_or(&name);
    crate::errors::raise_hinted(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("UPDATE and DELETE through deal_store.{name} do not run on Citus"),
        Some("Citus does not modify views over distributed tables.".into()),
        Some(format!(
            "Write to the table: DELETE FROM deal_store.{table} WHERE … soft-deletes the rows (as UPDATE deal_store.{table} SET deleted_at = now() WHERE … does); on Citus the views are for reading."
        )),
    )
}
