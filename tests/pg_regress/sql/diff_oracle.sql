-- A randomised check, seeded and repeatable: diff_facts against an independent
-- oracle in plain SQL over 10,000 random facts with random edits. The edits
-- include cosmetic ones (white space, key order, number forms) that must not
-- count as changes. Expected: no disagreement at all.
SET search_path = deal_store, public;
SELECT setseed(0.4242);
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0003-0000000000ab', 'oracle@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0003-0000000000db', '00000000-0000-0000-0003-0000000000ab', 'Oracle check', 'Random Co');
SELECT disable_audit('deal_store.facts');
CREATE TEMP TABLE words AS SELECT unnest(ARRAY['SAP', 'ERP', 'licence', 'WAN', 'MFA', 'Okta', 'backup', 'Azure', 'vendor',
    'contract', 'firewall', 'plant', 'MES', 'payroll', 'support', 'migration']) AS w;
CREATE TEMP TABLE stored AS
SELECT i, 'R-' || lpad(i::text, 5, '0') AS legacy_id,
       (ARRAY['applications', 'network', 'infrastructure', 'cybersecurity'])[1 + floor(random() * 4)::int] AS domain,
       CASE WHEN random() < 0.2 THEN NULL ELSE 'cat ' || floor(random() * 9)::int END AS category,
       (SELECT string_agg(w, ' ') FROM (SELECT w FROM words ORDER BY random() LIMIT 4) s) || ' ' || i AS item,
       (ARRAY['documented', 'partial', 'gap'])[1 + floor(random() * 3)::int] AS status,
       jsonb_build_object('n', floor(random() * 100)::int, 'tag', (ARRAY['a', 'b', 'c'])[1 + floor(random() * 3)::int],
                          'nested', jsonb_build_object('x', floor(random() * 5)::int)) AS details,
       CASE WHEN random() < 0.3 THEN NULL ELSE 'evidence ' || floor(random() * 1000)::int END AS evidence,
       (ARRAY['target', 'buyer'])[1 + floor(random() * 2)::int] AS entity,
       CASE WHEN random() < 0.5 THEN NULL ELSE ARRAY[1 + floor(random() * 50)::int, 1 + floor(random() * 50)::int] END AS pages
FROM generate_series(1, 10000) i;
INSERT INTO facts (deal_id, legacy_id, domain, category, item, status, details, evidence, entity, source_page_numbers)
SELECT '00000000-0000-0000-0003-0000000000db', legacy_id, domain, category, item, status, details, evidence, entity, pages FROM stored;

-- random edits: 8% removed; of the rest 15% a real change of one field, 20% cosmetic only; 700 new facts
CREATE TEMP TABLE edits AS
SELECT s.*, e.kind, e.field FROM stored s,
LATERAL (SELECT CASE WHEN r < 0.08 THEN 'remove' WHEN r < 0.23 THEN 'change' WHEN r < 0.43 THEN 'cosmetic' ELSE 'same' END AS kind,
                (ARRAY['domain', 'category', 'item', 'status', 'details', 'evidence', 'entity', 'source_page_numbers'])[1 + floor(random() * 8)::int] AS field
         FROM (SELECT random() + s.i * 0 AS r) x) e;
CREATE TEMP TABLE incoming AS
SELECT legacy_id, kind, field,
       CASE WHEN kind = 'change' THEN
         CASE field
           WHEN 'domain' THEN o || jsonb_build_object('domain', 'organization')
           WHEN 'category' THEN o || jsonb_build_object('category', coalesce(category, 'none') || ' x')
           WHEN 'item' THEN o || jsonb_build_object('item', item || ' revised')
           WHEN 'status' THEN o || jsonb_build_object('status', 'verified elsewhere')
           WHEN 'details' THEN o || jsonb_build_object('details', details || '{"n": -1}')
           WHEN 'evidence' THEN o || jsonb_build_object('evidence', coalesce(evidence, '') || ' more')
           WHEN 'entity' THEN o || jsonb_build_object('entity', CASE entity WHEN 'target' THEN 'buyer' ELSE 'target' END)
           ELSE o || jsonb_build_object('source_page_numbers', jsonb_build_array(999)) END
       WHEN kind = 'cosmetic' THEN
         -- the same content written differently: padded and doubled spaces, defaults left out,
         -- nulls left out, numbers as 12.0, keys in another order (jsonb does that anyway)
         (o - 'status' - 'entity' - 'evidence' - 'category')
         || jsonb_build_object('item', '  ' || replace(item, ' ', '   ') || ' ')
         || CASE WHEN status <> 'documented' THEN jsonb_build_object('status', status) ELSE '{}' END
         || CASE WHEN entity <> 'target' THEN jsonb_build_object('entity', ' ' || entity) ELSE '{}' END
         || CASE WHEN evidence IS NOT NULL THEN jsonb_build_object('evidence', evidence || E'\t') ELSE '{}' END
         || CASE WHEN category IS NOT NULL THEN jsonb_build_object('category', category) ELSE '{}' END
         || jsonb_build_object('details', jsonb_set(details, '{n}', ((details ->> 'n') || '.0')::jsonb))
       ELSE o END AS doc
FROM (SELECT e.*, jsonb_build_object('legacy_id', legacy_id, 'domain', domain, 'category', category, 'item', item,
              'status', status, 'details', details, 'evidence', evidence, 'entity', entity, 'source_page_numbers', to_jsonb(pages)) AS o
      FROM edits e WHERE kind <> 'remove') x
UNION ALL
SELECT 'N-' || i, 'new', NULL, jsonb_build_object('legacy_id', 'N-' || i, 'domain', 'network', 'item', 'new fact ' || i)
FROM generate_series(1, 700) i;

-- the oracle: plain SQL, column by column, after the same normalisation of text
CREATE FUNCTION pg_temp.norm(x text) RETURNS text LANGUAGE sql IMMUTABLE
RETURN regexp_replace(regexp_replace(x, '\s+', ' ', 'g'), '^ | $', '', 'g');
-- (views, so the merge-queue check at the end compares with the same normalisation)
CREATE TEMP VIEW norm AS
    SELECT i.legacy_id,
           ARRAY[pg_temp.norm(r.domain), pg_temp.norm(r.category), pg_temp.norm(r.item), pg_temp.norm(coalesce(r.status, 'documented')),
                 pg_temp.norm(r.evidence), pg_temp.norm(coalesce(r.entity, 'target'))] AS t,
           coalesce(r.details, '{}') AS details, r.source_page_numbers AS pages
    FROM incoming i, jsonb_to_record(i.doc) AS r(domain text, category text, item text, status text, details jsonb, evidence text,
                                                 entity text, source_page_numbers int[]);
CREATE TEMP VIEW cur AS
    SELECT legacy_id, id,
           ARRAY[pg_temp.norm(domain), pg_temp.norm(category), pg_temp.norm(item), pg_temp.norm(status),
                 pg_temp.norm(evidence), pg_temp.norm(entity)] AS t, details,
           source_page_numbers AS pages
    FROM facts WHERE deal_id = '00000000-0000-0000-0003-0000000000db' AND deleted_at IS NULL AND superseded_at IS NULL;
CREATE TEMP TABLE oracle AS
SELECT coalesce(n.legacy_id, c.legacy_id) AS legacy_id,
       CASE WHEN c.legacy_id IS NULL THEN 'new' WHEN n.legacy_id IS NULL THEN 'delete'
            WHEN n.t IS NOT DISTINCT FROM c.t AND n.details = c.details AND n.pages IS NOT DISTINCT FROM c.pages
            THEN 'unchanged' ELSE 'update' END AS change,
       CASE WHEN c.legacy_id IS NOT NULL AND n.legacy_id IS NOT NULL THEN
         array_remove(ARRAY[
           CASE WHEN n.t[2] IS DISTINCT FROM c.t[2] THEN 'category' END,
           CASE WHEN n.details <> c.details THEN 'details' END,
           CASE WHEN n.t[1] IS DISTINCT FROM c.t[1] THEN 'domain' END,
           CASE WHEN n.t[6] IS DISTINCT FROM c.t[6] THEN 'entity' END,
           CASE WHEN n.t[5] IS DISTINCT FROM c.t[5] THEN 'evidence' END,
           CASE WHEN n.t[3] IS DISTINCT FROM c.t[3] THEN 'item' END,
           CASE WHEN n.pages IS DISTINCT FROM c.pages THEN 'source_page_numbers' END,
           CASE WHEN n.t[4] IS DISTINCT FROM c.t[4] THEN 'status' END], NULL) END AS fields
FROM norm n FULL OUTER JOIN cur c ON c.legacy_id = n.legacy_id;

CREATE TEMP TABLE got AS
SELECT * FROM diff_facts('00000000-0000-0000-0003-0000000000db', (SELECT jsonb_agg(doc) FROM incoming));

SELECT kind, count(*) FROM incoming GROUP BY kind ORDER BY kind;
SELECT change, count(*) FROM got GROUP BY change ORDER BY change;
-- disagreements between diff_facts and the oracle: none
SELECT count(*) AS disagreements
FROM got g FULL OUTER JOIN oracle o ON o.legacy_id = g.legacy_id
WHERE g.legacy_id IS NULL OR o.legacy_id IS NULL OR g.change <> o.change
   OR (g.change = 'update' AND g.changed_fields IS DISTINCT FROM o.fields);
-- and the edits were classified as intended: cosmetic edits are unchanged, real edits name their field
SELECT i.kind, g.change, count(*), bool_and(i.kind <> 'change' OR g.changed_fields = ARRAY[i.field]) AS field_named
FROM incoming i JOIN got g USING (legacy_id) GROUP BY 1, 2 ORDER BY 1, 2;

-- The same random edits through the merge queue: proposed, then every change
-- accepted in one batch. Afterwards the stored facts are exactly the oracle's
-- picture: each incoming fact live with its content (after the same
-- normalisation), each removed one deleted, nothing else. (A cosmetic edit
-- pads entity, ' buyer', which would break facts_entity_check if stored; it
-- hashes as 'buyer', so it is unchanged, nothing of it is written and propose
-- does not refuse it.)
SET deal_store.auto_apply = off;
SELECT start_run('00000000-0000-0000-0003-0000000000db') AS oracle_run \gset
SELECT change_type, sum(proposed) AS proposed FROM propose_facts(:'oracle_run', (SELECT jsonb_agg(doc) FROM incoming))
GROUP BY 1 ORDER BY 1;
-- the removals are proposed when the run completes
SELECT status FROM complete_run(:'oracle_run');
SELECT change_type, count(*) AS proposed FROM pending_changes
WHERE deal_id = '00000000-0000-0000-0003-0000000000db' AND analysis_run_id = :'oracle_run' GROUP BY 1 ORDER BY 1;
-- each proposed change matches the oracle's verdict for its fact (one vocabulary: the diff's change is the queue's change_type)
SELECT count(*) AS queue_disagreements
FROM pending_changes p FULL OUTER JOIN (SELECT * FROM oracle WHERE change <> 'unchanged') o
  ON o.legacy_id = p.legacy_entity_id AND p.deal_id = '00000000-0000-0000-0003-0000000000db'
WHERE (p.deal_id IS NULL OR p.deal_id = '00000000-0000-0000-0003-0000000000db')
  AND (p.id IS NULL OR o.legacy_id IS NULL
       OR p.change_type <> o.change);
SELECT * FROM accept_changes('00000000-0000-0000-0003-0000000000db', 3);
SELECT count(*) AS stored_mismatches
FROM norm n FULL OUTER JOIN cur c ON c.legacy_id = n.legacy_id
WHERE n.legacy_id IS NULL OR c.legacy_id IS NULL
   OR n.t IS DISTINCT FROM c.t OR n.details <> c.details OR n.pages IS DISTINCT FROM c.pages;
SELECT count(*) AS removed_and_deleted FROM oracle o
JOIN facts f ON f.deal_id = '00000000-0000-0000-0003-0000000000db' AND f.legacy_id = o.legacy_id
WHERE o.change = 'delete' AND f.deleted_at IS NOT NULL AND f.superseded_at IS NULL
  AND f.delete_reason = 'removed by analysis run 1';
SELECT count(*) AS versions_written FROM facts
WHERE deal_id = '00000000-0000-0000-0003-0000000000db' AND superseded_at IS NOT NULL;
RESET deal_store.auto_apply;
-- the audit of facts comes back on for the files that follow
SELECT enable_audit('deal_store.facts');
