-- Full-text fact search: each query form, filters, pager, fuzzy fallback, errors.
SET search_path = deal_store, public;
INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0009-0000000000a5', 'search@example.com');
INSERT INTO deals (id, user_id, name, target_name)
VALUES ('00000000-0000-0000-0009-0000000000d5', '00000000-0000-0000-0009-0000000000a5', 'Project Larch', 'Larch AB');
INSERT INTO facts (deal_id, legacy_id, domain, category, item, evidence, details, confidence_score, entity) VALUES
 ('00000000-0000-0000-0009-0000000000d5', 'F-01', 'applications', 'erp', 'SAP ECC 6.0 runs finance and logistics', 'ERP overview page 3', '{"vendor": "SAP"}', 0.95, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-02', 'applications', 'erp', 'SAP licence is held by the parent company', 'Licence schedule', '{}', 0.9, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-03', 'applications', 'erp', 'Migration to S/4HANA planned for 2027', 'Roadmap slide mentions SAP', '{}', 0.7, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-04', 'identity_access', 'mfa', 'MFA coverage is 86 percent of users', 'Okta report', '{"tool": "Okta"}', 0.85, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-05', 'identity_access', 'mfa', 'Okta MFA is enforced for administrators', NULL, '{}', 0.8, 'buyer'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-06', 'network', 'wan', 'MPLS WAN connects three plants', 'Network diagram', '{"carrier": "Orange"}', 0.6, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-07', 'network', 'lan', 'Cisco switches past end of life', 'Asset register', '{}', 0.5, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-08', 'infrastructure', 'hosting', 'Oracle license renewal due in June', 'Oracle order form', '{}', 0.75, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-09', 'infrastructure', 'hosting', 'Data center migration to Azure in 2026', 'Cloud plan', '{}', 0.65, 'target'),
 ('00000000-0000-0000-0009-0000000000d5', 'F-10', 'infrastructure', 'backup', 'Backups replicate nightly to Munich', 'Backup policy mentions MPLS links', '{"tool": "Veeam"}', 0.7, 'target');
-- a deleted fact and an old version are never found
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0009-0000000000d5', 'F-99', 'network', 'MPLS decommissioned');
SELECT soft_delete('deal_store.facts', (SELECT id FROM facts WHERE legacy_id = 'F-99'));
UPDATE facts SET item = 'Cisco switches past end of life (replacement budgeted)' WHERE legacy_id = 'F-07';

-- words, ranked: an item hit ranks above an evidence hit
SELECT legacy_id, rank > 0 AS full_text, headline, total FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'MPLS');
SELECT legacy_id, headline FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'SAP');
-- "quoted phrase", or, -excluded
SELECT legacy_id, headline FROM search_facts('00000000-0000-0000-0009-0000000000d5', '"end of life"');
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'okta or cisco') ORDER BY legacy_id;
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'SAP -licence') ORDER BY legacy_id;
-- the last word is also a prefix while typing
SELECT legacy_id, headline FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'migra') ORDER BY legacy_id;
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'azure migra');
SELECT search_tsquery('data center migra'), search_tsquery('"end of" lif'), search_tsquery('okta or cis');
-- filters
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'okta or mfa or sap', domain => 'identity_access') ORDER BY 1;
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'okta or mfa', entity => 'buyer');
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'sap or migration', category => 'erp', min_confidence => 0.8) ORDER BY 1;
-- details and category count too (weights B and D)
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'Veeam');
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'hosting') ORDER BY 1;
-- the pager: page 1 + page 2 = the first 4 rows, no repeats, same total
SELECT legacy_id, total FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'sap or mpls or okta or migration', lim => 4);
SELECT legacy_id, total FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'sap or mpls or okta or migration', lim => 2);
SELECT legacy_id, total FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'sap or mpls or okta or migration', lim => 2, off => 2);
SELECT count(*) AS beyond_the_end FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'sap', off => 100);
-- headline tags from GUCs
SET deal_store.headline_start = '[';
SET deal_store.headline_stop = ']';
SELECT headline FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'oracle renewal');
RESET deal_store.headline_start;
RESET deal_store.headline_stop;
-- typos: trigram fallback (licence / license), then the typo-tolerant one (lisence); rank <= 0 says so
SELECT legacy_id, rank <= 0 AS fuzzy FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'licence renewel');
SELECT legacy_id, rank <= 0 AS fuzzy, total FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'lisence') ORDER BY legacy_id;
-- nothing matches, blank and NULL queries, hostile input: no rows, no error
SELECT count(*) FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'kubernetes');
SELECT count(*) FROM search_facts('00000000-0000-0000-0009-0000000000d5', '   ');
SELECT count(*) FROM search_facts('00000000-0000-0000-0009-0000000000d5', NULL);
SELECT count(*) FROM search_facts('00000000-0000-0000-0009-0000000000d5', $$'); DROP TABLE x; -- & | ! :* ( " <->$$);
SELECT count(*) FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'the or and');
-- another configuration
SET deal_store.search_config = 'simple';
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'plants');
RESET deal_store.search_config;
SELECT legacy_id FROM search_facts('00000000-0000-0000-0009-0000000000d5', 'plants');
-- errors
SELECT regress.expect_error(s) FROM (VALUES
  ($$SELECT * FROM deal_store.search_facts('00000000-0000-0000-0009-0000000000d5', 'sap', lim => 0)$$),
  ($$SELECT * FROM deal_store.search_facts('00000000-0000-0000-0009-0000000000d5', 'sap', lim => 1001)$$),
  ($$SELECT * FROM deal_store.search_facts('00000000-0000-0000-0009-0000000000d5', 'sap', off => -1)$$),
  ($$SELECT * FROM deal_store.search_deal('00000000-0000-0000-0009-0000000000d5', 'sap', lim => 0)$$)
) AS t(s);

-- one ranked list over facts, findings and gaps
INSERT INTO findings (deal_id, legacy_id, finding_type, domain, title, description) VALUES
 ('00000000-0000-0000-0009-0000000000d5', 'R-1', 'risk', 'applications', 'SAP licence transfer', 'The parent holds the SAP licence');
INSERT INTO gaps (deal_id, legacy_id, domain, description) VALUES
 ('00000000-0000-0000-0009-0000000000d5', 'G-1', 'applications', 'SAP licence agreement not in the data room');
SELECT entity_type, title, headline FROM search_deal('00000000-0000-0000-0009-0000000000d5', 'sap licence');
