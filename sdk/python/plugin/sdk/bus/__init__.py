"""`ctx.bus`: neko's buses, read from the message plane (reference §5.6).

`ctx.bus.messages`, `.events`, `.lifecycle` and `.memory` return `BusList`s of records; lists can be
filtered, combined, reloaded and watched (see `types`).
"""

from __future__ import annotations

from typing import Any

from .events import EventClient
from .lifecycle import LifecycleClient
from .memory import MemoryClient
from .messages import MessageClient
from .types import (
    BinaryNode,
    BusChange,
    BusFilter,
    BusFilterError,
    BusFilterResult,
    BusList,
    BusListDelta,
    BusListWatcher,
    BusOp,
    BusRecord,
    EventList,
    EventRecord,
    GetNode,
    LifecycleList,
    LifecycleRecord,
    MemoryList,
    MemoryRecord,
    MessageList,
    MessageRecord,
    NonReplayableTraceError,
    TraceNode,
    UnaryNode,
    record_key,
)


class BusHub:
    """`ctx.bus`: `.messages`, `.events`, `.lifecycle`, `.memory`."""

    def __init__(self, ctx: Any = None):
        self.ctx = ctx
        self.messages = MessageClient(ctx)
        self.events = EventClient(ctx)
        self.lifecycle = LifecycleClient(ctx)
        self.memory = MemoryClient(ctx)

    def _plane_for(self, feature: str) -> Any:
        getter = getattr(self.ctx, "_message_plane", None)
        if getter is None:
            raise RuntimeError(f"message_plane is not available for {feature}")
        return getter()

    def _replay(self, store: str, plan: dict, timeout: float = 5.0) -> list:
        """`bus.replay` of a plan tree; the events it returns."""
        plane = self._plane_for("BusList.reload")
        result = plane.request("bus.replay", {"store": store, "plan": plan, "light": False}, timeout, feature="BusList.reload")
        items = result.get("items") if isinstance(result, dict) else None
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


__all__ = [
    "BusHub",
    "MessageClient",
    "EventClient",
    "LifecycleClient",
    "MemoryClient",
    "BusChange",
    "BusFilter",
    "BusFilterError",
    "BusFilterResult",
    "BusList",
    "BusListDelta",
    "BusListWatcher",
    "BusOp",
    "BusRecord",
    "TraceNode",
    "GetNode",
    "UnaryNode",
    "BinaryNode",
    "NonReplayableTraceError",
    "MessageList",
    "MessageRecord",
    "EventList",
    "EventRecord",
    "LifecycleList",
    "LifecycleRecord",
    "MemoryList",
    "MemoryRecord",
    "record_key",
]
