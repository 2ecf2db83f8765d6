-- Runs first: the extension and a helper that shows an error as SQLSTATE,
-- constraint and message, so golden files state exactly what failed.
CREATE EXTENSION deal_store CASCADE;
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
    RETURN state || coalesce(' [' || nullif(cons, '') || ']', '') || ': ' || msg;
END $$;
