//! Python plugins, run by neko's Python SDK in the environment neko manages.

use serde_json::json;

use crate::helper::{Neko, PythonPlugin, bundled_plugin, echo_plugin, signal, wait_for_async};

/// A plugin written the way reference plugins are, probing what the runtime does.
fn probe_plugin() -> PythonPlugin {
    PythonPlugin {
        dir: "probe",
        toml: r#"[plugin]
id = "probe"
name = "Probe"
version = "0.1.0"
entry = "plugins.probe:Probe"

[plugin.sdk]
supported = ">=0.1.0,<0.2.0"

[probe]
answer = 42
"#
        .into(),
        init_py: r#"
import asyncio
import time

from loguru import logger  # plugins written for the reference use their host's loguru

from plugin.sdk import NekoPluginBase, neko_plugin, plugin_entry, ok


@neko_plugin
class Probe(NekoPluginBase):
    input_schema = {"type": "object", "properties": {"probe": {"type": "boolean"}}}

    @plugin_entry(id="window", input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}})
    async def window(self, seconds: float = 0.5, **_):
        start = time.time()
        await asyncio.sleep(seconds)
        return {"start": start, "end": time.time()}

    @plugin_entry(id="ctx")
    def ctx_entry(self, _ctx=None, **kwargs):
        return ok(data={"run_id": self.ctx.run_id, "ctx_run_id": (_ctx or {}).get("run_id"), "answer": self.config.get_sync("probe.answer")})

    @plugin_entry(id="no_ctx")
    def no_ctx(self, x):
        return {"x": x}

    @plugin_entry(id="unserialisable")
    def unserialisable(self, **_):
        return {"when": object()}
"#
        .into(),
        files: Vec::new(),
    }
}

/// The bundled example's entries return the right data; a raising entry fails with the
/// exception's type and text.
#[tokio::test]
async fn bundled_python_example_serves_its_entries() {
    let neko = Neko::start_mixed(&[], &[bundled_plugin("hello")], "");
    neko.wait_running("hello").await;
    let info = neko.plugin("hello").await;
    let ids: Vec<&str> = info["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in ["greet", "add", "sleep", "boom", "slow"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let run = neko.run("hello", "greet", json!({"name": "neko"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["message"], "Hello, neko!");
    let run = neko.run("hello", "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(run["result"]["sum"], 5);
    // The reference's words for an entry that raised (its PluginExecutionError).
    let run = neko.run("hello", "boom", json!({})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "INTERNAL", "{run}");
    assert_eq!(
        run["error"]["message"],
        "Plugin 'hello' entry 'entry boom' execution failed: Invalid call: boom requested",
        "{run}"
    );
    assert_eq!(run["error"]["details"]["plugin_id"], "hello", "{run}");
    assert_eq!(
        run["error"]["details"]["exception_type"], "ValueError",
        "{run}"
    );
    let run = neko.run("hello", "add", json!({"a": 2})).await;
    assert_eq!(run["error"]["code"], "INTERNAL", "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Plugin 'hello' entry 'entry add' execution failed: Invalid call: "),
        "{run}"
    );
}

/// An entry past its timeout ends `timeout`, and the plugin keeps serving.
#[tokio::test]
async fn python_entry_past_its_timeout_ends_in_timeout() {
    let neko = Neko::start_mixed(&[], &[bundled_plugin("hello")], "");
    neko.wait_running("hello").await;
    let run = neko.run("hello", "slow", json!({})).await;
    assert_eq!(run["status"], "timeout", "{run}");
    let run = neko.run("hello", "greet", json!({"name": "again"})).await;
    assert_eq!(run["status"], "succeeded");
}

/// 20 concurrent runs of a slow async entry overlap in time: every one started before any ended.
#[tokio::test]
async fn concurrent_async_runs_do_not_serialise() {
    let neko = Neko::start_mixed(&[], &[probe_plugin()], "");
    neko.wait_running("probe").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (_, created) = neko
            .post(
                "/runs",
                &json!({"plugin_id": "probe", "entry_id": "window", "args": {"seconds": 1.0}}),
            )
            .await;
        ids.push(created["run_id"].as_str().unwrap().to_string());
    }
    let mut windows = Vec::new();
    for id in &ids {
        let run = neko.wait_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        windows.push((
            run["result"]["start"].as_f64().unwrap(),
            run["result"]["end"].as_f64().unwrap(),
        ));
    }
    let last_start = windows.iter().map(|w| w.0).fold(f64::MIN, f64::max);
    let first_end = windows.iter().map(|w| w.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "runs were serialised: last start {last_start} after first end {first_end}"
    );
}

/// `_ctx` reaches handlers that take it, `ctx.run_id` is set, handlers without `_ctx` still work,
/// config is readable, and an unserialisable result fails clearly.
#[tokio::test]
async fn python_invocation_contract() {
    let neko = Neko::start_mixed(&[], &[probe_plugin()], "");
    neko.wait_running("probe").await;
    let info = neko.plugin("probe").await;
    assert_eq!(
        info["input_schema"]["properties"]["probe"]["type"], "boolean",
        "the class's input_schema is the plugin's: {info}"
    );
    let run = neko.run("probe", "ctx", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["run_id"], run["run_id"]);
    assert_eq!(run["result"]["ctx_run_id"], run["run_id"]);
    assert_eq!(run["result"]["answer"], 42);
    let run = neko.run("probe", "no_ctx", json!({"x": 7})).await;
    assert_eq!(run["result"], json!({"x": 7}), "{run}");
    // As the reference fails it (when it JSON-encodes the response): INTERNAL, json's text.
    let run = neko.run("probe", "unserialisable", json!({})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "INTERNAL", "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(message.ends_with("is not JSON serializable"), "{run}");
}

/// `kill -9` of the Python process: restarted and serving.
#[tokio::test]
async fn killed_python_plugin_is_restarted() {
    let neko = Neko::start_mixed(&[], &[bundled_plugin("hello")], "");
    let pid = neko.wait_running("hello").await;
    signal(pid, libc::SIGKILL);
    wait_for_async(
        || async {
            let p = neko.plugin("hello").await;
            p["status"] == "running" && p["pid"].as_u64().is_some_and(|n| n as u32 != pid)
        },
        "python plugin restarted",
    )
    .await;
    let run = neko.run("hello", "greet", json!({"name": "back"})).await;
    assert_eq!(run["status"], "succeeded");
}

/// A syntax error in a Python plugin is reported in its status; the other plugins run.
#[tokio::test]
async fn python_syntax_error_is_reported_and_others_run() {
    let broken = PythonPlugin {
        dir: "broken_py",
        toml: "[plugin]\nid = \"broken_py\"\nentry = \"plugins.broken_py:Broken\"\n".into(),
        init_py: "from plugin.sdk import NekoPluginBase\nclass Broken(NekoPluginBase)\n    pass\n"
            .into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[broken, probe_plugin()], "");
    neko.wait_running("echo").await;
    neko.wait_running("probe").await;
    // Not registered, as the reference could not load it: listed apart with its error.
    let p = neko.wait_invalid("broken_py").await;
    assert!(p["error"].as_str().unwrap().contains("SyntaxError"), "{p}");
    let (_, available) = neko.get("/available").await;
    assert_eq!(available["plugins_count"], 2, "{available}");
    let run = neko.run("echo", "echo", json!({"ok": 1})).await;
    assert_eq!(run["status"], "succeeded");
}

/// A wheel of a one-module package `nekotestdep` (`VALUE = 41`), made with Python's zipfile.
fn test_wheel() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dep.whl");
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("nekotestdep/__init__.py", "VALUE = 41\n")
    info = "nekotestdep-0.1.dist-info/"
    z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: nekotestdep\nVersion: 0.1\n")
    z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: neko-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(info + "RECORD", "")
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

/// A plugin's requirements.txt is installed into its own site folder before it starts (here a
/// local wheel, so no network is needed); a requirement pip cannot install marks only that
/// plugin crashed, with pip's error, and is not retried.
#[tokio::test]
async fn plugin_requirements_are_installed_and_failures_stay_with_their_plugin() {
    let plugin = |dir: &'static str, requirements: &str| PythonPlugin {
        dir,
        toml: format!("[plugin]\nid = \"{dir}\"\nentry = \"plugins.{dir}:Dep\"\n"),
        init_py: r#"
from plugin.sdk import NekoPluginBase, plugin_entry


class Dep(NekoPluginBase):
    @plugin_entry(id="value")
    def value(self, **_):
        import nekotestdep
        return {"value": nekotestdep.VALUE + 1}
"#
        .into(),
        files: vec![
            ("requirements.txt", requirements.as_bytes().to_vec()),
            ("nekotestdep-0.1-py3-none-any.whl", test_wheel()),
        ],
    };
    let good = plugin(
        "withdep",
        "--no-index\n./nekotestdep-0.1-py3-none-any.whl\n",
    );
    let bad = plugin("baddep", "definitely not a requirement!!\n");
    let neko = Neko::start_mixed(&[], &[good, bad], "");
    neko.wait_running("withdep").await;
    let run = neko.run("withdep", "value", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["value"], 42);
    let p = neko.wait_invalid("baddep").await;
    let error = p["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("requirements.txt") && error.contains("Invalid requirement"),
        "{p}"
    );
    assert!(
        !neko.logged(&["baddep", "restarting"]),
        "a failed install is not retried"
    );
}

/// A Python plugin that does not start with neko (`auto_start = false`) is listed `stopped` with
/// the entries its code declares besides those plugin.toml lists, read in the background
/// without starting it (as the reference imports plugin modules at startup); started, it serves
/// them. One whose module cannot be imported keeps an empty list, and neko goes on.
#[tokio::test]
async fn idle_python_plugins_are_listed_with_their_entries() {
    let idle = PythonPlugin {
        dir: "idle_py",
        toml:
            "[plugin]\nid = \"idle_py\"\nentry = \"plugins.idle_py:Idle\"\nentries = [\"plain\"]\n\
               [plugin_runtime]\nauto_start = false\n"
                .into(),
        init_py: r#"
from plugin.sdk import NekoPluginBase, plugin_entry


class Idle(NekoPluginBase):
    def plain(self, **_):
        return {"plain": True}

    @plugin_entry(id="greet", name="Greet", description="says hello")
    def greet(self, who="you", **_):
        return {"hello": who}

    @plugin_entry(id="count")
    async def count(self, **_):
        return {"n": 2}
"#
        .into(),
        files: Vec::new(),
    };
    let broken = PythonPlugin {
        dir: "idle_broken",
        toml: "[plugin]\nid = \"idle_broken\"\nentry = \"plugins.idle_broken:Nope\"\n\
               [plugin_runtime]\nauto_start = false\n"
            .into(),
        init_py: "raise ImportError('no such dependency')\n".into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[], &[idle, broken], "");
    wait_for_async(
        || async {
            neko.plugin("idle_py").await["entries"]
                .as_array()
                .map(Vec::len)
                == Some(3)
        },
        "idle_py listed with its entries",
    )
    .await;
    let p = neko.plugin("idle_py").await;
    assert_eq!(p["status"], "stopped", "{p}");
    let entries = p["entries"].as_array().unwrap();
    let greet = entries.iter().find(|e| e["id"] == "greet").expect("greet");
    assert_eq!(greet["name"], "Greet");
    assert_eq!(greet["description"], "says hello");
    assert!(entries.iter().any(|e| e["id"] == "count"), "{p}");
    assert!(entries.iter().any(|e| e["id"] == "plain"), "{p}");

    let (status, body) = neko.admin_post("/plugin/idle_py/start").await;
    assert_eq!(status, 200, "{body}");
    let run = neko.run("idle_py", "greet", json!({"who": "neko"})).await;
    assert_eq!(run["result"], json!({"hello": "neko"}), "{run}");

    let b = neko.plugin("idle_broken").await;
    assert_eq!(b["status"], "stopped", "{b}");
    assert_eq!(b["entries"], json!([]), "{b}");
}

/// `lifecycle("reload")` runs when neko starts the plugin for a reload, after `startup`; a first
/// start, a plain stop/start and a crash restart run `startup` only.
#[tokio::test]
async fn reload_runs_the_reload_hook() {
    let plugin = PythonPlugin {
        dir: "reloading",
        toml: "[plugin]\nid = \"reloading\"\nentry = \"plugins.reloading:Hooks\"\n".into(),
        init_py: r#"
import os
from pathlib import Path

from plugin.sdk import NekoPluginBase, lifecycle, plugin_entry

LOG = Path(__file__).parent / "hooks.log"


class Hooks(NekoPluginBase):
    @lifecycle(id="startup")
    def started(self, **_):
        with open(LOG, "a") as f:
            f.write("startup\n")

    @lifecycle(id="reload")
    async def reloaded(self, **_):
        with open(LOG, "a") as f:
            f.write("reload\n")

    @plugin_entry(id="crash")
    def crash(self, **_):
        os._exit(3)
"#
        .into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[], &[plugin], "");
    neko.wait_running("reloading").await;
    let log = neko.plugins_dir.join("reloading/hooks.log");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_lines = |want: &'static str| {
        let lines = &lines;
        async move {
            wait_for_async(|| async { lines() == want }, want).await;
        }
    };
    wait_lines("startup\n").await;

    let (status, body) = neko.admin_post("/plugin/reloading/reload").await;
    assert_eq!(status, 200, "{body}");
    wait_lines("startup\nstartup\nreload\n").await;

    // A crash restart is not a reload.
    let _ = neko.create_run("reloading", "crash", json!({})).await;
    wait_lines("startup\nstartup\nreload\nstartup\n").await;
    neko.wait_running("reloading").await;
    assert_eq!(lines(), "startup\nstartup\nreload\nstartup\n");
}

/// `__freezable__` attributes are saved after each successful entry (`[plugin_state]`
/// persist_mode "auto", file backend) and come back when the process is restarted after a
/// crash, with `lifecycle("unfreeze")` run after `startup`; the saved copy is then cleared. With
/// the "memory" backend the state survives a reload of the same neko run.
#[tokio::test]
async fn freezable_state_survives_a_crash_and_a_reload() {
    let keeper = |id: &'static str, backend: &str| {
        PythonPlugin {
        dir: id,
        toml: format!(
            "[plugin]\nid = \"{id}\"\nentry = \"plugins.{id}:Keeper\"\n\n\
             [plugin_state]\npersist_mode = \"auto\"\nbackend = \"{backend}\"\n"
        ),
        init_py: r#"
import datetime
import os

from plugin.sdk import NekoPluginBase, lifecycle, plugin_entry


class Keeper(NekoPluginBase):
    __freezable__ = ["count", "seen", "since"]

    def __init__(self, ctx):
        super().__init__(ctx)
        self.count = 0
        self.seen = set()
        self.since = None
        self.unfrozen = False

    @lifecycle(id="unfreeze")
    def thawed(self, **_):
        self.unfrozen = True

    @plugin_entry(id="bump")
    def bump(self, tag="x", **_):
        self.count += 1
        self.seen.add(tag)
        self.since = self.since or datetime.date(2026, 1, 2)
        return {"count": self.count}

    @plugin_entry(id="peek", persist=False)
    def peek(self, **_):
        return {"count": self.count, "seen": sorted(self.seen), "since": str(self.since), "unfrozen": self.unfrozen}

    @plugin_entry(id="crash")
    def crash(self, **_):
        os._exit(3)
"#
        .into(),
        files: Vec::new(),
    }
    };
    let neko = Neko::start_mixed(
        &[],
        &[keeper("keeper", "file"), keeper("kept", "memory")],
        "",
    );
    for id in ["keeper", "kept"] {
        neko.wait_running(id).await;
        for tag in ["a", "b"] {
            let run = neko.run(id, "bump", json!({"tag": tag})).await;
            assert_eq!(run["status"], "succeeded", "{run}");
        }
    }
    assert!(neko.plugins_dir.join("keeper/.plugin_state").is_file());

    // A crash: the restarted process has the state back, and ran its unfreeze hook.
    let pid = neko.plugin("keeper").await["pid"].as_u64().unwrap();
    let _ = neko.create_run("keeper", "crash", json!({})).await;
    wait_for_async(
        || async {
            let p = neko.plugin("keeper").await;
            p["status"] == "running" && p["pid"].as_u64() != Some(pid)
        },
        "keeper restarted",
    )
    .await;
    let run = neko.run("keeper", "peek", json!({})).await;
    assert_eq!(
        run["result"],
        json!({"count": 2, "seen": ["a", "b"], "since": "2026-01-02", "unfrozen": true}),
        "{run}"
    );
    assert!(!neko.plugins_dir.join("keeper/.plugin_state").exists());

    // The memory backend: kept by this neko for a reload, never written to the plugin's folder.
    let (status, body) = neko.admin_post("/plugin/kept/reload").await;
    assert_eq!(status, 200, "{body}");
    let run = neko.run("kept", "peek", json!({})).await;
    assert_eq!(run["result"]["count"], 2, "{run}");
    assert_eq!(run["result"]["unfrozen"], true, "{run}");
    assert!(!neko.plugins_dir.join("kept/.plugin_state").exists());
}

/// A plugin whose `__init__` asks neko for something only a connected plugin can have (here
/// `self.plugins.require`, as reference plugins check their dependencies) still starts: the SDK
/// says HELLO with the entries its class declares and constructs it once connected, before any
/// call is served.
#[tokio::test]
async fn init_may_ask_neko_for_other_plugins() {
    let plugin = PythonPlugin {
        dir: "needy",
        toml: "[plugin]\nid = \"needy\"\nentry = \"plugins.needy:Needy\"\n".into(),
        init_py: r#"
from plugin.sdk import NekoPluginBase, plugin_entry


class Needy(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.dependency = self.plugins.require("echo")
        self.base = self.config.dump_base()

    @plugin_entry(id="dependency")
    def show(self, **_):
        return {"dependency": self.dependency["plugin_id"], "id": self.base["plugin"]["id"]}
"#
        .into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[plugin], "");
    neko.wait_running("needy").await;
    let run = neko.run("needy", "dependency", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["result"],
        json!({"dependency": "echo", "id": "needy"}),
        "{run}"
    );
    let entries = neko.plugin("needy").await["entries"].clone();
    assert_eq!(entries[0]["id"], "dependency", "{entries}");
}

/// A Python plugin whose module does not import, or whose class cannot be constructed, cannot
/// start as configured: the SDK exits 78 before HELLO, so neko reports why and does not restart
/// it (a retry would fail the same way); a manual start fails with the reason, and runs fail at
/// once instead of waiting for restarts.
#[tokio::test]
async fn a_plugin_that_cannot_be_constructed_is_not_restarted() {
    let broken = |id: &'static str, init_py: &str| PythonPlugin {
        dir: id,
        toml: format!("[plugin]\nid = \"{id}\"\nentry = \"plugins.{id}:Broken\"\n"),
        init_py: init_py.into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(
        &[],
        &[
            broken(
                "initboom",
                "from plugin.sdk import NekoPluginBase\n\n\nclass Broken(NekoPluginBase):\n    def __init__(self, ctx):\n        super().__init__(ctx)\n        raise RuntimeError('missing API key')\n",
            ),
            broken("importboom", "import module_that_does_not_exist\n"),
        ],
        "",
    );
    for (id, why) in [
        ("initboom", "missing API key"),
        ("importboom", "module_that_does_not_exist"),
    ] {
        let p = neko.wait_invalid(id).await;
        assert!(p["error"].as_str().unwrap_or_default().contains(why), "{p}");

        let (status, body) = neko.admin_post(&format!("/plugin/{id}/start")).await;
        assert!(status >= 400, "{status} {body}");
        assert!(body.to_string().contains(why), "{body}");
        let run = neko.run(id, "anything", json!({})).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"]["code"], "NOT_READY", "{run}");
        assert!(
            !neko.logged(&[id, "restarting"]),
            "a plugin that cannot start is not restarted"
        );
    }
}

/// `self.db` works out of the box, as in the reference's environment: the venv neko builds has
/// SQLAlchemy and aiosqlite; rows written in one run are read in the next, sync and async.
#[tokio::test]
async fn plugin_database_works_without_extra_requirements() {
    let plugin = PythonPlugin {
        dir: "dbuser",
        toml: "[plugin]\nid = \"dbuser\"\nentry = \"plugins.dbuser:DbUser\"\n\n[plugin.database]\nenabled = true\n".into(),
        init_py: r#"
from sqlalchemy import text

from plugin.sdk import NekoPluginBase, neko_plugin, ok, plugin_entry


@neko_plugin
class DbUser(NekoPluginBase):
    @plugin_entry(id="put")
    def put(self, name, **_):
        with self.db.session() as s:
            s.execute(text("CREATE TABLE IF NOT EXISTS t (name TEXT)"))
            s.execute(text("INSERT INTO t (name) VALUES (:n)"), {"n": name})
            s.commit()
        return ok(data={"stored": name})

    @plugin_entry(id="names")
    async def names(self, **_):
        async with self.db.async_session() as s:
            rows = await s.execute(text("SELECT name FROM t ORDER BY name"))
            return ok(data={"names": [r[0] for r in rows]})
"#
        .into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[], &[plugin], "");
    neko.wait_running("dbuser").await;
    for name in ["b", "a"] {
        let run = neko.run("dbuser", "put", json!({"name": name})).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let run = neko.run("dbuser", "names", json!({})).await;
    assert_eq!(run["result"]["names"], json!(["a", "b"]), "{run}");
}
