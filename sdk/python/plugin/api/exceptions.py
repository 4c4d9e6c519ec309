"""The reference's exception hierarchy (`plugin/api/exceptions.py`): every class derives from
`PluginError`, and each one's message is worded as the reference words it, so plugin code that
raises or catches them, or matches their text, works unchanged."""

from __future__ import annotations

from typing import Any


class PluginError(Exception):
    """Base class of the plugin system's errors."""


class PluginNotFoundError(PluginError):
    def __init__(self, plugin_id: str):
        self.plugin_id = plugin_id
        super().__init__(f"Plugin '{plugin_id}' not found")


class PluginNotRunningError(PluginError):
    def __init__(self, plugin_id: str, status: str = "unknown"):
        self.plugin_id, self.status = plugin_id, status
        super().__init__(f"Plugin '{plugin_id}' is not running (status: {status})")


class PluginTimeoutError(PluginError):
    def __init__(self, plugin_id: str, entry_id: str, timeout: float):
        self.plugin_id, self.entry_id, self.timeout = plugin_id, entry_id, timeout
        super().__init__(f"Plugin '{plugin_id}' entry '{entry_id}' timed out after {timeout}s")


class PluginExecutionError(PluginError):
    def __init__(self, plugin_id: str, entry_id: str, error: Any):
        self.plugin_id, self.entry_id, self.error = plugin_id, entry_id, error
        super().__init__(f"Plugin '{plugin_id}' entry '{entry_id}' execution failed: {error}")


class PluginCommunicationError(PluginError):
    def __init__(self, plugin_id: str, message: str):
        self.plugin_id, self.message = plugin_id, message
        super().__init__(f"Communication error with plugin '{plugin_id}': {message}")


class PluginLoadError(PluginError):
    def __init__(self, plugin_id: str, reason: str):
        self.plugin_id, self.reason = plugin_id, reason
        super().__init__(f"Failed to load plugin '{plugin_id}': {reason}")


class PluginImportError(PluginError):
    def __init__(self, entry_point: str, reason: str):
        self.entry_point, self.reason = entry_point, reason
        super().__init__(f"Failed to import plugin class '{entry_point}': {reason}")


class PluginLifecycleError(PluginError):
    def __init__(self, plugin_id: str, event_type: str, reason: str):
        self.plugin_id, self.event_type, self.reason = plugin_id, event_type, reason
        super().__init__(f"Lifecycle event '{event_type}' failed for plugin '{plugin_id}': {reason}")


class PluginTimerError(PluginError):
    def __init__(self, plugin_id: str, timer_id: str, reason: str):
        self.plugin_id, self.timer_id, self.reason = plugin_id, timer_id, reason
        super().__init__(f"Timer '{timer_id}' failed for plugin '{plugin_id}': {reason}")


class PluginEntryNotFoundError(PluginError):
    def __init__(self, plugin_id: str, entry_id: str):
        self.plugin_id, self.entry_id = plugin_id, entry_id
        super().__init__(f"Entry '{entry_id}' not found in plugin '{plugin_id}'")


class PluginMetadataError(PluginError):
    def __init__(self, plugin_id: str, reason: str):
        self.plugin_id, self.reason = plugin_id, reason
        super().__init__(f"Invalid metadata for plugin '{plugin_id}': {reason}")


class PluginQueueError(PluginError):
    def __init__(self, operation: str, reason: str):
        self.operation, self.reason = operation, reason
        super().__init__(f"Queue operation '{operation}' failed: {reason}")


__all__ = [
    "PluginError",
    "PluginNotFoundError",
    "PluginNotRunningError",
    "PluginTimeoutError",
    "PluginExecutionError",
    "PluginCommunicationError",
    "PluginLoadError",
    "PluginImportError",
    "PluginLifecycleError",
    "PluginTimerError",
    "PluginEntryNotFoundError",
    "PluginMetadataError",
    "PluginQueueError",
]
