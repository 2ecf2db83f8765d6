-- The merge queue: a deal through three runs.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0006-0000000000a8', 'owner@example.com'),
                                     ('00000000-0000-0000-0006-0000000000a9', 'reviewer@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0006-0000000000d8', '00000000-0000-0000-0006-0000000000a8', 'Project Pine', 'Pine SE');
SET deal_store.actor = '00000000-0000-0000-0006-0000000000a8';

-- run 1: everything new and confident: applied in the proposing transaction
SELECT start_run('00000000-0000-0000-0006-0000000000d8', ARRAY['applications', 'network']) AS run1 \gset
SELECT * FROM propose_facts(:'run1', $$[
  {"legacy_id": "F-1", "domain": "applications", "item": "SAP ECC 6.0", "confidence_score": 0.95},
  {"legacy_id": "F-2", "domain": "applications", "item": "Salesforce", "confidence_score": 0.9},
  {"legacy_id": "F-3", "domain": "network", "item": "MPLS WAN", "confidence_score": 0.85},
  {"legacy_id": "F-4", "domain": "network", "item": "Cisco LAN", "confidence_score": 0.8}
]$$);
-- proposing the same facts again adds nothing
SELECT count(*) AS proposed_again FROM propose_facts(:'run1', $$[
  {"legacy_id": "F-1", "domain": "applications", "item": "SAP ECC 6.0", "confidence_score": 0.95},
  {"legacy_id": "F-2", "domain": "applications", "item": "Salesforce", "confidence_score": 0.9},
  {"legacy_id": "F-3", "domain": "network", "item": "MPLS WAN", "confidence_score": 0.85},
  {"legacy_id": "F-4", "domain": "network", "item": "Cisco LAN", "confidence_score": 0.8}
]$$);
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run1');
SELECT legacy_id, item FROM current_facts WHERE deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY 1;

-- run 2, domain by domain: updates, a removal and low-confidence facts wait in tiers 2 and 3
SELECT start_run('00000000-0000-0000-0006-0000000000d8', ARRAY['applications', 'network']) AS run2 \gset
SELECT * FROM propose_facts(:'run2', $$[
  {"legacy_id": "F-1", "domain": "applications", "item": "SAP ECC 6.0 EHP8", "confidence_score": 0.95},
  {"legacy_id": "F-2", "domain": "applications", "item": "Salesforce", "confidence_score": 0.9},
  {"legacy_id": "F-5", "domain": "applications", "item": "Workday HCM", "confidence_score": 0.4}
]$$);
SELECT * FROM propose_facts(:'run2', $$[
  {"legacy_id": "F-3", "domain": "network", "item": "MPLS WAN (Orange)", "confidence_score": 0.7}
]$$);
SELECT legacy_entity_id, change_type, confidence_tier, status, base_checksum IS NOT NULL AS has_base,
       old_value ->> 'item' AS old_item, new_value ->> 'item' AS new_item
FROM pending_changes WHERE analysis_run_id = :'run2' ORDER BY legacy_entity_id;
-- one notification for the owner for the run, not one per change
SELECT user_id, type, title, payload - 'run_id' AS payload FROM notifications WHERE deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY created_at;

-- an analyst edits F-1 meanwhile: accepting run 2's update is now a conflict
SET deal_store.actor = '00000000-0000-0000-0006-0000000000a9';
UPDATE facts SET item = 'SAP ECC 6.0 EHP7 (confirmed)' WHERE legacy_id = 'F-1';
-- the id is read first: a function that writes is called with values (on Citus a call per
-- row of a query over a distributed table would run on a shard; README "Running on Citus")
SELECT id AS target_id FROM pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'F-1' \gset
SELECT accept_change(:'target_id', 'looks right');
SELECT legacy_id, change_type, base_value ->> 'item' AS base, current_value ->> 'item' AS current,
       proposed_value ->> 'item' AS proposed, base_checksum <> current_checksum AS moved, note
FROM conflicts('00000000-0000-0000-0006-0000000000d8');

-- reject, defer, decide twice
SELECT id AS target_id FROM pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'F-5' \gset
SELECT reject_change(:'target_id', 'not in scope');
SELECT id AS f5_change FROM pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'F-5' \gset
SELECT regress.expect_error(format($$SELECT deal_store.accept_change(%L)$$, :'f5_change'));
SELECT regress.expect_error($$SELECT deal_store.reject_change('00000000-0000-0000-0006-000000000999')$$);
-- batch accept of tier 2: F-3's update; the deferred removal of F-4 (tier 3) waits
-- (F-3 gets values in its non-content columns first, so a column the batch failed to copy would show)
UPDATE facts SET verified = true, verified_by = 'ana', verified_at = '2026-03-01', verification_status = 'verified',
       verification_note = 'checked against the contract', created_by = '00000000-0000-0000-0006-0000000000a9'
WHERE legacy_id = 'F-3' AND superseded_at IS NULL AND deal_id = '00000000-0000-0000-0006-0000000000d8';
CREATE TEMP TABLE f3_before AS
SELECT * FROM facts WHERE legacy_id = 'F-3' AND superseded_at IS NULL AND deal_id = '00000000-0000-0000-0006-0000000000d8';
SELECT * FROM accept_changes('00000000-0000-0000-0006-0000000000d8', max_tier => 2);
SELECT legacy_entity_id, change_type, confidence_tier, status, decided_by, review_note, deferred_until IS NOT NULL AS deferred
FROM pending_changes WHERE analysis_run_id = :'run2' ORDER BY legacy_entity_id;
-- the batch wrote F-3's new version itself: one history row, the replaced version as it was
-- (every column but id and superseded_at), linked
SELECT count(*) AS history_rows,
       bool_and(h.item = 'MPLS WAN' AND h.superseded_at IS NOT NULL AND c.previous_version_id = h.id
                AND h.item_checksum = fact_checksum(to_jsonb(h))) AS replaced_version,
       bool_and(to_jsonb(h) - 'id' - 'superseded_at' - 'search_vector'
                = (SELECT to_jsonb(b) - 'id' - 'superseded_at' - 'search_vector' FROM f3_before b)) AS every_column
FROM facts c JOIN facts h ON h.deal_id = c.deal_id AND h.legacy_id = c.legacy_id AND h.superseded_at IS NOT NULL
WHERE c.legacy_id = 'F-3' AND c.superseded_at IS NULL AND c.deal_id = '00000000-0000-0000-0006-0000000000d8';
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run2');
-- the removal: F-4 (network) is in a domain run 2 covered and no call delivered it;
-- proposed once, when the run completes (the second call alone did not remove F-1, F-2, F-5)
SELECT legacy_entity_id, change_type, confidence_tier, status FROM pending_changes
WHERE analysis_run_id = :'run2' AND change_type = 'delete';
SELECT id AS target_id FROM pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'F-4' \gset
SELECT defer_change(:'target_id', now() + interval '1 day', 'ask the CFO');

-- run 3 proposes again for F-4: its newer proposal supersedes run 2's deferred one
SELECT start_run('00000000-0000-0000-0006-0000000000d8', ARRAY['network'], incremental => true) AS run3 \gset
SELECT * FROM propose_facts(:'run3', $$[
  {"legacy_id": "F-3", "domain": "network", "item": "MPLS WAN (Orange)", "confidence_score": 0.7},
  {"legacy_id": "F-4", "domain": "network", "item": "Cisco LAN, end of support 2021", "confidence_score": 0.6}
]$$);
SELECT r.run_number, c.legacy_entity_id, c.change_type, c.status, c.review_note
FROM pending_changes c JOIN analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id
WHERE c.legacy_entity_id = 'F-4' AND c.deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY r.run_number;
-- an incremental run never proposes removals (F-3 and F-4 only were sent)
SELECT count(*) AS removals FROM pending_changes WHERE analysis_run_id = :'run3' AND change_type = 'delete';
SELECT id AS target_id FROM pending_changes WHERE analysis_run_id = :'run3' AND legacy_entity_id = 'F-4' \gset
SELECT accept_change(:'target_id');
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run3');
SELECT deal_id IS NOT NULL AS deal, status, confidence_tier, changes FROM queue_stats WHERE deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY status, confidence_tier;

-- findings and gaps go through the same queue
SELECT start_run('00000000-0000-0000-0006-0000000000d8') AS run4 \gset
SELECT * FROM propose_findings(:'run4', '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "applications", "title": "ECC end of maintenance", "severity": "high", "confidence_score": 0.9}]');
SELECT * FROM propose_gaps(:'run4', '[{"legacy_id": "G-1", "domain": "network", "description": "WAN contract terms"}]');
CALL process_queue(batch_size => 1, max_tier => 2);
SELECT legacy_id, title, severity FROM findings WHERE deal_id = '00000000-0000-0000-0006-0000000000d8'; SELECT legacy_id, description, importance FROM gaps WHERE deal_id = '00000000-0000-0000-0006-0000000000d8';
SELECT * FROM propose_gaps(:'run4', '[{"legacy_id": "G-1", "domain": "network", "description": "WAN contract terms and exit fees"}]');
SELECT legacy_entity_id, change_type, changed FROM (
  SELECT legacy_entity_id, change_type, old_value ->> 'description' <> new_value ->> 'description' AS changed, created_at
  FROM pending_changes WHERE entity_type = 'gap' AND deal_id = '00000000-0000-0000-0006-0000000000d8') s ORDER BY created_at;

-- a deal's own policy: new facts need 0.99 to apply themselves
INSERT INTO tier_policies (deal_id, change_type, min_confidence, tier) VALUES
  ('00000000-0000-0000-0006-0000000000d8', 'new', 0.99, 1);
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0006-0000000000d9', '00000000-0000-0000-0006-0000000000a8', 'Project Spruce', 'Spruce AS');
SELECT confidence_tier('00000000-0000-0000-0006-0000000000d8', 'fact', 'new', 0.95) AS this_deal,
       confidence_tier('00000000-0000-0000-0006-0000000000d9', 'fact', 'new', 0.95) AS other_deals,
       confidence_tier('00000000-0000-0000-0006-0000000000d8', 'fact', 'delete') AS deletes;
SET deal_store.auto_apply = off;
SELECT * FROM propose_facts(:'run4', '[{"legacy_id": "F-9", "domain": "network", "item": "SD-WAN", "confidence_score": 1.0}]', ARRAY[]::text[]);
SELECT status FROM pending_changes WHERE legacy_entity_id = 'F-9' AND deal_id = '00000000-0000-0000-0006-0000000000d8';
RESET deal_store.auto_apply;

-- a batch where one change breaks a constraint at apply time (its source document
-- is not in the deal): the set falls back to one by one, the good change applies,
-- the bad one becomes a conflict naming the constraint
SELECT * FROM propose_facts(:'run4', '[{"legacy_id": "F-10", "domain": "network", "item": "WAN optimisers"},
  {"legacy_id": "F-11", "domain": "network", "item": "Who owns this?", "source_document_id": "00000000-0000-0000-0006-00000000dead"}]', ARRAY[]::text[]);
SELECT * FROM accept_changes('00000000-0000-0000-0006-0000000000d8', 2, :'run4');
SELECT legacy_entity_id, status, review_note FROM pending_changes WHERE legacy_entity_id IN ('F-10', 'F-11') AND deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY 1;

-- errors
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT * FROM deal_store.propose_facts('00000000-0000-0000-0006-000000000999', '[]')$$),
  ($$SELECT * FROM deal_store.propose_facts('$$ || :'run1' || $$', '[]')$$),
  ($$SELECT * FROM deal_store.propose_facts('$$ || :'run4' || $$', '[{"item": "no id"}]')$$),
  ($$SELECT * FROM deal_store.accept_changes('00000000-0000-0000-0006-0000000000d8', max_tier => 4)$$),
  ($$CALL deal_store.process_queue(0)$$),
  ($$SELECT deal_store.confidence_tier('00000000-0000-0000-0006-0000000000d8', 'memo', 'new')$$)
) AS t(s);

SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run4');
-- run 5 sends the network facts it still sees, without F-10, in one call: completing the
-- run proposes one removal (tier 3), accepted in a batch: F-10 is soft-deleted naming the run
SELECT start_run('00000000-0000-0000-0006-0000000000d8', ARRAY['network']) AS run5 \gset
SELECT * FROM propose_facts(:'run5', (
  SELECT jsonb_agg(jsonb_build_object('legacy_id', legacy_id, 'domain', domain, 'category', category, 'item', item,
           'status', status, 'details', details, 'evidence', evidence, 'entity', entity,
           'source_page_numbers', source_page_numbers))
  FROM active_facts WHERE deal_id = '00000000-0000-0000-0006-0000000000d8' AND domain = 'network' AND legacy_id <> 'F-10'));
SELECT status FROM complete_run(:'run5');
SELECT legacy_entity_id, change_type, confidence_tier, status FROM pending_changes WHERE analysis_run_id = :'run5';
SELECT * FROM accept_changes('00000000-0000-0000-0006-0000000000d8', 3, :'run5');

-- the final picture
SELECT legacy_id, item FROM current_facts WHERE deal_id = '00000000-0000-0000-0006-0000000000d8' ORDER BY 1;
SELECT id AS fact_id FROM facts WHERE legacy_id = 'F-4' AND superseded_at IS NULL AND deal_id = '00000000-0000-0000-0006-0000000000d8' \gset
SELECT version, item, run_number FROM fact_history(:'fact_id');
SELECT id AS fact_id FROM facts WHERE legacy_id = 'F-3' AND superseded_at IS NULL AND deal_id = '00000000-0000-0000-0006-0000000000d8' \gset
SELECT version, item, run_number FROM fact_history(:'fact_id');
SELECT legacy_id, delete_reason FROM facts WHERE deleted_at IS NOT NULL AND deal_id = '00000000-0000-0000-0006-0000000000d8';
-- every proposal and decision is in the audit log with its actor
SELECT action, count(*), count(user_id) AS with_actor FROM deal_activity_log WHERE entity_type = 'pending_change' AND deal_id = '00000000-0000-0000-0006-0000000000d8'
GROUP BY action ORDER BY action;
RESET deal_store.actor;
