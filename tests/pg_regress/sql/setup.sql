-- Runs first: the extension and a helper that shows an error as SQLSTATE,
-- constraint and message, so golden files state exactly what failed. Generated
-- uuids (any not starting 00000000-) are shown as <uuid> to keep output stable.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS deal_store CASCADE;
RESET client_min_messages;
CREATE SCHEMA regress;
CREATE FUNCTION regress.expect_error(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    state text; msg text; cons text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, cons = CONSTRAINT_NAME;
    RETURN state || coalesce(' [' || nullif(cons, '') || ']', '') || ': '
        || regexp_replace(msg, '(?!00000000-)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END $$;
