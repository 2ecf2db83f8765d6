//! Checksum-based diff of incoming rows (facts, findings or gaps) against a
//! deal's current live rows.
//!
//! Incoming rows are keyed by `legacy_id`; each gets the column defaults for
//! the content fields it leaves out, then its checksum is compared with the
//! stored one (facts keep it in `item_checksum`; findings and gaps are hashed
//! as they are read). Only for checksums that differ are the stored contents
//! read to name the fields that changed.
use crate::checksum::{from_hex, hex, md5_digest, object_content, Digest, Kind, FACT};
use crate::errors::{raise, required};
use crate::jsonb::{self, JsonbDatum, Node};
use pgrx::prelude::*;
use pgrx::{AnyElement, Uuid};
use std::collections::HashMap;
use std::ops::Range;

/// One incoming row, validated and canonicalised.
pub struct Incoming {
    pub legacy_id: String,
    /// its position in the incoming array
    pub ordinal: usize,
    /// canonical content text (defaults applied) and each field's range in it,
    /// in `kind.fields` order
    content: String,
    spans: Vec<Range<usize>>,
    pub checksum: Digest,
    pub confidence: Option<f64>,
}

impl Incoming {
    /// The canonical text of the i-th content field.
    pub fn field(&self, i: usize) -> &str {
        &self.content[self.spans[i].clone()]
    }
}

/// What a diff line, a queued change and the docs call a row's change: one
/// vocabulary (`pending_changes.change_type` holds the first three).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChangeType {
    New,
    Update,
    Delete,
    Unchanged,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::New => "new",
            ChangeType::Update => "update",
            ChangeType::Delete => "delete",
            ChangeType::Unchanged => "unchanged",
        }
    }
}

/// One line of a diff.
pub struct Change {
    pub legacy_id: String,
    pub change: ChangeType,
    pub fact_id: Option<Uuid>,
    pub old_checksum: Option<Digest>,
    pub new_checksum: Option<Digest>,
    /// the content fields that differ (update lines; empty for unchanged ones)
    pub changed_fields: Option<Vec<&'static str>>,
    /// The incoming row, for new and update lines.
    pub incoming: Option<Incoming>,
}

fn bad_input(message: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message, None)
}

/// FNV-1a: the maps here are keyed by short ids from the database, where
/// SipHash's flood resistance buys nothing and costs a third of a lookup.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325) // the FNV-1a offset basis
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Validates and canonicalises `incoming`: a jsonb array of objects with
/// unique, non-empty legacy_id. The jsonb is read in place (see `jsonb.rs`).
pub fn parse_incoming(kind: &Kind, incoming: &AnyElement) -> Vec<Incoming> {
    let items = match jsonb::root(incoming) {
        Node::Array(items) => items,
        other => bad_input(format!("incoming must be a JSON array of facts, not a JSON {}", other.type_name())),
    };
    let mut seen: FastMap<&str, usize> = FastMap::with_capacity_and_hasher(items.len(), Default::default());
    let mut out = Vec::with_capacity(items.len());
    for (i, (_, item)) in items.iter().enumerate() {
        check_for_interrupts!();
        let Node::Object(row) = item else {
            bad_input(format!("incoming element {i} is a JSON {}, not an object", item.type_name()))
        };
        let legacy_id = match row.get("legacy_id") {
            Some(Node::String(s)) if !s.trim().is_empty() => s,
            _ => bad_input(format!("incoming element {i} has no legacy_id (a non-empty string)")),
        };
        if let Some(first) = seen.insert(legacy_id, i) {
            bad_input(format!("incoming element {i} repeats legacy_id \"{legacy_id}\" of element {first}"));
        }
        let (content, spans) = object_content(kind, row, true);
        let checksum = md5_digest(&content);
        let confidence = row.get("confidence_score").and_then(|n| n.as_f64());
        out.push(Incoming { legacy_id: legacy_id.to_string(), ordinal: i, content, spans, checksum, confidence });
    }
    out
}

/// At most this many domain names in a `domains` argument, of at most this many characters.
const MAX_DOMAINS: usize = 1000;
const MAX_DOMAIN_CHARS: usize = 200;

pub fn check_domains(domains: &Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    domains.as_ref().map(|d| {
        if d.len() > MAX_DOMAINS {
            bad_input(format!("domains names {} domains; at most {MAX_DOMAINS} are allowed", d.len()));
        }
        d.iter()
            .map(|x| {
                let x = x.clone().unwrap_or_else(|| bad_input("domains must not contain NULL".into()));
                if x.chars().count() > MAX_DOMAIN_CHARS {
                    bad_input(format!("a domain name is at most {MAX_DOMAIN_CHARS} characters long"));
                }
                x
            })
            .collect()
    })
}

/// Content of the current live rows of a kind, as `jsonb_build_object(...)` SQL.
fn content_sql(kind: &Kind) -> String {
    let pairs: Vec<String> = kind.fields.iter().map(|f| format!("'{f}', {f}")).collect();
    format!("pg_catalog.jsonb_build_object({})", pairs.join(", "))
}

/// The condition of a kind's live current rows, its columns prefixed with `alias`
/// ("t." or "").
pub fn current_rows_sql(kind: &Kind, alias: &str) -> String {
    if kind.versioned {
        format!("{alias}deleted_at IS NULL AND {alias}superseded_at IS NULL")
    } else {
        format!("{alias}deleted_at IS NULL")
    }
}

/// The content of a stored row read as `jsonb_build_object` of its content fields.
fn stored_content(kind: &Kind, row: Option<JsonbDatum>) -> Option<(String, Vec<Range<usize>>)> {
    match row?.root() {
        Node::Object(obj) => Some(object_content(kind, obj, false)),
        _ => None,
    }
}

struct Stored<'a> {
    id: Uuid,
    checksum: Option<Digest>,
    domain: &'a str,
}

/// P0002 unless the deal exists (deleted or not), 42501 unless the caller may
/// read it: no function answers for a deal that is not there or not its to see.
/// SQL's `deal_store_internal._require_deal` goes through the same check; this one names
/// no 0.2.0 SQL object, so the library still serves a 0.1.0 database between
/// the library swap and ALTER EXTENSION UPDATE.
pub fn require_deal(deal_id: Uuid) {
    crate::access::require_right(deal_id, crate::access::Right::Read);
}

/// Diffs validated incoming rows against the deal's current live rows of that kind.
/// `removed` is only inferred for stored rows inside `domains` (all when None;
/// with none, only the stored rows of the incoming legacy_ids are read).
/// Lines come sorted by legacy_id.
pub fn diff(kind: &Kind, deal_id: Uuid, incoming: Vec<Incoming>, domains: Option<&[String]>) -> Vec<Change> {
    let mut changes: Vec<Change> = crate::spi::connect(|client| {
        require_deal(deal_id);
        let checksum = if kind.versioned { "item_checksum".to_string() } else { content_sql(kind) };
        // with no removals to infer, only the incoming rows' own stored rows are read
        let keyed = domains.is_some_and(|d| d.is_empty());
        let sql = format!(
            "SELECT legacy_id, id, {checksum}, domain FROM {} WHERE deal_id = $1 AND {}{}",
            kind.table,
            current_rows_sql(kind, ""),
            if keyed { " AND legacy_id = ANY ($2)" } else { "" }
        );
        let keys: Vec<&str> = if keyed { incoming.iter().map(|i| i.legacy_id.as_str()).collect() } else { Vec::new() };
        let rows = client
            .select(&sql, None, &[deal_id.into(), keys.into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        // the strings borrow from the SPI result, which lives until this closure returns
        let mut stored: FastMap<&str, Stored<'_>> = FastMap::with_capacity_and_hasher(rows.len(), Default::default());
        for r in rows {
            check_for_interrupts!();
            let checksum = if kind.versioned {
                r.get::<&str>(3).ok().flatten().and_then(from_hex)
            } else {
                stored_content(kind, r.get::<JsonbDatum>(3).ok().flatten()).map(|(text, _)| md5_digest(&text))
            };
            let legacy: &str = r.get(1).ok().flatten().unwrap_or_default();
            let id = r.get(2).ok().flatten().expect("id is NOT NULL");
            stored.insert(legacy, Stored { id, checksum, domain: r.get(4).ok().flatten().unwrap_or_default() });
        }

        let mut changes: Vec<Change> = Vec::with_capacity(incoming.len() + stored.len() / 10);
        for inc in incoming {
            check_for_interrupts!();
            let found = stored.remove(inc.legacy_id.as_str());
            let (change, fact_id, old_checksum) = match found {
                None => (ChangeType::New, None, None),
                Some(s) if s.checksum == Some(inc.checksum) => (ChangeType::Unchanged, Some(s.id), s.checksum),
                Some(s) => (ChangeType::Update, Some(s.id), s.checksum),
            };
            let unchanged = change == ChangeType::Unchanged;
            let new_checksum = Some(inc.checksum);
            let (legacy_id, incoming) = if unchanged { (inc.legacy_id, None) } else { (inc.legacy_id.clone(), Some(inc)) };
            changes.push(Change {
                legacy_id,
                change,
                fact_id,
                old_checksum,
                new_checksum,
                changed_fields: unchanged.then(Vec::new),
                incoming,
            });
        }
        let scope: Option<std::collections::HashSet<&str>> = domains.map(|d| d.iter().map(String::as_str).collect());
        for (legacy_id, s) in stored {
            check_for_interrupts!();
            if scope.as_ref().is_none_or(|d| d.contains(s.domain)) {
                changes.push(Change {
                    legacy_id: legacy_id.to_string(),
                    change: ChangeType::Delete,
                    fact_id: Some(s.id),
                    old_checksum: s.checksum,
                    new_checksum: None,
                    changed_fields: None,
                    incoming: None,
                });
            }
        }
        changes
    });
    name_changed_fields(kind, deal_id, &mut changes);
    changes.sort_unstable_by(|a, b| a.legacy_id.cmp(&b.legacy_id));
    changes
}

/// Reads the stored content of the changed rows and names the fields that differ.
fn name_changed_fields(kind: &Kind, deal_id: Uuid, changes: &mut [Change]) {
    let by_id: FastMap<[u8; 16], usize> = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.change == ChangeType::Update)
        .filter_map(|(i, c)| Some((*c.fact_id?.as_bytes(), i)))
        .collect();
    if by_id.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = by_id.keys().map(|b| Uuid::from_bytes(*b)).collect();
    crate::spi::connect(|client| {
        let sql = format!(
            "SELECT t.id, {} FROM {} t JOIN pg_catalog.unnest($2::pg_catalog.uuid[]) AS x(id) ON t.deal_id = $1 AND t.id = x.id WHERE {}",
            content_sql(kind),
            kind.table,
            current_rows_sql(kind, "")
        );
        let rows = client
            .select(&sql, None, &[deal_id.into(), ids.into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        for r in rows {
            check_for_interrupts!();
            let Some(&at) = r.get::<Uuid>(1).ok().flatten().and_then(|id| by_id.get(id.as_bytes())) else { continue };
            let Some((old, spans)) = stored_content(kind, r.get::<JsonbDatum>(2).ok().flatten()) else { continue };
            let c = &mut changes[at];
            let Some(new) = c.incoming.as_ref() else { continue };
            c.changed_fields = Some(
                kind.fields
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| old[spans[*i].clone()] != *new.field(*i))
                    .map(|(_, f)| *f)
                    .collect(),
            );
        }
    })
}

/// Diff of `incoming` (a jsonb array of facts keyed by legacy_id) against the
/// deal's current facts, as parallel arrays (one call, no per-row overhead);
/// the SQL function `deal_store.diff_facts` unnests them into rows.
/// changed_fields is a comma-separated list.
#[pg_extern(schema = "deal_store_internal", volatile, name = "_diff_facts")]
#[allow(clippy::type_complexity)] // the row type pgrx declares to SQL
fn diff_facts_internal(
    deal_id: Option<Uuid>,
    incoming: Option<AnyElement>,
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
    let (deal_id, incoming) = (required(deal_id, "deal_id"), required(incoming, "incoming"));
    let domains = check_domains(&domains);
    let changes = diff(&FACT, deal_id, parse_incoming(&FACT, &incoming), domains.as_deref());
    let n = changes.len();
    let (mut a, mut b, mut c, mut d, mut e, mut f) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for ch in changes {
        a.push(ch.legacy_id);
        b.push(ch.change.as_str().to_string());
        c.push(ch.fact_id);
        d.push(ch.old_checksum.as_ref().map(hex));
        e.push(ch.new_checksum.as_ref().map(hex));
        f.push(ch.changed_fields.map(|x| x.join(",")));
    }
    TableIterator::once((a, b, c, d, e, f))
}
