-- A realistic sample deal: the carve-out of Contoso's industrial sensors
-- division. Loaded by scripts/demo once; a second run finds it and skips.
\set ON_ERROR_STOP on
SELECT NOT EXISTS (SELECT 1 FROM deal_store.deals WHERE name = 'Project Falcon' AND deleted_at IS NULL) AS need_load \gset
\if :need_load
BEGIN;
SET LOCAL deal_store.actor = '7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001';
INSERT INTO deal_store.users (id, email, display_name, roles)
VALUES ('7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001', 'dana.lead@example.com', 'Dana Lead', ARRAY['analyst', 'reviewer'])
ON CONFLICT DO NOTHING;
INSERT INTO deal_store.deals (id, user_id, name, target_name, buyer_name, deal_type, industry, sub_industry)
VALUES ('5f1a6a52-93c4-4c65-a7f4-000000000001', '7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001', 'Project Falcon',
        'Contoso Sensors Division', 'Northwind Capital', 'carve_out', 'Manufacturing', 'Industrial IoT');
INSERT INTO deal_store.documents (deal_id, id, filename, file_hash, storage_path, page_count, status, processed_at, authority_level)
VALUES
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', '5f1a6a52-93c4-4c65-a7f4-0000000000d1', 'IT_Overview_FY25.pdf', 'sha256:9b1c0d7e', '/vdr/04_IT/IT_Overview_FY25.pdf', 42, 'processed', now(), 2),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', '5f1a6a52-93c4-4c65-a7f4-0000000000d2', 'Application_Inventory.xlsx', 'sha256:4e8a22f1', '/vdr/04_IT/Application_Inventory.xlsx', 6, 'processed', now(), 1),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', '5f1a6a52-93c4-4c65-a7f4-0000000000d3', 'Security_Assessment_2025.pdf', 'sha256:c07f5a90', '/vdr/04_IT/Security_Assessment_2025.pdf', 28, 'processed', now(), 2);
SELECT deal_store.start_run('5f1a6a52-93c4-4c65-a7f4-000000000001',
       ARRAY['applications', 'infrastructure', 'organization', 'cybersecurity', 'identity_access', 'network']) AS run_id \gset
INSERT INTO deal_store.facts (deal_id, legacy_id, domain, category, item, evidence, details, confidence_score, source_document_id, source_page_numbers, analysis_run_id)
SELECT '5f1a6a52-93c4-4c65-a7f4-000000000001', f.legacy_id, f.domain, f.category, f.item, f.evidence, f.details::jsonb, f.confidence,
       ('5f1a6a52-93c4-4c65-a7f4-0000000000d' || f.doc)::uuid, f.pages, :'run_id'
FROM (VALUES
 ('F-APP-001', 'applications', 'erp', 'SAP ECC 6.0 EHP7 is the ERP for finance, procurement and production planning', 'The division runs on the group SAP ECC 6.0 instance (EHP7), shared with two other divisions.', '{"vendor": "SAP", "version": "ECC 6.0 EHP7", "shared": true}', 0.95, 2, ARRAY[3]),
 ('F-APP-002', 'applications', 'erp', 'SAP ECC mainstream maintenance ends in 2027', 'Mainstream maintenance for ECC 6.0 ends December 2027.', '{"end_of_support": "2027-12-31"}', 0.9, 1, ARRAY[7]),
 ('F-APP-003', 'applications', 'crm', 'Salesforce Sales Cloud with 140 named users', 'Sales Cloud Enterprise, 140 named users, contract held by the parent.', '{"vendor": "Salesforce", "users": 140}', 0.92, 2, ARRAY[4]),
 ('F-APP-004', 'applications', 'mes', 'Custom MES built on .NET Framework 4.6 runs the sensor assembly lines', 'The in-house MES (.NET 4.6, SQL Server 2014) controls three assembly lines.', '{"language": ".NET 4.6", "database": "SQL Server 2014"}', 0.88, 1, ARRAY[12, 13]),
 ('F-APP-005', 'applications', 'plm', 'Siemens Teamcenter PLM licences are owned by the parent', 'Teamcenter licences (60 seats) sit on the parent enterprise agreement.', '{"vendor": "Siemens", "seats": 60}', 0.85, 2, ARRAY[5]),
 ('F-APP-006', 'applications', 'hr', 'Workday HCM is shared with the parent group', 'HR processes run in the group Workday tenant.', '{"vendor": "Workday", "shared": true}', 0.9, 1, ARRAY[15]),
 ('F-APP-007', 'applications', 'bi', 'Power BI reports read directly from the SAP production database', 'Twenty-two Power BI reports query SAP tables through a direct connection.', '{"reports": 22}', 0.7, 1, ARRAY[16]),
 ('F-APP-008', 'applications', 'licensing', 'Microsoft 365 E3 for 410 users under the group agreement', 'M365 E3, 410 seats, group enterprise agreement renewing June 2026.', '{"vendor": "Microsoft", "seats": 410}', 0.93, 2, ARRAY[6]),
 ('F-APP-009', 'applications', 'integration', 'MuleSoft integration platform connects SAP, Salesforce and the MES', 'Thirty-five MuleSoft flows, operated by the group integration team.', '{"flows": 35}', 0.8, 1, ARRAY[18]),
 ('F-APP-010', 'applications', 'engineering', 'Firmware build pipeline runs on on-premises Jenkins', 'Sensor firmware is built by Jenkins on two servers in the Lyon plant.', '{"tool": "Jenkins", "servers": 2}', 0.75, 1, ARRAY[20]),
 ('F-INF-001', 'infrastructure', 'data_center', 'Primary data center is the parent''s Frankfurt colocation', 'Production workloads run in the group colocation in Frankfurt (Equinix FR5).', '{"site": "Frankfurt", "provider": "Equinix"}', 0.95, 1, ARRAY[22]),
 ('F-INF-002', 'infrastructure', 'compute', 'Ninety-four VMware virtual machines are dedicated to the division', 'VM inventory: 94 VMs tagged to the sensors division on vSphere 7.', '{"vms": 94, "hypervisor": "vSphere 7"}', 0.9, 2, ARRAY[2]),
 ('F-INF-003', 'infrastructure', 'storage', 'NetApp storage is shared across all divisions', 'Two NetApp AFF A400 arrays serve every division of the group.', '{"vendor": "NetApp", "shared": true}', 0.85, 1, ARRAY[23]),
 ('F-INF-004', 'infrastructure', 'cloud', 'Azure subscription hosts the sensor telemetry platform', 'Telemetry ingestion runs in Azure (IoT Hub, Event Hubs, Databricks).', '{"provider": "Azure", "monthly_cost_eur": 38000}', 0.9, 1, ARRAY[24, 25]),
 ('F-INF-005', 'infrastructure', 'backup', 'Backups use Veeam with 30-day retention at a secondary site', 'Veeam backups replicate nightly to the Munich site, kept 30 days.', '{"tool": "Veeam", "retention_days": 30}', 0.8, 1, ARRAY[26]),
 ('F-INF-006', 'infrastructure', 'end_user', '410 laptops are managed with Microsoft Intune', 'All 410 laptops enrolled in the group Intune tenant.', '{"devices": 410}', 0.88, 1, ARRAY[27]),
 ('F-INF-007', 'infrastructure', 'plant', 'Lyon plant runs 31 Windows 7 shop-floor PCs', 'Shop-floor PCs on Windows 7 embedded control test rigs.', '{"devices": 31, "os": "Windows 7"}', 0.82, 1, ARRAY[28]),
 ('F-INF-008', 'infrastructure', 'disaster_recovery', 'No tested disaster recovery plan for the MES', 'The MES has no documented or tested DR procedure.', '{}', 0.65, 1, ARRAY[29]),
 ('F-ORG-001', 'organization', 'headcount', 'The division IT team has 18 employees', 'IT headcount: 18 FTE (6 applications, 7 infrastructure, 5 support).', '{"fte": 18}', 0.95, 1, ARRAY[30]),
 ('F-ORG-002', 'organization', 'contractors', 'Seven contractors from Fabrikam support the MES', 'MES maintenance is performed by 7 Fabrikam contractors on time and materials.', '{"vendor": "Fabrikam", "contractors": 7}', 0.85, 1, ARRAY[31]),
 ('F-ORG-003', 'organization', 'shared_services', 'Service desk is provided by the group shared service center in Krakow', 'Level 1 and 2 support come from the group service desk in Krakow.', '{"location": "Krakow"}', 0.9, 1, ARRAY[32]),
 ('F-ORG-004', 'organization', 'leadership', 'The division has no CIO; the IT lead reports to the division CFO', 'The head of IT reports to the CFO of the division.', '{}', 0.8, 1, ARRAY[33]),
 ('F-ORG-005', 'organization', 'key_person', 'Only one engineer knows the firmware build pipeline', 'Build pipeline knowledge sits with a single senior engineer.', '{}', 0.7, 1, ARRAY[34]),
 ('F-ORG-006', 'organization', 'budget', 'Annual IT operating budget is EUR 6.2 million', 'FY25 IT opex: EUR 6.2m, of which EUR 2.1m group recharges.', '{"opex_eur": 6200000, "recharges_eur": 2100000}', 0.9, 1, ARRAY[35]),
 ('F-ORG-007', 'organization', 'contracts', 'Twelve IT contracts must be split or novated at close', 'Contract review lists 12 agreements held by the parent that serve the division.', '{"contracts": 12}', 0.78, 1, ARRAY[36]),
 ('F-CYB-001', 'cybersecurity', 'assessment', 'The 2025 penetration test found four high-severity issues', 'External pentest (March 2025): 4 high, 11 medium findings.', '{"high": 4, "medium": 11}', 0.95, 3, ARRAY[2]),
 ('F-CYB-002', 'cybersecurity', 'edr', 'CrowdStrike Falcon covers laptops and servers but not shop-floor PCs', 'EDR coverage: 100% of laptops and servers, 0% of OT devices.', '{"vendor": "CrowdStrike"}', 0.9, 3, ARRAY[5]),
 ('F-CYB-003', 'cybersecurity', 'siem', 'Security monitoring is the group Splunk SIEM run by a group SOC', 'Logs are forwarded to the group Splunk instance and monitored by the group SOC.', '{"tool": "Splunk", "shared": true}', 0.88, 3, ARRAY[6]),
 ('F-CYB-004', 'cybersecurity', 'vulnerability', 'Patch compliance for servers is 71 percent', 'Monthly patch compliance (servers): 71%.', '{"patch_compliance": 0.71}', 0.8, 3, ARRAY[8]),
 ('F-CYB-005', 'cybersecurity', 'ot_security', 'OT network has no segmentation from the office network at Lyon', 'The assessment notes a flat network between OT and IT at Lyon.', '{}', 0.85, 3, ARRAY[10]),
 ('F-CYB-006', 'cybersecurity', 'policy', 'Information security policies are the group''s and reference ISO 27001', 'The division follows group ISMS policies aligned to ISO 27001.', '{"framework": "ISO 27001"}', 0.9, 3, ARRAY[12]),
 ('F-CYB-007', 'cybersecurity', 'incident', 'A ransomware incident in 2023 affected the Lyon file server', 'Incident log: ransomware on Lyon file server, May 2023, restored from backup.', '{"year": 2023}', 0.75, 3, ARRAY[14]),
 ('F-CYB-008', 'cybersecurity', 'awareness', 'Phishing simulation click rate is 9 percent', 'Quarterly phishing simulation: 9% click rate.', '{"click_rate": 0.09}', 0.8, 3, ARRAY[15]),
 ('F-IAM-001', 'identity_access', 'directory', 'Users authenticate against the group Active Directory forest', 'Single AD forest shared by all divisions, one domain per region.', '{"shared": true}', 0.95, 1, ARRAY[37]),
 ('F-IAM-002', 'identity_access', 'sso', 'Okta provides single sign-on for 23 SaaS applications', 'Okta SSO integrated with 23 applications.', '{"vendor": "Okta", "apps": 23}', 0.9, 1, ARRAY[38]),
 ('F-IAM-003', 'identity_access', 'mfa', 'MFA coverage is 86 percent of users', 'MFA enforced for 86% of accounts; exceptions are shop-floor kiosks.', '{"coverage": 0.86}', 0.85, 3, ARRAY[17]),
 ('F-IAM-004', 'identity_access', 'privileged', 'Privileged access is managed with CyberArk for servers only', 'CyberArk vaults server admin accounts; SAP admin accounts are not vaulted.', '{"vendor": "CyberArk"}', 0.82, 3, ARRAY[18]),
 ('F-IAM-005', 'identity_access', 'joiner_mover_leaver', 'Leaver accounts are disabled manually within five days', 'Leaver process: manual ticket, target five working days.', '{"sla_days": 5}', 0.7, 1, ARRAY[39]),
 ('F-IAM-006', 'identity_access', 'sap_access', 'SAP roles are shared across divisions and need redesign for separation', 'SAP role catalogue is group-wide; 240 roles mix divisions.', '{"roles": 240}', 0.78, 2, ARRAY[5]),
 ('F-IAM-007', 'identity_access', 'service_accounts', '112 service accounts have non-expiring passwords', 'AD report: 112 service accounts with password never expires.', '{"accounts": 112}', 0.88, 3, ARRAY[19]),
 ('F-NET-001', 'network', 'wan', 'Sites connect over a group MPLS network from Orange Business', 'MPLS WAN (Orange) links Lyon, Munich and Frankfurt.', '{"provider": "Orange", "sites": 3}', 0.9, 1, ARRAY[40]),
 ('F-NET-002', 'network', 'internet', 'Internet breakout is centralised at the Frankfurt data center', 'All internet traffic egresses through Frankfurt firewalls.', '{}', 0.85, 1, ARRAY[40]),
 ('F-NET-003', 'network', 'firewall', 'Palo Alto firewalls are shared with the parent', 'Perimeter firewalls (Palo Alto PA-5220) are group assets.', '{"vendor": "Palo Alto", "shared": true}', 0.88, 1, ARRAY[41]),
 ('F-NET-004', 'network', 'lan', 'Lyon plant LAN uses Cisco Catalyst switches past end of life', 'Catalyst 3750 switches, end of support 2021.', '{"vendor": "Cisco", "model": "3750"}', 0.8, 1, ARRAY[41]),
 ('F-NET-005', 'network', 'wifi', 'Wi-Fi is Aruba, managed by the group network team', 'Aruba wireless controllers, group managed.', '{"vendor": "Aruba"}', 0.85, 1, ARRAY[42]),
 ('F-NET-006', 'network', 'remote_access', 'Remote access uses GlobalProtect VPN on the group gateway', 'GlobalProtect VPN, group gateway in Frankfurt.', '{}', 0.87, 1, ARRAY[42]),
 ('F-NET-007', 'network', 'dns', 'DNS and DHCP run on group domain controllers', 'DNS/DHCP hosted on the group AD controllers.', '{}', 0.83, 1, ARRAY[42]),
 ('F-NET-008', 'network', 'telemetry', 'Sensors send telemetry over public LTE to Azure IoT Hub', 'Field sensors use LTE SIMs (Vodafone IoT) to reach Azure.', '{"provider": "Vodafone"}', 0.78, 1, ARRAY[25]),
 ('F-NET-009', 'network', 'segmentation', 'No network access control on plant ports', 'Open switch ports on the Lyon shop floor, no 802.1X.', '{}', 0.72, 3, ARRAY[11]),
 ('F-NET-010', 'network', 'bandwidth', 'Lyon MPLS link is 200 Mbps and peaks at 85 percent', 'Bandwidth report: Lyon 200 Mbps, peak utilisation 85%.', '{"mbps": 200, "peak": 0.85}', 0.8, 1, ARRAY[43])
) AS f(legacy_id, domain, category, item, evidence, details, confidence, doc, pages);
INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title, description, severity, phase, cost_estimate_low, cost_estimate_high, cost_currency, analysis_run_id)
VALUES
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'R-001', 'risk', 'applications', 'Shared SAP instance must be separated', 'The division runs on a group SAP ECC instance; a clone-and-carve or new S/4HANA instance is needed before TSA exit.', 'critical', 'tsa', 1500000, 3000000, 'EUR', :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'R-002', 'risk', 'cybersecurity', 'Flat OT network at Lyon', 'Shop-floor PCs on Windows 7 share a network with office systems and have no EDR.', 'high', 'day_1', 150000, 400000, 'EUR', :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'W-001', 'work_item', 'network', 'Stand up an independent internet breakout and firewalls', 'All traffic egresses through group firewalls in Frankfurt.', 'medium', 'tsa', 250000, 500000, 'EUR', :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'REC-001', 'recommendation', 'identity_access', 'Build a standalone identity tenant before close', 'AD, Okta and SAP roles are all group-wide.', 'high', 'day_1', 300000, 600000, 'EUR', :'run_id');
INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id, link_type)
SELECT f.deal_id, f.id, r.id, l.link_type
FROM (VALUES ('F-APP-001', 'R-001', 'triggers'), ('F-APP-002', 'R-001', 'supports'), ('F-IAM-006', 'R-001', 'supports'),
             ('F-INF-007', 'R-002', 'supports'), ('F-CYB-005', 'R-002', 'triggers'), ('F-CYB-002', 'R-002', 'supports'),
             ('F-NET-002', 'W-001', 'triggers'), ('F-NET-003', 'W-001', 'supports'),
             ('F-IAM-001', 'REC-001', 'triggers'), ('F-IAM-002', 'REC-001', 'supports')) AS l(fact, finding, link_type)
JOIN deal_store.facts f ON f.deal_id = '5f1a6a52-93c4-4c65-a7f4-000000000001' AND f.legacy_id = l.fact
JOIN deal_store.findings r ON r.deal_id = f.deal_id AND r.legacy_id = l.finding;
INSERT INTO deal_store.gaps (deal_id, legacy_id, domain, category, description, importance, suggested_sources, analysis_run_id)
VALUES
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'G-001', 'applications', 'licensing', 'Transferability of the Siemens Teamcenter licences', 'critical', ARRAY['Siemens enterprise agreement', 'Group procurement'], :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'G-002', 'infrastructure', 'disaster_recovery', 'RTO and RPO targets for the MES and SAP', 'important', ARRAY['IT continuity plan'], :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'G-003', 'cybersecurity', 'assessment', 'Remediation status of the four high pentest findings', 'important', ARRAY['CISO', 'Pentest report appendix'], :'run_id'),
 ('5f1a6a52-93c4-4c65-a7f4-000000000001', 'G-004', 'network', 'contracts', 'Orange MPLS contract term and exit fees', 'nice_to_have', ARRAY['Network contracts folder'], :'run_id');
SELECT deal_store.complete_run(:'run_id') \g /dev/null
COMMIT;
\echo 'loaded Project Falcon'
\else
\echo 'Project Falcon is already loaded: nothing to do'
\endif
SELECT d.name, (SELECT count(*) FROM deal_store.documents x WHERE x.deal_id = d.id) AS documents,
       (SELECT count(*) FROM deal_store.facts x WHERE x.deal_id = d.id) AS facts,
       (SELECT count(*) FROM deal_store.findings x WHERE x.deal_id = d.id) AS findings,
       (SELECT count(*) FROM deal_store.gaps x WHERE x.deal_id = d.id) AS gaps,
       (SELECT count(*) FROM deal_store.fact_finding_links x WHERE x.deal_id = d.id) AS links,
       (SELECT count(*) FROM deal_store.analysis_runs x WHERE x.deal_id = d.id AND x.status = 'completed') AS completed_runs
FROM deal_store.deals d WHERE d.name = 'Project Falcon' AND d.deleted_at IS NULL;
