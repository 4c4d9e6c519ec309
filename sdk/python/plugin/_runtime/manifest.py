"""Reading the plugin's own plugin.toml locally (entries listed there, and config reads made before
the link to neko is up)."""

from __future__ import annotations

import datetime as _dt
import os
import tomllib
from pathlib import Path
from typing import Any, Optional


def to_json(value: Any) -> Any:
    """TOML values → JSON values (dates and times become their ISO text)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, _dt.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    return value


def read_manifest(path: Optional[Path]) -> dict:
    """The parsed plugin.toml, or {} when there is none (errors propagate)."""
    if path is None or not Path(path).is_file():
        return {}
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def local_config_get(plugin_id: str, path: Optional[Path]) -> dict:
    """The `config.get` answer built from the file itself (same shape as neko's)."""
    if path is None:
        raise RuntimeError("config.get: the plugin has no plugin.toml path (NEKO_PLUGIN_CONFIG)")
    try:
        data = read_manifest(path)
        mtime = os.stat(path).st_mtime
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RuntimeError(f"cannot read {path}: {exc}") from None
    modified = _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return {
        "plugin_id": plugin_id,
        "config": to_json(data),
        "config_path": str(path),
        "last_modified": modified,
    }


def manifest_entries(manifest: dict) -> list:
    """The `entries` list of `[plugin]` (or the top level), as given."""
    plugin = manifest.get("plugin") if isinstance(manifest.get("plugin"), dict) else {}
    items = plugin.get("entries", manifest.get("entries", []))
    return items if isinstance(items, list) else []
