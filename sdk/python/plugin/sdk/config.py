"""`self.config`: the plugin's own configuration (its plugin.toml), read through the supervisor.

Smart methods (`dump`, `get`, `require`, `get_section`, `dump_base`, `dump_effective`) return a
coroutine when called where an event loop is running (in `async def` handlers: `await` them) and
otherwise return the value. `*_sync` always block (and refuse to run inside a running loop);
`*_async` always return a coroutine.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from .errors import PluginConfigError, RequestError

_MISSING = object()


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _sync_refused(op: str) -> PluginConfigError:
    return PluginConfigError(
        f"{op}_sync cannot be used inside a running event loop; use 'await {op}(...)' instead",
        operation=op,
    )


def _config_of(result: Any, op: str) -> dict:
    config = result.get("config") if isinstance(result, dict) else None
    if not isinstance(config, dict):
        raise PluginConfigError("Invalid config response from the supervisor", operation=op)
    return config


def _profile_of(result: Any) -> dict:
    config = result.get("config") if isinstance(result, dict) else None
    return config if isinstance(config, dict) else {}


def _split(path: str) -> list[str]:
    path = (path or "").strip()
    return [part for part in path.split(".") if part] if path else []


def lookup(config: Any, path: str, default: Any = _MISSING) -> Any:
    """The value at dotted `path` in `config` (digits index lists); the whole config for ""."""
    node = config
    for part in _split(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            if default is _MISSING:
                raise PluginConfigError(f"Config key '{path}' not found", path=path, operation="get")
            return default
    return node


def _patch_for(path: str, value: Any) -> dict:
    parts = _split(path)
    if not parts:
        raise PluginConfigError("Config path must not be empty", path=path, operation="set")
    patch: Any = value
    for part in reversed(parts):
        patch = {part: patch}
    return patch


#: Request op of each read that is not the effective config.
_READ_OPS = {"dump_base": "config.base"}


class PluginConfig:
    """The plugin's configuration: reads (the effective config, plugin.toml alone, profiles) and
    deep-merge writes into plugin.toml, all through the supervisor."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"PluginConfig(plugin_id={getattr(self.ctx, 'plugin_id', None)!r})"

    # -- reads: the effective config (base + active profile), or plugin.toml alone -------------

    def _fetch_sync(self, op: str, timeout: float) -> dict:
        try:
            return _config_of(self.ctx._request_sync(_READ_OPS.get(op, "config.get"), {}, timeout, name=f"config.{op}"), op)
        except RequestError as exc:
            raise PluginConfigError(str(exc), operation=op) from exc

    async def _fetch_async(self, op: str, timeout: float) -> dict:
        try:
            return _config_of(await self.ctx._request_async(_READ_OPS.get(op, "config.get"), {}, timeout), op)
        except RequestError as exc:
            raise PluginConfigError(str(exc), operation=op) from exc

    # -- dump -----------------------------------------------------------------------------------

    def dump(self, timeout: float = 5.0) -> Any:
        """The whole config (smart)."""
        return self.dump_async(timeout=timeout) if _in_loop() else self.dump_sync(timeout=timeout)

    def dump_sync(self, timeout: float = 5.0) -> dict:
        if _in_loop():
            raise _sync_refused("dump")
        return self._fetch_sync("dump", timeout)

    async def dump_async(self, timeout: float = 5.0) -> dict:
        return await self._fetch_async("dump", timeout)

    def dump_base(self, timeout: float = 5.0) -> Any:
        return self.dump_base_async(timeout=timeout) if _in_loop() else self.dump_base_sync(timeout=timeout)

    def dump_base_sync(self, timeout: float = 5.0) -> dict:
        if _in_loop():
            raise _sync_refused("dump_base")
        return self._fetch_sync("dump_base", timeout)

    async def dump_base_async(self, timeout: float = 5.0) -> dict:
        return await self._fetch_async("dump_base", timeout)

    def dump_effective(self, profile_name: Optional[str] = None, timeout: float = 5.0) -> Any:
        if _in_loop():
            return self.dump_effective_async(profile_name, timeout=timeout)
        return self.dump_effective_sync(profile_name, timeout=timeout)

    def dump_effective_sync(self, profile_name: Optional[str] = None, timeout: float = 5.0) -> dict:
        if _in_loop():
            raise _sync_refused("dump_effective")
        if profile_name is None:
            return self._fetch_sync("dump_effective", timeout)
        try:
            return _config_of(self.ctx._request_sync("config.effective", {"profile_name": profile_name}, timeout), "dump_effective")
        except RequestError as exc:
            raise PluginConfigError(str(exc), operation="dump_effective") from exc

    async def dump_effective_async(self, profile_name: Optional[str] = None, timeout: float = 5.0) -> dict:
        if profile_name is not None:
            return _config_of(await self.ctx.get_own_effective_config(profile_name, timeout=timeout), "dump_effective")
        return await self._fetch_async("dump_effective", timeout)

    # -- get / require / get_section --------------------------------------------------------------

    def get(self, path: str, default: Any = _MISSING, timeout: float = 5.0) -> Any:
        """The value at dotted `path` (smart). Missing without a default → PluginConfigError."""
        if _in_loop():
            return self.get_async(path, default, timeout=timeout)
        return self.get_sync(path, default, timeout=timeout)

    def get_sync(self, path: str, default: Any = _MISSING, timeout: float = 5.0) -> Any:
        if _in_loop():
            raise _sync_refused("get")
        return lookup(self._fetch_sync("get", timeout), path, default)

    async def get_async(self, path: str, default: Any = _MISSING, timeout: float = 5.0) -> Any:
        return lookup(await self._fetch_async("get", timeout), path, default)

    def require(self, path: str, timeout: float = 5.0) -> Any:
        return self.get(path, timeout=timeout)

    def require_sync(self, path: str, timeout: float = 5.0) -> Any:
        return self.get_sync(path, timeout=timeout)

    async def require_async(self, path: str, timeout: float = 5.0) -> Any:
        return await self.get_async(path, timeout=timeout)

    @staticmethod
    def _section(value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise PluginConfigError(f"Config section '{path}' is not a table", path=path, operation="get_section")
        return value

    def get_section(self, path: str, timeout: float = 5.0) -> Any:
        if _in_loop():
            return self.get_section_async(path, timeout=timeout)
        return self.get_section_sync(path, timeout=timeout)

    # A missing section is empty, as in the reference (it reads the path with a None default).
    def get_section_sync(self, path: str, timeout: float = 5.0) -> dict:
        return self._section(self.get_sync(path, {}, timeout=timeout), path)

    async def get_section_async(self, path: str, timeout: float = 5.0) -> dict:
        return self._section(await self.get_async(path, {}, timeout=timeout), path)

    # -- profiles and writes (later) ----------------------------------------------------------------

    def get_profiles_state(self, timeout: float = 5.0) -> Any:
        self.ctx._require_served("config.profiles")
        return self.ctx.get_own_profiles_state(timeout=timeout)

    def get_profiles_state_sync(self, timeout: float = 5.0) -> Any:
        self.ctx._require_served("config.profiles")
        return self.ctx._request_sync("config.profiles", {}, timeout)

    # The profile's own table ({} when it has none), as the reference unwraps it.
    def get_profile(self, profile_name: str, timeout: float = 5.0) -> Any:
        self.ctx._require_served("config.profile")
        if _in_loop():
            return self.get_profile_async(profile_name, timeout=timeout)
        return self.get_profile_sync(profile_name, timeout=timeout)

    def get_profile_sync(self, profile_name: str, timeout: float = 5.0) -> dict:
        self.ctx._require_served("config.profile")
        return _profile_of(self.ctx._request_sync("config.profile", {"profile_name": profile_name}, timeout))

    async def get_profile_async(self, profile_name: str, timeout: float = 5.0) -> dict:
        return _profile_of(await self.ctx.get_own_profile_config(profile_name, timeout=timeout))

    def update(self, patch: dict, timeout: float = 10.0) -> Any:
        """Deep-merges `patch` into plugin.toml (smart)."""
        self.ctx._require_served("config.update")
        if _in_loop():
            return self.update_async(patch, timeout=timeout)
        return self.update_sync(patch, timeout=timeout)

    def update_sync(self, patch: dict, timeout: float = 10.0) -> Any:
        self.ctx._require_served("config.update")
        if _in_loop():
            raise _sync_refused("update")
        if not isinstance(patch, dict):
            raise PluginConfigError("Invalid updates: must be a dict", operation="update")
        try:
            return _config_of(self.ctx._request_sync("config.update", {"updates": patch}, timeout), "update")
        except RequestError as exc:
            raise PluginConfigError(str(exc), operation="update") from exc

    async def update_async(self, patch: dict, timeout: float = 10.0) -> Any:
        if not isinstance(patch, dict):
            raise PluginConfigError("Invalid updates: must be a dict", operation="update")
        try:
            return _config_of(await self.ctx.update_own_config(patch, timeout=timeout), "update")
        except RequestError as exc:
            raise PluginConfigError(str(exc), operation="update") from exc

    def set(self, path: str, value: Any, timeout: float = 10.0) -> Any:
        self.ctx._require_served("config.update")
        return self.update(_patch_for(path, value), timeout=timeout)

    def set_sync(self, path: str, value: Any, timeout: float = 10.0) -> Any:
        self.ctx._require_served("config.update")
        return self.update_sync(_patch_for(path, value), timeout=timeout)

    async def set_async(self, path: str, value: Any, timeout: float = 10.0) -> Any:
        return await self.update_async(_patch_for(path, value), timeout=timeout)


__all__ = ["PluginConfig", "PluginConfigError"]
