-- Runs last: \dx describes the extension, and it drops and re-creates cleanly.
SELECT extname, extversion = (SELECT v.library FROM deal_store.version() v) AS library_version,
       extnamespace::regnamespace, extrelocatable, obj_description(oid, 'pg_extension') IS NOT NULL AS described
FROM pg_extension WHERE extname = 'deal_store';

-- A DROP that would take deal_store is refused while deals exist: of the
-- extension, of an extension it needs (CASCADE), of its schema or one holding
-- what it needs, of its owner's objects; with deal_store.allow_drop it drops,
-- and then it creates again
RESET search_path;
SELECT count(*) > 0 AS has_deals FROM deal_store.deals;
SELECT regress.expect_error('DROP EXTENSION deal_store');
SELECT regress.expect_error('DROP EXTENSION pg_trgm CASCADE');
SELECT regress.expect_error('DROP EXTENSION IF EXISTS hstore, deal_store RESTRICT');
SELECT regress.expect_error('DROP EXTENSION plpgsql CASCADE');
SELECT regress.expect_error('DROP SCHEMA deal_store CASCADE');
SELECT regress.expect_error('DROP SCHEMA public CASCADE');
SELECT regress.expect_error('DROP OWNED BY ' || quote_ident(extowner::regrole::text) || ' CASCADE') FROM pg_extension WHERE extname = 'deal_store';
SELECT count(*) > 0 AS deals_kept FROM deal_store.deals;
SET deal_store.allow_drop = on;
DROP EXTENSION deal_store;
RESET deal_store.allow_drop;
SELECT count(*) AS schemas_left FROM pg_namespace WHERE nspname IN ('deal_store', 'deal_store_internal');
CREATE EXTENSION deal_store;
SELECT count(*) AS tables FROM pg_tables WHERE schemaname = 'deal_store';
-- without deals it drops as before
DROP EXTENSION deal_store;
CREATE EXTENSION deal_store;
