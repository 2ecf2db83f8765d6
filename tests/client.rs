//! Client test from outside: a real TCP connection with a Rust PostgreSQL client.
//!
//! Runs when DEAL_STORE_TEST_URL names a database where deal_store can be
//! created (scripts/test sets it); otherwise it says so and skips.
//! 1. writes a deal, documents, facts, findings and links with plain SQL and reads them back;
//! 2. pg_dump -Fc / pg_restore into a second database and compares, table by table,
//!    the row count and a checksum over every row.
use postgres::{Client, NoTls};
use std::process::Command;

const TABLES: [&str; 13] = [
    "users", "deals", "documents", "analysis_runs", "facts", "findings",
    "fact_finding_links", "gaps", "pending_changes", "deal_activity_log", "notifications", "tier_policies",
    "deal_members",
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

/// The login roles of the access test: (role, group role, password).
const LOGINS: [(&str, &str, &str); 6] = [
    ("ds_client_lead", "deal_store_reviewer", "lead-pw"),
    ("ds_client_analyst", "deal_store_analyst", "analyst-pw"),
    ("ds_client_reviewer", "deal_store_reviewer", "reviewer-pw"),
    ("ds_client_viewer", "deal_store_reader", "viewer-pw"),
    ("ds_client_app", "deal_store_service", "app-pw"),
    ("ds_client_admin", "deal_store_admin", "admin-pw"),
];

/// A connection as one of [`LOGINS`], with its password over TCP.
fn login(url: &str, db: &str, role: &str) -> Client {
    let pw = LOGINS.iter().find(|l| l.0 == role).expect("a known login").2;
    Client::connect(&format!("{url} dbname={db} user={role} password={pw}"), NoTls)
        .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
}

/// The SQLSTATE of a failed statement.
fn sqlstate(r: Result<impl Sized, postgres::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().map_or_else(|| e.to_string(), |c| c.code().to_string()),
    }
}

/// Real login roles with password authentication run a deal through the merge
/// queue: each is its user (users.db_role), the application acts for a user
/// without a login, and the log names each person as the actor.
#[test]
fn merge_queue_as_real_login_roles() {
    let Some(url) = url() else {
        eprintln!("DEAL_STORE_TEST_URL is not set: skipping the client test");
        return;
    };
    let db = "deal_store_client_roles";
    let mut su = Client::connect(&with_db(&url, "postgres"), NoTls).expect("connect");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut su = Client::connect(&with_db(&url, db), NoTls).expect("connect");
    su.batch_execute("CREATE EXTENSION deal_store CASCADE").unwrap();
    for (role, group, pw) in LOGINS {
        su.batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$;
             ALTER ROLE {role} LOGIN PASSWORD '{pw}'; GRANT {group} TO {role};"
        ))
        .unwrap();
    }
    // the password is checked: a wrong one is refused
    let wrong = Client::connect(&format!("{url} dbname={db} user=ds_client_viewer password=wrong"), NoTls);
    assert_eq!(sqlstate(wrong), "28P01", "password authentication must be on for login roles");

    let people: Vec<uuid::Uuid> = su
        .query(
            "INSERT INTO deal_store.users (email, db_role) VALUES
               ('lead@client.example', 'ds_client_lead'), ('analyst@client.example', 'ds_client_analyst'),
               ('reviewer@client.example', 'ds_client_reviewer'), ('viewer@client.example', 'ds_client_viewer'),
               ('dana@client.example', NULL), ('outsider@client.example', NULL)
             RETURNING id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let [lead, analyst, reviewer, viewer, dana, outsider] = people[..] else { panic!("six users") };

    // the lead opens the deal and builds the team
    let mut c = login(&url, db, "ds_client_lead");
    let deal: uuid::Uuid = c
        .query_one(
            "INSERT INTO deal_store.deals (user_id, name, target_name) VALUES ($1, 'Project Elm', 'Elm BV') RETURNING id",
            &[&lead],
        )
        .unwrap()
        .get(0);
    for (who, role) in [(analyst, "analyst"), (reviewer, "reviewer"), (viewer, "viewer"), (dana, "analyst")] {
        c.execute("SELECT deal_store.add_member($1, $2, $3)", &[&deal, &who, &role]).unwrap();
    }

    // the analyst runs an analysis: confident facts apply themselves, the others wait
    let mut a = login(&url, db, "ds_client_analyst");
    let run: uuid::Uuid = a.query_one("SELECT deal_store.start_run($1)", &[&deal]).unwrap().get(0);
    let facts = serde_json::json!([
        {"legacy_id": "F-1", "domain": "network", "item": "SD-WAN across 12 sites", "confidence_score": 0.95},
        {"legacy_id": "F-2", "domain": "network", "item": "two data centres", "confidence_score": 0.6},
        {"legacy_id": "F-3", "domain": "network", "item": "no network segmentation", "confidence_score": 0.5}
    ]);
    a.execute("SELECT count(*) FROM deal_store.propose_facts($1, $2)", &[&run, &facts]).unwrap();
    a.execute("SELECT deal_store.complete_run($1)", &[&run]).unwrap();

    // the application acts for dana, who has no login, per transaction
    let mut app = login(&url, db, "ds_client_app");
    assert_eq!(sqlstate(app.execute("SELECT deal_store.start_run($1)", &[&deal])), "42501", "no actor, no change");
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('deal_store.actor', $1, true)", &[&dana.to_string()]).unwrap();
    tx.execute(
        "UPDATE deal_store.facts SET evidence = 'network diagram p. 4' WHERE deal_id = $1 AND legacy_id = 'F-1' AND superseded_at IS NULL",
        &[&deal],
    )
    .unwrap();
    tx.commit().unwrap();
    // acting for someone outside the deal gives that person's rights: none here
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('deal_store.actor', $1, true)", &[&outsider.to_string()]).unwrap();
    assert_eq!(sqlstate(tx.execute("SELECT deal_store.accept_changes($1)", &[&deal])), "42501");
    tx.rollback().unwrap();

    // the viewer reads but decides nothing, and cannot pose as the reviewer
    let mut v = login(&url, db, "ds_client_viewer");
    let seen: i64 = v.query_one("SELECT count(*) FROM deal_store.current_facts WHERE deal_id = $1", &[&deal]).unwrap().get(0);
    assert_eq!(seen, 1, "the tier-1 fact is applied, the others wait");
    assert_eq!(sqlstate(v.execute("SELECT deal_store.accept_changes($1)", &[&deal])), "42501");
    v.batch_execute(&format!("SET deal_store.actor = '{reviewer}'")).unwrap();
    assert_eq!(sqlstate(v.query_one("SELECT deal_store.current_actor()", &[])), "42501");

    // the reviewer accepts what waits
    let mut r = login(&url, db, "ds_client_reviewer");
    let accepted: i64 = r
        .query_one("SELECT coalesce(sum(n), 0)::bigint FROM deal_store.accept_changes($1, 3) WHERE status = 'accepted'", &[&deal])
        .unwrap()
        .get(0);
    assert_eq!(accepted, 2);

    // another deal, not shared with this team, stays invisible to it
    let mut adm = login(&url, db, "ds_client_admin");
    adm.execute(
        "INSERT INTO deal_store.deals (user_id, name, target_name) VALUES ($1, 'Project Wall', 'Wall AG')",
        &[&outsider],
    )
    .unwrap();
    let deals: i64 = a.query_one("SELECT count(*) FROM deal_store.deals", &[]).unwrap().get(0);
    assert_eq!(deals, 1, "the analyst sees only its own deal");
    let all: i64 = adm.query_one("SELECT count(*) FROM deal_store.deals", &[]).unwrap().get(0);
    assert_eq!(all, 2, "an admin sees every deal");

    // the log names each person as the actor of what they did
    let actors: Vec<(String, String, Option<String>)> = su
        .query(
            "SELECT l.action, l.entity_type, u.email FROM deal_store.deal_activity_log l
             LEFT JOIN deal_store.users u ON u.id = l.user_id
             WHERE l.deal_id = $1 AND l.entity_type IN ('deal', 'deal_member', 'fact', 'analysis_run')
             GROUP BY 1, 2, 3 ORDER BY 2, 1, 3",
            &[&deal],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = |action: &str, entity: &str, email: &str| {
        assert!(
            actors.iter().any(|(a, e, u)| a == action && e == entity && u.as_deref() == Some(email)),
            "no {action} of {entity} by {email} in the log: {actors:?}"
        );
    };
    expect("insert", "deal", "lead@client.example");
    expect("insert", "deal_member", "lead@client.example");
    expect("insert", "analysis_run", "analyst@client.example");
    expect("insert", "fact", "analyst@client.example");
    expect("update", "fact", "dana@client.example");
    expect("insert", "fact", "reviewer@client.example");
    assert!(actors.iter().all(|(_, _, u)| u.is_some()), "every entry has an actor: {actors:?}");
}
