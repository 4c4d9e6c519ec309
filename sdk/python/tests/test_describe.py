"""`python -m plugin.describe`: a plugin's entries, read without constructing it."""

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN_TOML = """
[plugin]
id = "lazy"
entry = "plugins.lazy:Lazy"
entries = [{ id = "plain", name = "Plain", description = "listed in plugin.toml" }, { id = "ghost" }]
"""

PLUGIN_CODE = '''
from plugin.sdk import NekoPluginBase, lifecycle, plugin_entry

print("module output on stdout")


class Lazy(NekoPluginBase):
    def __init__(self, ctx):
        raise RuntimeError("describe must not construct the plugin")

    @plugin_entry(id="greet", name="Greet", description="says hello",
                  input_schema={"type": "object", "properties": {"who": {"type": "string"}}})
    async def greet(self, who="you", **_):
        return {"hello": who}

    @lifecycle(id="startup")
    def startup(self):
        pass

    def plain(self, **_):
        return {}
'''


def describe(tmp_path: Path, code: str = PLUGIN_CODE, entry: str = "plugins.lazy:Lazy"):
    folder = tmp_path / "lazy"
    folder.mkdir(exist_ok=True)
    (folder / "plugin.toml").write_text(PLUGIN_TOML)
    (folder / "__init__.py").write_text(code)
    env = dict(os.environ)
    env.update({
        "NEKO_PLUGIN_ID": "lazy",
        "NEKO_PLUGIN_DIR": str(folder),
        "NEKO_PLUGIN_CONFIG": str(folder / "plugin.toml"),
        "NEKO_PLUGINS_ROOT": str(tmp_path),
        "NEKO_PLUGIN_ENTRY": entry,
    })
    return subprocess.run([sys.executable, "-m", "plugin.describe"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)


def test_entries_are_read_without_constructing_the_plugin(tmp_path):
    done = describe(tmp_path)
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("NEKO_DESCRIBE ")]
    assert len(answers) == 1, done.stdout
    entries = json.loads(answers[0][len("NEKO_DESCRIBE "):])["entries"]
    by_id = {e["id"]: e for e in entries}
    assert set(by_id) == {"greet", "plain"}, entries  # not the lifecycle hook, not "ghost"
    assert by_id["greet"]["name"] == "Greet"
    assert by_id["greet"]["description"] == "says hello"
    assert by_id["greet"]["input_schema"]["properties"]["who"]["type"] == "string"
    assert by_id["plain"]["description"] == "listed in plugin.toml"
    assert "ghost" in done.stderr  # the toml entry that names no method is reported


def test_a_module_that_fails_to_import_is_an_error(tmp_path):
    done = describe(tmp_path, code="raise ImportError('missing dependency')\n")
    assert done.returncode == 1
    assert "NEKO_DESCRIBE" not in done.stdout
    assert "missing dependency" in done.stderr


def test_an_entry_that_is_not_a_class_is_an_error(tmp_path):
    done = describe(tmp_path, code="Lazy = 42\n")
    assert done.returncode == 1
    assert "is not a class" in done.stderr
