-- The audit log: the Rust trigger deal_store_internal.audit_row on every table of the
-- extension (and on users' tables through enable_audit), an append-only log,
-- and the functions that read it.

COMMENT ON FUNCTION deal_store_internal.audit_row() IS
    'Trigger (AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW): captures one deal_activity_log entry per meaningful change with actor, reason, run, action (insert, update, soft_delete, restore, purge) and details (new row, old row, or the changed columns as {"col": {"old", "new"}}). Updates of noise columns only (updated_at, search_vector, item_checksum) log nothing. The entries are written when the statement ends, by audit_flush.';
COMMENT ON FUNCTION deal_store_internal.audit_flush() IS
    'Trigger (AFTER INSERT OR UPDATE OR DELETE, FOR EACH STATEMENT): writes the entries audit_row captured during the statement to deal_activity_log with one INSERT. A table without it is logged row by row.';

COMMENT ON FUNCTION deal_store.uuid_v7() IS
    'A new version 7 (time-ordered) uuid; the default of deal_activity_log.id, so the log''s primary key grows at its right edge.';
ALTER TABLE deal_store.deal_activity_log ALTER COLUMN id SET DEFAULT deal_store.uuid_v7();

-- An entry without a deal (a change of a table outside deal_store, purge_audit's
-- own entry) has deal_id NULL, or on Citus the nil uuid (src/audit.rs, NO_DEAL).
COMMENT ON FUNCTION deal_store_internal._no_deal() IS
    'Internal: the deal_id of a log entry without a deal: NULL, or the nil uuid when Citus distributes the log (no NULL in a distribution column).';

-- ---------------------------------------------------------------------------
-- Append-only: no UPDATE, DELETE or TRUNCATE, for any role, owner included.

CREATE FUNCTION deal_store_internal.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('deal_store.audit_purge', true) = 'on'
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'deal_store.deal_activity_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = '42501', HINT = 'Only deal_store.purge_audit (members of deal_store_admin) removes entries.';
END $$;
COMMENT ON FUNCTION deal_store_internal.audit_log_append_only() IS
    'Trigger: rejects UPDATE, DELETE and TRUNCATE of deal_activity_log with 42501, except the DELETE that purge_audit performs for a superuser.';

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON deal_store.deal_activity_log
    FOR EACH ROW EXECUTE FUNCTION deal_store_internal.audit_log_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON deal_store.deal_activity_log
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.audit_log_append_only();

CREATE FUNCTION deal_store.purge_audit(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM deal_store_internal._require_right(NULL, 'administer');
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    PERFORM deal_store_internal._set_local('deal_store.audit_purge', 'on');
    DELETE FROM deal_store.deal_activity_log l WHERE l.created_at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM deal_store_internal._set_local('deal_store.audit_purge', 'off');
    INSERT INTO deal_store.deal_activity_log (deal_id, user_id, action, entity_type, reason, details)
    VALUES (deal_store_internal._no_deal(), deal_store.current_actor(), 'purge_audit', 'deal_activity_log',
            nullif(current_setting('deal_store.reason', true), ''),
            jsonb_build_object('older_than', older_than::text, 'rows', n));
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.purge_audit(interval) IS
    'Removes audit entries older than older_than; members of deal_store_admin only (42501 otherwise). The purge itself is logged as action purge_audit. Returns the number of entries removed.';

-- ---------------------------------------------------------------------------
-- Auditing a user's own tables.

CREATE FUNCTION deal_store.enable_audit(tbl regclass) RETURNS void
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
                   'FOR EACH ROW EXECUTE FUNCTION deal_store_internal.audit_row()', tbl);
    EXECUTE format('CREATE OR REPLACE TRIGGER deal_store_audit_flush AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.audit_flush()', tbl);
END $$;
COMMENT ON FUNCTION deal_store.enable_audit(regclass) IS
    'Puts the deal_store audit triggers (audit_row per row, audit_flush per statement) on a table (any primary key, composite included; idempotent). Runs as the caller: members of deal_store_admin, on tables they own. 55000 when the table has no primary key, 22023 when it is not an ordinary table.';

CREATE FUNCTION deal_store.disable_audit(tbl regclass) RETURNS void
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

-- Every table of the extension is audited, except the log itself and the
-- notifications: a notification is its user's own, and the log is read by the
-- whole team of its deal.
SELECT deal_store.enable_audit(t)
FROM pg_catalog.unnest(ARRAY['deal_store.users', 'deal_store.deals', 'deal_store.documents', 'deal_store.analysis_runs',
                             'deal_store.facts', 'deal_store.findings', 'deal_store.fact_finding_links', 'deal_store.gaps',
                             'deal_store.pending_changes']::pg_catalog.regclass[]) t;

-- ---------------------------------------------------------------------------
-- Reading the log.

CREATE FUNCTION deal_store.entity_history(entity_type text, entity_id uuid DEFAULT NULL, entity_key jsonb DEFAULT NULL)
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
COMMENT ON FUNCTION deal_store.entity_history(text, uuid, jsonb) IS
    'Every audit entry of one row in the deals the caller may see, oldest first. entity_type as the log records it (fact, finding, gap, deal, document, deal_member, ... for deal_store''s tables, schema.table for others; see entity_type_of); the row by its uuid id (entity_id) or, for a table without one, by its primary key as an object (entity_key => ''{"deal_id": "…", "user_id": "…"}'', any key order).';
COMMENT ON FUNCTION deal_store.entity_type_of(oid) IS
    'The entity_type under which the audit log records rows of a table, e.g. entity_type_of(''deal_store.facts''::regclass) = fact (the merge queue''s name), entity_type_of(''public.valuations''::regclass) = public.valuations. NULL for no such relation.';

CREATE FUNCTION deal_store.deal_activity(deal_id uuid, since timestamptz DEFAULT NULL, lim integer DEFAULT 100)
RETURNS SETOF deal_store.deal_activity_log
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
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

CREATE FUNCTION deal_store.fact_as_of(fact_id uuid, at timestamptz) RETURNS jsonb
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
            deal := deal_store_internal._id_in_one_deal('deal_store.facts', fact_id, 'read');
            SELECT f.created_at INTO valid_from FROM deal_store.facts f WHERE f.deal_id = deal AND f.id = h.version_id;
        END IF;
        IF valid_from <= at AND (h.superseded_at IS NULL OR at < h.superseded_at) THEN
            RETURN h.content;
        END IF;
        valid_from := h.superseded_at;
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store.fact_as_of(uuid, timestamptz) IS
    'The fact''s content (the checksummed fields) as it was at that moment, from its version history; NULL before the fact existed. P0002 for an unknown fact.';
