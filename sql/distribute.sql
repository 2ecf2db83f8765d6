-- ---------------------------------------------------------------------------
-- Citus: deal_store.distribute() places the extension's tables on a Citus
-- cluster, once, on the coordinator (README "Running on Citus"). On plain
-- PostgreSQL nothing calls it and nothing changes.

-- What each table becomes: a reference table (a copy on every node), or
-- distributed by its deal column, all in the co-location group of deals, so a
-- deal's rows and its team share one node and a statement that names the deal
-- runs on that node alone. Tables not listed stay on the coordinator.
CREATE FUNCTION deal_store_internal._placement()
RETURNS TABLE(table_name regclass, distribution_column text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.t::regclass, x.col FROM (VALUES
        (1, 'deal_store.users', NULL::text), (2, 'deal_store.tier_policies', NULL),
        (3, 'deal_store.deals', 'id'),
        (4, 'deal_store.documents', 'deal_id'), (5, 'deal_store.analysis_runs', 'deal_id'),
        (6, 'deal_store.facts', 'deal_id'), (7, 'deal_store.findings', 'deal_id'),
        (8, 'deal_store.gaps', 'deal_id'), (9, 'deal_store.fact_finding_links', 'deal_id'),
        (10, 'deal_store.pending_changes', 'deal_id'), (11, 'deal_store.deal_members', 'deal_id'),
        (12, 'deal_store.deal_activity_log', 'deal_id'), (13, 'deal_store.notifications', 'deal_id'),
        (14, 'deal_store.seen_marks', 'deal_id'), (15, 'deal_store.run_output', 'deal_id')) AS x(n, t, col)
    ORDER BY x.n
$$;
COMMENT ON FUNCTION deal_store_internal._placement() IS
    'Internal: how deal_store.distribute() places each table on Citus: a NULL distribution_column is a reference table, the others are distributed by it and co-located with deals.';

-- An error message as the table would give it: on Citus a worker names the
-- shard ("facts_102118"); a note a reviewer reads names the table.
CREATE FUNCTION deal_store_internal._unsharded(message text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT regexp_replace(message, '"(' || string_agg(split_part(p.table_name::text, '.', 2), '|') || ')_[0-9]+"', '"\1"', 'g')
    FROM deal_store_internal._placement() p
$$;
COMMENT ON FUNCTION deal_store_internal._unsharded(text) IS
    'Internal: the message with every shard of a deal_store table named as its table ("facts_102118" -> "facts"), for the notes the apply path stores.';

-- Run on every node (the extension's tables exist on each): what Citus cannot
-- distribute goes, and the policies take their Citus form.
CREATE FUNCTION deal_store_internal._distribute_prepare() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'deal_store_internal._distribute_prepare is for a Citus cluster, and Citus is not installed in this database'
            USING ERRCODE = '0A000', HINT = 'On plain PostgreSQL there is nothing to prepare; on Citus, call deal_store.distribute() on the coordinator.';
    END IF;
    IF deal_store_internal._distributed() THEN
        RAISE EXCEPTION 'deal_store is already distributed' USING ERRCODE = '55000';
    END IF;
    -- every foreign key (Citus converts tables linked to a distributed one
    -- otherwise); the coordinator puts back those Citus supports
    FOR c IN SELECT k.conrelid::regclass AS t, k.conname FROM pg_catalog.pg_constraint k
             WHERE k.connamespace = 'deal_store'::regnamespace AND k.contype = 'f' LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname);
    END LOOP;
    -- unique keys without the distribution column
    ALTER TABLE deal_store.deal_activity_log DROP CONSTRAINT deal_activity_log_pkey;
    ALTER TABLE deal_store.notifications DROP CONSTRAINT notifications_pkey;
    DROP INDEX deal_store.deals_user_id_name_key;
    PERFORM deal_store_internal._create_policies(true);
END $$;
COMMENT ON FUNCTION deal_store_internal._distribute_prepare() IS
    'Internal, deal_store.distribute() on every node: drops the foreign keys, the primary keys of deal_activity_log and notifications and the unique live deal name, and writes the row-level security policies in their Citus form.';

CREATE FUNCTION deal_store.distribute()
RETURNS TABLE(table_name regclass, distribution_column text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dist regclass := to_regclass('pg_catalog.pg_dist_partition');
    coordinator boolean;
    failed text;
    keys text[][];
    k text[];
    p record;
BEGIN
    IF dist IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database' USING ERRCODE = '55000',
            HINT = 'On plain PostgreSQL deal_store needs no distribution. On Citus: CREATE EXTENSION citus, add the workers, CREATE EXTENSION deal_store, then distribute().';
    END IF;
    EXECUTE format('SELECT %s()', 'pg_catalog.citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RAISE EXCEPTION 'deal_store.distribute() runs on the Citus coordinator' USING ERRCODE = '55000';
    END IF;
    IF deal_store_internal._distributed() THEN
        RAISE EXCEPTION 'deal_store is already distributed' USING ERRCODE = '55000';
    END IF;
    -- loaded with the server, deal_store refuses what Citus cannot run (UPDATE and
    -- DELETE through its views) before Citus plans it, in every session
    -- (after citus: its hooks then run inside deal_store's)
    IF coalesce(array_position(string_to_array(replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','), 'deal_store'), 0)
       <= coalesce(array_position(string_to_array(replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','), 'citus'), 0) THEN
        RAISE EXCEPTION 'deal_store.distribute() needs deal_store in shared_preload_libraries, after citus' USING ERRCODE = '55000',
            HINT = 'Set shared_preload_libraries = ''citus,deal_store'' on every node and restart them, then call distribute() again.';
    END IF;
    -- the foreign keys Citus keeps: not ON DELETE SET NULL (column) (on Citus a
    -- purged document or run leaves those references dangling), not from a
    -- reference table (tier_policies) to a distributed one
    SELECT coalesce(array_agg(ARRAY[k.conrelid::regclass::text, k.conname::text, pg_get_constraintdef(k.oid)]), '{}')
    INTO keys
    FROM pg_catalog.pg_constraint k
    WHERE k.connamespace = 'deal_store'::regnamespace AND k.contype = 'f' AND k.confdeltype <> 'n'
      AND k.conrelid NOT IN (SELECT x.table_name FROM deal_store_internal._placement() x WHERE x.distribution_column IS NULL);
    PERFORM deal_store_internal._distribute_prepare();
    -- the views the coordinator plans (Citus allows no view DDL on a worker)
    PERFORM deal_store_internal._current_views(true);
    EXECUTE format('SELECT string_agg(r.nodename || '':'' || r.nodeport || '': '' || r.result, ''; '') FROM %s(%L) r WHERE NOT r.success',
                   'pg_catalog.run_command_on_workers', 'SELECT deal_store_internal._distribute_prepare()')
        INTO failed;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'deal_store could not be prepared on every worker: %', failed USING ERRCODE = '55000',
            HINT = 'Every worker needs deal_store (Citus creates it there with CREATE EXTENSION on the coordinator).';
    END IF;
    -- triggers on shards (audit, versions, soft delete) are what deal_store is made of
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- one transaction creates the tables and their keys to the reference tables
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOR p IN SELECT * FROM deal_store_internal._placement() LOOP
        IF p.distribution_column IS NULL THEN
            EXECUTE format('SELECT %s($1)', 'pg_catalog.create_reference_table') USING p.table_name;
        ELSE
            EXECUTE format('SELECT %s($1, $2, colocate_with => $3)', 'pg_catalog.create_distributed_table')
                USING p.table_name, p.distribution_column,
                      CASE WHEN p.table_name = 'deal_store.deals'::regclass THEN 'default' ELSE 'deal_store.deals' END;
        END IF;
    END LOOP;
    FOREACH k SLICE 1 IN ARRAY keys LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', k[1], k[2], k[3]);
    END LOOP;
    -- the extension's settings reach the workers when set with SET LOCAL; later
    -- enable_audit / disable_audit put triggers on distributed tables
    EXECUTE format('ALTER DATABASE %I SET citus.propagate_set_commands = local', current_database());
    EXECUTE format('ALTER DATABASE %I SET citus.enable_unsafe_triggers = on', current_database());
    RETURN QUERY SELECT * FROM deal_store_internal._placement();
END $$;
COMMENT ON FUNCTION deal_store.distribute() IS
    'On a Citus coordinator (workers added, deal_store created): makes users and tier_policies reference tables and distributes deals by id and every deal table by deal_id in one co-location group; returns the placement. Gives up what Citus cannot enforce (README "Running on Citus"). 55000 without Citus, on a worker, or when already distributed. For the extension''s owner.';
