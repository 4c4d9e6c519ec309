"""neko's Python plugin package.

`plugin.sdk` is what plugins import; `python -m plugin.runner` is what neko starts. The package is
kept light on purpose: importing `plugin` loads nothing else. As in the reference, the plugin
system's exception classes (`plugin.api.exceptions`) are also reachable here, loaded on first use.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    from .api import exceptions

    if name in exceptions.__all__:
        return getattr(exceptions, name)
    raise AttributeError(f"module 'plugin' has no attribute {name!r}")
