"""The import surface plugins rely on, and the `plugins` namespace."""

import importlib

import pytest
import subprocess
import sys
import textwrap
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parents[1]

NAMES = """NekoPluginBase neko_plugin plugin_entry lifecycle message timer_interval custom_event on_event
worker plugin ok fail ErrorCode SDK_VERSION PluginConfig Plugins EventMeta EventHandler EVENT_META_ATTR
SystemInfo EntryKind PERSIST_ATTR WORKER_MODE_ATTR NEKO_PLUGIN_META_ATTR NEKO_PLUGIN_TAG MemoryClient
StatePersistence EXTENDED_TYPES PluginContextProtocol CHECKPOINT_ATTR PluginMeta""".split()

MODULES = [
    "plugin.sdk.base",
    "plugin.sdk.decorators",
    "plugin.sdk.events",
    "plugin.sdk.responses",
    "plugin.sdk.config",
    "plugin.sdk.plugins",
    "plugin.sdk.logger",
    "plugin.sdk.bus",
    "plugin.sdk.bus.messages",
    "plugin.sdk.bus.events",
    "plugin.sdk.bus.lifecycle",
    "plugin.sdk.bus.memory",
    "plugin.sdk.bus.types",
    "plugin.sdk.version",
    "plugin.sdk.system_info",
    "plugin.sdk.errors",
    "plugin.sdk.store",
    "plugin.sdk.database",
    "plugin.sdk.memory",
    "plugin.sdk.shared.constants",
    "plugin.sdk.shared.core.events",
    "plugin.plugins",
]


def test_public_names():
    sdk = importlib.import_module("plugin.sdk")
    for name in NAMES:
        assert hasattr(sdk, name), name
    assert sdk.SDK_VERSION == "0.1.0"
    assert sdk.plugin.entry is sdk.plugin_entry


def test_modules_import():
    for name in MODULES:
        importlib.import_module(name)
    from plugin.sdk.events import EventMeta as A
    from plugin.sdk.shared.core.events import EventMeta as B

    assert A is B


def test_plugins_namespace_resolves_to_the_plugins_root(tmp_path):
    root = tmp_path / "my_plugins"  # the root need not be called "plugins"
    pkg = root / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .helpers import VALUE\nfrom . import helpers\n")
    (pkg / "helpers.py").write_text("VALUE = 42\n")
    script = textwrap.dedent(
        f"""
        import sys
        from plugin._runtime import namespace
        namespace.install({str(root)!r})
        import plugins.demo
        import plugin.plugins.demo.helpers as h2
        from plugin.plugins import demo as d2
        assert plugins.demo.VALUE == 42
        assert d2 is plugins.demo, "one module object per file"
        assert h2 is plugins.demo.helpers
        assert plugins.demo.__spec__.name == "plugins.demo"
        assert sys.modules["plugin.plugins"] is sys.modules["plugins"]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(SDK_DIR), "PATH": ""}, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_reference_exception_hierarchy():
    import plugin
    from plugin.api.exceptions import PluginError, PluginExecutionError, PluginNotRunningError, PluginTimeoutError

    assert issubclass(PluginTimeoutError, PluginError) and plugin.PluginError is PluginError
    assert str(PluginExecutionError("p", "entry e", "boom")) == "Plugin 'p' entry 'entry e' execution failed: boom"
    assert str(PluginNotRunningError("p")) == "Plugin 'p' is not running (status: unknown)"
    assert str(PluginTimeoutError("p", "e", 1.5)) == "Plugin 'p' entry 'e' timed out after 1.5s"
    with pytest.raises(AttributeError):
        plugin.nothing_here
