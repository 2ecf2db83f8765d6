-- Names no caller can hijack: the catalog shows every routine of deal_store
-- parsed and run under search_path = pg_catalog, pg_temp (pg_temp named, last).
-- The only routines without that SET clause: the Rust library's own (their SQL
-- runs through src/spi.rs, which pins the same path; clippy refuses SPI
-- anywhere else), SQL-standard bodies (parsed when created), and the one list
-- deal_store_internal._unpinned() gives with its reasons.
SELECT p.oid::regprocedure AS unpinned_routine
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace)
  AND NOT coalesce(p.proconfig, '{}') @> '{"search_path=pg_catalog, pg_temp"}'
  AND p.prosqlbody IS NULL
  AND NOT (l.lanname = 'c' AND p.probin = '$libdir/deal_store')
  AND p.oid <> ALL (SELECT u.routine FROM deal_store_internal._unpinned() u)
ORDER BY 1;
-- a path set on a routine names pg_temp, last
SELECT p.oid::regprocedure AS routine, c AS setting
FROM pg_catalog.pg_proc p, unnest(p.proconfig) c
WHERE p.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace) AND c LIKE 'search_path=%' AND c NOT LIKE '%, pg_temp'
ORDER BY 1;
-- the exceptions, with their reasons
SELECT routine, why FROM deal_store_internal._unpinned() ORDER BY 1;
-- the C routines all come from the library itself
SELECT count(*) AS foreign_c_routines FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace) AND l.lanname = 'c' AND p.probin <> '$libdir/deal_store';

-- The server owns its records: the one classification of who / when columns
-- covers every table, and every such table but the log has the trigger.
SELECT s.table_name, string_agg(s.column_name || ':' || s.kind || '/' || s.moment, ', ' ORDER BY s.column_name) AS columns
FROM deal_store_internal._server_columns() s GROUP BY 1 ORDER BY 1;
SELECT s.table_name AS without_trigger FROM (SELECT DISTINCT table_name FROM deal_store_internal._server_columns()) s
WHERE s.table_name <> 'deal_activity_log'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = ('deal_store.' || quote_ident(s.table_name))::regclass
                  AND t.tgname = 'server_columns' AND t.tgenabled = 'O');

-- Each reported defect, now refused or harmless (as a superuser here; the
-- trap layer of tests/hostile repeats the search-path ones as ordinary roles).
SET deal_store.actor = '';
INSERT INTO deal_store.users (id, email) VALUES
  ('00000000-0000-0000-0029-0000000000a1', 'lead29@example.com'), ('00000000-0000-0000-0029-0000000000a2', 'other29@example.com');
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0029-0000000000d1', '00000000-0000-0000-0029-0000000000a1', 'Project Pinned', 'P');
SET deal_store.actor = '00000000-0000-0000-0029-0000000000a1';
-- "who" and "when" given by the caller are replaced by the actor and the server clock
INSERT INTO deal_store.facts (deal_id, id, legacy_id, domain, item, created_by, updated_by, created_at)
VALUES ('00000000-0000-0000-0029-0000000000d1', '00000000-0000-0000-0029-0000000000f1', 'P-1', 'network', 'fibre',
        '00000000-0000-0000-0029-0000000000a2', '00000000-0000-0000-0029-0000000000a2', '2000-01-01');
SELECT created_by, updated_by, created_at <> '2000-01-01' AS server_clock FROM deal_store.facts WHERE id = '00000000-0000-0000-0029-0000000000f1';
UPDATE deal_store.facts SET item = 'fibre ring', created_at = '2000-01-01', updated_by = '00000000-0000-0000-0029-0000000000a2'
WHERE id = '00000000-0000-0000-0029-0000000000f1';
SELECT updated_by, created_at <> '2000-01-01' AS server_clock FROM deal_store.facts WHERE id = '00000000-0000-0000-0029-0000000000f1' AND superseded_at IS NULL;
-- a soft delete by UPDATE with another deleter and another time
UPDATE deal_store.facts SET deleted_at = '2001-09-11', deleted_by = '00000000-0000-0000-0029-0000000000a2'
WHERE id = '00000000-0000-0000-0029-0000000000f1';
SELECT deleted_by, deleted_at <> '2001-09-11' AS server_clock FROM deal_store.facts WHERE id = '00000000-0000-0000-0029-0000000000f1';
SELECT deal_store.restore('deal_store.facts', '00000000-0000-0000-0029-0000000000f1');
-- history: the history row never changes, the chain cannot be cut, a fact cannot leave active_facts by superseded_at
UPDATE deal_store.facts SET item = 'rewritten', created_at = '2000-01-01' WHERE deal_id = '00000000-0000-0000-0029-0000000000d1' AND superseded_at IS NOT NULL;
SELECT item FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0029-0000000000d1' AND superseded_at IS NOT NULL;
SELECT regress.expect_error($$UPDATE deal_store.facts SET previous_version_id = NULL WHERE id = '00000000-0000-0000-0029-0000000000f1'$$);
SELECT regress.expect_error($$UPDATE deal_store.facts SET superseded_at = now() WHERE id = '00000000-0000-0000-0029-0000000000f1'$$);
SELECT regress.expect_error($$INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, previous_version_id)
    SELECT deal_id, 'P-2', 'network', 'forged', id FROM deal_store.facts WHERE deal_id = '00000000-0000-0000-0029-0000000000d1' AND superseded_at IS NOT NULL$$);
SELECT count(*) AS versions FROM deal_store.fact_history('00000000-0000-0000-0029-0000000000f1');
-- a gap resolved "by" someone else is resolved by the actor
INSERT INTO deal_store.gaps (deal_id, legacy_id, domain, description, resolved_by, resolved_at)
VALUES ('00000000-0000-0000-0029-0000000000d1', 'G-1', 'network', 'no diagram', '00000000-0000-0000-0029-0000000000a2', '2000-01-01');
SELECT resolved_by, resolved_at <> '2000-01-01' AS server_clock FROM deal_store.gaps WHERE deal_id = '00000000-0000-0000-0029-0000000000d1';
-- headlines escape stored markup; the query is bounded
INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item)
VALUES ('00000000-0000-0000-0029-0000000000d1', 'P-3', 'network', 'router <img src=x onerror=alert(1)> firmware');
SELECT headline FROM deal_store.search_facts('00000000-0000-0000-0029-0000000000d1', 'firmware');
SELECT headline FROM deal_store.search_facts('00000000-0000-0000-0029-0000000000d1', 'firmwre <img>');
SELECT regress.expect_error($$SELECT * FROM deal_store.search_facts('00000000-0000-0000-0029-0000000000d1', repeat('x', 1001))$$);
-- the Citus preparation refuses without Citus
SELECT regress.expect_error($$SELECT deal_store_internal._distribute_prepare()$$);
RESET deal_store.actor;

-- deal_store.run_id labels log entries of its own deal's rows only
SET deal_store.actor = '00000000-0000-0000-0029-0000000000a1';
INSERT INTO deal_store.deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0029-0000000000d2', '00000000-0000-0000-0029-0000000000a1', 'Project Elsewhere', 'E');
SELECT deal_store.start_run('00000000-0000-0000-0029-0000000000d2') AS other_run \gset
SELECT deal_store.start_run('00000000-0000-0000-0029-0000000000d1') AS own_run \gset
SET deal_store.run_id = :'other_run';
SELECT regress.expect_error($$UPDATE deal_store.facts SET item = 'relabelled' WHERE id = '00000000-0000-0000-0029-0000000000f1'$$);
SET deal_store.run_id = :'own_run';
UPDATE deal_store.facts SET item = 'labelled' WHERE id = '00000000-0000-0000-0029-0000000000f1';
SELECT analysis_run_id = :'own_run' AS logged_under_its_run FROM deal_store.deal_activity_log
WHERE entity_id = '00000000-0000-0000-0029-0000000000f1' ORDER BY seq DESC LIMIT 1;
RESET deal_store.run_id;
RESET deal_store.actor;

-- A superuser's COPY FROM is a restore, for its own rows only: they are kept as
-- dumped and not audited; the next statement of the transaction is ordinary again.
BEGIN;
COPY deal_store.gaps (deal_id, legacy_id, domain, description, created_at) FROM stdin;
00000000-0000-0000-0029-0000000000d1	G-9	network	restored gap	2001-01-01 00:00:00+00
\.
SHOW session_replication_role;
SET LOCAL deal_store.actor = '00000000-0000-0000-0029-0000000000a1';
UPDATE deal_store.gaps SET description = 'edited after the restore' WHERE legacy_id = 'G-9';
COMMIT;
SELECT created_at = '2001-01-01 00:00:00+00' AS kept_as_dumped FROM deal_store.gaps WHERE legacy_id = 'G-9';
SELECT l.action, l.user_id FROM deal_store.deal_activity_log l JOIN deal_store.gaps g ON g.id = l.entity_id
WHERE g.legacy_id = 'G-9' ORDER BY l.seq;

-- which library serves this database, and which catalog version it holds
SELECT library = extversion AS same_version, catalog = extversion AS catalog_is_installed
FROM deal_store.version(), pg_catalog.pg_extension WHERE extname = 'deal_store';

-- The reported escalation, as a plain reader whose only write is marking its own
-- notification read: its pg_temp type named uuid, with casts that try to make it
-- a superuser when they run with a superuser's rights, steers nothing.
SET client_min_messages = warning;
DROP ROLE IF EXISTS pinned_reader;
CREATE ROLE pinned_reader LOGIN;   -- on Citus the coordinator connects to the workers as it
RESET client_min_messages;
GRANT deal_store_reader TO pinned_reader;
INSERT INTO deal_store.users (id, email, db_role) VALUES ('00000000-0000-0000-0029-0000000000a3', 'reader29@example.com', 'pinned_reader');
SELECT deal_store.add_member('00000000-0000-0000-0029-0000000000d1', '00000000-0000-0000-0029-0000000000a3', 'viewer');
INSERT INTO deal_store.notifications (user_id, deal_id, type, title)
VALUES ('00000000-0000-0000-0029-0000000000a3', '00000000-0000-0000-0029-0000000000d1', 'review_needed', 'please look');
SET ROLE pinned_reader;
CREATE TYPE pg_temp.uuid AS (v pg_catalog.uuid);
CREATE FUNCTION pg_temp.to_evil(x pg_catalog.uuid) RETURNS pg_temp.uuid LANGUAGE plpgsql AS $f$
BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user)
 THEN EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', session_user); END IF;
 RETURN ROW(x)::pg_temp.uuid; END $f$;
CREATE FUNCTION pg_temp.from_evil(x pg_temp.uuid) RETURNS pg_catalog.uuid LANGUAGE sql AS 'SELECT x.v';
CREATE CAST (pg_catalog.uuid AS pg_temp.uuid) WITH FUNCTION pg_temp.to_evil(pg_catalog.uuid);
CREATE CAST (pg_temp.uuid AS pg_catalog.uuid) WITH FUNCTION pg_temp.from_evil(pg_temp.uuid) AS ASSIGNMENT;
UPDATE deal_store.notifications SET read = true, read_at = now();
RESET ROLE;
SELECT rolsuper AS reader_became_superuser FROM pg_catalog.pg_roles WHERE rolname = 'pinned_reader';
SELECT read, read_at IS NOT NULL AS read_at_set FROM deal_store.notifications WHERE user_id = '00000000-0000-0000-0029-0000000000a3';
-- The reported outage: an operator planted in public by a role with CREATE there
-- breaks nobody's audited writes.
CREATE FUNCTION public.jsonb_minus_trap(jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS $f$ SELECT '"trapped"'::jsonb $f$;
CREATE OPERATOR public.- (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.jsonb_minus_trap);
SET search_path = public, pg_catalog;
SET deal_store.actor = '00000000-0000-0000-0029-0000000000a1';
UPDATE deal_store.facts SET item = 'fibre, planted operator ignored' WHERE id = '00000000-0000-0000-0029-0000000000f1' AND superseded_at IS NULL;
INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0029-0000000000d1', 'P-4', 'network', 'logged whole');
RESET deal_store.actor;
RESET search_path;
SELECT action, details ? 'search_vector' AS vector_logged, details::text LIKE '%trapped%' AS trap_fired
FROM deal_store.deal_activity_log WHERE deal_id = '00000000-0000-0000-0029-0000000000d1' AND entity_type = 'fact'
ORDER BY seq DESC LIMIT 2;
DROP OPERATOR public.- (jsonb, jsonb);
DROP FUNCTION public.jsonb_minus_trap(jsonb, jsonb);

-- Only a superuser's COPY FROM into deal_store's own table is a restore: rows a
-- trigger of another table writes during a superuser's COPY, and a COPY (…) TO,
-- are ordinary writes (stamped, audited), and nothing stays switched off.
CREATE TABLE public.loader (x int);
CREATE FUNCTION public.loader_writes() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO deal_store.gaps (deal_id, legacy_id, domain, description, created_at)
    VALUES ('00000000-0000-0000-0029-0000000000d1', 'L-' || NEW.x, 'network', 'written by a loader', '1999-01-01');
    RETURN NEW;
END $f$;
CREATE TRIGGER loader_writes BEFORE INSERT ON public.loader FOR EACH ROW EXECUTE FUNCTION public.loader_writes();
BEGIN;
COPY public.loader FROM stdin;
1
\.
SHOW session_replication_role;
COMMIT;
SELECT g.created_at <> '1999-01-01' AS stamped, EXISTS (SELECT 1 FROM deal_store.deal_activity_log l WHERE l.entity_id = g.id) AS audited
FROM deal_store.gaps g WHERE g.legacy_id = 'L-1';
BEGIN;
COPY (UPDATE deal_store.gaps SET description = 'changed by a COPY TO' WHERE legacy_id = 'L-1' RETURNING legacy_id) TO STDOUT;
SHOW session_replication_role;
COMMIT;
SELECT count(*) AS update_audited FROM deal_store.deal_activity_log l JOIN deal_store.gaps g ON g.id = l.entity_id
WHERE g.legacy_id = 'L-1' AND l.action = 'update';
DROP TABLE public.loader;
DROP FUNCTION public.loader_writes();

-- A consumer whose cursor is beyond this cluster's transaction ids (a database
-- restored into a cluster that is behind) is warned about, not left silent.
SELECT (deal_store.register_consumer('moved.consumer')).name;
UPDATE deal_store.feed_consumers SET cursor_txid = '{999999999999}' WHERE name = 'moved.consumer';
SELECT count(*) AS read_nothing FROM deal_store.read_changes('moved.consumer', 10);
SELECT deal_store.remove_consumer('moved.consumer');
