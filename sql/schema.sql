-- deal_store: the tables.
--
-- Keys are ready for scale-out by deal: every table whose rows belong to a deal
-- has deal_id NOT NULL, a primary key (deal_id, id), foreign keys that include
-- deal_id and unique constraints that include deal_id. users and deals are small
-- reference tables; the activity log and notifications may hold rows of no deal.
--
-- Columns that record *who* did something (deleted_by, decided_by, resolved_by,
-- triggered_by, user_id of the activity log) are plain uuids, not foreign keys:
-- the record of an act must outlive the account that did it.

-- The API lives in schema deal_store; the helpers it calls and the trigger
-- functions live in deal_store_internal, out of the way of \df deal_store.*.
CREATE SCHEMA deal_store_internal;
COMMENT ON SCHEMA deal_store_internal IS
    'deal_store''s internal helpers and trigger functions: called by the API in schema deal_store and by triggers, executable by the extension''s owner only (a few by the group roles whose routines run as the caller). Not an API: they change between releases.';

CREATE TABLE deal_store.users (
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    email         text        NOT NULL,
    display_name  text,
    password_hash text,
    roles         text[]      NOT NULL DEFAULT ARRAY['analyst'],
    active        boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_email_check CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$')
);
CREATE UNIQUE INDEX users_email_key ON deal_store.users (lower(email));
COMMENT ON TABLE deal_store.users IS 'People who own deals and review changes. A small reference table (replicated when distributed).';
COMMENT ON COLUMN deal_store.users.email IS 'Login e-mail; unique regardless of letter case.';
COMMENT ON COLUMN deal_store.users.roles IS 'Application roles, e.g. analyst, reviewer, admin.';
COMMENT ON COLUMN deal_store.users.password_hash IS 'Opaque hash kept for the application; never interpreted by the extension.';

CREATE TABLE deal_store.deals (
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id       uuid        NOT NULL,
    name          text        NOT NULL,
    target_name   text        NOT NULL,
    buyer_name    text,
    deal_type     text        NOT NULL DEFAULT 'carve_out',
    industry      text,
    sub_industry  text,
    status        text        NOT NULL DEFAULT 'active',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    deleted_by    uuid,
    delete_reason text,
    delete_batch  uuid,
    ignore_unknown_keys boolean NOT NULL DEFAULT false,
    CONSTRAINT deals_pkey PRIMARY KEY (id),
    CONSTRAINT deals_user_id_fkey FOREIGN KEY (user_id) REFERENCES deal_store.users (id),
    CONSTRAINT deals_name_check CHECK (btrim(name) <> ''),
    CONSTRAINT deals_deal_type_check CHECK (deal_type IN ('carve_out', 'acquisition', 'merger', 'divestiture', 'joint_venture', 'other')),
    CONSTRAINT deals_status_check CHECK (status IN ('active', 'archived', 'closed')),
    CONSTRAINT deals_deleted_check CHECK ((deleted_at IS NULL) = (delete_batch IS NULL))
);
CREATE UNIQUE INDEX deals_user_id_name_key ON deal_store.deals (user_id, name) WHERE deleted_at IS NULL;
CREATE INDEX deals_user_id_idx ON deal_store.deals (user_id);
COMMENT ON TABLE deal_store.deals IS 'A transaction under due diligence; every document, fact, finding, gap and run belongs to one. A small reference table (replicated when distributed).';
COMMENT ON COLUMN deal_store.deals.user_id IS 'Owner of the deal.';
COMMENT ON COLUMN deal_store.deals.target_name IS 'The company or business unit being acquired or carved out.';
COMMENT ON COLUMN deal_store.deals.status IS 'active, archived (hidden from default lists) or closed.';
COMMENT ON COLUMN deal_store.deals.deleted_at IS 'Soft delete: set when the deal was deleted; NULL for a live row.';
COMMENT ON COLUMN deal_store.deals.deleted_by IS 'Soft delete: the actor (deal_store.actor) who deleted it.';
COMMENT ON COLUMN deal_store.deals.delete_reason IS 'Soft delete: free-text reason given by the deleter.';
COMMENT ON COLUMN deal_store.deals.delete_batch IS 'Soft delete: shared by every row marked by one soft_delete call, so restore brings back exactly that batch.';
COMMENT ON COLUMN deal_store.deals.ignore_unknown_keys IS 'On: a key a proposal (propose_facts, propose_findings, propose_gaps) does not know is dropped; off (the default): it is an error (22023) and nothing is proposed.';

CREATE TABLE deal_store.documents (
    deal_id          uuid        NOT NULL,
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    filename         text        NOT NULL,
    file_hash        text        NOT NULL,
    content_checksum text,
    entity           text        NOT NULL DEFAULT 'target',
    authority_level  integer     NOT NULL DEFAULT 1,
    storage_path     text        NOT NULL,
    version          integer     NOT NULL DEFAULT 1,
    supersedes_id    uuid,
    extracted_text   text,
    page_count       integer,
    status           text        NOT NULL DEFAULT 'pending',
    processed_at     timestamptz,
    uploaded_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    deleted_by       uuid,
    delete_reason    text,
    delete_batch     uuid,
    CONSTRAINT documents_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT documents_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT documents_supersedes_id_fkey FOREIGN KEY (deal_id, supersedes_id)
        REFERENCES deal_store.documents (deal_id, id) ON DELETE SET NULL (supersedes_id),
    CONSTRAINT documents_entity_check CHECK (entity IN ('target', 'buyer')),
    CONSTRAINT documents_authority_level_check CHECK (authority_level BETWEEN 1 AND 5),
    CONSTRAINT documents_version_check CHECK (version >= 1),
    CONSTRAINT documents_page_count_check CHECK (page_count >= 0),
    CONSTRAINT documents_status_check CHECK (status IN ('pending', 'processing', 'processed', 'failed', 'superseded')),
    CONSTRAINT documents_file_hash_check CHECK (btrim(file_hash) <> ''),
    CONSTRAINT documents_deleted_check CHECK ((deleted_at IS NULL) = (delete_batch IS NULL))
);
CREATE INDEX documents_id_idx ON deal_store.documents (id);
CREATE UNIQUE INDEX documents_deal_id_file_hash_key ON deal_store.documents (deal_id, file_hash) WHERE deleted_at IS NULL;
CREATE INDEX documents_supersedes_id_idx ON deal_store.documents (deal_id, supersedes_id) WHERE supersedes_id IS NOT NULL;
COMMENT ON TABLE deal_store.documents IS 'Files of the data room, versioned: a re-upload is a new row whose supersedes_id names the previous version.';
COMMENT ON COLUMN deal_store.documents.file_hash IS 'Hash of the file bytes; unique per deal among live documents.';
COMMENT ON COLUMN deal_store.documents.content_checksum IS 'Checksum of the extracted text, for fast change detection.';
COMMENT ON COLUMN deal_store.documents.entity IS 'Whose document it is: target or buyer.';
COMMENT ON COLUMN deal_store.documents.authority_level IS '1 (most authoritative, e.g. signed contract) to 5 (hearsay).';
COMMENT ON COLUMN deal_store.documents.supersedes_id IS 'The previous version of this document, same deal.';
COMMENT ON COLUMN deal_store.documents.deleted_at IS 'Soft delete: see deals.deleted_at.';
COMMENT ON COLUMN deal_store.documents.delete_batch IS 'Soft delete: see deals.delete_batch.';

CREATE TABLE deal_store.analysis_runs (
    deal_id             uuid        NOT NULL,
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    run_number          integer     NOT NULL,
    is_incremental      boolean     NOT NULL DEFAULT false,
    status              text        NOT NULL DEFAULT 'running',
    domains_analyzed    text[],
    documents_processed integer     NOT NULL DEFAULT 0,
    facts_created       integer     NOT NULL DEFAULT 0,
    facts_updated       integer     NOT NULL DEFAULT 0,
    findings_created    integer     NOT NULL DEFAULT 0,
    gaps_created        integer     NOT NULL DEFAULT 0,
    error               text,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    started_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    duration_seconds    numeric(12,3),
    triggered_by        uuid,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analysis_runs_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT analysis_runs_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT analysis_runs_deal_id_run_number_key UNIQUE (deal_id, run_number),
    CONSTRAINT analysis_runs_run_number_check CHECK (run_number >= 1),
    CONSTRAINT analysis_runs_status_check CHECK (status IN ('running', 'completed', 'failed')),
    CONSTRAINT analysis_runs_finished_check CHECK ((status = 'running') = (completed_at IS NULL)),
    CONSTRAINT analysis_runs_counts_check CHECK (least(documents_processed, facts_created, facts_updated, findings_created, gaps_created) >= 0)
);
CREATE INDEX analysis_runs_id_idx ON deal_store.analysis_runs (id);
CREATE INDEX analysis_runs_completed_idx ON deal_store.analysis_runs (deal_id, run_number DESC) WHERE status = 'completed';
COMMENT ON TABLE deal_store.analysis_runs IS 'One pass of the analysis over a deal. Readers see the output of completed runs only.';
COMMENT ON COLUMN deal_store.analysis_runs.run_number IS '1, 2, 3 ... per deal, in start order.';
COMMENT ON COLUMN deal_store.analysis_runs.is_incremental IS 'An incremental run only adds and changes; it never proposes removals.';
COMMENT ON COLUMN deal_store.analysis_runs.status IS 'running, completed or failed. Rows written by a run that is not completed are stored but hidden by the current_* views.';
COMMENT ON COLUMN deal_store.analysis_runs.domains_analyzed IS 'Domains the run covers; NULL means all. Removals are only inferred inside them.';
COMMENT ON COLUMN deal_store.analysis_runs.duration_seconds IS 'completed_at - started_at, in seconds.';
COMMENT ON COLUMN deal_store.analysis_runs.triggered_by IS 'The actor who started the run.';

CREATE FUNCTION deal_store.fact_search_vector(cfg regconfig, item text, category text, domain text,
                                              evidence text, details jsonb) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.setweight(pg_catalog.to_tsvector(cfg, coalesce(item, '')), 'A')
    || pg_catalog.setweight(pg_catalog.to_tsvector(cfg, coalesce(category, '') || ' ' || coalesce(domain, '')), 'B')
    || pg_catalog.setweight(pg_catalog.to_tsvector(cfg, coalesce(evidence, '')), 'C')
    || pg_catalog.setweight(pg_catalog.jsonb_to_tsvector(cfg, coalesce(details, '{}'), '["string"]'), 'D');
COMMENT ON FUNCTION deal_store.fact_search_vector(regconfig, text, text, text, text, jsonb) IS
    'The weighted search vector of a fact: item A, category and domain B, evidence C, string values of details D.';

CREATE TABLE deal_store.facts (
    deal_id             uuid        NOT NULL,
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    legacy_id           text        NOT NULL,
    domain              text        NOT NULL,
    category            text,
    item                text        NOT NULL,
    item_checksum       text,
    status              text        NOT NULL DEFAULT 'documented',
    details             jsonb       NOT NULL DEFAULT '{}',
    evidence            text,
    confidence_score    float8      NOT NULL DEFAULT 0.5,
    entity              text        NOT NULL DEFAULT 'target',
    source_document_id  uuid,
    source_page_numbers integer[],
    previous_version_id uuid,
    superseded_at       timestamptz,
    analysis_run_id     uuid,
    verified            boolean     NOT NULL DEFAULT false,
    verified_by         text,
    verified_at         timestamptz,
    verification_status text        NOT NULL DEFAULT 'pending',
    verification_note   text,
    created_by          uuid,
    updated_by          uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    deleted_by          uuid,
    delete_reason       text,
    delete_batch        uuid,
    -- history rows are never searched: no vector to compute when a version is written
    search_vector       tsvector GENERATED ALWAYS AS (CASE WHEN superseded_at IS NULL
                            THEN deal_store.fact_search_vector('english', item, category, domain, evidence, details) END) STORED,
    CONSTRAINT facts_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT facts_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT facts_source_document_id_fkey FOREIGN KEY (deal_id, source_document_id)
        REFERENCES deal_store.documents (deal_id, id) ON DELETE SET NULL (source_document_id),
    CONSTRAINT facts_previous_version_id_fkey FOREIGN KEY (deal_id, previous_version_id)
        REFERENCES deal_store.facts (deal_id, id) ON DELETE SET NULL (previous_version_id)
        DEFERRABLE INITIALLY DEFERRED, -- the history row is written at the end of the statement
    CONSTRAINT facts_analysis_run_id_fkey FOREIGN KEY (deal_id, analysis_run_id)
        REFERENCES deal_store.analysis_runs (deal_id, id) ON DELETE SET NULL (analysis_run_id),
    CONSTRAINT facts_legacy_id_check CHECK (btrim(legacy_id) <> ''),
    CONSTRAINT facts_item_check CHECK (btrim(item) <> ''),
    CONSTRAINT facts_item_checksum_check CHECK (item_checksum ~ '^[0-9a-f]{32}$'),
    CONSTRAINT facts_confidence_score_check CHECK (confidence_score BETWEEN 0 AND 1),
    CONSTRAINT facts_entity_check CHECK (entity IN ('target', 'buyer')),
    CONSTRAINT facts_details_check CHECK (jsonb_typeof(details) = 'object'),
    CONSTRAINT facts_verification_status_check CHECK (verification_status IN ('pending', 'verified', 'disputed', 'rejected')),
    CONSTRAINT facts_deleted_check CHECK ((deleted_at IS NULL) = (delete_batch IS NULL))
);
CREATE INDEX facts_id_idx ON deal_store.facts (id);
CREATE UNIQUE INDEX facts_deal_id_legacy_id_key ON deal_store.facts (deal_id, legacy_id)
    WHERE deleted_at IS NULL AND superseded_at IS NULL;
CREATE INDEX facts_deal_id_domain_idx ON deal_store.facts (deal_id, domain)
    WHERE deleted_at IS NULL AND superseded_at IS NULL;
CREATE INDEX facts_legacy_id_idx ON deal_store.facts (deal_id, legacy_id);
CREATE INDEX facts_checksum_idx ON deal_store.facts (deal_id, item_checksum) WHERE superseded_at IS NULL;
CREATE INDEX facts_source_document_id_idx ON deal_store.facts (deal_id, source_document_id) WHERE source_document_id IS NOT NULL;
CREATE INDEX facts_previous_version_id_idx ON deal_store.facts (deal_id, previous_version_id) WHERE previous_version_id IS NOT NULL;
CREATE INDEX facts_analysis_run_id_idx ON deal_store.facts (deal_id, analysis_run_id) WHERE analysis_run_id IS NOT NULL;
-- Search reads current live facts only, so history rows and deleted facts stay out
-- of the GIN indexes: a new version or a removal then costs no GIN insertion.
CREATE INDEX facts_search_vector_idx ON deal_store.facts USING gin (search_vector)
    WHERE deleted_at IS NULL AND superseded_at IS NULL;
CREATE INDEX facts_item_trgm_idx ON deal_store.facts USING gin (item gin_trgm_ops)
    WHERE deleted_at IS NULL AND superseded_at IS NULL;
COMMENT ON TABLE deal_store.facts IS 'Statements extracted from documents. A fact keeps its id across edits; each older version is a history row (superseded_at set) chained by previous_version_id.';
COMMENT ON COLUMN deal_store.facts.legacy_id IS 'The id the analysis gave the fact (e.g. F-APP-001); unique per deal among current live facts.';
COMMENT ON COLUMN deal_store.facts.domain IS 'Analysis domain: applications, infrastructure, organization, cybersecurity, identity_access, network ...';
COMMENT ON COLUMN deal_store.facts.item_checksum IS 'MD5 (32 lowercase hex) of the canonical form of the fact''s content, for diffing.';
COMMENT ON COLUMN deal_store.facts.details IS 'Structured attributes of the fact (a JSON object).';
COMMENT ON COLUMN deal_store.facts.evidence IS 'Quoted passage the fact was extracted from.';
COMMENT ON COLUMN deal_store.facts.confidence_score IS 'Extractor confidence, 0 to 1. Not part of the content checksum.';
COMMENT ON COLUMN deal_store.facts.entity IS 'Whose fact it is: target or buyer.';
COMMENT ON COLUMN deal_store.facts.source_document_id IS 'The document the fact came from, same deal.';
COMMENT ON COLUMN deal_store.facts.previous_version_id IS 'The history row holding this fact''s previous content.';
COMMENT ON COLUMN deal_store.facts.superseded_at IS 'NULL for the current version; set on history rows.';
COMMENT ON COLUMN deal_store.facts.analysis_run_id IS 'The run that last wrote this fact; NULL when entered by hand.';
COMMENT ON COLUMN deal_store.facts.verification_status IS 'pending, verified, disputed or rejected.';
COMMENT ON COLUMN deal_store.facts.deleted_at IS 'Soft delete: see deals.deleted_at.';
COMMENT ON COLUMN deal_store.facts.search_vector IS 'Weighted full-text vector (english): item A, category and domain B, evidence C, string values of details D. NULL on history rows (never searched).';
COMMENT ON COLUMN deal_store.facts.delete_batch IS 'Soft delete: see deals.delete_batch.';

CREATE TABLE deal_store.findings (
    deal_id            uuid        NOT NULL,
    id                 uuid        NOT NULL DEFAULT gen_random_uuid(),
    legacy_id          text        NOT NULL,
    finding_type       text        NOT NULL,
    domain             text        NOT NULL,
    title              text        NOT NULL,
    description        text,
    reasoning          text,
    severity           text,
    phase              text,
    cost_estimate_low  bigint,
    cost_estimate_high bigint,
    cost_currency      text        NOT NULL DEFAULT 'USD',
    mitigation         text,
    analysis_run_id    uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    deleted_by         uuid,
    delete_reason      text,
    delete_batch       uuid,
    CONSTRAINT findings_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT findings_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT findings_analysis_run_id_fkey FOREIGN KEY (deal_id, analysis_run_id)
        REFERENCES deal_store.analysis_runs (deal_id, id) ON DELETE SET NULL (analysis_run_id),
    CONSTRAINT findings_legacy_id_check CHECK (btrim(legacy_id) <> ''),
    CONSTRAINT findings_finding_type_check CHECK (finding_type IN ('risk', 'work_item', 'recommendation')),
    CONSTRAINT findings_severity_check CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    CONSTRAINT findings_cost_check CHECK (cost_estimate_low >= 0 AND cost_estimate_low <= cost_estimate_high),
    CONSTRAINT findings_cost_currency_check CHECK (cost_currency ~ '^[A-Z]{3}$'),
    CONSTRAINT findings_deleted_check CHECK ((deleted_at IS NULL) = (delete_batch IS NULL))
);
CREATE INDEX findings_id_idx ON deal_store.findings (id);
CREATE UNIQUE INDEX findings_deal_id_legacy_id_key ON deal_store.findings (deal_id, legacy_id) WHERE deleted_at IS NULL;
CREATE INDEX findings_deal_id_type_idx ON deal_store.findings (deal_id, finding_type) WHERE deleted_at IS NULL;
CREATE INDEX findings_analysis_run_id_idx ON deal_store.findings (deal_id, analysis_run_id) WHERE analysis_run_id IS NOT NULL;
COMMENT ON TABLE deal_store.findings IS 'Conclusions reasoned from facts: risks, work items and recommendations.';
COMMENT ON COLUMN deal_store.findings.legacy_id IS 'The id the analysis gave the finding; unique per deal among live findings.';
COMMENT ON COLUMN deal_store.findings.finding_type IS 'risk, work_item or recommendation.';
COMMENT ON COLUMN deal_store.findings.severity IS 'critical, high, medium or low.';
COMMENT ON COLUMN deal_store.findings.phase IS 'When the work falls: e.g. day_1, tsa, post_close.';
COMMENT ON COLUMN deal_store.findings.cost_estimate_low IS 'Low end of the cost estimate, whole units of cost_currency.';
COMMENT ON COLUMN deal_store.findings.cost_estimate_high IS 'High end of the cost estimate, whole units of cost_currency.';
COMMENT ON COLUMN deal_store.findings.cost_currency IS 'ISO 4217 code of the cost estimate.';
COMMENT ON COLUMN deal_store.findings.analysis_run_id IS 'The run that last wrote this finding; NULL when entered by hand.';
COMMENT ON COLUMN deal_store.findings.deleted_at IS 'Soft delete: see deals.deleted_at.';
COMMENT ON COLUMN deal_store.findings.delete_batch IS 'Soft delete: see deals.delete_batch.';

CREATE TABLE deal_store.fact_finding_links (
    deal_id    uuid        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    fact_id    uuid        NOT NULL,
    finding_id uuid        NOT NULL,
    link_type  text        NOT NULL DEFAULT 'supports',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fact_finding_links_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT fact_finding_links_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT fact_finding_links_fact_id_fkey FOREIGN KEY (deal_id, fact_id)
        REFERENCES deal_store.facts (deal_id, id) ON DELETE CASCADE,
    CONSTRAINT fact_finding_links_finding_id_fkey FOREIGN KEY (deal_id, finding_id)
        REFERENCES deal_store.findings (deal_id, id) ON DELETE CASCADE,
    CONSTRAINT fact_finding_links_fact_finding_key UNIQUE (deal_id, fact_id, finding_id),
    CONSTRAINT fact_finding_links_link_type_check CHECK (link_type IN ('supports', 'triggers', 'contradicts'))
);
CREATE INDEX fact_finding_links_id_idx ON deal_store.fact_finding_links (id);
CREATE INDEX fact_finding_links_finding_id_idx ON deal_store.fact_finding_links (deal_id, finding_id);
COMMENT ON TABLE deal_store.fact_finding_links IS 'Which facts support, trigger or contradict which findings. A soft delete never removes a link; views hide links to deleted rows.';
COMMENT ON COLUMN deal_store.fact_finding_links.link_type IS 'supports, triggers or contradicts.';

CREATE TABLE deal_store.gaps (
    deal_id           uuid        NOT NULL,
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    legacy_id         text        NOT NULL,
    domain            text        NOT NULL,
    category          text,
    description       text        NOT NULL,
    importance        text        NOT NULL DEFAULT 'important',
    suggested_sources text[],
    resolved_at       timestamptz,
    resolved_by       uuid,
    resolution_note   text,
    analysis_run_id   uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    deleted_by        uuid,
    delete_reason     text,
    delete_batch      uuid,
    CONSTRAINT gaps_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT gaps_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT gaps_analysis_run_id_fkey FOREIGN KEY (deal_id, analysis_run_id)
        REFERENCES deal_store.analysis_runs (deal_id, id) ON DELETE SET NULL (analysis_run_id),
    CONSTRAINT gaps_legacy_id_check CHECK (btrim(legacy_id) <> ''),
    CONSTRAINT gaps_importance_check CHECK (importance IN ('critical', 'important', 'nice_to_have')),
    CONSTRAINT gaps_deleted_check CHECK ((deleted_at IS NULL) = (delete_batch IS NULL))
);
CREATE INDEX gaps_id_idx ON deal_store.gaps (id);
CREATE UNIQUE INDEX gaps_deal_id_legacy_id_key ON deal_store.gaps (deal_id, legacy_id) WHERE deleted_at IS NULL;
CREATE INDEX gaps_analysis_run_id_idx ON deal_store.gaps (deal_id, analysis_run_id) WHERE analysis_run_id IS NOT NULL;
COMMENT ON TABLE deal_store.gaps IS 'Missing information: questions for the data room (VDR requests).';
COMMENT ON COLUMN deal_store.gaps.legacy_id IS 'The id the analysis gave the gap; unique per deal among live gaps.';
COMMENT ON COLUMN deal_store.gaps.importance IS 'critical, important or nice_to_have.';
COMMENT ON COLUMN deal_store.gaps.suggested_sources IS 'Documents or people likely to hold the answer.';
COMMENT ON COLUMN deal_store.gaps.resolved_at IS 'When the gap was answered; NULL while open.';
COMMENT ON COLUMN deal_store.gaps.resolved_by IS 'The actor who resolved it.';
COMMENT ON COLUMN deal_store.gaps.analysis_run_id IS 'The run that last wrote this gap; NULL when entered by hand.';
COMMENT ON COLUMN deal_store.gaps.deleted_at IS 'Soft delete: see deals.deleted_at.';
COMMENT ON COLUMN deal_store.gaps.delete_batch IS 'Soft delete: see deals.delete_batch.';

CREATE TABLE deal_store.pending_changes (
    deal_id          uuid        NOT NULL,
    id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    analysis_run_id  uuid,
    change_type      text        NOT NULL,
    entity_type      text        NOT NULL,
    entity_id        uuid,
    legacy_entity_id text,
    old_value        jsonb,
    new_value        jsonb,
    base_checksum    text,
    proposed_checksum text,
    confidence_tier  integer     NOT NULL DEFAULT 2,
    status           text        NOT NULL DEFAULT 'pending',
    decided_by       uuid,
    decided_at       timestamptz,
    deferred_until   timestamptz,
    review_note      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_changes_pkey PRIMARY KEY (deal_id, id),
    CONSTRAINT pending_changes_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT pending_changes_analysis_run_id_fkey FOREIGN KEY (deal_id, analysis_run_id)
        REFERENCES deal_store.analysis_runs (deal_id, id) ON DELETE CASCADE,
    CONSTRAINT pending_changes_change_type_check CHECK (change_type IN ('new', 'update', 'delete')),
    CONSTRAINT pending_changes_entity_type_check CHECK (entity_type IN ('fact', 'finding', 'gap')),
    CONSTRAINT pending_changes_confidence_tier_check CHECK (confidence_tier BETWEEN 1 AND 3),
    CONSTRAINT pending_changes_status_check CHECK (status IN ('pending', 'accepted', 'rejected', 'deferred', 'superseded', 'conflict')),
    CONSTRAINT pending_changes_target_check CHECK (change_type = 'new' OR entity_id IS NOT NULL),
    CONSTRAINT pending_changes_decided_check CHECK ((status IN ('pending', 'deferred')) OR decided_at IS NOT NULL)
);
-- A decision rewrites the row in every index whose predicate it still meets (status
-- is in the open indexes' predicates, so the update is never HOT): the indexes are
-- few, and besides the keys and the foreign key's they cover open changes or
-- conflicts only. A deal's open changes, of one tier too, are read through
-- pending_changes_open_key's deal_id prefix.
CREATE INDEX pending_changes_id_idx ON deal_store.pending_changes (id);
CREATE INDEX pending_changes_analysis_run_id_idx ON deal_store.pending_changes (deal_id, analysis_run_id);
-- at most one open (pending or deferred) change per row
CREATE UNIQUE INDEX pending_changes_open_key ON deal_store.pending_changes (deal_id, entity_type, legacy_entity_id)
    WHERE status IN ('pending', 'deferred');
CREATE INDEX pending_changes_queue_idx ON deal_store.pending_changes (created_at, id)
    WHERE status IN ('pending', 'deferred');
CREATE INDEX pending_changes_conflict_idx ON deal_store.pending_changes (deal_id, decided_at)
    WHERE status = 'conflict';
COMMENT ON TABLE deal_store.pending_changes IS 'The merge queue: each difference a run found against stored data, waiting to be applied, reviewed or superseded.';
COMMENT ON COLUMN deal_store.pending_changes.change_type IS 'new, update or delete.';
COMMENT ON COLUMN deal_store.pending_changes.entity_type IS 'fact, finding or gap.';
COMMENT ON COLUMN deal_store.pending_changes.entity_id IS 'The target row; NULL for new.';
COMMENT ON COLUMN deal_store.pending_changes.legacy_entity_id IS 'The target''s legacy_id.';
COMMENT ON COLUMN deal_store.pending_changes.old_value IS 'The target''s content when the change was proposed.';
COMMENT ON COLUMN deal_store.pending_changes.new_value IS 'The proposed content; NULL for delete.';
COMMENT ON COLUMN deal_store.pending_changes.base_checksum IS 'The target''s checksum when the change was proposed; a different checksum at accept time is a conflict.';
COMMENT ON COLUMN deal_store.pending_changes.proposed_checksum IS 'Checksum of new_value; a proposal of the same content by the same run adds nothing.';
COMMENT ON COLUMN deal_store.pending_changes.confidence_tier IS '1 = apply now, 2 = batch review, 3 = review one by one.';
COMMENT ON COLUMN deal_store.pending_changes.status IS 'pending, accepted, rejected, deferred, superseded (a newer run proposed again) or conflict (the target moved).';
COMMENT ON COLUMN deal_store.pending_changes.decided_by IS 'The reviewer (deal_store.actor) who decided it.';
COMMENT ON COLUMN deal_store.pending_changes.deferred_until IS 'A deferred change becomes eligible again after this moment.';

CREATE TABLE deal_store.deal_activity_log (
    id              uuid        NOT NULL, -- DEFAULT deal_store.uuid_v7(), set in audit.sql beside the function
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    deal_id         uuid,
    user_id         uuid,
    action          text        NOT NULL,
    entity_type     text,
    entity_id       uuid,
    entity_key      jsonb,
    analysis_run_id uuid,
    reason          text,
    txid            bigint      NOT NULL DEFAULT txid_current(),
    details         jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deal_activity_log_pkey PRIMARY KEY (id),
    CONSTRAINT deal_activity_log_action_check CHECK (btrim(action) <> '')
);
CREATE INDEX deal_activity_log_deal_id_idx ON deal_store.deal_activity_log (deal_id, seq);
CREATE INDEX deal_activity_log_entity_idx ON deal_store.deal_activity_log (entity_id, seq);
-- hash: a composite key of any size (a btree entry is limited to a third of a page)
CREATE INDEX deal_activity_log_entity_key_idx ON deal_store.deal_activity_log USING hash (entity_key) WHERE entity_key IS NOT NULL;
COMMENT ON TABLE deal_store.deal_activity_log IS 'Audit trail: who did what to which row, when and why. Outlives the rows it describes, so it has no foreign keys.';
COMMENT ON COLUMN deal_store.deal_activity_log.seq IS 'Orders entries, even inside one transaction.';
COMMENT ON COLUMN deal_store.deal_activity_log.user_id IS 'The actor (deal_store.actor) or NULL.';
COMMENT ON COLUMN deal_store.deal_activity_log.action IS 'insert, update, soft_delete, restore, purge, or an application action.';
COMMENT ON COLUMN deal_store.deal_activity_log.entity_type IS 'The table the row belongs to.';
COMMENT ON COLUMN deal_store.deal_activity_log.entity_id IS 'The row''s id (its uuid column "id").';
COMMENT ON COLUMN deal_store.deal_activity_log.entity_key IS 'The row''s primary key as an object, for audited tables without a uuid id column.';
COMMENT ON COLUMN deal_store.deal_activity_log.reason IS 'Why: deal_store.reason when the change was made.';
COMMENT ON COLUMN deal_store.deal_activity_log.txid IS 'The transaction that made the change.';
COMMENT ON COLUMN deal_store.deal_activity_log.details IS 'What changed: the new row, the old row, or {"col": {"old": ..., "new": ...}}.';

CREATE TABLE deal_store.notifications (
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    deal_id    uuid,
    type       text        NOT NULL,
    title      text        NOT NULL,
    message    text,
    read       boolean     NOT NULL DEFAULT false,
    read_at    timestamptz,
    payload    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_pkey PRIMARY KEY (id),
    CONSTRAINT notifications_user_id_fkey FOREIGN KEY (user_id) REFERENCES deal_store.users (id) ON DELETE CASCADE,
    CONSTRAINT notifications_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT notifications_read_check CHECK (read = (read_at IS NOT NULL))
);
CREATE INDEX notifications_user_unread_idx ON deal_store.notifications (user_id, created_at DESC) WHERE NOT read;
CREATE INDEX notifications_user_id_idx ON deal_store.notifications (user_id);
CREATE INDEX notifications_deal_id_idx ON deal_store.notifications (deal_id) WHERE deal_id IS NOT NULL;
COMMENT ON TABLE deal_store.notifications IS 'Messages to users, e.g. changes waiting for review.';
COMMENT ON COLUMN deal_store.notifications.type IS 'Kind of message, e.g. review_needed.';
COMMENT ON COLUMN deal_store.notifications.payload IS 'Machine-readable details, e.g. {"run_id": ..., "counts": ...} of a review_needed message.';
COMMENT ON COLUMN deal_store.notifications.read_at IS 'When the user read it; set exactly when read is true.';

CREATE TABLE deal_store.tier_policies (
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    deal_id        uuid,
    entity_type    text,
    change_type    text        NOT NULL,
    min_confidence float8      NOT NULL DEFAULT 0,
    tier           integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tier_policies_pkey PRIMARY KEY (id),
    CONSTRAINT tier_policies_deal_id_fkey FOREIGN KEY (deal_id) REFERENCES deal_store.deals (id) ON DELETE CASCADE,
    CONSTRAINT tier_policies_rule_key UNIQUE NULLS NOT DISTINCT (deal_id, entity_type, change_type, min_confidence),
    CONSTRAINT tier_policies_entity_type_check CHECK (entity_type IN ('fact', 'finding', 'gap')),
    CONSTRAINT tier_policies_change_type_check CHECK (change_type IN ('new', 'update', 'delete')),
    CONSTRAINT tier_policies_min_confidence_check CHECK (min_confidence BETWEEN 0 AND 1),
    CONSTRAINT tier_policies_tier_check CHECK (tier BETWEEN 1 AND 3)
);
CREATE INDEX tier_policies_deal_id_idx ON deal_store.tier_policies (deal_id);
COMMENT ON TABLE deal_store.tier_policies IS 'Overrides of the merge queue''s confidence tiers. For a change, the most specific scope with a rule for its change_type decides (this deal and entity type, this deal, all deals and this entity type, all deals); in it, the rule with the highest min_confidence not above the change''s confidence gives the tier (2 when none does). Without any rule: new with confidence >= 0.8 -> 1, other new and update -> 2, delete -> 3.';
COMMENT ON COLUMN deal_store.tier_policies.deal_id IS 'The deal the rule is for; NULL for every deal.';
COMMENT ON COLUMN deal_store.tier_policies.entity_type IS 'fact, finding or gap; NULL for all three.';
COMMENT ON COLUMN deal_store.tier_policies.min_confidence IS 'The rule applies to changes whose confidence_score is at least this.';
COMMENT ON COLUMN deal_store.tier_policies.tier IS '1 = apply now, 2 = batch review, 3 = review one by one.';

-- pg_dump skips the rows of extension tables unless they are registered here.
SELECT pg_catalog.pg_extension_config_dump('deal_store.users', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.deals', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.documents', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.analysis_runs', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.facts', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.findings', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.fact_finding_links', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.gaps', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.pending_changes', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.deal_activity_log', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.deal_activity_log_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('deal_store.tier_policies', '');
