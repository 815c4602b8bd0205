"""Storage tests, run against SQLite always and PostgreSQL when MSHT_CDS_TEST_POSTGRES_URL is set.

A PostgreSQL test is never skipped silently in CI: with CI=true and no URL, or with a URL whose
server does not answer, the PostgreSQL variants fail.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from msht_cds.storage import (
    MIGRATIONS_DIR,
    SCHEMA_REVISION,
    CallRecord,
    DatabaseReplayCache,
    FeedbackEntry,
    IssuedCard,
    Storage,
    calls,
    feedback,
    issued_cards,
    jwt_replay,
    metadata,
)

KEY = "test-key"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PG_ENV = "MSHT_CDS_TEST_POSTGRES_URL"


def _pg_url_with_schema(base_url: str) -> Iterator[str]:
    """A fresh schema per test, selected through libpq `options`, dropped afterwards."""
    base = sa.make_url(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = f"msht_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {exc}")
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'cds.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {PG_ENV} is unset: PostgreSQL tests must run in CI")
        pytest.skip(f"{PG_ENV} not set")
    yield from _pg_url_with_schema(base)


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    store = Storage(db_url, KEY)
    store.migrate()
    yield store
    store.close()


def _card(store: Storage, card_uuid: str, patient: str | None = "p1", **kw: object) -> IssuedCard:
    values: dict[str, object] = {
        "uuid": card_uuid,
        "service_id": "msht",
        "hook_instance": "hi-1",
        "patient_key": store.patient_key(patient) if patient else None,
        "indicator_ids": ["IND-1"],
        "concern": "high",
        "suggestion_uuids": ["s-refer", "s-note"],
        "issued_at": T0,
    }
    values.update(kw)
    return IssuedCard(**values)  # type: ignore[arg-type]


def _issue(store: Storage, cards: list[IssuedCard]) -> None:
    """Cards are written with the audit row of the call that issued them."""
    call = CallRecord(
        at=T0,
        client=None,
        hook="patient-view",
        service_id=cards[0].service_id,
        hook_instance=cards[0].hook_instance,
        library_version="test",
        patient_key=cards[0].patient_key,
        encounter_key=cards[0].encounter_key,
        card_uuids=[c.uuid for c in cards],
        indicator_ids=[],
        concern=None,
        status_code=200,
        latency_ms=1.0,
    )
    store.record_call(call, cards)


def _override(card_uuid: str, code: str, at: datetime) -> FeedbackEntry:
    return FeedbackEntry(card_uuid, "overridden", [], code, "http://example.org/cs", at, True)


def _count(store: Storage, table: sa.Table) -> int:
    with store.transaction() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0


def test_migrate_twice_is_a_noop_and_matches_models(storage: Storage) -> None:
    storage.migrate()
    with storage.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        assert {"calls", "issued_cards", "feedback", "referrals", "jwt_replay"} <= tables
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [("0001",)]
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_schema_revision_is_the_newest_migration(storage: Storage) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
    assert storage.schema_revision() == SCHEMA_REVISION


def test_a_current_database_is_not_migrated_again_and_alembic_stays_unloaded(
    tmp_path: Path,
) -> None:
    """Workers start against a database `msht-cds serve` has upgraded: they skip Alembic."""
    url = f"sqlite:///{tmp_path}/current.db"
    first = Storage(url, KEY)
    first.migrate()
    first.close()
    script = textwrap.dedent(
        f"""
        import sys
        from msht_cds.storage import Storage
        store = Storage({url!r}, "k")
        store.migrate()
        print(store.schema_revision(), "alembic" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [SCHEMA_REVISION, "False"]


def test_concurrent_migrations_do_not_collide(db_url: str) -> None:
    stores = [Storage(db_url, KEY) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(store: Storage) -> None:
        barrier.wait()
        try:
            store.migrate()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _count(stores[0], feedback) == 0
    for store in stores:
        store.close()


def test_patient_key_is_stable_keyed_and_hides_the_id() -> None:
    a, b = Storage("sqlite://", KEY), Storage("sqlite://", "another-key")
    key = a.patient_key("9434765919")
    assert key == a.patient_key("9434765919") == a.patient_key("Patient/9434765919")
    assert key != b.patient_key("9434765919")
    assert key != a.patient_key("9434765918")
    assert "9434765919" not in key
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert a.encounter_key("9434765919") != key
    with pytest.raises(ValueError, match="must not be empty"):
        Storage("sqlite://", "")


def test_record_call_round_trip_stores_no_raw_ids(storage: Storage) -> None:
    record = CallRecord(
        at=T0,
        client="https://ehr.example.org",
        hook="patient-view",
        service_id="msht",
        hook_instance="hi-1",
        library_version="2025.1",
        patient_key=storage.patient_key("raw-patient-77"),
        encounter_key=storage.encounter_key("raw-encounter-88"),
        card_uuids=["c-1"],
        indicator_ids=["IND-1", "IND-2"],
        concern="medium",
        status_code=200,
        latency_ms=12.5,
    )
    storage.record_call(record)
    with storage.transaction() as connection:
        row = connection.execute(sa.select(calls)).one()
    assert row.at == T0
    assert row.at.tzinfo is not None
    assert row.card_uuids == ["c-1"]
    assert row.indicator_ids == ["IND-1", "IND-2"]
    assert (row.status_code, row.latency_ms, row.concern) == (200, 12.5, "medium")
    assert row.patient_key == record.patient_key
    with storage.engine.connect() as conn:
        dump = repr(conn.execute(sa.text("SELECT * FROM calls")).all())
    assert "raw-patient-77" not in dump
    assert "raw-encounter-88" not in dump


def test_feedback_is_idempotent_and_joins_the_patient(storage: Storage) -> None:
    _issue(storage, [_card(storage, "card-1")])
    _issue(storage, [_card(storage, "card-1")])  # a retried write is harmless
    body = [
        FeedbackEntry("card-1", "accepted", ["s-note"], None, None, T0, True),
        _override("card-1", "already-known", T0 + timedelta(minutes=1)),
    ]
    first = storage.record_feedback("msht", body)
    second = storage.record_feedback("msht", body)
    assert (first.stored, first.duplicates, first.unknown_cards) == (2, 0, 0)
    assert (second.stored, second.duplicates, second.unknown_cards) == (0, 2, 0)
    assert _count(storage, feedback) == 2
    with storage.transaction() as connection:
        rows = connection.execute(sa.select(feedback)).all()
    assert {r.patient_key for r in rows} == {storage.patient_key("p1")}
    assert all(r.user_comment_present for r in rows)


def test_unknown_card_is_counted_and_stored_without_patient(storage: Storage) -> None:
    _issue(storage, [_card(storage, "other-service", service_id="elsewhere")])
    result = storage.record_feedback(
        "msht", [_override("nope", "x", T0), _override("other-service", "x", T0)]
    )
    assert (result.stored, result.duplicates, result.unknown_cards) == (2, 0, 2)
    with storage.transaction() as connection:
        assert connection.scalars(sa.select(feedback.c.patient_key)).all() == [None, None]


def test_latest_override_respects_since_and_reason_codes(storage: Storage) -> None:
    _issue(storage, [_card(storage, "a"), _card(storage, "b"), _card(storage, "c", "p2")])
    storage.record_feedback(
        "msht",
        [
            _override("a", "already-known", T0),
            _override("b", "already-known", T0 + timedelta(days=2)),
            _override("b", "not-relevant", T0 + timedelta(days=3)),
            _override("c", "already-known", T0 + timedelta(days=5)),  # another patient
        ],
    )
    p1 = storage.patient_key("p1")
    hit = storage.latest_override(p1, {"already-known"}, T0 - timedelta(days=30))
    assert hit is not None
    assert (hit.reason_code, hit.at) == ("already-known", T0 + timedelta(days=2))
    newest = storage.latest_override(p1, {"already-known", "not-relevant"}, T0)
    assert newest is not None
    assert newest.reason_code == "not-relevant"
    assert storage.latest_override(p1, {"already-known"}, T0 + timedelta(days=2, seconds=1)) is None
    assert storage.latest_override(p1, {"other"}, T0 - timedelta(days=30)) is None
    assert storage.latest_override(p1, set(), T0 - timedelta(days=30)) is None
    assert storage.latest_override(storage.patient_key("p3"), {"already-known"}, T0) is None


def test_accepted_referral_suggestion_records_a_referral(storage: Storage) -> None:
    enc = storage.encounter_key("e1")
    _issue(storage, [_card(storage, "r1", encounter_key=enc)])
    p1 = storage.patient_key("p1")
    assert not storage.has_referral(p1, enc)
    storage.record_feedback(
        "msht",
        [FeedbackEntry("r1", "accepted", ["s-note"], None, None, T0, False)],
        is_referral=lambda s: s == "s-refer",
    )
    assert not storage.has_referral(p1, enc)
    storage.record_feedback(
        "msht",
        [FeedbackEntry("r1", "accepted", ["s-refer"], None, None, T0, False)],
        is_referral=lambda s: s == "s-refer",
    )
    assert storage.has_referral(p1, enc)
    assert not storage.has_referral(p1, storage.encounter_key("e2"))
    storage.record_referral(p1, None, T0)
    storage.record_referral(p1, None, T0)  # idempotent
    assert storage.has_referral(p1, None)


def test_replay_cache_claims(storage: Storage) -> None:
    now = [1_000_000.0]
    cache = DatabaseReplayCache(storage, clock=lambda: now[0])
    assert cache.claim("iss", "jti-1", now[0] + 300)
    assert not cache.claim("iss", "jti-1", now[0] + 300)
    assert cache.claim("other-iss", "jti-1", now[0] + 300)
    now[0] += 301
    assert cache.claim("iss", "jti-1", now[0] + 300)  # the old claim expired
    assert not cache.claim("iss", "jti-1", now[0] + 300)
    assert cache.prune() == 1  # other-iss expired
    assert _count(storage, jwt_replay) == 1
    with storage.engine.connect() as conn:
        assert "jti-1" not in repr(conn.execute(sa.text("SELECT * FROM jwt_replay")).all())


def test_replay_cache_concurrent_claims_admit_exactly_one(storage: Storage) -> None:
    cache = DatabaseReplayCache(storage)
    barrier = threading.Barrier(8)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        ok = cache.claim("iss", "same-jti", 4_000_000_000.0)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8
    assert results.count(True) == 1


def test_ping(storage: Storage) -> None:
    assert storage.ping()
    dead = Storage("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2", KEY)
    assert dead.engine.dialect.driver == "psycopg"
    assert not dead.ping()
    dead.close()


def test_sqlite_pragmas_and_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cds.db"
    store = Storage(f"sqlite:///{path}", KEY)
    store.migrate()
    assert path.parent.is_dir()
    with store.engine.connect() as conn:
        values = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }
    assert values == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }
    store.close()


def test_sqlite_acknowledged_feedback_survives_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cds.db'}"
    script = textwrap.dedent(
        f"""
        import os, signal
        from datetime import UTC, datetime
        from msht_cds.storage import FeedbackEntry, Storage
        s = Storage({url!r}, {KEY!r})
        s.migrate()
        e = FeedbackEntry("c", "overridden", [], "x", None, datetime.now(UTC), False)
        print(s.record_feedback("msht", [e]).stored, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.strip() == "1", proc.stderr
    assert proc.returncode == -9
    store = Storage(url, KEY)
    assert _count(store, feedback) == 1
    store.close()


@pytest.mark.parametrize(
    ("record", "table"),
    [(CallRecord, calls), (IssuedCard, issued_cards), (FeedbackEntry, feedback)],
)
def test_every_field_written_has_a_column(record: type, table: sa.Table) -> None:
    """Rows are inserted from the dataclasses' fields by prebuilt statements, which ignore a
    key that is not a column: a field added without a migration would be dropped silently."""
    fields = {f.name for f in dataclasses.fields(record)}
    assert fields <= set(table.columns.keys()), fields - set(table.columns.keys())
