-- Soft delete: nothing is ever really deleted. Views that hide deleted rows,
-- soft_delete / restore with cascade and batches, DELETE turned into a soft
-- delete, purge as the only real delete.

COMMENT ON FUNCTION deal_store_internal._table_of(oid) IS
    'Internal: the table a relation''s rows belong to: the relation itself, or on Citus the distributed table of a shard (deal_store.facts_102099 -> deal_store.facts). Triggers name their table with it, not with TG_RELID.';

-- ---------------------------------------------------------------------------
-- Views that show what a UI should show.

CREATE VIEW deal_store.active_deals AS
    SELECT * FROM deal_store.deals WHERE deleted_at IS NULL;
COMMENT ON VIEW deal_store.active_deals IS 'Deals that are not soft-deleted. DELETE through it soft-deletes.';

CREATE VIEW deal_store.active_documents AS
    SELECT * FROM deal_store.documents WHERE deleted_at IS NULL;
COMMENT ON VIEW deal_store.active_documents IS 'Documents that are not soft-deleted. DELETE through it soft-deletes.';

CREATE VIEW deal_store.active_facts AS
    SELECT * FROM deal_store.facts WHERE deleted_at IS NULL AND superseded_at IS NULL;
COMMENT ON VIEW deal_store.active_facts IS 'The current version of every fact that is not soft-deleted. DELETE through it soft-deletes.';

CREATE VIEW deal_store.active_findings AS
    SELECT * FROM deal_store.findings WHERE deleted_at IS NULL;
COMMENT ON VIEW deal_store.active_findings IS 'Findings that are not soft-deleted. DELETE through it soft-deletes.';

CREATE VIEW deal_store.active_gaps AS
    SELECT * FROM deal_store.gaps WHERE deleted_at IS NULL;
COMMENT ON VIEW deal_store.active_gaps IS 'Gaps that are not soft-deleted (open and resolved). DELETE through it soft-deletes.';

CREATE VIEW deal_store.active_fact_finding_links AS
    SELECT l.* FROM deal_store.fact_finding_links l
    WHERE EXISTS (SELECT 1 FROM deal_store.facts f
                  WHERE f.deal_id = l.deal_id AND f.id = l.fact_id AND f.deleted_at IS NULL)
      AND EXISTS (SELECT 1 FROM deal_store.findings g
                  WHERE g.deal_id = l.deal_id AND g.id = l.finding_id AND g.deleted_at IS NULL);
COMMENT ON VIEW deal_store.active_fact_finding_links IS
    'Links whose fact and finding are both live. A soft delete never removes or nulls a link; this view hides it.';

-- ---------------------------------------------------------------------------
-- soft_delete / restore / purge.

CREATE FUNCTION deal_store_internal._soft_deletable(entity regclass) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF entity IS NULL OR entity NOT IN ('deal_store.deals'::regclass, 'deal_store.documents'::regclass,
            'deal_store.facts'::regclass, 'deal_store.findings'::regclass, 'deal_store.gaps'::regclass) THEN
        RAISE EXCEPTION '% is not a soft-deletable table', coalesce(entity::text, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use deal_store.deals, deal_store.documents, deal_store.facts, deal_store.findings or deal_store.gaps.';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store_internal._soft_deletable(regclass) IS
    'Internal: raises 22023 unless entity is one of the five soft-deletable tables.';

-- Finds the row, locks its deal and then the row itself; returns the row's
-- state. The deal is locked FOR SHARE: changes to different rows of one deal
-- (e.g. two queue workers soft-deleting facts) run side by side, while a
-- soft delete or restore of the deal itself (FOR UPDATE of the deal row)
-- waits for them and they for it.
CREATE FUNCTION deal_store_internal._id_in_one_deal(tbl regclass, id uuid, needs text) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deals uuid[];
BEGIN
    -- only the deals the caller sees: a row of another deal is no row here, whatever its id
    -- (an id planted in one deal neither blocks nor reveals another deal's row)
    -- (named as the deals, so that on Citus the lookup reads only their shards)
    IF deal_store.sees_all_deals() THEN
        EXECUTE format('SELECT array_agg(DISTINCT deal_id) FROM %s WHERE id = $1', tbl) INTO deals USING id;
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT deal_id) FROM %s WHERE id = $1 AND deal_id = ANY ($2)', tbl) INTO deals
            USING id, deal_store.my_deals('viewer');
    END IF;
    IF cardinality(deals) > 1 THEN
        RAISE EXCEPTION 'id % names rows of % deals in %', id, cardinality(deals), tbl USING ERRCODE = 'P0003',
            HINT = 'Ids are unique per deal only; this database holds the id in more than one deal.';
    ELSIF cardinality(deals) = 1 THEN
        PERFORM deal_store_internal._require_right(deals[1], needs);
    END IF;
    RETURN deals[1];
END $$;
COMMENT ON FUNCTION deal_store_internal._id_in_one_deal(regclass, uuid, text) IS
    'Internal: raises P0003 when an id passed alone names rows of more than one deal (ids are unique per deal only), so no function picks one of them; 42501 unless the caller has the right needs on the row''s deal. Returns that deal (NULL: no row has the id), so the caller''s next lookup names it (on Citus: one shard, where a row lock is possible).';

CREATE FUNCTION deal_store_internal._lock_row(entity regclass, id uuid, needs text, deal uuid,
    OUT deal_id uuid, OUT deleted_at timestamptz, OUT delete_batch uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current_only text := CASE WHEN entity = 'deal_store.facts'::regclass THEN ' AND superseded_at IS NULL' ELSE '' END;
    deal_col text := CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END;
BEGIN
    PERFORM deal_store_internal._soft_deletable(entity);
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF entity = 'deal_store.deals'::regclass THEN
        PERFORM deal_store_internal._require_right(id, needs);
    ELSIF deal IS NOT NULL THEN
        PERFORM deal_store_internal._require_right(deal, needs);
    ELSE
        deal := deal_store_internal._id_in_one_deal(entity, id, needs);
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
COMMENT ON FUNCTION deal_store_internal._lock_row(regclass, uuid, text, uuid) IS
    'Internal: validates entity and id (in deal, when not NULL; else the id must name a row of one deal only), checks the caller''s right needs on the row''s deal (42501), locks the row''s deal then the row, and returns deal_id, deleted_at and delete_batch.';

-- Marks rows deleted, set-based: the one place a soft delete is written.
CREATE FUNCTION deal_store_internal._mark_deleted(tbl regclass, scope text, deal_ids uuid[], ids uuid[], reasons text[], batch uuid)
RETURNS TABLE(deal_id uuid, id uuid)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._soft_deletable(tbl);
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
COMMENT ON FUNCTION deal_store_internal._mark_deleted(regclass, text, uuid[], uuid[], text[], uuid) IS
    'Internal: soft-deletes live rows of tbl, set-based (deleted_at, deleted_by = deal_store.actor, the reason, batch, or when batch is NULL a batch of its own per named row): the rows (deal_ids[i], ids[i]) themselves (scope row), the rows of the deals ids (owned_by_deal) or the facts sourced from the documents (owned_by_document). Returns the rows marked. soft_delete and the merge queue both write soft deletes through it.';

-- What a soft delete takes with it: the one list soft_delete and an UPDATE
-- that sets deleted_at both follow.
CREATE FUNCTION deal_store_internal._owned(entity regclass) RETURNS TABLE(tbl regclass, scope text)
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
COMMENT ON FUNCTION deal_store_internal._owned(regclass) IS
    'Internal: the tables whose rows a soft delete of a row of entity takes with it, and how they belong to it (a deal owns its documents, facts, findings and gaps; a document the facts sourced from it).';

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
    r := deal_store_internal._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END,
                              soft_delete.deal_id);
    IF r.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION '% row % is already deleted', entity, id
            USING ERRCODE = '55000', DETAIL = format('Deleted at %s.', r.deleted_at);
    END IF;
    -- the audit log records the reason of this delete
    PERFORM deal_store_internal._set_local('deal_store.reason', coalesce(reason, prev_reason));
    -- the row itself, then what it owns: a deal owns its documents, facts,
    -- findings and gaps; a document owns the facts sourced from it.
    FOR t IN SELECT entity AS tbl, 'row' AS scope UNION ALL SELECT * FROM deal_store_internal._owned(entity) LOOP
        SELECT count(*) INTO n FROM deal_store_internal._mark_deleted(t.tbl, t.scope, ARRAY[r.deal_id], ARRAY[id], ARRAY[reason], batch);
        total := total + n;
    END LOOP;
    PERFORM deal_store_internal._set_local('deal_store.reason', prev_reason);
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) IS
    'Soft-deletes one row of deals, documents, facts, findings or gaps (of the deal deal_id, when given: then the id is looked up in that deal alone) and what it owns (a deal: its documents, facts, findings, gaps; a document: the facts sourced from it). All rows get one delete_batch, deleted_by = deal_store.actor and the reason. Returns the number of rows marked. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 already deleted.';

CREATE FUNCTION deal_store.restore(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    total integer := 0;
    n integer;
    t regclass;
BEGIN
    r := deal_store_internal._lock_row(entity, id, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END, NULL);
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION '% row % is not deleted', entity, id USING ERRCODE = '55000';
    END IF;
    IF entity <> 'deal_store.deals'::regclass
       AND EXISTS (SELECT 1 FROM deal_store.deals d WHERE d.id = r.deal_id AND d.deleted_at IS NOT NULL
                   AND d.delete_batch IS DISTINCT FROM r.delete_batch) THEN
        RAISE EXCEPTION 'cannot restore % row %: its deal is deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Restore the deal first.';
    END IF;
    PERFORM deal_store_internal._set_local('deal_store.undeleting', 'on');
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
    PERFORM deal_store_internal._set_local('deal_store.undeleting', 'off');
    RETURN total;
END $$;
COMMENT ON FUNCTION deal_store.restore(regclass, uuid) IS
    'Restores a soft-deleted row and exactly the rows deleted in the same batch (not rows deleted earlier for another reason). Returns the number of rows restored. Errors: 22023 not a soft-deletable table, P0002 no such row, 55000 not deleted or its deal is deleted, 23505 a live row has taken its name (nothing is restored).';

CREATE FUNCTION deal_store.purge(entity regclass, id uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer;
BEGIN
    r := deal_store_internal._lock_row(entity, id, 'administer', NULL);
    IF r.deleted_at IS NULL THEN
        RAISE EXCEPTION 'cannot purge % row %: it is not deleted', entity, id
            USING ERRCODE = '55000', HINT = 'Soft-delete it first with deal_store.soft_delete.';
    END IF;
    PERFORM deal_store_internal._set_local('deal_store.hard_delete', 'on');
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
    PERFORM deal_store_internal._set_local('deal_store.hard_delete', 'off');
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.purge(regclass, uuid) IS
    'Really deletes a soft-deleted row (a fact with its whole version history; a deal with everything it owns). The only real delete. Errors: 22023, P0002, 55000 when the row is not soft-deleted first.';

CREATE FUNCTION deal_store_internal.delete_to_soft_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('deal_store.hard_delete', true) = 'on' THEN
        RETURN OLD;
    END IF;
    IF OLD.deleted_at IS NULL AND (to_jsonb(OLD) ->> 'superseded_at') IS NULL THEN
        -- the row's deal is named: the lookup stays in this deal (on Citus, in this shard)
        PERFORM deal_store.soft_delete(deal_store_internal._table_of(TG_RELID)::regclass, OLD.id, 'DELETE statement',
                                       (to_jsonb(OLD) ->> 'deal_id')::uuid);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store_internal.delete_to_soft_delete() IS
    'Trigger: turns a DELETE of a live row into deal_store.soft_delete (with cascade) and skips the real delete. Only deal_store.purge deletes for real.';

CREATE TRIGGER delete_to_soft_delete BEFORE DELETE ON deal_store.deals FOR EACH ROW EXECUTE FUNCTION deal_store_internal.delete_to_soft_delete();
CREATE TRIGGER delete_to_soft_delete BEFORE DELETE ON deal_store.documents FOR EACH ROW EXECUTE FUNCTION deal_store_internal.delete_to_soft_delete();
CREATE TRIGGER delete_to_soft_delete BEFORE DELETE ON deal_store.facts FOR EACH ROW EXECUTE FUNCTION deal_store_internal.delete_to_soft_delete();
CREATE TRIGGER delete_to_soft_delete BEFORE DELETE ON deal_store.findings FOR EACH ROW EXECUTE FUNCTION deal_store_internal.delete_to_soft_delete();
CREATE TRIGGER delete_to_soft_delete BEFORE DELETE ON deal_store.gaps FOR EACH ROW EXECUTE FUNCTION deal_store_internal.delete_to_soft_delete();

-- UPDATE … SET deleted_at = now(), the soft delete ORM mixins and the seeds
-- write: the same soft delete as soft_delete() (actor, batch, reason,
-- cascade), for the rows the UPDATE names. The trigger's WHEN clause lets every
-- other UPDATE pass without a call; the extension's own soft deletes set
-- delete_batch themselves and pass too.
CREATE FUNCTION deal_store_internal.soft_delete_by_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity regclass := deal_store_internal._table_of(TG_RELID)::regclass;   -- on Citus TG_RELID is a shard
    -- the five tables differ in their columns: read the row by name
    r jsonb := to_jsonb(NEW);
    deal uuid := (r ->> CASE WHEN entity = 'deal_store.deals'::regclass THEN 'id' ELSE 'deal_id' END)::uuid;
    prev_reason text := current_setting('deal_store.reason', true);
    t record;
BEGIN
    IF r ->> 'superseded_at' IS NOT NULL THEN
        RETURN NULL;   -- a fact's history row is never deleted on its own: it goes with its fact's purge
    END IF;
    PERFORM deal_store_internal._require_right(deal, CASE WHEN entity = 'deal_store.deals'::regclass THEN 'manage' ELSE 'write' END);
    NEW.deleted_at := now();
    NEW.deleted_by := deal_store.current_actor();
    NEW.delete_batch := gen_random_uuid();
    NEW.delete_reason := coalesce(NEW.delete_reason, nullif(prev_reason, ''), 'UPDATE statement');
    PERFORM deal_store_internal._set_local('deal_store.reason', NEW.delete_reason);
    FOR t IN SELECT * FROM deal_store_internal._owned(entity) LOOP
        PERFORM deal_store_internal._mark_deleted(t.tbl, t.scope, ARRAY[deal], ARRAY[NEW.id], ARRAY[NEW.delete_reason], NEW.delete_batch);
    END LOOP;
    PERFORM deal_store_internal._set_local('deal_store.reason', prev_reason);
    RETURN NEW;
END $$;
COMMENT ON FUNCTION deal_store_internal.soft_delete_by_update() IS
    'Trigger (BEFORE UPDATE, when deleted_at goes from NULL to a value and delete_batch stays NULL): makes UPDATE … SET deleted_at = now() the soft delete soft_delete() writes: deleted_at = now(), deleted_by = the actor, a batch of its own, the reason (the row''s delete_reason, else deal_store.reason, else ''UPDATE statement''), and the rows it owns in the same batch. Needs the caller''s write right on the deal (manage for a deal). A fact''s history row is left as it is.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER soft_delete_by_update BEFORE UPDATE OF deleted_at ON deal_store.%I FOR EACH ROW
            WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL AND NEW.delete_batch IS NULL)
            EXECUTE FUNCTION deal_store_internal.soft_delete_by_update()', t);
    END LOOP;
END $$;

-- A DELETE through an active_* view finds its rows under the read policies, so
-- a login that needs an actor and has none would delete nothing and hear
-- nothing: the statement is refused first (42501 with a hint), as a write on
-- the tables is by their policies.
CREATE FUNCTION deal_store_internal.require_actor() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- the write-side lookup raises 42501 when this login needs an actor and has none
    PERFORM deal_store.my_deals('analyst');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store_internal.require_actor() IS
    'Trigger (BEFORE DELETE FOR EACH STATEMENT on the active_* views): 42501 with a hint when the login needs an actor (deal_store_service, deal_store.require_actor) and has none, instead of a DELETE 0.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER require_actor BEFORE DELETE ON deal_store.%I FOR EACH STATEMENT
            EXECUTE FUNCTION deal_store_internal.require_actor()', 'active_' || t);
    END LOOP;
END $$;

-- UPDATE … SET deleted_at = NULL on a soft-deleted row: refused with what to do
-- instead (restore() brings back the row and what was deleted with it). A
-- restore sets a superuser-only setting for its own statements and passes.
CREATE FUNCTION deal_store_internal.refuse_undelete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity text := deal_store_internal._table_of(TG_RELID)::regclass::text;   -- on Citus TG_RELID is a shard
BEGIN
    -- restore() sets deal_store.undeleting (superusers only) for its own statements;
    -- read after the library is loaded (_table_of above), which discards a value
    -- an ordinary role set before it defined the setting
    IF current_setting('deal_store.undeleting', true) = 'on' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'a soft-deleted row of % comes back through deal_store.restore(), not by clearing deleted_at', entity
        USING ERRCODE = '23514',
              HINT = pg_catalog.format('SELECT deal_store.restore(%L, %L) restores it and the rows deleted with it.', entity, NEW.id);
END $$;
COMMENT ON FUNCTION deal_store_internal.refuse_undelete() IS
    'Trigger (BEFORE UPDATE, when deleted_at is cleared): 23514 with a hint naming deal_store.restore(), which restores the row and its batch (restore sets deal_store.undeleting, a superuser-only setting, for its own statements).';

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

-- DELETE through an active_* view: the soft delete, reported as deleted rows
-- (DELETE 1, what ORMs count), where a DELETE on the table reports DELETE 0
-- (its BEFORE trigger skips the real delete).
CREATE FUNCTION deal_store_internal.delete_through_view() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store.soft_delete(TG_ARGV[0]::regclass, OLD.id, 'DELETE statement');
    RETURN OLD;
END $$;
COMMENT ON FUNCTION deal_store_internal.delete_through_view() IS
    'Trigger (INSTEAD OF DELETE on the active_* views): soft-deletes the row with deal_store.soft_delete (with cascade) and reports it deleted, so DELETE through a view returns the number of rows it soft-deleted.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'facts', 'findings', 'gaps'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER delete_through_view INSTEAD OF DELETE ON deal_store.%I FOR EACH ROW
            EXECUTE FUNCTION deal_store_internal.delete_through_view(%L)', 'active_' || t, 'deal_store.' || t);
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------
-- TRUNCATE bypasses every row trigger (soft delete, audit): refused on every
-- deal table. deal_store.purge is the only real delete.

CREATE FUNCTION deal_store_internal.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % is not allowed: it would bypass soft delete and the audit log', deal_store_internal._table_of(TG_RELID)::regclass
        USING ERRCODE = '42501', HINT = 'Use deal_store.soft_delete, then deal_store.purge for rows that must go.';
END $$;
COMMENT ON FUNCTION deal_store_internal.refuse_truncate() IS
    'Trigger (BEFORE TRUNCATE): refuses TRUNCATE of a deal table with 42501; TRUNCATE would bypass the soft-delete and audit row triggers.';
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'analysis_runs', 'facts', 'findings', 'fact_finding_links', 'gaps',
                             'pending_changes', 'notifications'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON deal_store.%I
                                   FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.refuse_truncate()', t);
    END LOOP;
END $$;
