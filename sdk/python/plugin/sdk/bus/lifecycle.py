"""`ctx.bus.lifecycle`: lifecycle records (arrives with the message plane)."""

from __future__ import annotations

from typing import Any

from ._base import BusClient
from .types import LifecycleList, LifecycleRecord


class LifecycleClient(BusClient):
    bus_name = "lifecycle"

    def get(self, plugin_id=None, max_count: int = 50, filter=None, strict: bool = True, since_ts=None, timeout: float = 5.0) -> LifecycleList:
        raise self._unavailable("get")

    async def get_async(self, *args: Any, **kwargs: Any) -> LifecycleList:
        raise self._unavailable("get_async")

    def delete(self, lifecycle_id: str, timeout: float = 5.0) -> bool:
        raise self._unavailable("delete")


__all__ = ["LifecycleClient", "LifecycleList", "LifecycleRecord"]
