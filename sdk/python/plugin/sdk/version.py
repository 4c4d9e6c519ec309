"""The SDK version (checked by neko against `[plugin.sdk]` in plugin.toml)."""

from .shared.constants import SDK_VERSION

__all__ = ["SDK_VERSION"]
