//! Raising a PostgreSQL ERROR with a chosen SQLSTATE from Rust.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises ERROR with `code`, `message` and an optional detail; never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "deal_store");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
