"""Prefetch templates derived from what the loaded library reads, and the five prefetch states.

The discovery document is built from these templates, so it always matches the rules: adding
an indicator that reads `Flag` adds a `flags` template without anyone editing discovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cdshooks import ENCOUNTER_HOOKS, HOOKS, HookRequest
from .library.loader import Library
from .record import Resource, array, resources_from_value

_ALWAYS = ("Patient", "Encounter", "RelatedPerson")


def template_key(resource_type: str) -> str:
    if resource_type == "Patient":
        return "patient"
    return resource_type[0].lower() + resource_type[1:] + "s"


@dataclass(frozen=True)
class PrefetchPlan:
    """Which FHIR queries each hook needs, keyed as they appear in discovery and requests."""

    resource_types: tuple[str, ...]
    by_hook: dict[str, dict[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per library, not per request.
        object.__setattr__(self, "by_hook", {hook: self._build(hook) for hook in HOOKS})

    @classmethod
    def for_library(cls, library: Library) -> PrefetchPlan:
        types = set(_ALWAYS)
        selectors = [library.manifest.evidence] + [
            located.model.evidence for located in library.indicators.values()
        ]
        types.update(spec.resource for evidence in selectors for spec in evidence.values())
        return cls(tuple(sorted(types, key=lambda t: (t != "Patient", t))))

    def templates(self, hook: str) -> dict[str, str]:
        return self.by_hook[hook]

    def _build(self, hook: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for resource_type in self.resource_types:
            if resource_type == "Patient":
                found["patient"] = "Patient/{{context.patientId}}"
            else:
                found[template_key(resource_type)] = (
                    f"{resource_type}?patient={{{{context.patientId}}}}"
                )
        if hook in ENCOUNTER_HOOKS:
            found["encounter"] = "Encounter/{{context.encounterId}}"
        return found


def fill(template: str, request: HookRequest) -> str:
    """Replace the context tokens we use (§Prefetch tokens)."""
    return template.replace("{{context.patientId}}", request.patient_id).replace(
        "{{context.encounterId}}", request.encounter_id or ""
    )


@dataclass
class PrefetchState:
    """What the request's prefetch gave us, per template key (checklist §F item 40)."""

    resources: list[Resource] = field(default_factory=list)
    full_urls: dict[int, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    next_pages: dict[str, str] = field(default_factory=dict)

    def add(self, value: Any) -> list[Resource]:
        resources, urls, outcomes = resources_from_value(value)
        self.resources.extend(resources)
        self.full_urls.update(urls)
        return outcomes


def read_prefetch(request: HookRequest, templates: dict[str, str]) -> PrefetchState:
    """Absent → to fetch; null or empty Bundle → no data; OperationOutcome → failed, not
    refetched blindly; a searchset `next` link → to follow."""
    state = PrefetchState()
    for key in templates:
        if key not in request.prefetch:
            state.missing.append(key)
            continue
        value = request.prefetch[key]
        if value is None:
            continue
        if not isinstance(value, dict):
            state.failed.append(key)
            continue
        outcomes = state.add(value)
        if outcomes:
            state.failed.append(key)
        for link in array(value.get("link")):
            if (
                isinstance(link, dict)
                and link.get("relation") == "next"
                and isinstance(link.get("url"), str)
            ):
                state.next_pages[key] = link["url"]
    return state
