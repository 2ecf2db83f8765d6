-- Who did what: a deal's life as three linked logins (lead, analyst, reviewer),
-- a linked queue worker and an application's service login naming the user it
-- acts for. Every log entry and every "who" column names the right person, on
-- one node as on Citus, where the writes run on the workers. The logins are
-- created here, under names no earlier run used.
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS sfx \gset
\set lead_role 'ds_attr_lead_' :sfx
\set analyst_role 'ds_attr_analyst_' :sfx
\set reviewer_role 'ds_attr_reviewer_' :sfx
\set worker_role 'ds_attr_worker_' :sfx
\set app_role 'ds_attr_app_' :sfx
CREATE ROLE :"lead_role" LOGIN;
CREATE ROLE :"analyst_role" LOGIN;
CREATE ROLE :"reviewer_role" LOGIN;
CREATE ROLE :"worker_role" LOGIN;
CREATE ROLE :"app_role" LOGIN;
GRANT deal_store_analyst TO :"lead_role", :"analyst_role";
GRANT deal_store_reviewer TO :"reviewer_role", :"worker_role";
GRANT deal_store_service TO :"app_role";
\set lead '00000000-0000-0000-0000-0000000a7701'
\set analyst '00000000-0000-0000-0000-0000000a7702'
\set reviewer '00000000-0000-0000-0000-0000000a7703'
\set worker '00000000-0000-0000-0000-0000000a7704'
\set deal '00000000-0000-0000-0000-0000000a77d1'
INSERT INTO deal_store.users (id, email, display_name, db_role) VALUES
    (:'lead', 'lead@attr.example', 'Lead', :'lead_role'),
    (:'analyst', 'analyst@attr.example', 'Analyst', :'analyst_role'),
    (:'reviewer', 'reviewer@attr.example', 'Reviewer', :'reviewer_role'),
    (:'worker', 'worker@attr.example', 'Worker', :'worker_role');

-- the lead opens the deal and builds the team; no login names an actor
\c - :lead_role
SET client_min_messages = warning;
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES (:'deal', :'lead', 'Attribution', 'Target');
SELECT deal_store.add_member(:'deal', :'analyst', 'analyst');
SELECT deal_store.add_member(:'deal', :'reviewer', 'reviewer');
SELECT deal_store.add_member(:'deal', :'worker', 'reviewer');

-- the analyst's first run: three facts, the confident one applies itself
\c - :analyst_role
SET client_min_messages = warning;
SELECT deal_store.start_run(:'deal', domains => ARRAY['network']) AS run1 \gset
SELECT change_type, status, proposed FROM deal_store.propose_facts(:'run1', '[
  {"legacy_id": "N-1", "domain": "network", "item": "Two data centers", "confidence_score": 0.97},
  {"legacy_id": "N-2", "domain": "network", "item": "MPLS WAN from one carrier", "confidence_score": 0.85},
  {"legacy_id": "N-3", "domain": "network", "item": "Guest Wi-Fi on the office LAN", "confidence_score": 0.5}]') ORDER BY 2;
SELECT status FROM deal_store.complete_run(:'run1');

-- the reviewer accepts the rest
\c - :reviewer_role
SET client_min_messages = warning;
SELECT * FROM deal_store.accept_changes(:'deal', max_tier => 3);

-- the second run revises N-2 (waiting for the worker) and drops N-3 (for review)
\c - :analyst_role
SET client_min_messages = warning;
SET deal_store.auto_apply = off;
SELECT deal_store.start_run(:'deal', domains => ARRAY['network']) AS run2 \gset
SELECT change_type, confidence_tier, proposed FROM deal_store.propose_facts(:'run2', '[
  {"legacy_id": "N-1", "domain": "network", "item": "Two data centers", "confidence_score": 0.97},
  {"legacy_id": "N-2", "domain": "network", "item": "MPLS WAN from one carrier, ends 2027", "confidence_score": 0.97}]');
SELECT status FROM deal_store.complete_run(:'run2');

-- the queue worker applies the confident update, in batches it commits
\c - :worker_role
SET client_min_messages = warning;
CALL deal_store.process_queue(batch_size => 10, max_tier => 2);

-- the reviewer rejects the removal with a reason
\c - :reviewer_role
SET client_min_messages = warning;
SELECT id AS removal FROM deal_store.pending_changes
WHERE deal_id = :'deal' AND analysis_run_id = :'run2' AND change_type = 'delete' \gset
SELECT deal_store.reject_change(:'removal', 'still there');

-- the lead deletes and restores a fact, and edits one with SQL
\c - :lead_role
SET client_min_messages = warning;
SELECT id AS n1 FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'N-1' AND superseded_at IS NULL \gset
SELECT deal_store.soft_delete('deal_store.facts', :'n1', 'duplicate', :'deal') AS deleted;
SELECT deal_store.restore('deal_store.facts', :'n1') AS restored;
UPDATE deal_store.facts SET category = 'wan' WHERE deal_id = :'deal' AND legacy_id = 'N-2' AND superseded_at IS NULL;

-- an application's login acts for the analyst: for the session, and for one transaction
\c - :app_role
SET client_min_messages = warning;
SET deal_store.actor = :'analyst';
SELECT deal_store.start_run(:'deal', domains => ARRAY['security']) AS run3 \gset
SELECT change_type, proposed FROM deal_store.propose_facts(:'run3',
  '[{"legacy_id": "S-1", "domain": "security", "item": "No SOC", "confidence_score": 0.97}]');
RESET deal_store.actor;
BEGIN;
SELECT deal_store.set_actor(:'reviewer') = :'reviewer' AS acting;
SELECT status FROM deal_store.complete_run(:'run3');
COMMIT;

\c - postgres
SET client_min_messages = warning;
-- every log entry of the deal names its actor, and the right one
SELECT count(*) AS entries, count(*) FILTER (WHERE user_id IS NULL) AS without_actor
FROM deal_store.deal_activity_log WHERE deal_id = :'deal';
SELECT l.entity_type, l.action, u.display_name AS actor, l.reason, count(*)
FROM deal_store.deal_activity_log l LEFT JOIN deal_store.users u ON u.id = l.user_id
WHERE l.deal_id = :'deal' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;
-- and every "who" column
SELECT f.legacy_id, f.superseded_at IS NULL AS current, c.display_name AS created_by, u.display_name AS updated_by
FROM deal_store.facts f LEFT JOIN deal_store.users c ON c.id = f.created_by LEFT JOIN deal_store.users u ON u.id = f.updated_by
WHERE f.deal_id = :'deal' ORDER BY 1, 2, 3, 4;
SELECT p.legacy_entity_id, p.change_type, p.status, d.display_name AS decided_by
FROM deal_store.pending_changes p LEFT JOIN deal_store.users d ON d.id = p.decided_by
WHERE p.deal_id = :'deal' ORDER BY 1, 2, 3, 4;
SELECT r.run_number, t.display_name AS triggered_by
FROM deal_store.analysis_runs r LEFT JOIN deal_store.users t ON t.id = r.triggered_by
WHERE r.deal_id = :'deal' ORDER BY 1;

-- the logins go; their users stay, as a departed colleague's would
UPDATE deal_store.users SET db_role = NULL WHERE id IN (:'lead', :'analyst', :'reviewer', :'worker');
DROP ROLE :"lead_role", :"analyst_role", :"reviewer_role", :"worker_role", :"app_role";
