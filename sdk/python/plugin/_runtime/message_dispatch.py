"""`@message` handlers: pushed messages delivered to the plugin that declared a consumer.

The reference declared `@message(id=..., source=...)` but never called it. neko calls it: when the
plugin class has `@message` handlers, the runner subscribes to the message plane's PUB socket
(topic prefix `messages.`) once startup has finished, and for every published message calls each
handler whose filter matches:

- `source="x"` matches messages whose `source` is "x", the plugin's own pushes included;
- `source=None` (or "*") matches every message from *other* plugins: a plugin's own pushes reach
  only handlers that name their source, so a handler that pushes cannot feed itself by accident.

Handlers get keyword arguments: the decorator's default schema `text` (the content; non-string
content as JSON text), `sender` (the source) and `ts` (the message time as ISO-8601), `message`
(the whole stored payload), and every payload field by name (`message_id`, `plugin_id`, `source`,
`message_type`, `description`, `priority`, `content`, `binary_url`, `metadata`, `unsafe`, `time`,
...). Only the names a handler accepts are passed, unless it takes `**kwargs`.

The dispatcher (its SUB socket included) lives on the handler loop, the loop that runs plugin code
(see `host`). Handlers run like other handlers (async ones on the handler loop, sync ones on the
thread pool), at most `MAX_IN_FLIGHT` at a time, with the handler scope `message.<id>`; exceptions
are logged and never stop the plugin. Messages carrying `binary_data` are not published by the
message plane (its PUB frames are JSON), so they do not reach handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import keyword
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional

import zmq
import zmq.asyncio

from ..sdk.shared.core.events import EventMeta
from . import scope
from .entries import is_async_callable
from .handler_loop import name_task

if TYPE_CHECKING:
    from .handler_loop import HandlerLoop
    from .host import PluginHost

MAX_IN_FLIGHT = 64
TOPIC_PREFIX = "messages."


def _iso(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return value
    return None


def wants(meta: EventMeta, payload: dict, own_plugin_id: str) -> bool:
    """Whether a `@message` handler takes this payload (see the module doc)."""
    source = (meta.extra or {}).get("source")
    if source in (None, "", "*"):
        return payload.get("plugin_id") != own_plugin_id
    return payload.get("source") == source


def message_kwargs(event: dict) -> dict:
    """The keyword arguments for one published event (see the module doc)."""
    payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
    kwargs = {k: v for k, v in payload.items() if isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)}
    content = payload.get("content")
    if content is None:
        text = payload.get("text") if isinstance(payload.get("text"), str) else ""
    elif isinstance(content, str):
        text = content
    else:
        text = json.dumps(content, ensure_ascii=False, default=str)
    sender = payload.get("source")
    kwargs["text"] = text
    kwargs["sender"] = sender if sender is not None else payload.get("sender")
    kwargs["ts"] = _iso(payload.get("time")) or _iso(payload.get("timestamp")) or _iso(event.get("ts"))
    kwargs["message"] = payload
    return kwargs


def fit_kwargs(fn: Callable[..., Any], kwargs: dict) -> dict:
    """`kwargs` cut down to the parameters `fn` accepts (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def parse_event(frames: list[bytes]) -> Optional[dict]:
    """A PUB message `[b"<store>.<topic>", JSON(event)]` → the event (None if it is not one)."""
    if len(frames) < 2:
        return None
    try:
        event = json.loads(frames[-1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("payload"), dict) else None


class MessageDispatcher:
    def __init__(self, host: "PluginHost", endpoint: str, handlers: list[tuple[EventMeta, Callable[..., Any]]]):
        self.host = host
        self.endpoint = endpoint
        self.handlers = handlers
        self.plugin_id = host.env.plugin_id
        self.logger = host.logger
        self._handlers: Optional["HandlerLoop"] = None
        self._task: Optional[asyncio.Task] = None
        self._running: set[asyncio.Future] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._stopped = False
        self.delivered = 0

    def start(self, handlers: "HandlerLoop") -> None:
        """Starts listening on the handler loop (callable from any thread)."""
        self._handlers = handlers
        handlers.call_soon(self._begin)

    def _begin(self) -> None:  # on the handler loop
        if not self._stopped:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stops listening and cancels running handlers (callable from any thread)."""
        self._stopped = True
        if self._handlers is not None:
            self._handlers.call_soon(self._stop_here)

    def _stop_here(self) -> None:  # on the handler loop
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for work in list(self._running):
            work.cancel()

    async def _run(self) -> None:
        zctx = zmq.asyncio.Context()
        sock = zctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX.encode())
        try:
            sock.connect(self.endpoint)
            self.logger.info(
                "@message handlers ({}) subscribed to {} on {}",
                ", ".join(meta.id for meta, _ in self.handlers),
                TOPIC_PREFIX,
                self.endpoint,
            )
            while True:
                event = parse_event(await sock.recv_multipart())
                if event is None:
                    continue
                for meta, fn in self.handlers:
                    if wants(meta, event["payload"], self.plugin_id):
                        await self._slots.acquire()
                        self._spawn(meta, fn, event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.logger.opt(exception=exc).error("@message dispatch stopped: {}: {}", type(exc).__name__, exc)
        finally:
            sock.close(linger=0)
            zctx.term()

    def _spawn(self, meta: EventMeta, fn: Callable[..., Any], event: dict) -> None:
        label = f"message.{meta.id}"
        kwargs = fit_kwargs(fn, message_kwargs(event))
        if is_async_callable(fn):
            work: asyncio.Future = asyncio.ensure_future(self._call_async(label, fn, kwargs))
        else:
            work = asyncio.ensure_future(self._call_sync(label, fn, kwargs))
        self._running.add(work)
        work.add_done_callback(self._done)
        self.delivered += 1

    def _done(self, work: asyncio.Future) -> None:
        self._running.discard(work)
        self._slots.release()
        if not work.cancelled():
            work.exception()  # already logged; never "unretrieved"

    def _failed(self, label: str, exc: BaseException) -> None:
        self.logger.opt(exception=exc).error("{} failed: {}: {}", label, type(exc).__name__, exc)

    async def _call_async(self, label: str, fn: Callable[..., Any], kwargs: dict, awaitable: Any = None) -> None:
        name_task(label)
        scope.enter(label)
        try:
            await (awaitable if awaitable is not None else fn(**kwargs))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(label, exc)

    async def _call_sync(self, label: str, fn: Callable[..., Any], kwargs: dict) -> None:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self.host.sync_pool, self._thread_call, label, fn, kwargs)
        if inspect.isawaitable(value):
            await self._call_async(label, fn, kwargs, awaitable=value)

    def _thread_call(self, label: str, fn: Callable[..., Any], kwargs: dict) -> Any:
        with self.host._busy_thread():
            try:
                return scope.run_scoped(fn, kwargs, label=label)
            except Exception as exc:
                self._failed(label, exc)
                return None


__all__ = ["MessageDispatcher", "wants", "message_kwargs", "fit_kwargs", "parse_event", "MAX_IN_FLIGHT"]
