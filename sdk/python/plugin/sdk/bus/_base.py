"""What the `ctx.bus.*` clients share: the message-plane RPC, the get/query choice, records."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from .types import FILTER_KEYS, BusFilter, BusFilterError, BusList, BusOp, GetNode

#: Filter keys `bus.query` applies itself (the rest are applied here, and replayed as a filter step).
QUERY_FILTER_KEYS = ("kind", "type", "plugin_id", "source", "priority_min", "since_ts", "until_ts")


def norm_plugin_id(plugin_id: Any) -> Optional[str]:
    """None, "" and "*" mean every plugin."""
    if not isinstance(plugin_id, str):
        return None
    value = plugin_id.strip()
    return None if value in ("", "*") else value


def split_filter(flt: Any, strict: bool) -> tuple[dict, dict]:
    """A get()'s `filter` dict → (keys `bus.query` takes, regex keys applied locally)."""
    if flt is None:
        return {}, {}
    if isinstance(flt, BusFilter):
        flt = flt.params()
    if not isinstance(flt, dict):
        raise BusFilterError(f"filter must be a dict or a BusFilter, not {type(flt).__name__}")
    unknown = sorted(k for k in flt if k not in FILTER_KEYS)
    if unknown and strict:
        raise BusFilterError(f"unknown filter field(s): {', '.join(map(str, unknown))}")
    query = {k: flt[k] for k in QUERY_FILTER_KEYS if flt.get(k) is not None}
    local = {k: v for k, v in flt.items() if k in FILTER_KEYS and k not in QUERY_FILTER_KEYS and v is not None}
    return query, local


def plan_params(args: dict, max_count: int, local: dict) -> tuple[dict, dict]:
    """The `get` node's params for a read made with `args`, and the local filter to add.

    A `get` node replays as `bus.get_recent` / `bus.query` without `until_ts` (reference §9.3), so
    an `until_ts` moves into the filter step that follows the get (applied here as well, which is
    a no-op on what the query returned)."""
    params = {"max_count": int(max_count), **{k: args.get(k) for k in QUERY_FILTER_KEYS if k != "until_ts"}, "topic": "all"}
    if args.get("until_ts") is not None:
        local = {**local, "until_ts": args["until_ts"]}
    return params, local


class BusClient:
    """Base of the `ctx.bus.*` clients."""

    bus_name = "bus"
    list_class: type[BusList] = BusList

    def __init__(self, ctx: Any = None):
        self.ctx = ctx

    # -- plumbing --------------------------------------------------------------------------------

    def _feature(self, method: str) -> str:
        return f"ctx.bus.{self.bus_name}.{method}"

    def _plane(self, method: str) -> Any:
        getter = getattr(self.ctx, "_message_plane", None)
        if getter is None:
            raise RuntimeError(f"message_plane is not available for {self._feature(method)}")
        return getter()

    def _rpc(self, method: str, op: str, args: dict, timeout: float) -> Any:
        return self._plane(method).request(op, args, timeout, feature=self._feature(method))

    def _items(self, method: str, op: str, args: dict, timeout: float) -> list:
        result = self._rpc(method, op, args, timeout)
        items = result.get("items") if isinstance(result, dict) else None
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def _check_policy(self, method: str) -> None:
        """A1: the reference checks these calls against `[plugin.safety].sync_call_in_handler`."""
        enforce = getattr(self.ctx, "_enforce_sync_call_policy", None)
        if enforce is not None:
            enforce(f"bus.{self.bus_name}.{method}")

    def _own_plugin_id(self) -> Optional[str]:
        return getattr(self.ctx, "plugin_id", None)

    def _list(
        self,
        events: list,
        *,
        get_params: Optional[dict],
        local_filter: dict,
        strict: bool,
        plugin_id: Any,
        store: Optional[str] = None,
    ) -> BusList:
        """Records from events, the local part of the filter applied, and the plan recorded."""
        cls = self.list_class
        records = [cls.record_class.from_event(ev) for ev in events]
        if plugin_id == "*":
            effective = "*"
        else:
            effective = norm_plugin_id(plugin_id) or self._own_plugin_id()
        if get_params is None:  # raw reads are not replayable, as in the reference
            lst = cls(records, ctx=self.ctx, plugin_id=effective)
        else:
            now = time.time()
            params = {k: v for k, v in get_params.items() if v is not None}
            plan = GetNode(op="get", params={"bus": store or cls.store_name, "params": params}, at=now)
            lst = cls(records, ctx=self.ctx, trace=[BusOp("get", dict(params), now)], plan=plan, plugin_id=effective)
        if local_filter:
            lst = lst.filter(BusFilter(**local_filter), strict=strict)
        return lst

    async def _in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # Async forms are not A1-checked (as in the reference) and never block the loop.
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- the store-shaped get (events, lifecycle) ----------------------------------------------------

    def _get_store(
        self,
        method: str,
        plugin_id: Any,
        max_count: int,
        filter: Any,
        strict: bool,
        since_ts: Any,
        timeout: float,
    ) -> BusList:
        store = self.list_class.store_name
        query, local = split_filter(filter, strict)
        pid = norm_plugin_id(plugin_id) or norm_plugin_id(query.pop("plugin_id", None))
        args: dict[str, Any] = {"store": store, "topic": "all", "limit": int(max_count), "light": False}
        if since_ts is not None:
            args["since_ts"] = float(since_ts)
        if pid is not None:
            args["plugin_id"] = pid
        for key, value in query.items():
            args.setdefault(key, value)
        filtered = any(args.get(k) is not None for k in QUERY_FILTER_KEYS)
        if filtered:
            events = self._items(method, "bus.query", args, timeout)
        else:
            events = self._items(method, "bus.get_recent", {"store": store, "topic": "all", "limit": int(max_count), "light": False}, timeout)
        get_params, local = plan_params(args, max_count, local)
        return self._list(events, get_params=get_params, local_filter=local, strict=strict, plugin_id=plugin_id)

    def _delete(self, method: str, record_id: Any, what: str, timeout: float) -> bool:
        value = str(record_id).strip() if record_id is not None else ""
        if not value:
            raise ValueError(f"{what} is required")
        result = self._rpc(method, "bus.delete", {"store": self.list_class.store_name, "id": value}, timeout)
        return bool(result.get("deleted")) if isinstance(result, dict) else False


__all__ = ["BusClient", "norm_plugin_id", "split_filter", "plan_params", "QUERY_FILTER_KEYS"]
