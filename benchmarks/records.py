"""Benchmark inputs: real Synthea records turned into `patient-view` requests.

Self-contained on purpose (no imports from tests/ or from the service): it reads a Synthea
Bundle (.json or .json.gz; transaction, batch or collection), shifts every ISO date so that the
last encounter is today, makes an adult patient a child again, and files the resources into the
prefetch keys that the service's discovery document names.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SYNTHEA_DIRS = (
    REPO.parent / "shared" / "fhir-r4" / "synthea",  # a clone with shared/ beside it (CI, dev)
    Path("/work/shared/fhir-r4/synthea"),
)

# Size classes from the issue: (resources, bytes of compact JSON).
SIZE_TARGETS: dict[str, tuple[int, int]] = {
    "small": (100, 200_000),
    "medium": (1_150, 1_300_000),
    "large": (5_300, 8_200_000),
}
CHILD_AGE_YEARS = 14
"""An adult patient's birthDate is moved to this many years before the last encounter."""

# Full dates and dateTimes/instants only. Bare years and year-months are left alone: a
# four-digit string is as likely to be a code as a year.
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME_TAIL = re.compile(r"T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?")


def synthea_dir() -> Path:
    """Where the Synthea records are: $MSHT_CDS_SYNTHEA_DIR, else shared/ beside the clone."""
    env = os.environ.get("MSHT_CDS_SYNTHEA_DIR")
    if env:
        return Path(env)
    for candidate in DEFAULT_SYNTHEA_DIRS:
        if candidate.is_dir():
            return candidate
    return DEFAULT_SYNTHEA_DIRS[0]


def read_bundle(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    data = orjson.loads(raw)
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise ValueError(f"{path}: not a FHIR Bundle")
    return data


# --------------------------------------------------------------------------- dates


def shift_date_string(value: str, days: int) -> str:
    """`value` shifted by `days` if it is an ISO date or dateTime, else unchanged.

    The text after the date (time, fraction, zone) is kept exactly, so precision and offset
    do not change."""
    match = _DATE.match(value)
    if match is None:
        return value
    tail = value[10:]
    if tail and _DATETIME_TAIL.fullmatch(tail) is None:
        return value
    try:
        day = dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return value
    return (day + dt.timedelta(days=days)).isoformat() + tail


def shift_dates(node: Any, days: int) -> Any:
    """A copy of a decoded JSON value with every ISO date/dateTime string shifted by `days`."""
    if isinstance(node, dict):
        return {key: shift_dates(value, days) for key, value in node.items()}
    if isinstance(node, list):
        return [shift_dates(value, days) for value in node]
    if isinstance(node, str):
        return shift_date_string(node, days)
    return node


def _date_prefix(value: object) -> dt.date | None:
    if not isinstance(value, str) or _DATE.match(value) is None:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def last_encounter_date(resources: Iterable[dict[str, Any]]) -> dt.date | None:
    found: dt.date | None = None
    for resource in resources:
        if resource.get("resourceType") != "Encounter":
            continue
        period = resource.get("period") or {}
        day = _date_prefix(period.get("start")) or _date_prefix(period.get("end"))
        if day is not None and (found is None or day > found):
            found = day
    return found


def years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


# --------------------------------------------------------------------------- records


def bundle_resources(bundle: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) for every entry, nested Bundles flattened."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or "resourceType" not in resource:
            continue
        if resource["resourceType"] == "Bundle":
            found.extend(bundle_resources(resource))
            continue
        full_url = entry.get("fullUrl")
        found.append((full_url if isinstance(full_url, str) else None, resource))
    return found


@dataclass
class Record:
    """One patient's resources, dates shifted so the last encounter is `today`."""

    source: Path
    entries: list[tuple[str | None, dict[str, Any]]]
    patient: dict[str, Any]
    shift_days: int
    birth_date_rewritten: bool
    original_bytes: int

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])

    @property
    def resource_count(self) -> int:
        return len(self.entries)


def load_record(path: Path, today: dt.date | None = None) -> Record:
    """Read a Synthea Bundle and make it a child's record whose last encounter is `today`."""
    today = today or dt.datetime.now(dt.UTC).date()
    bundle = read_bundle(path)
    original_bytes = len(orjson.dumps(bundle))
    entries = bundle_resources(bundle)
    patients = [r for _, r in entries if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise ValueError(f"{path}: expected exactly one Patient with an id")
    last = last_encounter_date(r for _, r in entries)
    if last is None:
        raise ValueError(f"{path}: no Encounter with a period")
    days = (today - last).days
    shifted = [(url, shift_dates(resource, days)) for url, resource in entries]
    patient = next(r for _, r in shifted if r.get("resourceType") == "Patient")
    patient.pop("deceasedDateTime", None)
    patient.pop("deceasedBoolean", None)
    birth = _date_prefix(patient.get("birthDate"))
    rewritten = False
    if birth is None or years_before(today, 18) >= birth:
        patient["birthDate"] = years_before(today, CHILD_AGE_YEARS).isoformat()
        rewritten = True
    return Record(path, shifted, patient, days, rewritten, original_bytes)


def candidate_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz"))
    )


@dataclass(frozen=True)
class Candidate:
    path: Path
    resources: int
    size: int


def survey(directory: Path) -> list[Candidate]:
    """Every single-patient Bundle under `directory` with its resource count and size."""
    found: list[Candidate] = []
    for path in candidate_files(directory):
        try:
            bundle = read_bundle(path)
        except (OSError, ValueError, orjson.JSONDecodeError):
            continue
        entries = bundle_resources(bundle)
        patients = sum(1 for _, r in entries if r.get("resourceType") == "Patient")
        if patients != 1:
            continue  # hospital/practitioner bundles, multi-patient files
        found.append(Candidate(path, len(entries), len(orjson.dumps(bundle))))
    return found


def choose(
    candidates: list[Candidate], targets: dict[str, tuple[int, int]] = SIZE_TARGETS
) -> dict[str, Candidate]:
    """The record closest to each size class (log distance in resources and bytes); distinct
    records for distinct classes where possible. Deterministic for the same folder."""
    chosen: dict[str, Candidate] = {}
    used: set[Path] = set()
    for name, (resources, size) in sorted(targets.items(), key=lambda kv: kv[1]):

        def distance(c: Candidate, resources: int = resources, size: int = size) -> float:
            return abs(math.log(c.resources / resources)) + abs(math.log(c.size / size))

        pool = [c for c in candidates if c.path not in used] or candidates
        best = min(pool, key=lambda c: (distance(c), str(c.path)))
        chosen[name] = best
        used.add(best.path)
    return chosen


# --------------------------------------------------------------------------- requests


def template_types(templates: dict[str, str]) -> dict[str, str]:
    """Prefetch key → resource type, from discovery's templates (`Type/..` or `Type?..`)."""
    types: dict[str, str] = {}
    for key, template in templates.items():
        match = re.match(r"([A-Z][A-Za-z]+)[/?]", template)
        if match:
            types[key] = match.group(1)
    return types


@dataclass
class Prefetch:
    prefetch: dict[str, Any]
    resources: int
    dropped: dict[str, int] = field(default_factory=dict)


def build_prefetch(record: Record, templates: dict[str, str]) -> Prefetch:
    """`patient` is the Patient; every other key a searchset Bundle of its type. Resources of
    types no template names are dropped (counted in `dropped`)."""
    types = template_types(templates)
    by_type: dict[str, list[tuple[str | None, dict[str, Any]]]] = {}
    for url, resource in record.entries:
        by_type.setdefault(resource["resourceType"], []).append((url, resource))
    prefetch: dict[str, Any] = {}
    sent = 0
    for key, resource_type in types.items():
        if resource_type == "Patient" and "/" in templates[key]:
            prefetch[key] = record.patient
            sent += 1
            continue
        if key == "encounter":  # encounter hooks only; patient-view does not name it
            continue
        found = by_type.get(resource_type, [])
        entries = []
        for url, resource in found:
            entry: dict[str, Any] = {"resource": resource, "search": {"mode": "match"}}
            if url:
                entry = {"fullUrl": url, **entry}
            entries.append(entry)
        prefetch[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        sent += len(entries)
    named = set(types.values())
    dropped: dict[str, int] = {}
    for resource_type, found in sorted(by_type.items()):
        if resource_type not in named:
            dropped[resource_type] = len(found)
    return Prefetch(prefetch, sent, dropped)


@dataclass(frozen=True)
class RequestBody:
    """A `patient-view` body split around its hookInstance, so each request gets a fresh UUID
    without copying megabytes: send `head + uuid + tail`."""

    head: bytes
    tail: bytes
    resources: int

    @property
    def size(self) -> int:
        return len(self.head) + 36 + len(self.tail)

    def with_instance(self, instance: str | None = None) -> bytes:
        return self.head + (instance or str(uuid.uuid4())).encode() + self.tail


def patient_view_body(record: Record, templates: dict[str, str]) -> tuple[RequestBody, Prefetch]:
    prefetch = build_prefetch(record, templates)
    rest = orjson.dumps(
        {
            "hook": "patient-view",
            "context": {"userId": "Practitioner/benchmark", "patientId": record.patient_id},
            "prefetch": prefetch.prefetch,
        }
    )
    # `{"hookInstance":"<uuid>",` + the rest of the object without its opening brace.
    return RequestBody(b'{"hookInstance":"', b'",' + rest[1:], prefetch.resources), prefetch
