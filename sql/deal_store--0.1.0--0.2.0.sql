-- deal_store 0.1.0 -> 0.2.0, run by ALTER EXTENSION deal_store UPDATE (install
-- the 0.2.0 library first). Every change to the SQL surface since 0.1.0 has its
-- part here, in the order it was made; tests/upgrade proves that a 0.1.0
-- database upgraded by this script has the same catalog as a fresh 0.2.0
-- install and keeps every row. README "Upgrading" says what an upgrade changes.
\echo Use "ALTER EXTENSION deal_store UPDATE" to load this file. \quit

-- 0.2.0: TRUNCATE of a deal table is refused (issue 14).
CREATE FUNCTION deal_store.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% is not allowed: it would bypass soft delete and the audit log', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = '42501', HINT = 'Use deal_store.soft_delete, then deal_store.purge for rows that must go.';
END $$;
COMMENT ON FUNCTION deal_store.refuse_truncate() IS
    'Trigger (BEFORE TRUNCATE): refuses TRUNCATE of a deal table with 42501; TRUNCATE would bypass the soft-delete and audit row triggers.';
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'analysis_runs', 'facts', 'findings', 'fact_finding_links', 'gaps',
                             'pending_changes', 'notifications'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON deal_store.%I
                                   FOR EACH STATEMENT EXECUTE FUNCTION deal_store.refuse_truncate()', t);
    END LOOP;
END $$;

-- 0.2.0: export_deal leaves out the owner's password_hash and roles; import_deal
-- refuses ids already used here and maps the owner by e-mail or creates one
-- without credentials; both go through the typed format of _export_format (issue 14).
CREATE FUNCTION deal_store._export_format(doc anyelement) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'export_format_wrapper';
COMMENT ON FUNCTION deal_store._export_format(anyelement) IS
    'Internal: reads an export document through the typed format_version 1 (Rust structs) and returns what they serialize to; 22023 naming the JSON path of the first bad field. export_deal writes through it and import_deal reads through it.';
CREATE OR REPLACE FUNCTION deal_store.export_deal(deal_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d deal_store.deals;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    SELECT * INTO d FROM deal_store.deals x WHERE x.id = deal_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist', deal_id USING ERRCODE = 'P0002';
    END IF;
    RETURN deal_store._export_format(jsonb_build_object(
        'format', 'deal_store.export',
        'format_version', 1,
        'owner', (SELECT to_jsonb(u) - 'password_hash' - 'roles' - 'db_role' FROM deal_store.users u WHERE u.id = d.user_id),
        'deal', to_jsonb(d),
        'documents', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.id) FROM deal_store.documents x WHERE x.deal_id = d.id), '[]'),
        'analysis_runs', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.run_number) FROM deal_store.analysis_runs x WHERE x.deal_id = d.id), '[]'),
        'facts', coalesce((SELECT jsonb_agg(to_jsonb(x) - 'search_vector' ORDER BY x.legacy_id) FROM deal_store.facts x
                           WHERE x.deal_id = d.id AND x.superseded_at IS NULL AND x.deleted_at IS NULL), '[]'),
        'deleted_facts', coalesce((SELECT jsonb_agg(to_jsonb(x) - 'search_vector' ORDER BY x.legacy_id, x.id) FROM deal_store.facts x
                           WHERE x.deal_id = d.id AND x.superseded_at IS NULL AND x.deleted_at IS NOT NULL), '[]'),
        'fact_history', coalesce((SELECT jsonb_agg(to_jsonb(x) - 'search_vector' ORDER BY x.legacy_id, x.superseded_at, x.id) FROM deal_store.facts x
                           WHERE x.deal_id = d.id AND x.superseded_at IS NOT NULL), '[]'),
        'findings', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.legacy_id, x.id) FROM deal_store.findings x WHERE x.deal_id = d.id), '[]'),
        'gaps', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.legacy_id, x.id) FROM deal_store.gaps x WHERE x.deal_id = d.id), '[]'),
        'fact_finding_links', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.id) FROM deal_store.fact_finding_links x WHERE x.deal_id = d.id), '[]')));
END $$;
COMMENT ON FUNCTION deal_store.export_deal(uuid) IS
    'One deal as jsonb: its owner (without password_hash, roles and db_role), the deal, documents, runs, facts (current live ones, so diff_facts(deal, export->''facts'') reconciles), deleted_facts, fact_history (older versions), findings, gaps and links. Soft-deleted rows are included with their deleted_at / delete_batch. P0002 when the deal does not exist.';
CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    SELECT k, e ->> 'id' INTO taken_in, taken
    FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                      'findings', 'gaps', 'fact_finding_links']) k,
         jsonb_array_elements(coalesce(doc -> k, '[]')) e
    WHERE CASE k WHEN 'documents' THEN EXISTS (SELECT 1 FROM deal_store.documents x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'analysis_runs' THEN EXISTS (SELECT 1 FROM deal_store.analysis_runs x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'findings' THEN EXISTS (SELECT 1 FROM deal_store.findings x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'gaps' THEN EXISTS (SELECT 1 FROM deal_store.gaps x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'fact_finding_links' THEN EXISTS (SELECT 1 FROM deal_store.fact_finding_links x WHERE x.id = (e ->> 'id')::uuid)
                 ELSE EXISTS (SELECT 1 FROM deal_store.facts x WHERE x.id = (e ->> 'id')::uuid) END
    LIMIT 1;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner: an existing user with the export's e-mail, else a new user with
    -- no password and the default roles (never credentials or roles from the document)
    SELECT u.id INTO owner FROM deal_store.users u WHERE lower(u.email) = lower(doc -> 'owner' ->> 'email');
    IF owner IS NULL AND jsonb_typeof(doc -> 'owner') = 'object' THEN
        INSERT INTO deal_store.users (id, email, display_name)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM deal_store.users u WHERE u.id = o.id) THEN gen_random_uuid() ELSE o.id END,
               o.email, o.display_name
        FROM jsonb_to_record(doc -> 'owner') AS o(id uuid, email text, display_name text)
        RETURNING id INTO owner;
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: written as the versioning writes them
    PERFORM set_config('deal_store.caller_writes_versions', 'on', true);
    PERFORM deal_store._insert_rows('deal_store.facts',
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM set_config('deal_store.caller_writes_versions', 'off', true);
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb) IS
    'Loads a deal from export_deal''s jsonb, keeping every id, so export_deal(import_deal(x)) = x. The caller (deal_store.actor) becomes a lead of it. The owner is the existing user with the export''s e-mail, else a new user with that e-mail, no password and the default roles (credentials and roles in the document are ignored). 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import.';

-- 0.2.0: an id passed alone that names rows of more than one deal is an error (P0003),
-- not a pick (issue 14).
CREATE FUNCTION deal_store._id_in_one_deal(tbl regclass, id uuid, needs text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deals uuid[];
BEGIN
    EXECUTE format('SELECT array_agg(DISTINCT deal_id) FROM %s WHERE id = $1', tbl) INTO deals USING id;
    IF cardinality(deals) > 1 THEN
        RAISE EXCEPTION 'id % names rows of % deals in %', id, cardinality(deals), tbl USING ERRCODE = 'P0003',
            HINT = 'Ids are unique per deal only; this database holds the id in more than one deal.';
    ELSIF cardinality(deals) = 1 THEN
        PERFORM deal_store._require_right(deals[1], needs);
    END IF;
END $$;
COMMENT ON FUNCTION deal_store._id_in_one_deal(regclass, uuid, text) IS
    'Internal: raises P0003 when an id passed alone names rows of more than one deal (ids are unique per deal only), so no function picks one of them; 42501 unless the caller has the right needs on the row''s deal.';
DROP FUNCTION deal_store._lock_row(regclass, uuid);
CREATE FUNCTION deal_store._lock_row(entity regclass, id uuid, needs text,
    OUT deal_id uuid, OUT deleted_at timestamptz, OUT delete_batch uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current_only text := CASE WHEN entity = 'deal_store.facts'::regclass THEN ' AND superseded_at IS NULL' ELSE '' END;
    deal_col text := CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END;
BEGIN
    PERFORM deal_store._soft_deletable(entity);
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF entity <> 'deal_store.deals'::regclass THEN
        PERFORM deal_store._id_in_one_deal(entity, id, needs);
    ELSE
        PERFORM deal_store._require_right(id, needs);
    END IF;
    EXECUTE format('SELECT %I FROM %s WHERE id = $1%s', deal_col, entity, current_only)
        INTO _lock_row.deal_id USING id;
    IF _lock_row.deal_id IS NULL THEN
        RAISE EXCEPTION '% has no row with id %', entity, id USING ERRCODE = 'P0002';
    END IF;
    IF entity <> 'deal_store.deals'::regclass THEN
        PERFORM 1 FROM deal_store.deals d WHERE d.id = _lock_row.deal_id FOR SHARE;
    END IF;
    EXECUTE format('SELECT deleted_at, delete_batch FROM %s WHERE %I = $1 AND id = $2%s FOR UPDATE',
                   entity, deal_col, current_only)
        INTO _lock_row.deleted_at, _lock_row.delete_batch USING _lock_row.deal_id, id;
END $$;
COMMENT ON FUNCTION deal_store._lock_row(regclass, uuid, text) IS
    'Internal: validates entity and id, checks the caller''s right needs on the row''s deal (42501), locks the row''s deal then the row, and returns deal_id, deleted_at and delete_batch.';
CREATE OR REPLACE FUNCTION deal_store._set_gap_resolution(gap_id uuid, resolve boolean, note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.gaps', gap_id, 'write');
    SELECT x.deal_id, x.resolved_at INTO g FROM deal_store.active_gaps x WHERE x.id = gap_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gap % does not exist or is deleted', gap_id USING ERRCODE = 'P0002';
    ELSIF resolve AND g.resolved_at IS NOT NULL THEN
        RAISE EXCEPTION 'gap % is already resolved', gap_id USING ERRCODE = '55000';
    ELSIF NOT resolve AND g.resolved_at IS NULL THEN
        RAISE EXCEPTION 'gap % is not resolved', gap_id USING ERRCODE = '55000';
    END IF;
    UPDATE deal_store.gaps x SET
        resolved_at = CASE WHEN resolve THEN now() END,
        resolved_by = CASE WHEN resolve THEN deal_store.current_actor() END,
        resolution_note = CASE WHEN resolve THEN note END
    WHERE x.deal_id = g.deal_id AND x.id = gap_id;
END $$;
COMMENT ON FUNCTION deal_store._set_gap_resolution(uuid, boolean, text) IS 'Internal: shared body of resolve_gap and reopen_gap.';
CREATE OR REPLACE FUNCTION deal_store.fact_history(fact_id uuid)
RETURNS TABLE(version integer, version_id uuid, is_current boolean, item text, item_checksum text,
              content jsonb, analysis_run_id uuid, run_number integer, written_at timestamptz, superseded_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.facts', fact_id, 'read');
    SELECT f.deal_id INTO deal FROM deal_store.facts f WHERE f.id = fact_id AND f.superseded_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fact % does not exist', fact_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
    WITH RECURSIVE chain AS (
        SELECT f.*, 0 AS depth FROM deal_store.facts f WHERE f.deal_id = deal AND f.id = fact_history.fact_id
        UNION ALL
        SELECT f.*, c.depth + 1 FROM chain c
        JOIN deal_store.facts f ON f.deal_id = c.deal_id AND f.id = c.previous_version_id
    )
    SELECT (max(c.depth) OVER () - c.depth + 1)::integer, c.id, c.depth = 0, c.item, c.item_checksum,
           jsonb_build_object('domain', c.domain, 'category', c.category, 'item', c.item, 'status', c.status,
                              'details', c.details, 'evidence', c.evidence, 'entity', c.entity,
                              'source_page_numbers', c.source_page_numbers),
           c.analysis_run_id, r.run_number, c.updated_at, c.superseded_at
    FROM chain c LEFT JOIN deal_store.analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id
    ORDER BY c.depth;
END $$;
COMMENT ON FUNCTION deal_store.fact_history(uuid) IS
    'A fact''s versions, newest first: version number (1 = oldest), the row holding it, its content and checksum, the run that wrote it, when it was written and when it was superseded. P0002 when the fact does not exist.';
CREATE OR REPLACE FUNCTION deal_store._decide(change_id uuid, decision text, note text, until timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.pending_changes;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.pending_changes', change_id, 'review');
    SELECT * INTO c FROM deal_store.pending_changes p WHERE p.id = change_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pending change % does not exist', change_id USING ERRCODE = 'P0002';
    ELSIF c.status NOT IN ('pending', 'deferred') THEN
        RAISE EXCEPTION 'the change to % % is %, not pending', c.entity_type, c.legacy_entity_id, c.status
            USING ERRCODE = '55000', DETAIL = format('Change %s was decided at %s.', change_id, c.decided_at);
    END IF;
    IF decision = 'accept' THEN
        RETURN deal_store._settle(c, note);
    END IF;
    UPDATE deal_store.pending_changes p SET
        status = CASE decision WHEN 'reject' THEN 'rejected' ELSE 'deferred' END,
        decided_by = deal_store.current_actor(),
        decided_at = CASE decision WHEN 'reject' THEN now() END,
        deferred_until = CASE decision WHEN 'defer' THEN until END,
        review_note = note
    WHERE p.deal_id = c.deal_id AND p.id = c.id;
    RETURN CASE decision WHEN 'reject' THEN 'rejected' ELSE 'deferred' END;
END $$;
COMMENT ON FUNCTION deal_store._decide(uuid, text, text, timestamptz) IS 'Internal: shared body of accept_change, reject_change and defer_change.';
CREATE OR REPLACE FUNCTION deal_store._finish_run(run_id uuid, new_status text, error text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
    SELECT x.deal_id, x.status, x.started_at, d.deleted_at AS deal_deleted_at INTO r
    FROM deal_store.analysis_runs x JOIN deal_store.deals d ON d.id = x.deal_id
    WHERE x.id = run_id FOR NO KEY UPDATE OF x;
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
        completed_at = clock_timestamp(),
        duration_seconds = round(extract(epoch FROM clock_timestamp() - x.started_at)::numeric, 3),
        documents_processed = (SELECT count(DISTINCT f.source_document_id) FROM deal_store.facts f
                               WHERE f.deal_id = r.deal_id AND f.analysis_run_id = run_id),
        facts_created = (SELECT count(*) FROM deal_store.facts f WHERE f.deal_id = r.deal_id
                         AND f.analysis_run_id = run_id AND f.superseded_at IS NULL AND f.previous_version_id IS NULL),
        facts_updated = (SELECT count(*) FROM deal_store.facts f WHERE f.deal_id = r.deal_id
                         AND f.analysis_run_id = run_id AND f.superseded_at IS NULL AND f.previous_version_id IS NOT NULL),
        findings_created = (SELECT count(*) FROM deal_store.findings f WHERE f.deal_id = r.deal_id AND f.analysis_run_id = run_id),
        gaps_created = (SELECT count(*) FROM deal_store.gaps g WHERE g.deal_id = r.deal_id AND g.analysis_run_id = run_id)
    WHERE x.deal_id = r.deal_id AND x.id = run_id;
END $$;
COMMENT ON FUNCTION deal_store._finish_run(uuid, text, text) IS
    'Internal: shared body of complete_run and fail_run.';

-- 0.2.0: every function that takes a deal raises P0002 for a deal that does not exist,
-- instead of an empty answer (issue 14).
CREATE FUNCTION deal_store._require_deal(deal_id uuid, needs text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF deal_id IS NULL THEN
        RAISE EXCEPTION 'deal_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- 42501 unless the caller may; P0002 (admins) when there is no such deal
    PERFORM deal_store._require_right(deal_id, needs);
END $$;
COMMENT ON FUNCTION deal_store._require_deal(uuid, text) IS 'Internal: raises 42501 unless the caller has the right needs (read, write, review, manage, administer) on the deal, P0002 (to a caller who sees every deal) unless the deal exists (live or deleted), 22004 for NULL.';
CREATE OR REPLACE FUNCTION deal_store.accept_changes(deal_id uuid, max_tier integer DEFAULT 2, run_id uuid DEFAULT NULL)
RETURNS TABLE(status text, n bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'review');
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = accept_changes.deal_id AND p.confidence_tier <= max_tier
          AND (accept_changes.run_id IS NULL OR p.analysis_run_id = accept_changes.run_id)
          AND (p.status = 'pending' OR (p.status = 'deferred' AND p.deferred_until <= now()))
        ORDER BY p.created_at, p.id
        FOR UPDATE SKIP LOCKED) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store._settle_batch(locked, 'batch accept');
    END IF;
    RETURN QUERY SELECT p.status, count(*) FROM deal_store.pending_changes p
                 WHERE p.deal_id = accept_changes.deal_id AND p.id = ANY (locked)
                 GROUP BY p.status ORDER BY p.status;
END $$;
COMMENT ON FUNCTION deal_store.accept_changes(uuid, integer, uuid) IS
    'Accepts every open change of a deal up to max_tier (of one run when run_id is given; deferred ones once their time has come), skipping rows another session holds. Returns how many were accepted and how many turned out to be conflicts.';
CREATE OR REPLACE FUNCTION deal_store.conflicts(deal_id uuid)
RETURNS TABLE(change_id uuid, entity_type text, legacy_id text, change_type text, base_checksum text,
              current_checksum text, base_value jsonb, current_value jsonb, proposed_value jsonb,
              analysis_run_id uuid, decided_at timestamptz, note text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN QUERY
    SELECT c.id, c.entity_type, c.legacy_entity_id, c.change_type, c.base_checksum,
           deal_store.content_checksum_of(c.entity_type, cur.v), c.old_value, cur.v, c.new_value,
           c.analysis_run_id, c.decided_at, c.review_note
    FROM deal_store.pending_changes c
    LEFT JOIN LATERAL (
        SELECT to_jsonb(f) - 'search_vector' AS v FROM deal_store.facts f
        WHERE c.entity_type = 'fact' AND f.deal_id = c.deal_id AND f.superseded_at IS NULL
          AND (f.id = c.entity_id OR (c.entity_id IS NULL AND f.legacy_id = c.legacy_entity_id AND f.deleted_at IS NULL))
        UNION ALL
        SELECT to_jsonb(g) FROM deal_store.findings g
        WHERE c.entity_type = 'finding' AND g.deal_id = c.deal_id
          AND (g.id = c.entity_id OR (c.entity_id IS NULL AND g.legacy_id = c.legacy_entity_id AND g.deleted_at IS NULL))
        UNION ALL
        SELECT to_jsonb(x) FROM deal_store.gaps x
        WHERE c.entity_type = 'gap' AND x.deal_id = c.deal_id
          AND (x.id = c.entity_id OR (c.entity_id IS NULL AND x.legacy_id = c.legacy_entity_id AND x.deleted_at IS NULL))
        LIMIT 1) cur ON true
    WHERE c.deal_id = conflicts.deal_id AND c.status = 'conflict'
    ORDER BY c.decided_at, c.id;
END $$;
COMMENT ON FUNCTION deal_store.conflicts(uuid) IS
    'A deal''s changes that became conflicts, with the base (when proposed), current and proposed values and checksums side by side.';
CREATE OR REPLACE FUNCTION deal_store._apply_changes(deal_id uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'write');
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = _apply_changes.deal_id AND p.id = ANY (ids) AND p.status = 'pending'
        ORDER BY p.created_at, p.id FOR UPDATE) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store._settle_batch(locked, 'auto-applied (tier 1)');
    END IF;
END $$;
COMMENT ON FUNCTION deal_store._apply_changes(uuid, uuid[]) IS 'Internal: auto-applies the given tier-1 changes of a proposal.';
CREATE OR REPLACE FUNCTION deal_store._signal_review(deal_id uuid, run_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    counts jsonb;
    waiting bigint;
    owner uuid;
    run_number integer;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'write');
    SELECT count(*), jsonb_build_object('tier_1', count(*) FILTER (WHERE p.confidence_tier = 1),
                                        'tier_2', count(*) FILTER (WHERE p.confidence_tier = 2),
                                        'tier_3', count(*) FILTER (WHERE p.confidence_tier = 3))
    INTO waiting, counts
    FROM deal_store.pending_changes p
    WHERE p.deal_id = _signal_review.deal_id AND p.analysis_run_id = run_id AND p.status = 'pending';
    IF waiting = 0 THEN
        RETURN;
    END IF;
    SELECT d.user_id INTO owner FROM deal_store.deals d WHERE d.id = _signal_review.deal_id;
    SELECT r.run_number INTO run_number FROM deal_store.analysis_runs r WHERE r.deal_id = _signal_review.deal_id AND r.id = run_id;
    -- one notification per deal owner per run, kept up to date
    UPDATE deal_store.notifications n SET payload = jsonb_build_object('run_id', run_id, 'pending', waiting) || counts,
        title = format('%s changes of analysis run %s wait for review', waiting, run_number)
    WHERE n.user_id = owner AND n.deal_id = _signal_review.deal_id AND n.type = 'review_needed'
      AND n.payload ->> 'run_id' = run_id::text;
    IF NOT FOUND THEN
        INSERT INTO deal_store.notifications (user_id, deal_id, type, title, message, payload)
        VALUES (owner, _signal_review.deal_id, 'review_needed',
                format('%s changes of analysis run %s wait for review', waiting, run_number),
                'Review them with deal_store.accept_change / reject_change / defer_change or accept_changes.',
                jsonb_build_object('run_id', run_id, 'pending', waiting) || counts);
    END IF;
    -- NOTIFY is delivered when the transaction commits, and not at all when it rolls back
    PERFORM pg_notify('deal_store_queue',
        (jsonb_build_object('deal_id', _signal_review.deal_id, 'run_id', run_id, 'pending', waiting) || counts)::text);
END $$;
COMMENT ON FUNCTION deal_store._signal_review(uuid, uuid) IS
    'Internal: when changes of a run wait for review, keeps one review_needed notification for the deal owner per run and sends pg_notify(''deal_store_queue'', {deal_id, run_id, pending, tier_1..3}) on commit.';
CREATE OR REPLACE FUNCTION deal_store.deal_activity(deal_id uuid, since timestamptz DEFAULT NULL, lim integer DEFAULT 100)
RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim < 1 OR lim > 10000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.deal_id = deal_activity.deal_id AND (since IS NULL OR l.created_at >= since)
    ORDER BY l.seq DESC LIMIT lim;
END $$;
COMMENT ON FUNCTION deal_store.deal_activity(uuid, timestamptz, integer) IS
    'A deal''s activity feed, newest first: at most lim entries (1 to 10000, 22023 otherwise), since a moment when given.';
CREATE OR REPLACE FUNCTION deal_store.latest_completed_run(deal_id uuid) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN (SELECT r.id FROM deal_store.analysis_runs r
            WHERE r.deal_id = latest_completed_run.deal_id AND r.status = 'completed'
            ORDER BY r.run_number DESC LIMIT 1);
END $$;
COMMENT ON FUNCTION deal_store.latest_completed_run(uuid) IS
    'The deal''s completed run with the highest run_number, or NULL.';
CREATE OR REPLACE FUNCTION deal_store.search_deal(deal_id uuid, query text, lim integer DEFAULT 20)
RETURNS TABLE(entity_type text, entity_id uuid, title text, rank real, headline text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    opts text := deal_store.headline_options();
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    tsq := deal_store.search_tsquery(query, cfg);
    IF numnode(tsq) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH hits AS (
        SELECT 'fact'::text AS kind, s.fact_id AS id, s.item AS title, s.rank, s.headline
        FROM deal_store.search_facts(search_deal.deal_id, query, lim => search_deal.lim) s WHERE s.rank > 0
        UNION ALL
        SELECT 'finding', g.id, g.title, ts_rank_cd(v.vec, tsq, 32)::real,
               ts_headline(cfg, g.title || coalesce(': ' || g.description, ''), tsq, opts)
        FROM deal_store.findings g,
             LATERAL (SELECT setweight(to_tsvector(cfg, g.title), 'A') || setweight(to_tsvector(cfg, coalesce(g.description, '')), 'C') AS vec) v
        WHERE g.deal_id = search_deal.deal_id AND g.deleted_at IS NULL AND v.vec @@ tsq
        UNION ALL
        SELECT 'gap', x.id, x.description, ts_rank_cd(v.vec, tsq, 32)::real, ts_headline(cfg, x.description, tsq, opts)
        FROM deal_store.gaps x,
             LATERAL (SELECT setweight(to_tsvector(cfg, x.description), 'A') AS vec) v
        WHERE x.deal_id = search_deal.deal_id AND x.deleted_at IS NULL AND v.vec @@ tsq)
    SELECT h.kind, h.id, h.title, h.rank, h.headline FROM hits h
    ORDER BY h.rank DESC, h.kind, h.title, h.id
    LIMIT lim;
END $$;
COMMENT ON FUNCTION deal_store.search_deal(uuid, text, integer) IS
    'One ranked list over a deal''s live facts (item, category, evidence, details), findings (title, description) and gaps (description), with highlighted headlines. Same query syntax as search_facts; 22023 for lim outside 1..1000.';

-- 0.2.0: plpgsql_check runs clean: dynamic SQL built only from quote_ident'ed names
-- and constants says so (issue 14); search_facts also checks its deal.
CREATE OR REPLACE FUNCTION deal_store._insert_rows(tbl regclass, rows jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    -- @plpgsql_check_options: security_warnings = false
    -- (cols is quote_ident of the table's own column names; tbl a regclass)
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_recordset(NULL::%s, $1)', tbl, cols, cols, tbl)
        USING coalesce(rows, '[]');
END $$;
COMMENT ON FUNCTION deal_store._insert_rows(regclass, jsonb) IS 'Internal: inserts a jsonb array of rows into a table (stored columns only).';
CREATE OR REPLACE FUNCTION deal_store._apply_change(c deal_store.pending_changes, OUT result text, OUT problem text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tbl regclass := CASE c.entity_type WHEN 'fact' THEN 'deal_store.facts'::regclass
                                       WHEN 'finding' THEN 'deal_store.findings'::regclass
                                       ELSE 'deal_store.gaps'::regclass END;
    current_only text := CASE WHEN c.entity_type = 'fact' THEN ' AND superseded_at IS NULL' ELSE '' END;
    content text[] := deal_store.content_fields(c.entity_type);
    extra text[] := CASE WHEN c.entity_type = 'fact' THEN ARRAY['confidence_score', 'source_document_id'] ELSE '{}' END;
    cols text; src text; cur jsonb; run_number integer;
BEGIN
    result := 'conflict';
    IF c.change_type = 'new' THEN
        EXECUTE format('SELECT to_jsonb(t) FROM %s t WHERE deal_id = $1 AND legacy_id = $2 AND deleted_at IS NULL%s',
                       tbl, current_only) INTO cur USING c.deal_id, c.legacy_entity_id;
        IF cur IS NOT NULL THEN
            problem := 'a live row with this legacy_id exists';
            RETURN;
        END IF;
        -- only the columns the proposal carries: the others take their defaults
        SELECT string_agg(quote_ident(k), ', '), string_agg('r.' || quote_ident(k), ', ') INTO cols, src
        FROM unnest(content || extra) k WHERE c.new_value ? k;
        EXECUTE format('INSERT INTO %s (deal_id, legacy_id, analysis_run_id%s) SELECT $1, $2, $3%s '
                       'FROM jsonb_populate_record(NULL::%s, $4) r',
                       tbl, coalesce(', ' || cols, ''), coalesce(', ' || src, ''), tbl::text)
            USING c.deal_id, c.legacy_entity_id, c.analysis_run_id, c.new_value;
    ELSE
        EXECUTE format('SELECT to_jsonb(t) FROM %s t WHERE deal_id = $1 AND id = $2%s FOR UPDATE', tbl, current_only)
            INTO cur USING c.deal_id, c.entity_id;
        IF cur IS NULL OR cur ->> 'deleted_at' IS NOT NULL THEN
            problem := 'the target is gone or deleted';
            RETURN;
        END IF;
        IF (CASE WHEN c.entity_type = 'fact' THEN cur ->> 'item_checksum'
                 ELSE deal_store.content_checksum_of(c.entity_type, cur) END) IS DISTINCT FROM c.base_checksum THEN
            problem := 'the target changed since the proposal';
            RETURN;
        END IF;
        IF c.change_type = 'update' THEN
            -- every content column (a missing one is NULL, as it was hashed); extras when given
            SELECT string_agg(quote_ident(k), ', '), string_agg('r.' || quote_ident(k), ', ') INTO cols, src
            FROM unnest(content || extra) k WHERE k = ANY (content) OR c.new_value ? k;
            -- @plpgsql_check_options: security_warnings = false
            -- (cols and src are quote_ident of content column names; tbl a regclass)
            EXECUTE format('UPDATE %s t SET (%s, analysis_run_id) = (SELECT %s, $3 FROM jsonb_populate_record(NULL::%s, $4) r) '
                           'WHERE t.deal_id = $1 AND t.id = $2', tbl, cols, src, tbl::text)
                USING c.deal_id, c.entity_id, c.analysis_run_id, c.new_value;
        ELSE
            SELECT r.run_number INTO run_number FROM deal_store.analysis_runs r
            WHERE r.deal_id = c.deal_id AND r.id = c.analysis_run_id;
            PERFORM deal_store.soft_delete(tbl, c.entity_id, format('removed by analysis run %s', run_number));
        END IF;
    END IF;
    result := 'accepted';
EXCEPTION WHEN integrity_constraint_violation THEN
    -- e.g. a live row took the legacy_id meanwhile, or the proposal breaks a constraint
    GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
    result := 'conflict';
END $$;
COMMENT ON FUNCTION deal_store._apply_change(deal_store.pending_changes) IS
    'Internal: applies one change (new inserts with the run as analysis_run_id, update makes a new version, delete soft-deletes naming the run) unless its target moved (checksum differs from base_checksum, target deleted, or a live row took the legacy_id of a new). Returns accepted or conflict with the reason.';
CREATE OR REPLACE FUNCTION deal_store.soft_delete(entity regclass, id uuid, reason text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := current_setting('deal_store.reason', true);
    r record;
    batch uuid := gen_random_uuid();
    actor uuid := deal_store.current_actor();
    total integer := 0;
    n integer;
    t record;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    PERFORM set_config('deal_store.reason', coalesce(reason, prev_reason, ''), true);
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN
        SELECT * FROM (VALUES
            (entity, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id = $6' ELSE 'deal_id = $5 AND id = $6' END),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.documents'::regclass END, 'deal_id = $5'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.facts'::regclass END, 'deal_id = $5'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.findings'::regclass END, 'deal_id = $5'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.gaps'::regclass END, 'deal_id = $5'),
            (CASE WHEN entity = 'deal_store.documents'::regclass THEN 'deal_store.facts'::regclass END,
             'deal_id = $5 AND source_document_id = $6')
        ) AS c(tbl, cond) WHERE c.tbl IS NOT NULL
    LOOP
        -- @plpgsql_check_options: security_warnings = false
        -- (t.cond is one of the constant conditions listed above; t.tbl a regclass)
        EXECUTE format('UPDATE %s SET deleted_at = $1, deleted_by = $2, delete_reason = $3, delete_batch = $4 '
                       'WHERE %s AND deleted_at IS NULL%s', t.tbl, t.cond,
                       CASE WHEN t.tbl = 'deal_store.facts'::regclass THEN ' AND superseded_at IS NULL' ELSE '' END)
            USING now(), actor, reason, batch, r.deal_id, id;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete(regclass, uuid, text) IS
    'Soft-deletes one row of deals, documents, facts, findings or gaps and what it owns (a deal: its documents, facts, findings, gaps; a document: the facts sourced from it). All rows get one delete_batch, deleted_by = deal_store.actor and the reason. Returns the number of rows marked. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 already deleted.';
CREATE OR REPLACE FUNCTION deal_store.search_facts(deal_id uuid, query text, domain text DEFAULT NULL, category text DEFAULT NULL,
    entity text DEFAULT NULL, min_confidence float8 DEFAULT NULL, lim integer DEFAULT 20, off integer DEFAULT 0)
RETURNS SETOF deal_store.fact_search_hit
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    vec text;
    opts text := deal_store.headline_options();
    trgm text := (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e
                  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm');
    filters text := ' AND f.deal_id = $1 AND f.deleted_at IS NULL AND f.superseded_at IS NULL'
                    ' AND ($3 IS NULL OR f.domain = $3) AND ($4 IS NULL OR f.category = $4)'
                    ' AND ($5 IS NULL OR f.entity = $5) AND ($6 IS NULL OR f.confidence_score >= $6)';
    page text := ' ORDER BY rank DESC, f.legacy_id, f.id LIMIT $7 OFFSET $8';
    typo text;
    tsq_found boolean := false;
    -- the ranked page: %1$s the vector, %2$s the filters, %3$s the page, %4$s added to the rank;
    -- the headline is computed for the returned rows only
    ranked text := 'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item, f.evidence,
                                      (ts_rank_cd(%1$s, $2, 32) + %4$s)::real AS rank, count(*) OVER () AS total
                               FROM deal_store.facts f WHERE %1$s @@ $2 %2$s %3$s)
                    SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank,
                           CASE WHEN m.evidence IS NULL OR to_tsvector($9, m.item) @@ $2 THEN ts_headline($9, m.item, $2, $10)
                                ELSE ts_headline($9, m.evidence, $2, $10) END, m.total
                    FROM m ORDER BY m.rank DESC, m.legacy_id, m.id';
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF off IS NULL OR off < 0 THEN
        RAISE EXCEPTION 'off must not be negative' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    -- the stored vector is built with english; another configuration computes it on the fly
    vec := CASE WHEN cfg = 'english'::regconfig THEN 'f.search_vector'
                ELSE format('deal_store.fact_search_vector(%L, f.item, f.category, f.domain, f.evidence, f.details)', cfg) END;
    tsq := deal_store.search_tsquery(query, cfg);
    -- 1. full-text match: rank in (0, 1)
    IF numnode(tsq) > 0 THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '0')
            USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
        IF FOUND THEN
            RETURN;
        END IF;
        -- an empty page past the end of a non-empty result is not a reason to go fuzzy
        IF off > 0 THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM deal_store.facts f WHERE %s @@ $2 %s)', vec, filters)
                INTO STRICT tsq_found USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category,
                     search_facts.entity, min_confidence;
            IF tsq_found THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- 2. trigram fallback (pg_trgm word similarity): rank = similarity - 1, so <= 0
    -- @plpgsql_check_options: security_warnings = false
    -- (the EXECUTEd texts are constants of this function; trgm is quote_ident of pg_trgm's schema)
    RETURN QUERY EXECUTE format(
        'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item,
                           (%1$s.word_similarity($2::text, f.item) - 1)::real AS rank, count(*) OVER () AS total
                    FROM deal_store.facts f WHERE $2::text OPERATOR(%1$s.<%%) f.item %2$s %3$s)
         SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank, m.item, m.total
         FROM m ORDER BY m.rank DESC, m.legacy_id, m.id', trgm, filters, page)
        USING search_facts.deal_id, btrim(query), search_facts.domain, search_facts.category, search_facts.entity,
              min_confidence, lim, off;
    IF FOUND THEN
        RETURN;
    END IF;
    -- 3. typo fallback: the deal's lexemes within a small edit distance; rank = ts_rank_cd - 1
    typo := deal_store.typo_tsquery(search_facts.deal_id, query, cfg::text);
    IF typo IS NOT NULL THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '-1')
            USING search_facts.deal_id, typo::tsquery, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.search_facts(uuid, text, text, text, text, double precision, integer, integer) IS
    'Ranked search over a deal''s current live facts. query: web-search syntax ("quoted phrase", or, -excluded), the last word also matching as a prefix. Filters: domain, category, entity, min_confidence. Ordered by rank then legacy_id and id (stable pages); total = all matches. headline marks the matched words (tags deal_store.headline_start / headline_stop) in the item, or in the evidence when the item has none. rank in (0, 1): full-text match (ts_rank_cd normalised to rank/(rank+1)); rank <= 0: fallback (trigram word similarity - 1, or the typo-tolerant match''s rank - 1). NULL or blank query: no rows. 22023 for lim outside 1..1000 or negative off.';

-- 0.2.0: access control (issue 15): group roles, users.db_role, deal teams,
-- row-level security on every deal-owned table, grants instead of PUBLIC, the
-- API as SECURITY DEFINER functions that check the caller's right on the deal,
-- process_queue_batch; the capability settings become superuser-only (in the
-- library). Existing deal owners become leads of their deals.
CREATE FUNCTION deal_store."sees_all_deals"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'sees_all_deals_wrapper';
CREATE FUNCTION deal_store."my_deals"("min_role" TEXT DEFAULT 'viewer') RETURNS uuid[]
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'my_deals_wrapper';
CREATE FUNCTION deal_store."_require_right"("deal_id" uuid, "needs" TEXT) RETURNS void
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'require_right_sql_wrapper';
CREATE FUNCTION deal_store."access_changed"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', 'access_changed_wrapper';
DROP FUNCTION deal_store._claim(integer, integer);
CREATE FUNCTION deal_store._claim(batch_size integer, max_tier integer, deals uuid[]) RETURNS uuid[]
LANGUAGE sql VOLATILE SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off
BEGIN ATOMIC
    SELECT pg_catalog.array_agg(p.id) FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= _claim.max_tier
          AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
          AND (_claim.deals IS NULL OR p.deal_id = ANY (_claim.deals))
        ORDER BY p.created_at, p.id
        LIMIT _claim.batch_size
        FOR UPDATE SKIP LOCKED) p;
END;
COMMENT ON FUNCTION deal_store._claim(integer, integer, uuid[]) IS
    'Internal: locks (FOR UPDATE SKIP LOCKED) and returns up to batch_size eligible open changes of the given deals (all when NULL), oldest first, for process_queue.';

CREATE FUNCTION deal_store.process_queue_batch(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    claimed uuid[];
    n integer;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    -- admins work the whole queue; a reviewer the deals it reviews
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to process the queue: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
    claimed := deal_store._claim(batch_size, max_tier,
        CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END);
    n := coalesce(cardinality(claimed), 0);
    IF n > 0 THEN
        PERFORM deal_store._settle_batch(claimed, 'process_queue');
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.process_queue_batch(integer, integer) IS
    'One batch of process_queue in the caller''s transaction: claims up to batch_size eligible open changes (FOR UPDATE SKIP LOCKED; all deals for admins, else the deals where the actor is reviewer or lead), applies them and returns how many it settled.';

CREATE OR REPLACE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    LOOP
        n := deal_store.process_queue_batch(batch_size, max_tier);
        COMMIT;
        EXIT WHEN n < batch_size;
    END LOOP;
END $$;
COMMENT ON PROCEDURE deal_store.process_queue(integer, integer) IS
    'Worker: applies eligible open changes (tier <= max_tier; deferred ones whose time has come) in batches of batch_size with process_queue_batch, committing after each batch. Rows are claimed with FOR UPDATE SKIP LOCKED, so several workers can run at once and none applies a change twice; a crash loses at most the uncommitted batch, never half a change. Admins work every deal, reviewers the deals they review. CALL it outside a transaction block.';
CREATE OR REPLACE FUNCTION deal_store.start_run(deal_id uuid, domains text[] DEFAULT NULL, incremental boolean DEFAULT false)
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    run_id uuid;
BEGIN
    PERFORM deal_store._require_deal(start_run.deal_id, 'write');
    IF domains IS NOT NULL AND (array_position(domains, NULL) IS NOT NULL
                                OR EXISTS (SELECT 1 FROM unnest(domains) x WHERE btrim(x) = '')) THEN
        RAISE EXCEPTION 'domains must not contain NULL or empty names' USING ERRCODE = '22023';
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
    SELECT start_run.deal_id, coalesce(max(r.run_number), 0) + 1, coalesce(incremental, false), domains,
           deal_store.current_actor()
    FROM deal_store.analysis_runs r WHERE r.deal_id = start_run.deal_id
    RETURNING id INTO run_id;
    RETURN run_id;
END $$;
COMMENT ON FUNCTION deal_store.start_run(uuid, text[], boolean) IS
    'Starts an analysis run of a deal and returns its id. run_number is the deal''s next number, safe under concurrent starts. domains: what the run covers (NULL = all); incremental runs never propose removals. Errors: P0002 no such deal, 55000 deal deleted, 22023 bad domains.';
CREATE OR REPLACE FUNCTION deal_store.deal_summary(deal_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    PERFORM deal_store._require_live_deal(deal_id);
    RETURN jsonb_build_object(
        'deal', (SELECT jsonb_build_object('id', d.id, 'name', d.name, 'target_name', d.target_name,
                                           'deal_type', d.deal_type, 'status', d.status)
                 FROM deal_store.deals d WHERE d.id = deal_summary.deal_id),
        'facts_by_domain', coalesce((
            SELECT jsonb_object_agg(s.domain, s.n ORDER BY s.domain)
            FROM (SELECT f.domain, count(*) AS n FROM deal_store.current_facts f
                  WHERE f.deal_id = deal_summary.deal_id GROUP BY f.domain) s), '{}'),
        'findings', coalesce((
            SELECT jsonb_object_agg(t.finding_type, t.by_severity ORDER BY t.finding_type)
            FROM (SELECT s.finding_type,
                         jsonb_object_agg(s.severity, jsonb_build_object('count', s.n, 'cost_low', s.low, 'cost_high', s.high)
                                          ORDER BY s.severity) AS by_severity
                  FROM (SELECT f.finding_type, coalesce(f.severity, 'unrated') AS severity, count(*) AS n,
                               coalesce(sum(f.cost_estimate_low), 0) AS low, coalesce(sum(f.cost_estimate_high), 0) AS high
                        FROM deal_store.current_findings f WHERE f.deal_id = deal_summary.deal_id
                        GROUP BY 1, 2) s
                  GROUP BY s.finding_type) t), '{}'),
        'open_gaps_by_importance', coalesce((
            SELECT jsonb_object_agg(s.importance, s.n ORDER BY s.importance)
            FROM (SELECT g.importance, count(*) AS n FROM deal_store.current_gaps g
                  WHERE g.deal_id = deal_summary.deal_id AND g.resolved_at IS NULL GROUP BY g.importance) s), '{}'),
        'pending_changes_by_tier', coalesce((
            SELECT jsonb_object_agg(s.confidence_tier::text, s.n ORDER BY s.confidence_tier)
            FROM (SELECT c.confidence_tier, count(*) AS n FROM deal_store.pending_changes c
                  WHERE c.deal_id = deal_summary.deal_id AND c.status IN ('pending', 'deferred')
                  GROUP BY c.confidence_tier) s), '{}'),
        'latest_run', (
            SELECT jsonb_build_object('id', r.id, 'run_number', r.run_number, 'completed_at', r.completed_at,
                                      'documents_processed', r.documents_processed, 'facts_created', r.facts_created,
                                      'facts_updated', r.facts_updated, 'findings_created', r.findings_created,
                                      'gaps_created', r.gaps_created)
            FROM deal_store.analysis_runs r
            WHERE r.deal_id = deal_summary.deal_id AND r.status = 'completed'
            ORDER BY r.run_number DESC LIMIT 1));
END $$;
COMMENT ON FUNCTION deal_store.deal_summary(uuid) IS
    'Dashboard of one live deal as jsonb: current facts by domain, findings by type and severity with count and summed cost range, open gaps by importance, pending changes (pending or deferred) by tier, and the latest completed run with its counts. P0002 when the deal does not exist or is deleted.';
CREATE OR REPLACE FUNCTION deal_store.deals_for_user(user_id uuid, include_archived boolean DEFAULT false)
RETURNS SETOF deal_store.deals
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT d.* FROM deal_store.deals d
    WHERE d.user_id = deals_for_user.user_id AND d.deleted_at IS NULL
      AND (deal_store.sees_all_deals() OR d.id = ANY (deal_store.my_deals('viewer')))
      AND (d.status <> 'archived' OR coalesce(deals_for_user.include_archived, false))
    ORDER BY d.updated_at DESC, d.id;
END;
COMMENT ON FUNCTION deal_store.deals_for_user(uuid, boolean) IS
    'A user''s live deals that the caller may see, most recently updated first; archived ones only when include_archived.';
CREATE OR REPLACE FUNCTION deal_store._set_deal_status(deal_id uuid, from_status text, to_status text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur text;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'manage');
    SELECT d.status INTO cur FROM deal_store.active_deals d WHERE d.id = deal_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist or is deleted', deal_id USING ERRCODE = 'P0002';
    ELSIF cur <> from_status THEN
        RAISE EXCEPTION 'deal % is %, not %', deal_id, cur, from_status USING ERRCODE = '55000';
    END IF;
    UPDATE deal_store.deals d SET status = to_status WHERE d.id = deal_id;
END $$;
COMMENT ON FUNCTION deal_store._set_deal_status(uuid, text, text) IS 'Internal: checked status transition of a live deal.';
CREATE OR REPLACE FUNCTION deal_store.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('deal_store.audit_purge', true) = 'on'
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'deal_store.deal_activity_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = '42501', HINT = 'Only deal_store.purge_audit (members of deal_store_admin) removes entries.';
END $$;
COMMENT ON FUNCTION deal_store.audit_log_append_only() IS
    'Trigger: rejects UPDATE, DELETE and TRUNCATE of deal_activity_log with 42501, except the DELETE that purge_audit performs for a superuser.';
CREATE OR REPLACE FUNCTION deal_store.purge_audit(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM deal_store._require_right(NULL, 'administer');
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('deal_store.audit_purge', 'on', true);
    DELETE FROM deal_store.deal_activity_log l WHERE l.created_at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('deal_store.audit_purge', 'off', true);
    INSERT INTO deal_store.deal_activity_log (user_id, action, entity_type, reason, details)
    VALUES (deal_store.current_actor(), 'purge_audit', 'deal_activity_log',
            nullif(current_setting('deal_store.reason', true), ''),
            jsonb_build_object('older_than', older_than::text, 'rows', n));
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.purge_audit(interval) IS
    'Removes audit entries older than older_than; members of deal_store_admin only (42501 otherwise). The purge itself is logged as action purge_audit. Returns the number of entries removed.';
CREATE OR REPLACE FUNCTION deal_store.enable_audit(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = tbl) NOT IN ('r', 'p')
       OR tbl = 'deal_store.deal_activity_log'::regclass THEN
        RAISE EXCEPTION '% cannot be audited: not an ordinary table, or the log itself', tbl USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
        RAISE EXCEPTION '% has no primary key', tbl USING ERRCODE = '55000',
            HINT = 'The audit log identifies a row by its primary key.';
    END IF;
    EXECUTE format('CREATE OR REPLACE TRIGGER deal_store_audit AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION deal_store.audit_row()', tbl);
    EXECUTE format('CREATE OR REPLACE TRIGGER deal_store_audit_flush AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION deal_store.audit_flush()', tbl);
END $$;
COMMENT ON FUNCTION deal_store.enable_audit(regclass) IS
    'Puts the deal_store audit triggers (audit_row per row, audit_flush per statement) on a table (any primary key, composite included; idempotent). Runs as the caller: members of deal_store_admin, on tables they own. 55000 when the table has no primary key, 22023 when it is not an ordinary table.';
CREATE OR REPLACE FUNCTION deal_store.disable_audit(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'tbl must not be NULL' USING ERRCODE = '22004';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS deal_store_audit ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS deal_store_audit_flush ON %s', tbl);
END $$;
COMMENT ON FUNCTION deal_store.disable_audit(regclass) IS
    'Removes the deal_store audit triggers from a table (idempotent). Runs as the caller: only the table''s owner may, so the audit of deal_store''s own tables stays on.';
CREATE OR REPLACE FUNCTION deal_store.entity_history(entity_type text, entity_id uuid)
RETURNS SETOF deal_store.deal_activity_log
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.entity_type = entity_history.entity_type AND l.entity_id = entity_history.entity_id
      AND (deal_store.sees_all_deals() OR l.deal_id = ANY (deal_store.my_deals('viewer')))
    ORDER BY l.seq;
END;
COMMENT ON FUNCTION deal_store.entity_history(text, uuid) IS
    'Every audit entry of one row (entity_type is the table name, e.g. facts) in the deals the caller may see, oldest first.';
CREATE OR REPLACE FUNCTION deal_store.restore(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    total integer := 0;
    n integer;
    t regclass;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION '% row % is not deleted', entity, id USING ERRCODE = '55000';
    END IF;
    IF entity <> 'deal_store.deals'::regclass
       AND EXISTS (SELECT 1 FROM deal_store.deals d WHERE d.id = r.deal_id AND d.deleted_at IS NOT NULL
                   AND d.delete_batch IS DISTINCT FROM r.delete_batch) THEN
        RAISE EXCEPTION 'cannot restore % row %: its deal is deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Restore the deal first.';
    END IF;
    BEGIN
        UPDATE deal_store.deals d SET deleted_at = NULL, deleted_by = NULL, delete_reason = NULL, delete_batch = NULL
        WHERE d.id = r.deal_id AND d.delete_batch = r.delete_batch;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := n;
        FOREACH t IN ARRAY ARRAY['deal_store.documents', 'deal_store.facts', 'deal_store.findings', 'deal_store.gaps']::regclass[] LOOP
            EXECUTE format('UPDATE %s SET deleted_at = NULL, deleted_by = NULL, delete_reason = NULL, delete_batch = NULL '
                           'WHERE deal_id = $1 AND delete_batch = $2', t)
                USING r.deal_id, r.delete_batch;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
        END LOOP;
    EXCEPTION WHEN unique_violation THEN
        DECLARE
            msg text; cons text;
        BEGIN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, cons = CONSTRAINT_NAME;
            RAISE EXCEPTION 'cannot restore % row %: a live row has taken its name since', entity, id
                USING ERRCODE = '23505', CONSTRAINT = cons, DETAIL = msg,
                      HINT = 'Rename or delete the live row, then restore again.';
        END;
    END;
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.restore(regclass, uuid) IS
    'Restores a soft-deleted row and exactly the rows deleted in the same batch (not rows deleted earlier for another reason). Returns the number of rows restored. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 not deleted or its deal is deleted, 23505 a live row has taken its name (nothing is restored).';
CREATE OR REPLACE FUNCTION deal_store.purge(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer;
BEGIN
    r := deal_store._lock_row(entity, id, 'administer');
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION 'cannot purge % row %: it is not deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Soft-delete it first with deal_store.soft_delete.';
    END IF;
    PERFORM set_config('deal_store.hard_delete', 'on', true);
    IF entity = 'deal_store.deals'::regclass THEN
        DELETE FROM deal_store.deals d WHERE d.id = r.deal_id;
    ELSIF entity = 'deal_store.facts'::regclass THEN
        -- the fact and every history row of its version chain
        WITH RECURSIVE chain(vid) AS (
            SELECT purge.id
            UNION ALL
            SELECT f.previous_version_id FROM chain c
            JOIN deal_store.facts f ON f.deal_id = r.deal_id AND f.id = c.vid
            WHERE f.previous_version_id IS NOT NULL
        )
        DELETE FROM deal_store.facts f USING chain c WHERE f.deal_id = r.deal_id AND f.id = c.vid;
    ELSE
        EXECUTE format('DELETE FROM %s WHERE deal_id = $1 AND id = $2', entity) USING r.deal_id, id;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('deal_store.hard_delete', 'off', true);
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.purge(regclass, uuid) IS
    'Really deletes a soft-deleted row (a fact with its whole version history; a deal with everything it owns). The only real delete. Errors: 22023, P0002, 55000 when the row is not soft-deleted first.';
DO $$
DECLARE
    r text;
    g record;
BEGIN
    FOREACH r IN ARRAY ARRAY['deal_store_reader', 'deal_store_analyst', 'deal_store_reviewer',
                             'deal_store_admin', 'deal_store_service'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    -- each group has the privileges of the one before it; the service a reviewer's
    FOR g IN SELECT * FROM (VALUES ('deal_store_analyst', 'deal_store_reader'), ('deal_store_reviewer', 'deal_store_analyst'),
                                   ('deal_store_admin', 'deal_store_reviewer'), ('deal_store_service', 'deal_store_reviewer')) AS x(member, grp)
    LOOP
        IF NOT pg_catalog.pg_has_role(g.member, g.grp, 'MEMBER') THEN
            EXECUTE pg_catalog.format('GRANT %I TO %I', g.grp, g.member);
        END IF;
    END LOOP;
END $$;
COMMENT ON ROLE deal_store_reader IS 'deal_store: reads the deals its user is a member of.';
COMMENT ON ROLE deal_store_analyst IS 'deal_store: also writes documents, facts, findings, gaps, runs and proposals (where its user is analyst or above).';
COMMENT ON ROLE deal_store_reviewer IS 'deal_store: also decides the merge queue (where its user is reviewer or above).';
COMMENT ON ROLE deal_store_admin IS 'deal_store: every deal; purge, tier policies, users, enable_audit.';
COMMENT ON ROLE deal_store_service IS 'deal_store: an application''s pooled login; acts for its users with SET LOCAL deal_store.actor (required), with their deal rights.';

-- ---------------------------------------------------------------------------
-- Who a login role is, and deal teams.

ALTER TABLE deal_store.users ADD COLUMN db_role name;
ALTER TABLE deal_store.users ADD CONSTRAINT users_db_role_key UNIQUE (db_role);
COMMENT ON COLUMN deal_store.users.db_role IS 'The database login role that is this user: its actor is this user, whatever deal_store.actor says (42501 when set to someone else).';

CREATE TABLE deal_store.deal_members (
    deal_id  uuid        NOT NULL,
    user_id  uuid        NOT NULL,
    role     text        NOT NULL,
    added_by uuid,
    added_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deal_members_pkey PRIMARY KEY (deal_id, user_id),
    CONSTRAINT deal_members_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT deal_members_user_id_fkey FOREIGN KEY (user_id) REFERENCES deal_store.users (id) ON DELETE CASCADE,
    CONSTRAINT deal_members_role_check CHECK (role IN ('viewer', 'analyst', 'reviewer', 'lead'))
);
CREATE INDEX deal_members_user_id_idx ON deal_store.deal_members (user_id, role);
COMMENT ON TABLE deal_store.deal_members IS 'Deal teams: who may see and change a deal, with which deal role (viewer < analyst < reviewer < lead). The deal''s owner is its first lead. Changed through add_member / remove_member.';
COMMENT ON COLUMN deal_store.deal_members.role IS 'viewer (reads), analyst (also writes and proposes), reviewer (also decides the merge queue), lead (also manages members, archives, deletes the deal).';
COMMENT ON COLUMN deal_store.deal_members.added_by IS 'The actor who added the member or last changed the role.';
SELECT pg_catalog.pg_extension_config_dump('deal_store.deal_members', '');

-- Every deal's owner is a lead of it (existing deals too, on upgrade; before
-- the audit triggers go on, so the upgrade adds no log entries).
INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_at)
SELECT d.id, d.user_id, 'lead', d.created_at FROM deal_store.deals d
ON CONFLICT DO NOTHING;

SELECT deal_store.enable_audit('deal_store.deal_members');
CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON deal_store.deal_members
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.refuse_truncate();

COMMENT ON FUNCTION deal_store.access_changed() IS
    'Trigger (AFTER, FOR EACH STATEMENT on users and deal_members): forgets what this session resolved about actors, roles and teams.';
CREATE TRIGGER access_changed AFTER INSERT OR UPDATE OR DELETE ON deal_store.users
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.access_changed();
CREATE TRIGGER access_changed AFTER INSERT OR UPDATE OR DELETE ON deal_store.deal_members
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.access_changed();

CREATE FUNCTION deal_store.owner_is_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
    VALUES (NEW.id, NEW.user_id, 'lead', deal_store.current_actor())
    ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store.owner_is_lead() IS
    'Trigger (AFTER INSERT on deals): makes the deal''s owner a lead of it.';
CREATE TRIGGER owner_is_lead AFTER INSERT ON deal_store.deals
    FOR EACH ROW EXECUTE FUNCTION deal_store.owner_is_lead();

CREATE FUNCTION deal_store.add_member(deal_id uuid, user_id uuid, role text DEFAULT 'viewer') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'manage');
    IF role IS NULL OR role NOT IN ('viewer', 'analyst', 'reviewer', 'lead') THEN
        RAISE EXCEPTION 'unknown deal role "%"', role USING ERRCODE = '22023',
            HINT = 'A deal role is viewer, analyst, reviewer or lead.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM deal_store.users u WHERE u.id = add_member.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', user_id USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO deal_store.deal_members AS m (deal_id, user_id, role, added_by)
    VALUES (add_member.deal_id, add_member.user_id, add_member.role, deal_store.current_actor())
    ON CONFLICT ON CONSTRAINT deal_members_pkey DO UPDATE SET role = EXCLUDED.role, added_by = EXCLUDED.added_by
    WHERE m.role IS DISTINCT FROM EXCLUDED.role;
END $$;
COMMENT ON FUNCTION deal_store.add_member(uuid, uuid, text) IS
    'Adds a user to a deal''s team with a deal role, or changes the role of a member (audited). Leads of the deal and admins only (42501). P0002 no such deal or user, 22023 unknown role.';

CREATE FUNCTION deal_store.remove_member(deal_id uuid, user_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM deal_store._require_right(deal_id, 'manage');
    PERFORM 1 FROM deal_store.deals d WHERE d.id = remove_member.deal_id FOR NO KEY UPDATE;
    DELETE FROM deal_store.deal_members m WHERE m.deal_id = remove_member.deal_id AND m.user_id = remove_member.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is not a member of deal %', user_id, deal_id USING ERRCODE = 'P0002';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM deal_store.deal_members m WHERE m.deal_id = remove_member.deal_id AND m.role = 'lead') THEN
        RAISE EXCEPTION 'deal % would have no lead', deal_id USING ERRCODE = '55000',
            HINT = 'Make another member lead first.';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.remove_member(uuid, uuid) IS
    'Removes a user from a deal''s team (audited). Leads of the deal and admins only (42501). P0002 not a member, 55000 when the deal would have no lead.';

-- ---------------------------------------------------------------------------
-- Row-level security. The deal lists are computed once per statement (the
-- scalar subqueries become InitPlans), so a policy costs an array lookup per row;
-- the member's test comes first, so for a member it is the only one.

DO $$
DECLARE
    t record;
    sees text := '(SELECT deal_store.sees_all_deals())';
BEGIN
    FOR t IN SELECT * FROM (VALUES
        -- table, its deal column, the deal role that may change rows, extra read rule
        ('deals',              'id',      'lead',     ' OR user_id = (SELECT deal_store.current_actor())'),
        ('documents',          'deal_id', 'analyst',  ''),
        ('analysis_runs',      'deal_id', 'analyst',  ''),
        ('facts',              'deal_id', 'analyst',  ''),
        ('findings',           'deal_id', 'analyst',  ''),
        ('fact_finding_links', 'deal_id', 'analyst',  ''),
        ('gaps',               'deal_id', 'analyst',  ''),
        ('pending_changes',    'deal_id', 'reviewer', ''),
        ('deal_members',       'deal_id', 'lead',     ''),
        ('tier_policies',      'deal_id', 'lead',     ' OR deal_id IS NULL'),
        ('deal_activity_log',  'deal_id', NULL,       '')) AS x(tbl, col, writer, also)
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE deal_store.%I ENABLE ROW LEVEL SECURITY', t.tbl);
        EXECUTE pg_catalog.format(
            'CREATE POLICY members_read ON deal_store.%I FOR SELECT USING (%I = ANY ((SELECT deal_store.my_deals(''viewer''))::uuid[]) OR %s%s)',
            t.tbl, t.col, sees, t.also);
        -- one policy per command, so a read is checked against the read rule alone
        IF t.writer IS NOT NULL THEN
            EXECUTE pg_catalog.format(
                'CREATE POLICY members_insert ON deal_store.%I FOR INSERT WITH CHECK (%I = ANY ((SELECT deal_store.my_deals(%L))::uuid[]) OR %s)',
                t.tbl, t.col, t.writer, sees);
            EXECUTE pg_catalog.format(
                'CREATE POLICY members_update ON deal_store.%I FOR UPDATE USING (%I = ANY ((SELECT deal_store.my_deals(%L))::uuid[]) OR %s)',
                t.tbl, t.col, t.writer, sees);
            EXECUTE pg_catalog.format(
                'CREATE POLICY members_delete ON deal_store.%I FOR DELETE USING (%I = ANY ((SELECT deal_store.my_deals(%L))::uuid[]) OR %s)',
                t.tbl, t.col, t.writer, sees);
        END IF;
    END LOOP;
END $$;

-- A deal's owner creates it: a user may insert deals it owns.
CREATE POLICY owner_creates ON deal_store.deals FOR INSERT
    WITH CHECK ((SELECT deal_store.sees_all_deals()) OR user_id = (SELECT deal_store.current_actor()));

-- Notifications: each user their own.
ALTER TABLE deal_store.notifications ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON deal_store.notifications FOR ALL
    USING ((SELECT deal_store.sees_all_deals()) OR user_id = (SELECT deal_store.current_actor()));

-- ---------------------------------------------------------------------------
-- Grants. Nothing is granted to PUBLIC; each group role gets what its members need.

REVOKE ALL ON SCHEMA deal_store FROM PUBLIC;
GRANT USAGE ON SCHEMA deal_store TO deal_store_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA deal_store FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA deal_store FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
REVOKE ALL ON TYPE deal_store.fact_search_hit FROM PUBLIC;
GRANT USAGE ON TYPE deal_store.fact_search_hit TO deal_store_reader;

DO $$
DECLARE
    r record;
BEGIN
    -- readers read every table and view (rows: the policies), users without password_hash
    FOR r IN SELECT c.oid::pg_catalog.regclass AS rel FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'deal_store'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v', 'p')
               AND c.relname <> 'users' LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO deal_store_reader', r.rel);
    END LOOP;
    -- the views check the policies of the tables as the querying role
    FOR r IN SELECT c.oid::pg_catalog.regclass AS rel FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'deal_store'::pg_catalog.regnamespace AND c.relkind = 'v' LOOP
        EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true)', r.rel);
    END LOOP;
END $$;
GRANT SELECT (id, email, display_name, roles, active, created_at, updated_at, db_role) ON deal_store.users TO deal_store_reader;
GRANT UPDATE (read, read_at) ON deal_store.notifications TO deal_store_reader;
-- analysts write content directly too (DELETE is a soft delete)
GRANT INSERT, UPDATE, DELETE ON deal_store.deals, deal_store.documents, deal_store.facts, deal_store.findings,
    deal_store.fact_finding_links, deal_store.gaps,
    deal_store.active_deals, deal_store.active_documents, deal_store.active_facts, deal_store.active_findings,
    deal_store.active_gaps TO deal_store_analyst;
-- admins also manage users, tier policies, runs, the queue and teams directly
GRANT INSERT, UPDATE, DELETE ON deal_store.users, deal_store.tier_policies, deal_store.analysis_runs,
    deal_store.pending_changes, deal_store.deal_members, deal_store.notifications TO deal_store_admin;
GRANT SELECT ON deal_store.users TO deal_store_admin;

-- ---------------------------------------------------------------------------
-- Functions. The API runs with the owner's rights (SECURITY DEFINER, pinned
-- search_path) and checks the caller's right on the deal itself; internal
-- helpers (_*), the Rust internals and trigger functions are executable by no
-- one but the owner (a trigger fires without EXECUTE).

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT x.fn::pg_catalog.regprocedure AS fn, x.grantee, x.definer FROM (VALUES
        -- reader: pure functions (invoker: they touch no data, and SQL ones stay inlinable) and reads
        ('deal_store.current_actor()', 'deal_store_reader', false),
        ('deal_store.sees_all_deals()', 'deal_store_reader', false),
        ('deal_store.my_deals(text)', 'deal_store_reader', false),
        ('deal_store.fact_search_vector(regconfig, text, text, text, text, jsonb)', 'deal_store_reader', false),
        ('deal_store.fact_checksum(jsonb)', 'deal_store_reader', false),
        ('deal_store.fact_canonical(jsonb)', 'deal_store_reader', false),
        ('deal_store.content_checksum_of(text, jsonb)', 'deal_store_reader', false),
        ('deal_store.confidence_tier(uuid, text, text, double precision)', 'deal_store_reader', false),
        -- the pure Rust bodies of fact_checksum and fact_canonical (no data access): executable
        -- by readers so that those SQL wrappers stay inlinable into the caller's query
        ('deal_store._content_checksum(text, anyelement)', 'deal_store_reader', false),
        ('deal_store._content_canonical(text, anyelement)', 'deal_store_reader', false),
        ('deal_store.search_config()', 'deal_store_reader', false),
        ('deal_store.headline_options()', 'deal_store_reader', false),
        ('deal_store.search_tsquery(text, regconfig)', 'deal_store_reader', false),
        ('deal_store.search_facts(uuid, text, text, text, text, float8, integer, integer)', 'deal_store_reader', true),
        ('deal_store.search_deal(uuid, text, integer)', 'deal_store_reader', true),
        ('deal_store.deal_summary(uuid)', 'deal_store_reader', true),
        ('deal_store.deals_for_user(uuid, boolean)', 'deal_store_reader', true),
        ('deal_store.latest_completed_run(uuid)', 'deal_store_reader', true),
        ('deal_store.diff_facts(uuid, jsonb, text[])', 'deal_store_reader', true),
        ('deal_store.diff_summary(uuid, jsonb, text[])', 'deal_store_reader', true),
        ('deal_store.fact_history(uuid)', 'deal_store_reader', true),
        ('deal_store.fact_as_of(uuid, timestamptz)', 'deal_store_reader', true),
        ('deal_store.export_deal(uuid)', 'deal_store_reader', true),
        ('deal_store.conflicts(uuid)', 'deal_store_reader', true),
        ('deal_store.deal_activity(uuid, timestamptz, integer)', 'deal_store_reader', true),
        ('deal_store.entity_history(text, uuid)', 'deal_store_reader', true),
        -- analyst: runs, proposals, gaps, soft delete
        ('deal_store.start_run(uuid, text[], boolean)', 'deal_store_analyst', true),
        ('deal_store.complete_run(uuid)', 'deal_store_analyst', true),
        ('deal_store.fail_run(uuid, text)', 'deal_store_analyst', true),
        ('deal_store.propose_facts(uuid, jsonb, text[])', 'deal_store_analyst', true),
        ('deal_store.propose_findings(uuid, jsonb, text[])', 'deal_store_analyst', true),
        ('deal_store.propose_gaps(uuid, jsonb, text[])', 'deal_store_analyst', true),
        ('deal_store.resolve_gap(uuid, text)', 'deal_store_analyst', true),
        ('deal_store.reopen_gap(uuid)', 'deal_store_analyst', true),
        ('deal_store.soft_delete(regclass, uuid, text)', 'deal_store_analyst', true),
        ('deal_store.restore(regclass, uuid)', 'deal_store_analyst', true),
        ('deal_store.import_deal(jsonb)', 'deal_store_analyst', true),
        ('deal_store.archive_deal(uuid)', 'deal_store_analyst', true),
        ('deal_store.unarchive_deal(uuid)', 'deal_store_analyst', true),
        ('deal_store.add_member(uuid, uuid, text)', 'deal_store_analyst', true),
        ('deal_store.remove_member(uuid, uuid)', 'deal_store_analyst', true),
        -- reviewer: the merge queue
        ('deal_store.accept_change(uuid, text)', 'deal_store_reviewer', true),
        ('deal_store.reject_change(uuid, text)', 'deal_store_reviewer', true),
        ('deal_store.defer_change(uuid, timestamptz, text)', 'deal_store_reviewer', true),
        ('deal_store.accept_changes(uuid, integer, uuid)', 'deal_store_reviewer', true),
        ('deal_store.process_queue_batch(integer, integer)', 'deal_store_reviewer', true),
        ('deal_store.process_queue(integer, integer)', 'deal_store_reviewer', false),
        -- admin
        ('deal_store.purge(regclass, uuid)', 'deal_store_admin', true),
        ('deal_store.purge_audit(interval)', 'deal_store_admin', true),
        -- run as the caller: only a table's owner may put the triggers on it or take them off,
        -- so no admin can switch off the audit of deal_store's own tables
        ('deal_store.enable_audit(regclass)', 'deal_store_admin', false),
        ('deal_store.disable_audit(regclass)', 'deal_store_admin', false),
        ('deal_store.audit_row()', 'deal_store_admin', false),
        ('deal_store.audit_flush()', 'deal_store_admin', false)) AS x(fn, grantee, definer)
    LOOP
        IF f.definer THEN
            EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f.fn);
        END IF;
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %I', f.fn, f.grantee);
    END LOOP;
END $$;

COMMENT ON FUNCTION deal_store.sees_all_deals() IS
    'True when the caller sees and changes every deal: a superuser or a member of deal_store_admin. Used by the row-level security policies.';
COMMENT ON FUNCTION deal_store.my_deals(text) IS
    'The deals in which the acting user (current_actor) holds min_role (viewer, analyst, reviewer, lead) or a stronger deal role. Used by the row-level security policies, once per statement.';
COMMENT ON FUNCTION deal_store._require_right(uuid, text) IS
    'Internal: raises 42501, naming the deal and what is missing, unless the caller has the right needs (read, write, review, manage; administer with a NULL deal) on the deal: the group role of its login and the deal role of its actor.';

-- 0.2.0: one way to apply a change (issue 16):
-- every change is applied by one set-based routine (_apply / _apply_set) that
-- turns a change it cannot apply into a conflict with its reason; soft deletes
-- go through _mark_deleted; fact history rows are written by a statement
-- trigger (the self-referencing key is checked at commit); proposals are
-- checked against the catalog and say what became of them; deals may ignore
-- unknown keys.

ALTER TABLE deal_store.deals ADD COLUMN ignore_unknown_keys boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN deal_store.deals.ignore_unknown_keys IS 'On: a key a proposal (propose_facts, propose_findings, propose_gaps) does not know is dropped; off (the default): it is an error (22023) and nothing is proposed.';
-- what expands deals.* picks the new column up
CREATE OR REPLACE VIEW deal_store.active_deals AS
    SELECT * FROM deal_store.deals WHERE deleted_at IS NULL;
COMMENT ON VIEW deal_store.active_deals IS 'Deals that are not soft-deleted. DELETE through it soft-deletes.';
ALTER VIEW deal_store.active_deals SET (security_invoker = true);
CREATE OR REPLACE FUNCTION deal_store.deals_for_user(user_id uuid, include_archived boolean DEFAULT false)
RETURNS SETOF deal_store.deals
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT d.* FROM deal_store.deals d
    WHERE d.user_id = deals_for_user.user_id AND d.deleted_at IS NULL
      AND (deal_store.sees_all_deals() OR d.id = ANY (deal_store.my_deals('viewer')))
      AND (d.status <> 'archived' OR coalesce(deals_for_user.include_archived, false))
    ORDER BY d.updated_at DESC, d.id;
END;
COMMENT ON FUNCTION deal_store.deals_for_user(uuid, boolean) IS
    'A user''s live deals that the caller may see, most recently updated first; archived ones only when include_archived.';
ALTER TABLE deal_store.facts ALTER CONSTRAINT facts_previous_version_id_fkey DEFERRABLE INITIALLY DEFERRED;

-- history rows carry no search vector and no checksum index entry: writing a
-- version costs less (the column is re-added, so the two views over it are too)
DROP VIEW deal_store.current_facts;
DROP VIEW deal_store.active_facts;
ALTER TABLE deal_store.facts DROP COLUMN search_vector;
ALTER TABLE deal_store.facts ADD COLUMN search_vector       tsvector GENERATED ALWAYS AS (CASE WHEN superseded_at IS NULL
                            THEN deal_store.fact_search_vector('english', item, category, domain, evidence, details) END) STORED;
COMMENT ON COLUMN deal_store.facts.search_vector IS 'Weighted full-text vector (english): item A, category and domain B, evidence C, string values of details D. NULL on history rows (never searched).';
CREATE INDEX facts_search_vector_idx ON deal_store.facts USING gin (search_vector)
    WHERE deleted_at IS NULL AND superseded_at IS NULL;
DROP INDEX deal_store.facts_checksum_idx;
CREATE INDEX facts_checksum_idx ON deal_store.facts (deal_id, item_checksum) WHERE superseded_at IS NULL;
CREATE VIEW deal_store.active_facts AS
    SELECT * FROM deal_store.facts WHERE deleted_at IS NULL AND superseded_at IS NULL;
COMMENT ON VIEW deal_store.active_facts IS 'The current version of every fact that is not soft-deleted. DELETE through it soft-deletes.';
CREATE VIEW deal_store.current_facts AS
    SELECT f.* FROM deal_store.active_facts f
    WHERE f.analysis_run_id IS NULL
       OR EXISTS (SELECT 1 FROM deal_store.analysis_runs r
                  WHERE r.deal_id = f.deal_id AND r.id = f.analysis_run_id AND r.status = 'completed');
COMMENT ON VIEW deal_store.current_facts IS
    'Current live facts entered by hand or written by a completed run: the deterministic picture a reader should see.';
ALTER VIEW deal_store.active_facts SET (security_invoker = true);
ALTER VIEW deal_store.current_facts SET (security_invoker = true);
GRANT SELECT ON deal_store.active_facts, deal_store.current_facts TO deal_store_reader;
GRANT INSERT, UPDATE, DELETE ON deal_store.active_facts TO deal_store_analyst;

CREATE FUNCTION deal_store."fact_version_rows"() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'fact_version_rows_wrapper';
CREATE FUNCTION deal_store."_import_facts"("rows" anyelement) RETURNS void
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'import_facts_wrapper';
CREATE FUNCTION deal_store."_extra_fields"("entity_type" TEXT) RETURNS TEXT[]
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'extra_fields_wrapper';
CREATE FUNCTION deal_store."_kind_table"("entity_type" TEXT) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'kind_table_wrapper';
CREATE FUNCTION deal_store."entity_type_of"("tbl" oid) RETURNS TEXT
STABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'entity_type_of_wrapper';
COMMENT ON FUNCTION deal_store._extra_fields(text) IS
    'Internal: the columns a proposal of a fact, finding or gap may set besides its content fields (for facts: confidence_score, source_document_id).';
COMMENT ON FUNCTION deal_store._kind_table(text) IS
    'Internal: the table of an entity type of the merge queue (fact, finding, gap).';
COMMENT ON FUNCTION deal_store.entity_history(text, uuid) IS
    'Every audit entry of one row (entity_type as the log records it: fact, finding, gap, deal, document, ... for deal_store''s tables, schema.table for others; see entity_type_of) in the deals the caller may see, oldest first.';
COMMENT ON FUNCTION deal_store.entity_type_of(oid) IS
    'The entity_type under which the audit log records rows of a table, e.g. entity_type_of(''deal_store.facts''::regclass) = fact (the merge queue''s name), entity_type_of(''public.valuations''::regclass) = public.valuations. NULL for no such relation.';

-- one vocabulary: the log names deal_store's rows as the queue does (fact, not facts);
-- the entries already written are renamed the same way (the only UPDATE the log ever gets)
ALTER TABLE deal_store.deal_activity_log DISABLE TRIGGER append_only;
UPDATE deal_store.deal_activity_log l SET entity_type = deal_store.entity_type_of(c.oid)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'deal_store'::pg_catalog.regnamespace AND c.relkind IN ('r', 'p') AND l.entity_type = c.relname::text
  AND deal_store.entity_type_of(c.oid) <> l.entity_type;
ALTER TABLE deal_store.deal_activity_log ENABLE TRIGGER append_only;
-- the diff says update / delete as the queue does: diff_summary's columns follow
DROP FUNCTION deal_store.diff_summary(uuid, jsonb, text[]);
CREATE FUNCTION deal_store.diff_summary(deal_id uuid, incoming jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(new bigint, "update" bigint, unchanged bigint, "delete" bigint)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT count(*) FILTER (WHERE d.change = 'new'), count(*) FILTER (WHERE d.change = 'update'),
           count(*) FILTER (WHERE d.change = 'unchanged'), count(*) FILTER (WHERE d.change = 'delete')
    FROM deal_store.diff_facts(deal_id, incoming, domains) d;
END;
COMMENT ON FUNCTION deal_store.diff_summary(uuid, jsonb, text[]) IS
    'The four counts of deal_store.diff_facts: new, update, unchanged, delete.';
COMMENT ON FUNCTION deal_store.diff_facts(uuid, jsonb, text[]) IS
    'Diff of incoming facts (JSON array of objects keyed by legacy_id; missing content fields take the column defaults) against the deal''s current live facts: new, update (with changed_fields), unchanged, delete (only inside domains; all when NULL): the merge queue''s change types. 22023 on a non-array, a non-object element, a missing/empty or repeated legacy_id; P0002 when the deal does not exist.';
CREATE TRIGGER fact_version_rows AFTER UPDATE ON deal_store.facts
    REFERENCING OLD TABLE AS old_facts NEW TABLE AS new_facts
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.fact_version_rows();
COMMENT ON FUNCTION deal_store.fact_version_rows() IS
    'Statement trigger on facts: writes the history rows of the versions an UPDATE replaced (the ids fact_versions chose), in one INSERT from the statement''s transition tables.';
COMMENT ON FUNCTION deal_store._import_facts(anyelement) IS
    'Internal: inserts an export''s facts for import_deal, history rows included (the one writer of history rows besides fact_version_rows).';
COMMENT ON FUNCTION deal_store.fact_versions() IS
    'Row trigger on facts: computes item_checksum on every insert and update; an update that changes a current fact''s checksum keeps the id and links previous_version_id to a new id, under which fact_version_rows writes the old content as a history row (superseded_at set) at the end of the statement. Refuses history rows and previous_version_id links written by anything else (42501).';

-- soft deletes: one writer
CREATE FUNCTION deal_store._mark_deleted(tbl regclass, scope text, deal_ids uuid[], ids uuid[], reasons text[], batch uuid)
RETURNS TABLE(deal_id uuid, id uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._soft_deletable(tbl);
    -- @plpgsql_check_options: security_warnings = false, extra_warnings = false
    -- (the condition is one of the constant texts below; tbl a regclass; the OUT
    -- columns are the dynamic statement's RETURNING, which the checker cannot see)
    RETURN QUERY EXECUTE pg_catalog.format(
        'UPDATE %s t SET deleted_at = pg_catalog.now(), deleted_by = $4, delete_reason = x.reason, '
        '    delete_batch = coalesce($5, pg_catalog.gen_random_uuid()) '
        'FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) x(deal_id, id, reason) '
        'WHERE %s AND t.deleted_at IS NULL%s RETURNING %s, t.id',
        tbl,
        CASE scope WHEN 'row' THEN CASE WHEN tbl = 'deal_store.deals'::regclass THEN 't.id = x.id'
                                        ELSE 't.deal_id = x.deal_id AND t.id = x.id' END
                   WHEN 'owned_by_deal' THEN 't.deal_id = x.id'
                   WHEN 'owned_by_document' THEN 't.deal_id = x.deal_id AND t.source_document_id = x.id' END,
        CASE WHEN tbl = 'deal_store.facts'::regclass THEN ' AND t.superseded_at IS NULL' ELSE '' END,
        CASE WHEN tbl = 'deal_store.deals'::regclass THEN 't.id' ELSE 't.deal_id' END)
        USING deal_ids, ids, reasons, deal_store.current_actor(), batch;
END $$;
COMMENT ON FUNCTION deal_store._mark_deleted(regclass, text, uuid[], uuid[], text[], uuid) IS
    'Internal: soft-deletes live rows of tbl, set-based (deleted_at, deleted_by = deal_store.actor, the reason, batch, or a batch of its own per row when batch is NULL): the rows (deal_ids[i], ids[i]) themselves (scope row), the rows of the deals ids (owned_by_deal) or the facts sourced from the documents (owned_by_document). Returns the rows marked. soft_delete and the merge queue both write soft deletes through it.';

CREATE OR REPLACE FUNCTION deal_store.soft_delete(entity regclass, id uuid, reason text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := current_setting('deal_store.reason', true);
    r record;
    batch uuid := gen_random_uuid();
    total integer := 0;
    n integer;
    t record;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    PERFORM set_config('deal_store.reason', coalesce(reason, prev_reason, ''), true);
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN
        SELECT * FROM (VALUES
            (entity, 'row'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.documents'::regclass END, 'owned_by_deal'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.facts'::regclass END, 'owned_by_deal'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.findings'::regclass END, 'owned_by_deal'),
            (CASE WHEN entity = 'deal_store.deals'::regclass THEN 'deal_store.gaps'::regclass END, 'owned_by_deal'),
            (CASE WHEN entity = 'deal_store.documents'::regclass THEN 'deal_store.facts'::regclass END, 'owned_by_document')
        ) AS c(tbl, scope) WHERE c.tbl IS NOT NULL
    LOOP
        SELECT count(*) INTO n FROM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[r.deal_id], ARRAY[id], ARRAY[reason], batch);
        total := total + n;
    END LOOP;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete(regclass, uuid, text) IS
    'Soft-deletes one row of deals, documents, facts, findings or gaps and what it owns (a deal: its documents, facts, findings, gaps; a document: the facts sourced from it). All rows get one delete_batch, deleted_by = deal_store.actor and the reason. Returns the number of rows marked. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 already deleted.';

CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    SELECT k, e ->> 'id' INTO taken_in, taken
    FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                      'findings', 'gaps', 'fact_finding_links']) k,
         jsonb_array_elements(coalesce(doc -> k, '[]')) e
    WHERE CASE k WHEN 'documents' THEN EXISTS (SELECT 1 FROM deal_store.documents x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'analysis_runs' THEN EXISTS (SELECT 1 FROM deal_store.analysis_runs x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'findings' THEN EXISTS (SELECT 1 FROM deal_store.findings x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'gaps' THEN EXISTS (SELECT 1 FROM deal_store.gaps x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'fact_finding_links' THEN EXISTS (SELECT 1 FROM deal_store.fact_finding_links x WHERE x.id = (e ->> 'id')::uuid)
                 ELSE EXISTS (SELECT 1 FROM deal_store.facts x WHERE x.id = (e ->> 'id')::uuid) END
    LIMIT 1;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner: an existing user with the export's e-mail, else a new user with
    -- no password and the default roles (never credentials or roles from the document)
    SELECT u.id INTO owner FROM deal_store.users u WHERE lower(u.email) = lower(doc -> 'owner' ->> 'email');
    IF owner IS NULL AND jsonb_typeof(doc -> 'owner') = 'object' THEN
        INSERT INTO deal_store.users (id, email, display_name)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM deal_store.users u WHERE u.id = o.id) THEN gen_random_uuid() ELSE o.id END,
               o.email, o.display_name
        FROM jsonb_to_record(doc -> 'owner') AS o(id uuid, email text, display_name text)
        RETURNING id INTO owner;
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb) IS
    'Loads a deal from export_deal''s jsonb, keeping every id, so export_deal(import_deal(x)) = x. The caller (deal_store.actor) becomes a lead of it. The owner is the existing user with the export''s e-mail, else a new user with that e-mail, no password and the default roles (credentials and roles in the document are ignored). 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import.';

-- a fact's content is its content fields, named in one place
CREATE OR REPLACE FUNCTION deal_store.fact_history(fact_id uuid)
RETURNS TABLE(version integer, version_id uuid, is_current boolean, item text, item_checksum text,
              content jsonb, analysis_run_id uuid, run_number integer, written_at timestamptz, superseded_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.facts', fact_id, 'read');
    SELECT f.deal_id INTO deal FROM deal_store.facts f WHERE f.id = fact_id AND f.superseded_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fact % does not exist', fact_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
    WITH RECURSIVE chain AS (
        SELECT f.*, 0 AS depth FROM deal_store.facts f WHERE f.deal_id = deal AND f.id = fact_history.fact_id
        UNION ALL
        SELECT f.*, c.depth + 1 FROM chain c
        JOIN deal_store.facts f ON f.deal_id = c.deal_id AND f.id = c.previous_version_id
    )
    SELECT (max(c.depth) OVER () - c.depth + 1)::integer, c.id, c.depth = 0, c.item, c.item_checksum,
           (SELECT jsonb_object_agg(k, to_jsonb(c) -> k) FROM unnest(deal_store.content_fields('fact')) k),
           c.analysis_run_id, r.run_number, c.updated_at, c.superseded_at
    FROM chain c LEFT JOIN deal_store.analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id
    ORDER BY c.depth;
END $$;
COMMENT ON FUNCTION deal_store.fact_history(uuid) IS
    'A fact''s versions, newest first: version number (1 = oldest), the row holding it, its content and checksum, the run that wrote it, when it was written and when it was superseded. P0002 when the fact does not exist.';

-- the apply path
DROP FUNCTION deal_store._settle_batch(uuid[], text);
DROP FUNCTION deal_store._settle(deal_store.pending_changes, text);
DROP FUNCTION deal_store._apply_change(deal_store.pending_changes);
CREATE FUNCTION deal_store._apply_set(deal_ids uuid[], ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    todo deal_store.pending_changes[];
    actor uuid := deal_store.current_actor();
    applied uuid[] := ARRAY[]::uuid[];
    moved uuid[] := ARRAY[]::uuid[];
    done uuid[];
    kind text;
    tbl regclass;
    live text;
    same text;
    content text[];
    extra text[];
    set_cols text;
    set_vals text;
    ins_vals text;
BEGIN
    -- the open changes among (deal_ids[i], ids[i]) (the caller holds their locks), oldest first
    SELECT pg_catalog.array_agg(p ORDER BY p.created_at, p.id) INTO todo
    FROM ROWS FROM (pg_catalog.unnest(deal_ids), pg_catalog.unnest(ids)) c(deal_id, id)
    JOIN deal_store.pending_changes p ON p.deal_id = c.deal_id AND p.id = c.id
    WHERE p.status IN ('pending', 'deferred');
    IF todo IS NULL THEN
        RETURN;
    END IF;
    -- changes that cannot apply whatever their target (a deleted deal, a failed run)
    -- are decided now and leave the set
    WITH refused AS (
        SELECT c.deal_id, c.id, CASE WHEN d.deleted_at IS NOT NULL THEN 'the deal is deleted'
                                     WHEN r.status = 'failed' THEN pg_catalog.format('analysis run %s failed', r.run_number) END AS why
        FROM pg_catalog.unnest(todo) c
        JOIN deal_store.deals d ON d.id = c.deal_id
        LEFT JOIN deal_store.analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id),
    decided AS (
        UPDATE deal_store.pending_changes p
        SET status = 'conflict', decided_by = actor, decided_at = pg_catalog.now(), review_note = pg_catalog.concat_ws(' / ', note, x.why)
        FROM refused x WHERE x.why IS NOT NULL AND p.deal_id = x.deal_id AND p.id = x.id
        RETURNING p.deal_id, p.id)
    SELECT pg_catalog.array_agg(c ORDER BY c.created_at, c.id) INTO todo
    FROM pg_catalog.unnest(todo) c
    WHERE NOT EXISTS (SELECT 1 FROM decided x WHERE x.deal_id = c.deal_id AND x.id = c.id);
    FOR kind IN SELECT DISTINCT c.entity_type FROM pg_catalog.unnest(todo) c ORDER BY 1 LOOP
        tbl := (deal_store._kind_table(kind))::regclass;
        live := 't.deleted_at IS NULL' || CASE WHEN kind = 'fact' THEN ' AND t.superseded_at IS NULL' ELSE '' END;
        -- the target as proposed: same row, live, content checksum still the base
        same := 't.deal_id = c.deal_id AND t.id = c.entity_id AND ' || live || ' AND '
            || CASE WHEN kind = 'fact' THEN 't.item_checksum' ELSE 'deal_store.content_checksum_of(c.entity_type, pg_catalog.to_jsonb(t))' END
            || ' = c.base_checksum';
        content := deal_store.content_fields(kind);
        extra := deal_store._extra_fields(kind);
        -- an update sets every content field (a missing one is NULL, as it was hashed), an extra one only when given;
        -- a new row takes the column default for whatever the proposal does not carry
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(f), ', '),
               pg_catalog.string_agg(CASE WHEN f = ANY (content) THEN 'r.' || pg_catalog.quote_ident(f)
                                          ELSE pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE t.%I END', f, f, f) END, ', '),
               pg_catalog.string_agg(pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE %s END', f, f,
                   coalesce((SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attribute a
                             JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                             WHERE a.attrelid = tbl AND a.attname = f), 'NULL')), ', ')
        INTO set_cols, set_vals, ins_vals
        FROM pg_catalog.unnest(content || extra) f;
        -- @plpgsql_check_options: security_warnings = false
        -- (the statements below are built from a regclass, catalog column names and defaults, and constant text)
        EXECUTE pg_catalog.format(
            'WITH u AS (UPDATE %1$s t SET (%2$s, analysis_run_id) = (SELECT %3$s, c.analysis_run_id '
            '                FROM pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r) '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''update'' AND %4$s '
            '           RETURNING c.id) '
            'SELECT pg_catalog.array_agg(u.id) FROM u', tbl, set_cols, set_vals, same)
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- a removal is a soft delete, by the code soft_delete() uses: each its own batch, the run named
        EXECUTE pg_catalog.format(
            'WITH x AS (SELECT c.id AS change_id, c.deal_id, c.entity_id, '
            '                  pg_catalog.format(''removed by analysis run %%s'', run.run_number) AS reason '
            '           FROM pg_catalog.unnest($1) c JOIN deal_store.analysis_runs run ON run.deal_id = c.deal_id AND run.id = c.analysis_run_id '
            '           JOIN %1$s t ON %2$s '
            '           WHERE c.entity_type = $2 AND c.change_type = ''delete'' FOR UPDATE OF t) '
            'SELECT pg_catalog.array_agg(x.change_id) '
            'FROM (SELECT pg_catalog.array_agg(x.deal_id) AS deals, pg_catalog.array_agg(x.entity_id) AS ids, '
            '             pg_catalog.array_agg(x.reason) AS reasons FROM x) a, '
            '     LATERAL deal_store._mark_deleted(%3$L::pg_catalog.regclass, ''row'', a.deals, a.ids, a.reasons, NULL) m '
            '     JOIN x ON m.deal_id = x.deal_id AND m.id = x.entity_id',
            tbl, same, tbl::text)
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        EXECUTE pg_catalog.format(
            'WITH x AS (SELECT c.id AS change_id, pg_catalog.gen_random_uuid() AS new_id, c.* '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''new''), '
            'i AS (INSERT INTO %1$s (id, deal_id, legacy_id, analysis_run_id, %2$s) '
            '      SELECT c.new_id, c.deal_id, c.legacy_entity_id, c.analysis_run_id, %3$s '
            '      FROM x c, pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r '
            '      ON CONFLICT (deal_id, legacy_id) WHERE %4$s DO NOTHING RETURNING id) '
            'SELECT pg_catalog.array_agg(x.change_id) FROM x JOIN i ON i.id = x.new_id',
            tbl, set_cols, ins_vals, replace(live, 't.', ''))
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- of the updates and deletes not applied, those whose target is still there: it moved
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(c.id) FROM pg_catalog.unnest($1) c JOIN %s t ON t.deal_id = c.deal_id AND t.id = c.entity_id AND %s '
            'WHERE c.entity_type = $2 AND c.change_type <> ''new'' AND c.id <> ALL ($3)', tbl, live)
            INTO done USING todo, kind, applied;
        moved := moved || coalesce(done, ARRAY[]::uuid[]);
    END LOOP;
    -- the decisions, each reason worded here once
    UPDATE deal_store.pending_changes p
    SET status = CASE WHEN x.ok THEN 'accepted' ELSE 'conflict' END,
        decided_by = actor, decided_at = pg_catalog.now(),
        review_note = pg_catalog.concat_ws(' / ', note, CASE
            WHEN x.ok THEN NULL
            WHEN x.change_type = 'new' THEN 'a live row with this legacy_id exists'
            WHEN x.id = ANY (moved) THEN 'the target changed since the proposal'
            ELSE 'the target is gone or deleted' END)
    FROM (SELECT c.*, c.id = ANY (applied) AS ok FROM pg_catalog.unnest(todo) c) x
    WHERE p.deal_id = x.deal_id AND p.id = x.id;
END $$;
COMMENT ON FUNCTION deal_store._apply_set(uuid[], uuid[], text) IS
    'Internal: applies a set of open changes the caller has locked (the changes (deal_ids[i], ids[i])), set-based, per entity type: update makes a new version (facts) or rewrites the content, delete soft-deletes through _mark_deleted naming the run, new inserts with the run as analysis_run_id. A change whose target moved (checksum differs from base_checksum, target deleted, a live row took the legacy_id of a new), whose run failed or whose deal is deleted becomes a conflict with its reason. Any error aborts the whole set (see _apply).';

CREATE FUNCTION deal_store._apply(deal_ids uuid[], ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := pg_catalog.current_setting('deal_store.reason', true);
    -- not a change's fault: a deadlock or serialization failure (the caller retries),
    -- resources, a privilege, a bug
    not_the_change constant text[] := ARRAY['40', '42', '53', '57', '58', 'XX'];
    state text;
    problem text;
BEGIN
    PERFORM pg_catalog.set_config('deal_store.reason', coalesce(note, prev_reason, ''), true);
    BEGIN
        PERFORM deal_store._apply_set(deal_ids, ids, note);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
        IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
            RAISE;
        END IF;
        -- some change broke the set: apply each alone, so only what fails is refused
        FOR i IN 1 .. pg_catalog.cardinality(ids) LOOP
            BEGIN
                PERFORM deal_store._apply_set(ARRAY[deal_ids[i]], ARRAY[ids[i]], note);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, problem = MESSAGE_TEXT;
                IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
                    RAISE;
                END IF;
                UPDATE deal_store.pending_changes p
                SET status = 'conflict', decided_by = deal_store.current_actor(), decided_at = pg_catalog.now(),
                    review_note = pg_catalog.concat_ws(' / ', note, pg_catalog.format('cannot apply: %s (SQLSTATE %s)', problem, state))
                WHERE p.deal_id = deal_ids[i] AND p.id = ids[i] AND p.status IN ('pending', 'deferred');
            END;
        END LOOP;
    END;
    PERFORM pg_catalog.set_config('deal_store.reason', coalesce(prev_reason, ''), true);
END $$;
COMMENT ON FUNCTION deal_store._apply(uuid[], uuid[], text) IS
    'Internal: the one apply path. Applies the open changes (deal_ids[i], ids[i]) the caller has locked with _apply_set; when the set fails (a data error, a constraint), applies each change alone in a subtransaction and marks one that still fails as conflict with the error (cannot apply: message (SQLSTATE)), so no single change fails a batch. Errors that are not a change''s fault are raised: deadlocks and serialization failures (retry), resources, privileges, internal errors (classes 40, 42, 53, 57, 58, XX). The audit reason is the note.';

DROP FUNCTION deal_store._claim(integer, integer, uuid[]);
CREATE FUNCTION deal_store._claim(batch_size integer, max_tier integer, deals uuid[], OUT deal_ids uuid[], OUT ids uuid[])
LANGUAGE sql VOLATILE SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off
BEGIN ATOMIC
    SELECT pg_catalog.array_agg(p.deal_id), pg_catalog.array_agg(p.id) FROM (
        SELECT p.deal_id, p.id FROM deal_store.pending_changes p
        WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= _claim.max_tier
          AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
          AND (_claim.deals IS NULL OR p.deal_id = ANY (_claim.deals))
        ORDER BY p.created_at, p.id
        LIMIT _claim.batch_size
        FOR UPDATE SKIP LOCKED) p;
END;
COMMENT ON FUNCTION deal_store._claim(integer, integer, uuid[]) IS
    'Internal: locks (FOR UPDATE SKIP LOCKED) and returns (as deal_ids[i], ids[i]) up to batch_size eligible open changes of the given deals (all when NULL), oldest first, for process_queue.';

CREATE OR REPLACE FUNCTION deal_store._apply_changes(deal_id uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'write');
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = _apply_changes.deal_id AND p.id = ANY (ids) AND p.status = 'pending'
        ORDER BY p.created_at, p.id FOR UPDATE) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store._apply(pg_catalog.array_fill(deal_id, ARRAY[pg_catalog.cardinality(locked)]), locked, 'auto-applied (tier 1)');
    END IF;
END $$;
COMMENT ON FUNCTION deal_store._apply_changes(uuid, uuid[]) IS 'Internal: auto-applies the given tier-1 changes of a proposal.';

CREATE OR REPLACE FUNCTION deal_store._decide(change_id uuid, decision text, note text, until timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.pending_changes;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.pending_changes', change_id, 'review');
    SELECT * INTO c FROM deal_store.pending_changes p WHERE p.id = change_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pending change % does not exist', change_id USING ERRCODE = 'P0002';
    ELSIF c.status NOT IN ('pending', 'deferred') THEN
        RAISE EXCEPTION 'the change to % % is %, not pending', c.entity_type, c.legacy_entity_id, c.status
            USING ERRCODE = '55000', DETAIL = format('Change %s was decided at %s.', change_id, c.decided_at);
    END IF;
    IF decision = 'accept' THEN
        PERFORM deal_store._apply(ARRAY[c.deal_id], ARRAY[c.id], note);
        SELECT p.status INTO decision FROM deal_store.pending_changes p WHERE p.deal_id = c.deal_id AND p.id = c.id;
        RETURN decision;
    END IF;
    UPDATE deal_store.pending_changes p SET
        status = CASE decision WHEN 'reject' THEN 'rejected' ELSE 'deferred' END,
        decided_by = deal_store.current_actor(),
        decided_at = CASE decision WHEN 'reject' THEN now() END,
        deferred_until = CASE decision WHEN 'defer' THEN until END,
        review_note = note
    WHERE p.deal_id = c.deal_id AND p.id = c.id;
    RETURN CASE decision WHEN 'reject' THEN 'rejected' ELSE 'deferred' END;
END $$;
COMMENT ON FUNCTION deal_store._decide(uuid, text, text, timestamptz) IS 'Internal: shared body of accept_change, reject_change and defer_change.';

CREATE OR REPLACE FUNCTION deal_store.accept_changes(deal_id uuid, max_tier integer DEFAULT 2, run_id uuid DEFAULT NULL)
RETURNS TABLE(status text, n bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'review');
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = accept_changes.deal_id AND p.confidence_tier <= max_tier
          AND (accept_changes.run_id IS NULL OR p.analysis_run_id = accept_changes.run_id)
          AND (p.status = 'pending' OR (p.status = 'deferred' AND p.deferred_until <= now()))
        ORDER BY p.created_at, p.id
        FOR UPDATE SKIP LOCKED) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store._apply(pg_catalog.array_fill(deal_id, ARRAY[pg_catalog.cardinality(locked)]), locked, 'batch accept');
    END IF;
    RETURN QUERY SELECT p.status, count(*) FROM deal_store.pending_changes p
                 WHERE p.deal_id = accept_changes.deal_id AND p.id = ANY (locked)
                 GROUP BY p.status ORDER BY p.status;
END $$;
COMMENT ON FUNCTION deal_store.accept_changes(uuid, integer, uuid) IS
    'Accepts every open change of a deal up to max_tier (of one run when run_id is given; deferred ones once their time has come), skipping rows another session holds. Returns how many were accepted and how many turned out to be conflicts.';

CREATE OR REPLACE FUNCTION deal_store.process_queue_batch(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    claimed record;
    n integer;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    -- admins work the whole queue; a reviewer the deals it reviews
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to process the queue: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
    SELECT * INTO claimed FROM deal_store._claim(batch_size, max_tier,
        CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END);
    n := coalesce(cardinality(claimed.ids), 0);
    IF n > 0 THEN
        PERFORM deal_store._apply(claimed.deal_ids, claimed.ids, 'process_queue');
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.process_queue_batch(integer, integer) IS
    'One batch of process_queue in the caller''s transaction: claims up to batch_size eligible open changes (FOR UPDATE SKIP LOCKED; all deals for admins, else the deals where the actor is reviewer or lead), applies them and returns how many it settled.';

-- proposals return what became of each change: a new result column
DROP FUNCTION deal_store.propose_facts(uuid, jsonb, text[]);
DROP FUNCTION deal_store.propose_findings(uuid, jsonb, text[]);
DROP FUNCTION deal_store.propose_gaps(uuid, jsonb, text[]);
DROP FUNCTION deal_store._propose(text, uuid, anyelement, text[]);
CREATE FUNCTION deal_store."_propose"("entity_type" TEXT, "run_id" uuid, "incoming" anyelement, "domains" TEXT[])
RETURNS TABLE ("change_type" TEXT, "confidence_tier" INT, "proposed" bigint, "status" TEXT)
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'propose_internal_wrapper';
COMMENT ON FUNCTION deal_store._propose(text, uuid, anyelement, text[]) IS
    'Internal: the Rust body of propose_facts, propose_findings and propose_gaps.';
CREATE FUNCTION deal_store.propose_facts(run_id uuid, facts jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose('fact', run_id, facts, domains); END;
COMMENT ON FUNCTION deal_store.propose_facts(uuid, jsonb, text[]) IS
    'Diffs a running run''s facts against the deal''s current facts and writes one pending change (new, update, delete) per difference, with old value, new value, base_checksum and a tier; tier 1 applies at once unless deal_store.auto_apply is off. Removals only inside domains (default: the domains of the given facts, within the run''s domains); an incremental run never removes. Idempotent; a newer run supersedes an older run''s open change. Every element is checked first against its column (type, required, unknown keys unless the deal ignores them; the table''s CHECK constraints for the elements that become changes): 22023 naming the element, its legacy_id and the field, and nothing is proposed. Returns counts by change type, tier and what became of them (status pending, or accepted / conflict for tier 1 applied at once).';
CREATE FUNCTION deal_store.propose_findings(run_id uuid, findings jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose('finding', run_id, findings, domains); END;
COMMENT ON FUNCTION deal_store.propose_findings(uuid, jsonb, text[]) IS 'propose_facts for findings (content checksum over deal_store.content_fields(''finding'')).';
CREATE FUNCTION deal_store.propose_gaps(run_id uuid, gaps jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose('gap', run_id, gaps, domains); END;
COMMENT ON FUNCTION deal_store.propose_gaps(uuid, jsonb, text[]) IS 'propose_facts for gaps (content checksum over deal_store.content_fields(''gap'')).';

-- grants as access.sql gives them: the API runs as the owner, internals are the owner's
DO $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['deal_store.propose_facts(uuid, jsonb, text[])', 'deal_store.propose_findings(uuid, jsonb, text[])',
                             'deal_store.propose_gaps(uuid, jsonb, text[])']::pg_catalog.regprocedure[] LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO deal_store_analyst', f);
    END LOOP;
    ALTER ROUTINE deal_store.diff_summary(uuid, jsonb, text[]) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
    -- re-created above: the API runs as the owner again
    FOREACH f IN ARRAY ARRAY['deal_store.accept_changes(uuid, integer, uuid)', 'deal_store.import_deal(jsonb)',
                             'deal_store.process_queue_batch(integer, integer)', 'deal_store.soft_delete(regclass, uuid, text)',
                             'deal_store.deals_for_user(uuid, boolean)', 'deal_store.fact_history(uuid)']::pg_catalog.regprocedure[] LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
    REVOKE ALL ON ROUTINE deal_store.diff_summary(uuid, jsonb, text[]) FROM PUBLIC;
    GRANT EXECUTE ON ROUTINE deal_store.diff_summary(uuid, jsonb, text[]) TO deal_store_reader;
    REVOKE ALL ON ROUTINE deal_store.entity_type_of(oid) FROM PUBLIC;
    GRANT EXECUTE ON ROUTINE deal_store.entity_type_of(oid) TO deal_store_reader;
    FOREACH f IN ARRAY ARRAY['deal_store.fact_version_rows()', 'deal_store._import_facts(anyelement)', 'deal_store._extra_fields(text)',
                             'deal_store._kind_table(text)', 'deal_store._mark_deleted(regclass, text, uuid[], uuid[], text[], uuid)',
                             'deal_store._apply_set(uuid[], uuid[], text)', 'deal_store._claim(integer, integer, uuid[])',
                             'deal_store._apply(uuid[], uuid[], text)', 'deal_store._propose(text, uuid, anyelement, text[])']::pg_catalog.regprocedure[] LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
    END LOOP;
END $$;

-- 0.2.0: the users' side (issue 17):
-- soft delete the way clients write it (DELETE through the views reports its
-- rows; UPDATE … SET deleted_at = now() is a soft delete), calls that say what
-- they did (complete_run / fail_run return the run, process_queue its counts),
-- typed views for people and BI tools, entity_history by composite key, search
-- that composes (search_rank), set_actor.

CREATE FUNCTION deal_store._owned(entity regclass) RETURNS TABLE(tbl regclass, scope text)
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT c.tbl, c.scope FROM (VALUES
        ('deal_store.deals'::regclass, 'deal_store.documents'::regclass, 'owned_by_deal'),
        ('deal_store.deals'::regclass, 'deal_store.facts'::regclass, 'owned_by_deal'),
        ('deal_store.deals'::regclass, 'deal_store.findings'::regclass, 'owned_by_deal'),
        ('deal_store.deals'::regclass, 'deal_store.gaps'::regclass, 'owned_by_deal'),
        ('deal_store.documents'::regclass, 'deal_store.facts'::regclass, 'owned_by_document')) AS c(owner, tbl, scope)
    WHERE c.owner = _owned.entity;
END;
COMMENT ON FUNCTION deal_store._owned(regclass) IS
    'Internal: the tables whose rows a soft delete of a row of entity takes with it, and how they belong to it (a deal owns its documents, facts, findings and gaps; a document the facts sourced from it).';

CREATE OR REPLACE FUNCTION deal_store.soft_delete(entity regclass, id uuid, reason text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := current_setting('deal_store.reason', true);
    r record;
    batch uuid := gen_random_uuid();
    total integer := 0;
    n integer;
    t record;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    PERFORM set_config('deal_store.reason', coalesce(reason, prev_reason, ''), true);
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN SELECT entity AS tbl, 'row' AS scope UNION ALL SELECT * FROM deal_store._owned(entity) LOOP
        SELECT count(*) INTO n FROM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[r.deal_id], ARRAY[id], ARRAY[reason], batch);
        total := total + n;
    END LOOP;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete(regclass, uuid, text) IS
    'Soft-deletes one row of deals, documents, facts, findings or gaps and what it owns (a deal: its documents, facts, findings, gaps; a document: the facts sourced from it). All rows get one delete_batch, deleted_by = deal_store.actor and the reason. Returns the number of rows marked. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 already deleted.';

CREATE FUNCTION deal_store.soft_delete_by_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity regclass := TG_RELID::regclass;
    -- the five tables differ in their columns: read the row by name
    r jsonb := to_jsonb(NEW);
    deal uuid := (r ->> CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END)::uuid;
    prev_reason text := current_setting('deal_store.reason', true);
    t record;
BEGIN
    IF r ->> 'superseded_at' IS NOT NULL THEN
        RETURN NULL;   -- a fact's history row is never deleted on its own: it goes with its fact's purge
    END IF;
    PERFORM deal_store._require_right(deal, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    NEW.deleted_at := now();
    NEW.deleted_by := deal_store.current_actor();
    NEW.delete_batch := gen_random_uuid();
    NEW.delete_reason := coalesce(NEW.delete_reason, nullif(prev_reason, ''), 'UPDATE statement');
    PERFORM set_config('deal_store.reason', NEW.delete_reason, true);
    FOR t IN SELECT * FROM deal_store._owned(entity) LOOP
        PERFORM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[deal], ARRAY[NEW.id], ARRAY[NEW.delete_reason], NEW.delete_batch);
    END LOOP;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
    RETURN NEW;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete_by_update() IS
    'Trigger (BEFORE UPDATE, when deleted_at goes from NULL to a value and delete_batch stays NULL): makes UPDATE … SET deleted_at = now() the soft delete soft_delete() writes: deleted_at = now(), deleted_by = the actor, a batch of its own, the reason (the row''s delete_reason, else deal_store.reason, else ''UPDATE statement''), and the rows it owns in the same batch. Needs the caller''s write right on the deal (manage for a deal). A fact''s history row is left as it is.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER soft_delete_by_update BEFORE UPDATE OF deleted_at ON deal_store.%I FOR EACH ROW
            WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL AND NEW.delete_batch IS NULL)
            EXECUTE FUNCTION deal_store.soft_delete_by_update()', t);
    END LOOP;
END $$;

-- DELETE through an active_* view: the soft delete, reported as deleted rows
-- (DELETE 1, what ORMs count), where a DELETE on the table reports DELETE 0
-- (its BEFORE trigger skips the real delete).
CREATE FUNCTION deal_store.delete_through_view() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store.soft_delete(TG_ARGV[0]::regclass, OLD.id, 'DELETE statement');
    RETURN OLD;
END $$;
COMMENT ON FUNCTION deal_store.delete_through_view() IS
    'Trigger (INSTEAD OF DELETE on the active_* views): soft-deletes the row with deal_store.soft_delete (with cascade) and reports it deleted, so DELETE through a view returns the number of rows it soft-deleted.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER delete_through_view INSTEAD OF DELETE ON deal_store.%I FOR EACH ROW
            EXECUTE FUNCTION deal_store.delete_through_view(%L)', 'active_' || t, 'deal_store.' || t);
    END LOOP;
END $$;

-- complete_run and fail_run return the finished run
DROP FUNCTION deal_store.complete_run(uuid);
DROP FUNCTION deal_store.fail_run(uuid, text);
DROP FUNCTION deal_store._finish_run(uuid, text, text);
CREATE FUNCTION deal_store._finish_run(run_id uuid, new_status text, error text) RETURNS deal_store.analysis_runs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    finished deal_store.analysis_runs;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
    SELECT x.deal_id, x.status, x.started_at, d.deleted_at AS deal_deleted_at INTO r
    FROM deal_store.analysis_runs x JOIN deal_store.deals d ON d.id = x.deal_id
    WHERE x.id = run_id FOR NO KEY UPDATE OF x;
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
        completed_at = clock_timestamp(),
        duration_seconds = round(extract(epoch FROM clock_timestamp() - x.started_at)::numeric, 3),
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
    RETURN finished;
END $$;
COMMENT ON FUNCTION deal_store._finish_run(uuid, text, text) IS
    'Internal: shared body of complete_run and fail_run; returns the finished run.';

CREATE FUNCTION deal_store.complete_run(run_id uuid) RETURNS deal_store.analysis_runs
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM deal_store._finish_run(run_id, 'completed', NULL);
END;
COMMENT ON FUNCTION deal_store.complete_run(uuid) IS
    'Marks a running run completed: sets completed_at, duration_seconds and the counts of what it wrote, and returns the run (SELECT * FROM complete_run(id) shows its columns); its rows become visible in the current_* views. Errors: P0002 no such run, 55000 already finished or deal deleted.';

CREATE FUNCTION deal_store.fail_run(run_id uuid, error text) RETURNS deal_store.analysis_runs
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM deal_store._finish_run(run_id, 'failed', error);
END;
COMMENT ON FUNCTION deal_store.fail_run(uuid, text) IS
    'Marks a running run failed with an error message and returns the run; what it wrote stays stored but hidden from the current_* views. Errors: P0002, 55000.';

-- process_queue_batch and process_queue report what they did
DROP PROCEDURE deal_store.process_queue(integer, integer);
DROP FUNCTION deal_store.process_queue_batch(integer, integer);
CREATE FUNCTION deal_store.process_queue_batch(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    OUT claimed integer, OUT applied integer, OUT conflicts integer)
LANGUAGE plpgsql AS $$
DECLARE
    batch record;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    -- admins work the whole queue; a reviewer the deals it reviews
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to process the queue: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
    SELECT * INTO batch FROM deal_store._claim(batch_size, max_tier,
        CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END);
    claimed := coalesce(cardinality(batch.ids), 0);
    applied := 0;
    conflicts := 0;
    IF claimed > 0 THEN
        PERFORM deal_store._apply(batch.deal_ids, batch.ids, 'process_queue');
        SELECT count(*) FILTER (WHERE p.status = 'accepted'), count(*) FILTER (WHERE p.status = 'conflict')
        INTO applied, conflicts
        FROM ROWS FROM (pg_catalog.unnest(batch.deal_ids), pg_catalog.unnest(batch.ids)) x(deal_id, id)
        JOIN deal_store.pending_changes p ON p.deal_id = x.deal_id AND p.id = x.id;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.process_queue_batch(integer, integer) IS
    'One batch of process_queue in the caller''s transaction (for clients that cannot CALL a committing procedure): claims up to batch_size eligible open changes (FOR UPDATE SKIP LOCKED; all deals for admins, else the deals where the actor is reviewer or lead), applies them and returns how many it claimed, how many were applied and how many became conflicts. Fewer claimed than batch_size: the queue is drained for this caller.';

-- The worker. Its INOUT parameters are its result (CALL shows them as one row);
-- a caller passes nothing for them.
CREATE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    INOUT batches integer DEFAULT NULL, INOUT applied bigint DEFAULT NULL,
    INOUT conflicts bigint DEFAULT NULL, INOUT remaining bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    batches := 0;
    applied := 0;
    conflicts := 0;
    LOOP
        b := deal_store.process_queue_batch(batch_size, max_tier);
        COMMIT;
        EXIT WHEN b.claimed = 0;
        batches := batches + 1;
        applied := applied + b.applied;
        conflicts := conflicts + b.conflicts;
        RAISE NOTICE 'process_queue: batch %: % applied, % conflicts (so far % applied, % conflicts)',
            batches, b.applied, b.conflicts, applied, conflicts;
        EXIT WHEN b.claimed < batch_size;
    END LOOP;
    -- what another call would find now: eligible changes that other workers hold
    -- or that were proposed meanwhile
    SELECT count(*) INTO remaining FROM deal_store.pending_changes p
    WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
      AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
      AND (deal_store.sees_all_deals() OR p.deal_id = ANY (deal_store.my_deals('reviewer')));
END $$;
COMMENT ON PROCEDURE deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint) IS
    'Worker: applies eligible open changes (tier <= max_tier; deferred ones whose time has come) in batches of batch_size with process_queue_batch, committing after each batch and raising a NOTICE with its progress. Returns (as its INOUT parameters; pass nothing for them, or variables from PL/pgSQL) the batches it ran, the changes applied and those that became conflicts, and the eligible changes still open when it stopped (held by other workers or proposed meanwhile) in the deals it works. Rows are claimed with FOR UPDATE SKIP LOCKED, so several workers can run at once and none applies a change twice; a crash loses at most the uncommitted batch, never half a change. Admins work every deal, reviewers the deals they review. CALL it outside a transaction block (psql autocommit; a client in autocommit mode), or loop over process_queue_batch inside one.';

-- typed views
CREATE VIEW deal_store.deal_overview AS
    SELECT d.id AS deal_id, d.name, d.target_name, d.deal_type, d.status,
           d.user_id AS owner_id, u.email AS owner_email, u.display_name AS owner_name,
           c.documents, c.facts, c.findings, c.critical_findings, c.gaps, c.open_gaps,
           q.pending_tier_1, q.pending_tier_2, q.pending_tier_3, q.conflicts,
           r.run_number AS last_run_number, r.completed_at AS last_run_completed_at, d.updated_at
    FROM deal_store.active_deals d
    LEFT JOIN deal_store.users u ON u.id = d.user_id
    CROSS JOIN LATERAL (SELECT
        (SELECT count(*) FROM deal_store.active_documents x WHERE x.deal_id = d.id) AS documents,
        (SELECT count(*) FROM deal_store.current_facts x WHERE x.deal_id = d.id) AS facts,
        (SELECT count(*) FROM deal_store.current_findings x WHERE x.deal_id = d.id) AS findings,
        (SELECT count(*) FROM deal_store.current_findings x WHERE x.deal_id = d.id AND x.severity = 'critical') AS critical_findings,
        (SELECT count(*) FROM deal_store.current_gaps x WHERE x.deal_id = d.id) AS gaps,
        (SELECT count(*) FROM deal_store.current_gaps x WHERE x.deal_id = d.id AND x.resolved_at IS NULL) AS open_gaps) c
    CROSS JOIN LATERAL (SELECT
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 1) AS pending_tier_1,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 2) AS pending_tier_2,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 3) AS pending_tier_3,
        count(*) FILTER (WHERE p.status = 'conflict') AS conflicts
        FROM deal_store.pending_changes p WHERE p.deal_id = d.id) q
    LEFT JOIN LATERAL (SELECT x.run_number, x.completed_at FROM deal_store.analysis_runs x
                       WHERE x.deal_id = d.id AND x.status = 'completed'
                       ORDER BY x.run_number DESC LIMIT 1) r ON true;
COMMENT ON VIEW deal_store.deal_overview IS
    'One row per live deal the caller may see, plain columns for BI tools: owner (id, e-mail, display name), counts of active documents, current facts, findings (critical ones), gaps (open ones), the open merge queue by tier (pending or deferred), conflicts, and the last completed run. Key: deal_id.';
CREATE VIEW deal_store.facts_by_domain AS
    SELECT f.deal_id, f.domain, count(*) AS facts, count(*) FILTER (WHERE f.verified) AS verified,
           count(*) FILTER (WHERE f.confidence_score < 0.7) AS low_confidence,
           round(avg(f.confidence_score)::numeric, 2) AS avg_confidence,
           count(DISTINCT f.source_document_id) AS documents, max(f.updated_at) AS last_updated_at
    FROM deal_store.current_facts f
    GROUP BY f.deal_id, f.domain;
COMMENT ON VIEW deal_store.facts_by_domain IS
    'Current facts per deal and domain: how many, verified, below 0.7 confidence, the average confidence, the documents they come from, the last change. Key: (deal_id, domain).';
CREATE VIEW deal_store.activity AS
    SELECT l.seq, l.created_at, l.deal_id, d.name AS deal_name, l.user_id, u.email AS user_email,
           u.display_name AS user_name, l.action, l.entity_type, l.entity_id, l.entity_key, l.reason,
           l.analysis_run_id, l.details, l.id, l.txid
    FROM deal_store.deal_activity_log l
    LEFT JOIN deal_store.users u ON u.id = l.user_id
    LEFT JOIN deal_store.deals d ON d.id = l.deal_id;
COMMENT ON VIEW deal_store.activity IS
    'The audit log for people: every entry the caller may see with the deal''s name and the actor''s e-mail and display name (NULL when the actor is unknown or no longer exists). Key: id (seq orders).';

-- entity_history finds rows by a composite key too
DROP FUNCTION deal_store.entity_history(text, uuid);
CREATE FUNCTION deal_store.entity_history(entity_type text, entity_id uuid DEFAULT NULL, entity_key jsonb DEFAULT NULL)
RETURNS SETOF deal_store.deal_activity_log
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.entity_type = entity_history.entity_type
      AND (l.entity_id = entity_history.entity_id OR l.entity_key = entity_history.entity_key)
      AND (deal_store.sees_all_deals() OR l.deal_id = ANY (deal_store.my_deals('viewer')))
    ORDER BY l.seq;
END;
COMMENT ON FUNCTION deal_store.entity_history(text, uuid, jsonb) IS
    'Every audit entry of one row in the deals the caller may see, oldest first. entity_type as the log records it (fact, finding, gap, deal, document, deal_member, ... for deal_store''s tables, schema.table for others; see entity_type_of); the row by its uuid id (entity_id) or, for a table without one, by its primary key as an object (entity_key => ''{"deal_id": "…", "user_id": "…"}'', any key order).';
-- hash: a composite key of any size (a btree entry is limited to a third of a page)
CREATE INDEX deal_activity_log_entity_key_idx ON deal_store.deal_activity_log USING hash (entity_key) WHERE entity_key IS NOT NULL;

-- search that composes
CREATE FUNCTION deal_store.search_rank(search_vector tsvector, query tsquery) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.ts_rank_cd(search_vector, query, 32);
COMMENT ON FUNCTION deal_store.search_rank(tsvector, tsquery) IS
    'The rank search_facts orders full-text matches by, in (0, 1): ts_rank_cd normalised (flag 32). Use it with search_tsquery in a query of your own: WHERE f.search_vector @@ q ORDER BY deal_store.search_rank(f.search_vector, q) DESC.';
CREATE OR REPLACE FUNCTION deal_store.search_tsquery(query text, cfg regconfig DEFAULT NULL) RETURNS tsquery
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    c regconfig := coalesce(cfg, deal_store.search_config());
    q text := btrim(coalesce(query, ''));
    last text := substring(q FROM '(?:^|\s)([[:alnum:]_]+)$');
    head text;
    prefix tsquery;
BEGIN
    -- the last word also matches as a prefix, unless it is inside quotes, excluded or "or"
    IF last IS NULL OR lower(last) = 'or' OR (length(q) - length(replace(q, '"', ''))) % 2 = 1 THEN
        RETURN websearch_to_tsquery(c, q);
    END IF;
    prefix := to_tsquery(c, last || ':*');   -- last is letters and digits only: never a syntax error
    IF numnode(prefix) = 0 THEN
        RETURN websearch_to_tsquery(c, q);   -- a stop word
    END IF;
    head := btrim(left(q, length(q) - length(last)));
    IF head = '' THEN
        RETURN prefix;
    ELSIF head ~* '(^|\s)or$' THEN
        RETURN websearch_to_tsquery(c, regexp_replace(head, '(^|\s)or$', '', 'i')) || prefix;
    END IF;
    RETURN websearch_to_tsquery(c, head) && prefix;
END $$;
COMMENT ON FUNCTION deal_store.search_tsquery(text, regconfig) IS
    'The tsquery search_facts runs: websearch syntax ("phrase", or, -word) with the last word also matching as a prefix. Never raises a syntax error. Composes: SELECT … FROM deal_store.active_facts f WHERE f.search_vector @@ deal_store.search_tsquery(''…'') uses the GIN index on search_vector; order by deal_store.search_rank.';
CREATE OR REPLACE FUNCTION deal_store.search_facts(deal_id uuid, query text, domain text DEFAULT NULL, category text DEFAULT NULL,
    entity text DEFAULT NULL, min_confidence float8 DEFAULT NULL, lim integer DEFAULT 20, off integer DEFAULT 0)
RETURNS SETOF deal_store.fact_search_hit
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    vec text;
    opts text := deal_store.headline_options();
    trgm text := (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e
                  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm');
    filters text := ' AND f.deal_id = $1 AND f.deleted_at IS NULL AND f.superseded_at IS NULL'
                    ' AND ($3 IS NULL OR f.domain = $3) AND ($4 IS NULL OR f.category = $4)'
                    ' AND ($5 IS NULL OR f.entity = $5) AND ($6 IS NULL OR f.confidence_score >= $6)';
    page text := ' ORDER BY rank DESC, f.legacy_id, f.id LIMIT $7 OFFSET $8';
    typo text;
    tsq_found boolean := false;
    -- the ranked page: %1$s the vector, %2$s the filters, %3$s the page, %4$s added to the rank;
    -- the headline is computed for the returned rows only
    ranked text := 'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item, f.evidence,
                                      (deal_store.search_rank(%1$s, $2) + %4$s)::real AS rank, count(*) OVER () AS total
                               FROM deal_store.facts f WHERE %1$s @@ $2 %2$s %3$s)
                    SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank,
                           CASE WHEN m.evidence IS NULL OR to_tsvector($9, m.item) @@ $2 THEN ts_headline($9, m.item, $2, $10)
                                ELSE ts_headline($9, m.evidence, $2, $10) END, m.total
                    FROM m ORDER BY m.rank DESC, m.legacy_id, m.id';
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF off IS NULL OR off < 0 THEN
        RAISE EXCEPTION 'off must not be negative' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    -- the stored vector is built with english; another configuration computes it on the fly
    vec := CASE WHEN cfg = 'english'::regconfig THEN 'f.search_vector'
                ELSE format('deal_store.fact_search_vector(%L, f.item, f.category, f.domain, f.evidence, f.details)', cfg) END;
    tsq := deal_store.search_tsquery(query, cfg);
    -- 1. full-text match: rank in (0, 1)
    IF numnode(tsq) > 0 THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '0')
            USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
        IF FOUND THEN
            RETURN;
        END IF;
        -- an empty page past the end of a non-empty result is not a reason to go fuzzy
        IF off > 0 THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM deal_store.facts f WHERE %s @@ $2 %s)', vec, filters)
                INTO STRICT tsq_found USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category,
                     search_facts.entity, min_confidence;
            IF tsq_found THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- 2. trigram fallback (pg_trgm word similarity): rank = similarity - 1, so <= 0
    -- @plpgsql_check_options: security_warnings = false
    -- (the EXECUTEd texts are constants of this function; trgm is quote_ident of pg_trgm's schema)
    RETURN QUERY EXECUTE format(
        'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item,
                           (%1$s.word_similarity($2::text, f.item) - 1)::real AS rank, count(*) OVER () AS total
                    FROM deal_store.facts f WHERE $2::text OPERATOR(%1$s.<%%) f.item %2$s %3$s)
         SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank, m.item, m.total
         FROM m ORDER BY m.rank DESC, m.legacy_id, m.id', trgm, filters, page)
        USING search_facts.deal_id, btrim(query), search_facts.domain, search_facts.category, search_facts.entity,
              min_confidence, lim, off;
    IF FOUND THEN
        RETURN;
    END IF;
    -- 3. typo fallback: the deal's lexemes within a small edit distance; rank = ts_rank_cd - 1
    typo := deal_store.typo_tsquery(search_facts.deal_id, query, cfg::text);
    IF typo IS NOT NULL THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '-1')
            USING search_facts.deal_id, typo::tsquery, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.search_facts(uuid, text, text, text, text, double precision, integer, integer) IS
    'Ranked search over a deal''s current live facts. query: web-search syntax ("quoted phrase", or, -excluded), the last word also matching as a prefix. Filters: domain, category, entity, min_confidence. Ordered by rank then legacy_id and id (stable pages); total = all matches. headline marks the matched words (tags deal_store.headline_start / headline_stop) in the item, or in the evidence when the item has none. rank in (0, 1): full-text match (ts_rank_cd normalised to rank/(rank+1)); rank <= 0: fallback (trigram word similarity - 1, or the typo-tolerant match''s rank - 1). NULL or blank query: no rows. 22023 for lim outside 1..1000 or negative off.';

CREATE FUNCTION deal_store.set_actor(user_id uuid) RETURNS uuid
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_catalog.set_config('deal_store.actor', coalesce(user_id::text, ''), true);
    SELECT deal_store.current_actor();
END;
COMMENT ON FUNCTION deal_store.set_actor(uuid) IS
    'Names the acting user for the rest of the transaction (SET LOCAL deal_store.actor, from a bindable uuid; NULL clears it) and returns current_actor(): 42501 when this login may not act for that user.';

-- grants as access.sql gives them
ALTER VIEW deal_store.deal_overview SET (security_invoker = true);
ALTER VIEW deal_store.facts_by_domain SET (security_invoker = true);
ALTER VIEW deal_store.activity SET (security_invoker = true);
GRANT SELECT ON deal_store.deal_overview, deal_store.facts_by_domain, deal_store.activity TO deal_store_reader;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT x.fn::pg_catalog.regprocedure AS fn, x.grantee, x.definer FROM (VALUES
        ('deal_store.soft_delete(regclass, uuid, text)', NULL, true),
        ('deal_store.search_facts(uuid, text, text, text, text, float8, integer, integer)', NULL, true),
        ('deal_store.complete_run(uuid)', 'deal_store_analyst', true),
        ('deal_store.fail_run(uuid, text)', 'deal_store_analyst', true),
        ('deal_store.process_queue_batch(integer, integer)', 'deal_store_reviewer', true),
        ('deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint)', 'deal_store_reviewer', false),
        ('deal_store.entity_history(text, uuid, jsonb)', 'deal_store_reader', true),
        ('deal_store.search_rank(tsvector, tsquery)', 'deal_store_reader', false),
        ('deal_store.set_actor(uuid)', 'deal_store_reader', false)) AS x(fn, grantee, definer)
    LOOP
        IF f.definer THEN
            EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f.fn);
        END IF;
        IF f.grantee IS NOT NULL THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %I', f.fn, f.grantee);
        END IF;
    END LOOP;
END $$;

-- 0.2.0: the change feed (issue 18):
-- registered consumers read the log gap-free with cursors (read_changes /
-- ack_changes); a wake-up notification on deal_store_feed.

CREATE FUNCTION deal_store."_caller_role"() RETURNS TEXT
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'caller_role_wrapper';
COMMENT ON FUNCTION deal_store._caller_role() IS
    'Internal: the role the caller acts as outside SECURITY DEFINER functions (its login, or the role it SET ROLE to): the owner of the consumers it registers.';

CREATE TABLE deal_store.feed_consumers (
    name          text        NOT NULL,
    owner_role    name        NOT NULL,
    cursor_txid   bigint[]    NOT NULL,
    cursor_seq    bigint[]    NOT NULL,
    read_txid     bigint[],
    read_seq      bigint[],
    registered_at timestamptz NOT NULL DEFAULT now(),
    read_at       timestamptz,
    acked_at      timestamptz,
    CONSTRAINT feed_consumers_pkey PRIMARY KEY (name),
    CONSTRAINT feed_consumers_name_check CHECK (name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    CONSTRAINT feed_consumers_read_check CHECK ((read_txid IS NULL) = (read_seq IS NULL))
);
COMMENT ON TABLE deal_store.feed_consumers IS
    'Registered readers of the change feed (read_changes / ack_changes), each owned by the role that registered it.';
COMMENT ON COLUMN deal_store.feed_consumers.cursor_txid IS
    'With cursor_seq, element n + 1 for the entries node n wrote (one node, 0, on plain PostgreSQL; a missing element is the start): every such entry at or before (cursor_txid, cursor_seq) in (txid, seq) order is acknowledged.';
COMMENT ON COLUMN deal_store.feed_consumers.read_txid IS
    'With read_seq, per node like cursor_txid: where the last read_changes ended (the position an ack of all its rows moves the cursor to).';
SELECT pg_catalog.pg_extension_config_dump('deal_store.feed_consumers', '');

-- the feed reads the log in (txid, seq) order
CREATE INDEX deal_activity_log_txid_idx ON deal_store.deal_activity_log (txid, seq);

-- Which node wrote an entry: the one rule for numbering and reading.
CREATE FUNCTION deal_store._log_seq(node integer, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (node::bigint << 48) + n;
COMMENT ON FUNCTION deal_store._log_seq(integer, bigint) IS
    'Internal: the seq of the n-th log entry a node wrote: its Citus group above bit 48 (the audit writer on a worker numbers its shards'' entries so; on plain PostgreSQL and on the coordinator the node is 0).';

CREATE FUNCTION deal_store._log_node(seq bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (seq >> 48)::integer;
COMMENT ON FUNCTION deal_store._log_node(bigint) IS
    'Internal: the node (Citus group; 0 on plain PostgreSQL) that wrote the log entry with this seq, whose transaction ids order it.';

CREATE FUNCTION deal_store._horizon() RETURNS bigint
LANGUAGE sql VOLATILE
RETURN pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint;
COMMENT ON FUNCTION deal_store._horizon() IS
    'Internal: the xmin of the current snapshot as a txid: every transaction below it has committed or aborted, so the log holds all of their entries.';

-- Each node's horizon, element n + 1 for node n (plain PostgreSQL: just this one).
-- On Citus the coordinator's comes first, then the workers' (asked over their own
-- connections: a later read there sees every transaction below them). An entry the
-- coordinator writes lands on a worker, where a two-phase commit makes it visible
-- only after the coordinator's own commit: while a worker still holds a prepared
-- transaction of a node, that node's horizon is 0 when `settled` (nothing new of
-- it is delivered yet).
CREATE FUNCTION deal_store._horizons(settled boolean) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
-- @plpgsql_check_options: security_warnings = false
DECLARE
    h bigint[] := ARRAY[deal_store._horizon()];
    held integer[] := ARRAY[]::integer[];
    g integer;
    ok boolean;
    xmin bigint;
    pending integer[];
    answer text;
    failed text;
BEGIN
    IF NOT deal_store._distributed() THEN
        RETURN h;
    END IF;
    FOR g, ok, xmin, pending, answer IN EXECUTE format(
        $q$SELECT n.groupid, r.success,
                  CASE WHEN r.success THEN pg_catalog.split_part(r.result, ':', 1)::bigint END,
                  CASE WHEN r.success THEN pg_catalog.string_to_array(NULLIF(pg_catalog.split_part(r.result, ':', 2), ''), ',')::integer[] END,
                  r.result
           FROM %s(%L) r JOIN pg_catalog.pg_dist_node n ON n.nodename = r.nodename AND n.nodeport = r.nodeport$q$,
        'pg_catalog.run_command_on_workers',
        -- its xmin, and the nodes that began its prepared transactions (Citus names them citus_<group>_...)
        $w$SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text || ':'
                  || coalesce((SELECT pg_catalog.string_agg(DISTINCT pg_catalog.split_part(p.gid, '_', 2), ',')
                               FROM pg_catalog.pg_prepared_xacts p WHERE p.gid LIKE 'citus\_%'), '')$w$)
    LOOP
        IF ok THEN
            h[g + 1] := xmin;
            held := held || pending;
        ELSE
            failed := concat_ws('; ', failed, answer);
        END IF;
    END LOOP;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'the change feed could not ask every worker where it stands: %', failed USING ERRCODE = '58000';
    END IF;
    IF settled THEN
        FOREACH g IN ARRAY held LOOP
            h[g + 1] := 0;
        END LOOP;
    END IF;
    RETURN h;
END $$;
COMMENT ON FUNCTION deal_store._horizons(boolean) IS
    'Internal: each node''s horizon, element n + 1 for node n (the Citus group; one element on plain PostgreSQL): its entries below it are final. settled: 0 for a node while a worker holds a prepared transaction it began (its entries there are not yet visible).';

-- A consumer by name, locked, owned by the caller (admins may use any).
CREATE FUNCTION deal_store._consumer(name text) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'consumer must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO c FROM deal_store.feed_consumers f WHERE f.name = _consumer.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no feed consumer named "%"', name USING ERRCODE = 'P0002',
            HINT = 'Register it with deal_store.register_consumer.';
    ELSIF c.owner_role <> deal_store._caller_role() AND NOT deal_store.sees_all_deals() THEN
        RAISE EXCEPTION 'permission denied for feed consumer "%": it belongs to role %', name, c.owner_role
            USING ERRCODE = '42501';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store._consumer(text) IS
    'Internal: the consumer of that name, locked; 42501 unless the caller''s role registered it (or the caller is an admin), P0002 when there is none.';

CREATE FUNCTION deal_store.register_consumer(name text, from_start boolean DEFAULT false) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    PERFORM deal_store._require_feed_reader();
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22004';
    ELSIF name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid consumer name "%"', name USING ERRCODE = '22023',
            HINT = 'Use 1 to 63 letters, digits, _ . : or -.';
    END IF;
    -- from now: the transactions that have finished are behind the cursor, on every node
    INSERT INTO deal_store.feed_consumers AS f (name, owner_role, cursor_txid, cursor_seq)
    SELECT register_consumer.name, deal_store._caller_role(),
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE ARRAY(SELECT x - 1 FROM unnest(h.h) WITH ORDINALITY x(x, i) ORDER BY i) END,
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE array_fill(9223372036854775807, ARRAY[cardinality(h.h)]) END
    FROM (SELECT deal_store._horizons(false) AS h) h
    ON CONFLICT ON CONSTRAINT feed_consumers_pkey DO NOTHING
    RETURNING f.* INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a feed consumer named "%" exists', name USING ERRCODE = '23505';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store.register_consumer(text, boolean) IS
    'Registers a change-feed consumer owned by the caller''s role. It receives every log entry of the transactions that had not finished when it registered (on Citus: on each node), and of all later ones (from_start: every entry in the log). 23505 when the name is taken, 22023 for a bad name (1 to 63 of A-Z a-z 0-9 _ . : -).';

CREATE FUNCTION deal_store._require_feed_reader() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to read the change feed: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store._require_feed_reader() IS
    'Internal: 42501 unless the caller acts for a user (whose deals it will see) or sees every deal.';

CREATE FUNCTION deal_store.read_changes(consumer text, max_rows integer DEFAULT 1000)
RETURNS TABLE(seq bigint, txid bigint, created_at timestamptz, deal_id uuid, user_id uuid, action text,
              entity_type text, entity_id uuid, entity_key jsonb, analysis_run_id uuid, reason text, details jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    horizons bigint[];
    everything boolean;
    deals uuid[];
    nodes integer;
    node_txid bigint;
    node_seq bigint;
    horizon bigint;
    todo integer;
    got bigint;
    -- where the read ends on each node if it takes all the node has below its horizon
    marks_txid bigint[];
    marks_seq bigint[];
BEGIN
    c := deal_store._consumer(consumer);
    PERFORM deal_store._require_feed_reader();
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    horizons := deal_store._horizons(true);
    nodes := greatest(cardinality(horizons), cardinality(c.cursor_txid));
    marks_txid := c.cursor_txid;
    marks_seq := c.cursor_seq;
    todo := max_rows;
    -- node by node, each in (txid, seq) order, until max_rows
    FOR node IN 0 .. nodes - 1 LOOP
        EXIT WHEN todo = 0;
        node_txid := coalesce(marks_txid[node + 1], 0);
        node_seq := coalesce(marks_seq[node + 1], 0);
        horizon := coalesce(horizons[node + 1], 9223372036854775807);   -- no such node any more: all final
        IF (horizon - 1, 9223372036854775807) > (node_txid, node_seq) THEN
            marks_txid[node + 1] := horizon - 1;
            marks_seq[node + 1] := 9223372036854775807;
        END IF;
        RETURN QUERY
        WITH batch AS MATERIALIZED (
            SELECT l.* FROM deal_store.deal_activity_log l
            WHERE deal_store._log_node(l.seq) = node
              AND (l.txid, l.seq) > (node_txid, node_seq) AND l.txid < horizon
              AND (everything OR l.deal_id = ANY (deals))
            ORDER BY l.txid, l.seq
            LIMIT todo
        ), last AS (
            SELECT b.txid, b.seq, (SELECT count(*) FROM batch) AS n FROM batch b ORDER BY b.txid DESC, b.seq DESC LIMIT 1
        ), mark AS (
            -- where an ack of the whole read moves the cursors: on this node past
            -- the horizon when the read took all there is below it (entries of
            -- other deals included), at its last entry otherwise; on the nodes
            -- before, past their horizons; on the nodes after, where they were
            UPDATE deal_store.feed_consumers f
            SET (read_txid, read_seq) = (
                    SELECT array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.txid ELSE coalesce(marks_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.seq ELSE coalesce(marks_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i LEFT JOIN last x ON true),
                read_at = pg_catalog.now()
            WHERE f.name = c.name
            RETURNING 1
        )
        SELECT b.seq, b.txid, b.created_at, b.deal_id, b.user_id, b.action, b.entity_type, b.entity_id,
               b.entity_key, b.analysis_run_id, b.reason, b.details
        FROM batch b ORDER BY b.seq;
        GET DIAGNOSTICS got = ROW_COUNT;
        todo := todo - got;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.read_changes(text, integer) IS
    'The next at most max_rows (1 to 100000) log entries after the consumer''s cursor, in the deals the caller may see, in seq order. Gap-free: an entry is delivered only when every transaction that could precede it has committed or aborted (its txid is below the snapshot''s xmin; on Citus, that of the node that wrote it), so no entry is skipped whatever the commit order, and none of an aborted transaction appears. Reading does not move the cursor: ack_changes does, and what is not acknowledged is read again, in the same order (at least once).';

CREATE FUNCTION deal_store.ack_changes(consumer text, up_to bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    everything boolean;
    deals uuid[];
    nodes integer;
    stop record;
    n bigint := 0;
BEGIN
    c := deal_store._consumer(consumer);
    IF up_to IS NULL THEN
        RAISE EXCEPTION 'up_to must not be NULL' USING ERRCODE = '22004';
    ELSIF c.read_txid IS NULL THEN
        RAISE EXCEPTION 'feed consumer "%" has nothing read to acknowledge', consumer USING ERRCODE = '55000',
            HINT = 'Call deal_store.read_changes first.';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    nodes := cardinality(c.read_txid);
    -- the last read's entries in delivery order, node by node; the first one above
    -- up_to stays unacknowledged, and the cursors stop before it. One query per
    -- node: that entry if there is one, else any entry with the node's count
    FOR node IN 0 .. nodes - 1 LOOP
        SELECT r.open, r.before_txid, r.before_seq, r.n, r.total INTO stop FROM (
            SELECT l.txid, l.seq, l.seq > up_to AS open,
                   pg_catalog.lag(l.txid) OVER w AS before_txid, pg_catalog.lag(l.seq) OVER w AS before_seq,
                   pg_catalog.row_number() OVER w - 1 AS n, pg_catalog.count(*) OVER () AS total
            FROM (SELECT l.txid, l.seq FROM deal_store.deal_activity_log l
                  WHERE deal_store._log_node(l.seq) = node
                    AND (l.txid, l.seq) > (coalesce(c.cursor_txid[node + 1], 0), coalesce(c.cursor_seq[node + 1], 0))
                    AND (l.txid, l.seq) <= (c.read_txid[node + 1], c.read_seq[node + 1])
                    AND (everything OR l.deal_id = ANY (deals))) l
            WINDOW w AS (ORDER BY l.txid, l.seq)) r
        ORDER BY r.open DESC, r.txid, r.seq LIMIT 1;
        IF stop.open THEN
            UPDATE deal_store.feed_consumers f
            SET (cursor_txid, cursor_seq) = (
                    SELECT array_agg(CASE WHEN i < node + 1 THEN c.read_txid[i] WHEN i = node + 1 THEN coalesce(stop.before_txid, c.cursor_txid[i], 0)
                                          ELSE coalesce(c.cursor_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i < node + 1 THEN c.read_seq[i] WHEN i = node + 1 THEN coalesce(stop.before_seq, c.cursor_seq[i], 0)
                                          ELSE coalesce(c.cursor_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i),
                acked_at = pg_catalog.now()
            WHERE f.name = c.name AND (node > 0 OR stop.before_txid IS NOT NULL);
            RETURN n + stop.n;
        END IF;
        n := n + coalesce(stop.total, 0);
    END LOOP;
    UPDATE deal_store.feed_consumers f
    SET cursor_txid = c.read_txid, cursor_seq = c.read_seq, read_txid = NULL, read_seq = NULL, acked_at = pg_catalog.now()
    WHERE f.name = c.name;
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.ack_changes(text, bigint) IS
    'Acknowledges the entries of the consumer''s last read_changes whose seq is at most up_to and returns how many; the cursor moves in delivery order, so it stops before the first entry of the read above up_to, and what follows comes back on the next read (at least once). Acknowledging all of a read moves the cursor past it (and past the entries of deals the caller does not see). 55000 when nothing was read since the last full acknowledgement.';

CREATE FUNCTION deal_store.consumers()
RETURNS TABLE(name text, owner_role name, registered_at timestamptz, read_at timestamptz, acked_at timestamptz,
              lag bigint, oldest_unacked_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f deal_store.feed_consumers;
BEGIN
    FOR f IN SELECT * FROM deal_store.feed_consumers x
             WHERE x.owner_role = deal_store._caller_role() OR deal_store.sees_all_deals() ORDER BY x.name LOOP
        -- a query per consumer, its cursors as values (on Citus it runs on every shard)
        SELECT f.name, f.owner_role, f.registered_at, f.read_at, f.acked_at, count(*), min(l.created_at)
        INTO name, owner_role, registered_at, read_at, acked_at, lag, oldest_unacked_at
        FROM deal_store.deal_activity_log l
        WHERE (l.txid, l.seq) > (coalesce(f.cursor_txid[deal_store._log_node(l.seq) + 1], 0),
                                 coalesce(f.cursor_seq[deal_store._log_node(l.seq) + 1], 0));
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.consumers() IS
    'The caller''s change-feed consumers (an admin''s: all) with their lag: the log entries after the cursor (of every deal; a consumer reads those of its deals) and the time of the oldest.';

CREATE FUNCTION deal_store.remove_consumer(name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._consumer(name);
    DELETE FROM deal_store.feed_consumers f WHERE f.name = remove_consumer.name;
END $$;
COMMENT ON FUNCTION deal_store.remove_consumer(text) IS
    'Removes a change-feed consumer (its owner''s role or an admin). P0002 when there is none.';

-- Wake-up: a LISTEN deal_store_feed gets one notification per committed
-- transaction that wrote log entries while a consumer is registered. The data
-- is read with read_changes; a missed notification loses nothing.
CREATE FUNCTION deal_store.feed_wakeup() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM deal_store.feed_consumers) THEN
        PERFORM pg_catalog.pg_notify('deal_store_feed', '');
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store.feed_wakeup() IS
    'Trigger (AFTER INSERT on deal_activity_log, per statement): pg_notify(''deal_store_feed'', '''') while any consumer is registered; identical notifications of one transaction are delivered once, at commit.';
CREATE TRIGGER feed_wakeup AFTER INSERT ON deal_store.deal_activity_log
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.feed_wakeup();

-- grants as access.sql gives them
REVOKE ALL ON deal_store.feed_consumers FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
DO $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['deal_store.register_consumer(text, boolean)', 'deal_store.read_changes(text, integer)',
                             'deal_store.ack_changes(text, bigint)', 'deal_store.consumers()',
                             'deal_store.remove_consumer(text)']::pg_catalog.regprocedure[] LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO deal_store_reader', f);
    END LOOP;
END $$;

-- 0.2.0: idempotent calls (issue 18):
-- start_run, propose_*, accept_changes and import_deal take an optional
-- idempotency_key (each dropped and re-created with the new parameter).

CREATE TABLE deal_store.idempotency_keys (
    key           text        NOT NULL,
    function_name text        NOT NULL,
    caller        name        NOT NULL,
    arguments     text        NOT NULL,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key),
    CONSTRAINT idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 200)
);
COMMENT ON TABLE deal_store.idempotency_keys IS
    'The results of calls made with an idempotency key (start_run, propose_*, accept_changes, import_deal), so a retried call returns the first call''s result. arguments is the MD5 of the call''s arguments.';
SELECT pg_catalog.pg_extension_config_dump('deal_store.idempotency_keys', '');

CREATE FUNCTION deal_store._idempotent(key text, function_name text, arguments jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    digest text := md5(arguments::text);
    caller name := deal_store._caller_role();
    k deal_store.idempotency_keys;
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    ELSIF length(key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'idempotency_key must have 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    -- the first call claims the key; a concurrent one waits here for it to end
    INSERT INTO deal_store.idempotency_keys AS i (key, function_name, caller, arguments)
    VALUES (_idempotent.key, _idempotent.function_name, caller, digest)
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO STRICT k FROM deal_store.idempotency_keys i WHERE i.key = _idempotent.key;
    IF k.caller <> caller THEN
        -- another role's key: say nothing about its call
        RAISE EXCEPTION 'idempotency key "%" was used for another call', key USING ERRCODE = '22023',
            HINT = 'Use a new key for a new call.';
    ELSIF k.function_name <> _idempotent.function_name OR k.arguments <> digest THEN
        RAISE EXCEPTION 'idempotency key "%" was used for another call', key USING ERRCODE = '22023',
            DETAIL = format('It was used for %s with other arguments.', k.function_name),
            HINT = 'Use a new key for a new call.';
    END IF;
    RETURN coalesce(k.result, 'null');
END $$;
COMMENT ON FUNCTION deal_store._idempotent(text, text, jsonb) IS
    'Internal: NULL when the call should run (no key, or the key is new: it is claimed for this call); else the result the first call with this key recorded. 22023 when the key was used for another function, role or arguments.';

CREATE FUNCTION deal_store._remember(key text, result jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE deal_store.idempotency_keys i SET result = _remember.result WHERE i.key = _remember.key;
END;
COMMENT ON FUNCTION deal_store._remember(text, jsonb) IS
    'Internal: records the result of the call that claimed the key (nothing when key is NULL).';

DROP FUNCTION deal_store.start_run(uuid, text[], boolean);
DROP FUNCTION deal_store.propose_facts(uuid, jsonb, text[]);
DROP FUNCTION deal_store.propose_findings(uuid, jsonb, text[]);
DROP FUNCTION deal_store.propose_gaps(uuid, jsonb, text[]);
DROP FUNCTION deal_store.accept_changes(uuid, integer, uuid);
DROP FUNCTION deal_store.import_deal(jsonb);
CREATE FUNCTION deal_store.start_run(deal_id uuid, domains text[] DEFAULT NULL, incremental boolean DEFAULT false,
    idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    run_id uuid;
    prior jsonb;
BEGIN
    PERFORM deal_store._require_deal(start_run.deal_id, 'write');
    prior := deal_store._idempotent(idempotency_key, 'start_run', jsonb_build_array(deal_id, domains, incremental));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF domains IS NOT NULL AND (array_position(domains, NULL) IS NOT NULL
                                OR EXISTS (SELECT 1 FROM unnest(domains) x WHERE btrim(x) = '')) THEN
        RAISE EXCEPTION 'domains must not contain NULL or empty names' USING ERRCODE = '22023';
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
    SELECT start_run.deal_id, coalesce(max(r.run_number), 0) + 1, coalesce(incremental, false), domains,
           deal_store.current_actor()
    FROM deal_store.analysis_runs r WHERE r.deal_id = start_run.deal_id
    RETURNING id INTO run_id;
    PERFORM deal_store._remember(idempotency_key, to_jsonb(run_id));
    RETURN run_id;
END $$;
COMMENT ON FUNCTION deal_store.start_run(uuid, text[], boolean, text) IS
    'Starts an analysis run of a deal and returns its id. run_number is the deal''s next number, safe under concurrent starts. domains: what the run covers (NULL = all); incremental runs never propose removals. With an idempotency_key, a repeated call returns the first call''s run and starts nothing (22023 for the key with other arguments). Errors: P0002 no such deal, 55000 deal deleted, 22023 bad domains.';

-- propose_*: the Rust proposal, once per idempotency key. Its result (a few
-- rows of counts) is kept as jsonb, so a repeated call returns the same rows.
CREATE FUNCTION deal_store._propose_once(entity_type text, run_id uuid, incoming jsonb, domains text[], idempotency_key text)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    IF idempotency_key IS NOT NULL THEN
        PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
        result := deal_store._idempotent(idempotency_key, 'propose_' || entity_type || 's', jsonb_build_array(run_id, incoming, domains));
    END IF;
    IF result IS NULL THEN
        SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]') INTO result FROM deal_store._propose(entity_type, run_id, incoming, domains) p;
        PERFORM deal_store._remember(idempotency_key, result);
    END IF;
    RETURN QUERY SELECT x.change_type, x.confidence_tier, x.proposed, x.status
                 FROM jsonb_to_recordset(result) AS x(change_type text, confidence_tier integer, proposed bigint, status text);
END $$;
COMMENT ON FUNCTION deal_store._propose_once(text, uuid, jsonb, text[], text) IS
    'Internal: the body of propose_facts, propose_findings and propose_gaps: _propose, or with an idempotency_key the result of the first call with that key.';

CREATE FUNCTION deal_store.propose_facts(run_id uuid, facts jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose_once('fact', run_id, facts, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_facts(uuid, jsonb, text[], text) IS
    'Diffs a running run''s facts against the deal''s current facts and writes one pending change (new, update, delete) per difference, with old value, new value, base_checksum and a tier; tier 1 applies at once unless deal_store.auto_apply is off. Removals only inside domains (default: the domains of the given facts, within the run''s domains); an incremental run never removes. Idempotent; a newer run supersedes an older run''s open change. Every element is checked first against its column (type, required, unknown keys unless the deal ignores them; the table''s CHECK constraints for the elements that become changes): 22023 naming the element, its legacy_id and the field, and nothing is proposed. Returns counts by change type, tier and what became of them (status pending, or accepted / conflict for tier 1 applied at once).';
CREATE FUNCTION deal_store.propose_findings(run_id uuid, findings jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose_once('finding', run_id, findings, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_findings(uuid, jsonb, text[], text) IS 'propose_facts for findings (content checksum over deal_store.content_fields(''finding'')).';
CREATE FUNCTION deal_store.propose_gaps(run_id uuid, gaps jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store._propose_once('gap', run_id, gaps, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_gaps(uuid, jsonb, text[], text) IS 'propose_facts for gaps (content checksum over deal_store.content_fields(''gap'')).';

CREATE FUNCTION deal_store.accept_changes(deal_id uuid, max_tier integer DEFAULT 2, run_id uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS TABLE(status text, n bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
    result jsonb;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'review');
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    result := deal_store._idempotent(idempotency_key, 'accept_changes', jsonb_build_array(deal_id, max_tier, run_id));
    IF result IS NOT NULL THEN
        RETURN QUERY SELECT x.status, x.n FROM jsonb_to_recordset(result) AS x(status text, n bigint);
        RETURN;
    END IF;
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = accept_changes.deal_id AND p.confidence_tier <= max_tier
          AND (accept_changes.run_id IS NULL OR p.analysis_run_id = accept_changes.run_id)
          AND (p.status = 'pending' OR (p.status = 'deferred' AND p.deferred_until <= now()))
        ORDER BY p.created_at, p.id
        FOR UPDATE SKIP LOCKED) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store._apply(pg_catalog.array_fill(deal_id, ARRAY[pg_catalog.cardinality(locked)]), locked, 'batch accept');
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object('status', s.status, 'n', s.n) ORDER BY s.status), '[]') INTO result
    FROM (SELECT p.status, count(*) AS n FROM deal_store.pending_changes p
          WHERE p.deal_id = accept_changes.deal_id AND p.id = ANY (locked) GROUP BY p.status) s;
    PERFORM deal_store._remember(idempotency_key, result);
    RETURN QUERY SELECT x.status, x.n FROM jsonb_to_recordset(result) AS x(status text, n bigint);
END $$;
COMMENT ON FUNCTION deal_store.accept_changes(uuid, integer, uuid, text) IS
    'Accepts every open change of a deal up to max_tier (of one run when run_id is given; deferred ones once their time has come), skipping rows another session holds. Returns how many were accepted and how many turned out to be conflicts. With an idempotency_key, a repeated call returns the first call''s counts and accepts nothing.';

CREATE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior jsonb;
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    prior := deal_store._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    SELECT k, e ->> 'id' INTO taken_in, taken
    FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                      'findings', 'gaps', 'fact_finding_links']) k,
         jsonb_array_elements(coalesce(doc -> k, '[]')) e
    WHERE CASE k WHEN 'documents' THEN EXISTS (SELECT 1 FROM deal_store.documents x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'analysis_runs' THEN EXISTS (SELECT 1 FROM deal_store.analysis_runs x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'findings' THEN EXISTS (SELECT 1 FROM deal_store.findings x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'gaps' THEN EXISTS (SELECT 1 FROM deal_store.gaps x WHERE x.id = (e ->> 'id')::uuid)
                 WHEN 'fact_finding_links' THEN EXISTS (SELECT 1 FROM deal_store.fact_finding_links x WHERE x.id = (e ->> 'id')::uuid)
                 ELSE EXISTS (SELECT 1 FROM deal_store.facts x WHERE x.id = (e ->> 'id')::uuid) END
    LIMIT 1;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner: an existing user with the export's e-mail, else a new user with
    -- no password and the default roles (never credentials or roles from the document)
    SELECT u.id INTO owner FROM deal_store.users u WHERE lower(u.email) = lower(doc -> 'owner' ->> 'email');
    IF owner IS NULL AND jsonb_typeof(doc -> 'owner') = 'object' THEN
        INSERT INTO deal_store.users (id, email, display_name)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM deal_store.users u WHERE u.id = o.id) THEN gen_random_uuid() ELSE o.id END,
               o.email, o.display_name
        FROM jsonb_to_record(doc -> 'owner') AS o(id uuid, email text, display_name text)
        RETURNING id INTO owner;
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb, text) IS
    'Loads a deal from export_deal''s jsonb, keeping every id, so export_deal(import_deal(x)) = x. The caller (deal_store.actor) becomes a lead of it. The owner is the existing user with the export''s e-mail, else a new user with that e-mail, no password and the default roles (credentials and roles in the document are ignored). 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import. With an idempotency_key, a repeated call returns the first call''s deal and imports nothing.';

-- grants as access.sql gives them
REVOKE ALL ON deal_store.idempotency_keys FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT x.fn::pg_catalog.regprocedure AS fn, x.grantee FROM (VALUES
        ('deal_store.start_run(uuid, text[], boolean, text)', 'deal_store_analyst'),
        ('deal_store.propose_facts(uuid, jsonb, text[], text)', 'deal_store_analyst'),
        ('deal_store.propose_findings(uuid, jsonb, text[], text)', 'deal_store_analyst'),
        ('deal_store.propose_gaps(uuid, jsonb, text[], text)', 'deal_store_analyst'),
        ('deal_store.import_deal(jsonb, text)', 'deal_store_analyst'),
        ('deal_store.accept_changes(uuid, integer, uuid, text)', 'deal_store_reviewer')) AS x(fn, grantee)
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f.fn);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %I', f.fn, f.grantee);
    END LOOP;
END $$;

-- 0.2.0: what changed, for people (issue 18):
-- mark_seen / changes_since_seen, deals_for_user with an unseen count (dropped
-- and re-created: its result has new columns), diff_runs, add_document_version,
-- document_changes.

CREATE TABLE deal_store.seen_marks (
    deal_id   uuid        NOT NULL,
    user_id   uuid        NOT NULL,
    seen_seq  bigint      NOT NULL,
    seen_txid bigint      NOT NULL,
    seen_snapshot pg_snapshot NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT seen_marks_pkey PRIMARY KEY (deal_id, user_id),
    CONSTRAINT seen_marks_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE
);
COMMENT ON TABLE deal_store.seen_marks IS
    'When each user last looked at each deal (mark_seen): the log entries after the mark are what changes_since_seen shows.';
COMMENT ON COLUMN deal_store.seen_marks.seen_seq IS 'The largest log seq visible when the user looked.';
COMMENT ON COLUMN deal_store.seen_marks.seen_txid IS 'The xmin of seen_snapshot: entries of transactions below it were all visible when the user looked.';
COMMENT ON COLUMN deal_store.seen_marks.seen_snapshot IS 'The snapshot the user looked with: an entry at or below seen_seq of a transaction invisible to it is unseen.';
SELECT pg_catalog.pg_extension_config_dump('deal_store.seen_marks', '');

-- The deal's log entries after the actor's mark (all without a mark): those
-- after it in seq (the deal's index), and those before it of a transaction
-- the user's snapshot did not see (the feed's index).
CREATE FUNCTION deal_store._unseen(deal_id uuid) RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN QUERY
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.deal_id = _unseen.deal_id
      AND l.seq > coalesce((SELECT m.seen_seq FROM deal_store.seen_marks m
                            WHERE m.deal_id = _unseen.deal_id AND m.user_id = deal_store.current_actor()), 0)
    UNION ALL
    SELECT l.* FROM deal_store.seen_marks m
    JOIN deal_store.deal_activity_log l ON l.txid >= m.seen_txid AND l.seq <= m.seen_seq AND l.deal_id = m.deal_id
    WHERE m.deal_id = _unseen.deal_id AND m.user_id = deal_store.current_actor()
      AND NOT pg_catalog.pg_visible_in_snapshot(l.txid::text::xid8, m.seen_snapshot);
END $$;
COMMENT ON FUNCTION deal_store._unseen(uuid) IS
    'Internal: the deal''s log entries the actor has not seen: after its mark in seq, or of a transaction that may have committed after it looked.';

-- A user's deals with what the caller has not seen in each (replaces the
-- dashboard's first version: the unseen count needs the marks above).
DROP FUNCTION deal_store.deals_for_user(uuid, boolean);
CREATE FUNCTION deal_store.deals_for_user(user_id uuid, include_archived boolean DEFAULT false)
RETURNS TABLE(id uuid, user_id uuid, name text, target_name text, deal_type text, status text,
              created_at timestamptz, updated_at timestamptz, unseen bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT d.id, d.user_id, d.name, d.target_name, d.deal_type, d.status, d.created_at, d.updated_at,
           (SELECT count(*) FROM deal_store._unseen(d.id))
    FROM deal_store.deals d
    WHERE d.user_id = deals_for_user.user_id AND d.deleted_at IS NULL
      AND (deal_store.sees_all_deals() OR d.id = ANY (deal_store.my_deals('viewer')))
      AND (d.status <> 'archived' OR coalesce(deals_for_user.include_archived, false))
    ORDER BY d.updated_at DESC, d.id;
END;
COMMENT ON FUNCTION deal_store.deals_for_user(uuid, boolean) IS
    'A user''s live deals that the caller may see, most recently updated first (archived ones only when include_archived), with unseen: the log entries of each deal since the actor last looked (mark_seen; all of them before that).';

CREATE FUNCTION deal_store.mark_seen(deal_id uuid) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    actor uuid := deal_store.current_actor();
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF actor IS NULL THEN
        RAISE EXCEPTION 'mark_seen needs an actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or name the user with deal_store.set_actor.';
    END IF;
    INSERT INTO deal_store.seen_marks AS m (deal_id, user_id, seen_seq, seen_txid, seen_snapshot)
    SELECT mark_seen.deal_id, actor, (SELECT coalesce(max(l.seq), 0) FROM deal_store.deal_activity_log l),
           pg_catalog.pg_snapshot_xmin(s)::text::bigint, s
    FROM pg_catalog.pg_current_snapshot() s
    ON CONFLICT ON CONSTRAINT seen_marks_pkey
    DO UPDATE SET seen_seq = excluded.seen_seq, seen_txid = excluded.seen_txid, seen_snapshot = excluded.seen_snapshot,
                  seen_at = now();
    RETURN now();
END $$;
COMMENT ON FUNCTION deal_store.mark_seen(uuid) IS
    'Records that the actor has looked at the deal now: changes_since_seen starts from here. 42501 without an actor or read right.';

CREATE FUNCTION deal_store.changes_since_seen(deal_id uuid)
RETURNS TABLE(entity_type text, change text, changes bigint, items jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN QUERY
    WITH u AS MATERIALIZED (
        SELECT x.* FROM deal_store._unseen(changes_since_seen.deal_id) x
        WHERE x.entity_type IN ('fact', 'finding', 'gap') AND x.entity_id IS NOT NULL
    ), fields AS (
        SELECT x.entity_id, pg_catalog.array_agg(DISTINCT k ORDER BY k) AS fields
        FROM u x, pg_catalog.jsonb_object_keys(x.details) k
        WHERE x.action = 'update'
          -- bookkeeping, not what a reader calls a change
          AND k <> ALL (ARRAY['previous_version_id', 'analysis_run_id', 'created_by', 'updated_by', 'updated_at',
                              'item_checksum', 'search_vector', 'deleted_at', 'deleted_by', 'delete_reason', 'delete_batch'])
        GROUP BY x.entity_id
    ), per AS (
        -- one row per fact, finding or gap touched since the mark
        SELECT x.entity_type, x.entity_id,
               bool_or(x.action = 'insert') AS inserted,
               (pg_catalog.array_agg(x.action ORDER BY x.seq DESC)
                    FILTER (WHERE x.action IN ('soft_delete', 'restore', 'purge')))[1] AS last_state
        FROM u x
        GROUP BY x.entity_type, x.entity_id
    ), classified AS (
        SELECT p.entity_type, p.entity_id, f.fields,
               CASE WHEN p.last_state IN ('soft_delete', 'purge') THEN 'removed'
                    WHEN p.inserted THEN 'new'
                    WHEN p.last_state = 'restore' THEN 'restored'
                    ELSE 'changed' END AS change,
               coalesce((SELECT f.legacy_id FROM deal_store.facts f WHERE p.entity_type = 'fact' AND f.deal_id = changes_since_seen.deal_id AND f.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.findings g WHERE p.entity_type = 'finding' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.gaps g WHERE p.entity_type = 'gap' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id)) AS legacy_id
        FROM per p LEFT JOIN fields f ON f.entity_id = p.entity_id
    )
    SELECT c.entity_type, c.change, count(*),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', c.entity_id, 'legacy_id', c.legacy_id)
                                || CASE WHEN c.change = 'changed' THEN pg_catalog.jsonb_build_object('changed_fields', c.fields)
                                        ELSE '{}' END
                                ORDER BY c.legacy_id, c.entity_id)
    FROM classified c
    GROUP BY c.entity_type, c.change
    UNION ALL
    -- what waits for this user's review (reviewers and leads)
    SELECT 'pending_change', 'waiting_for_review', count(*),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', p.id, 'entity_type', p.entity_type, 'legacy_id', p.legacy_entity_id,
                                                              'change_type', p.change_type, 'tier', p.confidence_tier)
                                ORDER BY p.created_at, p.id)
    FROM deal_store.pending_changes p
    WHERE p.deal_id = changes_since_seen.deal_id AND p.status = 'pending'
      AND (deal_store.sees_all_deals() OR changes_since_seen.deal_id = ANY (deal_store.my_deals('reviewer')))
    HAVING count(*) > 0
    ORDER BY 1, 2;
END $$;
COMMENT ON FUNCTION deal_store.changes_since_seen(uuid) IS
    'What changed in the deal since the actor last looked (mark_seen; everything when it never did), grouped and counted: facts, findings and gaps new, changed (with the changed fields), removed or restored, each with id and legacy_id; and the pending changes waiting for this user''s review (reviewers and leads).';

-- ---------------------------------------------------------------------------
-- A deal's facts as they were at a moment, from the versions stored: a version
-- is current from the end of the one before it (or the fact's creation) until
-- it was superseded, and live until it was deleted.

CREATE FUNCTION deal_store._facts_as_of(deal_id uuid, at timestamptz)
RETURNS TABLE(legacy_id text, version_id uuid, item_checksum text, content jsonb, analysis_run_id uuid, source_document_id uuid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN QUERY
    SELECT v.legacy_id, v.id, v.item_checksum,
           (SELECT pg_catalog.jsonb_object_agg(k, pg_catalog.to_jsonb(v) -> k) FROM pg_catalog.unnest(deal_store.content_fields('fact')) k),
           v.analysis_run_id, v.source_document_id
    FROM deal_store.facts v
    LEFT JOIN deal_store.facts p ON p.deal_id = v.deal_id AND p.id = v.previous_version_id
    WHERE v.deal_id = _facts_as_of.deal_id
      AND coalesce(p.superseded_at, v.created_at) <= _facts_as_of.at
      AND (v.superseded_at IS NULL OR _facts_as_of.at < v.superseded_at)
      AND (v.deleted_at IS NULL OR _facts_as_of.at < v.deleted_at);
END $$;
COMMENT ON FUNCTION deal_store._facts_as_of(uuid, timestamptz) IS
    'Internal: the deal''s live facts as they were at a moment (one version per legacy_id), with their content fields.';

-- new / update (with changed fields) / delete from one set of facts to another
CREATE FUNCTION deal_store._fact_changes(deal_id uuid, from_at timestamptz, to_at timestamptz)
RETURNS TABLE(legacy_id text, change text, changed_fields text[], content_then jsonb, content_now jsonb, analysis_run_id uuid,
              source_then uuid)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(b.legacy_id, a.legacy_id),
           CASE WHEN a.legacy_id IS NULL THEN 'new' WHEN b.legacy_id IS NULL THEN 'delete'
                WHEN a.item_checksum IS DISTINCT FROM b.item_checksum THEN 'update' ELSE 'unchanged' END,
           CASE WHEN a.item_checksum IS DISTINCT FROM b.item_checksum AND a.legacy_id IS NOT NULL AND b.legacy_id IS NOT NULL THEN
                ARRAY(SELECT k FROM pg_catalog.unnest(deal_store.content_fields('fact')) k
                      WHERE (a.content -> k) IS DISTINCT FROM (b.content -> k) ORDER BY k) END,
           a.content, b.content, b.analysis_run_id, a.source_document_id
    FROM deal_store._facts_as_of(_fact_changes.deal_id, _fact_changes.from_at) a
    FULL JOIN deal_store._facts_as_of(_fact_changes.deal_id, _fact_changes.to_at) b ON b.legacy_id = a.legacy_id;
END;
COMMENT ON FUNCTION deal_store._fact_changes(uuid, timestamptz, timestamptz) IS
    'Internal: every fact of the deal at either moment with what happened between them: new, update (changed_fields), delete or unchanged (by content checksum).';

CREATE FUNCTION deal_store.diff_runs(run_a uuid, run_b uuid)
RETURNS TABLE(entity_type text, legacy_id text, change text, changed_fields text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    b record;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_a, 'read');
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_b, 'read');
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO a FROM deal_store.analysis_runs r WHERE r.id = run_a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_a USING ERRCODE = 'P0002';
    END IF;
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO b FROM deal_store.analysis_runs r WHERE r.id = run_b;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_b USING ERRCODE = 'P0002';
    ELSIF a.deal_id <> b.deal_id THEN
        RAISE EXCEPTION 'analysis runs % and % belong to different deals', run_a, run_b USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT 'fact'::text, c.legacy_id, c.change, c.changed_fields
    FROM deal_store._fact_changes(a.deal_id, a.at, b.at) c WHERE c.change <> 'unchanged'
    UNION ALL
    -- findings and gaps keep no versions: their state then is their lifetime, their
    -- changes between the two moments are in the log
    SELECT t.entity_type,
           coalesce(x.legacy_id, ''),
           CASE WHEN x.existed_a AND NOT x.existed_b THEN 'delete' WHEN x.existed_b AND NOT x.existed_a THEN 'new' ELSE 'update' END,
           CASE WHEN x.existed_a AND x.existed_b THEN f.fields END
    FROM (VALUES ('finding'), ('gap')) t(entity_type)
    CROSS JOIN LATERAL (
        SELECT g.id, g.legacy_id,
               g.created_at <= a.at AND (g.deleted_at IS NULL OR a.at < g.deleted_at) AS existed_a,
               g.created_at <= b.at AND (g.deleted_at IS NULL OR b.at < g.deleted_at) AS existed_b
        FROM deal_store.findings g WHERE t.entity_type = 'finding' AND g.deal_id = a.deal_id
        UNION ALL
        SELECT g.id, g.legacy_id,
               g.created_at <= a.at AND (g.deleted_at IS NULL OR a.at < g.deleted_at),
               g.created_at <= b.at AND (g.deleted_at IS NULL OR b.at < g.deleted_at)
        FROM deal_store.gaps g WHERE t.entity_type = 'gap' AND g.deal_id = a.deal_id) x
    -- the content fields the log shows changed between the two moments (NULL: none)
    CROSS JOIN LATERAL (
        SELECT pg_catalog.array_agg(DISTINCT k ORDER BY k) AS fields
        FROM deal_store.deal_activity_log l, pg_catalog.jsonb_object_keys(l.details) k
        WHERE l.deal_id = a.deal_id AND l.entity_id = x.id AND l.action = 'update'
          AND l.created_at > least(a.at, b.at) AND l.created_at <= greatest(a.at, b.at)
          AND k = ANY (deal_store.content_fields(t.entity_type))) f
    WHERE (x.existed_a OR x.existed_b) AND (x.existed_a <> x.existed_b OR f.fields IS NOT NULL)
    ORDER BY 1, 2;
END $$;
COMMENT ON FUNCTION deal_store.diff_runs(uuid, uuid) IS
    'What run b''s view of the deal changed against run a''s: facts (from the stored versions, as they were when each run finished; a running run: now) new, update with the changed content fields, delete; findings and gaps the same (their changed fields from the log). Runs of two deals are 22023.';

-- ---------------------------------------------------------------------------
-- Document versions.

CREATE FUNCTION deal_store.add_document_version(document_id uuid, file_hash text, filename text DEFAULT NULL,
    storage_path text DEFAULT NULL, page_count integer DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old record;
    new_id uuid;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.documents', document_id, 'write');
    IF file_hash IS NULL THEN
        RAISE EXCEPTION 'file_hash must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT d.* INTO old FROM deal_store.documents d WHERE d.id = document_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'document % does not exist', document_id USING ERRCODE = 'P0002';
    ELSIF old.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'document % is deleted', document_id USING ERRCODE = '55000';
    ELSIF old.status = 'superseded' THEN
        RAISE EXCEPTION 'document % is already superseded', document_id USING ERRCODE = '55000',
            HINT = 'Add the version to the newest one (the document whose supersedes_id chain leads here).';
    END IF;
    BEGIN
        INSERT INTO deal_store.documents AS d (deal_id, filename, file_hash, entity, authority_level, storage_path, version,
                                               supersedes_id, page_count)
        VALUES (old.deal_id, coalesce(add_document_version.filename, old.filename), add_document_version.file_hash, old.entity,
                old.authority_level, coalesce(add_document_version.storage_path, old.storage_path), old.version + 1, old.id,
                add_document_version.page_count)
        RETURNING d.id INTO new_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'the deal already has a document with file_hash %', file_hash USING ERRCODE = '23505',
            HINT = 'A new version is a different file.';
    END;
    UPDATE deal_store.documents d SET status = 'superseded' WHERE d.deal_id = old.deal_id AND d.id = old.id;
    RETURN new_id;
END $$;
COMMENT ON FUNCTION deal_store.add_document_version(uuid, text, text, text, integer) IS
    'Adds a new version of a document: a new row (version + 1, supersedes_id = the old one, status pending; filename and storage_path as before unless given) and the old one becomes superseded, its facts untouched. Returns the new id. 23505 when the deal has a live document with that file_hash (the same file twice), 55000 when the document is deleted or already superseded.';

CREATE FUNCTION deal_store.document_changes(document_id uuid)
RETURNS TABLE(legacy_id text, change text, changed_fields text[], item_then text, item_now text, run_number integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doc record;
    since timestamptz;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.documents', document_id, 'read');
    SELECT d.deal_id, d.id INTO doc FROM deal_store.documents d WHERE d.id = document_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'document % does not exist', document_id USING ERRCODE = 'P0002';
    END IF;
    SELECT min(n.uploaded_at) INTO since FROM deal_store.documents n WHERE n.deal_id = doc.deal_id AND n.supersedes_id = doc.id;
    IF since IS NULL THEN
        RAISE EXCEPTION 'document % has no newer version', document_id USING ERRCODE = '55000',
            HINT = 'deal_store.add_document_version adds one.';
    END IF;
    RETURN QUERY
    SELECT c.legacy_id, c.change, c.changed_fields, c.content_then ->> 'item', c.content_now ->> 'item', r.run_number
    FROM deal_store._fact_changes(doc.deal_id, since, now()) c
    LEFT JOIN deal_store.analysis_runs r ON r.deal_id = doc.deal_id AND r.id = c.analysis_run_id AND c.change = 'update'
    WHERE c.change <> 'new' AND c.source_then = doc.id
    ORDER BY c.legacy_id;
END $$;
COMMENT ON FUNCTION deal_store.document_changes(uuid) IS
    'The facts that were sourced from a document when its newer version was added, and what happened to each since: update (with the changed fields, the item then and now, the run that wrote it), delete, or unchanged. 55000 when the document has no newer version.';

-- grants as access.sql gives them
REVOKE ALL ON deal_store.seen_marks FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT x.fn::pg_catalog.regprocedure AS fn, x.grantee FROM (VALUES
        ('deal_store.deals_for_user(uuid, boolean)', 'deal_store_reader'),
        ('deal_store.mark_seen(uuid)', 'deal_store_reader'),
        ('deal_store.changes_since_seen(uuid)', 'deal_store_reader'),
        ('deal_store.diff_runs(uuid, uuid)', 'deal_store_reader'),
        ('deal_store.document_changes(uuid)', 'deal_store_reader'),
        ('deal_store.add_document_version(uuid, text, text, text, integer)', 'deal_store_analyst')) AS x(fn, grantee)
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f.fn);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %I', f.fn, f.grantee);
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------
-- 0.2.0: triggers that name their table, not their shard (issue 19): on Citus a
-- trigger fires on a shard (deal_store.facts_102099); _table_of gives the table.
-- Lookups name the deal where the caller knows it; no volatile function inside
-- an UPDATE of a deal table; a recursive CTE filters the deal in both terms.

CREATE FUNCTION deal_store."_table_of"(
	"rel" oid
) RETURNS oid
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'table_of_wrapper';
COMMENT ON FUNCTION deal_store._table_of(oid) IS
    'Internal: the table a relation''s rows belong to: the relation itself, or on Citus the distributed table of a shard (deal_store.facts_102099 -> deal_store.facts). Triggers name their table with it, not with TG_RELID.';
REVOKE ALL ON FUNCTION deal_store._table_of(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._table_of(oid) TO deal_store_reader;

CREATE OR REPLACE FUNCTION deal_store.delete_to_soft_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('deal_store.hard_delete', true) = 'on' THEN
        RETURN OLD;
    END IF;
    IF OLD.deleted_at IS NULL AND (to_jsonb(OLD) ->> 'superseded_at') IS NULL THEN
        -- the row's deal is named: the lookup stays in this deal (on Citus, in this shard)
        PERFORM deal_store.soft_delete(deal_store._table_of(TG_RELID)::regclass, OLD.id, 'DELETE statement',
                                       (to_jsonb(OLD) ->> 'deal_id')::uuid);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION deal_store.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % is not allowed: it would bypass soft delete and the audit log', deal_store._table_of(TG_RELID)::regclass
        USING ERRCODE = '42501', HINT = 'Use deal_store.soft_delete, then deal_store.purge for rows that must go.';
END $$;

DROP FUNCTION deal_store._id_in_one_deal(regclass, uuid, text);
CREATE FUNCTION deal_store._id_in_one_deal(tbl regclass, id uuid, needs text) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deals uuid[];
BEGIN
    EXECUTE format('SELECT array_agg(DISTINCT deal_id) FROM %s WHERE id = $1', tbl) INTO deals USING id;
    IF cardinality(deals) > 1 THEN
        RAISE EXCEPTION 'id % names rows of % deals in %', id, cardinality(deals), tbl USING ERRCODE = 'P0003',
            HINT = 'Ids are unique per deal only; this database holds the id in more than one deal.';
    ELSIF cardinality(deals) = 1 THEN
        PERFORM deal_store._require_right(deals[1], needs);
    END IF;
    RETURN deals[1];
END $$;
COMMENT ON FUNCTION deal_store._id_in_one_deal(regclass, uuid, text) IS
    'Internal: raises P0003 when an id passed alone names rows of more than one deal (ids are unique per deal only), so no function picks one of them; 42501 unless the caller has the right needs on the row''s deal. Returns that deal (NULL: no row has the id), so the caller''s next lookup names it (on Citus: one shard, where a row lock is possible).';
REVOKE ALL ON FUNCTION deal_store._id_in_one_deal(regclass, uuid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store._finish_run(run_id uuid, new_status text, error text) RETURNS deal_store.analysis_runs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    finished deal_store.analysis_runs;
    deal uuid := deal_store._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
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
    RETURN finished;
END $$;

CREATE OR REPLACE FUNCTION deal_store._decide(change_id uuid, decision text, note text, until timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.pending_changes;
    deal uuid := deal_store._id_in_one_deal('deal_store.pending_changes', change_id, 'review');
    actor uuid := deal_store.current_actor();
    now_ timestamptz := now();
    outcome text;
BEGIN
    SELECT * INTO c FROM deal_store.pending_changes p WHERE p.deal_id = deal AND p.id = change_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pending change % does not exist', change_id USING ERRCODE = 'P0002';
    ELSIF c.status NOT IN ('pending', 'deferred') THEN
        RAISE EXCEPTION 'the change to % % is %, not pending', c.entity_type, c.legacy_entity_id, c.status
            USING ERRCODE = '55000', DETAIL = format('Change %s was decided at %s.', change_id, c.decided_at);
    END IF;
    IF decision = 'accept' THEN
        PERFORM deal_store._apply(ARRAY[c.deal_id], ARRAY[c.id], note);
        SELECT p.status INTO decision FROM deal_store.pending_changes p WHERE p.deal_id = c.deal_id AND p.id = c.id;
        RETURN decision;
    END IF;
    outcome := CASE decision WHEN 'reject' THEN 'rejected' ELSE 'deferred' END;
    -- values, not expressions: Citus allows no stable function in a CASE of an UPDATE
    UPDATE deal_store.pending_changes p SET
        status = outcome,
        decided_by = actor,
        decided_at = CASE WHEN outcome = 'rejected' THEN now_ END,
        deferred_until = CASE WHEN outcome = 'deferred' THEN until END,
        review_note = note
    WHERE p.deal_id = c.deal_id AND p.id = c.id;
    RETURN outcome;
END $$;

CREATE OR REPLACE FUNCTION deal_store._set_gap_resolution(gap_id uuid, resolve boolean, note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
    deal uuid := deal_store._id_in_one_deal('deal_store.gaps', gap_id, 'write');
    resolved timestamptz;
    resolver uuid;
BEGIN
    SELECT x.deal_id, x.resolved_at INTO g FROM deal_store.active_gaps x WHERE x.deal_id = deal AND x.id = gap_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gap % does not exist or is deleted', gap_id USING ERRCODE = 'P0002';
    ELSIF resolve AND g.resolved_at IS NOT NULL THEN
        RAISE EXCEPTION 'gap % is already resolved', gap_id USING ERRCODE = '55000';
    ELSIF NOT resolve AND g.resolved_at IS NULL THEN
        RAISE EXCEPTION 'gap % is not resolved', gap_id USING ERRCODE = '55000';
    END IF;
    -- values first: Citus allows no stable function inside CASE in an UPDATE
    IF resolve THEN
        resolved := now();
        resolver := deal_store.current_actor();
    END IF;
    UPDATE deal_store.gaps x SET resolved_at = resolved, resolved_by = resolver, resolution_note = CASE WHEN resolve THEN note END
    WHERE x.deal_id = g.deal_id AND x.id = gap_id;
END $$;

CREATE OR REPLACE FUNCTION deal_store.add_document_version(document_id uuid, file_hash text, filename text DEFAULT NULL,
    storage_path text DEFAULT NULL, page_count integer DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old record;
    new_id uuid;
    deal uuid := deal_store._id_in_one_deal('deal_store.documents', document_id, 'write');
BEGIN
    IF file_hash IS NULL THEN
        RAISE EXCEPTION 'file_hash must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT d.* INTO old FROM deal_store.documents d WHERE d.deal_id = deal AND d.id = document_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'document % does not exist', document_id USING ERRCODE = 'P0002';
    ELSIF old.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'document % is deleted', document_id USING ERRCODE = '55000';
    ELSIF old.status = 'superseded' THEN
        RAISE EXCEPTION 'document % is already superseded', document_id USING ERRCODE = '55000',
            HINT = 'Add the version to the newest one (the document whose supersedes_id chain leads here).';
    END IF;
    BEGIN
        INSERT INTO deal_store.documents AS d (deal_id, filename, file_hash, entity, authority_level, storage_path, version,
                                               supersedes_id, page_count)
        VALUES (old.deal_id, coalesce(add_document_version.filename, old.filename), add_document_version.file_hash, old.entity,
                old.authority_level, coalesce(add_document_version.storage_path, old.storage_path), old.version + 1, old.id,
                add_document_version.page_count)
        RETURNING d.id INTO new_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'the deal already has a document with file_hash %', file_hash USING ERRCODE = '23505',
            HINT = 'A new version is a different file.';
    END;
    UPDATE deal_store.documents d SET status = 'superseded' WHERE d.deal_id = old.deal_id AND d.id = old.id;
    RETURN new_id;
END $$;
ALTER FUNCTION deal_store.add_document_version(uuid, text, text, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

DROP FUNCTION deal_store._apply_set(uuid[], uuid[], text);
CREATE FUNCTION deal_store._apply_set(deal uuid, ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    todo deal_store.pending_changes[];
    actor uuid := deal_store.current_actor();
    applied uuid[] := ARRAY[]::uuid[];
    moved uuid[] := ARRAY[]::uuid[];
    done uuid[];
    kind text;
    tbl regclass;
    live text;
    same text;
    content text[];
    extra text[];
    targets uuid[];
    reasons text[];
    set_cols text;
    set_vals text;
    ins_vals text;
BEGIN
    -- the open changes ids of the deal (the caller holds their locks), oldest first. Every
    -- statement below names the deal on every deal table: on Citus each runs on one shard.
    SELECT pg_catalog.array_agg(p ORDER BY p.created_at, p.id) INTO todo
    FROM deal_store.pending_changes p
    WHERE p.deal_id = deal AND p.id = ANY (ids) AND p.status IN ('pending', 'deferred');
    IF todo IS NULL THEN
        RETURN;
    END IF;
    -- changes that cannot apply whatever their target (a deleted deal, a failed run)
    -- are decided now and leave the set
    WITH refused AS (
        SELECT c.deal_id, c.id, CASE WHEN d.deleted_at IS NOT NULL THEN 'the deal is deleted'
                                     WHEN r.status = 'failed' THEN 'analysis run ' || r.run_number::text || ' failed' END AS why
        FROM pg_catalog.unnest(todo) c
        JOIN deal_store.deals d ON d.id = deal
        LEFT JOIN deal_store.analysis_runs r ON r.deal_id = deal AND r.id = c.analysis_run_id),
    decided AS (
        UPDATE deal_store.pending_changes p
        -- the note and the reason joined by immutable operators: Citus calls no stable function on a column in an UPDATE
        SET status = 'conflict', decided_by = actor, decided_at = pg_catalog.now(), review_note = coalesce(note || ' / ' || x.why, note, x.why)
        FROM refused x WHERE x.why IS NOT NULL AND p.deal_id = deal AND p.id = x.id
        RETURNING p.deal_id, p.id)
    SELECT pg_catalog.array_agg(c ORDER BY c.created_at, c.id) INTO todo
    FROM pg_catalog.unnest(todo) c
    WHERE NOT EXISTS (SELECT 1 FROM decided x WHERE x.deal_id = c.deal_id AND x.id = c.id);
    FOR kind IN SELECT DISTINCT c.entity_type FROM pg_catalog.unnest(todo) c ORDER BY 1 LOOP
        tbl := (deal_store._kind_table(kind))::regclass;
        live := 't.deleted_at IS NULL' || CASE WHEN kind = 'fact' THEN ' AND t.superseded_at IS NULL' ELSE '' END;
        -- the target as proposed: same row, live, content checksum still the base
        same := 't.deal_id = $3 AND t.id = c.entity_id AND ' || live || ' AND '
            || CASE WHEN kind = 'fact' THEN 't.item_checksum' ELSE 'deal_store.content_checksum_of(c.entity_type, pg_catalog.to_jsonb(t))' END
            || ' = c.base_checksum';
        content := deal_store.content_fields(kind);
        extra := deal_store._extra_fields(kind);
        -- an update sets every content field (a missing one is NULL, as it was hashed), an extra one only when given;
        -- a new row takes the column default for whatever the proposal does not carry
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(f), ', '),
               pg_catalog.string_agg(CASE WHEN f = ANY (content) THEN 'r.' || pg_catalog.quote_ident(f)
                                          ELSE pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE t.%I END', f, f, f) END, ', '),
               pg_catalog.string_agg(pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE %s END', f, f,
                   coalesce((SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attribute a
                             JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                             WHERE a.attrelid = tbl AND a.attname = f), 'NULL')), ', ')
        INTO set_cols, set_vals, ins_vals
        FROM pg_catalog.unnest(content || extra) f;
        -- @plpgsql_check_options: security_warnings = false
        -- (the statements below are built from a regclass, catalog column names and defaults, and constant text)
        EXECUTE pg_catalog.format(
            'WITH u AS (UPDATE %1$s t SET (%2$s, analysis_run_id) = (SELECT %3$s, c.analysis_run_id '
            '                FROM pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r) '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''update'' AND %4$s '
            '           RETURNING c.id) '
            'SELECT pg_catalog.array_agg(u.id) FROM u', tbl, set_cols, set_vals, same)
            INTO done USING todo, kind, deal;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- a removal is a soft delete, by the code soft_delete() uses: each its own batch, the run
        -- named; the targets are locked first, then marked (a statement of its own, so no
        -- query runs a distributed UPDATE from inside another on Citus)
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(x.id ORDER BY x.created_at, x.id), pg_catalog.array_agg(x.entity_id ORDER BY x.created_at, x.id), '
            '       pg_catalog.array_agg(pg_catalog.format(''removed by analysis run %%s'', x.run_number) ORDER BY x.created_at, x.id) '
            'FROM (SELECT c.id, c.entity_id, run.run_number, c.created_at '
            '      FROM pg_catalog.unnest($1) c JOIN deal_store.analysis_runs run ON run.deal_id = $3 AND run.id = c.analysis_run_id '
            '      JOIN %1$s t ON %2$s '
            '      WHERE c.entity_type = $2 AND c.change_type = ''delete'' FOR UPDATE OF t) x', tbl, same)
            INTO done, targets, reasons USING todo, kind, deal;
        IF done IS NOT NULL THEN
            PERFORM deal_store._mark_deleted(tbl, 'row', pg_catalog.array_fill(deal, ARRAY[pg_catalog.cardinality(targets)]),
                                             targets, reasons, NULL);
            applied := applied || done;
        END IF;
        EXECUTE pg_catalog.format(
            'WITH x AS (SELECT c.id AS change_id, pg_catalog.gen_random_uuid() AS new_id, c.* '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''new''), '
            'i AS (INSERT INTO %1$s (id, deal_id, legacy_id, analysis_run_id, %2$s) '
            '      SELECT c.new_id, c.deal_id, c.legacy_entity_id, c.analysis_run_id, %3$s '
            '      FROM x c, pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r '
            '      ON CONFLICT (deal_id, legacy_id) WHERE %4$s DO NOTHING RETURNING id) '
            'SELECT pg_catalog.array_agg(x.change_id) FROM x JOIN i ON i.id = x.new_id',
            tbl, set_cols, ins_vals, replace(live, 't.', ''))
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- of the updates and deletes not applied, those whose target is still there: it moved
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(c.id) FROM pg_catalog.unnest($1) c JOIN %s t ON t.deal_id = $4 AND t.id = c.entity_id AND %s '
            'WHERE c.entity_type = $2 AND c.change_type <> ''new'' AND c.id <> ALL ($3)', tbl, live)
            INTO done USING todo, kind, applied, deal;
        moved := moved || coalesce(done, ARRAY[]::uuid[]);
    END LOOP;
    -- the decisions, each reason worded here once
    UPDATE deal_store.pending_changes p
    SET status = CASE WHEN x.ok THEN 'accepted' ELSE 'conflict' END,
        decided_by = actor, decided_at = pg_catalog.now(),
        review_note = coalesce(note || ' / ' || x.why, note, x.why)
    FROM (SELECT c.id, c.id = ANY (applied) AS ok, CASE
              WHEN c.id = ANY (applied) THEN NULL
              WHEN c.change_type = 'new' THEN 'a live row with this legacy_id exists'
              WHEN c.id = ANY (moved) THEN 'the target changed since the proposal'
              ELSE 'the target is gone or deleted' END AS why
          FROM pg_catalog.unnest(todo) c) x
    WHERE p.deal_id = deal AND p.id = x.id;
END $$;
COMMENT ON FUNCTION deal_store._apply_set(uuid, uuid[], text) IS
    'Internal: applies a set of open changes of one deal the caller has locked (the changes ids), set-based, per entity type: update makes a new version (facts) or rewrites the content, delete soft-deletes through _mark_deleted naming the run, new inserts with the run as analysis_run_id. A change whose target moved (checksum differs from base_checksum, target deleted, a live row took the legacy_id of a new), whose run failed or whose deal is deleted becomes a conflict with its reason. Any error aborts the whole set (see _apply).';
REVOKE ALL ON FUNCTION deal_store._apply_set(uuid, uuid[], text) FROM PUBLIC;

COMMENT ON FUNCTION deal_store._apply(uuid[], uuid[], text) IS
    'Internal: the one apply path. Applies the open changes (deal_ids[i], ids[i]) the caller has locked with _apply_set, deal by deal; when a deal''s set fails (a data error, a constraint), applies each change alone in a subtransaction and marks one that still fails as conflict with the error (cannot apply: message (SQLSTATE)), so no single change fails a batch. Errors that are not a change''s fault are raised: deadlocks and serialization failures (retry), resources, privileges, internal errors (classes 40, 42, 53, 57, 58, XX). The audit reason is the note.';

CREATE FUNCTION deal_store._claim_by_deal(batch_size integer, max_tier integer, deals uuid[], OUT deal_ids uuid[], OUT ids uuid[])
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d uuid;
    got uuid[];
BEGIN
    deal_ids := ARRAY[]::uuid[];
    ids := ARRAY[]::uuid[];
    FOR d IN SELECT p.deal_id FROM deal_store.pending_changes p
             WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
               AND (p.status = 'pending' OR p.deferred_until <= now())
               AND (deals IS NULL OR p.deal_id = ANY (deals))
             GROUP BY p.deal_id ORDER BY min(p.created_at), p.deal_id LOOP
        SELECT array_agg(x.id) INTO got FROM (
            SELECT p.id FROM deal_store.pending_changes p
            WHERE p.deal_id = d AND p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
              AND (p.status = 'pending' OR p.deferred_until <= now())
            ORDER BY p.created_at, p.id
            LIMIT batch_size - cardinality(ids)
            FOR UPDATE SKIP LOCKED) x;
        IF got IS NOT NULL THEN
            deal_ids := deal_ids || array_fill(d, ARRAY[cardinality(got)]);
            ids := ids || got;
        END IF;
        EXIT WHEN cardinality(ids) >= batch_size;
    END LOOP;
    IF cardinality(ids) = 0 THEN
        deal_ids := NULL;
        ids := NULL;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store._claim_by_deal(integer, integer, uuid[]) IS
    'Internal: _claim for a database whose deal tables Citus distributes: locks up to batch_size eligible open changes deal by deal (the deals with the oldest eligible change first; each claim one query on the deal''s shard).';
REVOKE ALL ON FUNCTION deal_store._claim_by_deal(integer, integer, uuid[]) FROM PUBLIC;

CREATE FUNCTION deal_store."_distributed"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'distributed_sql_wrapper';
COMMENT ON FUNCTION deal_store._distributed() IS
    'Internal: true when Citus distributes deal_store''s deal tables (pending_changes is hash-distributed).';
REVOKE ALL ON FUNCTION deal_store._distributed() FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store.process_queue_batch(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    OUT claimed integer, OUT applied integer, OUT conflicts integer)
LANGUAGE plpgsql AS $$
DECLARE
    batch record;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    -- admins work the whole queue; a reviewer the deals it reviews
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to process the queue: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
    IF deal_store._distributed() THEN
        SELECT * INTO batch FROM deal_store._claim_by_deal(batch_size, max_tier,
            CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END);
    ELSE
        SELECT * INTO batch FROM deal_store._claim(batch_size, max_tier,
            CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END);
    END IF;
    claimed := coalesce(cardinality(batch.ids), 0);
    applied := 0;
    conflicts := 0;
    IF claimed > 0 THEN
        PERFORM deal_store._apply(batch.deal_ids, batch.ids, 'process_queue');
        -- the claimed (deal, id) pairs as keys (a uuid's text has a fixed length): a filter, not a
        -- join with the arrays, which Citus could not plan over the distributed table
        SELECT count(*) FILTER (WHERE p.status = 'accepted'), count(*) FILTER (WHERE p.status = 'conflict')
        INTO applied, conflicts
        FROM deal_store.pending_changes p
        WHERE p.deal_id = ANY (batch.deal_ids) AND p.id = ANY (batch.ids)
          AND p.deal_id::text || p.id::text = ANY (ARRAY(SELECT x.deal_id::text || x.id::text
                                                          FROM unnest(batch.deal_ids, batch.ids) x(deal_id, id)));
    END IF;
END $$;
ALTER FUNCTION deal_store.process_queue_batch(integer, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    INOUT batches integer DEFAULT NULL, INOUT applied bigint DEFAULT NULL,
    INOUT conflicts bigint DEFAULT NULL, INOUT remaining bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    batches := 0;
    applied := 0;
    conflicts := 0;
    LOOP
        b := deal_store.process_queue_batch(batch_size, max_tier);
        COMMIT;
        EXIT WHEN b.claimed = 0;
        batches := batches + 1;
        applied := applied + b.applied;
        conflicts := conflicts + b.conflicts;
        RAISE NOTICE 'process_queue: batch %: % applied, % conflicts (so far % applied, % conflicts)',
            batches, b.applied, b.conflicts, applied, conflicts;
        EXIT WHEN b.claimed < batch_size;
    END LOOP;
    -- what another call would find now: eligible changes that other workers hold
    -- or that were proposed meanwhile
    SELECT count(*) INTO remaining FROM deal_store.pending_changes p
    WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
      AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
      AND ((SELECT deal_store.sees_all_deals()) OR p.deal_id = ANY ((SELECT deal_store.my_deals('reviewer'))::uuid[]));
END $$;

CREATE OR REPLACE FUNCTION deal_store.search_deal(deal_id uuid, query text, lim integer DEFAULT 20)
RETURNS TABLE(entity_type text, entity_id uuid, title text, rank real, headline text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    opts text := deal_store.headline_options();
    fact_ids uuid[];
    fact_titles text[];
    fact_ranks real[];
    fact_headlines text[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    tsq := deal_store.search_tsquery(query, cfg);
    IF numnode(tsq) = 0 THEN
        RETURN;
    END IF;
    -- the facts' hits first, in a statement of their own: on Citus the query below runs
    -- on the deal's shard, where search_facts (a query of its own) cannot be called
    SELECT array_agg(s.fact_id), array_agg(s.item), array_agg(s.rank), array_agg(s.headline)
    INTO fact_ids, fact_titles, fact_ranks, fact_headlines
    FROM deal_store.search_facts(search_deal.deal_id, query, lim => search_deal.lim) s WHERE s.rank > 0;
    RETURN QUERY
    WITH hits AS (
        SELECT 'fact'::text AS kind, f.id, f.title, f.rank, f.headline
        FROM ROWS FROM (unnest(fact_ids), unnest(fact_titles), unnest(fact_ranks), unnest(fact_headlines)) f(id, title, rank, headline)
        UNION ALL
        SELECT 'finding', g.id, g.title, ts_rank_cd(v.vec, tsq, 32)::real,
               ts_headline(cfg, g.title || coalesce(': ' || g.description, ''), tsq, opts)
        FROM deal_store.findings g,
             LATERAL (SELECT setweight(to_tsvector(cfg, g.title), 'A') || setweight(to_tsvector(cfg, coalesce(g.description, '')), 'C') AS vec) v
        WHERE g.deal_id = search_deal.deal_id AND g.deleted_at IS NULL AND v.vec @@ tsq
        UNION ALL
        SELECT 'gap', x.id, x.description, ts_rank_cd(v.vec, tsq, 32)::real, ts_headline(cfg, x.description, tsq, opts)
        FROM deal_store.gaps x,
             LATERAL (SELECT setweight(to_tsvector(cfg, x.description), 'A') AS vec) v
        WHERE x.deal_id = search_deal.deal_id AND x.deleted_at IS NULL AND v.vec @@ tsq)
    SELECT h.kind, h.id, h.title, h.rank, h.headline FROM hits h
    ORDER BY h.rank DESC, h.kind, h.title, h.id
    LIMIT lim;
END $$;
ALTER FUNCTION deal_store.search_deal(uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.entity_history(entity_type text, entity_id uuid DEFAULT NULL, entity_key jsonb DEFAULT NULL)
RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- read once, here (on Citus: on the coordinator, not on the shards)
    everything boolean := deal_store.sees_all_deals();
    visible uuid[] := CASE WHEN NOT everything THEN deal_store.my_deals('viewer') END;
BEGIN
    RETURN QUERY
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.entity_type = entity_history.entity_type
      AND (l.entity_id = entity_history.entity_id OR l.entity_key = entity_history.entity_key)
      AND (everything OR l.deal_id = ANY (visible))
    ORDER BY l.seq;
END $$;
ALTER FUNCTION deal_store.entity_history(text, uuid, jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

DROP FUNCTION deal_store._lock_row(regclass, uuid, text);
CREATE FUNCTION deal_store._lock_row(entity regclass, id uuid, needs text, deal uuid,
    OUT deal_id uuid, OUT deleted_at timestamptz, OUT delete_batch uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current_only text := CASE WHEN entity = 'deal_store.facts'::regclass THEN ' AND superseded_at IS NULL' ELSE '' END;
    deal_col text := CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END;
BEGIN
    PERFORM deal_store._soft_deletable(entity);
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF entity = 'deal_store.deals'::regclass THEN
        PERFORM deal_store._require_right(id, needs);
    ELSIF deal IS NOT NULL THEN
        PERFORM deal_store._require_right(deal, needs);
    ELSE
        PERFORM deal_store._id_in_one_deal(entity, id, needs);
    END IF;
    -- with the deal named, the lookup reads one deal (on Citus: one shard)
    EXECUTE format('SELECT %I FROM %s WHERE id = $1%s%s', deal_col, entity, current_only,
                   CASE WHEN deal IS NOT NULL AND entity <> 'deal_store.deals'::regclass THEN ' AND deal_id = $2' ELSE '' END)
        INTO _lock_row.deal_id USING id, deal;
    IF _lock_row.deal_id IS NULL THEN
        RAISE EXCEPTION '% has no row with id %', entity, id USING ERRCODE = 'P0002';
    END IF;
    IF entity <> 'deal_store.deals'::regclass THEN
        PERFORM 1 FROM deal_store.deals d WHERE d.id = _lock_row.deal_id FOR SHARE;
    END IF;
    EXECUTE format('SELECT deleted_at, delete_batch FROM %s WHERE %I = $1 AND id = $2%s FOR UPDATE',
                   entity, deal_col, current_only)
        INTO _lock_row.deleted_at, _lock_row.delete_batch USING _lock_row.deal_id, id;
END $$;
COMMENT ON FUNCTION deal_store._lock_row(regclass, uuid, text, uuid) IS
    'Internal: validates entity and id (in deal, when not NULL; else the id must name a row of one deal only), checks the caller''s right needs on the row''s deal (42501), locks the row''s deal then the row, and returns deal_id, deleted_at and delete_batch.';
REVOKE ALL ON FUNCTION deal_store._lock_row(regclass, uuid, text, uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store._mark_deleted(tbl regclass, scope text, deal_ids uuid[], ids uuid[], reasons text[], batch uuid)
RETURNS TABLE(deal_id uuid, id uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store._soft_deletable(tbl);
    -- @plpgsql_check_options: security_warnings = false, extra_warnings = false
    -- (the condition is one of the constant texts below; tbl a regclass; the OUT
    -- columns are the dynamic statement's RETURNING, which the checker cannot see)
    RETURN QUERY EXECUTE pg_catalog.format(
        'UPDATE %s t SET deleted_at = pg_catalog.now(), deleted_by = $4, delete_reason = x.reason, '
        '    delete_batch = x.batch '
        'FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($5)) '
        '    x(deal_id, id, reason, batch) '
        'WHERE %s AND %s AND t.deleted_at IS NULL%s RETURNING %s, t.id',
        tbl,
        -- the deals named once more, as a list: on Citus this routes the UPDATE to their shards
        CASE WHEN tbl = 'deal_store.deals'::regclass THEN 't.id = ANY ($6)' ELSE 't.deal_id = ANY ($6)' END,
        CASE scope WHEN 'row' THEN CASE WHEN tbl = 'deal_store.deals'::regclass THEN 't.id = x.id'
                                        ELSE 't.deal_id = x.deal_id AND t.id = x.id' END
                   WHEN 'owned_by_deal' THEN 't.deal_id = x.id'
                   WHEN 'owned_by_document' THEN 't.deal_id = x.deal_id AND t.source_document_id = x.id' END,
        CASE WHEN tbl = 'deal_store.facts'::regclass THEN ' AND t.superseded_at IS NULL' ELSE '' END,
        CASE WHEN tbl = 'deal_store.deals'::regclass THEN 't.id' ELSE 't.deal_id' END)
        -- the batches are drawn here, not in the UPDATE: Citus runs no volatile function in one
        USING deal_ids, ids, reasons, deal_store.current_actor(),
              CASE WHEN batch IS NULL THEN ARRAY(SELECT gen_random_uuid() FROM generate_series(1, coalesce(cardinality(ids), 0)))
                   ELSE array_fill(batch, ARRAY[coalesce(cardinality(ids), 0)]) END,
              ARRAY(SELECT DISTINCT d FROM unnest(CASE WHEN scope = 'owned_by_deal' OR tbl = 'deal_store.deals'::regclass
                                                      THEN ids ELSE deal_ids END) d);
END $$;
COMMENT ON FUNCTION deal_store._mark_deleted(regclass, text, uuid[], uuid[], text[], uuid) IS
    'Internal: soft-deletes live rows of tbl, set-based (deleted_at, deleted_by = deal_store.actor, the reason, batch, or when batch is NULL a batch of its own per named row): the rows (deal_ids[i], ids[i]) themselves (scope row), the rows of the deals ids (owned_by_deal) or the facts sourced from the documents (owned_by_document). Returns the rows marked. soft_delete and the merge queue both write soft deletes through it.';

DROP FUNCTION deal_store.soft_delete(regclass, uuid, text);
CREATE FUNCTION deal_store.soft_delete(entity regclass, id uuid, reason text DEFAULT NULL, deal_id uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := current_setting('deal_store.reason', true);
    r record;
    batch uuid := gen_random_uuid();
    total integer := 0;
    n integer;
    t record;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END,
                              soft_delete.deal_id);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    EXECUTE pg_catalog.format('SET LOCAL deal_store.reason = %L', coalesce(reason, prev_reason, ''));
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN SELECT entity AS tbl, 'row' AS scope UNION ALL SELECT * FROM deal_store._owned(entity) LOOP
        SELECT count(*) INTO n FROM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[r.deal_id], ARRAY[id], ARRAY[reason], batch);
        total := total + n;
    END LOOP;
    EXECUTE pg_catalog.format('SET LOCAL deal_store.reason = %L', coalesce(prev_reason, ''));
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) IS
    'Soft-deletes one row of deals, documents, facts, findings or gaps (of the deal deal_id, when given: then the id is looked up in that deal alone) and what it owns (a deal: its documents, facts, findings, gaps; a document: the facts sourced from it). All rows get one delete_batch, deleted_by = deal_store.actor and the reason. Returns the number of rows marked. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 already deleted.';
REVOKE ALL ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) FROM PUBLIC;
ALTER FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
GRANT EXECUTE ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) TO deal_store_analyst;

CREATE OR REPLACE FUNCTION deal_store.restore(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    total integer := 0;
    n integer;
    t regclass;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END, NULL);
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION '% row % is not deleted', entity, id USING ERRCODE = '55000';
    END IF;
    IF entity <> 'deal_store.deals'::regclass
       AND EXISTS (SELECT 1 FROM deal_store.deals d WHERE d.id = r.deal_id AND d.deleted_at IS NOT NULL
                   AND d.delete_batch IS DISTINCT FROM r.delete_batch) THEN
        RAISE EXCEPTION 'cannot restore % row %: its deal is deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Restore the deal first.';
    END IF;
    BEGIN
        UPDATE deal_store.deals d SET deleted_at = NULL, deleted_by = NULL, delete_reason = NULL, delete_batch = NULL
        WHERE d.id = r.deal_id AND d.delete_batch = r.delete_batch;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := n;
        FOREACH t IN ARRAY ARRAY['deal_store.documents', 'deal_store.facts', 'deal_store.findings', 'deal_store.gaps']::regclass[] LOOP
            EXECUTE format('UPDATE %s SET deleted_at = NULL, deleted_by = NULL, delete_reason = NULL, delete_batch = NULL '
                           'WHERE deal_id = $1 AND delete_batch = $2', t)
                USING r.deal_id, r.delete_batch;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
        END LOOP;
    EXCEPTION WHEN unique_violation THEN
        DECLARE
            msg text; cons text;
        BEGIN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, cons = CONSTRAINT_NAME;
            RAISE EXCEPTION 'cannot restore % row %: a live row has taken its name since', entity, id
                USING ERRCODE = '23505', CONSTRAINT = cons, DETAIL = msg,
                      HINT = 'Rename or delete the live row, then restore again.';
        END;
    END;
    RETURN total;
END $$;
ALTER FUNCTION deal_store.restore(regclass, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.start_run(deal_id uuid, domains text[] DEFAULT NULL, incremental boolean DEFAULT false,
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
    PERFORM deal_store._require_deal(start_run.deal_id, 'write');
    prior := deal_store._idempotent(idempotency_key, 'start_run', jsonb_build_array(deal_id, domains, incremental));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF domains IS NOT NULL AND (array_position(domains, NULL) IS NOT NULL
                                OR EXISTS (SELECT 1 FROM unnest(domains) x WHERE btrim(x) = '')) THEN
        RAISE EXCEPTION 'domains must not contain NULL or empty names' USING ERRCODE = '22023';
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
    PERFORM deal_store._remember(idempotency_key, to_jsonb(run_id));
    RETURN run_id;
END $$;
ALTER FUNCTION deal_store.start_run(uuid, text[], boolean, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.fact_history(fact_id uuid)
RETURNS TABLE(version integer, version_id uuid, is_current boolean, item text, item_checksum text,
              content jsonb, analysis_run_id uuid, run_number integer, written_at timestamptz, superseded_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.facts', fact_id, 'read');
    SELECT f.deal_id INTO deal FROM deal_store.facts f WHERE f.id = fact_id AND f.superseded_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fact % does not exist', fact_id USING ERRCODE = 'P0002';
    END IF;
    -- every table names the deal: Citus plans the recursive CTE on one shard
    RETURN QUERY
    WITH RECURSIVE chain AS (
        SELECT f.*, 0 AS depth FROM deal_store.facts f WHERE f.deal_id = deal AND f.id = fact_history.fact_id
        UNION ALL
        SELECT f.*, c.depth + 1 FROM chain c
        JOIN deal_store.facts f ON f.deal_id = c.deal_id AND f.id = c.previous_version_id
        WHERE f.deal_id = deal
    )
    SELECT (max(c.depth) OVER () - c.depth + 1)::integer, c.id, c.depth = 0, c.item, c.item_checksum,
           (SELECT jsonb_object_agg(k, to_jsonb(c) -> k) FROM unnest(deal_store.content_fields('fact')) k),
           c.analysis_run_id, r.run_number, c.updated_at, c.superseded_at
    FROM chain c LEFT JOIN deal_store.analysis_runs r ON r.deal_id = deal AND r.id = c.analysis_run_id
    WHERE c.deal_id = deal
    ORDER BY c.depth;
END $$;
ALTER FUNCTION deal_store.fact_history(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- 0.2.0: deal_store.distribute() and row-level security on Citus (issue 19):
-- the policies are written by one function, in their PostgreSQL form (as
-- before) or in their Citus form (deal_store._may / _acts_as per row, no
-- subquery); distribute() places the tables on a Citus coordinator.

CREATE FUNCTION deal_store."_may"(
	"rel" oid,
	"deal" uuid,
	"min_role" TEXT
) RETURNS bool
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'may_wrapper';
CREATE FUNCTION deal_store."_acts_as"(
	"rel" oid,
	"user_id" uuid
) RETURNS bool
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'acts_as_wrapper';
REVOKE ALL ON FUNCTION deal_store._may(oid, uuid, text), deal_store._acts_as(oid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._may(oid, uuid, text), deal_store._acts_as(oid, uuid) TO deal_store_reader;
COMMENT ON FUNCTION deal_store._may(oid, uuid, text) IS
    'Internal, the row-level security policies on Citus: true when the caller sees every deal or its actor holds min_role or a stronger role in deal (a row''s deal column); rel is the policy''s relation (tableoid): on a worker the team is read from the deal_members shard on the same node, once per transaction.';

COMMENT ON FUNCTION deal_store._acts_as(oid, uuid) IS
    'Internal, the row-level security policies on Citus: true when the caller sees every deal or user_id is its actor (own deals, own notifications); rel as for _may.';


CREATE FUNCTION deal_store._create_policies(on_citus boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    -- %1$I the deal column, %2$L the deal role it needs
    member text := CASE WHEN on_citus THEN 'deal_store._may(tableoid, %1$I, %2$L)'
                   ELSE '%1$I = ANY ((SELECT deal_store.my_deals(%2$L))::uuid[]) OR (SELECT deal_store.sees_all_deals())' END;
    -- %1$I the user column: the row is the actor's own
    own text := CASE WHEN on_citus THEN 'deal_store._acts_as(tableoid, %1$I)'
                ELSE '(SELECT deal_store.sees_all_deals()) OR %1$I = (SELECT deal_store.current_actor())' END;
    also text;
BEGIN
    -- @plpgsql_check_options: security_warnings = false
    -- (the statements are built from constant text and quote_ident'ed catalog names only)
    FOR t IN SELECT tablename, policyname FROM pg_catalog.pg_policies WHERE schemaname = 'deal_store' LOOP
        EXECUTE format('DROP POLICY %I ON deal_store.%I', t.policyname, t.tablename);
    END LOOP;
    FOR t IN SELECT * FROM (VALUES
        -- table, its deal column, the deal role that may change rows, who else reads a row
        ('deals',              'id',      'lead',     'owner'),
        ('documents',          'deal_id', 'analyst',  NULL),
        ('analysis_runs',      'deal_id', 'analyst',  NULL),
        ('facts',              'deal_id', 'analyst',  NULL),
        ('findings',           'deal_id', 'analyst',  NULL),
        ('fact_finding_links', 'deal_id', 'analyst',  NULL),
        ('gaps',               'deal_id', 'analyst',  NULL),
        ('pending_changes',    'deal_id', 'reviewer', NULL),
        ('deal_members',       'deal_id', 'lead',     NULL),
        ('tier_policies',      'deal_id', 'lead',     'everyone, for the global rules'),
        ('deal_activity_log',  'deal_id', NULL,       NULL)) AS x(tbl, col, writer, reads)
    LOOP
        also := CASE t.reads
            WHEN 'owner' THEN CASE WHEN on_citus THEN ' OR ' || format(own, 'user_id')
                                   ELSE ' OR user_id = (SELECT deal_store.current_actor())' END
            WHEN 'everyone, for the global rules' THEN ' OR deal_id IS NULL'
            ELSE '' END;
        EXECUTE format('ALTER TABLE deal_store.%I ENABLE ROW LEVEL SECURITY', t.tbl);
        EXECUTE format('CREATE POLICY members_read ON deal_store.%I FOR SELECT USING (%s%s)',
            t.tbl, format(member, t.col, 'viewer'), also);
        -- one policy per command, so a read is checked against the read rule alone
        IF t.writer IS NOT NULL THEN
            EXECUTE format('CREATE POLICY members_insert ON deal_store.%I FOR INSERT WITH CHECK (%s)',
                t.tbl, format(member, t.col, t.writer));
            EXECUTE format('CREATE POLICY members_update ON deal_store.%I FOR UPDATE USING (%s)',
                t.tbl, format(member, t.col, t.writer));
            EXECUTE format('CREATE POLICY members_delete ON deal_store.%I FOR DELETE USING (%s)',
                t.tbl, format(member, t.col, t.writer));
        END IF;
    END LOOP;
    -- A deal's owner creates it: a user may insert deals it owns.
    EXECUTE format('CREATE POLICY owner_creates ON deal_store.deals FOR INSERT WITH CHECK (%s)', format(own, 'user_id'));
    -- Notifications: each user their own.
    ALTER TABLE deal_store.notifications ENABLE ROW LEVEL SECURITY;
    EXECUTE format('CREATE POLICY own ON deal_store.notifications FOR ALL USING (%s)', format(own, 'user_id'));
END $$;
COMMENT ON FUNCTION deal_store._create_policies(boolean) IS
    'Internal: (re)creates every row-level security policy of deal_store: with subqueries evaluated once per statement (PostgreSQL), or, on_citus, with deal_store._may / _acts_as per row (Citus allows no subquery in a policy on a distributed table).';

REVOKE ALL ON FUNCTION deal_store._create_policies(boolean) FROM PUBLIC;

CREATE FUNCTION deal_store._placement()
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
        (14, 'deal_store.seen_marks', 'deal_id')) AS x(n, t, col)
    ORDER BY x.n
$$;
COMMENT ON FUNCTION deal_store._placement() IS
    'Internal: how deal_store.distribute() places each table on Citus: a NULL distribution_column is a reference table, the others are distributed by it and co-located with deals.';

-- An error message as the table would give it: on Citus a worker names the
-- shard ("facts_102118"); a note a reviewer reads names the table.
CREATE FUNCTION deal_store._unsharded(message text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT regexp_replace(message, '"(' || string_agg(split_part(p.table_name::text, '.', 2), '|') || ')_[0-9]+"', '"\1"', 'g')
    FROM deal_store._placement() p
$$;
COMMENT ON FUNCTION deal_store._unsharded(text) IS
    'Internal: the message with every shard of a deal_store table named as its table ("facts_102118" -> "facts"), for the notes the apply path stores.';

-- Run on every node (the extension's tables exist on each): what Citus cannot
-- distribute goes, and the policies take their Citus form.
CREATE FUNCTION deal_store._distribute_prepare() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
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
    PERFORM deal_store._create_policies(true);
END $$;
COMMENT ON FUNCTION deal_store._distribute_prepare() IS
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
    IF deal_store._distributed() THEN
        RAISE EXCEPTION 'deal_store is already distributed' USING ERRCODE = '55000';
    END IF;
    -- the foreign keys Citus keeps: not ON DELETE SET NULL (column) (on Citus a
    -- purged document or run leaves those references dangling), not from a
    -- reference table (tier_policies) to a distributed one
    SELECT coalesce(array_agg(ARRAY[k.conrelid::regclass::text, k.conname::text, pg_get_constraintdef(k.oid)]), '{}')
    INTO keys
    FROM pg_catalog.pg_constraint k
    WHERE k.connamespace = 'deal_store'::regnamespace AND k.contype = 'f' AND k.confdeltype <> 'n'
      AND k.conrelid NOT IN (SELECT x.table_name FROM deal_store._placement() x WHERE x.distribution_column IS NULL);
    PERFORM deal_store._distribute_prepare();
    EXECUTE format('SELECT string_agg(r.nodename || '':'' || r.nodeport || '': '' || r.result, ''; '') FROM %s(%L) r WHERE NOT r.success',
                   'pg_catalog.run_command_on_workers', 'SELECT deal_store._distribute_prepare()')
        INTO failed;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'deal_store could not be prepared on every worker: %', failed USING ERRCODE = '55000',
            HINT = 'Every worker needs deal_store (Citus creates it there with CREATE EXTENSION on the coordinator).';
    END IF;
    -- triggers on shards (audit, versions, soft delete) are what deal_store is made of
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- one transaction creates the tables and their keys to the reference tables
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOR p IN SELECT * FROM deal_store._placement() LOOP
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
    RETURN QUERY SELECT * FROM deal_store._placement();
END $$;
COMMENT ON FUNCTION deal_store.distribute() IS
    'On a Citus coordinator (workers added, deal_store created): makes users and tier_policies reference tables and distributes deals by id and every deal table by deal_id in one co-location group; returns the placement. Gives up what Citus cannot enforce (README "Running on Citus"). 55000 without Citus, on a worker, or when already distributed. For the extension''s owner.';
REVOKE ALL ON FUNCTION deal_store._placement(), deal_store._unsharded(text), deal_store._distribute_prepare(), deal_store.distribute() FROM PUBLIC;

-- was LANGUAGE sql (Citus cannot plan an SQL function's parameters; its lookup now names the deal)
CREATE OR REPLACE FUNCTION deal_store.fact_as_of(fact_id uuid, at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h record;
    deal uuid;
    valid_from timestamptz;   -- when the version h began: the fact's creation, then the end of the one before
BEGIN
    -- oldest first (fact_history raises P0002 for an unknown fact and checks the right to read)
    FOR h IN SELECT x.version, x.version_id, x.content, x.superseded_at FROM deal_store.fact_history(fact_id) x ORDER BY x.version LOOP
        IF valid_from IS NULL THEN
            -- the lookup names the deal: on Citus one shard
            deal := deal_store._id_in_one_deal('deal_store.facts', fact_id, 'read');
            SELECT f.created_at INTO valid_from FROM deal_store.facts f WHERE f.deal_id = deal AND f.id = h.version_id;
        END IF;
        IF valid_from <= at AND (h.superseded_at IS NULL OR at < h.superseded_at) THEN
            RETURN h.content;
        END IF;
        valid_from := h.superseded_at;
    END LOOP;
    RETURN NULL;
END $$;
ALTER FUNCTION deal_store.fact_as_of(uuid, timestamptz) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- lateral aggregates with a FROM each (Citus refuses correlated subqueries in a subquery without FROM)
CREATE OR REPLACE VIEW deal_store.deal_overview AS
    SELECT d.id AS deal_id, d.name, d.target_name, d.deal_type, d.status,
           d.user_id AS owner_id, u.email AS owner_email, u.display_name AS owner_name,
           doc.documents, fa.facts, fi.findings, fi.critical_findings, g.gaps, g.open_gaps,
           q.pending_tier_1, q.pending_tier_2, q.pending_tier_3, q.conflicts,
           r.run_number AS last_run_number, r.completed_at AS last_run_completed_at, d.updated_at
    FROM deal_store.active_deals d
    LEFT JOIN deal_store.users u ON u.id = d.user_id
    -- one aggregate per table, each over the deal's rows (on Citus: co-located with the deal)
    CROSS JOIN LATERAL (SELECT count(*) AS documents FROM deal_store.active_documents x WHERE x.deal_id = d.id) doc
    CROSS JOIN LATERAL (SELECT count(*) AS facts FROM deal_store.current_facts x WHERE x.deal_id = d.id) fa
    CROSS JOIN LATERAL (SELECT count(*) AS findings, count(*) FILTER (WHERE x.severity = 'critical') AS critical_findings
                        FROM deal_store.current_findings x WHERE x.deal_id = d.id) fi
    CROSS JOIN LATERAL (SELECT count(*) AS gaps, count(*) FILTER (WHERE x.resolved_at IS NULL) AS open_gaps
                        FROM deal_store.current_gaps x WHERE x.deal_id = d.id) g
    CROSS JOIN LATERAL (SELECT
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 1) AS pending_tier_1,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 2) AS pending_tier_2,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 3) AS pending_tier_3,
        count(*) FILTER (WHERE p.status = 'conflict') AS conflicts
        FROM deal_store.pending_changes p WHERE p.deal_id = d.id) q
    LEFT JOIN LATERAL (SELECT x.run_number, x.completed_at FROM deal_store.analysis_runs x
                       WHERE x.deal_id = d.id AND x.status = 'completed'
                       ORDER BY x.run_number DESC LIMIT 1) r ON true;
ALTER VIEW deal_store.deal_overview SET (security_invoker = true);

-- a finding's or gap's checksum is compared in a statement that locks the targets, not inside the UPDATE (Citus)
CREATE OR REPLACE FUNCTION deal_store._apply_set(deal uuid, ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    todo deal_store.pending_changes[];
    actor uuid := deal_store.current_actor();
    applied uuid[] := ARRAY[]::uuid[];
    moved uuid[] := ARRAY[]::uuid[];
    done uuid[];
    kind text;
    tbl regclass;
    live text;
    same text;
    matched uuid[];
    content text[];
    extra text[];
    targets uuid[];
    reasons text[];
    set_cols text;
    set_vals text;
    ins_vals text;
BEGIN
    -- the open changes ids of the deal (the caller holds their locks), oldest first. Every
    -- statement below names the deal on every deal table: on Citus each runs on one shard.
    SELECT pg_catalog.array_agg(p ORDER BY p.created_at, p.id) INTO todo
    FROM deal_store.pending_changes p
    WHERE p.deal_id = deal AND p.id = ANY (ids) AND p.status IN ('pending', 'deferred');
    IF todo IS NULL THEN
        RETURN;
    END IF;
    -- changes that cannot apply whatever their target (a deleted deal, a failed run)
    -- are decided now and leave the set
    WITH refused AS (
        SELECT c.deal_id, c.id, CASE WHEN d.deleted_at IS NOT NULL THEN 'the deal is deleted'
                                     WHEN r.status = 'failed' THEN 'analysis run ' || r.run_number::text || ' failed' END AS why
        FROM pg_catalog.unnest(todo) c
        JOIN deal_store.deals d ON d.id = deal
        LEFT JOIN deal_store.analysis_runs r ON r.deal_id = deal AND r.id = c.analysis_run_id),
    decided AS (
        UPDATE deal_store.pending_changes p
        -- the note and the reason joined by immutable operators: Citus calls no stable function on a column in an UPDATE
        SET status = 'conflict', decided_by = actor, decided_at = pg_catalog.now(), review_note = coalesce(note || ' / ' || x.why, note, x.why)
        FROM refused x WHERE x.why IS NOT NULL AND p.deal_id = deal AND p.id = x.id
        RETURNING p.deal_id, p.id)
    SELECT pg_catalog.array_agg(c ORDER BY c.created_at, c.id) INTO todo
    FROM pg_catalog.unnest(todo) c
    WHERE NOT EXISTS (SELECT 1 FROM decided x WHERE x.deal_id = c.deal_id AND x.id = c.id);
    FOR kind IN SELECT DISTINCT c.entity_type FROM pg_catalog.unnest(todo) c ORDER BY 1 LOOP
        tbl := (deal_store._kind_table(kind))::regclass;
        live := 't.deleted_at IS NULL' || CASE WHEN kind = 'fact' THEN ' AND t.superseded_at IS NULL' ELSE '' END;
        -- the target as proposed: same row, live, content checksum still the base. A fact
        -- stores its checksum; a finding's or gap's is computed from to_jsonb(t), which is
        -- stable: that runs in a statement that locks the targets first ($4 the changes
        -- whose target matched), not inside the UPDATE (Citus refuses it there)
        IF kind = 'fact' THEN
            same := 't.deal_id = $3 AND t.id = c.entity_id AND ' || live || ' AND t.item_checksum = c.base_checksum';
        ELSE
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.array_agg(x.id) FROM (SELECT c.id FROM pg_catalog.unnest($1) c '
                '  JOIN %s t ON t.deal_id = $3 AND t.id = c.entity_id AND %s '
                '  WHERE c.entity_type = $2 AND c.change_type <> ''new'' '
                '    AND deal_store.content_checksum_of(c.entity_type, pg_catalog.to_jsonb(t)) = c.base_checksum FOR UPDATE OF t) x', tbl, live)
                INTO matched USING todo, kind, deal;
            same := 't.deal_id = $3 AND t.id = c.entity_id AND ' || live || ' AND c.id = ANY ($4)';
        END IF;
        content := deal_store.content_fields(kind);
        extra := deal_store._extra_fields(kind);
        -- an update sets every content field (a missing one is NULL, as it was hashed), an extra one only when given;
        -- a new row takes the column default for whatever the proposal does not carry
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(f), ', '),
               pg_catalog.string_agg(CASE WHEN f = ANY (content) THEN 'r.' || pg_catalog.quote_ident(f)
                                          ELSE pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE t.%I END', f, f, f) END, ', '),
               pg_catalog.string_agg(pg_catalog.format('CASE WHEN c.new_value ? %L THEN r.%I ELSE %s END', f, f,
                   coalesce((SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attribute a
                             JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                             WHERE a.attrelid = tbl AND a.attname = f), 'NULL')), ', ')
        INTO set_cols, set_vals, ins_vals
        FROM pg_catalog.unnest(content || extra) f;
        -- @plpgsql_check_options: security_warnings = false
        -- (the statements below are built from a regclass, catalog column names and defaults, and constant text)
        EXECUTE pg_catalog.format(
            'WITH u AS (UPDATE %1$s t SET (%2$s, analysis_run_id) = (SELECT %3$s, c.analysis_run_id '
            '                FROM pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r) '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''update'' AND %4$s '
            '           RETURNING c.id) '
            'SELECT pg_catalog.array_agg(u.id) FROM u', tbl, set_cols, set_vals, same)
            INTO done USING todo, kind, deal, matched;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- a removal is a soft delete, by the code soft_delete() uses: each its own batch, the run
        -- named; the targets are locked first, then marked (a statement of its own, so no
        -- query runs a distributed UPDATE from inside another on Citus)
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(x.id ORDER BY x.created_at, x.id), pg_catalog.array_agg(x.entity_id ORDER BY x.created_at, x.id), '
            '       pg_catalog.array_agg(pg_catalog.format(''removed by analysis run %%s'', x.run_number) ORDER BY x.created_at, x.id) '
            'FROM (SELECT c.id, c.entity_id, run.run_number, c.created_at '
            '      FROM pg_catalog.unnest($1) c JOIN deal_store.analysis_runs run ON run.deal_id = $3 AND run.id = c.analysis_run_id '
            '      JOIN %1$s t ON %2$s '
            '      WHERE c.entity_type = $2 AND c.change_type = ''delete'' FOR UPDATE OF t) x', tbl, same)
            INTO done, targets, reasons USING todo, kind, deal, matched;
        IF done IS NOT NULL THEN
            PERFORM deal_store._mark_deleted(tbl, 'row', pg_catalog.array_fill(deal, ARRAY[pg_catalog.cardinality(targets)]),
                                             targets, reasons, NULL);
            applied := applied || done;
        END IF;
        EXECUTE pg_catalog.format(
            'WITH x AS (SELECT c.id AS change_id, pg_catalog.gen_random_uuid() AS new_id, c.* '
            '           FROM pg_catalog.unnest($1) c WHERE c.entity_type = $2 AND c.change_type = ''new''), '
            'i AS (INSERT INTO %1$s (id, deal_id, legacy_id, analysis_run_id, %2$s) '
            '      SELECT c.new_id, c.deal_id, c.legacy_entity_id, c.analysis_run_id, %3$s '
            '      FROM x c, pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r '
            '      ON CONFLICT (deal_id, legacy_id) WHERE %4$s DO NOTHING RETURNING id) '
            'SELECT pg_catalog.array_agg(x.change_id) FROM x JOIN i ON i.id = x.new_id',
            tbl, set_cols, ins_vals, replace(live, 't.', ''))
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- of the updates and deletes not applied, those whose target is still there: it moved
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(c.id) FROM pg_catalog.unnest($1) c JOIN %s t ON t.deal_id = $4 AND t.id = c.entity_id AND %s '
            'WHERE c.entity_type = $2 AND c.change_type <> ''new'' AND c.id <> ALL ($3)', tbl, live)
            INTO done USING todo, kind, applied, deal;
        moved := moved || coalesce(done, ARRAY[]::uuid[]);
    END LOOP;
    -- the decisions, each reason worded here once
    UPDATE deal_store.pending_changes p
    SET status = CASE WHEN x.ok THEN 'accepted' ELSE 'conflict' END,
        decided_by = actor, decided_at = pg_catalog.now(),
        review_note = coalesce(note || ' / ' || x.why, note, x.why)
    FROM (SELECT c.id, c.id = ANY (applied) AS ok, CASE
              WHEN c.id = ANY (applied) THEN NULL
              WHEN c.change_type = 'new' THEN 'a live row with this legacy_id exists'
              WHEN c.id = ANY (moved) THEN 'the target changed since the proposal'
              ELSE 'the target is gone or deleted' END AS why
          FROM pg_catalog.unnest(todo) c) x
    WHERE p.deal_id = deal AND p.id = x.id;
END $$;

-- facts by a call of their own, then findings and gaps (Citus)
CREATE OR REPLACE FUNCTION deal_store.diff_runs(run_a uuid, run_b uuid)
RETURNS TABLE(entity_type text, legacy_id text, change text, changed_fields text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    b record;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_a, 'read');
    PERFORM deal_store._id_in_one_deal('deal_store.analysis_runs', run_b, 'read');
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO a FROM deal_store.analysis_runs r WHERE r.id = run_a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_a USING ERRCODE = 'P0002';
    END IF;
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO b FROM deal_store.analysis_runs r WHERE r.id = run_b;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_b USING ERRCODE = 'P0002';
    ELSIF a.deal_id <> b.deal_id THEN
        RAISE EXCEPTION 'analysis runs % and % belong to different deals', run_a, run_b USING ERRCODE = '22023';
    END IF;
    -- facts first, by a call of their own (on Citus the query below runs on the deal's
    -- shard, where a function that queries the deal tables cannot run); 'fact' sorts
    -- before 'finding' and 'gap', so the rows come in the order of (entity_type, legacy_id)
    RETURN QUERY
    SELECT 'fact'::text, c.legacy_id, c.change, c.changed_fields
    FROM deal_store._fact_changes(a.deal_id, a.at, b.at) c WHERE c.change <> 'unchanged'
    ORDER BY 2;
    RETURN QUERY
    -- findings and gaps keep no versions: their state then is their lifetime, their
    -- changes between the two moments are in the log
    SELECT t.entity_type,
           coalesce(x.legacy_id, ''),
           CASE WHEN x.existed_a AND NOT x.existed_b THEN 'delete' WHEN x.existed_b AND NOT x.existed_a THEN 'new' ELSE 'update' END,
           CASE WHEN x.existed_a AND x.existed_b THEN f.fields END
    FROM (VALUES ('finding'), ('gap')) t(entity_type)
    CROSS JOIN LATERAL (
        SELECT g.id, g.legacy_id,
               g.created_at <= a.at AND (g.deleted_at IS NULL OR a.at < g.deleted_at) AS existed_a,
               g.created_at <= b.at AND (g.deleted_at IS NULL OR b.at < g.deleted_at) AS existed_b
        FROM deal_store.findings g WHERE t.entity_type = 'finding' AND g.deal_id = a.deal_id
        UNION ALL
        SELECT g.id, g.legacy_id,
               g.created_at <= a.at AND (g.deleted_at IS NULL OR a.at < g.deleted_at),
               g.created_at <= b.at AND (g.deleted_at IS NULL OR b.at < g.deleted_at)
        FROM deal_store.gaps g WHERE t.entity_type = 'gap' AND g.deal_id = a.deal_id) x
    -- the content fields the log shows changed between the two moments (NULL: none)
    CROSS JOIN LATERAL (
        SELECT pg_catalog.array_agg(DISTINCT k ORDER BY k) AS fields
        FROM deal_store.deal_activity_log l, pg_catalog.jsonb_object_keys(l.details) k
        WHERE l.deal_id = a.deal_id AND l.entity_id = x.id AND l.action = 'update'
          AND l.created_at > least(a.at, b.at) AND l.created_at <= greatest(a.at, b.at)
          AND k = ANY (deal_store.content_fields(t.entity_type))) f
    WHERE (x.existed_a OR x.existed_b) AND (x.existed_a <> x.existed_b OR f.fields IS NOT NULL)
    ORDER BY 1, 2;
END $$;
ALTER FUNCTION deal_store.diff_runs(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the unseen entries and the reviewer's right as values first (Citus)
CREATE OR REPLACE FUNCTION deal_store.changes_since_seen(deal_id uuid)
RETURNS TABLE(entity_type text, change text, changes bigint, items jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unseen deal_store.deal_activity_log[];
    reviews boolean;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    -- values first: on Citus the query below runs on the deal's shard, where a
    -- function that queries the deal tables cannot run
    unseen := ARRAY(SELECT x FROM deal_store._unseen(changes_since_seen.deal_id) x
                    WHERE x.entity_type IN ('fact', 'finding', 'gap') AND x.entity_id IS NOT NULL);
    reviews := deal_store.sees_all_deals() OR changes_since_seen.deal_id = ANY (deal_store.my_deals('reviewer'));
    RETURN QUERY
    WITH u AS MATERIALIZED (
        SELECT x.* FROM pg_catalog.unnest(unseen) x
    ), fields AS (
        SELECT x.entity_id, pg_catalog.array_agg(DISTINCT k ORDER BY k) AS fields
        FROM u x, pg_catalog.jsonb_object_keys(x.details) k
        WHERE x.action = 'update'
          -- bookkeeping, not what a reader calls a change
          AND k <> ALL (ARRAY['previous_version_id', 'analysis_run_id', 'created_by', 'updated_by', 'updated_at',
                              'item_checksum', 'search_vector', 'deleted_at', 'deleted_by', 'delete_reason', 'delete_batch'])
        GROUP BY x.entity_id
    ), per AS (
        -- one row per fact, finding or gap touched since the mark
        SELECT x.entity_type, x.entity_id,
               bool_or(x.action = 'insert') AS inserted,
               (pg_catalog.array_agg(x.action ORDER BY x.seq DESC)
                    FILTER (WHERE x.action IN ('soft_delete', 'restore', 'purge')))[1] AS last_state
        FROM u x
        GROUP BY x.entity_type, x.entity_id
    ), classified AS (
        SELECT p.entity_type, p.entity_id, f.fields,
               CASE WHEN p.last_state IN ('soft_delete', 'purge') THEN 'removed'
                    WHEN p.inserted THEN 'new'
                    WHEN p.last_state = 'restore' THEN 'restored'
                    ELSE 'changed' END AS change,
               coalesce((SELECT f.legacy_id FROM deal_store.facts f WHERE p.entity_type = 'fact' AND f.deal_id = changes_since_seen.deal_id AND f.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.findings g WHERE p.entity_type = 'finding' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.gaps g WHERE p.entity_type = 'gap' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id)) AS legacy_id
        FROM per p LEFT JOIN fields f ON f.entity_id = p.entity_id
    )
    SELECT c.entity_type, c.change, count(*),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', c.entity_id, 'legacy_id', c.legacy_id)
                                || CASE WHEN c.change = 'changed' THEN pg_catalog.jsonb_build_object('changed_fields', c.fields)
                                        ELSE '{}' END
                                ORDER BY c.legacy_id, c.entity_id)
    FROM classified c
    GROUP BY c.entity_type, c.change
    UNION ALL
    -- what waits for this user's review (reviewers and leads)
    SELECT 'pending_change', 'waiting_for_review', count(*),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', p.id, 'entity_type', p.entity_type, 'legacy_id', p.legacy_entity_id,
                                                              'change_type', p.change_type, 'tier', p.confidence_tier)
                                ORDER BY p.created_at, p.id)
    FROM deal_store.pending_changes p
    WHERE p.deal_id = changes_since_seen.deal_id AND p.status = 'pending' AND reviews
    HAVING count(*) > 0
    ORDER BY 1, 2;
END $$;
ALTER FUNCTION deal_store.changes_since_seen(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- mark_seen: the deal's last entry and the snapshot that read it in one statement, on the deal's node; one row of values, no parameter in the ON CONFLICT (Citus)
CREATE OR REPLACE FUNCTION deal_store.mark_seen(deal_id uuid) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    actor uuid := deal_store.current_actor();
    at timestamptz := now();
    snap pg_catalog.pg_snapshot;
    last_seq bigint;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF actor IS NULL THEN
        RAISE EXCEPTION 'mark_seen needs an actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or name the user with deal_store.set_actor.';
    END IF;
    -- the deal's last entry and the snapshot that read it, in one statement: what
    -- the snapshot has not seen stays unseen. On Citus the statement runs on the
    -- deal's node, whose transaction ids the deal's entries carry. Then one row of
    -- values and no parameter in the ON CONFLICT (Citus sends the INSERT to a worker)
    SELECT pg_catalog.pg_current_snapshot(), coalesce(max(l.seq), 0) INTO snap, last_seq
    FROM deal_store.deal_activity_log l WHERE l.deal_id = mark_seen.deal_id;
    INSERT INTO deal_store.seen_marks AS m (deal_id, user_id, seen_seq, seen_txid, seen_snapshot, seen_at)
    VALUES (mark_seen.deal_id, actor, last_seq, pg_catalog.pg_snapshot_xmin(snap)::text::bigint, snap, at)
    ON CONFLICT ON CONSTRAINT seen_marks_pkey
    DO UPDATE SET seen_seq = excluded.seen_seq, seen_txid = excluded.seen_txid, seen_snapshot = excluded.seen_snapshot,
                  seen_at = excluded.seen_at;
    RETURN at;
END $$;
ALTER FUNCTION deal_store.mark_seen(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- document_changes: the run numbers as a value first (Citus)
CREATE OR REPLACE FUNCTION deal_store.document_changes(document_id uuid)
RETURNS TABLE(legacy_id text, change text, changed_fields text[], item_then text, item_now text, run_number integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doc record;
    since timestamptz;
    runs jsonb;
BEGIN
    PERFORM deal_store._id_in_one_deal('deal_store.documents', document_id, 'read');
    SELECT d.deal_id, d.id INTO doc FROM deal_store.documents d WHERE d.id = document_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'document % does not exist', document_id USING ERRCODE = 'P0002';
    END IF;
    SELECT min(n.uploaded_at) INTO since FROM deal_store.documents n WHERE n.deal_id = doc.deal_id AND n.supersedes_id = doc.id;
    IF since IS NULL THEN
        RAISE EXCEPTION 'document % has no newer version', document_id USING ERRCODE = '55000',
            HINT = 'deal_store.add_document_version adds one.';
    END IF;
    -- the deal's run numbers as a value first: the query below then reads no deal table
    -- (on Citus a query that does runs on the deal's shard, where _fact_changes cannot)
    SELECT pg_catalog.jsonb_object_agg(r.id, r.run_number) INTO runs FROM deal_store.analysis_runs r WHERE r.deal_id = doc.deal_id;
    RETURN QUERY
    SELECT c.legacy_id, c.change, c.changed_fields, c.content_then ->> 'item', c.content_now ->> 'item',
           CASE WHEN c.change = 'update' THEN (runs ->> c.analysis_run_id::text)::integer END
    FROM deal_store._fact_changes(doc.deal_id, since, now()) c
    WHERE c.change <> 'new' AND c.source_then = doc.id
    ORDER BY c.legacy_id;
END $$;
ALTER FUNCTION deal_store.document_changes(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the extension's settings are set inside a call of their own, so that Citus
-- passes them on to the workers also when a client calls a function on its own
CREATE FUNCTION deal_store._set_local(setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- @plpgsql_check_options: security_warnings = false
    -- (the name is one of four constants, the value is quote_literal'ed)
    IF setting IS NULL OR setting <> ALL (ARRAY['deal_store.actor', 'deal_store.reason', 'deal_store.hard_delete', 'deal_store.audit_purge']) THEN
        RAISE EXCEPTION 'deal_store._set_local sets deal_store.actor, reason, hard_delete or audit_purge, not %', setting
            USING ERRCODE = '22023';
    END IF;
    EXECUTE pg_catalog.format('SET LOCAL %s = %L', setting, coalesce(value, ''));
END $$;
COMMENT ON FUNCTION deal_store._set_local(text, text) IS
    'Internal: SET LOCAL of one of deal_store''s settings (actor, reason, hard_delete, audit_purge; 22023 for another), run inside a call so that Citus passes it on to the workers. Runs as the caller: the superuser-only settings stay superuser-only.';
REVOKE ALL ON FUNCTION deal_store._set_local(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._set_local(text, text) TO deal_store_reader;
-- set_actor: was LANGUAGE sql with set_config
CREATE OR REPLACE FUNCTION deal_store.set_actor(user_id uuid) RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- SET LOCAL rather than set_config: Citus passes SET LOCAL on to the nodes the transaction uses
    PERFORM deal_store._set_local('deal_store.actor', user_id::text);
    RETURN deal_store.current_actor();
END $$;

-- an entry without a deal: NULL, or on Citus the nil uuid (the log's distribution column)
CREATE FUNCTION deal_store."_no_deal"() RETURNS uuid
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'no_deal_wrapper';
COMMENT ON FUNCTION deal_store._no_deal() IS
    'Internal: the deal_id of a log entry without a deal: NULL, or the nil uuid when Citus distributes the log (no NULL in a distribution column).';
REVOKE ALL ON FUNCTION deal_store._no_deal() FROM PUBLIC;
CREATE OR REPLACE FUNCTION deal_store.purge_audit(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM deal_store._require_right(NULL, 'administer');
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    PERFORM deal_store._set_local('deal_store.audit_purge', 'on');
    DELETE FROM deal_store.deal_activity_log l WHERE l.created_at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM deal_store._set_local('deal_store.audit_purge', 'off');
    INSERT INTO deal_store.deal_activity_log (deal_id, user_id, action, entity_type, reason, details)
    VALUES (deal_store._no_deal(), deal_store.current_actor(), 'purge_audit', 'deal_activity_log',
            nullif(current_setting('deal_store.reason', true), ''),
            jsonb_build_object('older_than', older_than::text, 'rows', n));
    RETURN n;
END $$;
ALTER FUNCTION deal_store.purge_audit(interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.soft_delete(entity regclass, id uuid, reason text DEFAULT NULL, deal_id uuid DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := current_setting('deal_store.reason', true);
    r record;
    batch uuid := gen_random_uuid();
    total integer := 0;
    n integer;
    t record;
BEGIN
    r := deal_store._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END,
                              soft_delete.deal_id);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    PERFORM deal_store._set_local('deal_store.reason', coalesce(reason, prev_reason));
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN SELECT entity AS tbl, 'row' AS scope UNION ALL SELECT * FROM deal_store._owned(entity) LOOP
        SELECT count(*) INTO n FROM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[r.deal_id], ARRAY[id], ARRAY[reason], batch);
        total := total + n;
    END LOOP;
    PERFORM deal_store._set_local('deal_store.reason', prev_reason);
    RETURN total;
END $$;
ALTER FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.purge(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer;
BEGIN
    r := deal_store._lock_row(entity, id, 'administer', NULL);
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION 'cannot purge % row %: it is not deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Soft-delete it first with deal_store.soft_delete.';
    END IF;
    PERFORM deal_store._set_local('deal_store.hard_delete', 'on');
    IF entity = 'deal_store.deals'::regclass THEN
        DELETE FROM deal_store.deals d WHERE d.id = r.deal_id;
    ELSIF entity = 'deal_store.facts'::regclass THEN
        -- the fact and every history row of its version chain
        WITH RECURSIVE chain(vid) AS (
            SELECT purge.id
            UNION ALL
            SELECT f.previous_version_id FROM chain c
            JOIN deal_store.facts f ON f.deal_id = r.deal_id AND f.id = c.vid
            WHERE f.previous_version_id IS NOT NULL
        )
        DELETE FROM deal_store.facts f USING chain c WHERE f.deal_id = r.deal_id AND f.id = c.vid;
    ELSE
        EXECUTE format('DELETE FROM %s WHERE deal_id = $1 AND id = $2', entity) USING r.deal_id, id;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM deal_store._set_local('deal_store.hard_delete', 'off');
    RETURN n;
END $$;
ALTER FUNCTION deal_store.purge(regclass, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.soft_delete_by_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity regclass := deal_store._table_of(TG_RELID)::regclass;   -- on Citus TG_RELID is a shard
    -- the five tables differ in their columns: read the row by name
    r jsonb := to_jsonb(NEW);
    deal uuid := (r ->> CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END)::uuid;
    prev_reason text := current_setting('deal_store.reason', true);
    t record;
BEGIN
    IF r ->> 'superseded_at' IS NOT NULL THEN
        RETURN NULL;   -- a fact's history row is never deleted on its own: it goes with its fact's purge
    END IF;
    PERFORM deal_store._require_right(deal, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    NEW.deleted_at := now();
    NEW.deleted_by := deal_store.current_actor();
    NEW.delete_batch := gen_random_uuid();
    NEW.delete_reason := coalesce(NEW.delete_reason, nullif(prev_reason, ''), 'UPDATE statement');
    PERFORM deal_store._set_local('deal_store.reason', NEW.delete_reason);
    FOR t IN SELECT * FROM deal_store._owned(entity) LOOP
        PERFORM deal_store._mark_deleted(t.tbl, t.scope, ARRAY[deal], ARRAY[NEW.id], ARRAY[NEW.delete_reason], NEW.delete_batch);
    END LOOP;
    PERFORM deal_store._set_local('deal_store.reason', prev_reason);
    RETURN NEW;
END $$;

-- import_deal: on Citus, its reads of every shard and its write of a new owner over one connection per node
CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior jsonb;
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
    tbl regclass;
    ids uuid[];
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    prior := deal_store._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF deal_store._distributed() THEN
        -- the checks below read every shard at once; on Citus a write to a reference
        -- table (a new owner in users) must then use the same one connection per node
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    -- (table by table, each a lookup of the export's ids: on Citus a query per table, no join)
    FOR taken_in, tbl IN SELECT * FROM (VALUES ('documents', 'deal_store.documents'::regclass), ('analysis_runs', 'deal_store.analysis_runs'::regclass),
                                               ('facts', 'deal_store.facts'::regclass), ('deleted_facts', 'deal_store.facts'::regclass),
                                               ('fact_history', 'deal_store.facts'::regclass), ('findings', 'deal_store.findings'::regclass),
                                               ('gaps', 'deal_store.gaps'::regclass), ('fact_finding_links', 'deal_store.fact_finding_links'::regclass)) v LOOP
        ids := ARRAY(SELECT (e ->> 'id')::uuid FROM jsonb_array_elements(coalesce(doc -> taken_in, '[]')) e);
        EXECUTE format('SELECT x.id::text FROM %s x WHERE x.id = ANY ($1) ORDER BY array_position($1, x.id) LIMIT 1', tbl)
            INTO taken USING ids;
        EXIT WHEN taken IS NOT NULL;
    END LOOP;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner: an existing user with the export's e-mail, else a new user with
    -- no password and the default roles (never credentials or roles from the document)
    SELECT u.id INTO owner FROM deal_store.users u WHERE lower(u.email) = lower(doc -> 'owner' ->> 'email');
    IF owner IS NULL AND jsonb_typeof(doc -> 'owner') = 'object' THEN
        INSERT INTO deal_store.users (id, email, display_name)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM deal_store.users u WHERE u.id = o.id) THEN gen_random_uuid() ELSE o.id END,
               o.email, o.display_name
        FROM jsonb_to_record(doc -> 'owner') AS o(id uuid, email text, display_name text)
        RETURNING id INTO owner;
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- a conflict's note names the table, not the shard (Citus)
CREATE OR REPLACE FUNCTION deal_store._apply(deal_ids uuid[], ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reason text := pg_catalog.current_setting('deal_store.reason', true);
    -- not a change's fault: a deadlock or serialization failure (the caller retries),
    -- resources, a privilege, a bug
    not_the_change constant text[] := ARRAY['40', '42', '53', '57', '58', 'XX'];
    state text;
    problem text;
    deal uuid;
    mine uuid[];
    actor uuid := deal_store.current_actor();
BEGIN
    PERFORM deal_store._set_local('deal_store.reason', coalesce(note, prev_reason));
    -- deal by deal: a deal's changes are one set (on Citus: one shard's work)
    FOR deal, mine IN SELECT x.deal_id, pg_catalog.array_agg(x.id ORDER BY x.n)
                      FROM ROWS FROM (pg_catalog.unnest(deal_ids), pg_catalog.unnest(ids)) WITH ORDINALITY x(deal_id, id, n)
                      GROUP BY x.deal_id ORDER BY pg_catalog.min(x.n) LOOP
        BEGIN
            PERFORM deal_store._apply_set(deal, mine, note);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
                RAISE;
            END IF;
            -- some change broke the set: apply each alone, so only what fails is refused
            FOR i IN 1 .. pg_catalog.cardinality(mine) LOOP
                BEGIN
                    PERFORM deal_store._apply_set(deal, ARRAY[mine[i]], note);
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, problem = MESSAGE_TEXT;
                    IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
                        RAISE;
                    END IF;
                    UPDATE deal_store.pending_changes p
                    SET status = 'conflict', decided_by = actor, decided_at = pg_catalog.now(),
                        review_note = pg_catalog.concat_ws(' / ', note, pg_catalog.format('cannot apply: %s (SQLSTATE %s)', deal_store._unsharded(problem), state))
                    WHERE p.deal_id = deal AND p.id = mine[i] AND p.status IN ('pending', 'deferred');
                END;
            END LOOP;
        END;
    END LOOP;
    PERFORM deal_store._set_local('deal_store.reason', prev_reason);
END $$;

-- the actor as a value, not a call inside the query (Citus)
CREATE OR REPLACE FUNCTION deal_store._unseen(deal_id uuid) RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- a value, not a call inside the query (Citus would make the call on a shard)
    actor uuid := deal_store.current_actor();
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    RETURN QUERY
    SELECT l.* FROM deal_store.deal_activity_log l
    WHERE l.deal_id = _unseen.deal_id
      AND l.seq > coalesce((SELECT m.seen_seq FROM deal_store.seen_marks m
                            WHERE m.deal_id = _unseen.deal_id AND m.user_id = actor), 0)
    UNION ALL
    SELECT l.* FROM deal_store.seen_marks m
    JOIN deal_store.deal_activity_log l ON l.txid >= m.seen_txid AND l.seq <= m.seen_seq AND l.deal_id = m.deal_id
    WHERE m.deal_id = _unseen.deal_id AND m.user_id = actor
      AND NOT pg_catalog.pg_visible_in_snapshot(l.txid::text::xid8, m.seen_snapshot);
END $$;

-- the deals first, then each one's unseen count, in PL/pgSQL (Citus)
CREATE FUNCTION deal_store._deals_for_user(owner uuid, with_archived boolean)
RETURNS TABLE(id uuid, user_id uuid, name text, target_name text, deal_type text, status text,
              created_at timestamptz, updated_at timestamptz, unseen bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    all_deals boolean := deal_store.sees_all_deals();
    mine uuid[] := deal_store.my_deals('viewer');
    d record;
BEGIN
    -- the deals first, then each one's unseen entries by a lookup that names the
    -- deal (on Citus a call per row of the query over deals would run on a shard)
    FOR d IN SELECT x.id, x.user_id, x.name, x.target_name, x.deal_type, x.status, x.created_at, x.updated_at
             FROM deal_store.deals x
             WHERE x.user_id = owner AND x.deleted_at IS NULL AND (all_deals OR x.id = ANY (mine))
               AND (x.status <> 'archived' OR coalesce(with_archived, false))
             ORDER BY x.updated_at DESC, x.id LOOP
        RETURN QUERY SELECT d.id, d.user_id, d.name, d.target_name, d.deal_type, d.status, d.created_at, d.updated_at,
                            (SELECT count(*) FROM deal_store._unseen(d.id));
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store._deals_for_user(uuid, boolean) IS
    'Internal: the body of deals_for_user, in PL/pgSQL (Citus cannot plan an SQL function''s parameters).';

REVOKE ALL ON FUNCTION deal_store._deals_for_user(uuid, boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION deal_store.deals_for_user(user_id uuid, include_archived boolean DEFAULT false)
RETURNS TABLE(id uuid, user_id uuid, name text, target_name text, deal_type text, status text,
              created_at timestamptz, updated_at timestamptz, unseen bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM deal_store._deals_for_user(deals_for_user.user_id, deals_for_user.include_archived);
END;
ALTER FUNCTION deal_store.deals_for_user(uuid, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;


-- ---------------------------------------------------------------------------
-- Names no caller can hijack; who and when are the server's; history rows never change.

-- updated_at is kept by server_columns now (with every other who / when column)
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT c.relname::text FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
             WHERE g.tgname = 'touch_updated_at' AND c.relnamespace = 'deal_store'::pg_catalog.regnamespace LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER touch_updated_at ON deal_store.%I', t);
    END LOOP;
END $$;
DROP FUNCTION deal_store.touch_updated_at();

CREATE FUNCTION deal_store."_server_columns"() RETURNS TABLE (
	"table_name" TEXT,
	"column_name" TEXT,
	"kind" TEXT,
	"moment" TEXT
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'server_columns_sql_wrapper';
CREATE FUNCTION deal_store."server_columns"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'server_columns_wrapper';
REVOKE ALL ON FUNCTION deal_store._server_columns(), deal_store.server_columns() FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store._set_local(setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- @plpgsql_check_options: security_warnings = false
    -- (the name is one of four constants, the value is quote_literal'ed)
    IF setting IS NULL OR setting <> ALL (ARRAY['deal_store.actor', 'deal_store.reason', 'deal_store.hard_delete', 'deal_store.audit_purge',
                                               'deal_store.importing_history']) THEN
        RAISE EXCEPTION 'deal_store._set_local sets deal_store.actor, reason, hard_delete, audit_purge or importing_history, not %', setting
            USING ERRCODE = '22023';
    END IF;
    EXECUTE pg_catalog.format('SET LOCAL %s = %L', setting, coalesce(value, ''));
END $$;
COMMENT ON FUNCTION deal_store._set_local(text, text) IS
    'Internal: SET LOCAL of one of deal_store''s settings (actor, reason, hard_delete, audit_purge, importing_history; 22023 for another), run inside a call so that Citus passes it on to the workers. Runs as the caller: the superuser-only settings stay superuser-only.';

CREATE OR REPLACE FUNCTION deal_store._insert_rows(tbl regclass, rows jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    -- the export's own records (who, when): kept as they are (see src/records.rs)
    PERFORM deal_store._set_local('deal_store.importing_history', 'on');
    -- @plpgsql_check_options: security_warnings = false
    -- (cols is quote_ident of the table's own column names; tbl a regclass)
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_recordset(NULL::%s, $1)', tbl, cols, cols, tbl)
        USING coalesce(rows, '[]');
    PERFORM deal_store._set_local('deal_store.importing_history', 'off');
END $$;
COMMENT ON FUNCTION deal_store._insert_rows(regclass, jsonb) IS 'Internal: inserts a jsonb array of rows into a table (stored columns only) for import_deal, keeping the export''s who and when columns (deal_store.importing_history, superuser-only: import_deal runs as the owner).';

-- The eligible changes process_queue leaves behind (the caller's deals).
CREATE FUNCTION deal_store._queue_remaining(max_tier integer) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM deal_store.pending_changes p
    WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
      AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
      AND ((SELECT deal_store.sees_all_deals()) OR p.deal_id = ANY ((SELECT deal_store.my_deals('reviewer'))::uuid[]))
$$;
COMMENT ON FUNCTION deal_store._queue_remaining(integer) IS
    'Internal: the pending (and due deferred) changes up to max_tier in the caller''s deals that no batch took: process_queue''s remaining.';

REVOKE ALL ON FUNCTION deal_store._queue_remaining(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._queue_remaining(integer) TO deal_store_reviewer;

CREATE OR REPLACE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    INOUT batches integer DEFAULT NULL, INOUT applied bigint DEFAULT NULL,
    INOUT conflicts bigint DEFAULT NULL, INOUT remaining bigint DEFAULT NULL)
-- no SET search_path: a procedure with one cannot COMMIT. Every operator,
-- function and type below is schema-qualified instead (see deal_store._unpinned()).
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    batches := 0;
    applied := 0;
    conflicts := 0;
    LOOP
        b := deal_store.process_queue_batch(batch_size, max_tier);
        COMMIT;
        EXIT WHEN b.claimed OPERATOR(pg_catalog.=) 0;
        batches := batches OPERATOR(pg_catalog.+) 1;
        applied := applied OPERATOR(pg_catalog.+) b.applied;
        conflicts := conflicts OPERATOR(pg_catalog.+) b.conflicts;
        RAISE NOTICE 'process_queue: batch %: % applied, % conflicts (so far % applied, % conflicts)',
            batches, b.applied, b.conflicts, applied, conflicts;
        EXIT WHEN b.claimed OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    -- what another call would find now: eligible changes that other workers hold
    -- or that were proposed meanwhile
    remaining := deal_store._queue_remaining(max_tier);
END $$;

-- Names no caller can hijack: every routine of the extension is parsed and run
-- under search_path = pg_catalog, pg_temp. Routines written in SQL or PL/pgSQL
-- get it as a SET clause (the loop below gives it to any that lacks one, so a
-- routine added later cannot be forgotten); the Rust library's routines run
-- their SQL through one module that pins the same path (src/spi.rs, enforced by
-- clippy); SQL routines with a standard body (BEGIN ATOMIC / RETURN) were parsed
-- when they were created. What remains is the one list below.
CREATE FUNCTION deal_store._unpinned() RETURNS TABLE(routine regprocedure, why text)
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT 'deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint)'::pg_catalog.regprocedure,
           'a procedure that COMMITs cannot have a SET clause: every name in it is schema-qualified';
END;
COMMENT ON FUNCTION deal_store._unpinned() IS
    'Internal: the routines of deal_store that run without SET search_path = pg_catalog, pg_temp besides the Rust library''s own (which pin the path inside) and SQL-standard bodies (parsed at creation), and why: the one list the catalog test allows.';
REVOKE ALL ON FUNCTION deal_store._unpinned() FROM PUBLIC;

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'deal_store'::pg_catalog.regnamespace
               AND l.lanname OPERATOR(pg_catalog.<>) 'c' AND p.prosqlbody IS NULL
               AND NOT coalesce(p.proconfig, '{}') OPERATOR(pg_catalog.@>) '{"search_path=pg_catalog, pg_temp"}'::pg_catalog.text[]
               AND p.oid OPERATOR(pg_catalog.<>) ALL (SELECT u.routine FROM deal_store._unpinned() u) LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET search_path = pg_catalog, pg_temp', f.fn);
    END LOOP;
END $$;

-- The server owns its records: who and when (src/records.rs classifies the
-- columns). Every table with such a column gets the trigger, but the log, which
-- only the server writes.
COMMENT ON FUNCTION deal_store.server_columns() IS
    'Trigger (BEFORE INSERT OR UPDATE on every table with *_by or *_at columns): who columns are the actor, when columns the server clock; a caller''s own value is replaced. Creation columns are set once, updated_at / updated_by when the row changes, act columns (deleted_at, decided_by, resolved_at, read_at, ...) when they get a value. See deal_store._server_columns().';
COMMENT ON FUNCTION deal_store._server_columns() IS
    'The columns the server writes itself (who: *_by, when: *_at), per table, with their moment: creation, touch, act or versioning (superseded_at, written by the fact versioning only).';
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT DISTINCT s.table_name FROM deal_store._server_columns() s
             WHERE s.table_name OPERATOR(pg_catalog.<>) 'deal_activity_log' ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER server_columns BEFORE INSERT OR UPDATE ON deal_store.%I
                                   FOR EACH ROW EXECUTE FUNCTION deal_store.server_columns()', t);
    END LOOP;
END $$;

-- Headlines escape stored text; the search query is bounded; the queue's wake-up carries nothing;
-- the Citus preparation refuses where Citus is absent.

CREATE FUNCTION deal_store._escaped(doc text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(doc, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;');
COMMENT ON FUNCTION deal_store._escaped(text) IS 'Internal: text with & < > " HTML-escaped: what a headline shows of stored text.';

CREATE FUNCTION deal_store._headline(cfg regconfig, doc text, query tsquery, opts text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.ts_headline(cfg, deal_store._escaped(doc), query, opts);
COMMENT ON FUNCTION deal_store._headline(regconfig, text, tsquery, text) IS
    'Internal: ts_headline of the HTML-escaped text (& < > " escaped), so a headline holds no markup but the highlight markers.';

REVOKE ALL ON FUNCTION deal_store._escaped(text), deal_store._headline(regconfig, text, tsquery, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store.search_facts(deal_id uuid, query text, domain text DEFAULT NULL, category text DEFAULT NULL,
    entity text DEFAULT NULL, min_confidence float8 DEFAULT NULL, lim integer DEFAULT 20, off integer DEFAULT 0)
RETURNS SETOF deal_store.fact_search_hit
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    vec text;
    opts text := deal_store.headline_options();
    trgm text := (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e
                  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm');
    filters text := ' AND f.deal_id = $1 AND f.deleted_at IS NULL AND f.superseded_at IS NULL'
                    ' AND ($3 IS NULL OR f.domain = $3) AND ($4 IS NULL OR f.category = $4)'
                    ' AND ($5 IS NULL OR f.entity = $5) AND ($6 IS NULL OR f.confidence_score >= $6)';
    page text := ' ORDER BY rank DESC, f.legacy_id, f.id LIMIT $7 OFFSET $8';
    typo text;
    tsq_found boolean := false;
    -- the ranked page: %1$s the vector, %2$s the filters, %3$s the page, %4$s added to the rank;
    -- the headline is computed for the returned rows only
    ranked text := 'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item, f.evidence,
                                      (deal_store.search_rank(%1$s, $2) + %4$s)::real AS rank, count(*) OVER () AS total
                               FROM deal_store.facts f WHERE %1$s @@ $2 %2$s %3$s)
                    SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank,
                           CASE WHEN m.evidence IS NULL OR to_tsvector($9, m.item) @@ $2 THEN deal_store._headline($9, m.item, $2, $10)
                                ELSE deal_store._headline($9, m.evidence, $2, $10) END, m.total
                    FROM m ORDER BY m.rank DESC, m.legacy_id, m.id';
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF off IS NULL OR off < 0 THEN
        RAISE EXCEPTION 'off must not be negative' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    ELSIF length(query) > 1000 THEN
        -- pg_trgm's word similarity does not check for cancels: its cost grows with the
        -- query times the item, so the query is bounded (every path then stops in time)
        RAISE EXCEPTION 'a search query has at most 1000 characters, this one has %', length(query) USING ERRCODE = '22023',
            HINT = 'Search for the distinctive words of what you are looking for.';
    END IF;
    -- the stored vector is built with english; another configuration computes it on the fly
    vec := CASE WHEN cfg = 'english'::regconfig THEN 'f.search_vector'
                ELSE format('deal_store.fact_search_vector(%L, f.item, f.category, f.domain, f.evidence, f.details)', cfg) END;
    tsq := deal_store.search_tsquery(query, cfg);
    -- 1. full-text match: rank in (0, 1)
    IF numnode(tsq) > 0 THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '0')
            USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
        IF FOUND THEN
            RETURN;
        END IF;
        -- an empty page past the end of a non-empty result is not a reason to go fuzzy
        IF off > 0 THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM deal_store.facts f WHERE %s @@ $2 %s)', vec, filters)
                INTO STRICT tsq_found USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category,
                     search_facts.entity, min_confidence;
            IF tsq_found THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- 2. trigram fallback (pg_trgm word similarity): rank = similarity - 1, so <= 0
    -- @plpgsql_check_options: security_warnings = false
    -- (the EXECUTEd texts are constants of this function; trgm is quote_ident of pg_trgm's schema)
    RETURN QUERY EXECUTE format(
        'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item,
                           (%1$s.word_similarity($2::text, f.item) - 1)::real AS rank, count(*) OVER () AS total
                    FROM deal_store.facts f WHERE $2::text OPERATOR(%1$s.<%%) f.item %2$s %3$s)
         SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank, deal_store._escaped(m.item), m.total
         FROM m ORDER BY m.rank DESC, m.legacy_id, m.id', trgm, filters, page)
        USING search_facts.deal_id, btrim(query), search_facts.domain, search_facts.category, search_facts.entity,
              min_confidence, lim, off;
    IF FOUND THEN
        RETURN;
    END IF;
    -- 3. typo fallback: the deal's lexemes within a small edit distance; rank = ts_rank_cd - 1
    typo := deal_store.typo_tsquery(search_facts.deal_id, query, cfg::text);
    IF typo IS NOT NULL THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '-1')
            USING search_facts.deal_id, typo::tsquery, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.search_facts(uuid, text, text, text, text, double precision, integer, integer) IS
    'Ranked search over a deal''s current live facts. query: web-search syntax ("quoted phrase", or, -excluded), the last word also matching as a prefix. Filters: domain, category, entity, min_confidence. Ordered by rank then legacy_id and id (stable pages); total = all matches. headline marks the matched words (tags deal_store.headline_start / headline_stop) in the item, or in the evidence when the item has none, the stored text HTML-escaped so the markers are its only tags. rank in (0, 1): full-text match (ts_rank_cd normalised to rank/(rank+1)); rank <= 0: fallback (trigram word similarity - 1, or the typo-tolerant match''s rank - 1). NULL or blank query: no rows. 22023 for lim outside 1..1000, negative off or a query over 1000 characters.';

ALTER FUNCTION deal_store.search_facts(uuid, text, text, text, text, float8, integer, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store.search_deal(deal_id uuid, query text, lim integer DEFAULT 20)
RETURNS TABLE(entity_type text, entity_id uuid, title text, rank real, headline text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    opts text := deal_store.headline_options();
    fact_ids uuid[];
    fact_titles text[];
    fact_ranks real[];
    fact_headlines text[];
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    tsq := deal_store.search_tsquery(query, cfg);
    IF numnode(tsq) = 0 THEN
        RETURN;
    END IF;
    -- the facts' hits first, in a statement of their own: on Citus the query below runs
    -- on the deal's shard, where search_facts (a query of its own) cannot be called
    SELECT array_agg(s.fact_id), array_agg(s.item), array_agg(s.rank), array_agg(s.headline)
    INTO fact_ids, fact_titles, fact_ranks, fact_headlines
    FROM deal_store.search_facts(search_deal.deal_id, query, lim => search_deal.lim) s WHERE s.rank > 0;
    RETURN QUERY
    WITH hits AS (
        SELECT 'fact'::text AS kind, f.id, f.title, f.rank, f.headline
        FROM ROWS FROM (unnest(fact_ids), unnest(fact_titles), unnest(fact_ranks), unnest(fact_headlines)) f(id, title, rank, headline)
        UNION ALL
        SELECT 'finding', g.id, g.title, ts_rank_cd(v.vec, tsq, 32)::real,
               deal_store._headline(cfg, g.title || coalesce(': ' || g.description, ''), tsq, opts)
        FROM deal_store.findings g,
             LATERAL (SELECT setweight(to_tsvector(cfg, g.title), 'A') || setweight(to_tsvector(cfg, coalesce(g.description, '')), 'C') AS vec) v
        WHERE g.deal_id = search_deal.deal_id AND g.deleted_at IS NULL AND v.vec @@ tsq
        UNION ALL
        SELECT 'gap', x.id, x.description, ts_rank_cd(v.vec, tsq, 32)::real, deal_store._headline(cfg, x.description, tsq, opts)
        FROM deal_store.gaps x,
             LATERAL (SELECT setweight(to_tsvector(cfg, x.description), 'A') AS vec) v
        WHERE x.deal_id = search_deal.deal_id AND x.deleted_at IS NULL AND v.vec @@ tsq)
    SELECT h.kind, h.id, h.title, h.rank, h.headline FROM hits h
    ORDER BY h.rank DESC, h.kind, h.title, h.id
    LIMIT lim;
END $$;
COMMENT ON FUNCTION deal_store.search_deal(uuid, text, integer) IS
    'One ranked list over a deal''s live facts (item, category, evidence, details), findings (title, description) and gaps (description), with highlighted headlines. Same query syntax as search_facts; 22023 for lim outside 1..1000.';

ALTER FUNCTION deal_store.search_deal(uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store._signal_review(deal_id uuid, run_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    counts jsonb;
    waiting bigint;
    owner uuid;
    run_number integer;
BEGIN
    PERFORM deal_store._require_deal(deal_id, 'write');
    SELECT count(*), jsonb_build_object('tier_1', count(*) FILTER (WHERE p.confidence_tier = 1),
                                        'tier_2', count(*) FILTER (WHERE p.confidence_tier = 2),
                                        'tier_3', count(*) FILTER (WHERE p.confidence_tier = 3))
    INTO waiting, counts
    FROM deal_store.pending_changes p
    WHERE p.deal_id = _signal_review.deal_id AND p.analysis_run_id = run_id AND p.status = 'pending';
    IF waiting = 0 THEN
        RETURN;
    END IF;
    SELECT d.user_id INTO owner FROM deal_store.deals d WHERE d.id = _signal_review.deal_id;
    SELECT r.run_number INTO run_number FROM deal_store.analysis_runs r WHERE r.deal_id = _signal_review.deal_id AND r.id = run_id;
    -- one notification per deal owner per run, kept up to date
    UPDATE deal_store.notifications n SET payload = jsonb_build_object('run_id', run_id, 'pending', waiting) || counts,
        title = format('%s changes of analysis run %s wait for review', waiting, run_number)
    WHERE n.user_id = owner AND n.deal_id = _signal_review.deal_id AND n.type = 'review_needed'
      AND n.payload ->> 'run_id' = run_id::text;
    IF NOT FOUND THEN
        INSERT INTO deal_store.notifications (user_id, deal_id, type, title, message, payload)
        VALUES (owner, _signal_review.deal_id, 'review_needed',
                format('%s changes of analysis run %s wait for review', waiting, run_number),
                'Review them with deal_store.accept_change / reject_change / defer_change or accept_changes.',
                jsonb_build_object('run_id', run_id, 'pending', waiting) || counts);
    END IF;
    -- NOTIFY is delivered when the transaction commits, and not at all when it rolls back;
    -- any connected role may LISTEN, so the wake-up carries nothing: the listener reads
    -- what it may see (its notifications, conflicts(), the queue) through its own rights
    PERFORM pg_notify('deal_store_queue', '');
END $$;
COMMENT ON FUNCTION deal_store._signal_review(uuid, uuid) IS
    'Internal: when changes of a run wait for review, keeps one review_needed notification for the deal owner per run and sends an empty pg_notify(''deal_store_queue'', '''') on commit (any role may LISTEN: the details are in the notification, which only its user reads).';

CREATE OR REPLACE FUNCTION deal_store._distribute_prepare() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'deal_store._distribute_prepare is for a Citus cluster, and Citus is not installed in this database'
            USING ERRCODE = '0A000', HINT = 'On plain PostgreSQL there is nothing to prepare; on Citus, call deal_store.distribute() on the coordinator.';
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
    PERFORM deal_store._create_policies(true);
END $$;
COMMENT ON FUNCTION deal_store._distribute_prepare() IS
    'Internal, deal_store.distribute() on every node: drops the foreign keys, the primary keys of deal_activity_log and notifications and the unique live deal name, and writes the row-level security policies in their Citus form.';

-- The importer owns what it imports; readers see the users they share a deal with.

CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior jsonb;
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
    tbl regclass;
    ids uuid[];
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    prior := deal_store._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF deal_store._distributed() THEN
        -- the checks below read every shard at once; on Citus a write to a reference
        -- table (a new owner in users) must then use the same one connection per node
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    -- (table by table, each a lookup of the export's ids: on Citus a query per table, no join)
    FOR taken_in, tbl IN SELECT * FROM (VALUES ('documents', 'deal_store.documents'::regclass), ('analysis_runs', 'deal_store.analysis_runs'::regclass),
                                               ('facts', 'deal_store.facts'::regclass), ('deleted_facts', 'deal_store.facts'::regclass),
                                               ('fact_history', 'deal_store.facts'::regclass), ('findings', 'deal_store.findings'::regclass),
                                               ('gaps', 'deal_store.gaps'::regclass), ('fact_finding_links', 'deal_store.fact_finding_links'::regclass)) v LOOP
        ids := ARRAY(SELECT (e ->> 'id')::uuid FROM jsonb_array_elements(coalesce(doc -> taken_in, '[]')) e);
        EXECUTE format('SELECT x.id::text FROM %s x WHERE x.id = ANY ($1) ORDER BY array_position($1, x.id) LIMIT 1', tbl)
            INTO taken USING ids;
        EXIT WHEN taken IS NOT NULL;
    END LOOP;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner is the importer: its actor (an admin names any existing user with
    -- set_actor). Never a user taken or made from the document: an e-mail in it
    -- names nobody here, and a deal planted in another user's list would be theirs
    owner := deal_store.current_actor();
    IF owner IS NULL THEN
        RAISE EXCEPTION 'import_deal needs an actor: the importer owns the deal it imports' USING ERRCODE = '42501',
            HINT = 'Link the login role to its user (users.db_role), or name the user with deal_store.set_actor (an admin may name any existing user).';
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb, text) IS
    'Loads a deal from export_deal''s jsonb, keeping the ids of its rows. The importer (its actor; an admin names any existing user with set_actor) owns it and leads it; the export''s owner is not looked up or created (42501 without an actor). 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import. With an idempotency_key, a repeated call returns the first call''s deal and imports nothing.';

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION deal_store._create_policies(on_citus boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    -- %1$I the deal column, %2$L the deal role it needs
    member text := CASE WHEN on_citus THEN 'deal_store._may(tableoid, %1$I, %2$L)'
                   ELSE '%1$I = ANY ((SELECT deal_store.my_deals(%2$L))::uuid[]) OR (SELECT deal_store.sees_all_deals())' END;
    -- %1$I the user column: the row is the actor's own
    own text := CASE WHEN on_citus THEN 'deal_store._acts_as(tableoid, %1$I)'
                ELSE '(SELECT deal_store.sees_all_deals()) OR %1$I = (SELECT deal_store.current_actor())' END;
    also text;
BEGIN
    -- @plpgsql_check_options: security_warnings = false
    -- (the statements are built from constant text and quote_ident'ed catalog names only)
    FOR t IN SELECT tablename, policyname FROM pg_catalog.pg_policies WHERE schemaname = 'deal_store' LOOP
        EXECUTE format('DROP POLICY %I ON deal_store.%I', t.policyname, t.tablename);
    END LOOP;
    FOR t IN SELECT * FROM (VALUES
        -- table, its deal column, the deal role that may change rows, who else reads a row
        ('deals',              'id',      'lead',     'owner'),
        ('documents',          'deal_id', 'analyst',  NULL),
        ('analysis_runs',      'deal_id', 'analyst',  NULL),
        ('facts',              'deal_id', 'analyst',  NULL),
        ('findings',           'deal_id', 'analyst',  NULL),
        ('fact_finding_links', 'deal_id', 'analyst',  NULL),
        ('gaps',               'deal_id', 'analyst',  NULL),
        ('pending_changes',    'deal_id', 'reviewer', NULL),
        ('deal_members',       'deal_id', 'lead',     NULL),
        ('tier_policies',      'deal_id', 'lead',     'everyone, for the global rules'),
        ('deal_activity_log',  'deal_id', NULL,       NULL)) AS x(tbl, col, writer, reads)
    LOOP
        also := CASE t.reads
            WHEN 'owner' THEN CASE WHEN on_citus THEN ' OR ' || format(own, 'user_id')
                                   ELSE ' OR user_id = (SELECT deal_store.current_actor())' END
            WHEN 'everyone, for the global rules' THEN ' OR deal_id IS NULL'
            ELSE '' END;
        EXECUTE format('ALTER TABLE deal_store.%I ENABLE ROW LEVEL SECURITY', t.tbl);
        EXECUTE format('CREATE POLICY members_read ON deal_store.%I FOR SELECT USING (%s%s)',
            t.tbl, format(member, t.col, 'viewer'), also);
        -- one policy per command, so a read is checked against the read rule alone
        IF t.writer IS NOT NULL THEN
            EXECUTE format('CREATE POLICY members_insert ON deal_store.%I FOR INSERT WITH CHECK (%s)',
                t.tbl, format(member, t.col, t.writer));
            EXECUTE format('CREATE POLICY members_update ON deal_store.%I FOR UPDATE USING (%s)',
                t.tbl, format(member, t.col, t.writer));
            EXECUTE format('CREATE POLICY members_delete ON deal_store.%I FOR DELETE USING (%s)',
                t.tbl, format(member, t.col, t.writer));
        END IF;
    END LOOP;
    -- A deal's owner creates it: a user may insert deals it owns.
    EXECUTE format('CREATE POLICY owner_creates ON deal_store.deals FOR INSERT WITH CHECK (%s)', format(own, 'user_id'));
    -- Notifications: each user their own.
    ALTER TABLE deal_store.notifications ENABLE ROW LEVEL SECURITY;
    EXECUTE format('CREATE POLICY own ON deal_store.notifications FOR ALL USING (%s)', format(own, 'user_id'));
    -- Users: each sees itself and the members of the deals it sees (on Citus, which
    -- allows no subquery in a policy: itself); admins see and change every user.
    ALTER TABLE deal_store.users ENABLE ROW LEVEL SECURITY;
    EXECUTE format('CREATE POLICY shared_deals ON deal_store.users FOR SELECT USING (%s%s)', format(own, 'id'),
        CASE WHEN on_citus THEN ''
             ELSE ' OR id = ANY (ARRAY(SELECT m.user_id FROM deal_store.deal_members m
                                      WHERE m.deal_id = ANY ((SELECT deal_store.my_deals(''viewer''))::uuid[])))' END);
    CREATE POLICY admins_write ON deal_store.users FOR ALL USING ((SELECT deal_store.sees_all_deals()))
        WITH CHECK ((SELECT deal_store.sees_all_deals()));
END $$;
COMMENT ON FUNCTION deal_store._create_policies(boolean) IS
    'Internal: (re)creates every row-level security policy of deal_store (users: a reader sees itself and the members of its deals): with subqueries evaluated once per statement (PostgreSQL), or, on_citus, with deal_store._may / _acts_as per row (Citus allows no subquery in a policy on a distributed table).';

SELECT deal_store._create_policies(deal_store._distributed());

-- Idempotency keys and feed consumer names are per caller role.

ALTER TABLE deal_store.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, key);

ALTER TABLE deal_store.feed_consumers DROP CONSTRAINT feed_consumers_pkey,
    ADD CONSTRAINT feed_consumers_pkey PRIMARY KEY (owner_role, name);

CREATE OR REPLACE FUNCTION deal_store._idempotent(key text, function_name text, arguments jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    digest text := md5(arguments::text);
    me name := deal_store._caller_role();
    k deal_store.idempotency_keys;
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    ELSIF length(key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'idempotency_key must have 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    -- the first call claims the key; a concurrent one waits here for it to end
    INSERT INTO deal_store.idempotency_keys AS i (key, function_name, caller, arguments)
    VALUES (_idempotent.key, _idempotent.function_name, me, digest)
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO STRICT k FROM deal_store.idempotency_keys i WHERE i.caller = me AND i.key = _idempotent.key;
    IF k.function_name <> _idempotent.function_name OR k.arguments <> digest THEN
        RAISE EXCEPTION 'idempotency key "%" was used for another call', key USING ERRCODE = '22023',
            DETAIL = format('It was used for %s with other arguments.', k.function_name),
            HINT = 'Use a new key for a new call.';
    END IF;
    RETURN coalesce(k.result, 'null');
END $$;
COMMENT ON FUNCTION deal_store._idempotent(text, text, jsonb) IS
    'Internal: NULL when the call should run (no key, or the key is new for the caller''s role: it is claimed for this call); else the result the first call with this key recorded. 22023 when the role used the key for another function or arguments.';

CREATE OR REPLACE FUNCTION deal_store._remember(key text, result jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE deal_store.idempotency_keys i SET result = _remember.result
    WHERE i.caller = deal_store._caller_role() AND i.key = _remember.key;
END;
COMMENT ON FUNCTION deal_store._remember(text, jsonb) IS
    'Internal: records the result of the call that claimed the key (nothing when key is NULL).';

CREATE OR REPLACE FUNCTION deal_store._consumer(name text) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'consumer must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- names are the caller's own: another role's consumer of the same name is not
    -- this one (an admin reaches any, its own first)
    SELECT * INTO c FROM deal_store.feed_consumers f
    WHERE f.name = _consumer.name AND (f.owner_role = deal_store._caller_role() OR deal_store.sees_all_deals())
    ORDER BY f.owner_role = deal_store._caller_role() DESC, f.owner_role LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no feed consumer named "%"', name USING ERRCODE = 'P0002',
            HINT = 'Register it with deal_store.register_consumer.';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store._consumer(text) IS
    'Internal: the caller''s consumer of that name (names are per role; an admin reaches any role''s, its own first), locked; P0002 when there is none.';

CREATE OR REPLACE FUNCTION deal_store.register_consumer(name text, from_start boolean DEFAULT false) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    PERFORM deal_store._require_feed_reader();
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22004';
    ELSIF name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid consumer name "%"', name USING ERRCODE = '22023',
            HINT = 'Use 1 to 63 letters, digits, _ . : or -.';
    END IF;
    -- from now: the transactions that have finished are behind the cursor, on every node
    INSERT INTO deal_store.feed_consumers AS f (name, owner_role, cursor_txid, cursor_seq)
    SELECT register_consumer.name, deal_store._caller_role(),
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE ARRAY(SELECT x - 1 FROM unnest(h.h) WITH ORDINALITY x(x, i) ORDER BY i) END,
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE array_fill(9223372036854775807, ARRAY[cardinality(h.h)]) END
    FROM (SELECT deal_store._horizons(false) AS h) h
    ON CONFLICT ON CONSTRAINT feed_consumers_pkey DO NOTHING
    RETURNING f.* INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you have a feed consumer named "%" already', name USING ERRCODE = '23505',
            HINT = 'Read with it, or remove it first with deal_store.remove_consumer.';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store.register_consumer(text, boolean) IS
    'Registers a change-feed consumer owned by the caller''s role (names are per role: another role''s consumer of the same name is another consumer). It receives every log entry of the transactions that had not finished when it registered (on Citus: on each node), and of all later ones (from_start: every entry in the log). 23505 when the caller''s role has a consumer of that name, 22023 for a bad name (1 to 63 of A-Z a-z 0-9 _ . : -).';

CREATE OR REPLACE FUNCTION deal_store.read_changes(consumer text, max_rows integer DEFAULT 1000)
RETURNS TABLE(seq bigint, txid bigint, created_at timestamptz, deal_id uuid, user_id uuid, action text,
              entity_type text, entity_id uuid, entity_key jsonb, analysis_run_id uuid, reason text, details jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    horizons bigint[];
    everything boolean;
    deals uuid[];
    nodes integer;
    node_txid bigint;
    node_seq bigint;
    horizon bigint;
    todo integer;
    got bigint;
    -- where the read ends on each node if it takes all the node has below its horizon
    marks_txid bigint[];
    marks_seq bigint[];
BEGIN
    c := deal_store._consumer(consumer);
    PERFORM deal_store._require_feed_reader();
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    horizons := deal_store._horizons(true);
    nodes := greatest(cardinality(horizons), cardinality(c.cursor_txid));
    marks_txid := c.cursor_txid;
    marks_seq := c.cursor_seq;
    todo := max_rows;
    -- node by node, each in (txid, seq) order, until max_rows
    FOR node IN 0 .. nodes - 1 LOOP
        EXIT WHEN todo = 0;
        node_txid := coalesce(marks_txid[node + 1], 0);
        node_seq := coalesce(marks_seq[node + 1], 0);
        horizon := coalesce(horizons[node + 1], 9223372036854775807);   -- no such node any more: all final
        IF (horizon - 1, 9223372036854775807) > (node_txid, node_seq) THEN
            marks_txid[node + 1] := horizon - 1;
            marks_seq[node + 1] := 9223372036854775807;
        END IF;
        RETURN QUERY
        WITH batch AS MATERIALIZED (
            SELECT l.* FROM deal_store.deal_activity_log l
            WHERE deal_store._log_node(l.seq) = node
              AND (l.txid, l.seq) > (node_txid, node_seq) AND l.txid < horizon
              AND (everything OR l.deal_id = ANY (deals))
            ORDER BY l.txid, l.seq
            LIMIT todo
        ), last AS (
            SELECT b.txid, b.seq, (SELECT count(*) FROM batch) AS n FROM batch b ORDER BY b.txid DESC, b.seq DESC LIMIT 1
        ), mark AS (
            -- where an ack of the whole read moves the cursors: on this node past
            -- the horizon when the read took all there is below it (entries of
            -- other deals included), at its last entry otherwise; on the nodes
            -- before, past their horizons; on the nodes after, where they were
            UPDATE deal_store.feed_consumers f
            SET (read_txid, read_seq) = (
                    SELECT array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.txid ELSE coalesce(marks_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.seq ELSE coalesce(marks_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i LEFT JOIN last x ON true),
                read_at = pg_catalog.now()
            WHERE f.owner_role = c.owner_role AND f.name = c.name
            RETURNING 1
        )
        SELECT b.seq, b.txid, b.created_at, b.deal_id, b.user_id, b.action, b.entity_type, b.entity_id,
               b.entity_key, b.analysis_run_id, b.reason, b.details
        FROM batch b ORDER BY b.seq;
        GET DIAGNOSTICS got = ROW_COUNT;
        todo := todo - got;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.read_changes(text, integer) IS
    'The next at most max_rows (1 to 100000) log entries after the consumer''s cursor, in the deals the caller may see, in seq order. Gap-free: an entry is delivered only when every transaction that could precede it has committed or aborted (its txid is below the snapshot''s xmin; on Citus, that of the node that wrote it), so no entry is skipped whatever the commit order, and none of an aborted transaction appears. Reading does not move the cursor: ack_changes does, and what is not acknowledged is read again, in the same order (at least once).';

CREATE OR REPLACE FUNCTION deal_store.ack_changes(consumer text, up_to bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    everything boolean;
    deals uuid[];
    nodes integer;
    stop record;
    n bigint := 0;
BEGIN
    c := deal_store._consumer(consumer);
    IF up_to IS NULL THEN
        RAISE EXCEPTION 'up_to must not be NULL' USING ERRCODE = '22004';
    ELSIF c.read_txid IS NULL THEN
        RAISE EXCEPTION 'feed consumer "%" has nothing read to acknowledge', consumer USING ERRCODE = '55000',
            HINT = 'Call deal_store.read_changes first.';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    nodes := cardinality(c.read_txid);
    -- the last read's entries in delivery order, node by node; the first one above
    -- up_to stays unacknowledged, and the cursors stop before it. One query per
    -- node: that entry if there is one, else any entry with the node's count
    FOR node IN 0 .. nodes - 1 LOOP
        SELECT r.open, r.before_txid, r.before_seq, r.n, r.total INTO stop FROM (
            SELECT l.txid, l.seq, l.seq > up_to AS open,
                   pg_catalog.lag(l.txid) OVER w AS before_txid, pg_catalog.lag(l.seq) OVER w AS before_seq,
                   pg_catalog.row_number() OVER w - 1 AS n, pg_catalog.count(*) OVER () AS total
            FROM (SELECT l.txid, l.seq FROM deal_store.deal_activity_log l
                  WHERE deal_store._log_node(l.seq) = node
                    AND (l.txid, l.seq) > (coalesce(c.cursor_txid[node + 1], 0), coalesce(c.cursor_seq[node + 1], 0))
                    AND (l.txid, l.seq) <= (c.read_txid[node + 1], c.read_seq[node + 1])
                    AND (everything OR l.deal_id = ANY (deals))) l
            WINDOW w AS (ORDER BY l.txid, l.seq)) r
        ORDER BY r.open DESC, r.txid, r.seq LIMIT 1;
        IF stop.open THEN
            UPDATE deal_store.feed_consumers f
            SET (cursor_txid, cursor_seq) = (
                    SELECT array_agg(CASE WHEN i < node + 1 THEN c.read_txid[i] WHEN i = node + 1 THEN coalesce(stop.before_txid, c.cursor_txid[i], 0)
                                          ELSE coalesce(c.cursor_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i < node + 1 THEN c.read_seq[i] WHEN i = node + 1 THEN coalesce(stop.before_seq, c.cursor_seq[i], 0)
                                          ELSE coalesce(c.cursor_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i),
                acked_at = pg_catalog.now()
            WHERE f.owner_role = c.owner_role AND f.name = c.name AND (node > 0 OR stop.before_txid IS NOT NULL);
            RETURN n + stop.n;
        END IF;
        n := n + coalesce(stop.total, 0);
    END LOOP;
    UPDATE deal_store.feed_consumers f
    SET cursor_txid = c.read_txid, cursor_seq = c.read_seq, read_txid = NULL, read_seq = NULL, acked_at = pg_catalog.now()
    WHERE f.owner_role = c.owner_role AND f.name = c.name;
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.ack_changes(text, bigint) IS
    'Acknowledges the entries of the consumer''s last read_changes whose seq is at most up_to and returns how many; the cursor moves in delivery order, so it stops before the first entry of the read above up_to, and what follows comes back on the next read (at least once). Acknowledging all of a read moves the cursor past it (and past the entries of deals the caller does not see). 55000 when nothing was read since the last full acknowledgement.';

CREATE OR REPLACE FUNCTION deal_store.consumers()
RETURNS TABLE(name text, owner_role name, registered_at timestamptz, read_at timestamptz, acked_at timestamptz,
              lag bigint, oldest_unacked_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f deal_store.feed_consumers;
BEGIN
    FOR f IN SELECT * FROM deal_store.feed_consumers x
             WHERE x.owner_role = deal_store._caller_role() OR deal_store.sees_all_deals() ORDER BY x.name, x.owner_role LOOP
        -- a query per consumer, its cursors as values (on Citus it runs on every shard)
        SELECT f.name, f.owner_role, f.registered_at, f.read_at, f.acked_at, count(*), min(l.created_at)
        INTO name, owner_role, registered_at, read_at, acked_at, lag, oldest_unacked_at
        FROM deal_store.deal_activity_log l
        WHERE (l.txid, l.seq) > (coalesce(f.cursor_txid[deal_store._log_node(l.seq) + 1], 0),
                                 coalesce(f.cursor_seq[deal_store._log_node(l.seq) + 1], 0));
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.consumers() IS
    'The caller''s change-feed consumers (an admin''s: all) with their lag: the log entries after the cursor (of every deal; a consumer reads those of its deals) and the time of the oldest.';

CREATE OR REPLACE FUNCTION deal_store.remove_consumer(name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers := deal_store._consumer(name);
BEGIN
    DELETE FROM deal_store.feed_consumers f WHERE f.owner_role = c.owner_role AND f.name = c.name;
END $$;
COMMENT ON FUNCTION deal_store.remove_consumer(text) IS
    'Removes a change-feed consumer (its owner''s role or an admin). P0002 when there is none.';

ALTER FUNCTION deal_store.register_consumer(text, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION deal_store.read_changes(text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION deal_store.ack_changes(text, bigint) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION deal_store.consumers() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION deal_store.remove_consumer(text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- What a DBA does by habit loses nothing: a superuser's COPY FROM is a restore;
-- DROP EXTENSION is refused while deals exist. An id of another deal is no row here;
-- notifications stay out of the deal's log; an analyst's import is the analyst's, now.

CREATE FUNCTION deal_store."_restoring"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'restoring_sql_wrapper';
REVOKE ALL ON FUNCTION deal_store._restoring() FROM PUBLIC;

CREATE OR REPLACE FUNCTION deal_store.owner_is_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF deal_store._restoring() THEN
        RETURN NULL;   -- a restore brings the team back as it was
    END IF;
    INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
    VALUES (NEW.id, NEW.user_id, 'lead', deal_store.current_actor())
    ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store.owner_is_lead() IS
    'Trigger (AFTER INSERT on deals): makes the deal''s owner a lead of it (not during a restore: the team is restored as it was).';

ALTER FUNCTION deal_store.owner_is_lead() SECURITY DEFINER;

-- What a DBA does by habit loses nothing (src/operations.rs): a superuser's
-- COPY FROM is a restore (deal_store._restoring()), and DROP EXTENSION is
-- refused while a deal exists.
COMMENT ON FUNCTION deal_store._restoring() IS
    'Internal: true while a superuser restores rows with COPY FROM (pg_restore, a dump replayed by psql): the triggers then take the rows as the dump holds them, without auditing them again.';
CREATE FUNCTION deal_store._guard_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'deal_store_guard_drop';
COMMENT ON FUNCTION deal_store._guard_drop() IS
    'Event trigger function: refuses a DROP that would take deal_store (DROP EXTENSION deal_store, a CASCADE drop of an extension it needs or of a schema holding one, DROP SCHEMA deal_store, DROP OWNED BY its owner) while any deal exists (2BP01), unless a superuser has set deal_store.allow_drop = on.';
REVOKE ALL ON FUNCTION deal_store._guard_drop() FROM PUBLIC;
CREATE EVENT TRIGGER deal_store_guard_drop ON ddl_command_start WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION deal_store._guard_drop();
COMMENT ON EVENT TRIGGER deal_store_guard_drop IS
    'Refuses a DROP that would take deal_store (the extension, its schema, an extension it needs, their owner''s objects) while deals exist: set deal_store.allow_drop = on (superusers) to drop them with it.';

SELECT deal_store.disable_audit('deal_store.notifications');

CREATE OR REPLACE FUNCTION deal_store._id_in_one_deal(tbl regclass, id uuid, needs text) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deals uuid[];
BEGIN
    -- only the deals the caller sees: a row of another deal is no row here, whatever its id
    -- (an id planted in one deal neither blocks nor reveals another deal's row)
    EXECUTE format('SELECT array_agg(DISTINCT deal_id) FROM %s WHERE id = $1 AND ($2 OR deal_id = ANY ($3))', tbl) INTO deals
        USING id, deal_store.sees_all_deals(), deal_store.my_deals('viewer');
    IF cardinality(deals) > 1 THEN
        RAISE EXCEPTION 'id % names rows of % deals in %', id, cardinality(deals), tbl USING ERRCODE = 'P0003',
            HINT = 'Ids are unique per deal only; this database holds the id in more than one deal.';
    ELSIF cardinality(deals) = 1 THEN
        PERFORM deal_store._require_right(deals[1], needs);
    END IF;
    RETURN deals[1];
END $$;
COMMENT ON FUNCTION deal_store._id_in_one_deal(regclass, uuid, text) IS
    'Internal: raises P0003 when an id passed alone names rows of more than one deal (ids are unique per deal only), so no function picks one of them; 42501 unless the caller has the right needs on the row''s deal. Returns that deal (NULL: no row has the id), so the caller''s next lookup names it (on Citus: one shard, where a row lock is possible).';

CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior jsonb;
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
    tbl regclass;
    ids uuid[];
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    prior := deal_store._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF deal_store._distributed() THEN
        -- the checks below read every shard at once; on Citus a write to a reference
        -- table (a new owner in users) must then use the same one connection per node
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- every fact version chain of the export is one: it starts at a fact (current or
    -- deleted), each link names a history row of the export, and every history row
    -- is on exactly one chain (so no chain loops and none is made up on its own)
    IF NOT (WITH RECURSIVE v AS (
                SELECT (e ->> 'id')::uuid AS id, (e ->> 'previous_version_id')::uuid AS prev, k = 'fact_history' AS hist
                FROM unnest(ARRAY['facts', 'deleted_facts', 'fact_history']) k, jsonb_array_elements(coalesce(doc -> k, '[]')) e),
            walk(id, depth) AS (
                SELECT v.prev, 1 FROM v WHERE NOT v.hist AND v.prev IS NOT NULL
                UNION ALL
                SELECT v.prev, w.depth + 1 FROM walk w JOIN v ON v.id = w.id
                WHERE v.prev IS NOT NULL AND w.depth <= (SELECT count(*) FROM v))
            SELECT (SELECT count(*) FROM walk) = (SELECT count(*) FROM v WHERE v.hist)
               AND (SELECT count(DISTINCT w.id) FROM walk w JOIN v ON v.id = w.id AND v.hist) = (SELECT count(*) FROM v WHERE v.hist)) THEN
        RAISE EXCEPTION 'the export''s fact versions do not form chains' USING ERRCODE = '22023',
            DETAIL = 'Each previous_version_id must name a row of fact_history, each of which belongs to exactly one fact''s chain.',
            HINT = 'Pass the jsonb that deal_store.export_deal returned, unchanged.';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    -- (table by table, each a lookup of the export's ids: on Citus a query per table, no join)
    FOR taken_in, tbl IN SELECT * FROM (VALUES ('documents', 'deal_store.documents'::regclass), ('analysis_runs', 'deal_store.analysis_runs'::regclass),
                                               ('facts', 'deal_store.facts'::regclass), ('deleted_facts', 'deal_store.facts'::regclass),
                                               ('fact_history', 'deal_store.facts'::regclass), ('findings', 'deal_store.findings'::regclass),
                                               ('gaps', 'deal_store.gaps'::regclass), ('fact_finding_links', 'deal_store.fact_finding_links'::regclass)) v LOOP
        ids := ARRAY(SELECT (e ->> 'id')::uuid FROM jsonb_array_elements(coalesce(doc -> taken_in, '[]')) e);
        EXECUTE format('SELECT x.id::text FROM %s x WHERE x.id = ANY ($1) ORDER BY array_position($1, x.id) LIMIT 1', tbl)
            INTO taken USING ids;
        EXIT WHEN taken IS NOT NULL;
    END LOOP;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner is the importer: its actor (an admin names any existing user with
    -- set_actor). Never a user taken or made from the document: an e-mail in it
    -- names nobody here, and a deal planted in another user's list would be theirs
    owner := deal_store.current_actor();
    IF owner IS NULL THEN
        RAISE EXCEPTION 'import_deal needs an actor: the importer owns the deal it imports' USING ERRCODE = '42501',
            HINT = 'Link the login role to its user (users.db_role), or name the user with deal_store.set_actor (an admin may name any existing user).';
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb, text) IS
    'Loads a deal from export_deal''s jsonb, keeping the ids of its rows. The importer (its actor; an admin names any existing user with set_actor) owns it and leads it; the export''s owner is not looked up or created (42501 without an actor). An admin''s import keeps the export''s who and when columns; anyone else''s is recorded as written by the importer, now. 22023 when the fact versions do not form chains. 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import. With an idempotency_key, a repeated call returns the first call''s deal and imports nothing.';

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- A restore's COPY switches its own triggers off for its rows, and back at the statement's end.
CREATE FUNCTION deal_store."restored"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'restored_wrapper';
REVOKE ALL ON FUNCTION deal_store.restored() FROM PUBLIC;
COMMENT ON FUNCTION deal_store.restored() IS
    'Trigger (AFTER INSERT per statement, enabled ALWAYS): ends the switch to session_replication_role = replica that a superuser''s restoring COPY made for its own rows.';
DO $$
DECLARE
    t text;
BEGIN
    -- every table a restore loads through deal_store's row triggers: those with server_columns
    FOR t IN SELECT c.relname::text FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid
             WHERE g.tgname OPERATOR(pg_catalog.=) 'server_columns' ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER deal_store_restored AFTER INSERT ON deal_store.%I
                                   FOR EACH STATEMENT EXECUTE FUNCTION deal_store.restored()', t);
        EXECUTE pg_catalog.format('ALTER TABLE deal_store.%I ENABLE ALWAYS TRIGGER deal_store_restored', t);
    END LOOP;
END $$;

-- Which library serves the database, and which catalog version it holds.
CREATE FUNCTION deal_store."version"() RETURNS TABLE (
	"library" TEXT,
	"catalog" TEXT
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'version_wrapper';
COMMENT ON FUNCTION deal_store.version() IS
    'The version of the deal_store library serving this session and of the extension installed in this database (pg_extension.extversion); a WARNING when they differ (run ALTER EXTENSION deal_store UPDATE).';
REVOKE ALL ON FUNCTION deal_store.version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store.version() TO PUBLIC;

-- import_deal: history rows are the export's fact_history and only those.

CREATE OR REPLACE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior jsonb;
    deal uuid;
    owner uuid;
    taken text;
    taken_in text;
    tbl regclass;
    ids uuid[];
BEGIN
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' OR doc ->> 'format' IS DISTINCT FROM 'deal_store.export'
       OR jsonb_typeof(doc -> 'deal') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'not a deal_store export' USING ERRCODE = '22023',
            HINT = 'Pass the jsonb that deal_store.export_deal returned.';
    END IF;
    IF (doc ->> 'format_version') IS DISTINCT FROM '1' THEN
        RAISE EXCEPTION 'unsupported export format_version %', doc ->> 'format_version' USING ERRCODE = '22023';
    END IF;
    -- read through the typed format first: a malformed document fails here, naming
    -- the JSON path of the first bad field, before anything is written
    doc := deal_store._export_format(doc);
    prior := deal_store._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF deal_store._distributed() THEN
        -- the checks below read every shard at once; on Citus a write to a reference
        -- table (a new owner in users) must then use the same one connection per node
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    deal := (doc -> 'deal' ->> 'id')::uuid;
    IF EXISTS (SELECT 1 FROM deal_store.deals x WHERE x.id = deal) THEN
        RAISE EXCEPTION 'deal % already exists', deal USING ERRCODE = '23505',
            HINT = 'import_deal restores a deal into a database that does not hold it; it never merges.';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY['documents', 'analysis_runs', 'facts', 'deleted_facts', 'fact_history',
                                           'findings', 'gaps', 'fact_finding_links']) k,
                    jsonb_array_elements(coalesce(doc -> k, '[]')) e
               WHERE (e ->> 'deal_id')::uuid IS DISTINCT FROM deal) THEN
        RAISE EXCEPTION 'every row of the export must belong to deal %', deal USING ERRCODE = '22023';
    END IF;
    -- every fact version chain of the export is one: it starts at a fact (current or
    -- deleted), each link names a history row of the export, and every history row
    -- is on exactly one chain (so no chain loops and none is made up on its own)
    IF NOT (WITH RECURSIVE v AS (
                SELECT (e ->> 'id')::uuid AS id, (e ->> 'previous_version_id')::uuid AS prev, k = 'fact_history' AS hist,
                       (e ->> 'superseded_at') IS NOT NULL AS superseded
                FROM unnest(ARRAY['facts', 'deleted_facts', 'fact_history']) k, jsonb_array_elements(coalesce(doc -> k, '[]')) e),
            walk(id, depth) AS (
                SELECT v.prev, 1 FROM v WHERE NOT v.hist AND v.prev IS NOT NULL
                UNION ALL
                SELECT v.prev, w.depth + 1 FROM walk w JOIN v ON v.id = w.id
                WHERE v.prev IS NOT NULL AND w.depth <= (SELECT count(*) FROM v))
            SELECT (SELECT count(*) FROM walk) = (SELECT count(*) FROM v WHERE v.hist)
               AND (SELECT count(DISTINCT w.id) FROM walk w JOIN v ON v.id = w.id AND v.hist) = (SELECT count(*) FROM v WHERE v.hist)
               AND NOT EXISTS (SELECT 1 FROM v WHERE v.hist <> v.superseded)) THEN
        RAISE EXCEPTION 'the export''s fact versions do not form chains' USING ERRCODE = '22023',
            DETAIL = 'Each previous_version_id must name a row of fact_history (superseded_at set, as on no current or deleted fact), each of which belongs to exactly one fact''s chain.',
            HINT = 'Pass the jsonb that deal_store.export_deal returned, unchanged.';
    END IF;
    -- ids are unique per deal only, but an id passed alone (soft_delete, restore,
    -- accept_change ...) must name one row: an id already used here is refused
    -- (table by table, each a lookup of the export's ids: on Citus a query per table, no join)
    FOR taken_in, tbl IN SELECT * FROM (VALUES ('documents', 'deal_store.documents'::regclass), ('analysis_runs', 'deal_store.analysis_runs'::regclass),
                                               ('facts', 'deal_store.facts'::regclass), ('deleted_facts', 'deal_store.facts'::regclass),
                                               ('fact_history', 'deal_store.facts'::regclass), ('findings', 'deal_store.findings'::regclass),
                                               ('gaps', 'deal_store.gaps'::regclass), ('fact_finding_links', 'deal_store.fact_finding_links'::regclass)) v LOOP
        ids := ARRAY(SELECT (e ->> 'id')::uuid FROM jsonb_array_elements(coalesce(doc -> taken_in, '[]')) e);
        EXECUTE format('SELECT x.id::text FROM %s x WHERE x.id = ANY ($1) ORDER BY array_position($1, x.id) LIMIT 1', tbl)
            INTO taken USING ids;
        EXIT WHEN taken IS NOT NULL;
    END LOOP;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'id % of the export''s % is already used in this database', taken, taken_in USING ERRCODE = '23505',
            HINT = 'An id must name one row: import a deal only into a database that holds none of its rows.';
    END IF;
    -- the owner is the importer: its actor (an admin names any existing user with
    -- set_actor). Never a user taken or made from the document: an e-mail in it
    -- names nobody here, and a deal planted in another user's list would be theirs
    owner := deal_store.current_actor();
    IF owner IS NULL THEN
        RAISE EXCEPTION 'import_deal needs an actor: the importer owns the deal it imports' USING ERRCODE = '42501',
            HINT = 'Link the login role to its user (users.db_role), or name the user with deal_store.set_actor (an admin may name any existing user).';
    END IF;
    PERFORM deal_store._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb, text) IS
    'Loads a deal from export_deal''s jsonb, keeping the ids of its rows. The importer (its actor; an admin names any existing user with set_actor) owns it and leads it; the export''s owner is not looked up or created (42501 without an actor). An admin''s import keeps the export''s who and when columns; anyone else''s is recorded as written by the importer, now. 22023 when the fact versions do not form chains. 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import. With an idempotency_key, a repeated call returns the first call''s deal and imports nothing.';

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
