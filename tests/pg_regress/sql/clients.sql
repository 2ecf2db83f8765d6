-- The users' side: soft delete the way clients write it, calls that tell what
-- they did, typed views, entity_history by composite key, search that composes.
SET search_path = deal_store, public;
INSERT INTO users (id, email, display_name) VALUES
  ('00000000-0000-0000-0013-0000000000a1', 'cleo@example.com', 'Cleo Client'),
  ('00000000-0000-0000-0013-0000000000a2', 'rex@example.com', 'Rex Reviewer');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0013-0000000000d1', '00000000-0000-0000-0013-0000000000a1', 'Project Client', 'Client AG');
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path) VALUES
  ('00000000-0000-0000-0013-0000000000d1', '00000000-0000-0000-0013-000000000dd1', 'it.pdf', 'h1', '/vdr/it.pdf'),
  ('00000000-0000-0000-0013-0000000000d1', '00000000-0000-0000-0013-000000000dd2', 'apps.xlsx', 'h2', '/vdr/apps.xlsx');
SET deal_store.actor = '00000000-0000-0000-0013-0000000000a1';
SELECT start_run('00000000-0000-0000-0013-0000000000d1') AS run1 \gset
INSERT INTO facts (deal_id, legacy_id, domain, item, source_document_id, confidence_score, verified, analysis_run_id)
SELECT '00000000-0000-0000-0013-0000000000d1', 'F-' || i, CASE WHEN i <= 4 THEN 'network' ELSE 'applications' END,
       'fact ' || i || CASE i WHEN 1 THEN ' firewall rules' WHEN 2 THEN ' firewall vendor support' ELSE '' END,
       CASE WHEN i % 2 = 0 THEN '00000000-0000-0000-0013-000000000dd2'::uuid ELSE '00000000-0000-0000-0013-000000000dd1'::uuid END,
       0.5 + i / 20.0, i <= 2, :'run1'
FROM generate_series(1, 8) i;
-- a second version of F-2: a history row beside the current one
UPDATE facts SET item = 'fact 2 firewall vendor support ends 2027' WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-2';

-- 1. complete_run returns the finished run
SELECT run_number, status, error, completed_at IS NOT NULL AS finished, documents_processed, facts_created, facts_updated
FROM complete_run(:'run1');

-- 2. DELETE through an active_* view reports the rows it soft-deleted
DELETE FROM active_facts WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-8' RETURNING legacy_id;
-- on the table the same soft delete happens, and reports 0 rows (its BEFORE trigger skips the real delete)
DELETE FROM facts WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-7';
SELECT legacy_id, deleted_at IS NOT NULL AS deleted, deleted_by, delete_reason FROM facts
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id IN ('F-7', 'F-8') ORDER BY 1;

-- 3. UPDATE … SET deleted_at = now() is a soft delete: actor, batch, reason; the history row is left alone
UPDATE facts SET deleted_at = now() WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-2';
SELECT legacy_id, superseded_at IS NOT NULL AS history, deleted_at IS NOT NULL AS deleted, deleted_by,
       delete_reason, delete_batch IS NOT NULL AS batched
FROM facts WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-2' ORDER BY 2;
SELECT action, reason FROM deal_activity_log
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND entity_type = 'fact' AND action = 'soft_delete' ORDER BY seq;
SELECT id AS target_id FROM facts
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-2' AND superseded_at IS NULL \gset
SELECT restore('deal_store.facts', :'target_id');
-- a document: its facts go with it, in its batch, with the reason given
UPDATE documents SET deleted_at = now(), delete_reason = 'wrong data room'
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND id = '00000000-0000-0000-0013-000000000dd1';
SELECT legacy_id, delete_reason, delete_batch = (SELECT delete_batch FROM documents WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND id = '00000000-0000-0000-0013-000000000dd1') AS same_batch
FROM facts WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND deleted_at IS NOT NULL ORDER BY 1;
SELECT restore('deal_store.documents', '00000000-0000-0000-0013-000000000dd1') AS restored;
-- a deal: everything it owns; then restored as one batch
UPDATE deals SET deleted_at = now() WHERE id = '00000000-0000-0000-0013-0000000000d1';
SELECT (SELECT count(*) FROM active_documents WHERE deal_id = '00000000-0000-0000-0013-0000000000d1') AS documents,
       (SELECT count(*) FROM active_facts WHERE deal_id = '00000000-0000-0000-0013-0000000000d1') AS facts;
SELECT restore('deal_store.deals', '00000000-0000-0000-0013-0000000000d1') AS restored;
-- clearing deleted_at is not a restore: 23514, use restore()
SELECT regress.expect_error($$UPDATE deal_store.facts SET deleted_at = NULL WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' AND legacy_id = 'F-8'$$);

-- 4. the queue says what it did: process_queue_batch in a transaction, process_queue with its counts and progress
INSERT INTO deal_members (deal_id, user_id, role) VALUES ('00000000-0000-0000-0013-0000000000d1', '00000000-0000-0000-0013-0000000000a2', 'reviewer');
SELECT start_run('00000000-0000-0000-0013-0000000000d1') AS run2 \gset
SET deal_store.auto_apply = off;
SELECT * FROM propose_facts(:'run2', '[{"legacy_id": "N-1", "domain": "network", "item": "SD-WAN", "confidence_score": 0.9},
                                       {"legacy_id": "N-2", "domain": "network", "item": "Wi-Fi 6", "confidence_score": 0.95},
                                       {"legacy_id": "N-3", "domain": "network", "item": "LTE backup", "confidence_score": 0.85},
                                       {"legacy_id": "N-4", "domain": "network", "item": "a guess", "confidence_score": 0.3}]',
                            domains => ARRAY[]::text[]) ORDER BY 1, 2;
RESET deal_store.auto_apply;
-- a change that cannot apply (written around propose): a conflict, counted as one
INSERT INTO pending_changes (deal_id, analysis_run_id, change_type, entity_type, legacy_entity_id, new_value, confidence_tier)
VALUES ('00000000-0000-0000-0013-0000000000d1', :'run2', 'new', 'fact', 'N-9', '{"domain": "network", "item": "x", "verified": "maybe"}', 1);
SELECT * FROM process_queue_batch(1);
SELECT deal_id, name, target_name, deal_type, status, owner_id, owner_email, owner_name, documents, facts, findings,
       critical_findings, gaps, open_gaps, pending_tier_1, pending_tier_2, pending_tier_3, conflicts, last_run_number,
       last_run_completed_at IS NOT NULL AS has_last_run, updated_at IS NOT NULL AS has_updated_at
FROM deal_overview WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' \gx
RESET deal_store.actor;
CALL process_queue(batch_size => 2);
SELECT legacy_entity_id, status FROM pending_changes WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' ORDER BY 1;
SELECT regress.expect_error($$SELECT deal_store.process_queue_batch(0)$$);
SET deal_store.actor = '00000000-0000-0000-0013-0000000000a1';
SELECT status, facts_created FROM complete_run(:'run2');

-- 5. typed views
SELECT name, owner_email, owner_name, documents, facts, findings, gaps, open_gaps,
       pending_tier_1, pending_tier_2, pending_tier_3, conflicts, last_run_number
FROM deal_overview WHERE deal_id = '00000000-0000-0000-0013-0000000000d1';
SELECT domain, facts, verified, low_confidence, avg_confidence, documents FROM facts_by_domain
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' ORDER BY domain;
SELECT user_email, user_name, deal_name, action, entity_type, count(*) FROM activity
WHERE deal_id = '00000000-0000-0000-0013-0000000000d1' GROUP BY 1, 2, 3, 4, 5 ORDER BY 5, 4, 1;

-- 6. entity_history by id and by composite key (any key order)
SELECT action, entity_type, details ->> 'role' AS role FROM entity_history('deal_member',
    entity_key => '{"user_id": "00000000-0000-0000-0013-0000000000a2", "deal_id": "00000000-0000-0000-0013-0000000000d1"}');
SELECT action FROM entity_history('document', '00000000-0000-0000-0013-000000000dd1');
SELECT count(*) AS nothing FROM entity_history('deal_member');

-- 7. search that composes: the same parser and rank as search_facts, in a query of one's own
SELECT f.legacy_id, round(search_rank(f.search_vector, q)::numeric, 4) AS rank
FROM active_facts f, search_tsquery('firewall vend') q
WHERE f.deal_id = '00000000-0000-0000-0013-0000000000d1' AND f.search_vector @@ q
ORDER BY search_rank(f.search_vector, q) DESC, f.legacy_id;
SELECT legacy_id, round(rank::numeric, 4) AS rank FROM search_facts('00000000-0000-0000-0013-0000000000d1', 'firewall vend');
-- with a deal of 5,000 facts the plan of such a query reads the GIN index on search_vector
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0013-0000000000d2', '00000000-0000-0000-0013-0000000000a1', 'Project Bulk', 'Bulk AG');
INSERT INTO facts (deal_id, legacy_id, domain, item)
SELECT '00000000-0000-0000-0013-0000000000d2', 'B-' || i, 'network', 'switch ' || i || CASE WHEN i % 1000 = 0 THEN ' firewall' ELSE '' END
FROM generate_series(1, 5000) i;
ANALYZE facts;
CREATE FUNCTION pg_temp.plan_reads(query text, index_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        IF strpos(line, index_name) > 0 THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END $$;
SELECT pg_temp.plan_reads($$SELECT f.legacy_id FROM deal_store.active_facts f
    WHERE f.deal_id = '00000000-0000-0000-0013-0000000000d2' AND f.search_vector @@ deal_store.search_tsquery('firewall')
    ORDER BY deal_store.search_rank(f.search_vector, deal_store.search_tsquery('firewall')) DESC$$, 'facts_search_vector_idx') AS reads_gin;
SELECT count(*) FROM active_facts f
WHERE f.deal_id = '00000000-0000-0000-0013-0000000000d2' AND f.search_vector @@ search_tsquery('firewall');

-- 8. set_actor: the actor from a uuid, for the transaction
BEGIN;
SELECT set_actor('00000000-0000-0000-0013-0000000000a2');
SELECT current_setting('deal_store.actor') = '00000000-0000-0000-0013-0000000000a2' AS set_for_the_transaction;
COMMIT;
SELECT current_setting('deal_store.actor') AS after_commit;
SELECT set_actor(NULL) IS NULL AS cleared;
RESET deal_store.actor;
