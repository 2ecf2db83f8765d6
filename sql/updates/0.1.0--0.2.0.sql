-- 0.1.0 -> 0.2.0: what no generator can know (tables, columns, data moves, drops of
-- changed signatures, roles, grants, triggers, the Rust functions' declarations).
-- Each '-- @routine name' stands for that routine's current definition in
-- sql/*.sql: ./scripts/gen-upgrade writes sql/deal_store--0.1.0--0.2.0.sql.
-- deal_store 0.1.0 -> 0.2.0, run by ALTER EXTENSION deal_store UPDATE (install
-- the 0.2.0 library first). Every change to the SQL surface since 0.1.0 has its
-- part here, in the order it was made; tests/upgrade proves that a 0.1.0
-- database upgraded by this script has the same catalog as a fresh 0.2.0
-- install and keeps every row. README "Upgrading" says what an upgrade changes.
\echo Use "ALTER EXTENSION deal_store UPDATE" to load this file. \quit
-- routine bodies are checked when they first run (some name tables created further down)
SET check_function_bodies = off;

-- 0.2.0: TRUNCATE of a deal table is refused.
-- @routine deal_store.refuse_truncate

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
-- without credentials; both go through the typed format of _export_format.
CREATE FUNCTION deal_store._export_format(doc anyelement) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'export_format_wrapper';
COMMENT ON FUNCTION deal_store._export_format(anyelement) IS
    'Internal: reads an export document through the typed format_version 1 (Rust structs) and returns what they serialize to; 22023 naming the JSON path of the first bad field. export_deal writes through it and import_deal reads through it.';
-- @routine deal_store.export_deal

-- 0.2.0: an id passed alone that names rows of more than one deal is an error (P0003),
-- not a pick.

DROP FUNCTION IF EXISTS deal_store._lock_row(regclass, uuid);

-- @routine deal_store._set_gap_resolution

-- @routine deal_store.fact_history

-- @routine deal_store._decide

-- 0.2.0: every function that takes a deal raises P0002 for a deal that does not exist,
-- instead of an empty answer.
-- @routine deal_store._require_deal

-- @routine deal_store.conflicts

-- @routine deal_store._apply_changes

-- @routine deal_store._signal_review

-- @routine deal_store.deal_activity

-- @routine deal_store.latest_completed_run

-- @routine deal_store.search_deal

-- 0.2.0: plpgsql_check runs clean: dynamic SQL built only from quote_ident'ed names
-- and constants says so; search_facts also checks its deal.
-- @routine deal_store._insert_rows

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

-- @routine deal_store.search_facts

-- 0.2.0: access control: group roles, users.db_role, deal teams,
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
DROP FUNCTION IF EXISTS deal_store._claim(integer, integer);

-- @routine deal_store.deal_summary

-- @routine deal_store._set_deal_status

-- @routine deal_store.audit_log_append_only

-- @routine deal_store.purge_audit

-- @routine deal_store.enable_audit

-- @routine deal_store.disable_audit

-- @routine deal_store.restore

-- @routine deal_store.purge

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

-- @routine deal_store.owner_is_lead

CREATE TRIGGER owner_is_lead AFTER INSERT ON deal_store.deals
    FOR EACH ROW EXECUTE FUNCTION deal_store.owner_is_lead();

-- @routine deal_store.add_member

-- @routine deal_store.remove_member

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


COMMENT ON FUNCTION deal_store.sees_all_deals() IS
    'True when the caller sees and changes every deal: a superuser or a member of deal_store_admin. Used by the row-level security policies.';
COMMENT ON FUNCTION deal_store.my_deals(text) IS
    'The deals in which the acting user (current_actor) holds min_role (viewer, analyst, reviewer, lead) or a stronger deal role. Used by the row-level security policies, once per statement.';
COMMENT ON FUNCTION deal_store._require_right(uuid, text) IS
    'Internal: raises 42501, naming the deal and what is missing, unless the caller has the right needs (read, write, review, manage; administer with a NULL deal) on the deal: the group role of its login and the deal role of its actor.';

-- 0.2.0: one way to apply a change:
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
DROP FUNCTION IF EXISTS deal_store.diff_summary(uuid, jsonb, text[]);
-- @routine deal_store.diff_summary

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
-- @routine deal_store._mark_deleted

-- a fact's content is its content fields, named in one place

-- the apply path
DROP FUNCTION IF EXISTS deal_store._settle_batch(uuid[], text);
DROP FUNCTION IF EXISTS deal_store._settle(deal_store.pending_changes, text);
DROP FUNCTION IF EXISTS deal_store._apply_change(deal_store.pending_changes);

-- @routine deal_store._apply

DROP FUNCTION IF EXISTS deal_store._claim(integer, integer, uuid[]);
-- @routine deal_store._claim

-- proposals return what became of each change: a new result column
DROP FUNCTION IF EXISTS deal_store.propose_facts(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store.propose_findings(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store.propose_gaps(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store._propose(text, uuid, anyelement, text[]);
CREATE FUNCTION deal_store."_propose"("entity_type" TEXT, "run_id" uuid, "incoming" anyelement, "domains" TEXT[])
RETURNS TABLE ("change_type" TEXT, "confidence_tier" INT, "proposed" bigint, "status" TEXT)
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'propose_internal_wrapper';
COMMENT ON FUNCTION deal_store._propose(text, uuid, anyelement, text[]) IS
    'Internal: the Rust body of propose_facts, propose_findings and propose_gaps.';

-- grants as access.sql gives them: the API runs as the owner, internals are the owner's

-- 0.2.0: the users' side:
-- soft delete the way clients write it (DELETE through the views reports its
-- rows; UPDATE … SET deleted_at = now() is a soft delete), calls that say what
-- they did (complete_run / fail_run return the run, process_queue its counts),
-- typed views for people and BI tools, entity_history by composite key, search
-- that composes (search_rank), set_actor.

-- @routine deal_store._owned

-- @routine deal_store.soft_delete_by_update

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
-- @routine deal_store.delete_through_view

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
DROP FUNCTION IF EXISTS deal_store.complete_run(uuid);
DROP FUNCTION IF EXISTS deal_store.fail_run(uuid, text);
DROP FUNCTION IF EXISTS deal_store._finish_run(uuid, text, text);
-- @routine deal_store._finish_run

-- @routine deal_store.complete_run

-- @routine deal_store.fail_run

-- process_queue_batch and process_queue report what they did
DROP PROCEDURE IF EXISTS deal_store.process_queue(integer, integer);
DROP FUNCTION IF EXISTS deal_store.process_queue_batch(integer, integer);
-- @routine deal_store.process_queue_batch

-- The worker. Its INOUT parameters are its result (CALL shows them as one row);
-- a caller passes nothing for them.
-- @routine deal_store.process_queue

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
DROP FUNCTION IF EXISTS deal_store.entity_history(text, uuid);
-- @routine deal_store.entity_history

-- hash: a composite key of any size (a btree entry is limited to a third of a page)
CREATE INDEX deal_activity_log_entity_key_idx ON deal_store.deal_activity_log USING hash (entity_key) WHERE entity_key IS NOT NULL;

-- search that composes
-- @routine deal_store.search_rank

-- @routine deal_store.search_tsquery

-- @routine deal_store.set_actor

-- grants as access.sql gives them
ALTER VIEW deal_store.deal_overview SET (security_invoker = true);
ALTER VIEW deal_store.facts_by_domain SET (security_invoker = true);
ALTER VIEW deal_store.activity SET (security_invoker = true);
GRANT SELECT ON deal_store.deal_overview, deal_store.facts_by_domain, deal_store.activity TO deal_store_reader;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;

-- 0.2.0: the change feed:
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
-- @routine deal_store._log_seq

-- @routine deal_store._log_node

-- @routine deal_store._horizon

-- Each node's horizon, element n + 1 for node n (plain PostgreSQL: just this one).
-- On Citus the coordinator's comes first, then the workers' (asked over their own
-- connections: a later read there sees every transaction below them). An entry the
-- coordinator writes lands on a worker, where a two-phase commit makes it visible
-- only after the coordinator's own commit: while a worker still holds a prepared
-- transaction of a node, that node's horizon is 0 when `settled` (nothing new of
-- it is delivered yet).
-- @routine deal_store._horizons

-- A consumer by name, locked, owned by the caller (admins may use any).
-- @routine deal_store._consumer

-- @routine deal_store.register_consumer

-- @routine deal_store._require_feed_reader

-- @routine deal_store.read_changes

-- @routine deal_store.ack_changes

-- @routine deal_store.consumers

-- @routine deal_store.remove_consumer

-- Wake-up: a LISTEN deal_store_feed gets one notification per committed
-- transaction that wrote log entries while a consumer is registered. The data
-- is read with read_changes; a missed notification loses nothing.
-- @routine deal_store.feed_wakeup

CREATE TRIGGER feed_wakeup AFTER INSERT ON deal_store.deal_activity_log
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store.feed_wakeup();

-- grants as access.sql gives them
REVOKE ALL ON deal_store.feed_consumers FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;

-- 0.2.0: idempotent calls:
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

-- @routine deal_store._idempotent

-- @routine deal_store._remember

DROP FUNCTION IF EXISTS deal_store.start_run(uuid, text[], boolean);
DROP FUNCTION IF EXISTS deal_store.propose_facts(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store.propose_findings(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store.propose_gaps(uuid, jsonb, text[]);
DROP FUNCTION IF EXISTS deal_store.accept_changes(uuid, integer, uuid);
DROP FUNCTION IF EXISTS deal_store.import_deal(jsonb);
-- @routine deal_store.start_run

-- propose_*: the Rust proposal, once per idempotency key. Its result (a few
-- rows of counts) is kept as jsonb, so a repeated call returns the same rows.
-- @routine deal_store._propose_once

-- @routine deal_store.propose_facts

-- @routine deal_store.propose_findings

-- @routine deal_store.propose_gaps

-- @routine deal_store.accept_changes

-- @routine deal_store.import_deal

-- grants as access.sql gives them
REVOKE ALL ON deal_store.idempotency_keys FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;

-- 0.2.0: what changed, for people:
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
-- @routine deal_store._unseen

-- A user's deals with what the caller has not seen in each (replaces the
-- dashboard's first version: the unseen count needs the marks above).
DROP FUNCTION IF EXISTS deal_store.deals_for_user(uuid, boolean);
-- @routine deal_store._deals_for_user
-- @routine deal_store.deals_for_user

-- @routine deal_store.mark_seen

-- @routine deal_store.changes_since_seen

-- ---------------------------------------------------------------------------
-- A deal's facts as they were at a moment, from the versions stored: a version
-- is current from the end of the one before it (or the fact's creation) until
-- it was superseded, and live until it was deleted.

-- @routine deal_store._facts_as_of

-- new / update (with changed fields) / delete from one set of facts to another
-- @routine deal_store._fact_changes

-- @routine deal_store.diff_runs

-- ---------------------------------------------------------------------------
-- Document versions.

-- @routine deal_store.add_document_version

-- @routine deal_store.document_changes

-- grants as access.sql gives them
REVOKE ALL ON deal_store.seen_marks FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- 0.2.0: triggers that name their table, not their shard: on Citus a
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

-- @routine deal_store.delete_to_soft_delete

DROP FUNCTION IF EXISTS deal_store._id_in_one_deal(regclass, uuid, text);
-- @routine deal_store._id_in_one_deal

REVOKE ALL ON FUNCTION deal_store._id_in_one_deal(regclass, uuid, text) FROM PUBLIC;

ALTER FUNCTION deal_store.add_document_version(uuid, text, text, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

DROP FUNCTION IF EXISTS deal_store._apply_set(uuid[], uuid[], text);
-- @routine deal_store._apply_set

REVOKE ALL ON FUNCTION deal_store._apply_set(uuid, uuid[], text) FROM PUBLIC;

-- @routine deal_store._claim_by_deal

REVOKE ALL ON FUNCTION deal_store._claim_by_deal(integer, integer, uuid[]) FROM PUBLIC;

CREATE FUNCTION deal_store."_distributed"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'distributed_sql_wrapper';
COMMENT ON FUNCTION deal_store._distributed() IS
    'Internal: true when Citus distributes deal_store''s deal tables (pending_changes is hash-distributed).';
REVOKE ALL ON FUNCTION deal_store._distributed() FROM PUBLIC;

ALTER FUNCTION deal_store.process_queue_batch(integer, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.search_deal(uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.entity_history(text, uuid, jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

DROP FUNCTION IF EXISTS deal_store._lock_row(regclass, uuid, text);
-- @routine deal_store._lock_row

REVOKE ALL ON FUNCTION deal_store._lock_row(regclass, uuid, text, uuid) FROM PUBLIC;

DROP FUNCTION IF EXISTS deal_store.soft_delete(regclass, uuid, text);
-- @routine deal_store.soft_delete

REVOKE ALL ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) FROM PUBLIC;
ALTER FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
GRANT EXECUTE ON FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) TO deal_store_analyst;

ALTER FUNCTION deal_store.restore(regclass, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.start_run(uuid, text[], boolean, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.fact_history(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- 0.2.0: deal_store.distribute() and row-level security on Citus:
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

-- @routine deal_store._create_policies

REVOKE ALL ON FUNCTION deal_store._create_policies(boolean) FROM PUBLIC;

-- @routine deal_store._placement

-- An error message as the table would give it: on Citus a worker names the
-- shard ("facts_102118"); a note a reviewer reads names the table.
-- @routine deal_store._unsharded

-- Run on every node (the extension's tables exist on each): what Citus cannot
-- distribute goes, and the policies take their Citus form.
-- @routine deal_store._distribute_prepare

-- @routine deal_store.distribute

REVOKE ALL ON FUNCTION deal_store._placement(), deal_store._unsharded(text), deal_store._distribute_prepare(), deal_store.distribute() FROM PUBLIC;

-- was LANGUAGE sql (Citus cannot plan an SQL function's parameters; its lookup now names the deal)
-- @routine deal_store.fact_as_of

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

-- facts by a call of their own, then findings and gaps (Citus)

ALTER FUNCTION deal_store.diff_runs(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the unseen entries and the reviewer's right as values first (Citus)

ALTER FUNCTION deal_store.changes_since_seen(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- mark_seen: the deal's last entry and the snapshot that read it in one statement, on the deal's node; one row of values, no parameter in the ON CONFLICT (Citus)

ALTER FUNCTION deal_store.mark_seen(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- document_changes: the run numbers as a value first (Citus)

ALTER FUNCTION deal_store.document_changes(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the extension's settings are set inside a call of their own, so that Citus
-- passes them on to the workers also when a client calls a function on its own
-- @routine deal_store._set_local

REVOKE ALL ON FUNCTION deal_store._set_local(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._set_local(text, text) TO deal_store_reader;
-- set_actor: was LANGUAGE sql with set_config

-- an entry without a deal: NULL, or on Citus the nil uuid (the log's distribution column)
CREATE FUNCTION deal_store."_no_deal"() RETURNS uuid
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'no_deal_wrapper';
COMMENT ON FUNCTION deal_store._no_deal() IS
    'Internal: the deal_id of a log entry without a deal: NULL, or the nil uuid when Citus distributes the log (no NULL in a distribution column).';
REVOKE ALL ON FUNCTION deal_store._no_deal() FROM PUBLIC;

ALTER FUNCTION deal_store.purge_audit(interval) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.soft_delete(regclass, uuid, text, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.purge(regclass, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- import_deal: on Citus, its reads of every shard and its write of a new owner over one connection per node

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- a conflict's note names the table, not the shard (Citus)

-- the actor as a value, not a call inside the query (Citus)

-- the deals first, then each one's unseen count, in PL/pgSQL (Citus)

REVOKE ALL ON FUNCTION deal_store._deals_for_user(uuid, boolean) FROM PUBLIC;

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
DROP FUNCTION IF EXISTS deal_store.touch_updated_at();

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

-- The eligible changes process_queue leaves behind (the caller's deals).
-- @routine deal_store._queue_remaining

REVOKE ALL ON FUNCTION deal_store._queue_remaining(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deal_store._queue_remaining(integer) TO deal_store_reviewer;

-- Names no caller can hijack: every routine of the extension is parsed and run
-- under search_path = pg_catalog, pg_temp. Routines written in SQL or PL/pgSQL
-- get it as a SET clause (the loop below gives it to any that lacks one, so a
-- routine added later cannot be forgotten); the Rust library's routines run
-- their SQL through one module that pins the same path (src/spi.rs, enforced by
-- clippy); SQL routines with a standard body (BEGIN ATOMIC / RETURN) were parsed
-- when they were created. What remains is the one list below.
-- @routine deal_store._unpinned

REVOKE ALL ON FUNCTION deal_store._unpinned() FROM PUBLIC;


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

-- @routine deal_store._escaped

-- @routine deal_store._headline

REVOKE ALL ON FUNCTION deal_store._escaped(text), deal_store._headline(regconfig, text, tsquery, text) FROM PUBLIC;

ALTER FUNCTION deal_store.search_facts(uuid, text, text, text, text, float8, integer, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

ALTER FUNCTION deal_store.search_deal(uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- The importer owns what it imports; readers see the users they share a deal with.

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

SELECT deal_store._create_policies(deal_store._distributed());

-- Idempotency keys and feed consumer names are per caller role.

ALTER TABLE deal_store.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, key);

ALTER TABLE deal_store.feed_consumers DROP CONSTRAINT feed_consumers_pkey,
    ADD CONSTRAINT feed_consumers_pkey PRIMARY KEY (owner_role, name);

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

ALTER FUNCTION deal_store.import_deal(jsonb, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- Grants on routines as access.sql gives them (the API SECURITY DEFINER with a
-- pinned search_path, each executable by its group role), over the final set of
-- routines: no PUBLIC execute but where access.sql grants it.
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store FROM PUBLIC;
-- @grants
GRANT EXECUTE ON FUNCTION deal_store.version() TO PUBLIC;
