"""The running service's state: settings, the current knowledge (swapped whole on reload),
the database, the JWT verifier, the FHIR reader and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .auth import JwtVerifier, TrustedClients, load_trusted_clients
from .config import Settings
from .errors import LibraryLoadError, LintIssue
from .fhir import FhirLimits, FhirReader
from .logs import get_logger
from .metrics import Metrics
from .service import CallSettings, Knowledge
from .storage import DatabaseReplayCache, Storage

log = get_logger("msht_cds.runtime")


@dataclass
class ReloadStatus:
    ok: bool = True
    at: dt.datetime | None = None
    issues: list[LintIssue] = field(default_factory=list)


def freeze_long_lived() -> None:
    """Hide what lives as long as the process (modules, library, templates) from the cyclic
    garbage collector: decoding a large prefetch allocates enough containers to set off full
    collections, each walking every tracked object. Frozen objects are still freed by
    reference counting."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while a call builds and drops its record: JSON trees and the
    evaluation's objects hold no cycles, and a collection set off by their many containers
    would walk them (and everything else alive) for nothing. The switch is process-wide, so
    the pause is best effort when two threads overlap; the collector is always re-enabled by
    whoever paused it, and nesting is harmless."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def library_fingerprint(*folders: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector for the library folders: path, size and mtime of every file."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class Runtime:
    def __init__(self, settings: Settings, knowledge: Knowledge) -> None:
        self.settings = settings
        self.call_settings = CallSettings.from_settings(settings)
        self.knowledge = knowledge
        self.metrics = Metrics()
        self.storage = Storage(settings.database_url, settings.patient_hash_key)
        self.reader = FhirReader(
            FhirLimits(
                connect_timeout=settings.fhir_connect_timeout,
                read_timeout=settings.fhir_read_timeout,
                max_pages=settings.fhir_max_pages,
                max_response_bytes=settings.fhir_max_response_bytes,
                allow_private_networks=settings.fhir_allow_private_networks,
            )
        )
        clients = (
            load_trusted_clients(settings.clients_file)
            if settings.clients_file is not None
            else TrustedClients(clients=[])
        )
        self.verifier = JwtVerifier(
            clients,
            DatabaseReplayCache(self.storage),
            leeway_seconds=settings.jwt_leeway_seconds,
        )
        self.last_reload = ReloadStatus(at=knowledge.loaded_at)
        self.evaluation_slot = asyncio.Lock()
        """Hook calls take turns in a worker, from reading the body to the response: the work
        holds the GIL anyway, and taking turns bounds memory to one decoded record (calls
        fetching missing prefetch from a FHIR server hold theirs outside the turn). Made anew
        for each event loop that serves the app (`renew_for_loop`)."""
        self._reload_lock = threading.Lock()
        self.fingerprint = self.current_fingerprint()
        self._publish_library()

    def renew_for_loop(self) -> None:
        """An asyncio lock belongs to the loop that first waits on it: each serving loop (the
        app's lifespan) gets its own."""
        self.evaluation_slot = asyncio.Lock()

    def _publish_library(self) -> None:
        self.metrics.library_info.clear()
        self.metrics.library_info.labels(self.knowledge.library.id, self.knowledge.version).set(1)
        self.metrics.library_last_reload_ok.set(1 if self.last_reload.ok else 0)

    def current_fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        return library_fingerprint(Path(self.settings.library_dir), Path(self.settings.cards_dir))

    def reload_if_changed(self) -> ReloadStatus | None:
        """Reload when a library file changed since the last attempt (every worker polls)."""
        fingerprint = self.current_fingerprint()
        if fingerprint == self.fingerprint:
            return None
        return self.reload()

    def reload(self) -> ReloadStatus:
        """Lint and load the library anew (cases included); swap only if lint finds no error,
        else keep serving the last good one."""
        from .lint import load_linted_knowledge  # lint's modules load only when needed

        with self._reload_lock:
            self.fingerprint = self.current_fingerprint()
            now = dt.datetime.now(dt.UTC)
            try:
                fresh = load_linted_knowledge(
                    Path(self.settings.library_dir), Path(self.settings.cards_dir)
                )
            except LibraryLoadError as exc:
                self.last_reload = ReloadStatus(ok=False, at=now, issues=exc.issues)
                self.metrics.library_reload_failures.inc()
                self.metrics.lint_errors.set(len(exc.issues))
                log.error(
                    "library_reload_rejected",
                    errors=len(exc.issues),
                    serving=self.knowledge.version,
                )
            else:
                self.knowledge = fresh
                gc.unfreeze()  # let the old knowledge be collected, then freeze the new one
                freeze_long_lived()
                self.last_reload = ReloadStatus(ok=True, at=now)
                self.metrics.lint_errors.set(0)
                log.info("library_reloaded", library_version=fresh.version)
            self._publish_library()
            return self.last_reload

    def allowed_fhir_bases(self, client_fhir_servers: list[str] | None) -> list[str]:
        if self.settings.auth_enabled:
            return list(client_fhir_servers or [])
        return self.settings.fhir_allowlist_prefixes

    async def aclose(self) -> None:
        await self.reader.aclose()
        self.verifier.close()
        self.storage.close()
