"""A retried call with an idempotency key across a dropped connection, as a
client over TCP sees it (the login deal_store_app, a member of
deal_store_service, naming its user):

1. the connection drops after the call committed but before the client read the
   answer: the retry on a new connection gets the first call's run, and there is
   still one run;
2. the connection drops (the server ends the session) while the call's
   transaction is open: nothing was committed, the retry starts the run once;
3. two sessions retry the same key at once: the second waits for the first and
   returns its result.

    python3 tests/feed/idempotency_client.py "host=… dbname=… user=… password=…" "admin conninfo"
"""
import sys
import threading
import uuid

import psycopg

APP, ADMIN = sys.argv[1], sys.argv[2]
DEAL = uuid.UUID("5f1a6a52-93c4-4c65-a7f4-000000000001")  # the demo deal
DANA = uuid.UUID("7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001")


def start_run(conn, key):
    with conn.transaction():
        conn.execute("SELECT deal_store.set_actor(%s)", [DANA])
        return conn.execute("SELECT deal_store.start_run(%s, %s, idempotency_key => %s)", [DEAL, ["network"], key]).fetchone()[0]


def runs(admin):
    return admin.execute("SELECT count(*) FROM deal_store.analysis_runs WHERE deal_id = %s", [DEAL]).fetchone()[0]


admin = psycopg.connect(ADMIN, autocommit=True)
tag = uuid.uuid4().hex[:8]

# 1. committed, answer lost: the retry returns the same run
before = runs(admin)
first = psycopg.connect(APP)
run = start_run(first, f"{tag}/committed")
first.close()  # the answer never reaches the application
again = psycopg.connect(APP)
assert start_run(again, f"{tag}/committed") == run
assert runs(admin) == before + 1, (runs(admin), before)

# 2. the session ends inside the transaction: nothing committed, the retry runs once
before = runs(admin)
lost = psycopg.connect(APP)
lost.execute("SELECT deal_store.set_actor(%s)", [DANA])
lost.execute("SELECT deal_store.start_run(%s, %s, idempotency_key => %s)", [DEAL, ["network"], f"{tag}/dropped"])
admin.execute("SELECT pg_terminate_backend(%s)", [lost.info.backend_pid])
try:
    lost.commit()
    raise AssertionError("the terminated session committed")
except psycopg.OperationalError:
    pass
lost.close()
assert runs(admin) == before
retried = start_run(again, f"{tag}/dropped")
assert start_run(again, f"{tag}/dropped") == retried
assert runs(admin) == before + 1

# 3. two sessions with one key at once: the second waits for the first and returns its run
before = runs(admin)
holder = psycopg.connect(APP)
holder.execute("SELECT deal_store.set_actor(%s)", [DANA])
held = holder.execute("SELECT deal_store.start_run(%s, %s, idempotency_key => %s)",
                      [DEAL, ["network"], f"{tag}/race"]).fetchone()[0]
got = {}


def second():
    with psycopg.connect(APP) as conn:
        got["run"] = start_run(conn, f"{tag}/race")


waiter = threading.Thread(target=second)
waiter.start()
waiter.join(1.0)
assert waiter.is_alive(), "the second call did not wait for the first"
holder.commit()
waiter.join(10)
assert got.get("run") == held, (got, held)
assert runs(admin) == before + 1

for c in (again, holder, admin):
    c.close()
print("idempotency over a dropped connection: ok")
