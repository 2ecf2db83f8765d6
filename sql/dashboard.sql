-- The reads and small writes a deal dashboard needs, each one call.

CREATE FUNCTION deal_store_internal._require_live_deal(deal_id uuid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM deal_store.active_deals d WHERE d.id = deal_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist or is deleted', deal_id USING ERRCODE = 'P0002';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store_internal._require_live_deal(uuid) IS 'Internal: raises P0002 unless the deal exists and is live.';

CREATE FUNCTION deal_store_internal._require_deal(deal_id uuid, needs text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF deal_id IS NULL THEN
        RAISE EXCEPTION 'deal_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- 42501 unless the caller may; P0002 (admins) when there is no such deal
    PERFORM deal_store_internal._require_right(deal_id, needs);
END $$;
COMMENT ON FUNCTION deal_store_internal._require_deal(uuid, text) IS 'Internal: raises 42501 unless the caller has the right needs (read, write, review, manage, administer) on the deal, P0002 (to a caller who sees every deal) unless the deal exists (live or deleted), 22004 for NULL.';

CREATE FUNCTION deal_store.deal_summary(deal_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    PERFORM deal_store_internal._require_live_deal(deal_id);
    RETURN jsonb_build_object(
        'deal', (SELECT jsonb_build_object('id', d.id, 'name', d.name, 'target_name', d.target_name,
                                           'deal_type', d.deal_type, 'status', d.status)
                 FROM deal_store.deals d WHERE d.id = deal_summary.deal_id),
        'facts_by_domain', coalesce((
            SELECT jsonb_object_agg(s.domain, s.n ORDER BY s.domain)
            FROM (SELECT f.domain, count(*) AS n FROM deal_store.current_facts f
                  WHERE f.deal_id = deal_summary.deal_id GROUP BY f.domain) s), '{}'),
        'findings', coalesce((
            SELECT jsonb_object_agg(t.finding_type, t.by_severity ORDER BY t.finding_type)
            FROM (SELECT s.finding_type,
                         jsonb_object_agg(s.severity, jsonb_build_object('count', s.n, 'cost_low', s.low, 'cost_high', s.high)
                                          ORDER BY s.severity) AS by_severity
                  FROM (SELECT f.finding_type, coalesce(f.severity, 'unrated') AS severity, count(*) AS n,
                               coalesce(sum(f.cost_estimate_low), 0) AS low, coalesce(sum(f.cost_estimate_high), 0) AS high
                        FROM deal_store.current_findings f WHERE f.deal_id = deal_summary.deal_id
                        GROUP BY 1, 2) s
                  GROUP BY s.finding_type) t), '{}'),
        'open_gaps_by_importance', coalesce((
            SELECT jsonb_object_agg(s.importance, s.n ORDER BY s.importance)
            FROM (SELECT g.importance, count(*) AS n FROM deal_store.current_gaps g
                  WHERE g.deal_id = deal_summary.deal_id AND g.resolved_at IS NULL GROUP BY g.importance) s), '{}'),
        'pending_changes_by_tier', coalesce((
            SELECT jsonb_object_agg(s.confidence_tier::text, s.n ORDER BY s.confidence_tier)
            FROM (SELECT c.confidence_tier, count(*) AS n FROM deal_store.pending_changes c
                  WHERE c.deal_id = deal_summary.deal_id AND c.status IN ('pending', 'deferred')
                  GROUP BY c.confidence_tier) s), '{}'),
        'latest_run', (
            SELECT jsonb_build_object('id', r.id, 'run_number', r.run_number, 'completed_at', r.completed_at,
                                      'documents_processed', r.documents_processed, 'facts_created', r.facts_created,
                                      'facts_updated', r.facts_updated, 'findings_created', r.findings_created,
                                      'gaps_created', r.gaps_created)
            FROM deal_store.analysis_runs r
            WHERE r.deal_id = deal_summary.deal_id AND r.status = 'completed'
            ORDER BY r.run_number DESC LIMIT 1));
END $$;
COMMENT ON FUNCTION deal_store.deal_summary(uuid) IS
    'Dashboard of one live deal as jsonb: current facts by domain, findings by type and severity with count and summed cost range, open gaps by importance, pending changes (pending or deferred) by tier, and the latest completed run with its counts. P0002 when the deal does not exist or is deleted.';

-- deals_for_user: sql/changes.sql (it counts what the caller has not seen).

CREATE FUNCTION deal_store_internal._set_deal_status(deal_id uuid, from_status text, to_status text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur text;
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'manage');
    SELECT d.status INTO cur FROM deal_store.active_deals d WHERE d.id = deal_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'deal % does not exist or is deleted', deal_id USING ERRCODE = 'P0002';
    ELSIF cur <> from_status THEN
        RAISE EXCEPTION 'deal % is %, not %', deal_id, cur, from_status USING ERRCODE = '55000';
    END IF;
    UPDATE deal_store.deals d SET status = to_status WHERE d.id = deal_id;
END $$;
COMMENT ON FUNCTION deal_store_internal._set_deal_status(uuid, text, text) IS 'Internal: checked status transition of a live deal.';

CREATE FUNCTION deal_store.archive_deal(deal_id uuid) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._set_deal_status(deal_id, 'active', 'archived'); END;
COMMENT ON FUNCTION deal_store.archive_deal(uuid) IS
    'Archives an active deal (hidden from deals_for_user by default). P0002 no such live deal, 55000 not active.';

CREATE FUNCTION deal_store.unarchive_deal(deal_id uuid) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._set_deal_status(deal_id, 'archived', 'active'); END;
COMMENT ON FUNCTION deal_store.unarchive_deal(uuid) IS
    'Makes an archived deal active again. P0002 no such live deal, 55000 not archived.';

CREATE FUNCTION deal_store_internal._set_gap_resolution(gap_id uuid, resolve boolean, note text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
    deal uuid := deal_store_internal._id_in_one_deal('deal_store.gaps', gap_id, 'write');
    resolved timestamptz;
    resolver uuid;
BEGIN
    SELECT x.deal_id, x.resolved_at INTO g FROM deal_store.active_gaps x WHERE x.deal_id = deal AND x.id = gap_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gap % does not exist or is deleted', gap_id USING ERRCODE = 'P0002';
    ELSIF resolve AND g.resolved_at IS NOT NULL THEN
        RAISE EXCEPTION 'gap % is already resolved', gap_id USING ERRCODE = '55000';
    ELSIF NOT resolve AND g.resolved_at IS NULL THEN
        RAISE EXCEPTION 'gap % is not resolved', gap_id USING ERRCODE = '55000';
    END IF;
    -- values first: Citus allows no stable function inside CASE in an UPDATE
    IF resolve THEN
        resolved := now();
        resolver := deal_store.current_actor();
    END IF;
    UPDATE deal_store.gaps x SET resolved_at = resolved, resolved_by = resolver, resolution_note = CASE WHEN resolve THEN note END
    WHERE x.deal_id = g.deal_id AND x.id = gap_id;
END $$;
COMMENT ON FUNCTION deal_store_internal._set_gap_resolution(uuid, boolean, text) IS 'Internal: shared body of resolve_gap and reopen_gap.';

CREATE FUNCTION deal_store.resolve_gap(gap_id uuid, note text DEFAULT NULL) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._set_gap_resolution(gap_id, true, note); END;
COMMENT ON FUNCTION deal_store.resolve_gap(uuid, text) IS
    'Marks a gap answered: resolved_at = now(), resolved_by = deal_store.actor, resolution_note = note. P0002 no such live gap, 55000 already resolved.';

CREATE FUNCTION deal_store.reopen_gap(gap_id uuid) RETURNS void
LANGUAGE sql BEGIN ATOMIC SELECT deal_store_internal._set_gap_resolution(gap_id, false, NULL); END;
COMMENT ON FUNCTION deal_store.reopen_gap(uuid) IS
    'Reopens a resolved gap (clears resolved_at, resolved_by, resolution_note). P0002 no such live gap, 55000 not resolved.';

-- ---------------------------------------------------------------------------
-- Typed views for people and BI tools: one row per thing, plain columns.

CREATE VIEW deal_store.deal_overview AS
    SELECT d.id AS deal_id, d.name, d.target_name, d.deal_type, d.status,
           d.user_id AS owner_id, u.email AS owner_email, u.display_name AS owner_name,
           coalesce(doc.documents, 0) AS documents, coalesce(fa.facts, 0) AS facts, coalesce(fi.findings, 0) AS findings,
           coalesce(fi.critical_findings, 0) AS critical_findings, coalesce(g.gaps, 0) AS gaps, coalesce(g.open_gaps, 0) AS open_gaps,
           coalesce(q.pending_tier_1, 0) AS pending_tier_1, coalesce(q.pending_tier_2, 0) AS pending_tier_2,
           coalesce(q.pending_tier_3, 0) AS pending_tier_3, coalesce(q.conflicts, 0) AS conflicts,
           r.run_number AS last_run_number, r.completed_at AS last_run_completed_at, d.updated_at
    FROM deal_store.active_deals d
    LEFT JOIN deal_store.users u ON u.id = d.user_id
    -- one aggregate per table, grouped by deal and joined on it: a filter on the
    -- deal reaches each (on Citus: one query on the deal's shards)
    LEFT JOIN (SELECT x.deal_id, count(*) AS documents FROM deal_store.active_documents x GROUP BY x.deal_id) doc ON doc.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS facts FROM deal_store.current_facts x GROUP BY x.deal_id) fa ON fa.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS findings, count(*) FILTER (WHERE x.severity = 'critical') AS critical_findings
               FROM deal_store.current_findings x GROUP BY x.deal_id) fi ON fi.deal_id = d.id
    LEFT JOIN (SELECT x.deal_id, count(*) AS gaps, count(*) FILTER (WHERE x.resolved_at IS NULL) AS open_gaps
               FROM deal_store.current_gaps x GROUP BY x.deal_id) g ON g.deal_id = d.id
    LEFT JOIN (SELECT p.deal_id,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 1) AS pending_tier_1,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 2) AS pending_tier_2,
        count(*) FILTER (WHERE p.status IN ('pending', 'deferred') AND p.confidence_tier = 3) AS pending_tier_3,
        count(*) FILTER (WHERE p.status = 'conflict') AS conflicts
        FROM deal_store.pending_changes p GROUP BY p.deal_id) q ON q.deal_id = d.id
    LEFT JOIN (SELECT DISTINCT ON (x.deal_id) x.deal_id, x.run_number, x.completed_at FROM deal_store.analysis_runs x
               WHERE x.status = 'completed' ORDER BY x.deal_id, x.run_number DESC) r ON r.deal_id = d.id;
COMMENT ON VIEW deal_store.deal_overview IS
    'One row per live deal the caller may see, plain columns for BI tools: owner (id, e-mail, display name), counts of active documents, current facts, findings (critical ones), gaps (open ones), the open merge queue by tier (pending or deferred), conflicts, and the last completed run. Key: deal_id.';

CREATE VIEW deal_store.facts_by_domain AS
    SELECT f.deal_id, f.domain, count(*) AS facts, count(*) FILTER (WHERE f.verified) AS verified,
           count(*) FILTER (WHERE f.confidence_score < 0.7) AS low_confidence,
           round(avg(f.confidence_score)::numeric, 2) AS avg_confidence,
           count(DISTINCT f.source_document_id) AS documents, max(f.updated_at) AS last_updated_at
    FROM deal_store.current_facts f
    GROUP BY f.deal_id, f.domain;
COMMENT ON VIEW deal_store.facts_by_domain IS
    'Current facts per deal and domain: how many, verified, below 0.7 confidence, the average confidence, the documents they come from, the last change. Key: (deal_id, domain).';

CREATE VIEW deal_store.activity AS
    SELECT l.seq, l.created_at, l.deal_id, d.name AS deal_name, l.user_id, u.email AS user_email,
           u.display_name AS user_name, l.action, l.entity_type, l.entity_id, l.entity_key, l.reason,
           l.analysis_run_id, l.details, l.id, l.txid
    FROM deal_store.deal_activity_log l
    LEFT JOIN deal_store.users u ON u.id = l.user_id
    LEFT JOIN deal_store.deals d ON d.id = l.deal_id;
COMMENT ON VIEW deal_store.activity IS
    'The audit log for people: every entry the caller may see with the deal''s name and the actor''s e-mail and display name (NULL when the actor is unknown or no longer exists). Key: id (seq orders).';
