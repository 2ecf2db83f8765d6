-- Runs last: \dx describes the extension, and it drops and re-creates cleanly.
SELECT extname, extversion, extnamespace::regnamespace, extrelocatable,
       obj_description(oid, 'pg_extension') IS NOT NULL AS described
FROM pg_extension WHERE extname = 'deal_store';

-- DROP EXTENSION then CREATE EXTENSION again
RESET search_path;
DROP EXTENSION deal_store;
SELECT count(*) AS schemas_left FROM pg_namespace WHERE nspname = 'deal_store';
CREATE EXTENSION deal_store;
SELECT count(*) AS tables FROM pg_tables WHERE schemaname = 'deal_store';
