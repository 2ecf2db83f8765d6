-- Issue 16: one apply path that no bad change can jam, fact versions written by
-- one mechanism, proposals checked before anything is proposed, tier rules that
-- fail closed.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0012-0000000000a1', 'apply@example.com');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0012-0000000000d1', '00000000-0000-0000-0012-0000000000a1', 'Project Poison', 'P plc'),
  ('00000000-0000-0000-0012-0000000000d2', '00000000-0000-0000-0012-0000000000a1', 'Project Clean', 'C plc');
SET deal_store.actor = '00000000-0000-0000-0012-0000000000a1';
SET deal_store.auto_apply = off;
SELECT start_run('00000000-0000-0000-0012-0000000000d1') AS run1 \gset
SELECT start_run('00000000-0000-0000-0012-0000000000d2') AS run2 \gset

-- 1. Every field of every element is checked at propose time: 22023 naming the
-- element, its legacy_id and the field; nothing of the call is proposed.
SELECT regress.expect_error(format('SELECT * FROM deal_store.propose_facts(%L, %L)', :'run1', doc))
FROM (VALUES
  ('[{"legacy_id": "P-1", "domain": "network", "item": "ok"}, {"legacy_id": "P-2", "domain": "network", "item": "x", "verified": "maybe"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "confidence_score": "high"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "confidence_score": 1e400}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "confidence_score": 1.7}]'),
  ('[{"legacy_id": "P-1", "domain": "network"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "   "}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "source_page_numbers": [3, 0]}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "source_page_numbers": "3"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "entity": "nobody"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "details": "a string"}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": 42}]'),
  ('[{"legacy_id": "P-1", "domain": "network", "item": "x", "source_document_id": "not-a-uuid"}]')
) AS t(doc);
SELECT regress.expect_error(format('SELECT * FROM deal_store.propose_findings(%L, %L)', :'run1', doc))
FROM (VALUES
  ('[{"legacy_id": "R-1", "domain": "network", "finding_type": "risk", "title": "t", "severity": "apocalyptic"}]'),
  ('[{"legacy_id": "R-1", "domain": "network", "finding_type": "risk", "title": "t", "cost_estimate_low": 2.5}]'),
  ('[{"legacy_id": "R-1", "domain": "network", "finding_type": "risk", "title": "t", "cost_estimate_low": 9, "cost_estimate_high": 1}]'),
  ('[{"legacy_id": "R-1", "domain": "network", "title": "t"}]')
) AS t(doc);
SELECT regress.expect_error(format('SELECT * FROM deal_store.propose_gaps(%L, %L)', :'run1', doc))
FROM (VALUES
  ('[{"legacy_id": "G-1", "domain": "network", "description": "d", "importance": "urgent"}]'),
  ('[{"legacy_id": "G-1", "domain": "network", "description": "d", "suggested_sources": [1, 2]}]')
) AS t(doc);
SELECT count(*) AS proposed_so_far FROM pending_changes WHERE deal_id = '00000000-0000-0000-0012-0000000000d1';
-- a deal may opt to ignore keys it does not know: they are dropped, not stored
UPDATE deals SET ignore_unknown_keys = true WHERE id = '00000000-0000-0000-0012-0000000000d1';
SELECT * FROM propose_facts(:'run1', '[{"legacy_id": "P-0", "domain": "network", "item": "kept", "verified": "maybe", "colour": "red"}]');
SELECT new_value FROM pending_changes WHERE deal_id = '00000000-0000-0000-0012-0000000000d1' AND legacy_entity_id = 'P-0';
UPDATE deals SET ignore_unknown_keys = false WHERE id = '00000000-0000-0000-0012-0000000000d1';

-- 2. A poison change already in the queue (written around propose: by hand, or
-- before 0.2.0 checked proposals) cannot jam it. Deal 1 holds one poison change
-- per wrong-typed field plus one good change; deal 2 only good ones.
INSERT INTO pending_changes (deal_id, analysis_run_id, change_type, entity_type, legacy_entity_id, new_value, confidence_tier)
SELECT '00000000-0000-0000-0012-0000000000d1', :'run1', 'new', 'fact', l, v::jsonb, 1
FROM (VALUES ('X-verified', '{"domain": "network", "item": "a", "verified": "maybe"}'),
             ('X-confidence', '{"domain": "network", "item": "b", "confidence_score": "high"}'),
             ('X-infinite', '{"domain": "network", "item": "c", "confidence_score": 1e400}'),
             ('X-range', '{"domain": "network", "item": "d", "confidence_score": 1.7}'),
             ('X-no-item', '{"domain": "network"}'),
             ('X-pages', '{"domain": "network", "item": "e", "source_page_numbers": "three"}'),
             ('X-good', '{"domain": "network", "item": "good one"}')) AS t(l, v);
INSERT INTO pending_changes (deal_id, analysis_run_id, change_type, entity_type, legacy_entity_id, new_value, confidence_tier)
SELECT '00000000-0000-0000-0012-0000000000d2', :'run2', 'new', 'fact', 'C-' || i, jsonb_build_object('domain', 'network', 'item', 'clean ' || i), 1
FROM generate_series(1, 3) i;
SELECT * FROM process_queue_batch(100, 3);
SELECT d.name, p.legacy_entity_id, p.status, p.review_note
FROM pending_changes p JOIN deals d ON d.id = p.deal_id
WHERE p.deal_id IN ('00000000-0000-0000-0012-0000000000d1', '00000000-0000-0000-0012-0000000000d2') AND p.status <> 'pending'
ORDER BY 1, 2;
SELECT legacy_id, item FROM active_facts WHERE deal_id IN ('00000000-0000-0000-0012-0000000000d1', '00000000-0000-0000-0012-0000000000d2') ORDER BY 1;
-- accept_changes in the same state: a poison update next to a good one
INSERT INTO pending_changes (deal_id, analysis_run_id, change_type, entity_type, entity_id, legacy_entity_id, new_value, base_checksum, confidence_tier)
SELECT f.deal_id, :'run2', 'update', 'fact', f.id, f.legacy_id,
       (SELECT jsonb_object_agg(k, to_jsonb(f) -> k) FROM unnest(content_fields('fact')) k) || v::jsonb, f.item_checksum, 2
FROM facts f JOIN (VALUES ('C-1', '{"domain": "network", "item": "clean 1 (rev)"}'),
                          ('C-2', '{"domain": "network", "item": "clean 2 (bad)", "details": 7}'),
                          ('C-3', '{"domain": "network", "item": "clean 3 (rev)"}')) AS t(l, v) ON t.l = f.legacy_id
WHERE f.deal_id = '00000000-0000-0000-0012-0000000000d2' AND f.superseded_at IS NULL;
SELECT * FROM accept_changes('00000000-0000-0000-0012-0000000000d2', 3);
SELECT legacy_entity_id, status, review_note FROM pending_changes
WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND change_type = 'update' ORDER BY 1;
SELECT legacy_id, item, previous_version_id IS NOT NULL AS versioned FROM active_facts
WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' ORDER BY 1;

-- 3. A failed run's change and a change into a deleted deal are refused with their reasons.
SELECT * FROM propose_facts(:'run1', '[{"legacy_id": "P-9", "domain": "network", "item": "from a run that failed"}]', ARRAY[]::text[]);
SELECT status, error FROM fail_run(:'run1', 'extractor crashed');
-- the id is read first: a function that writes is called with values (on Citus a call per
-- row of a query over a distributed table would run on a shard; README "Running on Citus")
SELECT id AS target_id FROM pending_changes WHERE deal_id = '00000000-0000-0000-0012-0000000000d1' AND legacy_entity_id = 'P-9' \gset
SELECT accept_change(:'target_id');
SELECT * FROM propose_facts(:'run2', '[{"legacy_id": "C-9", "domain": "network", "item": "into a deal about to go"}]', ARRAY[]::text[]);
SELECT soft_delete('deal_store.deals', '00000000-0000-0000-0012-0000000000d2', 'deal dropped');
SELECT id AS target_id FROM pending_changes WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND legacy_entity_id = 'C-9' \gset
SELECT accept_change(:'target_id');
SELECT legacy_entity_id, status, review_note FROM pending_changes WHERE legacy_entity_id IN ('P-9', 'C-9') ORDER BY 1;
SELECT count(*) AS leaked FROM facts WHERE legacy_id IN ('P-9', 'C-9');
SELECT restore('deal_store.deals', '00000000-0000-0000-0012-0000000000d2');

-- 4. Tier rules fail closed: an error reading them is an error, never "no rules".
SELECT start_run('00000000-0000-0000-0012-0000000000d2') AS run3 \gset
BEGIN;
ALTER TABLE tier_policies RENAME COLUMN min_confidence TO min_conf;
SELECT regress.expect_error(format('SELECT * FROM deal_store.propose_facts(%L, %L)', :'run3',
  '[{"legacy_id": "C-8", "domain": "network", "item": "x", "confidence_score": 0.99}]'));
ROLLBACK;

-- 5. Fact versions: one mechanism for every writer. A 3-row content UPDATE
-- writes 3 history rows in one statement; a link the versioning did not make is
-- refused; the queue's updates version the same way.
INSERT INTO facts (deal_id, legacy_id, domain, item)
SELECT '00000000-0000-0000-0012-0000000000d2', 'V-' || i, 'apps', 'app ' || i FROM generate_series(1, 3) i;
UPDATE facts SET item = item || ' v2' WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND legacy_id LIKE 'V-%';
SELECT c.legacy_id, c.item, h.item AS previous, h.superseded_at IS NOT NULL AS history, h.item_checksum = deal_store.fact_checksum(to_jsonb(h)) AS checksum_ok
FROM facts c JOIN facts h ON h.deal_id = c.deal_id AND h.id = c.previous_version_id
WHERE c.deal_id = '00000000-0000-0000-0012-0000000000d2' AND c.legacy_id LIKE 'V-%' AND c.superseded_at IS NULL ORDER BY 1;
UPDATE facts SET confidence_score = 0.7 WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND legacy_id LIKE 'V-%';
SELECT count(*) AS versions_after_a_volatile_update FROM facts WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND legacy_id LIKE 'V-%';
SELECT regress.expect_error($$UPDATE deal_store.facts f SET previous_version_id = h.id FROM deal_store.facts h
  WHERE f.deal_id = '00000000-0000-0000-0012-0000000000d2' AND f.legacy_id = 'V-1' AND f.superseded_at IS NULL
    AND h.deal_id = f.deal_id AND h.legacy_id = 'V-2' AND h.superseded_at IS NOT NULL$$);
SELECT regress.expect_error($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, superseded_at)
  VALUES ('00000000-0000-0000-0012-0000000000d2', 'V-1', 'apps', 'forged past', now())$$);
SELECT name FROM pg_settings WHERE name LIKE 'deal_store.caller%';
SELECT id AS fact_id FROM facts WHERE deal_id = '00000000-0000-0000-0012-0000000000d2' AND legacy_id = 'V-1' AND superseded_at IS NULL \gset
SELECT version, item, is_current FROM fact_history(:'fact_id');
RESET deal_store.auto_apply;
RESET deal_store.actor;
