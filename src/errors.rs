//! Raising a PostgreSQL ERROR with a chosen SQLSTATE from Rust.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises ERROR with `code`, `message` and an optional detail; never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<String>) -> ! {
    raise_hinted(code, message, detail, None)
}

/// Raises ERROR with `code`, `message`, an optional detail and an optional hint (what to do); never returns.
#[track_caller]
pub fn raise_hinted(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<String>, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "deal_store");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// The value of a required argument; 22004 naming it when it is NULL.
#[track_caller]
pub fn required<T>(value: Option<T>, argument: &str) -> T {
    value.unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{argument} must not be NULL"), None))
}
