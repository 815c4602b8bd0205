"""Fuzzing: no input makes the service answer 5xx, and no library text crashes the loader.

* Schemathesis drives every operation of the app's own OpenAPI document (/openapi.json) in
  process (ASGI), checking `not_a_server_error`, bounded to a few examples per operation.
* Hypothesis posts arbitrary JSON, and mutations of the real example request, to every hook
  service and feedback endpoint of a live server on 127.0.0.1: only 200/400/412/413 allowed.
* Hypothesis writes arbitrary text and YAML-shaped structures into a library file:
  `load_library` must return a Library or raise LibraryLoadError, nothing else. The same for the
  trusted-clients file, JWT verification, the Authorization header and `fhirServer` checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from schemathesis.checks import not_a_server_error

from msht_cds.app import create_app
from msht_cds.auth import (
    InMemoryReplayCache,
    JwtVerifier,
    TrustedClients,
    bearer_token,
    load_trusted_clients,
)
from msht_cds.cdshooks import HookRequest, parse_hook_request
from msht_cds.errors import (
    AuthError,
    BadRequestError,
    FhirServerError,
    LibraryError,
    LibraryLoadError,
)
from msht_cds.fhir import FhirLimits, FhirReader
from msht_cds.library.assess import assess
from msht_cds.library.loader import Library, load_library
from msht_cds.record import PatientRecord, elements
from msht_cds.service import SERVICE_IDS

from .servers import (
    LiveApp,
    Signer,
    example_request,
    full_request,
    library_root,
    serve_app,
    settings_for,
    templates_of,
)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- schemathesis


def test_openapi_operations_never_answer_5xx(tmp_path: Path) -> None:
    """Every operation of the app's own /openapi.json, in process (ASGI). The schema is loaded
    here rather than at import so that collecting this module starts nothing."""
    app = create_app(settings_for(tmp_path, "http://testserver"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/cds-services", "/cds-services/{service_id}"}
    calls: list[int] = []
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def no_server_error(case: Any) -> None:
            response = case.call()
            calls.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()
    assert len(calls) >= 2 * len(operations)
    assert max(calls) < 500


# --------------------------------------------------------------------------- HTTP bodies

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
SERVICES = sorted(SERVICE_IDS.values())
ALLOWED = {200, 400, 412, 413}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with serve_app(lambda url: settings_for(tmp, url, hook_deadline_seconds=2.0)) as app:
        yield app


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@FUZZ
@given(body=JSON, service=st.sampled_from(SERVICES))
def test_arbitrary_json_bodies_get_4xx_not_5xx(
    live: LiveApp, http: httpx.Client, body: Any, service: str
) -> None:
    response = http.post(live.service_url(service), json=body)
    assert response.status_code in ALLOWED, response.text
    response = http.post(live.service_url(service) + "/feedback", json=body)
    assert response.status_code in {200, 400, 413}, response.text


def _paths(node: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if depth >= 5:
        return found
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key), depth + 1)
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            found += _paths(value, (*prefix, index), depth + 1)
    return found


EXAMPLE_PATHS = _paths(example_request())


@FUZZ
@given(data=st.data())
def test_mutated_example_requests_get_a_proper_answer(
    live: LiveApp, http: httpx.Client, data: st.DataObject
) -> None:
    body = full_request(templates_of(live.runtime))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(EXAMPLE_PATHS), label="path")
        node: Any = body
        try:
            for part in path[:-1]:
                node = node[part]
            if data.draw(st.booleans(), label="delete") and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                value = data.draw(JSON, label="value")
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the shape
    service = data.draw(st.sampled_from(SERVICES), label="service")
    response = http.post(live.service_url(service), json=body)
    assert response.status_code in ALLOWED, response.text
    if response.status_code != 200:
        assert response.json()["resourceType"] == "OperationOutcome"


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_get_400(live: LiveApp, http: httpx.Client, raw: bytes) -> None:
    response = http.post(live.service_url(SERVICES[0]), content=raw)
    assert response.status_code in ALLOWED, response.text


def test_the_service_survived_the_fuzzing(live: LiveApp, http: httpx.Client) -> None:
    metrics = http.get(f"{live.url}/metrics").text
    assert 'status="500"' not in metrics
    assert http.get(f"{live.url}/readyz").status_code == 200


# --------------------------------------------------------------------------- the YAML loader


def _minimal_library(target: Path) -> tuple[Path, dict[str, Path]]:
    """library.yaml, value sets, nations, overlays and ONE indicator that loads on its own
    (loading the full library per example would be slow). Returns the root and target files."""
    source = library_root() / "pathways"
    shutil.copy(source / "library.yaml", target / "library.yaml")
    for folder in ("valuesets", "nations", "local"):
        shutil.copytree(source / folder, target / folder)
    (target / "indicators").mkdir()
    for candidate in sorted((source / "indicators").glob("*.yaml")):
        if candidate.name.endswith(".test.yaml"):
            continue
        destination = target / "indicators" / candidate.name
        shutil.copy(candidate, destination)
        try:
            load_library(target)
        except LibraryLoadError:
            destination.unlink()
            continue
        break
    indicators = list((target / "indicators").glob("*.yaml"))
    assert indicators, "no indicator loads on its own"
    return target, {
        "indicator": indicators[0],
        "valueset": sorted((target / "valuesets").glob("*.yaml"))[0],
        "manifest": target / "library.yaml",
        "nation": sorted((target / "nations").glob("*.yaml"))[0],
    }


@pytest.fixture(scope="module")
def small_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    return _minimal_library(tmp_path_factory.mktemp("library"))


def _load_must_not_crash(root: Path) -> None:
    """Library or LibraryLoadError with located issues; any other exception fails the test."""
    issues = None
    try:
        result = load_library(root)
    except LibraryLoadError as exc:
        issues = exc.issues
    if issues is None:
        assert isinstance(result, Library)
        return
    assert issues, "a LibraryLoadError must say what is wrong"
    assert all(i.line >= 1 for i in issues)
    assert all(i.column >= 1 for i in issues)


def _yaml_text(value: Any) -> str:
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(value, stream)
    return stream.getvalue()


YAMLISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=15)
    | st.dates().map(str),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "title",
                    "fires_when",
                    "near_when",
                    "evidence",
                    "codes",
                    "strength",
                    "forms",
                    "all",
                    "any",
                    "not",
                    "within_days",
                    "fhirpath",
                    "resource",
                    "status",
                    "version",
                    "escalate",
                    "context",
                    "indicator",
                    "steps",
                    "contacts",
                    "system",
                    "code",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)

TARGETS = ["indicator", "valueset", "manifest", "nation"]


@FUZZ
@given(target=st.sampled_from(TARGETS), text=st.text(max_size=400))
def test_arbitrary_text_in_a_library_file(
    small_library: tuple[Path, dict[str, Path]], target: str, text: str
) -> None:
    root, files = small_library
    path = files[target]
    original = path.read_bytes()
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _load_must_not_crash(root)
    finally:
        path.write_bytes(original)


@FUZZ
@given(target=st.sampled_from(TARGETS), value=YAMLISH)
def test_yaml_structures_in_a_library_file(
    small_library: tuple[Path, dict[str, Path]], target: str, value: Any
) -> None:
    root, files = small_library
    path = files[target]
    original = path.read_bytes()
    try:
        path.write_text(_yaml_text(value), encoding="utf-8")
        _load_must_not_crash(root)
    finally:
        path.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_edits_of_a_real_library_file(
    small_library: tuple[Path, dict[str, Path]], data: st.DataObject
) -> None:
    root, files = small_library
    path = files[data.draw(st.sampled_from(TARGETS), label="target")]
    original = path.read_bytes()
    text = original.decode("utf-8")
    start = data.draw(st.integers(0, len(text)), label="start")
    end = data.draw(st.integers(start, min(len(text), start + 80)), label="end")
    insert = data.draw(st.text(alphabet=":-[]{}#&*!|>'\"\n\t %@`,?", max_size=10), label="insert")
    try:
        path.write_text(text[:start] + insert + text[end:], encoding="utf-8")
        _load_must_not_crash(root)
    finally:
        path.write_bytes(original)


def _write_and_load(files: dict[str, Path], root: Path, target: str, text: str) -> None:
    path = files[target]
    original = path.read_bytes()
    try:
        path.write_text(text, encoding="utf-8")
        _load_must_not_crash(root)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 5000 + "]" * 5000, id="deep-flow"),
        pytest.param(
            "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 800)),
            id="deep-block",
        ),
        pytest.param("id: X\nlist: &x [1, 2]\nagain: *x\n", id="plain-alias"),
    ],
)
def test_deep_or_aliased_yaml_is_a_load_error_not_a_crash(
    small_library: tuple[Path, dict[str, Path]], text: str
) -> None:
    root, files = small_library
    _write_and_load(files, root, "indicator", text)


def test_a_self_referencing_alias_is_a_load_error(
    small_library: tuple[Path, dict[str, Path]],
) -> None:
    root, files = small_library
    _write_and_load(files, root, "indicator", "id: X\nloop: &a [*a]\n")


def test_a_tab_inside_a_value_is_a_load_error(
    small_library: tuple[Path, dict[str, Path]],
) -> None:
    root, files = small_library
    text = files["indicator"].read_text(encoding="utf-8")
    broken = text.replace("\nid: ", "\nid: X\t", 1)
    assert broken != text
    _write_and_load(files, root, "indicator", broken)


_LOAD_IN_A_BOX = """
import resource, sys
limit = 256 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pathlib import Path
from msht_cds.errors import LibraryLoadError
from msht_cds.library.loader import load_library
try:
    load_library(Path(sys.argv[1]))
except LibraryLoadError as exc:
    print("rejected:", exc.issues[0].code)
else:
    print("loaded")
"""


def test_yaml_alias_bomb_is_rejected_not_expanded(
    small_library: tuple[Path, dict[str, Path]],
) -> None:
    """Runs in a child process with a 256 MiB address-space cap, so a failure cannot take
    the test run (or the machine) down with it."""
    root, files = small_library
    path = files["valueset"]
    original = path.read_bytes()
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    try:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-c", _LOAD_IN_A_BOX, str(root)],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        path.write_bytes(original)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().startswith("rejected:")


# --------------------------------------------------------------------------- other parsers


@FUZZ
@given(
    text=st.text(max_size=300)
    | YAMLISH.map(_yaml_text)
    | st.builds(lambda v: _yaml_text({"clients": v}), YAMLISH)
)
def test_trusted_clients_file_fails_only_with_library_error(text: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="msht-cds-clients-"))
    try:
        path = folder / "clients.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(LibraryError):
            assert isinstance(load_trusted_clients(path), TrustedClients)
    finally:
        shutil.rmtree(folder)


SIGNER = Signer.generate("https://ehr.example.test", "ES384")
VERIFIER = JwtVerifier(
    TrustedClients.model_validate({"clients": [SIGNER.client_entry()]}), InMemoryReplayCache()
)
AUDIENCE = "https://cds.example.test/cds-services/msht-patient-view"


@FUZZ
@given(
    token=st.text(max_size=300)
    | st.builds(
        lambda a, b, c: f"{a}.{b}.{c}",
        st.text(max_size=60),
        st.text(max_size=120),
        st.text(max_size=60),
    )
    | st.builds(lambda token, cut: token[:cut], st.just(SIGNER.mint(AUDIENCE)), st.integers(0, 400))
)
def test_jwt_verification_fails_only_with_auth_error(token: str) -> None:
    with contextlib.suppress(AuthError):
        VERIFIER.verify(token, AUDIENCE)


@FUZZ
@given(header=st.none() | st.text(max_size=60))
def test_authorization_header_parsing_fails_only_with_auth_error(header: str | None) -> None:
    try:
        token = bearer_token(header)
    except AuthError:
        return
    assert token is None or (token and " " not in token)


class _NoDns:
    async def __call__(self, host: str, port: int) -> list[Any]:
        raise FhirServerError("fhirServer host does not resolve")


@FUZZ
@given(
    base=st.text(max_size=80)
    | st.builds(
        lambda scheme, host, rest: f"{scheme}://{host}{rest}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher", ""]),
        st.text(max_size=30),
        st.text(max_size=20),
    )
)
def test_fhir_base_checks_fail_only_with_fhir_server_error(base: str) -> None:
    async def run() -> None:
        reader = FhirReader(FhirLimits(), resolver=_NoDns())
        try:
            await reader.check_base(base, [base, "https://fhir.example.test/r4"])
        except FhirServerError:
            pass
        finally:
            await reader.aclose()

    asyncio.run(run())


@FUZZ
@given(body=JSON, hook=st.sampled_from(sorted(SERVICE_IDS)))
def test_hook_request_parsing_fails_only_with_bad_request(body: Any, hook: str) -> None:
    with contextlib.suppress(BadRequestError):
        assert isinstance(parse_hook_request(copy.deepcopy(body), hook), HookRequest)


# --------------------------------------------------------------------------- record shapes

WRONG_SHAPES: list[Any] = [5, "x", {}, [], None, True, [5], ["x"], [{}], {"a": 1}]


def _replaced(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copied = copy.deepcopy(resource)
    node: Any = copied
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copied


def _variants(replacements: Callable[[tuple[Any, ...], Any], list[Any]]) -> Iterator[Any]:
    """Every rule case's record with one element of one resource replaced in turn, by each
    value `replacements(path, current value)` gives (none: left alone), and its assessment."""
    library = load_library(library_root() / "pathways")
    for located in library.case_files:
        for case in located.model.cases:
            patient = next((r for r in case.resources if r.get("resourceType") == "Patient"), {})
            for position, resource in enumerate(case.resources):
                for path, current in elements(resource):
                    for value in replacements(path, current):
                        resources = list(case.resources)
                        resources[position] = _replaced(resource, path, value)
                        record = PatientRecord.build(
                            str(patient.get("id")),
                            resources,
                            encounter_id=case.encounter,
                            draft_orders=case.draft_orders,
                        )
                        yield assess(library, record, case.today, explain=True)


def test_wrongly_shaped_record_values_never_crash_the_assessment() -> None:
    """Every element of every resource in every rule case, replaced in turn by a value of the
    wrong shape (a number where an array is expected, a list where a date is expected...):
    the assessment still completes. Such a value reads as absent; it never becomes a 500."""
    chooser = random.Random(20261129)

    def wrong_shape(path: tuple[Any, ...], current: Any) -> list[Any]:
        return [] if path[-1] in ("resourceType", "id") else [chooser.choice(WRONG_SHAPES)]

    assert sum(1 for _ in _variants(wrong_shape)) > 5000


EXTREME_DATES = ["0001-01-01", "0001", "9999-12-31", "9999-12", "0001-01-01T00:00:00+14:00"]


def test_extreme_valid_dates_never_crash_the_assessment() -> None:
    """Every date in every rule case (birth dates, encounter periods, onsets...) replaced in
    turn by the earliest or latest date FHIR allows: windows and ages are still worked out."""

    def extremes(path: tuple[Any, ...], current: Any) -> list[Any]:
        is_date = isinstance(current, str) and current[:4].isdigit() and "-" in current[:5]
        return EXTREME_DATES if is_date else []

    assert sum(1 for _ in _variants(extremes)) > 1000
