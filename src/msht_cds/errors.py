"""Exception tree. Every error carries a message a safeguarding lead or an EHR team can act on.

MshtCdsError
├── LibraryError            the YAML library or a template cannot be used
│   └── LibraryLoadError    carries every LintIssue found (file, line, column, code)
└── RequestError            a hook call cannot be answered as sent
    ├── BadRequestError     400: malformed JSON, missing or wrong fields
    ├── PayloadTooLargeError 413
    ├── AuthError           401: one generic body, the reason only in metrics
    └── PrefetchError       412: the data needed could not be obtained
        └── FhirServerError the EHR's FHIR server failed, was refused or too slow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MshtCdsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(MshtCdsError):
    """The service must not start with these settings; the message says what to set."""


class LibraryError(MshtCdsError):
    """The indicator library, pathways or card templates cannot be used."""


@dataclass(frozen=True)
class LintIssue:
    """One problem in a library file, reported as `path:line:col: CODE message`."""

    path: str
    line: int
    column: int
    code: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.code} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "code": self.code,
            "message": self.message,
            "severity": self.severity,
        }


class LibraryLoadError(LibraryError):
    """The library failed to load; `issues` lists every problem found in one pass."""

    def __init__(self, issues: list[LintIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues) or "library failed to load")


@dataclass
class RequestError(MshtCdsError):
    """A hook or feedback call that cannot be answered as sent."""

    message: str
    status_code: int = 400
    issue_code: str = "invalid"

    def __str__(self) -> str:
        return self.message


class BadRequestError(RequestError):
    def __init__(self, message: str, issue_code: str = "invalid") -> None:
        super().__init__(message, 400, issue_code)


class PayloadTooLargeError(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 413, "too-costly")


class RequestTimeoutError(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 408, "timeout")


class ClientClosedError(RequestError):
    """The caller went away before its body arrived: nobody reads the answer, the audit does
    (499, as proxies record a client that closed its request)."""

    def __init__(self) -> None:
        super().__init__(
            "the client closed the connection before sending its body", 499, "incomplete"
        )


class AuthError(RequestError):
    """The reason stays server-side; the client always sees the same 401 body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 401, "login")


class PrefetchError(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 412, "not-found")


class FhirServerError(PrefetchError):
    """The FHIR server was not allowed, failed, was too slow or sent something unusable."""


def operation_outcome(code: str, message: str) -> dict[str, Any]:
    """The FHIR OperationOutcome with one error issue that every error answer carries."""
    issue = {"severity": "error", "code": code, "diagnostics": message}
    return {"resourceType": "OperationOutcome", "issue": [issue]}
