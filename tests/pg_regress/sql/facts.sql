-- Fact checksums, versions, history, diff and the JSON export / import.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0004-0000000000a6', 'facts@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000a6', 'Project Oak', 'Oak BV');
SET deal_store.actor = '00000000-0000-0000-0004-0000000000a6';

-- the canonical form: keys sorted at every depth, white space folded, one number form, NULL = missing
SELECT fact_canonical('{"item": "  SAP \t ECC  ", "details": {"z": [1.50, 2e1], "a": {"y": null, "x": "  v  "}}, "confidence_score": 0.3}');
SELECT fact_checksum('{"item": "SAP ECC", "details": {"n": 1}}') = fact_checksum('{"details": {"n": 1.0}, "item": " SAP  ECC", "evidence": null}') AS same;
SELECT fact_checksum('{"item": "SAP ECC"}') = md5(fact_canonical('{"item": "SAP ECC"}')) AS md5_of_canonical;
SELECT regress.expect_error($$SELECT deal_store.fact_checksum('[1, 2]')$$);
SELECT fact_checksum(NULL) IS NULL AS strict;

-- the stored checksum is always right: a client cannot store a wrong one
INSERT INTO facts (deal_id, id, legacy_id, domain, item, item_checksum, details, source_page_numbers) VALUES
 ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000f1', 'F-1', 'applications', 'Oracle EBS 12.1', md5('wrong'), '{"users": 300}', '{4}'),
 ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000f2', 'F-2', 'applications', 'Workday HCM', NULL, '{}', NULL),
 ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000f3', 'F-3', 'network', 'MPLS WAN', NULL, '{}', NULL),
 ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000f4', 'F-4', 'network', 'Cisco LAN', NULL, '{}', NULL);
SELECT legacy_id, item_checksum = fact_checksum(to_jsonb(f)) AS right FROM facts f
WHERE deal_id = '00000000-0000-0000-0004-0000000000d6' ORDER BY 1;
UPDATE facts SET item_checksum = md5('wrong') WHERE id = '00000000-0000-0000-0004-0000000000f1';
SELECT item_checksum = fact_checksum(to_jsonb(f)) AS still_right FROM facts f WHERE id = '00000000-0000-0000-0004-0000000000f1';

-- versions: a content change keeps the id and writes a history row; a volatile change does not
SELECT start_run('00000000-0000-0000-0004-0000000000d6') AS run1 \gset
UPDATE facts SET confidence_score = 0.9, verified = true WHERE id = '00000000-0000-0000-0004-0000000000f1';
UPDATE facts SET item = 'Oracle EBS 12.2', analysis_run_id = :'run1' WHERE id = '00000000-0000-0000-0004-0000000000f1';
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run1');
UPDATE facts SET details = '{"users": 350}' WHERE id = '00000000-0000-0000-0004-0000000000f1';
UPDATE facts SET details = '{"users": 350.0}' WHERE id = '00000000-0000-0000-0004-0000000000f1';
SELECT h.version, h.is_current, h.item, h.content -> 'details' AS details, h.run_number, f.updated_by
FROM fact_history('00000000-0000-0000-0004-0000000000f1') h
JOIN facts f ON f.id = h.version_id ORDER BY h.version DESC;
SELECT count(*) AS rows_of_f1 FROM facts WHERE deal_id = '00000000-0000-0000-0004-0000000000d6' AND legacy_id = 'F-1';
SELECT regress.expect_error($$UPDATE deal_store.facts SET id = gen_random_uuid() WHERE id = '00000000-0000-0000-0004-0000000000f2'$$);
SELECT regress.expect_error($$SELECT * FROM deal_store.fact_history('00000000-0000-0000-0004-000000000999')$$);

-- diff: new, changed (with the fields), unchanged, removed only inside the domains
SELECT legacy_id, change, fact_id, old_checksum IS NOT NULL AS has_old, new_checksum IS NOT NULL AS has_new, changed_fields
FROM diff_facts('00000000-0000-0000-0004-0000000000d6', $$[
  {"legacy_id": "F-1", "domain": "applications", "item": "Oracle EBS 12.2", "details": {"users": 350}, "source_page_numbers": [4]},
  {"legacy_id": "F-2", "domain": "applications", "item": "Workday  HCM ", "status": "documented", "entity": "target"},
  {"legacy_id": "F-3", "domain": "network", "item": "MPLS WAN (Orange)", "evidence": "contract p.3"},
  {"legacy_id": "F-9", "domain": "network", "item": "SD-WAN pilot"}
]$$, ARRAY['applications', 'network']);
-- F-4 (network) is not reported removed when only applications are in scope
SELECT legacy_id, change FROM diff_facts('00000000-0000-0000-0004-0000000000d6',
  '[{"legacy_id": "F-2", "domain": "applications", "item": "Workday HCM"}]', ARRAY['applications']);
SELECT * FROM diff_summary('00000000-0000-0000-0004-0000000000d6',
  '[{"legacy_id": "F-2", "domain": "applications", "item": "Workday HCM"}]');
-- diffing what is stored reports nothing changed (the facts are read first: on Citus a
-- query over a distributed table with a call in it runs the call on a shard)
SELECT jsonb_agg(to_jsonb(f)) AS stored FROM active_facts f WHERE deal_id = '00000000-0000-0000-0004-0000000000d6' \gset
SELECT * FROM diff_summary('00000000-0000-0000-0004-0000000000d6', :'stored');

-- bad input: 22023 naming the element, P0002 for an unknown deal
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '{"legacy_id": "F-1"}')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[{"legacy_id": "F-1", "item": "a"}, "F-2"]')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[{"item": "a"}]')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[{"legacy_id": "  ", "item": "a"}]')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[{"legacy_id": 7, "item": "a"}]')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[{"legacy_id": "F-1"}, {"legacy_id": "F-2"}, {"legacy_id": "F-1"}]')$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-0000000000d6', '[]', ARRAY['network', NULL])$$),
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0004-000000000999', '[]')$$)
) AS t(s);

-- export / import: lossless, reconciles with diff_facts, never merges
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path)
VALUES ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000c6', 'apps.xlsx', 'h6', '/x');
UPDATE facts SET source_document_id = '00000000-0000-0000-0004-0000000000c6' WHERE id = '00000000-0000-0000-0004-0000000000f2';
INSERT INTO findings (deal_id, id, legacy_id, finding_type, domain, title)
VALUES ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000e6', 'R-1', 'risk', 'applications', 'EBS support ends');
INSERT INTO fact_finding_links (deal_id, fact_id, finding_id)
VALUES ('00000000-0000-0000-0004-0000000000d6', '00000000-0000-0000-0004-0000000000f1', '00000000-0000-0000-0004-0000000000e6');
INSERT INTO gaps (deal_id, legacy_id, domain, description) VALUES ('00000000-0000-0000-0004-0000000000d6', 'G-1', 'network', 'WAN contract');
SELECT soft_delete('deal_store.facts', '00000000-0000-0000-0004-0000000000f4', 'duplicate');
CREATE TEMP TABLE exported AS SELECT export_deal('00000000-0000-0000-0004-0000000000d6') AS doc;
SELECT jsonb_array_length(doc -> 'facts') AS facts, jsonb_array_length(doc -> 'deleted_facts') AS deleted_facts,
       jsonb_array_length(doc -> 'fact_history') AS history, jsonb_array_length(doc -> 'documents') AS documents,
       jsonb_array_length(doc -> 'findings') AS findings, jsonb_array_length(doc -> 'gaps') AS gaps,
       jsonb_array_length(doc -> 'fact_finding_links') AS links, jsonb_array_length(doc -> 'analysis_runs') AS runs
FROM exported;
-- reconciliation: no drift
SELECT * FROM diff_summary('00000000-0000-0000-0004-0000000000d6', (SELECT doc -> 'facts' FROM exported));
-- drift shows up
UPDATE facts SET evidence = 'changed behind the export' WHERE id = '00000000-0000-0000-0004-0000000000f3';
SELECT legacy_id, change, changed_fields FROM diff_facts('00000000-0000-0000-0004-0000000000d6', (SELECT doc -> 'facts' FROM exported))
WHERE change <> 'unchanged';
SELECT regress.expect_error($$SELECT deal_store.import_deal((SELECT doc FROM exported))$$);
SELECT regress.expect_error($$SELECT deal_store.import_deal('{"format": "other"}')$$);
-- the round trip: purge the deal, import the export, export again: identical
SELECT soft_delete('deal_store.deals', '00000000-0000-0000-0004-0000000000d6');
SELECT purge('deal_store.deals', '00000000-0000-0000-0004-0000000000d6');
SELECT count(*) AS facts_left FROM facts WHERE deal_id = '00000000-0000-0000-0004-0000000000d6';
SELECT regress.expect_error($$SELECT deal_store.import_deal(jsonb_set((SELECT doc FROM exported), '{gaps,0,deal_id}', '"00000000-0000-0000-0004-0000000000d1"'))$$);
SELECT import_deal((SELECT doc FROM exported));
SELECT export_deal('00000000-0000-0000-0004-0000000000d6') = (SELECT doc FROM exported) AS identical;
SELECT count(*) AS versions FROM fact_history('00000000-0000-0000-0004-0000000000f1');
RESET deal_store.actor;
