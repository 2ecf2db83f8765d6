//! Canonical form and MD5 checksum of a fact's content.
//!
//! The content is the eight fields in [`CONTENT_FIELDS`]; everything else
//! (ids, confidence, verification, timestamps) is volatile and not hashed.
//! The canonical text is compact JSON of an object holding exactly those eight
//! keys (missing and NULL both become `null`), with:
//! - object keys sorted by their UTF-8 bytes, at every depth;
//! - every string value trimmed and each inner run of white space folded to one
//!   space (keys are left as they are);
//! - every number written as a plain decimal: no exponent, no `+`, no leading
//!   zeros, no trailing fractional zeros, `-0` as `0` (so 1, 1.0 and 1e0 agree);
//! - strings escaped as JSON does (`"`, `\` and control characters), all other
//!   characters written as UTF-8.
//! The checksum is the lowercase hex MD5 of that text.
use md5::{Digest, Md5};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};

/// A kind of diffable row: its table, its content fields (sorted) and the
/// column defaults a missing incoming field takes before hashing.
pub struct Kind {
    pub entity_type: &'static str,
    pub table: &'static str,
    pub fields: &'static [&'static str],
    pub defaults: &'static [(&'static str, &'static str)],
    /// facts keep versions and a stored checksum (`item_checksum`)
    pub versioned: bool,
}

pub const FACT: Kind = Kind {
    entity_type: "fact",
    table: "deal_store.facts",
    fields: &["category", "details", "domain", "entity", "evidence", "item", "source_page_numbers", "status"],
    defaults: &[("details", "{}"), ("entity", "\"target\""), ("status", "\"documented\"")],
    versioned: true,
};

pub const FINDING: Kind = Kind {
    entity_type: "finding",
    table: "deal_store.findings",
    fields: &["cost_currency", "cost_estimate_high", "cost_estimate_low", "description", "domain", "finding_type",
              "mitigation", "phase", "reasoning", "severity", "title"],
    defaults: &[("cost_currency", "\"USD\"")],
    versioned: false,
};

pub const GAP: Kind = Kind {
    entity_type: "gap",
    table: "deal_store.gaps",
    fields: &["category", "description", "domain", "importance", "suggested_sources"],
    defaults: &[("importance", "\"important\"")],
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

/// Writes `s` trimmed, inner white space folded to single spaces, as a JSON string.
fn write_folded_string(s: &str, out: &mut String) {
    out.push('"');
    for (i, word) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for ch in word.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Rewrites a JSON number's text as a plain canonical decimal.
fn canonical_number(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut exp = exponent - frac_part.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return "0".into();
    }
    digits = trimmed.to_string();
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    let body = if exp >= 0 {
        format!("{digits}{}", "0".repeat(exp as usize))
    } else {
        let point = digits.len() as i64 + exp;
        if point > 0 {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        } else {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        }
    };
    if negative { format!("-{body}") } else { body }
}

/// Appends the canonical text of `v` to `out`.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&canonical_number(&n.to_string())),
        Value::String(s) => write_folded_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// Canonical text of one value.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

/// Canonical text of one JSON value given as raw JSON text (as jsonb_out writes
/// it): strings, numbers and literals are rewritten without building a tree.
pub fn canonical_raw(raw: &str) -> String {
    match raw.as_bytes().first() {
        Some(b'"') => {
            let s: std::borrow::Cow<str> = serde_json::from_str(raw).unwrap_or_default();
            let mut out = String::with_capacity(s.len() + 2);
            write_folded_string(&s, &mut out);
            out
        }
        Some(b'-' | b'0'..=b'9') => canonical_number(raw),
        Some(b'{' | b'[') => canonical(&serde_json::from_str(raw).unwrap_or(Value::Null)),
        _ => raw.to_string(), // true, false, null
    }
}

/// Canonical content text from the canonical texts of a kind's fields, in order.
pub fn assemble_content(kind: &Kind, parts: &[String]) -> String {
    let mut out = String::from("{");
    for (i, (field, part)) in kind.fields.iter().zip(parts).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(field);
        out.push_str("\":");
        out.push_str(part);
    }
    out.push('}');
    out
}

/// Canonical text of a row's content: the content fields of its kind.
pub fn canonical_content(kind: &Kind, fact: &Map<String, Value>) -> String {
    let parts: Vec<String> = kind.fields.iter().map(|f| canonical(fact.get(*f).unwrap_or(&Value::Null))).collect();
    assemble_content(kind, &parts)
}

/// Lowercase hex MD5 of `text`.
pub fn md5_hex(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Md5::digest(text.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in digest {
        hex.push(HEX[(byte >> 4) as usize] as char);
        hex.push(HEX[(byte & 15) as usize] as char);
    }
    hex
}

/// Checksum of a row's content given as a JSON object.
pub fn content_checksum(kind: &Kind, fact: &Map<String, Value>) -> String {
    md5_hex(&canonical_content(kind, fact))
}

impl Kind {
    /// The column default (JSON text) of a content field, if it has one.
    pub fn default_of(&self, field: &str) -> Option<&'static str> {
        self.defaults.iter().find(|(f, _)| *f == field).map(|(_, d)| *d)
    }

    /// The defaults as one JSON object.
    pub fn defaults_object(&self) -> Value {
        Value::Object(
            self.defaults.iter().map(|(f, d)| (f.to_string(), serde_json::from_str(d).expect("valid default"))).collect(),
        )
    }
}

/// The object inside a jsonb argument; 22023 naming the function otherwise.
fn object_arg(function: &str, arg: JsonB) -> Map<String, Value> {
    match arg.0 {
        Value::Object(map) => map,
        other => crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{function} expects a JSON object"),
            Some(format!("Got a JSON {}.", json_type(&other))),
        ),
    }
}

/// 32 lowercase hex MD5 of the canonical form of a fact's content (domain,
/// category, item, status, details, evidence, entity, source_page_numbers).
#[pg_extern(immutable, parallel_safe, strict)]
fn fact_checksum(fact: JsonB) -> String {
    content_checksum(&FACT, &object_arg("fact_checksum", fact))
}

/// The canonical text that `fact_checksum` hashes, for checking another implementation.
#[pg_extern(immutable, parallel_safe, strict)]
fn fact_canonical(fact: JsonB) -> String {
    canonical_content(&FACT, &object_arg("fact_canonical", fact))
}

/// Content checksum of a fact, finding or gap given as JSON (e.g. `to_jsonb(row)`).
#[pg_extern(immutable, parallel_safe, strict)]
fn content_checksum_of(entity_type: &str, row: JsonB) -> String {
    content_checksum(Kind::of(entity_type), &object_arg("content_checksum_of", row))
}

/// The content fields of a fact, finding or gap (what its checksum covers).
#[pg_extern(immutable, parallel_safe, strict)]
fn content_fields(entity_type: &str) -> Vec<String> {
    Kind::of(entity_type).fields.iter().map(|f| f.to_string()).collect()
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use serde_json::json;

    fn sum(v: Value) -> String {
        content_checksum(&FACT, v.as_object().unwrap())
    }

    #[pg_test]
    fn numbers_have_one_form() {
        for (a, b) in [("1", "1"), ("1.0", "1"), ("1e0", "1"), ("1.50", "1.5"), ("-0.0", "0"), ("0.001", "0.001"),
                       ("12E-3", "0.012"), ("2.5e3", "2500"), ("-7", "-7"), ("00012.3400", "12.34"),
                       ("123456789012345678901234567890", "123456789012345678901234567890")] {
            assert_eq!(canonical_number(a), b, "{a}");
        }
        let a = sum(json!({"item": "x", "details": {"n": 1}}));
        let b: Value = serde_json::from_str(r#"{"item": "x", "details": {"n": 1.0}}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"item": "x", "details": {"n": 1e0}}"#).unwrap();
        assert_eq!(a, sum(b));
        assert_eq!(a, sum(c));
    }

    #[pg_test]
    fn raw_canonical_agrees_with_the_value_path() {
        for raw in [r#""  a \t b ""#, "1.50", "-0", "2e3", "true", "null", r#"{"b": [1, "x  y"], "a": null}"#,
                    r#""quote \" back \\ ctl \u0001 \u00e9""#] {
            let v: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(canonical_raw(raw), canonical(&v), "{raw}");
        }
    }

    #[pg_test]
    fn keys_are_sorted_at_every_depth() {
        let a: Value = serde_json::from_str(r#"{"item":"x","details":{"b":{"y":1,"x":2},"a":[{"q":1,"p":2}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"details":{"a":[{"p":2,"q":1}],"b":{"x":2,"y":1}},"item":"x"}"#).unwrap();
        assert_eq!(sum(a.clone()), sum(b));
        assert!(canonical(&a["details"]).starts_with(r#"{"a":[{"p":2,"q":1}],"b":{"x":2,"y":1}}"#));
    }

    #[pg_test]
    fn white_space_is_trimmed_and_folded() {
        assert_eq!(sum(json!({"item": "  SAP   ECC\t6.0\n"})), sum(json!({"item": "SAP ECC 6.0"})));
        assert_ne!(sum(json!({"item": "SAPECC"})), sum(json!({"item": "SAP ECC"})));
        assert_eq!(sum(json!({"item": "a", "details": {"k": " v  w "}})), sum(json!({"item": "a", "details": {"k": "v w"}})));
    }

    #[pg_test]
    fn null_and_missing_agree_and_volatile_fields_do_not_count() {
        assert_eq!(sum(json!({"item": "x", "evidence": null})), sum(json!({"item": "x"})));
        assert_eq!(
            sum(json!({"item": "x", "confidence_score": 0.9, "id": "a", "updated_at": "2020-01-01", "verified": true})),
            sum(json!({"item": "x"}))
        );
        assert_ne!(sum(json!({"item": "x", "evidence": ""})), sum(json!({"item": "x"})));
    }

    #[pg_test]
    fn unicode_is_kept_as_utf8() {
        let s = canonical(&json!({"k": "Zürich — 東京 \u{1F600}"}));
        assert_eq!(s, "{\"k\":\"Zürich — 東京 \u{1F600}\"}");
        let escaped: Value = serde_json::from_str(r#"{"item": "Z\u00fcrich"}"#).unwrap();
        assert_eq!(sum(escaped), sum(json!({"item": "Zürich"})));
        // a non-breaking space is white space too
        assert_eq!(sum(json!({"item": "a\u{00a0}\u{2003}b"})), sum(json!({"item": "a b"})));
    }

    #[pg_test]
    fn matches_a_known_vector() {
        // the canonical text of this fact and its md5, computable by any program
        let fact = json!({"domain": "network", "item": " MPLS  WAN ", "details": {"sites": 3.0, "carrier": "Orange"},
                          "source_page_numbers": [4, 5]});
        let text = canonical_content(&FACT, fact.as_object().unwrap());
        assert_eq!(text, r#"{"category":null,"details":{"carrier":"Orange","sites":3},"domain":"network","entity":null,"evidence":null,"item":"MPLS WAN","source_page_numbers":[4,5],"status":null}"#);
        let sql_md5 = Spi::get_one_with_args::<String>("SELECT md5($1)", &[text.as_str().into()]).unwrap();
        assert_eq!(Some(md5_hex(&text)), sql_md5);
    }

    #[pg_test]
    fn defaults_match_the_column_defaults() {
        for kind in [&FACT, &FINDING, &GAP] {
        for &(field, default) in kind.defaults {
            let sql_default = Spi::get_one_with_args::<JsonB>(
                "SELECT to_jsonb(pg_get_expr(d.adbin, d.adrelid)) FROM pg_attrdef d JOIN pg_attribute a \
                 ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
                 WHERE d.adrelid = $2::regclass AND a.attname = $1",
                &[field.into(), kind.table.into()],
            )
            .unwrap()
            .unwrap();
            let expr = sql_default.0.as_str().unwrap().to_string();
            let value = Spi::get_one::<JsonB>(&format!("SELECT to_jsonb({expr})")).unwrap().unwrap();
            assert_eq!(value.0, serde_json::from_str::<Value>(default).unwrap(), "{field}");
        }
        }
    }

    #[pg_test]
    fn content_fields_are_sorted_columns_of_their_table() {
        for kind in [&FACT, &FINDING, &GAP] {
            assert!(kind.fields.windows(2).all(|w| w[0] < w[1]), "{} fields sorted", kind.entity_type);
            for field in kind.fields {
                let n = Spi::get_one_with_args::<i64>(
                    "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped",
                    &[kind.table.into(), (*field).into()],
                )
                .unwrap();
                assert_eq!(n, Some(1), "{}.{field}", kind.table);
            }
        }
    }
}
