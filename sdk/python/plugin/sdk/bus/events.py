"""`ctx.bus.events`: event records (arrives with the message plane)."""

from __future__ import annotations

from typing import Any

from ._base import BusClient
from .types import EventList, EventRecord


class EventClient(BusClient):
    bus_name = "events"

    def get(self, plugin_id=None, max_count: int = 50, filter=None, strict: bool = True, since_ts=None, timeout: float = 5.0) -> EventList:
        raise self._unavailable("get")

    async def get_async(self, *args: Any, **kwargs: Any) -> EventList:
        raise self._unavailable("get_async")

    def delete(self, event_id: str, timeout: float = 5.0) -> bool:
        raise self._unavailable("delete")


__all__ = ["EventClient", "EventList", "EventRecord"]
