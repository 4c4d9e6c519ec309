"""The link to the supervisor: one ZeroMQ DEALER socket, the signed session over it, an outbox and
the open requests.

Receiving: one event loop at a time reads the socket (its selector watches the socket's `ZMQ_FD`
through `loop.add_reader`; a plain ZeroMQ socket, not a `zmq.asyncio` one), and every readable
event drains what has arrived, up to `DRAIN_BATCH` frames per turn of that loop, handing each
verified message to the receiver on that loop's thread. The runner's I/O loop reads during the
handshake; then `serve_on` hands reading to the handler loop (its *home*), where the messages of the
hot path (TRIGGERs of async entries, RESPONSEs to async requests) are handled without any thread
hop. When the handler loop is stuck in plugin code, the I/O loop takes over (`check_reader`, from its
stand-by check) so that CANCELs, STOP, sync entries and responses to sync requests keep flowing; the
handler loop takes reading back as soon as it runs again. Messages are delivered one at a time
(under `_rx`), in the order they arrived, whichever loop reads.

Everyone (the I/O loop, handler threads, the handler loop, timers, the context) sends with
`post(...)`: the message is sealed and handed to the socket at once (`NOBLOCK`) by the posting
thread, under one lock, so messages leave in the order they were posted (a STATUS a handler
reported before returning goes out before its RESULT) and no thread hop is needed. Only when the
socket refuses (`EAGAIN`, its high-water mark) do messages wait in the outbox, which the I/O loop
sends as soon as the socket takes them again.

Batching (when neko granted the `batch` feature in WELCOME): the RESULTs and awaited REQUESTs that
code on the reading loop posts while others are open are held until the end of that loop's turn
(`cork`, at most CORK_MAX) and leave together as one `batch` frame; under load, a turn answers many
calls, and one frame, one MAC and one ZeroMQ message then serve them all. Their posters yield right
after posting them; should another callback of that turn block the loop, the I/O loop's stand-by
check sends them. Any other post first sends what is held, so messages still leave in the order
they were posted. Received batches are delivered message by message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import threading
import weakref
from collections import deque
from typing import Any, Callable, Optional

import zmq

from ..sdk.logger import PluginLogger
from . import scope
from .handler_loop import Mailbox
from .protocol import P2S, Envelope, FrameError, Session

#: How long close() lets queued messages leave the socket.
CLOSE_LINGER_MS = 1000
#: How long close() waits for another loop to stop watching the socket.
CLOSE_UNWATCH_S = 0.2
#: Frames handled per turn of the I/O loop before it lets other callbacks run.
DRAIN_BATCH = 64
#: While the socket refuses sends (EAGAIN), the outbox is retried at least this often.
RETRY_S = 0.01
#: Most messages held for one batch; one more sends them at once.
CORK_MAX = 16

_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

# The socket's own methods, without pyzmq's Python layer over them (option enums, routing ids,
# str checks): a few microseconds per message, which the hot path sends and receives many of.
try:
    from zmq.backend import Socket as _BackendSocket

    _zget: Callable[[Any, int], Any] = _BackendSocket.get
    _zsend: Callable[..., Any] = _BackendSocket.send
    _zrecv: Callable[..., Any] = _BackendSocket.recv
except Exception:  # pragma: no cover - another backend
    _zget, _zsend, _zrecv = zmq.Socket.getsockopt, zmq.Socket.send, zmq.Socket.recv


def _recv_message(sock: zmq.Socket) -> Optional[list]:
    """The next message's frames, or None when none is waiting (never blocks). Reading EVENTS
    processes the socket's pending commands, which re-arms its edge-triggered FD, and costs less
    than the EAGAIN exception a receive would raise at the end of every drain; frames are taken
    without a copy, which also tells whether more parts follow, without asking the socket (RCVMORE)
    for each."""
    if not _zget(sock, _EVENTS) & _POLLIN:
        return None
    frame = _zrecv(sock, _NOBLOCK, False)  # zmq.Again here is handled by the drain
    frames = [frame.bytes]
    while frame.more:
        frame = _zrecv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
    return frames


class Link:
    def __init__(self, endpoint: str, key: bytes, max_frame_bytes: int, logger: PluginLogger):
        self.endpoint = endpoint
        self.max_frame_bytes = max_frame_bytes
        self.session = Session(key, P2S, max_frame_bytes)
        self.logger = logger
        self.dropped = 0
        self._zctx: Optional[zmq.Context] = None
        self._sock: Optional[zmq.Socket] = None
        self._fd: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._lock = threading.Lock()
        self._early: list[tuple[str, dict]] = []
        #: Open requests: request id → what delivers the RESPONSE body to whoever waits for it.
        self._pending: dict[str, Callable[[dict], None]] = {}
        self._mailboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox]" = weakref.WeakKeyDictionary()
        self._state = "new"  # new → running (after WELCOME) → closed
        #: Answers requests made before the link runs (e.g. config reads in a plugin's __init__).
        self.local_answer: Optional[Callable[[str, dict], Any]] = None
        #: The first op asked before the link runs that only neko can answer (the runner then
        #: constructs the plugin again once connected, should its `__init__` fail).
        self.needed_before_connect: Optional[str] = None
        # Receiving: verified envelopes wait in `_inbox` for `recv()`, unless a receiver takes them.
        self._inbox: deque[Envelope] = deque()
        self._recv_waiter: Optional[asyncio.Future] = None
        self._receiver: Optional[Callable[[Envelope], None]] = None
        self._on_failure: Optional[Callable[[BaseException], None]] = None
        self._failure: Optional[BaseException] = None
        #: The loop that reads the socket now (`_owner`), the one that reads it normally (`_home`:
        #: the I/O loop until `serve_on`), the loops whose selectors watch the socket's FD (each loop
        #: adds and removes only itself), and the drains scheduled per loop.
        self._owner: Optional[asyncio.AbstractEventLoop] = None
        self._home: Optional[asyncio.AbstractEventLoop] = None
        self._threads: dict[asyncio.AbstractEventLoop, int] = {}
        self._watching: set[asyncio.AbstractEventLoop] = set()
        self._drains: dict[asyncio.AbstractEventLoop, bool] = {}
        #: Held while a frame is received and delivered, and to change `_owner`: messages reach the
        #: receiver one at a time and in order, whichever loop reads.
        self._rx = threading.Lock()
        # Sending: frames the socket refused (EAGAIN), in order. `_io` guards the socket, the
        # session's sending side and this outbox: whichever thread posts a message sends it.
        self._io = threading.Lock()
        self._outbox: deque[list[bytes]] = deque()
        #: Messages held for the next batch (under `_io`), and whether neko granted batches.
        self._cork: list[tuple[str, dict]] = []
        self.batching = False
        self._retry: Optional[asyncio.TimerHandle] = None
        self._flushed: Optional[asyncio.Event] = None
        # Request ids: unique within the launch (a per-process prefix and a counter).
        self._request_prefix = f"{os.getpid():x}-{os.urandom(4).hex()}-"
        self._request_numbers = itertools.count(1)

    # -- socket ---------------------------------------------------------------------------------

    def connect(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._threads[loop] = self._loop_thread
        self._zctx = zmq.Context()
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        sock.connect(self.endpoint)
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._owner = self._home = loop
        self._watch(loop)

    async def send_now(self, kind: str, body: dict) -> None:
        """Seals and sends at once (handshake only; afterwards everything goes through `post`)."""
        assert self._sock is not None
        self._send(kind, body)
        await self.flush(None)

    async def recv(self) -> Envelope:
        """The next message that passes every check; refused frames are logged and skipped."""
        assert self._sock is not None
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            assert self._loop is not None
            waiter = self._loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                if self._recv_waiter is waiter:
                    self._recv_waiter = None
        return self._inbox.popleft()

    def set_receiver(self, receiver: Optional[Callable[[Envelope], None]], on_failure: Optional[Callable[[BaseException], None]] = None) -> None:
        """From now on every verified message goes to `receiver(envelope)`, on the thread of the loop
        that reads the socket, as soon as it arrives (messages already waiting for `recv()` first).
        When the receiver raises, or receiving fails, `on_failure(exc)` is called once (on that
        thread) and messages are no longer delivered. `None` goes back to `recv()`."""
        with self._rx:
            self._receiver = receiver
            self._on_failure = on_failure
        if receiver is not None and (self._inbox or self._failure is not None):
            self._nudge_reader()

    # -- which loop reads -------------------------------------------------------------------------

    def serve_on(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        """Hands reading to `loop` (running in thread `thread_id`), from now on the link's home: it
        reads whenever it is free to. Called on the I/O loop, after `set_receiver`."""
        self._threads[loop] = thread_id
        self._home = loop
        try:
            loop.call_soon_threadsafe(self._claim, loop)
        except RuntimeError:  # that loop is closed: the I/O loop keeps reading
            self._home = self._loop

    def check_reader(self, home_stalled: bool) -> None:
        """On the I/O loop (its stand-by check): takes reading over while the home loop is stalled
        (stuck in plugin code), and hands it back once that loop runs again."""
        io, home = self._loop, self._home
        if io is None or home is None or home is io or self._sock is None or self._failure is not None:
            return
        if home_stalled and self._cork:  # held for a turn that is not ending: send them now
            self._flush_cork()
        if home_stalled:
            if self._owner is not io:
                with self._rx:
                    self._owner = io
                self._watch(io)
                self._schedule_drain(io)
        elif self._owner is io:
            with self._rx:
                self._owner = home
            self._unwatch(io)
            try:
                home.call_soon_threadsafe(self._schedule_drain, home)
            except RuntimeError:  # closed meanwhile: read here again
                with self._rx:
                    self._owner = io
                self._watch(io)

    @property
    def reading_loop(self) -> Optional[asyncio.AbstractEventLoop]:
        return self._owner

    def _claim(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        if self._sock is None or self._failure is not None:
            return
        with self._rx:
            self._owner = loop
        self._watch(loop)
        self._drain(loop)
        io = self._loop
        if io is not None and io is not loop:
            try:
                io.call_soon_threadsafe(self._unwatch_if_idle, io)
            except RuntimeError:
                pass

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        if loop not in self._watching and self._fd is not None:
            loop.add_reader(self._fd, self._on_readable, loop)
            self._watching.add(loop)

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        if loop in self._watching:
            self._watching.discard(loop)
            if self._fd is not None:
                try:
                    loop.remove_reader(self._fd)
                except Exception:
                    pass

    def _unwatch_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        if self._owner is not loop:
            self._unwatch(loop)

    def _on_readable(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        # Reset here, not only in _drain: a drain scheduled while this loop read must not leave
        # the flag set once another loop reads, or later takeovers would never be scheduled.
        self._drains[loop] = False
        if self._owner is not loop:
            if self._owner is None:  # closed: nobody reads any more
                return
            if loop is not self._home:
                self._unwatch(loop)  # not the reader (any more): stop watching
                self._nudge_reader()  # a wakeup that may be meant for the reader: pass it on
                return
            with self._rx:  # the home loop runs again: it reads from now on
                if self._owner is None:
                    return
                self._owner = loop
        self._drain(loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        self._drains[loop] = False
        sock = self._sock
        if sock is None or self._failure is not None:
            return
        rx, io = self._rx, self._io
        handled = 0
        try:
            while True:
                with rx:
                    if self._owner is not loop:
                        break
                    receiver = self._receiver
                    if receiver is not None and self._inbox:
                        envelope = self._inbox.popleft()
                    else:
                        with io:
                            sock = self._sock  # None once closed
                            frames = _recv_message(sock) if sock is not None else None
                        if frames is None:
                            break
                        try:
                            envelope = self.session.open(frames)
                        except FrameError as exc:
                            self.dropped += 1
                            if self.dropped <= 10 or self.dropped % 1000 == 0:
                                self.logger.warning("dropped a frame from the supervisor ({} so far): {}", self.dropped, exc)
                            continue
                        if envelope.kind == "batch":  # its messages are delivered from the inbox, in order
                            self._inbox.extend(envelope.body["messages"])
                            if receiver is None:
                                self._wake_recv()
                            continue
                        if receiver is None:
                            self._inbox.append(envelope)
                            self._wake_recv()
                            handled += 1
                            continue
                    receiver(envelope)
                handled += 1
                if handled >= DRAIN_BATCH:  # let the loop's other callbacks run; go on next turn
                    self._schedule_drain(loop)
                    break
            if self._outbox:
                if loop is self._loop:
                    self._send_outbox()
                else:
                    self._nudge_io(True, False)
        except zmq.Again:  # EVENTS said POLLIN, and yet: look again shortly
            loop.call_later(RETRY_S, self._schedule_drain, loop)
        except Exception as exc:
            self._fail(exc)

    def _wake_recv(self) -> None:
        if threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self._wake_recv)  # type: ignore[union-attr]
            except RuntimeError:
                pass
            return
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        with self._rx:
            if self._failure is not None:
                return
            self._failure = exc
            on_failure, self._receiver, self._on_failure = self._on_failure, None, None
        self._fail_recv(exc)
        if on_failure is not None:
            on_failure(exc)

    def _fail_recv(self, exc: BaseException) -> None:
        if threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self._fail_recv, exc)  # type: ignore[union-attr]
            except RuntimeError:
                pass
            return
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _schedule_drain(self, loop: asyncio.AbstractEventLoop) -> None:  # on `loop`
        if not self._drains.get(loop):
            self._drains[loop] = True
            loop.call_soon(self._on_readable, loop)

    def _nudge_reader(self) -> None:
        """Makes the reading loop look at the socket (from any thread)."""
        loop = self._owner
        if loop is None:
            return
        if self._threads.get(loop) == threading.get_ident():
            self._schedule_drain(loop)
            return
        try:
            loop.call_soon_threadsafe(self._schedule_drain, loop)
        except RuntimeError:  # that loop is closed
            pass

    # -- outbox -----------------------------------------------------------------------------------

    def start(self, batching: bool = False) -> None:
        """After WELCOME: sends what was posted before; `post` sends from now on. `batching`: neko
        granted the `batch` feature."""
        assert self._loop is not None
        self.batching = batching
        with self._lock:
            self._state = "running"
            early, self._early = self._early, []
        for kind, body in early:
            self._send(kind, body)

    def post(self, kind: str, body: dict, cork: bool = False) -> bool:
        """Sends a message to the supervisor (thread-safe). False once the link is closed. `cork`:
        the poster yields to its loop right after (a RESULT, an awaited REQUEST), so the message may
        wait for the end of the loop's turn to leave in a batch with others."""
        with self._lock:
            if self._state == "closed":
                return False
            if self._state == "new":
                self._early.append((kind, body))
                return True
        self._send(kind, body, cork)
        return True

    def _send(self, kind: str, body: dict, cork: bool = False) -> None:
        """Seals and sends one message at once, from whichever thread posts it (under the socket
        lock, so messages leave in the order they were posted), or queues it behind those the
        socket has not taken yet; or, corked on the reading loop, holds it for the turn's batch.
        Never raises: a message that cannot be sent is logged and dropped."""
        reader = self._owner
        on_reader = reader is not None and self._threads.get(reader) == threading.get_ident()
        try:
            with self._io:
                if self._sock is None:  # closed
                    return
                if cork and on_reader and self.batching:
                    self._cork.append((kind, body))
                    if len(self._cork) == 1:
                        reader.call_soon(self._flush_cork)  # type: ignore[union-attr]
                    if len(self._cork) < CORK_MAX:
                        return
                    frames = self._uncork()
                else:
                    frames = self._uncork()
                    sealed = self._seal(kind, body)
                    if sealed is not None:
                        frames.append(sealed)
                retry, readable = self._transmit(frames, on_reader)
        except Exception as exc:  # never let one bad message stop the others
            self.logger.warning("could not send a {} message: {}: {}", kind, type(exc).__name__, exc)
            return
        self._after_send(retry, readable, on_reader, reader)

    def _flush_cork(self) -> None:
        """Sends the messages held for a batch (any thread)."""
        reader = self._owner
        on_reader = reader is not None and self._threads.get(reader) == threading.get_ident()
        try:
            with self._io:
                if self._sock is None or not self._cork:
                    return
                retry, readable = self._transmit(self._uncork(), on_reader)
        except Exception as exc:
            self.logger.warning("could not send a batch: {}: {}", type(exc).__name__, exc)
            return
        self._after_send(retry, readable, on_reader, reader)

    def _uncork(self) -> list:  # under `_io`
        """The held messages, sealed: one batch frame when they fit in one, else one frame each."""
        held = self._cork
        if not held:
            return []
        self._cork = []
        if len(held) > 1:
            try:
                frames = self.session.seal_batch(held)
            except FrameError:  # one of them cannot be encoded: each is handled on its own below
                frames = None
            if frames is not None and len(frames[1]) <= self.max_frame_bytes:
                return [frames]
        return [sealed for sealed in (self._seal(kind, body) for kind, body in held) if sealed is not None]

    def _transmit(self, messages: list, on_reader: bool) -> tuple[bool, bool]:  # under `_io`
        """Hands sealed messages to the socket, in order, or queues them behind the outbox.
        Returns (the outbox needs a retry, the reader must look at the socket)."""
        sock, outbox = self._sock, self._outbox
        retry = sent = False
        for frames in messages:
            if outbox:
                outbox.append(frames)
                retry = True
                continue
            try:
                _zsend(sock, frames[0], _NOBLOCK | _SNDMORE)
                _zsend(sock, frames[1], _NOBLOCK)  # a multipart message is taken whole once its first part is
                sent = True
            except zmq.Again:
                outbox.append(frames)
                retry = True
        if not sent:
            return retry, False
        # The ZMQ FD is edge-triggered and a send may consume its edge: if messages are waiting,
        # they must be read without waiting for an event. The reading loop itself looks once after
        # this turn, however many messages it sends.
        return retry, on_reader or bool(_zget(sock, _EVENTS) & _POLLIN)

    def _after_send(self, retry: bool, readable: bool, on_reader: bool, reader: Optional[asyncio.AbstractEventLoop]) -> None:
        if readable:
            if on_reader:
                self._schedule_drain(reader)  # type: ignore[arg-type]
            else:
                self._nudge_reader()
        if retry:
            self._nudge_io(True, False)

    def _nudge_io(self, retry: bool, readable: bool) -> None:
        if threading.get_ident() == self._loop_thread:
            self._nudged(retry, readable)
        else:
            try:
                self._loop.call_soon_threadsafe(self._nudged, retry, readable)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed
                pass

    def _nudged(self, retry: bool, readable: bool) -> None:  # on the I/O loop
        if retry:
            self._arm_retry()
        if readable:
            self._nudge_reader()

    def _seal(self, kind: str, body: dict) -> Optional[list[bytes]]:
        try:
            frames = self.session.seal(kind, body)
            size = len(frames[1])
            problem = None if size <= self.max_frame_bytes else (
                f"of {size} bytes exceeds the frame limit of {self.max_frame_bytes} bytes"
            )
        except FrameError as exc:
            frames, problem = None, f"could not be encoded ({exc.detail})"
        if problem is None:
            return frames
        if kind != "result":
            self.logger.warning("{} {}; not sent", kind, problem)
            return None
        # The caller learns why instead of waiting for its deadline.
        self.logger.warning("call {}: result {}; sending INVALID_RESPONSE instead", body.get("call_id"), problem)
        return self.session.seal(
            "result",
            {
                "call_id": body.get("call_id", ""),
                "ok": False,
                "data": None,
                "error": {"code": "INVALID_RESPONSE", "message": f"result {problem}"},
            },
        )

    def _send_outbox(self) -> None:  # on the I/O loop
        readable = False
        with self._io:
            outbox, sock = self._outbox, self._sock
            while outbox and sock is not None:
                try:
                    _zsend(sock, outbox[0][0], _NOBLOCK | _SNDMORE)
                    _zsend(sock, outbox[0][1], _NOBLOCK)
                except zmq.Again:
                    break
                except Exception as exc:
                    self.logger.warning("could not send a message: {}: {}", type(exc).__name__, exc)
                outbox.popleft()
                readable = True
            if readable and sock is not None:
                readable = bool(_zget(sock, _EVENTS) & _POLLIN)
            pending = bool(outbox) and sock is not None
        if readable:
            self._nudge_reader()
        if pending:
            self._arm_retry()
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._flushed is not None:
            self._flushed.set()

    def _arm_retry(self) -> None:
        # The socket's FD also fires when it can send again (handled in `_on_readable`); the timer
        # is a safety net.
        if self._retry is None and self._loop is not None:
            self._retry = self._loop.call_later(RETRY_S, self._retry_outbox)

    def _retry_outbox(self) -> None:
        self._retry = None
        if self._outbox:
            self._send_outbox()

    async def flush(self, timeout: Optional[float]) -> None:
        """Waits (at most `timeout` s) until everything posted so far has been handed to the socket."""
        self._flush_cork()
        if not self._outbox:
            return
        if self._flushed is None:
            self._flushed = asyncio.Event()
        try:
            await asyncio.wait_for(self._wait_flushed(), timeout)
        except TimeoutError:
            self.logger.warning("could not send every queued message before exiting")

    async def _wait_flushed(self) -> None:
        assert self._flushed is not None
        while self._outbox:
            self._flushed.clear()
            self._send_outbox()
            if not self._outbox:
                return
            await self._flushed.wait()

    # -- requests ---------------------------------------------------------------------------------

    def start_request(self, op: str, args: dict) -> tuple[str, concurrent.futures.Future]:
        """Sends a REQUEST. Called in the requesting code's own context: when that code runs for a
        call (an entry or custom-event handler, sync or async, or what it started with a copy of its
        context), the REQUEST carries that call's `call_id` (PROTOCOL.md §6, §9b)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = self._start(op, args, lambda body: _set_concurrent(future, body))
        return request_id, future

    def start_request_async(self, op: str, args: dict) -> tuple[str, asyncio.Future]:
        """`start_request` for code running on an event loop (the handler loop): the RESPONSE body
        arrives in a future of that loop: set directly when that loop reads the link (the usual
        case), else handed over with one wakeup for however many responses arrive meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def resolve(body: dict) -> None:
            # On the loop that reads the link: usually this very loop (the handler loop), or an
            # answer made locally before the link runs.
            if asyncio._get_running_loop() is loop:
                _set_async(future, body)
                return
            try:
                self._mailbox(loop).put(_set_async, future, body)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

        return self._start(op, args, resolve, cork=True), future

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        with self._lock:
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = Mailbox(loop)
            return mailbox

    def _start(self, op: str, args: dict, resolve: Callable[[dict], None], cork: bool = False) -> str:
        request_id = f"{self._request_prefix}{next(self._request_numbers)}"
        call_id = scope.current_call_id()
        with self._lock:
            state = self._state
            if state == "running":
                self._pending[request_id] = resolve
                # Batched with the turn's other messages only while other requests are open: a
                # lone request leaves at once.
                cork = cork and len(self._pending) > 1
        if state == "running":
            body = {"request_id": request_id, "op": op, "args": args}
            if call_id:
                body["call_id"] = call_id
            self.post("request", body, cork)
            return request_id
        if state == "new" and self.local_answer is not None:
            try:
                resolve({"request_id": request_id, "ok": True, "result": self.local_answer(op, args), "error": None})
            except LookupError:
                self.needed_before_connect = self.needed_before_connect or op
                raise RuntimeError(
                    f"'{op}' is not available before the plugin is connected to neko; "
                    f"call it from a @lifecycle(id='startup') handler or an entry"
                ) from None
            except Exception as exc:
                resolve({"request_id": request_id, "ok": False, "result": None, "error": {"code": "INTERNAL", "message": str(exc)}})
            return request_id
        raise RuntimeError(f"'{op}' cannot be sent: the plugin is {'stopping' if state == 'closed' else 'not connected'}")

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def on_response(self, body: dict) -> None:
        with self._lock:
            resolve = self._pending.pop(body.get("request_id", ""), None)
        if resolve is None:
            self.logger.debug("response for no open request ({}); dropped", body.get("request_id"))
            return
        resolve(body)

    # -- closing ----------------------------------------------------------------------------------

    def mark_closed(self) -> None:
        """No more posts are accepted; open requests fail at once."""
        with self._lock:
            self._state = "closed"
            pending, self._pending = self._pending, {}
        for resolve in pending.values():
            resolve({"ok": False, "result": None, "error": {"code": "NOT_READY", "message": "the plugin is stopping"}})

    async def close(self) -> None:
        self.mark_closed()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        with self._rx:
            self._owner = None  # nobody reads any more
        if self._loop is not None and self._fd is not None:
            self._unwatch(self._loop)
            # Other loops (the handler loop) stop watching the FD on their own thread, before the
            # socket closes; a loop that is stuck is not waited for long.
            waits = []
            for loop in list(self._watching):
                done = self._loop.create_future()

                def unwatched(loop: asyncio.AbstractEventLoop = loop, done: asyncio.Future = done) -> None:
                    self._unwatch(loop)
                    if not self._loop.is_closed():  # type: ignore[union-attr]
                        self._loop.call_soon_threadsafe(_set_async, done, None)  # type: ignore[union-attr]

                try:
                    loop.call_soon_threadsafe(unwatched)
                except RuntimeError:  # that loop is closed
                    self._watching.discard(loop)
                    continue
                waits.append(done)
            if waits:
                await asyncio.wait(waits, timeout=CLOSE_UNWATCH_S)
            self._fd = None
        self._flush_cork()
        with self._io:  # no recv or send of another thread is in progress while it closes
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close(linger=CLOSE_LINGER_MS)
        if self._zctx is not None:
            self._zctx.term()


def _set_concurrent(future: concurrent.futures.Future, body: dict) -> None:
    if not future.done():
        future.set_result(body)


def _set_async(future: asyncio.Future, body: dict) -> None:
    if not future.done():
        future.set_result(body)
