-- Access control: the permission matrix. Every persona (a login role with a
-- group role, linked to a user with a deal role, or a service acting for a
-- user) runs every operation on deal D1 in a subtransaction that is rolled back
-- afterwards, so each cell starts from the same state. The expected outcome of
-- every cell is in one table (regress.access_expected); the test prints only
-- the cells that differ from it, and then the whole matrix.
--
-- A cell is A (allowed: no error; a read saw rows of D1, a write changed the
-- stored state) or D (denied: 42501, or a read that saw nothing of D1, or a
-- write that changed nothing). Any other SQLSTATE is printed as itself. For a
-- denied cell the state (every table, the log included) is compared before
-- and after: a denial never changes anything.
SET client_min_messages = warning;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['ds_nobody', 'ds_reader', 'ds_analyst', 'ds_reviewer', 'ds_lead', 'ds_admin',
                             'ds_service', 'ds_other'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;
GRANT deal_store_reader TO ds_reader;
GRANT deal_store_analyst TO ds_analyst;
GRANT deal_store_reviewer TO ds_reviewer, ds_lead, ds_other;
GRANT deal_store_admin TO ds_admin;
GRANT deal_store_service TO ds_service;
RESET client_min_messages;

-- Users: one per persona linked to its login role; ds_admin and ds_service are nobody.
INSERT INTO deal_store.users (id, email, db_role) VALUES
  ('00000000-0000-0000-0011-0000000000a1', 'nobody@acl.example', 'ds_nobody'),
  ('00000000-0000-0000-0011-0000000000a2', 'reader@acl.example', 'ds_reader'),
  ('00000000-0000-0000-0011-0000000000a3', 'analyst@acl.example', 'ds_analyst'),
  ('00000000-0000-0000-0011-0000000000a4', 'reviewer@acl.example', 'ds_reviewer'),
  ('00000000-0000-0000-0011-0000000000a5', 'lead@acl.example', 'ds_lead'),
  ('00000000-0000-0000-0011-0000000000a6', 'other@acl.example', 'ds_other'),
  ('00000000-0000-0000-0011-0000000000a7', 'newcomer@acl.example', NULL);
-- D1 is the lead's; D2 the other user's.
SET deal_store.actor = '00000000-0000-0000-0011-0000000000a5';
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0011-0000000000d1', '00000000-0000-0000-0011-0000000000a5', 'Project Acl', 'Acl AG'),
  ('00000000-0000-0000-0011-0000000000d2', '00000000-0000-0000-0011-0000000000a6', 'Project Wall', 'Wall AG');
SELECT deal_store.add_member('00000000-0000-0000-0011-0000000000d1', id, role)
FROM (VALUES ('00000000-0000-0000-0011-0000000000a1'::uuid, 'lead'), ('00000000-0000-0000-0011-0000000000a2', 'viewer'),
             ('00000000-0000-0000-0011-0000000000a3', 'analyst'), ('00000000-0000-0000-0011-0000000000a4', 'reviewer')) m(id, role);
SELECT d.name, u.email, m.role FROM deal_store.deal_members m JOIN deal_store.deals d ON d.id = m.deal_id
JOIN deal_store.users u ON u.id = m.user_id WHERE u.email LIKE '%@acl.example' ORDER BY 1, 3, 2;
-- D1's data: a completed run with facts, a running run with a change waiting for review, a soft-deleted fact
SELECT deal_store.start_run('00000000-0000-0000-0011-0000000000d1') AS run1 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run1', '[
  {"legacy_id": "F-1", "domain": "network", "item": "perimeter firewall", "confidence_score": 0.9},
  {"legacy_id": "F-9", "domain": "network", "item": "legacy modem", "confidence_score": 0.9}]');
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM deal_store.complete_run(:'run1');
SELECT deal_store.start_run('00000000-0000-0000-0011-0000000000d1') AS run2 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run2', '[
  {"legacy_id": "F-2", "domain": "network", "item": "branch VPN", "confidence_score": 0.5}]', ARRAY['applications']);
SELECT id AS target_id FROM deal_store.facts
WHERE deal_id = '00000000-0000-0000-0011-0000000000d1' AND legacy_id = 'F-9' \gset
SELECT deal_store.soft_delete('deal_store.facts', :'target_id');
-- a deal exported and then purged, so its import can be tried by everyone
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0011-0000000000d3', '00000000-0000-0000-0011-0000000000a5', 'Project Crate', 'Crate AG');
CREATE TABLE regress.acl_export AS SELECT deal_store.export_deal('00000000-0000-0000-0011-0000000000d3') AS doc;
SELECT deal_store.soft_delete('deal_store.deals', '00000000-0000-0000-0011-0000000000d3');
SELECT deal_store.purge('deal_store.deals', '00000000-0000-0000-0011-0000000000d3');
RESET deal_store.actor;
GRANT SELECT ON regress.acl_export TO PUBLIC;
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- Personas: login role, and the actor it sets (service only).
CREATE TABLE regress.acl_personas (n int PRIMARY KEY, name text, login name, actor uuid);
INSERT INTO regress.acl_personas VALUES
  (1, 'no group role',          'ds_nobody',   NULL),
  (2, 'reader (viewer)',        'ds_reader',   NULL),
  (3, 'analyst (analyst)',      'ds_analyst',  NULL),
  (4, 'reviewer (reviewer)',    'ds_reviewer', NULL),
  (5, 'lead (lead)',            'ds_lead',     NULL),
  (6, 'admin (no member)',      'ds_admin',    NULL),
  (7, 'service for lead',       'ds_service',  '00000000-0000-0000-0011-0000000000a5'),
  (8, 'service for non-member', 'ds_service',  '00000000-0000-0000-0011-0000000000a6'),
  (9, 'other deal''s lead',     'ds_other',    NULL);

-- The expectations: one row per operation, one letter per persona 1..9.
-- kind read: the statement returns how many rows of D1 it saw;
-- kind write: the statement's effect is judged by the stored state.
CREATE TABLE regress.access_expected (op text PRIMARY KEY, kind text, expected text, stmt text);
INSERT INTO regress.access_expected VALUES
  ('read deals',           'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deals WHERE id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read facts',           'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read current_facts',   'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.current_facts WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read pending_changes', 'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.pending_changes WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read runs',            'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.analysis_runs WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read members',         'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deal_members WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read log',             'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deal_activity_log WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read notifications',   'read',  'DDDDAAADD', $$SELECT count(*) FROM deal_store.notifications WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read password_hash',   'read',  'DDDDDADDD', $$SELECT count(password_hash IS NULL) FROM deal_store.users$$),
  ('deal_summary',         'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deal_summary('00000000-0000-0000-0011-0000000000d1')$$),
  ('deals_for_user',       'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deals_for_user('00000000-0000-0000-0011-0000000000a5')$$),
  ('search_facts',         'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.search_facts('00000000-0000-0000-0011-0000000000d1', 'firewall')$$),
  ('diff_facts',           'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.diff_facts('00000000-0000-0000-0011-0000000000d1', '[]')$$),
  ('export_deal',          'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.export_deal('00000000-0000-0000-0011-0000000000d1')$$),
  ('fact_history',         'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.facts f, deal_store.fact_history(f.id) WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.legacy_id = 'F-1'$$),
  ('entity_history',       'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.entity_history('deal', '00000000-0000-0000-0011-0000000000d1')$$),
  ('deal_activity',        'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deal_activity('00000000-0000-0000-0011-0000000000d1')$$),
  ('set actor to another', 'read',  'DDDDDAAAD', $$SELECT count(*) FROM (SELECT set_config('deal_store.actor', '00000000-0000-0000-0011-0000000000a7', true)) s, deal_store.current_actor()$$),
  ('read deal_overview',   'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.deal_overview WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('read activity',        'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.activity WHERE deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('search in own query',  'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.active_facts f WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.search_vector @@ deal_store.search_tsquery('firewall')$$),
  ('set_actor to another', 'read',  'DDDDDAAAD', $$SELECT count(*) FROM deal_store.set_actor('00000000-0000-0000-0011-0000000000a7')$$),
  ('read the change feed', 'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.read_changes((SELECT (deal_store.register_consumer('acl.cell', from_start => true)).name)) c WHERE c.deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('changes_since_seen',   'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.changes_since_seen('00000000-0000-0000-0011-0000000000d1')$$),
  ('diff_runs',            'read',  'DAAAAAADD', $$SELECT count(*) FROM deal_store.analysis_runs r, LATERAL (SELECT change FROM deal_store.diff_runs(r.id, r.id) UNION ALL SELECT 'none') x WHERE r.deal_id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('set hard_delete',      'write', 'DDDDDDDDD', $$SET LOCAL deal_store.hard_delete = on$$),
  ('set audit_purge',      'write', 'DDDDDDDDD', $$SET LOCAL deal_store.audit_purge = on$$),
  ('link a forged version', 'write', 'DDDDDDDDD', $$UPDATE deal_store.facts f SET previous_version_id = h.id FROM deal_store.facts h WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.legacy_id = 'F-1' AND f.superseded_at IS NULL AND h.deal_id = f.deal_id AND h.id <> f.id AND h.id IS DISTINCT FROM f.previous_version_id$$),
  ('disable the audit',    'write', 'DDDDDDDDD', $$SELECT deal_store.disable_audit('deal_store.facts')$$),
  ('insert into the log',  'write', 'DDDDDDDDD', $$INSERT INTO deal_store.deal_activity_log (deal_id, action) VALUES ('00000000-0000-0000-0011-0000000000d1', 'forged')$$),
  ('write a history row',  'write', 'DDDDDDDDD', $$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, superseded_at) VALUES ('00000000-0000-0000-0011-0000000000d1', 'F-H', 'network', 'forged past', now())$$),
  ('insert a fact',        'write', 'DDAAAAADD', $$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0011-0000000000d1', 'F-7', 'network', 'new switch')$$),
  ('update a fact',        'write', 'DDAAAAADD', $$UPDATE deal_store.facts SET item = 'edge firewall' WHERE deal_id = '00000000-0000-0000-0011-0000000000d1' AND legacy_id = 'F-1' AND superseded_at IS NULL$$),
  ('DELETE a fact',        'write', 'DDAAAAADD', $$DELETE FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0011-0000000000d1' AND legacy_id = 'F-1'$$),
  ('DELETE via a view',    'write', 'DDAAAAADD', $$DELETE FROM deal_store.active_facts WHERE deal_id = '00000000-0000-0000-0011-0000000000d1' AND legacy_id = 'F-1'$$),
  ('UPDATE deleted_at',    'write', 'DDAAAAADD', $$UPDATE deal_store.facts SET deleted_at = now() WHERE deal_id = '00000000-0000-0000-0011-0000000000d1' AND legacy_id = 'F-1'$$),
  ('UPDATE the deal''s deleted_at', 'write', 'DDDDAAADD', $$UPDATE deal_store.deals SET deleted_at = now() WHERE id = '00000000-0000-0000-0011-0000000000d1'$$),
  ('start_run',            'write', 'DDAAAAADD', $$SELECT deal_store.start_run('00000000-0000-0000-0011-0000000000d1')$$),
  ('propose_facts',        'write', 'DDAAAAADD', $$SELECT deal_store.propose_facts(r.id, '[{"legacy_id": "F-3", "domain": "network", "item": "wifi", "confidence_score": 0.5}]', ARRAY['network']) FROM deal_store.analysis_runs r WHERE r.deal_id = '00000000-0000-0000-0011-0000000000d1' AND r.status = 'running'$$),
  ('soft_delete',          'write', 'DDAAAAADD', $$SELECT deal_store.soft_delete('deal_store.facts', f.id) FROM deal_store.facts f WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.legacy_id = 'F-1' AND f.superseded_at IS NULL$$),
  ('restore',              'write', 'DDAAAAADD', $$SELECT deal_store.restore('deal_store.facts', f.id) FROM deal_store.facts f WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.legacy_id = 'F-9'$$),
  ('accept_change',        'write', 'DDDAAAADD', $$SELECT deal_store.accept_change(p.id) FROM deal_store.pending_changes p WHERE p.deal_id = '00000000-0000-0000-0011-0000000000d1' AND p.status = 'pending'$$),
  ('reject_change',        'write', 'DDDAAAADD', $$SELECT deal_store.reject_change(p.id) FROM deal_store.pending_changes p WHERE p.deal_id = '00000000-0000-0000-0011-0000000000d1' AND p.status = 'pending'$$),
  ('defer_change',         'write', 'DDDAAAADD', $$SELECT deal_store.defer_change(p.id) FROM deal_store.pending_changes p WHERE p.deal_id = '00000000-0000-0000-0011-0000000000d1' AND p.status = 'pending'$$),
  ('accept_changes',       'write', 'DDDAAAADD', $$SELECT deal_store.accept_changes('00000000-0000-0000-0011-0000000000d1')$$),
  ('process_queue_batch',  'write', 'DDDAAAADD', $$SELECT deal_store.process_queue_batch(100, 3)$$),
  ('archive_deal',         'write', 'DDDDAAADD', $$SELECT deal_store.archive_deal('00000000-0000-0000-0011-0000000000d1')$$),
  ('add_member',           'write', 'DDDDAAADD', $$SELECT deal_store.add_member('00000000-0000-0000-0011-0000000000d1', '00000000-0000-0000-0011-0000000000a7', 'viewer')$$),
  ('soft_delete the deal', 'write', 'DDDDAAADD', $$SELECT deal_store.soft_delete('deal_store.deals', '00000000-0000-0000-0011-0000000000d1')$$),
  ('purge',                'write', 'DDDDDADDD', $$SELECT deal_store.purge('deal_store.facts', f.id) FROM deal_store.facts f WHERE f.deal_id = '00000000-0000-0000-0011-0000000000d1' AND f.legacy_id = 'F-9'$$),
  ('purge_audit',          'write', 'DDDDDADDD', $$SELECT deal_store.purge_audit('0 seconds')$$),
  ('insert tier policy',   'write', 'DDDDDADDD', $$INSERT INTO deal_store.tier_policies (deal_id, change_type, tier) VALUES ('00000000-0000-0000-0011-0000000000d1', 'new', 3)$$),
  ('import_deal',          'write', 'DDAAADAAA', $$SELECT deal_store.import_deal(doc) FROM regress.acl_export$$);

-- What every table holds, as one hash: "nothing changed" means this is equal.
CREATE FUNCTION regress.acl_state() RETURNS text LANGUAGE sql AS $$
    SELECT md5(string_agg(h, ',' ORDER BY h)) FROM (
        SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) AS h FROM deal_store.users t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.deals t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.deal_members t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.analysis_runs t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.facts t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.pending_changes t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.deal_activity_log t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.notifications t
        UNION ALL SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM deal_store.tier_policies t) s
$$;

-- Runs every cell; returns (persona, op, outcome, changed).
CREATE FUNCTION regress.acl_run() RETURNS TABLE(n int, op text, outcome text, changed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    p regress.acl_personas;
    e regress.access_expected;
    before text;
    seen bigint;
    out_code text;
    out_changed boolean;
BEGIN
    FOR e IN SELECT * FROM regress.access_expected ORDER BY op LOOP
        FOR p IN SELECT * FROM regress.acl_personas ORDER BY 1 LOOP
            out_code := NULL;
            out_changed := NULL;
            BEGIN
                before := regress.acl_state();
                EXECUTE format('SET LOCAL ROLE %I', p.login);
                PERFORM set_config('deal_store.actor', coalesce(p.actor::text, ''), true);
                BEGIN
                    IF e.kind = 'read' THEN
                        EXECUTE e.stmt INTO seen;
                        out_code := CASE WHEN seen > 0 THEN 'A' ELSE 'D' END;
                    ELSE
                        EXECUTE e.stmt;
                        out_code := 'ok';
                    END IF;
                EXCEPTION WHEN insufficient_privilege THEN
                    out_code := 'D';
                WHEN OTHERS THEN
                    out_code := SQLSTATE || ' ' || SQLERRM;
                END;
                RESET ROLE;
                PERFORM set_config('deal_store.actor', '', true);
                out_changed := regress.acl_state() IS DISTINCT FROM before;
                IF out_code = 'ok' THEN
                    out_code := CASE WHEN out_changed THEN 'A' ELSE 'D' END;
                END IF;
                RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'undo the cell';
            EXCEPTION WHEN raise_exception THEN
                NULL;
            END;
            n := p.n; op := e.op; outcome := out_code; changed := out_changed;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $$;
CREATE TABLE regress.acl_result AS SELECT * FROM regress.acl_run();

-- Cells that differ from the expectations (none), and denied cells that changed something (none).
SELECT e.op, p.name AS persona, substr(e.expected, r.n, 1) AS expected, r.outcome
FROM regress.acl_result r JOIN regress.access_expected e USING (op) JOIN regress.acl_personas p USING (n)
WHERE r.outcome IS DISTINCT FROM substr(e.expected, r.n, 1)
ORDER BY e.op, r.n;
SELECT r.op, r.n FROM regress.acl_result r WHERE r.outcome <> 'A' AND r.changed;
-- The matrix as it ran: personas 1..9 left to right.
SELECT e.op, string_agg(r.outcome, '' ORDER BY r.n) AS personas_1_to_9
FROM regress.acl_result r JOIN regress.access_expected e USING (op)
GROUP BY e.op ORDER BY e.op;
SELECT count(*) AS cells, count(*) FILTER (WHERE outcome = 'A') AS allowed, count(*) FILTER (WHERE outcome = 'D') AS denied
FROM regress.acl_result;

-- Who and when are the server's: every who / when column of every table (the
-- one classification, deal_store_internal._server_columns()) written with another
-- person or another time by every persona. A cell is D (refused or nothing
-- written), S (written, the server's value stored) or F (the forged value
-- stored: never).
CREATE FUNCTION regress.who_when_run() RETURNS TABLE(col text, n int, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    p regress.acl_personas;
    c record;
    stmt text;
    forged text;
    rows_written bigint;
    stored bigint;
BEGIN
    FOR c IN SELECT s.table_name, s.column_name, s.kind,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = ('deal_store.' || s.table_name)::regclass
                            AND a.attname = 'deal_id') AS has_deal
             FROM deal_store_internal._server_columns() s
             WHERE s.moment <> 'versioning' AND s.table_name <> 'deal_activity_log' ORDER BY 1, 2 LOOP
        forged := CASE c.kind WHEN 'who' THEN '00000000-0000-0000-0011-0000000000a7' ELSE '2000-01-01 00:00:00+00' END;
        stmt := format('UPDATE deal_store.%I SET %I = %L WHERE %s', c.table_name, c.column_name, forged,
                       CASE WHEN c.has_deal THEN format('deal_id = %L', '00000000-0000-0000-0011-0000000000d1')
                            WHEN c.table_name = 'deals' THEN format('id = %L', '00000000-0000-0000-0011-0000000000d1')
                            ELSE 'true' END);
        FOR p IN SELECT * FROM regress.acl_personas ORDER BY 1 LOOP
            BEGIN
                EXECUTE format('SET LOCAL ROLE %I', p.login);
                PERFORM set_config('deal_store.actor', coalesce(p.actor::text, ''), true);
                BEGIN
                    EXECUTE stmt;
                    GET DIAGNOSTICS rows_written = ROW_COUNT;
                EXCEPTION WHEN OTHERS THEN
                    rows_written := 0;
                END;
                RESET ROLE;
                PERFORM set_config('deal_store.actor', '', true);
                EXECUTE format('SELECT count(*) FROM deal_store.%I WHERE %I::text = %L::%s::text', c.table_name, c.column_name, forged,
                               CASE c.kind WHEN 'who' THEN 'text' ELSE 'timestamptz' END) INTO stored;
                col := c.table_name || '.' || c.column_name;
                n := p.n;
                outcome := CASE WHEN stored > 0 THEN 'F' WHEN rows_written > 0 THEN 'S' ELSE 'D' END;
                RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'undo the cell';
            EXCEPTION WHEN raise_exception THEN
                NULL;
            END;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $$;
CREATE TABLE regress.who_when AS SELECT * FROM regress.who_when_run();
SELECT col, string_agg(outcome, '' ORDER BY n) AS personas_1_to_9 FROM regress.who_when GROUP BY col ORDER BY col;
SELECT count(*) AS forged_cells FROM regress.who_when WHERE outcome = 'F';

-- Denials name the deal and what is missing.
SET ROLE ds_reader;
SELECT regress.expect_error($$SELECT deal_store.start_run('00000000-0000-0000-0011-0000000000d1')$$);
RESET ROLE;
SET ROLE ds_analyst;
SELECT regress.expect_error($$SELECT deal_store.accept_changes('00000000-0000-0000-0011-0000000000d1')$$);
RESET ROLE;
SET ROLE ds_other;
SELECT regress.expect_error($$SELECT deal_store.accept_changes('00000000-0000-0000-0011-0000000000d1')$$);
SELECT regress.expect_error($$SELECT deal_store.search_facts('00000000-0000-0000-0011-0000000000d1', 'firewall')$$);
SET deal_store.actor = '00000000-0000-0000-0011-0000000000a5';
SELECT regress.expect_error($$SELECT deal_store.current_actor()$$);
RESET deal_store.actor;
RESET ROLE;
SET ROLE ds_service;
SELECT regress.expect_error($$SELECT deal_store.start_run('00000000-0000-0000-0011-0000000000d1')$$);
SELECT regress.expect_error($$SELECT deal_store.process_queue_batch()$$);
RESET ROLE;
-- a linked login role is its user, whatever else it does
SET ROLE ds_analyst;
SELECT deal_store.current_actor();
RESET ROLE;

-- Idempotency keys and feed consumer names are per role: one role's never blocks another's.
SET ROLE ds_reviewer;
SELECT count(*) AS reviewer_call FROM deal_store.accept_changes('00000000-0000-0000-0011-0000000000d1', idempotency_key => 'one-key');
SELECT (deal_store.register_consumer('shared.name')).name AS reviewer_consumer;
RESET ROLE;
SET ROLE ds_lead;
SELECT count(*) AS lead_call FROM deal_store.accept_changes('00000000-0000-0000-0011-0000000000d1', idempotency_key => 'one-key');
SELECT (deal_store.register_consumer('shared.name')).name AS lead_consumer;
SELECT regress.expect_error($$SELECT deal_store.register_consumer('shared.name')$$);
SELECT count(*) AS lead_sees_own_consumers FROM deal_store.consumers() WHERE name = 'shared.name';
SELECT deal_store.remove_consumer('shared.name');
RESET ROLE;
SET ROLE ds_reviewer;
SELECT count(*) AS reviewer_consumer_kept FROM deal_store.consumers() WHERE name = 'shared.name';
SELECT deal_store.remove_consumer('shared.name');
RESET ROLE;
-- readers see themselves and their deals' members, not every user
SET ROLE ds_reader;
SELECT count(*) > 0 AS sees_team, bool_and(id IN (SELECT user_id FROM deal_store.deal_members)) AS only_team FROM deal_store.users;
RESET ROLE;

-- An analyst's import is a new deal written by the analyst, now: the export's
-- who / when columns are not taken over (an admin's import keeps them); version
-- chains that do not end in the export's own history rows are refused
SET deal_store.actor = '00000000-0000-0000-0011-0000000000a5';
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0011-0000000000d4', '00000000-0000-0000-0011-0000000000a5', 'Project Forge', 'Forge AG');
INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES
  ('00000000-0000-0000-0011-0000000000d4', 'G-1', 'network', 'one'), ('00000000-0000-0000-0011-0000000000d4', 'G-2', 'network', 'two');
UPDATE deal_store.facts SET item = 'one, revised' WHERE deal_id = '00000000-0000-0000-0011-0000000000d4' AND legacy_id = 'G-1';
CREATE TABLE regress.forge AS SELECT deal_store.export_deal('00000000-0000-0000-0011-0000000000d4') AS doc;
SELECT deal_store.soft_delete('deal_store.deals', '00000000-0000-0000-0011-0000000000d4');
SELECT deal_store.purge('deal_store.deals', '00000000-0000-0000-0011-0000000000d4');
RESET deal_store.actor;
UPDATE regress.forge SET doc = jsonb_set(jsonb_set(doc, '{facts,0,created_by}', '"00000000-0000-0000-0011-0000000000a6"'),
                                         '{facts,0,created_at}', '"2001-01-01T00:00:00+00:00"');
GRANT SELECT ON regress.forge TO PUBLIC;
SET ROLE ds_analyst;
SELECT regress.expect_error(format('SELECT deal_store.import_deal(%L)',
  jsonb_set(doc, '{facts,0,previous_version_id}', doc -> 'facts' -> 1 -> 'id'))) FROM regress.forge;
SELECT deal_store.import_deal(doc) AS imported FROM regress.forge;
RESET ROLE;
SELECT count(*) AS fact_rows, count(*) FILTER (WHERE created_by = '00000000-0000-0000-0011-0000000000a3'
                                               AND created_at > now() - interval '1 hour') AS written_by_the_importer_now
FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0011-0000000000d4';
-- an id used in another deal neither blocks nor reveals a row of this one
SET ROLE ds_other;
INSERT INTO deal_store.facts (deal_id, id, legacy_id, domain, item)
SELECT '00000000-0000-0000-0011-0000000000d2', :'target_id', 'PLANT', 'network', 'planted';
SELECT count(*) AS versions_seen_by_the_planter FROM deal_store.fact_history(:'target_id');
RESET ROLE;
SET ROLE ds_lead;
SELECT count(*) AS versions_seen_by_the_lead FROM deal_store.fact_history(:'target_id');
RESET ROLE;
-- notifications are their user's own: the deal's log does not copy them
SELECT count(*) AS notifications_in_the_log FROM deal_store.deal_activity_log
WHERE entity_type = 'notification' AND deal_id::text LIKE '00000000-0000-0000-0011-%';
-- the who of an act stands while the act does
SET deal_store.actor = '00000000-0000-0000-0011-0000000000a5';
UPDATE deal_store.facts SET deleted_by = NULL WHERE id = :'target_id' AND deal_id = '00000000-0000-0000-0011-0000000000d1';
SELECT deleted_by IS NOT NULL AS deleter_kept FROM deal_store.facts WHERE id = :'target_id' AND deal_id = '00000000-0000-0000-0011-0000000000d1';
RESET deal_store.actor;
