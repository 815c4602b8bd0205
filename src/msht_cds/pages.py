"""HTML pages the service serves: the printable referral pathway for a nation and locality.

Rendered with autoescaping; the URL carries only the nation and locality, never patient data.
The page lists every step with the condition under which the card would show it, so a
clinician can print the whole checklist and tick it off on the ward.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .library.loader import Library
from .library.pathway_model import StepCondition
from .referral import plan_referral
from .service import Knowledge

WEB_TEMPLATES = Environment(
    loader=FileSystemLoader(str(Path(__file__).parent / "web")),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_FLAG_LABELS = {"ictg_area": "ICTG areas only"}


def condition_label(when: StepCondition, library: Library) -> str | None:
    """The step's `when`, in words (None for steps that always apply)."""
    parts = []
    if when.critical:
        parts.append("urgent: a disclosure or immediate danger")
    if when.concern is not None:
        parts.append(" or ".join(when.concern) + " concern")
    if when.forms is not None:
        parts.append(" or ".join(f.replace("_", " ") for f in when.forms) + " possible")
    if when.indicators is not None:
        names = [
            library.indicators[i].model.title if i in library.indicators else f"{i} indicator"
            for i in when.indicators
        ]
        parts.append(" or ".join(names))
    if when.local_flag is not None:
        parts.append(_FLAG_LABELS[when.local_flag])
    return "; ".join(parts) or None


def render_pathway_page(knowledge: Knowledge, nation: str, locality: str | None) -> str | None:
    """The full checklist, or None when the nation has no pathway (the route answers 404).

    An unknown locality, or one in another nation, shows the national steps with a notice
    rather than an error: a printed national checklist is better than none."""
    library = knowledge.library
    if nation not in library.nations:
        return None
    overlay = None
    if locality is not None:
        located = library.overlays.get(locality)
        if located is not None and located.model.nation == nation:
            overlay = located.model
    plan = plan_referral(library, nation, overlay, None)
    return WEB_TEMPLATES.get_template("pathway.html.j2").render(
        plan=plan,
        library=library,
        nations=sorted(library.nations),
        conditions={p.step.id: condition_label(p.step.when, library) for p in plan.steps},
        local_missing=locality is not None and overlay is None,
    )
