"""`ctx.bus.lifecycle`: lifecycle records in the message plane's `lifecycle` store."""

from __future__ import annotations

from typing import Any, Optional

from ._base import BusClient
from .types import LifecycleList, LifecycleRecord


class LifecycleClient(BusClient):
    bus_name = "lifecycle"
    list_class = LifecycleList

    def get(self, plugin_id: Optional[str] = None, max_count: int = 50, filter: Any = None, strict: bool = True, since_ts: Optional[float] = None, timeout: float = 5.0) -> LifecycleList:
        """The latest lifecycle records (`bus.get_recent`), or those matching the filters
        (`bus.query`). A1-checked."""
        self._check_policy("get")
        return self._get_store("get", plugin_id, max_count, filter, strict, since_ts, timeout)  # type: ignore[return-value]

    async def get_async(self, plugin_id: Optional[str] = None, max_count: int = 50, filter: Any = None, strict: bool = True, since_ts: Optional[float] = None, timeout: float = 5.0) -> LifecycleList:
        return await self._in_thread(self._get_store, "get", plugin_id, max_count, filter, strict, since_ts, timeout)

    def delete(self, lifecycle_id: str, timeout: float = 5.0) -> bool:
        """Deletes one lifecycle record (neko's `bus.delete`); True when it existed. A1-checked."""
        self._check_policy("delete")
        return self._delete("delete", lifecycle_id, "lifecycle_id", timeout)

    async def delete_async(self, lifecycle_id: str, timeout: float = 5.0) -> bool:
        return await self._in_thread(self._delete, "delete", lifecycle_id, "lifecycle_id", timeout)


__all__ = ["LifecycleClient", "LifecycleList", "LifecycleRecord"]
