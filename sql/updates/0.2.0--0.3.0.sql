-- deal_store 0.2.0 -> 0.3.0, run by ALTER EXTENSION deal_store UPDATE (install
-- the 0.3.0 library first). What no generator can know (new tables and columns,
-- data moves, drops of changed signatures, roles, grants, triggers, the Rust
-- functions' declarations), and a line '-- @routine deal_store.name' wherever a
-- routine written in SQL or PL/pgSQL changed: ./scripts/gen-upgrade writes
-- sql/deal_store--0.2.0--0.3.0.sql with its current definition from sql/*.sql.
\echo Use "ALTER EXTENSION deal_store UPDATE" to load this file. \quit
-- routine bodies are checked when they first run
SET check_function_bodies = off;

-- Internals out of the way: the helpers the API calls and the trigger functions
-- move to a schema of their own (ALTER … SET SCHEMA keeps each one's identity,
-- so triggers, grants and dependencies stay as they are); every routine's body
-- is then written again from sql/*.sql, naming them there (-- @routines below).
CREATE SCHEMA deal_store_internal;
COMMENT ON SCHEMA deal_store_internal IS
    'deal_store''s internal helpers and trigger functions: called by the API in schema deal_store and by triggers, executable by the extension''s owner only (a few by the group roles whose routines run as the caller). Not an API: they change between releases.';
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'deal_store'::pg_catalog.regnamespace
               AND (p.proname LIKE '\_%' OR p.prorettype IN ('pg_catalog.trigger'::pg_catalog.regtype, 'pg_catalog.event_trigger'::pg_catalog.regtype)) LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET SCHEMA deal_store_internal', f.fn);
    END LOOP;
END $$;

-- The merge queue at scale: every statement of a set reads the batch's rows by
-- key; targets another transaction holds are left for a later batch; a new row
-- takes its change's id; the worker stops when a batch can apply nothing.
-- @routine deal_store_internal._apply_set
-- @routine deal_store_internal._apply
-- @routine deal_store.process_queue

-- The change feed warns when a consumer's cursor is beyond the cluster's transaction ids.
-- @routine deal_store.read_changes

-- One tenant's held rows never keep the worker from the rest of the queue: the
-- claim leaves out what a batch already tried.
DROP FUNCTION IF EXISTS deal_store_internal._claim(integer, integer, uuid[]);
DROP FUNCTION IF EXISTS deal_store_internal._claim_by_deal(integer, integer, uuid[]);
-- @routine deal_store_internal._claim
-- @routine deal_store_internal._claim_by_deal
-- @routine deal_store.process_queue_batch
REVOKE ALL ON FUNCTION deal_store_internal._claim(integer, integer, uuid[], uuid[]), deal_store_internal._claim_by_deal(integer, integer, uuid[], uuid[]) FROM PUBLIC;

-- The DROP guard also under session_replication_role = replica.
ALTER EVENT TRIGGER deal_store_guard_drop ENABLE ALWAYS;

-- A run's output may arrive in several calls: what each call delivered is kept
-- until the run ends, and complete_run infers the removals once, over all of it.
CREATE TABLE deal_store.run_output (
    deal_id         uuid NOT NULL,
    analysis_run_id uuid NOT NULL,
    entity_type     text NOT NULL,
    legacy_id       text,
    domain          text NOT NULL,
    seen            pg_snapshot,
    CONSTRAINT run_output_key UNIQUE NULLS NOT DISTINCT (deal_id, analysis_run_id, entity_type, legacy_id, domain),
    CONSTRAINT run_output_analysis_run_id_fkey FOREIGN KEY (deal_id, analysis_run_id)
        REFERENCES deal_store.analysis_runs (deal_id, id) ON DELETE CASCADE,
    CONSTRAINT run_output_entity_type_check CHECK (entity_type IN ('fact', 'finding', 'gap'))
);
COMMENT ON TABLE deal_store.run_output IS
    'Working state of running runs: each row a proposal call delivered (legacy_id), or a domain a call covered (legacy_id NULL: the domains it named, else the domains of its rows). complete_run proposes the removal of every live row in the covered domains that the run did not deliver, then clears the run''s rows (fail_run clears them too). Written by the propose_* functions only.';
COMMENT ON COLUMN deal_store.run_output.legacy_id IS 'A delivered row''s legacy_id; NULL for a domain a call covered.';
COMMENT ON COLUMN deal_store.run_output.domain IS 'The delivered row''s domain, or the domain a call covered: removals are inferred only inside covered domains.';
COMMENT ON COLUMN deal_store.run_output.seen IS 'Of a covered domain: the snapshot of the last call that covered it. A row not committed in it is one the run did not see, and not its to remove.';
SELECT pg_catalog.pg_extension_config_dump('deal_store.run_output', '');
-- @routine deal_store_internal.run_output_seen
CREATE TRIGGER run_output_seen BEFORE INSERT OR UPDATE ON deal_store.run_output
    FOR EACH ROW WHEN (NEW.legacy_id IS NULL) EXECUTE FUNCTION deal_store_internal.run_output_seen();
-- @routine deal_store_internal._xid8
CREATE FUNCTION deal_store_internal._propose_removals(entity_type text, run_id uuid)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'propose_removals_internal_wrapper';
COMMENT ON FUNCTION deal_store_internal._propose_removals(text, uuid) IS
    'Internal: the Rust body of complete_run''s removals: a delete change for each live row of the kind inside the domains the run''s proposals covered that none of them delivered.';
-- @routine deal_store_internal._finish_run
-- @routine deal_store.complete_run
-- @routine deal_store_internal._placement

-- No silent no-ops, errors that say what to do: a committing procedure inside a
-- transaction block, clearing deleted_at; one vocabulary (new, update, delete,
-- restore) in changes_since_seen; unseen counts things, not log rows.
CREATE FUNCTION deal_store_internal._outside_transaction_block(routine text) RETURNS void
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'outside_transaction_block_wrapper';
COMMENT ON FUNCTION deal_store_internal._outside_transaction_block(text) IS
    'Internal: 2D000 with a hint (process_queue_batch) when a committing procedure is called inside a transaction block.';
-- @routine deal_store_internal.refuse_undelete
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_undelete BEFORE UPDATE OF deleted_at ON deal_store.%I FOR EACH ROW
            WHEN (OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL)
            EXECUTE FUNCTION deal_store_internal.refuse_undelete()', t);
    END LOOP;
END $$;
-- @routine deal_store_internal.require_actor
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER require_actor BEFORE DELETE ON deal_store.%I FOR EACH STATEMENT
            EXECUTE FUNCTION deal_store_internal.require_actor()', 'active_' || t);
    END LOOP;
END $$;
-- @routine deal_store.changes_since_seen
-- @routine deal_store_internal._deals_for_user
-- @routine deal_store.deals_for_user
-- @routine deal_store.propose_facts

-- Reads Citus routes to one deal's shards: deal_overview joins per-deal
-- aggregates; distribute() gives the current_* views a join (_current_views).
-- @routine deal_store_internal._current_views

-- deal_store's own SET LOCAL moves to Rust: on Citus the one SET passed on to the
-- workers (any other stays on its node)
CREATE OR REPLACE FUNCTION deal_store_internal._set_local(setting text, value text) RETURNS void
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'set_local_wrapper';
CREATE OR REPLACE VIEW deal_store.deal_overview AS
    SELECT d.id AS deal_id, d.name, d.target_name, d.deal_type, d.status,
           d.user_id AS owner_id, u.email AS owner_email, u.display_name AS owner_name,
           coalesce(doc.documents, 0) AS documents, coalesce(fa.facts, 0) AS facts, coalesce(fi.findings, 0) AS findings,
           coalesce(fi.critical_findings, 0) AS critical_findings, coalesce(g.gaps, 0) AS gaps, coalesce(g.open_gaps, 0) AS open_gaps,
           coalesce(q.pending_tier_1, 0) AS pending_tier_1, coalesce(q.pending_tier_2, 0) AS pending_tier_2,
           coalesce(q.pending_tier_3, 0) AS pending_tier_3, coalesce(q.conflicts, 0) AS conflicts,
           r.run_number AS last_run_number, r.completed_at AS last_run_completed_at, d.updated_at
    FROM deal_store.active_deals d
    LEFT JOIN deal_store.users u ON u.id = d.user_id
    LEFT JOIN (SELECT x.deal_id, count(*) AS documents FROM deal_store.active_documents x GROUP BY x.deal_id) doc ON doc.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS facts FROM deal_store.current_facts x GROUP BY x.deal_id) fa ON fa.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS findings, count(*) FILTER (WHERE x.severity = 'critical') AS critical_findings
               FROM deal_store.current_findings x GROUP BY x.deal_id) fi ON fi.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS gaps, count(*) FILTER (WHERE x.resolved_at IS NULL) AS open_gaps
               FROM deal_store.current_gaps x GROUP BY x.deal_id) g ON g.deal_id = d.id
    LEFT JOIN (SELECT p.deal_id,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 1) AS pending_tier_1,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 2) AS pending_tier_2,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 3) AS pending_tier_3,
        count(*) FILTER (WHERE p.status = 'conflict') AS conflicts
        FROM deal_store.pending_changes p GROUP BY p.deal_id) q ON q.deal_id = d.id
    LEFT JOIN (SELECT DISTINCT ON (x.deal_id) x.deal_id, x.run_number, x.completed_at FROM deal_store.analysis_runs x
               WHERE x.status = 'completed' ORDER BY x.deal_id, x.run_number DESC) r ON r.deal_id = d.id;

-- Every other routine: its body names the internals in their new schema.
-- @routines

-- Last: every routine granted and the API made SECURITY DEFINER again, as access.sql does.
-- @grants
