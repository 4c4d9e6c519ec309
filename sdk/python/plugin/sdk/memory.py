"""`MemoryClient`: user memory as a plugin reaches it (reference: plugin/sdk/memory.py).

A thin wrapper over the plugin's context:

- `query(lanlan_name, query)` → `ctx.query_memory(...)` (the memory server's search), the result as a
  dict (`{"result": value}` when it is not one). neko does not serve memory queries yet, so this
  raises `NotImplementedError` naming the feature.
- `get(bucket_id, limit=20)` → `ctx.bus.memory.get(...)`: the latest records of a user-context
  bucket from the message plane (a `MemoryList`).

Methods follow the context's call styles: `query` and `get` are used as in the reference (in async
code `query` returns a coroutine to await); `*_async` always return coroutines.

    from plugin.sdk import MemoryClient

    memory = MemoryClient(self.ctx)
    found = await memory.query("neko", "favourite food")      # in async def
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


def _as_dict(result: Any) -> dict:
    return result if isinstance(result, dict) else {"result": result}


class MemoryClient:
    def __init__(self, ctx: Any):
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"MemoryClient(ctx={self.ctx!r})"

    def _query_fn(self) -> Any:
        fn = getattr(self.ctx, "query_memory", None)
        if fn is None:
            raise RuntimeError("ctx.query_memory is not available")
        return fn

    # -- memory search --------------------------------------------------------------------------------

    def query(self, lanlan_name: str, query: str, *, timeout: float = 5.0) -> Any:
        """The memory server's answer for `query` about `lanlan_name`, as a dict. Smart: in async
        code (a running event loop) this returns a coroutine to await."""
        result = self._query_fn()(lanlan_name, query, timeout=timeout)
        if inspect.isawaitable(result):
            return self._finish(result)
        return _as_dict(result)

    async def query_async(self, lanlan_name: str, query: str, *, timeout: float = 5.0) -> dict:
        fn = getattr(self.ctx, "query_memory_async", None)
        if fn is not None:
            return _as_dict(await fn(lanlan_name, query, timeout=timeout))
        result = await asyncio.to_thread(self._query_fn(), lanlan_name, query, timeout=timeout)
        return await self._finish(result) if inspect.isawaitable(result) else _as_dict(result)

    def query_sync(self, lanlan_name: str, query: str, *, timeout: float = 5.0) -> dict:
        fn = getattr(self.ctx, "query_memory_sync", None) or self._query_fn()
        result = fn(lanlan_name, query, timeout=timeout)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()
            raise RuntimeError("query_sync cannot be used inside a running event loop; use 'await query_async(...)' instead")
        return _as_dict(result)

    @staticmethod
    async def _finish(awaitable: Any) -> dict:
        return _as_dict(await awaitable)

    # -- user-context buckets ---------------------------------------------------------------------------

    def get(self, bucket_id: str, limit: int = 20, timeout: float = 5.0) -> Any:
        """The latest `limit` records of a bucket (`ctx.bus.memory.get`)."""
        return self.ctx.bus.memory.get(bucket_id, limit=limit, timeout=timeout)

    async def get_async(self, bucket_id: str, limit: int = 20, timeout: float = 5.0) -> Any:
        return await self.ctx.bus.memory.get_async(bucket_id, limit=limit, timeout=timeout)


__all__ = ["MemoryClient"]
