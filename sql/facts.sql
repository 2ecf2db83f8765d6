-- Fact checksums, versions, diffs and the JSON export / import.
-- The logic is in Rust (checksum.rs, facts.rs, diff.rs); this file wires it
-- and adds what SQL says best.

COMMENT ON FUNCTION deal_store.current_actor() IS
    'The acting user: the uuid in deal_store.actor, or NULL when it is not set.';
CREATE FUNCTION deal_store.fact_checksum(fact jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN deal_store_internal._content_checksum('fact', fact);
COMMENT ON FUNCTION deal_store.fact_checksum(jsonb) IS
    'MD5 (32 lowercase hex) of the canonical form of a fact''s content: domain, category, item, status, details, evidence, entity, source_page_numbers. Strings trimmed and white space folded, keys sorted at every depth, numbers in one form, NULL = missing. See README "Canonical form". 22023 when not a JSON object.';

CREATE FUNCTION deal_store.fact_canonical(fact jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN deal_store_internal._content_canonical('fact', fact);
COMMENT ON FUNCTION deal_store.fact_canonical(jsonb) IS
    'The canonical text that fact_checksum hashes (md5(fact_canonical(x)) = fact_checksum(x)), for checking another implementation.';

CREATE FUNCTION deal_store.content_checksum_of(entity_type text, row_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN deal_store_internal._content_checksum(entity_type, row_value);
COMMENT ON FUNCTION deal_store.content_checksum_of(text, jsonb) IS
    'Content checksum of a fact, finding or gap given as jsonb (e.g. to_jsonb(row)); for facts it equals fact_checksum. 22023 for another entity type or a non-object.';
COMMENT ON FUNCTION deal_store.content_fields(text) IS
    'The content fields of a fact, finding or gap: what its checksum covers and what changed_fields names.';
COMMENT ON FUNCTION deal_store_internal._content_checksum(text, anyelement) IS
    'Internal: the Rust body of fact_checksum and content_checksum_of (reads the jsonb in place).';
COMMENT ON FUNCTION deal_store_internal._content_canonical(text, anyelement) IS
    'Internal: the Rust body of fact_canonical.';
COMMENT ON FUNCTION deal_store_internal.fact_versions() IS
    'Row trigger on facts: computes item_checksum on every insert and update; an update that changes a current fact''s checksum keeps the id and links previous_version_id to a new id, under which fact_version_rows writes the old content as a history row (superseded_at set) at the end of the statement. Refuses history rows and previous_version_id links written by anything else (42501).';
COMMENT ON FUNCTION deal_store_internal._export_format(anyelement) IS
    'Internal: reads an export document through the typed format_version 1 (Rust structs) and returns what they serialize to; 22023 naming the JSON path of the first bad field. export_deal writes through it and import_deal reads through it.';
COMMENT ON FUNCTION deal_store_internal._diff_facts(uuid, anyelement, text[]) IS
    'Internal: the Rust body of diff_facts; returns the diff as parallel arrays in one row.';

CREATE FUNCTION deal_store.diff_facts(deal_id uuid, incoming jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(legacy_id text, change text, fact_id uuid, old_checksum text, new_checksum text, changed_fields text[])
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT u.legacy_id, u.change, u.fact_id, u.old_checksum, u.new_checksum, string_to_array(u.fields, ',')
    FROM deal_store_internal._diff_facts(deal_id, incoming, domains) d,
         unnest(d.legacy_ids, d.changes, d.fact_ids, d.old_checksums, d.new_checksums, d.changed_fields)
             WITH ORDINALITY AS u(legacy_id, change, fact_id, old_checksum, new_checksum, fields, n)
    ORDER BY u.n;
END;
COMMENT ON FUNCTION deal_store.diff_facts(uuid, jsonb, text[]) IS
    'Diff of incoming facts (JSON array of objects keyed by legacy_id; missing content fields take the column defaults) against the deal''s current live facts: new, update (with changed_fields), unchanged, delete (only inside domains; all when NULL): the merge queue''s change types. 22023 on a non-array, a non-object element, a missing/empty or repeated legacy_id; P0002 when the deal does not exist.';

CREATE TRIGGER fact_versions BEFORE INSERT OR UPDATE ON deal_store.facts
    FOR EACH ROW EXECUTE FUNCTION deal_store_internal.fact_versions();
CREATE TRIGGER fact_version_rows AFTER UPDATE ON deal_store.facts
    REFERENCING OLD TABLE AS old_facts NEW TABLE AS new_facts
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.fact_version_rows();
COMMENT ON FUNCTION deal_store_internal.fact_version_rows() IS
    'Statement trigger on facts: writes the history rows of the versions an UPDATE replaced (the ids fact_versions chose), in one INSERT from the statement''s transition tables.';
COMMENT ON FUNCTION deal_store_internal._import_facts(anyelement) IS
    'Internal: inserts an export''s facts for import_deal, history rows included (the one writer of history rows besides fact_version_rows).';

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

CREATE FUNCTION deal_store.fact_history(fact_id uuid)
RETURNS TABLE(version integer, version_id uuid, is_current boolean, item text, item_checksum text,
              content jsonb, analysis_run_id uuid, run_number integer, written_at timestamptz, superseded_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
BEGIN
    deal := deal_store_internal._id_in_one_deal('deal_store.facts', fact_id, 'read');
    -- every table names the deal: Citus plans the recursive CTE on one shard
    RETURN QUERY
    WITH RECURSIVE chain AS (
        SELECT f.*, 0 AS depth FROM deal_store.facts f
        WHERE f.deal_id = deal AND f.id = fact_history.fact_id AND f.superseded_at IS NULL
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
    -- no current version: no such fact (nothing is returned with the error)
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fact % does not exist', fact_id USING ERRCODE = 'P0002';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.fact_history(uuid) IS
    'A fact''s versions, newest first: version number (1 = oldest), the row holding it, its content and checksum, the run that wrote it, when it was written and when it was superseded. P0002 when the fact does not exist.';

-- ---------------------------------------------------------------------------
-- JSON export / import: a lossless backup of one deal.

-- Inserts jsonb rows into a table: only its stored columns (generated ones are computed).
CREATE FUNCTION deal_store_internal._insert_rows(tbl regclass, rows jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    -- the export's own records (who, when): kept as they are (see src/records.rs)
    PERFORM deal_store_internal._set_local('deal_store.importing_history', 'on');
    -- @plpgsql_check_options: security_warnings = false
    -- (cols is quote_ident of the table's own column names; tbl a regclass)
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_recordset(NULL::%s, $1)', tbl, cols, cols, tbl)
        USING coalesce(rows, '[]');
    PERFORM deal_store_internal._set_local('deal_store.importing_history', 'off');
END $$;
COMMENT ON FUNCTION deal_store_internal._insert_rows(regclass, jsonb) IS 'Internal: inserts a jsonb array of rows into a table (stored columns only) for import_deal, keeping the export''s who and when columns (deal_store.importing_history, superuser-only: import_deal runs as the owner).';

CREATE FUNCTION deal_store.export_deal(deal_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d deal_store.deals;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    SELECT * INTO d FROM deal_store.deals x WHERE x.id = deal_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist', deal_id USING ERRCODE = 'P0002';
    END IF;
    RETURN deal_store_internal._export_format(jsonb_build_object(
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

CREATE FUNCTION deal_store.import_deal(doc jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
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
    doc := deal_store_internal._export_format(doc);
    prior := deal_store_internal._idempotent(idempotency_key, 'import_deal', jsonb_build_array(doc));
    IF prior IS NOT NULL THEN
        RETURN (prior #>> '{}')::uuid;
    END IF;
    IF deal_store_internal._distributed() THEN
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
    PERFORM deal_store_internal._insert_rows('deal_store.deals',
        jsonb_build_array(doc -> 'deal' || coalesce(jsonb_build_object('user_id', owner), '{}')
            || jsonb_build_object('ignore_unknown_keys', coalesce((doc -> 'deal' ->> 'ignore_unknown_keys')::boolean, false))));
    PERFORM deal_store_internal._insert_rows('deal_store.documents', doc -> 'documents');
    PERFORM deal_store_internal._insert_rows('deal_store.analysis_runs', doc -> 'analysis_runs');
    -- the caller leads what it imported (42501 and nothing imported unless it may write)
    IF deal_store.current_actor() IS NOT NULL THEN
        INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
        VALUES (deal, deal_store.current_actor(), 'lead', deal_store.current_actor())
        ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    END IF;
    PERFORM deal_store_internal._require_right(deal, 'manage');
    -- history rows are the export's own versions: restored by the versioning's own writer
    PERFORM deal_store_internal._import_facts(
        coalesce(doc -> 'fact_history', '[]') || coalesce(doc -> 'deleted_facts', '[]') || coalesce(doc -> 'facts', '[]'));
    PERFORM deal_store_internal._insert_rows('deal_store.findings', doc -> 'findings');
    PERFORM deal_store_internal._insert_rows('deal_store.gaps', doc -> 'gaps');
    PERFORM deal_store_internal._insert_rows('deal_store.fact_finding_links', doc -> 'fact_finding_links');
    PERFORM deal_store_internal._remember(idempotency_key, to_jsonb(deal));
    RETURN deal;
END $$;
COMMENT ON FUNCTION deal_store.import_deal(jsonb, text) IS
    'Loads a deal from export_deal''s jsonb, keeping the ids of its rows. The importer (its actor; an admin names any existing user with set_actor) owns it and leads it; the export''s owner is not looked up or created (42501 without an actor). An admin''s import keeps the export''s who and when columns; anyone else''s is recorded as written by the importer, now. 22023 when the fact versions do not form chains. 23505 when the deal or any id of the export already exists here (import never merges); 22023 when doc is not an export; any constraint violation aborts the whole import. With an idempotency_key, a repeated call returns the first call''s deal and imports nothing.';
