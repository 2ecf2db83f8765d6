-- Set-up of the trap layer (tests/hostile/traps.sql), as a superuser: two
-- ordinary login roles, each linked to a user of deal_store (users.db_role)
-- and on the team of one deal with data:
--   deal_store_trap_reader   member of deal_store_reader,  viewer  on the deal
--   deal_store_trap_analyst  member of deal_store_analyst, analyst on the deal
-- and, for each, a schema of its own named after it (so "$user" on a
-- search_path names it), where traps.sql plants the trap operators and
-- functions. Neither role is a superuser: traps.sql fails if one becomes one.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS deal_store CASCADE;

-- a re-run in the same database: the roles' schemas (and all in them) go first
DROP SCHEMA IF EXISTS deal_store_trap_reader CASCADE;
DROP SCHEMA IF EXISTS deal_store_trap_analyst CASCADE;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['deal_store_trap_reader', 'deal_store_trap_analyst'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = r) THEN
            EXECUTE pg_catalog.format('DROP OWNED BY %I', r);
            EXECUTE pg_catalog.format('DROP ROLE %I', r);
        END IF;
    END LOOP;
END $$;
CREATE ROLE deal_store_trap_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE deal_store_trap_analyst LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
GRANT deal_store_reader TO deal_store_trap_reader;
GRANT deal_store_analyst TO deal_store_trap_analyst;
-- the schema an attacker controls: owned by the role, so it may create operators,
-- functions and types there (and nothing anywhere else but pg_temp)
CREATE SCHEMA deal_store_trap_reader AUTHORIZATION deal_store_trap_reader;
CREATE SCHEMA deal_store_trap_analyst AUTHORIZATION deal_store_trap_analyst;

-- the users: the deal's lead (its owner) and one user per login role
INSERT INTO deal_store.users (id, email, display_name, db_role) VALUES
  ('00000000-0000-0000-0074-0000000000a0', 'trap-lead@example.com', 'Trap lead', NULL),
  ('00000000-0000-0000-0074-0000000000a1', 'trap-reader@example.com', 'Trap reader', 'deal_store_trap_reader'),
  ('00000000-0000-0000-0074-0000000000a2', 'trap-analyst@example.com', 'Trap analyst', 'deal_store_trap_analyst')
ON CONFLICT (id) DO UPDATE SET db_role = EXCLUDED.db_role;
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000a0', 'Project Trap', 'Trap plc')
ON CONFLICT (id) DO NOTHING;
SELECT deal_store.add_member('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000a1', 'viewer');
SELECT deal_store.add_member('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000a2', 'analyst');

-- content: a document, facts, a finding linked to a fact, a gap
INSERT INTO deal_store.documents (deal_id, id, filename, file_hash, storage_path) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000c1', 'network.pdf', 'hash-trap-1', 's3://trap/network.pdf')
ON CONFLICT DO NOTHING;
INSERT INTO deal_store.facts (deal_id, id, legacy_id, domain, item, source_document_id) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000f1', 'T-1', 'network', 'Fibre ring', '00000000-0000-0000-0074-0000000000c1'),
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000f2', 'T-2', 'network', 'Copper access', NULL)
ON CONFLICT DO NOTHING;
INSERT INTO deal_store.findings (deal_id, id, legacy_id, finding_type, domain, title) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000e1', 'TF-1', 'risk', 'network', 'Single fibre path')
ON CONFLICT DO NOTHING;
INSERT INTO deal_store.fact_finding_links (deal_id, id, fact_id, finding_id) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000b1', '00000000-0000-0000-0074-0000000000f1', '00000000-0000-0000-0074-0000000000e1')
ON CONFLICT DO NOTHING;
INSERT INTO deal_store.gaps (deal_id, id, legacy_id, domain, description) VALUES
  ('00000000-0000-0000-0074-0000000000d1', '00000000-0000-0000-0074-0000000000a9', 'TG-1', 'network', 'No duct survey')
ON CONFLICT DO NOTHING;

-- runs: one completed, one running with a pending change (confidence 0.5: tier 2, waits for review)
SELECT deal_store.start_run('00000000-0000-0000-0074-0000000000d1') AS run \gset
SELECT count(*) FROM deal_store.propose_facts(:'run', '[{"legacy_id": "T-1", "domain": "network", "item": "Fibre ring", "confidence_score": 0.9}]');
SELECT deal_store.complete_run(:'run');
SELECT deal_store.start_run('00000000-0000-0000-0074-0000000000d1') AS run \gset
SELECT count(*) FROM deal_store.propose_facts(:'run', '[{"legacy_id": "T-3", "domain": "network", "item": "Microwave link", "confidence_score": 0.5}]');

-- a notification for each of the two users (a reader may mark its own read)
INSERT INTO deal_store.notifications (user_id, deal_id, type, title) VALUES
  ('00000000-0000-0000-0074-0000000000a1', '00000000-0000-0000-0074-0000000000d1', 'review_needed', 'For the reader'),
  ('00000000-0000-0000-0074-0000000000a2', '00000000-0000-0000-0074-0000000000d1', 'review_needed', 'For the analyst');
