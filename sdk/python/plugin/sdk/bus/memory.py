"""`ctx.bus.memory`: user-context memory, the message plane's `memory` store (topic = bucket id)."""

from __future__ import annotations

from typing import Any

from ._base import BusClient
from .types import MemoryList, MemoryRecord


class MemoryClient(BusClient):
    bus_name = "memory"
    list_class = MemoryList

    def _get(self, bucket_id: str, limit: int, timeout: float) -> MemoryList:
        if not isinstance(bucket_id, str) or not bucket_id.strip():
            raise ValueError("bucket_id is required")
        bucket = bucket_id.strip()
        args = {"store": "memory", "topic": bucket, "limit": int(limit), "light": False}
        events = self._items("get", "bus.get_recent", args, timeout)
        return self._list(  # type: ignore[return-value]
            events,
            get_params={"max_count": int(limit), "topic": bucket},
            local_filter={},
            strict=True,
            plugin_id=None,
        )

    def get(self, bucket_id: str, limit: int = 20, timeout: float = 5.0) -> MemoryList:
        """The latest `limit` records of a bucket (oldest first). A1-checked."""
        self._check_policy("get")
        return self._get(bucket_id, limit, timeout)

    async def get_async(self, bucket_id: str, limit: int = 20, timeout: float = 5.0) -> MemoryList:
        return await self._in_thread(self._get, bucket_id, limit, timeout)

    def query(self, lanlan_name: str, query: str, *, timeout: float = 5.0) -> Any:
        """`ctx.query_memory(lanlan_name, query)` (not served by neko yet: NotImplementedError)."""
        return self.ctx.query_memory(lanlan_name, query, timeout=timeout)


__all__ = ["MemoryClient", "MemoryList", "MemoryRecord"]
