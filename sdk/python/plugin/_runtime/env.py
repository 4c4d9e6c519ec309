"""The settings neko passes to a plugin process through its environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .protocol import DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, parse_key

DEFAULT_HEARTBEAT_MS = 1000
HANDSHAKE_TIMEOUT_S = 10.0


class EnvError(Exception):
    """A missing or malformed variable; the message names it and never contains the secret."""


@dataclass
class RuntimeEnv:
    plugin_id: str
    endpoint: str
    key: bytes
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    supervisor_pid: Optional[int] = None
    plugin_dir: Path = Path(".")
    config_path: Optional[Path] = None
    entry: Optional[str] = None
    plugins_root: Optional[Path] = None
    #: This launch is a reload (`NEKO_PLUGIN_RELOADED=1`): `lifecycle("reload")` runs after startup.
    reloaded: bool = False
    #: The effective config at launch (`NEKO_PLUGIN_EFFECTIVE_CONFIG`), for reads before connecting.
    effective_config: Optional[Path] = None

    def __repr__(self) -> str:  # never print the key
        return f"RuntimeEnv(plugin_id={self.plugin_id!r}, endpoint={self.endpoint!r}, key=<redacted>)"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "RuntimeEnv":
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise EnvError(f"{name} is not set (plugins are started by neko, which sets it)")
            return value

        def number(name: str, positive: bool = True) -> Optional[int]:
            raw = env.get(name, "").strip()
            if not raw:
                return None
            try:
                value = int(raw)
            except ValueError:
                raise EnvError(f"{name} is not valid: '{raw}' is not an integer") from None
            if value < 0 or (positive and value == 0):
                raise EnvError(f"{name} is not valid: must be greater than 0")
            return value

        plugin_id = required("NEKO_PLUGIN_ID")
        endpoint = required("NEKO_PLUGIN_ENDPOINT")
        try:
            key = parse_key(required("NEKO_PLUGIN_SECRET"))
        except ValueError as exc:
            raise EnvError(str(exc)) from None
        version = number("NEKO_PROTOCOL_VERSION")
        if version is not None and version != PROTOCOL_VERSION:
            raise EnvError(
                f"NEKO_PROTOCOL_VERSION is not valid: the supervisor speaks protocol {version}, "
                f"this SDK speaks {PROTOCOL_VERSION}"
            )
        out = cls(plugin_id=plugin_id, endpoint=endpoint, key=key)
        out.heartbeat_ms = number("NEKO_HEARTBEAT_MS") or DEFAULT_HEARTBEAT_MS
        out.max_frame_bytes = number("NEKO_MAX_FRAME_BYTES") or DEFAULT_MAX_FRAME_BYTES
        out.supervisor_pid = number("NEKO_SUPERVISOR_PID")
        plugin_dir = env.get("NEKO_PLUGIN_DIR", "").strip()
        out.plugin_dir = Path(plugin_dir) if plugin_dir else Path.cwd()
        config = env.get("NEKO_PLUGIN_CONFIG", "").strip()
        out.config_path = Path(config) if config else (out.plugin_dir / "plugin.toml")
        out.entry = env.get("NEKO_PLUGIN_ENTRY", "").strip() or None
        root = env.get("NEKO_PLUGINS_ROOT", "").strip()
        out.plugins_root = Path(root) if root else out.plugin_dir.parent
        out.reloaded = env.get("NEKO_PLUGIN_RELOADED", "").strip() == "1"
        effective = env.get("NEKO_PLUGIN_EFFECTIVE_CONFIG", "").strip()
        out.effective_config = Path(effective) if effective else None
        return out
