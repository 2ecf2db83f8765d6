//! The audit trigger: one `deal_activity_log` row per meaningful row change.
//!
//! Written in Rust so the common path stays cheap: columns are compared as raw
//! datums (no JSON unless something changed), updates that touch only noise
//! columns write nothing, and the insert into the log is one prepared plan per
//! table, kept for the session. The log row carries the actor
//! (`deal_store.actor`), the reason (`deal_store.reason`), the run
//! (`deal_store.run_id`, else the row's own `analysis_run_id`), the action
//! (`insert`, `update`, `soft_delete`, `restore`, `purge`) and the details: the
//! new row for an insert, the old row for a purge, `{"col": {"old", "new"}}` of
//! the changed columns otherwise.
//!
//! A pg_restore loading rows (application_name `pg_restore` running COPY) is not
//! audited: the restored log already holds the history of those rows.
use crate::errors::raise;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgRelation;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

/// Columns whose changes carry no meaning on their own.
const NOISE: [&str; 3] = ["updated_at", "search_vector", "item_checksum"];

const LOG_INSERT: &str = "\
INSERT INTO deal_store.deal_activity_log
    (deal_id, user_id, action, entity_type, entity_id, entity_key, analysis_run_id, reason, details)
SELECT $1, $2, $3, $4, $5,
       CASE WHEN $5 IS NULL THEN (SELECT pg_catalog.jsonb_object_agg(k, coalesce(x.n, x.o) -> k)
                                  FROM pg_catalog.unnest($10::pg_catalog.text[]) k) END,
       $6, $7,
       CASE $3 WHEN 'insert' THEN x.n - 'search_vector' WHEN 'purge' THEN x.o - 'search_vector'
            ELSE (SELECT pg_catalog.jsonb_object_agg(k, pg_catalog.jsonb_build_object('old', x.o -> k, 'new', x.n -> k))
                  FROM pg_catalog.unnest($11::pg_catalog.text[]) k) END
FROM (SELECT CASE WHEN $3 <> 'insert' THEN pg_catalog.to_jsonb($8) END AS o,
             CASE WHEN $3 <> 'purge' THEN pg_catalog.to_jsonb($9) END AS n) x";

/// What the trigger needs to know about one audited table, computed once per session.
struct TableInfo {
    natts: i32,
    entity_type: String,
    /// 1-based attribute numbers
    deal_id: Option<i32>,
    id: Option<i32>,
    run_id: Option<i32>,
    deleted_at: Option<i32>,
    superseded_at: Option<i32>,
    /// attribute number, name, whether it is noise, typbyval, typlen
    columns: Vec<(i32, String, bool, bool, i16)>,
    key_columns: Vec<String>,
    is_deals: bool,
    plan: OwnedPreparedStatement,
}

thread_local! {
    static TABLES: RefCell<HashMap<pg_sys::Oid, TableInfo>> = RefCell::new(HashMap::new());
}

fn guc(name: &CStr) -> Option<String> {
    let p = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// True while pg_restore loads table data: those rows are history, not new acts.
fn restoring() -> bool {
    if guc(c"application_name").as_deref() != Some("pg_restore") {
        return false;
    }
    let q = unsafe { pg_sys::debug_query_string };
    !q.is_null() && unsafe { CStr::from_ptr(q) }.to_string_lossy().trim_start().to_ascii_uppercase().starts_with("COPY")
}

fn uuid_guc(name: &CStr) -> Option<pgrx::Uuid> {
    let text = guc(name)?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match uuid::Uuid::parse_str(text) {
        Ok(u) => Some(pgrx::Uuid::from_bytes(*u.as_bytes())),
        Err(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"{}\": \"{text}\"", name.to_string_lossy()),
            None,
        ),
    }
}

fn table_info(client: &SpiClient<'_>, rel: &PgRelation) -> TableInfo {
    let tupdesc = rel.tuple_desc();
    let mut info_cols = Vec::new();
    let find = |cols: &Vec<(i32, String, bool, bool, i16)>, name: &str, typ: pg_sys::Oid| {
        cols.iter().find(|c| c.1 == name).map(|c| c.0).filter(|&n| tupdesc.get((n - 1) as usize).map(|a| a.atttypid) == Some(typ))
    };
    for (i, att) in tupdesc.iter().enumerate() {
        if att.attisdropped {
            continue;
        }
        let name = att.name().to_string();
        let noise = NOISE.contains(&name.as_str());
        info_cols.push(((i + 1) as i32, name, noise, att.attbyval, att.attlen));
    }
    let schema = rel.namespace().to_string();
    let entity_type = if schema == "deal_store" { rel.name().to_string() } else { format!("{schema}.{}", rel.name()) };
    let key_columns: Vec<String> = client
        .select(
            "SELECT a.attname::text FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            None,
            &[rel.oid().into()],
        )
        .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
        .unwrap_or_default();
    let rowtype = unsafe { (*rel.as_ptr()).rd_rel.as_ref().expect("pg_class row").reltype };
    let uuid = pg_sys::UUIDOID;
    let ts = pg_sys::TIMESTAMPTZOID;
    let arg_types: Vec<PgOid> = [uuid, uuid, pg_sys::TEXTOID, pg_sys::TEXTOID, uuid, uuid, pg_sys::TEXTOID, rowtype, rowtype]
        .into_iter()
        .chain([pg_sys::TEXTARRAYOID, pg_sys::TEXTARRAYOID])
        .map(PgOid::from)
        .collect();
    let plan = client
        .prepare_mut(LOG_INSERT, &arg_types)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("audit plan: {e}"), None))
        .keep();
    TableInfo {
        natts: tupdesc.len() as i32,
        deal_id: find(&info_cols, "deal_id", uuid),
        id: find(&info_cols, "id", uuid),
        run_id: find(&info_cols, "analysis_run_id", uuid),
        deleted_at: find(&info_cols, "deleted_at", ts),
        superseded_at: find(&info_cols, "superseded_at", ts),
        is_deals: schema == "deal_store" && rel.name() == "deals",
        entity_type,
        columns: info_cols,
        key_columns,
        plan,
    }
}

unsafe extern "C-unwind" {
    /// utils/datum.h: true when two datums of one type have the same binary image.
    fn datum_image_eq(value1: pg_sys::Datum, value2: pg_sys::Datum, typbyval: bool, typlen: std::ffi::c_int) -> bool;
}

unsafe fn attr(tuple: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc, attnum: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    let d = unsafe { pg_sys::heap_getattr(tuple, attnum, tupdesc, &mut isnull) };
    (!isnull).then_some(d)
}

unsafe fn uuid_attr(tuple: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc, attnum: Option<i32>) -> Option<pgrx::Uuid> {
    let d = unsafe { attr(tuple, tupdesc, attnum?) }?;
    unsafe { pgrx::Uuid::from_datum(d, false) }
}

#[pg_trigger]
fn audit_row<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    if restoring() {
        return Ok(None);
    }
    let op = trigger.op()?;
    let data = trigger.trigger_data();
    let rel = unsafe { PgRelation::from_pg(data.tg_relation) };
    let tupdesc = unsafe { (*data.tg_relation).rd_att };
    let (old, new) = match op {
        PgTriggerOperation::Insert => (std::ptr::null_mut(), data.tg_trigtuple),
        PgTriggerOperation::Update => (data.tg_trigtuple, data.tg_newtuple),
        PgTriggerOperation::Delete => (data.tg_trigtuple, std::ptr::null_mut()),
        PgTriggerOperation::Truncate => return Ok(None),
    };
    Spi::connect_mut(|client| {
        TABLES.with(|tables| {
            let mut tables = tables.borrow_mut();
            let natts = unsafe { (*tupdesc).natts };
            if tables.get(&rel.oid()).is_none_or(|t| t.natts != natts) {
                let info = table_info(client, &rel);
                tables.insert(rel.oid(), info);
            }
            let t = tables.get(&rel.oid()).expect("just inserted");
            let row = if new.is_null() { old } else { new };
            let action = match op {
                PgTriggerOperation::Insert => {
                    // a fact's history row is the versioning's own copy, not a new act
                    if unsafe { t.superseded_at.and_then(|n| attr(new, tupdesc, n)) }.is_some() {
                        return;
                    }
                    "insert"
                }
                PgTriggerOperation::Delete => "purge",
                _ => {
                    let was = t.deleted_at.map(|n| unsafe { attr(old, tupdesc, n) }.is_some());
                    let is = t.deleted_at.map(|n| unsafe { attr(new, tupdesc, n) }.is_some());
                    match (was, is) {
                        (Some(false), Some(true)) => "soft_delete",
                        (Some(true), Some(false)) => "restore",
                        _ => "update",
                    }
                }
            };
            let mut changed: Vec<String> = Vec::new();
            if matches!(op, PgTriggerOperation::Update) {
                let mut meaningful = false; // noise columns are neither reported nor enough to log
                for (attnum, name, noise, byval, len) in &t.columns {
                    let (a, b) = unsafe { (attr(old, tupdesc, *attnum), attr(new, tupdesc, *attnum)) };
                    let same = match (a, b) {
                        (None, None) => true,
                        (Some(x), Some(y)) => unsafe { pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| datum_image_eq(x, y, *byval, (*len).into())) },
                        _ => false,
                    };
                    if !same && !noise {
                        meaningful = true;
                        changed.push(name.clone());
                    }
                }
                if !meaningful {
                    return;
                }
            }
            let deal_id = unsafe { uuid_attr(row, tupdesc, if t.is_deals { t.id } else { t.deal_id }) };
            let entity_id = unsafe { uuid_attr(row, tupdesc, t.id) };
            let run_id = uuid_guc(c"deal_store.run_id").or_else(|| unsafe { uuid_attr(row, tupdesc, t.run_id) });
            let reason = guc(c"deal_store.reason").filter(|r| !r.is_empty());
            let rowtype = unsafe { (*tupdesc).tdtypeid };
            let composite = |tuple: *mut pg_sys::HeapTupleData| unsafe {
                if tuple.is_null() {
                    DatumWithOid::null_oid(rowtype)
                } else {
                    DatumWithOid::new(pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc), rowtype)
                }
            };
            let args = [
                deal_id.into(),
                crate::settings::actor().into(),
                action.into(),
                t.entity_type.as_str().into(),
                entity_id.into(),
                run_id.into(),
                reason.into(),
                composite(old),
                composite(new),
                t.key_columns.clone().into(),
                changed.into(),
            ];
            client
                .update(&t.plan, None, &args)
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("audit insert: {e}"), None));
        })
    });
    Ok(None)
}
