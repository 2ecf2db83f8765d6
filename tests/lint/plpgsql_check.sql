-- plpgsql_check over every PL/pgSQL function of deal_store, with security and
-- extra warnings on (trigger functions against a table that uses them). Any
-- finding fails the layer; a finding that is deliberate is silenced in the
-- function itself by a `PERFORM plpgsql_check_pragma('disable:...')` with the
-- reason beside it. Run by scripts/test on PostgreSQL 15 (Debian's package).
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS plpgsql_check;
CREATE TEMP TABLE findings AS
SELECT p.oid::regprocedure::text AS fn, r.lineno, r.level, r.message, r.detail
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
LEFT JOIN LATERAL (SELECT t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid ORDER BY t.tgrelid LIMIT 1) t ON true
CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid, relid => coalesce(t.tgrelid, 0),
                                             security_warnings => true, extra_warnings => true) r
WHERE p.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace)
  AND (p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype OR t.tgrelid IS NOT NULL);
SELECT count(*) AS plpgsql_functions FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname = 'plpgsql' AND p.pronamespace IN ('deal_store'::regnamespace, 'deal_store_internal'::regnamespace);
SELECT fn, lineno, level, message, detail FROM findings ORDER BY fn, lineno;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM findings) THEN
        RAISE EXCEPTION 'plpgsql_check: % findings (listed above)', (SELECT count(*) FROM findings);
    END IF;
END $$;
