-- deal_store 0.1.0 -> 0.2.0, run by ALTER EXTENSION deal_store UPDATE (install
-- the 0.2.0 library first). Every change to the SQL surface since 0.1.0 has its
-- part here, in the order it was made; tests/upgrade proves that a 0.1.0
-- database upgraded by this script has the same catalog as a fresh 0.2.0
-- install and keeps every row. README "Upgrading" says what an upgrade changes.
\echo Use "ALTER EXTENSION deal_store UPDATE" to load this file. \quit

-- 0.2.0: TRUNCATE of a deal table is refused (issue 14).
CREATE FUNCTION deal_store.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% is not allowed: it would bypass soft delete and the audit log', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = '42501', HINT = 'Use deal_store.soft_delete, then deal_store.purge for rows that must go.';
END $$;
COMMENT ON FUNCTION deal_store.refuse_truncate() IS
    'Trigger (BEFORE TRUNCATE): refuses TRUNCATE of a deal table with 42501; TRUNCATE would bypass the soft-delete and audit row triggers.';
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deals', 'documents', 'analysis_runs', 'facts', 'findings', 'fact_finding_links', 'gaps',
                             'pending_changes', 'notifications'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON deal_store.%I
                                   FOR EACH STATEMENT EXECUTE FUNCTION deal_store.refuse_truncate()', t);
    END LOOP;
END $$;
