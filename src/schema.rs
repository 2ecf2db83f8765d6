//! The SQL surface, in dependency order: tables (`sql/schema.sql`), soft delete
//! and views (`sql/soft_delete.sql`), idempotency keys (`sql/idempotency.sql`),
//! analysis runs (`sql/runs.sql`) and the
//! dashboard reads (`sql/dashboard.sql`), fact checksums, versions, diffs and
//! export / import (`sql/facts.sql`), the audit log (`sql/audit.sql`) and the
//! merge queue (`sql/queue.sql`), fact search (`sql/search.sql`), the change feed
//! (`sql/feed.sql`), "what changed" for people (`sql/changes.sql`) and, last, who may do
//! what: roles, deal teams, row-level security and grants (`sql/access.sql`).
use pgrx::prelude::*;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
/// The schema of the internal routines, declared to pgrx so that the functions
/// marked `schema = "deal_store_internal"` are placed in it (sql/schema.sql
/// creates and comments it first).
#[pg_schema]
mod deal_store_internal {}

// The library's trigger functions join the other internals in deal_store_internal
// (pgrx creates them in the extension's schema), and every internal routine of
// the library exists before any SQL file names it.
extension_sql!(
    r#"
ALTER FUNCTION deal_store.access_changed() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.audit_row() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.audit_flush() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.fact_versions() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.fact_version_rows() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.restored() SET SCHEMA deal_store_internal;
ALTER FUNCTION deal_store.server_columns() SET SCHEMA deal_store_internal;
"#,
    name = "internal_triggers",
    requires = [
        "schema",
        access::access_changed,
        audit::audit_row,
        audit::audit_flush,
        facts::fact_versions,
        facts::fact_version_rows,
        operations::restored,
        records::server_columns,
        // and the library's internal helpers, so every SQL file finds them
        access::may,
        access::acts_as,
        access::caller_role,
        access::require_right_sql,
        audit::no_deal,
        checksum::content_canonical_internal,
        checksum::content_checksum_internal,
        checksum::extra_fields,
        checksum::kind_table,
        diff::diff_facts_internal,
        export::export_format,
        facts::import_facts,
        operations::restoring_sql,
        queue::propose_internal,
        queue::propose_removals_internal,
        queue::outside_transaction_block,
        records::server_columns_sql,
        shard::distributed_sql,
        shard::table_of
    ]
);
extension_sql_file!(
    "../sql/soft_delete.sql",
    name = "soft_delete",
    requires = ["schema", "internal_triggers", access::current_actor, shard::table_of]
);
extension_sql_file!("../sql/idempotency.sql", name = "idempotency", requires = ["soft_delete", access::caller_role]);
extension_sql_file!("../sql/runs.sql", name = "runs", requires = ["idempotency"]);
extension_sql_file!(
    "../sql/dashboard.sql",
    name = "dashboard",
    requires = ["runs", access::sees_all_deals, access::my_deals, access::require_right_sql]
);
extension_sql_file!(
    "../sql/facts.sql",
    name = "facts",
    requires = [
        "dashboard",
        checksum::content_canonical_internal,
        checksum::content_checksum_internal,
        checksum::content_fields,
        facts::fact_versions,
        facts::fact_version_rows,
        facts::import_facts,
        diff::diff_facts_internal,
        export::export_format
    ]
);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = ["facts", audit::audit_row, audit::audit_flush, audit::uuid_v7, audit::entity_type_of, audit::no_deal]
);
extension_sql_file!(
    "../sql/queue.sql",
    name = "queue",
    requires = [
        "audit",
        queue::propose_internal,
        queue::confidence_tier,
        shard::distributed_sql
    ]
);
extension_sql_file!("../sql/search.sql", name = "search", requires = ["queue", search::typo_tsquery]);
extension_sql_file!("../sql/feed.sql", name = "feed", requires = ["search", access::caller_role]);
extension_sql_file!("../sql/changes.sql", name = "changes", requires = ["feed"]);
extension_sql_file!("../sql/distribute.sql", name = "distribute", requires = ["changes", "queue"]);
extension_sql_file!(
    "../sql/access.sql",
    name = "access",
    requires = ["distribute", access::access_changed, access::sees_all_deals, access::my_deals, access::require_right_sql, shard::set_local],
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn creates_the_seventeen_tables() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'deal_store'",
        );
        assert_eq!(n, Ok(Some(17)));
    }

    #[pg_test]
    fn every_public_object_is_commented() {
        let missing = Spi::get_one::<String>(
            "SELECT string_agg(x, ', ') FROM (
               SELECT p.oid::regprocedure::text AS x FROM pg_catalog.pg_proc p
               WHERE p.pronamespace IN ('deal_store'::pg_catalog.regnamespace, 'deal_store_internal'::pg_catalog.regnamespace) AND obj_description(p.oid, 'pg_proc') IS NULL
               UNION ALL
               SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
               WHERE c.relnamespace = 'deal_store'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v')
                 AND obj_description(c.oid, 'pg_class') IS NULL) s",
        )
        .unwrap();
        assert_eq!(missing, None, "objects without COMMENT ON");
    }
}
