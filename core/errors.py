"""One error tree for the whole project.

Every error a user can cause derives from EdgefleetError and carries one readable message. The CLI
turns any of them into that message and exit code 2; the HTTP layer into a 4xx with the same text.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""


class BundleError(EdgefleetError):
    """A bundle cannot be read: missing manifest, malformed JSON, unsafe archive member, ..."""


class VerificationError(BundleError):
    """A bundle was read but must not be trusted. `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SchemaError(EdgefleetError):
    """A request does not match the model's input schema."""

    def __init__(self, input_name: str, expected: str, got: str) -> None:
        super().__init__(f"input '{input_name}': expected {expected}, got {got}")
        self.input_name = input_name
        self.expected = expected
        self.got = got


class BackendError(EdgefleetError):
    """No listed backend can run the bundle, or a backend failed to load or run it."""


class ExportError(EdgefleetError):
    """Export from a training framework failed, or its result disagrees with the source model."""


class KeyFileError(EdgefleetError):
    """A signing or trust key cannot be read or is of the wrong kind."""


class CompileError(EdgefleetError):
    """A target cannot compile the model (unsupported operator, missing SDK), or its artifact disagrees
    with the source model on the golden examples."""
