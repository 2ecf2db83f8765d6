"""deal_store from Python with psycopg 3: the quick start.

Runs against the demo database (./scripts/demo) as it is, or any database with
the demo deal: DEAL_STORE_DSN is a libpq connection string (default: the login
deal_store_app over TCP, which docs/python.md creates). An application logs in as
a member of deal_store_service and names the person it acts for per transaction,
as this script does. Every step checks what it got: ./scripts/test runs it.
"""
import os
import uuid

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

DSN = os.environ.get("DEAL_STORE_DSN", "host=127.0.0.1 dbname=deal_store_demo user=deal_store_app password=app-secret")
DEAL = uuid.UUID("5f1a6a52-93c4-4c65-a7f4-000000000001")  # Project Falcon
DANA = uuid.UUID("7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001")  # Dana Lead, its owner

with psycopg.connect(DSN) as conn:
    # 1. The actor, per transaction: set_actor takes the uuid as a bound parameter
    #    (SET cannot take one; set_config('deal_store.actor', %s, true) works too).
    with conn.transaction():
        acting = conn.execute("SELECT deal_store.set_actor(%s)", [DANA]).fetchone()[0]
        assert acting == DANA, acting  # psycopg returns uuid columns as uuid.UUID

        # 2. Read: typed views, one row per deal / domain.
        name, facts, open_gaps = conn.execute(
            "SELECT name, facts, open_gaps FROM deal_store.deal_overview WHERE deal_id = %s", [DEAL]).fetchone()
        assert name == "Project Falcon" and facts > 0, (name, facts)
        domains = dict(conn.execute(
            "SELECT domain, facts FROM deal_store.facts_by_domain WHERE deal_id = %s", [DEAL]).fetchall())
        assert domains["network"] > 0, domains

        # 3. An analysis run proposes facts: a list of dicts, passed as jsonb.
        run_id = conn.execute("SELECT deal_store.start_run(%s, %s)", [DEAL, ["network"]]).fetchone()[0]
        tag = uuid.uuid4().hex[:8]  # new legacy ids each time the script runs
        proposed = [
            {"legacy_id": f"F-PY-{tag}-1", "domain": "network", "item": "Python-proposed SD-WAN pilot",
             "confidence_score": 0.95},  # tier 1: applied at once
            {"legacy_id": f"F-PY-{tag}-2", "domain": "network", "item": "Python-proposed spare firewall",
             "confidence_score": 0.6},  # tier 2: waits for a reviewer
        ]
        rows = conn.execute("SELECT change_type, confidence_tier, proposed, status"
                            " FROM deal_store.propose_facts(%s, %s, domains => '{}')",
                            [run_id, Jsonb(proposed)]).fetchall()
        assert sorted(rows) == [("new", 1, 1, "accepted"), ("new", 2, 1, "pending")], rows

    # 4. Review the queue: what waits, then a decision.
    with conn.transaction():
        conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
        change_id, item = conn.execute(
            "SELECT id, new_value ->> 'item' FROM deal_store.pending_changes"
            " WHERE deal_id = %s AND legacy_entity_id = %s AND status = 'pending'",
            [DEAL, f"F-PY-{tag}-2"]).fetchone()
        assert item == "Python-proposed spare firewall"
        decision = conn.execute("SELECT deal_store.accept_change(%s, %s)",
                                [change_id, "checked in the data room"]).fetchone()[0]
        assert decision == "accepted", decision
        run = conn.execute("SELECT run_number, status, facts_created FROM deal_store.complete_run(%s)",
                           [run_id]).fetchone()
        assert run[1:] == ("completed", 2), run

    # 5. Search: ranked, with highlights; the same parser composes into your own query.
    with conn.transaction():
        conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
        hits = conn.execute("SELECT legacy_id, headline FROM deal_store.search_facts(%s, %s, lim => 5)",
                            [DEAL, "SAP maint"]).fetchall()
        assert hits and hits[0][0] == "F-APP-002", hits
        mine = conn.execute(
            "SELECT f.legacy_id FROM deal_store.active_facts f, deal_store.search_tsquery(%s) q"
            " WHERE f.deal_id = %s AND f.search_vector @@ q AND f.legacy_id LIKE %s"
            " ORDER BY deal_store.search_rank(f.search_vector, q) DESC", ["python-proposed", DEAL, f"F-PY-{tag}-%"]).fetchall()
        assert {r[0] for r in mine} == {f"F-PY-{tag}-1", f"F-PY-{tag}-2"}, mine

    # 6. Errors by SQLSTATE: each of deal_store's SQLSTATEs is a psycopg exception class.
    def fails_with(exc, sql, params):
        try:
            with conn.transaction():
                conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
                conn.execute(sql, params)
        except exc as e:
            return e.sqlstate
        raise AssertionError(f"{sql} did not raise {exc}")

    # deciding a change twice: 55000
    assert fails_with(errors.ObjectNotInPrerequisiteState, "SELECT deal_store.accept_change(%s)", [change_id]) == "55000"
    # a wrong field in a proposal: 22023, naming the element and the field; nothing proposed
    assert fails_with(errors.InvalidParameterValue, "SELECT deal_store.propose_facts(deal_store.start_run(%s), %s)",
                      [DEAL, Jsonb([{"legacy_id": "F-X", "domain": "network", "item": "x", "confidence_score": "high"}])]) == "22023"
    # a deal that does not exist: 42501 to a member of other deals (no one learns whether it exists),
    # P0002 to an admin (or the demo's superuser)
    assert fails_with((errors.InsufficientPrivilege, errors.NoDataFound),
                      "SELECT deal_store.deal_summary(%s)", [uuid.uuid4()]) in ("42501", "P0002")
    # a change that does not exist: P0002
    assert fails_with(errors.NoDataFound, "SELECT deal_store.accept_change(%s)", [uuid.uuid4()]) == "P0002"
    # a NULL where a value is required: 22004
    assert fails_with(errors.NullValueNotAllowed, "SELECT deal_store.start_run(%s)", [None]) == "22004"

    # 7. The worker commits per batch: CALL it in autocommit mode (inside a transaction it is 2D000),
    #    or call process_queue_batch in a transaction of your own.
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.autocommit = True
    conn.execute("SELECT set_config('deal_store.actor', %s, false)", [str(DANA)])  # for the session
    batches, applied, conflicts, remaining = conn.execute(
        "CALL deal_store.process_queue(batch_size => 100)").fetchone()
    assert batches == len(notices), (batches, notices)
    conn.autocommit = False
    with conn.transaction():
        claimed, applied, conflicts = conn.execute("SELECT * FROM deal_store.process_queue_batch(100)").fetchone()
        assert claimed == 0, claimed  # drained above

print("quickstart: ok")
