"""`GET /preview`: a page where a safeguarding lead sees a card before a clinician does.

Pick any case from the library's `.test.yaml` files, a nation and a locality; the page shows
the card as an EHR would (summary, indicator colour, markdown detail rendered safely,
suggestions, links) and, under it, why: what fired with its evidence, what was suppressed,
de-duplicated or nearly fired. It reads the knowledge the service is serving right now, so
after a reload it shows the new library.

Only synthetic test cases are ever shown, never a patient; still, the page is for development
and library review, so the app mounts it only when `MSHT_CDS_PREVIEW=on`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .errors import LintIssue, RequestError
from .explain import CaseRef, Explanation, explain_case, preview_page, read_cases
from .library.loader import Library
from .runtime import Runtime
from .service import CallSettings, Knowledge

router = APIRouter()
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@router.get("/preview", response_class=HTMLResponse, include_in_schema=False)
async def preview(
    request: Request,
    case: str | None = None,
    nation: str | None = None,
    locality: str | None = None,
) -> HTMLResponse:
    """The card for one test case, nation and locality, with the explanation under it."""
    runtime: Runtime = request.app.state.runtime
    knowledge = runtime.knowledge
    library = knowledge.library
    nation = nation or runtime.settings.nation
    locality = runtime.settings.locality if locality is None else (locality or None)
    cases, problems = await anyio.to_thread.run_sync(_cases, Path(runtime.settings.library_dir))
    notice, status = None, 200
    if problems:
        notice = f"{len(problems)} problem(s) in the test files; run `msht-cds lint`."
    if nation not in library.nations:
        notice, status = f"There is no pathway for nation {nation!r}.", 404
        nation = next(iter(sorted(library.nations)), nation)
    if locality is not None and locality not in library.overlays:
        notice, status = f"There is no local overlay {locality!r}.", 404
        locality = None
    chosen = next((c for c in cases if c.case.name == case), None) if case else _default(cases)
    if case and chosen is None:
        notice, status = f"There is no test case named {case!r}.", 404
    form = _form(library, cases, chosen.case.name if chosen else None, nation, locality)
    explanation: Explanation | None = None
    if chosen is not None:
        where = CallSettings(nation, locality, runtime.settings.public_base_url)
        try:
            explanation = await anyio.to_thread.run_sync(_explain, knowledge, chosen, where)
        except RequestError as exc:  # e.g. a case without a Patient: say so, keep the form
            notice, status = f"This case cannot be evaluated: {exc.message}", 422
    html = preview_page(explanation, form, notice)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


_CACHE: dict[Path, tuple[object, tuple[list[CaseRef], list[LintIssue]]]] = {}


def _cases(library_dir: Path) -> tuple[list[CaseRef], list[LintIssue]]:
    """The library's test cases, read again only when a .test.yaml file has changed."""
    paths = sorted(library_dir.glob("**/*.test.yaml"))
    stamp = tuple((str(p), *_stat(p)) for p in paths)
    cached = _CACHE.get(library_dir)
    if cached is None or cached[0] != stamp:
        cached = _CACHE[library_dir] = (stamp, read_cases(library_dir))
    return cached[1]


def _stat(path: Path) -> tuple[int, int]:
    try:
        found = path.stat()
    except OSError:  # removed while we looked: read again next time
        return (0, -1)
    return (found.st_mtime_ns, found.st_size)


def _explain(knowledge: Knowledge, chosen: CaseRef, where: CallSettings) -> Explanation:
    return explain_case(knowledge, chosen.origin, chosen.case, where)


def _default(cases: list[CaseRef]) -> CaseRef | None:
    """A whole-patient scenario if there is one, else the first case that fires."""
    for kind in ("scenario", "fires"):
        for found in cases:
            if found.case.kind == kind:
                return found
    return cases[0] if cases else None


def _form(
    library: Library,
    cases: list[CaseRef],
    case: str | None,
    nation: str,
    locality: str | None,
) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for found in cases:
        groups.setdefault(found.file, []).append(found.case.name)
    return {
        "groups": sorted(groups.items()),
        "case": case,
        "nations": sorted(library.nations),
        "nation": nation,
        "localities": sorted(
            (ident, located.model.organisation) for ident, located in library.overlays.items()
        ),
        "locality": locality,
    }
