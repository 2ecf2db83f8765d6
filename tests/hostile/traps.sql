-- The trap layer: deal_store never lets a caller's search_path or temp objects
-- steer the SQL it runs. Run by scripts/test as each of the ordinary login roles
-- of tests/hostile/traps_setup.sql (a reader, viewer on the deal; an analyst,
-- analyst on it), from the repository root (the Rust sources are read, below).
--
-- The session plants, the way an attacker would:
--   (a) pg_temp types named like the pg_catalog types the extension names
--       (uuid, text, jsonb, int4, ...: a name pg_temp holds is found before
--       pg_catalog's when pg_temp is not named on the path), with casts to and
--       from the real type whose functions fire the trap;
--   (b) in a schema of its own, first on its path (ahead of pg_catalog):
--       every pg_catalog operator with an argument type it can declare, and a
--       function (aggregate) of the name and argument types of every pg_catalog
--       function (aggregate) whose name is a word of the source of a function of
--       the extension (pg_proc.prosrc) or of its Rust code (src/*.rs);
--   (c) pg_temp views named like the pg_catalog relations those sources name
--       and like deal_store's own relations (found before the real ones, too).
-- A trap fires by recording (a session advisory lock: it survives the rollback
-- of the call), by trying to make the session's role a superuser when it runs
-- with a superuser's rights (ALTER ROLE SESSION_USER SUPERUSER, as in the
-- issue's reproduction), and by raising 'TRAP FIRED: ...' with the call stack.
--
-- Then every function of schema deal_store is called with sane arguments, and
-- every audited table (the deal_store_audit_flush trigger), and every table
-- with the who / when trigger that a write below names, gets an INSERT, an
-- UPDATE, a DELETE and, where it has deleted_at, a soft delete by UPDATE and by
-- deal_store.soft_delete, each in a subtransaction that is rolled back: first
-- with the traps on (path "$user", pg_catalog, deal_store, public, in a session
-- whose caches are still cold), then with them off (pg_temp named last, the
-- trap schema not on the path). The layer raises when a trap fired, the role
-- became a superuser, or a call's outcome (SQLSTATE, rows) with the traps
-- differs from its outcome without them. Prints the outcomes by SQLSTATE.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
-- the driver's own path: pg_temp named, and last, so that its own statements
-- never meet a trap; every statement built to run with the traps on names
-- pg_catalog types, functions and operators in full
SET search_path = pg_catalog, pg_temp;
-- the words of the Rust sources (run from the repository root; empty elsewhere,
-- then the fixed list below stands in for them)
\set rust_words `cat src/*.rs 2>/dev/null | tr -cs 'A-Za-z0-9_' '\n' | sort -u | tr '\n' ' '`

DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = SESSION_USER) THEN
        RAISE EXCEPTION 'the trap layer runs as an ordinary role, not as superuser %', SESSION_USER;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = SESSION_USER
                   AND n.nspowner = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = SESSION_USER)) THEN
        RAISE EXCEPTION 'schema % (owned by the role) is missing: run tests/hostile/traps_setup.sql first', SESSION_USER;
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- The schema the role controls, emptied (left by an earlier run). Dropping one
-- object may drop others (an aggregate with its transition function): each is
-- looked up again before it is dropped.
DO $$
DECLARE
    o record;
    stmt text;
BEGIN
    FOR o IN SELECT p.oid, 'pg_catalog.pg_operator'::pg_catalog.regclass AS cat FROM pg_catalog.pg_operator p
             WHERE p.oprnamespace::pg_catalog.regnamespace::text = pg_catalog.quote_ident(SESSION_USER)
             UNION ALL SELECT p.oid, 'pg_catalog.pg_proc' FROM pg_catalog.pg_proc p
             WHERE p.pronamespace::pg_catalog.regnamespace::text = pg_catalog.quote_ident(SESSION_USER)
             UNION ALL SELECT c.oid, 'pg_catalog.pg_class' FROM pg_catalog.pg_class c
             WHERE c.relnamespace::pg_catalog.regnamespace::text = pg_catalog.quote_ident(SESSION_USER) AND c.relkind IN ('r', 'v')
    LOOP
        stmt := CASE o.cat
            WHEN 'pg_catalog.pg_operator'::pg_catalog.regclass THEN
                (SELECT 'DROP OPERATOR ' || p.oid::pg_catalog.regoperator::text || ' CASCADE' FROM pg_catalog.pg_operator p WHERE p.oid = o.oid)
            WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
                (SELECT CASE p.prokind WHEN 'a' THEN 'DROP AGGREGATE ' ELSE 'DROP FUNCTION ' END || p.oid::pg_catalog.regprocedure::text || ' CASCADE'
                 FROM pg_catalog.pg_proc p WHERE p.oid = o.oid)
            ELSE (SELECT CASE c.relkind WHEN 'v' THEN 'DROP VIEW ' ELSE 'DROP TABLE ' END || c.oid::pg_catalog.regclass::text || ' CASCADE'
                  FROM pg_catalog.pg_class c WHERE c.oid = o.oid) END;
        IF stmt IS NOT NULL THEN
            EXECUTE stmt;
        END IF;
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------
-- Bookkeeping: every trap has a number; a fired trap holds the session advisory
-- lock (7401, number), one that ran with a superuser's rights also (7402,
-- number), and one whose ALTER ROLE ... SUPERUSER succeeded also (7403, number).
CREATE TEMP TABLE trap_list (id serial PRIMARY KEY, kind text, what text, created boolean);
CREATE TEMP TABLE trap_cfg (on_path text, off_path text, me uuid);
INSERT INTO pg_temp.trap_cfg VALUES (
    pg_catalog.format('%I, pg_catalog, deal_store, public', SESSION_USER),
    'pg_catalog, deal_store, public, pg_temp',
    (SELECT u.id FROM deal_store.users u WHERE u.db_role = SESSION_USER));

-- The body of trap number id (what: what it stands in for).
CREATE FUNCTION pg_temp.trap_body(id integer, what text) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
SELECT pg_catalog.format($b$
DECLARE
    stack text;
BEGIN
    GET DIAGNOSTICS stack = PG_CONTEXT;
    PERFORM pg_catalog.pg_advisory_lock(7401, %1$s);
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN
        -- the extension runs the attacker's code with a superuser's rights: escalate
        PERFORM pg_catalog.pg_advisory_lock(7402, %1$s);
        BEGIN
            ALTER ROLE SESSION_USER SUPERUSER;
            PERFORM pg_catalog.pg_advisory_lock(7403, %1$s);
        EXCEPTION WHEN OTHERS THEN
            NULL;   -- e.g. in a non-volatile function: the attempt is recorded all the same
        END;
    END IF;
    RAISE WARNING 'TRAP FIRED: %% (as %%)', %2$L, CURRENT_USER USING DETAIL = stack;
    RAISE EXCEPTION 'TRAP FIRED: %% (as %%)', %2$L, CURRENT_USER USING ERRCODE = 'TRAPF', DETAIL = stack;
END
$b$, id, what)
$f$;

-- Runs one DDL statement of a trap; a statement PostgreSQL refuses (a type an
-- ordinary role cannot declare, a resolution conflict) leaves the trap uncreated.
CREATE FUNCTION pg_temp.plant(trap integer, ddl text[]) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    s text;
BEGIN
    BEGIN
        FOREACH s IN ARRAY ddl LOOP
            EXECUTE s;
        END LOOP;
        UPDATE pg_temp.trap_list SET created = true WHERE id = trap;
    EXCEPTION WHEN OTHERS THEN
        UPDATE pg_temp.trap_list SET created = false WHERE id = trap;
    END;
END $f$;

-- ---------------------------------------------------------------------------
-- The names the extension may call: the words of the source of its SQL and
-- PL/pgSQL functions (those of schema deal_store and those of the extension),
-- of its Rust code, and a fixed list of names the Rust code's SQL uses.
CREATE TEMP TABLE trap_words AS
SELECT DISTINCT w FROM (
    SELECT pg_catalog.regexp_split_to_table(pg_catalog.lower(p.prosrc), '[^a-z0-9_]+') AS w
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'deal_store'::pg_catalog.regnamespace
       OR p.oid IN (SELECT d.objid FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'e'
                      AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                      AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'deal_store'))
    UNION ALL
    SELECT pg_catalog.regexp_split_to_table(pg_catalog.lower(:'rust_words'), '[^a-z0-9_]+')
    UNION ALL
    SELECT pg_catalog.unnest(ARRAY['unnest', 'now', 'nextval', 'currval', 'setval', 'array_agg', 'string_agg', 'md5', 'to_jsonb',
        'jsonb_build_object', 'jsonb_build_array', 'jsonb_agg', 'jsonb_object_agg', 'jsonb_each', 'jsonb_each_text',
        'jsonb_array_elements', 'jsonb_array_elements_text', 'jsonb_object_keys', 'jsonb_typeof', 'jsonb_set',
        'jsonb_strip_nulls', 'jsonb_populate_record', 'jsonb_populate_recordset', 'jsonb_to_recordset', 'row_to_json',
        'quote_ident', 'quote_literal', 'quote_nullable', 'format', 'concat', 'concat_ws', 'array_position',
        'array_length', 'array_to_string', 'string_to_array', 'cardinality', 'array_fill', 'lower', 'upper', 'btrim',
        'left', 'right', 'length', 'substr', 'substring', 'split_part', 'replace', 'regexp_replace', 'lag', 'row_number',
        'count', 'min', 'max', 'sum', 'bool_and', 'bool_or', 'gen_random_uuid', 'current_setting', 'set_config',
        'pg_has_role', 'has_table_privilege', 'has_function_privilege', 'pg_notify', 'txid_current',
        'pg_current_xact_id', 'pg_current_snapshot', 'pg_snapshot_xmin', 'pg_visible_in_snapshot', 'to_tsvector',
        'to_tsquery', 'plainto_tsquery', 'websearch_to_tsquery', 'setweight', 'ts_rank_cd', 'ts_headline', 'ts_stat',
        'jsonb_to_tsvector', 'to_regclass', 'pg_get_expr', 'pg_get_constraintdef', 'clock_timestamp',
        'statement_timestamp', 'pg_advisory_xact_lock', 'hashtext', 'abs', 'round', 'num_nulls'])
) s
WHERE w <> '';

-- (b) functions: same name and argument types as a pg_catalog function (kind f)
-- or aggregate (kind a, plain) of such a name. "any", which no role may declare
-- in PL/pgSQL, becomes anyelement (VARIADIC "any": VARIADIC anycompatiblearray).
INSERT INTO pg_temp.trap_list (kind, what)
SELECT CASE p.prokind WHEN 'a' THEN 'aggregate' ELSE 'function' END, p.oid::pg_catalog.regprocedure::text
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
  AND p.proname IN (SELECT w FROM pg_temp.trap_words)
  AND (p.prokind = 'f' OR (p.prokind = 'a' AND EXISTS (SELECT 1 FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid = p.oid AND a.aggkind = 'n')))
  -- argument and result types a PL/pgSQL function may have
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(coalesce(p.proallargtypes, p.proargtypes::pg_catalog.oid[]) || p.prorettype) t(typ)
                  JOIN pg_catalog.pg_type y ON y.oid = t.typ
                  WHERE y.typtype = 'p' AND y.typname NOT IN ('any', 'anyelement', 'anyarray', 'anynonarray', 'anyenum', 'anyrange',
                        'anymultirange', 'anycompatible', 'anycompatiblearray', 'anycompatiblenonarray', 'anycompatiblerange',
                        'anycompatiblemultirange', 'record', 'void'))
ORDER BY 2;

DO $$
DECLARE
    t record;
    args text;
    res text;
    fn text;
BEGIN
    FOR t IN SELECT l.id, l.what, p.oid, p.proname, p.prokind, p.prorettype, p.proargtypes
             FROM pg_temp.trap_list l JOIN pg_catalog.pg_proc p ON p.oid = l.what::pg_catalog.regprocedure
             WHERE l.kind IN ('function', 'aggregate') ORDER BY l.id LOOP
        args := pg_catalog.replace(pg_catalog.replace(pg_catalog.pg_get_function_arguments(t.oid),
                    'VARIADIC "any"', 'VARIADIC anycompatiblearray'), '"any"', 'anyelement');
        res := pg_catalog.pg_get_function_result(t.oid);
        IF t.prokind = 'f' THEN
            PERFORM pg_temp.plant(t.id, ARRAY[pg_catalog.format(
                'CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS %L',
                SESSION_USER, t.proname, args, res, pg_temp.trap_body(t.id, 'pg_catalog.' || t.what))]);
        ELSE
            -- an aggregate whose transition function fires: state of the result type
            args := pg_catalog.regexp_replace(pg_catalog.pg_get_function_identity_arguments(t.oid), '"any"', 'anyelement', 'g');
            fn := pg_catalog.format('%I.trap_agg_%s', SESSION_USER, t.id);
            PERFORM pg_temp.plant(t.id, ARRAY[
                pg_catalog.format('CREATE FUNCTION %s(%s%s) RETURNS %s LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS %L',
                    fn, res, CASE WHEN args = '' THEN '' ELSE ', ' || args END, res, pg_temp.trap_body(t.id, 'pg_catalog.' || t.what)),
                pg_catalog.format('CREATE AGGREGATE %I.%I(%s) (SFUNC = %s, STYPE = %s)',
                    SESSION_USER, t.proname, CASE WHEN args = '' THEN '*' ELSE args END, fn, res)]);
        END IF;
    END LOOP;
END $$;

-- (b) operators: every pg_catalog operator whose argument and result types can
-- be declared, of the same name and argument types (=, <>, <, -, ||, ->, ->>,
-- @>, ?, ~~, ... on uuid, text, jsonb, int4, int8, oid, timestamptz, name,
-- anyarray, ...): = in an IN list, CASE, NULLIF or IS DISTINCT FROM included.
INSERT INTO pg_temp.trap_list (kind, what)
SELECT 'operator', o.oid::pg_catalog.regoperator::text
FROM pg_catalog.pg_operator o
WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace AND o.oprkind IN ('b', 'l')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type y WHERE y.oid IN (o.oprleft, o.oprright, o.oprresult) AND y.typtype = 'p'
                  AND y.typname NOT IN ('anyelement', 'anyarray', 'anynonarray', 'anyenum', 'anyrange', 'anymultirange',
                                        'anycompatible', 'anycompatiblearray', 'anycompatiblenonarray', 'anycompatiblerange',
                                        'anycompatiblemultirange', 'record'))
ORDER BY 2;

DO $$
DECLARE
    t record;
    fn text;
BEGIN
    FOR t IN SELECT l.id, l.what, o.oprname, o.oprleft, o.oprright, o.oprresult
             FROM pg_temp.trap_list l JOIN pg_catalog.pg_operator o ON o.oid = l.what::pg_catalog.regoperator
             WHERE l.kind = 'operator' ORDER BY l.id LOOP
        fn := pg_catalog.format('%I.trap_op_%s', SESSION_USER, t.id);
        PERFORM pg_temp.plant(t.id, ARRAY[
            pg_catalog.format('CREATE FUNCTION %s(%s) RETURNS %s LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS %L',
                fn, CASE WHEN t.oprleft = 0 THEN '' ELSE pg_catalog.format_type(t.oprleft, NULL) || ', ' END || pg_catalog.format_type(t.oprright, NULL),
                pg_catalog.format_type(t.oprresult, NULL), pg_temp.trap_body(t.id, 'operator pg_catalog.' || t.what)),
            pg_catalog.format('CREATE OPERATOR %I.%s (FUNCTION = %s, %sRIGHTARG = %s)', SESSION_USER, t.oprname, fn,
                CASE WHEN t.oprleft = 0 THEN '' ELSE 'LEFTARG = ' || pg_catalog.format_type(t.oprleft, NULL) || ', ' END,
                pg_catalog.format_type(t.oprright, NULL))]);
    END LOOP;
END $$;

-- (c) pg_temp views named like the pg_catalog relations the sources name and
-- like deal_store's relations; reading one fires the trap (a stable function in
-- the WHERE clause without a column: checked once, before any row is read).
INSERT INTO pg_temp.trap_list (kind, what)
SELECT 'relation', c.oid::pg_catalog.regclass::text
FROM pg_catalog.pg_class c
WHERE c.relkind IN ('r', 'v', 'p')
  AND ((c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relname IN (SELECT w FROM pg_temp.trap_words))
       OR c.relnamespace = 'deal_store'::pg_catalog.regnamespace)
ORDER BY 2;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT l.id, l.what, c.relname FROM pg_temp.trap_list l JOIN pg_catalog.pg_class c ON c.oid = l.what::pg_catalog.regclass
             WHERE l.kind = 'relation' ORDER BY l.id LOOP
        PERFORM pg_temp.plant(t.id, ARRAY[
            pg_catalog.format('CREATE FUNCTION pg_temp.trap_rel_%s() RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS %L',
                t.id, pg_temp.trap_body(t.id, 'relation ' || t.what)),
            -- (the columns a view may have: no pseudo-type, as pg_attribute.attmissingval's anyarray)
            pg_catalog.format('CREATE TEMP VIEW %I AS SELECT %s FROM %s WHERE pg_temp.trap_rel_%s()', t.relname,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
                 WHERE a.attrelid = t.what::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped AND y.typtype <> 'p'),
                t.what, t.id)]);
    END LOOP;
END $$;

-- (a) pg_temp types named like pg_catalog's base types the sources name (and
-- always the eight of the issue), with casts both ways whose functions fire.
INSERT INTO pg_temp.trap_list (kind, what)
SELECT 'type', y.typname
FROM pg_catalog.pg_type y
WHERE y.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND y.typtype = 'b' AND y.typname !~ '^_'
  AND (y.typname IN (SELECT w FROM pg_temp.trap_words)
       OR y.typname IN ('uuid', 'text', 'jsonb', 'int4', 'int8', 'bool', 'timestamptz', 'regclass'))
ORDER BY 2;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT l.id, l.what FROM pg_temp.trap_list l WHERE l.kind = 'type' ORDER BY l.id LOOP
        PERFORM pg_temp.plant(t.id, ARRAY[
            pg_catalog.format('CREATE TYPE pg_temp.%I AS (v pg_catalog.%I)', t.what, t.what),
            pg_catalog.format('CREATE FUNCTION pg_temp.trap_cast_to_%s(pg_catalog.%I) RETURNS pg_temp.%I LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS %L',
                t.id, t.what, t.what, pg_temp.trap_body(t.id, 'cast pg_catalog.' || t.what || ' -> pg_temp.' || t.what)),
            pg_catalog.format('CREATE FUNCTION pg_temp.trap_cast_from_%s(pg_temp.%I) RETURNS pg_catalog.%I LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS %L',
                t.id, t.what, t.what, pg_temp.trap_body(t.id, 'cast pg_temp.' || t.what || ' -> pg_catalog.' || t.what)),
            pg_catalog.format('CREATE CAST (pg_catalog.%I AS pg_temp.%I) WITH FUNCTION pg_temp.trap_cast_to_%s(pg_catalog.%I) AS IMPLICIT',
                t.what, t.what, t.id, t.what),
            pg_catalog.format('CREATE CAST (pg_temp.%I AS pg_catalog.%I) WITH FUNCTION pg_temp.trap_cast_from_%s(pg_temp.%I) AS IMPLICIT',
                t.what, t.what, t.id, t.what)]);
    END LOOP;
END $$;

-- The traps planted (the counts depend on the PostgreSQL version and the sources).
SELECT kind AS trap_kind, count(*) FILTER (WHERE created) AS planted, count(*) FILTER (WHERE NOT created) AS refused
FROM pg_temp.trap_list GROUP BY 1 ORDER BY 1;
DO $$
BEGIN
    -- the traps the issue names are in place, or the layer proves nothing
    IF (SELECT count(*) FROM pg_temp.trap_list l WHERE l.created AND l.what IN ('uuid', 'text', 'jsonb', 'int4', 'int8', 'bool', 'timestamptz', 'regclass',
            'unnest(anyarray)', 'now()', 'format(text,"any")', 'jsonb_build_object("any")', 'quote_ident(text)', 'to_jsonb(anyelement)',
            '=(text,text)', '=(uuid,uuid)', '-(jsonb,text)', '->>(jsonb,text)', '||(text,text)', '@>(jsonb,jsonb)', '?(jsonb,text)', '<(integer,integer)'))
       <> 22 THEN
        RAISE EXCEPTION 'traps missing: %', (SELECT pg_catalog.string_agg(l.what || ' ' || coalesce(l.created::text, 'not listed'), ', ')
                                            FROM pg_temp.trap_list l WHERE l.what IN ('uuid', 'text', 'jsonb', 'int4', 'int8', 'bool', 'timestamptz', 'regclass',
            'unnest(anyarray)', 'now()', 'format(text,"any")', 'jsonb_build_object("any")', 'quote_ident(text)', 'to_jsonb(anyelement)',
            '=(text,text)', '=(uuid,uuid)', '-(jsonb,text)', '->>(jsonb,text)', '||(text,text)', '@>(jsonb,jsonb)', '?(jsonb,text)', '<(integer,integer)'));
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- The calls. Every text here runs with the traps on: pg_catalog types,
-- functions and operators are named in full (OPERATOR(pg_catalog.=)).
CREATE TEMP TABLE calls (n serial PRIMARY KEY, label text, sql text);

-- the rows of the deal (traps_setup.sql), as the role sees them
CREATE TEMP TABLE ids (k text PRIMARY KEY, v uuid);
INSERT INTO pg_temp.ids VALUES
    ('deal', '00000000-0000-0000-0074-0000000000d1'), ('lead', '00000000-0000-0000-0074-0000000000a0'),
    ('me', (SELECT c.me FROM pg_temp.trap_cfg c)), ('document', '00000000-0000-0000-0074-0000000000c1'),
    ('fact', '00000000-0000-0000-0074-0000000000f1'), ('fact2', '00000000-0000-0000-0074-0000000000f2'),
    ('finding', '00000000-0000-0000-0074-0000000000e1'), ('link', '00000000-0000-0000-0074-0000000000b1'),
    ('gap', '00000000-0000-0000-0074-0000000000a9'),
    ('run', (SELECT r.id FROM deal_store.analysis_runs r WHERE r.deal_id = '00000000-0000-0000-0074-0000000000d1' AND r.status = 'running' ORDER BY r.run_number DESC LIMIT 1)),
    ('done_run', (SELECT r.id FROM deal_store.analysis_runs r WHERE r.deal_id = '00000000-0000-0000-0074-0000000000d1' AND r.status = 'completed' ORDER BY r.run_number LIMIT 1)),
    ('change', (SELECT c.id FROM deal_store.pending_changes c WHERE c.deal_id = '00000000-0000-0000-0074-0000000000d1' AND c.status = 'pending' LIMIT 1)),
    ('notification', (SELECT x.id FROM deal_store.notifications x WHERE x.user_id = (SELECT c.me FROM pg_temp.trap_cfg c) LIMIT 1));
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_temp.ids WHERE v IS NULL) THEN
        RAISE EXCEPTION 'the set-up is incomplete (run tests/hostile/traps_setup.sql as a superuser first): no %',
            (SELECT pg_catalog.string_agg(k, ', ') FROM pg_temp.ids WHERE v IS NULL);
    END IF;
END $$;

-- a uuid of the deal, as a literal that names pg_catalog.uuid
CREATE FUNCTION pg_temp.id(k text) RETURNS text LANGUAGE sql STABLE AS $f$
    SELECT pg_catalog.quote_literal(i.v) || '::pg_catalog.uuid' FROM pg_temp.ids i WHERE i.k = id.k
$f$;

-- A sane argument for parameter name of type typ of function fn (as in
-- tests/hostile/hostile.sql: by type, refined by name): the deal's own rows.
CREATE FUNCTION pg_temp.arg(fn text, argname text, typ pg_catalog.regtype) RETURNS text LANGUAGE sql STABLE AS $f$
SELECT CASE typ
    WHEN 'uuid'::pg_catalog.regtype THEN CASE
        WHEN argname IN ('run_id', 'run_b') THEN pg_temp.id('run')
        WHEN argname = 'run_a' THEN pg_temp.id('done_run')
        WHEN argname IN ('fact_id', 'entity_id') THEN pg_temp.id('fact')
        WHEN argname = 'change_id' THEN pg_temp.id('change')
        WHEN argname = 'gap_id' THEN pg_temp.id('gap')
        WHEN argname IN ('document_id', 'supersedes_id') THEN pg_temp.id('document')
        WHEN argname IN ('user_id', 'owner') THEN pg_temp.id('me')
        WHEN argname = 'id' THEN pg_temp.id('fact2')          -- with entity => deal_store.facts
        ELSE pg_temp.id('deal') END
    WHEN 'uuid[]'::pg_catalog.regtype THEN CASE
        WHEN argname = 'ids' THEN 'ARRAY[' || pg_temp.id('change') || ']'
        ELSE 'ARRAY[' || pg_temp.id('deal') || ']' END
    WHEN 'text'::pg_catalog.regtype THEN CASE
        WHEN argname = 'entity_type' THEN '''fact''' WHEN argname = 'change_type' THEN '''new''' WHEN argname = 'needs' THEN '''read'''
        WHEN argname IN ('query', 'q') THEN '''fibre''' WHEN argname = 'cfg' THEN '''english''' WHEN argname IN ('role', 'min_role') THEN '''viewer'''
        WHEN argname IN ('consumer', 'name') THEN pg_catalog.quote_literal('trap_' || SESSION_USER)
        WHEN argname IN ('idempotency_key', 'key') THEN '''trap-key-1''' WHEN argname = 'function_name' THEN '''propose_facts'''
        WHEN argname = 'setting' THEN '''deal_store.reason''' WHEN argname = 'decision' THEN '''defer'''
        WHEN argname = 'filename' THEN '''network-v2.pdf''' WHEN argname = 'file_hash' THEN '''hash-trap-2'''
        WHEN argname = 'storage_path' THEN '''s3://trap/network-v2.pdf''' WHEN argname = 'domain' THEN '''network'''
        ELSE '''trap layer''' END
    WHEN 'text[]'::pg_catalog.regtype THEN 'ARRAY[''network'']::pg_catalog.text[]'
    WHEN 'jsonb'::pg_catalog.regtype THEN CASE
        WHEN argname = 'findings' THEN '''[{"legacy_id": "TF-9", "finding_type": "risk", "domain": "network", "title": "Trap risk", "confidence_score": 0.9}]''::pg_catalog.jsonb'
        WHEN argname = 'gaps' THEN '''[{"legacy_id": "TG-9", "domain": "network", "description": "Trap gap", "confidence_score": 0.9}]''::pg_catalog.jsonb'
        WHEN argname = 'doc' THEN '(SELECT deal_store.export_deal(' || pg_temp.id('deal') || '))'
        WHEN argname IN ('entity_key', 'arguments', 'result') THEN 'NULL::pg_catalog.jsonb'
        WHEN argname IN ('fact', 'row_value') THEN '''{"legacy_id": "T-1", "domain": "network", "item": "Fibre ring"}''::pg_catalog.jsonb'
        ELSE '''[{"legacy_id": "T-9", "domain": "network", "item": "Trap fibre", "confidence_score": 0.9}, {"legacy_id": "T-1", "domain": "network", "item": "Fibre ring (dual)", "confidence_score": 0.5}]''::pg_catalog.jsonb' END
    WHEN 'anyelement'::pg_catalog.regtype THEN '''{"legacy_id": "T-1", "domain": "network", "item": "Fibre ring"}''::pg_catalog.jsonb'
    WHEN 'integer'::pg_catalog.regtype THEN CASE
        WHEN argname IN ('lim', 'max_rows', 'batch_size', 'max_batches') THEN '10' WHEN argname = 'max_tier' THEN '3' ELSE '1' END
    WHEN 'bigint'::pg_catalog.regtype THEN CASE WHEN argname = 'up_to' THEN '0::pg_catalog.int8' ELSE '1::pg_catalog.int8' END
    WHEN 'double precision'::pg_catalog.regtype THEN '0.5::pg_catalog.float8'
    WHEN 'boolean'::pg_catalog.regtype THEN 'false'
    WHEN 'timestamp with time zone'::pg_catalog.regtype THEN CASE WHEN argname = 'until' THEN '(pg_catalog.now() OPERATOR(pg_catalog.+) ''1 day''::pg_catalog.interval)' ELSE 'pg_catalog.now()' END
    WHEN 'interval'::pg_catalog.regtype THEN '''1 day''::pg_catalog.interval'
    WHEN 'regclass'::pg_catalog.regtype THEN '''deal_store.facts''::pg_catalog.regclass'
    WHEN 'oid'::pg_catalog.regtype THEN '''deal_store.facts''::pg_catalog.regclass::pg_catalog.oid'
    WHEN 'regconfig'::pg_catalog.regtype THEN '''english''::pg_catalog.regconfig'
    WHEN 'tsvector'::pg_catalog.regtype THEN '''fibre:1 ring:2''::pg_catalog.tsvector'
    WHEN 'tsquery'::pg_catalog.regtype THEN '''fibre''::pg_catalog.tsquery'
    ELSE 'NULL::' || typ::text END
$f$;

-- every function of schema deal_store but the trigger functions, one call each
INSERT INTO pg_temp.calls (label, sql)
SELECT f.oid::pg_catalog.regprocedure::text,
       pg_catalog.format('SELECT deal_store.%I(%s)', f.proname,
           coalesce((SELECT pg_catalog.string_agg(pg_temp.arg(f.proname, f.proargnames[i], f.proargtypes[i - 1]), ', ' ORDER BY i)
                     FROM pg_catalog.generate_series(1, f.pronargs) i), ''))
FROM pg_catalog.pg_proc f
WHERE f.pronamespace = 'deal_store'::pg_catalog.regnamespace AND f.prokind = 'f'
  AND f.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype
ORDER BY 1;

-- Writes to every audited table: a row of the deal per table (key: its WHERE),
-- a new row, and a change of a column that is not noise.
CREATE TEMP TABLE writes (tbl text PRIMARY KEY, key text, ins text, upd text);
INSERT INTO pg_temp.writes VALUES
    ('deal_store.users', 'id OPERATOR(pg_catalog.=) ' || pg_temp.id('lead'),
     $w$(email) VALUES ('trap-new@example.com')$w$, $w$display_name = 'Trap lead (renamed)'$w$),
    -- a deal of the role's own user (a user may create deals it owns)
    ('deal_store.deals', 'id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal'),
     '(user_id, name, target_name) VALUES (' || pg_temp.id('me') || $w$, 'Project Trap 2', 'Trap 2 plc')$w$, $w$name = 'Project Trap (renamed)'$w$),
    ('deal_store.documents', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('document'),
     '(deal_id, filename, file_hash, storage_path) VALUES (' || pg_temp.id('deal') || $w$, 'x.pdf', 'hash-trap-3', 's3://trap/x.pdf')$w$,
     $w$filename = 'network (renamed).pdf'$w$),
    ('deal_store.analysis_runs', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('run'),
     '(deal_id, run_number) VALUES (' || pg_temp.id('deal') || ', 99)', $w$metadata = '{"trap": true}'::pg_catalog.jsonb$w$),
    ('deal_store.facts', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('fact2'),
     '(deal_id, legacy_id, domain, item, details) VALUES (' || pg_temp.id('deal') || $w$, 'T-7', 'network', 'Trap duct', '{"km": 3}'::pg_catalog.jsonb)$w$,
     $w$item = 'Copper access (legacy)', details = '{"lines": 12}'::pg_catalog.jsonb$w$),
    ('deal_store.findings', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('finding'),
     '(deal_id, legacy_id, finding_type, domain, title) VALUES (' || pg_temp.id('deal') || $w$, 'TF-7', 'risk', 'network', 'Trap risk')$w$,
     $w$title = 'Single fibre path (confirmed)'$w$),
    ('deal_store.fact_finding_links', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('link'),
     '(deal_id, fact_id, finding_id) VALUES (' || pg_temp.id('deal') || ', ' || pg_temp.id('fact2') || ', ' || pg_temp.id('finding') || ')',
     $w$link_type = 'triggers'$w$),
    ('deal_store.gaps', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('gap'),
     '(deal_id, legacy_id, domain, description) VALUES (' || pg_temp.id('deal') || $w$, 'TG-7', 'network', 'Trap gap')$w$,
     $w$description = 'No duct survey (asked)'$w$),
    ('deal_store.pending_changes', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND id OPERATOR(pg_catalog.=) ' || pg_temp.id('change'),
     '(deal_id, change_type, entity_type, legacy_entity_id, new_value) VALUES (' || pg_temp.id('deal') || $w$, 'new', 'fact', 'T-8', '{"legacy_id": "T-8", "domain": "network", "item": "x"}'::pg_catalog.jsonb)$w$,
     $w$confidence_tier = 3$w$),
    -- the write a reader may make: marking its own notification read
    ('deal_store.notifications', 'id OPERATOR(pg_catalog.=) ' || pg_temp.id('notification'),
     '(user_id, deal_id, type, title) VALUES (' || pg_temp.id('me') || ', ' || pg_temp.id('deal') || $w$, 'review_needed', 'Trap')$w$,
     'read = true, read_at = pg_catalog.now()'),
    ('deal_store.deal_members', 'deal_id OPERATOR(pg_catalog.=) ' || pg_temp.id('deal') || ' AND user_id OPERATOR(pg_catalog.=) ' || pg_temp.id('me'),
     '(deal_id, user_id, role) VALUES (' || pg_temp.id('deal') || ', ' || pg_temp.id('lead') || $w$, 'viewer') ON CONFLICT DO NOTHING$w$,
     $w$role = 'lead'$w$);

-- the audited tables: those with the audit triggers (each must have its writes above), and
-- the written tables with the server's who / when trigger
CREATE TEMP TABLE audited AS
SELECT DISTINCT t.tgrelid::pg_catalog.regclass::text AS tbl,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.tgrelid AND a.attname = 'deleted_at' AND NOT a.attisdropped) AS soft
FROM pg_catalog.pg_trigger t
WHERE t.tgname IN ('deal_store_audit_flush', 'deal_store_audit')
   OR t.tgfoid IN ('deal_store_internal.audit_row()'::pg_catalog.regprocedure, 'deal_store_internal.audit_flush()'::pg_catalog.regprocedure)
   -- and the tables whose who / when columns the server writes (its trigger runs lookups as the owner),
   -- where the writes above name them (notifications: the one write a reader may make)
   OR (t.tgfoid OPERATOR(pg_catalog.=) 'deal_store_internal.server_columns()'::pg_catalog.regprocedure
       AND t.tgrelid::pg_catalog.regclass::text IN (SELECT w.tbl FROM pg_temp.writes w));
SELECT tbl AS audited_table_without_writes FROM pg_temp.audited WHERE tbl NOT IN (SELECT tbl FROM pg_temp.writes) ORDER BY 1;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_temp.audited WHERE tbl NOT IN (SELECT tbl FROM pg_temp.writes)) THEN
        RAISE EXCEPTION 'an audited table has no writes in tests/hostile/traps.sql (pg_temp.writes): see the list above';
    END IF;
END $$;

INSERT INTO pg_temp.calls (label, sql)
SELECT a.tbl || ' ' || x.op, x.sql
FROM pg_temp.audited a JOIN pg_temp.writes w USING (tbl),
LATERAL (VALUES
    (1, 'INSERT', pg_catalog.format('INSERT INTO %s %s', a.tbl, w.ins)),
    (2, 'UPDATE', pg_catalog.format('UPDATE %s SET %s WHERE %s', a.tbl, w.upd, w.key)),
    (3, 'DELETE', pg_catalog.format('DELETE FROM %s WHERE %s', a.tbl, w.key)),
    (4, 'soft delete by UPDATE', CASE WHEN a.soft THEN pg_catalog.format('UPDATE %s SET deleted_at = pg_catalog.now() WHERE %s', a.tbl, w.key) END),
    (5, 'soft delete by deal_store.soft_delete', CASE WHEN a.soft THEN pg_catalog.format(
        'SELECT deal_store.soft_delete(%L::pg_catalog.regclass, (SELECT x.id FROM %s x WHERE %s), ''trap layer'')', a.tbl, a.tbl, w.key) END),
    -- an insert whose rows a query reads (RETURNING in a CTE)
    (6, 'INSERT RETURNING', pg_catalog.format(
        'WITH n AS (INSERT INTO %1$s %2$s RETURNING *) SELECT pg_catalog.count(*) FROM n', a.tbl, w.ins))
) x(k, op, sql)
WHERE x.sql IS NOT NULL
ORDER BY a.tbl, x.k;

-- ---------------------------------------------------------------------------
-- A pass: each call in a subtransaction, under a search_path, rolled back.
CREATE TEMP TABLE outcome (pass text, n integer, label text, sqlstate text, nrows bigint, message text, detail text, context text,
                           fired integer[], as_superuser integer[], escalated integer[], superuser_after boolean);

CREATE FUNCTION pg_temp.run_pass(pass text, path text) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    c record;
    st text; msg text; det text; ctx text;
    nrows bigint;
    su boolean;
BEGIN
    PERFORM pg_catalog.pg_advisory_unlock_all();
    FOR c IN SELECT * FROM pg_temp.calls ORDER BY n LOOP
        su := NULL; nrows := NULL;
        BEGIN
            EXECUTE 'SET LOCAL search_path = ' || path;
            EXECUTE c.sql;
            GET DIAGNOSTICS nrows = ROW_COUNT;
            -- back to a safe path, then: did the call make the role a superuser?
            EXECUTE 'SET LOCAL search_path = pg_catalog, pg_temp';
            SELECT r.rolsuper INTO su FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER;
            -- undo whatever the call did (the path with it)
            RAISE EXCEPTION 'roll back' USING ERRCODE = 'TRAPK';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, ctx = PG_EXCEPTION_CONTEXT;
        END;
        IF st = 'TRAPK' THEN
            st := '00000'; msg := NULL; det := NULL; ctx := NULL;
        END IF;
        INSERT INTO pg_temp.outcome
        SELECT pass, c.n, c.label, st, nrows, msg, det, ctx,
               pg_catalog.array_agg(l.objid::integer ORDER BY l.objid) FILTER (WHERE l.classid = 7401),
               pg_catalog.array_agg(l.objid::integer ORDER BY l.objid) FILTER (WHERE l.classid = 7402),
               pg_catalog.array_agg(l.objid::integer ORDER BY l.objid) FILTER (WHERE l.classid = 7403), su
        FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid() AND l.objsubid = 2 AND l.classid IN (7401, 7402, 7403);
        PERFORM pg_catalog.pg_advisory_unlock_all();
    END LOOP;
END $f$;

-- With the traps on first, while the session's caches (the extension's plans,
-- its actor and team lookups) are cold: they are built under the traps.
SELECT pg_temp.run_pass('traps', (SELECT c.on_path FROM pg_temp.trap_cfg c)) \gset
SELECT pg_temp.run_pass('plain', (SELECT c.off_path FROM pg_temp.trap_cfg c)) \gset

-- ---------------------------------------------------------------------------
-- The outcomes, by SQLSTATE, with and without the traps (stable: diffable).
SELECT p.sqlstate AS plain, t.sqlstate AS traps, count(*) AS calls
FROM pg_temp.outcome p JOIN pg_temp.outcome t ON t.n = p.n AND t.pass = 'traps'
WHERE p.pass = 'plain' GROUP BY 1, 2 ORDER BY 1, 2;

-- what fired: the trap, the call, and where the extension called it
\echo 'traps that fired (none, when the extension is safe):'
SELECT o.pass, o.label AS call, l.kind || ' ' || l.what AS trap,
       CASE WHEN l.id = ANY (o.escalated) THEN 'ESCALATED to superuser' WHEN l.id = ANY (o.as_superuser) THEN 'ran as a superuser'
            ELSE 'ran as ' || SESSION_USER END AS rights
FROM pg_temp.outcome o JOIN pg_temp.trap_list l ON l.id = ANY (o.fired)
ORDER BY o.pass DESC, o.n, l.id;
\echo 'calls whose outcome the traps changed (none, when the extension is safe):'
SELECT p.label AS call, p.sqlstate || coalesce(' (' || p.nrows || ' rows)', '') AS plain,
       t.sqlstate || coalesce(' (' || t.nrows || ' rows)', '') AS traps, pg_catalog.left(t.message, 200) AS message_with_traps,
       pg_catalog.left(pg_catalog.regexp_replace(coalesce(t.detail, ''), E'\\s+', ' ', 'g'), 600) AS trap_stack
FROM pg_temp.outcome p JOIN pg_temp.outcome t ON t.n = p.n AND t.pass = 'traps'
WHERE p.pass = 'plain' AND (p.sqlstate, p.nrows) IS DISTINCT FROM (t.sqlstate, t.nrows)
ORDER BY p.n;

DO $$
DECLARE
    bad text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_temp.outcome WHERE escalated IS NOT NULL OR superuser_after)
       OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = SESSION_USER) THEN
        RAISE EXCEPTION 'TRAP LAYER FAILED: a trap made % a superuser: %', SESSION_USER,
            (SELECT pg_catalog.string_agg(DISTINCT o.label, '; ') FROM pg_temp.outcome o WHERE o.escalated IS NOT NULL OR o.superuser_after);
    END IF;
    SELECT pg_catalog.string_agg(DISTINCT o.label, '; ') INTO bad FROM pg_temp.outcome o
    WHERE o.fired IS NOT NULL OR o.message LIKE '%TRAP FIRED%' OR o.detail LIKE '%TRAP FIRED%';
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'TRAP LAYER FAILED: traps fired (as %) in: %', SESSION_USER, bad;
    END IF;
    SELECT pg_catalog.string_agg(p.label, '; ' ORDER BY p.n) INTO bad
    FROM pg_temp.outcome p JOIN pg_temp.outcome t ON t.n = p.n AND t.pass = 'traps'
    WHERE p.pass = 'plain' AND (p.sqlstate, p.nrows) IS DISTINCT FROM (t.sqlstate, t.nrows);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'TRAP LAYER FAILED: the caller''s search_path and temp objects changed the outcome (as %) of: %', SESSION_USER, bad;
    END IF;
    -- the layer exercised something: an audited write changed rows, without and with the traps
    IF NOT EXISTS (SELECT 1 FROM pg_temp.outcome o WHERE o.pass = 'plain' AND o.sqlstate = '00000' AND o.nrows > 0
                   AND o.label ~ ' (INSERT|UPDATE|DELETE)$') THEN
        RAISE EXCEPTION 'TRAP LAYER FAILED: no audited write of % changed a row: the set-up is wrong', SESSION_USER;
    END IF;
END $$;
\echo 'trap layer passed for' :USER
