"""`ok(...)` / `fail(...)`: the response envelopes entries return.

ok   → {"success": True,  "data": data, "message": message, "error": None, "time": iso, "trace_id": ..., ["meta"]}
fail → {"success": False, "data": None, "message": "", "error": {"code", "message", "details", "retriable"},
        "time": iso, "trace_id": ..., ["meta"]}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from .errors import ErrorCode, code_name


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _time(value: Any) -> str:
    if value is None:
        return _now_iso()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def ok(
    data: Any = None,
    *,
    message: str = "",
    trace_id: Optional[str] = None,
    time: Any = None,
    **meta: Any,
) -> dict:
    """A success envelope carrying `data`."""
    envelope = {
        "success": True,
        "data": data,
        "message": message,
        "error": None,
        "time": _time(time),
        "trace_id": trace_id,
    }
    if meta:
        envelope["meta"] = meta
    return envelope


def fail(
    code: ErrorCode | str,
    message: str,
    *,
    details: Any = None,
    retriable: bool = False,
    trace_id: Optional[str] = None,
    time: Any = None,
    **meta: Any,
) -> dict:
    """A failure envelope. `code` may be an `ErrorCode` or any string (sent as its plain name)."""
    envelope = {
        "success": False,
        "data": None,
        "message": "",
        "error": {
            "code": code_name(code),
            "message": message,
            "details": details,
            "retriable": bool(retriable),
        },
        "time": _time(time),
        "trace_id": trace_id,
    }
    if meta:
        envelope["meta"] = meta
    return envelope


def is_envelope(value: Any) -> bool:
    """True for an `ok`/`fail` envelope: a dict whose `success` is a bool and that has `error` and `time`."""
    return (
        isinstance(value, dict)
        and type(value.get("success")) is bool
        and "error" in value
        and "time" in value
    )


__all__ = ["ok", "fail", "is_envelope", "ErrorCode"]
