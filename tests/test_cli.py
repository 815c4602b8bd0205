"""Every lead-facing command through its real entry point: exit codes and exact output.

Most tests use typer's CliRunner on `msht_cds.cli:app`; one runs the installed `msht-cds`
console script in a subprocess, as a lead (or CI) would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msht_cds.cli import app
from msht_cds.explain import find_case, read_cases
from msht_cds.service import load_knowledge

from .support import LINT_FIXTURE, copy_lint_fixture, edit
from .test_explain import SCENARIO, request_for

PATHWAYS = LINT_FIXTURE / "pathways"
CARDS = LINT_FIXTURE / "cards"
runner = CliRunner()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return copy_lint_fixture(tmp_path)


# --------------------------------------------------------------------------- lint


def test_lint_clean_library_exits_0() -> None:
    result = runner.invoke(app, ["lint", str(PATHWAYS)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "0 error(s), 0 warning(s)\n"


def test_lint_error_exits_1_with_clickable_lines(library: Path) -> None:
    edit(library / "indicators" / "sti-in-minor.yaml", "strength: moderate", "strenght: moderate")
    result = runner.invoke(app, ["lint", str(library)])
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert out[0].startswith(
        "pathways/indicators/sti-in-minor.yaml:9:1: unknown-field `strenght` is not a field"
    )
    assert out[1:] == ["1 error(s), 0 warning(s)"]


def test_lint_warnings_alone_exit_0(library: Path) -> None:
    shutil.copy(library / "valuesets" / "sti-conditions.yaml", library / "valuesets" / "x.yml")
    result = runner.invoke(app, ["lint", str(library), "--cards", str(library.parent / "cards")])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "0 error(s), 1 warning(s)"


def test_lint_json_and_github_formats(library: Path) -> None:
    edit(library / "indicators" / "work-signs.yaml", "strength: moderate", "strength: medium")
    result = runner.invoke(app, ["lint", str(library), "--format", "json"])
    assert result.exit_code == 1
    [issue] = json.loads(result.stdout)
    assert {k: issue[k] for k in ("path", "line", "column", "code", "severity")} == {
        "path": "pathways/indicators/work-signs.yaml",
        "line": 9,
        "column": 1,
        "code": "invalid-value",
        "severity": "error",
    }
    github = runner.invoke(app, ["lint", str(library), "--format", "github"])
    assert github.exit_code == 1
    assert github.stdout.startswith(
        "::error file=pathways/indicators/work-signs.yaml,line=9,col=1,title=invalid-value::"
        "strength: Input should be"
    )


def test_lint_rejects_an_unknown_format() -> None:
    result = runner.invoke(app, ["lint", str(PATHWAYS), "--format", "xml"])
    assert result.exit_code == 2


# --------------------------------------------------------------------------- test


def test_test_reports_each_case_and_closes_with_pass_n_of_m() -> None:
    result = runner.invoke(app, ["test", str(PATHWAYS)])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == (
        "pathways/indicators/adult-speaks-for-child.test.yaml:4: adult answered for the child "
        "fires: PASS"
    )
    assert "pathways/scenarios/combined.test.yaml:3: " + SCENARIO + ": PASS" in out
    assert out[-2:] == ["-" * 40, "PASS 16/16"]


def test_test_k_filters_and_fail_on_empty() -> None:
    result = runner.invoke(app, ["test", str(PATHWAYS), "-k", "chlamydia at 1"])
    assert result.exit_code == 0
    assert [line.rsplit(": ", 1)[-1] for line in result.stdout.splitlines()[:-2]] == ["PASS"] * 5
    assert result.stdout.splitlines()[-1] == "PASS 5/5"
    empty = runner.invoke(app, ["test", str(PATHWAYS), "-k", "no such case"])
    assert (empty.exit_code, empty.stdout.splitlines()[-1]) == (0, "PASS 0/0")
    strict = runner.invoke(app, ["test", str(PATHWAYS), "-k", "no such case", "--fail-on-empty"])
    assert strict.exit_code == 1


def test_test_failing_case_exits_1_and_says_why(library: Path) -> None:
    edit(
        library / "indicators" / "sti-in-minor.test.yaml",
        "expect: {fires: [STI_IN_MINOR], concern: none}",
        "expect: {fires: [STI_IN_MINOR], concern: high}",
    )
    result = runner.invoke(app, ["test", str(library), "-k", "chlamydia at 15"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "pathways/indicators/sti-in-minor.test.yaml:4: chlamydia at 15 fires: FAIL",
        "    expected concern high, got none",
        "-" * 40,
        "PASS 0/1",
    ]


def test_test_json_has_file_row_col_and_coverage_lists(library: Path) -> None:
    (library / "indicators" / "work-signs.test.yaml").unlink()
    result = runner.invoke(app, ["test", str(library), "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["passed"] == report["total"] == 14
    first = report["cases"][0]
    assert {k: first[k] for k in ("file", "row", "col", "result")} == {
        "file": "pathways/indicators/adult-speaks-for-child.test.yaml",
        "row": 4,
        "col": 1,
        "result": "PASS",
    }
    assert report["indicators_without_fires_case"] == ["WORK_SIGNS_IN_CHILD"]
    assert report["indicators_without_quiet_case"] == ["WORK_SIGNS_IN_CHILD"]
    assert report["indicators_not_exercised"] == ["WORK_SIGNS_IN_CHILD"]
    text = runner.invoke(app, ["test", str(library)])
    assert "indicator WORK_SIGNS_IN_CHILD has no `fires` case" in text.stdout
    assert "indicator WORK_SIGNS_IN_CHILD is exercised by no case" in text.stdout


# --------------------------------------------------------------------------- schema


def test_schema_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = runner.invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 6
    assert runner.invoke(app, ["schema", "--out", str(out), "--check"]).exit_code == 0
    (out / "indicator.schema.json").write_text("{}", encoding="utf-8")
    stale = runner.invoke(app, ["schema", "--out", str(out), "--check"])
    assert stale.exit_code == 1
    assert "indicator.schema.json: out of date with the models" in stale.stdout


# --------------------------------------------------------------------------- render, explain

FROM_FIXTURE = ["--library", str(PATHWAYS), "--cards", str(CARDS)]


def test_render_case_as_markdown_json_and_html(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", "--case", SCENARIO, *FROM_FIXTURE])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "## Safeguarding: consider seeing the young person alone and referring today\n"
    )
    as_json = runner.invoke(app, ["render", "--case", SCENARIO, "--format", "json", *FROM_FIXTURE])
    assert json.loads(as_json.stdout)["cards"][0]["indicator"] == "warning"
    page = tmp_path / "card.html"
    html = runner.invoke(app, ["render", "--case", SCENARIO, "--html", str(page), *FROM_FIXTURE])
    assert html.exit_code == 0
    assert 'class="card warning"' in page.read_text(encoding="utf-8")


def test_render_without_a_card_says_why() -> None:
    result = runner.invoke(app, ["render", "--case", "chlamydia at 16", *FROM_FIXTURE])
    assert result.exit_code == 0
    assert result.stdout == (
        "No card: what fired does not reach a concern level in library.yaml `combination`.\n"
    )


def test_explain_case_text_and_json() -> None:
    result = runner.invoke(app, ["explain", "--case", SCENARIO, *FROM_FIXTURE])
    assert result.exit_code == 0, result.output
    assert "counted under STI_UNDER_13" in result.stdout
    as_json = runner.invoke(app, ["explain", "--case", SCENARIO, "--format", "json", *FROM_FIXTURE])
    data = json.loads(as_json.stdout)
    assert [d["id"] for d in data["deduplicated"]] == ["STI_IN_MINOR"]


def test_evaluate_request_file(tmp_path: Path) -> None:
    """`evaluate` prints the CDS Hooks response the service would give, or the service's own
    412 OperationOutcome when the prefetch lacks data (it fetches nothing)."""
    knowledge = load_knowledge(PATHWAYS, CARDS)
    case = find_case(read_cases(PATHWAYS)[0], SCENARIO).case
    body = request_for(knowledge, case)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    answered = runner.invoke(
        app, ["evaluate", str(request), "--today", "2026-06-01", *FROM_FIXTURE]
    )
    assert answered.exit_code == 0, answered.output
    cards = json.loads(answered.stdout)["cards"]
    assert [card["indicator"] for card in cards] == ["warning"]
    del body["prefetch"]["patient"]
    request.write_text(json.dumps(body), encoding="utf-8")
    missing = runner.invoke(app, ["evaluate", str(request), *FROM_FIXTURE])
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["issue"] == [
        {
            "severity": "error",
            "code": "not-found",
            "diagnostics": "prefetch lacks patient (evaluate does not fetch)",
        }
    ]
    bad_day = runner.invoke(app, ["evaluate", str(request), "--today", "2026-13-01"])
    assert bad_day.exit_code == 2
    assert "--today '2026-13-01' is not a date" in bad_day.stderr


def test_explain_request_file(tmp_path: Path) -> None:
    knowledge = load_knowledge(PATHWAYS, CARDS)
    case = find_case(read_cases(PATHWAYS)[0], SCENARIO).case
    request = tmp_path / "request.json"
    request.write_text(json.dumps(request_for(knowledge, case)), encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "explain",
            str(request),
            "--today",
            "2026-06-01",
            "--locality",
            "st-elsewhere",
            *FROM_FIXTURE,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith(f"From      {request} · hook encounter-start")
    assert "locality st-elsewhere" in result.stdout
    body = json.loads(request.read_text(encoding="utf-8"))
    del body["prefetch"]["patient"]
    request.write_text(json.dumps(body), encoding="utf-8")
    missing = runner.invoke(app, ["explain", str(request), *FROM_FIXTURE])
    assert missing.exit_code == 1
    assert "prefetch lacks patient (explain does not fetch)" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either REQUEST_FILE or --case NAME"),
        (["--case", "chlamydia"], "no single case named 'chlamydia'"),
        (["--case", SCENARIO, "--nation", "atlantis"], "no pathway for nation 'atlantis'"),
    ],
)
def test_explain_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["explain", *args, *FROM_FIXTURE])
    assert result.exit_code == 2
    assert message in result.stderr


# --------------------------------------------------------------------------- console script


def test_installed_console_script(library: Path) -> None:
    script = Path(sys.executable).with_name("msht-cds")
    assert script.is_file(), "install the package: pip install -e '.[test]'"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSHT_CDS_")}

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(script), *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)

    clean = run("lint", str(PATHWAYS))
    assert (clean.returncode, clean.stdout) == (0, "0 error(s), 0 warning(s)\n")
    edit(library / "indicators" / "work-signs.yaml", "strength: moderate", "strength: medium")
    broken = run("lint", "pathways", cwd=library.parent)
    assert broken.returncode == 1
    assert broken.stdout.startswith("pathways/indicators/work-signs.yaml:9:1: invalid-value ")
    tests = run("test", "pathways", cwd=library.parent)
    assert tests.returncode == 1
    assert "pathways/indicators/work-signs.yaml:9:1: invalid-value" in tests.stderr
