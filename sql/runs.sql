-- Analysis runs: start, complete, fail; and the run-scoped views that show
-- only what completed runs (or people) wrote.

-- What a running run has proposed so far, so that removals are inferred once,
-- over all of it, when the run completes (a run's output may arrive in many calls).
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

-- The snapshot of a covered domain is taken where the deal's rows are (on
-- Citus: the worker holding the deal's shards, whose transaction ids the rows
-- carry), as the row is written: the server's, whatever the statement says.
CREATE FUNCTION deal_store_internal.run_output_seen() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- a restore takes the row as the dump holds it
    IF NOT deal_store_internal._restoring() THEN
        NEW.seen := pg_catalog.pg_current_snapshot();
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION deal_store_internal.run_output_seen() IS
    'Trigger (BEFORE INSERT OR UPDATE of a covered domain''s row of run_output): its seen is the snapshot of the node holding the deal''s rows, taken as the row is written (a restore keeps the dumped one).';
CREATE TRIGGER run_output_seen BEFORE INSERT OR UPDATE ON deal_store.run_output
    FOR EACH ROW WHEN (NEW.legacy_id IS NULL) EXECUTE FUNCTION deal_store_internal.run_output_seen();

-- A row version's xmin as the 64-bit transaction id the snapshot functions take:
-- the epoch of the current snapshot's xmax, one less when the 32-bit value lies
-- ahead of it (frozen and bootstrap ids are older than any snapshot).
CREATE FUNCTION deal_store_internal._xid8(x xid) RETURNS xid8
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN x::text::bigint < 3 THEN '3'::xid8
                ELSE (s.next - (s.next & 4294967295) + x::text::bigint
                      - CASE WHEN x::text::bigint > (s.next & 4294967295) THEN 4294967296 ELSE 0 END)::text::xid8 END
    FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next) s
$$;
COMMENT ON FUNCTION deal_store_internal._xid8(xid) IS
    'Internal: a row version''s xmin as a 64-bit transaction id (the current epoch, or the one before for an id ahead of the snapshot''s xmax), for pg_visible_in_snapshot.';

CREATE FUNCTION deal_store.start_run(deal_id uuid, domains text[] DEFAULT NULL, incremental boolean DEFAULT false,
    idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    run_id uuid;
    prior jsonb;
    -- read here: inside the INSERT it would run on the shard's node under Citus
    actor uuid := deal_store.current_actor();
BEGIN
    PERFORM deal_store_internal._require_deal(start_run.deal_id, 'write');
    prior := deal_store_internal._idempotent(idempotency_key, 'start_run', jsonb_build_array(deal_id, domains, incremental));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF domains IS NOT NULL AND (array_position(domains, NULL) IS NOT NULL
                                OR EXISTS (SELECT 1 FROM unnest(domains) x WHERE btrim(x) = '')) THEN
        RAISE EXCEPTION 'domains must not contain NULL or empty names' USING ERRCODE = '22023';
    END IF;
    -- the bounds of every domains argument (propose_*, diff_facts)
    IF cardinality(domains) > 1000 OR EXISTS (SELECT 1 FROM unnest(domains) x WHERE char_length(x) > 200) THEN
        RAISE EXCEPTION 'domains holds at most 1000 names of at most 200 characters' USING ERRCODE = '22023';
    END IF;
    -- The deal's row lock serialises run starts per deal, so two sessions
    -- never compute the same run_number. NO KEY UPDATE leaves FK checks free.
    SELECT x.id, x.deleted_at INTO d FROM deal_store.deals x WHERE x.id = start_run.deal_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist', start_run.deal_id USING ERRCODE = 'P0002';
    ELSIF d.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'deal % is deleted', start_run.deal_id USING ERRCODE = '55000';
    END IF;
    INSERT INTO deal_store.analysis_runs (deal_id, run_number, is_incremental, domains_analyzed, triggered_by)
    SELECT start_run.deal_id, coalesce(max(r.run_number), 0) + 1, coalesce(incremental, false), domains, actor
    FROM deal_store.analysis_runs r WHERE r.deal_id = start_run.deal_id
    RETURNING id INTO run_id;
    PERFORM deal_store_internal._remember(idempotency_key, to_jsonb(run_id));
    RETURN run_id;
END $$;
COMMENT ON FUNCTION deal_store.start_run(uuid, text[], boolean, text) IS
    'Starts an analysis run of a deal and returns its id. run_number is the deal''s next number, safe under concurrent starts. domains: what the run covers (NULL = all); incremental runs never propose removals. With an idempotency_key, a repeated call returns the first call''s run and starts nothing (22023 for the key with other arguments). Errors: P0002 no such deal, 55000 deal deleted, 22023 bad domains (NULL or empty names; more than 1000, or longer than 200 characters).';

CREATE FUNCTION deal_store_internal._finish_run(run_id uuid, new_status text, error text) RETURNS deal_store.analysis_runs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    finished deal_store.analysis_runs;
    deal uuid := deal_store_internal._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
    -- read here: Citus runs no volatile function inside an UPDATE of a distributed table
    finished_at timestamptz := clock_timestamp();
BEGIN
    SELECT x.deal_id, x.status, x.started_at, d.deleted_at AS deal_deleted_at INTO r
    FROM deal_store.analysis_runs x JOIN deal_store.deals d ON d.id = x.deal_id
    WHERE x.deal_id = deal AND d.id = deal AND x.id = run_id FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_id USING ERRCODE = 'P0002';
    ELSIF r.status <> 'running' THEN
        RAISE EXCEPTION 'analysis run % is already %', run_id, r.status USING ERRCODE = '55000';
    ELSIF r.deal_deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'the deal of analysis run % is deleted', run_id USING ERRCODE = '55000';
    END IF;
    UPDATE deal_store.analysis_runs x SET
        status = new_status,
        error = _finish_run.error,
        completed_at = finished_at,
        duration_seconds = round(extract(epoch FROM finished_at - x.started_at)::numeric, 3),
        documents_processed = (SELECT count(DISTINCT f.source_document_id) FROM deal_store.facts f
                               WHERE f.deal_id = r.deal_id AND f.analysis_run_id = run_id),
        facts_created = (SELECT count(*) FROM deal_store.facts f WHERE f.deal_id = r.deal_id
                         AND f.analysis_run_id = run_id AND f.superseded_at IS NULL AND f.previous_version_id IS NULL),
        facts_updated = (SELECT count(*) FROM deal_store.facts f WHERE f.deal_id = r.deal_id
                         AND f.analysis_run_id = run_id AND f.superseded_at IS NULL AND f.previous_version_id IS NOT NULL),
        findings_created = (SELECT count(*) FROM deal_store.findings f WHERE f.deal_id = r.deal_id AND f.analysis_run_id = run_id),
        gaps_created = (SELECT count(*) FROM deal_store.gaps g WHERE g.deal_id = r.deal_id AND g.analysis_run_id = run_id)
    WHERE x.deal_id = r.deal_id AND x.id = run_id
    RETURNING x.* INTO finished;
    DELETE FROM deal_store.run_output o WHERE o.deal_id = r.deal_id AND o.analysis_run_id = run_id;
    RETURN finished;
END $$;
COMMENT ON FUNCTION deal_store_internal._finish_run(uuid, text, text) IS
    'Internal: shared body of complete_run and fail_run; returns the finished run.';

CREATE FUNCTION deal_store.complete_run(run_id uuid) RETURNS deal_store.analysis_runs
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT count(*) FROM deal_store_internal._propose_removals('fact', run_id);
    SELECT count(*) FROM deal_store_internal._propose_removals('finding', run_id);
    SELECT count(*) FROM deal_store_internal._propose_removals('gap', run_id);
    SELECT * FROM deal_store_internal._finish_run(run_id, 'completed', NULL);
END;
COMMENT ON FUNCTION deal_store.complete_run(uuid) IS
    'Marks a running run completed and returns the run (SELECT * FROM complete_run(id) shows its columns): first proposes the removal (change_type delete) of every live fact, finding and gap inside the domains the run''s proposals covered that none of them delivered (an incremental run removes nothing), then sets completed_at, duration_seconds and the counts of what it wrote; its rows become visible in the current_* views. Errors: P0002 no such run, 55000 already finished or deal deleted.';

CREATE FUNCTION deal_store.fail_run(run_id uuid, error text) RETURNS deal_store.analysis_runs
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM deal_store_internal._finish_run(run_id, 'failed', error);
END;
COMMENT ON FUNCTION deal_store.fail_run(uuid, text) IS
    'Marks a running run failed with an error message and returns the run; what it wrote stays stored but hidden from the current_* views. Errors: P0002, 55000.';

CREATE FUNCTION deal_store.latest_completed_run(deal_id uuid) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    RETURN (SELECT r.id FROM deal_store.analysis_runs r
            WHERE r.deal_id = latest_completed_run.deal_id AND r.status = 'completed'
            ORDER BY r.run_number DESC LIMIT 1);
END $$;
COMMENT ON FUNCTION deal_store.latest_completed_run(uuid) IS
    'The deal''s completed run with the highest run_number, or NULL.';

-- ---------------------------------------------------------------------------
-- Run-scoped views: active rows written by hand (analysis_run_id NULL) or by a
-- completed run. Rows of a running or failed run stay stored but are not shown.

-- The current_* views: the rows entered by hand or written by a completed run.
-- On PostgreSQL with a subquery, so the views stay updatable; on Citus, which
-- plans a subquery under OR apart, over every deal's runs, with a join to the
-- run (one at most: its key) that Citus runs on the deal's shard.
-- deal_store.distribute() switches them.
CREATE FUNCTION deal_store_internal._current_views(on_citus boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
BEGIN
    -- @plpgsql_check_options: security_warnings = false
    -- (the statements are built from constant text and quote_ident'ed constant names only)
    FOR v IN SELECT * FROM (VALUES ('current_facts', 'active_facts', 'f'), ('current_findings', 'active_findings', 'f'),
                                   ('current_gaps', 'active_gaps', 'g')) AS x(name, base, a) LOOP
        EXECUTE pg_catalog.format(CASE WHEN on_citus THEN
            'CREATE OR REPLACE VIEW deal_store.%1$I WITH (security_invoker = true) AS
                SELECT %3$I.* FROM deal_store.%2$I %3$I
                LEFT JOIN deal_store.analysis_runs r ON r.deal_id = %3$I.deal_id AND r.id = %3$I.analysis_run_id
                WHERE %3$I.analysis_run_id IS NULL OR r.status = ''completed'''
        ELSE
            'CREATE OR REPLACE VIEW deal_store.%1$I WITH (security_invoker = true) AS
                SELECT %3$I.* FROM deal_store.%2$I %3$I
                WHERE %3$I.analysis_run_id IS NULL
                   OR EXISTS (SELECT 1 FROM deal_store.analysis_runs r
                              WHERE r.deal_id = %3$I.deal_id AND r.id = %3$I.analysis_run_id AND r.status = ''completed'')'
        END, v.name, v.base, v.a);
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store_internal._current_views(boolean) IS
    'Internal: (re)creates current_facts, current_findings and current_gaps: with a subquery on PostgreSQL (updatable views), or, on_citus, with a join to the run that Citus routes to the deal''s shard (deal_store.distribute() switches them).';
SELECT deal_store_internal._current_views(false);
COMMENT ON VIEW deal_store.current_facts IS
    'Current live facts entered by hand or written by a completed run: the deterministic picture a reader should see.';
COMMENT ON VIEW deal_store.current_findings IS
    'Live findings entered by hand or written by a completed run.';
COMMENT ON VIEW deal_store.current_gaps IS
    'Live gaps entered by hand or written by a completed run.';
