//! Fact versions: the trigger that keeps `facts.item_checksum` right and turns
//! a content-changing UPDATE of a current fact into a new version.
//!
//! On INSERT it computes the checksum (a client's own value is replaced). On
//! UPDATE of a current fact whose checksum changes, the row trigger points the
//! updated row's `previous_version_id` at a new id, and the statement trigger
//! `fact_version_rows` copies the old rows into history rows with those ids (new id,
//! `superseded_at` set), set-based from the statement's transition tables, so
//! the fact keeps its id and links keep working. The self-referencing key is
//! checked at commit (it is DEFERRABLE INITIALLY DEFERRED). An UPDATE that
//! leaves the checksum alone writes no version. Every writer (a plain UPDATE,
//! the merge queue) goes through these two triggers; `import_deal` restores an
//! export's history rows through `_import_facts`.
use crate::checksum::{content_text, md5_hex, write_canonical, write_folded_string, FACT};
use crate::errors::raise;
use crate::jsonb::JsonbDatum;
use pgrx::prelude::*;
use pgrx::{PgRelation, PgTupleDesc, WhoAllocated};
use std::fmt::Display;
use std::num::NonZeroUsize;

/// Internal failures (a column missing or of another type) are bugs: report them as XX000.
fn internal<T, E: Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("deal_store fact trigger: {e}"), None))
}

/// Attribute numbers of the columns the row trigger reads or sets, found in
/// one pass over the tuple descriptor (not one name search per value).
struct Cols {
    deal_id: NonZeroUsize,
    id: NonZeroUsize,
    item_checksum: NonZeroUsize,
    previous_version_id: NonZeroUsize,
    superseded_at: NonZeroUsize,
    /// `FACT.fields`, in that order
    fields: Vec<NonZeroUsize>,
}

impl Cols {
    fn of(tupdesc: &PgTupleDesc<'_>) -> Cols {
        let mut found: Vec<(&str, NonZeroUsize)> = Vec::with_capacity(tupdesc.len());
        for (i, att) in tupdesc.iter().enumerate() {
            if !att.attisdropped {
                found.push((att.name(), NonZeroUsize::new(i + 1).expect("attribute numbers start at 1")));
            }
        }
        let at = |name: &str| -> NonZeroUsize {
            found.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).unwrap_or_else(|| {
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("deal_store fact trigger: facts has no column {name}"), None)
            })
        };
        Cols {
            deal_id: at("deal_id"),
            id: at("id"),
            item_checksum: at("item_checksum"),
            previous_version_id: at("previous_version_id"),
            superseded_at: at("superseded_at"),
            fields: FACT.fields.iter().map(|f| at(f)).collect(),
        }
    }
}

/// The canonical content text of a facts row (see `checksum.rs`), read
/// column by column: no JSON is built.
fn content_of<A: WhoAllocated>(row: &PgHeapTuple<'_, A>, cols: &Cols) -> String {
    content_text(&FACT, |i, out| match FACT.fields[i] {
        "details" => match internal(row.get_by_index::<JsonbDatum>(cols.fields[i])) {
            Some(details) => write_canonical(details.root(), out),
            None => out.push_str("null"),
        },
        "source_page_numbers" => match internal(row.get_by_index::<pgrx::Array<'_, i32>>(cols.fields[i])) {
            Some(pages) => {
                out.push('[');
                for (i, page) in pages.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match page {
                        Some(n) => out.push_str(&n.to_string()),
                        None => out.push_str("null"),
                    }
                }
                out.push(']');
            }
            None => out.push_str("null"),
        },
        _ => match internal(row.get_by_index::<&str>(cols.fields[i])) {
            Some(s) => write_folded_string(s, out),
            None => out.push_str("null"),
        },
    })
    .0
}

/// Who is writing history rows right now, if anyone.
#[derive(Clone, Copy, PartialEq)]
enum HistoryWriter {
    None,
    /// `fact_version_rows`: exact copies of rows this trigger checksummed
    Copy,
}

thread_local! {
    static WRITING_HISTORY: std::cell::Cell<HistoryWriter> = const { std::cell::Cell::new(HistoryWriter::None) };
    /// the history rows' INSERT ... SELECT from the statement's transition tables, built once per
    /// session and relation (deal_store.facts, or on Citus each shard of it: see `crate::shard`)
    static HISTORY_SQL: std::cell::RefCell<std::collections::HashMap<pg_sys::Oid, String>> = std::cell::RefCell::new(Default::default());
}

/// True while the versioning writes history rows (their records are copies, not new acts).
pub fn writing_history() -> bool {
    WRITING_HISTORY.with(std::cell::Cell::get) != HistoryWriter::None
}

/// Sets `WRITING_HISTORY` for its own life; an error unwinding through it clears it too.
struct WritingHistory;
impl WritingHistory {
    fn begin(writer: HistoryWriter) -> WritingHistory {
        WRITING_HISTORY.with(|w| w.set(writer));
        WritingHistory
    }
}
impl Drop for WritingHistory {
    fn drop(&mut self) {
        WRITING_HISTORY.with(|w| w.set(HistoryWriter::None));
    }
}

/// A history row (superseded_at set) is written by the version mechanism only:
/// the statement trigger `fact_version_rows` or `import_deal` restoring an export's
/// versions (`deal_store.importing_history`, a superuser-only setting: on Citus the
/// trigger runs on a worker, which a per-process flag would not reach).
fn refuse_forged_history<A: WhoAllocated>(new: &PgHeapTuple<'_, A>, cols: &Cols) {
    if writing_history() || crate::settings::IMPORTING_HISTORY.get() {
        return;
    }
    let history = internal(new.get_by_index::<TimestampWithTimeZone>(cols.superseded_at)).is_some();
    if history {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "a fact's history row (superseded_at set) is written by deal_store's versioning only",
            Some("Update the current fact; its previous content becomes the history row.".into()),
        );
    }
    if internal(new.get_by_index::<pgrx::Uuid>(cols.previous_version_id)).is_some() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "a new fact has no earlier version: previous_version_id is set by deal_store's versioning only",
            Some("Insert the fact without previous_version_id; updating its content later writes its versions.".into()),
        );
    }
}

/// The INSERT that copies replaced versions into history rows: every stored
/// (not generated) column of the old row `o`, with the id the row trigger chose
/// (`n.previous_version_id`) and `superseded_at` set, `FROM` what `from` names.
/// The column list is read from the catalog, so a new column is copied without
/// a change here.
fn history_sql(client: &crate::spi::SpiClient<'_>, from: &str, into: &str) -> String {
    let cols: Vec<String> = internal(client.select(
        "SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute \
         WHERE attrelid = 'deal_store.facts'::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
         ORDER BY attnum",
        None,
        &[],
    ))
    .filter_map(|r| r.get::<String>(1).ok().flatten())
    .collect();
    let src: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "id" => "n.previous_version_id".to_string(),
            "superseded_at" => "pg_catalog.now()".to_string(),
            other => format!("o.{other}"),
        })
        .collect();
    format!("INSERT INTO {into} ({}) SELECT {} FROM {from}", cols.join(", "), src.join(", "))
}

/// `history_sql`'s source for a statement: the transition tables' replaced versions.
const FROM_TRANSITION_TABLES: &str = "old_facts o JOIN new_facts n ON n.deal_id = o.deal_id AND n.id = o.id \
     WHERE o.superseded_at IS NULL AND n.superseded_at IS NULL AND n.previous_version_id IS NOT NULL \
       AND n.previous_version_id IS DISTINCT FROM o.previous_version_id";

/// `history_sql`'s source for one row ($1, $2) given its history id ($3), while
/// the old version is still the visible row (0.1.0's schema, see `statement_trigger_present`).
const FROM_ONE_ROW: &str = "deal_store.facts o, (SELECT $3::pg_catalog.uuid AS previous_version_id) n WHERE o.deal_id = $1 AND o.id = $2";

/// AFTER UPDATE statement trigger: writes the history rows of every fact the
/// statement gave a new version, in one INSERT from the transition tables.
#[pg_trigger]
fn fact_version_rows<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let data: *const pg_sys::TriggerData = trigger.trigger_data();
    let write = |client: &mut crate::spi::SpiClient<'_>| {
        let _writing = WritingHistory::begin(HistoryWriter::Copy);
        // the trigger's own relation: the table, or on Citus the shard the rows are in
        // SAFETY: tg_relation is open for the whole trigger call
        let rel = unsafe { PgRelation::from_pg((*data).tg_relation) };
        let sql = HISTORY_SQL.with(|cell| {
            cell.borrow_mut()
                .entry(rel.oid())
                .or_insert_with(|| history_sql(client, FROM_TRANSITION_TABLES, &crate::shard::qualified(&rel)))
                .clone()
        });
        internal(client.update(sql.as_str(), None, &[]));
    };
    // SAFETY: the trigger data is PostgreSQL's for this call; its transition
    // tables become the relations old_facts and new_facts of this connection
    unsafe { crate::spi::connect_with_transition_tables(data, write) };
    Ok(None)
}

/// Inserts an export's facts (history rows included, as the versioning wrote
/// them) for `import_deal`: the one writer of history rows besides `fact_version_rows`.
/// The jsonb is passed on as it is (no conversion to text and back).
#[pg_extern(schema = "deal_store_internal", volatile, strict, name = "_import_facts")]
fn import_facts(rows: pgrx::AnyElement) {
    // SET LOCAL (Citus passes it on to the workers the transaction uses), off
    // again before returning; an error in between rolls the setting back with
    // the (sub)transaction. SET needs the superuser the extension's owner is.
    let run = |sql: &str, args: &[pgrx::datum::DatumWithOid]| {
        crate::spi::run(sql, args)
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("deal_store _import_facts: {e}"), None))
    };
    run("SET LOCAL deal_store.importing_history = on", &[]);
    run(&format!("SELECT {}._insert_rows('deal_store.facts'::pg_catalog.regclass, $1)", crate::spi::internal_schema()), &[crate::jsonb::spi_arg(&rows)]);
    run("SET LOCAL deal_store.importing_history = off", &[]);
}

/// Whether the table has the statement trigger `fact_version_rows` (enabled or
/// not). A database still at 0.1.0, served by this library between the library
/// swap and `ALTER EXTENSION … UPDATE`, has only the row trigger: there the row
/// trigger writes the history row itself, one INSERT per row, as 0.1.0 did.
fn statement_trigger_present(data: &pg_sys::TriggerData) -> bool {
    crate::audit::triggers_of(data).any(|(name, _)| crate::shard::is_trigger(name, "fact_version_rows"))
}

thread_local! {
    /// the 0.1.0 schema's history INSERT (see `statement_trigger_present`), prepared once per session
    static HISTORY_ROW_INSERT: std::cell::OnceCell<crate::spi::OwnedPreparedStatement> = const { std::cell::OnceCell::new() };
}

/// Copies the current (old) version of one fact into a history row now: the
/// 0.1.0 way, for a database whose schema has no statement trigger yet.
fn insert_history_row(deal_id: Option<pgrx::Uuid>, id: Option<pgrx::Uuid>, history_id: pgrx::Uuid) {
    HISTORY_ROW_INSERT.with(|cell| {
        crate::spi::connect_mut(|client| {
            let plan = cell.get_or_init(|| {
                let sql = history_sql(client, FROM_ONE_ROW, "deal_store.facts");
                let uuid = PgOid::from(pg_sys::UUIDOID);
                internal(client.prepare_mut(sql.as_str(), &[uuid, uuid, uuid])).keep()
            });
            let _writing = WritingHistory::begin(HistoryWriter::Copy);
            internal(client.update(plan, None, &[deal_id.into(), id.into(), history_id.into()]));
        })
    })
}

/// A row's primary key.
fn key<A: WhoAllocated>(row: &PgHeapTuple<'_, A>, cols: &Cols) -> (Option<pgrx::Uuid>, Option<pgrx::Uuid>) {
    (internal(row.get_by_index::<pgrx::Uuid>(cols.deal_id)), internal(row.get_by_index::<pgrx::Uuid>(cols.id)))
}

/// BEFORE INSERT OR UPDATE row trigger: the checksum, and on a content change of
/// a current fact the id of its new history row (written by `fact_version_rows` at
/// the end of the statement). The row is rewritten once, with every value it sets.
#[pg_trigger]
fn fact_versions<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    let new = trigger.new().ok_or(PgTriggerError::NullTriggerData)?;
    let data = trigger.trigger_data();
    // SAFETY: tg_relation is open for the whole trigger call
    let restoring = crate::operations::restoring(unsafe { (*data.tg_relation).rd_id });
    if WRITING_HISTORY.with(std::cell::Cell::get) == HistoryWriter::Copy || restoring {
        return Ok(Some(new)); // a copy of a row checksummed when it was written (or restored)
    }
    // SAFETY: tg_relation is the open relation of this trigger call; its descriptor
    // describes both tuples and lives as long as the call ('a)
    let tupdesc = unsafe { PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att) };
    let cols = Cols::of(&tupdesc);
    let checksum = md5_hex(&content_of(&new, &cols));
    let mut set: Vec<(NonZeroUsize, Option<pg_sys::Datum>)> = Vec::with_capacity(3);
    match trigger.op()? {
        PgTriggerOperation::Update => {
            let old = trigger.old().ok_or(PgTriggerError::NullTriggerData)?;
            let (deal_id, id) = key(&old, &cols);
            if key(&new, &cols) != (deal_id, id) {
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "a fact's deal_id and id cannot change",
                    Some("Insert a new fact instead; ids are what links and history point to.".into()),
                );
            }
            let was_current = internal(old.get_by_index::<TimestampWithTimeZone>(cols.superseded_at)).is_none();
            let stays_current = internal(new.get_by_index::<TimestampWithTimeZone>(cols.superseded_at)).is_none();
            let old_checksum = internal(old.get_by_index::<&str>(cols.item_checksum));
            let old_previous = internal(old.get_by_index::<pgrx::Uuid>(cols.previous_version_id));
            let new_previous = internal(new.get_by_index::<pgrx::Uuid>(cols.previous_version_id));
            // purge's own deletes (and the foreign keys' SET NULL they cause) may touch history rows
            let purging = crate::settings::HARD_DELETE.get();
            if !was_current && !purging {
                // a history row never changes: a statement that reaches one (by legacy_id, say)
                // leaves it as it is and changes the current version only
                return Ok(None);
            }
            if was_current && !stays_current && !purging {
                raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "a fact becomes a history row (superseded_at) only through deal_store's versioning",
                    Some("Update the fact's content to write a new version, or soft-delete it with deal_store.soft_delete.".into()),
                );
            }
            let changed = was_current && stays_current && old_checksum != Some(checksum.as_str());
            let legacy = changed && !statement_trigger_present(data);
            if legacy && crate::settings::CALLER_WRITES_VERSIONS.get() && new_previous != old_previous {
                // a 0.1.0 catalog's merge queue links the history row its statement writes itself
            } else if changed {
                let history_id = pgrx::Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes());
                if legacy {
                    insert_history_row(deal_id, id, history_id);
                }
                set.push((cols.previous_version_id, history_id.into_datum()));
            } else if new_previous != old_previous && !purging {
                // a link the versioning did not make (or a cut chain) would falsify the fact's history
                raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "a fact's previous_version_id is set by deal_store's versioning only",
                    Some("Update the fact's content; the versioning links the version it replaces.".into()),
                );
            }
        }
        _ => refuse_forged_history(&new, &cols), // an INSERT otherwise only gets its checksum (and no history link)
    }
    let unchanged = internal(new.get_by_index::<&str>(cols.item_checksum)) == Some(checksum.as_str());
    if !unchanged {
        set.push((cols.item_checksum, checksum.as_str().into_datum()));
    }
    if set.is_empty() {
        return Ok(Some(new));
    }
    let n = set.len();
    let (mut attnums, mut values, mut nulls) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (attnum, value) in set {
        attnums.push(attnum.get() as std::ffi::c_int);
        values.push(value.unwrap_or(pg_sys::Datum::from(0)));
        nulls.push(value.is_none());
    }
    // SAFETY: the new tuple and its descriptor are this call's; the values are
    // datums of the columns' types (uuid, text) built above and copied into the
    // result, which heap_modify_tuple_by_cols pallocs in the trigger's memory
    // context, as a C trigger's returned tuple is
    let modified = unsafe {
        let tuple = pg_sys::heap_modify_tuple_by_cols(
            new.into_pg(),
            tupdesc.as_ptr(),
            n as _,
            attnums.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        PgHeapTuple::from_heap_tuple(tupdesc, tuple)
    };
    Ok(Some(modified))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "INSERT INTO deal_store.users (id, email) VALUES ('00000000-0000-0000-0000-0000000000a1', 'u@example.com');
             INSERT INTO deal_store.deals (id, user_id, name, target_name)
             VALUES ('00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-0000000000a1', 'T', 'T');
             INSERT INTO deal_store.facts (deal_id, id, legacy_id, domain, item, item_checksum)
             VALUES ('00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-0000000000f1', 'F-1', 'network', 'MPLS', md5('lie'))",
        )
        .unwrap();
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn stored_checksum_is_always_the_computed_one() {
        setup();
        assert_eq!(count("SELECT count(*) FROM deal_store.facts WHERE item_checksum = deal_store.fact_checksum(to_jsonb(facts))"), 1);
        Spi::run("UPDATE deal_store.facts SET item_checksum = md5('lie again')").unwrap();
        assert_eq!(count("SELECT count(*) FROM deal_store.facts WHERE item_checksum = deal_store.fact_checksum(to_jsonb(facts))"), 1);
    }

    #[pg_test]
    fn content_change_makes_a_version_and_keeps_the_id() {
        setup();
        Spi::run("UPDATE deal_store.facts SET confidence_score = 0.9").unwrap();
        assert_eq!(count("SELECT count(*) FROM deal_store.facts"), 1, "no version for a volatile field");
        Spi::run("UPDATE deal_store.facts SET item = 'MPLS WAN' WHERE id = '00000000-0000-0000-0000-0000000000f1'").unwrap();
        Spi::run("UPDATE deal_store.facts SET item = '  MPLS   WAN ' WHERE id = '00000000-0000-0000-0000-0000000000f1'").unwrap();
        assert_eq!(count("SELECT count(*) FROM deal_store.facts"), 2, "white space alone is no change");
        assert_eq!(
            count(
                "SELECT count(*) FROM deal_store.facts c JOIN deal_store.facts h ON h.id = c.previous_version_id
                   WHERE c.id = '00000000-0000-0000-0000-0000000000f1' AND c.superseded_at IS NULL
                     AND h.superseded_at IS NOT NULL AND h.item = 'MPLS' AND c.item = '  MPLS   WAN '"
            ),
            1
        );
    }
}
