"""ok()/fail() envelopes and ErrorCode."""

from plugin.sdk import ErrorCode, fail, ok
from plugin.sdk.errors import code_name
from plugin.sdk.responses import is_envelope


def test_ok_envelope():
    env = ok({"x": 1}, message="done", trace_id="t-1", source="test")
    assert env["success"] is True
    assert env["data"] == {"x": 1}
    assert env["message"] == "done"
    assert env["error"] is None
    assert env["trace_id"] == "t-1"
    assert env["meta"] == {"source": "test"}
    assert isinstance(env["time"], str) and env["time"]
    assert "meta" not in ok()
    assert ok()["data"] is None
    assert is_envelope(env)


def test_fail_envelope_uses_plain_codes():
    env = fail(ErrorCode.TIMEOUT, "too slow", details={"after": 3}, retriable=True, time="2026-01-01T00:00:00Z")
    assert env["success"] is False
    assert env["data"] is None
    assert env["message"] == ""
    assert env["error"] == {"code": "TIMEOUT", "message": "too slow", "details": {"after": 3}, "retriable": True}
    assert env["time"] == "2026-01-01T00:00:00Z"
    assert fail("QUOTA_EXCEEDED", "x")["error"]["code"] == "QUOTA_EXCEEDED"
    assert fail("ErrorCode.NOT_FOUND", "x")["error"]["code"] == "NOT_FOUND"
    assert is_envelope(env)


def test_error_code_enum():
    names = {"VALIDATION_ERROR", "DEPENDENCY_MISSING", "NOT_READY", "RATE_LIMITED", "TIMEOUT", "NOT_FOUND", "INTERNAL", "INVALID_RESPONSE"}
    assert names <= {m.name for m in ErrorCode}
    assert isinstance(ErrorCode.INTERNAL, str)
    assert ErrorCode.INTERNAL == "INTERNAL"
    assert str(ErrorCode.INTERNAL) == "INTERNAL" and f"{ErrorCode.INTERNAL}" == "INTERNAL"
    assert code_name(ErrorCode.NOT_READY) == "NOT_READY"


def test_is_envelope_is_strict():
    assert not is_envelope({"success": True, "data": 1})
    assert not is_envelope({"success": 1, "error": None, "time": "t"})
    assert not is_envelope([1])
