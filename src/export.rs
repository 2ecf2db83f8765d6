//! The export format of `export_deal` / `import_deal` (format_version 1), as
//! typed Rust structs: one source of truth for both directions.
//!
//! `deal_store_internal._export_format(doc)` reads a document through these types and
//! returns what they serialize to. `export_deal` passes its document through
//! it (a column the types do not know fails the export, so a schema change
//! cannot drift from the format unnoticed); `import_deal` calls it before it
//! writes anything, so a malformed document fails with 22023 naming the JSON
//! path of the first bad field (`$.facts[3].verified: invalid type: string
//! "maybe", expected a boolean`).
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::{AnyElement, JsonB};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The JSON type of a value, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Declares one row type: the struct (serde derive) and `read`, which builds
/// it field by field so that an error names the field's JSON path.
macro_rules! rows {
    ($($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name { $(pub $field: $ty),* }

        impl $name {
            fn read(row: &Value, path: &str) -> Result<Self, String> {
                let Value::Object(obj) = row else {
                    return Err(format!("{path}: expected an object, got {}", kind(row)));
                };
                const FIELDS: &[&str] = &[$(stringify!($field)),*];
                if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                    return Err(format!("{path}.{k}: unknown field"));
                }
                Ok($name { $($field: <$ty>::deserialize(obj.get(stringify!($field)).unwrap_or(&Value::Null))
                    .map_err(|e| format!("{path}.{}: {e}", stringify!($field)))?),* })
            }
        }
    )*};
}

type Ts = String; // timestamptz as to_jsonb writes it; PostgreSQL parses it on import

rows! {
    /// The deal's owner: no password_hash and no roles ever leave or enter through an export.
    Owner { id: Uuid, email: String, display_name: Option<String>, active: bool, created_at: Ts, updated_at: Ts }
    Deal { id: Uuid, user_id: Uuid, name: String, target_name: String, buyer_name: Option<String>, deal_type: String,
           industry: Option<String>, sub_industry: Option<String>, status: String, created_at: Ts, updated_at: Ts,
           deleted_at: Option<Ts>, deleted_by: Option<Uuid>, delete_reason: Option<String>, delete_batch: Option<Uuid>,
           ignore_unknown_keys: Option<bool> } // absent before 0.2.0: off
    Document { deal_id: Uuid, id: Uuid, filename: String, file_hash: String, content_checksum: Option<String>, entity: String,
               authority_level: i32, storage_path: String, version: i32, supersedes_id: Option<Uuid>,
               extracted_text: Option<String>, page_count: Option<i32>, status: String, processed_at: Option<Ts>,
               uploaded_at: Ts, updated_at: Ts, deleted_at: Option<Ts>, deleted_by: Option<Uuid>,
               delete_reason: Option<String>, delete_batch: Option<Uuid> }
    AnalysisRun { deal_id: Uuid, id: Uuid, run_number: i32, is_incremental: bool, status: String,
                  domains_analyzed: Option<Vec<Option<String>>>, documents_processed: i32, facts_created: i32,
                  facts_updated: i32, findings_created: i32, gaps_created: i32, error: Option<String>, metadata: Value,
                  started_at: Ts, completed_at: Option<Ts>, duration_seconds: Option<f64>, triggered_by: Option<Uuid>,
                  updated_at: Ts }
    /// A fact (current, deleted or a history row); search_vector is derived and not exported.
    Fact { deal_id: Uuid, id: Uuid, legacy_id: String, domain: String, category: Option<String>, item: String,
           item_checksum: Option<String>, status: String, details: Value, evidence: Option<String>, confidence_score: f64,
           entity: String, source_document_id: Option<Uuid>, source_page_numbers: Option<Vec<Option<i32>>>,
           previous_version_id: Option<Uuid>, superseded_at: Option<Ts>, analysis_run_id: Option<Uuid>, verified: bool,
           verified_by: Option<String>, verified_at: Option<Ts>, verification_status: String,
           verification_note: Option<String>, created_by: Option<Uuid>, updated_by: Option<Uuid>, created_at: Ts,
           updated_at: Ts, deleted_at: Option<Ts>, deleted_by: Option<Uuid>, delete_reason: Option<String>,
           delete_batch: Option<Uuid> }
    Finding { deal_id: Uuid, id: Uuid, legacy_id: String, finding_type: String, domain: String, title: String,
              description: Option<String>, reasoning: Option<String>, severity: Option<String>, phase: Option<String>,
              cost_estimate_low: Option<i64>, cost_estimate_high: Option<i64>, cost_currency: String,
              mitigation: Option<String>, analysis_run_id: Option<Uuid>, created_at: Ts, updated_at: Ts,
              deleted_at: Option<Ts>, deleted_by: Option<Uuid>, delete_reason: Option<String>, delete_batch: Option<Uuid> }
    Gap { deal_id: Uuid, id: Uuid, legacy_id: String, domain: String, category: Option<String>, description: String,
          importance: String, suggested_sources: Option<Vec<Option<String>>>, resolved_at: Option<Ts>,
          resolved_by: Option<Uuid>, resolution_note: Option<String>, analysis_run_id: Option<Uuid>, created_at: Ts,
          updated_at: Ts, deleted_at: Option<Ts>, deleted_by: Option<Uuid>, delete_reason: Option<String>,
          delete_batch: Option<Uuid> }
    Link { deal_id: Uuid, id: Uuid, fact_id: Uuid, finding_id: Uuid, link_type: String, created_at: Ts }
}

/// A whole export document.
#[derive(Serialize)]
pub struct Export {
    format: String,
    format_version: i32,
    owner: Option<Owner>,
    deal: Deal,
    documents: Vec<Document>,
    analysis_runs: Vec<AnalysisRun>,
    facts: Vec<Fact>,
    deleted_facts: Vec<Fact>,
    fact_history: Vec<Fact>,
    findings: Vec<Finding>,
    gaps: Vec<Gap>,
    fact_finding_links: Vec<Link>,
}

/// The rows of one section (an array; missing or null is empty).
fn section<T>(doc: &serde_json::Map<String, Value>, name: &str, read: fn(&Value, &str) -> Result<T, String>) -> Result<Vec<T>, String> {
    match doc.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(rows)) => rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                check_for_interrupts!();
                read(row, &format!("$.{name}[{i}]"))
            })
            .collect(),
        Some(other) => Err(format!("$.{name}: expected an array, got {}", kind(other))),
    }
}

impl Export {
    /// Reads a document; the error names the JSON path of the first bad field.
    pub fn read(doc: &Value) -> Result<Export, String> {
        let Value::Object(obj) = doc else { return Err(format!("$: expected an object, got {}", kind(doc))) };
        const SECTIONS: &[&str] = &["format", "format_version", "owner", "deal", "documents", "analysis_runs", "facts",
                                    "deleted_facts", "fact_history", "findings", "gaps", "fact_finding_links"];
        if let Some(k) = obj.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(format!("$.{k}: unknown field"));
        }
        if obj.get("format").and_then(Value::as_str) != Some("deal_store.export") {
            return Err("$.format: not \"deal_store.export\"".into());
        }
        if obj.get("format_version").and_then(Value::as_i64) != Some(1) {
            return Err("$.format_version: only format_version 1 is supported".into());
        }
        Ok(Export {
            format: "deal_store.export".into(),
            format_version: 1,
            owner: match obj.get("owner") {
                None | Some(Value::Null) => None,
                Some(o) => Some(Owner::read(o, "$.owner")?),
            },
            deal: Deal::read(obj.get("deal").unwrap_or(&Value::Null), "$.deal")?,
            documents: section(obj, "documents", Document::read)?,
            analysis_runs: section(obj, "analysis_runs", AnalysisRun::read)?,
            facts: section(obj, "facts", Fact::read)?,
            deleted_facts: section(obj, "deleted_facts", Fact::read)?,
            fact_history: section(obj, "fact_history", Fact::read)?,
            findings: section(obj, "findings", Finding::read)?,
            gaps: section(obj, "gaps", Gap::read)?,
            fact_finding_links: section(obj, "fact_finding_links", Link::read)?,
        })
    }
}

/// Reads an export document through the typed format and returns what the
/// types serialize to; 22023 naming the JSON path of the first bad field.
/// Called by `deal_store.export_deal` and `deal_store.import_deal` with a jsonb.
///
/// The document is read from jsonb's own text here, not by pgrx's `JsonB`
/// argument conversion, so that hostile input gets a clear error: nesting past
/// serde_json's limit of 128 levels is 54001; numbers keep their exact text
/// (serde_json's arbitrary_precision), so no number is out of range.
#[pg_extern(schema = "deal_store_internal", immutable, parallel_safe, strict, name = "_export_format")]
fn export_format(doc: AnyElement) -> JsonB {
    if doc.oid() != pg_sys::JSONBOID {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "an export document must be jsonb", None);
    }
    // SAFETY: a jsonb datum of this call; jsonb_out returns a palloc'd C string, read at once
    let text = unsafe {
        let out = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), doc.datum());
        std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned()
    };
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        let deep = e.to_string().contains("recursion limit");
        raise(
            if deep { PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX } else { PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE },
            if deep { "an export document may nest at most 128 levels deep".to_string() } else { format!("malformed deal_store export: {e}") },
            None,
        )
    });
    drop(text);
    match Export::read(&value) {
        Ok(export) => JsonB(serde_json::to_value(export).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("export serialisation: {e}"), None)
        })),
        Err(at) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("malformed deal_store export: {at}"),
            Some("Pass the jsonb that deal_store.export_deal returned (format_version 1).".into()),
        ),
    }
}
