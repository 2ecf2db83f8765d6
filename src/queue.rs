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
    deal_id: Uuid,
    run_number: i32,
    incremental: bool,
    domains: Option<Vec<String>>,
}

/// Locks the run's deal (proposals of one deal are serialised) and checks the run.
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
    // then the lock, naming the deal (on Citus: one shard, where FOR UPDATE is possible)
    let rows = client
        .update(
            "SELECT r.deal_id, r.run_number, r.is_incremental, r.domains_analyzed, r.status, d.deleted_at IS NOT NULL \
             FROM deal_store.analysis_runs r JOIN deal_store.deals d ON d.id = r.deal_id \
             WHERE r.deal_id = $2 AND d.id = $2 AND r.id = $1 FOR NO KEY UPDATE OF d",
            Some(1),
            &[run_id.into(), deal_id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
    let Some(r) = rows.into_iter().next() else {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("analysis run {run_id} does not exist"), None)
    };
    crate::access::require_right(deal_id, crate::access::Right::Write);
    let status: String = r.get(5).ok().flatten().unwrap_or_default();
    if status != "running" {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("analysis run {run_id} is {status}; only a running run proposes changes"),
            None,
        );
    }
    if r.get::<bool>(6).ok().flatten().unwrap_or(false) {
        raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("the deal of analysis run {run_id} is deleted"), None);
    }
    Run {
        deal_id,
        run_number: r.get(2).ok().flatten().unwrap_or(0),
        incremental: r.get(3).ok().flatten().unwrap_or(false),
        domains: r.get::<Vec<Option<String>>>(4).ok().flatten().map(|d| d.into_iter().flatten().collect()),
    }
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

fn propose(kind: &Kind, run_id: Uuid, doc: AnyElement, domains: Option<Vec<String>>) -> Counts {
    let incoming = parse_incoming(kind, &doc);
    crate::spi::connect_mut(|client| {
        let run = lock_run(client, run_id);
        let allowed = crate::validate::allowed_keys(kind);
        crate::validate::check(client, kind, &doc, &allowed, crate::validate::ignores_unknown_keys(client, run.deal_id));
        // removals are inferred only inside the domains this call covers
        let scope: Option<Vec<String>> = if run.incremental {
            Some(Vec::new())
        } else {
            let called: Vec<String> = domains.unwrap_or_else(|| {
                // the domains of the rows passed (their canonical text is a JSON string)
                let at = kind.fields.iter().position(|f| *f == "domain").expect("every kind has a domain");
                let mut d: Vec<String> =
                    incoming.iter().filter_map(|i| serde_json::from_str::<String>(i.field(at)).ok()).collect();
                d.sort();
                d.dedup();
                d
            });
            Some(match &run.domains {
                Some(run_domains) => called.into_iter().filter(|d| run_domains.contains(d)).collect(),
                None => called,
            })
        };
        // lock the open changes first, so the diff below reads what they left
        let open: HashMap<String, Open> = client
            .update(
                "SELECT c.legacy_entity_id, c.id, r.run_number, c.analysis_run_id = $3, c.change_type, c.proposed_checksum \
                 FROM deal_store.pending_changes c JOIN deal_store.analysis_runs r ON r.deal_id = c.deal_id AND r.id = c.analysis_run_id \
                 WHERE c.deal_id = $1 AND c.entity_type = $2 AND c.status IN ('pending', 'deferred') FOR UPDATE OF c",
                None,
                &[run.deal_id.into(), kind.entity_type.into(), run_id.into()],
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
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
            .collect();
        let rules = load_rules(client, run.deal_id);
        let changes = diff(kind, run.deal_id, incoming, scope.as_deref());

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
            let confidence =
                c.incoming.as_ref().and_then(|i| i.confidence).unwrap_or(if kind.versioned { 0.5 } else { 0.0 });
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
        crate::validate::check_constraints(client, kind, &doc, &allowed, ordinals);
        if !supersede.is_empty() {
            client
                .update(
                    "UPDATE deal_store.pending_changes SET status = 'superseded', decided_at = pg_catalog.now(), \
                     review_note = 'superseded by analysis run ' OPERATOR(pg_catalog.||) $3::pg_catalog.text WHERE deal_id = $1 AND id = ANY($2)",
                    None,
                    &[run.deal_id.into(), supersede.into(), run.run_number.to_string().into()],
                )
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
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
                    run_id.into(),
                    kind.entity_type.into(),
                    JsonB(Value::Array(rows)).into(),
                    crate::jsonb::spi_arg(&doc),
                    JsonB(kind.defaults_object()).into(),
                    allowed.iter().map(|k| k.to_string()).collect::<Vec<_>>().into(),
                ],
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
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
                .update("SELECT deal_store._apply_changes($1, $2)", None, &[run.deal_id.into(), tier_one.into()])
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        }
        client
            .update("SELECT deal_store._signal_review($1, $2)", None, &[run.deal_id.into(), run_id.into()])
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None));
        // what became of them: pending, or (tier 1) accepted or conflict
        client
            .select(
                "SELECT p.change_type, p.confidence_tier, p.status, pg_catalog.count(*) FROM deal_store.pending_changes p \
                 WHERE p.deal_id = $1 AND p.id = ANY ($2) GROUP BY 1, 2, 3",
                None,
                &[run.deal_id.into(), proposed.into()],
            )
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
            .for_each(|r| {
                let key = (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i32>(2).ok().flatten().unwrap_or(0),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                );
                counts.insert(key, r.get::<i64>(4).ok().flatten().unwrap_or(0));
            });
        counts
    })
}

/// Diffs a running run's rows (facts, findings or gaps) against what is stored
/// and queues the differences. Called by `deal_store.propose_facts`,
/// `propose_findings` and `propose_gaps`.
#[pg_extern(volatile, name = "_propose")]
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
