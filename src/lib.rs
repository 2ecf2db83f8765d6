//! deal_store: a due-diligence deal store inside PostgreSQL.
//!
//! This file only wires the capability modules together; each lives in its own file.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::not_unsafe_ptr_arg_deref)]
pgrx::pg_module_magic!(name, version);

mod access;
mod audit;
mod checksum;
mod diff;
mod errors;
mod export;
mod facts;
mod jsonb;
mod operations;
mod queue;
mod records;
mod schema;
mod search;
mod settings;
mod shard;
mod spi;
mod validate;

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // errors raised from Rust carry no backtrace to the client, whatever the
    // server's environment says (Backtrace::capture reads this once, first)
    // SAFETY: the backend is single-threaded, and nothing reads the environment concurrently
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    settings::init();
    access::init();
    audit::init();
    operations::init();
    shard::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
