-- The foundation: every table, constraint and index exists, each constraint
-- rejects a bad row with the right SQLSTATE, uniqueness holds among live rows
-- only, and the extension drops and re-creates cleanly.
SET search_path = deal_store, public;

-- the tables, all owned by the extension
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented
FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'deal_store'
WHERE c.relkind = 'r' ORDER BY 1;

-- primary keys lead with deal_id on every deal-owned table
SELECT conrelid::regclass AS tbl, pg_get_constraintdef(oid) AS pk
FROM pg_constraint WHERE contype = 'p' AND connamespace = 'deal_store'::regnamespace
ORDER BY tbl::text;

-- every unique index of a deal-owned table includes deal_id (users, deals and
-- tier_policies are reference tables; the log and notifications may have no deal;
-- a feed consumer reads many deals; an idempotency key is a call's)
SELECT i.indexrelid::regclass AS unique_index
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
WHERE t.relnamespace = 'deal_store'::regnamespace AND i.indisunique
  AND t.relname NOT IN ('users', 'deals', 'deal_activity_log', 'notifications', 'tier_policies', 'feed_consumers', 'idempotency_keys')
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attname = 'deal_id'
                  AND a.attnum = ANY (i.indkey))
ORDER BY 1;

-- every foreign key has an index whose leading columns are the key's columns
SELECT c.conname AS unindexed_fk FROM pg_constraint c
WHERE c.contype = 'f' AND c.connamespace = 'deal_store'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid
                  AND (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] @> c.conkey
                  AND (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] <@ c.conkey)
ORDER BY 1;

-- every column of every table is timestamptz where it is a timestamp
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = 'deal_store' AND data_type = 'timestamp without time zone';

-- the reference indexes
SELECT indexrelid::regclass AS idx, pg_get_expr(indpred, indrelid) AS predicate
FROM pg_index WHERE indrelid = 'deal_store.facts'::regclass ORDER BY indexrelid::regclass::text;

-- some data to break constraints against
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0008-00000000000a', 'ana@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0008-0000000000d1', '00000000-0000-0000-0008-00000000000a', 'Project Birch', 'Birch Ltd');
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path)
VALUES ('00000000-0000-0000-0008-0000000000d1', '00000000-0000-0000-0008-0000000000c1', 'it.pdf', 'h1', '/vdr/it.pdf');
INSERT INTO facts (deal_id, id, legacy_id, domain, item, source_document_id, item_checksum)
VALUES ('00000000-0000-0000-0008-0000000000d1', '00000000-0000-0000-0008-0000000000f1', 'F-1', 'applications', 'SAP ECC 6.0',
        '00000000-0000-0000-0008-0000000000c1', md5('x'));
INSERT INTO findings (deal_id, id, legacy_id, finding_type, domain, title)
VALUES ('00000000-0000-0000-0008-0000000000d1', '00000000-0000-0000-0008-0000000000e1', 'R-1', 'risk', 'applications', 'ERP end of support');

-- each constraint rejects a bad row and names itself
SELECT regress.expect_error(s) FROM (VALUES
  ($$INSERT INTO deal_store.users (email) VALUES ('ANA@example.com')$$),
  ($$INSERT INTO deal_store.users (email) VALUES ('not-an-email')$$),
  ($$INSERT INTO deal_store.deals (user_id, name, target_name) VALUES (gen_random_uuid(), 'x', 'y')$$),
  ($$INSERT INTO deal_store.deals (user_id, name, target_name) VALUES ('00000000-0000-0000-0008-00000000000a', 'Project Birch', 'y')$$),
  ($$INSERT INTO deal_store.deals (user_id, name, target_name, status) VALUES ('00000000-0000-0000-0008-00000000000a', 'P2', 'y', 'open')$$),
  ($$INSERT INTO deal_store.deals (user_id, name, target_name, deal_type) VALUES ('00000000-0000-0000-0008-00000000000a', 'P2', 'y', 'lbo')$$),
  ($$INSERT INTO deal_store.documents (deal_id, filename, file_hash, storage_path) VALUES ('00000000-0000-0000-0008-0000000000d1', 'b.pdf', 'h1', '/b')$$),
  ($$INSERT INTO deal_store.documents (deal_id, filename, file_hash, storage_path, entity) VALUES ('00000000-0000-0000-0008-0000000000d1', 'b.pdf', 'h2', '/b', 'seller')$$),
  ($$INSERT INTO deal_store.documents (deal_id, filename, file_hash, storage_path, supersedes_id) VALUES ('00000000-0000-0000-0008-0000000000d1', 'b.pdf', 'h2', '/b', gen_random_uuid())$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-1', 'applications', 'dup')$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, confidence_score) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-2', 'applications', 'x', 1.5)$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, entity) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-2', 'applications', 'x', 'seller')$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0008-0000000000d1', '  ', 'applications', 'x')$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES (gen_random_uuid(), 'F-2', 'applications', 'x')$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, source_document_id) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-2', 'applications', 'x', gen_random_uuid())$$),
  ($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, details) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-2', 'applications', 'x', '[1]')$$),
  ($$INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title) VALUES ('00000000-0000-0000-0008-0000000000d1', 'R-2', 'issue', 'applications', 't')$$),
  ($$INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title, severity) VALUES ('00000000-0000-0000-0008-0000000000d1', 'R-2', 'risk', 'applications', 't', 'severe')$$),
  ($$INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title, cost_estimate_low, cost_estimate_high) VALUES ('00000000-0000-0000-0008-0000000000d1', 'R-2', 'risk', 'applications', 't', 10, 5)$$),
  ($$INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title) VALUES ('00000000-0000-0000-0008-0000000000d1', 'R-1', 'risk', 'applications', 'dup')$$),
  ($$INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id, link_type) VALUES ('00000000-0000-0000-0008-0000000000d1', '00000000-0000-0000-0008-0000000000f1', '00000000-0000-0000-0008-0000000000e1', 'refutes')$$),
  ($$INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id) VALUES ('00000000-0000-0000-0008-0000000000d1', gen_random_uuid(), '00000000-0000-0000-0008-0000000000e1')$$),
  ($$INSERT INTO deal_store.gaps (deal_id, legacy_id, domain, description, importance) VALUES ('00000000-0000-0000-0008-0000000000d1', 'G-1', 'network', 'd', 'urgent')$$),
  ($$INSERT INTO deal_store.analysis_runs (deal_id, run_number) VALUES ('00000000-0000-0000-0008-0000000000d1', 0)$$),
  ($$INSERT INTO deal_store.analysis_runs (deal_id, run_number, status) VALUES ('00000000-0000-0000-0008-0000000000d1', 1, 'done')$$),
  ($$INSERT INTO deal_store.pending_changes (deal_id, change_type, entity_type) VALUES ('00000000-0000-0000-0008-0000000000d1', 'conflict', 'fact')$$),
  ($$INSERT INTO deal_store.pending_changes (deal_id, change_type, entity_type, confidence_tier) VALUES ('00000000-0000-0000-0008-0000000000d1', 'new', 'fact', 4)$$),
  ($$INSERT INTO deal_store.pending_changes (deal_id, change_type, entity_type, status) VALUES ('00000000-0000-0000-0008-0000000000d1', 'new', 'fact', 'done')$$),
  ($$INSERT INTO deal_store.pending_changes (deal_id, change_type, entity_type) VALUES ('00000000-0000-0000-0008-0000000000d1', 'update', 'fact')$$),
  ($$INSERT INTO deal_store.notifications (user_id, type, title, read) VALUES ('00000000-0000-0000-0008-00000000000a', 'x', 't', true)$$)
) AS t(s);

-- the same run number twice in one deal
INSERT INTO analysis_runs (deal_id, run_number) VALUES ('00000000-0000-0000-0008-0000000000d1', 1);
SELECT regress.expect_error($$INSERT INTO deal_store.analysis_runs (deal_id, run_number) VALUES ('00000000-0000-0000-0008-0000000000d1', 1)$$);

-- live-only uniqueness: a soft-deleted row never blocks re-creating its name
UPDATE deals SET deleted_at = now(), delete_batch = gen_random_uuid() WHERE name = 'Project Birch';
INSERT INTO deals (user_id, name, target_name) VALUES ('00000000-0000-0000-0008-00000000000a', 'Project Birch', 'Birch Ltd');
UPDATE documents SET deleted_at = now(), delete_batch = gen_random_uuid() WHERE file_hash = 'h1';
INSERT INTO documents (deal_id, filename, file_hash, storage_path) VALUES ('00000000-0000-0000-0008-0000000000d1', 'it-v2.pdf', 'h1', '/vdr/it2.pdf');
-- a history row (superseded) does not block either; only the versioning makes one
SELECT regress.expect_error($$UPDATE deal_store.facts SET superseded_at = now() WHERE legacy_id = 'F-1'$$);
SET session_replication_role = replica;
UPDATE facts SET superseded_at = now() WHERE legacy_id = 'F-1';
RESET session_replication_role;
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0008-0000000000d1', 'F-1', 'applications', 'SAP S/4HANA');
UPDATE findings SET deleted_at = now(), delete_batch = gen_random_uuid() WHERE legacy_id = 'R-1';
INSERT INTO findings (deal_id, legacy_id, finding_type, domain, title) VALUES ('00000000-0000-0000-0008-0000000000d1', 'R-1', 'risk', 'applications', 'again');
SELECT count(*) AS deals_named_birch FROM deals WHERE user_id = '00000000-0000-0000-0008-00000000000a' AND name = 'Project Birch';
SELECT count(*) AS f1_rows FROM facts WHERE deal_id = '00000000-0000-0000-0008-0000000000d1' AND legacy_id = 'F-1';
