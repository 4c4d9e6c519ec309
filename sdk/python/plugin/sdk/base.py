"""`NekoPluginBase`: the class plugins derive from."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import PluginConfig
from .database import PluginDatabase
from .logger import PluginLogger, enable_plugin_file_logging, get_plugin_logger
from .plugins import Plugins
from .shared.constants import DEFAULT_INPUT_SCHEMA, NEKO_PLUGIN_META_ATTR, NEKO_PLUGIN_TAG, SDK_VERSION
from .shared.core.events import EventHandler, scan_event_handlers
from .state import StatePersistence, persist_mode, state_backend
from .store import PluginStore
from .system_info import SystemInfo


@dataclass
class PluginMeta:
    """A plugin's registry record (what neko lists about it)."""

    id: str
    name: str = ""
    description: str = ""
    version: str = "0.1.0"
    sdk_version: str = SDK_VERSION
    input_schema: dict = field(default_factory=lambda: dict(DEFAULT_INPUT_SCHEMA))
    author: Optional[dict] = None


def _plugin_toml(ctx: Any) -> dict:
    """The plugin's plugin.toml (read locally: no round-trip to neko), or {}."""
    path = getattr(ctx, "config_path", None)
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, TypeError, ValueError):  # TOMLDecodeError is a ValueError
        return {}


def _feature(section: dict, name: str) -> tuple[bool, dict]:
    """Whether `[plugin.<name>] enabled` is true, and that table."""
    table = section.get(name)
    if not isinstance(table, dict):
        return False, {}
    value = table.get("enabled", False)
    if isinstance(value, str):
        enabled = value.strip().lower() in ("true", "1", "yes", "on")
    else:
        enabled = isinstance(value, (bool, int)) and bool(value)
    return enabled, table


def _plugin_dir(ctx: Any) -> Path:
    plugin_dir = getattr(ctx, "plugin_dir", None)
    if plugin_dir:
        return Path(plugin_dir)
    path = getattr(ctx, "config_path", None)
    return Path(path).parent if path else Path.cwd()


def _set(obj: Any, name: str, value: Any) -> None:
    # A subclass may define the name as a read-only property; it then keeps its own.
    try:
        setattr(obj, name, value)
    except AttributeError:
        pass


class NekoPluginBase:
    """Base class of plugins: `self.ctx`, `self.config`, `self.plugins`, `self.logger`,
    `self.store` (PluginStore) and `self.db` (PluginDatabase).

    The constructor never waits for the supervisor: it only reads the plugin's own plugin.toml
    (`[plugin.store]` / `[plugin.database]` `enabled`) and opens nothing; the store and database
    files are made on first use.
    """

    __freezable__: list = []
    __persist_mode__: str = "off"

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self._plugin_id = str(getattr(ctx, "plugin_id", None) or "plugin")
        _set(self, "config", PluginConfig(ctx))
        _set(self, "plugins", Plugins(ctx))
        _set(self, "logger", getattr(ctx, "logger", None) or get_plugin_logger(self._plugin_id))
        self.file_logger: Optional[PluginLogger] = None
        self._system_info: Optional[SystemInfo] = None
        self._config_dir: Optional[Path] = None
        self._bus: Any = None
        doc = _plugin_toml(ctx)
        section = doc.get("plugin") if isinstance(doc.get("plugin"), dict) else {}
        plugin_dir = _plugin_dir(ctx)
        logger = getattr(ctx, "logger", None)
        self._state_persistence = StatePersistence(
            self._plugin_id,
            plugin_dir,
            freezable=getattr(self, "__freezable__", []),
            backend=state_backend(doc),
            mode=persist_mode(doc, type(self)),
            logger=logger,
        )
        self._freeze_checkpoint = self._state_persistence
        store_on, _ = _feature(section, "store")
        db_on, db_table = _feature(section, "database")
        name = db_table.get("name")
        db_name = name.strip() if isinstance(name, str) and name.strip() else None
        _set(self, "store", PluginStore(self._plugin_id, plugin_dir, logger=logger, enabled=store_on))
        _set(self, "db", PluginDatabase(self._plugin_id, plugin_dir, logger=logger, enabled=db_on, db_name=db_name))

    # Plugins written for the reference assign these in `__init__` (`self.plugin_id =
    # ctx.plugin_id`), so each is a property with a setter.
    @property
    def plugin_id(self) -> str:
        return self._plugin_id

    @plugin_id.setter
    def plugin_id(self, value: Any) -> None:
        self._plugin_id = str(value)

    @property
    def config_dir(self) -> Path:
        if self._config_dir is not None:
            return self._config_dir
        path = getattr(self.ctx, "config_path", None)
        return Path(path).parent if path else Path.cwd()

    @config_dir.setter
    def config_dir(self, value: Any) -> None:
        self._config_dir = Path(value)

    @property
    def bus(self) -> Any:
        return self._bus if self._bus is not None else self.ctx.bus

    @bus.setter
    def bus(self, value: Any) -> None:
        self._bus = value

    @property
    def system_info(self) -> SystemInfo:
        if self._system_info is None:
            self._system_info = SystemInfo(self.ctx)
        return self._system_info

    @system_info.setter
    def system_info(self, value: Any) -> None:
        self._system_info = value

    def get_input_schema(self) -> dict:
        """The plugin-level `input_schema` class attribute, or {}."""
        schema = getattr(type(self), "input_schema", None)
        return dict(schema) if isinstance(schema, dict) else {}

    def collect_entries(self) -> dict[str, EventHandler]:
        """`{entry_id: EventHandler}` for every `@plugin_entry` member."""
        out: dict[str, EventHandler] = {}
        for found in scan_event_handlers(self):
            if found.meta.event_type == "plugin_entry":
                out[found.meta.id] = EventHandler(meta=found.meta, handler=found.handler)
        return out

    def report_status(self, status: dict) -> None:
        """Sends the plugin's own status dict to neko."""
        self.ctx.update_status(status)

    def enable_file_logging(self, log_level: Any = None, max_bytes: Optional[int] = None, backup_count: Optional[int] = None, max_files: Optional[int] = None) -> PluginLogger:
        """A logger writing to stderr and `<plugin dir>/logs/<id>_<YYYYmmdd_HHMMSS>.log`, stored as
        `self.file_logger`."""
        enable = getattr(self.ctx, "enable_file_logging", None)
        if callable(enable):
            logger = enable(log_level=log_level, max_bytes=max_bytes, backup_count=backup_count, max_files=max_files)
        else:
            logger = enable_plugin_file_logging(self._plugin_id, self.config_dir, log_level, max_bytes, backup_count, max_files)
        self.file_logger = logger
        return logger


__all__ = ["NekoPluginBase", "PluginMeta", "NEKO_PLUGIN_META_ATTR", "NEKO_PLUGIN_TAG"]
