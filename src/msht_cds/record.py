"""The child's record: FHIR R4 JSON from prefetch or the FHIR server, indexed once per request.

Resources stay plain dicts (decoded by orjson): validating every resource with fhir.resources
costs ~0.5 ms each, far more than the whole evaluation, and the rules only read a few fields.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

Resource = dict[str, Any]

_PATIENT_LINKS = ("subject", "patient", "beneficiary")
_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Encounter": (("period", "start"), ("period", "end")),
    "Condition": (("onsetDateTime",), ("onsetPeriod", "start"), ("recordedDate",)),
    "Observation": (("effectiveDateTime",), ("effectivePeriod", "start"), ("issued",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
    "MedicationRequest": (("authoredOn",),),
    "MedicationStatement": (
        ("effectiveDateTime",),
        ("effectivePeriod", "start"),
        ("dateAsserted",),
    ),
    "MedicationDispense": (("whenHandedOver",), ("whenPrepared",)),
    "ServiceRequest": (("authoredOn",), ("occurrenceDateTime",)),
    "Appointment": (("start",), ("created",)),
    "Flag": (("period", "start"),),
    "QuestionnaireResponse": (("authored",),),
    "DocumentReference": (("date",),),
    "EpisodeOfCare": (("period", "start"),),
    "CareTeam": (("period", "start"),),
    "Immunization": (("occurrenceDateTime",), ("recorded",)),
    "RelatedPerson": (("period", "start"),),
}
_CODE_PATHS: dict[str, tuple[str, ...]] = {
    "Encounter": ("reasonCode", "type"),
    "Condition": ("code",),
    "Observation": ("code", "valueCodeableConcept"),
    "Procedure": ("code",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "MedicationDispense": ("medicationCodeableConcept",),
    "ServiceRequest": ("code",),
    "Appointment": ("serviceType", "reasonCode"),
    "Flag": ("code",),
    "RelatedPerson": ("relationship",),
    "DocumentReference": ("type",),
    "EpisodeOfCare": ("type",),
    "CareTeam": ("category",),
    "Immunization": ("vaccineCode",),
    "Patient": ("maritalStatus",),
}


def parse_date(value: object, *, latest: bool = False) -> dt.date | None:
    """FHIR date/dateTime/instant → date; partial dates (YYYY, YYYY-MM) → their first day, or
    with `latest` their last day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return dt.date(int(value), 12, 31) if latest else dt.date(int(value), 1, 1)
        if len(value) == 7:
            year, month = int(value[:4]), int(value[5:7])
            if latest:
                return dt.date(year, month, calendar.monthrange(year, month)[1])
            return dt.date(year, month, 1)
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def without_version(reference: str) -> str:
    """`Patient/1/_history/3` → `Patient/1`: a version-specific reference names the resource."""
    return reference.split("/_history/", 1)[0]


def relative_reference(reference: str) -> str | None:
    """`Type/id` that a relative, absolute or version-specific reference names; None for a
    `urn:` or a bare id."""
    text = without_version(reference)
    if text.startswith("urn:"):
        return None
    parts = text.rstrip("/").split("/")
    return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 else None


def elements(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Any, Any]]:
    """(path, value) of every element of a JSON tree, at any depth, parents first."""
    if isinstance(node, dict):
        items: Iterable[tuple[Any, Any]] = node.items()
    else:
        items = enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*path, key), value
        yield from elements(value, (*path, key))


_WITHDRAWN_VERIFICATION = frozenset({"refuted", "entered-in-error"})


def _withdrawn(resource: Resource) -> bool:
    """Data that must never count as evidence, whatever the rule: entered in error, a refuted
    diagnosis, an encounter cancelled before it began. Still resolvable by reference."""
    status = resource.get("status")
    if status == "entered-in-error":
        return True
    kind = resource["resourceType"]
    if kind == "Encounter":
        return status == "cancelled"
    if kind == "Condition":
        verification = resource.get("verificationStatus")
        if isinstance(verification, dict):
            codes = (
                c.get("code") for c in array(verification.get("coding")) if isinstance(c, dict)
            )
            return any(isinstance(code, str) and code in _WITHDRAWN_VERIFICATION for code in codes)
    return False


def age_in_years(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


PathReader = Callable[[Any], Sequence[Any]]


@functools.cache
def path_reader(path: tuple[str, ...]) -> PathReader:
    """Values at a path, as in FHIRPath: lists at any level are flattened, absent parts give
    nothing. Compiled once per path; the rules read the same few paths on thousands of
    resources per call. The result may be the resource's own list: read it, never change it."""
    if not path:
        return lambda node: (node,)
    part = path[0]

    def step(node: Any) -> Sequence[Any]:
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            return ()
        return child if isinstance(child, list) else (child,)

    if len(path) == 1:
        return step
    rest = path_reader(path[1:])

    def steps(node: Any) -> Sequence[Any]:
        found: list[Any] = []
        for child in step(node):
            found.extend(rest(child))
        return found

    return steps


# Keyed by the resource types the rules know, never by what a request sends: bounded.
_DATE_READERS = {
    kind: tuple(path_reader(path) for path in paths) for kind, paths in _DATE_PATHS.items()
}
_CONCEPT_READERS = {
    kind: tuple(path_reader(tuple(p.split("."))) for p in paths)
    for kind, paths in _CODE_PATHS.items()
}
_DEFAULT_CONCEPT_READERS = (path_reader(("code",)),)


def concept_readers(resource_type: str, path: str | None = None) -> tuple[PathReader, ...]:
    """Readers of a resource type's main coded element(s), or of `path`."""
    if path:
        return (path_reader(tuple(path.split("."))),)
    return _CONCEPT_READERS.get(resource_type, _DEFAULT_CONCEPT_READERS)


def array(value: object) -> list[Any]:
    """A FHIR JSON array, or nothing: a wrongly shaped value reads as absent, never as a
    crash (the rest of the record is still assessed)."""
    return value if isinstance(value, list) else []


def codings(resource: Resource, path: str | None = None) -> Iterator[tuple[str, str]]:
    """(system, code) pairs of a resource's main coded element(s), or of `path`."""
    for read in concept_readers(resource.get("resourceType", ""), path):
        for concept in read(resource):
            if isinstance(concept, dict):
                if "coding" in concept:
                    for coding in array(concept["coding"]):
                        if isinstance(coding, dict):
                            yield (str(coding.get("system", "")), str(coding.get("code", "")))
                elif "code" in concept:  # a bare Coding such as Encounter.class
                    yield (str(concept.get("system", "")), str(concept.get("code", "")))


def _is_resource(value: object) -> TypeGuard[Resource]:
    """A JSON object with a textual resourceType; anything else in a record is ignored."""
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def reference_key(resource: Resource) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


@dataclass
class PatientRecord:
    """Every resource about one child, by type and by reference, with references resolved."""

    patient_id: str
    draft_orders: list[Resource] = field(default_factory=list)
    encounter_id: str | None = None
    by_type: dict[str, list[Resource]] = field(default_factory=dict)
    by_reference: dict[str, Resource] = field(default_factory=dict)
    _dates: dict[int, dt.date | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        patient_id: str,
        resources: Iterable[Resource],
        *,
        encounter_id: str | None = None,
        draft_orders: Iterable[Resource] = (),
        full_urls: dict[int, str] | None = None,
    ) -> PatientRecord:
        record = cls(patient_id=patient_id, encounter_id=encounter_id)
        full_urls = full_urls or {}
        by_reference = record.by_reference
        seen: set[str] = set()
        candidates: list[Resource] = []
        for resource in resources:
            if not _is_resource(resource):
                continue
            key = reference_key(resource)
            if key in seen and resource.get("id") is not None:
                continue
            seen.add(key)
            candidates.append(resource)
            by_reference[key] = resource
            full_url = full_urls.get(id(resource))
            if full_url:
                by_reference[full_url] = resource
        by_type = record.by_type
        verdicts: dict[str, bool | None] = {}  # most resources name the same patient
        for resource in candidates:
            if record._about_other_patient(resource, verdicts) or _withdrawn(resource):
                continue
            kind = resource["resourceType"]
            found = by_type.get(kind)
            if found is None:
                by_type[kind] = [resource]
            else:
                found.append(resource)
        for order in draft_orders:
            if _is_resource(order):
                record.draft_orders.append(order)
        return record

    def _about_other_patient(self, resource: Resource, verdicts: dict[str, bool | None]) -> bool:
        """True for clinical data about someone else: never reason over another child."""
        if resource["resourceType"] == "Patient":
            return resource.get("id") != self.patient_id
        for link in _PATIENT_LINKS:
            ref = resource.get(link)
            if isinstance(ref, dict):
                text = ref.get("reference")
                if not isinstance(text, str):
                    continue
                if text in verdicts:
                    verdict = verdicts[text]
                else:
                    verdict = verdicts[text] = self._names_other_patient(text)
                if verdict is not None:
                    return verdict
        return False

    def _names_other_patient(self, reference: str) -> bool | None:
        """Whether a reference names a patient other than this child; None when it names no
        patient that can be told (then the resource's other links decide)."""
        target = self.resolve(reference)
        if target is not None:
            return target.get("resourceType") == "Patient" and target.get("id") != self.patient_id
        reference = without_version(reference)
        if reference.startswith("Patient/") or "/Patient/" in reference:
            return reference.rsplit("/", 1)[-1] != self.patient_id
        return None

    # ------------------------------------------------------------------ access

    @property
    def patient(self) -> Resource | None:
        patients = self.by_type.get("Patient")
        return patients[0] if patients else None

    @property
    def birth_date(self) -> dt.date | None:
        """A partial birth date (YYYY, YYYY-MM) reads as its last day: the youngest the child
        can be, so that a 17-year-old born in "2008" is still assessed as a child."""
        patient = self.patient
        return parse_date(patient.get("birthDate"), latest=True) if patient else None

    @property
    def encounter(self) -> Resource | None:
        if self.encounter_id is None:
            return None
        return self.by_reference.get(f"Encounter/{self.encounter_id}")

    def of_type(self, resource_type: str, *, include_drafts: bool = False) -> list[Resource]:
        found = self.by_type.get(resource_type, [])
        if include_drafts and self.draft_orders:
            found = found + [r for r in self.draft_orders if r["resourceType"] == resource_type]
        return found

    def resolve(self, reference: object) -> Resource | None:
        """A Reference (dict) or reference string → the resource, if it is in the record."""
        text = reference.get("reference") if isinstance(reference, dict) else reference
        if not isinstance(text, str):
            return None
        found = self.by_reference.get(without_version(text))
        if found is None:
            relative = relative_reference(text)
            if relative is not None:
                found = self.by_reference.get(relative)
        return found

    def date_of(self, resource: Resource) -> dt.date | None:
        """The clinically relevant date of a resource (first of its usual date fields)."""
        key = id(resource)
        if key not in self._dates:
            value: dt.date | None = None
            for read in _DATE_READERS.get(resource.get("resourceType", ""), ()):
                for raw in read(resource):
                    value = parse_date(raw)
                    if value:
                        break
                if value:
                    break
            self._dates[key] = value
        return self._dates[key]

    def visit_date(self, today: dt.date) -> dt.date:
        """The reference date for ages and windows: this encounter's start, else today."""
        encounter = self.encounter
        if encounter is not None:
            start = self.date_of(encounter)
            if start is not None and start <= today:
                return start
        return today

    def age_on(self, on: dt.date) -> int | None:
        birth = self.birth_date
        return age_in_years(birth, on) if birth else None

    def is_draft(self, resource: Resource) -> bool:
        return any(resource is order for order in self.draft_orders)


def resources_from_value(value: object) -> tuple[list[Resource], dict[int, str], list[Resource]]:
    """A prefetch value → (resources, fullUrl by resource, OperationOutcomes found).

    Handles a single resource, searchset/transaction/batch/collection Bundles and `null`."""
    resources: list[Resource] = []
    full_urls: dict[int, str] = {}
    outcomes: list[Resource] = []
    if not isinstance(value, dict):
        return resources, full_urls, outcomes
    if value.get("resourceType") == "Bundle":
        for entry in array(value.get("entry")):
            if not isinstance(entry, dict):
                continue
            resource = entry.get("resource")
            if not _is_resource(resource):
                continue
            if resource.get("resourceType") == "OperationOutcome":
                outcomes.append(resource)
                continue
            if resource.get("resourceType") == "Bundle":
                inner, inner_urls, inner_outcomes = resources_from_value(resource)
                resources.extend(inner)
                full_urls.update(inner_urls)
                outcomes.extend(inner_outcomes)
                continue
            if isinstance(entry.get("fullUrl"), str):
                full_urls[id(resource)] = entry["fullUrl"]
            resources.append(resource)
    elif value.get("resourceType") == "OperationOutcome":
        outcomes.append(value)
    elif _is_resource(value):
        resources.append(value)
    return resources, full_urls, outcomes
