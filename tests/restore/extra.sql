-- A second deal for the restore layer, beside the demo deal: a team, fact
-- versions, findings linked to facts, a soft delete, a change waiting for
-- review, a feed consumer part-way through the log, idempotency keys and a
-- seen mark. Run as a superuser naming the actor.
\set ON_ERROR_STOP on
SET deal_store.actor = '00000000-0000-0000-0030-0000000000a1';
INSERT INTO deal_store.users (id, email, display_name) VALUES
  ('00000000-0000-0000-0030-0000000000a1', 'rhea.lead@example.com', 'Rhea Lead'),
  ('00000000-0000-0000-0030-0000000000a2', 'ari.analyst@example.com', 'Ari Analyst'),
  ('00000000-0000-0000-0030-0000000000a3', 'val.viewer@example.com', 'Val Viewer');
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0030-0000000000d1', '00000000-0000-0000-0030-0000000000a1', 'Project Restore', 'Restore GmbH');
SELECT deal_store.add_member('00000000-0000-0000-0030-0000000000d1', '00000000-0000-0000-0030-0000000000a2', 'analyst');
SELECT deal_store.add_member('00000000-0000-0000-0030-0000000000d1', '00000000-0000-0000-0030-0000000000a3', 'viewer');
SELECT deal_store.start_run('00000000-0000-0000-0030-0000000000d1', idempotency_key => 'restore/run-1') AS run1 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run1', '[
  {"legacy_id": "R-1", "domain": "network", "item": "two MPLS sites", "confidence_score": 0.95},
  {"legacy_id": "R-2", "domain": "network", "item": "SD-WAN pilot", "confidence_score": 0.95},
  {"legacy_id": "R-3", "domain": "network", "item": "guest wifi", "confidence_score": 0.4}]', idempotency_key => 'restore/facts-1');
SELECT count(*) FROM deal_store.propose_findings(:'run1', '[
  {"legacy_id": "RF-1", "finding_type": "risk", "domain": "network", "title": "single carrier", "severity": "high"}]');
SELECT deal_store.complete_run(:'run1') IS NOT NULL AS completed;
UPDATE deal_store.facts SET item = 'three MPLS sites' WHERE deal_id = '00000000-0000-0000-0030-0000000000d1' AND legacy_id = 'R-1';
INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id)
SELECT f.deal_id, f.id, g.id FROM deal_store.facts f, deal_store.findings g
WHERE f.deal_id = '00000000-0000-0000-0030-0000000000d1' AND g.deal_id = f.deal_id AND f.superseded_at IS NULL AND f.legacy_id IN ('R-1', 'R-2');
SELECT deal_store.soft_delete('deal_store.facts', f.id, 'duplicate') FROM deal_store.facts f
WHERE f.deal_id = '00000000-0000-0000-0030-0000000000d1' AND f.legacy_id = 'R-2' AND f.superseded_at IS NULL;
SELECT deal_store.mark_seen('00000000-0000-0000-0030-0000000000d1') IS NOT NULL AS seen;
SELECT (deal_store.register_consumer('restore.mailer', from_start => true)).name;
SELECT count(*) > 0 AS read_some FROM deal_store.read_changes('restore.mailer', 25);
SELECT deal_store.ack_changes('restore.mailer', (SELECT max(seq) FROM (SELECT seq FROM deal_store.deal_activity_log ORDER BY seq LIMIT 10) s)) >= 0 AS acked;
SELECT count(*) > 0 AS read_more FROM deal_store.read_changes('restore.mailer', 25);
SELECT deal_store.start_run('00000000-0000-0000-0030-0000000000d1') AS run2 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run2', '[
  {"legacy_id": "R-1", "domain": "network", "item": "four MPLS sites", "confidence_score": 0.6},
  {"legacy_id": "R-3", "domain": "network", "item": "guest wifi", "confidence_score": 0.4}]');
RESET deal_store.actor;
