"""Event metadata; the model lives in `plugin.sdk.shared.core.events` (shared with later SDKs)."""

from .shared.constants import EVENT_META_ATTR
from .shared.core.events import EntryKind, EventHandler, EventMeta, WorkerConfig

__all__ = ["EventMeta", "EventHandler", "EntryKind", "WorkerConfig", "EVENT_META_ATTR"]
