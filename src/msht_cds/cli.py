"""`msht-cds`: serve the hooks, and the tools safeguarding leads use on the library."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import orjson
import typer

from .config import Settings, is_loopback_host
from .errors import LibraryLoadError, RequestError, operation_outcome

if TYPE_CHECKING:
    from .explain import Explanation
    from .service import Knowledge

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

LibraryDir = Annotated[Path, typer.Argument(help="The library folder (pathways/).")]
LibraryOption = Annotated[Path | None, typer.Option("--library", help="Library folder.")]
CardsOption = Annotated[Path | None, typer.Option("--cards", help="Card templates folder.")]
RequestArg = Annotated[
    Path | None, typer.Argument(help="A saved CDS Hooks request (JSON); or use --case.")
]
CaseOption = Annotated[
    str | None, typer.Option("--case", help="A case name from a .test.yaml (or part of it).")
]
NationOption = Annotated[
    str | None, typer.Option(help="Nation of the referral pathway (default MSHT_CDS_NATION).")
]
LocalityOption = Annotated[
    str | None, typer.Option(help="Local overlay id (default MSHT_CDS_LOCALITY).")
]
TodayOption = Annotated[
    str | None, typer.Option(help="Visit date YYYY-MM-DD for a request file (default today).")
]


TextOrJson = Annotated[Literal["text", "json"], typer.Option("--format", help="text or json")]


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the CDS Hooks service (uvicorn)."""
    import uvicorn
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"refusing to start: invalid MSHT_CDS_* settings\n{exc}", err=True)
        raise typer.Exit(2) from exc
    problems = settings.serving_problems()
    if problems:
        typer.echo("refusing to start: " + "; ".join(problems), err=True)
        raise typer.Exit(2)
    if not settings.auth_enabled and not is_loopback_host(host):
        typer.echo(
            f"refusing to start: MSHT_CDS_AUTH=off is only allowed on a loopback address, "
            f"not {host}",
            err=True,
        )
        raise typer.Exit(2)
    if not settings.auth_enabled:
        typer.echo(
            "WARNING: authentication is OFF (MSHT_CDS_AUTH=off). Local development "
            "only: every caller is trusted.",
            err=True,
        )
    # Checking the library and upgrading the schema happen in a process of their own, so the
    # serving process never holds a second copy of the library or Alembic's modules.
    preflight = multiprocessing.get_context("spawn").Process(target=_preflight)
    preflight.start()
    preflight.join()
    code = preflight.exitcode or 0
    if code != 0:  # the child said why; killed by a signal, it has a negative code
        raise typer.Exit(code if code > 0 else 1)
    uvicorn.run(
        "msht_cds.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="msht_cds.nodelay:NoDelayH11Protocol",
        log_config=None,
        proxy_headers=False,
    )


def _preflight() -> None:
    """Refuse to start on a library with lint errors; bring the database schema up to date."""
    from sqlalchemy.exc import SQLAlchemyError

    from .lint import load_linted_knowledge
    from .storage import Storage

    settings = Settings()
    try:
        load_linted_knowledge(settings.library_dir, settings.cards_dir)
    except LibraryLoadError as exc:
        typer.echo(f"refusing to start: the library has errors\n{exc}", err=True)
        sys.exit(1)
    storage = Storage(settings.database_url, settings.patient_hash_key)
    try:
        storage.migrate()
    except SQLAlchemyError as exc:  # the URL may hold a password: name the error type only
        typer.echo(
            f"refusing to start: the database schema could not be upgraded ({type(exc).__name__})",
            err=True,
        )
        sys.exit(1)
    finally:
        storage.close()


@app.command()
def evaluate(
    request_file: Annotated[Path, typer.Argument(help="A CDS Hooks request (JSON).")],
    today: Annotated[
        str | None, typer.Option(help="Visit date YYYY-MM-DD (default: today).")
    ] = None,
    library: Annotated[Path | None, typer.Option(help="Library folder.")] = None,
    cards: Annotated[Path | None, typer.Option(help="Card templates folder.")] = None,
) -> None:
    """Print the response the service would give to REQUEST_FILE, offline (no FHIR calls)."""
    from .service import CallSettings, decide_offline

    settings = _settings(library_dir=library, cards_dir=cards)
    knowledge = _knowledge(settings)
    try:
        body = orjson.loads(request_file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        typer.echo(f"{request_file}: cannot read JSON: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        day = dt.date.fromisoformat(today) if today else dt.date.today()
    except ValueError as exc:
        typer.echo(f"--today {today!r} is not a date: use YYYY-MM-DD", err=True)
        raise typer.Exit(2) from exc
    try:
        where = CallSettings.from_settings(settings)
        decision = decide_offline(knowledge, body, where, day, tool="evaluate")
    except RequestError as exc:
        typer.echo(json.dumps(operation_outcome(exc.issue_code, exc.message), indent=2))
        raise typer.Exit(1) from exc
    typer.echo(decision.response.model_dump_json(exclude_none=True, indent=2))


def _knowledge(settings: Settings) -> Knowledge:
    from .service import load_knowledge

    try:
        return load_knowledge(settings.library_dir, settings.cards_dir)
    except LibraryLoadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@app.command("test")
def run_tests(
    library_dir: LibraryDir = Path("pathways"),
    k: Annotated[str | None, typer.Option("-k", help="Only cases whose name matches.")] = None,
    fail_on_empty: Annotated[bool, typer.Option(help="Fail when no case runs.")] = False,
    output_format: TextOrJson = "text",
) -> None:
    """Run the fires/quiet cases beside the rules; ends with PASS n/m."""
    from .library.loader import load_library
    from .library.testing import run_cases

    try:
        library = load_library(library_dir)
    except LibraryLoadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    report = run_cases(library, k)
    if output_format == "json":
        typer.echo(
            json.dumps(
                {
                    "cases": [r.as_dict() for r in report.results],
                    "passed": report.passed,
                    "total": report.counted,
                    "indicators_without_fires_case": report.missing_fires,
                    "indicators_without_quiet_case": report.missing_quiet,
                    "indicators_not_exercised": report.unexercised,
                },
                indent=2,
            )
        )
    else:
        for result in report.results:
            verdict = "TODO" if result.todo else ("PASS" if result.passed else "FAIL")
            typer.echo(f"{result.file}:{result.line}: {result.name}: {verdict}")
            for failure in result.failures:
                typer.echo(f"    {failure}")
        for ident in report.missing_fires:
            typer.echo(f"indicator {ident} has no `fires` case")
        for ident in report.missing_quiet:
            typer.echo(f"indicator {ident} has no `quiet` case")
        for ident in report.unexercised:
            typer.echo(f"indicator {ident} is exercised by no case")
        typer.echo("-" * 40)
        typer.echo(f"PASS {report.passed}/{report.counted}")
    if not report.ok or (fail_on_empty and report.counted == 0):
        raise typer.Exit(1)


@app.command()
def lint(
    library_dir: LibraryDir = Path("pathways"),
    cards_dir: Annotated[Path | None, typer.Option("--cards", help="Card templates.")] = None,
    output_format: Annotated[
        Literal["text", "json", "github"], typer.Option("--format", help="text, json or github")
    ] = "text",
) -> None:
    """Check the library: schema and meaning, every problem as path:line:col: CODE message.

    Exit 1 when there is an error; warnings alone exit 0. Codes: docs/lint-codes.md."""
    from .lint import lint_library

    issues = lint_library(library_dir, cards_dir or library_dir.parent / "cards")
    if output_format == "json":
        typer.echo(json.dumps([i.as_dict() for i in issues], indent=2))
    elif output_format == "github":
        for i in issues:
            typer.echo(
                f"::{i.severity} file={i.path},line={i.line},col={i.column},"
                f"title={i.code}::{i.message}"
            )
    else:
        for issue in issues:
            typer.echo(str(issue))
        errors = sum(1 for i in issues if i.severity == "error")
        typer.echo(f"{errors} error(s), {len(issues) - errors} warning(s)")
    if any(i.severity == "error" for i in issues):
        raise typer.Exit(1)


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Folder for the *.schema.json files.")] = Path(
        "schemas"
    ),
    check: Annotated[bool, typer.Option(help="Only check they are current; exit 1 if not.")] = (
        False
    ),
) -> None:
    """Write the JSON Schemas editors use to complete and check the library's YAML files."""
    from .library.schema import stale_schemas, write_schemas

    if check:
        stale = stale_schemas(out)
        for path in stale:
            typer.echo(f"{path}: out of date with the models; run `msht-cds schema --out {out}`")
        raise typer.Exit(1 if stale else 0)
    for path in write_schemas(out):
        typer.echo(f"wrote {path}")


@app.command()
def render(
    request_file: RequestArg = None,
    case: CaseOption = None,
    html: Annotated[Path | None, typer.Option(help="Also write an HTML preview page.")] = None,
    output_format: Annotated[
        Literal["markdown", "json"], typer.Option("--format", help="markdown or json")
    ] = "markdown",
    library: LibraryOption = None,
    cards: CardsOption = None,
    nation: NationOption = None,
    locality: LocalityOption = None,
    today: TodayOption = None,
) -> None:
    """Show the card for a test case (--case) or a saved request, as markdown or JSON."""
    from .explain import card_markdown, explanation_dict, preview_page

    expl = _explanation(request_file, case, library, cards, nation, locality, today)
    if html is not None:
        html.write_text(preview_page(expl), encoding="utf-8")
        typer.echo(f"wrote {html}", err=True)
    if output_format == "json":
        typer.echo(expl.decision.response.model_dump_json(exclude_none=True, indent=2))
    elif expl.card is not None:
        typer.echo(card_markdown(expl.card))
    else:
        typer.echo(f"No card: {explanation_dict(expl)['no_card_because']}.")


@app.command()
def explain(
    request_file: RequestArg = None,
    case: CaseOption = None,
    output_format: TextOrJson = "text",
    library: LibraryOption = None,
    cards: CardsOption = None,
    nation: NationOption = None,
    locality: LocalityOption = None,
    today: TodayOption = None,
) -> None:
    """Say which indicators fired (with evidence), were suppressed, de-duplicated or nearly
    fired, and the resulting concern level and card."""
    from .explain import explanation_dict, explanation_text

    expl = _explanation(request_file, case, library, cards, nation, locality, today)
    if output_format == "json":
        typer.echo(json.dumps(explanation_dict(expl), indent=2, ensure_ascii=False))
    else:
        typer.echo(explanation_text(expl))


def _explanation(
    request_file: Path | None,
    case: str | None,
    library: Path | None,
    cards: Path | None,
    nation: str | None,
    locality: str | None,
    today: str | None,
) -> Explanation:
    from .explain import explain_case, explain_request, find_case, read_cases
    from .service import CallSettings

    if (request_file is None) == (case is None):
        typer.echo("give either REQUEST_FILE or --case NAME", err=True)
        raise typer.Exit(2)
    settings = _settings(library_dir=library, cards_dir=cards)
    knowledge = _knowledge(settings)
    where = CallSettings(
        nation or settings.nation, locality or settings.locality, settings.public_base_url
    )
    if where.nation not in knowledge.library.nations:
        typer.echo(
            f"no pathway for nation {where.nation!r}; use one of: "
            f"{', '.join(sorted(knowledge.library.nations))}",
            err=True,
        )
        raise typer.Exit(2)
    try:
        if case is not None:
            cases, problems = read_cases(settings.library_dir)
            for problem in problems:
                typer.echo(f"warning: {problem}", err=True)
            found = find_case(cases, case)
            return explain_case(knowledge, found.origin, found.case, where)
        assert request_file is not None
        body = orjson.loads(request_file.read_bytes())
        day = dt.date.fromisoformat(today) if today else dt.date.today()
        return explain_request(knowledge, body, str(request_file), where, day)
    except (LookupError, OSError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    except RequestError as exc:
        typer.echo(f"{request_file}: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def main() -> None:  # pragma: no cover
    sys.exit(app())
