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
    // the statements of the call run in a distributed transaction block on the workers,
    // where the SET LOCALs arrive, whatever the session says (a function call opens
    // one unless the session turned that off); for the rest of the transaction
    // SAFETY: NUL-terminated constants; a SET LOCAL of a user-settable Citus setting
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
    // SAFETY: a new GUC nest level; the abort-style AtEOXact_GUC below pops it and
    // every setting changed inside it (as PostgreSQL does around index builds)
    let level = unsafe { crate::settings::push_setting(c"citus.propagate_set_commands", c"local", pg_sys::GucContext::PGC_USERSET) };
    let set = format!("SELECT {}._set_local($1, $2)", crate::spi::internal_schema());
    for (name, value) in values {
        if let Err(e) = crate::spi::run(&set, &[(*name).into(), value.as_str().into()]) {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("passing {name} on to the Citus workers: {e}"), None);
        }
    }
    // SAFETY: pops exactly the nest level opened above, restoring what it changed here
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
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
}

/// Installs the checks of [`refuse_view_writes`] and [`refuse_nested`] (from
/// `_PG_init`; on Citus the library is in `shared_preload_libraries`, so they
/// see every statement). On plain PostgreSQL each returns at its first test.
pub fn init() {
    // SAFETY: PostgreSQL's hook chains, set once per process from _PG_init
    unsafe {
        PREVIOUS_ANALYZE.set(pg_sys::post_parse_analyze_hook);
        pg_sys::post_parse_analyze_hook = Some(refuse_view_writes);
        PREVIOUS_START.set(pg_sys::ExecutorStart_hook);
        pg_sys::ExecutorStart_hook = Some(refuse_nested);
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

/// A SET LOCAL, RESET or SET TRANSACTION that shares its query string with
/// statements other than settings, while Citus passes such statements on to the workers
/// (`citus.propagate_set_commands = local`): Citus sends the whole string, not
/// the statement, to every connection the transaction has and will open there,
/// also to the connections of API functions, which run as the extension's
/// owner. The string would run there again, with the owner's rights; it is
/// refused before it runs here.
///
/// # Safety
/// `pstate` and `query` are the parse state and analyzed query of one statement.
unsafe fn refuse_forwarded_strings(pstate: &pg_sys::ParseState, query: &pg_sys::Query) {
    if query.commandType != pg_sys::CmdType::CMD_UTILITY || query.utilityStmt.is_null() || pstate.p_sourcetext.is_null() {
        return;
    }
    // SAFETY: the caller's query; the node is a VariableSetStmt when its tag says so,
    // and its name is NULL or a NUL-terminated string
    let forwarded = unsafe {
        if (*query.utilityStmt).type_ != pg_sys::NodeTag::T_VariableSetStmt {
            return;
        }
        let set = &*(query.utilityStmt as *const pg_sys::VariableSetStmt);
        use pg_sys::VariableSetKind::*;
        match set.kind {
            VAR_SET_VALUE | VAR_SET_CURRENT | VAR_SET_DEFAULT => set.is_local,
            VAR_RESET | VAR_RESET_ALL => true,
            _ => !set.name.is_null() && CStr::from_ptr(set.name).to_bytes() == b"TRANSACTION",
        }
    };
    // SAFETY: a GUC lookup by a NUL-terminated name, missing_ok (NULL without Citus)
    let mode = unsafe { pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false) };
    // SAFETY: checked non-NULL; a GUC's value is NUL-terminated
    if !forwarded || mode.is_null() || unsafe { CStr::from_ptr(mode) }.to_bytes() != b"local" {
        return;
    }
    // SAFETY: the source text is NUL-terminated; the statement's location and length index it
    let text = unsafe { CStr::from_ptr(pstate.p_sourcetext) }.to_bytes();
    let from = usize::try_from(query.stmt_location).unwrap_or(0).min(text.len());
    let to = match usize::try_from(query.stmt_len) {
        Ok(0) | Err(_) => text.len(),
        Ok(n) => (from + n).min(text.len()),
    };
    if only_blanks(&text[..from]) && only_blanks(&text[to..]) {
        return;
    }
    // what Citus itself sends a worker as it opens a connection in a transaction
    // (BEGIN, its distributed transaction id, every SET LOCAL so far) is harmless
    // run again: settings, the start of a transaction or of a savepoint, and that id
    // SAFETY: the source text is NUL-terminated and parsed again as it was; the
    // result is a List of RawStmt whose stmt nodes are read by their tags
    let harmless = unsafe {
        let raw = pgrx::PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(pstate.p_sourcetext, pg_sys::RawParseMode::RAW_PARSE_DEFAULT));
        let all = raw.iter_ptr().all(|r| !r.is_null() && replays_harmlessly((*r).stmt));
        all
    };
    if harmless {
        return;
    }
    crate::errors::raise_hinted(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "on Citus, SET LOCAL, RESET and SET TRANSACTION must not share a query string with other statements",
        Some("Citus passes the whole string such a statement came in on to every node the transaction uses, where it would run again.".into()),
        Some("Send the statement alone, or use SELECT deal_store.set_actor(…) or set_config(…, true), which may share a string.".into()),
    )
}

/// True for a raw statement that changes nothing but settings and transaction
/// state when run again: a SET or RESET, BEGIN, START TRANSACTION, SAVEPOINT,
/// or `SELECT assign_distributed_transaction_id(…)` (Citus's own).
///
/// # Safety
/// `stmt` is NULL or a raw parse tree node.
unsafe fn replays_harmlessly(stmt: *const pg_sys::Node) -> bool {
    use pg_sys::NodeTag::*;
    if stmt.is_null() {
        return false;
    }
    // SAFETY: the caller's node, read by its tag; lists and strings of the raw parse tree
    unsafe {
        match (*stmt).type_ {
            T_VariableSetStmt => true,
            T_TransactionStmt => {
                use pg_sys::TransactionStmtKind::*;
                matches!((*(stmt as *const pg_sys::TransactionStmt)).kind, TRANS_STMT_BEGIN | TRANS_STMT_START | TRANS_STMT_SAVEPOINT)
            }
            T_SelectStmt => {
                let select = &*(stmt as *const pg_sys::SelectStmt);
                let targets = pgrx::PgList::<pg_sys::ResTarget>::from_pg(select.targetList);
                if !select.fromClause.is_null() || targets.len() != 1 {
                    return false;
                }
                let Some(target) = targets.get_ptr(0) else { return false };
                let call = (*target).val;
                if call.is_null() || (*call).type_ != T_FuncCall {
                    return false;
                }
                let names = pgrx::PgList::<pg_sys::String>::from_pg((*(call as *const pg_sys::FuncCall)).funcname);
                let last = names.get_ptr(names.len().saturating_sub(1));
                last.is_some_and(|n| {
                    !n.is_null()
                        && (*n).type_ == T_String
                        && !(*n).sval.is_null()
                        && CStr::from_ptr((*n).sval).to_bytes() == b"assign_distributed_transaction_id"
                })
            }
            _ => false,
        }
    }
}

/// True when `t` holds nothing but white space, semicolons and comments.
fn only_blanks(mut t: &[u8]) -> bool {
    loop {
        while let [first, rest @ ..] = t {
            if first.is_ascii_whitespace() || *first == b';' {
                t = rest;
            } else {
                break;
            }
        }
        if t.is_empty() {
            return true;
        }
        if let Some(rest) = t.strip_prefix(b"--") {
            t = rest.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &rest[i + 1..]);
        } else if let Some(rest) = t.strip_prefix(b"/*") {
            match rest.windows(2).position(|w| w == b"*/") {
                Some(i) => t = &rest[i + 2..],
                None => return false,
            }
        } else {
            return false;
        }
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
        if (*query.utilityStmt).type_ != pg_sys::NodeTag::T_VariableSetStmt {
            return false;
        }
        let name = (*(query.utilityStmt as *const pg_sys::VariableSetStmt)).name;
        name.is_null() || CStr::from_ptr(name).to_bytes().starts_with(b"deal_store.")
    }
}

/// The name of `oid` when it is one of deal_store's tables (in schema
/// deal_store, not one of its Citus shards, which end in `_<shard id>`).
fn deal_store_table(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: catalog lookups by oid and name (missing_ok); the name is copied at once
    let name = unsafe {
        let schema = pg_sys::get_namespace_oid(c"deal_store".as_ptr(), true);
        if schema == pg_sys::InvalidOid || pg_sys::get_rel_namespace(oid) != schema {
            return None;
        }
        let name = pg_sys::get_rel_name(oid);
        if name.is_null() {
            return None;
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    };
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
    // SAFETY: PostgreSQL passes the parse state (its source text is the string the
    // statement came in) and the analyzed query; a utility statement's node is read by its tag
    unsafe {
        refuse_forwarded_strings(&*pstate, &*query);
        if sets_own_setting(&*query) {
            crate::access::settings_touched();
            return;
        }
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
    // SAFETY: catalog lookups by oid and name (missing_ok); the names are copied at once
    let (ours, name) = unsafe {
        let schema = pg_sys::get_namespace_oid(c"deal_store".as_ptr(), true);
        let name = pg_sys::get_rel_name(view);
        let ours = schema != pg_sys::InvalidOid && pg_sys::get_rel_namespace(view) == schema && !name.is_null();
        (ours, if ours { CStr::from_ptr(name).to_string_lossy().into_owned() } else { String::new() })
    };
    if !ours || !distributed("pending_changes") {
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
