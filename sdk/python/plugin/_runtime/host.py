"""The plugin process's runtime: handshake, dispatch, heartbeats, STOP, parent watch.

Two event loops in two threads:

- the I/O loop (the runner's, in the main thread) owns the link to the supervisor: it receives,
  sends, heartbeats, handles STOP and signals, watches the parent process, and keeps each call's
  deadline and CANCEL. No plugin code runs on it.
- the handler loop (`handler_loop.HandlerLoop`, thread `neko-handlers`) runs plugin code:
  `async def` entries, async lifecycle hooks, async timers, `@message` handlers, and awaitables a
  sync handler returned.

Sync handlers run on a thread pool, `@worker` handlers on a separate small pool. A handler's RESULT
is sent by the thread it ran on as soon as it has its outcome (no hop back to the I/O loop). Each
call has a deadline (the TRIGGER's `timeout_ms`, else the entry's own) and can be canceled; either
way the caller gets its RESULT at once (from the I/O loop), the async task is cancelled on the
handler loop, and a sync handler sees `ctx.cancelled` turn true. Exactly one RESULT is sent per
call (`_Call.claim`).

An `async def` handler that blocks (e.g. `time.sleep`) therefore only delays the other async
handlers; heartbeats, CANCELs and the results of sync handlers keep flowing. A watchdog on the I/O
loop warns when the handler loop has not answered for `STALL_WARN_S` (5 s), naming the handler.

Lifecycle: `lifecycle("startup")` runs after WELCOME while heartbeats already flow; TRIGGERs that
arrive meanwhile wait for it. Then timers, auto-started custom events and `@message` dispatch
(`message_dispatch`, when the class has `@message` handlers) start. STOP (or SIGTERM) stops them,
runs `lifecycle("shutdown")` within the grace period, flushes and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from ..sdk.logger import PluginLogger
from ..sdk.shared.constants import SDK_NAME, SDK_VERSION
from ..sdk.shared.core.events import EventMeta
from . import scope
from .calls import (
    InvalidCall,
    Outcome,
    compute_deadline,
    convert_return,
    outcome_from_exception,
    prepare_kwargs,
    run_id_of,
)
from .entries import HandlerTables, RuntimeEntry, is_async_callable
from .env import HANDSHAKE_TIMEOUT_S, RuntimeEnv
from .handler_loop import HandlerLoop, HandlerLoopWatchdog, name_task
from .link import Link
from .message_dispatch import MessageDispatcher
from .message_plane import MessagePlaneConfig
from .protocol import PROTOCOL_VERSION, Envelope

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
SYNC_POOL_SIZE = 32
WORKER_POOL_SIZE = 4
PARENT_POLL_S = 0.25
#: Grace period when the stop comes from SIGTERM (the supervisor sends SIGKILL soon after).
SIGTERM_GRACE_S = 1.0
#: How long the runner waits for the handler loop's thread to end after the I/O loop has finished.
HANDLER_LOOP_STOP_S = 1.0


@dataclass
class _Awaitable:
    """A sync handler returned an awaitable; the loop awaits it."""

    value: Any


@dataclass
class _Call:
    scope: scope.CallScope
    task: Optional[asyncio.Task] = None
    #: Set by `cancel` (CANCEL from neko); the call then ends with CANCELED.
    canceled: bool = False
    #: Woken by `cancel`: the future `_execute` is waiting on, if any (on the I/O loop).
    waiter: Optional[asyncio.Future] = None
    #: The deadline (I/O loop time, i.e. `time.monotonic()`), once `_execute` has set it.
    end: Optional[float] = None
    #: Taken by whoever sends the call's RESULT (exactly one is sent): the thread the handler ran on,
    #: as soon as it has its outcome, or the I/O loop (cancel, deadline, runtime failures).
    answered: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True once, for whoever sends the RESULT."""
        return self.answered.acquire(blocking=False)

    def cancel(self) -> None:
        self.scope.flag.set()
        self.canceled = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class PluginHost:
    def __init__(self, env: RuntimeEnv, link: Link, tables: HandlerTables, logger: PluginLogger):
        self.env = env
        self.link = link
        self.tables = tables
        self.logger = logger
        self.sync_pool = ThreadPoolExecutor(max_workers=SYNC_POOL_SIZE, thread_name_prefix="neko-entry")
        self.worker_pool = ThreadPoolExecutor(max_workers=WORKER_POOL_SIZE, thread_name_prefix="neko-worker")
        self.calls: dict[str, _Call] = {}
        self.queued: list[dict] = []
        self.started = False
        self.stopping = False
        self.hard_exit = False
        self._serving = False
        self.timer_stop = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: The I/O loop (the link, heartbeats, STOP, deadlines); no plugin code runs on it.
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        #: The loop plugin code runs on (async handlers, hooks, timers, @message handlers).
        self.handlers = HandlerLoop(logger)
        self.watchdog: Optional[HandlerLoopWatchdog] = None
        self._finished: Optional[asyncio.Future] = None
        self._signalled: Optional[asyncio.Event] = None
        self._startup_task: Optional[asyncio.Task] = None
        self._stop_task: Optional[asyncio.Task] = None
        self.messages: Optional[MessageDispatcher] = None

    # -- the whole run ------------------------------------------------------------------------------

    @property
    def handler_loop(self) -> asyncio.AbstractEventLoop:
        return self.handlers.loop

    def hello_body(self) -> dict:
        body = {
            "protocol": PROTOCOL_VERSION,
            "plugin_id": self.env.plugin_id,
            "sdk": SDK_NAME,
            "sdk_version": SDK_VERSION,
            "pid": os.getpid(),
            "entries": self.tables.hello_entries(),
        }
        events = self.tables.hello_events()
        if events:
            body["events"] = events
        if self.tables.input_schema is not None:
            body["input_schema"] = self.tables.input_schema
        return body

    async def run(self) -> int:
        """Connects, handshakes and serves; returns the exit code."""
        self.loop = asyncio.get_running_loop()
        self._finished = self.loop.create_future()
        self._signalled = asyncio.Event()
        self._install_signals()
        if not self.handlers.thread.is_alive():
            self.handlers.start()
        try:
            self.link.connect()
            await self.link.send_now("hello", self.hello_body())
        except Exception as exc:
            self.logger.error("cannot reach neko at {}: {}: {}", self.env.endpoint, type(exc).__name__, exc)
            return 1
        self.logger.info("HELLO sent to {} with {} entries", self.env.endpoint, len(self.tables.entries))

        welcome, code = await self._handshake()
        if welcome is None:
            await self.link.close()
            return code
        interval_ms = welcome.get("heartbeat_interval_ms") or self.env.heartbeat_ms
        self.logger.info("WELCOME received; heartbeat every {} ms", interval_ms)
        self.link.start()
        self._serving = True
        self.watchdog = HandlerLoopWatchdog(self.handlers, self.loop, self.logger)
        background = [
            asyncio.ensure_future(self._read_loop()),
            asyncio.ensure_future(self._heartbeat_loop(interval_ms / 1000.0)),
            asyncio.ensure_future(self._watch_parent()),
            asyncio.ensure_future(self.watchdog.run()),
        ]
        self._startup_task = asyncio.ensure_future(self._startup())
        code = await self._finished
        self._stop_message_dispatch()
        for task in [*background, self._startup_task, self._stop_task]:
            if task is not None and not task.done():
                task.cancel()
        for call in list(self.calls.values()):
            call.scope.flag.set()
            if call.task is not None:
                call.task.cancel()
        if not self.hard_exit:
            await self.link.close()
        return code

    def _finish(self, code: int) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(code)

    async def _handshake(self) -> tuple[Optional[dict], int]:
        """WELCOME's body, or (None, exit code) on STOP/SIGTERM, timeout or a broken link."""
        assert self.loop is not None and self._signalled is not None
        deadline = self.loop.time() + HANDSHAKE_TIMEOUT_S
        signalled = asyncio.ensure_future(self._signalled.wait())
        try:
            while True:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    self.logger.error(
                        "no WELCOME from neko within {:.0f}s of connecting to {}; exiting",
                        HANDSHAKE_TIMEOUT_S,
                        self.env.endpoint,
                    )
                    return None, 1
                receiving = asyncio.ensure_future(self.link.recv())
                done, _ = await asyncio.wait({receiving, signalled}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    if signalled in done:
                        self.logger.info("stop signal received before WELCOME; exiting")
                        return None, 0
                    continue
                try:
                    envelope = receiving.result()
                except Exception as exc:
                    self.logger.error("the link to neko failed during the handshake: {}: {}", type(exc).__name__, exc)
                    return None, 1
                if envelope.kind == "welcome":
                    if envelope.body.get("plugin_id") != self.env.plugin_id:
                        self.logger.warning("WELCOME names plugin '{}'", envelope.body.get("plugin_id"))
                    return envelope.body, 0
                if envelope.kind == "stop":
                    self.logger.info("STOP received before WELCOME; exiting")
                    return None, 0
                self.logger.warning("{} message before WELCOME; dropped", envelope.kind)
        finally:
            signalled.cancel()

    def _install_signals(self) -> None:
        assert self.loop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_signal(self, signum: int) -> None:
        assert self._signalled is not None
        self._signalled.set()  # ends the handshake wait, if it is still going on
        if self._serving:
            self.begin_stop(SIGTERM_GRACE_S, signal.Signals(signum).name)

    # -- background loops ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        # Messages are handled as they arrive (the link calls `_on_message` from its readable
        # event, several per wakeup when several are waiting); this task only waits for a failure.
        assert self.loop is not None
        failed: asyncio.Future = self.loop.create_future()

        def on_failure(exc: BaseException) -> None:
            if not failed.done():
                failed.set_exception(exc)

        self.link.set_receiver(self._on_message, on_failure)
        try:
            await failed
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.logger.error("the link to neko failed: {}: {}", type(exc).__name__, exc)
            self._finish(1)
        finally:
            self.link.set_receiver(None)

    async def _heartbeat_loop(self, interval_s: float) -> None:
        # Sent from the I/O loop, which runs no plugin code: a blocking handler cannot stop them,
        # while a stuck runtime (the loop that reads the socket) does.
        while True:
            await asyncio.sleep(interval_s)
            self.link.post("heartbeat", {})

    async def _watch_parent(self) -> None:
        pid = self.env.supervisor_pid
        if pid is None:
            return
        while True:
            await asyncio.sleep(PARENT_POLL_S)
            parent = os.getppid()
            if parent != pid:
                self.logger.info("the supervisor (pid {}) is gone (parent is now {}); exiting", pid, parent)
                self.hard_exit = True
                self._finish(0)
                return

    # -- messages -----------------------------------------------------------------------------------

    def _on_message(self, envelope: Envelope) -> None:
        kind, body = envelope.kind, envelope.body
        if kind == "trigger":
            if self.stopping:
                self._refuse(body)
            elif not self.started:
                self.queued.append(body)
            else:
                self._dispatch(body)
        elif kind == "cancel":
            call = self.calls.get(body["call_id"])
            if call is None:
                self.logger.debug("CANCEL for no running call ({})", body["call_id"])
            else:
                self.logger.info("call {} ({}) canceled by neko", body["call_id"], call.scope.entry_id)
                call.cancel()
        elif kind == "stop":
            self.begin_stop(body["grace_ms"] / 1000.0, "STOP")
        elif kind == "response":
            self.link.on_response(body)
        elif kind == "welcome":
            self.logger.debug("repeated WELCOME ignored")
        else:
            self.logger.warning("neko sent a {} message, which only plugins send; dropped", kind)

    def _refuse(self, body: dict) -> None:
        outcome = Outcome.failure("NOT_READY", f"Plugin '{self.env.plugin_id}' is stopping")
        self.link.post("result", outcome.body(body["call_id"]))

    def _dispatch(self, body: dict) -> None:
        call_id, entry_id = body["call_id"], body["entry_id"]
        event_type = body.get("event_type")
        if event_type and event_type != "plugin_entry":
            # A custom event another plugin calls (§9b); `entry_id` is the event's id.
            entry = self.tables.event_entry(event_type, entry_id)
            missing = f"Custom event '{event_type}.{entry_id}' not found"
        else:
            event_type = None
            entry = self.tables.entries.get(entry_id)
            missing = f"Entry '{entry_id}' not found in plugin '{self.env.plugin_id}'"
        if entry is None:
            self.link.post("result", Outcome.failure("NOT_FOUND", missing).body(call_id))
            return
        if call_id in self.calls:
            self.logger.warning("TRIGGER reuses the id of a running call ({}); dropped", call_id)
            return
        caller = body.get("caller")
        call = _Call(
            scope.CallScope(
                call_id,
                entry_id,
                run_id_of(body.get("run_id"), body.get("args")),
                caller=caller if isinstance(caller, str) and caller else None,
                event_type=event_type,
            )
        )
        self.calls[call_id] = call
        call.task = asyncio.ensure_future(self._serve(entry, body, call))

    async def _serve(self, entry: RuntimeEntry, body: dict, call: _Call) -> None:
        call_id = body["call_id"]
        deadline = compute_deadline(body.get("timeout_ms") or 0, entry.timeout_ms, entry.worker.timeout if entry.worker else None)
        try:
            outcome = await self._execute(entry, body.get("args"), call, deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the runtime itself; the caller still gets an answer
            self.logger.opt(exception=exc).error("call {} failed inside the runtime", call_id)
            outcome = outcome_from_exception(exc)
        finally:
            call.scope.ended = True
            self.calls.pop(call_id, None)
        self._answer(call, outcome)

    def _answer(self, call: _Call, outcome: Outcome) -> None:
        """Sends the call's RESULT, unless it has been sent already (from any thread)."""
        if not call.claim():
            return
        call.scope.ended = True
        if not outcome.ok and outcome.code == "INVALID_RESPONSE":
            self.logger.warning("{}", outcome.message)
        self.link.post("result", outcome.body(call.scope.call_id))

    def _answer_early(self, call: _Call, outcome: Any) -> None:
        """From the thread the handler ran on: sends its final outcome at once, without a hop back
        to the I/O loop. Left to the I/O loop (which answers CANCELED or TIMEOUT, as before) once
        the call is canceled or its deadline has passed."""
        if not isinstance(outcome, Outcome) or call.canceled:
            return
        end = call.end
        if end is not None and time.monotonic() >= end:
            return
        self._answer(call, outcome)

    async def _execute(self, entry: RuntimeEntry, args: Any, call: _Call, deadline: Optional[float]) -> Outcome:
        assert self.loop is not None
        try:
            kwargs = prepare_kwargs(entry.handler, args, call.scope.run_id)
        except InvalidCall as exc:
            return Outcome.failure("VALIDATION_ERROR", str(exc), {"exception_type": "TypeError"})
        label = entry.label
        run_id = call.scope.run_id
        work: asyncio.Future
        end = call.end = None if deadline is None else self.loop.time() + deadline
        if entry.worker is not None:
            # As in the reference, worker threads see neither the run id nor the handler scope.
            work = self.loop.run_in_executor(self.worker_pool, self._thread_call, entry, kwargs, None, None, call)
        elif entry.is_async:
            work = self.handlers.run(self._async_call(entry, kwargs, label, run_id, call))
        else:
            work = self.loop.run_in_executor(self.sync_pool, self._thread_call, entry, kwargs, label, run_id, call)
        while True:
            try:
                await self._wait_for_work(work, call, end)
            except asyncio.CancelledError:  # the runtime is stopping: the handler is abandoned too
                self._abandon(work, call)
                raise
            if call.canceled:
                self._abandon(work, call)
                return Outcome.failure("CANCELED", "canceled")
            if not work.done():
                self._abandon(work, call)
                self.logger.warning("{} passed its deadline of {} ms", entry.what, int(round(deadline * 1000)))
                return Outcome.failure("TIMEOUT", f"{entry.what} timed out after {int(round(deadline * 1000))}ms")
            result = self._result_of(entry, work)
            if isinstance(result, Outcome):
                return result
            # A sync handler returned an awaitable: await it on the handler loop, under the same deadline.
            work = self.handlers.run(self._async_call(entry, None, label, run_id, call, awaitable=result.value))

    async def _wait_for_work(self, work: asyncio.Future, call: _Call, end: Optional[float]) -> None:
        """Returns once `work` is done, the call is canceled, or the loop's clock reaches `end`."""
        if work.done() or call.canceled:
            return
        assert self.loop is not None
        waiter = self.loop.create_future()

        def wake(_: Any = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        work.add_done_callback(wake)
        call.waiter = waiter
        timer = None if end is None else self.loop.call_at(end, wake)
        try:
            await waiter
        finally:
            call.waiter = None
            work.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()

    def _abandon(self, work: asyncio.Future, call: _Call) -> None:
        call.scope.flag.set()
        # For an async handler this reaches its task as `handler_loop.call_soon_threadsafe(task.cancel)`.
        work.cancel()
        # Whatever the handler does later is discarded; make sure nothing is reported as unretrieved.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _result_of(self, entry: RuntimeEntry, work: asyncio.Future) -> Any:
        if work.cancelled():
            return Outcome.failure("CANCELED", "canceled")
        exc = work.exception()
        if exc is not None:
            self._log_failure(entry, exc)
            return outcome_from_exception(exc)
        return work.result()

    def _log_failure(self, entry: RuntimeEntry, exc: BaseException) -> None:
        # The traceback starts at the plugin's code: the runtime's own frames say nothing useful.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _RUNTIME_DIR:
            tb = tb.tb_next
        self.logger.opt(exception=exc.with_traceback(tb)).error("{} raised {}: {}", entry.what, type(exc).__name__, exc)

    async def _async_call(self, entry: RuntimeEntry, kwargs: Optional[dict], label: str, run_id: Optional[str], call: _Call, awaitable: Any = None) -> Any:
        # Runs on the handler loop, in its own task (and so its own copy of the context).
        name_task(label)
        scope.enter(label, run_id, call.scope)
        try:
            value = await (awaitable if awaitable is not None else entry.handler(**(kwargs or {})))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log_failure(entry, exc)
            outcome = outcome_from_exception(exc)
        else:
            outcome = convert_return(entry.id, value)
        self._answer_early(call, outcome)
        return outcome

    def _thread_call(self, entry: RuntimeEntry, kwargs: dict, label: Optional[str], run_id: Optional[str], call: _Call) -> Any:
        with self._busy_thread():
            try:
                value = scope.run_scoped(entry.handler, kwargs, label=label, run_id=run_id, call=call.scope)
            except Exception as exc:
                self._log_failure(entry, exc)
                outcome = outcome_from_exception(exc)
            else:
                if inspect.isawaitable(value):
                    return _Awaitable(value)
                outcome = convert_return(entry.id, value)
            self._answer_early(call, outcome)
            return outcome

    @contextmanager
    def _busy_thread(self) -> Iterator[None]:
        with self._busy_lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy -= 1

    @property
    def busy_threads(self) -> int:
        with self._busy_lock:
            return self._busy

    # -- lifecycle, timers ----------------------------------------------------------------------------

    async def _run_hook(self, label: str, fn: Callable[..., Any], timeout: Optional[float] = None) -> None:
        """Runs a lifecycle hook (no arguments); failures are logged, never raised."""
        assert self.loop is not None
        if is_async_callable(fn):
            work = self.handlers.run(self._hook_async(label, fn()))
        else:
            work = self.loop.run_in_executor(self.sync_pool, self._hook_thread, label, fn)
        end = None if timeout is None else self.loop.time() + timeout
        while True:
            try:
                remaining = None if end is None else max(0.0, end - self.loop.time())
                done, _ = await asyncio.wait({work}, timeout=remaining)
            except asyncio.CancelledError:
                self._drop(work)
                raise
            if not done:
                self.logger.warning("{} did not finish within {:.1f}s", label, timeout)
                self._drop(work)
                return
            if work.cancelled() or work.exception() is not None:
                return
            value = work.result()
            if not isinstance(value, _Awaitable):
                return
            work = self.handlers.run(self._hook_async(label, value.value))

    @staticmethod
    def _drop(work: asyncio.Future) -> None:
        work.cancel()
        work.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _hook_async(self, label: str, awaitable: Any) -> None:
        name_task(label)
        scope.enter(label)
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.exception("{} failed", label)

    def _hook_thread(self, label: str, fn: Callable[..., Any]) -> Any:
        with self._busy_thread():
            try:
                value = scope.run_scoped(fn, None, label=label)
            except Exception:
                self.logger.exception("{} failed", label)
                return None
            return _Awaitable(value) if inspect.isawaitable(value) else None

    def call_from_thread(self, label: str, fn: Callable[..., Any]) -> None:
        """Calls a timer or auto-event handler from its own thread; async ones run on the handler loop."""
        try:
            if is_async_callable(fn):
                self.handlers.submit(self._hook_async(label, fn())).result()
                return
            value = scope.run_scoped(fn, None, label=label)
            if inspect.isawaitable(value):
                self.handlers.submit(self._hook_async(label, value)).result()
        except (concurrent.futures.CancelledError, RuntimeError) as exc:
            if not (self.stopping or self.timer_stop.is_set()):
                self.logger.opt(exception=exc).error("{} failed", label)
        except Exception:
            self.logger.exception("{} failed", label)

    def _start_timers(self) -> None:
        for meta, fn in self.tables.timers:
            seconds = (meta.extra or {}).get("seconds", 0)
            if not meta.auto_start or not isinstance(seconds, (int, float)) or seconds <= 0:
                continue
            thread = threading.Thread(target=self._timer_loop, args=(meta, fn, float(seconds)), name=f"neko-timer-{meta.id}", daemon=True)
            self._threads.append(thread)
            thread.start()
        for meta, fn in self.tables.auto_events:
            label = f"{meta.event_type}.{meta.id}"
            thread = threading.Thread(target=self.call_from_thread, args=(label, fn), name=f"neko-event-{meta.id}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _timer_loop(self, meta: EventMeta, fn: Callable[..., Any], seconds: float) -> None:
        label = f"timer.{meta.id}"
        while not self.timer_stop.is_set():
            self.call_from_thread(label, fn)
            if self.timer_stop.wait(seconds):
                return

    async def _startup(self) -> None:
        hook = self.tables.lifecycle.get("startup")
        if hook is not None:
            await self._run_hook("lifecycle.startup", hook)
        if self.stopping:
            return
        self.started = True
        self.logger.info("startup finished; serving (queued calls: {})", len(self.queued))
        self._start_timers()
        self._start_message_dispatch()
        queued, self.queued = self.queued, []
        for body in queued:
            self._dispatch(body)

    def _start_message_dispatch(self) -> None:
        handlers = list(self.tables.messages.values())
        if not handlers:
            return
        endpoint = MessagePlaneConfig.from_environ().pub_endpoint
        if not endpoint:
            self.logger.warning(
                "@message handlers ({}) will not be called: the message plane is not available "
                "(NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT is not set)",
                ", ".join(self.tables.messages),
            )
            return
        self.messages = MessageDispatcher(self, endpoint, handlers)
        self.messages.start(self.handlers)

    def _stop_message_dispatch(self) -> None:
        if self.messages is not None:
            self.messages.stop()

    # -- stopping ---------------------------------------------------------------------------------------

    def begin_stop(self, grace_s: float, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.logger.info("{} received; shutting down (grace {:.1f}s)", reason, grace_s)
        queued, self.queued = self.queued, []
        for body in queued:
            self._refuse(body)
        if self._startup_task is not None and not self._startup_task.done():
            self._startup_task.cancel()
        self.timer_stop.set()
        self._stop_message_dispatch()
        self._stop_task = asyncio.ensure_future(self._stop_sequence(grace_s))

    async def _stop_sequence(self, grace_s: float) -> None:
        assert self.loop is not None
        start = self.loop.time()
        hook = self.tables.lifecycle.get("shutdown")
        if hook is not None:
            await self._run_hook("lifecycle.shutdown", hook, timeout=max(0.05, grace_s * 0.9))
        # Calls still running are abandoned (neko fails them itself).
        for call in list(self.calls.values()):
            call.scope.flag.set()
            if call.task is not None:
                call.task.cancel()
        remaining = grace_s - (self.loop.time() - start)
        await self.link.flush(max(0.1, min(1.0, remaining)))
        self.logger.info("stopped")
        self._finish(0)

    # -- after the loop -------------------------------------------------------------------------------

    def shutdown_threads(self, wait_s: float = 0.5) -> bool:
        """Stops timers, the handler loop and the pools; True when no thread that would block the
        exit is left."""
        self.timer_stop.set()
        handlers_stopped = self.handlers.stop(HANDLER_LOOP_STOP_S)
        if not handlers_stopped:
            self.logger.warning("the handler loop did not stop ({})", self.handlers.describe_running())
        for pool in (self.sync_pool, self.worker_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self.busy_threads or not handlers_stopped:
            return False
        deadline = wait_s
        for thread in threading.enumerate():
            if thread is threading.current_thread() or thread.daemon or not thread.is_alive():
                continue
            thread.join(timeout=max(0.0, deadline))
            if thread.is_alive():
                return False
        return True
