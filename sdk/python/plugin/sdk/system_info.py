"""`SystemInfo`: facts about the plugin's Python and platform, and (later) neko's settings."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


class SystemInfo:
    def __init__(self, ctx: Any = None):
        self.ctx = ctx

    def get_python_env(self) -> dict:
        """Python and platform facts of this plugin process."""
        return {
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "python_executable": sys.executable,
            "python_prefix": sys.prefix,
            "in_virtualenv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
            "platform": sys.platform,
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "pid": os.getpid(),
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
        """neko's settings (served by a later neko release)."""
        return self._ctx_request("system.config", timeout)

    def get_server_settings(self, timeout: float = 5.0) -> Any:
        return self._ctx_request("system.config", timeout)

    def _ctx_request(self, op: str, timeout: float) -> Any:
        if self.ctx is None or not hasattr(self.ctx, "_request"):
            raise NotImplementedError(f"{op} needs a plugin context")
        return self.ctx._request(op, {}, timeout)


__all__ = ["SystemInfo"]
