"""An analysis run from Python, end to end (docs/python.md walks through it).

Loads the facts an analysis extracted from a JSON file, proposes them in
chunks (as an analysis writes domain by domain), lets a reviewer decide what
waits, completes the run, then runs again with a revised file and shows what
changed since the user last looked.

    DEAL_STORE_DSN="host=127.0.0.1 dbname=deal_store_demo user=deal_store_app password=app-secret" \
        PYTHONPATH=/opt/deal_store/py python3 examples/python/analysis_run.py [facts.json]

The login is a member of deal_store_service: it names the person it acts for
in every transaction. Every step checks what it got: ./scripts/test runs it.
"""
import json
import os
import sys
import uuid

import psycopg

DSN = os.environ.get("DEAL_STORE_DSN", "host=127.0.0.1 dbname=deal_store_demo user=deal_store_app password=app-secret")
DANA = uuid.UUID("7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001")  # Dana Lead in the demo database
FACTS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data", "facts.json")
CHUNK = 4


def run(conn, deal, facts, label):
    """One analysis run: propose in chunks, review what waits, complete. Returns the run id."""
    domains = sorted({f["domain"] for f in facts})
    with conn.transaction():
        conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
        run_id = conn.execute("SELECT deal_store.start_run(%s, %s)", [deal, domains]).fetchone()[0]
    # one transaction per chunk; the idempotency key makes a retried chunk harmless
    for n, start in enumerate(range(0, len(facts), CHUNK)):
        chunk = facts[start:start + CHUNK]
        with conn.transaction():
            conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
            rows = conn.execute(
                "SELECT change_type, confidence_tier, proposed, status FROM deal_store.propose_facts(%s, %s, idempotency_key => %s)",
                [run_id, psycopg.types.json.Jsonb(chunk), f"{run_id}:{n}"]).fetchall()
        print(f"{label}: chunk {n + 1}: " + (", ".join(f"{p} {c} (tier {t}, {s})" for c, t, p, s in rows) or "nothing new"))
    with conn.transaction():
        conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
        # completing the run proposes the removals: stored facts of its domains no chunk delivered
        status, created, updated = conn.execute(
            "SELECT status, facts_created, facts_updated FROM deal_store.complete_run(%s)", [run_id]).fetchone()
        assert status == "completed", status
        waiting = conn.execute(
            "SELECT legacy_entity_id, change_type, confidence_tier FROM deal_store.pending_changes "
            "WHERE deal_id = %s AND analysis_run_id = %s AND status = 'pending' ORDER BY legacy_entity_id",
            [deal, run_id]).fetchall()
        print(f"{label}: completed, {len(waiting)} changes wait for review: "
              + ", ".join(f"{l} {c} (tier {t})" for l, c, t in waiting))
        # the reviewer accepts everything up to tier 3 (removals are tier 3)
        decided = dict(conn.execute("SELECT status, n FROM deal_store.accept_changes(%s, max_tier => 3, run_id => %s)",
                                    [deal, run_id]).fetchall())
        assert decided.get("accepted", 0) == len(waiting), (decided, waiting)
    return run_id


def main():
    with open(FACTS, encoding="utf-8") as f:
        facts = json.load(f)
    with psycopg.connect(DSN) as conn:
        with conn.transaction():
            conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
            deal = conn.execute(
                "INSERT INTO deal_store.deals (user_id, name, target_name) VALUES (%s, %s, 'Osprey AG') RETURNING id",
                [DANA, f"Project Osprey {uuid.uuid4().hex[:8]}"]).fetchone()[0]

        run(conn, deal, facts, "run 1")
        with conn.transaction():
            conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
            stored = conn.execute("SELECT count(*) FROM deal_store.current_facts WHERE deal_id = %s", [deal]).fetchone()[0]
            assert stored == len(facts), (stored, len(facts))
            conn.execute("SELECT deal_store.mark_seen(%s)", [deal])   # Dana has looked at the deal

        # the next run: one fact revised, two no longer found, one new
        revised = [dict(f, item=f["item"] + " (contract ends 2027)") if f["legacy_id"] == "NET-1" else f
                   for f in facts if f["legacy_id"] not in ("APP-7", "NET-4")]
        revised.append({"legacy_id": "NET-6", "domain": "network", "category": "WAN",
                        "item": "A second carrier is being tendered", "confidence_score": 0.9})
        run(conn, deal, revised, "run 2")

        with conn.transaction():
            conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
            changed = {(e, c): (n, [i["legacy_id"] for i in items]) for e, c, n, items in conn.execute(
                "SELECT entity_type, change, changes, items FROM deal_store.changes_since_seen(%s)", [deal]).fetchall()}
            for (entity, change), (n, ids) in sorted(changed.items()):
                print(f"since Dana looked: {n} {entity} {change}: {', '.join(ids)}")
            assert changed[("fact", "new")][1] == ["NET-6"], changed
            assert changed[("fact", "update")][1] == ["NET-1"], changed
            assert sorted(changed[("fact", "delete")][1]) == ["APP-7", "NET-4"], changed
            unseen = conn.execute("SELECT unseen FROM deal_store.deals_for_user(%s) WHERE id = %s", [DANA, deal]).fetchone()[0]
            assert unseen == 4, unseen
            # the deal is done with: soft-deleted with everything in it (restore() brings it back)
            conn.execute("SELECT deal_store.soft_delete('deal_store.deals', %s, 'example finished')", [deal])
    print("analysis_run: ok")


if __name__ == "__main__":
    main()
