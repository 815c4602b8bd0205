"""`msht-cds`: serve the hooks, and the tools safeguarding leads use on the library."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from .config import Settings, is_loopback_host
from .errors import LibraryLoadError, RequestError

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

LibraryDir = Annotated[Path, typer.Argument(help="The library folder (pathways/).")]


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

    settings = Settings()
    if not settings.auth_enabled and not is_loopback_host(host):
        typer.echo(
            f"refusing to start: MSHT_CDS_AUTH=off is only allowed on a loopback address, "
            f"not {host}", err=True,
        )
        raise typer.Exit(2)
    if not settings.auth_enabled:
        typer.echo("WARNING: authentication is OFF (MSHT_CDS_AUTH=off). Local development "
                   "only: every caller is trusted.", err=True)
    try:
        from .service import load_knowledge

        load_knowledge(settings.library_dir, settings.cards_dir)
    except LibraryLoadError as exc:
        typer.echo(f"refusing to start: the library has errors\n{exc}", err=True)
        raise typer.Exit(1) from exc
    os.environ["MSHT_CDS_BIND_HOST"] = host
    uvicorn.run(
        "msht_cds.app:app_from_environment", factory=True, host=host, port=port,
        workers=workers, log_config=None, proxy_headers=False,
    )


@app.command()
def evaluate(
    request_file: Annotated[Path, typer.Argument(help="A CDS Hooks request (JSON).")],
    today: Annotated[str | None, typer.Option(help="Visit date YYYY-MM-DD (default: today).")] = None,
    library: Annotated[Path | None, typer.Option(help="Library folder.")] = None,
    cards: Annotated[Path | None, typer.Option(help="Card templates folder.")] = None,
) -> None:
    """Print the response the service would give to REQUEST_FILE, offline (no FHIR calls)."""
    from .service import CallSettings, decide, load_knowledge, prepare

    settings = _settings(library_dir=library, cards_dir=cards)
    knowledge = _knowledge(settings)
    try:
        body = orjson.loads(request_file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        typer.echo(f"{request_file}: cannot read JSON: {exc}", err=True)
        raise typer.Exit(2) from exc
    hook = body.get("hook") if isinstance(body, dict) else None
    try:
        request, state = prepare(knowledge, body, str(hook))
        if state.failed or state.missing:
            missing = ", ".join(sorted(state.failed + state.missing))
            raise RequestError(f"prefetch lacks {missing} (evaluate does not fetch)", 412)
        day = dt.date.fromisoformat(today) if today else dt.date.today()
        decision = decide(knowledge, request, state,
                          CallSettings(settings.nation, settings.locality,
                                       settings.public_base_url), day)
    except RequestError as exc:
        typer.echo(json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": exc.issue_code, "diagnostics": exc.message}]}, indent=2))
        raise typer.Exit(1) from exc
    typer.echo(decision.response.model_dump_json(exclude_none=True, indent=2))


def _knowledge(settings: Settings):  # type: ignore[no-untyped-def]
    from .service import load_knowledge

    try:
        return load_knowledge(settings.library_dir, settings.cards_dir)
    except LibraryLoadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@app.command("test")
def test_cases(
    library_dir: LibraryDir = Path("pathways"),
    k: Annotated[str | None, typer.Option("-k", help="Only cases whose name matches.")] = None,
    fail_on_empty: Annotated[bool, typer.Option(help="Fail when no case runs.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
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
        typer.echo(json.dumps({
            "cases": [r.as_dict() for r in report.results],
            "passed": report.passed, "total": report.counted,
            "indicators_without_fires_case": report.missing_fires,
            "indicators_without_quiet_case": report.missing_quiet,
            "indicators_not_exercised": report.unexercised,
        }, indent=2))
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
    output_format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Check the library: schema and meaning, every problem as path:line:col: CODE message."""
    from .lint import lint_library

    issues = lint_library(library_dir, cards_dir or library_dir.parent / "cards")
    if output_format == "json":
        typer.echo(json.dumps([i.as_dict() for i in issues], indent=2))
    else:
        for issue in issues:
            typer.echo(str(issue))
        errors = sum(1 for i in issues if i.severity == "error")
        typer.echo(f"{errors} error(s), {len(issues) - errors} warning(s)")
    if any(i.severity == "error" for i in issues):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    sys.exit(app())
