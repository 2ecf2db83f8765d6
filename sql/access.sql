-- deal_store: who may do what. Group roles, deal teams, row-level security,
-- grants, and the API functions that run with the extension owner's rights.
--
-- This file is the whole access model: the 0.1.0 -> 0.2.0 upgrade script runs
-- the same text, so a fresh install and an upgraded database end up equal.
--
-- A login role gets its rights from two places, both required:
--   * the group role a DBA grants it (deal_store_reader < deal_store_analyst <
--     deal_store_reviewer < deal_store_admin; deal_store_service for an
--     application acting for its users): which tables and functions it may use;
--   * the deal role its user holds in deal_members (viewer < analyst <
--     reviewer < lead): in which deals. Admins see and change every deal.
-- Rows: row-level security on every deal-owned table. Functions: SECURITY
-- DEFINER with a pinned search_path; each checks the caller's right on the
-- deal (deal_store_internal._require_right, 42501 naming the deal and the right).

-- ---------------------------------------------------------------------------
-- Group roles: cluster-wide, created when missing, never dropped by DROP EXTENSION.

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
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.refuse_truncate();

COMMENT ON FUNCTION deal_store_internal.access_changed() IS
    'Trigger (AFTER, FOR EACH STATEMENT on users and deal_members): forgets what this session resolved about actors, roles and teams.';
CREATE TRIGGER access_changed AFTER INSERT OR UPDATE OR DELETE ON deal_store.users
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.access_changed();
CREATE TRIGGER access_changed AFTER INSERT OR UPDATE OR DELETE ON deal_store.deal_members
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.access_changed();

CREATE FUNCTION deal_store_internal.owner_is_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF deal_store_internal._restoring() THEN
        RETURN NULL;   -- a restore brings the team back as it was
    END IF;
    INSERT INTO deal_store.deal_members (deal_id, user_id, role, added_by)
    VALUES (NEW.id, NEW.user_id, 'lead', deal_store.current_actor())
    ON CONFLICT (deal_id, user_id) DO UPDATE SET role = 'lead';
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store_internal.owner_is_lead() IS
    'Trigger (AFTER INSERT on deals): makes the deal''s owner a lead of it (not during a restore: the team is restored as it was).';
CREATE TRIGGER owner_is_lead AFTER INSERT ON deal_store.deals
    FOR EACH ROW EXECUTE FUNCTION deal_store_internal.owner_is_lead();

CREATE FUNCTION deal_store.add_member(deal_id uuid, user_id uuid, role text DEFAULT 'viewer') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'manage');
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
    PERFORM deal_store_internal._require_right(deal_id, 'manage');
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
-- Row-level security, written by one function in one of two forms.
-- PostgreSQL: the deal lists are computed once per statement (the scalar
-- subqueries become InitPlans), so a policy costs an array lookup per row; the
-- member's test comes first, so for a member it is the only one.
-- Citus (deal_store.distribute()): a policy may not hold a subquery and is
-- checked on the shards, so each row asks deal_store_internal._may(tableoid, ...), which
-- reads the actor's team from the shard's own node once per transaction.

CREATE FUNCTION deal_store_internal._create_policies(on_citus boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    -- %1$I the deal column, %2$L the deal role it needs
    member text := CASE WHEN on_citus THEN 'deal_store_internal._may(tableoid, %1$I, %2$L)'
                   ELSE '%1$I = ANY ((SELECT deal_store.my_deals(%2$L))::uuid[]) OR (SELECT deal_store.sees_all_deals())' END;
    -- %1$I the user column: the row is the actor's own
    own text := CASE WHEN on_citus THEN 'deal_store_internal._acts_as(tableoid, %1$I)'
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
    EXECUTE format('CREATE POLICY admins_write ON deal_store.users FOR ALL USING (%1$s) WITH CHECK (%1$s)',
        CASE WHEN on_citus THEN 'deal_store_internal._may(tableoid, NULL::uuid, ''viewer'')' ELSE '(SELECT deal_store.sees_all_deals())' END);
END $$;
COMMENT ON FUNCTION deal_store_internal._create_policies(boolean) IS
    'Internal: (re)creates every row-level security policy of deal_store (users: a reader sees itself and the members of its deals): with subqueries evaluated once per statement (PostgreSQL), or, on_citus, with deal_store_internal._may / _acts_as per row (Citus allows no subquery in a policy on a distributed table).';
SELECT deal_store_internal._create_policies(false);

-- The extension's own settings for the rest of the transaction: a SET LOCAL
-- of its own (Rust, src/shard.rs), the one SET that Citus passes on to the
-- workers, run inside a call (Citus passes a SET LOCAL on only in a
-- transaction block or inside a function call).
COMMENT ON FUNCTION deal_store_internal._set_local(text, text) IS
    'Internal: SET LOCAL of one of deal_store''s settings (actor, reason, run_id, hard_delete, audit_purge, importing_history, undeleting; 22023 for another). On Citus the one SET passed on to the workers the transaction uses (any other stays on its node). Runs as the caller: the superuser-only settings stay superuser-only.';

-- The actor for the rest of the transaction, from a uuid (a client binds a
-- uuid parameter; SET cannot take one).
CREATE FUNCTION deal_store.set_actor(user_id uuid) RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- SET LOCAL rather than set_config: Citus passes SET LOCAL on to the nodes the transaction uses
    PERFORM deal_store_internal._set_local('deal_store.actor', user_id::text);
    RETURN deal_store.current_actor();
END $$;
COMMENT ON FUNCTION deal_store.set_actor(uuid) IS
    'Names the acting user for the rest of the transaction (SET LOCAL deal_store.actor, from a bindable uuid; NULL clears it) and returns current_actor(): 42501 when this login may not act for that user.';

-- ---------------------------------------------------------------------------
-- Grants. Nothing is granted to PUBLIC; each group role gets what its members need.

REVOKE ALL ON SCHEMA deal_store, deal_store_internal FROM PUBLIC;
-- the internal schema's routines stay closed (EXECUTE is granted one by one
-- below); its USAGE lets routines that run as the caller reach the ones granted
GRANT USAGE ON SCHEMA deal_store, deal_store_internal TO deal_store_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA deal_store FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA deal_store FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA deal_store, deal_store_internal FROM PUBLIC;
-- the one routine anyone may call: which library and catalog serve this database
GRANT EXECUTE ON FUNCTION deal_store.version() TO PUBLIC;
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
-- feed consumers are read through consumers(): each role sees its own; idempotency keys are internal
REVOKE ALL ON deal_store.feed_consumers, deal_store.idempotency_keys, deal_store.seen_marks, deal_store.run_output FROM deal_store_reader;
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
        ('deal_store_internal._content_checksum(text, anyelement)', 'deal_store_reader', false),
        ('deal_store_internal._content_canonical(text, anyelement)', 'deal_store_reader', false),
        ('deal_store.search_config()', 'deal_store_reader', false),
        ('deal_store.headline_options()', 'deal_store_reader', false),
        ('deal_store.search_tsquery(text, regconfig)', 'deal_store_reader', false),
        ('deal_store.search_rank(tsvector, tsquery)', 'deal_store_reader', false),
        ('deal_store.set_actor(uuid)', 'deal_store_reader', false),
        ('deal_store_internal._set_local(text, text)', 'deal_store_reader', false),
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
        ('deal_store.entity_history(text, uuid, jsonb)', 'deal_store_reader', true),
        ('deal_store.entity_type_of(oid)', 'deal_store_reader', false),
        ('deal_store_internal._table_of(oid)', 'deal_store_reader', false),
        -- the row-level security policies on Citus
        ('deal_store_internal._may(oid, uuid, text)', 'deal_store_reader', false),
        ('deal_store_internal._acts_as(oid, uuid)', 'deal_store_reader', false),
        -- the change feed: a consumer is its registering role's; reads see the caller's deals
        ('deal_store.register_consumer(text, boolean)', 'deal_store_reader', true),
        ('deal_store.read_changes(text, integer)', 'deal_store_reader', true),
        ('deal_store.ack_changes(text, bigint)', 'deal_store_reader', true),
        ('deal_store.consumers()', 'deal_store_reader', true),
        ('deal_store.remove_consumer(text)', 'deal_store_reader', true),
        -- what changed, for people
        ('deal_store.mark_seen(uuid)', 'deal_store_reader', true),
        ('deal_store.changes_since_seen(uuid)', 'deal_store_reader', true),
        ('deal_store.diff_runs(uuid, uuid)', 'deal_store_reader', true),
        ('deal_store.document_changes(uuid)', 'deal_store_reader', true),
        ('deal_store.add_document_version(uuid, text, text, text, integer)', 'deal_store_analyst', true),
        -- analyst: runs, proposals, gaps, soft delete
        ('deal_store.start_run(uuid, text[], boolean, text)', 'deal_store_analyst', true),
        ('deal_store.complete_run(uuid)', 'deal_store_analyst', true),
        ('deal_store.fail_run(uuid, text)', 'deal_store_analyst', true),
        ('deal_store.propose_facts(uuid, jsonb, text[], text)', 'deal_store_analyst', true),
        ('deal_store.propose_findings(uuid, jsonb, text[], text)', 'deal_store_analyst', true),
        ('deal_store.propose_gaps(uuid, jsonb, text[], text)', 'deal_store_analyst', true),
        ('deal_store.resolve_gap(uuid, text)', 'deal_store_analyst', true),
        ('deal_store.reopen_gap(uuid)', 'deal_store_analyst', true),
        ('deal_store.soft_delete(regclass, uuid, text, uuid)', 'deal_store_analyst', true),
        ('deal_store.restore(regclass, uuid)', 'deal_store_analyst', true),
        ('deal_store.import_deal(jsonb, text)', 'deal_store_analyst', true),
        ('deal_store.archive_deal(uuid)', 'deal_store_analyst', true),
        ('deal_store.unarchive_deal(uuid)', 'deal_store_analyst', true),
        ('deal_store.add_member(uuid, uuid, text)', 'deal_store_analyst', true),
        ('deal_store.remove_member(uuid, uuid)', 'deal_store_analyst', true),
        -- reviewer: the merge queue
        ('deal_store.accept_change(uuid, text)', 'deal_store_reviewer', true),
        ('deal_store.reject_change(uuid, text)', 'deal_store_reviewer', true),
        ('deal_store.defer_change(uuid, timestamptz, text)', 'deal_store_reviewer', true),
        ('deal_store.accept_changes(uuid, integer, uuid, text)', 'deal_store_reviewer', true),
        ('deal_store.process_queue_batch(integer, integer)', 'deal_store_reviewer', true),
        ('deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint)', 'deal_store_reviewer', false),
        ('deal_store_internal._queue_remaining(integer)', 'deal_store_reviewer', false),
        ('deal_store_internal._outside_transaction_block(text)', 'deal_store_reviewer', false),
        -- admin
        ('deal_store.purge(regclass, uuid)', 'deal_store_admin', true),
        ('deal_store.purge_audit(interval)', 'deal_store_admin', true),
        -- run as the caller: only a table's owner may put the triggers on it or take them off,
        -- so no admin can switch off the audit of deal_store's own tables
        ('deal_store.enable_audit(regclass)', 'deal_store_admin', false),
        ('deal_store.disable_audit(regclass)', 'deal_store_admin', false),
        ('deal_store_internal.audit_row()', 'deal_store_admin', false),
        ('deal_store_internal.audit_flush()', 'deal_store_admin', false)) AS x(fn, grantee, definer)
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
COMMENT ON FUNCTION deal_store_internal._require_right(uuid, text) IS
    'Internal: raises 42501, naming the deal and what is missing, unless the caller has the right needs (read, write, review, manage; administer with a NULL deal) on the deal: the group role of its login and the deal role of its actor.';
COMMENT ON FUNCTION deal_store_internal._may(oid, uuid, text) IS
    'Internal, the row-level security policies on Citus: true when the caller sees every deal or its actor holds min_role or a stronger role in deal (a row''s deal column); rel is the policy''s relation (tableoid): on a worker the team is read from the deal_members shard on the same node, once per transaction.';
COMMENT ON FUNCTION deal_store_internal._acts_as(oid, uuid) IS
    'Internal, the row-level security policies on Citus: true when the caller sees every deal or user_id is its actor (own deals, own notifications); rel as for _may.';

-- ---------------------------------------------------------------------------
-- Names no caller can hijack: every routine of the extension is parsed and run
-- under search_path = pg_catalog, pg_temp. Routines written in SQL or PL/pgSQL
-- get it as a SET clause (the loop below gives it to any that lacks one, so a
-- routine added later cannot be forgotten); the Rust library's routines run
-- their SQL through one module that pins the same path (src/spi.rs, enforced by
-- clippy); SQL routines with a standard body (BEGIN ATOMIC / RETURN) were parsed
-- when they were created. What remains is the one list below.
CREATE FUNCTION deal_store_internal._unpinned() RETURNS TABLE(routine regprocedure, why text)
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT 'deal_store.process_queue(integer, integer, integer, bigint, bigint, bigint)'::pg_catalog.regprocedure,
           'a procedure that COMMITs cannot have a SET clause: every name in it is schema-qualified';
END;
COMMENT ON FUNCTION deal_store_internal._unpinned() IS
    'Internal: the routines of deal_store that run without SET search_path = pg_catalog, pg_temp besides the Rust library''s own (which pin the path inside) and SQL-standard bodies (parsed at creation), and why: the one list the catalog test allows.';
REVOKE ALL ON FUNCTION deal_store_internal._unpinned() FROM PUBLIC;

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang
             WHERE p.pronamespace OPERATOR(pg_catalog.=) ANY (ARRAY['deal_store'::pg_catalog.regnamespace, 'deal_store_internal'::pg_catalog.regnamespace]::pg_catalog.oid[])
               AND l.lanname OPERATOR(pg_catalog.<>) 'c' AND p.prosqlbody IS NULL
               AND NOT coalesce(p.proconfig, '{}') OPERATOR(pg_catalog.@>) '{"search_path=pg_catalog, pg_temp"}'::pg_catalog.text[]
               AND p.oid OPERATOR(pg_catalog.<>) ALL (SELECT u.routine FROM deal_store_internal._unpinned() u) LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET search_path = pg_catalog, pg_temp', f.fn);
    END LOOP;
END $$;

-- The server owns its records: who and when (src/records.rs classifies the
-- columns). Every table with such a column gets the trigger, but the log, which
-- only the server writes.
COMMENT ON FUNCTION deal_store_internal.server_columns() IS
    'Trigger (BEFORE INSERT OR UPDATE on every table with *_by or *_at columns): who columns are the actor, when columns the server clock; a caller''s own value is replaced. Creation columns are set once, updated_at / updated_by when the row changes, act columns (deleted_at, decided_by, resolved_at, read_at, ...) when they get a value. See deal_store_internal._server_columns().';
COMMENT ON FUNCTION deal_store_internal._server_columns() IS
    'The columns the server writes itself (who: *_by, when: *_at), per table, with their moment: creation, touch, act or versioning (superseded_at, written by the fact versioning only).';
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT DISTINCT s.table_name FROM deal_store_internal._server_columns() s
             WHERE s.table_name OPERATOR(pg_catalog.<>) 'deal_activity_log' ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER server_columns BEFORE INSERT OR UPDATE ON deal_store.%I
                                   FOR EACH ROW EXECUTE FUNCTION deal_store_internal.server_columns()', t);
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------
-- What a DBA does by habit loses nothing (src/operations.rs): a superuser's
-- COPY FROM is a restore (deal_store_internal._restoring()), and DROP EXTENSION is
-- refused while a deal exists.
COMMENT ON FUNCTION deal_store_internal.restored() IS
    'Trigger (AFTER INSERT per statement, enabled ALWAYS): ends the switch to session_replication_role = replica that a superuser''s restoring COPY made for its own rows.';
DO $$
DECLARE
    t text;
BEGIN
    -- every table a restore loads through deal_store's row triggers: those with server_columns
    FOR t IN SELECT c.relname::text FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid
             WHERE g.tgname OPERATOR(pg_catalog.=) 'server_columns' ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER deal_store_restored AFTER INSERT ON deal_store.%I
                                   FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.restored()', t);
        EXECUTE pg_catalog.format('ALTER TABLE deal_store.%I ENABLE ALWAYS TRIGGER deal_store_restored', t);
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store_internal._restoring() IS
    'Internal: true while a superuser restores rows with COPY FROM (pg_restore, a dump replayed by psql): the triggers then take the rows as the dump holds them, without auditing them again.';
CREATE FUNCTION deal_store_internal._guard_drop() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'deal_store_guard_drop';
COMMENT ON FUNCTION deal_store_internal._guard_drop() IS
    'Event trigger function: refuses a DROP that would take deal_store (DROP EXTENSION deal_store, a CASCADE drop of an extension it needs or of a schema holding one, DROP SCHEMA deal_store, DROP OWNED BY its owner) while any deal exists (2BP01), unless a superuser has set deal_store.allow_drop = on.';
REVOKE ALL ON FUNCTION deal_store_internal._guard_drop() FROM PUBLIC;
CREATE EVENT TRIGGER deal_store_guard_drop ON ddl_command_start WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION deal_store_internal._guard_drop();
-- also under session_replication_role = replica (a restore's setting)
ALTER EVENT TRIGGER deal_store_guard_drop ENABLE ALWAYS;
COMMENT ON EVENT TRIGGER deal_store_guard_drop IS
    'Refuses a DROP that would take deal_store (the extension, its schema, an extension it needs, their owner''s objects) while deals exist: set deal_store.allow_drop = on (superusers) to drop them with it.';
COMMENT ON FUNCTION deal_store.version() IS
    'The version of the deal_store library serving this session and of the extension installed in this database (pg_extension.extversion); a WARNING when they differ (run ALTER EXTENSION deal_store UPDATE).';
