"""`ctx.bus.messages`: messages pushed by plugins (arrives with the message plane)."""

from __future__ import annotations

from typing import Any

from ._base import BusClient
from .types import MessageList, MessageRecord


class MessageClient(BusClient):
    bus_name = "messages"

    def get(self, plugin_id=None, max_count: int = 50, priority_min=None, source=None, filter=None, strict: bool = True, since_ts=None, timeout: float = 5.0, raw: bool = False, no_fallback: bool = False) -> MessageList:
        raise self._unavailable("get")

    async def get_async(self, *args: Any, **kwargs: Any) -> MessageList:
        raise self._unavailable("get_async")

    def get_message_plane_all(self, *, plugin_id=None, source=None, priority_min=None, after_seq: int = 0, page_limit: int = 200, max_items: int = 5000, timeout: float = 5.0, raw: bool = False, topic: str = "*") -> MessageList:
        raise self._unavailable("get_message_plane_all")


__all__ = ["MessageClient", "MessageList", "MessageRecord"]
