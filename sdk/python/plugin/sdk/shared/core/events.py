"""Decorator metadata (`EventMeta`), handler records (`EventHandler`) and how they are found on a
plugin class.

Decorators attach an `EventMeta` to the function itself (attribute `__neko_event_meta__`) and
return the function unchanged, so decorators stack and bound methods expose the same attributes.
The field names of `EventMeta` are part of the contract: plugin tests read them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional

from ..constants import EVENT_META_ATTR, WORKER_MODE_ATTR

#: Presentation kinds of an event (no runtime meaning).
EntryKind = Literal["service", "action", "hook", "custom", "lifecycle", "consumer", "timer"]


@dataclass
class EventMeta:
    """What a decorator declares about one handler."""

    event_type: str
    id: str
    name: str = ""
    description: str = ""
    input_schema: dict = field(default_factory=dict)
    kind: str = "action"
    auto_start: bool = False
    extra: dict = field(default_factory=dict)
    #: The entry's own deadline in seconds; None or 0 means none (neko addition to v1).
    timeout: Optional[float] = None
    #: State auto-save override (`persist=` / legacy `checkpoint=`); None = plugin default.
    persist: Optional[bool] = None


@dataclass
class EventHandler:
    """A handler found on a plugin instance: its metadata and the bound callable."""

    meta: EventMeta
    handler: Callable[..., Any]


@dataclass(frozen=True)
class WorkerConfig:
    """`@worker(timeout=30.0, priority=0)`: run the entry on the plugin's worker pool."""

    timeout: float = 30.0
    priority: int = 0


def _attr(obj: Any, name: str) -> Any:
    # Odd class attributes (proxies, mocks) may raise anything: they are simply not decorated.
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def event_meta_of(obj: Any) -> Optional[EventMeta]:
    """The `EventMeta` on `obj` (a function, bound method, or a wrapper with `__wrapped__`)."""
    for candidate in (obj, _attr(obj, "__wrapped__")):
        meta = _attr(candidate, EVENT_META_ATTR) if candidate is not None else None
        if isinstance(meta, EventMeta):
            return meta
    return None


def worker_config_of(obj: Any) -> Optional[WorkerConfig]:
    """The `WorkerConfig` set by `@worker` on `obj`, if any."""
    for candidate in (obj, _attr(obj, "__wrapped__")):
        cfg = _attr(candidate, WORKER_MODE_ATTR) if candidate is not None else None
        if isinstance(cfg, WorkerConfig):
            return cfg
    return None


@dataclass
class FoundHandler:
    """One decorated member: the attribute name it lives under, its metadata, the bound callable."""

    attr: str
    meta: EventMeta
    handler: Callable[..., Any]


def scan_event_handlers(instance: Any, *, on_skip: Callable[[str, str], None] | None = None) -> Iterator[FoundHandler]:
    """Yields every decorated member of `instance`, in alphabetical order of attribute name.

    The class hierarchy is read statically (properties are never evaluated), so scanning has no
    side effects. Each hit is then looked up on the instance by name: an instance attribute with the
    same name hides the method, and a member that is not callable there is skipped (`on_skip` is
    told why).
    """
    cls = type(instance)
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        names.update(vars(klass).keys())
    for name in sorted(names):
        if name.startswith("__") and name.endswith("__"):
            continue
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        meta = event_meta_of(raw)
        if meta is None or not meta.id:
            continue
        try:
            bound = getattr(instance, name)
        except Exception as exc:  # a descriptor that fails: skip it, never fail the plugin
            if on_skip:
                on_skip(name, f"cannot be read: {type(exc).__name__}: {exc}")
            continue
        if not callable(bound):
            if on_skip:
                on_skip(name, "is not callable on the instance")
            continue
        yield FoundHandler(attr=name, meta=meta, handler=bound)


__all__ = [
    "EntryKind",
    "EventMeta",
    "EventHandler",
    "WorkerConfig",
    "event_meta_of",
    "worker_config_of",
    "FoundHandler",
    "scan_event_handlers",
]
