-- Idempotent calls: a repeated call with the same key returns the first call's
-- result and changes nothing; the same key with other arguments is 22023.
-- (A retry across a dropped connection: tests/feed/idempotency_client.py.)
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0020-0000000000a1', 'idem@example.com');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0020-0000000000d1', '00000000-0000-0000-0020-0000000000a1', 'Project Again', 'Again AG');
SET deal_store.actor = '00000000-0000-0000-0020-0000000000a1';

-- start_run: one run, whatever the number of retries
SELECT start_run('00000000-0000-0000-0020-0000000000d1', ARRAY['network'], idempotency_key => 'job-17/start') AS run \gset
SELECT start_run('00000000-0000-0000-0020-0000000000d1', ARRAY['network'], idempotency_key => 'job-17/start') = :'run' AS same_run;
SELECT count(*) AS runs FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0020-0000000000d1';
SELECT regress.expect_error($$SELECT deal_store.start_run('00000000-0000-0000-0020-0000000000d1', ARRAY['applications'], idempotency_key => 'job-17/start')$$);
SELECT regress.expect_error($$SELECT deal_store.start_run('00000000-0000-0000-0020-0000000000d1', idempotency_key => '')$$);

-- propose_facts: the first call's counts, and no second set of changes
SELECT * FROM propose_facts(:'run', '[{"legacy_id": "F-1", "domain": "network", "item": "MPLS", "confidence_score": 0.9},
                                      {"legacy_id": "F-2", "domain": "network", "item": "Wi-Fi", "confidence_score": 0.4}]',
                            idempotency_key => 'job-17/facts') ORDER BY 1, 2;
UPDATE facts SET item = 'MPLS, changed since' WHERE deal_id = '00000000-0000-0000-0020-0000000000d1' AND legacy_id = 'F-1';
SELECT * FROM propose_facts(:'run', '[{"legacy_id": "F-1", "domain": "network", "item": "MPLS", "confidence_score": 0.9},
                                      {"legacy_id": "F-2", "domain": "network", "item": "Wi-Fi", "confidence_score": 0.4}]',
                            idempotency_key => 'job-17/facts') ORDER BY 1, 2;
SELECT legacy_entity_id, change_type, status FROM pending_changes WHERE deal_id = '00000000-0000-0000-0020-0000000000d1' ORDER BY 1, 2;
SELECT regress.expect_error($$SELECT deal_store.propose_gaps('$$ || :'run' || $$', '[]', idempotency_key => 'job-17/facts')$$);

-- accept_changes: the counts of the first call; a retry accepts nothing new
SELECT * FROM accept_changes('00000000-0000-0000-0020-0000000000d1', idempotency_key => 'job-17/accept');
SELECT * FROM propose_findings(:'run', '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "network", "title": "single carrier"}]');
SELECT * FROM accept_changes('00000000-0000-0000-0020-0000000000d1', idempotency_key => 'job-17/accept');
SELECT legacy_entity_id, status FROM pending_changes WHERE deal_id = '00000000-0000-0000-0020-0000000000d1' ORDER BY 1;

-- import_deal: the same deal back, not 23505
SELECT status FROM complete_run(:'run');
CREATE TABLE regress.idem_export AS SELECT export_deal('00000000-0000-0000-0020-0000000000d1') AS doc;
SELECT soft_delete('deal_store.deals', '00000000-0000-0000-0020-0000000000d1');
SELECT purge('deal_store.deals', '00000000-0000-0000-0020-0000000000d1');
SELECT import_deal(doc, idempotency_key => 'restore-again') FROM regress.idem_export;
SELECT import_deal(doc, idempotency_key => 'restore-again') FROM regress.idem_export;
SELECT regress.expect_error($$SELECT deal_store.import_deal(doc) FROM regress.idem_export$$);

-- what is kept per key: the function, the caller's role, a hash of the arguments
SELECT function_name, caller, arguments ~ '^[0-9a-f]{32}$' AS hashed FROM idempotency_keys ORDER BY created_at, key;
RESET deal_store.actor;
DROP TABLE regress.idem_export;
