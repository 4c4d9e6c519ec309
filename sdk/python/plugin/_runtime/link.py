"""The link to the supervisor: one ZeroMQ DEALER socket, the signed session over it, an outbox and
the open requests.

Only the runner's I/O loop (the main thread; plugin code runs elsewhere, see `host`) touches the
socket. Everyone else (handler threads, the handler loop, timers, the context) calls `post(...)`,
which hands the message to the I/O loop; one writer task seals and sends in queue order, so a STATUS
a handler reported before returning goes out before its RESULT.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from typing import Any, Callable, Optional

import zmq
import zmq.asyncio

from ..sdk.logger import PluginLogger
from . import scope
from .protocol import P2S, Envelope, FrameError, Session

#: How long close() lets queued messages leave the socket.
CLOSE_LINGER_MS = 1000


class Link:
    def __init__(self, endpoint: str, key: bytes, max_frame_bytes: int, logger: PluginLogger):
        self.endpoint = endpoint
        self.max_frame_bytes = max_frame_bytes
        self.session = Session(key, P2S, max_frame_bytes)
        self.logger = logger
        self.dropped = 0
        self._zctx: Optional[zmq.asyncio.Context] = None
        self._sock: Optional[zmq.asyncio.Socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._outbox: Optional[asyncio.Queue] = None
        self._writer: Optional[asyncio.Task] = None
        self._lock = threading.Lock()
        self._early: list[tuple[str, dict]] = []
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._state = "new"  # new → running (after WELCOME) → closed
        #: Answers requests made before the link runs (e.g. config reads in a plugin's __init__).
        self.local_answer: Optional[Callable[[str, dict], Any]] = None

    # -- socket ---------------------------------------------------------------------------------

    def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._zctx = zmq.asyncio.Context()
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        sock.connect(self.endpoint)
        self._sock = sock

    async def send_now(self, kind: str, body: dict) -> None:
        """Seals and sends at once (handshake only; afterwards everything goes through `post`)."""
        assert self._sock is not None
        await self._sock.send_multipart(self.session.seal(kind, body))

    async def recv(self) -> Envelope:
        """The next message that passes every check; refused frames are logged and skipped."""
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            try:
                return self.session.open(frames)
            except FrameError as exc:
                self.dropped += 1
                if self.dropped <= 10 or self.dropped % 1000 == 0:
                    self.logger.warning("dropped a frame from the supervisor ({} so far): {}", self.dropped, exc)

    # -- outbox -----------------------------------------------------------------------------------

    def start(self) -> None:
        """After WELCOME: starts the writer and sends what was posted before."""
        assert self._loop is not None
        self._outbox = asyncio.Queue()
        with self._lock:
            self._state = "running"
            early, self._early = self._early, []
        for item in early:
            self._outbox.put_nowait(item)
        self._writer = asyncio.ensure_future(self._write_loop())

    def post(self, kind: str, body: dict) -> bool:
        """Queues a message for the supervisor (thread-safe). False once the link is closed."""
        with self._lock:
            if self._state == "closed":
                return False
            if self._state == "new":
                self._early.append((kind, body))
                return True
            loop, outbox = self._loop, self._outbox
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, (kind, body))
        except RuntimeError:  # the loop is closed
            return False
        return True

    async def _write_loop(self) -> None:
        assert self._outbox is not None
        while True:
            kind, body = await self._outbox.get()
            try:
                await self._send(kind, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad message stop the writer
                self.logger.warning("could not send a {} message: {}: {}", kind, type(exc).__name__, exc)
            finally:
                self._outbox.task_done()

    async def _send(self, kind: str, body: dict) -> None:
        assert self._sock is not None
        try:
            frames = self.session.seal(kind, body)
            size = len(frames[1])
            problem = None if size <= self.max_frame_bytes else (
                f"of {size} bytes exceeds the frame limit of {self.max_frame_bytes} bytes"
            )
        except FrameError as exc:
            frames, problem = None, f"could not be encoded ({exc.detail})"
        if problem is not None:
            if kind != "result":
                self.logger.warning("{} {}; not sent", kind, problem)
                return
            # The caller learns why instead of waiting for its deadline.
            self.logger.warning("call {}: result {}; sending INVALID_RESPONSE instead", body.get("call_id"), problem)
            frames = self.session.seal(
                "result",
                {
                    "call_id": body.get("call_id", ""),
                    "ok": False,
                    "data": None,
                    "error": {"code": "INVALID_RESPONSE", "message": f"result {problem}"},
                },
            )
        await self._sock.send_multipart(frames)

    async def flush(self, timeout: float) -> None:
        """Waits (at most `timeout` s) until everything posted so far has been handed to the socket."""
        if self._outbox is None:
            return
        try:
            await asyncio.wait_for(self._outbox.join(), timeout)
        except TimeoutError:
            self.logger.warning("could not send every queued message before exiting")

    # -- requests ---------------------------------------------------------------------------------

    def start_request(self, op: str, args: dict) -> tuple[str, concurrent.futures.Future]:
        """Sends a REQUEST. Called in the requesting code's own context: when that code runs for a
        call (an entry or custom-event handler, sync or async, or what it started with a copy of its
        context), the REQUEST carries that call's `call_id` (PROTOCOL.md §6, §9b)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = uuid.uuid4().hex
        call_id = scope.current_call_id()
        with self._lock:
            state = self._state
            if state == "running":
                self._pending[request_id] = future
        if state == "running":
            body = {"request_id": request_id, "op": op, "args": args}
            if call_id:
                body["call_id"] = call_id
            self.post("request", body)
            return request_id, future
        if state == "new" and self.local_answer is not None:
            try:
                future.set_result({"request_id": request_id, "ok": True, "result": self.local_answer(op, args), "error": None})
            except LookupError:
                raise RuntimeError(
                    f"'{op}' is not available before the plugin is connected to neko; "
                    f"call it from a @lifecycle(id='startup') handler or an entry"
                ) from None
            except Exception as exc:
                future.set_result({"request_id": request_id, "ok": False, "result": None, "error": {"code": "INTERNAL", "message": str(exc)}})
            return request_id, future
        raise RuntimeError(f"'{op}' cannot be sent: the plugin is {'stopping' if state == 'closed' else 'not connected'}")

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def on_response(self, body: dict) -> None:
        with self._lock:
            future = self._pending.pop(body.get("request_id", ""), None)
        if future is None:
            self.logger.debug("response for no open request ({}); dropped", body.get("request_id"))
            return
        if not future.done():
            future.set_result(body)

    # -- closing ----------------------------------------------------------------------------------

    def mark_closed(self) -> None:
        """No more posts are accepted; open requests fail at once."""
        with self._lock:
            self._state = "closed"
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result({"ok": False, "result": None, "error": {"code": "NOT_READY", "message": "the plugin is stopping"}})

    async def close(self) -> None:
        self.mark_closed()
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):
                pass
        if self._sock is not None:
            self._sock.close(linger=CLOSE_LINGER_MS)
        if self._zctx is not None:
            self._zctx.term()
