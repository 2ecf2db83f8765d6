//! Fact versions: the trigger that keeps `facts.item_checksum` right and turns
//! a content-changing UPDATE of a current fact into a new version.
//!
//! On INSERT it computes the checksum (a client's own value is replaced). On
//! UPDATE of a current fact whose checksum changes, it copies the old row into a
//! history row (new id, `superseded_at` set) and points the updated row's
//! `previous_version_id` at it, so the fact keeps its id and links keep working.
//! An UPDATE that leaves the checksum alone writes no version.
use crate::checksum::{content_text, md5_hex, write_canonical, write_folded_string, FACT};
use crate::errors::raise;
use crate::jsonb::JsonbDatum;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::WhoAllocated;
use std::fmt::Display;

/// Internal failures (a column missing or of another type) are bugs: report them as XX000.
fn internal<T, E: Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("deal_store fact trigger: {e}"), None))
}

/// The canonical content text of a facts row (see `checksum.rs`), read
/// column by column: no JSON is built.
fn content_of<A: WhoAllocated>(row: &PgHeapTuple<'_, A>) -> String {
    content_text(&FACT, |i, out| match FACT.fields[i] {
        "details" => match internal(row.get_by_name::<JsonbDatum>("details")) {
            Some(details) => write_canonical(details.root(), out),
            None => out.push_str("null"),
        },
        "source_page_numbers" => match internal(row.get_by_name::<pgrx::Array<'_, i32>>("source_page_numbers")) {
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
        text_column => match internal(row.get_by_name::<&str>(text_column)) {
            Some(s) => write_folded_string(s, out),
            None => out.push_str("null"),
        },
    })
    .0
}

thread_local! {
    static HISTORY_INSERT: std::cell::OnceCell<OwnedPreparedStatement> = const { std::cell::OnceCell::new() };
    /// true while `insert_history_row` writes: the one insert of a history row the trigger allows
    static WRITING_HISTORY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets `WRITING_HISTORY` for its own life; an error unwinding through it clears it too.
struct WritingHistory;
impl WritingHistory {
    fn begin() -> WritingHistory {
        WRITING_HISTORY.with(|w| w.set(true));
        WritingHistory
    }
}
impl Drop for WritingHistory {
    fn drop(&mut self) {
        WRITING_HISTORY.with(|w| w.set(false));
    }
}

/// A history row (superseded_at set) is written by the version mechanism only:
/// this trigger's own copy, or a set-based writer of the extension under
/// `deal_store.caller_writes_versions` (a setting only superusers may change).
fn refuse_forged_history<A: WhoAllocated>(new: &PgHeapTuple<'_, A>) {
    let history = internal(new.get_by_name::<TimestampWithTimeZone>("superseded_at")).is_some();
    if history && !WRITING_HISTORY.with(std::cell::Cell::get) && !crate::settings::CALLER_WRITES_VERSIONS.get() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "a fact's history row (superseded_at set) is written by deal_store's versioning only",
            Some("Update the current fact; its previous content becomes the history row.".into()),
        );
    }
}

/// Copies the old version of a fact into a history row: every stored (not
/// generated) column, with a new id and superseded_at set. The plan is prepared
/// once per session.
fn insert_history_row(deal_id: Option<pgrx::Uuid>, id: Option<pgrx::Uuid>, history_id: pgrx::Uuid) {
    HISTORY_INSERT.with(|cell| {
        Spi::connect_mut(|client| {
            let plan = cell.get_or_init(|| {
                let cols: String = internal(
                    client
                        .select(
                            "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum) FROM pg_catalog.pg_attribute \
                             WHERE attrelid = 'deal_store.facts'::regclass AND attnum > 0 AND NOT attisdropped \
                             AND attgenerated = ''",
                            Some(1),
                            &[],
                        )
                        .and_then(|t| t.first().get_one::<String>()),
                )
                .expect("facts has columns");
                let src = cols.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "INSERT INTO deal_store.facts ({cols}) SELECT {src} FROM deal_store.facts f, \
                     pg_catalog.jsonb_populate_record(f, pg_catalog.jsonb_build_object('id', $3, 'superseded_at', pg_catalog.now())) r \
                     WHERE f.deal_id = $1 AND f.id = $2"
                );
                let uuid = PgOid::from(pg_sys::UUIDOID);
                internal(client.prepare_mut(sql.as_str(), &[uuid, uuid, uuid])).keep()
            });
            let _writing = WritingHistory::begin();
            internal(client.update(plan, None, &[deal_id.into(), id.into(), history_id.into()]));
        })
    })
}

/// True when a set-based writer (the merge queue, with `deal_store.caller_writes_versions`
/// on) points the row at a history row it writes itself in the same statement.
fn caller_writes_version<A: WhoAllocated, B: WhoAllocated>(old: &PgHeapTuple<'_, A>, new: &PgHeapTuple<'_, B>) -> bool {
    crate::settings::CALLER_WRITES_VERSIONS.get()
        && internal(new.get_by_name::<pgrx::Uuid>("previous_version_id"))
            != internal(old.get_by_name::<pgrx::Uuid>("previous_version_id"))
}

/// A row's primary key.
fn key<A: WhoAllocated>(row: &PgHeapTuple<'_, A>) -> (Option<pgrx::Uuid>, Option<pgrx::Uuid>) {
    (internal(row.get_by_name::<pgrx::Uuid>("deal_id")), internal(row.get_by_name::<pgrx::Uuid>("id")))
}

#[pg_trigger]
fn fact_versions<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    let mut new = trigger.new().ok_or(PgTriggerError::NullTriggerData)?.into_owned();
    let checksum = md5_hex(&content_of(&new));
    match trigger.op()? {
        PgTriggerOperation::Update => {
            let old = trigger.old().ok_or(PgTriggerError::NullTriggerData)?;
            let (deal_id, id) = key(&old);
            if key(&new) != (deal_id, id) {
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "a fact's deal_id and id cannot change",
                    Some("Insert a new fact instead; ids are what links and history point to.".into()),
                );
            }
            let was_current = internal(old.get_by_name::<TimestampWithTimeZone>("superseded_at")).is_none();
            let stays_current = internal(new.get_by_name::<TimestampWithTimeZone>("superseded_at")).is_none();
            let old_checksum = internal(old.get_by_name::<String>("item_checksum"));
            if was_current && stays_current && old_checksum.as_deref() != Some(checksum.as_str()) && !caller_writes_version(&old, &new) {
                let history_id = pgrx::Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes());
                // The old version is still the visible row: copy it with a new id.
                insert_history_row(deal_id, id, history_id);
                internal(new.set_by_name("previous_version_id", history_id));
            }
            if let Some(actor) = crate::access::actor_for_write() {
                internal(new.set_by_name("updated_by", actor));
            }
        }
        _ => refuse_forged_history(&new), // an INSERT (an import included) otherwise only gets its checksum
    }
    internal(new.set_by_name("item_checksum", checksum));
    Ok(Some(new))
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
            count("SELECT count(*) FROM deal_store.facts c JOIN deal_store.facts h ON h.id = c.previous_version_id
                   WHERE c.id = '00000000-0000-0000-0000-0000000000f1' AND c.superseded_at IS NULL
                     AND h.superseded_at IS NOT NULL AND h.item = 'MPLS' AND c.item = '  MPLS   WAN '"),
            1
        );
    }
}
