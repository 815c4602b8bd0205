"""Read lead-edited YAML strictly and point every problem at its line and column.

Files are parsed with ruamel.yaml's C-accelerated safe loader (YAML 1.2, duplicate keys are
errors), which is fast enough to load the whole library in well under a second. Positions are
needed only when something is wrong, so the round-trip tree that knows every node's line is
built lazily, for the files that have a problem: pydantic `loc` paths map onto it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ..errors import LintIssue

MODELINE_PREFIX = "# yaml-language-server: $schema="


def _yaml(typ: str) -> YAML:
    yaml = YAML(typ=typ)
    yaml.allow_duplicate_keys = False
    return yaml


@dataclass
class YamlDocument:
    """A parsed file: plain data for the models; positions on demand."""

    path: Path
    display_path: str
    data: Any
    text: str
    _tree: Any = field(default=None, repr=False)

    @property
    def tree(self) -> Any:
        if self._tree is None:
            self._tree = _yaml("rt").load(self.text)
        return self._tree

    def position(self, loc: tuple[str | int, ...]) -> tuple[int, int]:
        """1-based (line, column) of the deepest node on `loc` that exists in the file."""
        line, col = 1, 1
        try:
            node = self.tree
        except (YAMLError, ValueError, TypeError, RecursionError):
            return line, col  # the positions parser disagrees; the issue is still reported
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                key_line, key_col = node.lc.key(part)
                line, col = key_line + 1, key_col + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                item_line, item_col = node.lc.item(part)
                line, col = item_line + 1, item_col + 1
                node = node[part]
            else:
                break
        return line, col

    def issue(self, loc: tuple[str | int, ...], code: str, message: str) -> LintIssue:
        line, col = self.position(loc)
        return LintIssue(self.display_path, line, col, code, message)


def plain(node: Any, _seen: set[int] | None = None) -> Any:
    """Parsed YAML → JSON-like Python; dates back to ISO text, as FHIR JSON has them.

    A mapping or list reached twice is an alias (`*name`): refused, because copying shared
    nodes is how an alias bomb expands to billions of nodes, and a self-reference never ends."""
    seen = set() if _seen is None else _seen
    if isinstance(node, (dict, list)):
        if id(node) in seen:
            raise ValueError("aliases of mappings or lists (*name) are not allowed in the library")
        seen.add(id(node))
    if isinstance(node, dict):
        return {str(k): plain(v, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v, seen) for v in node]
    if isinstance(node, (dt.datetime, dt.date)):
        return node.isoformat()
    if isinstance(node, str):
        return str(node)
    return node


def read_yaml(path: Path, display_path: str) -> tuple[YamlDocument | None, list[LintIssue]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [LintIssue(display_path, 1, 1, "yaml-syntax", f"cannot read file: {exc}")]
    try:
        data = _yaml("safe").load(text)
        if isinstance(data, dict):
            data = plain(data)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        hint = " Each key may appear only once in a mapping." if "duplicate" in problem else ""
        return None, [
            LintIssue(display_path, line, col, "yaml-syntax", f"{problem}.{hint}".strip())
        ]
    except (YAMLError, ValueError, TypeError, RecursionError) as exc:
        return None, [LintIssue(display_path, 1, 1, "yaml-syntax", f"invalid YAML: {exc}")]
    if not isinstance(data, dict):
        return None, [
            LintIssue(
                display_path, 1, 1, "yaml-syntax", "the file must hold a mapping (key: value)"
            )
        ]
    return YamlDocument(path, display_path, data, text), []
