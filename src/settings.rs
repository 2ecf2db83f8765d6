//! The extension's settings (GUCs) and the actor: who is doing what.
//!
//! `deal_store.actor` holds the acting user's uuid. It is a real GUC with a check
//! hook, so `SET deal_store.actor = 'nonsense'` fails at SET time with 22023.
//! A value set before the library was loaded in a session is only a placeholder
//! that PostgreSQL has not checked; `current_actor()` therefore parses it again.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr, CString};

pub static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static HARD_DELETE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static ALLOW_DROP: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static IMPORTING_HISTORY: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static AUDIT_PURGE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static UNDELETING: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static CALLER_WRITES_VERSIONS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static REQUIRE_ACTOR: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static AUTO_APPLY: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static REASON: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static RUN_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SEARCH_CONFIG: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"english"));
pub static HEADLINE_START: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"<b>"));
pub static HEADLINE_STOP: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"</b>"));

/// Sets `name` to `value` at a new GUC nest level, as fmgr does for a function's
/// `SET` clause, and returns that level: `AtEOXact_GUC(true, level)` restores the
/// value before, and so does the abort of the (sub)transaction an error ends.
///
/// # Safety
/// The caller pops the returned level (or leaves it to the transaction's end)
/// and may set `name` in `context` (a superuser for a `PGC_SUSET` setting).
pub unsafe fn push_setting(name: &CStr, value: &CStr, context: pgrx::pg_sys::GucContext::Type) -> i32 {
    // SAFETY: the caller's guarantee; both strings are NUL-terminated and copied by PostgreSQL
    unsafe {
        let level = pgrx::pg_sys::NewGUCNestLevel();
        pgrx::pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pgrx::pg_sys::GucSource::PGC_S_SESSION,
            pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    }
}

/// A plain text setting anyone may change.
fn text_guc(name: &'static CStr, short: &'static CStr, long: &'static CStr, setting: &'static GucSetting<Option<CString>>) {
    GucRegistry::define_string_guc(name, short, long, setting, GucContext::Userset, GucFlags::default());
}

pub fn init() {
    // SAFETY: the check hook is a plain function that cannot panic.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"deal_store.actor",
            c"The acting user's uuid, recorded by everything that records who did something.",
            c"Set it per session or with SET LOCAL per transaction. Empty means no actor.",
            &ACTOR,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_uuid),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"deal_store.run_id",
            c"The analysis run on whose behalf changes are made, recorded in the audit log.",
            c"Empty means: the changed row's own analysis_run_id.",
            &RUN_ID,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_uuid),
            None,
            None,
        );
    }
    text_guc(
        c"deal_store.reason",
        c"Why the current changes are made; recorded in the audit log.",
        c"Set it with SET LOCAL for one transaction.",
        &REASON,
    );
    text_guc(
        c"deal_store.search_config",
        c"Text search configuration of search_facts and search_deal.",
        c"The stored search vector is built with english; another configuration is computed on the fly.",
        &SEARCH_CONFIG,
    );
    text_guc(c"deal_store.headline_start", c"Tag put before a matched word in search headlines.", c"Default <b>.", &HEADLINE_START);
    text_guc(c"deal_store.headline_stop", c"Tag put after a matched word in search headlines.", c"Default </b>.", &HEADLINE_STOP);
    GucRegistry::define_bool_guc(
        c"deal_store.auto_apply",
        c"Apply tier-1 merge-queue changes in the transaction that proposes them.",
        c"Off: tier-1 changes wait like the others (process_queue or accept_changes apply them).",
        &AUTO_APPLY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"deal_store.require_actor",
        c"Refuse changes made with no actor (42501) instead of logging NULL.",
        c"Always on for members of deal_store_service.",
        &REQUIRE_ACTOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    // What a 0.1.0 catalog's merge queue sets while it writes its own history
    // rows; read only while the library serves such a catalog (before ALTER
    // EXTENSION UPDATE), where the versioning is 0.1.0's.
    GucRegistry::define_bool_guc(
        c"deal_store.caller_writes_versions",
        c"Set by a 0.1.0 catalog's merge queue; without effect from 0.2.0 on.",
        c"Only a database still at 0.1.0 (before ALTER EXTENSION deal_store UPDATE) uses it.",
        &CALLER_WRITES_VERSIONS,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
    // Capabilities, not preferences: only superusers (the extension's own
    // SECURITY DEFINER functions, for their own transaction) may turn them on.
    GucRegistry::define_bool_guc(
        c"deal_store.audit_purge",
        c"Set by deal_store.purge_audit for its own transaction.",
        c"Only a superuser with this on may delete audit rows.",
        &AUDIT_PURGE,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_bool_guc(
        c"deal_store.hard_delete",
        c"Lets DELETE remove rows of soft-deletable tables for real.",
        c"deal_store.purge sets it for its own transaction; leave it off otherwise.",
        &HARD_DELETE,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_bool_guc(
        c"deal_store.undeleting",
        c"Lets an UPDATE clear deleted_at of a soft-deleted row.",
        c"deal_store.restore sets it for its own statements; leave it off otherwise.",
        &UNDELETING,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_bool_guc(
        c"deal_store.allow_drop",
        c"Lets DROP EXTENSION deal_store delete a database's deals, facts and audit log.",
        c"Off (the default): DROP EXTENSION is refused while any deal exists. Only superusers may turn it on.",
        &ALLOW_DROP,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"deal_store.importing_history",
        c"Set by import_deal while it restores an export's fact versions.",
        c"Only then may history rows (superseded_at set) be inserted; a setting, so that it reaches Citus workers.",
        &IMPORTING_HISTORY,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    // Typos such as `SET deal_store.actr = ...` become errors instead of placeholders.
    // SAFETY: a NUL-terminated constant prefix; called once from _PG_init
    unsafe { pg_sys::MarkGUCPrefixReserved(c"deal_store".as_ptr()) };
}

/// GUC check hook: accept NULL, the empty string or a uuid.
#[pg_guard]
unsafe extern "C-unwind" fn check_uuid(newval: *mut *mut c_char, _extra: *mut *mut c_void, _source: pg_sys::GucSource::Type) -> bool {
    // SAFETY: PostgreSQL passes a pointer to the candidate value (a C string or NULL)
    let value = unsafe { *newval };
    if value.is_null() {
        return true;
    }
    // SAFETY: value is a NUL-terminated C string (checked non-NULL above)
    let text = unsafe { CStr::from_ptr(value) }.to_string_lossy();
    if text.trim().is_empty() || uuid::Uuid::parse_str(text.trim()).is_ok() {
        return true;
    }
    // SAFETY: GUC_check_errdetail_string is read by PostgreSQL after the hook returns; pstrdup copies into its memory context
    unsafe {
        pg_sys::GUC_check_errdetail_string =
            pg_sys::pstrdup(c"The value must be a uuid, e.g. 7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001.".as_ptr());
    }
    false
}

/// The uuid in one of our uuid settings, None when unset (no work then); 22023
/// when it is not a uuid (a value set before the library was loaded was never checked).
fn uuid_value(setting: &GucSetting<Option<CString>>, name: &str, hint: Option<&str>) -> Option<pgrx::Uuid> {
    let raw = setting.get()?;
    let text = raw.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return None;
    }
    match uuid::Uuid::parse_str(text) {
        Ok(u) => Some(pgrx::Uuid::from_bytes(*u.as_bytes())),
        Err(_) => crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"{name}\": \"{text}\""),
            hint.map(str::to_owned),
        ),
    }
}

/// The uuid in `deal_store.actor`, or None when unset (who may set it: `access`).
pub fn actor() -> Option<pgrx::Uuid> {
    uuid_value(&ACTOR, "deal_store.actor", Some("deal_store.actor must be a user uuid."))
}

/// The uuid in `deal_store.run_id`, or None when unset.
pub fn run_id() -> Option<pgrx::Uuid> {
    uuid_value(&RUN_ID, "deal_store.run_id", None)
}

/// `deal_store.reason`, or None when unset or blank.
pub fn reason() -> Option<String> {
    REASON.get().map(|r| r.to_string_lossy().into_owned()).filter(|r| !r.trim().is_empty())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn actor_round_trips_and_rejects_garbage() {
        Spi::run("SET deal_store.actor = '7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001'").unwrap();
        let got = Spi::get_one::<String>("SELECT deal_store.current_actor()::text").unwrap();
        assert_eq!(got.as_deref(), Some("7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001"));
        Spi::run("SET deal_store.actor = ''").unwrap();
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT deal_store.current_actor()").unwrap(), None);
    }

    #[pg_test(error = "invalid value for parameter \"deal_store.actor\": \"bob\"")]
    fn actor_must_be_a_uuid() {
        Spi::run("SET deal_store.actor = 'bob'").unwrap();
    }
}
