//! Checking a proposal before anything is proposed: every field of every
//! element against its column in the catalog (type, NOT NULL; unknown keys
//! refused unless the deal ignores them), and the table's CHECK constraints on
//! every element that becomes a change. A bad
//! element is ERROR 22023 naming its position, its `legacy_id` and the field;
//! nothing of the call is proposed. So no change in the queue can fail to
//! apply for a reason its proposal could have shown.
use crate::checksum::Kind;
use crate::errors::raise;
use crate::jsonb::{self, Node};
use pgrx::prelude::*;
use crate::spi::SpiClient;
use pgrx::{AnyElement, JsonB};
use std::collections::HashMap;

/// Keys every proposal element may carry besides its kind's fields and extras:
/// its key, and the confidence its tier is computed from.
const PROPOSAL_KEYS: &[&str] = &["legacy_id", "confidence_score"];

/// A column a proposal may set, as the catalog describes it.
struct Column {
    /// `pg_type.typname` (`text`, `_int4`, `float8`, ...)
    type_name: String,
    /// NOT NULL with no default: the element must carry it
    required: bool,
}

fn invalid(at: usize, legacy_id: &str, message: String) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("element {at} (legacy_id \"{legacy_id}\"): {message}"),
        Some("Nothing of this call was proposed; fix the element and propose again.".into()),
    )
}

/// The keys a proposal of this kind may carry (what `new_value` keeps).
pub fn allowed_keys(kind: &Kind) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = PROPOSAL_KEYS.to_vec();
    for k in kind.fields.iter().chain(kind.extras) {
        if !keys.contains(k) {
            keys.push(k);
        }
    }
    keys
}

fn columns(client: &SpiClient<'_>, kind: &Kind) -> HashMap<String, Column> {
    client
        .select(
            "SELECT a.attname::pg_catalog.text, t.typname::pg_catalog.text, a.attnotnull AND NOT a.atthasdef \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped",
            None,
            &[kind.table.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
        .filter_map(|r| {
            Some((
                r.get::<String>(1).ok().flatten()?,
                Column { type_name: r.get(2).ok().flatten()?, required: r.get(3).ok().flatten().unwrap_or(false) },
            ))
        })
        .collect()
}

/// Why `value` cannot be stored in a column of type `type_name`, if it cannot.
fn type_problem(type_name: &str, value: &Node<'_>) -> Option<String> {
    let whole = |n: &Node<'_>, lo: f64, hi: f64| n.as_f64().is_some_and(|x| x.fract() == 0.0 && (lo..=hi).contains(&x));
    let ok = match type_name {
        "text" | "varchar" | "date" | "timestamptz" => matches!(value, Node::String(_)),
        "_text" => match value {
            Node::Array(a) => a.iter().all(|(_, v)| matches!(v, Node::String(_) | Node::Null)),
            _ => false,
        },
        "_int4" => match value {
            // page numbers: whole numbers from 1
            Node::Array(a) => a.iter().all(|(_, v)| whole(&v, 1.0, i32::MAX as f64)),
            _ => false,
        },
        "int4" => whole(value, i32::MIN as f64, i32::MAX as f64),
        "int8" => whole(value, -9.0e15, 9.0e15),
        "float8" => value.as_f64().is_some_and(f64::is_finite),
        "bool" => matches!(value, Node::Bool(_)),
        "uuid" => matches!(value, Node::String(s) if uuid::Uuid::parse_str(s).is_ok()),
        "jsonb" => true,
        _ => matches!(value, Node::String(_)),
    };
    (!ok).then(|| {
        let wanted = match type_name {
            "text" | "varchar" => "a string",
            "_text" => "an array of strings",
            "_int4" => "an array of page numbers (whole numbers from 1)",
            "int4" | "int8" => "a whole number",
            "float8" => "a finite number",
            "bool" => "true or false",
            "uuid" => "a uuid string",
            _ => "a string",
        };
        format!("must be {wanted}, not {}", describe(value))
    })
}

fn describe(value: &Node<'_>) -> String {
    match value {
        Node::String(s) => format!("\"{}\"", s.chars().take(40).collect::<String>()),
        Node::Number(n) => n.with_text(|t| if t.len() > 40 { format!("{}... ({} digits)", &t[..20], t.len()) } else { t.to_string() }),
        Node::Bool(b) => b.to_string(),
        other => format!("a JSON {}", other.type_name()),
    }
}

/// Checks every element of a proposal (see the module comment); 22023 on the
/// first bad one. `ignore_unknown` is the deal's `ignore_unknown_keys`.
pub fn check(client: &SpiClient<'_>, kind: &Kind, doc: &AnyElement, allowed: &[&str], ignore_unknown: bool) {
    let Node::Array(items) = jsonb::root(doc) else { return }; // parse_incoming said what it must be
    let cols = columns(client, kind);
    let required: Vec<&str> = allowed.iter().copied().filter(|k| cols.get(*k).is_some_and(|c| c.required)).collect();
    for (at, (_, element)) in items.iter().enumerate() {
        check_for_interrupts!();
        let Node::Object(row) = element else { continue };
        let legacy_id = match row.get("legacy_id") {
            Some(Node::String(s)) => s,
            _ => "",
        };
        for (key, value) in row.iter() {
            let key = key.unwrap_or_default();
            if key == "legacy_id" || matches!(value, Node::Null) {
                continue;
            }
            if !allowed.contains(&key) {
                if ignore_unknown {
                    continue;
                }
                invalid(
                    at,
                    legacy_id,
                    format!("unknown field \"{key}\" (a {} carries {})", kind.entity_type, allowed.join(", ")),
                );
            }
            if key == "confidence_score" {
                if !value.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)) {
                    invalid(at, legacy_id, format!("field \"confidence_score\" must be a number from 0 to 1, not {}", describe(&value)));
                }
                continue;
            }
            if let Some(problem) = cols.get(key).and_then(|c| type_problem(&c.type_name, &value)) {
                invalid(at, legacy_id, format!("field \"{key}\" {problem}"));
            }
        }
        for field in &required {
            if matches!(row.get(field), None | Some(Node::Null)) && *field != "legacy_id" {
                invalid(at, legacy_id, format!("required field \"{field}\" is missing"));
            }
        }
    }
}

/// The table's CHECK constraints over the columns a proposal sets, evaluated
/// set-based on the elements at `ordinals` (the ones that become changes: an
/// unchanged element writes nothing), with the kind's defaults for what they omit.
pub fn check_constraints(client: &SpiClient<'_>, kind: &Kind, doc: &AnyElement, allowed: &[&str], ordinals: Vec<i32>) {
    if ordinals.is_empty() {
        return;
    }
    let constraints: Vec<(String, String, Vec<String>)> = client
        .select(
            "SELECT c.conname::pg_catalog.text, pg_catalog.pg_get_constraintdef(c.oid), \
                    (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                     WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)) \
             FROM pg_catalog.pg_constraint c WHERE c.conrelid = $1::pg_catalog.regclass AND c.contype = 'c' ORDER BY c.conname",
            None,
            &[kind.table.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
        .filter_map(|r| Some((r.get(1).ok().flatten()?, r.get(2).ok().flatten()?, r.get(3).ok().flatten()?)))
        .filter(|(_, _, cols): &(String, String, Vec<String>)| cols.iter().all(|c| allowed.contains(&c.as_str())))
        .collect();
    if constraints.is_empty() {
        return;
    }
    let tests: Vec<String> = constraints
        .iter()
        .enumerate()
        .map(|(i, (_, def, _))| {
            let expr = def.trim_start_matches("CHECK ").trim_end_matches(" NOT VALID");
            format!("({i}, {expr} IS NOT FALSE)")
        })
        .collect();
    let sql = format!(
        "SELECT e.ord, e.v OPERATOR(pg_catalog.->>) 'legacy_id', k.i \
         FROM pg_catalog.unnest($4::pg_catalog.int4[]) AS o(ord), \
              LATERAL (SELECT o.ord, $1 OPERATOR(pg_catalog.->) o.ord AS v) AS e, \
              LATERAL pg_catalog.jsonb_populate_record(NULL::{table}, $2 OPERATOR(pg_catalog.||) \
                  (SELECT coalesce(pg_catalog.jsonb_object_agg(j.key, j.value), '{{}}'::pg_catalog.jsonb) FROM pg_catalog.jsonb_each(e.v) j \
                   WHERE j.key OPERATOR(pg_catalog.=) ANY ($3) AND j.value OPERATOR(pg_catalog.<>) 'null'::pg_catalog.jsonb)) AS r, \
              LATERAL (VALUES {tests}) AS k(i, ok) \
         WHERE NOT k.ok ORDER BY e.ord, k.i LIMIT 1",
        table = kind.table,
        tests = tests.join(", ")
    );
    let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    let bad = client
        .select(
            &sql,
            Some(1),
            &[crate::jsonb::spi_arg(doc), JsonB(kind.defaults_object()).into(), allowed.into(), ordinals.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
    if let Some(r) = bad.into_iter().next() {
        let at: i32 = r.get(1).ok().flatten().unwrap_or(0);
        let legacy_id: String = r.get(2).ok().flatten().unwrap_or_default();
        let i: i32 = r.get(3).ok().flatten().unwrap_or(0);
        let (name, def, cols) = &constraints[i as usize];
        let field = match cols.as_slice() {
            [one] => format!("field \"{one}\" violates"),
            many => format!("fields {} violate", many.join(", ")),
        };
        invalid(at as usize, &legacy_id, format!("{field} {name}: {def}"));
    }
}

/// Whether the deal ignores unknown keys in proposals (`deals.ignore_unknown_keys`;
/// read through `to_jsonb` so the library still serves a 0.1.0 database, which lacks it).
pub fn ignores_unknown_keys(client: &SpiClient<'_>, deal_id: pgrx::Uuid) -> bool {
    client
        .select(
            "SELECT (pg_catalog.to_jsonb(d) OPERATOR(pg_catalog.->>) 'ignore_unknown_keys')::boolean FROM deal_store.deals d WHERE d.id = $1",
            Some(1),
            &[deal_id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
        .next()
        .and_then(|r| r.get::<bool>(1).ok().flatten())
        .unwrap_or(false)
}
