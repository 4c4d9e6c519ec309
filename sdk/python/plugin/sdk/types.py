"""Typing helpers for plugin code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class PluginContextProtocol(Protocol):
    """What a plugin may rely on in `ctx`."""

    plugin_id: str
    config_path: Optional[Path]
    logger: Any

    @property
    def run_id(self) -> Optional[str]: ...

    def require_run_id(self) -> str: ...

    def update_status(self, status: dict) -> None: ...


__all__ = ["PluginContextProtocol"]
