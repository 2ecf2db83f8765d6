-- The audit trigger: each action, the no-op rule, actor / reason / run GUCs,
-- enable / disable on a user's table, tamper attempts, fact_as_of.
SET search_path = deal_store, public;
SELECT current_actor();
SET deal_store.actor = '00000000-0000-0000-0001-0000000000a7';
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0001-0000000000a7', 'audit@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0001-0000000000d7', '00000000-0000-0000-0001-0000000000a7', 'Project Yew', 'Yew Inc');
SELECT start_run('00000000-0000-0000-0001-0000000000d7') AS run \gset

-- insert, with a reason and a run from the GUCs
BEGIN;
SET LOCAL deal_store.reason = 'initial extraction';
SET LOCAL deal_store.run_id = :'run';
INSERT INTO facts (deal_id, id, legacy_id, domain, item) VALUES
 ('00000000-0000-0000-0001-0000000000d7', '00000000-0000-0000-0001-0000000000f7', 'F-1', 'network', 'MPLS WAN');
COMMIT;
SELECT regress.expect_error($$SET deal_store.run_id = 'run-1'$$);
-- update: only the changed columns; the no-op rule
UPDATE facts SET item = 'MPLS WAN (Orange)' WHERE id = '00000000-0000-0000-0001-0000000000f7';
UPDATE facts SET item = item WHERE id = '00000000-0000-0000-0001-0000000000f7';
UPDATE facts SET updated_at = now(), item_checksum = 'x' WHERE id = '00000000-0000-0000-0001-0000000000f7';
BEGIN;
SET LOCAL deal_store.actor = '';
UPDATE facts SET confidence_score = 0.75 WHERE id = '00000000-0000-0000-0001-0000000000f7';
COMMIT;
-- soft delete, restore, purge
SELECT soft_delete('deal_store.facts', '00000000-0000-0000-0001-0000000000f7', 'duplicate');
SELECT restore('deal_store.facts', '00000000-0000-0000-0001-0000000000f7');
SELECT soft_delete('deal_store.facts', '00000000-0000-0000-0001-0000000000f7', 'really a duplicate');
SELECT purge('deal_store.facts', '00000000-0000-0000-0001-0000000000f7');
SELECT action, user_id IS NOT NULL AS has_actor, reason, analysis_run_id = :'run' AS run_set,
       txid IS NOT NULL AS has_txid,
       CASE WHEN action IN ('insert', 'purge')
            THEN jsonb_build_object('item', details -> 'item', 'columns', (SELECT count(*) FROM jsonb_object_keys(details)))
            ELSE details - 'previous_version_id' - 'deleted_at' - 'delete_batch' END AS details,
       details ? 'previous_version_id' AS versioned
FROM entity_history('fact', '00000000-0000-0000-0001-0000000000f7');
SELECT count(*) FILTER (WHERE a.seq < b.seq) = count(*) AS seq_orders_entries
FROM deal_activity_log a JOIN deal_activity_log b ON b.seq = a.seq + 1;
SELECT action, entity_type FROM deal_activity('00000000-0000-0000-0001-0000000000d7', lim => 3);
SELECT regress.expect_error($$SELECT * FROM deal_store.deal_activity('00000000-0000-0000-0001-0000000000d7', lim => 0)$$);

-- tamper attempts: 42501 for everyone, the owner included
SELECT regress.expect_error(s) FROM (VALUES
  ($$UPDATE deal_store.deal_activity_log SET reason = 'nothing to see'$$),
  ($$DELETE FROM deal_store.deal_activity_log$$),
  ($$TRUNCATE deal_store.deal_activity_log$$)
) AS t(s);
CREATE ROLE audit_intruder;
GRANT USAGE ON SCHEMA deal_store TO audit_intruder;
GRANT SELECT ON deal_store.deal_activity_log TO audit_intruder;
GRANT USAGE ON SCHEMA regress TO audit_intruder;
SET ROLE audit_intruder;
SELECT regress.expect_error($$SELECT deal_store.purge_audit('1 day')$$);
RESET ROLE;
DROP OWNED BY audit_intruder;
DROP ROLE audit_intruder;
SELECT regress.expect_error($$SELECT deal_store.purge_audit('-1 day')$$);
SELECT purge_audit('100 years') AS purged;
SELECT action, details FROM deal_activity_log WHERE action = 'purge_audit';

-- enable_audit on a user's table with a composite key; idempotent; disable
CREATE TABLE public.valuations (deal_code text, year int, ebitda numeric, note text, PRIMARY KEY (deal_code, year));
CREATE TABLE public.no_key (x int);
SELECT enable_audit('public.valuations');
SELECT enable_audit('public.valuations');
SELECT regress.expect_error($$SELECT deal_store.enable_audit('public.no_key')$$);
SELECT regress.expect_error($$SELECT deal_store.enable_audit('deal_store.deal_activity_log')$$);
INSERT INTO public.valuations VALUES ('YEW', 2025, 12.5, 'management case');
UPDATE public.valuations SET ebitda = 11.0;
UPDATE public.valuations SET ebitda = 11.00;
DELETE FROM public.valuations;
SELECT action, entity_type, entity_key, details FROM deal_activity_log WHERE entity_type = 'public.valuations' ORDER BY seq;

-- entries wait for the end of the statement (or a full buffer of 1,000) and
-- are written in the order the rows changed; a rolled-back savepoint drops its own
BEGIN;
INSERT INTO public.valuations SELECT 'B', y, y, NULL FROM generate_series(1, 2500) y;
SAVEPOINT s;
UPDATE public.valuations SET note = 'discarded' WHERE year <= 1500;
ROLLBACK TO SAVEPOINT s;
UPDATE public.valuations SET note = 'kept' WHERE year > 2400;
COMMIT;
SELECT action, count(*) AS entries,
       bool_and(prev IS NULL OR (entity_key ->> 'year')::int = prev + 1) AS in_row_order
FROM (SELECT action, entity_key, lag((entity_key ->> 'year')::int) OVER (PARTITION BY action ORDER BY seq) AS prev
      FROM deal_activity_log WHERE entity_type = 'public.valuations' AND entity_key ->> 'deal_code' = 'B') l
GROUP BY action ORDER BY action;
-- a failure caught by a plpgsql block drops the entries its statement had captured:
-- here a later trigger fails after the audit trigger captured both rows
CREATE FUNCTION public.refuse_lost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.note = 'lost' AND NEW.year = 7 THEN RAISE EXCEPTION 'refused'; END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER zz_refuse AFTER UPDATE ON public.valuations FOR EACH ROW EXECUTE FUNCTION public.refuse_lost();
DO $$
BEGIN
    UPDATE public.valuations SET note = 'before' WHERE year = 1;
    BEGIN
        UPDATE public.valuations SET note = 'lost' WHERE year IN (2, 7);
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    UPDATE public.valuations SET note = 'after' WHERE year = 3;
END $$;
DROP TRIGGER zz_refuse ON public.valuations;
DROP FUNCTION public.refuse_lost();
SELECT entity_key ->> 'year' AS year, details -> 'note' ->> 'new' AS note FROM deal_activity_log
WHERE entity_type = 'public.valuations' AND action = 'update' AND (entity_key ->> 'year')::int < 10 ORDER BY seq;
-- without its statement trigger the table is logged row by row
ALTER TABLE public.valuations DISABLE TRIGGER deal_store_audit_flush;
UPDATE public.valuations SET note = 'row by row' WHERE year BETWEEN 4 AND 6;
ALTER TABLE public.valuations ENABLE TRIGGER deal_store_audit_flush;
SELECT count(*) AS entries FROM deal_activity_log WHERE entity_type = 'public.valuations' AND details -> 'note' ->> 'new' = 'row by row';
-- a changed column type is picked up: cached table layouts are retired on ALTER TABLE
ALTER TABLE public.valuations ALTER COLUMN ebitda TYPE text;
UPDATE public.valuations SET ebitda = 'n/a' WHERE deal_code = 'B' AND year = 8;
SELECT details FROM deal_activity_log WHERE entity_type = 'public.valuations' AND details ? 'ebitda' ORDER BY seq DESC LIMIT 1;
-- audit_row only works as an AFTER ... FOR EACH ROW trigger
CREATE TRIGGER misuse BEFORE INSERT ON public.no_key FOR EACH ROW EXECUTE FUNCTION deal_store_internal.audit_row();
SELECT regress.expect_error($$INSERT INTO public.no_key VALUES (1)$$);
DROP TRIGGER misuse ON public.no_key;
DELETE FROM public.valuations WHERE deal_code = 'B';
SELECT disable_audit('public.valuations');
SELECT disable_audit('public.valuations');
INSERT INTO public.valuations VALUES ('YEW', 2026, 14, NULL);
SELECT count(*) AS entries FROM deal_activity_log WHERE entity_type = 'public.valuations' AND entity_key = '{"deal_code": "YEW", "year": 2026}';
DROP TABLE public.valuations, public.no_key;

-- fact_as_of across three versions; the clock is the server's, so the versions
-- are dated afterwards as a restore would write them (no trigger runs under replica)
INSERT INTO facts (deal_id, id, legacy_id, domain, item, created_at) VALUES
 ('00000000-0000-0000-0001-0000000000d7', '00000000-0000-0000-0001-0000000000f8', 'F-2', 'applications', 'SAP ECC', '2026-01-01');
SELECT created_at > '2026-06-01' AS created_by_the_server_clock FROM facts WHERE id = '00000000-0000-0000-0001-0000000000f8';
UPDATE facts SET item = 'SAP ECC 6.0' WHERE id = '00000000-0000-0000-0001-0000000000f8';
UPDATE facts SET item = 'SAP S/4HANA' WHERE id = '00000000-0000-0000-0001-0000000000f8';
SET session_replication_role = replica;
UPDATE facts SET created_at = '2026-01-01' WHERE deal_id = '00000000-0000-0000-0001-0000000000d7' AND legacy_id = 'F-2';
UPDATE facts SET superseded_at = '2026-02-01' WHERE deal_id = '00000000-0000-0000-0001-0000000000d7' AND item = 'SAP ECC' AND superseded_at IS NOT NULL;
UPDATE facts SET superseded_at = '2026-03-01' WHERE deal_id = '00000000-0000-0000-0001-0000000000d7' AND item = 'SAP ECC 6.0' AND superseded_at IS NOT NULL;
RESET session_replication_role;
SELECT t, fact_as_of('00000000-0000-0000-0001-0000000000f8', t::timestamptz) ->> 'item' AS item
FROM unnest(ARRAY['2025-12-31', '2026-01-15', '2026-02-01', '2026-02-15', '2026-03-15']) t;
SELECT regress.expect_error($$SELECT deal_store.fact_as_of('00000000-0000-0000-0001-000000000999', now())$$);
RESET deal_store.actor;
