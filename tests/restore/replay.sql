-- A non-superuser replaying a dump's rows is an ordinary writer: a fact's
-- history row and log entries are refused, and nothing changes. Run as a
-- superuser in the source database of the restore layer.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP ROLE IF EXISTS deal_store_replayer;
CREATE ROLE deal_store_replayer NOLOGIN;
GRANT deal_store_analyst TO deal_store_replayer;
UPDATE deal_store.users SET db_role = 'deal_store_replayer' WHERE id = '00000000-0000-0000-0030-0000000000a2';
RESET client_min_messages;
SELECT count(*) AS facts_before FROM deal_store.facts \gset
SELECT count(*) AS log_before FROM deal_store.deal_activity_log \gset
\copy (SELECT deal_id, legacy_id, domain, item, superseded_at, previous_version_id FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0030-0000000000d1' AND superseded_at IS NOT NULL) TO '/tmp/deal_store_restore/history.copy'
\copy (SELECT deal_id, action, entity_type FROM deal_store.deal_activity_log WHERE deal_id = '00000000-0000-0000-0030-0000000000d1' LIMIT 3) TO '/tmp/deal_store_restore/log.copy'
SET ROLE deal_store_replayer;
\set ON_ERROR_STOP off
\copy deal_store.facts (deal_id, legacy_id, domain, item, superseded_at, previous_version_id) FROM '/tmp/deal_store_restore/history.copy'
SELECT :ERROR AS history_refused \gset
\copy deal_store.deal_activity_log (deal_id, action, entity_type) FROM '/tmp/deal_store_restore/log.copy'
SELECT :'LAST_ERROR_SQLSTATE' = '42501' AS log_refused \gset
\set ON_ERROR_STOP on
RESET ROLE;
SELECT (SELECT count(*) FROM deal_store.facts) = :facts_before
   AND (SELECT count(*) FROM deal_store.deal_activity_log) = :log_before AS unchanged \gset
UPDATE deal_store.users SET db_role = NULL WHERE id = '00000000-0000-0000-0030-0000000000a2';
DROP ROLE deal_store_replayer;
\if :history_refused
\if :log_refused
\if :unchanged
\echo a non-superuser replay forged nothing: history row and log entries refused (42501)
\else
\echo FAILED: a non-superuser replay changed rows
SELECT 1 / 0;
\endif
\else
\echo FAILED: a non-superuser wrote log entries
SELECT 1 / 0;
\endif
\else
\echo FAILED: a non-superuser replay wrote a fact history row
SELECT 1 / 0;
\endif
