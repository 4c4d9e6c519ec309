"""`self.plugins`: list and call other plugins through neko (PROTOCOL.md §9b).

Every method is smart, as the context's: inside a running event loop it returns a coroutine to
await, elsewhere it blocks and returns the result (the reference's A1 sync-call policy applies
then). Failures raise `PluginCallError` (a RuntimeError) carrying neko's or the callee's error
`code` and `details` (e.g. `DEADLOCK`, `PLUGIN_CRASHED`, `NOT_FOUND`, or the callee's own code);
a call that passes its timeout raises `TimeoutError`, as in the reference.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from .errors import PluginCallError, RequestError


def _parts(ref: str, count: int, shape: str) -> list[str]:
    parts = ref.split(":") if isinstance(ref, str) else []
    if len(parts) == count:
        parts = [p.strip() for p in parts]
        if all(parts):
            return parts
    raise PluginCallError(f"Invalid reference '{ref}': expected '{shape}'", code="VALIDATION_ERROR")


def _as_call_error(exc: BaseException) -> BaseException:
    """What a failure of the context's request becomes for `self.plugins` users."""
    if isinstance(exc, PluginCallError):
        return exc
    if isinstance(exc, RequestError):
        return PluginCallError(str(exc), code=exc.code, details=exc.details)
    if isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError):
        # E.g. the A1 policy's reject, or a request while the plugin is stopping: same text.
        return PluginCallError(str(exc))
    return exc  # TimeoutError stays TimeoutError; programming errors stay what they are


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Maps the context's errors to PluginCallError, for the sync result and for the coroutine."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            converted = _as_call_error(exc)
            if converted is exc:
                raise
            raise converted from exc
        if not inspect.isawaitable(value):
            return value

        async def finish() -> Any:
            try:
                return await value
            except Exception as exc:
                converted = _as_call_error(exc)
                if converted is exc:
                    raise
                raise converted from exc

        return finish()

    return wrapper


class Plugins:
    """Other plugins, as this plugin sees them. Methods are smart: inside a running event loop
    they return a coroutine to await."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    @_translated
    def list(self, filters: Optional[dict] = None, *, timeout: float = 5.0) -> Any:
        """`{"plugins": [...]}` matching `filters` (plugin_ids, name_contains, status_in, has_entry,
        has_custom_event, include_events), as neko answers it."""
        return self.ctx.query_plugins(filters, timeout=timeout)

    @_translated
    def call(self, *, plugin_id: str, event_type: str, event_id: str, args: Optional[dict] = None, timeout: float = 10.0) -> Any:
        """Calls an entry (`event_type="plugin_entry"`) or a custom event of another plugin; returns
        the callee's raw result."""
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
        """The plugin's record; PluginCallError (code NOT_FOUND) when neko does not know it."""
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
        raise PluginCallError(f"Required plugin '{plugin_id}' not found", code="NOT_FOUND")


__all__ = ["Plugins", "PluginCallError"]
