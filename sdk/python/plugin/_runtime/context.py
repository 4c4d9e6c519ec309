"""`PluginContext`: the `ctx` a plugin class is constructed with.

Everything that talks to the supervisor goes through one generic request helper
(`_request` / `_request_sync` / `_request_async`). Ops the supervisor does not serve yet are listed
in `PENDING_FEATURES`: calling them raises `NotImplementedError` naming the feature. Wiring one
later means moving its op to `SERVED_OPS`.

`push_message` and the `ctx.bus` clients do not use that link: they talk to neko's message plane
directly (`message_plane.MessagePlane`, made on first use from the `NEKO_MESSAGE_PLANE_ZMQ_*`
endpoints in the environment).

Call styles, as in the reference:
- "smart" methods return a coroutine when called in a thread whose event loop is running (await
  it) and otherwise run synchronously;
- `*_async` methods always return a coroutine;
- `*_sync` methods always block, and refuse to run inside a running event loop.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
import json
import os
import threading
import time
import tomllib
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

from ..sdk.errors import RequestError
from ..sdk.logger import PluginLogger, enable_plugin_file_logging
from . import scope
from .message_plane import MessagePlane, MessagePlaneConfig, receipt, uuid4_str

#: Request ops this SDK sends because the supervisor serves them.
SERVED_OPS = frozenset(
    {
        "config.get",
        "config.base",
        "config.profiles",
        "config.profile",
        "config.effective",
        "config.update",
        "system.config",
        "run.update",
        "export.push",
        "plugin.call",
        "plugins.query",
    }
)

#: Ops whose features arrive later, with the words used in the NotImplementedError.
PENDING_FEATURES = {
    "memory.query": "memory queries (ctx.query_memory)",
}

#: How much longer than a plugin call's own timeout the SDK waits for neko's answer: neko enforces
#: the deadline itself and answers TIMEOUT, which should arrive before the SDK gives up.
PLUGIN_CALL_GRACE_S = 1.0
#: neko's default `timeout_ms` for `plugin.call` (used when no positive timeout is given).
PLUGIN_CALL_DEFAULT_TIMEOUT_S = 10.0

#: Values of `[plugin.safety] sync_call_in_handler` / `NEKO_PLUGIN_SYNC_CALL_POLICY`.
SYNC_CALL_POLICIES = ("warn", "reject", "allow")

#: The reference's limit for `export_push_binary`.
EXPORT_INLINE_BINARY_MAX_BYTES = 256 * 1024


class Transport(Protocol):
    """What the context needs from the runtime's link to the supervisor (all thread-safe)."""

    def post(self, kind: str, body: dict, cork: bool = False) -> bool:
        """Queues a message for the supervisor; False when it was dropped (the link is closed).
        `cork`: it may wait for the end of the loop's turn, to leave in a batch."""

    def start_request(self, op: str, args: dict) -> tuple[str, concurrent.futures.Future]:
        """Sends a REQUEST; the future receives the RESPONSE body."""

    def forget(self, request_id: str) -> None:
        """Stops waiting for a request's response."""


#: How often a blocking request made for a call checks whether that call was canceled.
CANCEL_POLL_S = 0.05


def _wait_in_call(future: concurrent.futures.Future, limit: Optional[float]) -> Optional[dict]:
    """`future.result(limit)`, except that a wait made for a call (a sync handler) ends early, with
    None, once that call is canceled or passes its deadline: its caller no longer waits, and neither
    should the handler's thread. TimeoutError when `limit` passes."""
    call = scope.current_call.get()
    if call is None:
        return future.result(limit)
    end = None if limit is None else time.monotonic() + limit
    while True:
        if call.cancelled and not future.done():
            return None
        step = CANCEL_POLL_S if end is None else min(CANCEL_POLL_S, max(0.0, end - time.monotonic()))
        done, _ = concurrent.futures.wait([future], timeout=step)
        if done:
            return future.result()
        if end is not None and time.monotonic() >= end:
            raise TimeoutError()


def _expire(answer: asyncio.Future) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class _Deadlines:
    """The deadlines of one event loop's pending requests, under one timer armed at the earliest.

    A timer per request (`call_later`, then `cancel` when the answer comes first, as nearly every
    answer does) costs a heap push and Python-level comparisons of timer handles on every request;
    here a request costs a dict entry, and the timer moves only for a deadline earlier than its own.
    """

    #: Deadlines this close to the timer's firing count as passed (the loop may fire a hair early).
    SLACK_S = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.ends: dict[asyncio.Future, float] = {}
        self.timer: Optional[asyncio.TimerHandle] = None
        self.at: Optional[float] = None

    def add(self, answer: asyncio.Future, limit: float) -> None:
        end = self.loop.time() + limit
        self.ends[answer] = end
        if self.at is None or end < self.at:
            self._arm(end)

    def discard(self, answer: asyncio.Future) -> None:
        # The timer stays: when it fires it finds nothing due and moves to the next deadline.
        self.ends.pop(answer, None)

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.at = at
        self.timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self.timer = self.at = None
        ends = self.ends
        limit = self.loop.time() + self.SLACK_S
        for answer in [a for a, end in ends.items() if end <= limit]:
            del ends[answer]
            _expire(answer)
        if ends:
            self._arm(min(ends.values()))


def running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def not_available(op: str) -> NotImplementedError:
    feature = PENDING_FEATURES.get(op, f"the '{op}' request")
    return NotImplementedError(
        f"{feature} is not available in neko yet (the supervisor does not serve the '{op}' request op)"
    )


def sync_in_loop_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"Sync call '{name}' cannot be used inside a running event loop. "
        f"Use 'await {name}_async(...)' (or the smart form with await) instead."
    )


#: What a timeout raises: a text, a function making it (when formatting it is not worth doing for
#: every request), or None for "<REQUEST_TYPE> timed out after <timeout>s".
TimeoutText = Union[str, Callable[[], str], None]


#: The reference's request type for each op, as its timeouts name them ("RUN_UPDATE timed out after 5.0s").
REQUEST_TYPES = {
    "config.get": "PLUGIN_CONFIG_GET",
    "config.base": "PLUGIN_CONFIG_BASE_GET",
    "config.profiles": "PLUGIN_CONFIG_PROFILES_GET",
    "config.profile": "PLUGIN_CONFIG_PROFILE_GET",
    "config.effective": "PLUGIN_CONFIG_EFFECTIVE_GET",
    "config.update": "PLUGIN_CONFIG_UPDATE",
    "system.config": "PLUGIN_SYSTEM_CONFIG_GET",
    "run.update": "RUN_UPDATE",
    "export.push": "EXPORT_PUSH",
    "plugin.call": "PLUGIN_TO_PLUGIN",
    "plugins.query": "PLUGIN_QUERY",
    "memory.query": "MEMORY_QUERY",
}


def _timeout_text(message: TimeoutText, op: str, timeout: Optional[float]) -> str:
    if message is None:
        return f"{REQUEST_TYPES.get(op, op)} timed out after {timeout}s"
    return message() if callable(message) else message


def unwrap_response(op: str, body: dict, *, wrap_result: bool = True, timeout_message: TimeoutText = None) -> Any:
    """A RESPONSE body → its result, or RequestError (a RuntimeError) with the supervisor's message
    and code. With `timeout_message`, a TIMEOUT answer raises TimeoutError(timeout_message) instead."""
    if not body.get("ok"):
        error = body.get("error") or {}
        message = error.get("message") or f"{op} failed"
        code = error.get("code") or "INTERNAL"
        if timeout_message is not None and code == "TIMEOUT":
            raise TimeoutError(_timeout_text(timeout_message, op, None))
        raise RequestError(message, code=code, details=error.get("details"))
    result = body.get("result")
    if wrap_result and not isinstance(result, dict):
        return {"result": result}
    return result


class PluginContext:
    """The host context handed to `PluginClass(ctx)` (reference: plugin/core/context.py)."""

    def __init__(
        self,
        plugin_id: str,
        config_path: Path | str | None,
        logger: PluginLogger,
        transport: Transport,
        plugin_dir: Path | str | None = None,
        message_plane_config: Optional[MessagePlaneConfig] = None,
    ):
        self.plugin_id = plugin_id
        self.config_path = Path(config_path) if config_path else None
        self.plugin_dir = Path(plugin_dir) if plugin_dir else (self.config_path.parent if self.config_path else Path.cwd())
        self.logger = logger
        self.app = None
        self._transport = transport
        self._bus = None
        self._file_loggers: list[PluginLogger] = []
        self._policy_cache: tuple[float, str] | None = None
        self._closed = False
        self._plane_config = message_plane_config
        self._plane: Optional[MessagePlane] = None
        self._plane_lock = threading.Lock()
        self._fast_ids = itertools.count(1)
        self._watchers: list[Any] = []
        #: Deadlines of async requests, per event loop (the last one used is kept at hand).
        self._deadlines: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines]" = weakref.WeakKeyDictionary()
        self._last_deadlines: Optional[_Deadlines] = None

    def __repr__(self) -> str:
        return f"PluginContext(plugin_id={self.plugin_id!r})"

    # -- the current call -------------------------------------------------------------------

    @property
    def run_id(self) -> Optional[str]:
        """The run of the current entry call (None outside a run, and in @worker threads)."""
        return scope.current_run_id.get()

    def require_run_id(self) -> str:
        run_id = self.run_id
        if not run_id:
            raise RuntimeError("run_id is required (this entry may not be triggered via /runs)")
        return run_id

    @property
    def call_id(self) -> Optional[str]:
        call = scope.current_call.get()
        return call.call_id if call else None

    @property
    def caller_plugin_id(self) -> Optional[str]:
        """The plugin that made the current call (a plugin-to-plugin call), else None."""
        call = scope.current_call.get()
        return call.caller if call else None

    @property
    def current_entry_id(self) -> Optional[str]:
        call = scope.current_call.get()
        return call.entry_id if call else None

    @property
    def handler_ctx(self) -> Optional[str]:
        """What plugin code is running for: `plugin_entry.<id>`, `lifecycle.startup`, `timer.<id>`..."""
        return scope.handler_label.get()

    @property
    def cancelled(self) -> bool:
        """True once the current call was canceled or passed its deadline (check it in long sync loops)."""
        call = scope.current_call.get()
        return bool(call and call.cancelled)

    def is_cancelled(self) -> bool:
        return self.cancelled

    # -- status -----------------------------------------------------------------------------

    def update_status(self, status: dict) -> None:
        """Sends the plugin's own status dict to neko (a STATUS message). Non-blocking, never raises:
        a value that is not a dict is sent as `{"status": value}`, and objects JSON cannot hold are
        sent as their text."""
        if not isinstance(status, dict):
            status = {"status": status}
        try:
            status = json.loads(json.dumps(status, default=str))
        except (ValueError, RecursionError) as exc:  # e.g. a circular structure
            self.logger.warning("status not sent: {}", exc)
            return
        if not self._transport.post("status", {"status": status}):
            self.logger.debug("status dropped: the plugin is stopping")

    # -- the generic request helper -----------------------------------------------------------

    def _require_served(self, op: str) -> None:
        if op not in SERVED_OPS:
            raise not_available(op)

    async def _request_async(
        self,
        op: str,
        args: dict,
        timeout: float = 5.0,
        *,
        wrap_result: bool = True,
        wait: Optional[float] = None,
        timeout_message: TimeoutText = None,
    ) -> Any:
        """`wait`: how long to wait for the RESPONSE (default `timeout`). `timeout_message`: when
        set, both the SDK's own wait expiring and a TIMEOUT answer raise TimeoutError with it."""
        self._require_served(op)
        limit = wait if wait is not None else timeout
        start_async = getattr(self._transport, "start_request_async", None)
        if start_async is None:  # a transport without the loop-native form
            request_id, future = self._transport.start_request(op, args)
            try:
                body = await asyncio.wait_for(asyncio.wrap_future(future), limit if limit and limit > 0 else None)
            except TimeoutError:
                raise TimeoutError(_timeout_text(timeout_message, op, timeout)) from None
            finally:
                self._transport.forget(request_id)
            return unwrap_response(op, body, wrap_result=wrap_result, timeout_message=timeout_message)
        # The response arrives in a future of this loop; the wait is bounded by one timer (what
        # asyncio.wait_for would do, without its extra future and task wake-ups).
        request_id, answer = start_async(op, args)
        deadlines = self._deadlines_of(answer.get_loop()) if limit and limit > 0 else None
        if deadlines is not None:
            deadlines.add(answer, limit)
        try:
            body = await answer
        except TimeoutError:
            raise TimeoutError(_timeout_text(timeout_message, op, timeout)) from None
        finally:
            if deadlines is not None:
                deadlines.discard(answer)
            self._transport.forget(request_id)
        return unwrap_response(op, body, wrap_result=wrap_result, timeout_message=timeout_message)

    def _deadlines_of(self, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        deadlines = self._last_deadlines
        if deadlines is None or deadlines.loop is not loop:
            with self._plane_lock:  # loops in other threads may make their first request now too
                deadlines = self._deadlines.get(loop)
                if deadlines is None:
                    deadlines = self._deadlines[loop] = _Deadlines(loop)
            self._last_deadlines = deadlines
        return deadlines

    def _request_sync(
        self,
        op: str,
        args: dict,
        timeout: float = 5.0,
        *,
        name: Optional[str] = None,
        check_policy: bool = False,
        wrap_result: bool = True,
        wait: Optional[float] = None,
        timeout_message: TimeoutText = None,
    ) -> Any:
        self._require_served(op)
        if running_loop() is not None:
            raise sync_in_loop_error(name or op)
        if check_policy:
            self._enforce_sync_call_policy(name or op)
        limit = wait if wait is not None else timeout
        request_id, future = self._transport.start_request(op, args)
        try:
            body = _wait_in_call(future, limit if limit and limit > 0 else None)
        except TimeoutError:
            raise TimeoutError(_timeout_text(timeout_message, op, timeout)) from None
        finally:
            self._transport.forget(request_id)
        if body is None:
            raise RequestError(f"{op} abandoned: the current call was canceled or passed its deadline", code="CANCELED")
        return unwrap_response(op, body, wrap_result=wrap_result, timeout_message=timeout_message)

    def _request(
        self,
        op: str,
        args: dict,
        timeout: float = 5.0,
        *,
        name: Optional[str] = None,
        check_policy: bool = False,
        wrap_result: bool = True,
        wait: Optional[float] = None,
        timeout_message: TimeoutText = None,
    ) -> Any:
        """Smart: a coroutine inside a running event loop, else the result."""
        self._require_served(op)
        if running_loop() is not None:
            return self._request_async(op, args, timeout, wrap_result=wrap_result, wait=wait, timeout_message=timeout_message)
        return self._request_sync(
            op, args, timeout, name=name, check_policy=check_policy, wrap_result=wrap_result, wait=wait, timeout_message=timeout_message
        )

    def _call(
        self,
        mode: str,
        op: str,
        build: Callable[[], dict],
        timeout: float,
        name: str,
        check_policy: bool = False,
        **options: Any,
    ) -> Any:
        """Runs `op` in `mode` ("smart" | "sync" | "async"); `build` makes the args after the op check.
        `options` (`wrap_result`, `wait`, `timeout_message`) go to the request helpers."""
        self._require_served(op)
        args = build()
        if mode == "async":
            return self._request_async(op, args, timeout, **options)
        if mode == "sync":
            if running_loop() is not None:
                # The reference's words for the `_sync` variants.
                raise RuntimeError(f"{name}_sync cannot be used inside a running event loop; use 'await {name}(...)' instead")
            return self._request_sync(op, args, timeout, name=name, check_policy=check_policy, **options)
        return self._request(op, args, timeout, name=name, check_policy=check_policy, **options)

    # -- A1: sync calls inside handlers -------------------------------------------------------

    def _sync_call_policy(self) -> str:
        policy = None
        path = self.config_path
        if path is not None:
            try:
                mtime = path.stat().st_mtime
                if self._policy_cache and self._policy_cache[0] == mtime:
                    policy = self._policy_cache[1]
                else:
                    with open(path, "rb") as fh:
                        data = tomllib.load(fh)
                    safety = (data.get("plugin") or {}).get("safety") or {}
                    value = safety.get("sync_call_in_handler") if isinstance(safety, dict) else None
                    policy = str(value).strip().lower() if value else ""
                    self._policy_cache = (mtime, policy)
            except (OSError, tomllib.TOMLDecodeError):
                policy = None
        if not policy:
            policy = os.environ.get("NEKO_PLUGIN_SYNC_CALL_POLICY", "warn").strip().lower()
        return policy if policy in SYNC_CALL_POLICIES else "warn"

    def _enforce_sync_call_policy(self, name: str) -> None:
        """The reference's A1 check for a sync request made inside a handler scope: `warn` logs,
        `reject` raises RuntimeError before anything is sent, `allow` (a neko addition) does neither."""
        label = scope.handler_label.get()
        if not label:
            return
        policy = self._sync_call_policy()
        if policy == "allow":
            return
        message = (
            f"Sync call '{name}' invoked inside handler ({label}). "
            f"This may block the command loop and cause deadlocks/timeouts."
        )
        if policy == "reject":
            raise RuntimeError(message)
        if os.environ.get("NEKO_PLUGIN_LOG_SYNC_CALL_WARNINGS", "true").strip().lower() not in ("0", "false", "no", "off"):
            self.logger.warning(message)

    # -- config (served today) ----------------------------------------------------------------

    async def get_own_config(self, timeout: float = 5.0) -> dict:
        """`{"plugin_id", "config", "config_path", "last_modified"}` of this plugin."""
        return await self._request_async("config.get", {}, timeout)

    async def get_own_base_config(self, timeout: float = 5.0) -> dict:
        return await self._request_async("config.base", {}, timeout)

    async def get_own_effective_config(self, profile_name: Optional[str] = None, timeout: float = 5.0) -> dict:
        if profile_name is None:
            return await self._request_async("config.get", {}, timeout)
        return await self._request_async("config.effective", {"profile_name": profile_name}, timeout)

    async def get_own_profiles_state(self, timeout: float = 5.0) -> dict:
        return await self._request_async("config.profiles", {}, timeout)

    async def get_own_profile_config(self, profile_name: str, timeout: float = 5.0) -> dict:
        return await self._request_async("config.profile", {"profile_name": profile_name}, timeout)

    async def update_own_config(self, updates: dict, timeout: float = 10.0) -> dict:
        self._require_served("config.update")
        if not isinstance(updates, dict):
            raise ValueError("Invalid updates: must be a dict")
        return await self._request_async("config.update", {"updates": updates}, timeout)

    async def get_system_config(self, timeout: float = 5.0) -> dict:
        return await self._request_async("system.config", {}, timeout)

    # -- runs and exports (later) ---------------------------------------------------------------

    def _run_update_args(self, run_id, progress, stage, message, step, step_total, eta_seconds, metrics) -> Callable[[], dict]:
        def build() -> dict:
            rid = run_id or self.require_run_id()
            args: dict[str, Any] = {"run_id": rid}
            for key, value in (
                ("progress", progress),
                ("stage", stage),
                ("message", message),
                ("step", step),
                ("step_total", step_total),
                ("eta_seconds", eta_seconds),
                ("metrics", metrics),
            ):
                if value is not None:
                    args[key] = value
            return args

        return build

    def run_update(self, *, run_id=None, progress=None, stage=None, message=None, step=None, step_total=None, eta_seconds=None, metrics=None, timeout: float = 5.0) -> Any:
        return self._call("smart", "run.update", self._run_update_args(run_id, progress, stage, message, step, step_total, eta_seconds, metrics), timeout, "run_update", True)

    def run_update_sync(self, *, run_id=None, progress=None, stage=None, message=None, step=None, step_total=None, eta_seconds=None, metrics=None, timeout: float = 5.0) -> Any:
        return self._call("sync", "run.update", self._run_update_args(run_id, progress, stage, message, step, step_total, eta_seconds, metrics), timeout, "run_update", True)

    def run_update_async(self, *, run_id=None, progress=None, stage=None, message=None, step=None, step_total=None, eta_seconds=None, metrics=None, timeout: float = 5.0) -> Any:
        return self._call("async", "run.update", self._run_update_args(run_id, progress, stage, message, step, step_total, eta_seconds, metrics), timeout, "run_update")

    def run_progress(self, *, run_id=None, progress, stage=None, message=None, timeout: float = 5.0) -> Any:
        return self._call("smart", "run.update", self._run_update_args(run_id, progress, stage, message, None, None, None, None), timeout, "run_progress", True)

    def run_progress_sync(self, *, run_id=None, progress=0.0, stage=None, message=None, timeout: float = 5.0) -> Any:
        return self._call("sync", "run.update", self._run_update_args(run_id, progress, stage, message, None, None, None, None), timeout, "run_progress", True)

    def run_progress_async(self, *, run_id=None, progress=0.0, stage=None, message=None, timeout: float = 5.0) -> Any:
        return self._call("async", "run.update", self._run_update_args(run_id, progress, stage, message, None, None, None, None), timeout, "run_progress")

    def _export_args(self, run_id, export_type: str, fields: dict, description, metadata) -> Callable[[], dict]:
        def build() -> dict:
            args = {"run_id": run_id or self.require_run_id(), "export_type": export_type, **fields}
            if description is not None:
                args["description"] = description
            if metadata is not None:
                args["metadata"] = metadata
            return args

        return build

    def _binary_fields(self, binary_data: Any, mime: Optional[str]) -> dict:
        if not isinstance(binary_data, (bytes, bytearray, memoryview)):
            raise TypeError("binary_data must be bytes")
        data = bytes(binary_data)
        if len(data) > EXPORT_INLINE_BINARY_MAX_BYTES:
            raise ValueError("binary_data too large")
        fields = {"binary_base64": base64.b64encode(data).decode("ascii")}
        if mime is not None:
            fields["mime"] = mime
        return fields

    def export_push_text(self, *, run_id=None, text: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("smart", "export.push", self._export_args(run_id, "text", {"text": text}, description, metadata), timeout, "export_push_text", True)

    def export_push_text_sync(self, *, run_id=None, text: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("sync", "export.push", self._export_args(run_id, "text", {"text": text}, description, metadata), timeout, "export_push_text", True)

    def export_push_text_async(self, *, run_id=None, text: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("async", "export.push", self._export_args(run_id, "text", {"text": text}, description, metadata), timeout, "export_push_text")

    def export_push_url(self, *, run_id=None, url: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("smart", "export.push", self._export_args(run_id, "url", {"url": url}, description, metadata), timeout, "export_push_url", True)

    def export_push_url_sync(self, *, run_id=None, url: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("sync", "export.push", self._export_args(run_id, "url", {"url": url}, description, metadata), timeout, "export_push_url", True)

    def export_push_url_async(self, *, run_id=None, url: str, description=None, metadata=None, timeout: float = 5.0) -> Any:
        return self._call("async", "export.push", self._export_args(run_id, "url", {"url": url}, description, metadata), timeout, "export_push_url")

    def export_push_binary_url(self, *, run_id=None, binary_url: str, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        fields = {"binary_url": binary_url, **({"mime": mime} if mime is not None else {})}
        return self._call("smart", "export.push", self._export_args(run_id, "binary_url", fields, description, metadata), timeout, "export_push_binary_url", True)

    def export_push_binary_url_sync(self, *, run_id=None, binary_url: str, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        fields = {"binary_url": binary_url, **({"mime": mime} if mime is not None else {})}
        return self._call("sync", "export.push", self._export_args(run_id, "binary_url", fields, description, metadata), timeout, "export_push_binary_url", True)

    def export_push_binary_url_async(self, *, run_id=None, binary_url: str, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        fields = {"binary_url": binary_url, **({"mime": mime} if mime is not None else {})}
        return self._call("async", "export.push", self._export_args(run_id, "binary_url", fields, description, metadata), timeout, "export_push_binary_url")

    def export_push_binary(self, *, run_id=None, binary_data: bytes, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        self._require_served("export.push")
        fields = self._binary_fields(binary_data, mime)
        return self._call("smart", "export.push", self._export_args(run_id, "binary", fields, description, metadata), timeout, "export_push_binary", True)

    def export_push_binary_sync(self, *, run_id=None, binary_data: bytes, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        self._require_served("export.push")
        fields = self._binary_fields(binary_data, mime)
        return self._call("sync", "export.push", self._export_args(run_id, "binary", fields, description, metadata), timeout, "export_push_binary", True)

    def export_push_binary_async(self, *, run_id=None, binary_data: bytes, mime=None, description=None, metadata=None, timeout: float = 5.0) -> Any:
        self._require_served("export.push")
        fields = self._binary_fields(binary_data, mime)
        return self._call("async", "export.push", self._export_args(run_id, "binary", fields, description, metadata), timeout, "export_push_binary")

    # -- other plugins (§9b), memory (later) ----------------------------------------------------

    def _plugin_call(self, mode: str, target_plugin_id: str, event_type: str, event_id: str, args: Any, timeout: Any) -> Any:
        """A `plugin.call` request. neko enforces `timeout_ms` (never more than what is left of the
        current call's deadline) and answers TIMEOUT itself; the SDK waits a little longer. A TIMEOUT
        answer, or no answer at all, raises the reference's TimeoutError; other failures raise
        RequestError with neko's (or the callee's) code and message."""
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            timeout = PLUGIN_CALL_DEFAULT_TIMEOUT_S
        event_type = event_type or "plugin_entry"

        def build() -> dict:
            return {
                "plugin_id": target_plugin_id,
                "event_type": event_type,
                "event_id": event_id,
                "args": dict(args or {}),
                "timeout_ms": max(1, int(timeout * 1000)),
            }

        return self._call(
            mode,
            "plugin.call",
            build,
            timeout,
            "trigger_plugin_event",
            mode != "async",
            wrap_result=False,
            wait=timeout + PLUGIN_CALL_GRACE_S,
            # Made only when needed: formatting it for every call costs more than the call's wait setup.
            timeout_message=lambda: f"Plugin {target_plugin_id} event {event_type}.{event_id} timed out after {timeout}s",
        )

    def trigger_plugin_event(self, target_plugin_id: str, event_type: str, event_id: str, args: Any = None, timeout: float = 10.0) -> Any:
        """Calls another plugin's entry (`event_type` "plugin_entry") or custom event through neko and
        returns the callee's raw result (smart: a coroutine inside a running event loop)."""
        return self._plugin_call("smart", target_plugin_id, event_type, event_id, args, timeout)

    def trigger_plugin_event_sync(self, target_plugin_id: str, event_type: str, event_id: str, args: Any = None, timeout: float = 10.0) -> Any:
        return self._plugin_call("sync", target_plugin_id, event_type, event_id, args, timeout)

    def trigger_plugin_event_async(self, target_plugin_id: str, event_type: str, event_id: str, args: Any = None, timeout: float = 10.0) -> Any:
        return self._plugin_call("async", target_plugin_id, event_type, event_id, args, timeout)

    def query_plugins(self, filters: Optional[dict] = None, timeout: float = 5.0) -> Any:
        return self._call("smart", "plugins.query", lambda: {"filters": dict(filters or {})}, timeout, "query_plugins", True)

    def query_plugins_sync(self, filters: Optional[dict] = None, timeout: float = 5.0) -> Any:
        return self._call("sync", "plugins.query", lambda: {"filters": dict(filters or {})}, timeout, "query_plugins", True)

    def query_plugins_async(self, filters: Optional[dict] = None, timeout: float = 5.0) -> Any:
        return self._call("async", "plugins.query", lambda: {"filters": dict(filters or {})}, timeout, "query_plugins")

    def query_memory(self, lanlan_name: str, query: str, timeout: float = 5.0) -> Any:
        return self._call("smart", "memory.query", lambda: {"lanlan_name": lanlan_name, "query": query}, timeout, "query_memory", True)

    def query_memory_sync(self, lanlan_name: str, query: str, timeout: float = 5.0) -> Any:
        return self._call("sync", "memory.query", lambda: {"lanlan_name": lanlan_name, "query": query}, timeout, "query_memory", True)

    def query_memory_async(self, lanlan_name: str, query: str, timeout: float = 5.0) -> Any:
        return self._call("async", "memory.query", lambda: {"lanlan_name": lanlan_name, "query": query}, timeout, "query_memory")

    def get_user_context(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("get_user_context was removed; use ctx.bus.memory.get(bucket_id) instead")

    # -- message plane ------------------------------------------------------------------------------

    def _message_plane(self) -> MessagePlane:
        """The message-plane client, made on first use (no socket exists before a call needs one)."""
        plane = self._plane
        if plane is not None:
            return plane
        with self._plane_lock:
            if self._plane is None:
                if self._closed:
                    raise RuntimeError("the plugin context is closed")
                config = self._plane_config if self._plane_config is not None else MessagePlaneConfig.from_environ()
                self._plane = MessagePlane(self.plugin_id, self.logger, config)
            return self._plane

    def push_message(
        self,
        source: str,
        message_type: str,
        description: str = "",
        priority: int = 0,
        content: Any = None,
        binary_data: Any = None,
        binary_url: Optional[str] = None,
        metadata: Optional[dict] = None,
        unsafe: bool = False,
        fast_mode: bool = False,
    ) -> dict:
        """Publishes a message to neko's message plane (store `messages`, topic `all`).

        Callable from any thread and from async code (it never waits long: see below). Returns a
        receipt `{"submitted": bool, "message_id": str, "reason": str | None}`:

        - normal mode: one frame per call, `message_id` a uuid4, `time` an ISO string. If the
          message plane does not take the frame within `NEKO_MESSAGE_PLANE_INGEST_SNDTIMEO_MS`
          (1000 ms) the receipt says `submitted: False, reason: "timeout"`; nothing is raised
          (the reference raised here).
        - `fast_mode=True`: the message is queued for a background batcher that sends every 256
          messages or 5 ms; `message_id` is `"<plugin_id>:<n>"`, `time` a float epoch. When the
          queue is 90% full the message is dropped: `reason: "backpressure"`, counted in
          `ctx.message_stats()`, and a warning is logged at most once a second.

        Other reasons: `"payload_too_large"` (over 256 KiB packed, which the plane would drop) and
        `"closed"` (after `ctx.close()`). `submitted: True` means handed to the message plane's socket, not stored.
        Raises RuntimeError when neko gave the plugin no message plane, and TypeError when the
        message holds values msgpack cannot carry. No schema validation, as in the reference.
        """
        if fast_mode:
            message_id = f"{self.plugin_id}:{next(self._fast_ids)}"
            when: Any = time.time()
        else:
            message_id = uuid4_str()  # str(uuid.uuid4()), without its per-id system call
            when = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        if self._closed:  # e.g. a background thread still pushing while the plugin exits
            return receipt(False, message_id, "closed")
        plane = self._message_plane()
        if isinstance(binary_data, (bytearray, memoryview)):
            binary_data = bytes(binary_data)
        payload = {
            "type": "MESSAGE_PUSH",
            "message_id": message_id,
            "plugin_id": self.plugin_id,
            "source": source,
            "description": description,
            "priority": priority,
            "message_type": message_type,
            "content": content,
            "binary_data": binary_data,
            "binary_url": binary_url,
            "metadata": metadata if metadata is not None else {},
            "unsafe": unsafe,
            "time": when,
        }
        return plane.push(payload, fast=bool(fast_mode))

    async def push_message_async(
        self,
        source: str,
        message_type: str,
        description: str = "",
        priority: int = 0,
        content: Any = None,
        binary_data: Any = None,
        binary_url: Optional[str] = None,
        metadata: Optional[dict] = None,
        unsafe: bool = False,
        fast_mode: bool = False,
    ) -> dict:
        """`push_message` for async code. A normal-mode push, which may wait for the socket, runs in
        a thread so the event loop never blocks; a fast-mode push only queues."""
        args = (source, message_type, description, priority, content, binary_data, binary_url, metadata, unsafe, fast_mode)
        if fast_mode:
            return self.push_message(*args)
        return await asyncio.to_thread(self.push_message, *args)

    def message_stats(self) -> dict:
        """Counters of this plugin's pushes: `normal` {sent, timeouts, failed}, `fast` {queued,
        accepted, rejected, sent, batches, dropped, send_timeouts, ...}, `payload_too_large`."""
        return self._message_plane().stats()

    def _track_watcher(self, watcher: Any) -> None:
        with self._plane_lock:
            self._watchers.append(watcher)

    def _untrack_watcher(self, watcher: Any) -> None:
        with self._plane_lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    @property
    def bus(self) -> Any:
        """The bus clients (`.messages`, `.events`, `.lifecycle`, `.memory`)."""
        if self._bus is None:
            from ..sdk.bus import BusHub

            self._bus = BusHub(self)
        return self._bus

    # -- logging, shutdown ------------------------------------------------------------------------

    def enable_file_logging(self, log_level: Any = None, max_bytes: Optional[int] = None, backup_count: Optional[int] = None, max_files: Optional[int] = None) -> PluginLogger:
        """A logger writing to stderr and `<plugin dir>/logs/<id>_<YYYYmmdd_HHMMSS>.log`."""
        logger = enable_plugin_file_logging(self.plugin_id, self.plugin_dir, log_level=log_level, max_bytes=max_bytes, backup_count=backup_count, max_files=max_files)
        self._file_loggers.append(logger)
        return logger

    def close(self) -> None:
        """Stops bus watchers, sends what fast-mode `push_message` still holds, closes the message
        plane sockets and the file loggers. The link itself belongs to the runner."""
        if self._closed:
            return
        with self._plane_lock:
            self._closed = True
            watchers, self._watchers = self._watchers, []
            plane = self._plane
        for watcher in watchers:
            try:
                watcher.stop()
            except Exception:
                pass
        if plane is not None:
            try:
                plane.close()
            except Exception as exc:
                self.logger.warning("closing the message plane client failed: {}: {}", type(exc).__name__, exc)
        for logger in self._file_loggers:
            try:
                logger.remove()
            except Exception:
                pass
        self._file_loggers.clear()
