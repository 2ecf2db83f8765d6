-- What changed, for people: since I last looked, the diff between two runs,
-- document versions.
SET search_path = deal_store, public;
INSERT INTO users (id, email, display_name) VALUES
  ('00000000-0000-0000-0021-0000000000a1', 'mo.lead@example.com', 'Mo Lead'),
  ('00000000-0000-0000-0021-0000000000a2', 'vi.viewer@example.com', 'Vi Viewer');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0021-0000000000d1', '00000000-0000-0000-0021-0000000000a1', 'Project Since', 'Since AG');
SELECT add_member('00000000-0000-0000-0021-0000000000d1', '00000000-0000-0000-0021-0000000000a2', 'viewer');
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path) VALUES
  ('00000000-0000-0000-0021-0000000000d1', '00000000-0000-0000-0021-000000000dd1', 'network.pdf', 'h-net-1', '/vdr/network.pdf');
SET deal_store.actor = '00000000-0000-0000-0021-0000000000a1';

-- run 1 writes five facts from network.pdf, a finding and a gap
SELECT start_run('00000000-0000-0000-0021-0000000000d1') AS run1 \gset
SELECT * FROM propose_facts(:'run1', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'F-' || i, 'domain', 'network', 'item', 'fact ' || i,
        'confidence_score', 0.9, 'source_document_id', '00000000-0000-0000-0021-000000000dd1')) FROM generate_series(1, 5) i));
SELECT * FROM propose_findings(:'run1', '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "network", "title": "one carrier", "confidence_score": 0.9}]');
SELECT * FROM propose_gaps(:'run1', '[{"legacy_id": "G-1", "domain": "network", "description": "carrier contract", "confidence_score": 0.9}]');
SELECT status FROM complete_run(:'run1');

-- 1. since I last looked: nothing marked yet, so everything is unseen; after mark_seen, nothing
SELECT name, unseen > 0 AS unseen FROM deals_for_user('00000000-0000-0000-0021-0000000000a1');
SELECT entity_type, change, changes FROM changes_since_seen('00000000-0000-0000-0021-0000000000d1');
SELECT mark_seen('00000000-0000-0000-0021-0000000000d1') IS NOT NULL AS marked;
SELECT name, unseen FROM deals_for_user('00000000-0000-0000-0021-0000000000a1');
SELECT count(*) AS nothing FROM changes_since_seen('00000000-0000-0000-0021-0000000000d1');

-- run 2: F-2 reworded, F-3 gone, F-6 new, the finding re-rated, the gap answered by hand
SELECT start_run('00000000-0000-0000-0021-0000000000d1') AS run2 \gset
SELECT * FROM propose_facts(:'run2', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'F-' || i, 'domain', 'network',
        'item', CASE i WHEN 2 THEN 'fact 2, reworded' ELSE 'fact ' || i END,
        'confidence_score', 0.9, 'source_document_id', '00000000-0000-0000-0021-000000000dd1'))
        FROM generate_series(1, 6) i WHERE i <> 3)) ORDER BY 1, 2;
SELECT * FROM propose_findings(:'run2', '[{"legacy_id": "R-1", "finding_type": "risk", "domain": "network", "title": "one carrier", "severity": "high", "confidence_score": 0.9}]');
SELECT * FROM accept_changes('00000000-0000-0000-0021-0000000000d1', max_tier => 2, run_id => :'run2');
-- the id is read first: a function that writes is called with values (on Citus a call per
-- row of a query over a distributed table would run on a shard; README "Running on Citus")
SELECT id AS target_id FROM gaps WHERE deal_id = '00000000-0000-0000-0021-0000000000d1' AND legacy_id = 'G-1' \gset
SELECT resolve_gap(:'target_id', 'contract runs to 2027');
-- completing the run proposes F-3's removal (it delivered F-1, F-2, F-4, F-5, F-6 of domain network)
SELECT status FROM complete_run(:'run2');
-- what Mo sees: grouped, counted, with changed fields; F-3's removal waits for review (tier 3)
SELECT c.entity_type, c.change, c.changes, x.without_ids
FROM changes_since_seen('00000000-0000-0000-0021-0000000000d1') c,
     LATERAL (SELECT jsonb_agg(i - 'id') AS without_ids FROM jsonb_array_elements(c.items) i) x
ORDER BY 1, 2;
SELECT name, unseen > 0 AS unseen FROM deals_for_user('00000000-0000-0000-0021-0000000000a1');
-- Vi has its own mark (none yet): everything is new to Vi (this login is a superuser, so it sees the queue too)
SET deal_store.actor = '00000000-0000-0000-0021-0000000000a2';
SELECT entity_type, change, changes FROM changes_since_seen('00000000-0000-0000-0021-0000000000d1') ORDER BY 1, 2;
SELECT regress.expect_error($$SELECT deal_store.mark_seen('00000000-0000-0000-0021-0000000000ff')$$);
RESET deal_store.actor;
SELECT regress.expect_error($$SELECT deal_store.mark_seen('00000000-0000-0000-0021-0000000000d1')$$);
SET deal_store.actor = '00000000-0000-0000-0021-0000000000a1';

-- 2. the diff between two runs, from the stored versions: run 2 against run 1 and back
SELECT * FROM diff_runs(:'run1', :'run2');
SELECT * FROM diff_runs(:'run2', :'run1');
SELECT count(*) AS same FROM diff_runs(:'run2', :'run2');
SELECT id AS target_id FROM pending_changes WHERE deal_id = '00000000-0000-0000-0021-0000000000d1' AND legacy_entity_id = 'F-3' AND status = 'pending' \gset
SELECT accept_change(:'target_id');
SELECT start_run('00000000-0000-0000-0021-0000000000d1') AS run3 \gset
SELECT status FROM complete_run(:'run3');
SELECT * FROM diff_runs(:'run2', :'run3');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0021-0000000000d2', '00000000-0000-0000-0021-0000000000a1', 'Project Elsewhere', 'Elsewhere AG');
SELECT start_run('00000000-0000-0000-0021-0000000000d2') AS other \gset
SELECT regress.expect_error($$SELECT * FROM deal_store.diff_runs('$$ || :'run1' || $$', '$$ || :'other' || $$')$$);

-- 3. document versions: a new upload supersedes network.pdf; document_changes says what moved since
SELECT add_document_version('00000000-0000-0000-0021-000000000dd1', 'h-net-2', 'network_v2.pdf') AS doc2 \gset
SELECT filename, version, status, supersedes_id IS NOT NULL AS supersedes FROM documents
WHERE deal_id = '00000000-0000-0000-0021-0000000000d1' ORDER BY version;
SELECT regress.expect_error($$SELECT deal_store.add_document_version('$$ || :'doc2' || $$', 'h-net-1')$$);
SELECT regress.expect_error($$SELECT deal_store.add_document_version('00000000-0000-0000-0021-000000000dd1', 'h-net-3')$$);
SELECT regress.expect_error($$SELECT deal_store.document_changes('$$ || :'doc2' || $$')$$);
-- run 4 re-reads the new version: F-1 changes, F-4 is gone, F-2, F-5, F-6 stay (F-3 was gone before it)
SELECT start_run('00000000-0000-0000-0021-0000000000d1') AS run4 \gset
SELECT * FROM propose_facts(:'run4', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'F-' || i, 'domain', 'network',
        'item', CASE i WHEN 1 THEN 'fact 1 per version 2' WHEN 2 THEN 'fact 2, reworded' ELSE 'fact ' || i END,
        'confidence_score', 0.9, 'source_document_id', '00000000-0000-0000-0021-000000000dd1'))
        FROM generate_series(1, 6) i WHERE i NOT IN (3, 4))) ORDER BY 1, 2;
-- F-4's removal is proposed when the run completes: over everything the run proposed
SELECT status FROM complete_run(:'run4');
SELECT * FROM accept_changes('00000000-0000-0000-0021-0000000000d1', max_tier => 3, run_id => :'run4');
SELECT * FROM document_changes('00000000-0000-0000-0021-000000000dd1');
RESET deal_store.actor;
