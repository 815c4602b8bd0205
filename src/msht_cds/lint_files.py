"""File-level lint: modelines, files the loader never reads, and clearer schema messages.

The loader reports schema problems exactly where they are, but in pydantic's words and one at
a time: `strenght: moderate` becomes an unknown field *and* a missing `strength` at line 1, and
every test case of the broken indicator then "expects an indicator not in the library". A lead
needs one message at the typo that says what to write instead, so this module merges the pair,
adds the allowed values with their meaning, and drops the knock-on errors (they come back
after the fix if they are real).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path, PurePosixPath

from .errors import LintIssue
from .library.schema import expected_modeline, fields_at, kind_of, value_help
from .library.yamlfile import MODELINE_PREFIX

_UNKNOWN = re.compile(r"^`(?P<name>[^`]+)` is not a field here \((?P<where>[^)]*)\)\.")
_MISSING = re.compile(r"^`(?P<where>[^`]+)` is required but missing\.")
_INVALID = re.compile(r"^(?P<where>[\w.\[\]-]+): ")
_YAML_HINTS = (
    ("'\\t'", "Indent with spaces, not tabs."),
    ("mapping values are not allowed", "A value contains `: `; put the whole value in quotes."),
    ("block", "Check that this line lines up with the keys above it (same number of spaces)."),
    ("expected ':'", "A key needs `: ` after it, or a value with `:` needs quotes."),
)
_KNOCK_ON = {
    "unknown-indicator": "indicator",
    "unknown-valueset": "valueset",
    "unknown-nation": "nation",
}
_SCHEMA_CODES = {"yaml-syntax", "unknown-field", "missing-field", "invalid-value"}


def check_files(library_dir: Path) -> list[LintIssue]:
    """Modelines on line 1, and YAML files the loader would silently skip."""
    issues = []
    for path in sorted(library_dir.rglob("*")):
        relative = PurePosixPath(*path.relative_to(library_dir).parts)
        if not path.is_file() or path.suffix not in (".yaml", ".yml"):
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        shown = str(path.relative_to(library_dir.parent))
        kind = kind_of(relative)
        if kind is None:
            issues.append(
                LintIssue(
                    shown,
                    1,
                    1,
                    "ignored-file",
                    "this file is never read, so nothing in it takes effect. The library reads "
                    "library.yaml, indicators/**/*.yaml, valuesets/*.yaml, nations/*.yaml, "
                    "local/*.yaml and *.test.yaml: move the file or rename it to .yaml.",
                )
            )
            continue
        text = path.read_text(encoding="utf-8", errors="replace").removeprefix("\ufeff")  # BOM
        first = text.partition("\n")[0].strip()
        want = expected_modeline(library_dir, path, kind)
        if not first.startswith(MODELINE_PREFIX):
            issues.append(
                LintIssue(
                    shown,
                    1,
                    1,
                    "missing-modeline",
                    f"line 1 should be `{want}` so that editors complete and check this "
                    f"{kind} file as you type.",
                )
            )
        elif first != want:
            issues.append(
                LintIssue(
                    shown,
                    1,
                    1,
                    "wrong-modeline",
                    f"this is a {kind} file but line 1 is `{first}`; the editor checks it against "
                    f"the wrong schema. Write `{want}`.",
                )
            )
    return issues


def with_hints(issues: list[LintIssue], library_dir: Path) -> list[LintIssue]:
    """Loader issues rewritten for a lead: spelling and value hints, knock-on errors dropped."""
    missing = {(i.path, m["where"]): i for i in issues if (m := _MISSING.match(i.message))}
    dropped: set[int] = set()
    result = []
    for issue in issues:
        kind = kind_of(PurePosixPath(*PurePosixPath(issue.path).parts[1:]))
        unknown = _UNKNOWN.match(issue.message) if issue.code == "unknown-field" else None
        invalid = _INVALID.match(issue.message) if issue.code == "invalid-value" else None
        if kind is not None and unknown is not None:
            parent = unknown["where"].split(".")[:-1]
            fields = sorted(fields_at(kind, tuple(parent)))
            close = difflib.get_close_matches(unknown["name"], fields, n=1, cutoff=0.6)
            if close:
                pair = missing.get((issue.path, ".".join([*parent, close[0]])))
                if pair is not None:
                    dropped.add(id(pair))
                hint = f"Write `{close[0]}:` instead" + (" (it is required)." if pair else ".")
            else:
                hint = f"Fields allowed here: {', '.join(fields)}." if fields else ""
            issue = _append(issue, hint)
        elif kind is not None and invalid is not None:
            issue = _append(issue, _value_hint(kind, invalid["where"], issue.message))
        elif issue.code == "yaml-syntax":
            issue = _append(issue, next((h for k, h in _YAML_HINTS if k in issue.message), ""))
        result.append(issue)
    broken = _broken_ids(result, library_dir)
    return [
        i
        for i in result
        if id(i) not in dropped
        and not any(f"`{b}`" in i.message for b in broken.get(_KNOCK_ON.get(i.code, ""), ()))
    ]


def _value_hint(kind: str, where: str, message: str) -> str:
    """A misspelt mapping key (`contacts.safeguarding_tean.[key]`) gets a spelling hint;
    a wrong value gets the allowed values with their meaning."""
    if where.endswith(".[key]"):
        options = re.findall(r"'([^']+)'", message.partition("Input should be")[2])
        close = difflib.get_close_matches(where.split(".")[-2], options, n=1)
        return f"Write `{close[0]}:` instead." if close else ""
    return value_help(kind, tuple(where.split("."))) or ""


def _append(issue: LintIssue, hint: str) -> LintIssue:
    return dataclasses.replace(issue, message=f"{issue.message} {hint}".strip()) if hint else issue


def _broken_ids(issues: list[LintIssue], library_dir: Path) -> dict[str, set[str]]:
    """Ids written in files that failed to load, by kind: references to them are knock-ons."""
    ids: dict[str, set[str]] = {}
    for shown in {i.path for i in issues if i.code in _SCHEMA_CODES}:
        kind = kind_of(PurePosixPath(*PurePosixPath(shown).parts[1:]))
        try:
            text = (library_dir.parent / shown).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found = re.search(r"^id:\s*[\"']?([A-Za-z0-9_-]+)", text, re.MULTILINE)
        if kind and found:
            ids.setdefault(kind, set()).add(found[1])
    return ids
