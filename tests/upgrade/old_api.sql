-- Between the library swap and ALTER EXTENSION: the release's SQL, still in the
-- database, calls into the new library: each C function kind, read-only or rolled back.
\set ON_ERROR_STOP on
SELECT deal_store.fact_checksum('{"item": "x"}') = pg_catalog.md5(deal_store.fact_canonical('{"item": "x"}'));
SELECT pg_catalog.count(*) >= 0 FROM deal_store.diff_facts((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), '[{"legacy_id": "U-1", "item": "x"}]');
SELECT pg_catalog.count(*) > 0 FROM deal_store.search_facts((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), 'orange');
SELECT deal_store.confidence_tier((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), 'fact', 'new', 0.9);
SELECT deal_store.content_fields('gap');
-- writes through the Rust entry points, rolled back (the rows are compared after the upgrade)
BEGIN;
SELECT pg_catalog.count(*) >= 0 FROM deal_store.propose_facts(
    deal_store.start_run((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), ARRAY['network']),
    '[{"legacy_id": "U-1", "domain": "network", "item": "changed on the new library"}]', ARRAY['network']);
UPDATE deal_store.facts SET item = item || ' (edited)' WHERE legacy_id = 'U-3' AND superseded_at IS NULL;
ROLLBACK;
