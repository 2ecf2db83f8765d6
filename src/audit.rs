//! The audit trigger: one `deal_activity_log` row per meaningful row change.
//!
//! The row trigger `audit_row` decides what to log and captures it (actor,
//! reason, run, action, the changed columns as jsonb); it writes nothing itself.
//! The entries wait in a per-backend buffer and go into the log with one
//! set-based INSERT when the statement ends (the statement trigger
//! `audit_flush`), or earlier when the buffer is full. The log therefore costs
//! one executor run per statement instead of one per row, and seq still orders
//! entries exactly as the rows were changed.
//!
//! The buffer follows the transaction: entries captured inside a subtransaction
//! that rolls back are dropped, an abort drops everything, and a commit with
//! entries still waiting is refused (it cannot happen while the statement
//! trigger is in place; a table whose statement trigger is missing or disabled
//! is logged row by row instead).
//!
//! Columns are compared as raw datums (no JSON unless something changed);
//! updates that touch only noise columns write nothing. The details are the new
//! row for an insert, the old row for a purge, `{"col": {"old", "new"}}` of the
//! changed columns otherwise. A restore is not audited because it runs with
//! `session_replication_role = replica` (a setting only superusers may change),
//! under which no ordinary trigger fires: the restored log already holds the
//! history of those rows. No other setting or session property turns it off.
use crate::errors::raise;
use crate::settings;
use crate::jsonb::{JsonbDatum, ObjectBuilder};
use pgrx::pg_sys;
use pgrx::prelude::*;
use crate::spi::OwnedPreparedStatement;
use pgrx::{PgMemoryContexts, PgRelation};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::rc::Rc;

/// Columns whose changes carry no meaning on their own.
/// (`updated_by` repeats the entry's own user_id.)
const NOISE: [&str; 4] = ["updated_at", "updated_by", "search_vector", "item_checksum"];

/// Columns whose values never reach the log: an entry shows `"[secret]"`
/// (or null) in their place, so the log tells that one changed, never to what.
const SECRET: [&str; 1] = ["password_hash"];

/// The log's `entity_type` of deal_store's own tables: the singular name the
/// merge queue, the diff and the docs use (`fact`, not `facts`). A table of
/// another schema is logged as `schema.table`.
const ENTITY_TYPES: [(&str, &str); 12] = [
    ("deals", "deal"),
    ("documents", "document"),
    ("analysis_runs", "analysis_run"),
    ("facts", crate::checksum::FACT.entity_type),
    ("findings", crate::checksum::FINDING.entity_type),
    ("gaps", crate::checksum::GAP.entity_type),
    ("fact_finding_links", "fact_finding_link"),
    ("pending_changes", "pending_change"),
    ("notifications", "notification"),
    ("users", "user"),
    ("tier_policies", "tier_policy"),
    ("deal_members", "deal_member"),
];

/// The `entity_type` the log gives rows of a table (see [`ENTITY_TYPES`]).
fn entity_type_of_table(schema: &str, name: &str) -> String {
    match ENTITY_TYPES.iter().find(|(t, _)| schema == "deal_store" && *t == name) {
        Some((_, entity)) => entity.to_string(),
        None if schema == "deal_store" => name.to_string(),
        None => format!("{schema}.{name}"),
    }
}

/// The `entity_type` under which the audit log records rows of a table
/// (`deal_store.facts` -> `fact`; `public.valuations` -> `public.valuations`).
#[pg_extern(stable, strict, parallel_safe)]
fn entity_type_of(tbl: pg_sys::Oid) -> Option<String> {
    // a shard is logged as its table (see crate::shard)
    let p = crate::shard::placement_of(tbl)?;
    Some(entity_type_of_table(&p.schema, &p.table))
}

/// What the log shows for a non-NULL secret value.
const MASK: &std::ffi::CStr = c"[secret]";

/// The largest value (in bytes, uncompressed) a log entry holds; a larger one
/// is logged as `"[N bytes, not logged]"`. It keeps every entry far below
/// jsonb's 256 MB string limit (beyond it the entry, and so the row change,
/// could not be written) and the log from copying whole documents.
const MAX_LOGGED_BYTES: usize = 1 << 20;

/// Entries kept before the buffer is written out in the middle of a statement.
const FLUSH_AT: usize = 1000;

/// The statement trigger that writes the buffer; a table without it is logged row by row.
const FLUSH_TRIGGER: &str = "deal_store_audit_flush";

/// Writes a batch of entries, one array element per entry, in capture order,
/// into `{log}`: the log, or on Citus the log's shard the entries belong in.
const LOG_INSERT: &str = "\
INSERT INTO {log}
    (deal_id, user_id, action, entity_type, entity_id, entity_key, analysis_run_id, reason, details{seq})
SELECT {deal_id}, e.user_id, e.action, e.entity_type, e.entity_id, e.entity_key, e.run_id, e.reason,
       CASE WHEN e.action OPERATOR(pg_catalog.=) ANY ('{insert,purge}'::pg_catalog.text[])
            THEN e.details OPERATOR(pg_catalog.-) 'search_vector'::pg_catalog.text ELSE e.details END{seq_value}
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.uuid[]), pg_catalog.unnest($3::pg_catalog.text[]),
                pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.uuid[]), pg_catalog.unnest($6::pg_catalog.jsonb[]),
                pg_catalog.unnest($7::pg_catalog.uuid[]), pg_catalog.unnest($8::pg_catalog.text[]), pg_catalog.unnest($9::pg_catalog.jsonb[]))
         WITH ORDINALITY AS e(deal_id, user_id, action, entity_type, entity_id, entity_key, run_id, reason, details, i)
ORDER BY e.i";

/// The `deal_id` of a log entry without a deal (a change of a table outside
/// deal_store, `purge_audit`'s own entry) when Citus distributes the log by
/// `deal_id`, which it requires to be non-NULL: the nil uuid, which no deal has
/// and so no deal's team reads (as with NULL). On plain PostgreSQL it is NULL.
const NO_DEAL: &str = "00000000-0000-0000-0000-000000000000";
/// [`NO_DEAL`] as a value.
pub fn no_deal_uuid() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes([0; 16])
}

/// The `deal_id` a log entry without a deal is stored under: NULL, or on Citus
/// the nil uuid (see [`NO_DEAL`]). Read when the statement is planned.
#[pg_extern(schema = "deal_store_internal", name = "_no_deal", stable, parallel_safe)]
fn no_deal() -> Option<pgrx::Uuid> {
    crate::shard::distributed("deal_activity_log").then(no_deal_uuid)
}

/// One column of an audited table.
struct Column {
    attnum: i32,
    name: Rc<str>,
    noise: bool,
    secret: bool,
    byval: bool,
    len: i16,
    typid: pg_sys::Oid,
}

/// What the trigger needs to know about one audited table, computed once per session.
struct TableInfo {
    /// the relcache generation it was built in (see `on_relcache`)
    generation: u64,
    entity_type: Rc<str>,
    /// 1-based attribute numbers
    deal_id: Option<i32>,
    id: Option<i32>,
    run_id: Option<i32>,
    deleted_at: Option<i32>,
    superseded_at: Option<i32>,
    columns: Vec<Column>,
    /// indexes into `columns` of the primary key, in key order
    key: Vec<usize>,
    is_deals: bool,
    /// some column is secret: whole rows are logged column by column, masked
    has_secret: bool,
    /// where its entries go: the log, or on Citus the log's shard co-located
    /// with this shard (None: deal_store.deal_activity_log)
    log: Option<Rc<str>>,
    /// a copy of a Citus reference table (one on every node): each change is
    /// logged once, by the node that holds the log's shard for the entry's deal
    reference: bool,
}

/// One log row waiting to be written. Datums live in the buffer's memory context.
struct Entry {
    /// the subtransaction that owns the entry: the one that captured it, or
    /// the parent it was handed to when that one committed
    subxact: pg_sys::SubTransactionId,
    deal_id: Option<pgrx::Uuid>,
    user_id: Option<pgrx::Uuid>,
    action: &'static str,
    entity_type: Rc<str>,
    entity_id: Option<pgrx::Uuid>,
    /// the primary key as an object, for rows without a uuid id
    entity_key: Option<pg_sys::Datum>,
    run_id: Option<pgrx::Uuid>,
    reason: Option<String>,
    /// jsonb: the row (insert, purge) or the changed columns (update)
    details: pg_sys::Datum,
    /// the relation it is written to (see `TableInfo::log`)
    log: Option<Rc<str>>,
}

#[derive(Default)]
struct Buffer {
    /// in capture order; owners never decrease along it (a subtransaction's
    /// id is above its parent's, and a committed one hands its entries to the parent)
    entries: Vec<Entry>,
    context: Option<pg_sys::MemoryContext>,
}

impl Buffer {
    /// The memory the captured datums live in, emptied after each write.
    fn context(&mut self) -> pg_sys::MemoryContext {
        // SAFETY: a child of TopMemoryContext, kept for the backend's life
        *self.context.get_or_insert_with(|| unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"deal_store audit buffer".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        })
    }

    /// Where the entries owned by `subxact` or its children begin.
    fn start_of(&self, subxact: pg_sys::SubTransactionId) -> usize {
        self.entries.partition_point(|e| e.subxact < subxact)
    }

    /// Entries owned by the current (sub)transaction.
    fn own_entries(&self) -> usize {
        // SAFETY: reads the transaction state of this backend
        self.entries.len() - self.start_of(unsafe { pg_sys::GetCurrentSubTransactionId() })
    }

    fn discard(&mut self) {
        self.entries.clear();
        if let Some(cx) = self.context {
            // SAFETY: nothing points into the context once the entries are gone
            unsafe { pg_sys::MemoryContextReset(cx) };
        }
    }
}

thread_local! {
    static TABLES: RefCell<HashMap<pg_sys::Oid, TableInfo>> = RefCell::new(HashMap::new());
    /// bumped whenever the definition of an audited table may have changed
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
    /// LOG_INSERT prepared, per relation it writes to (None: the log itself)
    static PLANS: RefCell<HashMap<Option<Rc<str>>, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
    /// `to_jsonb` prepared for one argument type, per type
    static ENCODERS: RefCell<HashMap<pg_sys::Oid, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
}

/// Registers the transaction callbacks that keep the buffer in step with the
/// transaction, and the relcache callback that retires cached table layouts.
pub fn init() {
    // SAFETY: plain functions registered once per backend
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0));
    }
}

/// A relation's definition may have changed (ALTER TABLE, or InvalidOid: all):
/// cached layouts of audited tables are rebuilt at their next use.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // may run while TABLES is borrowed (catalog lookups process invalidations): then assume ours
    let ours = relid == pg_sys::InvalidOid || TABLES.with(|t| t.try_borrow().map_or(true, |t| t.contains_key(&relid)));
    if ours {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PARALLEL_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            if BUFFER.with(|b| !b.borrow().entries.is_empty()) {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "audit entries were captured but not written; the transaction cannot commit",
                    Some("The statement trigger deal_store_audit_flush did not run.".into()),
                );
            }
        }
        _ => BUFFER.with(|b| b.borrow_mut().discard()),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        match event {
            SUBXACT_EVENT_COMMIT_SUB => {
                let from = b.start_of(sub);
                b.entries[from..].iter_mut().for_each(|e| e.subxact = parent);
            }
            SUBXACT_EVENT_ABORT_SUB => {
                let from = b.start_of(sub);
                b.entries.truncate(from);
            }
            _ => {}
        }
    });
}

/// `to_jsonb(value)` for a value of type `typid`, in the current memory context.
///
/// `to_jsonb` reads its argument's type from the call expression, so each type
/// gets a call expression of its own, built once and kept for the session.
fn to_jsonb(typid: pg_sys::Oid, value: pg_sys::Datum) -> pg_sys::Datum {
    let finfo = ENCODERS.with(|e| {
        // SAFETY: fmgr_info fills a FmgrInfo we own, for a type's output function the catalog names
        *e.borrow_mut().entry(typid).or_insert_with(|| unsafe {
            PgMemoryContexts::TopMemoryContext.switch_to(|_| {
                let finfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
                pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_TO_JSONB), finfo, pg_sys::TopMemoryContext);
                let arg = pg_sys::makeConst(typid, -1, pg_sys::InvalidOid, -1, pg_sys::Datum::from(0), true, false);
                let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
                (*finfo).fn_expr = pg_sys::makeFuncExpr(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    pg_sys::JSONBOID,
                    args,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                )
                .cast();
                finfo
            })
        })
    });
    // SAFETY: finfo is to_jsonb with a call expression of the value's type
    unsafe { pg_sys::FunctionCall1Coll(finfo, pg_sys::InvalidOid, value) }
}

fn table_info(rel: &PgRelation) -> TableInfo {
    let tupdesc = rel.tuple_desc();
    let mut columns = Vec::new();
    for (i, att) in tupdesc.iter().enumerate() {
        if att.attisdropped {
            continue;
        }
        let name: Rc<str> = att.name().into();
        columns.push(Column {
            attnum: (i + 1) as i32,
            noise: NOISE.contains(&&*name),
            secret: SECRET.contains(&&*name),
            name,
            byval: att.attbyval,
            len: att.attlen,
            typid: att.atttypid,
        });
    }
    let find = |name: &str, typ: pg_sys::Oid| columns.iter().find(|c| &*c.name == name && c.typid == typ).map(|c| c.attnum);
    let key_names: Vec<String> = crate::spi::connect(|client| {
        client
            .select(
                "SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY pg_catalog.array_position(i.indkey::pg_catalog.int2[], a.attnum)",
                None,
                &[rel.oid().into()],
            )
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            .unwrap_or_default()
    });
    // on Citus the relation may be a shard: it is logged as the table it belongs to
    let placement = crate::shard::placement(rel.oid(), rel.namespace(), rel.name());
    let (schema, table) = (&*placement.schema, &*placement.table);
    let (uuid, ts) = (pg_sys::UUIDOID, pg_sys::TIMESTAMPTZOID);
    TableInfo {
        generation: GENERATION.with(Cell::get),
        entity_type: entity_type_of_table(schema, table).into(),
        deal_id: find("deal_id", uuid),
        id: find("id", uuid),
        run_id: find("analysis_run_id", uuid),
        deleted_at: find("deleted_at", ts),
        superseded_at: find("superseded_at", ts),
        key: key_names.iter().filter_map(|k| columns.iter().position(|c| &*c.name == k)).collect(),
        is_deals: schema == "deal_store" && table == "deals",
        has_secret: columns.iter().any(|c| c.secret),
        columns,
        log: placement.shard.filter(|_| !placement.reference).map(|s| crate::shard::colocated(s, "deal_activity_log")),
        reference: placement.reference,
    }
}

unsafe extern "C-unwind" {
    /// utils/datum.h: true when two datums of one type have the same binary image.
    fn datum_image_eq(value1: pg_sys::Datum, value2: pg_sys::Datum, typbyval: bool, typlen: std::ffi::c_int) -> bool;
}

/// True when two optional datums of one column hold the same value: the same
/// binary image, NULLs equal (what "the column changed" means to the audit and
/// to the who / when columns).
///
/// # Safety
/// Each non-NULL datum must be a value of the type whose by-value flag and
/// length are `byval` and `len`.
pub(crate) unsafe fn same_image(a: Option<pg_sys::Datum>, b: Option<pg_sys::Datum>, byval: bool, len: i16) -> bool {
    match (a, b) {
        (None, None) => true,
        // SAFETY: two datums of one type (caller); an error raised while comparing
        // (detoasting) crosses back into PostgreSQL through the guard
        (Some(x), Some(y)) => unsafe { pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| datum_image_eq(x, y, byval, len.into())) },
        _ => false,
    }
}

/// The value of attribute `attnum` (1-based) of a tuple, None for NULL.
///
/// # Safety
/// `tuple` must be a live tuple that `tupdesc` describes, and `attnum` one of its columns.
pub(crate) unsafe fn attr(tuple: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc, attnum: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: the caller guarantees tuple and tupdesc describe one live row and attnum is a column of it
    let d = unsafe { pg_sys::heap_getattr(tuple, attnum, tupdesc, &mut isnull) };
    (!isnull).then_some(d)
}

/// The size of a value too large to log (see [`MAX_LOGGED_BYTES`]), else None.
///
/// # Safety
/// `value` must be a non-NULL datum of the column's type.
unsafe fn oversized(c: &Column, value: pg_sys::Datum) -> Option<usize> {
    if c.len != -1 {
        return None; // fixed-size types are small
    }
    // SAFETY: a varlena datum (caller); reads its header or toast pointer only
    let n = unsafe { pg_sys::toast_raw_datum_size(value) };
    (n > MAX_LOGGED_BYTES).then_some(n)
}

unsafe fn uuid_attr(tuple: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc, attnum: Option<i32>) -> Option<pgrx::Uuid> {
    // SAFETY: the caller's guarantee for tuple and tupdesc, passed on
    let d = unsafe { attr(tuple, tupdesc, attnum?) }?;
    // SAFETY: a non-NULL datum of a uuid column
    unsafe { pgrx::Uuid::from_datum(d, false) }
}

/// The triggers of the relation a trigger call fires on, with their names.
pub fn triggers_of(data: &pg_sys::TriggerData) -> impl Iterator<Item = (&CStr, &pg_sys::Trigger)> {
    // SAFETY: data is PostgreSQL's trigger data for this call: its relation is open
    let desc = unsafe { (*data.tg_relation).trigdesc };
    let triggers: &[pg_sys::Trigger] = if desc.is_null() {
        &[]
    } else {
        // SAFETY: trigdesc holds numtriggers triggers, alive while the relation is open
        unsafe { std::slice::from_raw_parts((*desc).triggers, (*desc).numtriggers as usize) }
    };
    // SAFETY: tgname is a NUL-terminated name in the relation's trigger descriptor
    triggers.iter().map(|t| (unsafe { CStr::from_ptr(t.tgname) }, t))
}

/// True when the relation has the enabled statement trigger that writes the
/// buffer for this event, so the entry may wait for it.
fn flushed_at_statement_end(data: &pg_sys::TriggerData, event: u32) -> bool {
    // SAFETY: tg_trigger is this call's trigger, valid for the call
    let enabled = unsafe { (*data.tg_trigger).tgenabled };
    triggers_of(data).any(|(name, t)| {
        let kind = t.tgtype as u32;
        crate::shard::is_trigger(name, FLUSH_TRIGGER)
            && t.tgenabled == enabled
            && kind & (pg_sys::TRIGGER_TYPE_ROW | pg_sys::TRIGGER_TYPE_BEFORE | pg_sys::TRIGGER_TYPE_INSTEAD) == 0
            && kind & event != 0
    })
}

#[pg_trigger]
fn audit_row<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    if !matches!(trigger.level(), PgTriggerLevel::Row) || !matches!(trigger.when()?, PgTriggerWhen::After) {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "deal_store_internal.audit_row must be an AFTER ... FOR EACH ROW trigger",
            Some("Use deal_store.enable_audit(table) to put it on a table.".into()),
        );
    }
    let op = trigger.op()?;
    let data = trigger.trigger_data();
    // SAFETY: tg_relation is open for the whole trigger call
    if crate::operations::restoring(unsafe { (*data.tg_relation).rd_id }) {
        return Ok(None); // the restored log holds these rows' history already
    }
    let (old, new, event) = match op {
        PgTriggerOperation::Insert => (std::ptr::null_mut(), data.tg_trigtuple, pg_sys::TRIGGER_TYPE_INSERT),
        PgTriggerOperation::Update => (data.tg_trigtuple, data.tg_newtuple, pg_sys::TRIGGER_TYPE_UPDATE),
        PgTriggerOperation::Delete => (data.tg_trigtuple, std::ptr::null_mut(), pg_sys::TRIGGER_TYPE_DELETE),
        PgTriggerOperation::Truncate => return Ok(None),
    };
    // SAFETY: tg_relation is open for the whole trigger call
    let tupdesc = unsafe { (*data.tg_relation).rd_att };
    // SAFETY: tg_relation is open for the whole trigger call
    let oid = unsafe { (*data.tg_relation).rd_id };
    let generation = GENERATION.with(Cell::get);
    if TABLES.with(|t| t.borrow().get(&oid).is_none_or(|t| t.generation != generation)) {
        // SAFETY: tg_relation is a valid relation for the whole trigger call
        let info = table_info(&unsafe { PgRelation::from_pg(data.tg_relation) });
        TABLES.with(|t| t.borrow_mut().insert(oid, info));
    }
    let captured = TABLES.with(|tables| {
        let tables = tables.borrow();
        let t = &tables[&oid];
        // SAFETY: old and new are this event's tuples (or NULL) of the relation tupdesc describes
        BUFFER.with(|b| unsafe { capture(&mut b.borrow_mut(), t, tupdesc, old, new) })
    });
    if captured && (BUFFER.with(|b| b.borrow().own_entries() >= FLUSH_AT) || !flushed_at_statement_end(data, event)) {
        flush();
    }
    Ok(None)
}

/// Appends the entry for one row change to the buffer; false when there is nothing to log.
unsafe fn capture(
    b: &mut Buffer,
    t: &TableInfo,
    tupdesc: pg_sys::TupleDesc,
    old: *mut pg_sys::HeapTupleData,
    new: *mut pg_sys::HeapTupleData,
) -> bool {
    let row = if new.is_null() { old } else { new };
    // SAFETY: row is this event's tuple; t.id / t.deal_id are uuid columns of tupdesc
    let mut deal_id = unsafe { uuid_attr(row, tupdesc, if t.is_deals { t.id } else { t.deal_id }) };
    let mut log = t.log.clone();
    if t.reference {
        // the same change happens on every node's copy: logged where the entry's shard is
        let deal = deal_id.unwrap_or_else(no_deal_uuid);
        deal_id = Some(deal);
        log = crate::shard::local_log_shard(deal);
        if log.is_none() {
            return false;
        }
    }
    let action = if old.is_null() {
        // a fact's history row is the versioning's own copy, not a new act
        // SAFETY: new is this event's tuple of the relation tupdesc describes
        if t.superseded_at.and_then(|n| unsafe { attr(new, tupdesc, n) }).is_some() {
            return false;
        }
        "insert"
    } else if new.is_null() {
        "purge"
    } else {
        // SAFETY: old and new are this event's tuples of the relation tupdesc describes
        let was = t.deleted_at.map(|n| unsafe { attr(old, tupdesc, n) }.is_some());
        // SAFETY: new is this event's tuple of the relation tupdesc describes
        let is = t.deleted_at.map(|n| unsafe { attr(new, tupdesc, n) }.is_some());
        match (was, is) {
            (Some(false), Some(true)) => "soft_delete",
            (Some(true), Some(false)) => "restore",
            _ => "update",
        }
    };
    let text = |s: &std::ffi::CStr| {
        // SAFETY: a text datum made from a C string, converted at once
        to_jsonb(pg_sys::TEXTOID, pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text(s.as_ptr()) }))
    };
    // SAFETY: the tuples and their descriptor are the trigger's; a non-NULL
    // attribute is a datum of its column's type, as `oversized` requires
    let value = |c: &Column, tuple| {
        // SAFETY: tuple is one of this event's tuples and c.attnum a column of tupdesc; the datum is of the column's type
        unsafe { attr(tuple, tupdesc, c.attnum) }.map(|v| match (c.secret, unsafe { oversized(c, v) }) {
            (true, _) => text(MASK),
            (false, Some(n)) => text(&std::ffi::CString::new(format!("[{n} bytes, not logged]")).expect("no NUL")),
            (false, None) => to_jsonb(c.typid, v),
        })
    };
    let cx = b.context();
    // everything made from here on lives in the buffer's context until the entry is written
    // SAFETY: the values are datums of their columns' types, built in the buffer's memory context
    let details = unsafe {
        PgMemoryContexts::For(cx).switch_to(|_| {
            if old.is_null() || new.is_null() {
                // the whole row: by to_jsonb of the row, unless a value must be masked or is too large
                let as_is = !t.has_secret
                    && !t.columns.iter().any(|c| attr(row, tupdesc, c.attnum).is_some_and(|v| oversized(c, v).is_some()));
                if as_is {
                    let composite = pg_sys::heap_copy_tuple_as_datum(row, tupdesc);
                    return Some(to_jsonb((*tupdesc).tdtypeid, composite));
                }
                let mut whole = ObjectBuilder::new();
                for c in &t.columns {
                    whole.key(&c.name);
                    whole.value(value(c, row));
                }
                return Some(whole.finish());
            }
            let mut changed = ObjectBuilder::new();
            let mut any = false; // noise columns are neither reported nor enough to log
            for c in t.columns.iter().filter(|c| !c.noise) {
                let (a, z) = (attr(old, tupdesc, c.attnum), attr(new, tupdesc, c.attnum));
                if !same_image(a, z, c.byval, c.len) {
                    any = true;
                    changed.key(&c.name);
                    changed.begin_object();
                    changed.key("old");
                    changed.value(value(c, old));
                    changed.key("new");
                    changed.value(value(c, new));
                    changed.end_object();
                }
            }
            any.then(|| changed.finish())
        })
    };
    let Some(details) = details else { return false };
    // SAFETY: row is this event's tuple of the relation tupdesc describes
    let entity_id = unsafe { uuid_attr(row, tupdesc, t.id) };
    // SAFETY: row is this event's tuple; the key columns are columns of tupdesc, and the
    // object is built in the buffer's memory context, which outlives the entry
    let entity_key = (entity_id.is_none() && !t.key.is_empty()).then(|| unsafe {
        PgMemoryContexts::For(cx).switch_to(|_| {
            let mut key = ObjectBuilder::new();
            for c in t.key.iter().map(|&k| &t.columns[k]) {
                key.key(&c.name);
                key.value(value(c, row));
            }
            key.finish()
        })
    });
    b.entries.push(Entry {
        // SAFETY: reads the transaction state of this backend
        subxact: unsafe { pg_sys::GetCurrentSubTransactionId() },
        deal_id,
        user_id: crate::access::actor_for_write(),
        action,
        entity_type: t.entity_type.clone(),
        entity_id,
        entity_key,
        run_id: match settings::run_id() {
            Some(run) => crate::access::run_of_deal(deal_id, run),
            // SAFETY: row is this event's tuple; t.run_id is a uuid column of tupdesc
            None => unsafe { uuid_attr(row, tupdesc, t.run_id) },
        },
        reason: settings::reason(),
        details,
        log,
    });
    true
}

/// Writes the waiting entries of the current (sub)transaction to the log with
/// one INSERT. Entries a parent captured before the current subtransaction
/// began stay in the buffer for the parent's own flush: written here, they
/// would be rolled back with this subtransaction while their rows commit.
fn flush() {
    let mut entries = BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        // SAFETY: reads the transaction state of this backend
        let from = b.start_of(unsafe { pg_sys::GetCurrentSubTransactionId() });
        b.entries.split_off(from)
    });
    // one INSERT per run of entries bound for one relation (on plain PostgreSQL: one run)
    while !entries.is_empty() {
        let run = entries.iter().position(|e| e.log != entries[0].log).unwrap_or(entries.len());
        let rest = entries.split_off(run);
        write(&entries);
        entries = rest;
    }
    BUFFER.with(|b| {
        let b = b.borrow();
        if let (true, Some(cx)) = (b.entries.is_empty(), b.context) {
            // SAFETY: the written entries were the only users of the context
            unsafe { pg_sys::MemoryContextReset(cx) };
        }
    });
}

/// Inserts entries bound for one relation (`entries[0].log`) with one statement.
fn write(entries: &[Entry]) {
    // SAFETY: the datums are jsonb values in the buffer's context, reset only after the INSERT
    let jsonb = |d: pg_sys::Datum| unsafe { JsonbDatum::new(d) };
    let args = [
        entries.iter().map(|e| e.deal_id).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.user_id).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.action).collect::<Vec<_>>().into(),
        entries.iter().map(|e| &*e.entity_type).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.entity_id).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.entity_key.map(jsonb)).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.run_id).collect::<Vec<_>>().into(),
        entries.iter().map(|e| e.reason.as_deref()).collect::<Vec<_>>().into(),
        entries.iter().map(|e| jsonb(e.details)).collect::<Vec<_>>().into(),
    ];
    // the distributed log (its shards hold deals only) takes the entries without a
    // deal under NO_DEAL; asked only when the session plans its insert
    let log = &entries[0].log;
    let deal_id = match log {
        None if !PLANS.with(|p| p.borrow().contains_key(log)) && crate::shard::distributed("deal_activity_log") => {
            format!("coalesce(e.deal_id, '{NO_DEAL}'::pg_catalog.uuid)")
        }
        _ => "e.deal_id".to_string(),
    };
    // the log is written with the extension owner's rights: no other role holds INSERT on it
    crate::access::as_owner(crate::access::owner(), || crate::spi::connect_mut(|client| {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if !plans.contains_key(log) {
                let (u, t, j) = (pg_sys::UUIDARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::JSONBARRAYOID);
                let types: Vec<PgOid> = [u, u, t, t, u, j, u, t, j].into_iter().map(PgOid::from).collect();
                // a shard has no identity column: seq comes from the log's sequence on this
                // node, numbered as this node's (its Citus group, see _log_seq), since the
                // txid is this node's too and the change feed orders by both
                let (seq, seq_value) = match log {
                    None => ("", String::new()),
                    Some(_) => (
                        ", seq",
                        format!(
                            ",\n       {}._log_seq((SELECT g.groupid FROM pg_catalog.pg_dist_local_group g),
                                   pg_catalog.nextval('deal_store.deal_activity_log_seq_seq'::pg_catalog.regclass))",
                            crate::spi::internal_schema()
                        ),
                    ),
                };
                let sql = LOG_INSERT
                    .replace("{log}", log.as_deref().unwrap_or("deal_store.deal_activity_log"))
                    .replace("{deal_id}", &deal_id)
                    .replace("{seq_value}", &seq_value)
                    .replace("{seq}", seq);
                let prepared = client
                    .prepare_mut(sql.as_str(), &types)
                    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("audit plan: {e}"), None));
                plans.insert(log.clone(), prepared.keep());
            }
            client
                .update(&plans[log], None, &args)
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("audit insert: {e}"), None));
        })
    }));
}

/// A version 7 uuid: time-ordered, so the log's primary key grows at its right
/// edge instead of at random pages. The default of `deal_activity_log.id`.
#[pg_extern(volatile, parallel_safe)]
fn uuid_v7() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}

/// Statement trigger: writes the entries the row trigger captured during the statement.
#[pg_trigger]
fn audit_flush<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    if BUFFER.with(|b| !b.borrow().entries.is_empty()) {
        flush();
    }
    Ok(None)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn no_deal_is_one_value() {
        assert_eq!(super::no_deal_uuid().to_string(), super::NO_DEAL);
    }

    fn same(sql: &str) -> bool {
        Spi::get_one::<bool>(sql).unwrap().unwrap_or(false)
    }

    /// The details built in Rust equal what SQL's to_jsonb makes of the same values, for every kind of column.
    #[pg_test]
    fn details_match_sql_to_jsonb() {
        Spi::run(
            "CREATE TABLE public.kinds (k1 int, k2 text, n numeric, f float8, t text, ts timestamptz, a int[], j jsonb, flag bool,
                                        PRIMARY KEY (k1, k2));
             SELECT deal_store.enable_audit('public.kinds');
             INSERT INTO public.kinds VALUES (1, 'x', 1.50, 0.1, 'tab\there', '2026-01-02 03:04:05.678+00', '{1,2}', '{\"a\": [1, {\"b\": null}]}', true);
             CREATE TABLE public.before AS SELECT * FROM public.kinds;
             UPDATE public.kinds SET n = 2, f = 'NaN', t = NULL, ts = '-infinity', a = '{}', j = '\"s\"', flag = false;",
        )
        .unwrap();
        assert!(same(
            "SELECT l.details = to_jsonb(b) AND l.entity_key = jsonb_build_object('k1', 1, 'k2', 'x')
             FROM deal_store.deal_activity_log l, public.before b
             WHERE l.entity_type = 'public.kinds' AND l.action = 'insert'"
        ));
        assert!(same(
            "SELECT l.details = (SELECT jsonb_object_agg(o.key, jsonb_build_object('old', o.value, 'new', n.value))
                                 FROM jsonb_each(to_jsonb(b)) o JOIN jsonb_each(to_jsonb(k)) n USING (key)
                                 WHERE o.value IS DISTINCT FROM n.value)
             FROM deal_store.deal_activity_log l, public.before b, public.kinds k
             WHERE l.entity_type = 'public.kinds' AND l.action = 'update'"
        ));
    }

    /// A subtransaction that flushes (1,000 entries) and then rolls back takes only
    /// its own entries with it: the parent's, captured before it began, are written
    /// by the parent's statement.
    #[pg_test]
    fn a_rolled_back_flush_keeps_the_parents_entries() {
        Spi::run(
            "CREATE TABLE public.outer_t (id int PRIMARY KEY);
             CREATE TABLE public.inner_t (id int PRIMARY KEY);
             SELECT deal_store.enable_audit('public.outer_t');
             SELECT deal_store.enable_audit('public.inner_t');
             CREATE FUNCTION public.side() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
                 BEGIN
                     INSERT INTO public.inner_t SELECT g FROM generate_series(1, 1500) g;
                     RAISE EXCEPTION 'undo';
                 EXCEPTION WHEN raise_exception THEN NULL;
                 END;
                 RETURN NULL;
             END $f$;
             CREATE TRIGGER zz_side AFTER INSERT ON public.outer_t FOR EACH ROW EXECUTE FUNCTION public.side();
             INSERT INTO public.outer_t VALUES (1), (2);",
        )
        .unwrap();
        let logged = Spi::get_one::<String>(
            "SELECT string_agg(entity_type || ':' || (entity_key ->> 'id'), ',' ORDER BY seq) FROM deal_store.deal_activity_log
             WHERE entity_type IN ('public.outer_t', 'public.inner_t')",
        )
        .unwrap();
        assert_eq!(logged.as_deref(), Some("public.outer_t:1,public.outer_t:2"));
    }

    /// Entries captured by a statement that then fails (here in a later AFTER trigger) are never written.
    #[pg_test]
    fn a_failed_statement_leaves_no_entries() {
        Spi::run(
            "CREATE TABLE public.once (id int PRIMARY KEY);
             SELECT deal_store.enable_audit('public.once');
             CREATE FUNCTION public.no_three() RETURNS trigger LANGUAGE plpgsql AS
                 $f$ BEGIN IF NEW.id = 3 THEN RAISE EXCEPTION 'three'; END IF; RETURN NULL; END $f$;
             CREATE TRIGGER zz_no_three AFTER INSERT ON public.once FOR EACH ROW EXECUTE FUNCTION public.no_three();",
        )
        .unwrap();
        Spi::run(
            "DO $$ BEGIN
                 INSERT INTO public.once SELECT generate_series(1, 5);
             EXCEPTION WHEN raise_exception THEN NULL;
             END $$;
             INSERT INTO public.once VALUES (10);",
        )
        .unwrap();
        let logged = Spi::get_one::<String>(
            "SELECT string_agg(entity_key ->> 'id', ',' ORDER BY seq) FROM deal_store.deal_activity_log WHERE entity_type = 'public.once'",
        )
        .unwrap();
        assert_eq!(logged.as_deref(), Some("10"));
    }
}
