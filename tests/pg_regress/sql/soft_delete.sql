-- Soft delete, restore, purge, DELETE turned into soft delete, the actor GUC,
-- the active views and updated_at.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0010-0000000000a1', 'sam@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000a1', 'Project Cedar', 'Cedar plc');
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path) VALUES
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000c1', 'apps.pdf', 'ha', '/a'),
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000c2', 'network.pdf', 'hb', '/b');
INSERT INTO facts (deal_id, id, legacy_id, domain, item, source_document_id) VALUES
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f1', 'F-1', 'applications', 'SAP ECC', '00000000-0000-0000-0010-0000000000c1'),
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f2', 'F-2', 'applications', 'Salesforce', '00000000-0000-0000-0010-0000000000c1'),
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f3', 'F-3', 'network', 'MPLS WAN', '00000000-0000-0000-0010-0000000000c2'),
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f4', 'F-4', 'network', 'No NAC', NULL);
INSERT INTO findings (deal_id, id, legacy_id, finding_type, domain, title) VALUES
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000e1', 'R-1', 'risk', 'applications', 'Shared ERP');
INSERT INTO gaps (deal_id, id, legacy_id, domain, description) VALUES
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000b1', 'G-1', 'network', 'WAN contract');
INSERT INTO fact_finding_links (deal_id, fact_id, finding_id) VALUES
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f1', '00000000-0000-0000-0010-0000000000e1'),
 ('00000000-0000-0000-0010-0000000000d2', '00000000-0000-0000-0010-0000000000f3', '00000000-0000-0000-0010-0000000000e1');

-- the actor is a real GUC that only takes a uuid (checked once the library is loaded)
SELECT current_actor() AS no_actor_yet;
SELECT regress.expect_error($$SET deal_store.actor = 'sam'$$);
SELECT regress.expect_error($$SET deal_store.actr = '00000000-0000-0000-0010-0000000000a1'$$);
SET deal_store.actor = '00000000-0000-0000-0010-0000000000a1';
SELECT current_actor();

-- soft-delete one fact: one row, the link stays but the view hides it
SELECT soft_delete('deal_store.facts', '00000000-0000-0000-0010-0000000000f4', 'duplicate of F-3');
-- a document takes the facts sourced from it along, in one batch
SELECT soft_delete('deal_store.documents', '00000000-0000-0000-0010-0000000000c1', 'wrong data room');
SELECT legacy_id, deleted_by, delete_reason, delete_batch IS NOT NULL AS batched FROM facts WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' ORDER BY legacy_id;
SELECT count(DISTINCT delete_batch) AS batches FROM facts WHERE deleted_at IS NOT NULL AND deal_id = '00000000-0000-0000-0010-0000000000d2';
SELECT legacy_id FROM active_facts WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' ORDER BY 1;
SELECT filename FROM active_documents WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' ORDER BY 1;
SELECT count(*) AS links, (SELECT count(*) FROM active_fact_finding_links WHERE deal_id = '00000000-0000-0000-0010-0000000000d2') AS active_links FROM fact_finding_links WHERE deal_id = '00000000-0000-0000-0010-0000000000d2';

-- errors: unknown entity, wrong id, already deleted, not deleted, NULL id
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT deal_store.soft_delete('deal_store.users', '00000000-0000-0000-0010-0000000000a1')$$),
  ($$SELECT deal_store.soft_delete('pg_class', '00000000-0000-0000-0010-0000000000a1')$$),
  ($$SELECT deal_store.soft_delete('deal_store.facts', '00000000-0000-0000-0010-000000000999')$$),
  ($$SELECT deal_store.soft_delete('deal_store.facts', '00000000-0000-0000-0010-0000000000f4')$$),
  ($$SELECT deal_store.soft_delete('deal_store.facts', NULL)$$),
  ($$SELECT deal_store.restore('deal_store.facts', '00000000-0000-0000-0010-0000000000f3')$$),
  ($$SELECT deal_store.restore('deal_store.nope', '00000000-0000-0000-0010-0000000000f3')$$),
  ($$SELECT deal_store.purge('deal_store.facts', '00000000-0000-0000-0010-0000000000f3')$$)
) AS t(s);

-- restoring the document brings back exactly its batch: F-1 and F-2, not F-4
SELECT restore('deal_store.documents', '00000000-0000-0000-0010-0000000000c1');
SELECT legacy_id, deleted_at IS NOT NULL AS deleted FROM facts WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' ORDER BY legacy_id;

-- restoring into a name a live row has taken since: 23505 and nothing changes
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0010-0000000000d2', 'F-4', 'network', 'NAC missing');
SELECT regress.expect_error($$SELECT deal_store.restore('deal_store.facts', '00000000-0000-0000-0010-0000000000f4')$$);
SELECT count(*) AS live_f4 FROM active_facts WHERE legacy_id = 'F-4' AND deal_id = '00000000-0000-0000-0010-0000000000d2';

-- a plain DELETE soft-deletes (and cascades), on the table or on its view
DELETE FROM findings WHERE legacy_id = 'R-1' AND deal_id = '00000000-0000-0000-0010-0000000000d2';
DELETE FROM active_gaps WHERE legacy_id = 'G-1' AND deal_id = '00000000-0000-0000-0010-0000000000d2';
SELECT legacy_id, deleted_at IS NOT NULL AS deleted, delete_reason FROM findings WHERE deal_id = '00000000-0000-0000-0010-0000000000d2'
UNION ALL SELECT legacy_id, deleted_at IS NOT NULL, delete_reason FROM gaps WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' ORDER BY 1;
SELECT count(*) AS active_links FROM active_fact_finding_links WHERE deal_id = '00000000-0000-0000-0010-0000000000d2';

-- the deal: cascades to everything live, one batch; earlier batches untouched
SELECT soft_delete('deal_store.deals', '00000000-0000-0000-0010-0000000000d2', 'deal abandoned');
SELECT count(*) AS active_deals FROM active_deals WHERE id = '00000000-0000-0000-0010-0000000000d2';
SELECT delete_reason, count(*) FROM (
  SELECT delete_reason FROM documents WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' UNION ALL SELECT delete_reason FROM facts WHERE deal_id = '00000000-0000-0000-0010-0000000000d2'
  UNION ALL SELECT delete_reason FROM findings WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' UNION ALL SELECT delete_reason FROM gaps WHERE deal_id = '00000000-0000-0000-0010-0000000000d2') s
GROUP BY 1 ORDER BY 1;
-- a row of an older batch cannot come back while its deal is deleted
SELECT regress.expect_error($$SELECT deal_store.restore('deal_store.findings', '00000000-0000-0000-0010-0000000000e1')$$);
SELECT restore('deal_store.deals', '00000000-0000-0000-0010-0000000000d2');
SELECT delete_reason, count(*) FROM (
  SELECT delete_reason FROM documents WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' UNION ALL SELECT delete_reason FROM facts WHERE deal_id = '00000000-0000-0000-0010-0000000000d2'
  UNION ALL SELECT delete_reason FROM findings WHERE deal_id = '00000000-0000-0000-0010-0000000000d2' UNION ALL SELECT delete_reason FROM gaps WHERE deal_id = '00000000-0000-0000-0010-0000000000d2') s
GROUP BY 1 ORDER BY 1;

-- purge: the only real delete, and only of a soft-deleted row
SELECT purge('deal_store.gaps', '00000000-0000-0000-0010-0000000000b1');
SELECT count(*) AS gaps_left FROM gaps WHERE deal_id = '00000000-0000-0000-0010-0000000000d2';
SELECT purge('deal_store.findings', '00000000-0000-0000-0010-0000000000e1');
SELECT count(*) AS links_left FROM fact_finding_links WHERE deal_id = '00000000-0000-0000-0010-0000000000d2';
SHOW deal_store.hard_delete;

-- updated_at moves on a real change only
ALTER TABLE deals DISABLE TRIGGER server_columns;
UPDATE deals SET updated_at = '2020-01-01' WHERE name = 'Project Cedar';
ALTER TABLE deals ENABLE TRIGGER server_columns;
UPDATE deals SET name = name WHERE name = 'Project Cedar';
UPDATE deals SET updated_at = '2030-01-01' WHERE name = 'Project Cedar';
SELECT updated_at = '2020-01-01' AS unchanged FROM deals WHERE name = 'Project Cedar';
UPDATE deals SET industry = 'Retail' WHERE name = 'Project Cedar';
SELECT updated_at > '2020-01-01' AND updated_at < '2030-01-01' AS touched FROM deals WHERE name = 'Project Cedar';
SELECT tgrelid::regclass AS tbl FROM pg_trigger WHERE tgname = 'server_columns' ORDER BY tbl::text;
RESET deal_store.actor;
