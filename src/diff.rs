//! Checksum-based diff of incoming rows (facts, findings or gaps) against a
//! deal's current live rows.
//!
//! Incoming rows are keyed by `legacy_id`; each gets the column defaults for
//! the content fields it leaves out, then its checksum is compared with the
//! stored one (facts keep it in `item_checksum`; findings and gaps are hashed
//! as they are read). Only for checksums that differ are the stored contents
//! read to name the fields that changed.
use crate::checksum::{assemble_content, canonical, canonical_raw, content_checksum, md5_hex, Kind, FACT};
use crate::errors::raise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB, Uuid};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// One incoming row, validated and canonicalised.
pub struct Incoming {
    pub legacy_id: String,
    /// its position in the incoming array
    pub ordinal: usize,
    /// canonical text of each content field (defaults applied), in `kind.fields` order
    pub fields: Vec<String>,
    pub checksum: String,
    pub confidence: Option<f64>,
}

/// One line of a diff.
pub struct Change {
    pub legacy_id: String,
    pub change: &'static str,
    pub fact_id: Option<Uuid>,
    pub old_checksum: Option<String>,
    pub new_checksum: Option<String>,
    pub changed_fields: Option<Vec<String>>,
    /// The incoming row, for new and changed lines.
    pub incoming: Option<Incoming>,
}

fn bad_input(message: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message, None)
}

/// Raises 22023 unless the polymorphic argument is jsonb.
fn require_jsonb(incoming: &AnyElement) {
    if incoming.oid() != pg_sys::JSONBOID {
        bad_input("incoming must be jsonb".into());
    }
}

/// The jsonb argument as an SPI parameter, without converting it.
pub fn jsonb_arg(incoming: AnyElement) -> DatumWithOid<'static> {
    require_jsonb(&incoming);
    // SAFETY: the datum is a jsonb value that lives for the whole call
    unsafe { DatumWithOid::new(incoming, pg_sys::JSONBOID) }
}

/// The JSON type named by the first character of a JSON text.
fn raw_type(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') | None => "null",
        _ => "number",
    }
}

/// Validates and canonicalises `incoming`: a jsonb array of objects with
/// unique, non-empty legacy_id. The text is read with borrowed slices
/// (`RawValue`), so no JSON tree is built for strings and numbers.
pub fn parse_incoming(kind: &Kind, incoming: AnyElement) -> Vec<Incoming> {
    require_jsonb(&incoming);
    // SAFETY: a jsonb datum; jsonb_out returns a palloc'd C string of its text
    let text: &std::ffi::CStr = unsafe {
        let detoasted = pg_sys::pg_detoast_datum_packed(incoming.datum().cast_mut_ptr());
        pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(pg_sys::Datum::from(detoasted))])
            .expect("jsonb_out returns text")
    };
    let text = text.to_str().unwrap_or_default();
    let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_else(|_| {
        bad_input(format!("incoming must be a JSON array of facts, not a JSON {}", raw_type(text)))
    });
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let row: HashMap<String, &RawValue> = serde_json::from_str(item.get()).unwrap_or_else(|_| {
            bad_input(format!("incoming element {i} is a JSON {}, not an object", raw_type(item.get())))
        });
        let legacy_id = match row.get("legacy_id").map(|r| serde_json::from_str::<String>(r.get())) {
            Some(Ok(s)) if !s.trim().is_empty() => s,
            _ => bad_input(format!("incoming element {i} has no legacy_id (a non-empty string)")),
        };
        if let Some(first) = seen.insert(legacy_id.clone(), i) {
            bad_input(format!("incoming element {i} repeats legacy_id \"{legacy_id}\" of element {first}"));
        }
        let fields: Vec<String> = kind
            .fields
            .iter()
            .map(|f| match (row.get(*f).map(|r| r.get()), kind.default_of(f)) {
                (None | Some("null"), Some(default)) => canonical_raw(default),
                (Some(raw), _) => canonical_raw(raw),
                (None, None) => "null".to_string(),
            })
            .collect();
        let checksum = md5_hex(&assemble_content(kind, &fields));
        let confidence = row.get("confidence_score").and_then(|r| r.get().parse::<f64>().ok());
        out.push(Incoming { legacy_id, ordinal: i, fields, checksum, confidence });
    }
    out
}

struct Stored {
    id: Uuid,
    checksum: Option<String>,
    domain: String,
}

pub fn check_domains(domains: &Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    domains.as_ref().map(|d| {
        d.iter()
            .map(|x| x.clone().unwrap_or_else(|| bad_input("domains must not contain NULL".into())))
            .collect()
    })
}

/// Content of the current live rows of a kind, as `jsonb_build_object(...)` SQL.
fn content_sql(kind: &Kind) -> String {
    let pairs: Vec<String> = kind.fields.iter().map(|f| format!("'{f}', {f}")).collect();
    format!("jsonb_build_object({})", pairs.join(", "))
}

fn current_rows_sql(kind: &Kind) -> &'static str {
    if kind.versioned { "deleted_at IS NULL AND superseded_at IS NULL" } else { "deleted_at IS NULL" }
}

/// Diffs validated incoming rows against the deal's current live rows of that kind.
/// `removed` is only inferred for stored rows inside `domains` (all when None).
pub fn diff(kind: &Kind, deal_id: Uuid, incoming: Vec<Incoming>, domains: Option<&[String]>) -> Vec<Change> {
    let stored: HashMap<String, Stored> = Spi::connect(|client| {
        let exists = client
            .select("SELECT 1 FROM deal_store.deals WHERE id = $1", Some(1), &[deal_id.into()])
            .map(|t| !t.is_empty())
            .unwrap_or(false);
        if !exists {
            raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("deal {deal_id} does not exist"), None);
        }
        let checksum = if kind.versioned { "item_checksum".to_string() } else { content_sql(kind) };
        let sql = format!(
            "SELECT legacy_id, id, {checksum}::text, domain FROM {} WHERE deal_id = $1 AND {}",
            kind.table,
            current_rows_sql(kind)
        );
        let rows = client
            .select(&sql, None, &[deal_id.into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        rows.map(|r| {
            let legacy: String = r.get(1).ok().flatten().unwrap_or_default();
            let raw: Option<String> = r.get(3).ok().flatten();
            let checksum = if kind.versioned {
                raw
            } else {
                raw.and_then(|t| serde_json::from_str::<Map<String, Value>>(&t).ok()).map(|m| content_checksum(kind, &m))
            };
            let stored = Stored {
                id: r.get(2).ok().flatten().expect("id is NOT NULL"),
                checksum,
                domain: r.get(4).ok().flatten().unwrap_or_default(),
            };
            (legacy, stored)
        })
        .collect()
    });

    let mut changes: Vec<Change> = Vec::with_capacity(incoming.len() + stored.len() / 10);
    let mut seen = HashSet::with_capacity(incoming.len());
    for inc in incoming {
        seen.insert(inc.legacy_id.clone());
        let (change, fact_id, old_checksum) = match stored.get(&inc.legacy_id) {
            None => ("new", None, None),
            Some(s) if s.checksum.as_deref() == Some(inc.checksum.as_str()) => ("unchanged", Some(s.id), s.checksum.clone()),
            Some(s) => ("changed", Some(s.id), s.checksum.clone()),
        };
        changes.push(Change {
            legacy_id: inc.legacy_id.clone(),
            change,
            fact_id,
            old_checksum,
            new_checksum: Some(inc.checksum.clone()),
            changed_fields: (change == "unchanged").then(Vec::new),
            incoming: (change != "unchanged").then_some(inc),
        });
    }
    for (legacy_id, s) in &stored {
        if !seen.contains(legacy_id) && domains.is_none_or(|d| d.iter().any(|x| *x == s.domain)) {
            changes.push(Change {
                legacy_id: legacy_id.clone(),
                change: "removed",
                fact_id: Some(s.id),
                old_checksum: s.checksum.clone(),
                new_checksum: None,
                changed_fields: None,
                incoming: None,
            });
        }
    }
    name_changed_fields(kind, deal_id, &mut changes);
    changes.sort_by(|a, b| a.legacy_id.cmp(&b.legacy_id));
    changes
}

/// Reads the stored content of the changed facts and names the fields that differ.
fn name_changed_fields(kind: &Kind, deal_id: Uuid, changes: &mut [Change]) {
    let ids: Vec<Uuid> = changes.iter().filter(|c| c.change == "changed").filter_map(|c| c.fact_id).collect();
    if ids.is_empty() {
        return;
    }
    let stored: HashMap<[u8; 16], Map<String, Value>> = Spi::connect(|client| {
        let sql = format!(
            "SELECT id, {} FROM {} WHERE deal_id = $1 AND id = ANY($2) AND {}",
            content_sql(kind),
            kind.table,
            current_rows_sql(kind)
        );
        let rows = client
            .select(&sql, None, &[deal_id.into(), ids.into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        rows.filter_map(|r| {
            let id: Uuid = r.get(1).ok().flatten()?;
            let JsonB(Value::Object(m)) = r.get::<JsonB>(2).ok().flatten()? else { return None };
            Some((*id.as_bytes(), m))
        })
        .collect()
    });
    for c in changes.iter_mut().filter(|c| c.change == "changed") {
        let (Some(old), Some(new)) = (c.fact_id.and_then(|id| stored.get(id.as_bytes())), c.incoming.as_ref()) else {
            continue;
        };
        c.changed_fields = Some(
            kind.fields
                .iter()
                .zip(&new.fields)
                .filter(|(f, part)| canonical(old.get(**f).unwrap_or(&Value::Null)) != **part)
                .map(|(f, _)| f.to_string())
                .collect(),
        );
    }
}

/// Diff of `incoming` (a jsonb array of facts keyed by legacy_id) against the
/// deal's current facts, as parallel arrays (one call, no per-row overhead);
/// the SQL function `deal_store.diff_facts` unnests them into rows.
/// changed_fields is a comma-separated list.
#[pg_extern(volatile, name = "_diff_facts")]
fn diff_facts_internal(
    deal_id: Uuid,
    incoming: AnyElement,
    domains: Option<Vec<Option<String>>>,
) -> TableIterator<
    'static,
    (
        name!(legacy_ids, Vec<String>),
        name!(changes, Vec<String>),
        name!(fact_ids, Vec<Option<Uuid>>),
        name!(old_checksums, Vec<Option<String>>),
        name!(new_checksums, Vec<Option<String>>),
        name!(changed_fields, Vec<Option<String>>),
    ),
> {
    let domains = check_domains(&domains);
    let changes = diff(&FACT, deal_id, parse_incoming(&FACT, incoming), domains.as_deref());
    let n = changes.len();
    let (mut a, mut b, mut c, mut d, mut e, mut f) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for ch in changes {
        a.push(ch.legacy_id);
        b.push(ch.change.to_string());
        c.push(ch.fact_id);
        d.push(ch.old_checksum);
        e.push(ch.new_checksum);
        f.push(ch.changed_fields.map(|x| x.join(",")));
    }
    TableIterator::once((a, b, c, d, e, f))
}
