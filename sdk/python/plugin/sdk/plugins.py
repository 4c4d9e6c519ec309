"""`self.plugins`: list and call other plugins (served by a later neko release)."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from .errors import PluginCallError


def _parts(ref: str, count: int, shape: str) -> list[str]:
    parts = ref.split(":") if isinstance(ref, str) else []
    if len(parts) != count or not all(p.strip() for p in parts):
        raise PluginCallError(f"Invalid reference '{ref}': expected '{shape}'")
    return [p.strip() for p in parts]


class Plugins:
    """Other plugins, as this plugin sees them. Methods are smart: inside a running event loop
    they return a coroutine to await."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def list(self, filters: Optional[dict] = None, *, timeout: float = 5.0) -> Any:
        """`{"plugins": [...]}` matching `filters` (plugin_ids, name_contains, status_in, has_entry, ...)."""
        return self.ctx.query_plugins(filters, timeout=timeout)

    def call(self, *, plugin_id: str, event_type: str, event_id: str, args: Optional[dict] = None, timeout: float = 10.0) -> Any:
        return self.ctx.trigger_plugin_event(plugin_id, event_type, event_id, args or {}, timeout=timeout)

    def call_entry(self, ref: str, args: Optional[dict] = None, *, timeout: float = 10.0) -> Any:
        """Calls `"plugin_id:entry_id"`."""
        plugin_id, entry_id = _parts(ref, 2, "plugin_id:entry_id")
        return self.call(plugin_id=plugin_id, event_type="plugin_entry", event_id=entry_id, args=args, timeout=timeout)

    def call_event(self, ref: str, args: Optional[dict] = None, *, timeout: float = 10.0) -> Any:
        """Calls `"plugin_id:event_type:event_id"`."""
        plugin_id, event_type, event_id = _parts(ref, 3, "plugin_id:event_type:event_id")
        return self.call(plugin_id=plugin_id, event_type=event_type, event_id=event_id, args=args, timeout=timeout)

    def require(self, plugin_id: str, *, timeout: float = 5.0) -> Any:
        """The plugin's record; PluginCallError when it is not known."""
        listed = self.list({"plugin_ids": [plugin_id]}, timeout=timeout)
        if inspect.isawaitable(listed):

            async def finish() -> dict:
                return self._pick(plugin_id, await listed)

            return finish()
        return self._pick(plugin_id, listed)

    @staticmethod
    def _pick(plugin_id: str, listed: Any) -> dict:
        for item in (listed or {}).get("plugins", []) if isinstance(listed, dict) else []:
            if isinstance(item, dict) and item.get("plugin_id", item.get("id")) == plugin_id:
                return item
        raise PluginCallError(f"Plugin '{plugin_id}' not found")


__all__ = ["Plugins", "PluginCallError"]
