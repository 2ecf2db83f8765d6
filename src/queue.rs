//! The merge queue's proposal side: a run's output is diffed against what is
//! stored, each difference becomes at most one open `pending_changes` row per
//! target, and tier-1 changes apply themselves.
//!
//! The state machine of a proposal line:
//! - unchanged: nothing is written; an open change of an older run for that row
//!   is superseded (the newer run agrees with what is stored);
//! - new / update / delete with no open change: a pending change is written;
//! - the same run already proposed the same thing: nothing (idempotent);
//! - an open change of the same or an older run: it is superseded, the new one written;
//! - an open change of a newer run: this older run's line is dropped.
//!
//! Deciding (accept, reject, defer, conflicts) is SQL in `sql/queue.sql`.
use crate::checksum::{from_hex, hex, Digest, Kind};
use crate::diff::{check_domains, diff, parse_incoming, ChangeType};
use crate::errors::{raise, required};
use pgrx::prelude::*;
use crate::spi::SpiClient;
use pgrx::{AnyElement, JsonB, Uuid};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// One tier rule of `deal_store.tier_policies`.
pub struct Rule {
    deal_specific: bool,
    entity_type: Option<String>,
    change_type: String,
    min_confidence: f64,
    tier: i32,
}

/// The tier of a change: the most specific scope with a rule for the change type
/// decides; within it the rule with the highest min_confidence not above the
/// confidence. Without rules: new >= 0.8 -> 1, new and update -> 2, delete -> 3.
pub fn tier(rules: &[Rule], entity_type: &str, change_type: &str, confidence: f64) -> i32 {
    let scopes: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];
    for (deal_specific, entity_specific) in scopes {
        let in_scope: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.change_type == change_type && r.deal_specific == deal_specific)
            .filter(|r| match (&r.entity_type, entity_specific) {
                (Some(e), true) => e == entity_type,
                (None, false) => true,
                _ => false,
            })
            .collect();
        if !in_scope.is_empty() {
            return in_scope
                .iter()
                .filter(|r| r.min_confidence <= confidence)
                .max_by(|a, b| a.min_confidence.total_cmp(&b.min_confidence))
                .map_or(2, |r| r.tier);
        }
    }
    match change_type {
        "new" if confidence >= 0.8 => 1,
        "delete" => 3,
        _ => 2,
    }
}

/// The tier rules that may apply to a deal's changes. Fails closed: an error
/// reading them is an error, never "no rules" (which would mean the defaults).
fn load_rules(client: &SpiClient<'_>, deal_id: Uuid) -> Vec<Rule> {
    let rows = client
        .select(
            "SELECT deal_id IS NOT NULL, entity_type, change_type, min_confidence, tier \
             FROM deal_store.tier_policies WHERE deal_id = $1 OR deal_id IS NULL",
            None,
            &[deal_id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading the tier policies: {e}"), None));
    rows.map(|r| {
        let field = |e: crate::spi::Error| -> ! {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading the tier policies: {e}"), None)
        };
        Rule {
            deal_specific: r.get(1).unwrap_or_else(|e| field(e)).unwrap_or(false),
            entity_type: r.get(2).unwrap_or_else(|e| field(e)),
            change_type: r.get(3).unwrap_or_else(|e| field(e)).unwrap_or_default(),
            min_confidence: r.get(4).unwrap_or_else(|e| field(e)).unwrap_or(0.0),
            tier: r.get(5).unwrap_or_else(|e| field(e)).unwrap_or(2),
        }
    })
    .collect()
}

/// The tier the policy gives a change (see `deal_store.tier_policies`).
#[pg_extern(stable)]
fn confidence_tier(deal_id: Uuid, entity_type: &str, change_type: &str, confidence: default!(f64, 0.5)) -> i32 {
    Kind::of(entity_type);
    if !["new", "update", "delete"].contains(&change_type) {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("unknown change type \"{change_type}\""), None);
    }
    let rules = crate::spi::connect(|c| {
        crate::diff::require_deal(deal_id);
        load_rules(c, deal_id)
    });
    tier(&rules, entity_type, change_type, confidence)
}

struct Run {
    id: Uuid,
    deal_id: Uuid,
    run_number: i32,
    incremental: bool,
    domains: Option<Vec<String>>,
    /// why the run proposes nothing (finished, or its deal deleted)
    trouble: Option<String>,
}

/// Locks the run's deal (proposals of one deal are serialised), checks the
/// caller's right and reads the run.
fn lock_run(client: &mut SpiClient<'_>, run_id: Uuid) -> Run {
    // first the deal, unlocked: up to two rows, as a run id is unique per deal only,
    // and one in two deals is P0003 as in SQL's _id_in_one_deal (checked here, not by
    // calling it, so the library still serves a 0.1.0 database until ALTER EXTENSION UPDATE)
    let deals: Vec<Uuid> = client
        .select("SELECT r.deal_id FROM deal_store.analysis_runs r WHERE r.id = $1 LIMIT 2", None, &[run_id.into()])
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
        .filter_map(|r| r.get::<Uuid>(1).ok().flatten())
        .collect();
    if deals.len() > 1 {
        raise(
            PgSqlErrorCode::ERRCODE_TOO_MANY_ROWS,
            format!("id {run_id} names rows of 2 deals in deal_store.analysis_runs"),
            Some("Ids are unique per deal only; this database holds the id in more than one deal.".into()),
        );
    }
    let Some(&deal_id) = deals.first() else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("analysis run {run_id} does not exist"), None)
    };
    // then the locks, naming the deal (on Citus: one shard, where FOR UPDATE is possible):
    // the deal's serialises its proposals, the run's makes a finishing run's status the one read
    let rows = client
        .update(
            "SELECT r.deal_id, r.run_number, r.is_incremental, r.domains_analyzed, r.status, d.deleted_at IS NOT NULL \
             FROM deal_store.analysis_runs r JOIN deal_store.deals d ON d.id = r.deal_id \
             WHERE r.deal_id = $2 AND d.id = $2 AND r.id = $1 FOR NO KEY UPDATE OF d, r",
            Some(1),
            &[run_id.into(), deal_id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
    let Some(r) = rows.into_iter().next() else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("analysis run {run_id} does not exist"), None)
    };
    crate::access::require_right(deal_id, crate::access::Right::Write);
    let status: String = r.get(5).ok().flatten().unwrap_or_default();
    let trouble = if status != "running" {
        Some(format!("analysis run {run_id} is {status}; only a running run proposes changes"))
    } else if r.get::<bool>(6).ok().flatten().unwrap_or(false) {
        Some(format!("the deal of analysis run {run_id} is deleted"))
    } else {
        None
    };
    Run {
        id: run_id,
        deal_id,
        run_number: r.get(2).ok().flatten().unwrap_or(0),
        incremental: r.get(3).ok().flatten().unwrap_or(false),
        domains: r.get::<Vec<Option<String>>>(4).ok().flatten().map(|d| d.into_iter().flatten().collect()),
        trouble,
    }
}

/// lock_run for a proposal: 55000 unless the run is running and its deal live.
fn lock_running_run(client: &mut SpiClient<'_>, run_id: Uuid) -> Run {
    let run = lock_run(client, run_id);
    if let Some(message) = run.trouble {
        raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message, None);
    }
    run
}

struct Open {
    id: Uuid,
    run_number: i32,
    same_run: bool,
    change_type: String,
    proposed_checksum: Option<Digest>,
}

/// Proposed changes by change type, tier and what became of them (status).
type Counts = BTreeMap<(String, i32, String), i64>;

/// Whether the catalog holds `deal_store.run_output` (0.3.0 on): between the
/// library swap and ALTER EXTENSION UPDATE an older catalog's proposals keep
/// their older contract (removals inferred by each call).
fn stages_output(client: &SpiClient<'_>) -> bool {
    client
        .select("SELECT pg_catalog.to_regclass('deal_store.run_output') IS NOT NULL", None, &[])
        .ok()
        .and_then(|r| r.first().get::<bool>(1).ok().flatten())
        .unwrap_or(false)
}

fn spi_failed(e: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None)
}

fn propose(kind: &Kind, run_id: Uuid, doc: AnyElement, domains: Option<Vec<String>>) -> Counts {
    let incoming = parse_incoming(kind, &doc);
    crate::spi::connect_mut(|client| {
        let run = lock_running_run(client, run_id);
        let allowed = crate::validate::allowed_keys(kind);
        crate::validate::check(client, kind, &doc, &allowed, crate::validate::ignores_unknown_keys(client, run.deal_id));
        // each row's domain (its canonical text is a JSON string), which must be one of the run's
        let at = kind.fields.iter().position(|f| *f == "domain").expect("every kind has a domain");
        let row_domains: Vec<Option<String>> =
            incoming.iter().map(|i| serde_json::from_str::<String>(i.field(at)).ok()).collect();
        if let Some(run_domains) = &run.domains {
            let known: std::collections::HashSet<&str> = run_domains.iter().map(String::as_str).collect();
            let outside = |d: &str| !known.contains(d);
            let named = domains.iter().flatten().map(|d| (None, d.as_str()));
            let rows = incoming.iter().zip(&row_domains).filter_map(|(i, d)| Some((Some(i), d.as_deref()?)));
            if let Some((row, d)) = rows.chain(named).find(|(_, d)| outside(d)) {
                let what = match row {
                    Some(i) => format!("{} element {} (legacy_id \"{}\")", kind.entity_type, i.ordinal, i.legacy_id),
                    None => "the domains argument".to_string(),
                };
                crate::errors::raise_hinted(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "{what} names domain \"{d}\", which is not one of the run's domains: {}{}",
                        run_domains.iter().take(20).map(String::as_str).collect::<Vec<_>>().join(", "),
                        if run_domains.len() > 20 { format!(" and {} more", run_domains.len() - 20) } else { String::new() }
                    ),
                    None,
                    Some("Correct the domain, or start a run that covers it (start_run(deal_id, domains => ...)).".into()),
                );
            }
        }
        let staged = stages_output(client);
        // the domains this call covers: the ones it names, else its rows'
        let mut covered: Vec<String> = domains.unwrap_or_else(|| row_domains.iter().flatten().cloned().collect());
        covered.sort();
        covered.dedup();
        let scope: Vec<String> = if staged || run.incremental {
            // removals are inferred when the run completes (complete_run), over all it proposed
            Vec::new()
        } else {
            // an older catalog: inferred by this call, inside the domains it covers
            covered.clone()
        };
        if staged && !run.incremental {
            // what the call delivered (kept from removal), and the domains it covers
            // (where the run's completion infers removals)
            let legacy: Vec<String> = incoming.iter().map(|i| i.legacy_id.clone()).collect();
            client
                .update(
                    "INSERT INTO deal_store.run_output (deal_id, analysis_run_id, entity_type, legacy_id, domain) \
                     SELECT $1, $2, $3, x.l, coalesce(x.d, '') FROM ROWS FROM (pg_catalog.unnest($4::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.text[])) AS x(l, d) \
                     ON CONFLICT DO NOTHING",
                    None,
                    &[run.deal_id.into(), run_id.into(), kind.entity_type.into(), legacy.into(), row_domains.into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
            // a covered domain remembers the snapshot of the last call that covered it
            // (trigger run_output_seen takes it): what was not committed then, that
            // call did not see
            client
                .update(
                    "INSERT INTO deal_store.run_output AS o (deal_id, analysis_run_id, entity_type, legacy_id, domain) \
                     SELECT $1, $2, $3, NULL, d FROM pg_catalog.unnest($4::pg_catalog.text[]) AS d \
                     ON CONFLICT ON CONSTRAINT run_output_key DO UPDATE SET seen = NULL",
                    None,
                    &[run.deal_id.into(), run_id.into(), kind.entity_type.into(), covered.into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
        }
        // the open changes of the incoming rows (an older catalog's call may also
        // remove rows: then all of the deal's)
        let keys = staged.then(|| incoming.iter().map(|i| i.legacy_id.as_str()).collect());
        let open = lock_open(client, kind, &run, run_id, keys);
        let changes = diff(kind, run.deal_id, incoming, Some(&scope));
        let doc_arg = crate::jsonb::spi_arg(&doc);
        queue(client, kind, &run, open, changes, doc_arg, Some((&doc, &allowed)))
    })
}

/// The removals of a completing run: every live row of the kind inside the
/// domains the run's calls covered (the domains a call named, else its rows')
/// that none of its calls delivered and that was committed before the last
/// call covering its domain took its snapshot. Incremental runs remove nothing.
fn propose_removals(kind: &Kind, run_id: Uuid) -> Counts {
    crate::spi::connect_mut(|client| {
        // a finished run or deleted deal: complete_run's own check reports it
        let run = lock_run(client, run_id);
        if run.trouble.is_some() || run.incremental || !stages_output(client) {
            return Counts::new();
        }
        let mut scope: Vec<String> = Vec::new();
        let mut delivered: std::collections::HashSet<String> = std::collections::HashSet::new();
        for r in client
            .select(
                "SELECT o.domain, o.legacy_id FROM deal_store.run_output o \
                 WHERE o.deal_id = $1 AND o.analysis_run_id = $2 AND o.entity_type = $3",
                None,
                &[run.deal_id.into(), run_id.into(), kind.entity_type.into()],
            )
            .unwrap_or_else(|e| spi_failed(e))
        {
            check_for_interrupts!();
            match r.get::<String>(2).ok().flatten() {
                Some(l) => {
                    delivered.insert(l);
                }
                None => scope.extend(r.get::<String>(1).ok().flatten()),
            }
        }
        scope.sort();
        scope.dedup();
        if scope.is_empty() {
            return Counts::new();
        }
        let open = lock_open(client, kind, &run, run_id, None);
        let candidates: Vec<crate::diff::Change> = diff(kind, run.deal_id, Vec::new(), Some(&scope))
            .into_iter()
            .filter(|c| !delivered.contains(&c.legacy_id))
            .collect();
        // only what the run saw is its to remove: rows committed before the last
        // call that covered their domain (a row a person, a decision or a newer
        // run wrote since is kept)
        let keys: Vec<&str> = candidates.iter().map(|c| c.legacy_id.as_str()).collect();
        let seen: std::collections::HashSet<String> = if keys.is_empty() {
            Default::default()
        } else {
            client
                .select(
                    &format!(
                        "SELECT t.legacy_id FROM {} t JOIN deal_store.run_output o ON o.deal_id = t.deal_id AND o.analysis_run_id = $2 \
                           AND o.entity_type = $3 AND o.legacy_id IS NULL AND o.domain = t.domain \
                         WHERE t.deal_id = $1 AND t.legacy_id = ANY ($4) AND {} \
                           AND pg_catalog.pg_visible_in_snapshot(deal_store_internal._xid8(t.xmin), o.seen)",
                        kind.table,
                        crate::diff::current_rows_sql(kind, "t.")
                    ),
                    None,
                    &[run.deal_id.into(), run_id.into(), kind.entity_type.into(), keys.into()],
                )
                .unwrap_or_else(|e| spi_failed(e))
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
        };
        let changes = candidates.into_iter().filter(|c| seen.contains(&c.legacy_id)).collect();
        queue(client, kind, &run, open, changes, JsonB(json!([])).into(), None)
    })
}

/// Locks the open changes of the deal's rows of this kind (of the given legacy
/// ids; all of them with None) and reads them. Taken before the diff, so what is
/// queued is decided on what a concurrent accept left, never on what it is changing.
fn lock_open(client: &mut SpiClient<'_>, kind: &Kind, run: &Run, run_id: Uuid, keys: Option<Vec<&str>>) -> HashMap<String, Open> {
    let all = keys.is_none();
    client
        .update(
            "SELECT c.legacy_entity_id, c.id, r.run_number, c.analysis_run_id = $3, c.change_type, c.proposed_checksum \
             FROM deal_store.pending_changes c JOIN deal_store.analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id \
             WHERE c.deal_id = $1 AND c.entity_type = $2 AND ($5 OR c.legacy_entity_id = ANY ($4)) \
               AND c.status IN ('pending', 'deferred') FOR UPDATE OF c",
            None,
            &[run.deal_id.into(), kind.entity_type.into(), run_id.into(), keys.unwrap_or_default().into(), all.into()],
        )
        .unwrap_or_else(|e| spi_failed(e))
        .filter_map(|r| {
            Some((
                r.get::<String>(1).ok().flatten()?,
                Open {
                    id: r.get(2).ok().flatten()?,
                    run_number: r.get(3).ok().flatten().unwrap_or(0),
                    same_run: r.get(4).ok().flatten().unwrap_or(false),
                    change_type: r.get(5).ok().flatten().unwrap_or_default(),
                    proposed_checksum: r.get::<&str>(6).ok().flatten().and_then(from_hex),
                },
            ))
        })
        .collect()
}

/// Queues the lines of a diff as pending changes (the state machine above),
/// applies tier 1 unless `deal_store.auto_apply` is off, and counts what became
/// of them. `doc` is the proposal's jsonb (new values are read from it by
/// ordinal) and, when there is one, is checked against the table first.
fn queue(
    client: &mut SpiClient<'_>,
    kind: &Kind,
    run: &Run,
    open: HashMap<String, Open>,
    changes: Vec<crate::diff::Change>,
    doc_arg: pgrx::datum::DatumWithOid<'_>,
    doc: Option<(&AnyElement, &[&'static str])>,
) -> Counts {
    let rules = load_rules(client, run.deal_id);

    let mut supersede: Vec<Uuid> = Vec::new();
    let mut rows: Vec<Value> = Vec::new();
    let mut ordinals: Vec<i32> = Vec::new();
    for c in changes {
        check_for_interrupts!();
        let change_type = match c.change {
            ChangeType::Unchanged => {
                if let Some(o) = open.get(&c.legacy_id).filter(|o| !o.same_run && o.run_number < run.run_number) {
                    supersede.push(o.id);
                }
                continue;
            }
            other => other.as_str(),
        };
        if let Some(o) = open.get(&c.legacy_id) {
            if o.run_number > run.run_number {
                continue; // a newer run's proposal stands
            }
            if o.same_run && o.change_type == change_type && o.proposed_checksum == c.new_checksum {
                continue; // proposed already
            }
            supersede.push(o.id);
        }
        if let Some(i) = &c.incoming {
            ordinals.push(i.ordinal as i32);
        }
        let confidence = c.incoming.as_ref().and_then(|i| i.confidence).unwrap_or(if kind.versioned { 0.5 } else { 0.0 });
        rows.push(json!({
            "change_type": change_type,
            "entity_id": c.fact_id.map(|u| u.to_string()),
            "legacy_entity_id": c.legacy_id,
            "ordinal": c.incoming.as_ref().map(|i| i.ordinal),
            "base_checksum": c.old_checksum.as_ref().map(hex),
            "proposed_checksum": c.new_checksum.as_ref().map(hex),
            "confidence_tier": tier(&rules, kind.entity_type, change_type, confidence),
        }));
    }
    // what would be written must fit the table: checked before anything is
    let allowed: Vec<String> = match doc {
        Some((doc, allowed)) => {
            crate::validate::check_constraints(client, kind, doc, allowed, ordinals);
            allowed.iter().map(|k| k.to_string()).collect()
        }
        None => Vec::new(),
    };
    if !supersede.is_empty() {
        client
            .update(
                "UPDATE deal_store.pending_changes SET status = 'superseded', decided_at = pg_catalog.now(), \
                 review_note = 'superseded by analysis run ' OPERATOR(pg_catalog.||) $3::pg_catalog.text WHERE deal_id = $1 AND id = ANY($2)",
                None,
                &[run.deal_id.into(), supersede.into(), run.run_number.to_string().into()],
            )
            .unwrap_or_else(|e| spi_failed(e));
    }
    let mut counts = Counts::new();
    if rows.is_empty() {
        return counts;
    }
    let current = if kind.versioned { " AND t.superseded_at IS NULL" } else { "" };
    let sql = format!(
        "INSERT INTO deal_store.pending_changes (deal_id, analysis_run_id, change_type, entity_type, entity_id, \
           legacy_entity_id, old_value, new_value, base_checksum, proposed_checksum, confidence_tier) \
         SELECT $1, $2, x.change_type, $3, x.entity_id, x.legacy_entity_id, \
                (SELECT pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) 'search_vector'::pg_catalog.text FROM {} t WHERE t.deal_id = $1 AND t.id = x.entity_id{current}), \
                CASE WHEN x.ordinal IS NOT NULL THEN $6 || (SELECT coalesce(pg_catalog.jsonb_object_agg(j.k, j.v), '{{}}'::pg_catalog.jsonb) \
                     FROM pg_catalog.jsonb_each($5 OPERATOR(pg_catalog.->) x.ordinal) AS j(k, v) \
                     WHERE j.v <> 'null'::pg_catalog.jsonb AND j.k = ANY ($7)) END, \
                x.base_checksum, x.proposed_checksum, x.confidence_tier \
         FROM pg_catalog.jsonb_to_recordset($4) AS x(change_type pg_catalog.text, entity_id pg_catalog.uuid, legacy_entity_id pg_catalog.text, ordinal pg_catalog.int4, \
              base_checksum pg_catalog.text, proposed_checksum pg_catalog.text, confidence_tier pg_catalog.int4) \
         RETURNING id, change_type, confidence_tier",
        kind.table
    );
    let inserted = client
        .update(
            &sql,
            None,
            &[
                run.deal_id.into(),
                run.id.into(),
                kind.entity_type.into(),
                JsonB(Value::Array(rows)).into(),
                doc_arg,
                JsonB(kind.defaults_object()).into(),
                allowed.into(),
            ],
        )
        .unwrap_or_else(|e| spi_failed(e));
    let mut proposed: Vec<Uuid> = Vec::new();
    let mut tier_one: Vec<Uuid> = Vec::new();
    for r in inserted {
        let id: Uuid = r.get(1).ok().flatten().expect("id");
        if r.get::<i32>(3).ok().flatten() == Some(1) {
            tier_one.push(id);
        }
        proposed.push(id);
    }
    if crate::settings::AUTO_APPLY.get() && !tier_one.is_empty() {
        client
            .update(&format!("SELECT {}._apply_changes($1, $2)", crate::spi::internal_schema()), None, &[run.deal_id.into(), tier_one.into()])
            .unwrap_or_else(|e| spi_failed(e));
    }
    client
        .update(&format!("SELECT {}._signal_review($1, $2)", crate::spi::internal_schema()), None, &[run.deal_id.into(), run.id.into()])
        .unwrap_or_else(|e| spi_failed(e));
    // what became of them: pending, or (tier 1) accepted or conflict
    client
        .select(
            "SELECT p.change_type, p.confidence_tier, p.status, pg_catalog.count(*) FROM deal_store.pending_changes p \
             WHERE p.deal_id = $1 AND p.id = ANY ($2) GROUP BY 1, 2, 3",
            None,
            &[run.deal_id.into(), proposed.into()],
        )
        .unwrap_or_else(|e| spi_failed(e))
        .for_each(|r| {
            let key = (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<i32>(2).ok().flatten().unwrap_or(0),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
            );
            counts.insert(key, r.get::<i64>(4).ok().flatten().unwrap_or(0));
        });
    counts
}

/// Diffs a running run's rows (facts, findings or gaps) against what is stored
/// and queues the differences. Called by `deal_store.propose_facts`,
/// `propose_findings` and `propose_gaps`.
#[pg_extern(schema = "deal_store_internal", volatile, name = "_propose")]
fn propose_internal(
    entity_type: Option<&str>,
    run_id: Option<Uuid>,
    incoming: Option<AnyElement>,
    domains: Option<Vec<Option<String>>>,
) -> TableIterator<'static, (name!(change_type, String), name!(confidence_tier, i32), name!(proposed, i64), name!(status, String))> {
    let kind = Kind::of(required(entity_type, "entity_type"));
    let (run_id, incoming) = (required(run_id, "run_id"), crate::jsonb::detoasted(required(incoming, kind.plural)));
    let counts = propose(kind, run_id, incoming, check_domains(&domains));
    TableIterator::new(counts.into_iter().map(|((ct, t, st), n)| (ct, t, n, st)))
}

/// Proposes the removals of a completing run (see `propose_removals`). Called
/// by `deal_store.complete_run` for facts, findings and gaps.
#[pg_extern(schema = "deal_store_internal", volatile, name = "_propose_removals")]
fn propose_removals_internal(
    entity_type: Option<&str>,
    run_id: Option<Uuid>,
) -> TableIterator<'static, (name!(change_type, String), name!(confidence_tier, i32), name!(proposed, i64), name!(status, String))> {
    let kind = Kind::of(required(entity_type, "entity_type"));
    let counts = propose_removals(kind, required(run_id, "run_id"));
    TableIterator::new(counts.into_iter().map(|((ct, t, st), n)| (ct, t, n, st)))
}

/// 2D000 with a hint when a procedure that commits is called inside a
/// transaction block (where its COMMIT would fail with no word of what to do).
#[pg_extern(schema = "deal_store_internal", volatile, name = "_outside_transaction_block")]
fn outside_transaction_block(routine: Option<&str>) {
    // SAFETY: reads the backend's transaction state, no pointer involved
    if unsafe { pg_sys::IsTransactionBlock() } {
        let routine = routine.unwrap_or("this procedure");
        crate::errors::raise_hinted(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_TERMINATION,
            format!("{routine} commits after each batch and cannot run inside a transaction block"),
            None,
            Some(
                "CALL it on its own, in autocommit mode (psql's default; autocommit = True in psycopg), or run \
                 SELECT * FROM deal_store.process_queue_batch(...) inside the transaction instead."
                    .into(),
            ),
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn rule(deal_specific: bool, entity_type: Option<&str>, change_type: &str, min_confidence: f64, tier: i32) -> Rule {
        Rule { deal_specific, entity_type: entity_type.map(String::from), change_type: change_type.into(), min_confidence, tier }
    }

    #[pg_test]
    fn default_tiers() {
        assert_eq!(tier(&[], "fact", "new", 0.8), 1);
        assert_eq!(tier(&[], "fact", "new", 0.79), 2);
        assert_eq!(tier(&[], "fact", "update", 0.99), 2);
        assert_eq!(tier(&[], "gap", "delete", 1.0), 3);
    }

    #[pg_test]
    fn the_most_specific_scope_decides() {
        let rules = [
            rule(false, None, "new", 0.5, 1),
            rule(true, None, "new", 0.95, 1),
            rule(true, Some("finding"), "update", 0.0, 3),
        ];
        // the deal's own rule for new facts replaces the global one: 0.9 is not enough
        assert_eq!(tier(&rules, "fact", "new", 0.9), 2);
        assert_eq!(tier(&rules, "fact", "new", 0.96), 1);
        assert_eq!(tier(&rules, "finding", "update", 0.9), 3);
        // no rule for fact updates anywhere: the built-in default
        assert_eq!(tier(&rules, "fact", "update", 0.9), 2);
    }
}
