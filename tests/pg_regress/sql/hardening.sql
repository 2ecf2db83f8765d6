-- Issue 14: each defect reproduced and shown fixed. Runs in a fresh session
-- (the plans and table layouts the extension caches per session are built under
-- the trap search_path below).
SET search_path = deal_store, public;

-- 1. SPI from Rust resolves only the functions it means: trap functions of the
-- names the extension calls, in a schema first on the path, never fire.
CREATE SCHEMA trap;
CREATE TABLE trap.fired (name text);
CREATE FUNCTION trap.quote_ident(name) RETURNS text LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('quote_ident') RETURNING 'x' $$;
CREATE FUNCTION trap.quote_ident(text) RETURNS text LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('quote_ident') RETURNING 'x' $$;
CREATE FUNCTION trap.now() RETURNS timestamptz LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('now') RETURNING pg_catalog.now() $$;
CREATE FUNCTION trap.array_position(smallint[], smallint) RETURNS integer LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('array_position') RETURNING 1 $$;
CREATE FUNCTION trap.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('to_jsonb') RETURNING '{}'::jsonb $$;
CREATE FUNCTION trap.jsonb_each(jsonb, OUT key text, OUT value jsonb) RETURNS SETOF record LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('jsonb_each') RETURNING 'k', 'null'::jsonb $$;
CREATE FUNCTION trap.jsonb_to_recordset(jsonb) RETURNS SETOF record LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('jsonb_to_recordset') RETURNING NULL::record $$;
CREATE FUNCTION trap.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('unnest') RETURNING NULL $$;
CREATE FUNCTION trap.jsonb_populate_record(anyelement, jsonb) RETURNS anyelement LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('jsonb_populate_record') RETURNING $1 $$;
CREATE FUNCTION trap.ts_stat(text, OUT word text, OUT ndoc integer, OUT nentry integer) RETURNS SETOF record LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('ts_stat') RETURNING 'w', 1, 1 $$;
CREATE FUNCTION trap.to_tsvector(regconfig, text) RETURNS tsvector LANGUAGE sql AS $$ INSERT INTO trap.fired VALUES ('to_tsvector') RETURNING ''::tsvector $$;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0005-0000000000ae', 'hard@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0005-0000000000de', '00000000-0000-0000-0005-0000000000ae', 'Project Yew', 'Yew plc');
CREATE TABLE public.hard_audited (k int PRIMARY KEY, v text);
SELECT enable_audit('public.hard_audited');
SET search_path = trap, pg_catalog, deal_store, public;
INSERT INTO public.hard_audited VALUES (1, 'a');
SELECT deal_store.start_run('00000000-0000-0000-0005-0000000000de') AS run \gset
SELECT change_type, confidence_tier, proposed FROM deal_store.propose_facts(:'run', '[{"legacy_id": "H-1", "domain": "network", "item": "Fibre ring", "confidence_score": 0.9},
  {"legacy_id": "H-2", "domain": "network", "item": "Copper", "confidence_score": 0.5}]');
UPDATE deal_store.facts SET item = 'Fibre ring (dual)' WHERE legacy_id = 'H-1' AND deal_id = '00000000-0000-0000-0005-0000000000de';
SELECT change, legacy_id FROM deal_store.diff_facts('00000000-0000-0000-0005-0000000000de', '[{"legacy_id": "H-1", "domain": "network", "item": "Fibre"}]');
SELECT deal_store.typo_tsquery('00000000-0000-0000-0005-0000000000de', 'fibbre');
SET search_path = deal_store, public;
SELECT count(*) AS traps_fired FROM trap.fired;

-- 2. Deep nesting: with max_stack_depth raised, the canonical writer checks the
-- stack like PostgreSQL's own recursion (54001) instead of crashing the server
-- (a release build may have room for it: then it simply succeeds).
SET max_stack_depth = '7600kB';
SELECT left(regress.expect_error($$SELECT deal_store.fact_checksum(('{"details":' || repeat('[', 100000) || repeat(']', 100000) || '}')::jsonb)$$), 5)
       IN ('no er', '54001') AS no_crash;
RESET max_stack_depth;
SELECT pg_catalog.pg_backend_pid() = pg_catalog.pg_backend_pid() AS session_alive;

-- 3. A number whose plain decimal would be huge is refused (54000), not written out
SELECT regress.expect_error($$SELECT deal_store.fact_checksum('{"details": 1e131071}')$$);
SELECT length(deal_store.fact_canonical('{"details": 1e900}')) > 900 AS within_the_bound;

-- 4. application_name no longer switches the audit off
SET application_name = 'pg_restore';
COPY public.hard_audited FROM stdin;
2	copied
\.
RESET application_name;
SELECT entity_key, action FROM deal_activity_log WHERE entity_type = 'public.hard_audited' ORDER BY seq;

-- 5. A flush inside a subtransaction that rolls back loses none of the parent's
-- entries: the outer UPDATE's entry is captured first, then a trigger with an
-- exception block writes (and flushes) in a subtransaction that fails.
CREATE TABLE public.hard_side (k int PRIMARY KEY);
SELECT enable_audit('public.hard_side');
CREATE FUNCTION public.hard_try() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO public.hard_side VALUES (NEW.k);
        RAISE EXCEPTION 'undo the side row';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER zz_hard_try AFTER UPDATE ON public.hard_audited FOR EACH ROW EXECUTE FUNCTION public.hard_try();
UPDATE public.hard_audited SET v = 'changed' WHERE k IN (1, 2);
SELECT entity_type, entity_key, action FROM deal_activity_log WHERE entity_type LIKE 'public.hard_%' AND action = 'update' ORDER BY seq;
SELECT count(*) AS side_entries FROM deal_activity_log WHERE entity_type = 'public.hard_side';
-- nested savepoints: the inner one rolls back after a 1,000-row flush, the outer commits
BEGIN;
INSERT INTO public.hard_side VALUES (100);
SAVEPOINT a;
INSERT INTO public.hard_side VALUES (101);
SAVEPOINT b;
INSERT INTO public.hard_side SELECT generate_series(1000, 2500);
ROLLBACK TO SAVEPOINT b;
RELEASE SAVEPOINT a;
COMMIT;
SELECT string_agg(entity_key ->> 'k', ',' ORDER BY seq) AS side_logged FROM deal_activity_log WHERE entity_type = 'public.hard_side';
SELECT string_agg(k::text, ',' ORDER BY k) AS side_rows FROM public.hard_side;

-- 6. TRUNCATE of a deal table is refused: it would bypass soft delete and audit
SET client_min_messages = warning;
SELECT regress.expect_error('TRUNCATE deal_store.notifications');
SELECT regress.expect_error('TRUNCATE deal_store.deals CASCADE');
RESET client_min_messages;

-- 7. Secrets stay secret: the log masks password_hash, export_deal leaves it out
UPDATE users SET password_hash = 'bcrypt$secret' WHERE id = '00000000-0000-0000-0005-0000000000ae';
SELECT details - 'created_at' - 'updated_at' AS details FROM deal_activity_log WHERE entity_type = 'user' AND entity_id = '00000000-0000-0000-0005-0000000000ae' ORDER BY seq;
SELECT export_deal('00000000-0000-0000-0005-0000000000de') -> 'owner' ? 'password_hash' AS exported_hash;

-- 8. import_deal refuses ids already used here, and takes no credentials from the document
SELECT regress.expect_error(format('SELECT deal_store.import_deal(%L)',
  replace(export_deal('00000000-0000-0000-0005-0000000000de')::text, '00000000-0000-0000-0005-0000000000de', '00000000-0000-0000-0005-0000000000df')));
SELECT regress.expect_error(format('SELECT deal_store.import_deal(%L)', jsonb_build_object('format', 'deal_store.export', 'format_version', 1,
  'owner', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000af', 'email', 'mallory@example.com', 'active', true,
                              'created_at', now(), 'updated_at', now(), 'password_hash', 'planted', 'roles', jsonb_build_array('admin')),
  'deal', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000df', 'user_id', '00000000-0000-0000-0005-0000000000af',
                             'name', 'Imported', 'target_name', 'T', 'deal_type', 'carve_out', 'status', 'active',
                             'created_at', now(), 'updated_at', now()))));
SELECT import_deal(jsonb_build_object('format', 'deal_store.export', 'format_version', 1,
  'owner', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000af', 'email', 'mallory@example.com', 'active', true,
                              'created_at', now(), 'updated_at', now()),
  'deal', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000df', 'user_id', '00000000-0000-0000-0005-0000000000af',
                             'name', 'Imported', 'target_name', 'T', 'deal_type', 'carve_out', 'status', 'active',
                             'created_at', now(), 'updated_at', now())));
-- the importer owns what it imports: without an actor the import is refused, and
-- with one the export's owner is neither looked up nor created
SELECT set_config('deal_store.actor', (SELECT user_id::text FROM deals WHERE id = '00000000-0000-0000-0005-0000000000de'), false) IS NOT NULL AS acting;
SELECT import_deal(jsonb_build_object('format', 'deal_store.export', 'format_version', 1,
  'owner', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000af', 'email', 'mallory@example.com', 'active', true,
                              'created_at', now(), 'updated_at', now()),
  'deal', jsonb_build_object('id', '00000000-0000-0000-0005-0000000000df', 'user_id', '00000000-0000-0000-0005-0000000000af',
                             'name', 'Imported', 'target_name', 'T', 'deal_type', 'carve_out', 'status', 'active',
                             'created_at', now(), 'updated_at', now())));
SELECT d.user_id::text = current_setting('deal_store.actor') AS owned_by_the_importer FROM deals d WHERE d.id = '00000000-0000-0000-0005-0000000000df';
RESET deal_store.actor;
SELECT count(*) AS users_from_the_document FROM users WHERE id = '00000000-0000-0000-0005-0000000000af' OR email = 'mallory@example.com';
-- 11. a malformed export fails before anything is written, naming the JSON path of the first bad field
CREATE TEMP TABLE yew AS SELECT replace(export_deal('00000000-0000-0000-0005-0000000000de')::text,
  '00000000-0000-0000-0005-0000000000de', '00000000-0000-0000-0005-0000000000d0')::jsonb AS doc;
SELECT regress.expect_error(format('SELECT deal_store.import_deal(%L)', d)) FROM (VALUES
  (jsonb_set((SELECT doc FROM yew), '{facts,0,verified}', '"maybe"')),
  (jsonb_set((SELECT doc FROM yew), '{facts,0,confidence_score}', '"high"')),
  (jsonb_set((SELECT doc FROM yew), '{deal,name}', 'null')),
  (jsonb_set((SELECT doc FROM yew), '{analysis_runs,0,surprise}', '1')),
  (jsonb_set((SELECT doc FROM yew), '{gaps}', '{}')),
  (jsonb_set((SELECT doc FROM yew), '{format_version}', '2'))
) AS t(d);
SELECT count(*) AS imported FROM deals WHERE id = '00000000-0000-0000-0005-0000000000d0';

-- 9. NULL arguments and deals that do not exist: clear SQLSTATEs, never XX000 or an empty answer
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT * FROM deal_store.diff_facts('00000000-0000-0000-0005-0000000000de', NULL)$$),
  ($$SELECT * FROM deal_store.diff_facts(NULL, '[]')$$),
  ($$SELECT * FROM deal_store.propose_facts(NULL, '[]')$$),
  ($$SELECT * FROM deal_store.search_facts('00000000-0000-0000-0005-000000000999', 'fibre')$$),
  ($$SELECT * FROM deal_store.search_deal('00000000-0000-0000-0005-000000000999', 'fibre')$$),
  ($$SELECT * FROM deal_store.accept_changes('00000000-0000-0000-0005-000000000999')$$),
  ($$SELECT * FROM deal_store.deal_activity('00000000-0000-0000-0005-000000000999')$$),
  ($$SELECT * FROM deal_store.conflicts('00000000-0000-0000-0005-000000000999')$$),
  ($$SELECT deal_store.latest_completed_run('00000000-0000-0000-0005-000000000999')$$),
  ($$SELECT deal_store.typo_tsquery('00000000-0000-0000-0005-000000000999', 'fibre')$$),
  ($$SELECT deal_store.confidence_tier('00000000-0000-0000-0005-000000000999', 'fact', 'new')$$)
) AS t(s);

-- 10. Incoming values are read as their column's type before hashing: {"item": 5}
-- is the stored item '5', and 5.0 is the stored '5.0' (what the column would hold)
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES
  ('00000000-0000-0000-0005-0000000000de', 'H-7', 'network', '5'),
  ('00000000-0000-0000-0005-0000000000de', 'H-8', 'network', '5.0');
SELECT legacy_id, change FROM diff_facts('00000000-0000-0000-0005-0000000000de',
  '[{"legacy_id": "H-7", "domain": "network", "item": 5}, {"legacy_id": "H-8", "domain": "network", "item": 5.0}]')
WHERE legacy_id IN ('H-7', 'H-8') ORDER BY 1;
SELECT fact_checksum('{"item": 5}') = fact_checksum('{"item": "5"}') AS number_is_its_text,
       fact_checksum('{"item": true}') = fact_checksum('{"item": "true"}') AS boolean_is_its_text,
       fact_checksum('{"details": {"n": 5}}') <> fact_checksum('{"details": {"n": "5"}}') AS json_keeps_its_types;


-- 12. A value too large to log (over 1 MB) is logged as a marker, so no entry can
-- outgrow jsonb and the row stays insertable and updatable
INSERT INTO documents (deal_id, id, filename, file_hash, storage_path, extracted_text) VALUES
  ('00000000-0000-0000-0005-0000000000de', '00000000-0000-0000-0005-0000000000c1', 'big.pdf', 'h-big', '/big', repeat('x', 2000000));
UPDATE documents SET page_count = 7 WHERE id = '00000000-0000-0000-0005-0000000000c1';
UPDATE documents SET extracted_text = extracted_text || 'y' WHERE id = '00000000-0000-0000-0005-0000000000c1';
SELECT action, CASE action WHEN 'insert' THEN details -> 'extracted_text' ELSE details END AS logged
FROM deal_activity_log WHERE entity_id = '00000000-0000-0000-0005-0000000000c1' ORDER BY seq;

-- 14. An id passed alone names one row: ids are unique per deal only, so an id
-- present in two deals (written by hand; import_deal refuses it) is P0003
-- wherever a function takes the id alone, never a pick of one of them
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0005-0000000000dd', '00000000-0000-0000-0005-0000000000ae', 'Project Twin', 'Twin');
INSERT INTO analysis_runs (deal_id, id, run_number)
SELECT '00000000-0000-0000-0005-0000000000dd', id, 1 FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0005-0000000000de' AND run_number = 1;
INSERT INTO facts (deal_id, id, legacy_id, domain, item)
SELECT '00000000-0000-0000-0005-0000000000dd', id, legacy_id, domain, item FROM facts
WHERE deal_id = '00000000-0000-0000-0005-0000000000de' AND legacy_id = 'H-1' AND superseded_at IS NULL;
INSERT INTO pending_changes (deal_id, id, analysis_run_id, change_type, entity_type, legacy_entity_id, confidence_tier)
SELECT '00000000-0000-0000-0005-0000000000dd', c.id, c.analysis_run_id, c.change_type, c.entity_type, c.legacy_entity_id, c.confidence_tier
FROM pending_changes c WHERE c.deal_id = '00000000-0000-0000-0005-0000000000de' AND c.legacy_entity_id = 'H-2';
SELECT regress.expect_error(format(s, x)) FROM (
  SELECT 'SELECT deal_store.soft_delete(''deal_store.facts'', %L)' AS s, (SELECT id FROM facts WHERE legacy_id = 'H-1' AND deal_id = '00000000-0000-0000-0005-0000000000dd') AS x
  UNION ALL SELECT 'SELECT * FROM deal_store.fact_history(%L)', (SELECT id FROM facts WHERE legacy_id = 'H-1' AND deal_id = '00000000-0000-0000-0005-0000000000dd')
  UNION ALL SELECT 'SELECT deal_store.accept_change(%L)', (SELECT id FROM pending_changes WHERE legacy_entity_id = 'H-2' AND deal_id = '00000000-0000-0000-0005-0000000000dd')
  UNION ALL SELECT 'SELECT deal_store.complete_run(%L)', (SELECT id FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0005-0000000000dd')
  UNION ALL SELECT 'SELECT * FROM deal_store.propose_facts(%L, ''[]'')', (SELECT id FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0005-0000000000dd')
) t;

-- 13. A cross-partition UPDATE of an audited partitioned table is logged as the
-- purge of the old row and the insert of the new one: PostgreSQL runs it as a
-- DELETE from one partition and an INSERT into the other, and each fires its
-- own row trigger (README, Limits)
CREATE TABLE public.hard_parts (k int, region text, PRIMARY KEY (k, region)) PARTITION BY LIST (region);
CREATE TABLE public.hard_parts_eu PARTITION OF public.hard_parts FOR VALUES IN ('eu');
CREATE TABLE public.hard_parts_us PARTITION OF public.hard_parts FOR VALUES IN ('us');
SELECT enable_audit('public.hard_parts');
INSERT INTO public.hard_parts VALUES (1, 'eu');
UPDATE public.hard_parts SET region = 'us' WHERE k = 1;
SELECT action, entity_key FROM deal_activity_log WHERE entity_type LIKE 'public.hard_parts%' ORDER BY seq;
DROP TABLE public.hard_parts;

DROP TABLE public.hard_audited, public.hard_side;
DROP FUNCTION public.hard_try();
SET client_min_messages = warning;
DROP SCHEMA trap CASCADE;
