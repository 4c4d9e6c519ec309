"""The plugin SDK: everything a plugin imports.

    from plugin.sdk import NekoPluginBase, neko_plugin, plugin_entry, lifecycle, ok, fail
"""

from .base import NekoPluginBase, PluginMeta
from .config import PluginConfig
from .database import PluginDatabase
from .decorators import (
    custom_event,
    lifecycle,
    message,
    neko_plugin,
    on_event,
    plugin,
    plugin_entry,
    timer_interval,
    worker,
)
from .errors import ErrorCode, PluginCallError, PluginConfigError
from .events import EntryKind, EventHandler, EventMeta, WorkerConfig
from .logger import PluginLogger, get_plugin_logger
from .memory import MemoryClient
from .plugins import Plugins
from .responses import fail, ok
from .shared.constants import (
    CHECKPOINT_ATTR,
    EVENT_META_ATTR,
    HOOK_META_ATTR,
    NEKO_PLUGIN_META_ATTR,
    NEKO_PLUGIN_TAG,
    PERSIST_ATTR,
    SDK_VERSION,
    WORKER_MODE_ATTR,
)
from .state import EXTENDED_TYPES, StatePersistence
from .store import PluginStore
from .system_info import SystemInfo
from .types import PluginContextProtocol

__all__ = [
    "NekoPluginBase",
    "PluginMeta",
    "neko_plugin",
    "plugin_entry",
    "lifecycle",
    "message",
    "timer_interval",
    "custom_event",
    "on_event",
    "worker",
    "plugin",
    "ok",
    "fail",
    "ErrorCode",
    "SDK_VERSION",
    "PluginConfig",
    "PluginConfigError",
    "Plugins",
    "PluginCallError",
    "EventMeta",
    "EventHandler",
    "EVENT_META_ATTR",
    "SystemInfo",
    "MemoryClient",
    "PluginStore",
    "PluginDatabase",
    "StatePersistence",
    "EXTENDED_TYPES",
    "PluginContextProtocol",
    "EntryKind",
    "WorkerConfig",
    "PERSIST_ATTR",
    "CHECKPOINT_ATTR",
    "WORKER_MODE_ATTR",
    "HOOK_META_ATTR",
    "NEKO_PLUGIN_META_ATTR",
    "NEKO_PLUGIN_TAG",
    "PluginLogger",
    "get_plugin_logger",
]
