-- The merge queue's deciding side: applying a change (with the conflict check),
-- accept / reject / defer, batch accept, the worker procedure, signals and
-- the views a review UI reads. Proposing is Rust (queue.rs).

COMMENT ON FUNCTION deal_store.confidence_tier(uuid, text, text, double precision) IS
    'The tier the policy (deal_store.tier_policies, else the built-in default) gives a change of this deal, entity type, change type and confidence.';
COMMENT ON FUNCTION deal_store._propose(text, uuid, anyelement, text[]) IS
    'Internal: the Rust body of propose_facts, propose_findings and propose_gaps.';

CREATE FUNCTION deal_store.propose_facts(run_id uuid, facts jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT * FROM deal_store._propose('fact', run_id, facts, domains);
END;
CREATE FUNCTION deal_store.propose_findings(run_id uuid, findings jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT * FROM deal_store._propose('finding', run_id, findings, domains);
END;
CREATE FUNCTION deal_store.propose_gaps(run_id uuid, gaps jsonb, domains text[] DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT * FROM deal_store._propose('gap', run_id, gaps, domains);
END;
COMMENT ON FUNCTION deal_store.propose_facts(uuid, jsonb, text[]) IS
    'Diffs a running run''s facts against the deal''s current facts and writes one pending change (new, update, delete) per difference, with old value, new value, base_checksum and a tier; tier 1 applies at once unless deal_store.auto_apply is off. Removals only inside domains (default: the domains of the given facts, within the run''s domains); an incremental run never removes. Idempotent; a newer run supersedes an older run''s open change. Returns counts by change type and tier.';
COMMENT ON FUNCTION deal_store.propose_findings(uuid, jsonb, text[]) IS
    'propose_facts for findings (content checksum over deal_store.content_fields(''finding'')).';
COMMENT ON FUNCTION deal_store.propose_gaps(uuid, jsonb, text[]) IS
    'propose_facts for gaps (content checksum over deal_store.content_fields(''gap'')).';

-- Applies one change if its target has not moved; returns 'accepted' or 'conflict'.
CREATE FUNCTION deal_store._apply_change(c deal_store.pending_changes, OUT result text, OUT problem text)
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

-- Applies a locked, open change and records the decision.
CREATE FUNCTION deal_store._settle(c deal_store.pending_changes, note text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    prev_reason text := current_setting('deal_store.reason', true);
BEGIN
    PERFORM set_config('deal_store.reason', coalesce(note, prev_reason, ''), true);
    a := deal_store._apply_change(c);
    UPDATE deal_store.pending_changes p SET status = a.result, decided_by = deal_store.current_actor(), decided_at = now(),
        review_note = concat_ws(' / ', note, a.problem)
    WHERE p.deal_id = c.deal_id AND p.id = c.id;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
    RETURN a.result;
END $$;
COMMENT ON FUNCTION deal_store._settle(deal_store.pending_changes, text) IS
    'Internal: applies a locked open change and records accepted or conflict with the reviewer (deal_store.actor) and note.';

-- Settles open changes the caller has locked, in one go: a run's fact changes
-- set-based (one statement for the whole set, with the same conflict rules as
-- _apply_change), findings and gaps one by one. When a constraint rejects the
-- set, the set is undone and settled one by one. One difference from settling
-- alone: the audit reason of a fact removed in a set is the batch note (the
-- fact's delete_reason still names the run).
CREATE FUNCTION deal_store._settle_batch(ids uuid[], note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ch deal_store.pending_changes;
    prev_reason text := current_setting('deal_store.reason', true);
    actor uuid := deal_store.current_actor();
    settled bigint := 0;
BEGIN
    PERFORM set_config('deal_store.reason', coalesce(note, prev_reason, ''), true);
    BEGIN
        -- An update becomes a new version: the fact keeps its id and points at a history row
        -- holding the version it replaced. This statement writes those history rows itself,
        -- set-based (caller_writes_versions tells the fact trigger not to, row by row).
        PERFORM set_config('deal_store.caller_writes_versions', 'on', true);
        WITH todo AS (
            -- one lookup on the id index per id (LIMIT keeps the planner from scanning the open queue instead)
            SELECT p.* FROM pg_catalog.unnest(ids) c(id),
                LATERAL (SELECT p.ctid AS row_tid, p.* FROM deal_store.pending_changes p WHERE p.id = c.id LIMIT 1) p
            WHERE p.status IN ('pending', 'deferred') AND p.entity_type = 'fact'),
        current AS (
            -- the update targets' newest versions, locked: what the history rows copy
            SELECT t.ctid AS fact_tid, t.*, todo.id AS change_id, todo.new_value, todo.base_checksum, todo.proposed_checksum,
                   todo.analysis_run_id AS change_run_id
            FROM todo JOIN deal_store.facts t ON t.deal_id = todo.deal_id AND t.id = todo.entity_id
            WHERE todo.change_type = 'update' AND t.superseded_at IS NULL
            FOR UPDATE OF t),
        updated AS (
            -- the checksum test is re-checked on the newest row version when another session moved it
            UPDATE deal_store.facts t
            SET (domain, category, item, status, details, evidence, entity, source_page_numbers,
                 confidence_score, source_document_id, analysis_run_id, previous_version_id) =
                (r.domain, r.category, r.item, r.status, r.details, r.evidence, r.entity, r.source_page_numbers,
                 CASE WHEN c.new_value ? 'confidence_score' THEN r.confidence_score ELSE t.confidence_score END,
                 CASE WHEN c.new_value ? 'source_document_id' THEN r.source_document_id ELSE t.source_document_id END,
                 c.change_run_id,
                 CASE WHEN c.proposed_checksum IS DISTINCT FROM c.base_checksum
                      THEN pg_catalog.gen_random_uuid() ELSE t.previous_version_id END)
            FROM current c, LATERAL pg_catalog.jsonb_populate_record(NULL::deal_store.facts, c.new_value) r
            WHERE t.ctid = c.fact_tid -- locked above: still the newest version
              AND t.deleted_at IS NULL AND t.item_checksum = c.base_checksum
            RETURNING c.change_id AS id, t.previous_version_id AS history_id, c AS o),
        versions AS (
            -- the replaced version as the fact trigger would copy it: new id, superseded_at set
            INSERT INTO deal_store.facts (deal_id, id, legacy_id, domain, category, item, item_checksum, status, details,
                evidence, confidence_score, entity, source_document_id, source_page_numbers, previous_version_id,
                superseded_at, analysis_run_id, verified, verified_by, verified_at, verification_status,
                verification_note, created_by, updated_by, created_at, updated_at, deleted_at, deleted_by,
                delete_reason, delete_batch)
            SELECT (o).deal_id, history_id, (o).legacy_id, (o).domain, (o).category, (o).item, (o).item_checksum,
                   (o).status, (o).details, (o).evidence, (o).confidence_score, (o).entity, (o).source_document_id,
                   (o).source_page_numbers, (o).previous_version_id, pg_catalog.now(), (o).analysis_run_id, (o).verified,
                   (o).verified_by, (o).verified_at, (o).verification_status, (o).verification_note, (o).created_by,
                   (o).updated_by, (o).created_at, (o).updated_at, (o).deleted_at, (o).deleted_by, (o).delete_reason,
                   (o).delete_batch
            FROM updated WHERE history_id IS DISTINCT FROM (o).previous_version_id
            RETURNING 1),
        deleted AS (
            -- as soft_delete does for a fact (it owns nothing): one row, its own delete batch
            UPDATE deal_store.facts t
            SET deleted_at = pg_catalog.now(), deleted_by = actor,
                delete_reason = pg_catalog.format('removed by analysis run %s', run.run_number),
                delete_batch = pg_catalog.gen_random_uuid()
            FROM todo JOIN deal_store.analysis_runs run ON run.deal_id = todo.deal_id AND run.id = todo.analysis_run_id
            WHERE todo.change_type = 'delete' AND t.deal_id = todo.deal_id AND t.id = todo.entity_id
              AND t.superseded_at IS NULL AND t.deleted_at IS NULL AND t.item_checksum = todo.base_checksum
            RETURNING todo.id),
        inserted AS (
            INSERT INTO deal_store.facts (deal_id, legacy_id, analysis_run_id, domain, category, item, status, details,
                                          evidence, entity, source_page_numbers, confidence_score, source_document_id)
            SELECT todo.deal_id, todo.legacy_entity_id, todo.analysis_run_id, r.domain, r.category, r.item,
                   coalesce(r.status, 'documented'), coalesce(r.details, '{}'), r.evidence, coalesce(r.entity, 'target'),
                   r.source_page_numbers, coalesce(r.confidence_score, 0.5), r.source_document_id
            FROM todo, LATERAL pg_catalog.jsonb_populate_record(NULL::deal_store.facts, todo.new_value) r
            WHERE todo.change_type = 'new'
            ON CONFLICT (deal_id, legacy_id) WHERE deleted_at IS NULL AND superseded_at IS NULL DO NOTHING
            RETURNING deal_id, legacy_id)
        UPDATE deal_store.pending_changes p
        SET status = CASE WHEN done.ok THEN 'accepted' ELSE 'conflict' END,
            decided_by = actor, decided_at = pg_catalog.now(),
            review_note = pg_catalog.concat_ws(' / ', note, CASE
                WHEN done.ok THEN NULL
                WHEN todo.change_type = 'new' THEN 'a live row with this legacy_id exists'
                WHEN EXISTS (SELECT 1 FROM deal_store.facts f WHERE f.deal_id = todo.deal_id AND f.id = todo.entity_id
                               AND f.superseded_at IS NULL AND f.deleted_at IS NULL)
                    THEN 'the target changed since the proposal'
                ELSE 'the target is gone or deleted' END)
        FROM todo, LATERAL (SELECT todo.id IN (SELECT u.id FROM updated u UNION ALL SELECT d.id FROM deleted d)
                                OR (todo.deal_id, todo.legacy_entity_id) IN (SELECT i.deal_id, i.legacy_id FROM inserted i)
                                AND todo.change_type = 'new' AS ok) done
        WHERE p.ctid = todo.row_tid; -- the caller holds the lock: still the newest version
        GET DIAGNOSTICS settled = ROW_COUNT;
        PERFORM set_config('deal_store.caller_writes_versions', 'off', true);
    EXCEPTION WHEN integrity_constraint_violation THEN
        NULL; -- nothing of the set was applied: the loop below settles each change on its own
    END;
    -- what the statement did not settle: findings, gaps, or the whole set after a rejection
    IF settled < pg_catalog.cardinality(ids) THEN
        FOR ch IN SELECT p.* FROM pg_catalog.unnest(ids) c(id),
                      LATERAL (SELECT p.* FROM deal_store.pending_changes p WHERE p.id = c.id LIMIT 1) p
                  WHERE p.status IN ('pending', 'deferred')
                  ORDER BY p.created_at, p.id LOOP
            PERFORM deal_store._settle(ch, note);
        END LOOP;
    END IF;
    PERFORM set_config('deal_store.reason', coalesce(prev_reason, ''), true);
END $$;
COMMENT ON FUNCTION deal_store._settle_batch(uuid[], text) IS
    'Internal: settles open changes the caller has locked: fact changes set-based (new versions included, written by the statement itself under deal_store.caller_writes_versions), findings, gaps and any set a constraint rejects one by one through _settle. Same results as settling each change alone, except that the audit reason of a fact removal is the batch note.';

CREATE FUNCTION deal_store._apply_changes(deal_id uuid, ids uuid[]) RETURNS void
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

CREATE FUNCTION deal_store._signal_review(deal_id uuid, run_id uuid) RETURNS void
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

-- ---------------------------------------------------------------------------
-- Review.

CREATE FUNCTION deal_store._decide(change_id uuid, decision text, note text, until timestamptz) RETURNS text
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

CREATE FUNCTION deal_store.accept_change(change_id uuid, note text DEFAULT NULL) RETURNS text
LANGUAGE sql BEGIN ATOMIC SELECT deal_store._decide(change_id, 'accept', note, NULL); END;
COMMENT ON FUNCTION deal_store.accept_change(uuid, text) IS
    'Accepts an open (pending or deferred) change: applies it and returns accepted, or returns conflict (nothing applied) when its target moved since the proposal. The reviewer is deal_store.actor. P0002 unknown change, 55000 not open.';

CREATE FUNCTION deal_store.reject_change(change_id uuid, note text DEFAULT NULL) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store._decide(change_id, 'reject', note, NULL); END;
COMMENT ON FUNCTION deal_store.reject_change(uuid, text) IS
    'Rejects an open change; nothing is applied. P0002 unknown change, 55000 not open.';

CREATE FUNCTION deal_store.defer_change(change_id uuid, until timestamptz DEFAULT NULL, note text DEFAULT NULL) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store._decide(change_id, 'defer', note, until); END;
COMMENT ON FUNCTION deal_store.defer_change(uuid, timestamptz, text) IS
    'Defers an open change: it waits (status deferred) and becomes eligible for process_queue / accept_changes again after until (never by itself when until is NULL). P0002, 55000.';

CREATE FUNCTION deal_store.accept_changes(deal_id uuid, max_tier integer DEFAULT 2, run_id uuid DEFAULT NULL)
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

-- The plan is pinned to an ordered scan of the open-queue index that stops after
-- batch_size rows: with the statistics a big proposal leaves behind (not yet
-- analysed), the planner otherwise reads and sorts the whole open queue for every
-- batch (34 ms per batch at 20,000 open changes, measured).
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

CREATE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1)
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

-- ---------------------------------------------------------------------------
-- What a review UI reads.

CREATE FUNCTION deal_store.conflicts(deal_id uuid)
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

CREATE VIEW deal_store.queue_stats AS
    SELECT p.deal_id, p.status, p.confidence_tier, count(*) AS changes,
           min(p.created_at) FILTER (WHERE p.status IN ('pending', 'deferred')) AS oldest_open_at,
           now() - min(p.created_at) FILTER (WHERE p.status IN ('pending', 'deferred')) AS oldest_open_age
    FROM deal_store.pending_changes p
    GROUP BY p.deal_id, p.status, p.confidence_tier;
COMMENT ON VIEW deal_store.queue_stats IS
    'Merge queue counts by deal, status and tier, with the age of the oldest open (pending or deferred) change.';
