"""The `plugins` namespace: `import plugins.<dir>` loads `$NEKO_PLUGINS_ROOT/<dir>`.

A module `plugins` whose `__path__` is the plugins root is put in `sys.modules`, and
`plugin.plugins` is made the same module. Submodules imported as `plugin.plugins.<x>` are aliases of
`plugins.<x>` (one module object per file), so relative imports and class identity work whichever
spelling a plugin uses.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path

CANONICAL = "plugins"
ALIAS = "plugin.plugins"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self._target = target
        self._real_spec = None

    def create_module(self, spec):  # returns the canonical module itself
        module = importlib.import_module(self._target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import machinery has just pointed `__spec__` at the alias; put the real one back.
        if self._real_spec is not None:
            module.__spec__ = self._real_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves `plugin.plugins.<x>` to the module `plugins.<x>`."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(ALIAS + "."):
            return None
        real = CANONICAL + fullname[len(ALIAS):]
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real))


def install(root: Path) -> types.ModuleType:
    """Makes `plugins` (and `plugin.plugins`) the namespace rooted at `root`. Idempotent."""
    root = Path(root).resolve()
    module = sys.modules.get(CANONICAL)
    if module is None or getattr(module, "__neko_plugins_root__", None) is None:
        module = types.ModuleType(CANONICAL, "Plugin packages (the folders under NEKO_PLUGINS_ROOT).")
        module.__path__ = [str(root)]  # type: ignore[attr-defined]
        module.__package__ = CANONICAL
        module.__spec__ = importlib.machinery.ModuleSpec(CANONICAL, None, is_package=True)
        module.__spec__.submodule_search_locations = [str(root)]
        module.__neko_plugins_root__ = str(root)  # type: ignore[attr-defined]
        sys.modules[CANONICAL] = module
    elif str(root) not in module.__path__:
        module.__path__.insert(0, str(root))
    sys.modules[ALIAS] = module
    import plugin as _pkg

    _pkg.plugins = module  # type: ignore[attr-defined]
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    return module
