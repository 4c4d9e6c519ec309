"""`python -m plugin.runner`: what neko starts for a Python plugin.

Reads the environment, makes `plugins.<dir>` importable, imports `module:Class` from
`NEKO_PLUGIN_ENTRY`, builds the context, constructs the plugin, then hands over to `PluginHost`
(connect, HELLO, WELCOME, serve). Exit code 0 after STOP/SIGTERM or when neko is gone, 78 when the
plugin cannot start as configured (not retried by neko), 1 when the link broke.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from typing import Any

from ..sdk.logger import PluginLogger, StdlibBridge, get_plugin_logger
from ..sdk.shared.constants import SDK_VERSION
from ..sdk.state import StatePersistence
from . import namespace
from .context import PluginContext
from .entries import bare_instance, build_tables
from .env import EnvError, RuntimeEnv
from .host import PluginHost
from .link import Link
from .manifest import local_config_get, read_manifest


def _tidy_sys_path() -> None:
    # `python -m` puts the working directory (the plugin's folder) first on sys.path. The reference
    # never had plugin folders on the path: their modules are reached as `plugins.<dir>.<module>`.
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != cwd]


def _bridge_stdlib_logging(logger: PluginLogger) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, StdlibBridge) for h in root.handlers):
        root.addHandler(StdlibBridge(logger))
    if root.level == logging.WARNING:  # untouched default
        root.setLevel(logging.INFO)


def load_class(entry: str) -> Any:
    module_name, _, attr_path = entry.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in attr_path.strip().split("."):
        obj = getattr(obj, part)
    return obj


def _local_answer(env: RuntimeEnv):
    def answer(op: str, args: dict) -> Any:
        if op == "config.get" and env.effective_config is not None:
            # The effective config (profiles applied) neko wrote for this launch.
            try:
                with open(env.effective_config, encoding="utf-8") as fh:
                    return json.load(fh)
            except (OSError, ValueError):
                pass
        if op in ("config.get", "config.base"):  # plugin.toml as it is
            return local_config_get(env.plugin_id, env.config_path)
        raise LookupError(op)

    return answer


def _adopt(host: PluginHost, instance: Any, manifest: dict, logger: PluginLogger, tables: Any = None) -> None:
    """Makes `instance` the plugin the host serves: its handler tables, and the `__freezable__`
    attributes an earlier process saved, restored before anything runs."""
    if tables is None:
        tables = build_tables(instance, manifest, logger)
        announced, built = set(host.tables.entries), set(tables.entries)
        if announced != built:
            logger.warning("entries differ from those announced at HELLO (not served: {})", sorted(built - announced) or "none")
    host.tables = tables
    state = getattr(instance, "_state_persistence", None)
    if not (isinstance(state, StatePersistence) and state.enabled):
        return
    host.state, host.instance = state, instance
    try:
        host.restored = state.restore(instance)
    except Exception:
        logger.exception("the saved state could not be restored; starting without it")
    if host.restored:
        logger.info("state restored ({})", ", ".join(state.freezable))


def _exit(code: int, hard: bool) -> int:
    if hard:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
    return code


#: Exit code (EX_CONFIG) for "cannot start as configured" before HELLO: a bad entry, a module that
#: does not import, a class that cannot be constructed. neko reports it and does not restart the
#: plugin until it is started by hand (PROTOCOL.md §13); retrying would fail the same way.
EXIT_CANNOT_START = 78


def main() -> int:
    logger = get_plugin_logger(os.environ.get("NEKO_PLUGIN_ID") or "plugin")
    try:
        env = RuntimeEnv.from_environ()
    except EnvError as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_CANNOT_START
    _tidy_sys_path()
    _bridge_stdlib_logging(logger)
    namespace.install(env.plugins_root)

    try:
        manifest = read_manifest(env.config_path)
    except Exception as exc:
        logger.warning("cannot read {}: {}: {}", env.config_path, type(exc).__name__, exc)
        manifest = {}
    entry = env.entry
    if not entry:
        section = manifest.get("plugin") if isinstance(manifest.get("plugin"), dict) else {}
        entry = section.get("entry") if isinstance(section.get("entry"), str) else None
    if not entry or ":" not in entry:
        logger.error("cannot start: NEKO_PLUGIN_ENTRY must be 'module:Class', got {!r}", entry)
        return EXIT_CANNOT_START
    logger.info("starting {} (neko-sdk-python {}, Python {})", entry, SDK_VERSION, sys.version.split()[0])

    try:
        cls = load_class(entry)
    except Exception:
        logger.exception("cannot import the plugin class '{}'", entry)
        return EXIT_CANNOT_START

    link = Link(env.endpoint, env.key, env.max_frame_bytes, logger)
    link.local_answer = _local_answer(env)
    ctx = PluginContext(env.plugin_id, env.config_path, logger, link, env.plugin_dir)
    deferred = False
    try:
        instance = cls(ctx)
    except Exception as exc:
        op = link.needed_before_connect
        if op is None:
            logger.exception("the plugin class '{}' could not be constructed", entry)
            return EXIT_CANNOT_START
        # Its __init__ asked neko for something (other plugins, say) that only a connected link
        # can answer, as the reference allows: say HELLO with the entries its class declares,
        # and construct it again once connected (before any call is served).
        logger.info("the plugin's __init__ needs neko ('{}' failed with {}); constructing it again once connected", op, type(exc).__name__)
        instance, deferred = bare_instance(cls), True

    tables = build_tables(instance, manifest, logger)
    host = PluginHost(env, link, tables, logger)
    if deferred:
        host.construct = lambda: _adopt(host, cls(ctx), manifest, logger)
    else:
        _adopt(host, instance, manifest, logger, tables)
    try:
        code = asyncio.run(host.run())
    except Exception:
        logger.exception("the plugin runtime failed")
        code = 1
    clean = host.shutdown_threads()
    ctx.close()
    if not clean:
        logger.warning("exiting with handler threads still running")
    return _exit(code, hard=host.hard_exit or not clean)
