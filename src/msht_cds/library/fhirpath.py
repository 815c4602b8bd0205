"""Strict FHIRPath: parse at load time with a raising listener, then compile once.

fhirpathpy accepts some malformed expressions (an unfinished `where(system = ` evaluates to
empty), so every expression in the library is parsed strictly before it is compiled.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

CompiledPath = Callable[..., list[Any]]


@functools.cache
def _r4_model() -> dict[str, Any]:
    """fhirpathpy's R4 type model, read alone: `fhirpathpy.models` loads four FHIR versions
    (~6 MB more in every worker)."""
    folder = Path(fhirpathpy.__file__).parent / "models" / "r4"
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8")) for path in folder.glob("*.json")
    }


class FhirPathSyntaxError(ValueError):
    """The expression is not valid FHIRPath; the message says where."""


class _RaisingListener(ErrorListener):  # type: ignore[misc]
    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise FhirPathSyntaxError(f"column {column + 1}: {msg}")


def check_syntax(expression: str) -> None:
    """Raise FhirPathSyntaxError unless the whole expression parses."""
    listener = _RaisingListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.expression()
    if stream.LA(1) != Token.EOF:
        raise FhirPathSyntaxError(f"unexpected text after the expression: {stream.LT(1).text!r}")


VARIABLES = ("visitDate",)
"""The environment variables the evaluator gives every expression (`%visitDate`)."""


def check_names(expression: str, resource_type: str) -> None:
    """Raise FhirPathSyntaxError for a function or `%variable` fhirpathpy does not know: such
    an expression parses, but every evaluation fails, so the rule would never match. Found by
    evaluating it once on an empty resource, where these fail before any data is read."""
    compiled = fhirpath_compile(expression, _r4_model())
    try:
        compiled({"resourceType": resource_type}, dict.fromkeys(VARIABLES, "2026-01-01"))
    except RecursionError:
        raise
    except Exception as exc:  # fhirpathpy signals both with bare exceptions
        message = str(exc)
        if message.startswith("Not implemented: "):
            name = message.removeprefix("Not implemented: ")
            raise FhirPathSyntaxError(f"`{name}()` is not a FHIRPath function") from None
        if "undefined environment variable" in message:
            name = message.rsplit(":", 1)[-1].strip()
            known = ", ".join(f"%{v}" for v in VARIABLES)
            raise FhirPathSyntaxError(f"`%{name}` is not defined (known: {known})") from None


def compile_strict(expression: str) -> CompiledPath:
    """Parse strictly, compile once. On a resource whose data the expression cannot work with
    (a date that is a list, a Quantity without a system...), fhirpathpy raises plain
    exceptions: such a resource does not satisfy the expression, which gives no result."""
    check_syntax(expression)
    compiled: CompiledPath = fhirpath_compile(expression, _r4_model())

    def evaluate(resource: Any, variables: dict[str, Any]) -> list[Any]:
        try:
            return compiled(resource, variables)
        except RecursionError:
            raise
        except Exception:  # fhirpathpy signals type errors with bare Exception
            return []

    return evaluate


def truthy(result: list[Any]) -> bool:
    """FHIRPath's boolean reading of a result collection."""
    if not result:
        return False
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return True
