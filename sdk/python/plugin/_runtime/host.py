"""The plugin process's runtime: handshake, dispatch, heartbeats, STOP, parent watch.

Two event loops in two threads:

- the handler loop (`handler_loop.HandlerLoop`, thread `neko-handlers`) runs plugin code (`async
  def` entries, async lifecycle hooks, async timers, `@message` handlers, awaitables a sync handler
  returned) and, once WELCOME is in, reads the link: a TRIGGER of an async entry becomes a task
  right there, a RESPONSE to an async request resolves its future right there, and the RESULT goes
  out from there, so the hot path of a call crosses no thread.
- the I/O loop (the runner's, in the main thread) runs no plugin code: it does the handshake, sends
  heartbeats, handles STOP and signals, watches the parent process, keeps every call's deadline (one
  timer for all, `_watch_deadline`) and stands by: every `STANDBY_POLL_S` it looks whether the
  handler loop has been stuck in one callback for more than `STANDBY_TAKEOVER_S` and, while it is,
  reads the link itself (`Link.check_reader`), so CANCELs, STOP, sync entries and the responses
  sync handlers wait for do not wait for plugin code that blocks. What it receives for the handler
  loop (async TRIGGERs and RESPONSEs) is handed over and runs once that loop is free again.

Sync handlers run on a thread pool, `@worker` handlers on a separate small pool. A handler's RESULT
is sent by the thread it ran on as soon as it has its outcome. Each call has a deadline (the
TRIGGER's `timeout_ms`, else the entry's own) and can be canceled; either way the caller gets its
RESULT at once (TIMEOUT from the I/O loop's timer, CANCELED from whichever loop received the
CANCEL), the async task is cancelled on the handler loop, and a sync handler sees `ctx.cancelled`
turn true. Exactly one RESULT is sent per call (`_Call.claim`).

An `async def` handler that blocks (e.g. `time.sleep`) therefore only delays the other async
handlers; heartbeats, deadlines, CANCELs and the results of sync handlers keep flowing (after at
most ~0.1 s, the stand-by check). A watchdog on the I/O loop warns when the handler loop has not
answered for `STALL_WARN_S` (5 s), naming the handler.

Lifecycle: `lifecycle("startup")` runs after WELCOME while heartbeats already flow (then
`lifecycle("reload")` when neko started this process for a reload); TRIGGERs that
arrive meanwhile wait for it. Then timers, auto-started custom events and `@message` dispatch
(`message_dispatch`, when the class has `@message` handlers) start. STOP (or SIGTERM) stops them,
runs `lifecycle("shutdown")` within the grace period, flushes and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
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
from ..sdk.shared.constants import PERSIST_ATTR, SDK_NAME, SDK_VERSION
from ..sdk.shared.core.events import EventMeta
from ..sdk.state import StatePersistence
from . import scope
from .calls import (
    InvalidCall,
    Outcome,
    compute_deadline,
    convert_return,
    execution_failure,
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
from .protocol import FEATURE_BATCH, PROTOCOL_VERSION, Envelope

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
SYNC_POOL_SIZE = 32
WORKER_POOL_SIZE = 4
PARENT_POLL_S = 0.25
#: Grace period when the stop comes from SIGTERM (the supervisor sends SIGKILL soon after).
SIGTERM_GRACE_S = 1.0
#: How long the runner waits for the handler loop's thread to end after the I/O loop has finished.
HANDLER_LOOP_STOP_S = 1.0
#: How often the I/O loop checks that the handler loop, which normally reads the link, is free.
STANDBY_POLL_S = 0.05
#: The I/O loop reads the link itself while the handler loop has been stuck in one callback (plugin
#: code that blocks) for longer than this.
STANDBY_TAKEOVER_S = 0.05


@dataclass
class _Awaitable:
    """A sync handler returned an awaitable; the loop awaits it."""

    value: Any


@dataclass(eq=False)
class _Call:
    scope: scope.CallScope
    #: What runs the handler: its task on the handler loop, or its future on a thread pool.
    work: Any = None
    #: Set by `cancel` (CANCEL from neko); the call then ends with CANCELED.
    canceled: bool = False
    #: The entry, and the deadline in seconds from the start (None = none).
    entry: Optional[RuntimeEntry] = None
    deadline: Optional[float] = None
    #: The deadline (`time.monotonic()`, the I/O loop's clock), once the call has started.
    end: Optional[float] = None
    #: What `cancel` does besides setting the flag (the host answers CANCELED and abandons the work).
    on_cancel: Optional[Callable[["_Call"], None]] = None
    #: Taken by whoever sends the call's RESULT (exactly one is sent): the thread the handler ran on,
    #: as soon as it has its outcome, or whoever cancels the call or sees its deadline pass.
    answered: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True once, for whoever sends the RESULT."""
        return self.answered.acquire(blocking=False)

    def cancel(self) -> None:
        self.scope.flag.set()
        self.canceled = True
        if self.on_cancel is not None:
            self.on_cancel(self)


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
        #: Guards `started`, `stopping` and `queued` (TRIGGERs arrive on the loop that reads the link).
        self._gate = threading.Lock()
        #: Calls with a deadline, watched from the I/O loop with one timer (`_deadline_at`, when it
        #: fires); handler threads and the handler loop add calls without waking the I/O loop unless
        #: theirs is the earliest deadline.
        self._timed: dict[_Call, None] = {}
        self._timed_lock = threading.Lock()
        self._deadline_at: Optional[float] = None
        self._deadline_timer: Optional[asyncio.TimerHandle] = None
        self._io_thread: Optional[int] = None
        self.started = False
        self.stopping = False
        self.hard_exit = False
        #: State persistence (`__freezable__`): what saves after successful entries, the instance it
        #: saves, and whether a saved state was restored at this start (then `unfreeze` runs).
        self.state: Optional[StatePersistence] = None
        self.instance: Any = None
        self.restored = False
        #: Set when the plugin's `__init__` needed neko: constructs it (and installs its handler
        #: tables) once connected, on a pool thread, before `startup`; calls wait meanwhile.
        self.construct: Optional[Callable[[], None]] = None
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
            "features": [FEATURE_BATCH],
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
        self._io_thread = threading.get_ident()
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
        self.link.start(batching=FEATURE_BATCH in (welcome.get("features") or ()))
        self._serving = True
        self.watchdog = HandlerLoopWatchdog(self.handlers, self.loop, self.logger)
        background = [
            asyncio.ensure_future(self._read_loop()),
            asyncio.ensure_future(self._heartbeat_loop(interval_ms / 1000.0)),
            asyncio.ensure_future(self._watch_parent()),
            asyncio.ensure_future(self.watchdog.run()),
            asyncio.ensure_future(self._standby_loop()),
        ]
        self._startup_task = asyncio.ensure_future(self._startup())
        code = await self._finished
        self._stop_message_dispatch()
        for task in [*background, self._startup_task, self._stop_task]:
            if task is not None and not task.done():
                task.cancel()
        for call in list(self.calls.values()):
            self._abandon(call)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
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

        def fail(exc: BaseException) -> None:
            if not failed.done():
                failed.set_exception(exc)

        def on_failure(exc: BaseException) -> None:  # on the loop that reads the link
            self._on_io(fail, exc)

        self.link.set_receiver(self._on_message, on_failure)
        # The handler loop reads from now on; the I/O loop stands by (`_standby_loop`).
        if self.handlers.alive and self.handlers.thread.ident is not None:
            self.link.serve_on(self.handler_loop, self.handlers.thread.ident)
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

    async def _standby_loop(self) -> None:
        # The handler loop reads the link; while it is stuck in plugin code, the I/O loop reads it
        # (CANCELs, STOP, sync entries and the answers sync handlers wait for must not wait for it).
        while True:
            await asyncio.sleep(STANDBY_POLL_S)
            self.link.check_reader(self.handlers.busy_for() > STANDBY_TAKEOVER_S)

    def _on_io(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs `fn(*args)` on the I/O loop: at once when called there, else soon."""
        if threading.get_ident() == self._io_thread:
            fn(*args)
            return
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the I/O loop is gone
            pass

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
        # On the loop that reads the link: the handler loop, or the I/O loop while that one is stuck.
        kind, body = envelope.kind, envelope.body
        if kind == "response":
            self.link.on_response(body)
        elif kind == "trigger":
            with self._gate:
                refuse = self.stopping
                if not refuse and not self.started:
                    self.queued.append(body)
                    return
            if refuse:
                self._refuse(body)
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
            self._on_io(self.begin_stop, body["grace_ms"] / 1000.0, "STOP")
        elif kind == "welcome":
            self.logger.debug("repeated WELCOME ignored")
        else:
            self.logger.warning("neko sent a {} message, which only plugins send; dropped", kind)

    def _refuse(self, body: dict) -> None:
        outcome = Outcome.failure("NOT_READY", f"Plugin '{self.env.plugin_id}' is stopping")
        self.link.post("result", outcome.body(body["call_id"]))

    def _dispatch(self, body: dict) -> None:
        """Starts a call (on whichever loop received its TRIGGER): an async handler as a task of the
        handler loop (directly when on it), a sync one on its thread pool."""
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
        args = body.get("args")
        run_id = run_id_of(body.get("run_id"), args)
        call = _Call(
            scope.CallScope(
                call_id,
                entry_id,
                run_id,
                caller=caller if isinstance(caller, str) and caller else None,
                event_type=event_type,
            ),
            entry=entry,
            on_cancel=self._cancel_call,
        )
        self.calls[call_id] = call
        try:
            call.deadline = compute_deadline(body.get("timeout_ms") or 0, entry.timeout_ms, entry.worker.timeout if entry.worker else None)
            try:
                kwargs = prepare_kwargs(entry.handler, args, run_id)
            except InvalidCall as exc:
                self._finish_call(call, self._failure(entry, exc))
                return
            if call.deadline is not None:
                call.end = time.monotonic() + call.deadline
                self._watch_deadline(call)
            label = entry.label
            if entry.worker is not None:
                # As in the reference, worker threads see neither the run id nor the handler scope.
                work = self.worker_pool.submit(self._thread_call, entry, kwargs, None, None, call)
            elif entry.is_async:
                self._start_async(call, self._async_call(entry, kwargs, label, run_id, call), label)
                return
            else:
                work = self.sync_pool.submit(self._thread_call, entry, kwargs, label, run_id, call)
            call.work = work
            work.add_done_callback(functools.partial(self._thread_done, call))
        except Exception as exc:  # a bug in the runtime itself (or a pool that is shut down); the caller still gets an answer
            self.logger.opt(exception=exc).error("call {} failed inside the runtime", call_id)
            self._finish_call(call, outcome_from_exception(exc))

    def _start_async(self, call: _Call, coro: Any, label: str) -> None:
        """Runs `coro` (`_async_call` for the call's handler, which finishes the call itself) as a
        task of the handler loop, named after what it runs (for the watchdog)."""

        def start() -> None:  # on the handler loop
            if call.canceled or call.answered.locked():  # canceled or timed out before it started
                coro.close()
                return
            task = self.handler_loop.create_task(coro, name=label)
            call.work = task
            # A CANCEL or deadline handled on the I/O loop since the check above found no work
            # to cancel: cancel it now (whoever canceled it has answered and forgotten the call).
            if call.canceled or call.answered.locked():
                task.cancel()

        if self.handlers.on_thread:
            start()
        elif not self.handlers.call_soon(start):
            coro.close()
            self._finish_call(call, outcome_from_exception(RuntimeError("the handler loop is not running")))

    def _thread_done(self, call: _Call, work: concurrent.futures.Future) -> None:  # on the pool thread
        entry = call.entry
        assert entry is not None
        if work.cancelled():
            outcome: Any = Outcome.failure("CANCELED", "canceled")
        else:
            exc = work.exception()
            if exc is not None:
                self._log_failure(entry, exc)
                outcome = self._failure(entry, exc)
            else:
                outcome = work.result()
        if isinstance(outcome, _Awaitable):
            # A sync handler returned an awaitable: await it on the handler loop, under the same deadline.
            self._start_async(call, self._async_call(entry, None, entry.label, call.scope.run_id, call, awaitable=outcome.value), entry.label)
            return
        self._finish_call(call, outcome)

    def _finish_call(self, call: _Call, outcome: Outcome) -> None:
        """The call's handler is done (any thread): forgets the call and answers, unless the RESULT
        went out already (early from the handler's thread, or on cancel or deadline)."""
        call.scope.ended = True
        if self.calls.get(call.scope.call_id) is call:
            self.calls.pop(call.scope.call_id, None)
        self._unwatch_deadline(call)
        if call.canceled:
            outcome = Outcome.failure("CANCELED", "canceled")
        elif call.end is not None and time.monotonic() >= call.end:
            self._expire(call)
            return
        self._answer(call, outcome)

    def _cancel_call(self, call: _Call) -> None:
        """CANCEL (any thread): the caller gets CANCELED at once; the handler is abandoned."""
        self._abandon(call)
        self._answer(call, Outcome.failure("CANCELED", "canceled"))
        if self.calls.get(call.scope.call_id) is call:
            self.calls.pop(call.scope.call_id, None)
        self._unwatch_deadline(call)

    def _expire(self, call: _Call) -> None:
        """The call's deadline has passed (any thread): the caller gets TIMEOUT, unless it has its
        answer already; the handler is abandoned."""
        if self.calls.get(call.scope.call_id) is call:
            self.calls.pop(call.scope.call_id, None)
        self._unwatch_deadline(call)
        if not call.claim():
            return
        call.scope.ended = True
        self._abandon(call)
        entry, deadline = call.entry, call.deadline
        if entry is not None and deadline is not None:
            ms = int(round(deadline * 1000))
            self.logger.warning("{} passed its deadline of {} ms", entry.what, ms)
            outcome = Outcome.failure("TIMEOUT", f"{entry.what} timed out after {ms}ms")
        else:
            outcome = Outcome.failure("TIMEOUT", "timed out")
        self.link.post("result", outcome.body(call.scope.call_id))

    def _answer(self, call: _Call, outcome: Outcome) -> None:
        """Sends the call's RESULT, unless it has been sent already (from any thread)."""
        if not call.claim():
            return
        call.scope.ended = True
        if not outcome.ok and outcome.code == "INVALID_RESPONSE":
            self.logger.warning("{}", outcome.message)
        # Batched with the turn's other messages only while other calls run: a lone call's RESULT
        # leaves at once.
        self.link.post("result", outcome.body(call.scope.call_id), cork=bool(self.calls))

    def _answer_early(self, call: _Call, outcome: Any) -> None:
        """From the thread the handler ran on: sends its final outcome at once. Left to `_cancel_call`
        / `_expire` (which answer CANCELED or TIMEOUT) once the call is canceled or its deadline has
        passed."""
        if not isinstance(outcome, Outcome) or call.canceled:
            return
        end = call.end
        if end is not None and time.monotonic() >= end:
            return
        self._answer(call, outcome)

    def _abandon(self, call: _Call) -> None:
        """The call's handler is no longer waited for (any thread): its flag is set and its work
        cancelled (an async handler's task on the handler loop; a sync one sees the flag)."""
        call.scope.flag.set()
        work = call.work
        if isinstance(work, asyncio.Future):
            if self.handlers.on_thread:
                work.cancel()
            else:
                self.handlers.call_soon(work.cancel)
        elif isinstance(work, concurrent.futures.Future):
            work.cancel()

    # -- deadlines (the I/O loop's timer) -----------------------------------------------------------

    def _watch_deadline(self, call: _Call) -> None:
        """Watches `call.end` (any thread). The I/O loop is woken only when its timer would fire
        after this deadline."""
        end = call.end
        assert end is not None
        with self._timed_lock:
            self._timed[call] = None
            at = self._deadline_at
            wake = at is None or end < at
            if wake:
                self._deadline_at = end
        if wake:
            self._on_io(self._arm_deadlines)

    def _unwatch_deadline(self, call: _Call) -> None:
        if call.end is not None:
            with self._timed_lock:
                self._timed.pop(call, None)
        # The timer is left as it is: when it fires it finds nothing due and moves on.

    def _arm_deadlines(self) -> None:  # on the I/O loop
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._timed_lock:
            at = min((c.end for c in self._timed if c.end is not None), default=None)
            self._deadline_at = at
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if at is not None:
            self._deadline_timer = loop.call_at(at, self._check_deadlines)

    def _check_deadlines(self) -> None:  # on the I/O loop
        self._deadline_timer = None
        now = time.monotonic()
        with self._timed_lock:
            due = [c for c in self._timed if c.end is not None and c.end <= now]
            for call in due:
                self._timed.pop(call, None)
        for call in due:
            try:
                self._expire(call)
            except Exception as exc:
                self.logger.opt(exception=exc).error("call {}: handling its deadline failed", call.scope.call_id)
        self._arm_deadlines()

    def _log_failure(self, entry: RuntimeEntry, exc: BaseException) -> None:
        # The traceback starts at the plugin's code: the runtime's own frames say nothing useful.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _RUNTIME_DIR:
            tb = tb.tb_next
        self.logger.opt(exception=exc.with_traceback(tb)).error("{} raised {}: {}", entry.what, type(exc).__name__, exc)

    async def _async_call(self, entry: RuntimeEntry, kwargs: Optional[dict], label: str, run_id: Optional[str], call: _Call, awaitable: Any = None) -> Any:
        # Runs on the handler loop, in its own task (and so its own copy of the context), and
        # finishes the call as it ends: no done callback, no extra turn of the loop. A task
        # canceled before its first step never runs this; whoever canceled it has answered.
        scope.enter(label, run_id, call.scope)
        try:
            value = await (awaitable if awaitable is not None else entry.handler(**(kwargs or {})))
        except asyncio.CancelledError:
            self._finish_call(call, Outcome.failure("CANCELED", "canceled"))
            raise
        except Exception as exc:
            self._log_failure(entry, exc)
            outcome = self._failure(entry, exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from plugin code: answered, then raised on
            self._log_failure(entry, exc)
            self._finish_call(call, self._failure(entry, exc))
            raise
        else:
            outcome = convert_return(entry.id, value, raw_envelopes=call.scope.caller is not None)
            self._persist(entry, outcome)
        self._finish_call(call, outcome)
        return outcome

    def _thread_call(self, entry: RuntimeEntry, kwargs: dict, label: Optional[str], run_id: Optional[str], call: _Call) -> Any:
        with self._busy_thread():
            try:
                value = scope.run_scoped(entry.handler, kwargs, label=label, run_id=run_id, call=call.scope)
            except Exception as exc:
                self._log_failure(entry, exc)
                outcome = self._failure(entry, exc)
            else:
                if inspect.isawaitable(value):
                    return _Awaitable(value)
                outcome = convert_return(entry.id, value, raw_envelopes=call.scope.caller is not None)
                self._persist(entry, outcome)
            self._answer_early(call, outcome)
            return outcome

    def _failure(self, entry: RuntimeEntry, exc: BaseException) -> Outcome:
        """A handler's exception as the call's answer (the reference's execution-failed error)."""
        return execution_failure(exc, self.env.plugin_id, entry.id, entry.meta.event_type)

    def _persist(self, entry: RuntimeEntry, outcome: Outcome) -> None:
        """After a successful entry: saves the `__freezable__` attributes when the entry's
        `persist` flag and the plugin's persist mode say so. A failed save is logged; the call's
        answer stands."""
        state = self.state
        if state is None or not outcome.ok or not state.should_save(getattr(entry.handler, PERSIST_ATTR, None)):
            return
        try:
            state.save(self.instance, reason="auto")
        except Exception as exc:
            self.logger.warning("state not saved after {}: {}: {}", entry.what, type(exc).__name__, exc)

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
        if self.construct is not None:
            assert self.loop is not None
            try:
                await self.loop.run_in_executor(self.sync_pool, self.construct)
            except Exception:
                self.logger.exception("the plugin class could not be constructed")
                self._finish(1)
                return
        hook = self.tables.lifecycle.get("startup")
        if hook is not None:
            await self._run_hook("lifecycle.startup", hook)
        # A reload is a fresh process: after its startup, the plugin learns why it was started.
        hook = self.tables.lifecycle.get("reload") if self.env.reloaded else None
        if hook is not None and not self.stopping:
            await self._run_hook("lifecycle.reload", hook)
        hook = self.tables.lifecycle.get("unfreeze") if self.restored else None
        if hook is not None and not self.stopping:
            await self._run_hook("lifecycle.unfreeze", hook)
        if self.stopping:
            return
        self.logger.info("startup finished; serving (queued calls: {})", len(self.queued))
        self._start_timers()
        self._start_message_dispatch()
        with self._gate:  # the queued TRIGGERs start before any that arrives from now on
            if self.stopping:
                return
            self.started = True
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
        with self._gate:
            if self.stopping:
                return
            self.stopping = True
            queued, self.queued = self.queued, []
        self.logger.info("{} received; shutting down (grace {:.1f}s)", reason, grace_s)
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
            self._abandon(call)
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
