-- Idempotent calls: start_run, propose_*, accept_changes and import_deal take an
-- optional idempotency_key. The first call with a key records its result; a
-- call with the same key returns that result and changes nothing; the same key
-- with other arguments is 22023. Keys are per caller role: one role's key
-- never meets another's. Two concurrent calls
-- with one key: the second waits for the first and returns its result.

CREATE TABLE deal_store.idempotency_keys (
    key           text        NOT NULL,
    function_name text        NOT NULL,
    caller        name        NOT NULL,
    arguments     text        NOT NULL,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, key),
    CONSTRAINT idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 200)
);
COMMENT ON TABLE deal_store.idempotency_keys IS
    'The results of calls made with an idempotency key (start_run, propose_*, accept_changes, import_deal), so a retried call returns the first call''s result. arguments is the MD5 of the call''s arguments.';
SELECT pg_catalog.pg_extension_config_dump('deal_store.idempotency_keys', '');

CREATE FUNCTION deal_store_internal._idempotent(key text, function_name text, arguments jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    digest text := md5(arguments::text);
    me name := deal_store_internal._caller_role();
    k deal_store.idempotency_keys;
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    ELSIF length(key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'idempotency_key must have 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    -- the first call claims the key; a concurrent one waits here for it to end
    INSERT INTO deal_store.idempotency_keys AS i (key, function_name, caller, arguments)
    VALUES (_idempotent.key, _idempotent.function_name, me, digest)
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO STRICT k FROM deal_store.idempotency_keys i WHERE i.caller = me AND i.key = _idempotent.key;
    IF k.function_name <> _idempotent.function_name OR k.arguments <> digest THEN
        RAISE EXCEPTION 'idempotency key "%" was used for another call', key USING ERRCODE = '22023',
            DETAIL = format('It was used for %s with other arguments.', k.function_name),
            HINT = 'Use a new key for a new call.';
    END IF;
    RETURN coalesce(k.result, 'null');
END $$;
COMMENT ON FUNCTION deal_store_internal._idempotent(text, text, jsonb) IS
    'Internal: NULL when the call should run (no key, or the key is new for the caller''s role: it is claimed for this call); else the result the first call with this key recorded. 22023 when the role used the key for another function or arguments.';

CREATE FUNCTION deal_store_internal._remember(key text, result jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE deal_store.idempotency_keys i SET result = _remember.result
    WHERE i.caller = deal_store_internal._caller_role() AND i.key = _remember.key;
END;
COMMENT ON FUNCTION deal_store_internal._remember(text, jsonb) IS
    'Internal: records the result of the call that claimed the key (nothing when key is NULL).';
