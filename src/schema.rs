//! The tables, constraints and indexes (`sql/schema.sql`).
use pgrx::prelude::*;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn creates_the_eleven_tables() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'deal_store'",
        );
        assert_eq!(n, Ok(Some(11)));
    }
}
