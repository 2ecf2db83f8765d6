//! The one way deal_store runs SQL from Rust.
//!
//! Every statement the library parses, plans or runs goes through this module,
//! and this module runs it under `search_path = pg_catalog, pg_temp` (pg_temp
//! named, so searched last), set at a GUC nest level of its own and restored
//! when the work is done (an error restores it with the (sub)transaction it
//! aborts, as for a function's own `SET` clause). A caller's path, a schema it
//! placed ahead of `pg_catalog`, and types it created in `pg_temp` therefore
//! never decide what a name in the library's SQL means, whoever the SQL runs as
//! (the log writer runs as the extension's owner). Plans prepared here remember
//! that path and are only ever run here, under it.
//!
//! No other module may call SPI: `clippy.toml` disallows pgrx's `Spi` entry
//! points and the raw `SPI_*` calls everywhere, and only this module allows
//! them; `cargo clippy -- -D warnings` (a step of `./scripts/test`) fails
//! otherwise. A client handed out here can only exist inside a pinned scope,
//! since pgrx ties it to the closure it is given to.
#![allow(clippy::disallowed_methods)]

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

pub use pgrx::spi::{Error, OwnedPreparedStatement, SpiClient};

/// The search_path every statement of the library is parsed and run under.
const PINNED: &CStr = c"pg_catalog, pg_temp";

/// Runs `f` with `search_path` pinned to [`PINNED`] at a new GUC nest level.
///
/// Inside a function declared `SET search_path = pg_catalog, pg_temp` the path
/// is already that value and nothing is set.
fn pinned<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: reads the current value of a built-in setting; the pointer is read at once
    let current = unsafe { pg_sys::GetConfigOption(c"search_path".as_ptr(), false, false) };
    // SAFETY: GetConfigOption returns a NUL-terminated string (search_path always exists)
    if !current.is_null() && unsafe { CStr::from_ptr(current) } == PINNED {
        return f();
    }
    // SAFETY: what fmgr does for a function with a SET clause: a new nest level,
    // the value saved at it; an error unwinding through f is restored by the
    // (sub)transaction abort, a normal return by AtEOXact_GUC below
    let level = unsafe { crate::settings::push_setting(c"search_path", PINNED, pg_sys::GucContext::PGC_USERSET) };
    let result = f();
    // SAFETY: pops exactly the nest level opened above
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// A read-only SPI connection under the pinned path.
pub fn connect<R>(f: impl FnOnce(&SpiClient<'_>) -> R) -> R {
    pinned(|| Spi::connect(f))
}

/// A read-write SPI connection under the pinned path.
pub fn connect_mut<R>(f: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    pinned(|| Spi::connect_mut(f))
}

/// The first column of the first row of `sql` (None: no row or NULL).
pub fn get_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Result<Option<T>, Error> {
    pinned(|| Spi::get_one_with_args(sql, args))
}

/// Runs `sql` for its effect.
pub fn run(sql: &str, args: &[DatumWithOid<'_>]) -> Result<(), Error> {
    pinned(|| Spi::run_with_args(sql, args))
}

/// A read-write connection in which a statement trigger's transition tables
/// are relations, named as the trigger declares them.
///
/// # Safety
/// `data` must be PostgreSQL's trigger data of the trigger call in progress.
pub unsafe fn connect_with_transition_tables<R>(data: *const pg_sys::TriggerData, f: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    connect_mut(|client| {
        // SAFETY: the trigger data is PostgreSQL's for this call (caller) and outlives
        // the connection; SPI_register_trigger_data only reads it
        let rc = unsafe { pg_sys::SPI_register_trigger_data(data.cast_mut()) };
        if rc < 0 {
            crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("deal_store: SPI_register_trigger_data returned {rc}"),
                None,
            );
        }
        f(client)
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A statement run through this module sees pg_catalog's types and operators,
    /// whatever the caller put in pg_temp or ahead of pg_catalog; the caller's
    /// path is back afterwards.
    #[pg_test]
    fn statements_ignore_the_callers_path() {
        Spi::run(
            "CREATE SCHEMA trap;
             CREATE FUNCTION trap.eq(pg_catalog.int4, pg_catalog.int4) RETURNS bool LANGUAGE sql AS 'SELECT false';
             CREATE OPERATOR trap.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = trap.eq);
             CREATE TYPE pg_temp.text AS (v pg_catalog.text);",
        )
        .unwrap();
        Spi::run("SET search_path = trap, pg_catalog, public").unwrap();
        let eq = super::get_one::<bool>("SELECT 1 = 1", &[]).unwrap();
        assert_eq!(eq, Some(true));
        let typ = super::get_one::<String>("SELECT pg_catalog.pg_typeof('x'::text)::pg_catalog.text", &[]).unwrap();
        assert_eq!(typ.as_deref(), Some("text"));
        let path = Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')").unwrap();
        assert_eq!(path.as_deref(), Some("trap, pg_catalog, public"));
    }
}

/// The schema of the extension's internal routines: `deal_store_internal` from
/// 0.3.0 on, `deal_store` in an older catalog, which the library still serves
/// between the library swap and ALTER EXTENSION UPDATE. Only the extension's
/// own schema counts: one of that name that someone else created (before the
/// update) is never called into.
pub fn internal_schema() -> &'static str {
    // SAFETY: catalog lookups of NUL-terminated constant names, missing_ok (no
    // error), and of the namespace's extension membership; no pointer is kept
    let ours = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"deal_store_internal".as_ptr(), true);
        let ext = pg_sys::get_extension_oid(c"deal_store".as_ptr(), true);
        nsp != pg_sys::InvalidOid
            && ext != pg_sys::InvalidOid
            && pg_sys::getExtensionOfObject(pg_sys::NamespaceRelationId, nsp) == ext
    };
    if ours { "deal_store_internal" } else { "deal_store" }
}
