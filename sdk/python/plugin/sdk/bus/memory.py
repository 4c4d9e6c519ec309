"""`ctx.bus.memory`: user-context memory (arrives with the message plane)."""

from __future__ import annotations

from typing import Any

from ._base import BusClient
from .types import MemoryList, MemoryRecord


class MemoryClient(BusClient):
    bus_name = "memory"

    def get(self, bucket_id: str, limit: int = 20, timeout: float = 5.0) -> MemoryList:
        raise self._unavailable("get")

    async def get_async(self, *args: Any, **kwargs: Any) -> MemoryList:
        raise self._unavailable("get_async")

    def query(self, lanlan_name: str, query: str, *, timeout: float = 5.0) -> Any:
        raise self._unavailable("query")


__all__ = ["MemoryClient", "MemoryList", "MemoryRecord"]
