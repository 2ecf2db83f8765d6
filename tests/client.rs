//! Client test from outside: a real TCP connection with a Rust PostgreSQL client.
//!
//! Runs when DEAL_STORE_TEST_URL names a database where deal_store can be
//! created (scripts/test sets it); otherwise it says so and skips.
//! 1. writes a deal, documents, facts, findings and links with plain SQL and reads them back;
//! 2. pg_dump -Fc / pg_restore into a second database and compares, table by table,
//!    the row count and a checksum over every row.
use postgres::{Client, NoTls};
use std::process::Command;

const TABLES: [&str; 12] = [
    "users", "deals", "documents", "analysis_runs", "facts", "findings",
    "fact_finding_links", "gaps", "pending_changes", "deal_activity_log", "notifications", "tier_policies",
];

fn url() -> Option<String> {
    std::env::var("DEAL_STORE_TEST_URL").ok()
}

fn with_db(url: &str, db: &str) -> String {
    format!("{url} dbname={db}")
}

fn pg_tool(name: &str) -> String {
    let bin = std::env::var("DEAL_STORE_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{bin}/{name}")
}

/// Row count and an order-independent checksum of every row of every table.
fn fingerprint(c: &mut Client) -> Vec<(String, i64, String)> {
    TABLES
        .iter()
        .map(|t| {
            let sql = format!(
                "SELECT count(*), coalesce(md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))), '') \
                 FROM deal_store.{t} x"
            );
            let row = c.query_one(sql.as_str(), &[]).expect("fingerprint");
            (t.to_string(), row.get(0), row.get(1))
        })
        .collect()
}

fn load_deal(c: &mut Client) -> uuid::Uuid {
    let mut tx = c.transaction().unwrap();
    let user: uuid::Uuid = tx
        .query_one("INSERT INTO deal_store.users (email) VALUES ('lead@example.com') RETURNING id", &[])
        .unwrap()
        .get(0);
    let deal: uuid::Uuid = tx
        .query_one(
            "INSERT INTO deal_store.deals (user_id, name, target_name) VALUES ($1, 'Project Oak', 'Oak GmbH') RETURNING id",
            &[&user],
        )
        .unwrap()
        .get(0);
    let doc: uuid::Uuid = tx
        .query_one(
            "INSERT INTO deal_store.documents (deal_id, filename, file_hash, storage_path) \
             VALUES ($1, 'it-overview.pdf', 'abc123', '/vdr/it-overview.pdf') RETURNING id",
            &[&deal],
        )
        .unwrap()
        .get(0);
    for i in 1..=20 {
        tx.execute(
            "INSERT INTO deal_store.facts (deal_id, legacy_id, domain, item, evidence, details, source_document_id, source_page_numbers) \
             VALUES ($1, $2, 'applications', $3, 'see page ' || $4::int, $5, $6, ARRAY[$4::int])",
            &[&deal, &format!("F-APP-{i:03}"), &format!("Application {i} runs on Oracle 19c"), &i,
              &serde_json::json!({"users": i * 10, "vendor": "Oracle"}), &doc],
        )
        .unwrap();
    }
    let finding: uuid::Uuid = tx
        .query_one(
            "INSERT INTO deal_store.findings (deal_id, legacy_id, finding_type, domain, title, severity, cost_estimate_low, cost_estimate_high) \
             VALUES ($1, 'R-001', 'risk', 'applications', 'Oracle licences do not transfer', 'high', 100000, 250000) RETURNING id",
            &[&deal],
        )
        .unwrap()
        .get(0);
    tx.execute(
        "INSERT INTO deal_store.fact_finding_links (deal_id, fact_id, finding_id) \
         SELECT deal_id, id, $2 FROM deal_store.facts WHERE deal_id = $1 AND legacy_id IN ('F-APP-001', 'F-APP-002')",
        &[&deal, &finding],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO deal_store.gaps (deal_id, legacy_id, domain, description, suggested_sources) \
         VALUES ($1, 'G-001', 'applications', 'Licence agreements not in the data room', ARRAY['procurement'])",
        &[&deal],
    )
    .unwrap();
    tx.commit().unwrap();
    deal
}

#[test]
fn write_read_and_dump_restore_round_trip() {
    let Some(url) = url() else {
        eprintln!("DEAL_STORE_TEST_URL is not set: skipping the client test");
        return;
    };
    let mut admin = Client::connect(&with_db(&url, "postgres"), NoTls).expect("connect");
    for db in ["deal_store_client", "deal_store_client_restored"] {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }
    let mut c = Client::connect(&with_db(&url, "deal_store_client"), NoTls).expect("connect");
    c.batch_execute("CREATE EXTENSION deal_store CASCADE").unwrap();
    let deal = load_deal(&mut c);

    // read back what was written
    let row = c
        .query_one(
            "SELECT count(*), min(f.item), sum((f.details->>'users')::int) FROM deal_store.facts f \
             JOIN deal_store.documents d ON (d.deal_id, d.id) = (f.deal_id, f.source_document_id) WHERE f.deal_id = $1",
            &[&deal],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20);
    assert_eq!(row.get::<_, String>(1), "Application 1 runs on Oracle 19c");
    assert_eq!(row.get::<_, i64>(2), 2100);
    let linked: Vec<String> = c
        .query(
            "SELECT f.legacy_id FROM deal_store.fact_finding_links l JOIN deal_store.facts f ON (f.deal_id, f.id) = (l.deal_id, l.fact_id) \
             WHERE l.deal_id = $1 ORDER BY 1",
            &[&deal],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(linked, ["F-APP-001", "F-APP-002"]);

    // pg_dump -Fc then pg_restore into a new database keeps every row
    let before = fingerprint(&mut c);
    let dump = std::env::temp_dir().join(format!("deal_store_client_{}.dump", std::process::id()));
    let conn = |db: &str| with_db(&url, db);
    let status = Command::new(pg_tool("pg_dump"))
        .args(["-Fc", "-f", dump.to_str().unwrap(), "-d", &conn("deal_store_client")])
        .status()
        .expect("run pg_dump");
    assert!(status.success(), "pg_dump failed");
    // a restore runs with session_replication_role = replica (superusers only):
    // no trigger fires, so it writes no audit entries and no versions
    let out = Command::new(pg_tool("pg_restore"))
        .env("PGOPTIONS", "-c session_replication_role=replica")
        .args(["--exit-on-error", "-d", &conn("deal_store_client_restored"), dump.to_str().unwrap()])
        .output()
        .expect("run pg_restore");
    assert!(out.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_file(&dump);
    let mut r = Client::connect(&conn("deal_store_client_restored"), NoTls).expect("connect restored");
    let after = fingerprint(&mut r);
    assert!(before.iter().any(|(_, n, _)| *n > 0));
    assert_eq!(before, after, "the restored database differs from the original");
}
