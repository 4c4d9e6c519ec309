"""The reference's `plugin.settings`: its setting names, read from the same environment variables
with the same defaults, so plugin code that imports them (log levels, timeouts, endpoints) runs
unchanged. As in the reference, a value that does not parse falls back to the default. What neko
itself runs with is `ctx.get_system_config()`; these are what a plugin sees at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_TRUE = {"true", "1", "yes", "on"}


def _str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def _float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _bool(name: str, default: bool, true: set[str] = _TRUE) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in true


def _plugins_root() -> str:
    # Inside a plugin neko started: the folder that holds the plugins (where neko scanned them).
    root = os.environ.get("NEKO_PLUGINS_ROOT", "").strip()
    plugin_dir = os.environ.get("NEKO_PLUGIN_DIR", "").strip()
    return root or (str(Path(plugin_dir).parent) if plugin_dir else str(Path(__file__).parent / "plugins"))


PLUGIN_CONFIG_ROOT = Path(_str("PLUGIN_CONFIG_ROOT", _plugins_root())).expanduser().resolve()
EVENT_QUEUE_MAX = _int("NEKO_EVENT_QUEUE_MAX", 1000)
LIFECYCLE_QUEUE_MAX = _int("NEKO_LIFECYCLE_QUEUE_MAX", 1000)
MESSAGE_QUEUE_MAX = _int("NEKO_MESSAGE_QUEUE_MAX", 1000)
EXPORT_INLINE_BINARY_MAX_BYTES = _int("NEKO_EXPORT_INLINE_BINARY_MAX_BYTES", 262144)
RUN_TOKEN_TTL_SECONDS = _int("NEKO_RUN_TOKEN_TTL_SECONDS", 3600)
BLOB_UPLOAD_MAX_BYTES = _int("NEKO_BLOB_UPLOAD_MAX_BYTES", 209715200)
PLUGIN_EXECUTION_TIMEOUT = _float("NEKO_PLUGIN_EXECUTION_TIMEOUT", 30.0)
PLUGIN_TRIGGER_TIMEOUT = _float("NEKO_PLUGIN_TRIGGER_TIMEOUT", 10.0)
PLUGIN_SHUTDOWN_TIMEOUT = _float("NEKO_PLUGIN_SHUTDOWN_TIMEOUT", 5.0)
PLUGIN_SHUTDOWN_TOTAL_TIMEOUT = _int("PLUGIN_SHUTDOWN_TOTAL_TIMEOUT", _int("NEKO_PLUGIN_SHUTDOWN_TOTAL_TIMEOUT", 30))
QUEUE_GET_TIMEOUT = _float("NEKO_QUEUE_GET_TIMEOUT", 1.0)
BUS_SDK_POLL_INTERVAL_SECONDS = _float("NEKO_BUS_SDK_POLL_INTERVAL_SECONDS", 0.002)
STATUS_CONSUMER_SHUTDOWN_TIMEOUT = _float("NEKO_STATUS_CONSUMER_SHUTDOWN_TIMEOUT", 5.0)
PROCESS_SHUTDOWN_TIMEOUT = _float("NEKO_PROCESS_SHUTDOWN_TIMEOUT", 5.0)
PROCESS_TERMINATE_TIMEOUT = _float("NEKO_PROCESS_TERMINATE_TIMEOUT", 1.0)
COMMUNICATION_THREAD_POOL_MAX_WORKERS = max(32, (os.cpu_count() or 1) + 8)
MESSAGE_QUEUE_DEFAULT_MAX_COUNT = _int("NEKO_MESSAGE_QUEUE_DEFAULT_MAX_COUNT", 100)
STATUS_MESSAGE_DEFAULT_MAX_COUNT = _int("NEKO_STATUS_MESSAGE_DEFAULT_MAX_COUNT", 100)
NEKO_PLUGIN_META_ATTR = "__neko_plugin_meta__"
NEKO_PLUGIN_TAG = "__neko_plugin__"
EVENT_META_ATTR = "__neko_event_meta__"
STATUS_CONSUMER_SLEEP_INTERVAL = MESSAGE_CONSUMER_SLEEP_INTERVAL = RESULT_CONSUMER_SLEEP_INTERVAL = 0.1
PLUGIN_LOG_MESSAGE_FORWARD = _bool("NEKO_PLUGIN_LOG_MESSAGE_FORWARD", True)
PLUGIN_LOG_SYNC_CALL_WARNINGS = _bool("NEKO_PLUGIN_LOG_SYNC_CALL_WARNINGS", True)
PLUGIN_LOG_BUS_SUBSCRIPTIONS = _bool("NEKO_PLUGIN_LOG_BUS_SUBSCRIPTIONS", True)
PLUGIN_LOG_BUS_SUBSCRIBE_REQUESTS = _bool("NEKO_PLUGIN_LOG_BUS_SUBSCRIBE_REQUESTS", True)
PLUGIN_LOG_BUS_SDK_TIMEOUT_WARNINGS = _bool("NEKO_PLUGIN_LOG_BUS_SDK_TIMEOUT_WARNINGS", True)
PLUGIN_LOG_CTX_STATUS_UPDATE = _bool("NEKO_PLUGIN_LOG_CTX_STATUS_UPDATE", True)
PLUGIN_LOG_CTX_MESSAGE_PUSH = _bool("NEKO_PLUGIN_LOG_CTX_MESSAGE_PUSH", True)
PLUGIN_LOG_SERVER_DEBUG = _bool("NEKO_PLUGIN_LOG_SERVER_DEBUG", False)
MESSAGE_SCHEMA_STRICT = _bool("NEKO_MESSAGE_SCHEMA_STRICT", True)
MESSAGE_SCHEMA_ALLOW_UNSAFE = _bool("NEKO_MESSAGE_SCHEMA_ALLOW_UNSAFE", True)
MESSAGE_SCHEMA_WARN_UNKNOWN_FIELDS = _bool("NEKO_MESSAGE_SCHEMA_WARN_UNKNOWN_FIELDS", True)
PLUGIN_MESSAGE_FORWARD_LOG_DEDUP_WINDOW_SECONDS = _float("NEKO_PLUGIN_MESSAGE_FORWARD_LOG_DEDUP_WINDOW_SECONDS", 1.0)
PLUGIN_BUS_CHANGE_LOG_DEDUP_WINDOW_SECONDS = _float("NEKO_PLUGIN_BUS_CHANGE_LOG_DEDUP_WINDOW_SECONDS", 1.0)
MESSAGE_PLANE_BACKEND = _str("NEKO_MESSAGE_PLANE_BACKEND", "python")
MESSAGE_PLANE_RUN_MODE = _str("NEKO_MESSAGE_PLANE_RUN_MODE", "external")
MESSAGE_PLANE_VALIDATE_MODE = _str("NEKO_MESSAGE_PLANE_VALIDATE_MODE", "strict")
MESSAGE_PLANE_ZMQ_RPC_ENDPOINT = _str("NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT", _str("NEKO_MESSAGE_PLANE_RPC", "tcp://127.0.0.1:38865"))
MESSAGE_PLANE_ZMQ_PUB_ENDPOINT = _str("NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT", _str("NEKO_MESSAGE_PLANE_PUB", "tcp://127.0.0.1:38866"))
MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT = _str("NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT", _str("NEKO_MESSAGE_PLANE_INGEST", "tcp://127.0.0.1:38867"))
MESSAGE_PLANE_PAYLOAD_MAX_BYTES = _int("NEKO_MESSAGE_PLANE_PAYLOAD_MAX_BYTES", 262144)
MESSAGE_PLANE_INGEST_SNDTIMEO_MS = _int("NEKO_MESSAGE_PLANE_INGEST_SNDTIMEO_MS", 1000)
PLUGIN_ZMQ_MESSAGE_PUSH_BATCH_SIZE = _int("NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_BATCH_SIZE", 256)
PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS = _int("NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS", 5)
SYNC_CALL_IN_HANDLER_POLICY = _str("NEKO_PLUGIN_SYNC_CALL_POLICY", "warn")
PLUGIN_LOG_LEVEL = "INFO"
PLUGIN_LOG_MAX_BYTES = 5 * 1024 * 1024
PLUGIN_LOG_BACKUP_COUNT = 10
PLUGIN_LOG_MAX_FILES = 20
PLUGIN_STATE_BACKEND_DEFAULT = PLUGIN_FREEZE_BACKEND_DEFAULT = _str("NEKO_PLUGIN_STATE_BACKEND", "off")
PLUGIN_STORE_BACKEND_DEFAULT = _str("NEKO_PLUGIN_STORE_BACKEND", "off")
PLUGIN_ENABLE_DEPENDENCY_CHECK = _bool("PLUGIN_ENABLE_DEPENDENCY_CHECK", False, {"true", "1", "yes"})
PLUGIN_ENABLE_ID_CONFLICT_CHECK = _bool("PLUGIN_ENABLE_ID_CONFLICT_CHECK", False, {"true", "1", "yes"})
NEKO_LOGURU_LEVEL = _str("NEKO_LOGURU_LEVEL", "INFO")


def validate_config() -> None:
    """The reference checks its bounds here; neko checks its own settings when it starts."""


def get_settings() -> dict[str, Any]:
    """Every setting by name."""
    return {name: globals()[name] for name in __all__ if name not in ("validate_config", "get_settings")}


__all__ = [name for name in list(globals()) if name.isupper() and not name.startswith("_")] + ["validate_config", "get_settings"]
