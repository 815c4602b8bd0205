"""HTML pages the service serves: the printable referral pathway for a nation and locality.

Rendered with autoescaping; the URL carries only the nation and locality, never patient data.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .referral import plan_referral
from .service import Knowledge

_WEB = Environment(
    loader=FileSystemLoader(str(Path(__file__).parent / "web")),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_pathway_page(knowledge: Knowledge, nation: str, locality: str | None) -> str | None:
    library = knowledge.library
    if nation not in library.nations:
        return None
    overlay = None
    if locality is not None:
        located = library.overlays.get(locality)
        if located is not None and located.model.nation == nation:
            overlay = located.model
    plan = plan_referral(library, nation, overlay, None)
    return _WEB.get_template("pathway.html.j2").render(
        plan=plan,
        library=library,
        nations=sorted(library.nations),
    )
