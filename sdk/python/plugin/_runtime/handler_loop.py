"""The handler loop: the event loop that runs plugin code, in its own thread.

`async def` entries, async lifecycle hooks, async timers and `@message` handlers run here, and this
loop also reads the link to the supervisor while it is free to (see `host`). The runner's I/O loop
(the main thread) runs no plugin code: it sends heartbeats, handles STOP, watches the parent
process and the calls' deadlines, and reads the link itself while this loop is stuck in a callback
(`busy_for`), so a plugin that blocks in an `async def` (a `time.sleep`, a blocking HTTP client)
delays the other async handlers but never the heartbeats, CANCELs or the RESULTs of sync handlers.

`HandlerLoopWatchdog` (run by the I/O loop) pings this loop and warns when it has not answered for
a while, naming what is running on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import selectors
import sys
import sysconfig
import threading
import time
from typing import Any, Awaitable, Callable, Optional

from ..sdk.logger import PluginLogger

#: The handler loop is reported as stalled after this long without answering a ping.
STALL_WARN_S = 5.0
#: While it stays stalled, the warning is repeated this often.
STALL_REPEAT_S = 60.0
#: Threads that `asyncio.to_thread` / `run_in_executor(None, ...)` use from plugin code.
DEFAULT_EXECUTOR_SIZE = 32

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))


def stall_warn_seconds() -> float:
    """`STALL_WARN_S`, or `NEKO_PLUGIN_LOOP_STALL_WARN_MS` when set (used by the tests)."""
    raw = os.environ.get("NEKO_PLUGIN_LOOP_STALL_WARN_MS", "").strip()
    try:
        value = int(raw) / 1000.0 if raw else STALL_WARN_S
    except ValueError:
        value = STALL_WARN_S
    return value if value > 0 else STALL_WARN_S


def name_task(label: str) -> None:
    """Names the current task after what it runs (`plugin_entry.<id>`, ...), for the watchdog."""
    task = asyncio.current_task()
    if task is not None:
        try:
            task.set_name(label)
        except Exception:
            pass


class Mailbox:
    """Callbacks handed to `loop` from other threads, with one wakeup of the loop for however many
    arrive before it runs them (`call_soon_threadsafe` writes to the loop's self-pipe every time,
    a system call that also lets the other thread take the GIL). They run in the order given."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Callable[..., Any], tuple]] = []
        self._scheduled = False

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """RuntimeError when the loop is closed (as `call_soon_threadsafe`)."""
        with self._lock:
            if self.loop.is_closed():
                raise RuntimeError("Event loop is closed")
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler({"message": f"Exception in callback {fn!r}", "exception": exc})


class _TimedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The handler loop's selector; it notes when the loop last left `select()` (None while the loop
    waits in it), so that other threads can tell, without asking the loop, that it is stuck in a
    callback (plugin code that blocks)."""

    busy_since: Optional[float] = None

    def select(self, timeout: Optional[float] = None) -> Any:
        self.busy_since = None
        try:
            return super().select(timeout)
        finally:
            self.busy_since = time.monotonic()


class HandlerLoop:
    """An asyncio loop running in a daemon thread (`neko-handlers`)."""

    def __init__(self, logger: PluginLogger):
        self.logger = logger
        self._selector = _TimedSelector()
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(self._selector)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=DEFAULT_EXECUTOR_SIZE, thread_name_prefix="neko-to-thread")
        self.loop.set_default_executor(self.executor)
        self.loop.set_exception_handler(self._on_loop_error)
        self.thread = threading.Thread(target=self._main, name="neko-handlers", daemon=True)
        self._ready = threading.Event()
        #: Work handed to this loop by `run`, and the answers going back to the caller's loop.
        self._inbox = Mailbox(self.loop)
        self._replies: Optional[Mailbox] = None

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(5.0)

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
            # Stopped: cancel what is left (bounded; a task that blocks here keeps the thread alive,
            # which the runner notices and answers with a hard exit).
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=0.5))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception as exc:  # never let the thread die with a traceback on stderr
            self.logger.opt(exception=exc).error("the handler loop failed: {}: {}", type(exc).__name__, exc)
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
            try:
                loop.close()
            except Exception:
                pass

    def stop(self, timeout: float) -> bool:
        """Stops the loop and waits for its thread; False when it did not end within `timeout`."""
        if not self.thread.is_alive():
            if self.thread.ident is None and not self.loop.is_closed():  # never started
                self.executor.shutdown(wait=False)
                self.loop.close()
            return True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            pass
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def busy_for(self) -> float:
        """Seconds since the loop last left `select()` (0 while it waits there or before it runs):
        how long the callback it is running has been running, when it has not come back since."""
        since = self._selector.busy_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    @property
    def on_thread(self) -> bool:
        """True when called on this loop's thread."""
        return threading.get_ident() == self.thread.ident

    # -- handing work to the loop -------------------------------------------------------------------

    def submit(self, coro: Awaitable[Any]) -> concurrent.futures.Future:
        """Runs `coro` as a task of the handler loop (from any other thread).

        Cancelling the returned future cancels the task with `loop.call_soon_threadsafe(task.cancel)`
        (this is what `run_coroutine_threadsafe`'s chaining does), so it is safe from the I/O loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[Any]) -> asyncio.Future:
        """`submit`, awaitable from the calling thread's running loop (the I/O loop).

        The same contract as `asyncio.wrap_future(self.submit(coro))` (the task runs in a copy of
        the caller's context; cancelling the returned future cancels the task; the task's result,
        exception or cancellation is the future's) with fewer hops: no concurrent future in
        between, and one wakeup of each loop for however many calls start or end meanwhile."""
        caller = asyncio.get_running_loop()
        replies = self._replies
        if replies is None or replies.loop is not caller:
            replies = self._replies = Mailbox(caller)
        outer = caller.create_future()
        context = contextvars.copy_context()
        started: list[asyncio.Task] = []

        def done(task: asyncio.Task) -> None:  # on the handler loop
            if task.cancelled():
                settle = (True, None, None)
            else:
                exc = task.exception()
                settle = (False, exc, None if exc is not None else task.result())
            try:
                replies.put(_settle, outer, *settle)
            except RuntimeError:  # the caller's loop is gone
                pass

        def start() -> None:  # on the handler loop
            task = self.loop.create_task(coro, context=context)  # type: ignore[arg-type]
            started.append(task)
            task.add_done_callback(done)

        def cancel() -> None:  # on the handler loop, after `start` (the mailbox keeps the order)
            if started:
                started[0].cancel()

        def on_outer_done(future: asyncio.Future) -> None:  # on the caller's loop
            if future.cancelled():
                try:
                    self._inbox.put(cancel)
                except RuntimeError:
                    pass

        self._inbox.put(start)
        outer.add_done_callback(on_outer_done)
        return outer

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            return False
        return True

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        message = context.get("message") or "error on the handler loop"
        if exc is not None:
            self.logger.opt(exception=exc).error("{}: {}: {}", message, type(exc).__name__, exc)
        else:
            self.logger.error("{}", message)

    # -- what is running (for the watchdog) -------------------------------------------------------

    def describe_running(self) -> str:
        """What the loop is busy with: the current task's label and where its thread is stuck."""
        label = None
        try:
            task = asyncio.current_task(self.loop)
        except Exception:
            task = None
        if task is not None:
            name = task.get_name()
            label = name if not name.startswith("Task-") else None
        where = self._where()
        parts = []
        if label:
            parts.append(f"running '{label}'")
        else:
            parts.append("running no known handler")
        if where:
            parts.append(f"at {where}")
        return " ".join(parts)

    def _where(self) -> Optional[str]:
        ident = self.thread.ident
        frame = sys._current_frames().get(ident) if ident is not None else None
        if frame is None:
            return None
        # The innermost frame of the plugin's own code (not the standard library, installed
        # packages, asyncio or this runtime); else the innermost frame outside asyncio and the runtime.
        fallback = chosen = None
        while frame is not None and chosen is None:
            filename = os.path.abspath(frame.f_code.co_filename)
            if os.path.dirname(filename) != _RUNTIME_DIR and f"{os.sep}asyncio{os.sep}" not in filename:
                if fallback is None:
                    fallback = frame
                if not _is_library(filename):
                    chosen = frame
            frame = frame.f_back
        chosen = chosen or fallback
        if chosen is None:
            return None
        return f"{chosen.f_code.co_filename}:{chosen.f_lineno} in {chosen.f_code.co_name}"


def _settle(outer: asyncio.Future, cancelled: bool, exc: Optional[BaseException], result: Any) -> None:
    """On the caller's loop: what the handler loop's task ended with → `outer` (unless cancelled)."""
    if outer.done():
        return
    if cancelled:
        outer.cancel()
    elif exc is not None:
        outer.set_exception(exc)
    else:
        outer.set_result(result)


def _library_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.abspath(path) + os.sep)
    return tuple(roots)


_LIBRARY_ROOTS = _library_roots()


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string>
        return True
    parts = filename.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return filename.startswith(_LIBRARY_ROOTS)


class HandlerLoopWatchdog:
    """Pings the handler loop from the I/O loop; warns when it stays unresponsive.

    Every `period` seconds: if no ping is outstanding, one is sent (a callback queued on the handler
    loop that answers back on the I/O loop). When the outstanding ping is older than the threshold,
    a warning names what is running on the handler loop; a second line says when it recovers."""

    def __init__(self, handlers: HandlerLoop, io_loop: asyncio.AbstractEventLoop, logger: PluginLogger, threshold_s: Optional[float] = None):
        self.handlers = handlers
        self.io_loop = io_loop
        self.logger = logger
        self.threshold_s = threshold_s if threshold_s is not None else stall_warn_seconds()
        self.period_s = max(0.05, min(1.0, self.threshold_s / 4))
        self._sent: Optional[float] = None
        self._warned_at: Optional[float] = None
        self.stalls = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self.check()

    def check(self) -> None:
        now = time.monotonic()
        if self._sent is None:
            token = now
            self._sent = token
            if not self.handlers.call_soon(self._pong, token):
                self._sent = None
            return
        stalled = now - self._sent
        if stalled < self.threshold_s:
            return
        if self._warned_at is None or now - self._warned_at >= STALL_REPEAT_S:
            if self._warned_at is None:
                self.stalls += 1
            self._warned_at = now
            self.logger.warning(
                "the handler loop has been unresponsive for {:.1f}s, {}: an async handler is blocking it "
                "(do not block in 'async def'; use 'await asyncio.to_thread(...)' for blocking calls). "
                "Other async handlers wait meanwhile; heartbeats and sync handlers are not affected.",
                stalled,
                self.handlers.describe_running(),
            )

    def _pong(self, token: float) -> None:  # on the handler loop
        try:
            self.io_loop.call_soon_threadsafe(self._answered, token)
        except RuntimeError:  # the I/O loop is gone
            pass

    def _answered(self, token: float) -> None:  # on the I/O loop
        if self._sent != token:
            return
        if self._warned_at is not None:
            self.logger.info("the handler loop is responsive again after {:.1f}s", time.monotonic() - token)
        self._sent = None
        self._warned_at = None


__all__ = ["HandlerLoop", "HandlerLoopWatchdog", "Mailbox", "name_task", "stall_warn_seconds", "STALL_WARN_S"]
