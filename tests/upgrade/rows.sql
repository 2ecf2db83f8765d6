-- Every deal_store table's rows: a count and an MD5 over each row's text (its
-- stored, not generated, columns), in a stable order. Taken before and after the upgrade over the columns each table
-- had before it (recorded in upgrade_check.columns by the first call); they
-- must be equal except where README's "What an upgrade changes" says otherwise.
\set ON_ERROR_STOP on
\pset format unaligned
\pset tuples_only on
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS upgrade_check;
CREATE TABLE IF NOT EXISTS upgrade_check.columns AS
SELECT c.oid::regclass::text AS tbl,
       pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) AS cols
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = '' -- stored data; a generated column is derived from it (0.2.0 leaves history rows' search_vector NULL)
WHERE c.relnamespace = 'deal_store'::regnamespace AND c.relkind IN ('r', 'p')
GROUP BY c.oid;
SELECT format($$SELECT %L || ' ' || pg_catalog.count(*) || ' ' || coalesce(pg_catalog.md5(pg_catalog.string_agg(t::text, E'\n' ORDER BY t::text COLLATE "C")), '-') FROM (SELECT %s FROM %s) t$$,
              tbl, cols, tbl)
FROM upgrade_check.columns ORDER BY tbl \gexec
