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
-- a schema named like the new release's internals, planted before the update:
-- the library must not call into it (the old catalog's helpers are in deal_store)
CREATE SCHEMA deal_store_internal;
CREATE FUNCTION deal_store_internal._apply_changes(uuid, uuid[]) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'the library called a planted deal_store_internal._apply_changes'; END $$;
CREATE FUNCTION deal_store_internal._signal_review(uuid, uuid) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'the library called a planted deal_store_internal._signal_review'; END $$;
SELECT pg_catalog.count(*) >= 0 FROM deal_store.propose_facts(
    deal_store.start_run((SELECT id FROM deal_store.deals WHERE name = 'Project Upgrade'), ARRAY['network']),
    '[{"legacy_id": "U-1", "domain": "network", "item": "changed on the new library"},
      {"legacy_id": "U-NEW", "domain": "network", "item": "applied at once (tier 1)", "confidence_score": 0.95}]', ARRAY['network']);
UPDATE deal_store.facts SET item = item || ' (edited)' WHERE legacy_id = 'U-3' AND superseded_at IS NULL;
ROLLBACK;
