-- A restored database works on (run as a superuser after pg_restore): the feed
-- consumer reads on from where it stood, a new change is logged and read once,
-- and DROP EXTENSION is refused while the deals exist.
\set ON_ERROR_STOP on
SELECT count(*) AS pending FROM deal_store.read_changes('restore.mailer', 100000) \gset
SELECT deal_store.ack_changes('restore.mailer', (SELECT max(seq) FROM deal_store.deal_activity_log)) = :pending AS acked_all \gset
SET deal_store.actor = '00000000-0000-0000-0030-0000000000a1';
UPDATE deal_store.facts SET item = 'three MPLS sites over fibre'
WHERE deal_id = '00000000-0000-0000-0030-0000000000d1' AND legacy_id = 'R-1' AND superseded_at IS NULL;
RESET deal_store.actor;
SELECT count(*) = 1 AS reads_on FROM deal_store.read_changes('restore.mailer', 100000) \gset
SELECT count(*) = 1 AS one_log_entry FROM deal_store.deal_activity_log
WHERE deal_id = '00000000-0000-0000-0030-0000000000d1' AND details -> 'item' ->> 'new' = 'three MPLS sites over fibre' \gset
DO $$
BEGIN
    DROP EXTENSION deal_store;
    RAISE EXCEPTION 'DROP EXTENSION dropped a database holding deals';
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;
END $$;
\if :acked_all
\if :reads_on
\if :one_log_entry
\echo restored database works on
\else
\echo the restored database logged the new change other than once
\endif
\else
\echo the feed consumer does not read on after the restore
\endif
\else
\echo the feed consumer could not acknowledge what it read after the restore
\endif
