-- Helpers for scripts/bench: time a statement repeatedly inside the server.
CREATE SCHEMA IF NOT EXISTS bench;

-- Runs sql n times (after one warm-up run) and returns p50 / p95 / mean in ms.
CREATE OR REPLACE FUNCTION bench.measure(sql text, n integer DEFAULT 20,
    OUT p50_ms float8, OUT p95_ms float8, OUT mean_ms float8)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    times float8[] := '{}';
BEGIN
    EXECUTE sql;
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        EXECUTE sql;
        times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000)::float8;
    END LOOP;
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.95) WITHIN GROUP (ORDER BY x), avg(x)
    INTO p50_ms, p95_ms, mean_ms FROM unnest(times) x;
END $$;

-- A deterministic pseudo-random phrase of n words from a due-diligence vocabulary.
CREATE OR REPLACE FUNCTION bench.words(seed bigint, n integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    WITH v(w) AS (SELECT ARRAY['SAP','ERP','licence','migration','Oracle','database','network','firewall','MPLS','WAN',
        'LAN','Azure','AWS','cloud','backup','recovery','identity','MFA','Okta','Active','Directory','server','VMware',
        'storage','NetApp','Salesforce','CRM','Workday','payroll','contract','vendor','support','end','of','life',
        'security','patch','vulnerability','incident','SOC','SIEM','Splunk','endpoint','CrowdStrike','laptop','desktop',
        'plant','MES','PLC','OT','segmentation','VPN','remote','access','TSA','separation','carve-out','cost','budget',
        'headcount','contractor','outsourcing','service','desk','ticket','SLA','integration','MuleSoft','API','data',
        'warehouse','reporting','Power','BI','dashboard','compliance','GDPR','ISO','27001','audit','risk','capacity',
        'bandwidth','latency','router','switch','Cisco','Palo','Alto','DNS','DHCP','email','Exchange','Microsoft','365',
        'Teams','SharePoint','renewal','term','exit','fee','transfer','assignment','mainframe','COBOL','Kubernetes',
        'container','Jenkins','pipeline','firmware','sensor','telemetry','LTE','IoT','Databricks','Snowflake'])
    SELECT string_agg(v.w[1 + (abs(hashint8(seed * 1000 + i)) % cardinality(v.w))], ' ')
    FROM v, generate_series(1, n) i $$;
