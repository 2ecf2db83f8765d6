-- The merge queue's deciding side: applying a change (with the conflict check),
-- accept / reject / defer, batch accept, the worker procedure, signals and
-- the views a review UI reads. Proposing is Rust (queue.rs).

COMMENT ON FUNCTION deal_store.confidence_tier(uuid, text, text, double precision) IS
    'The tier the policy (deal_store.tier_policies, else the built-in default) gives a change of this deal, entity type, change type and confidence.';
COMMENT ON FUNCTION deal_store_internal._extra_fields(text) IS
    'Internal: the columns a proposal of a fact, finding or gap may set besides its content fields (for facts: confidence_score, source_document_id).';
COMMENT ON FUNCTION deal_store_internal._kind_table(text) IS
    'Internal: the table of an entity type of the merge queue (fact, finding, gap).';
COMMENT ON FUNCTION deal_store_internal._propose(text, uuid, anyelement, text[]) IS
    'Internal: the Rust body of propose_facts, propose_findings and propose_gaps.';
COMMENT ON FUNCTION deal_store_internal._outside_transaction_block(text) IS
    'Internal: 2D000 with a hint (process_queue_batch) when a committing procedure is called inside a transaction block.';
COMMENT ON FUNCTION deal_store_internal._propose_removals(text, uuid) IS
    'Internal: the Rust body of complete_run''s removals: a delete change for each live row of the kind inside the domains the run''s proposals covered that none of them delivered.';

-- propose_*: the Rust proposal, once per idempotency key. Its result (a few
-- rows of counts) is kept as jsonb, so a repeated call returns the same rows.
CREATE FUNCTION deal_store_internal._propose_once(entity_type text, run_id uuid, incoming jsonb, domains text[], idempotency_key text)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    IF idempotency_key IS NOT NULL THEN
        PERFORM deal_store_internal._id_in_one_deal('deal_store.analysis_runs', run_id, 'write');
        result := deal_store_internal._idempotent(idempotency_key, 'propose_' || entity_type || 's', jsonb_build_array(run_id, incoming, domains));
    END IF;
    IF result IS NULL THEN
        SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]') INTO result FROM deal_store_internal._propose(entity_type, run_id, incoming, domains) p;
        PERFORM deal_store_internal._remember(idempotency_key, result);
    END IF;
    RETURN QUERY SELECT x.change_type, x.confidence_tier, x.proposed, x.status
                 FROM jsonb_to_recordset(result) AS x(change_type text, confidence_tier integer, proposed bigint, status text);
END $$;
COMMENT ON FUNCTION deal_store_internal._propose_once(text, uuid, jsonb, text[], text) IS
    'Internal: the body of propose_facts, propose_findings and propose_gaps: _propose, or with an idempotency_key the result of the first call with that key.';

CREATE FUNCTION deal_store.propose_facts(run_id uuid, facts jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store_internal._propose_once('fact', run_id, facts, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_facts(uuid, jsonb, text[], text) IS
    'Diffs a running run''s facts against the deal''s current facts and writes one pending change (new, update) per difference, with old value, new value, base_checksum and a tier; tier 1 applies at once unless deal_store.auto_apply is off. A run may propose in as many calls as it likes: removals (delete) are proposed once, by complete_run, for the rows that no call delivered inside the domains the calls covered (each call: the domains it names, by default the domains of its rows; ARRAY[]::text[] covers none); an incremental run never removes. A row (or a named domain) outside the run''s domains is 22023 naming it and the run''s domains. Idempotent; a newer run supersedes an older run''s open change. Every element is checked first against its column (type, required, unknown keys unless the deal ignores them; the table''s CHECK constraints for the elements that become changes): 22023 naming the element, its legacy_id and the field, and nothing is proposed. Returns counts by change type, tier and what became of them (status pending, or accepted / conflict for tier 1 applied at once).';
CREATE FUNCTION deal_store.propose_findings(run_id uuid, findings jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store_internal._propose_once('finding', run_id, findings, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_findings(uuid, jsonb, text[], text) IS 'propose_facts for findings (content checksum over deal_store.content_fields(''finding'')).';
CREATE FUNCTION deal_store.propose_gaps(run_id uuid, gaps jsonb, domains text[] DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE(change_type text, confidence_tier integer, proposed bigint, status text) LANGUAGE sql VOLATILE
BEGIN ATOMIC SELECT * FROM deal_store_internal._propose_once('gap', run_id, gaps, domains, idempotency_key); END;
COMMENT ON FUNCTION deal_store.propose_gaps(uuid, jsonb, text[], text) IS 'propose_facts for gaps (content checksum over deal_store.content_fields(''gap'')).';

-- ---------------------------------------------------------------------------
-- Applying: one path. _apply_set applies a set of locked open changes (facts,
-- findings and gaps alike) set-based; _apply runs it and, when anything in the
-- set fails, applies each change alone, so one bad change becomes a conflict
-- with its reason and the rest apply. accept_change, accept_changes,
-- process_queue and tier-1 auto-apply all go through _apply.

CREATE FUNCTION deal_store_internal._apply_set(deal uuid, ids uuid[], note text) RETURNS void
-- a lock another transaction holds is not waited for longer than this (a unique
-- key a concurrent insert holds, say): the deal's changes are then left for a later batch
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
DECLARE
    todo deal_store.pending_changes[];
    actor uuid := deal_store.current_actor();
    applied uuid[] := ARRAY[]::uuid[];
    moved uuid[] := ARRAY[]::uuid[];
    done uuid[];
    held uuid[];
    locked uuid[];
    kind text;
    tbl regclass;
    live text;
    same text;
    matched uuid[];
    content text[];
    extra text[];
    targets uuid[];
    removals uuid[];
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
        FROM refused x WHERE x.why IS NOT NULL AND p.deal_id = deal AND p.id = ANY (ids) AND p.id = x.id
        RETURNING p.deal_id, p.id)
    SELECT pg_catalog.array_agg(c ORDER BY c.created_at, c.id) INTO todo
    FROM pg_catalog.unnest(todo) c
    WHERE NOT EXISTS (SELECT 1 FROM decided x WHERE x.deal_id = c.deal_id AND x.id = c.id);
    FOR kind IN SELECT DISTINCT c.entity_type FROM pg_catalog.unnest(todo) c ORDER BY 1 LOOP
        tbl := (deal_store_internal._kind_table(kind))::regclass;
        live := 't.deleted_at IS NULL' || CASE WHEN kind = 'fact' THEN ' AND t.superseded_at IS NULL' ELSE '' END;
        -- the rows this kind's changes target, read by key: every statement below reads
        -- the batch's rows (t.id = ANY ($5)), whatever else the deal holds
        targets := ARRAY(SELECT DISTINCT c.entity_id FROM pg_catalog.unnest(todo) c
                         WHERE c.entity_type = kind AND c.entity_id IS NOT NULL);
        -- a target another transaction holds is not waited for: its change is left for a
        -- later batch (it stays pending), and the others go on
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(x.id) FROM (SELECT t.id FROM %s t WHERE t.deal_id = $1 AND t.id = ANY ($2) '
                                  'FOR UPDATE OF t SKIP LOCKED) x', tbl)
            INTO locked USING deal, targets;
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.id) FROM %s t WHERE t.deal_id = $1 AND t.id = ANY ($2) AND t.id <> ALL ($3)', tbl)
            INTO held USING deal, targets, coalesce(locked, ARRAY[]::uuid[]);
        IF held IS NOT NULL THEN
            SELECT pg_catalog.array_agg(c ORDER BY c.created_at, c.id) INTO todo
            FROM pg_catalog.unnest(todo) c WHERE c.entity_type <> kind OR c.entity_id IS NULL OR c.entity_id <> ALL (held);
            targets := ARRAY(SELECT t FROM pg_catalog.unnest(targets) t WHERE t <> ALL (held));
            IF todo IS NULL THEN
                RETURN;
            END IF;
        END IF;
        -- the target as proposed: same row, live, content checksum still the base. A fact
        -- stores its checksum; a finding's or gap's is computed from to_jsonb(t), which is
        -- stable: that runs in a statement that locks the targets first ($4 the changes
        -- whose target matched), not inside the UPDATE (Citus refuses it there)
        IF kind = 'fact' THEN
            same := 't.deal_id = $3 AND t.id = ANY ($5) AND t.id = c.entity_id AND ' || live || ' AND t.item_checksum = c.base_checksum';
        ELSE
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.array_agg(x.id) FROM (SELECT c.id FROM pg_catalog.unnest($1) c '
                '  JOIN %s t ON t.deal_id = $3 AND t.id = ANY ($4) AND t.id = c.entity_id AND %s '
                '  WHERE c.entity_type = $2 AND c.change_type <> ''new'' '
                '    AND deal_store.content_checksum_of(c.entity_type, pg_catalog.to_jsonb(t)) = c.base_checksum FOR UPDATE OF t) x', tbl, live)
                INTO matched USING todo, kind, deal, targets;
            same := 't.deal_id = $3 AND t.id = ANY ($5) AND t.id = c.entity_id AND ' || live || ' AND c.id = ANY ($4)';
        END IF;
        content := deal_store.content_fields(kind);
        extra := deal_store_internal._extra_fields(kind);
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
            INTO done USING todo, kind, deal, matched, targets;
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
            INTO done, removals, reasons USING todo, kind, deal, matched, targets;
        IF done IS NOT NULL THEN
            PERFORM deal_store_internal._mark_deleted(tbl, 'row', pg_catalog.array_fill(deal, ARRAY[pg_catalog.cardinality(removals)]),
                                             removals, reasons, NULL);
            applied := applied || done;
        END IF;
        EXECUTE pg_catalog.format(
            -- a new row takes its change's id: what the INSERT returns names the applied changes
            'WITH i AS (INSERT INTO %1$s (id, deal_id, legacy_id, analysis_run_id, %2$s) '
            '      SELECT c.id, c.deal_id, c.legacy_entity_id, c.analysis_run_id, %3$s '
            '      FROM pg_catalog.unnest($1) c, pg_catalog.jsonb_populate_record(NULL::%1$s, c.new_value) r '
            '      WHERE c.entity_type = $2 AND c.change_type = ''new'' '
            '      ON CONFLICT (deal_id, legacy_id) WHERE %4$s DO NOTHING RETURNING id) '
            'SELECT pg_catalog.array_agg(i.id) FROM i',
            tbl, set_cols, ins_vals, replace(live, 't.', ''))
            INTO done USING todo, kind;
        applied := applied || coalesce(done, ARRAY[]::uuid[]);
        -- of the updates and deletes not applied, those whose target is still there: it moved
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(c.id) FROM pg_catalog.unnest($1) c JOIN %s t ON t.deal_id = $4 AND t.id = ANY ($5) AND t.id = c.entity_id AND %s '
            'WHERE c.entity_type = $2 AND c.change_type <> ''new'' AND c.id <> ALL ($3)', tbl, live)
            INTO done USING todo, kind, applied, deal, targets;
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
    WHERE p.deal_id = deal AND p.id = ANY (ids) AND p.id = x.id;
END $$;
COMMENT ON FUNCTION deal_store_internal._apply_set(uuid, uuid[], text) IS
    'Internal: applies a set of open changes of one deal the caller has locked (the changes ids), set-based, per entity type: update makes a new version (facts) or rewrites the content, delete soft-deletes through _mark_deleted naming the run, new inserts with the run as analysis_run_id. A change whose target moved (checksum differs from base_checksum, target deleted, a live row took the legacy_id of a new), whose run failed or whose deal is deleted becomes a conflict with its reason. A change whose target row another transaction holds is left pending for a later batch (FOR UPDATE SKIP LOCKED), and no lock is waited for longer than lock_timeout = 1s (then the deal''s changes stay pending). Every statement reads the rows of the batch by key. Any other error aborts the whole set (see _apply).';

CREATE FUNCTION deal_store_internal._apply(deal_ids uuid[], ids uuid[], note text) RETURNS void
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
    PERFORM deal_store_internal._set_local('deal_store.reason', coalesce(note, prev_reason));
    -- deal by deal: a deal's changes are one set (on Citus: one shard's work)
    FOR deal, mine IN SELECT x.deal_id, pg_catalog.array_agg(x.id ORDER BY x.n)
                      FROM ROWS FROM (pg_catalog.unnest(deal_ids), pg_catalog.unnest(ids)) WITH ORDINALITY x(deal_id, id, n)
                      GROUP BY x.deal_id ORDER BY pg_catalog.min(x.n) LOOP
        BEGIN
            PERFORM deal_store_internal._apply_set(deal, mine, note);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
                RAISE;
            END IF;
            IF state = '55P03' THEN
                CONTINUE;   -- another transaction holds what the deal's changes need: they stay pending
            END IF;
            -- some change broke the set: apply each alone, so only what fails is refused
            FOR i IN 1 .. pg_catalog.cardinality(mine) LOOP
                BEGIN
                    PERFORM deal_store_internal._apply_set(deal, ARRAY[mine[i]], note);
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, problem = MESSAGE_TEXT;
                    IF pg_catalog.left(state, 2) = ANY (not_the_change) THEN
                        RAISE;
                    END IF;
                    IF state = '55P03' THEN
                        CONTINUE;
                    END IF;
                    UPDATE deal_store.pending_changes p
                    SET status = 'conflict', decided_by = actor, decided_at = pg_catalog.now(),
                        review_note = pg_catalog.concat_ws(' / ', note, pg_catalog.format('cannot apply: %s (SQLSTATE %s)', deal_store_internal._unsharded(problem), state))
                    WHERE p.deal_id = deal AND p.id = mine[i] AND p.status IN ('pending', 'deferred');
                END;
            END LOOP;
        END;
    END LOOP;
    PERFORM deal_store_internal._set_local('deal_store.reason', prev_reason);
END $$;
COMMENT ON FUNCTION deal_store_internal._apply(uuid[], uuid[], text) IS
    'Internal: the one apply path. Applies the open changes (deal_ids[i], ids[i]) the caller has locked with _apply_set, deal by deal; when a deal''s set fails (a data error, a constraint), applies each change alone in a subtransaction and marks one that still fails as conflict with the error (cannot apply: message (SQLSTATE)), so no single change fails a batch. Errors that are not a change''s fault are raised: deadlocks and serialization failures (retry), resources, privileges, internal errors (classes 40, 42, 53, 57, 58, XX). The audit reason is the note.';

CREATE FUNCTION deal_store_internal._apply_changes(deal_id uuid, ids uuid[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'write');
    SELECT array_agg(p.id) INTO locked FROM (
        SELECT p.id FROM deal_store.pending_changes p
        WHERE p.deal_id = _apply_changes.deal_id AND p.id = ANY (ids) AND p.status = 'pending'
        ORDER BY p.created_at, p.id FOR UPDATE) p;
    IF locked IS NOT NULL THEN
        PERFORM deal_store_internal._apply(pg_catalog.array_fill(deal_id, ARRAY[pg_catalog.cardinality(locked)]), locked, 'auto-applied (tier 1)');
    END IF;
END $$;
COMMENT ON FUNCTION deal_store_internal._apply_changes(uuid, uuid[]) IS 'Internal: auto-applies the given tier-1 changes of a proposal.';

CREATE FUNCTION deal_store_internal._signal_review(deal_id uuid, run_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    counts jsonb;
    waiting bigint;
    owner uuid;
    run_number integer;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'write');
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
COMMENT ON FUNCTION deal_store_internal._signal_review(uuid, uuid) IS
    'Internal: when changes of a run wait for review, keeps one review_needed notification for the deal owner per run and sends an empty pg_notify(''deal_store_queue'', '''') on commit (any role may LISTEN: the details are in the notification, which only its user reads).';

-- ---------------------------------------------------------------------------
-- Review.

CREATE FUNCTION deal_store_internal._decide(change_id uuid, decision text, note text, until timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.pending_changes;
    deal uuid := deal_store_internal._id_in_one_deal('deal_store.pending_changes', change_id, 'review');
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
        PERFORM deal_store_internal._apply(ARRAY[c.deal_id], ARRAY[c.id], note);
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
COMMENT ON FUNCTION deal_store_internal._decide(uuid, text, text, timestamptz) IS 'Internal: shared body of accept_change, reject_change and defer_change.';

CREATE FUNCTION deal_store.accept_change(change_id uuid, note text DEFAULT NULL) RETURNS text
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._decide(change_id, 'accept', note, NULL); END;
COMMENT ON FUNCTION deal_store.accept_change(uuid, text) IS
    'Accepts an open (pending or deferred) change: applies it and returns accepted, or returns conflict (nothing applied) when its target moved since the proposal. The reviewer is deal_store.actor. P0002 unknown change, 55000 not open.';

CREATE FUNCTION deal_store.reject_change(change_id uuid, note text DEFAULT NULL) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._decide(change_id, 'reject', note, NULL); END;
COMMENT ON FUNCTION deal_store.reject_change(uuid, text) IS
    'Rejects an open change; nothing is applied. P0002 unknown change, 55000 not open.';

CREATE FUNCTION deal_store.defer_change(change_id uuid, until timestamptz DEFAULT NULL, note text DEFAULT NULL) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._decide(change_id, 'defer', note, until); END;
COMMENT ON FUNCTION deal_store.defer_change(uuid, timestamptz, text) IS
    'Defers an open change: it waits (status deferred) and becomes eligible for process_queue / accept_changes again after until (never by itself when until is NULL). P0002, 55000.';

CREATE FUNCTION deal_store.accept_changes(deal_id uuid, max_tier integer DEFAULT 2, run_id uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS TABLE(status text, n bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked uuid[];
    result jsonb;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'review');
    IF max_tier IS NULL OR max_tier NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'max_tier must be 1, 2 or 3' USING ERRCODE = '22023';
    END IF;
    result := deal_store_internal._idempotent(idempotency_key, 'accept_changes', jsonb_build_array(deal_id, max_tier, run_id));
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
        PERFORM deal_store_internal._apply(pg_catalog.array_fill(deal_id, ARRAY[pg_catalog.cardinality(locked)]), locked, 'batch accept');
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object('status', s.status, 'n', s.n) ORDER BY s.status), '[]') INTO result
    FROM (SELECT p.status, count(*) AS n FROM deal_store.pending_changes p
          WHERE p.deal_id = accept_changes.deal_id AND p.id = ANY (locked) GROUP BY p.status) s;
    PERFORM deal_store_internal._remember(idempotency_key, result);
    RETURN QUERY SELECT x.status, x.n FROM jsonb_to_recordset(result) AS x(status text, n bigint);
END $$;
COMMENT ON FUNCTION deal_store.accept_changes(uuid, integer, uuid, text) IS
    'Accepts every open change of a deal up to max_tier (of one run when run_id is given; deferred ones once their time has come), skipping rows another session holds. Returns how many were accepted and how many turned out to be conflicts. With an idempotency_key, a repeated call returns the first call''s counts and accepts nothing.';

-- The plan is pinned to an ordered scan of the open-queue index that stops after
-- batch_size rows: with the statistics a big proposal leaves behind (not yet
-- analysed), the planner otherwise reads and sorts the whole open queue for every
-- batch (34 ms per batch at 20,000 open changes, measured).
CREATE FUNCTION deal_store_internal._claim(batch_size integer, max_tier integer, deals uuid[], exclude uuid[], OUT deal_ids uuid[], OUT ids uuid[])
LANGUAGE sql VOLATILE SET enable_bitmapscan = off SET enable_sort = off SET enable_seqscan = off
BEGIN ATOMIC
    SELECT pg_catalog.array_agg(p.deal_id), pg_catalog.array_agg(p.id) FROM (
        SELECT p.deal_id, p.id FROM deal_store.pending_changes p
        WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= _claim.max_tier
          AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
          AND (_claim.deals IS NULL OR p.deal_id = ANY (_claim.deals))
          AND (_claim.exclude IS NULL OR p.id <> ALL (_claim.exclude))
        ORDER BY p.created_at, p.id
        LIMIT _claim.batch_size
        FOR UPDATE SKIP LOCKED) p;
END;
COMMENT ON FUNCTION deal_store_internal._claim(integer, integer, uuid[], uuid[]) IS
    'Internal: locks (FOR UPDATE SKIP LOCKED) and returns (as deal_ids[i], ids[i]) up to batch_size eligible open changes of the given deals (all when NULL), oldest first, but those in exclude (already tried in this batch), for process_queue.';

-- On Citus a row lock needs a query on one shard: the changes are claimed deal by
-- deal (the deals with eligible changes read first, unlocked), each claim naming its deal.
CREATE FUNCTION deal_store_internal._claim_by_deal(batch_size integer, max_tier integer, deals uuid[], exclude uuid[], OUT deal_ids uuid[], OUT ids uuid[])
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
               AND (exclude IS NULL OR p.id <> ALL (exclude))
             GROUP BY p.deal_id ORDER BY min(p.created_at), p.deal_id LOOP
        SELECT array_agg(x.id) INTO got FROM (
            SELECT p.id FROM deal_store.pending_changes p
            WHERE p.deal_id = d AND p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
              AND (p.status = 'pending' OR p.deferred_until <= now())
              AND (exclude IS NULL OR p.id <> ALL (exclude))
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
COMMENT ON FUNCTION deal_store_internal._claim_by_deal(integer, integer, uuid[], uuid[]) IS
    'Internal: _claim for a database whose deal tables Citus distributes: locks up to batch_size eligible open changes deal by deal (the deals with the oldest eligible change first; each claim one query on the deal''s shard).';

COMMENT ON FUNCTION deal_store_internal._distributed() IS
    'Internal: true when Citus distributes deal_store''s deal tables (pending_changes is hash-distributed).';

CREATE FUNCTION deal_store.process_queue_batch(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    OUT claimed integer, OUT applied integer, OUT conflicts integer)
LANGUAGE plpgsql AS $$
DECLARE
    batch record;
    tried uuid[] := ARRAY[]::uuid[];
    want integer;
    done_now integer;
    refused_now integer;
    held integer;
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
    claimed := 0;
    applied := 0;
    conflicts := 0;
    want := batch_size;
    -- a change whose target another transaction holds stays open: as many other
    -- changes as were held back are claimed in its place (a few rounds at most), so
    -- one tenant's locks never keep the worker from the rest of the queue
    FOR round IN 1 .. 10 LOOP
        IF deal_store_internal._distributed() THEN
            SELECT * INTO batch FROM deal_store_internal._claim_by_deal(want, max_tier,
                CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END, tried);
        ELSE
            SELECT * INTO batch FROM deal_store_internal._claim(want, max_tier,
                CASE WHEN NOT deal_store.sees_all_deals() THEN deal_store.my_deals('reviewer') END, tried);
        END IF;
        EXIT WHEN coalesce(cardinality(batch.ids), 0) = 0;
        claimed := claimed + cardinality(batch.ids);
        tried := tried || batch.ids;
        PERFORM deal_store_internal._apply(batch.deal_ids, batch.ids, 'process_queue');
        -- the claimed (deal, id) pairs as keys (a uuid's text has a fixed length): a filter, not a
        -- join with the arrays, which Citus could not plan over the distributed table
        SELECT count(*) FILTER (WHERE p.status = 'accepted'), count(*) FILTER (WHERE p.status = 'conflict'),
               count(*) FILTER (WHERE p.status IN ('pending', 'deferred'))
        INTO done_now, refused_now, held
        FROM deal_store.pending_changes p
        WHERE p.deal_id = ANY (batch.deal_ids) AND p.id = ANY (batch.ids)
          AND p.deal_id::text || p.id::text = ANY (ARRAY(SELECT x.deal_id::text || x.id::text
                                                          FROM unnest(batch.deal_ids, batch.ids) x(deal_id, id)));
        applied := applied + done_now;
        conflicts := conflicts + refused_now;
        EXIT WHEN held = 0;
        want := held;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.process_queue_batch(integer, integer) IS
    'One batch of process_queue in the caller''s transaction (for clients that cannot CALL a committing procedure): claims up to batch_size eligible open changes (FOR UPDATE SKIP LOCKED; all deals for admins, else the deals where the actor is reviewer or lead), applies them and returns how many it claimed, how many were applied and how many became conflicts. Fewer claimed than batch_size: the queue is drained for this caller.';

-- The worker. Its INOUT parameters are its result (CALL shows them as one row);
-- a caller passes nothing for them.
-- The eligible changes process_queue leaves behind (the caller's deals).
-- PL/pgSQL, not SQL: Citus plans no parameter of a SQL function over a distributed table
CREATE FUNCTION deal_store_internal._queue_remaining(max_tier integer) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT count(*) FROM deal_store.pending_changes p
            WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier <= max_tier
              AND (p.status = 'pending' OR p.deferred_until <= pg_catalog.now())
              AND ((SELECT deal_store.sees_all_deals()) OR p.deal_id = ANY ((SELECT deal_store.my_deals('reviewer'))::uuid[])));
END $$;
COMMENT ON FUNCTION deal_store_internal._queue_remaining(integer) IS
    'Internal: the pending (and due deferred) changes up to max_tier in the caller''s deals that no batch took: process_queue''s remaining.';

CREATE PROCEDURE deal_store.process_queue(batch_size integer DEFAULT 1000, max_tier integer DEFAULT 1,
    INOUT batches integer DEFAULT NULL, INOUT applied bigint DEFAULT NULL,
    INOUT conflicts bigint DEFAULT NULL, INOUT remaining bigint DEFAULT NULL)
-- no SET search_path: a procedure with one cannot COMMIT. Every operator,
-- function and type below is schema-qualified instead (see deal_store_internal._unpinned()).
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    PERFORM deal_store_internal._outside_transaction_block('process_queue');
    batches := 0;
    applied := 0;
    conflicts := 0;
    LOOP
        b := deal_store.process_queue_batch(batch_size, max_tier);
        COMMIT;
        EXIT WHEN b.claimed OPERATOR(pg_catalog.=) 0;
        -- every claimed change's target was held by another transaction: try again later
        EXIT WHEN b.applied OPERATOR(pg_catalog.+) b.conflicts OPERATOR(pg_catalog.=) 0;
        batches := batches OPERATOR(pg_catalog.+) 1;
        applied := applied OPERATOR(pg_catalog.+) b.applied;
        conflicts := conflicts OPERATOR(pg_catalog.+) b.conflicts;
        RAISE NOTICE 'process_queue: batch %: % applied, % conflicts (so far % applied, % conflicts)',
            batches, b.applied, b.conflicts, applied, conflicts;
        EXIT WHEN b.claimed OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    -- what another call would find now: eligible changes that other workers hold
    -- or that were proposed meanwhile
    remaining := deal_store_internal._queue_remaining(max_tier);
END $$;
COMMENT ON PROCEDURE deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint) IS
    'Worker: applies eligible open changes (tier <= max_tier; deferred ones whose time has come) in batches of batch_size with process_queue_batch, committing after each batch and raising a NOTICE with its progress. Returns (as its INOUT parameters; pass nothing for them, or variables from PL/pgSQL) the batches it ran, the changes applied and those that became conflicts, and the eligible changes still open when it stopped (held by other workers or proposed meanwhile) in the deals it works. Rows are claimed with FOR UPDATE SKIP LOCKED, so several workers can run at once and none applies a change twice; a change whose target another transaction holds is left pending (no worker waits on it for more than 1 s), and the worker stops when a batch could apply nothing; a crash loses at most the uncommitted batch, never half a change. Admins work every deal, reviewers the deals they review. CALL it outside a transaction block (psql autocommit; a client in autocommit mode), or loop over process_queue_batch inside one.';

-- ---------------------------------------------------------------------------
-- What a review UI reads.

CREATE FUNCTION deal_store.conflicts(deal_id uuid)
RETURNS TABLE(change_id uuid, entity_type text, legacy_id text, change_type text, base_checksum text,
              current_checksum text, base_value jsonb, current_value jsonb, proposed_value jsonb,
              analysis_run_id uuid, decided_at timestamptz, note text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
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
