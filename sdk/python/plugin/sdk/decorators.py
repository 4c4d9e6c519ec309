"""The decorators plugin classes use to declare entries, lifecycle hooks, timers and events.

Every event decorator attaches an `EventMeta` under `__neko_event_meta__` and returns the function
itself (nothing is wrapped). Only `@plugin_entry` members (and plugin.toml `entries` that name an
attribute) can be invoked from outside.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from .shared.constants import (
    EVENT_META_ATTR,
    LIFECYCLE_IDS,
    NEKO_PLUGIN_TAG,
    PERSIST_ATTR,
    STANDARD_EVENT_TYPES,
    WORKER_MODE_ATTR,
)
from .shared.core.events import EntryKind, EventMeta, WorkerConfig

F = TypeVar("F", bound=Callable[..., Any])

#: The schema `@message` handlers get when they declare none.
MESSAGE_INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "sender": {"type": "string"},
        "ts": {"type": "string"},
    },
}

_TRIGGER_METHODS = ("message", "command", "auto")


def neko_plugin(cls: type) -> type:
    """Marks a class as a neko plugin (informational; the runner loads whatever class plugin.toml names)."""
    setattr(cls, NEKO_PLUGIN_TAG, True)
    return cls


def _attach(fn: F, meta: EventMeta, persist: Optional[bool]) -> F:
    setattr(fn, EVENT_META_ATTR, meta)
    if persist is not None:
        setattr(fn, PERSIST_ATTR, bool(persist))
    return fn


def _timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(value).__name__}")
    if value < 0:
        raise ValueError("timeout must not be negative")
    return float(value)


def on_event(
    *,
    event_type: str,
    id: str,
    name: Optional[str] = None,
    description: str = "",
    input_schema: Optional[dict] = None,
    kind: EntryKind | str = "action",
    auto_start: bool = False,
    persist: Optional[bool] = None,
    checkpoint: Optional[bool] = None,
    extra: Optional[dict] = None,
    timeout: Optional[float] = None,
) -> Callable[[F], F]:
    """The generic event decorator the others are built on."""
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("event_type must be a non-empty string")
    if not isinstance(id, str) or not id.strip():
        raise ValueError("id must be a non-empty string")
    flag = persist if persist is not None else checkpoint
    meta = EventMeta(
        event_type=event_type,
        id=id.strip(),
        name=name if name else id.strip(),
        description=description or "",
        input_schema=dict(input_schema) if input_schema else {},
        kind=kind,
        auto_start=bool(auto_start),
        extra=dict(extra) if extra else {},
        timeout=_timeout(timeout),
        persist=None if flag is None else bool(flag),
    )

    def decorate(fn: F) -> F:
        return _attach(fn, meta, flag)

    return decorate


def plugin_entry(
    id: Optional[str] = None,
    name: Optional[str] = None,
    description: str = "",
    input_schema: Optional[dict] = None,
    kind: EntryKind | str = "action",
    auto_start: bool = False,
    persist: Optional[bool] = None,
    checkpoint: Optional[bool] = None,
    extra: Optional[dict] = None,
    timeout: Optional[float] = None,
) -> Callable[[F], F]:
    """Declares an entry that callers can invoke (`POST /runs`, other plugins).

    `timeout` (seconds; None or 0 = none) is the entry's own deadline, announced to neko in HELLO.
    `id` defaults to the function name.
    """
    _timeout(timeout)  # refuse a bad timeout where the decorator is written

    def decorate(fn: F) -> F:
        entry_id = id if id is not None else getattr(fn, "__name__", "")
        return on_event(
            event_type="plugin_entry",
            id=entry_id,
            name=name,
            description=description,
            input_schema=input_schema,
            kind=kind,
            auto_start=auto_start,
            persist=persist,
            checkpoint=checkpoint,
            extra=extra,
            timeout=timeout,
        )(fn)

    if callable(id) and not isinstance(id, str):
        # Used bare: `@plugin_entry` without parentheses.
        fn, id = id, None
        return decorate(fn)  # type: ignore[return-value]
    return decorate


def lifecycle(
    *,
    id: str,
    name: Optional[str] = None,
    description: str = "",
    extra: Optional[dict] = None,
) -> Callable[[F], F]:
    """Declares a lifecycle hook: startup, shutdown, reload, freeze or unfreeze."""
    if id not in LIFECYCLE_IDS:
        raise ValueError(f"lifecycle id must be one of {sorted(LIFECYCLE_IDS)}, got {id!r}")
    return on_event(
        event_type="lifecycle",
        id=id,
        name=name,
        description=description,
        kind="lifecycle",
        extra=extra,
    )


def message(
    *,
    id: str,
    name: Optional[str] = None,
    description: str = "",
    input_schema: Optional[dict] = None,
    source: Optional[str] = None,
    extra: Optional[dict] = None,
) -> Callable[[F], F]:
    """Declares a consumer of pushed messages (dispatched once neko has the message plane)."""
    merged = dict(extra) if extra else {}
    if source is not None:
        merged.setdefault("source", source)
    return on_event(
        event_type="message",
        id=id,
        name=name,
        description=description,
        input_schema=input_schema or MESSAGE_INPUT_SCHEMA,
        kind="consumer",
        auto_start=True,
        extra=merged,
    )


def timer_interval(
    *,
    id: str,
    seconds: float,
    name: Optional[str] = None,
    description: str = "",
    auto_start: bool = True,
    extra: Optional[dict] = None,
) -> Callable[[F], F]:
    """Declares a handler called every `seconds` (first call right after startup)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("seconds must be a number")
    merged = {"mode": "interval", "seconds": seconds}
    if extra:
        merged.update(extra)
    return on_event(
        event_type="timer",
        id=id,
        name=name,
        description=description or f"Run every {seconds}s",
        kind="timer",
        auto_start=auto_start,
        extra=merged,
    )


def custom_event(
    *,
    event_type: str,
    id: str,
    name: Optional[str] = None,
    description: str = "",
    input_schema: Optional[dict] = None,
    kind: EntryKind | str = "custom",
    auto_start: bool = False,
    trigger_method: str = "message",
    extra: Optional[dict] = None,
) -> Callable[[F], F]:
    """Declares a handler for an event type of the plugin's own."""
    if event_type in STANDARD_EVENT_TYPES:
        raise ValueError(
            f"custom_event cannot use the standard event type {event_type!r}; "
            f"use the dedicated decorator instead"
        )
    if trigger_method not in _TRIGGER_METHODS:
        raise ValueError(f"trigger_method must be one of {list(_TRIGGER_METHODS)}, got {trigger_method!r}")
    merged = dict(extra) if extra else {}
    merged["trigger_method"] = trigger_method
    return on_event(
        event_type=event_type,
        id=id,
        name=name,
        description=description,
        input_schema=input_schema,
        kind=kind,
        auto_start=auto_start,
        extra=merged,
    )


def worker(timeout: Any = 30.0, priority: int = 0) -> Any:
    """Runs the entry on the plugin's separate worker pool (4 threads). `timeout` (seconds) bounds
    each call. Usable as `@worker`, `@worker()` or `@worker(timeout=60)`."""
    if callable(timeout) and not isinstance(timeout, (int, float)):
        fn = timeout
        setattr(fn, WORKER_MODE_ATTR, WorkerConfig())
        return fn
    cfg = WorkerConfig(timeout=float(timeout) if timeout is not None else 0.0, priority=int(priority))

    def decorate(fn: F) -> F:
        setattr(fn, WORKER_MODE_ATTR, cfg)
        return fn

    return decorate


class _PluginNamespace:
    """`plugin.entry(...)`, `plugin.worker(...)` and friends, for `from plugin.sdk import plugin`."""

    entry = staticmethod(plugin_entry)
    worker = staticmethod(worker)
    event = staticmethod(on_event)
    lifecycle = staticmethod(lifecycle)
    message = staticmethod(message)
    timer = staticmethod(timer_interval)
    custom_event = staticmethod(custom_event)

    def __repr__(self) -> str:
        return "<neko plugin decorator namespace>"


plugin = _PluginNamespace()

__all__ = [
    "neko_plugin",
    "on_event",
    "plugin_entry",
    "lifecycle",
    "message",
    "timer_interval",
    "custom_event",
    "worker",
    "plugin",
    "EntryKind",
    "EventMeta",
    "WorkerConfig",
    "MESSAGE_INPUT_SCHEMA",
]
