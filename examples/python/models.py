"""A SQLAlchemy 2 model of deal_store to copy into an application.

What it takes care of:
- composite keys: every deal-owned row is keyed (deal_id, id), so
  session.get(ActiveFact, (deal_id, fact_id));
- server-computed columns (item_checksum by trigger, updated_at, created_at)
  are FetchedValue and fetched back on flush (eager_defaults), so they are set
  right after session.flush();
- the active_* views are the classes to write through: INSERT and UPDATE pass to
  the table, and DELETE is a soft delete that reports its row, so
  session.delete(fact) + commit needs no special handling and warns of nothing;
- views have the keys a view cannot declare (deal_overview: deal_id,
  facts_by_domain: (deal_id, domain), activity: id);
- the actor: set per transaction from session.info["actor"] (see acting_as).
"""
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import FetchedValue, ForeignKey, Integer, event, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, foreign, mapped_column, relationship


class Base(DeclarativeBase):
    pass


SERVER = dict(server_default=FetchedValue(), server_onupdate=FetchedValue())  # set by deal_store, read back


class User(Base):
    __tablename__ = "users"
    __table_args__ = {"schema": "deal_store"}
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str]
    display_name: Mapped[str | None]


class Deal(Base):
    __tablename__ = "active_deals"  # the view: live deals; DELETE through it is a soft delete
    __table_args__ = {"schema": "deal_store"}
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id))
    name: Mapped[str]
    target_name: Mapped[str]
    deal_type: Mapped[str] = mapped_column(**SERVER)
    status: Mapped[str] = mapped_column(**SERVER)
    updated_at: Mapped[datetime] = mapped_column(**SERVER)

    owner: Mapped[User] = relationship()
    facts: Mapped[list["ActiveFact"]] = relationship(
        primaryjoin=lambda: Deal.id == foreign(ActiveFact.deal_id), viewonly=True, order_by=lambda: ActiveFact.legacy_id)


class ActiveFact(Base):
    """The current version of every live fact (deal_store.active_facts)."""
    __tablename__ = "active_facts"
    __table_args__ = {"schema": "deal_store"}
    __mapper_args__ = {"eager_defaults": True}
    deal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    legacy_id: Mapped[str]
    domain: Mapped[str]
    category: Mapped[str | None]
    item: Mapped[str]
    evidence: Mapped[str | None]
    details: Mapped[dict] = mapped_column(JSONB, default=dict)
    confidence_score: Mapped[float] = mapped_column(default=0.5)
    source_document_id: Mapped[uuid.UUID | None]
    source_page_numbers: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    verified: Mapped[bool] = mapped_column(default=False)
    item_checksum: Mapped[str] = mapped_column(**SERVER)  # the trigger's MD5 of the canonical content
    previous_version_id: Mapped[uuid.UUID | None] = mapped_column(**SERVER)  # set when the content changes
    created_at: Mapped[datetime] = mapped_column(**SERVER)
    updated_at: Mapped[datetime] = mapped_column(**SERVER)


class PendingChange(Base):
    __tablename__ = "pending_changes"
    __table_args__ = {"schema": "deal_store"}
    deal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    change_type: Mapped[str]
    entity_type: Mapped[str]
    legacy_entity_id: Mapped[str | None]
    confidence_tier: Mapped[int]
    status: Mapped[str]
    new_value: Mapped[dict | None] = mapped_column(JSONB)


class DealOverview(Base):
    __tablename__ = "deal_overview"
    __table_args__ = {"schema": "deal_store"}
    deal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str]
    owner_email: Mapped[str | None]
    owner_name: Mapped[str | None]
    documents: Mapped[int]
    facts: Mapped[int]
    findings: Mapped[int]
    critical_findings: Mapped[int]
    gaps: Mapped[int]
    open_gaps: Mapped[int]
    pending_tier_1: Mapped[int]
    pending_tier_2: Mapped[int]
    pending_tier_3: Mapped[int]
    conflicts: Mapped[int]
    last_run_number: Mapped[int | None]


class FactsByDomain(Base):
    __tablename__ = "facts_by_domain"
    __table_args__ = {"schema": "deal_store"}
    deal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(primary_key=True)
    facts: Mapped[int]
    verified: Mapped[int]
    low_confidence: Mapped[int]
    avg_confidence: Mapped[Decimal]


class Activity(Base):
    __tablename__ = "activity"
    __table_args__ = {"schema": "deal_store"}
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int]
    created_at: Mapped[datetime]
    deal_id: Mapped[uuid.UUID | None]
    user_email: Mapped[str | None]
    user_name: Mapped[str | None]
    action: Mapped[str]
    entity_type: Mapped[str | None]
    entity_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None]


def acting_as(session: Session, user_id: uuid.UUID) -> Session:
    """Every transaction of this session acts for user_id (SET LOCAL deal_store.actor)."""
    session.info["actor"] = user_id
    return session


@event.listens_for(Session, "after_begin")
def _set_actor(session, transaction, connection):
    if "actor" in session.info:
        connection.execute(text("SELECT deal_store.set_actor(:u)"), {"u": session.info["actor"]})
