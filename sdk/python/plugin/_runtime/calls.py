"""How one call's arguments and return value are handled (pure functions, unit-tested).

- `prepare_kwargs`: the TRIGGER's `args` become keyword arguments, `_ctx` included; `_ctx` is left
  out for handlers that accept neither `_ctx` nor `**kwargs`. Arguments that do not fit the
  signature are refused up front ("Invalid call: ...", reported as `execution_failure`).
- `convert_return`: ok/fail envelopes, Ok/Err-style results and plain JSON values → an `Outcome`
  (envelopes stay whole for calls from other plugins).
- `execution_failure`: an exception from a handler → the reference's INTERNAL "Plugin '<id>' entry
  'entry <eid>' execution failed: ..." (TIMEOUT for TimeoutError; an error neko answered a request
  with keeps its own code). `outcome_from_exception`: the same for errors outside a handler, as
  INTERNAL "<Type>: <message>".
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..api.exceptions import PluginError
from ..sdk.errors import PluginCallError, RequestError, code_name
from ..sdk.responses import is_envelope

CTX_KEY = "_ctx"


@dataclass
class Outcome:
    ok: bool
    data: Any = None
    code: str = ""
    message: str = ""
    details: Any = None

    @classmethod
    def success(cls, data: Any) -> "Outcome":
        return cls(ok=True, data=data)

    @classmethod
    def failure(cls, code: str, message: str, details: Any = None) -> "Outcome":
        return cls(ok=False, code=code, message=message, details=details)

    def body(self, call_id: str) -> dict:
        if self.ok:
            return {"call_id": call_id, "ok": True, "data": self.data}
        error = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"call_id": call_id, "ok": False, "data": None, "error": error}


class InvalidCall(Exception):
    """The arguments do not fit the handler's signature."""


@dataclass(frozen=True)
class _Shape:
    """What `prepare_kwargs` needs from a handler's signature (worked out once per handler)."""

    sig: Optional[inspect.Signature]
    #: `_ctx` is left out (the handler accepts neither `_ctx` nor `**kwargs`).
    drop_ctx: bool = False
    #: Any keyword arguments bind (`**kwargs` and no parameter without a default), so `bind` is skipped.
    binds_anything: bool = False


#: Handler → its shape. Entry handlers are made once (bound methods kept by the handler tables),
#: so this stays small; it is emptied if it ever grows past `_SHAPE_CACHE_MAX`.
_shapes: dict = {}
_SHAPE_CACHE_MAX = 1024
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _shape_of(handler: Callable[..., Any]) -> _Shape:
    try:
        return _shapes[handler]
    except KeyError:
        pass
    except TypeError:  # unhashable (e.g. a bound method of an instance with __eq__ but no __hash__)
        return _make_shape(handler)
    shape = _make_shape(handler)
    if len(_shapes) >= _SHAPE_CACHE_MAX:
        _shapes.clear()
    _shapes[handler] = shape
    return shape


def _make_shape(handler: Callable[..., Any]) -> _Shape:
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return _Shape(None)  # no signature to check (some builtins): pass everything
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    ctx_param = params.get(CTX_KEY)
    drop_ctx = not takes_any and (ctx_param is None or ctx_param.kind is inspect.Parameter.POSITIONAL_ONLY)
    binds_anything = takes_any and all(p.kind in _VARIADIC or p.default is not p.empty for p in params.values())
    return _Shape(sig, drop_ctx, binds_anything)


def prepare_kwargs(handler: Callable[..., Any], args: Any, run_id: Optional[str] = None) -> dict:
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidCall(f"Invalid call: args must be a JSON object, not {type(args).__name__}")
    kwargs = dict(args)
    if run_id and CTX_KEY not in kwargs:
        kwargs[CTX_KEY] = {"run_id": run_id}
    shape = _shape_of(handler)
    if shape.sig is None:
        return kwargs
    if shape.drop_ctx:
        kwargs.pop(CTX_KEY, None)
    if shape.binds_anything and all(type(k) is str for k in kwargs):
        return kwargs
    try:
        shape.sig.bind(**kwargs)
    except TypeError as exc:
        raise InvalidCall(f"Invalid call: {exc}") from None
    return kwargs


def run_id_of(trigger_run_id: Optional[str], args: Any) -> Optional[str]:
    """The call's run id: the TRIGGER's, else `_ctx.run_id` in its args."""
    if trigger_run_id:
        return trigger_run_id
    if isinstance(args, dict) and isinstance(args.get(CTX_KEY), dict):
        value = args[CTX_KEY].get("run_id")
        return value if isinstance(value, str) and value else None
    return None


def to_json_data(value: Any) -> Any:
    """`value` as JSON data (json.dumps without `default=`), or TypeError/ValueError saying why.

    Values that are JSON data already (exactly dict with str keys, list, str, int, float, bool,
    None, not nested deeper than `_PLAIN_DEPTH`) are returned as they are: the round trip would
    give an equal copy. Anything else (tuples, subclasses, non-str keys, deep or cyclic values)
    takes the round trip."""
    if _is_plain(value, _PLAIN_DEPTH):
        return value
    return json.loads(json.dumps(value))


_PLAIN_DEPTH = 16
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _is_plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth <= 0:
        return False
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _is_plain(v, depth - 1)):
                return False
        return True
    if kind is list:
        for v in value:
            if type(v) not in _SCALARS and not _is_plain(v, depth - 1):
                return False
        return True
    return False


def not_serialisable(entry_id: str, exc: Exception) -> Outcome:
    # The reference's run fails here, when it JSON-encodes the trigger response: INTERNAL with
    # json's own text ("Object of type bytes is not JSON serializable").
    return Outcome.failure("INTERNAL", str(exc) or f"Entry '{entry_id}' returned a value that is not JSON-serialisable")


def _details(value: Any) -> Any:
    if value is None:
        return None
    try:
        return to_json_data(value)
    except (TypeError, ValueError, RecursionError):
        return {"repr": repr(value)}


def _failure_from_envelope(entry_id: str, envelope: dict) -> Outcome:
    error = envelope.get("error")
    if isinstance(error, dict):
        code = code_name(error.get("code")) if error.get("code") else "PLUGIN_ERROR"
        message = error.get("message") or envelope.get("message") or ""
        details = error.get("details")
    else:
        code = "PLUGIN_ERROR"
        message = str(error) if error else envelope.get("message") or ""
        details = None
    if not message:
        message = "plugin returned failure"  # the reference's default
    return Outcome.failure(code, str(message), _details(details))


def _is_result_object(value: Any) -> bool:
    return not isinstance(value, (dict, list, str, bytes)) and callable(getattr(value, "is_ok", None))


def convert_return(entry_id: str, value: Any, *, raw_envelopes: bool = False) -> Outcome:
    """What an entry returned → the call's outcome. With `raw_envelopes` (a call from another
    plugin), `ok(...)`/`fail(...)` envelopes are the data itself, as the reference hands a plugin
    call's raw return value back unchanged; Ok/Err results are still unwrapped (the newer SDK's
    contract for calls between plugins)."""
    if is_envelope(value) and not raw_envelopes:
        if not value["success"]:
            return _failure_from_envelope(entry_id, value)
        value = value.get("data")
    elif _is_result_object(value):
        # Ok(...)/Err(...) of the newer SDK, by duck typing.
        if value.is_ok():
            value = getattr(value, "value", None)
        else:
            err = getattr(value, "error", None)
            raw_code = getattr(err, "code", None)
            code = code_name(raw_code) if isinstance(raw_code, str) and raw_code else "PLUGIN_ERROR"
            message = str(err) if err is not None else "Unknown error"
            return Outcome.failure(code, message or "Unknown error", _details(getattr(err, "details", None)))
    try:
        return Outcome.success(to_json_data(value))
    except (TypeError, ValueError, RecursionError) as exc:
        return not_serialisable(entry_id, exc)


#: Exceptions the reference reports as a bad call ("Invalid call: <e>"); others are "Unexpected error: <e>".
_INVALID_CALL_TYPES = (TypeError, ValueError, AttributeError)


def execution_failure(exc: BaseException, plugin_id: str, entry_id: str, event_type: Optional[str] = None) -> Outcome:
    """An exception from a handler, as the reference's control plane reports it (its
    `PluginExecutionError`): INTERNAL "Plugin '<id>' entry 'entry <eid>' execution failed: Invalid call:
    <e>" ("custom event <type>.<id>" for a custom event; "Unexpected error: <e>" for other than
    TypeError/ValueError/AttributeError; a PluginError's own text), with details {plugin_id,
    entry_id, type} and the exception's class. Errors neko answered keep their code up a call chain
    and a TimeoutError is TIMEOUT, as `outcome_from_exception` says."""
    if isinstance(exc, (RequestError, PluginCallError)) and isinstance(getattr(exc, "code", None), str) and exc.code:
        return outcome_from_exception(exc)
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, (PluginError, InvalidCall)):
        reason = text or name
    elif isinstance(exc, _INVALID_CALL_TYPES):
        reason = f"Invalid call: {text}"
    else:
        reason = f"Unexpected error: {text}"
    what = f"custom event {event_type}.{entry_id}" if event_type and event_type != "plugin_entry" else f"entry {entry_id}"
    details = {"plugin_id": plugin_id, "entry_id": entry_id, "type": "PluginExecutionError", "exception_type": name}
    code = "TIMEOUT" if isinstance(exc, TimeoutError) else "INTERNAL"
    return Outcome.failure(code, f"Plugin '{plugin_id}' entry '{what}' execution failed: {reason}", details)


def outcome_from_exception(exc: BaseException) -> Outcome:
    name = type(exc).__name__
    text = str(exc)
    code = getattr(exc, "code", None)
    if isinstance(exc, (RequestError, PluginCallError)) and isinstance(code, str) and code:
        # An error neko answered (a refused or failed plugin call) keeps its code and details, so
        # it travels up a call chain unchanged: A's run fails with the DEADLOCK that B met.
        details = {"exception_type": name}
        extra = _details(getattr(exc, "details", None))
        if extra is not None:
            details["details"] = extra
        return Outcome.failure(code_name(code), text or name, details)
    message = f"{name}: {text}" if text else name
    if isinstance(exc, TimeoutError):
        return Outcome.failure("TIMEOUT", message, {"exception_type": name})
    return Outcome.failure("INTERNAL", message, {"exception_type": name})


def compute_deadline(trigger_timeout_ms: int, entry_timeout_ms: Optional[int], worker_timeout_s: Optional[float] = None) -> Optional[float]:
    """Seconds until the call's deadline: the TRIGGER's `timeout_ms`, else (when it is 0) the
    entry's own; a `@worker` timeout bounds it further. None = no deadline."""
    ms = trigger_timeout_ms if trigger_timeout_ms and trigger_timeout_ms > 0 else (entry_timeout_ms or 0)
    seconds = ms / 1000.0 if ms and ms > 0 else None
    if worker_timeout_s and worker_timeout_s > 0:
        seconds = worker_timeout_s if seconds is None else min(seconds, worker_timeout_s)
    return seconds
