"""Durability under SIGKILL: every feedback the service acknowledged (2xx) is in the database.

`msht-cds serve` runs in a subprocess (auth off on loopback, SQLite in tmp). Cards are issued,
then several threads post feedback concurrently; the server is SIGKILLed while they are still
sending. The database is then opened with `msht_cds.storage.Storage` and every acknowledged
feedback must be there (SQLite WAL + synchronous=FULL, commit before the 200).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from msht_cds.storage import Storage, feedback

from .servers import SERVICE, ServeProcess, discovery_templates, full_request

THREADS = 6
CARDS = 12
ACKS_BEFORE_KILL = 150
MAX_WAIT_SECONDS = 90.0
HASH_KEY = "sec-kill-test-key"


@pytest.mark.slow
def test_every_acknowledged_feedback_survives_sigkill(tmp_path: Path) -> None:
    database = tmp_path / "msht-cds.db"
    url = f"sqlite:///{database}"
    server = ServeProcess(
        tmp_path,
        {
            "MSHT_CDS_AUTH": "off",
            "MSHT_CDS_DATABASE_URL": url,
            "MSHT_CDS_PATIENT_HASH_KEY": HASH_KEY,
        },
    ).start()
    assert server.process is not None
    try:
        service = f"{server.url}/cds-services/{SERVICE}"
        templates = discovery_templates(server.url)
        cards: list[str] = []
        with httpx.Client(timeout=60) as http:
            for _ in range(CARDS):
                response = http.post(service, json=full_request(templates))
                assert response.status_code == 200, response.text
                cards.extend(card["uuid"] for card in response.json()["cards"])
        assert cards

        lock = threading.Lock()
        acknowledged: list[tuple[str, str]] = []
        sent = 0
        errors: list[str] = []
        stop = threading.Event()
        killing = threading.Event()
        stamps = itertools.count()
        start = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)

        def sender(worker: int) -> None:
            nonlocal sent
            with httpx.Client(timeout=30) as http:
                for index in itertools.count():
                    if stop.is_set():
                        return
                    card = cards[(worker + index) % len(cards)]
                    with lock:
                        stamp = start + dt.timedelta(microseconds=next(stamps))
                        sent += 1
                    timestamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    body = {
                        "feedback": [
                            {
                                "card": card,
                                "outcome": "overridden",
                                "outcomeTimestamp": timestamp,
                                "overrideReason": {
                                    "reason": {
                                        "code": "not-relevant",
                                        "system": "https://example.test/override",
                                    }
                                },
                            }
                        ]
                    }
                    try:
                        response = http.post(f"{service}/feedback", json=body)
                    except httpx.HTTPError as exc:
                        if not killing.is_set():
                            errors.append(type(exc).__name__)
                        return  # the server is gone
                    if 200 <= response.status_code < 300:
                        with lock:
                            acknowledged.append((card, timestamp))
                    else:
                        errors.append(f"HTTP {response.status_code}")
                        return

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        while time.monotonic() < deadline:
            with lock:
                if len(acknowledged) >= ACKS_BEFORE_KILL:
                    break
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.01)
        in_flight = sum(t.is_alive() for t in threads)
        killing.set()
        server.process.kill()  # SIGKILL, by pid, while the senders are mid-request
        server.process.wait(30)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()

    storage = Storage(url, HASH_KEY)
    try:
        with storage.transaction() as connection:
            integrity = connection.execute(sa.text("PRAGMA integrity_check")).scalar()
            columns = (feedback.c.card_uuid, feedback.c.outcome_timestamp)
            rows = connection.execute(sa.select(*columns)).all()
    finally:
        storage.close()
    stored = {(r.card_uuid, r.outcome_timestamp) for r in rows}

    def key(item: tuple[str, str]) -> tuple[str, dt.datetime]:
        return item[0], dt.datetime.fromisoformat(item[1].replace("Z", "+00:00"))

    missing = [a for a in acknowledged if key(a) not in stored]
    found = len(acknowledged) - len(missing)
    print(
        f"\nkill test: sent={sent} acknowledged={len(acknowledged)} found={found} "
        f"stored_total={len(stored)} senders_in_flight_at_kill={in_flight}"
    )
    assert not errors, errors
    assert integrity == "ok"
    assert in_flight > 0, "the kill must land while feedback is still being sent"
    assert len(acknowledged) >= ACKS_BEFORE_KILL // 2, "not enough traffic to mean anything"
    assert missing == [], f"{len(missing)} acknowledged feedback entries were lost"
    assert len(stored) >= len(acknowledged)
