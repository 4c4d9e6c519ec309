"""Argument passing and result conversion rules (pure functions)."""

import math

import pytest

from plugin._runtime.calls import (
    InvalidCall,
    compute_deadline,
    convert_return,
    execution_failure,
    outcome_from_exception,
    prepare_kwargs,
    run_id_of,
)
from plugin.sdk import ErrorCode, fail, ok
from plugin.sdk.errors import RequestError

CTX = {"_ctx": {"run_id": "r-1"}}


# -- arguments ---------------------------------------------------------------------------------


def test_ctx_is_passed_to_kwargs_handlers():
    def handler(**kwargs):
        return kwargs

    assert prepare_kwargs(handler, {"a": 1, **CTX}) == {"a": 1, **CTX}


def test_ctx_is_passed_to_a_named_ctx_parameter():
    def handler(a, _ctx=None):
        return a

    assert prepare_kwargs(handler, {"a": 1, **CTX}) == {"a": 1, **CTX}


def test_ctx_is_dropped_when_the_handler_cannot_take_it():
    def handler(a, b=2):
        return a + b

    assert prepare_kwargs(handler, {"a": 1, **CTX}) == {"a": 1}


def test_bound_methods_and_run_id_injection():
    class P:
        def entry(self, x):
            return x

        def takes_all(self, **kw):
            return kw

    assert prepare_kwargs(P().entry, {"x": 1}, run_id="r-9") == {"x": 1}
    assert prepare_kwargs(P().takes_all, {"x": 1}, run_id="r-9") == {"x": 1, "_ctx": {"run_id": "r-9"}}


def test_arguments_that_do_not_fit_are_refused():
    def handler(a):
        return a

    with pytest.raises(InvalidCall, match="Invalid call: missing a required argument: 'a'"):
        prepare_kwargs(handler, {})
    with pytest.raises(InvalidCall, match="unexpected keyword argument 'zzz'"):
        prepare_kwargs(handler, {"a": 1, "zzz": 2})
    with pytest.raises(InvalidCall, match="args must be a JSON object"):
        prepare_kwargs(handler, [1, 2])


def test_run_id_source():
    assert run_id_of("r-1", {}) == "r-1"
    assert run_id_of(None, {"_ctx": {"run_id": "r-2"}}) == "r-2"
    assert run_id_of(None, {"x": 1}) is None


# -- results -----------------------------------------------------------------------------------


def test_ok_envelope_gives_its_data():
    out = convert_return("e", ok(data={"message": "hi"}))
    assert out.ok and out.data == {"message": "hi"}
    assert out.body("c-1") == {"call_id": "c-1", "ok": True, "data": {"message": "hi"}}


def test_fail_envelope_gives_an_error():
    out = convert_return("e", fail(ErrorCode.NOT_FOUND, "no such thing", details={"id": 3}))
    assert out.body("c-1") == {
        "call_id": "c-1",
        "ok": False,
        "data": None,
        "error": {"code": "NOT_FOUND", "message": "no such thing", "details": {"id": 3}},
    }
    legacy = {"success": False, "data": None, "message": "", "error": {"code": "ErrorCode.TIMEOUT", "message": "late"}, "time": "t"}
    out = convert_return("e", legacy)
    assert (out.code, out.message) == ("TIMEOUT", "late")
    out = convert_return("e", {"success": False, "error": "plain text", "time": "t"})
    assert (out.code, out.message) == ("PLUGIN_ERROR", "plain text")


def test_plain_values_are_data():
    for value in ({"sum": 3}, [1, "a"], "text", 3, 2.5, True, None):
        out = convert_return("e", value)
        assert out.ok and out.data == value
    assert convert_return("e", (1, 2)).data == [1, 2]  # as JSON has it
    assert convert_return("e", {1: "a"}).data == {"1": "a"}


def test_values_that_are_not_json_fail_as_the_reference_fails_them():
    # The reference's run fails when it JSON-encodes the response: INTERNAL with json's own text.
    out = convert_return("e", {"x": object()})
    assert (out.ok, out.code, out.message) == (False, "INTERNAL", "Object of type object is not JSON serializable")
    loop = []
    loop.append(loop)
    assert convert_return("e", loop).code == "INTERNAL"
    assert convert_return("e", {1, 2}).code == "INTERNAL"
    out = convert_return("e", ok(data=b"bytes"))
    assert (out.code, out.message) == ("INTERNAL", "Object of type bytes is not JSON serializable")


def test_result_objects_of_the_newer_sdk():
    class Ok:
        def __init__(self, value):
            self.value = value

        def is_ok(self):
            return True

    class Err:
        def __init__(self, error):
            self.error = error

        def is_ok(self):
            return False

    class SdkError(RuntimeError):
        code = "E_CONFIG"

    assert convert_return("e", Ok({"a": 1})).data == {"a": 1}
    out = convert_return("e", Err(SdkError("bad config")))
    assert (out.ok, out.code, out.message) == (False, "E_CONFIG", "bad config")


def test_exceptions_become_internal():
    out = outcome_from_exception(ValueError("boom requested"))
    assert out.body("c")["error"] == {
        "code": "INTERNAL",
        "message": "ValueError: boom requested",
        "details": {"exception_type": "ValueError"},
    }
    assert outcome_from_exception(KeyError()).message == "KeyError"


def test_handler_exceptions_read_as_the_reference_reports_them():
    details = {"plugin_id": "p", "entry_id": "e", "type": "PluginExecutionError", "exception_type": "ValueError"}
    out = execution_failure(ValueError("boom"), "p", "e")
    assert (out.code, out.message, out.details) == ("INTERNAL", "Plugin 'p' entry 'entry e' execution failed: Invalid call: boom", details)
    out = execution_failure(RuntimeError("down"), "p", "tick", "timer")
    assert out.message == "Plugin 'p' entry 'custom event timer.tick' execution failed: Unexpected error: down"
    assert execution_failure(InvalidCall("Invalid call: missing a required argument: 'a'"), "p", "e").message.endswith("execution failed: Invalid call: missing a required argument: 'a'")
    assert execution_failure(TimeoutError("slow"), "p", "e").code == "TIMEOUT"
    # An error neko answered keeps its code up a call chain.
    chained = execution_failure(RequestError("cycle", "DEADLOCK"), "p", "e")
    assert (chained.code, chained.message) == ("DEADLOCK", "cycle")


def test_deadlines():
    assert compute_deadline(500, 100) == 0.5
    assert compute_deadline(0, 100) == 0.1
    assert compute_deadline(0, None) is None
    assert compute_deadline(0, None, 2.0) == 2.0
    assert compute_deadline(5000, None, 2.0) == 2.0
    assert math.isclose(compute_deadline(300, 30000, 30.0), 0.3)
