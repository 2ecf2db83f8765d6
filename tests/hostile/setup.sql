-- Set-up of the hostile layer, as a superuser: an ordinary login role with the
-- rights of deal_store_admin (every function, every deal), a deal with data and
-- a running run, and a deal whose facts hold a vocabulary of 30,000 lexemes (for the cancel of typo_tsquery).
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS deal_store CASCADE;
DROP ROLE IF EXISTS deal_store_hostile;
CREATE ROLE deal_store_hostile LOGIN NOSUPERUSER;
-- an admin of deal_store: the role that may call every function, so every one meets the input
GRANT deal_store_admin TO deal_store_hostile;
-- and, for this test only, the internal functions too: they meet hostile input
-- through the API, and are called here directly with it
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA deal_store, deal_store_internal TO deal_store_hostile;
INSERT INTO deal_store.users (id, email) VALUES ('00000000-0000-0000-00ff-0000000000a1', 'hostile@example.com');
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-00ff-0000000000d1', '00000000-0000-0000-00ff-0000000000a1', 'Project Hostile', 'H'),
  ('00000000-0000-0000-00ff-0000000000d2', '00000000-0000-0000-00ff-0000000000a1', 'Project Vocabulary', 'V');
SELECT deal_store.start_run('00000000-0000-0000-00ff-0000000000d1') AS run \gset
SELECT count(*) FROM deal_store.propose_facts(:'run', '[{"legacy_id": "H-1", "domain": "network", "item": "fibre licence", "confidence_score": 0.95},
  {"legacy_id": "H-9", "domain": "network", "item": "copper", "confidence_score": 0.5}]');
INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item)
SELECT '00000000-0000-0000-00ff-0000000000d2', 'V-' || g, 'network',
       (SELECT string_agg(substr(md5(g || ':' || w), 1, 10), ' ') FROM generate_series(1, 10) w)
FROM generate_series(1, 3000) g;
