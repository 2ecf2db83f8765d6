-- Between the library swap and ALTER EXTENSION: the release's SQL, still in the
-- database, calls into the new library. Read-only calls of each C function kind.
\set ON_ERROR_STOP on
SELECT deal_store.fact_checksum('{"item": "x"}') = pg_catalog.md5(deal_store.fact_canonical('{"item": "x"}'));
SELECT pg_catalog.count(*) >= 0 FROM deal_store.diff_facts((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), '[{"legacy_id": "U-1", "item": "x"}]');
SELECT pg_catalog.count(*) > 0 FROM deal_store.search_facts((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), 'orange');
SELECT deal_store.confidence_tier((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), 'fact', 'new', 0.9);
SELECT deal_store.content_fields('gap');
