-- The placement the Citus layer tests (run on the coordinator of a fresh database
-- with deal_store; not yet an API: see README "Running on Citus", which lists what
-- it gives up). users and tier_policies become reference tables (a copy on every
-- node); deals is distributed by id and every deal table by deal_id, all in one
-- co-location group, so a deal's rows share one node and a statement that names
-- the deal runs on that node alone. feed_consumers, idempotency_keys stay on the
-- coordinator.
--
-- What Citus refuses and this placement therefore drops:
--   * the row-level security policies (their subqueries are not allowed on
--     distributed tables): access is by grants and the API's own checks only;
--   * the ON DELETE SET NULL (column) foreign keys (a purged document or run
--     leaves dangling references instead of NULLs);
--   * tier_policies -> deals (a reference table cannot reference a distributed one);
--   * the primary keys of deal_activity_log and notifications (no deal_id in them)
--     and the unique (user_id, name) of live deals (no deal id in it).
-- Foreign keys between the tables are dropped before distribution (Citus would
-- convert the extension's tables and drop its views otherwise) and put back after.
-- Tables the extension created on the workers are changed there too
-- (run_command_on_workers): CREATE EXTENSION ran on every node.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
-- triggers on shards (audit, versions, soft delete) are what deal_store is made of
SET citus.enable_unsafe_triggers = on;

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'deal_store' LOOP
        EXECUTE format('DROP POLICY %I ON deal_store.%I', p.policyname, p.tablename);
    END LOOP;
    FOR p IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
             WHERE connamespace = 'deal_store'::regnamespace AND contype = 'f'
               AND (confdeltype = 'n' OR conname = 'tier_policies_deal_id_fkey') LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p.t, p.conname);
        PERFORM run_command_on_workers(format('ALTER TABLE %s DROP CONSTRAINT %I', p.t, p.conname));
    END LOOP;
END $$;
ALTER TABLE deal_store.deal_activity_log DROP CONSTRAINT deal_activity_log_pkey;
ALTER TABLE deal_store.notifications DROP CONSTRAINT notifications_pkey;
SELECT run_command_on_workers('ALTER TABLE deal_store.deal_activity_log DROP CONSTRAINT deal_activity_log_pkey');
SELECT run_command_on_workers('ALTER TABLE deal_store.notifications DROP CONSTRAINT notifications_pkey');
DROP INDEX deal_store.deals_user_id_name_key;
SELECT run_command_on_workers('DROP INDEX deal_store.deals_user_id_name_key');

CREATE TEMP TABLE fks AS
SELECT conrelid::regclass AS t, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
WHERE contype = 'f' AND connamespace = 'deal_store'::regnamespace;
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM fks LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p.t, p.conname);
        PERFORM run_command_on_workers(format('ALTER TABLE %s DROP CONSTRAINT %I', p.t, p.conname));
    END LOOP;
END $$;

SELECT create_reference_table('deal_store.users');
SELECT create_reference_table('deal_store.tier_policies');
SELECT create_distributed_table('deal_store.deals', 'id');
SELECT create_distributed_table(t, 'deal_id', colocate_with => 'deal_store.deals')
FROM unnest(ARRAY['deal_store.documents', 'deal_store.analysis_runs', 'deal_store.facts', 'deal_store.findings',
                  'deal_store.gaps', 'deal_store.fact_finding_links', 'deal_store.pending_changes',
                  'deal_store.deal_members', 'deal_store.deal_activity_log', 'deal_store.notifications',
                  'deal_store.seen_marks']::regclass[]) t;

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM fks LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', p.t, p.conname, p.def);
    END LOOP;
END $$;
-- the extension's settings reach the workers when set with SET LOCAL; triggers
-- (enable_audit, disable_audit) may be put on the distributed tables later too
SELECT format('ALTER DATABASE %I SET citus.propagate_set_commands = local', current_database()) \gexec
SELECT format('ALTER DATABASE %I SET citus.enable_unsafe_triggers = on', current_database()) \gexec
