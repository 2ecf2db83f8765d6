-- Analysis-run lifecycle and the run-scoped views.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0007-0000000000a3', 'runner@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0007-0000000000d3', '00000000-0000-0000-0007-0000000000a3', 'Project Aspen', 'Aspen AG');
SET deal_store.actor = '00000000-0000-0000-0007-0000000000a3';

SELECT latest_completed_run('00000000-0000-0000-0007-0000000000d3') AS none_yet;
SELECT start_run('00000000-0000-0000-0007-0000000000d3', ARRAY['applications']) AS run1 \gset
SELECT start_run('00000000-0000-0000-0007-0000000000d3', incremental => true) AS run2 \gset
SELECT run_number, status, is_incremental, domains_analyzed, triggered_by FROM analysis_runs
WHERE deal_id = '00000000-0000-0000-0007-0000000000d3' ORDER BY run_number;

-- run 1 writes two facts, a finding and a gap; a hand-entered fact has no run
INSERT INTO facts (deal_id, legacy_id, domain, item, analysis_run_id) VALUES
 ('00000000-0000-0000-0007-0000000000d3', 'F-1', 'applications', 'Oracle EBS', :'run1'),
 ('00000000-0000-0000-0007-0000000000d3', 'F-2', 'applications', 'Workday', :'run1'),
 ('00000000-0000-0000-0007-0000000000d3', 'F-9', 'applications', 'Typed by an analyst', NULL);
INSERT INTO facts (deal_id, legacy_id, domain, item, analysis_run_id) VALUES
 ('00000000-0000-0000-0007-0000000000d3', 'F-3', 'network', 'SD-WAN', :'run2');
INSERT INTO findings (deal_id, legacy_id, finding_type, domain, title, analysis_run_id) VALUES
 ('00000000-0000-0000-0007-0000000000d3', 'R-1', 'risk', 'applications', 'EBS end of life', :'run1');
INSERT INTO gaps (deal_id, legacy_id, domain, description, analysis_run_id) VALUES
 ('00000000-0000-0000-0007-0000000000d3', 'G-1', 'applications', 'EBS licence terms', :'run1');

-- nothing of a running run is visible yet
SELECT legacy_id FROM current_facts WHERE deal_id = '00000000-0000-0000-0007-0000000000d3' ORDER BY 1;
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run1');
SELECT status, error FROM fail_run(:'run2', 'extractor crashed');
SELECT legacy_id FROM current_facts WHERE deal_id = '00000000-0000-0000-0007-0000000000d3' ORDER BY 1;
SELECT legacy_id FROM current_findings WHERE deal_id = '00000000-0000-0000-0007-0000000000d3';
SELECT legacy_id FROM current_gaps WHERE deal_id = '00000000-0000-0000-0007-0000000000d3';
SELECT run_number, status, error, completed_at IS NOT NULL AS finished, duration_seconds >= 0 AS timed,
       documents_processed, facts_created, facts_updated, findings_created, gaps_created
FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0007-0000000000d3' ORDER BY run_number;
SELECT latest_completed_run('00000000-0000-0000-0007-0000000000d3') = :'run1' AS latest_is_run1;

-- errors
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT deal_store.complete_run('$$ || :'run1' || $$')$$),
  ($$SELECT deal_store.fail_run('$$ || :'run2' || $$', 'again')$$),
  ($$SELECT deal_store.complete_run('00000000-0000-0000-0007-000000000999')$$),
  ($$SELECT deal_store.start_run('00000000-0000-0000-0007-000000000999')$$),
  ($$SELECT deal_store.start_run('00000000-0000-0000-0007-0000000000d3', ARRAY['network', NULL])$$),
  ($$SELECT deal_store.start_run('00000000-0000-0000-0007-0000000000d3', ARRAY[' '])$$)
) AS t(s);
SELECT start_run('00000000-0000-0000-0007-0000000000d3') AS run3 \gset
SELECT soft_delete('deal_store.deals', '00000000-0000-0000-0007-0000000000d3');
SELECT regress.expect_error($$SELECT deal_store.complete_run('$$ || :'run3' || $$')$$);
SELECT regress.expect_error($$SELECT deal_store.start_run('00000000-0000-0000-0007-0000000000d3')$$);
SELECT restore('deal_store.deals', '00000000-0000-0000-0007-0000000000d3');
SELECT status, facts_created, facts_updated, findings_created, gaps_created FROM complete_run(:'run3');
SELECT run_number, status FROM analysis_runs WHERE deal_id = '00000000-0000-0000-0007-0000000000d3' ORDER BY 1;
RESET deal_store.actor;
