"""Error codes and the exceptions the SDK raises.

`ErrorCode` is a `(str, Enum)` whose `str()` is the plain name (`"TIMEOUT"`), which is what neko
puts on the wire. (The reference SDK sent `"ErrorCode.TIMEOUT"`; neko reads both.)
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional


class ErrorCode(str, Enum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    DEPENDENCY_MISSING = "DEPENDENCY_MISSING"
    NOT_READY = "NOT_READY"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL = "INTERNAL"
    INVALID_RESPONSE = "INVALID_RESPONSE"
    # Codes neko uses besides the reference's.
    CANCELED = "CANCELED"
    PLUGIN_ERROR = "PLUGIN_ERROR"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def code_name(code: Any) -> str:
    """The wire form of an error code: `ErrorCode.X` and the string "ErrorCode.X" both give "X"."""
    if isinstance(code, ErrorCode):
        return code.value
    if isinstance(code, Enum):
        value = code.value
        return value if isinstance(value, str) else code.name
    text = str(code)
    return text[len("ErrorCode."):] if text.startswith("ErrorCode.") else text


class PluginConfigError(RuntimeError):
    """A `self.config` operation failed."""

    def __init__(self, message: str, path: Optional[str] = None, operation: Optional[str] = None):
        super().__init__(message)
        self.path = path
        self.operation = operation


class PluginCallError(RuntimeError):
    """A `self.plugins` call failed (bad reference, or the callee or neko answered an error).

    `str()` is the message; `code` the error code when one is known (`DEADLOCK`, `NOT_FOUND`,
    `PLUGIN_CRASHED`, the callee's own code, ...; None otherwise); `details` neko's details."""

    def __init__(self, message: str = "", code: Optional[str] = None, details: Any = None):
        super().__init__(message)
        self.code = code
        self.details = details


class RequestError(RuntimeError):
    """The supervisor answered a request with an error; `str()` is its message."""

    def __init__(self, message: str, code: str = "INTERNAL", details: Any = None):
        super().__init__(message)
        self.code = code
        self.details = details


__all__ = ["ErrorCode", "code_name", "PluginConfigError", "PluginCallError", "RequestError"]
