-- The hostile layer (issue 14): every function of deal_store called by an
-- ordinary role with hostile arguments: NULL in every position, deep nesting,
-- huge numbers, strings and arrays, wrong JSON types in every field, unicode
-- edge cases, ids of nothing. Each call runs in its own subtransaction; a
-- failed call must leave the deal tables and the log exactly as they were.
-- Then cancels: a long call under statement_timeout = 1s must stop within 1 s
-- of the timeout. Run by scripts/test as role deal_store_hostile (no superuser);
-- raises (and so fails the layer) on a crash, an XX000, a change left by a
-- failed call or a slow cancel. Prints the outcomes by SQLSTATE.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT pg_catalog.pg_postmaster_start_time() AS started, pg_catalog.pg_backend_pid() AS pid \gset
-- the state of the deal tables and the log, as one checksum
CREATE FUNCTION pg_temp.deal_state() RETURNS text LANGUAGE sql AS $$
    SELECT pg_catalog.md5(pg_catalog.string_agg(t, E'\n' ORDER BY t)) FROM (
        SELECT x::text AS t FROM deal_store.facts x UNION ALL SELECT x::text FROM deal_store.pending_changes x
        UNION ALL SELECT x::text FROM deal_store.deal_activity_log x UNION ALL SELECT x::text FROM deal_store.deals x
        UNION ALL SELECT x::text FROM deal_store.documents x UNION ALL SELECT x::text FROM deal_store.analysis_runs x
        UNION ALL SELECT x::text FROM deal_store.findings x UNION ALL SELECT x::text FROM deal_store.gaps x
        UNION ALL SELECT x::text FROM deal_store.users x UNION ALL SELECT x::text FROM deal_store.notifications x) s
$$;
CREATE TEMP TABLE outcome (fn text, arg int, argname text, val text, sqlstate text, message text);

DO $hostile$
DECLARE
    deal constant uuid := '00000000-0000-0000-00ff-0000000000d1';
    run uuid := (SELECT r.id FROM deal_store.analysis_runs r WHERE r.deal_id = '00000000-0000-0000-00ff-0000000000d1' AND r.status = 'running' LIMIT 1);
    fact uuid := (SELECT f.id FROM deal_store.facts f WHERE f.deal_id = '00000000-0000-0000-00ff-0000000000d1' AND f.superseded_at IS NULL LIMIT 1);
    deep text := '{"item": "deep", "details": ' || pg_catalog.repeat('[', 5000) || pg_catalog.repeat(']', 5000) || '}';
    p record;
    types oid[];
    sane text[];
    hostile text[];
    v text;
    call text;
    i int;
    state text;
    msg text;
    before text;
    after text;
BEGIN
    FOR p IN
        SELECT f.oid, f.proname, f.pronamespace::pg_catalog.regnamespace::text AS nsp, f.pronargs, f.proargnames,
               (SELECT pg_catalog.array_agg(t ORDER BY n) FROM pg_catalog.unnest(f.proargtypes::oid[]) WITH ORDINALITY u(t, n)) AS types
        FROM pg_catalog.pg_proc f
        WHERE f.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace) AND f.prokind = 'f'
          AND f.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype
          AND f.proname NOT IN ('purge_audit')   -- superusers only, and nothing to hostile input
        ORDER BY f.proname, f.oid
    LOOP
        types := p.types;
        sane := ARRAY[]::text[];
        FOR i IN 1 .. p.pronargs LOOP
            sane := sane || CASE types[i]
                WHEN 'uuid'::regtype THEN pg_catalog.quote_literal(deal) || '::uuid'
                WHEN 'text'::regtype THEN CASE p.proargnames[i] WHEN 'entity_type' THEN '''fact''' WHEN 'change_type' THEN '''new''' WHEN 'needs' THEN '''read'''
                                                                 WHEN 'cfg' THEN '''english''' WHEN 'query' THEN '''fibre''' ELSE '''x''' END
                WHEN 'jsonb'::regtype THEN '''[{"legacy_id": "H-1", "domain": "network", "item": "x"}]''::jsonb'
                WHEN 'anyelement'::regtype THEN '''[{"legacy_id": "H-1", "domain": "network", "item": "x"}]''::jsonb'
                WHEN 'text[]'::regtype THEN 'ARRAY[''network'']'
                WHEN 'integer'::regtype THEN '1'
                WHEN 'double precision'::regtype THEN '0.5'
                WHEN 'boolean'::regtype THEN 'false'
                WHEN 'timestamptz'::regtype THEN 'now()'
                WHEN 'interval'::regtype THEN '''1 day''::interval'
                WHEN 'regclass'::regtype THEN '''deal_store.facts''::regclass'
                WHEN 'regconfig'::regtype THEN '''english''::regconfig'
                WHEN 'uuid[]'::regtype THEN 'ARRAY[]::uuid[]'
                ELSE 'NULL' END;
        END LOOP;
        FOR i IN 1 .. p.pronargs LOOP
            hostile := CASE types[i]
                WHEN 'uuid'::regtype THEN ARRAY['NULL::uuid', 'gen_random_uuid()', pg_catalog.quote_literal(coalesce(run, deal)) || '::uuid',
                                                pg_catalog.quote_literal(coalesce(fact, deal)) || '::uuid']
                WHEN 'text'::regtype THEN ARRAY['NULL::text', '''''', 'repeat(''x'', 1000000)', 'E''Z\u0308\U0001F600\u202E\uFEFF''',
                                                '$q$''); DROP TABLE deal_store.facts; -- & | ! :* ( " <->$q$', 'repeat(''lisence '', 2000)']
                WHEN 'jsonb'::regtype THEN ARRAY['NULL::jsonb', '''null''::jsonb', '''{}''::jsonb', '''"x"''::jsonb',
                    pg_catalog.quote_literal(deep) || '::jsonb', pg_catalog.quote_literal('[' || deep || ']') || '::jsonb',
                    '''{"item": 1e131071}''::jsonb', '''[{"legacy_id": "H-2", "item": 1e131071}]''::jsonb',
                    '(SELECT jsonb_agg(jsonb_build_object(''legacy_id'', ''H-'' || g, ''item'', repeat(''y'', 100))) FROM generate_series(1, 20000) g)',
                    '''[{"legacy_id": 5, "item": [1], "domain": {}, "confidence_score": "high", "verified": "maybe", "details": 7, "source_page_numbers": "p3"}]''::jsonb',
                    '''[{"legacy_id": "H-3", "item": "x", "confidence_score": 1e400}]''::jsonb',
                    '''[{"legacy_id": "H-4", "item": "x", "confidence_score": 1.7, "source_page_numbers": [1e30]}]''::jsonb',
                    '''[{"legacy_id": "H-5", "item": "\u0000"}]''::jsonb', '''[{"legacy_id": "", "item": "x"}]''::jsonb',
                    '''[{"legacy_id": "H-6"}, {"legacy_id": "H-6"}]''::jsonb', '''[null, 1, "x", []]''::jsonb']
                WHEN 'anyelement'::regtype THEN ARRAY['NULL::jsonb', '''{}''::jsonb', '42', '''x''::text', 'ROW(1, 2)',
                    pg_catalog.quote_literal(deep) || '::jsonb', '''{"item": 1e131071}''::jsonb']
                WHEN 'text[]'::regtype THEN ARRAY['NULL::text[]', '''{}''::text[]', '''{NULL}''::text[]',
                                                  '(SELECT array_agg(g::text) FROM generate_series(1, 100000) g)']
                WHEN 'integer'::regtype THEN ARRAY['NULL::integer', '0', '-1', '2147483647']
                WHEN 'double precision'::regtype THEN ARRAY['NULL::float8', '''NaN''::float8', '''Infinity''::float8', '-1', '1e308']
                WHEN 'boolean'::regtype THEN ARRAY['NULL::boolean', 'true']
                WHEN 'timestamptz'::regtype THEN ARRAY['NULL::timestamptz', '''infinity''::timestamptz', '''-infinity''::timestamptz']
                WHEN 'interval'::regtype THEN ARRAY['NULL::interval', '''-1 day''::interval', '''1000000 years''::interval']
                WHEN 'regclass'::regtype THEN ARRAY['NULL::regclass', '''pg_catalog.pg_class''::regclass', '''deal_store.deal_activity_log''::regclass',
                                                    '''deal_store.users''::regclass']
                WHEN 'regconfig'::regtype THEN ARRAY['NULL::regconfig', '''simple''::regconfig']
                WHEN 'uuid[]'::regtype THEN ARRAY['NULL::uuid[]', 'ARRAY[NULL]::uuid[]', 'ARRAY[gen_random_uuid()]']
                ELSE ARRAY['NULL'] END;
            FOREACH v IN ARRAY hostile LOOP
                IF before IS NULL THEN
                    before := pg_temp.deal_state();
                END IF;
                call := pg_catalog.format('SELECT %I.%I(%s)', p.nsp, p.proname,
                            pg_catalog.array_to_string(sane[1:i-1] || v || sane[i+1:p.pronargs], ', '));
                BEGIN
                    EXECUTE call;
                    state := '00000'; msg := NULL;
                    before := NULL;   -- a call that worked may change data: take the state anew
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                    after := pg_temp.deal_state();
                    IF after IS DISTINCT FROM before THEN
                        RAISE EXCEPTION 'failed call changed data: %', call;
                    END IF;
                END;
                INSERT INTO outcome VALUES (p.proname, i, p.proargnames[i], pg_catalog.left(v, 60), state, pg_catalog.left(msg, 200));
            END LOOP;
        END LOOP;
    END LOOP;
END $hostile$;

-- cancels: a long call under statement_timeout = 1s stops within 1 s of it.
-- Each runs as a top-level statement (a timeout arms per statement).
CREATE TEMP TABLE cancels (what text, seconds numeric, sqlstate text);
\echo 'cancel checks: three "canceling statement due to statement timeout" errors follow, as intended'
\set ON_ERROR_STOP off
\set VERBOSITY terse
SET statement_timeout = '1s';
-- edit distances of 400 words against a deal vocabulary of 30,000 lexemes
SELECT pg_catalog.clock_timestamp() AS t0 \gset
SELECT deal_store.typo_tsquery('00000000-0000-0000-00ff-0000000000d2', (SELECT string_agg(substr(md5(g || ':1'), 1, 10), ' ') FROM generate_series(1, 400) g));
INSERT INTO cancels VALUES ('typo_tsquery', extract(epoch FROM pg_catalog.clock_timestamp() - :'t0'), :'SQLSTATE');
-- the canonical text of 200 documents of 200,000 objects each
SELECT pg_catalog.clock_timestamp() AS t0 \gset
SELECT count(DISTINCT deal_store.fact_checksum(jsonb_build_object('details', (SELECT jsonb_agg(jsonb_build_object('k' || g, g * 1.5)) FROM generate_series(1, 200000) g), 'item', i))) FROM generate_series(1, 200) i;
INSERT INTO cancels VALUES ('fact_checksum', extract(epoch FROM pg_catalog.clock_timestamp() - :'t0'), :'SQLSTATE');
-- diffing 100,000 incoming facts, 100 times
SELECT pg_catalog.clock_timestamp() AS t0 \gset
SELECT count(*) FROM generate_series(1, 100), LATERAL deal_store.diff_facts('00000000-0000-0000-00ff-0000000000d1', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'C-' || g, 'item', 'x' || g)) FROM generate_series(1, 100000) g));
INSERT INTO cancels VALUES ('diff_facts', extract(epoch FROM pg_catalog.clock_timestamp() - :'t0'), :'SQLSTATE');
RESET statement_timeout;
\set ON_ERROR_STOP on

SELECT sqlstate, count(*) AS calls FROM outcome GROUP BY 1 ORDER BY 1;
SELECT count(*) AS calls, count(DISTINCT fn) AS functions FROM outcome;
SELECT what, round(seconds, 2) AS seconds, sqlstate FROM cancels;
SELECT fn, arg, val, message FROM outcome WHERE sqlstate IN ('XX000', '22000') ORDER BY 1, 2;
SELECT sqlstate, fn, min(message) FROM outcome WHERE sqlstate = '42883' GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 8;
-- a deal that does not exist is P0002, never an empty answer
SELECT fn, sqlstate FROM outcome WHERE argname = 'deal_id' AND val = 'gen_random_uuid()' AND sqlstate <> 'P0002' ORDER BY 1;
SELECT pg_catalog.pg_postmaster_start_time() = :'started' AND pg_catalog.pg_backend_pid() = :pid AS server_and_session_survived \gset
\if :server_and_session_survived
\else
\echo 'the server restarted'
\quit 3
\endif
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM outcome WHERE sqlstate IN ('XX000', '22000')) THEN
        RAISE EXCEPTION 'hostile input reached an internal error (XX000/22000): see the list above';
    END IF;
    IF EXISTS (SELECT 1 FROM outcome WHERE argname = 'deal_id' AND val = 'gen_random_uuid()' AND sqlstate <> 'P0002') THEN
        RAISE EXCEPTION 'a function answered for a deal that does not exist: see the list above';
    END IF;
    IF EXISTS (SELECT 1 FROM cancels WHERE sqlstate <> '57014' OR seconds > 2.0) THEN
        RAISE EXCEPTION 'a long call ignored statement_timeout = 1s: see the list above';
    END IF;
END $$;
