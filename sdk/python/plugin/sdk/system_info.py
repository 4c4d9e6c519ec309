"""`SystemInfo`: facts about the plugin's Python and platform, and neko's settings."""

from __future__ import annotations

import inspect
import os
import platform
import sys
from typing import Any


class SystemInfo:
    def __init__(self, ctx: Any = None):
        self.ctx = ctx

    def get_python_env(self) -> dict:
        """Python and OS facts of this plugin process, in the reference's shape:
        `{"python": {version, version_info, implementation, executable, prefix, base_prefix,
        platform}, "os": {platform, platform_str, system, release, version, machine, processor,
        architecture, details}}`."""
        uname = platform.uname()
        bits, linkage = platform.architecture()
        info = sys.version_info
        libc = platform.libc_ver()
        mac = platform.mac_ver()
        win = platform.win32_ver()
        return {
            "python": {
                "version": sys.version,
                "version_info": {
                    "major": info.major,
                    "minor": info.minor,
                    "micro": info.micro,
                    "releaselevel": info.releaselevel,
                    "serial": info.serial,
                },
                "implementation": platform.python_implementation(),
                "executable": sys.executable,
                "prefix": sys.prefix,
                "base_prefix": getattr(sys, "base_prefix", None),
                "platform": {"python_build": list(platform.python_build()), "python_compiler": platform.python_compiler()},
            },
            "os": {
                "platform": sys.platform,
                "platform_str": platform.platform(),
                "system": uname.system,
                "release": uname.release,
                "version": uname.version,
                "machine": uname.machine,
                "processor": uname.processor,
                "architecture": {"bits": bits, "linkage": linkage},
                "details": {
                    "win32_ver": dict(zip(("release", "version", "csd", "ptype"), win)),
                    "mac_ver": {"release": mac[0], "versioninfo": list(mac[1]), "machine": mac[2]},
                    "libc_ver": {"lib": libc[0], "version": libc[1]},
                },
            },
        }

    def get_platform_info(self) -> dict:
        return {
            "system": platform.system(),
            "release": platform.release(),
            "version": platform.version(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        }

    def get_system_config(self, timeout: float = 5.0) -> Any:
        """`{"config": {NAME: value}}`: neko's settings under the reference's names (smart: a
        coroutine inside a running event loop)."""
        return self._ctx_request("system.config", timeout)

    def get_server_settings(self, timeout: float = 5.0) -> Any:
        """The `config` dict of `get_system_config` (smart)."""
        result = self.get_system_config(timeout)
        if inspect.isawaitable(result):

            async def finish() -> dict:
                return _settings_of(await result)

            return finish()
        return _settings_of(result)

    def _ctx_request(self, op: str, timeout: float) -> Any:
        if self.ctx is None or not hasattr(self.ctx, "_request"):
            raise NotImplementedError(f"{op} needs a plugin context")
        return self.ctx._request(op, {}, timeout)


def _settings_of(result: Any) -> dict:
    config = result.get("config") if isinstance(result, dict) else None
    return config if isinstance(config, dict) else {}


__all__ = ["SystemInfo"]
