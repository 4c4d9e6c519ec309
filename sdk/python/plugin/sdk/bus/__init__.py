"""`ctx.bus`: read access to neko's buses. The clients exist so plugins import and construct them;
their calls raise NotImplementedError until neko has the message plane."""

from __future__ import annotations

from typing import Any

from .events import EventClient
from .lifecycle import LifecycleClient
from .memory import MemoryClient
from .messages import MessageClient
from .types import (
    BusFilter,
    BusFilterError,
    BusList,
    BusRecord,
    EventList,
    EventRecord,
    LifecycleList,
    LifecycleRecord,
    MemoryList,
    MemoryRecord,
    MessageList,
    MessageRecord,
)


class BusHub:
    """`ctx.bus`: `.messages`, `.events`, `.lifecycle`, `.memory`."""

    def __init__(self, ctx: Any = None):
        self.ctx = ctx
        self.messages = MessageClient(ctx)
        self.events = EventClient(ctx)
        self.lifecycle = LifecycleClient(ctx)
        self.memory = MemoryClient(ctx)


__all__ = [
    "BusHub",
    "MessageClient",
    "EventClient",
    "LifecycleClient",
    "MemoryClient",
    "BusFilter",
    "BusFilterError",
    "BusList",
    "BusRecord",
    "MessageList",
    "MessageRecord",
    "EventList",
    "EventRecord",
    "LifecycleList",
    "LifecycleRecord",
    "MemoryList",
    "MemoryRecord",
]
