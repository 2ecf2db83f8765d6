-- A proposal left for the scheduled worker: a tier-1 change proposed with
-- auto_apply off, so only process_queue can apply it.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION deal_store CASCADE;
INSERT INTO deal_store.users (id, email) VALUES ('00000000-0000-0000-0014-0000000000a1', 'cron@example.com');
INSERT INTO deal_store.deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0014-0000000000d1', '00000000-0000-0000-0014-0000000000a1', 'Project Clock', 'Clock AG');
SET deal_store.actor = '00000000-0000-0000-0014-0000000000a1';
SET deal_store.auto_apply = off;
SELECT status FROM deal_store.propose_facts(deal_store.start_run('00000000-0000-0000-0014-0000000000d1'),
    '[{"legacy_id": "F-CRON", "domain": "network", "item": "applied by the scheduled worker", "confidence_score": 0.9}]');
