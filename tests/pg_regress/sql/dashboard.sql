-- The dashboard reads: deal_summary, deals_for_user, archive, gap resolution.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0002-0000000000a4', 'dash@example.com');
INSERT INTO deals (id, user_id, name, target_name) VALUES
 ('00000000-0000-0000-0002-0000000000d4', '00000000-0000-0000-0002-0000000000a4', 'Project Elm', 'Elm SA'),
 ('00000000-0000-0000-0002-0000000000d9', '00000000-0000-0000-0002-0000000000a4', 'Project Fir', 'Fir Oy');
SET deal_store.actor = '00000000-0000-0000-0002-0000000000a4';
SELECT start_run('00000000-0000-0000-0002-0000000000d4') AS run \gset
INSERT INTO facts (deal_id, legacy_id, domain, item, analysis_run_id) VALUES
 ('00000000-0000-0000-0002-0000000000d4', 'F-1', 'applications', 'a', :'run'),
 ('00000000-0000-0000-0002-0000000000d4', 'F-2', 'applications', 'b', :'run'),
 ('00000000-0000-0000-0002-0000000000d4', 'F-3', 'network', 'c', :'run');
INSERT INTO findings (deal_id, legacy_id, finding_type, domain, title, severity, cost_estimate_low, cost_estimate_high, analysis_run_id) VALUES
 ('00000000-0000-0000-0002-0000000000d4', 'R-1', 'risk', 'applications', 'x', 'high', 100, 200, :'run'),
 ('00000000-0000-0000-0002-0000000000d4', 'R-2', 'risk', 'applications', 'y', 'high', 50, 70, :'run'),
 ('00000000-0000-0000-0002-0000000000d4', 'W-1', 'work_item', 'network', 'z', NULL, NULL, NULL, :'run');
INSERT INTO gaps (deal_id, id, legacy_id, domain, description, importance, analysis_run_id) VALUES
 ('00000000-0000-0000-0002-0000000000d4', '00000000-0000-0000-0002-0000000000b4', 'G-1', 'network', 'q', 'critical', :'run'),
 ('00000000-0000-0000-0002-0000000000d4', '00000000-0000-0000-0002-0000000000b5', 'G-2', 'network', 'r', 'important', :'run');
INSERT INTO pending_changes (deal_id, analysis_run_id, change_type, entity_type, legacy_entity_id, confidence_tier)
VALUES ('00000000-0000-0000-0002-0000000000d4', :'run', 'new', 'fact', 'F-4', 2);
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run');
SELECT jsonb_pretty(deal_summary('00000000-0000-0000-0002-0000000000d4') - 'latest_run' - 'deal');
SELECT deal_summary('00000000-0000-0000-0002-0000000000d4') -> 'latest_run' ->> 'facts_created' AS facts_created;

-- gaps: resolve and reopen, with the actor
SELECT resolve_gap('00000000-0000-0000-0002-0000000000b4', 'answered by CFO');
SELECT legacy_id, resolved_at IS NOT NULL AS resolved, resolved_by, resolution_note FROM gaps
WHERE deal_id = '00000000-0000-0000-0002-0000000000d4' ORDER BY 1;
SELECT deal_summary('00000000-0000-0000-0002-0000000000d4') -> 'open_gaps_by_importance' AS open_gaps;
SELECT reopen_gap('00000000-0000-0000-0002-0000000000b4');
SELECT resolved_at, resolved_by, resolution_note FROM gaps WHERE id = '00000000-0000-0000-0002-0000000000b4';

-- archive / unarchive and the user's deal list
SELECT archive_deal('00000000-0000-0000-0002-0000000000d9');
SELECT name FROM deals_for_user('00000000-0000-0000-0002-0000000000a4') ORDER BY 1;
SELECT name, status FROM deals_for_user('00000000-0000-0000-0002-0000000000a4', include_archived => true) ORDER BY 1;
SELECT unarchive_deal('00000000-0000-0000-0002-0000000000d9');
SELECT name FROM deals_for_user('00000000-0000-0000-0002-0000000000a4') ORDER BY 1;

-- errors
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT deal_store.deal_summary('00000000-0000-0000-0002-000000000999')$$),
  ($$SELECT deal_store.unarchive_deal('00000000-0000-0000-0002-0000000000d9')$$),
  ($$SELECT deal_store.archive_deal('00000000-0000-0000-0002-000000000999')$$),
  ($$SELECT deal_store.reopen_gap('00000000-0000-0000-0002-0000000000b4')$$),
  ($$SELECT deal_store.resolve_gap('00000000-0000-0000-0002-000000000999')$$)
) AS t(s);
SELECT resolve_gap('00000000-0000-0000-0002-0000000000b5');
SELECT regress.expect_error($$SELECT deal_store.resolve_gap('00000000-0000-0000-0002-0000000000b5')$$);
RESET deal_store.actor;
