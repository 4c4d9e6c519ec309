"""`python -m plugin.describe`: the entries a plugin declares, read without running it.

neko lists plugins that are not running (`auto_start = false`) with their entries, as the reference
does by importing each plugin module at startup. This imports the module named by
`NEKO_PLUGIN_ENTRY` (else plugin.toml's `entry`), reads the class's decorated members and the
plugin.toml `entries` that name a method, exactly as a start would (`build_tables`), but never calls
the class: its `__init__` may open connections or start threads. The answer is one stdout line,
`NEKO_DESCRIBE {"entries": [...]}` (HELLO's entry specs); a module that prints on import cannot
be mistaken for it. Exit status 1, with the reason on stderr, when the class cannot be read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..sdk.logger import get_plugin_logger
from . import namespace
from .entries import bare_instance, build_tables
from .manifest import read_manifest
from .runner import _tidy_sys_path, load_class

#: Prefix of the answer line.
MARKER = "NEKO_DESCRIBE "


def main() -> int:
    logger = get_plugin_logger(os.environ.get("NEKO_PLUGIN_ID") or "plugin")
    plugin_dir = Path(os.environ.get("NEKO_PLUGIN_DIR", "").strip() or os.getcwd())
    config_path = Path(os.environ.get("NEKO_PLUGIN_CONFIG", "").strip() or plugin_dir / "plugin.toml")
    root = Path(os.environ.get("NEKO_PLUGINS_ROOT", "").strip() or plugin_dir.parent)
    _tidy_sys_path()
    namespace.install(root)
    try:
        manifest = read_manifest(config_path)
    except Exception as exc:
        logger.warning("cannot read {}: {}: {}", config_path, type(exc).__name__, exc)
        manifest = {}
    entry = os.environ.get("NEKO_PLUGIN_ENTRY", "").strip()
    if not entry:
        section = manifest.get("plugin") if isinstance(manifest.get("plugin"), dict) else {}
        entry = section.get("entry") if isinstance(section.get("entry"), str) else ""
    if ":" not in entry:
        logger.error("cannot describe: the entry must be 'module:Class', got {!r}", entry)
        return 1
    try:
        cls = load_class(entry)
        if not isinstance(cls, type):
            raise TypeError(f"'{entry}' is not a class")
        tables = build_tables(bare_instance(cls), manifest, logger)
    except Exception:
        logger.exception("cannot read the plugin class '{}'", entry)
        return 1
    sys.stdout.write(MARKER + json.dumps({"entries": tables.hello_entries()}) + "\n")
    sys.stdout.flush()
    return 0
