//! Canonical form and MD5 checksum of a fact's content.
//!
//! The content is the fields of a [`Kind`] (a fact's eight: domain, category,
//! item, status, details, evidence, entity, source_page_numbers); everything
//! else (ids, confidence, verification, timestamps) is volatile and not hashed.
//! The canonical text is compact JSON of an object holding exactly those keys
//! (missing and NULL both become `null`), with:
//! - object keys sorted by their UTF-8 bytes, at every depth;
//! - every string value trimmed and each inner run of white space folded to one
//!   space (keys are left as they are);
//! - every number written as a plain decimal: no exponent, no `+`, no leading
//!   zeros, no trailing fractional zeros, `-0` as `0` (so 1, 1.0 and 1e0 agree);
//! - strings escaped as JSON does (`"`, `\` and control characters), all other
//!   characters written as UTF-8.
//!
//! The checksum is the lowercase hex MD5 of that text. Values are read from
//! jsonb in place (`jsonb.rs`); the README's "Canonical form" is the spec.
use crate::jsonb::{Container, Node};
use md5::{Digest as _, Md5};
use pgrx::prelude::*;
use pgrx::AnyElement;

/// A kind of diffable row: its table, its content fields (sorted) and the
/// column defaults a missing incoming field takes before hashing.
pub struct Kind {
    pub entity_type: &'static str,
    /// the argument name of a list of them (`facts`), for messages
    pub plural: &'static str,
    pub table: &'static str,
    pub fields: &'static [&'static str],
    pub defaults: &'static [(&'static str, &'static str)],
    /// content fields that are not text columns (jsonb, integers): hashed as
    /// given; every other field is a text (or text[]) column, see [`object_content`]
    pub not_text: &'static [&'static str],
    /// columns a proposal may set besides the content (not hashed)
    pub extras: &'static [&'static str],
    /// every other column: written by deal_store itself (keys, runs, versions,
    /// review, audit, soft delete), never by a proposal. Each column of the
    /// table is in exactly one of `fields`, `extras`, `managed` (a test checks
    /// it against the catalog, so a new column must be classified here).
    #[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
    pub managed: &'static [&'static str],
    /// facts keep versions and a stored checksum (`item_checksum`)
    pub versioned: bool,
}

pub const FACT: Kind = Kind {
    entity_type: "fact",
    plural: "facts",
    table: "deal_store.facts",
    fields: &["category", "details", "domain", "entity", "evidence", "item", "source_page_numbers", "status"],
    defaults: &[("details", "{}"), ("entity", "\"target\""), ("status", "\"documented\"")],
    not_text: &["details", "source_page_numbers"],
    extras: &["confidence_score", "source_document_id"],
    managed: &["deal_id", "id", "legacy_id", "item_checksum", "previous_version_id", "superseded_at", "analysis_run_id",
               "verified", "verified_by", "verified_at", "verification_status", "verification_note", "created_by",
               "updated_by", "created_at", "updated_at", "deleted_at", "deleted_by", "delete_reason", "delete_batch",
               "search_vector"],
    versioned: true,
};

pub const FINDING: Kind = Kind {
    entity_type: "finding",
    plural: "findings",
    table: "deal_store.findings",
    fields: &["cost_currency", "cost_estimate_high", "cost_estimate_low", "description", "domain", "finding_type",
              "mitigation", "phase", "reasoning", "severity", "title"],
    defaults: &[("cost_currency", "\"USD\"")],
    not_text: &["cost_estimate_high", "cost_estimate_low"],
    extras: &[],
    managed: &["deal_id", "id", "legacy_id", "analysis_run_id", "created_at", "updated_at", "deleted_at", "deleted_by",
               "delete_reason", "delete_batch"],
    versioned: false,
};

pub const GAP: Kind = Kind {
    entity_type: "gap",
    plural: "gaps",
    table: "deal_store.gaps",
    fields: &["category", "description", "domain", "importance", "suggested_sources"],
    defaults: &[("importance", "\"important\"")],
    not_text: &[],
    extras: &[],
    managed: &["deal_id", "id", "legacy_id", "resolved_at", "resolved_by", "resolution_note", "analysis_run_id", "created_at",
               "updated_at", "deleted_at", "deleted_by", "delete_reason", "delete_batch"],
    versioned: false,
};

impl Kind {
    pub fn of(entity_type: &str) -> &'static Kind {
        match entity_type {
            "fact" => &FACT,
            "finding" => &FINDING,
            "gap" => &GAP,
            other => crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown entity type \"{other}\""),
                Some("Use fact, finding or gap.".into()),
            ),
        }
    }
}

/// Appends `s` JSON-escaped (without quotes): `"`, `\\` and control characters,
/// the short forms for \b \f \n \r \t; every other character as UTF-8.
fn push_escaped(s: &str, out: &mut String) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
}

/// Writes `s` trimmed, inner white space folded to single spaces, as a JSON string.
pub fn write_folded_string(s: &str, out: &mut String) {
    out.push('"');
    for (i, word) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_escaped(word, out);
    }
    out.push('"');
}

/// The longest canonical number text accepted (digits, sign and point): far
/// beyond any real amount, short enough that no document can blow up into
/// megabytes of digits (`1e131071` would be 131,072 characters).
pub const MAX_NUMBER_TEXT: usize = 1000;

/// A number's text, refused (54000) when longer than [`MAX_NUMBER_TEXT`].
fn bounded(t: &str) -> &str {
    if t.len() > MAX_NUMBER_TEXT {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("a number's canonical text would be {} characters long; at most {MAX_NUMBER_TEXT} are supported", t.len()),
            Some("Canonical numbers are plain decimals (1e300 is written with 301 digits); store such a value as a string.".into()),
        );
    }
    t
}

/// Appends `[e1,e2,...]`, each element written by `element`; checks the stack
/// once (one nesting level) and for a cancel at every element.
fn write_array(items: Container<'_>, out: &mut String, element: impl Fn(Node<'_>, &mut String)) {
    // SAFETY: a plain C call; an overflow is reported as PostgreSQL's 54001 ERROR
    unsafe { pg_sys::check_stack_depth() };
    out.push('[');
    for (i, (_, item)) in items.iter().enumerate() {
        check_for_interrupts!();
        if i > 0 {
            out.push(',');
        }
        element(item, out);
    }
    out.push(']');
}

/// Appends the canonical text of a jsonb value (read in place, see `jsonb.rs`).
/// Numbers are PostgreSQL's normalised numeric text: plain decimal, no
/// exponent, no trailing fractional zeros (so 1, 1.0 and 1e0 agree).
///
/// Hostile input is normal input: each nesting level checks the stack the way
/// PostgreSQL's own recursion does (54001 past `max_stack_depth`), every element
/// checks for a cancel or `statement_timeout`, and a number whose plain decimal
/// text would be longer than [`MAX_NUMBER_TEXT`] is refused (54000).
pub fn write_canonical(v: Node<'_>, out: &mut String) {
    match v {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Node::Number(n) => n.with_text(|t| out.push_str(bounded(t))),
        Node::String(s) => write_folded_string(s, out),
        Node::Array(items) => write_array(items, out, write_canonical),
        Node::Object(map) => {
            // SAFETY: a plain C call; an overflow is reported as PostgreSQL's 54001 ERROR
            unsafe { pg_sys::check_stack_depth() };
            let mut pairs: Vec<(&str, Node<'_>)> = map.iter().map(|(k, v)| (k.unwrap_or_default(), v)).collect();
            pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                check_for_interrupts!();
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                push_escaped(k, out);
                out.push_str("\":");
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// The canonical content text of a row of `kind`, built field by field:
/// `field(i, out)` appends the canonical text of `kind.fields[i]`.
/// Returns the text and each field's byte range in it.
pub fn content_text(kind: &Kind, mut field: impl FnMut(usize, &mut String)) -> (String, Vec<std::ops::Range<usize>>) {
    let mut out = String::with_capacity(256);
    let mut spans = Vec::with_capacity(kind.fields.len());
    out.push('{');
    for (i, name) in kind.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        let at = out.len();
        field(i, &mut out);
        spans.push(at..out.len());
    }
    out.push('}');
    (out, spans)
}

/// The canonical content text of a row given as a jsonb object. With
/// `defaults`, a missing or null field takes its column default (what an
/// INSERT leaving it out would store).
///
/// A value is read as its column's type first: a JSON number or boolean given
/// for a text column is the text the column would store (`{"item": 5}` and a
/// stored item `'5'` are the same content), element by element for a text[]
/// column.
pub fn object_content(kind: &Kind, row: Container<'_>, defaults: bool) -> (String, Vec<std::ops::Range<usize>>) {
    content_text(kind, |i, out| {
        let field = kind.fields[i];
        let text = !kind.not_text.contains(&field);
        match (row.get(field), defaults.then(|| kind.default_of(field)).flatten()) {
            (None | Some(Node::Null), Some(default)) => out.push_str(default),
            (Some(v), _) if text => write_as_text(v, out),
            (Some(v), _) => write_canonical(v, out),
            (None, None) => out.push_str("null"),
        }
    })
}

/// The canonical text of a value stored in a text (or text[]) column: numbers
/// and booleans become the strings PostgreSQL stores for them (`5.0` stays
/// "5.0", as jsonb_populate_record writes it), arrays element by element.
fn write_as_text(v: Node<'_>, out: &mut String) {
    match v {
        Node::Number(n) => n.with_output(|t| write_folded_string(bounded(t), out)),
        Node::Bool(b) => write_folded_string(if b { "true" } else { "false" }, out),
        Node::Array(items) => write_array(items, out, |item, out| match item {
            Node::Array(_) | Node::Object(_) => write_canonical(item, out),
            scalar => write_as_text(scalar, out),
        }),
        other => write_canonical(other, out),
    }
}

/// An MD5 digest; written as 32 lowercase hex digits only for output.
pub type Digest = [u8; 16];

/// MD5 of `text`.
pub fn md5_digest(text: &str) -> Digest {
    Md5::digest(text.as_bytes()).into()
}

/// Lowercase hex of a digest.
pub fn hex(digest: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for byte in digest {
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 15) as usize] as char);
    }
    out
}

/// A digest written as 32 hex digits (a stored checksum); None when it is not one.
pub fn from_hex(text: &str) -> Option<Digest> {
    let mut d = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

/// Lowercase hex MD5 of `text`.
pub fn md5_hex(text: &str) -> String {
    hex(&md5_digest(text))
}

impl Kind {
    /// The column default (canonical JSON text) of a content field, if it has one.
    pub fn default_of(&self, field: &str) -> Option<&'static str> {
        self.defaults.iter().find(|(f, _)| *f == field).map(|(_, d)| *d)
    }

    /// The defaults as one JSON object.
    pub fn defaults_object(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.defaults.iter().map(|(f, d)| (f.to_string(), serde_json::from_str(d).expect("valid default"))).collect(),
        )
    }
}

/// The canonical content text of a jsonb object argument (no defaults: a
/// missing field is null); 22023 when it is not an object.
fn object_arg_content(kind: &Kind, row: &AnyElement) -> String {
    match crate::jsonb::root(row) {
        Node::Object(obj) => object_content(kind, obj, false).0,
        other => crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("a {} must be given as a JSON object", kind.entity_type),
            Some(format!("Got a JSON {}.", other.type_name())),
        ),
    }
}

/// The canonical text of a fact's, finding's or gap's content given as jsonb
/// (e.g. `to_jsonb(row)`). Called by `deal_store.fact_canonical`.
#[pg_extern(schema = "deal_store_internal", immutable, parallel_safe, strict, name = "_content_canonical")]
fn content_canonical_internal(entity_type: &str, row: AnyElement) -> String {
    object_arg_content(Kind::of(entity_type), &row)
}

/// MD5 of `_content_canonical`. Called by `deal_store.fact_checksum` and
/// `deal_store.content_checksum_of`.
#[pg_extern(schema = "deal_store_internal", immutable, parallel_safe, strict, name = "_content_checksum")]
fn content_checksum_internal(entity_type: &str, row: AnyElement) -> String {
    md5_hex(&object_arg_content(Kind::of(entity_type), &row))
}

/// The content fields of a fact, finding or gap (what its checksum covers).
#[pg_extern(immutable, parallel_safe, strict)]
fn content_fields(entity_type: &str) -> Vec<String> {
    Kind::of(entity_type).fields.iter().map(|f| f.to_string()).collect()
}

/// The columns a proposal may set besides the content (`Kind::extras`).
#[pg_extern(schema = "deal_store_internal", immutable, parallel_safe, strict, name = "_extra_fields")]
fn extra_fields(entity_type: &str) -> Vec<String> {
    Kind::of(entity_type).extras.iter().map(|f| f.to_string()).collect()
}

/// The table of a fact, finding or gap.
#[pg_extern(schema = "deal_store_internal", immutable, parallel_safe, strict, name = "_kind_table")]
fn kind_table(entity_type: &str) -> &'static str {
    Kind::of(entity_type).table
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// fact_canonical of a JSON text, through SQL (jsonb input, the binary walk).
    fn canon(json: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT deal_store.fact_canonical($1::jsonb)", &[json.into()]).unwrap().unwrap()
    }

    fn sum(json: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT deal_store.fact_checksum($1::jsonb)", &[json.into()]).unwrap().unwrap()
    }

    /// The canonical text of one value, as the `details` field shows it.
    fn value(json: &str) -> String {
        let all = canon(&format!(r#"{{"details": {json}}}"#));
        let from = all.find(r#""details":"#).unwrap() + 10;
        let to = all.find(r#","domain":"#).unwrap();
        all[from..to].to_string()
    }

    #[pg_test]
    fn numbers_have_one_form() {
        for (a, b) in [("1", "1"), ("1.0", "1"), ("1e0", "1"), ("1.50", "1.5"), ("-0.0", "0"), ("0.001", "0.001"),
                       ("12E-3", "0.012"), ("2.5e3", "2500"), ("-7", "-7"), ("12.3400", "12.34"), ("-0", "0"), ("100", "100"),
                       ("123456789012345678901234567890", "123456789012345678901234567890"), ("1e20", "100000000000000000000")] {
            assert_eq!(value(a), b, "{a}");
        }
        assert_eq!(sum(r#"{"item": "x", "details": {"n": 1}}"#), sum(r#"{"item": "x", "details": {"n": 1.0}}"#));
        assert_eq!(sum(r#"{"item": "x", "details": {"n": 1}}"#), sum(r#"{"item": "x", "details": {"n": 1e0}}"#));
    }

    #[pg_test]
    fn scalars_and_escapes() {
        for (raw, want) in [(r#""  a \t b ""#, r#""a b""#), ("true", "true"), ("null", "null"), ("[]", "[]"), ("{}", "{}"),
                            (r#""quote \" back \\ ctl \u0001 \b""#, r#""quote \" back \\ ctl \u0001 \b""#),
                            (r#"{"k\nx": 1}"#, r#"{"k\nx":1}"#)] {
            assert_eq!(value(raw), want, "{raw}");
        }
    }

    #[pg_test]
    fn keys_are_sorted_at_every_depth() {
        let a = r#"{"item":"x","details":{"b":{"y":1,"x":2},"a":[{"q":1,"p":2}],"aa":0}}"#;
        let b = r#"{"details":{"aa":0,"a":[{"p":2,"q":1}],"b":{"x":2,"y":1}},"item":"x"}"#;
        assert_eq!(sum(a), sum(b));
        // byte order, not jsonb's storage order (shorter keys first)
        assert_eq!(value(r#"{"b":{"y":1,"x":2},"a":[{"q":1,"p":2}],"aa":0}"#), r#"{"a":[{"p":2,"q":1}],"aa":0,"b":{"x":2,"y":1}}"#);
    }

    #[pg_test]
    fn white_space_is_trimmed_and_folded() {
        assert_eq!(sum(r#"{"item": "  SAP   ECC\t6.0\n"}"#), sum(r#"{"item": "SAP ECC 6.0"}"#));
        assert_ne!(sum(r#"{"item": "SAPECC"}"#), sum(r#"{"item": "SAP ECC"}"#));
        assert_eq!(sum(r#"{"item": "a", "details": {"k": " v  w "}}"#), sum(r#"{"item": "a", "details": {"k": "v w"}}"#));
    }

    #[pg_test]
    fn null_and_missing_agree_and_volatile_fields_do_not_count() {
        assert_eq!(sum(r#"{"item": "x", "evidence": null}"#), sum(r#"{"item": "x"}"#));
        assert_eq!(
            sum(r#"{"item": "x", "confidence_score": 0.9, "id": "a", "updated_at": "2020-01-01", "verified": true}"#),
            sum(r#"{"item": "x"}"#)
        );
        assert_ne!(sum(r#"{"item": "x", "evidence": ""}"#), sum(r#"{"item": "x"}"#));
    }

    #[pg_test]
    fn unicode_is_kept_as_utf8() {
        assert_eq!(value(r#"{"k": "Zürich — 東京 😀"}"#), "{\"k\":\"Zürich — 東京 \u{1F600}\"}");
        assert_eq!(sum(r#"{"item": "Z\u00fcrich"}"#), sum(r#"{"item": "Zürich"}"#));
        // a non-breaking space is white space too
        assert_eq!(sum("{\"item\": \"a\u{00a0}\u{2003}b\"}"), sum(r#"{"item": "a b"}"#));
    }

    #[pg_test]
    fn matches_a_known_vector() {
        // the canonical text of this fact and its md5, computable by any program
        let fact = r#"{"domain": "network", "item": " MPLS  WAN ", "details": {"sites": 3.0, "carrier": "Orange"},
                       "source_page_numbers": [4, 5]}"#;
        let text = canon(fact);
        assert_eq!(text, r#"{"category":null,"details":{"carrier":"Orange","sites":3},"domain":"network","entity":null,"evidence":null,"item":"MPLS WAN","source_page_numbers":[4,5],"status":null}"#);
        let sql_md5 = Spi::get_one_with_args::<String>("SELECT md5($1)", &[text.as_str().into()]).unwrap();
        assert_eq!(Some(sum(fact)), sql_md5);
    }

    #[pg_test]
    fn defaults_are_canonical_and_match_the_column_defaults() {
        for kind in [&FACT, &FINDING, &GAP] {
        for &(field, default) in kind.defaults {
            let sql_default = Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT to_jsonb(pg_get_expr(d.adbin, d.adrelid)) FROM pg_attrdef d JOIN pg_attribute a \
                 ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
                 WHERE d.adrelid = $2::regclass AND a.attname = $1",
                &[field.into(), kind.table.into()],
            )
            .unwrap()
            .unwrap();
            let expr = sql_default.0.as_str().unwrap().to_string();
            let value_sql = Spi::get_one::<String>(&format!("SELECT to_jsonb({expr})::text")).unwrap().unwrap();
            assert_eq!(value(&value_sql), default, "{field}: the default is written in canonical form");
        }
        }
    }

    /// A column added to facts, findings or gaps fails this test until it is
    /// classified in its `Kind` (content, extra or managed) — the one place.
    #[pg_test]
    fn every_column_is_classified_once() {
        for kind in [&FACT, &FINDING, &GAP] {
            let columns: Vec<String> = Spi::connect(|c| {
                c.select(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    None,
                    &[kind.table.into()],
                )
                .unwrap()
                .filter_map(|r| r.get::<String>(1).unwrap())
                .collect()
            });
            let mut classified: Vec<&str> = kind.fields.iter().chain(kind.extras).chain(kind.managed).copied().collect();
            classified.sort();
            let before = classified.len();
            classified.dedup();
            assert_eq!(before, classified.len(), "{}: a column is classified twice", kind.table);
            let mut cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            cols.sort();
            assert_eq!(cols, classified, "{}: columns vs. Kind (fields + extras + managed)", kind.table);
            // the defaults a missing field takes when hashing are the columns' own
            for (field, default) in kind.defaults {
                let same = Spi::get_one_with_args::<bool>(
                    &format!("SELECT (SELECT pg_catalog.to_jsonb(x.{field}) FROM (SELECT {} AS {field}) x) = $1::jsonb",
                        Spi::get_one_with_args::<String>(
                            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
                             WHERE d.adrelid = $1::regclass AND a.attname = $2",
                            &[kind.table.into(), (*field).into()],
                        ).unwrap().unwrap_or_else(|| panic!("{}.{field} has no default", kind.table))),
                    &[(*default).into()],
                )
                .unwrap();
                assert_eq!(same, Some(true), "{}.{field}: Kind default {default} vs. the column default", kind.table);
            }
        }
    }

    #[pg_test]
    fn content_fields_are_sorted_columns_of_their_table() {
        for kind in [&FACT, &FINDING, &GAP] {
            assert!(kind.fields.windows(2).all(|w| w[0] < w[1]), "{} fields sorted", kind.entity_type);
            for field in kind.fields {
                let n = Spi::get_one_with_args::<i64>(
                    "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND attname = $2 AND NOT attisdropped",
                    &[kind.table.into(), (*field).into()],
                )
                .unwrap();
                assert_eq!(n, Some(1), "{}.{field}", kind.table);
            }
        }
    }
}
