-- Real data loaded through the API of the last release (0.1.0) before the
-- upgrade: a deal through three runs of the merge queue (auto-applied, accepted,
-- rejected, deferred and conflicting changes, a removal), findings, gaps and
-- links, a soft delete with its cascade and a restore, a purge, history rows,
-- search vectors, notifications, a tier policy and audit entries. Ids are
-- random: nothing here collides with the regress suite run afterwards.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
INSERT INTO deal_store.users (email, display_name, roles) VALUES
  ('lead@upgrade.example', 'Lena Lead', ARRAY['analyst', 'reviewer']),
  ('rev@upgrade.example', 'Rory Reviewer', ARRAY['reviewer']);
SELECT id AS lead FROM deal_store.users WHERE email = 'lead@upgrade.example' \gset
SELECT id AS rev FROM deal_store.users WHERE email = 'rev@upgrade.example' \gset
SET deal_store.actor = :'lead';
INSERT INTO deal_store.deals (user_id, name, target_name, buyer_name, industry)
VALUES (:'lead', 'Project Upgrade', 'Oak Holdings', 'Elm Capital', 'Logistics') RETURNING id AS deal \gset
INSERT INTO deal_store.documents (deal_id, filename, file_hash, storage_path, page_count, status)
VALUES (:'deal', 'IT_Overview.pdf', 'sha256:aa01', '/vdr/it.pdf', 40, 'processed'),
       (:'deal', 'Contracts.xlsx', 'sha256:aa02', '/vdr/contracts.xlsx', 4, 'processed');
SELECT id AS doc FROM deal_store.documents WHERE deal_id = :'deal' AND file_hash = 'sha256:aa01' \gset
INSERT INTO deal_store.tier_policies (deal_id, change_type, min_confidence, tier) VALUES (:'deal', 'update', 0.97, 1);

-- run 1: new and confident, applied at once
SELECT deal_store.start_run(:'deal', ARRAY['applications', 'network']) AS run1 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run1', format($$[
  {"legacy_id": "U-1", "domain": "applications", "item": "SAP S/4HANA 2021", "confidence_score": 0.95, "source_document_id": "%s", "source_page_numbers": [3, 4]},
  {"legacy_id": "U-2", "domain": "applications", "item": "Dynamics 365 CRM", "confidence_score": 0.9, "details": {"users": 120, "shared": true}},
  {"legacy_id": "U-3", "domain": "network", "item": "MPLS WAN from Orange", "confidence_score": 0.9, "evidence": "Contract 2019-04"},
  {"legacy_id": "U-4", "domain": "network", "item": "Cisco Meraki LAN", "confidence_score": 0.85},
  {"legacy_id": "U-5", "domain": "network", "item": "Palo Alto firewalls", "confidence_score": 0.88}
]$$, :'doc')::jsonb);
SELECT count(*) FROM deal_store.propose_findings(:'run1',
  '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "applications", "title": "ERP shared with parent", "severity": "high", "confidence_score": 0.9}]');
SELECT count(*) FROM deal_store.propose_gaps(:'run1',
  '[{"legacy_id": "G-1", "domain": "network", "description": "WAN exit fees unknown", "confidence_score": 0.9}]');
CALL deal_store.process_queue(batch_size => 10, max_tier => 2);
SELECT deal_store.complete_run(:'run1');
INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id, link_type)
SELECT :'deal', f.id, r.id, 'supports' FROM deal_store.facts f, deal_store.findings r
WHERE f.deal_id = :'deal' AND r.deal_id = :'deal' AND f.legacy_id IN ('U-1', 'U-2') AND f.superseded_at IS NULL;

-- run 2: updates (one auto-applied, one accepted, one in conflict), a new
-- low-confidence fact rejected, another deferred, a removal accepted
SELECT deal_store.start_run(:'deal', ARRAY['applications', 'network']) AS run2 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run2', $$[
  {"legacy_id": "U-1", "domain": "applications", "item": "SAP S/4HANA 2022", "confidence_score": 0.99},
  {"legacy_id": "U-2", "domain": "applications", "item": "Dynamics 365 CRM (group tenant)", "confidence_score": 0.8, "details": {"users": 140}},
  {"legacy_id": "U-6", "domain": "applications", "item": "Workday HCM", "confidence_score": 0.4},
  {"legacy_id": "U-7", "domain": "applications", "item": "Coupa procurement", "confidence_score": 0.5}
]$$);
SELECT count(*) FROM deal_store.propose_facts(:'run2', $$[
  {"legacy_id": "U-3", "domain": "network", "item": "MPLS WAN from Orange, 14 sites", "confidence_score": 0.8, "evidence": "Contract 2019-04"},
  {"legacy_id": "U-4", "domain": "network", "item": "Cisco Meraki LAN", "confidence_score": 0.85}
]$$);
SET deal_store.actor = :'rev';
UPDATE deal_store.facts SET item = 'MPLS WAN from Orange (renewed 2024)' WHERE deal_id = :'deal' AND legacy_id = 'U-3' AND superseded_at IS NULL;
SELECT deal_store.accept_change(id, 'checked') FROM deal_store.pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id IN ('U-2', 'U-3');
SELECT deal_store.reject_change(id, 'out of scope') FROM deal_store.pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'U-6';
SELECT deal_store.defer_change(id, now() + interval '7 days', 'ask the CIO') FROM deal_store.pending_changes WHERE analysis_run_id = :'run2' AND legacy_entity_id = 'U-7';
SELECT count(*) FROM deal_store.accept_changes(:'deal', 3, :'run2');
SELECT deal_store.complete_run(:'run2');

-- run 3: incremental, a new gap and finding, a failed run beside it
SELECT deal_store.start_run(:'deal', ARRAY['network'], incremental => true) AS run3 \gset
SELECT count(*) FROM deal_store.propose_facts(:'run3', $$[
  {"legacy_id": "U-8", "domain": "network", "item": "SD-WAN pilot in two plants", "confidence_score": 0.92}
]$$);
SELECT count(*) FROM deal_store.propose_gaps(:'run3',
  '[{"legacy_id": "G-2", "domain": "network", "description": "Firewall rule review missing", "importance": "critical"}]');
SELECT count(*) FROM deal_store.propose_findings(:'run3',
  '[{"legacy_id": "R-2", "finding_type": "risk", "domain": "network", "title": "MPLS contract renewal", "severity": "medium", "cost_estimate_low": 10000, "cost_estimate_high": 25000}]');
SELECT count(*) FROM deal_store.accept_changes(:'deal', 2, :'run3');
SELECT deal_store.complete_run(:'run3');
SELECT deal_store.start_run(:'deal', ARRAY['network']) AS run4 \gset
SELECT deal_store.fail_run(:'run4', 'extractor timed out');

-- soft deletes (one cascading from a document), a restore, a purge, a resolved gap
SET deal_store.actor = :'lead';
SELECT deal_store.soft_delete('deal_store.documents', id, 'duplicate upload') FROM deal_store.documents WHERE deal_id = :'deal' AND file_hash = 'sha256:aa02';
SELECT deal_store.soft_delete('deal_store.facts', id, 'wrong plant') FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'U-4' AND superseded_at IS NULL;
SELECT deal_store.soft_delete('deal_store.gaps', id) FROM deal_store.gaps WHERE deal_id = :'deal' AND legacy_id = 'G-2';
SELECT deal_store.restore('deal_store.gaps', id) FROM deal_store.gaps WHERE deal_id = :'deal' AND legacy_id = 'G-2';
SELECT deal_store.resolve_gap(id, 'exit fees in schedule 4') FROM deal_store.gaps WHERE deal_id = :'deal' AND legacy_id = 'G-1';
INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title) VALUES (:'deal', 'R-9', 'recommendation', 'network', 'typo');
SELECT deal_store.soft_delete('deal_store.findings', id) FROM deal_store.findings WHERE deal_id = :'deal' AND legacy_id = 'R-9';
SELECT deal_store.purge('deal_store.findings', id) FROM deal_store.findings WHERE deal_id = :'deal' AND legacy_id = 'R-9';

-- a second, archived deal
INSERT INTO deal_store.deals (user_id, name, target_name) VALUES (:'rev', 'Project Dormant', 'Ash Ltd') RETURNING id AS deal2 \gset
SELECT deal_store.archive_deal(:'deal2');
RESET deal_store.actor;

-- what the upgrade must keep
SELECT (SELECT count(*) FROM deal_store.facts WHERE superseded_at IS NOT NULL) > 0 AS has_history,
       (SELECT count(*) FROM deal_store.deal_activity_log) > 0 AS has_audit,
       (SELECT count(DISTINCT status) FROM deal_store.pending_changes) >= 4 AS queue_states,
       (SELECT count(*) FROM deal_store.facts WHERE deleted_at IS NOT NULL) > 0 AS has_soft_deletes,
       (SELECT count(*) FROM deal_store.facts WHERE search_vector IS NOT NULL) > 0 AS has_search_vectors;
