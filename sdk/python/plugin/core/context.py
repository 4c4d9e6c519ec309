"""`from plugin.core.context import PluginContext` (the reference's location of the host context)."""

from .._runtime.context import PluginContext

__all__ = ["PluginContext"]
