-- deal_store on a three-node Citus cluster (tests/citus/citus.sh): the deal tables
-- distributed by deal_id as deal_store.distribute() places them, and the API a
-- deal's life uses, through the coordinator. Every write names its actor with
-- SET LOCAL, which Citus passes on to the workers (citus.propagate_set_commands).
\set VERBOSITY terse
SET citus.propagate_set_commands = 'local';
SET client_min_messages = warning;

-- where the tables are: reference tables on every node, the rest by deal
SELECT logicalrelid::regclass AS table_name, CASE partmethod WHEN 'h' THEN 'by ' || column_to_column_name(logicalrelid, partkey) ELSE 'reference' END AS placement,
       colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'deal_store.deals'::regclass) AS with_deals
FROM pg_dist_partition WHERE logicalrelid::regclass::text LIKE 'deal_store.%' ORDER BY 1::text;
SELECT count(DISTINCT nodename || nodeport) AS nodes_with_shards FROM pg_dist_shard_placement
WHERE shardid IN (SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'deal_store.facts'::regclass);

INSERT INTO deal_store.users (id, email, display_name) VALUES ('00000000-0000-0000-0000-0000000000a1', 'ana@example.com', 'Ana');
\set deal '00000000-0000-0000-0000-0000000000d1'
\set other '00000000-0000-0000-0000-0000000000d2'
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SET LOCAL deal_store.reason = 'set up';
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
    (:'deal', '00000000-0000-0000-0000-0000000000a1', 'Carve-out', 'Target'),
    (:'other', '00000000-0000-0000-0000-0000000000a1', 'Other', 'Target');
INSERT INTO deal_store.documents (deal_id, id, filename, file_hash, storage_path)
VALUES (:'deal', '00000000-0000-0000-0000-0000000000c1', 'network.pdf', 'h1', '/dr/network.pdf');
INSERT INTO deal_store.facts (deal_id, id, domain, category, item, legacy_id, source_document_id) VALUES
    (:'deal', '00000000-0000-0000-0000-0000000000f1', 'network', 'wan', 'MPLS WAN between plants', 'F-1', '00000000-0000-0000-0000-0000000000c1'),
    (:'deal', '00000000-0000-0000-0000-0000000000f2', 'applications', 'erp', 'SAP ECC 6.0', 'F-2', NULL),
    (:'other', '00000000-0000-0000-0000-0000000000f3', 'applications', 'erp', 'Oracle EBS', 'F-1', NULL);
COMMIT;

-- an audited update on a shard: a new version, the log entry under the table's name, actor and reason
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SET LOCAL deal_store.reason = 'reworded';
UPDATE deal_store.facts SET item = 'MPLS WAN between all plants' WHERE deal_id = :'deal' AND id = '00000000-0000-0000-0000-0000000000f1';
COMMIT;
SELECT deal_id = :'deal' AS first_deal, entity_type, action, user_id IS NOT NULL AS actor, reason, count(*)
FROM deal_store.deal_activity_log GROUP BY 1, 2, 3, 4, 5 ORDER BY 1 DESC, 2, 3, 5;
SELECT version, is_current, item FROM deal_store.fact_history('00000000-0000-0000-0000-0000000000f1');
-- a shard is named as its table
SELECT DISTINCT result FROM run_command_on_shards('deal_store.facts', $$SELECT deal_store_internal._table_of('%s'::regclass)::regclass$$);
SELECT DISTINCT result FROM run_command_on_shards('deal_store.facts', $$SELECT deal_store.entity_type_of('%s'::regclass)$$);

-- soft delete three ways, each in one deal's shard
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
UPDATE deal_store.facts SET deleted_at = now() WHERE deal_id = :'deal' AND id = '00000000-0000-0000-0000-0000000000f2';
DELETE FROM deal_store.documents WHERE deal_id = :'deal' AND id = '00000000-0000-0000-0000-0000000000c1';
COMMIT;
SELECT legacy_id, deleted_at IS NOT NULL AS deleted, delete_reason FROM deal_store.facts
WHERE superseded_at IS NULL ORDER BY deal_id, legacy_id;
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.restore('deal_store.documents', '00000000-0000-0000-0000-0000000000c1') AS restored;
SELECT deal_store.restore('deal_store.facts', '00000000-0000-0000-0000-0000000000f2') AS restored;
SELECT deal_store.soft_delete('deal_store.facts', '00000000-0000-0000-0000-0000000000f3', 'duplicate', :'other') AS deleted;
COMMIT;
SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live, count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted
FROM deal_store.facts WHERE superseded_at IS NULL;

-- a run through the merge queue
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.start_run(:'deal', ARRAY['network']) AS run \gset
SELECT * FROM deal_store.propose_facts(:'run',
    '[{"legacy_id": "F-3", "domain": "network", "category": "wan", "item": "SD-WAN pilot links Lyon and Munich", "confidence_score": 0.9}]',
    domains => '{}');
SELECT * FROM deal_store.propose_facts(:'run',
    '[{"legacy_id": "F-4", "domain": "network", "item": "Munich has a second internet line", "confidence_score": 0.6},
      {"legacy_id": "F-5", "domain": "network", "item": "Guest Wi-Fi shares the office VLAN", "confidence_score": 0.5},
      {"legacy_id": "F-6", "domain": "network", "item": "Firewall rules are reviewed yearly", "confidence_score": 0.55},
      {"legacy_id": "F-1", "domain": "network", "category": "wan", "item": "MPLS WAN between all plants and Lyon", "confidence_score": 0.7}]',
    domains => '{}');
COMMIT;
-- findings and gaps through the same queue: new, then an update (its checksum compared
-- while the target is locked, not inside the UPDATE)
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT * FROM deal_store.propose_findings(:'run',
    '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "network", "title": "One carrier for all plants", "severity": "high", "confidence_score": 0.9}]',
    ARRAY['network']);
SELECT * FROM deal_store.propose_findings(:'run',
    '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "network", "title": "One carrier for all plants and Lyon", "severity": "high", "confidence_score": 0.9}]',
    ARRAY['network']);
SELECT * FROM deal_store.propose_gaps(:'run',
    '[{"legacy_id": "G-2", "domain": "network", "description": "Carrier contract", "confidence_score": 0.9}]', ARRAY['network']);
COMMIT;
SELECT legacy_id, title, severity FROM deal_store.findings WHERE deal_id = :'deal' AND deleted_at IS NULL;
SELECT legacy_id, description FROM deal_store.gaps WHERE deal_id = :'deal' AND deleted_at IS NULL;
-- a deal_store function that writes is called with values, not per row of a query over a
-- distributed table (Citus would run it on a shard): the ids are read first
SELECT id AS c4 FROM deal_store.pending_changes WHERE deal_id = :'deal' AND legacy_entity_id = 'F-4' \gset
SELECT id AS c5 FROM deal_store.pending_changes WHERE deal_id = :'deal' AND legacy_entity_id = 'F-5' \gset
SELECT id AS c6 FROM deal_store.pending_changes WHERE deal_id = :'deal' AND legacy_entity_id = 'F-6' \gset
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.accept_change(:'c4', 'checked with the CFO');
SELECT deal_store.reject_change(:'c5', 'out of scope');
SELECT deal_store.defer_change(:'c6', now() + interval '3 days', 'ask the vendor');
SELECT * FROM deal_store.accept_changes(:'deal', max_tier => 2);
COMMIT;
SET deal_store.auto_apply = off;
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT * FROM deal_store.propose_facts(:'run',
    '[{"legacy_id": "F-7", "domain": "network", "item": "Lyon has a backup LTE router", "confidence_score": 0.95}]',
    domains => '{}');
COMMIT;
RESET deal_store.auto_apply;
CALL deal_store.process_queue(batch_size => 1000, max_tier => 1);
SELECT status, confidence_tier, changes FROM deal_store.queue_stats WHERE deal_id = :'deal' ORDER BY 1, 2;
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT run_number, status, facts_created, facts_updated FROM deal_store.complete_run(:'run');
COMMIT;
SELECT legacy_id, item FROM deal_store.current_facts WHERE deal_id = :'deal' ORDER BY 1;
SELECT legacy_id, title FROM deal_store.findings WHERE deal_id = :'deal' AND deleted_at IS NULL;

-- reads
SELECT legacy_id, item, rank, headline FROM deal_store.search_facts(:'deal', 'Munich');
SELECT entity_type, title, headline FROM deal_store.search_deal(:'deal', 'WAN');
SELECT legacy_id, change, changed_fields FROM deal_store.diff_facts(:'deal',
    '[{"legacy_id": "F-3", "domain": "network", "category": "wan", "item": "SD-WAN pilot links Lyon and Munich"}]', ARRAY['network']) ORDER BY 1;
SELECT deal_store.deal_summary(:'deal') -> 'facts_by_domain' AS facts_by_domain;
SELECT name, documents, facts, findings, gaps, pending_tier_1, pending_tier_2, conflicts, last_run_number
FROM deal_store.deal_overview ORDER BY name;
SELECT domain, facts, verified, low_confidence, documents FROM deal_store.facts_by_domain WHERE deal_id = :'deal' ORDER BY 1;
SELECT name, status FROM deal_store.deals_for_user('00000000-0000-0000-0000-0000000000a1') ORDER BY 1;
SELECT action, count(*) FROM deal_store.deal_activity(:'deal', lim => 1000) GROUP BY 1 ORDER BY 1;
SELECT action, user_id IS NOT NULL AS actor FROM deal_store.entity_history('fact', '00000000-0000-0000-0000-0000000000f1') ORDER BY seq;
SELECT deal_store.fact_as_of('00000000-0000-0000-0000-0000000000f1', now()) ->> 'item' AS item_now,
       deal_store.fact_as_of('00000000-0000-0000-0000-0000000000f1', '2000-01-01') AS before_it_existed;
-- a gap answered and reopened (values computed before the UPDATE of the shard)
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
INSERT INTO deal_store.gaps (deal_id, id, legacy_id, domain, description)
VALUES (:'deal', '00000000-0000-0000-0000-0000000000e1', 'G-1', 'network', 'No WAN contract in the data room');
SELECT deal_store.resolve_gap('00000000-0000-0000-0000-0000000000e1', 'contract uploaded');
SELECT legacy_id, resolved_at IS NOT NULL AS resolved, resolved_by, resolution_note FROM deal_store.gaps WHERE deal_id = :'deal' ORDER BY 1;
SELECT deal_store.reopen_gap('00000000-0000-0000-0000-0000000000e1');
SELECT legacy_id, resolved_at IS NOT NULL AS resolved, resolved_by, resolution_note FROM deal_store.gaps WHERE deal_id = :'deal' ORDER BY 1;
COMMIT;

-- row-level security on the shards (the policies distribute() wrote: _may per row,
-- the team read on the shard's node): a viewer reads its deal alone and cannot
-- write it, an outsider reads nothing, the API refuses both what they may not do
SET client_min_messages = error;
DROP ROLE IF EXISTS ds_viewer;
DROP ROLE IF EXISTS ds_outsider;
SET client_min_messages = warning;
CREATE ROLE ds_viewer LOGIN;
CREATE ROLE ds_outsider LOGIN;
GRANT deal_store_analyst TO ds_viewer, ds_outsider;
INSERT INTO deal_store.users (id, email, display_name, db_role) VALUES
    ('00000000-0000-0000-0000-0000000000b1', 'vera@example.com', 'Vera', 'ds_viewer'),
    ('00000000-0000-0000-0000-0000000000b2', 'otto@example.com', 'Otto', 'ds_outsider');
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.add_member(:'deal', '00000000-0000-0000-0000-0000000000b1', 'viewer');
COMMIT;
SELECT polname, pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy
WHERE polrelid = 'deal_store.facts'::regclass AND polname = 'members_read';
SET ROLE ds_viewer;
SELECT deal_store.current_actor() AS vera;
SELECT deal_id = :'deal' AS own_deal, count(*) AS facts FROM deal_store.facts GROUP BY 1;
SELECT count(*) AS other_deal_facts FROM deal_store.facts WHERE deal_id = :'other';
SELECT name FROM deal_store.deals ORDER BY 1;
SELECT count(*) > 0 AS reads_the_log FROM deal_store.deal_activity_log WHERE deal_id = :'deal';
SELECT legacy_id FROM deal_store.search_facts(:'deal', 'Munich') ORDER BY 1;
\set VERBOSITY sqlstate
INSERT INTO deal_store.facts (deal_id, domain, category, item, legacy_id) VALUES (:'deal', 'network', 'lan', 'written by a viewer', 'F-8');
SELECT deal_store.start_run(:'deal');
\set VERBOSITY terse
UPDATE deal_store.facts SET item = 'changed by a viewer' WHERE deal_id = :'deal' RETURNING id;
RESET ROLE;
SET ROLE ds_outsider;
SELECT (SELECT count(*) FROM deal_store.facts) AS facts, (SELECT count(*) FROM deal_store.deals) AS deals,
       (SELECT count(*) FROM deal_store.deal_activity_log) AS log_entries;
\set VERBOSITY sqlstate
SELECT * FROM deal_store.search_facts(:'deal', 'Munich');
\set VERBOSITY terse
RESET ROLE;
-- an analyst of the deal writes it
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.add_member(:'deal', '00000000-0000-0000-0000-0000000000b1', 'analyst');
COMMIT;
SET ROLE ds_viewer;
INSERT INTO deal_store.facts (deal_id, domain, category, item, legacy_id) VALUES (:'deal', 'network', 'lan', 'written by an analyst', 'F-8');
SELECT item, user_id = '00000000-0000-0000-0000-0000000000b1' AS by_vera FROM deal_store.facts f
JOIN deal_store.deal_activity_log l ON l.deal_id = f.deal_id AND l.entity_id = f.id
WHERE f.deal_id = :'deal' AND f.item LIKE 'written by%';
RESET ROLE;

-- export; the deal deleted and purged with everything it owns, then imported again
-- (its fact versions too: the versioning's import setting reaches the worker)
SELECT jsonb_array_length(deal_store.export_deal(:'deal') -> 'facts') AS exported_facts;
SELECT deal_store.export_deal(:'deal') AS export \gset
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.soft_delete('deal_store.deals', :'deal') > 0 AS deleted;
SELECT deal_store.purge('deal_store.deals', :'deal') AS purged;
COMMIT;
SELECT (SELECT count(*) FROM deal_store.facts WHERE deal_id = :'deal') AS facts_left,
       (SELECT count(*) FROM deal_store.facts WHERE deal_id = :'other') AS other_deals_facts;
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.import_deal(:'export') = :'deal' AS imported;
COMMIT;
SELECT count(*) FILTER (WHERE superseded_at IS NULL) AS current_facts, count(*) FILTER (WHERE superseded_at IS NOT NULL) AS versions
FROM deal_store.facts WHERE deal_id = :'deal';
SELECT version, is_current, item FROM deal_store.fact_history('00000000-0000-0000-0000-0000000000f1');
-- a history row from anyone else is still refused, on the worker
\set VERBOSITY sqlstate
INSERT INTO deal_store.facts (deal_id, domain, category, item, legacy_id, superseded_at)
VALUES (:'deal', 'network', 'wan', 'forged', 'F-99', now());
\set VERBOSITY terse

-- a change of the users reference table (a copy on every node) is logged once: by the
-- node that holds the log's shard for entries without a deal (the nil uuid), masked
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
UPDATE deal_store.users SET display_name = 'Ana B.', password_hash = 'not for the log' WHERE id = '00000000-0000-0000-0000-0000000000a1';
COMMIT;
SELECT action, deal_id, user_id IS NOT NULL AS actor, details -> 'password_hash' AS password,
       deal_store_internal._log_node(seq) > 0 AS written_on_a_worker, count(*)
FROM deal_store.deal_activity_log WHERE entity_type = 'user' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3;

-- what Citus cannot run says so, with the form that works (0A000): a deal_store
-- function with a subquery argument over a deal table runs on the shard's node
SELECT id AS f2 FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'F-2' AND superseded_at IS NULL \gset
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT version FROM deal_store.fact_history((SELECT id FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'F-2' AND superseded_at IS NULL));
ROLLBACK;
\set VERBOSITY default
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.soft_delete('deal_store.facts', (SELECT id FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'F-2' AND superseded_at IS NULL));
ROLLBACK;
-- a DELETE or UPDATE through an active_* view
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
DELETE FROM deal_store.active_facts WHERE deal_id = :'deal' AND legacy_id = 'F-2';
ROLLBACK;
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
UPDATE deal_store.active_facts SET deleted_at = now() WHERE deal_id = :'deal' AND legacy_id = 'F-2';
ROLLBACK;
\set VERBOSITY terse
-- the forms that work: the value first, and the table
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT count(*) AS versions FROM deal_store.fact_history(:'f2');
DELETE FROM deal_store.facts WHERE deal_id = :'deal' AND legacy_id = 'F-2' AND superseded_at IS NULL;
SELECT deleted_at IS NOT NULL AS deleted, delete_reason FROM deal_store.facts WHERE deal_id = :'deal' AND id = :'f2' AND superseded_at IS NULL;
ROLLBACK;

-- a linked login's API writes name it on the workers, even after it cleared the
-- actor setting in its transaction (a SET LOCAL Citus passes on by itself)
\set VERBOSITY terse
CREATE ROLE ds_citus_linked LOGIN;
GRANT deal_store_analyst TO ds_citus_linked;
INSERT INTO deal_store.users (id, email, db_role) VALUES ('00000000-0000-0000-0000-0000000000a9', 'linked@example.com', 'ds_citus_linked');
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0000-0000000000a1';
SELECT deal_store.add_member(:'deal', '00000000-0000-0000-0000-0000000000a9', 'analyst');
COMMIT;
\c - ds_citus_linked
SET client_min_messages = warning;
BEGIN;
SELECT deal_store.start_run(:'deal', domains => ARRAY['security']) AS r9 \gset
SET LOCAL deal_store.actor = '';
SELECT change_type, proposed FROM deal_store.propose_facts(:'r9', '[{"legacy_id": "S-9", "domain": "security", "item": "No SIEM", "confidence_score": 0.97}]');
SELECT status FROM deal_store.complete_run(:'r9');
COMMIT;
\c - postgres
SELECT entity_type, action, user_id = '00000000-0000-0000-0000-0000000000a9' AS by_the_linked_user, count(*)
FROM deal_store.deal_activity_log WHERE deal_id = :'deal' AND (analysis_run_id = :'r9' OR entity_id = :'r9') GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- ... also with Citus's function transaction blocks switched off for the session
\c - ds_citus_linked
SET client_min_messages = warning;
SET citus.function_opens_transaction_block = off;
SELECT deal_store.start_run(:'deal', domains => ARRAY['security']) AS r10 \gset
SELECT change_type, proposed FROM deal_store.propose_facts(:'r10', '[{"legacy_id": "S-9", "domain": "security", "item": "No SIEM yet", "confidence_score": 0.97}]');
RESET citus.function_opens_transaction_block;
\c - postgres
SELECT entity_type, action, user_id = '00000000-0000-0000-0000-0000000000a9' AS by_the_linked_user, count(*)
FROM deal_store.deal_activity_log WHERE deal_id = :'deal' AND (analysis_run_id = :'r10' OR entity_id = :'r10') GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- a SET LOCAL of a session stays on the coordinator: Citus would send the whole
-- string it came in on to every connection of the transaction, those of API calls
-- (the owner's) included; only deal_store's own settings are passed on
\c - ds_citus_linked
BEGIN;
SELECT deal_store.deal_summary(:'deal') IS NOT NULL AS read;
SET LOCAL work_mem = '64MB' \; SELECT current_setting('work_mem') AS here;
SELECT current_setting('work_mem') AS on_the_worker FROM deal_store.deals WHERE id = :'deal';
SELECT deal_store.current_actor() = '00000000-0000-0000-0000-0000000000a9' AS acting_as_itself;
ROLLBACK;
\c - postgres
-- deal_store's superuser-only settings are refused before they could be passed on
\c - ds_citus_linked
SELECT deal_store_internal._set_local('deal_store.hard_delete', 'on');
\c - postgres
