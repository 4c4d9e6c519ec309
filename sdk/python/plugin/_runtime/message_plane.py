"""The plugin's client side of neko's message plane (reference §9): INGEST, RPC and PUB.

- INGEST (PUSH → the plane's PULL): `push_message` payloads as msgpack `delta_batch` frames. Normal
  pushes go out one frame per call on a per-thread PUSH socket; `fast_mode` pushes go through one
  `FastBatcher` thread that flushes every 256 items or 5 ms.
- RPC (DEALER → the plane's ROUTER): `{"v":1,"op","req_id","args","from_plugin"}` requests, the
  request as the only frame, replies matched by `req_id`. One DEALER per calling thread, so calls
  from several threads run side by side and a late reply can only reach the thread that asked.
- PUB (the plane's PUB → a SUB here): `[b"<store>.<topic>", JSON(event)]`; `subscriber()` makes
  the sockets watchers and `@message` dispatch read from.

Everything is lazy: no socket, thread or ZeroMQ context exists until a feature is used. The
endpoints come from the environment neko sets (the reference's names); without them each feature
raises `RuntimeError("message_plane is not available for <feature>")`.

ZeroMQ sockets belong to one thread. A socket made for a thread is used only by that thread, under
its own lock; `close()` closes the sockets it can lock at once (idle or owned by finished threads)
and leaves any that are still in use to the process exit.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import msgpack
import zmq

from ..sdk.errors import RequestError
from . import codec

RPC_ENV = ("NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT", "NEKO_MESSAGE_PLANE_RPC")
PUB_ENV = ("NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT", "NEKO_MESSAGE_PLANE_PUB")
INGEST_ENV = ("NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT", "NEKO_MESSAGE_PLANE_INGEST")

PROTOCOL_VERSION = 1
#: Queued pushes get this long to leave when a PUSH socket closes.
PUSH_LINGER_MS = 500
#: How long `close()` waits for the fast-mode batcher to send what it holds.
CLOSE_FLUSH_S = 2.0
#: Backpressure warnings are logged at most this often.
WARN_INTERVAL_S = 1.0


def _env_first(env: Mapping[str, str], names: tuple[str, ...]) -> Optional[str]:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _env_number(env: Mapping[str, str], name: str, default: float, cast: Callable[[str], Any] = float) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        return default
    return value if value >= 0 else default


@dataclass
class MessagePlaneConfig:
    """Endpoints and limits, from the reference's environment variables."""

    rpc_endpoint: Optional[str] = None
    pub_endpoint: Optional[str] = None
    ingest_endpoint: Optional[str] = None
    #: NEKO_MESSAGE_PLANE_INGEST_SNDTIMEO_MS: how long a push may wait for the socket.
    send_timeout_ms: int = 1000
    #: NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_BATCH_SIZE: fast-mode items per frame.
    batch_size: int = 256
    #: NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS: the longest a fast-mode item waits.
    flush_interval_ms: float = 5.0
    #: NEKO_MESSAGE_PLANE_PUSH_BATCHER_MAX_QUEUE / _REJECT_RATIO: fast mode refuses new items
    #: once the queue holds max_queue × reject_ratio.
    max_queue: int = 100_000
    reject_ratio: float = 0.9
    #: NEKO_MESSAGE_PLANE_PAYLOAD_MAX_BYTES: the plane drops larger payloads; we refuse them first.
    payload_max_bytes: int = 256 * 1024

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "MessagePlaneConfig":
        env = os.environ if environ is None else environ
        cfg = cls(
            rpc_endpoint=_env_first(env, RPC_ENV),
            pub_endpoint=_env_first(env, PUB_ENV),
            ingest_endpoint=_env_first(env, INGEST_ENV),
        )
        cfg.send_timeout_ms = int(_env_number(env, "NEKO_MESSAGE_PLANE_INGEST_SNDTIMEO_MS", cfg.send_timeout_ms, int))
        cfg.batch_size = max(1, int(_env_number(env, "NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_BATCH_SIZE", cfg.batch_size, int)))
        cfg.flush_interval_ms = float(_env_number(env, "NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS", cfg.flush_interval_ms))
        cfg.max_queue = max(1, int(_env_number(env, "NEKO_MESSAGE_PLANE_PUSH_BATCHER_MAX_QUEUE", cfg.max_queue, int)))
        ratio = float(_env_number(env, "NEKO_MESSAGE_PLANE_PUSH_BATCHER_REJECT_RATIO", cfg.reject_ratio))
        cfg.reject_ratio = ratio if 0 < ratio <= 1 else cfg.reject_ratio
        cfg.payload_max_bytes = int(_env_number(env, "NEKO_MESSAGE_PLANE_PAYLOAD_MAX_BYTES", cfg.payload_max_bytes, int)) or cfg.payload_max_bytes
        return cfg


def not_available(feature: str) -> RuntimeError:
    return RuntimeError(f"message_plane is not available for {feature}")


# -- ids ------------------------------------------------------------------------------------------

#: Random bytes for `uuid4_str`, drawn from os.urandom in blocks (one system call per 256 ids
#: instead of one per id), per thread.
_RANDOM_BLOCK = 16 * 256
_random = threading.local()


def uuid4_str() -> str:
    """`str(uuid.uuid4())`, made cheaper: the same 122 random bits from os.urandom, the same
    version and variant bits and the same text form, without a UUID object per id."""
    buf = getattr(_random, "buf", None)
    pos = getattr(_random, "pos", _RANDOM_BLOCK)
    if buf is None or pos >= _RANDOM_BLOCK:
        buf, pos = os.urandom(_RANDOM_BLOCK), 0
        _random.buf = buf
    _random.pos = pos + 16
    h = buf[pos:pos + 16].hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _forget_random() -> None:
    # A forked child must not reuse the bytes its parent will use too.
    _random.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random)


# -- INGEST frames ------------------------------------------------------------------------------

def pack_payload(payload: dict) -> bytes:
    """msgpack of one payload (bytes stay binary). TypeError if it holds something msgpack cannot."""
    return codec.packb(payload)


def _item_prefix(store: str, topic: str) -> bytes:
    """The bytes of `{"store": store, "topic": topic, "payload": ` (the packed payload follows)."""
    return b"".join((b"\x83", msgpack.packb("store"), msgpack.packb(store), msgpack.packb("topic"), msgpack.packb(topic), msgpack.packb("payload")))


MESSAGES_ITEM_PREFIX = _item_prefix("messages", "all")


#: producer → the packed start of its frames, `{"v": 1, "kind": "delta_batch", "from": producer,` (6 keys).
_frame_heads: dict[str, bytes] = {}
_TS_KEY = msgpack.packb("ts")
_BATCH_ID_KEY = msgpack.packb("batch_id")
_ITEMS_KEY = msgpack.packb("items")


def _frame_head(producer: str) -> bytes:
    head = _frame_heads.get(producer)
    if head is None:
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_map_header(6)]
        for key, value in (("v", PROTOCOL_VERSION), ("kind", "delta_batch"), ("from", producer)):
            parts.append(packer.pack(key))
            parts.append(packer.pack(value))
        head = b"".join(parts)
        if len(_frame_heads) < 64:
            _frame_heads[producer] = head
    return head


def delta_batch_frame(producer: str, items: list[bytes]) -> bytes:
    """A `delta_batch` frame around items that are already packed (each a full item map)."""
    packer = codec.packer()
    return b"".join(
        (
            _frame_head(producer),
            _TS_KEY,
            packer.pack(time.time()),
            _BATCH_ID_KEY,
            packer.pack(uuid4_str()),
            _ITEMS_KEY,
            packer.pack_array_header(len(items)),
            *items,
        )
    )


# -- sockets per thread -------------------------------------------------------------------------


class Closed(Exception):
    """The message plane client was closed."""


@dataclass
class _Slot:
    sock: zmq.Socket
    thread: "weakref.ref[threading.Thread]"
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


class _ThreadSockets:
    """One socket per calling thread, made on first use by `factory`."""

    def __init__(self, factory: Callable[[], zmq.Socket]):
        self._factory = factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closed = False

    def slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is not None and not slot.closed:
            return slot
        with self._lock:
            if self._closed:
                raise Closed()
            self._reap()
            slot = _Slot(self._factory(), weakref.ref(threading.current_thread()))
            self._slots.append(slot)
        self._local.slot = slot
        return slot

    def _reap(self) -> None:
        # Sockets of threads that ended: nobody else can be using them.
        kept = []
        for slot in self._slots:
            thread = slot.thread()
            if thread is None or not thread.is_alive():
                self._close_slot(slot, wait=0.0)
            if not slot.closed:
                kept.append(slot)
        self._slots = kept

    @staticmethod
    def _close_slot(slot: _Slot, wait: float) -> bool:
        locked = slot.lock.acquire(timeout=wait) if wait > 0 else slot.lock.acquire(blocking=False)
        if not locked:
            return False
        try:
            if not slot.closed:
                slot.closed = True
                slot.sock.close()
        finally:
            slot.lock.release()
        return True

    def close(self, wait: float = 0.1) -> bool:
        """Closes every socket that is not in use; True when all are closed."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, []
        return all([self._close_slot(slot, wait) for slot in slots])



# -- fast mode ----------------------------------------------------------------------------------


class FastBatcher:
    """The per-context batcher of `push_message(fast_mode=True)`.

    Items (packed) wait in a bounded deque; one daemon thread sends a `delta_batch` when
    `batch_size` items are waiting or the oldest has waited `flush_interval_ms`. New items are
    refused (counted) once the queue holds `max_queue × reject_ratio`.
    """

    def __init__(self, plane: "MessagePlane"):
        self.plane = plane
        cfg = plane.config
        self.batch_size = cfg.batch_size
        self.interval_s = cfg.flush_interval_ms / 1000.0
        self.reject_at = max(1, int(cfg.max_queue * cfg.reject_ratio))
        self._queue: deque[bytes] = deque()
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._first_at = 0.0
        self._stopping = False
        self._deadline: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name=f"neko-mp-batcher-{plane.plugin_id}", daemon=True)
        self.accepted = 0
        self.rejected = 0
        self.sent = 0
        self.batches = 0
        self.dropped = 0
        self.send_timeouts = 0
        self._thread.start()

    def offer(self, item: bytes) -> bool:
        """Queues one packed item; False when it was refused (backpressure or stopping)."""
        with self._mutex:  # the condition's own lock (entering the Condition costs a Python call)
            queue = self._queue
            size = len(queue)
            if self._stopping or size >= self.reject_at:
                self.rejected += 1
                return False
            queue.append(item)
            self.accepted += 1
            if size == 0:
                self._first_at = time.monotonic()
                self._cond.notify()
            elif size + 1 == self.batch_size:
                self._cond.notify()
            # Several batches behind: a producer in a tight loop holds the GIL for whole switch
            # intervals, so the sender gets one batch out per interval and the queue overflows.
            # Letting go of the GIL once a batch lets the sender keep up.
            behind = size + 1 >= 2 * self.batch_size and (size + 1) % self.batch_size == 0
        if behind:
            time.sleep(0)
        return True

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def _take(self) -> Optional[list[bytes]]:
        """Waits for the next batch; None when stopped and empty."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                if len(self._queue) >= self.batch_size or self._stopping:
                    break
                remaining = self._first_at + self.interval_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            # Items left behind are at least as old as this batch's deadline: they go next round.
            return batch

    def _run(self) -> None:
        sock: Optional[zmq.Socket] = None
        try:
            sock = self.plane._push_socket(closing_ok=True)
            while True:
                batch = self._take()
                if batch is None:
                    return
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    self.dropped += len(batch)  # closing, and out of time
                    continue
                self._send(sock, batch)
        except Exception as exc:  # never leave the queue growing without a sender
            self.plane.logger.opt(exception=exc).error("message_plane batcher stopped: {}: {}", type(exc).__name__, exc)
            with self._cond:
                self._stopping = True
                self.dropped += len(self._queue)
                self._queue.clear()
        finally:
            if sock is not None:
                sock.close(linger=PUSH_LINGER_MS)

    def _send(self, sock: zmq.Socket, batch: list[bytes]) -> None:
        frame = delta_batch_frame(self.plane.plugin_id, batch)
        while True:
            try:
                sock.send(frame)
                self.sent += len(batch)
                self.batches += 1
                return
            except zmq.Again:
                self.send_timeouts += 1
                self.plane._warn("send", "message_plane ingest is not accepting pushes (send timed out); retrying")
                # Keep the order and retry, unless we are closing and out of time.
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    self.dropped += len(batch)
                    return
                if self.plane.config.send_timeout_ms <= 0:
                    time.sleep(0.01)

    def stop(self, timeout: float = CLOSE_FLUSH_S) -> None:
        """Sends what is queued (within `timeout`) and ends the thread."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1.0)
        with self._cond:
            if self._queue:
                self.dropped += len(self._queue)
                self._queue.clear()

    def stats(self) -> dict:
        with self._cond:
            return {
                "queued": len(self._queue),
                "max_queue": self.plane.config.max_queue,
                "reject_at": self.reject_at,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "sent": self.sent,
                "batches": self.batches,
                "dropped": self.dropped,
                "send_timeouts": self.send_timeouts,
            }


# -- the client ---------------------------------------------------------------------------------


class MessagePlane:
    """All message-plane traffic of one plugin context."""

    def __init__(self, plugin_id: str, logger: Any, config: Optional[MessagePlaneConfig] = None):
        self.plugin_id = plugin_id
        self.logger = logger
        self.config = config if config is not None else MessagePlaneConfig.from_environ()
        self._lock = threading.Lock()
        self._zctx: Optional[zmq.Context] = None
        self._closed = False
        self._rpc_sockets: Optional[_ThreadSockets] = None
        self._push_sockets: Optional[_ThreadSockets] = None
        self._batcher: Optional[FastBatcher] = None
        self._batcher_final: Optional[dict] = None
        self._req_counter = itertools.count(1)
        self._warned: dict[str, float] = {}
        self._pending_rejects = 0
        self.normal_sent = 0
        self.normal_timeouts = 0
        self.normal_failed = 0
        self.too_large = 0

    # -- shared ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _context(self, closing_ok: bool = False) -> zmq.Context:
        with self._lock:
            if self._closed and not closing_ok:
                raise Closed()
            if self._zctx is None:
                self._zctx = zmq.Context()
            return self._zctx

    def _warn(self, key: str, message: str, *args: Any) -> bool:
        """Logs `message` unless the same kind of warning was logged less than a second ago."""
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(key)
            if last is not None and now - last < WARN_INTERVAL_S:
                return False
            self._warned[key] = now
        self.logger.warning(message, *args)
        return True

    def require(self, what: str, feature: str, *, open_only: bool = True) -> str:
        """The endpoint for `what` ("rpc" | "pub" | "ingest"); RuntimeError naming `feature` when
        neko gave none (or, with `open_only`, when this client is closed)."""
        endpoint = {"rpc": self.config.rpc_endpoint, "pub": self.config.pub_endpoint, "ingest": self.config.ingest_endpoint}[what]
        if not endpoint:
            raise not_available(feature)
        if open_only and self._closed:
            raise RuntimeError(f"message_plane client is closed ({feature})")
        return endpoint

    # -- INGEST ------------------------------------------------------------------------------------

    def _push_socket(self, closing_ok: bool = False) -> zmq.Socket:
        # closing_ok: the batcher may still be starting while close() waits for it to flush.
        sock = self._context(closing_ok).socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, PUSH_LINGER_MS)
        sock.setsockopt(zmq.SNDTIMEO, int(self.config.send_timeout_ms))
        sock.connect(self.config.ingest_endpoint or "")
        return sock

    def _item(self, payload: dict) -> Optional[bytes]:
        packed = pack_payload(payload)
        if len(packed) > self.config.payload_max_bytes:
            return None
        return MESSAGES_ITEM_PREFIX + packed

    def push(self, payload: dict, *, fast: bool) -> dict:
        """Hands one `messages/all` payload to INGEST; returns the receipt."""
        if not self.config.ingest_endpoint:
            self.require("ingest", "push_message", open_only=False)  # raises
        message_id = payload.get("message_id")
        if self._closed:
            return receipt(False, message_id, "closed")
        item = self._item(payload)  # TypeError for what msgpack cannot hold
        if item is None:
            with self._lock:
                self.too_large += 1
            return receipt(False, message_id, "payload_too_large")
        if fast:
            return self._push_fast(item, message_id)
        return self._push_now(item, message_id)

    def _push_fast(self, item: bytes, message_id: Any) -> dict:
        batcher = self._batcher
        if batcher is None or self._closed:
            with self._lock:
                if self._closed:
                    return receipt(False, message_id, "closed")
                if self._batcher is None:
                    self._batcher = FastBatcher(self)
                batcher = self._batcher
        # (close() stops the batcher before anything else: a push racing with it is refused by offer.)
        if batcher.offer(item):
            return receipt(True, message_id, None)
        with self._lock:
            self._pending_rejects += 1
        self._report_rejects()
        return receipt(False, message_id, "backpressure")

    def _report_rejects(self) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._warned.get("fast")
            if last is not None and now - last < WARN_INTERVAL_S:
                return
            self._warned["fast"] = now
            count, self._pending_rejects = self._pending_rejects, 0
        self.logger.warning("message_plane backpressure: rejected push_message.fast (x{})", count)

    def _push_now(self, item: bytes, message_id: Any) -> dict:
        with self._lock:
            if self._push_sockets is None:
                self._push_sockets = _ThreadSockets(self._push_socket)
            sockets = self._push_sockets
        try:
            slot = sockets.slot()
        except Closed:
            return receipt(False, message_id, "closed")
        frame = delta_batch_frame(self.plugin_id, [item])
        with slot.lock:
            if slot.closed:
                return receipt(False, message_id, "closed")
            try:
                slot.sock.send(frame)
            except zmq.Again:
                with self._lock:
                    self.normal_timeouts += 1
                self._warn("send", "message_plane ingest did not accept a push within {} ms", self.config.send_timeout_ms)
                return receipt(False, message_id, "timeout")
            except zmq.ZMQError as exc:
                with self._lock:
                    self.normal_failed += 1
                return receipt(False, message_id, f"error: {exc}")
        with self._lock:
            self.normal_sent += 1
        return receipt(True, message_id, None)

    # -- RPC -------------------------------------------------------------------------------------

    def _rpc_socket(self) -> zmq.Socket:
        sock = self._context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.config.rpc_endpoint or "")
        return sock

    def next_req_id(self) -> str:
        """`"<plugin_id>:<n>"` (unique across threads); a uuid4 when that would pass the
        envelope's 64-character limit."""
        req_id = f"{self.plugin_id}:{next(self._req_counter)}"
        return req_id if len(req_id) <= 64 else uuid.uuid4().hex

    def envelope(self, op: str, args: dict, req_id: Optional[str] = None) -> dict:
        return {"v": PROTOCOL_VERSION, "op": op, "req_id": req_id or self.next_req_id(), "args": args, "from_plugin": self.plugin_id}

    def request(self, op: str, args: dict, timeout: float = 5.0, *, feature: Optional[str] = None) -> Any:
        """Sends one RPC and returns its `result`.

        TimeoutError when no reply arrives in time; `RequestError` (a RuntimeError) with the
        plane's code and message when it answers `ok: false`.
        """
        self.require("rpc", feature or op)
        with self._lock:
            if self._rpc_sockets is None:
                self._rpc_sockets = _ThreadSockets(self._rpc_socket)
            sockets = self._rpc_sockets
        envelope = self.envelope(op, args)
        req_id = envelope["req_id"]
        frame = codec.packb(envelope)
        try:
            slot = sockets.slot()
        except Closed:
            raise RuntimeError(f"message_plane client is closed ({feature or op})") from None
        wait = float(timeout) if timeout and timeout > 0 else None
        deadline = None if wait is None else time.monotonic() + wait
        with slot.lock:
            if slot.closed:
                raise RuntimeError(f"message_plane client is closed ({feature or op})")
            sock = slot.sock
            # A plane that is down still takes ~1000 queued requests; after that, send would block.
            sock.setsockopt(zmq.SNDTIMEO, -1 if deadline is None else max(1, int(wait * 1000)))
            try:
                sock.send(frame)
            except zmq.Again:
                raise TimeoutError(f"message_plane {op} timed out after {timeout}s") from None
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"message_plane {op} timed out after {timeout}s")
                if not sock.poll(None if remaining is None else max(1, int(remaining * 1000))):
                    continue
                reply = _decode_reply(sock.recv_multipart()[-1])
                if reply is None or reply.get("req_id") != req_id:
                    continue  # a late reply to an earlier request that timed out, or noise
                break
        if not reply["ok"]:
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            raise RequestError(
                str(error.get("message") or f"message_plane {op} failed"),
                code=str(error.get("code") or "ERR"),
                details=error.get("details"),
            )
        return reply.get("result")

    # -- PUB -------------------------------------------------------------------------------------

    def subscriber(self, prefixes: list[str], feature: str) -> zmq.Socket:
        """A SUB socket on PUB for the given topic prefixes (use it from one thread only)."""
        endpoint = self.require("pub", feature)
        sock = self._context().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for prefix in prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("utf-8"))
        sock.connect(endpoint)
        return sock

    # -- stats, closing ------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            batcher = self._batcher
            normal = {
                "sent": self.normal_sent,
                "timeouts": self.normal_timeouts,
                "failed": self.normal_failed,
            }
            too_large = self.too_large
            final = self._batcher_final
        fast = batcher.stats() if batcher is not None else final or {
            "queued": 0,
            "max_queue": self.config.max_queue,
            "reject_at": max(1, int(self.config.max_queue * self.config.reject_ratio)),
            "accepted": 0,
            "rejected": 0,
            "sent": 0,
            "batches": 0,
            "dropped": 0,
            "send_timeouts": 0,
        }
        return {
            "available": {
                "ingest": bool(self.config.ingest_endpoint),
                "rpc": bool(self.config.rpc_endpoint),
                "pub": bool(self.config.pub_endpoint),
            },
            "normal": normal,
            "fast": fast,
            "payload_too_large": too_large,
        }

    def close(self) -> None:
        """Sends what fast mode holds (up to 2 s), then closes the sockets."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            batcher, self._batcher = self._batcher, None
            pending = self._pending_rejects
        if batcher is not None:
            batcher.stop()
            if batcher.dropped:
                self.logger.warning("message_plane: {} fast-mode push(es) were not sent before closing", batcher.dropped)
            self._batcher_final = batcher.stats()
        if pending:
            self.logger.warning("message_plane backpressure: rejected push_message.fast (x{})", pending)
        clean = True
        for sockets in (self._push_sockets, self._rpc_sockets):
            if sockets is not None:
                clean = sockets.close() and clean
        with self._lock:
            zctx, self._zctx = self._zctx, None
        if zctx is not None and clean:
            # term() waits for queued pushes (up to their linger) and for sockets other threads
            # still hold (watchers close their own); never wait long for it.
            term = threading.Thread(target=zctx.term, name="neko-mp-term", daemon=True)
            term.start()
            term.join(PUSH_LINGER_MS / 1000.0 + 0.5)


def receipt(submitted: bool, message_id: Any, reason: Optional[str]) -> dict:
    return {"submitted": submitted, "message_id": message_id, "reason": reason}


def _decode_reply(raw: bytes) -> Optional[dict]:
    reply: Any = None
    try:
        reply = codec.unpack_reply(raw)
    except Exception:
        try:
            import json

            reply = json.loads(raw.decode("utf-8"))
        except Exception:
            return None
    if not isinstance(reply, dict):
        return None
    if reply.get("v") != PROTOCOL_VERSION or not isinstance(reply.get("ok"), bool):
        return None
    return reply


__all__ = [
    "MessagePlane",
    "MessagePlaneConfig",
    "FastBatcher",
    "receipt",
    "not_available",
    "delta_batch_frame",
    "pack_payload",
]
