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
-- 0.2.0 renames the log's entity_type of deal_store's tables to the singular
-- entity names (facts -> fact): compared through that rename, nothing else may differ.
CREATE TABLE IF NOT EXISTS upgrade_check.entity_names (plural text PRIMARY KEY, singular text);
INSERT INTO upgrade_check.entity_names VALUES ('deals', 'deal'), ('documents', 'document'), ('analysis_runs', 'analysis_run'),
    ('facts', 'fact'), ('findings', 'finding'), ('gaps', 'gap'), ('fact_finding_links', 'fact_finding_link'),
    ('pending_changes', 'pending_change'), ('notifications', 'notification'), ('users', 'user'),
    ('tier_policies', 'tier_policy'), ('deal_members', 'deal_member') ON CONFLICT DO NOTHING;
SELECT format($$SELECT %L || ' ' || pg_catalog.count(*) || ' ' || coalesce(pg_catalog.md5(pg_catalog.string_agg(t::text, E'\n' ORDER BY t::text COLLATE "C")), '-') FROM (SELECT %s FROM %s) t$$,
              tbl,
              CASE WHEN tbl = 'deal_store.deal_activity_log'
                   THEN replace(cols, 'entity_type', '(SELECT coalesce(min(n.singular), x.entity_type) FROM upgrade_check.entity_names n WHERE n.plural = x.entity_type) AS entity_type')
                   ELSE cols END,
              tbl || CASE WHEN tbl = 'deal_store.deal_activity_log' THEN ' x' ELSE '' END)
FROM upgrade_check.columns ORDER BY tbl \gexec
