//! The server owns its records: *who* did something and *when*.
//!
//! One classification of columns, by name, for every table of deal_store (and
//! any table a later version adds, without a change here):
//!
//! | column            | kind | moment   | INSERT                   | UPDATE                                           |
//! |-------------------|------|----------|--------------------------|--------------------------------------------------|
//! | `created_*`, `uploaded_at`, `started_at`, `added_*`, `registered_at`, `triggered_by` | who/when | creation | the actor / now() | the old value            |
//! | `updated_*`       | who/when | touch | the actor / now()        | the actor / now() when the row changes, else the old value |
//! | `superseded_at`   | when | versioning | left to the versioning (`facts.rs`) | left to the versioning   |
//! | any other `*_by` / `*_at` | who/when | act | the actor / now() when set | the actor / now() when it changes to a value; NULL stays NULL |
//!
//! `*_by` columns are "who" (the acting user, `deal_store.current_actor()`),
//! `*_at` columns "when" (the transaction's clock, `now()`). A caller's own
//! value is never refused: it is replaced, so an application or ORM that sends
//! whole rows keeps working and cannot record another person or another time.
//!
//! The trigger `deal_store_internal.server_columns` (BEFORE INSERT OR UPDATE, on every
//! table of the schema with such a column) applies the rule. It steps aside in
//! two cases only, neither of which an ordinary role can bring about: while
//! the versioning copies a fact into its history row (a process-local flag of
//! this library), and while an admin's `import_deal` restores an export's
//! records (`deal_store.importing_history`, a setting only superusers may
//! change, which `import_deal` sets as the extension's owner; anyone else's
//! import is written by the importer, now). A superuser's restore by COPY is
//! taken as it is (see `operations.rs`).
//!
//! The who column of an act is never cleared while the act stands: clearing
//! `deleted_by` keeps it as long as `deleted_at` is set (a restore clears both).
use crate::audit::{attr, same_image};
use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgTupleDesc, WhoAllocated};

/// Who or when.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Who,
    When,
}

/// When the server writes the column.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Moment {
    /// once, when the row is inserted
    Creation,
    /// whenever the row changes
    Touch,
    /// when the act it records happens (the column gets a value)
    Act,
    /// by the fact versioning only
    Versioning,
}

/// The one classification: a column's kind and moment, or None for other columns.
pub fn classify(name: &str) -> Option<(Kind, Moment)> {
    let (kind, stem) = if let Some(stem) = name.strip_suffix("_by") {
        (Kind::Who, stem)
    } else if let Some(stem) = name.strip_suffix("_at") {
        (Kind::When, stem)
    } else {
        return None;
    };
    let moment = match stem {
        "created" | "uploaded" | "started" | "added" | "registered" | "triggered" => Moment::Creation,
        "updated" => Moment::Touch,
        "superseded" => Moment::Versioning,
        _ => Moment::Act,
    };
    Some((kind, moment))
}

/// The classification as a table, for SQL (the permission matrix tests every row of it).
#[pg_extern(schema = "deal_store_internal", name = "_server_columns", stable, parallel_safe)]
fn server_columns_sql() -> TableIterator<'static, (name!(table_name, String), name!(column_name, String), name!(kind, String), name!(moment, String))> {
    let rows = crate::spi::connect(|client| {
        client
            .select(
                "SELECT c.relname::pg_catalog.text, a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
                 WHERE c.relnamespace OPERATOR(pg_catalog.=) 'deal_store'::pg_catalog.regnamespace
                   AND c.relkind OPERATOR(pg_catalog.=) 'r' AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                 ORDER BY 1, a.attnum",
                None,
                &[],
            )
            .map(|t| t.filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??))).collect::<Vec<_>>())
            .unwrap_or_default()
    });
    TableIterator::new(rows.into_iter().filter_map(|(t, c)| {
        let (kind, moment) = classify(&c)?;
        Some((t, c, format!("{kind:?}").to_lowercase(), format!("{moment:?}").to_lowercase()))
    }))
}

/// BEFORE INSERT OR UPDATE row trigger: writes every classified column of the
/// row as [`classify`] says (see the module documentation).
#[pg_trigger]
fn server_columns<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, PgTriggerError> {
    let new = trigger.new().ok_or(PgTriggerError::NullTriggerData)?;
    // an import keeps the export's records for an admin restoring a deal; anyone
    // else's import is a new deal written by the importer, now
    let importing = crate::settings::IMPORTING_HISTORY.get() && crate::access::is_admin();
    // SAFETY: tg_relation is open for the whole trigger call
    let restoring = crate::operations::restoring(unsafe { (*trigger.trigger_data().tg_relation).rd_id });
    if crate::facts::writing_history() || importing || restoring {
        return Ok(Some(new));
    }
    if !matches!(trigger.when()?, PgTriggerWhen::Before) || !matches!(trigger.level(), PgTriggerLevel::Row) {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "deal_store_internal.server_columns must be a BEFORE ... FOR EACH ROW trigger",
            None,
        );
    }
    let data = trigger.trigger_data();
    // SAFETY: tg_relation is the open relation of this trigger call
    let rd_att = unsafe { (*data.tg_relation).rd_att };
    // SAFETY: the relation's descriptor describes both tuples and lives as long as the call
    let tupdesc = unsafe { PgTupleDesc::from_pg_unchecked(rd_att) };
    let update = matches!(trigger.op()?, PgTriggerOperation::Update);
    let (old_t, new_t) = (if update { data.tg_trigtuple } else { std::ptr::null_mut() }, if update { data.tg_newtuple } else { data.tg_trigtuple });
    // the stamps, made at most once per row
    let mut actor: Option<Option<pgrx::Uuid>> = None;
    let mut who = |text: bool| -> Option<pg_sys::Datum> {
        let a = *actor.get_or_insert_with(crate::access::actor_for_write);
        if text {
            a.and_then(|a| a.to_string().into_datum())
        } else {
            a.into_datum()
        }
    };
    // SAFETY: reads the transaction start time
    let now = || unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }.into_datum();
    // the server's value of a who (the actor) or when (the clock) column
    let mut stamp = |kind: Kind, is_text: bool| match kind {
        Kind::Who => who(is_text),
        Kind::When => now(),
    };
    let mut set: Vec<(i32, Option<pg_sys::Datum>)> = Vec::new();
    let mut touch: Vec<(i32, Kind, bool)> = Vec::new();
    let mut changed = false;
    let mut cleared_acts: Vec<(i32, String)> = Vec::new();
    for (i, att) in tupdesc.iter().enumerate() {
        if att.attisdropped || att.attgenerated != 0 {
            continue;
        }
        let attnum = (i + 1) as i32;
        // SAFETY: new_t is this call's new tuple, described by rd_att
        let value = unsafe { attr(new_t, rd_att, attnum) };
        // SAFETY: old_t (on UPDATE) is this call's old tuple, described by rd_att
        let before = if update { unsafe { attr(old_t, rd_att, attnum) } } else { None };
        // SAFETY: both are values of this column (or NULL)
        let differs = update && !unsafe { same_image(before, value, att.attbyval, att.attlen) };
        let is_text = att.atttypid == pg_sys::TEXTOID;
        match classify(att.name()) {
            // an import written by its importer dates the versions it brings now too
            Some((Kind::When, Moment::Versioning)) if !update && value.is_some() && crate::settings::IMPORTING_HISTORY.get() => {
                set.push((attnum, now()));
            }
            None | Some((_, Moment::Versioning)) => changed |= differs,
            Some((kind, Moment::Creation)) => {
                if update {
                    if differs {
                        set.push((attnum, before));
                    }
                } else {
                    set.push((attnum, stamp(kind, is_text)));
                }
            }
            Some((kind, Moment::Touch)) => touch.push((attnum, kind, is_text)),
            Some((kind, Moment::Act)) => {
                changed |= differs;
                if value.is_some() && (!update || differs) {
                    set.push((attnum, stamp(kind, is_text)));
                } else if kind == Kind::Who && value.is_none() && before.is_some() {
                    cleared_acts.push((attnum, att.name().trim_end_matches("_by").to_string()));
                }
            }
        }
    }
    // the who of an act stands as long as the act: cleared while its when column
    // (same stem, `_at`) keeps a value, it keeps its old value
    if update {
        for (attnum, stem) in cleared_acts {
            let when_set = tupdesc.iter().enumerate().any(|(i, att)| {
                // SAFETY: new_t is this call's new tuple, described by rd_att
                att.name() == format!("{stem}_at") && unsafe { attr(new_t, rd_att, (i + 1) as i32) }.is_some()
            });
            if when_set {
                // SAFETY: old_t is this call's old tuple, described by rd_att
                set.push((attnum, unsafe { attr(old_t, rd_att, attnum) }));
            }
        }
    }
    for (attnum, kind, is_text) in touch {
        let value = if !update || changed {
            stamp(kind, is_text)
        } else {
            // SAFETY: old_t is this call's old tuple, described by rd_att
            unsafe { attr(old_t, rd_att, attnum) }
        };
        set.push((attnum, value));
    }
    if set.is_empty() {
        return Ok(Some(new));
    }
    let n = set.len();
    let (mut attnums, mut values, mut nulls) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (attnum, value) in set {
        attnums.push(attnum as std::ffi::c_int);
        values.push(value.unwrap_or(pg_sys::Datum::from(0)));
        nulls.push(value.is_none());
    }
    // SAFETY: the new tuple and its descriptor are this call's; the values are
    // datums of the columns' types (uuid, text, timestamptz) or the old row's own,
    // copied into the result, which heap_modify_tuple_by_cols pallocs in the
    // trigger's memory context, as a C trigger's returned tuple is
    let modified = unsafe {
        let tuple = pg_sys::heap_modify_tuple_by_cols(new.into_pg(), rd_att, n as _, attnums.as_mut_ptr(), values.as_mut_ptr(), nulls.as_mut_ptr());
        PgHeapTuple::from_heap_tuple(tupdesc, tuple)
    };
    Ok(Some(modified))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn the_classification() {
        assert_eq!(classify("created_by"), Some((Kind::Who, Moment::Creation)));
        assert_eq!(classify("updated_at"), Some((Kind::When, Moment::Touch)));
        assert_eq!(classify("deleted_by"), Some((Kind::Who, Moment::Act)));
        assert_eq!(classify("superseded_at"), Some((Kind::When, Moment::Versioning)));
        assert_eq!(classify("domain"), None);
    }
}
