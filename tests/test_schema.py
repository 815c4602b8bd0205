"""The JSON Schemas editors use: current with the models, documented, and named as the
modelines on line 1 of every library file expect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from msht_cds.library.schema import (
    SCHEMA_MODELS,
    build_schema,
    expected_modeline,
    kind_of,
    schema_file,
    stale_schemas,
    write_schemas,
)
from msht_cds.library.yamlfile import read_yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "lint" / "pathways"
KINDS = ["library", "valueset", "indicator", "cases", "nation", "local"]


def test_one_schema_per_file_kind() -> None:
    assert list(SCHEMA_MODELS) == KINDS


def test_checked_in_schemas_are_current(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert [p.name for p in written] == [f"{k}.schema.json" for k in KINDS]
    for path in written:
        checked_in = ROOT / "schemas" / path.name
        assert checked_in.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{checked_in} is out of date: run `msht-cds schema --out schemas/`"
        )
    assert stale_schemas(ROOT / "schemas") == []


def test_stale_schemas_are_detected(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    (tmp_path / "local.schema.json").write_text("{}", encoding="utf-8")
    (tmp_path / "nation.schema.json").unlink()
    assert stale_schemas(tmp_path) == [
        tmp_path / "nation.schema.json",
        tmp_path / "local.schema.json",
    ]


def _properties(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            yield f"{where}.{name}", prop
        for key, value in node.items():
            yield from _properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for item in node:
            yield from _properties(item, where)


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_hover_text(kind: str) -> None:
    undocumented = [w for w, prop in _properties(build_schema(kind)) if not prop.get("description")]
    assert undocumented == []


@pytest.mark.parametrize("kind", KINDS)
def test_documented_values_explain_themselves(kind: str) -> None:
    text = json.dumps(build_schema(kind))
    for node in _nodes(build_schema(kind)):
        for choice in node.get("oneOf", []):
            if "const" in choice:
                assert choice.get("description"), f"{kind}: {choice['const']} has no description"
    assert '"$schema": "https://json-schema.org/draft/2020-12/schema"' in text


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def test_strength_hover_lists_each_value() -> None:
    strength = build_schema("indicator")["properties"]["strength"]
    assert [c["const"] for c in strength["oneOf"]] == ["strong", "moderate", "contextual"]
    assert strength["description"]
    assert "enum" not in strength


@pytest.mark.parametrize(
    ("relative", "kind", "modeline"),
    [
        ("library.yaml", "library", "../schemas/library.schema.json"),
        ("indicators/b-ed-repeat.yaml", "indicator", "../../schemas/indicator.schema.json"),
        ("indicators/b-ed-repeat.test.yaml", "cases", "../../schemas/cases.schema.json"),
        ("indicators/sub/x.yaml", "indicator", "../../../schemas/indicator.schema.json"),
        ("scenarios/whole-patient.test.yaml", "cases", "../../schemas/cases.schema.json"),
        ("valuesets/sti-conditions.yaml", "valueset", "../../schemas/valueset.schema.json"),
        ("nations/england.yaml", "nation", "../../schemas/nation.schema.json"),
        ("local/st-elsewhere.yaml", "local", "../../schemas/local.schema.json"),
    ],
)
def test_modelines_point_at_the_checked_in_schemas(relative: str, kind: str, modeline: str) -> None:
    library = ROOT / "pathways"
    assert kind_of(PurePosixPath(relative)) == kind
    line = expected_modeline(library, library / relative, kind)
    assert line == f"# yaml-language-server: $schema={modeline}"
    assert ((library / relative).parent / modeline).resolve() == ROOT / "schemas" / schema_file(
        kind
    )
    assert (ROOT / "schemas" / schema_file(kind)).is_file()


@pytest.mark.parametrize(
    "relative", ["README.md", "valuesets/x.yml", "valuesets/sub/x.yaml", "other/x.yaml"]
)
def test_files_the_loader_does_not_read_have_no_kind(relative: str) -> None:
    assert kind_of(PurePosixPath(relative)) is None


def test_the_fixture_library_validates_against_the_schemas() -> None:
    """The schemas accept what the models accept, so editors never flag a good file."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validators = {k: jsonschema_rs.validator_for(build_schema(k)) for k in KINDS}
    checked = set()
    for path in sorted(FIXTURE.rglob("*.yaml")):
        kind = kind_of(PurePosixPath(*path.relative_to(FIXTURE).parts))
        assert kind is not None
        doc, problems = read_yaml(path, str(path))
        assert doc is not None
        assert not problems
        assert validators[kind].is_valid(doc.data), (
            f"{path}: {list(validators[kind].iter_errors(doc.data))}"
        )
        checked.add(kind)
    assert checked == set(KINDS)
    doc, _ = read_yaml(FIXTURE / "indicators" / "work-signs.yaml", "x")
    assert doc is not None
    assert not validators["indicator"].is_valid(doc.data | {"strength": "medium"})
    assert not validators["indicator"].is_valid(doc.data | {"strenght": "moderate"})
