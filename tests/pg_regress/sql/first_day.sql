-- A newcomer's first day: the mistakes that used to pass silently or with an
-- error that did not say what to do. Each is tried as a user would make it.
SET search_path = deal_store, public;
-- the error, its SQLSTATE and its HINT
CREATE FUNCTION regress.expect_hint(stmt text) RETURNS TABLE(sqlstate text, message text, hint text)
LANGUAGE plpgsql AS $$
DECLARE
    s text; m text; h text;
BEGIN
    EXECUTE stmt;
    RETURN QUERY SELECT 'no error', NULL::text, NULL::text;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
    RETURN QUERY SELECT s, regexp_replace(m, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
                        regexp_replace(h, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END $$;
INSERT INTO users (id, email, display_name) VALUES
  ('00000000-0000-0000-0034-0000000000a1', 'nia.new@example.com', 'Nia New');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0034-0000000000d1', '00000000-0000-0000-0034-0000000000a1', 'Project First Day', 'First AG');
SET deal_store.actor = '00000000-0000-0000-0034-0000000000a1';
SET deal_store.auto_apply = off;
-- run 1 stores 20 network facts and 4 application facts
SELECT start_run('00000000-0000-0000-0034-0000000000d1') AS run1 \gset
SELECT change_type, sum(proposed) FROM propose_facts(:'run1', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i, 'confidence_score', 0.9)) FROM generate_series(1, 20) i)) GROUP BY 1;
SELECT change_type, sum(proposed) FROM propose_facts(:'run1', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'A-' || i,
    'domain', 'applications', 'item', 'application fact ' || i, 'confidence_score', 0.9)) FROM generate_series(1, 4) i)) GROUP BY 1;
SELECT status FROM complete_run(:'run1');
SELECT * FROM accept_changes('00000000-0000-0000-0034-0000000000d1', 3, :'run1');

-- 1. a run's output in several calls: 10 + 10 of the 20 stored network facts, then
-- the application facts. No call proposes a removal, and completing removes nothing.
SELECT start_run('00000000-0000-0000-0034-0000000000d1', ARRAY['network', 'applications']) AS run2 \gset
SELECT count(*) AS first_call FROM propose_facts(:'run2', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i, 'confidence_score', 0.9)) FROM generate_series(1, 10) i));
SELECT count(*) AS second_call FROM propose_facts(:'run2', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i, 'confidence_score', 0.9)) FROM generate_series(11, 20) i));
SELECT count(*) AS third_call FROM propose_facts(:'run2', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'A-' || i,
    'domain', 'applications', 'item', 'application fact ' || i, 'confidence_score', 0.9)) FROM generate_series(1, 4) i));
SELECT status FROM complete_run(:'run2');
SELECT count(*) AS proposed_by_run2 FROM pending_changes WHERE analysis_run_id = :'run2';

-- a run that delivers 15 of the network facts in two calls and says nothing of the
-- applications: the 5 missing network facts are proposed for removal, once, when it
-- completes; the applications, a domain it never covered, keep theirs
SELECT start_run('00000000-0000-0000-0034-0000000000d1') AS run3 \gset
SELECT count(*) FROM propose_facts(:'run3', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i, 'confidence_score', 0.9)) FROM generate_series(1, 8) i));
SELECT count(*) FROM propose_facts(:'run3', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i, 'confidence_score', 0.9)) FROM generate_series(9, 15) i));
SELECT count(*) AS before_completion FROM pending_changes WHERE analysis_run_id = :'run3';
SELECT status FROM complete_run(:'run3');
SELECT change_type, string_agg(legacy_entity_id, ', ' ORDER BY legacy_entity_id) FROM pending_changes
WHERE analysis_run_id = :'run3' GROUP BY 1;
-- the working state of the run is gone with it
SELECT count(*) AS run_output_left FROM run_output WHERE deal_id = '00000000-0000-0000-0034-0000000000d1';
-- a domain a call names (here: none) covers no removal
SELECT start_run('00000000-0000-0000-0034-0000000000d1') AS run4 \gset
SELECT count(*) FROM propose_facts(:'run4', '[{"legacy_id": "N-1", "domain": "network", "item": "network fact 1"}]', ARRAY[]::text[]);
SELECT status FROM complete_run(:'run4');
SELECT count(*) AS proposed_by_run4 FROM pending_changes WHERE analysis_run_id = :'run4';
-- an incremental run never removes
SELECT start_run('00000000-0000-0000-0034-0000000000d1', incremental => true) AS run5 \gset
SELECT count(*) FROM propose_facts(:'run5', '[{"legacy_id": "N-1", "domain": "network", "item": "network fact 1"}]');
SELECT status FROM complete_run(:'run5');
SELECT count(*) AS proposed_by_run5 FROM pending_changes WHERE analysis_run_id = :'run5';

-- 2. a typo in a domain is not a new domain: 22023 naming it and the run's domains
SELECT start_run('00000000-0000-0000-0034-0000000000d1', ARRAY['network']) AS run6 \gset
SELECT * FROM regress.expect_hint(format($$SELECT * FROM deal_store.propose_facts(%L,
  '[{"legacy_id": "N-1", "domain": "network", "item": "network fact 1"}, {"legacy_id": "N-99", "domain": "netwrok", "item": "a typo"}]')$$, :'run6'));
SELECT * FROM regress.expect_hint(format($$SELECT * FROM deal_store.propose_facts(%L, '[]', ARRAY['applications'])$$, :'run6'));
SELECT count(*) AS nothing_proposed FROM pending_changes WHERE analysis_run_id = :'run6';
SELECT status FROM fail_run(:'run6', 'stopped by the test');

-- 3. one vocabulary: what changed since I looked speaks as diff_facts and the queue do
SELECT mark_seen('00000000-0000-0000-0034-0000000000d1') IS NOT NULL AS marked;
SELECT id AS change_id FROM pending_changes WHERE analysis_run_id = :'run3' AND legacy_entity_id = 'N-16' \gset
SELECT accept_change(:'change_id');
SELECT id AS fact_id FROM facts WHERE deal_id = '00000000-0000-0000-0034-0000000000d1' AND legacy_id = 'N-16' AND superseded_at IS NULL \gset
SELECT restore('deal_store.facts', :'fact_id');
-- 10 facts changed through the queue, each in two steps (two log entries)
SELECT start_run('00000000-0000-0000-0034-0000000000d1', ARRAY['network']) AS run7 \gset
SELECT count(*) FROM propose_facts(:'run7', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i || ', revised', 'confidence_score', 0.9)) FROM generate_series(1, 10) i),
    ARRAY[]::text[]);
SELECT * FROM accept_changes('00000000-0000-0000-0034-0000000000d1', 3, :'run7');
SELECT status FROM complete_run(:'run7');
SELECT start_run('00000000-0000-0000-0034-0000000000d1', ARRAY['network']) AS run8 \gset
SELECT count(*) FROM propose_facts(:'run8', (SELECT jsonb_agg(jsonb_build_object('legacy_id', 'N-' || i,
    'domain', 'network', 'item', 'network fact ' || i || ', revised twice', 'confidence_score', 0.9)) FROM generate_series(1, 10) i),
    ARRAY[]::text[]);
SELECT * FROM accept_changes('00000000-0000-0000-0034-0000000000d1', 3, :'run8');
SELECT status FROM complete_run(:'run8');
SELECT entity_type, change, changes FROM changes_since_seen('00000000-0000-0000-0034-0000000000d1') ORDER BY 1, 2;
SELECT DISTINCT change FROM changes_since_seen('00000000-0000-0000-0034-0000000000d1')
WHERE entity_type <> 'pending_change' AND change <> ALL (ARRAY['new', 'update', 'delete', 'unchanged', 'restore']);
-- unseen counts the things that changed: 10 facts updated twice and one restored, not their log rows
SELECT name, unseen FROM deals_for_user('00000000-0000-0000-0034-0000000000a1');
SELECT count(*) AS log_rows_since FROM deal_activity_log
WHERE deal_id = '00000000-0000-0000-0034-0000000000d1' AND entity_type = 'fact'
  AND seq > (SELECT seen_seq FROM seen_marks WHERE deal_id = '00000000-0000-0000-0034-0000000000d1');

-- 4. no silent no-op: a service login with no actor is told so (42501, a HINT), not UPDATE 0
RESET deal_store.actor;
-- LOGIN: on Citus the coordinator connects to the workers as the role a query runs as
CREATE ROLE first_day_service LOGIN;
GRANT deal_store_service TO first_day_service;
SET ROLE first_day_service;
SELECT * FROM regress.expect_hint($$UPDATE deal_store.facts SET item = 'edited' WHERE legacy_id = 'N-1'$$);
SELECT * FROM regress.expect_hint($$DELETE FROM deal_store.active_facts WHERE legacy_id = 'N-1'$$);
-- naming the user it acts for, the same statement works
SET deal_store.actor = '00000000-0000-0000-0034-0000000000a1';
UPDATE deal_store.facts SET item = 'network fact 1, edited by the service' WHERE deal_id = '00000000-0000-0000-0034-0000000000d1' AND legacy_id = 'N-1';
RESET ROLE;
RESET deal_store.actor;
DROP OWNED BY first_day_service;
DROP ROLE first_day_service;
SET deal_store.actor = '00000000-0000-0000-0034-0000000000a1';

-- 5. the first errors people hit say what to do
-- a committing procedure inside a transaction block
BEGIN;
CALL deal_store.process_queue();
ROLLBACK;
-- clearing deleted_at: restore() brings the row back, with what was deleted with it
SELECT soft_delete('deal_store.facts', :'fact_id', 'test') AS deleted;
SELECT * FROM regress.expect_hint(format($$UPDATE deal_store.facts SET deleted_at = NULL WHERE id = %L$$, :'fact_id'));
-- clearing delete_batch with it does not get around it
SELECT * FROM regress.expect_hint(format($$UPDATE deal_store.facts SET deleted_at = NULL, delete_batch = NULL WHERE id = %L$$, :'fact_id'));
SELECT restore('deal_store.facts', :'fact_id') AS restored;
RESET deal_store.auto_apply;
RESET deal_store.actor;

-- 6. internals out of the way: \df deal_store.* lists the API alone; every helper
-- and trigger function lives in deal_store_internal, and none of those is open to PUBLIC
SELECT count(*) AS internal_in_api_schema FROM pg_proc
WHERE pronamespace = 'deal_store'::regnamespace
  AND (proname LIKE '\_%' OR prorettype IN ('trigger'::regtype, 'event_trigger'::regtype));
SELECT count(*) > 50 AS internals_moved FROM pg_proc WHERE pronamespace = 'deal_store_internal'::regnamespace;
SELECT count(*) AS public_internals FROM pg_proc
WHERE pronamespace = 'deal_store_internal'::regnamespace AND has_function_privilege('public', oid, 'EXECUTE');

SET deal_store.actor = '00000000-0000-0000-0034-0000000000a1';
SET deal_store.auto_apply = off;
-- 7. what a run never saw is not its to remove: a fact written by a person after the
-- run started, in a domain the run covers, stays (so does one a newer run wrote)
SELECT start_run('00000000-0000-0000-0034-0000000000d1', ARRAY['network']) AS run_old \gset
SELECT count(*) FROM propose_facts(:'run_old', (SELECT jsonb_agg(jsonb_build_object('legacy_id', legacy_id,
    'domain', 'network', 'item', item, 'confidence_score', 0.9)) FROM current_facts
    WHERE deal_id = '00000000-0000-0000-0034-0000000000d1' AND domain = 'network'));
BEGIN;
SET LOCAL deal_store.reason = 'typed in by a person';
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0034-0000000000d1', 'N-50', 'network', 'added by hand');
COMMIT;
SELECT status FROM complete_run(:'run_old');
SELECT count(*) AS removals_of_unseen_rows FROM pending_changes WHERE analysis_run_id = :'run_old';
-- a domains argument is bounded: 22023, not a slow completion or an index error
SELECT * FROM regress.expect_hint(format($$SELECT * FROM deal_store.propose_facts(%L, '[]', (SELECT array_agg('d' || i) FROM generate_series(1, 1001) i))$$, :'run_old'));
SELECT * FROM regress.expect_hint(format($$SELECT * FROM deal_store.propose_facts(%L, '[]', ARRAY[repeat('x', 201)])$$, :'run_old'));
SELECT * FROM regress.expect_hint($$SELECT deal_store.start_run('00000000-0000-0000-0034-0000000000d1', (SELECT array_agg('d' || i) FROM generate_series(1, 1001) i))$$);
RESET deal_store.auto_apply;
RESET deal_store.actor;
