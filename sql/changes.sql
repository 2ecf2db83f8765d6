-- What changed, for people: "since I last looked" per user and deal, the diff
-- between any two runs of a deal, and what a new version of a document moved.

-- ---------------------------------------------------------------------------
-- Since I last looked. A mark is a position in the log: the entries of the
-- transactions that had finished when the user looked are seen; later ones,
-- and those of transactions still running then, are not (commit order, as the
-- change feed).

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
CREATE FUNCTION deal_store_internal._unseen(deal_id uuid) RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- a value, not a call inside the query (Citus would make the call on a shard)
    actor uuid := deal_store.current_actor();
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
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
COMMENT ON FUNCTION deal_store_internal._unseen(uuid) IS
    'Internal: the deal''s log entries the actor has not seen: after its mark in seq, or of a transaction that may have committed after it looked.';

-- A user's deals with what the caller has not seen in each (replaces the
-- dashboard's first version: the unseen count needs the marks above).
CREATE FUNCTION deal_store_internal._deals_for_user(owner uuid, with_archived boolean)
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
                            (SELECT count(DISTINCT (x.entity_type, x.entity_id)) FROM deal_store_internal._unseen(d.id) x
                             WHERE x.entity_type IN ('fact', 'finding', 'gap') AND x.entity_id IS NOT NULL);
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store_internal._deals_for_user(uuid, boolean) IS
    'Internal: the body of deals_for_user, in PL/pgSQL (Citus cannot plan an SQL function''s parameters).';

CREATE FUNCTION deal_store.deals_for_user(user_id uuid, include_archived boolean DEFAULT false)
RETURNS TABLE(id uuid, user_id uuid, name text, target_name text, deal_type text, status text,
              created_at timestamptz, updated_at timestamptz, unseen bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM deal_store_internal._deals_for_user(deals_for_user.user_id, deals_for_user.include_archived);
END;
COMMENT ON FUNCTION deal_store.deals_for_user(uuid, boolean) IS
    'A user''s live deals that the caller may see, most recently updated first (archived ones only when include_archived), with unseen: the facts, findings and gaps of each deal that changed since the actor last looked (mark_seen; all of them before that), each counted once, as changes_since_seen lists them.';

CREATE FUNCTION deal_store.mark_seen(deal_id uuid) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    actor uuid := deal_store.current_actor();
    at timestamptz := now();
    snap pg_catalog.pg_snapshot;
    last_seq bigint;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
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
COMMENT ON FUNCTION deal_store.mark_seen(uuid) IS
    'Records that the actor has looked at the deal now: changes_since_seen starts from here. 42501 without an actor or read right.';

CREATE FUNCTION deal_store.changes_since_seen(deal_id uuid)
RETURNS TABLE(entity_type text, change text, changes bigint, items jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unseen deal_store.deal_activity_log[];
    reviews boolean;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    -- values first: on Citus the query below runs on the deal's shard, where a
    -- function that queries the deal tables cannot run
    unseen := ARRAY(SELECT x FROM deal_store_internal._unseen(changes_since_seen.deal_id) x
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
               CASE WHEN p.last_state IN ('soft_delete', 'purge') THEN 'delete'
                    WHEN p.inserted THEN 'new'
                    WHEN p.last_state = 'restore' THEN 'restore'
                    ELSE 'update' END AS change,
               coalesce((SELECT f.legacy_id FROM deal_store.facts f WHERE p.entity_type = 'fact' AND f.deal_id = changes_since_seen.deal_id AND f.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.findings g WHERE p.entity_type = 'finding' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id),
                        (SELECT g.legacy_id FROM deal_store.gaps g WHERE p.entity_type = 'gap' AND g.deal_id = changes_since_seen.deal_id AND g.id = p.entity_id)) AS legacy_id
        FROM per p LEFT JOIN fields f ON f.entity_id = p.entity_id
    )
    SELECT c.entity_type, c.change, count(*),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', c.entity_id, 'legacy_id', c.legacy_id)
                                || CASE WHEN c.change = 'update' THEN pg_catalog.jsonb_build_object('changed_fields', c.fields)
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
COMMENT ON FUNCTION deal_store.changes_since_seen(uuid) IS
    'What changed in the deal since the actor last looked (mark_seen; everything when it never did), grouped and counted: facts, findings and gaps by change (new, update with the changed fields, delete, restore: the vocabulary of diff_facts and the merge queue), each with id and legacy_id; and the pending changes waiting for this user''s review (reviewers and leads).';

-- ---------------------------------------------------------------------------
-- A deal's facts as they were at a moment, from the versions stored: a version
-- is current from the end of the one before it (or the fact's creation) until
-- it was superseded, and live until it was deleted.

CREATE FUNCTION deal_store_internal._facts_as_of(deal_id uuid, at timestamptz)
RETURNS TABLE(legacy_id text, version_id uuid, item_checksum text, content jsonb, analysis_run_id uuid, source_document_id uuid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
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
COMMENT ON FUNCTION deal_store_internal._facts_as_of(uuid, timestamptz) IS
    'Internal: the deal''s live facts as they were at a moment (one version per legacy_id), with their content fields.';

-- new / update (with changed fields) / delete from one set of facts to another
CREATE FUNCTION deal_store_internal._fact_changes(deal_id uuid, from_at timestamptz, to_at timestamptz)
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
    FROM deal_store_internal._facts_as_of(_fact_changes.deal_id, _fact_changes.from_at) a
    FULL JOIN deal_store_internal._facts_as_of(_fact_changes.deal_id, _fact_changes.to_at) b ON b.legacy_id = a.legacy_id;
END;
COMMENT ON FUNCTION deal_store_internal._fact_changes(uuid, timestamptz, timestamptz) IS
    'Internal: every fact of the deal at either moment with what happened between them: new, update (changed_fields), delete or unchanged (by content checksum).';

CREATE FUNCTION deal_store.diff_runs(run_a uuid, run_b uuid)
RETURNS TABLE(entity_type text, legacy_id text, change text, changed_fields text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    b record;
    deal_a uuid := deal_store_internal._id_in_one_deal('deal_store.analysis_runs', run_a, 'read');
    deal_b uuid := deal_store_internal._id_in_one_deal('deal_store.analysis_runs', run_b, 'read');
BEGIN
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO a FROM deal_store.analysis_runs r WHERE r.deal_id = deal_a AND r.id = run_a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis run % does not exist', run_a USING ERRCODE = 'P0002';
    END IF;
    SELECT r.deal_id, coalesce(r.completed_at, now()) AS at INTO b FROM deal_store.analysis_runs r WHERE r.deal_id = deal_b AND r.id = run_b;
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
    FROM deal_store_internal._fact_changes(a.deal_id, a.at, b.at) c WHERE c.change <> 'unchanged'
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
    deal uuid := deal_store_internal._id_in_one_deal('deal_store.documents', document_id, 'write');
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
COMMENT ON FUNCTION deal_store.add_document_version(uuid, text, text, text, integer) IS
    'Adds a new version of a document: a new row (version + 1, supersedes_id = the old one, status pending; filename and storage_path as before unless given) and the old one becomes superseded, its facts untouched. Returns the new id. 23505 when the deal has a live document with that file_hash (the same file twice), 55000 when the document is deleted or already superseded.';

CREATE FUNCTION deal_store.document_changes(document_id uuid)
RETURNS TABLE(legacy_id text, change text, changed_fields text[], item_then text, item_now text, run_number integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deal uuid;
    doc record;
    since timestamptz;
    runs jsonb;
BEGIN
    deal := deal_store_internal._id_in_one_deal('deal_store.documents', document_id, 'read');
    SELECT d.deal_id, d.id INTO doc FROM deal_store.documents d WHERE d.deal_id = deal AND d.id = document_id;
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
    FROM deal_store_internal._fact_changes(doc.deal_id, since, now()) c
    WHERE c.change <> 'new' AND c.source_then = doc.id
    ORDER BY c.legacy_id;
END $$;
COMMENT ON FUNCTION deal_store.document_changes(uuid) IS
    'The facts that were sourced from a document when its newer version was added, and what happened to each since: update (with the changed fields, the item then and now, the run that wrote it), delete, or unchanged. 55000 when the document has no newer version.';
