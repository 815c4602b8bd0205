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
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

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


metadata = sa.MetaData()
"""The schema. SQLAlchemy Core tables, not ORM classes: the service only inserts rows and runs
a few selects, and the ORM would cost every worker ~6 MB."""

calls = sa.Table(
    "calls",  # one hook call, for audit and metrics: who asked, what was answered, how fast
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("client", sa.String(255)),
    sa.Column("hook", sa.String(100), nullable=False),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("hook_instance", sa.String(100), nullable=False),
    sa.Column("library_version", sa.String(100), nullable=False),
    sa.Column("patient_key", sa.String(64)),
    sa.Column("encounter_key", sa.String(64)),
    sa.Column("card_uuids", sa.JSON, nullable=False),
    sa.Column("indicator_ids", sa.JSON, nullable=False),
    sa.Column("concern", sa.String(50)),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
)

issued_cards = sa.Table(
    "issued_cards",  # kept so that later feedback can be tied to its patient and suggestions
    metadata,
    sa.Column("uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("hook_instance", sa.String(100), nullable=False),
    sa.Column("patient_key", sa.String(64), index=True),
    sa.Column("encounter_key", sa.String(64)),
    sa.Column("indicator_ids", sa.JSON, nullable=False),
    sa.Column("concern", sa.String(50)),
    sa.Column("suggestion_uuids", sa.JSON, nullable=False),
    sa.Column("issued_at", UTCDateTime, nullable=False),
)

feedback = sa.Table(
    "feedback",  # one outcome; `dedupe_key` makes a re-POSTed body a no-op; no free text kept
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("patient_key", sa.String(64)),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted_suggestions", sa.JSON, nullable=False),
    sa.Column("override_code", sa.String(255)),
    sa.Column("override_system", sa.String(255)),
    sa.Column("outcome_timestamp", UTCDateTime, nullable=False),
    sa.Column("user_comment_present", sa.Boolean, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_feedback_patient_time", "patient_key", "outcome_timestamp"),
)

referrals = sa.Table(
    "referrals",  # accepted for a patient in an encounter ("" = no encounter), first time only
    metadata,
    sa.Column("patient_key", sa.String(64), primary_key=True),
    sa.Column("encounter_key", sa.String(64), primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

jwt_replay = sa.Table(
    "jwt_replay",  # a JWT seen recently, keyed by a hash of (iss, jti): bounded, no jti leaks
    metadata,
    sa.Column("claim_key", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


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


class _Upserts:
    """The insert-or-ignore statements, built once: building one per call costs more than
    running it. Only the dialect in use is imported (the other costs every worker a few MB);
    both SQLite and PostgreSQL have ON CONFLICT."""

    def __init__(self, dialect: str) -> None:
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql as dialect_module
        else:
            from sqlalchemy.dialects import sqlite as dialect_module  # type: ignore[no-redef]
        insert: Callable[[sa.Table], Any] = dialect_module.insert
        self.card = insert(issued_cards).on_conflict_do_nothing(index_elements=["uuid"])
        self.referral = insert(referrals).on_conflict_do_nothing(
            index_elements=["patient_key", "encounter_key"]
        )
        self.feedback = (
            insert(feedback)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(feedback.c.id)
        )
        claim = insert(jwt_replay)
        self.claim = claim.on_conflict_do_update(
            index_elements=["claim_key"],
            set_={"expires_at": claim.excluded.expires_at},
            where=jwt_replay.c.expires_at <= sa.bindparam("now"),
        ).returning(jwt_replay.c.claim_key)
        """Inserts (issuer, jti), or takes over a row whose expiry has passed (`now`)."""


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
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction, committed (and so durable) when the block exits without error."""
        with self.engine.begin() as connection:
            yield connection

    def _hash(self, kind: str, resource_id: str) -> str:
        """`Patient/123` and `123` hash alike; FHIR ids never contain '/'."""
        resource_id = resource_id.removeprefix(f"{kind}/")
        message = f"{kind}/{resource_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def patient_key(self, patient_id: str) -> str:
        return self._hash("Patient", patient_id)

    def encounter_key(self, encounter_id: str) -> str:
        return self._hash("Encounter", encounter_id)

    @cached_property
    def _upserts(self) -> _Upserts:
        return _Upserts(self.dialect)

    def record_call(self, call: CallRecord, cards: Sequence[IssuedCard] = ()) -> None:
        """The audit row and the cards it issued, in one transaction (one commit)."""
        with self.transaction() as connection:
            connection.execute(calls.insert(), call.__dict__)
            self._add_cards(connection, cards)

    def _add_cards(self, connection: sa.Connection, cards: Sequence[IssuedCard]) -> None:
        """Insert-or-ignore: a retried write of the same card uuid is not an error."""
        for card in cards:
            connection.execute(self._upserts.card, card.__dict__)

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
        with self.transaction() as connection:
            uuids = {e.card_uuid for e in entries}
            found = sa.select(issued_cards).where(issued_cards.c.uuid.in_(uuids))
            cards = {c.uuid: c for c in connection.execute(found) if c.service_id == service_id}
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
                if connection.execute(self._upserts.feedback, values).first() is None:
                    duplicates += 1
                    continue
                stored += 1
                accepted = entry.accepted_suggestions if entry.outcome == "accepted" else []
                if card and card.patient_key and is_referral and any(map(is_referral, accepted)):
                    at = entry.outcome_timestamp
                    self._add_referral(connection, card.patient_key, card.encounter_key, at)
        return FeedbackResult(stored=stored, duplicates=duplicates, unknown_cards=unknown)

    def latest_override(
        self, patient_key: str, reason_codes: set[str], since: datetime
    ) -> OverrideMemory | None:
        """Most recent override of this patient's cards for one of the codes (empty set: none)."""
        if not reason_codes:
            return None
        stmt = (
            sa.select(feedback.c.override_code, feedback.c.outcome_timestamp)
            .where(
                feedback.c.patient_key == patient_key,
                feedback.c.outcome == "overridden",
                feedback.c.override_code.in_(reason_codes),
                feedback.c.outcome_timestamp >= since,
            )
            .order_by(feedback.c.outcome_timestamp.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(stmt).first()
        if row is None or row.override_code is None:
            return None
        return OverrideMemory(reason_code=row.override_code, at=row.outcome_timestamp)

    def _add_referral(
        self, connection: sa.Connection, patient_key: str, encounter_key: str | None, at: datetime
    ) -> None:
        values = {"patient_key": patient_key, "encounter_key": encounter_key or "", "at": at}
        connection.execute(self._upserts.referral, values)

    def record_referral(self, patient_key: str, encounter_key: str | None, at: datetime) -> None:
        with self.transaction() as connection:
            self._add_referral(connection, patient_key, encounter_key, at)

    def has_referral(self, patient_key: str, encounter_key: str | None) -> bool:
        """Exact match: a referral without an encounter only answers `encounter_key=None`."""
        stmt = sa.select(referrals.c.at).where(
            referrals.c.patient_key == patient_key,
            referrals.c.encounter_key == (encounter_key or ""),
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
        values = {"claim_key": key, "expires_at": expires_at, "now": now}
        with storage.transaction() as connection:
            claimed = connection.execute(storage._upserts.claim, values).first() is not None
        if next(self._claims) % self.PRUNE_EVERY == 1:
            self.prune(now)
        return claimed

    def prune(self, now: float | None = None) -> int:
        """Delete expired rows; they are already treated as absent, this only bounds size."""
        cutoff = self._clock() if now is None else now
        with self._storage.transaction() as connection:
            stmt = sa.delete(jwt_replay).where(jwt_replay.c.expires_at <= cutoff)
            return len(connection.execute(stmt.returning(jwt_replay.c.claim_key)).all())
