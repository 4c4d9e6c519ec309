"""`ctx.bus.messages`: messages pushed by plugins (`ctx.push_message`), from the message plane's
`messages` store, topic `all`. Not A1-checked, as in the reference."""

from __future__ import annotations

from typing import Any, Optional

from ._base import BusClient, norm_plugin_id, plan_params, split_filter
from .types import MessageList, MessageRecord


class MessageClient(BusClient):
    bus_name = "messages"
    list_class = MessageList

    def get(
        self,
        plugin_id: Optional[str] = None,
        max_count: int = 50,
        priority_min: Optional[int] = None,
        source: Optional[str] = None,
        filter: Any = None,
        strict: bool = True,
        since_ts: Optional[float] = None,
        timeout: float = 5.0,
        raw: bool = False,
        no_fallback: bool = False,
        *,
        topic: str = "all",
    ) -> MessageList:
        """Recent messages, every plugin's unless `plugin_id` names one ("*" = all).

        Without filters this is `bus.get_recent` (oldest first); with any (`plugin_id`,
        `priority_min`, `source`, `since_ts`, `filter`, or `strict=False`) it is `bus.query`
        (newest first). `filter` may hold BusFilter fields: kind/type/plugin_id/source/
        priority_min/since_ts/until_ts go to the query, the `*_re` regexes are applied here.
        `raw=True` on an unfiltered read asks for index-only ("light") items and gives a list
        that cannot be reloaded. `no_fallback` is accepted (there is nothing to fall back to).
        """
        pid = norm_plugin_id(plugin_id)
        src = source if isinstance(source, str) and source else None
        prio = int(priority_min) if priority_min is not None else None
        since = float(since_ts) if since_ts is not None else None
        query, local = split_filter(filter, strict)
        simple = pid is None and src is None and prio is None and since is None and not filter
        light = bool(raw) and simple
        if simple and strict:
            args = {"store": "messages", "topic": topic or "all", "limit": int(max_count), "light": light}
            events = self._items("get", "bus.get_recent", args, timeout)
        else:
            args = {
                "store": "messages",
                "topic": topic or "all",
                "limit": int(max_count),
                "plugin_id": pid,
                "source": src,
                "priority_min": prio,
                "since_ts": since,
                "light": light,
            }
            for key, value in query.items():
                if args.get(key) is None:
                    args[key] = value
            events = self._items("get", "bus.query", args, timeout)
        get_params, local = plan_params(args, max_count, local)
        return self._list(events, get_params=None if raw else get_params, local_filter=local, strict=strict, plugin_id=plugin_id)  # type: ignore[return-value]

    def get_message_plane(self, *, topic: str = "all", **options: Any) -> MessageList:
        """`get` (the same keyword arguments) on one topic of the messages store: the reference's
        message-plane read (its messages all go to topic "all")."""
        return self.get(topic=topic, **options)

    async def get_async(self, **kwargs: Any) -> MessageList:
        return await self._in_thread(self.get, **kwargs)

    def get_message_plane_all(
        self,
        *,
        plugin_id: Optional[str] = None,
        source: Optional[str] = None,
        priority_min: Optional[int] = None,
        after_seq: int = 0,
        page_limit: int = 200,
        max_items: int = 5000,
        timeout: float = 5.0,
        raw: bool = False,
        topic: str = "*",
    ) -> MessageList:
        """Every stored message after `after_seq` (oldest first), paging `bus.get_since` by
        `page_limit` up to `max_items`; plugin/source/priority filters are applied here."""
        pid = norm_plugin_id(plugin_id)
        last_seq = int(after_seq or 0)
        page = int(page_limit) if page_limit and int(page_limit) > 0 else 200
        hard_max = int(max_items) if max_items and int(max_items) > 0 else 5000
        topic_arg = topic if isinstance(topic, str) and topic else "*"
        kept: list[dict] = []
        while len(kept) < hard_max:
            limit = min(page, hard_max - len(kept))
            args = {"store": "messages", "topic": topic_arg, "after_seq": last_seq, "limit": limit}
            events = self._items("get_message_plane_all", "bus.get_since", args, timeout)
            if not events:
                break
            progressed = False
            for event in events:
                seq = event.get("seq")
                if isinstance(seq, int) and seq > last_seq:
                    last_seq = seq
                    progressed = True
                payload = event.get("payload")
                if not isinstance(payload, dict):
                    continue
                if pid is not None and payload.get("plugin_id") != pid:
                    continue
                if isinstance(source, str) and source and payload.get("source") != source:
                    continue
                if priority_min is not None:
                    try:
                        if int(payload.get("priority") or 0) < int(priority_min):
                            continue
                    except (TypeError, ValueError):
                        continue
                kept.append(event)
                if len(kept) >= hard_max:
                    break
            if not progressed or len(events) < limit:
                break
        get_params = None
        if not raw:
            get_params = {"max_count": len(kept), "plugin_id": pid, "source": source or None, "priority_min": priority_min, "topic": "all"}
        return self._list(kept, get_params=get_params, local_filter={}, strict=True, plugin_id=plugin_id)  # type: ignore[return-value]

    def delete(self, message_id: str, timeout: float = 5.0) -> bool:
        """Deletes one message from the store (neko's `bus.delete`); True when it existed. A1-checked."""
        self._check_policy("delete")
        return self._delete("delete", message_id, "message_id", timeout)


__all__ = ["MessageClient", "MessageList", "MessageRecord"]
