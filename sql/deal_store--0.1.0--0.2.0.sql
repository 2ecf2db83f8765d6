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
-- without credentials (issue 14).
CREATE OR REPLACE FUNCTION deal_store.export_deal(deal_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d deal_store.deals;
BEGIN
    SELECT * INTO d FROM deal_store.deals x WHERE x.id = deal_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist', deal_id USING ERRCODE = 'P0002';
    END IF;
    RETURN jsonb_build_object(
        'format', 'deal_store.export',
        'format_version', 1,
        'owner', (SELECT to_jsonb(u) - 'password_hash' - 'roles' FROM deal_store.users u WHERE u.id = d.user_id),
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
        'fact_finding_links', coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.id) FROM deal_store.fact_finding_links x WHERE x.deal_id = d.id), '[]'));
END $$;
COMMENT ON FUNCTION deal_store.export_deal(uuid) IS
    'One deal as jsonb: its owner (without password_hash and roles), the deal, documents, runs, facts (current live ones, so diff_facts(deal, export->''facts'') reconciles), deleted_facts, fact_history (older versions), findings, gaps and links. Soft-deleted rows are included with their deleted_at / delete_batch. P0002 when the deal does not exist.';
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
    PERFORM deal_store._insert_rows('deal_store.facts',
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb) IS
    'Loads a deal from export_deal''s jsonb, keeping every id, so export_deal(import_deal(x)) = x. The owner is the existing user with the export''s e-mail, else a new user with that e-mail, no password and the default roles (credentials and roles in the document are ignored). 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import.';

-- 0.2.0: an id that names rows of more than one deal is an error (P0003), not a pick (issue 14).
CREATE OR REPLACE FUNCTION deal_store._lock_row(entity regclass, id uuid,
    OUT deal_id uuid, OUT deleted_at timestamptz, OUT delete_batch uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current_only text := CASE WHEN entity = 'deal_store.facts'::regclass THEN ' AND superseded_at IS NULL' ELSE '' END;
    deal_col text := CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END;
    matches bigint;
BEGIN
    PERFORM deal_store._soft_deletable(entity);
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = '22004';
    END IF;
    EXECUTE format('SELECT min(%I::text)::uuid, count(*) FROM %s WHERE id = $1%s', deal_col, entity, current_only)
        INTO _lock_row.deal_id, matches USING id;
    IF matches = 0 THEN
        RAISE EXCEPTION '% has no row with id %', entity, id USING ERRCODE = 'P0002';
    ELSIF matches > 1 THEN
        RAISE EXCEPTION 'id % names % rows of %', id, matches, entity USING ERRCODE = 'P0003',
            HINT = 'Ids are unique per deal only; this database holds the id in more than one deal.';
    END IF;
    IF entity <> 'deal_store.deals'::regclass THEN
        PERFORM 1 FROM deal_store.deals d WHERE d.id = _lock_row.deal_id FOR SHARE;
    END IF;
    EXECUTE format('SELECT deleted_at, delete_batch FROM %s WHERE %I = $1 AND id = $2%s FOR UPDATE',
                   entity, deal_col, current_only)
        INTO _lock_row.deleted_at, _lock_row.delete_batch USING _lock_row.deal_id, id;
END $$;
COMMENT ON FUNCTION deal_store._lock_row(regclass, uuid) IS
    'Internal: validates entity and id, locks the row''s deal then the row, and returns deal_id, deleted_at and delete_batch.';
