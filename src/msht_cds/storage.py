"""Durable state: audit of hook calls, cards issued, feedback, referrals and the JWT replay cache.

Child-safeguarding data: no clinical text, no tokens and no raw patient or encounter ids are
ever written. Patients and encounters appear only as keyed HMAC-SHA256 hashes, so a copy of the
database alone cannot be joined back to a child without the operator's key.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_REVISION = "0001"
"""The newest migration in MIGRATIONS_DIR (a test keeps the two in step)."""


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Always hands back aware UTC datetimes; SQLite has no time zones, so it stores naive UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the service never produces local times)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Call(Base):
    """One hook call, for audit and metrics: who asked, what was answered, how fast."""

    __tablename__ = "calls"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    client: Mapped[str | None] = mapped_column(sa.String(255))
    hook: Mapped[str] = mapped_column(sa.String(100))
    service_id: Mapped[str] = mapped_column(sa.String(100))
    hook_instance: Mapped[str] = mapped_column(sa.String(100))
    library_version: Mapped[str] = mapped_column(sa.String(100))
    patient_key: Mapped[str | None] = mapped_column(sa.String(64))
    encounter_key: Mapped[str | None] = mapped_column(sa.String(64))
    card_uuids: Mapped[list[str]] = mapped_column(sa.JSON)
    indicator_ids: Mapped[list[str]] = mapped_column(sa.JSON)
    concern: Mapped[str | None] = mapped_column(sa.String(50))
    status_code: Mapped[int] = mapped_column(sa.Integer)
    latency_ms: Mapped[float] = mapped_column(sa.Float)


class Card(Base):
    """A card we issued, kept so later feedback can be tied to its patient and suggestions."""

    __tablename__ = "issued_cards"
    uuid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(sa.String(100))
    hook_instance: Mapped[str] = mapped_column(sa.String(100))
    patient_key: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    encounter_key: Mapped[str | None] = mapped_column(sa.String(64))
    indicator_ids: Mapped[list[str]] = mapped_column(sa.JSON)
    concern: Mapped[str | None] = mapped_column(sa.String(50))
    suggestion_uuids: Mapped[list[str]] = mapped_column(sa.JSON)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Feedback(Base):
    """One feedback outcome. `dedupe_key` makes a re-POSTed body a no-op; no free text kept."""

    __tablename__ = "feedback"
    __table_args__ = (sa.Index("ix_feedback_patient_time", "patient_key", "outcome_timestamp"),)
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    service_id: Mapped[str] = mapped_column(sa.String(100))
    card_uuid: Mapped[str] = mapped_column(sa.String(64), index=True)
    patient_key: Mapped[str | None] = mapped_column(sa.String(64))
    outcome: Mapped[str] = mapped_column(sa.String(20))
    accepted_suggestions: Mapped[list[str]] = mapped_column(sa.JSON)
    override_code: Mapped[str | None] = mapped_column(sa.String(255))
    override_system: Mapped[str | None] = mapped_column(sa.String(255))
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    user_comment_present: Mapped[bool]
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Referral(Base):
    """A referral accepted for a patient in an encounter ("" = no encounter), first time only."""

    __tablename__ = "referrals"
    patient_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    encounter_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReplayClaim(Base):
    """A JWT seen recently. Keyed by a hash of (iss, jti) so length is bounded and no jti leaks."""

    __tablename__ = "jwt_replay"
    claim_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(sa.Float, index=True)


@dataclass(frozen=True)
class CallRecord:
    at: datetime
    client: str | None
    hook: str
    service_id: str
    hook_instance: str
    library_version: str
    patient_key: str | None
    encounter_key: str | None
    card_uuids: list[str]
    indicator_ids: list[str]
    concern: str | None
    status_code: int
    latency_ms: float


@dataclass(frozen=True)
class IssuedCard:
    """`encounter_key` (optional) lets an accepted referral be remembered per encounter."""

    uuid: str
    service_id: str
    hook_instance: str
    patient_key: str | None
    indicator_ids: list[str]
    concern: str | None
    suggestion_uuids: list[str]
    issued_at: datetime
    encounter_key: str | None = None


@dataclass(frozen=True)
class FeedbackEntry:
    card_uuid: str
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[str]
    override_code: str | None
    override_system: str | None
    outcome_timestamp: datetime
    user_comment_present: bool


@dataclass(frozen=True)
class FeedbackResult:
    stored: int
    duplicates: int
    unknown_cards: int


@dataclass(frozen=True)
class OverrideMemory:
    reason_code: str
    at: datetime


def _dedupe_key(entry: FeedbackEntry) -> str:
    body = [
        entry.card_uuid,
        entry.outcome,
        _utc(entry.outcome_timestamp).isoformat(),
        entry.override_code,
        sorted(set(entry.accepted_suggestions)),
    ]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def _normalise_url(database_url: str) -> str:
    """Plain `postgresql://` would pick psycopg2, which we do not ship; force psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


_SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000", "foreign_keys=ON")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL + synchronous=FULL: an acknowledged commit survives SIGKILL and power loss."""
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class Storage:
    """Sync SQLAlchemy access for SQLite (single host) or PostgreSQL (replicas)."""

    def __init__(self, database_url: str, hash_key: str) -> None:
        if not hash_key:
            raise ValueError("patient_hash_key must not be empty")
        self._key = hash_key.encode()
        url = sa.make_url(_normalise_url(database_url))
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            db = url.database or ""
            if db in ("", ":memory:") or url.query.get("mode") == "memory":
                kwargs["poolclass"] = sa.pool.StaticPool  # one shared in-memory database
                kwargs["connect_args"] = {"check_same_thread": False}
            elif not db.startswith("file:"):
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: sa.Engine = sa.create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def schema_revision(self) -> str | None:
        """The migration the database is at; None for an empty database."""
        try:
            with self.engine.connect() as connection:
                query = sa.text("SELECT version_num FROM alembic_version")
                return connection.execute(query).scalar()
        except sa.exc.DBAPIError:
            return None

    def migrate(self) -> None:
        """Upgrade to head on our own connection, so no alembic.ini is needed at runtime. A
        database already at SCHEMA_REVISION is left alone without loading Alembic (~10 MB in
        every worker: `msht-cds serve` migrates once, before the workers start)."""
        if self.schema_revision() == SCHEMA_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            # Serialise workers/replicas that start together; on SQLite this also makes DDL atomic.
            if self.dialect == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(7245031)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction, committed (and so durable) when the block exits without error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _hash(self, kind: str, resource_id: str) -> str:
        """`Patient/123` and `123` hash alike; FHIR ids never contain '/'."""
        resource_id = resource_id.removeprefix(f"{kind}/")
        message = f"{kind}/{resource_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def patient_key(self, patient_id: str) -> str:
        return self._hash("Patient", patient_id)

    def encounter_key(self, encounter_id: str) -> str:
        return self._hash("Encounter", encounter_id)

    def _insert(self, model: type[Base]) -> Any:
        """Dialect insert supporting ON CONFLICT (both SQLite and PostgreSQL have it). Only the
        dialect in use is imported: the other costs every worker a few MB."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(model)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(model)

    def record_call(self, call: CallRecord, cards: Sequence[IssuedCard] = ()) -> None:
        """The audit row and the cards it issued, in one transaction (one commit)."""
        with self.session() as session:
            session.add(Call(**call.__dict__))
            self._add_cards(session, cards)

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        if cards:
            with self.session() as session:
                self._add_cards(session, cards)

    def _add_cards(self, session: Session, cards: Sequence[IssuedCard]) -> None:
        """Insert-or-ignore: a retried write of the same card uuid is not an error."""
        for card in cards:
            stmt = self._insert(Card).values(**card.__dict__)
            session.execute(stmt.on_conflict_do_nothing(index_elements=["uuid"]))

    def record_feedback(
        self,
        service_id: str,
        entries: list[FeedbackEntry],
        is_referral: Callable[[str], bool] | None = None,
    ) -> FeedbackResult:
        """Store feedback idempotently and commit before returning.

        A card is "unknown" if never issued or issued by another service; its feedback is still
        stored, with a null patient. `is_referral(suggestion_uuid)` marks which accepted
        suggestions are referrals; for those a referral is recorded for the card's patient.
        """
        stored = duplicates = unknown = 0
        now = datetime.now(UTC)
        with self.session() as session:
            uuids = {e.card_uuid for e in entries}
            cards = {
                c.uuid: c
                for c in session.scalars(sa.select(Card).where(Card.uuid.in_(uuids)))
                if c.service_id == service_id
            }
            for entry in entries:
                card = cards.get(entry.card_uuid)
                unknown += card is None
                values = {
                    "dedupe_key": _dedupe_key(entry),
                    "service_id": service_id,
                    "patient_key": card.patient_key if card else None,
                    "received_at": now,
                    **entry.__dict__,
                }
                stmt = self._insert(Feedback).values(**values)
                stmt = stmt.on_conflict_do_nothing(index_elements=["dedupe_key"])
                if session.execute(stmt.returning(Feedback.id)).first() is None:
                    duplicates += 1
                    continue
                stored += 1
                accepted = entry.accepted_suggestions if entry.outcome == "accepted" else []
                if card and card.patient_key and is_referral and any(map(is_referral, accepted)):
                    at = entry.outcome_timestamp
                    self._add_referral(session, card.patient_key, card.encounter_key, at)
        return FeedbackResult(stored=stored, duplicates=duplicates, unknown_cards=unknown)

    def latest_override(
        self, patient_key: str, reason_codes: set[str], since: datetime
    ) -> OverrideMemory | None:
        """Most recent override of this patient's cards for one of the codes (empty set: none)."""
        if not reason_codes:
            return None
        stmt = (
            sa.select(Feedback.override_code, Feedback.outcome_timestamp)
            .where(
                Feedback.patient_key == patient_key,
                Feedback.outcome == "overridden",
                Feedback.override_code.in_(reason_codes),
                Feedback.outcome_timestamp >= since,
            )
            .order_by(Feedback.outcome_timestamp.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(stmt).first()
        if row is None or row.override_code is None:
            return None
        return OverrideMemory(reason_code=row.override_code, at=row.outcome_timestamp)

    def _add_referral(
        self, session: Session, patient_key: str, encounter_key: str | None, at: datetime
    ) -> None:
        stmt = self._insert(Referral).values(
            patient_key=patient_key, encounter_key=encounter_key or "", at=at
        )
        session.execute(
            stmt.on_conflict_do_nothing(index_elements=["patient_key", "encounter_key"])
        )

    def record_referral(self, patient_key: str, encounter_key: str | None, at: datetime) -> None:
        with self.session() as session:
            self._add_referral(session, patient_key, encounter_key, at)

    def has_referral(self, patient_key: str, encounter_key: str | None) -> bool:
        """Exact match: a referral without an encounter only answers `encounter_key=None`."""
        stmt = sa.select(Referral.at).where(
            Referral.patient_key == patient_key, Referral.encounter_key == (encounter_key or "")
        )
        with self.engine.connect() as connection:
            return connection.execute(stmt).first() is not None


class DatabaseReplayCache:
    """JWT `jti` replay cache shared by every worker and replica through the database."""

    PRUNE_EVERY = 256

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock
        self._claims = itertools.count(1)  # next() is atomic under the GIL

    def claim(self, issuer: str, jti: str, expires_at: float) -> bool:
        """True the first time (issuer, jti) is seen while unexpired; False for a replay.

        One upsert statement: it inserts, or takes over a row whose expiry has passed, and
        otherwise changes nothing (no row RETURNed). The primary key makes it atomic.
        """
        now = self._clock()
        key = hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()
        storage = self._storage
        stmt = storage._insert(ReplayClaim).values(claim_key=key, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["claim_key"],
            set_={"expires_at": stmt.excluded.expires_at},
            where=ReplayClaim.expires_at <= now,
        )
        with storage.session() as session:
            claimed = session.execute(stmt.returning(ReplayClaim.claim_key)).first() is not None
        if next(self._claims) % self.PRUNE_EVERY == 1:
            self.prune(now)
        return claimed

    def prune(self, now: float | None = None) -> int:
        """Delete expired rows; they are already treated as absent, this only bounds size."""
        cutoff = self._clock() if now is None else now
        with self._storage.session() as session:
            stmt = sa.delete(ReplayClaim).where(ReplayClaim.expires_at <= cutoff)
            return len(session.execute(stmt.returning(ReplayClaim.claim_key)).all())
