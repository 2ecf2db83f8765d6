"""deal_store with SQLAlchemy 2 (psycopg 3 driver), using models.py.

DEAL_STORE_DSN as in quickstart.py. Run with warnings as errors
(python3 -W error examples/python/orm.py): a soft delete through
session.delete() must not warn. Every step checks what it got.
"""
import os
import uuid

import psycopg
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from models import Activity, ActiveFact, Deal, DealOverview, FactsByDomain, PendingChange, acting_as

DSN = os.environ.get("DEAL_STORE_DSN", "host=127.0.0.1 dbname=deal_store_demo user=deal_store_app password=app-secret")
DEAL = uuid.UUID("5f1a6a52-93c4-4c65-a7f4-000000000001")
DANA = uuid.UUID("7d0c3c1e-2f57-4d0e-9a57-5b8f0b0a0001")

engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(DSN))
tag = uuid.uuid4().hex[:8]

with acting_as(Session(engine), DANA) as session:
    # Typed views with keys: a BI tool or an ORM reads them like tables.
    overview = session.get(DealOverview, DEAL)
    assert overview.name == "Project Falcon" and overview.owner_name == "Dana Lead", overview.name
    by_domain = {r.domain: r for r in session.scalars(select(FactsByDomain).where(FactsByDomain.deal_id == DEAL))}
    assert by_domain["network"].facts > 0

    # A fact written through the ORM: the server computes item_checksum, read back on flush.
    deal = session.get(Deal, DEAL)
    fact = ActiveFact(deal_id=DEAL, legacy_id=f"F-ORM-{tag}", domain="network", item="ORM-written core switch",
                      details={"vendor": "Cisco"}, source_page_numbers=[3])
    session.add(fact)
    session.flush()
    assert len(fact.item_checksum) == 32 and fact.previous_version_id is None, fact.item_checksum
    session.commit()
    assert fact in deal.facts

    # Composite keys: get by (deal_id, id). An UPDATE makes a new version, same id.
    same = session.get(ActiveFact, (DEAL, fact.id))
    old_checksum = same.item_checksum
    same.item = "ORM-written core switch, replaced 2025"
    session.commit()
    assert same.item_checksum != old_checksum and same.previous_version_id is not None
    versions = session.execute(text("SELECT count(*) FROM deal_store.fact_history(:id)"), {"id": same.id}).scalar()
    assert versions == 2, versions

    # Soft delete the ORM way: DELETE through the view reports its row (no warning, no StaleDataError).
    session.delete(same)
    session.commit()
    assert session.get(ActiveFact, (DEAL, fact.id)) is None
    deleted_by, reason = session.execute(text(
        "SELECT deleted_by, delete_reason FROM deal_store.facts WHERE deal_id = :d AND id = :i AND superseded_at IS NULL"),
        {"d": DEAL, "i": fact.id}).one()
    assert (deleted_by, reason) == (DANA, "DELETE statement"), (deleted_by, reason)

    # The activity view names the person.
    last = session.scalars(select(Activity).where(Activity.deal_id == DEAL, Activity.entity_id == fact.id)
                           .order_by(Activity.seq.desc()).limit(1)).one()
    assert (last.action, last.user_name) == ("soft_delete", "Dana Lead"), (last.action, last.user_name)

    # The queue through the ORM: propose (SQL function), read the pending change as an object.
    run_id = session.execute(text("SELECT deal_store.start_run(:d)"), {"d": DEAL}).scalar()
    session.execute(text("SELECT deal_store.propose_facts(:r, CAST(:f AS jsonb), domains => '{}')"),
                    {"r": run_id, "f": f'[{{"legacy_id": "F-ORM-{tag}-Q", "domain": "network", '
                                          f'"item": "ORM-proposed fibre link", "confidence_score": 0.95}}]'})
    session.execute(text("SET LOCAL deal_store.auto_apply = off"))
    session.execute(text("SELECT deal_store.propose_facts(:r, CAST(:f AS jsonb), domains => '{}')"),
                    {"r": run_id, "f": f'[{{"legacy_id": "F-ORM-{tag}-W", "domain": "network", '
                                          f'"item": "ORM-proposed for the worker", "confidence_score": 0.95}}]'})
    waiting = session.scalars(select(PendingChange).where(
        PendingChange.deal_id == DEAL, PendingChange.legacy_entity_id == f"F-ORM-{tag}-W")).one()
    assert (waiting.status, waiting.confidence_tier) == ("pending", 1)
    session.commit()

# The worker commits per batch: run it on an autocommit connection.
with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
    conn.execute(text("SELECT set_config('deal_store.actor', :u, false)"), {"u": str(DANA)})
    batches, applied, conflicts, remaining = conn.execute(text("CALL deal_store.process_queue()")).one()
    assert applied >= 1 and conflicts == 0, (batches, applied, conflicts)

with acting_as(Session(engine), DANA) as session:
    done = session.scalar(select(func.count()).select_from(ActiveFact).where(
        ActiveFact.deal_id == DEAL, ActiveFact.legacy_id == f"F-ORM-{tag}-W"))
    assert done == 1, done

engine.dispose()
print("orm: ok")
