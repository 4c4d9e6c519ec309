//! Plugin-to-plugin calls through neko: chains, the deadlock detector, crashes and deadlines
//! along a chain, the A1 policy, `plugins.query` filters, and `GET /calls`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helper::{Neko, PluginDir, PythonPlugin, echo_plugin, signal, wait_for_async};

/// A Python plugin that relays calls to others (sync and async) and serves a few leaf entries.
/// `safety` is the body of its `[plugin.safety]` table.
fn caller(id: &'static str, safety: &str) -> PythonPlugin {
    PythonPlugin {
        dir: id,
        toml: format!(
            r#"[plugin]
id = "{id}"
name = "Caller {id}"
description = "relays calls ({id})"
version = "0.1.0"
entry = "plugins.{id}:Caller"

[plugin.sdk]
supported = ">=0.1.0,<0.2.0"

[plugin.safety]
{safety}
"#
        ),
        init_py: r#"
import asyncio
from pathlib import Path

from plugin.sdk import NekoPluginBase, custom_event, fail, neko_plugin, ok, plugin_entry


@neko_plugin
class Caller(NekoPluginBase):
    @custom_event(event_type="greet", id="hello")
    def greet(self, name="nobody"):
        return {"hi": name, "by": self.ctx.plugin_id}

    @plugin_entry(id="relay_event")
    async def relay_event(self, target, args=None):
        return await self.plugins.call_event(target, args or {})

    @plugin_entry(id="relay")
    def relay(self, target, args=None, timeout=10.0):
        # A synchronous handler waiting on another plugin (the reference's deadlock shape).
        return self.plugins.call_entry(target, args or {}, timeout=timeout)

    @plugin_entry(id="arelay")
    async def arelay(self, target, args=None, timeout=10.0):
        return await self.plugins.call_entry(target, args or {}, timeout=timeout)

    @plugin_entry(id="export_into")
    async def export_into(self, run_id):
        # Adds a result to another plugin's run (any plugin may, as in the reference).
        return await self.ctx.export_push_text(run_id=run_id, text=f"from {self.ctx.plugin_id}")

    @plugin_entry(id="delegate_export")
    async def delegate_export(self, target):
        return await self.plugins.call_entry(target, {"run_id": self.ctx.run_id})

    @plugin_entry(id="relay_short", timeout=1.0)
    async def relay_short(self, target, args=None):
        # Asks for 10 s, but its own call ends after 1 s: the callee gets no more than that.
        return await self.plugins.call_entry(target, args or {}, timeout=10.0)

    @plugin_entry(id="fan_out")
    async def fan_out(self, target, n):
        # n calls at once: requests and results travel in batch frames both ways.
        got = await asyncio.gather(*(self.plugins.call_entry(target, {"x": i}) for i in range(n)))
        return [g["value"] for g in got]

    @plugin_entry(id="adouble")
    async def adouble(self, x):
        return {"value": x * 2}

    @plugin_entry(id="double")
    def double(self, x):
        return {"value": x * 2, "by": self.ctx.plugin_id, "caller": self.ctx.caller_plugin_id}

    @plugin_entry(id="enveloped")
    def enveloped(self, x=0):
        return ok(data={"x": x}, message="fine")

    @plugin_entry(id="refusing")
    async def refusing(self):
        return fail("NOPE", "not today", details="abc")

    @plugin_entry(id="relay_whole")
    async def relay_whole(self, target):
        # The callee's raw return value, kept out of this entry's own envelope handling.
        return {"got": await self.plugins.call_entry(target, {})}

    @plugin_entry(id="sleepy")
    async def sleepy(self, seconds):
        marker = Path(__file__).parent / "cancelled"
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            marker.write_text("yes")
            raise
        return {"slept": seconds}

    @plugin_entry(id="list")
    async def list_plugins(self, filters=None):
        listed = await self.plugins.list(filters)
        return sorted(p["plugin_id"] for p in listed["plugins"])

    @plugin_entry(id="listed")
    async def listed(self, filters=None):
        return await self.plugins.list(filters)
"#
        .into(),
        files: Vec::new(),
    }
}

/// Starts neko with these callers (`(id, [plugin.safety] body)`) and native plugins, and returns
/// once all of them run.
async fn start(callers: &[(&'static str, &str)], native: &[PluginDir]) -> Neko {
    let python: Vec<PythonPlugin> = callers
        .iter()
        .map(|(id, safety)| caller(id, safety))
        .collect();
    let neko = Neko::start_mixed(native, &python, "");
    for id in callers
        .iter()
        .map(|(id, _)| *id)
        .chain(native.iter().map(|p| p.dir))
    {
        neko.wait_running(id).await;
    }
    neko
}

/// Asserts that `run` failed with `code` and a message containing `text`.
fn assert_failed(run: &Value, code: &str, text: &str) {
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], code, "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(text), "{text:?} not in {run}");
}

/// Runs `plugin.entry` and returns the terminal run with how long it took.
async fn timed_run(neko: &Neko, plugin: &str, entry: &str, args: Value) -> (Value, Duration) {
    let t = Instant::now();
    let run = neko.run(plugin, entry, args).await;
    (run, t.elapsed())
}

/// Hundreds of concurrent Python → Python calls (so batch frames both ways, through neko) each
/// get their own answer, to async and sync handlers alike.
#[tokio::test]
async fn a_burst_of_python_calls_gets_every_answer_right() {
    let neko = start(&[("fana", ""), ("fanb", "")], &[]).await;
    for entry in ["adouble", "double"] {
        let run = neko
            .run(
                "fana",
                "fan_out",
                json!({"target": format!("fanb:{entry}"), "n": 300}),
            )
            .await;
        assert_eq!(run["status"], "succeeded", "{entry}: {run}");
        let want: Vec<i64> = (0..300).map(|i| i * 2).collect();
        assert_eq!(run["result"], json!(want), "{entry}");
    }
}

/// An honest chain runs with the right data; cycles (two and three plugins, and a self-call)
/// are refused at once with DEADLOCK naming the cycle; a reentrant plugin may be called back;
/// every call leaves an `events` record and no edge behind.
#[tokio::test]
async fn chains_run_and_cycles_are_refused_at_once() {
    let neko = start(
        &[
            ("alpha", ""),
            ("beta", ""),
            ("gamma", ""),
            ("loop", "reentrant = true"),
        ],
        &[echo_plugin("echo", "")],
    )
    .await;

    // A → B: the callee's data, and the callee knows its caller.
    let run = neko
        .run(
            "alpha",
            "relay",
            json!({"target": "beta:double", "args": {"x": 21}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["result"],
        json!({"value": 42, "by": "beta", "caller": "alpha"}),
        "{run}"
    );
    // A custom event of another plugin (`pid:type:id`).
    let run = neko
        .run(
            "alpha",
            "relay_event",
            json!({"target": "beta:greet:hello", "args": {"name": "neko"}}),
        )
        .await;
    assert_eq!(run["result"], json!({"hi": "neko", "by": "beta"}), "{run}");
    let run = neko
        .run("alpha", "relay_event", json!({"target": "beta:greet:bye"}))
        .await;
    assert_eq!(run["error"]["code"], "NOT_FOUND", "{run}");
    // A → B → C, async relays.
    let run = neko
        .run(
            "alpha",
            "arelay",
            json!({"target": "beta:arelay", "args": {"target": "gamma:double", "args": {"x": 2}}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");

    // A → B → A: refused when B calls back, long before the 30 s timeout.
    let (run, took) = timed_run(
        &neko,
        "alpha",
        "relay",
        json!({"target": "beta:relay", "args": {"target": "alpha:double", "args": {"x": 1}, "timeout": 30}, "timeout": 30}),
    )
    .await;
    assert_failed(&run, "DEADLOCK", "alpha.relay → beta.relay → alpha");
    assert!(took < Duration::from_secs(10), "refused after {took:?}");

    // A self-call from a sync handler.
    let run = neko
        .run(
            "alpha",
            "relay",
            json!({"target": "alpha:double", "args": {"x": 1}}),
        )
        .await;
    assert_failed(&run, "DEADLOCK", "alpha.relay → alpha");

    // A → B → C → A names all three.
    let run = neko
        .run(
            "alpha",
            "relay",
            json!({"target": "beta:relay", "args": {"target": "gamma:relay", "args": {"target": "alpha:double", "args": {"x": 1}}}}),
        )
        .await;
    assert_failed(
        &run,
        "DEADLOCK",
        "alpha.relay → beta.relay → gamma.relay → alpha",
    );
    neko.wait_logged(&["plugin call refused", "gamma.relay → alpha"])
        .await;

    // A plugin written for re-entry may be called back (loop → beta → loop), and may call itself.
    let run = neko
        .run(
            "loop",
            "relay",
            json!({"target": "beta:relay", "args": {"target": "loop:double", "args": {"x": 5}}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let run = neko
        .run(
            "loop",
            "relay",
            json!({"target": "loop:double", "args": {"x": 5}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");

    // Undeclared entries and unknown plugins are refused by name.
    let run = neko
        .run("alpha", "arelay", json!({"target": "beta:nope"}))
        .await;
    assert_failed(
        &run,
        "NOT_FOUND",
        "Custom event 'plugin_entry.nope' not found",
    );
    let run = neko
        .run("alpha", "arelay", json!({"target": "ghost:x"}))
        .await;
    assert_eq!(run["error"]["code"], "NOT_FOUND", "{run}");

    // A callee adds its result to its caller's run.
    let run = neko
        .run(
            "alpha",
            "delegate_export",
            json!({"target": "beta:export_into"}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let run_id = run["run_id"].as_str().unwrap();
    let (status, exports) = neko.get(&format!("/runs/{run_id}/export")).await;
    assert_eq!(status, 200, "{exports}");
    assert!(
        exports["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["text"] == "from beta"),
        "{exports}"
    );

    // Nothing is left in flight, and the calls were recorded.
    let (status, calls) = neko.admin_get("/calls").await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["in_flight"], 0, "{calls}");
    assert!(calls["refused"].as_u64().unwrap() >= 3, "{calls}");
    let (status, _) = neko.get("/calls").await;
    assert_eq!(status, 401, "GET /calls is for admins");
    let records = recent_events(&neko).await;
    let call = records
        .iter()
        .find(|r| r["type"] == "plugin_call" && r["callee"] == "beta" && r["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no plugin_call record: {records:?}"));
    assert_eq!(call["caller"], "alpha");
    assert!(call["caller_entry"].is_string(), "{call}");
    assert!(call["duration_ms"].as_f64().is_some(), "{call}");
    // A call is recorded once, as plugin_call; plugin_triggered is for runs (as the reference).
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "plugin_triggered" && r["plugin_id"] == "alpha"),
        "the runs are recorded: {records:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["type"] == "plugin_triggered" && r["plugin_id"] == "beta"),
        "beta was only called by alpha: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "plugin_call" && r["outcome"] == "DEADLOCK"),
        "refusals are recorded too"
    );
}

/// The `events` store's recent records, read by the echo plugin over the message plane.
async fn recent_events(neko: &Neko) -> Vec<Value> {
    let run = neko
        .run("echo", "recent", json!({"store": "events", "limit": 200}))
        .await;
    run["result"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{run}"))
        .iter()
        .map(|e| e["payload"].clone())
        .collect()
}

/// A callee killed mid-call fails its waiting caller at once with PLUGIN_CRASHED; a caller killed
/// mid-call has its callee's handler cancelled; `GET /calls` shows the call and the wait-for edge
/// while it is in flight.
#[tokio::test]
async fn a_crashed_callee_fails_its_caller_at_once() {
    let neko = start(&[("alpha", ""), ("beta", "")], &[]).await;
    let beta = neko.wait_running("beta").await;
    let created = neko
        .create_run(
            "alpha",
            "arelay",
            json!({"target": "beta:sleepy", "args": {"seconds": 60}, "timeout": 60}),
        )
        .await;
    wait_for_async(
        || async { neko.admin_get("/calls").await.1["in_flight"] == 1 },
        "the call in flight",
    )
    .await;
    let (_, calls) = neko.admin_get("/calls").await;
    assert_eq!(calls["calls"][0]["caller"], "alpha", "{calls}");
    assert_eq!(calls["calls"][0]["callee"], "beta", "{calls}");
    assert_eq!(calls["calls"][0]["entry_id"], "sleepy", "{calls}");
    assert_eq!(
        calls["wait_for"],
        json!([{"from": "alpha", "to": "beta", "calls": 1}]),
        "{calls}"
    );
    let killed = Instant::now();
    signal(beta, libc::SIGKILL);
    let run = neko.wait_run(created["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "PLUGIN_CRASHED", "{run}");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "caller failed {:?} after the kill",
        killed.elapsed()
    );
    wait_for_async(
        || async { neko.admin_get("/calls").await.1["in_flight"] == 0 },
        "the edge removed",
    )
    .await;

    // The other side: a caller killed mid-call cancels the callee's handler at once.
    neko.wait_running("beta").await;
    let alpha = neko.wait_running("alpha").await;
    let marker = neko.plugins_dir.join("beta").join("cancelled");
    neko.create_run(
        "alpha",
        "arelay",
        json!({"target": "beta:sleepy", "args": {"seconds": 60}, "timeout": 60}),
    )
    .await;
    wait_for_async(
        || async { neko.admin_get("/calls").await.1["in_flight"] == 1 },
        "the second call in flight",
    )
    .await;
    signal(alpha, libc::SIGKILL);
    wait_for_async(
        || async { marker.exists() },
        "the callee's handler cancelled",
    )
    .await;
    wait_for_async(
        || async { neko.admin_get("/calls").await.1["in_flight"] == 0 },
        "the edge removed after the caller died",
    )
    .await;
}

/// Deadlines shrink down a chain: a caller with 1 s left (its entry's own timeout) gives the
/// callee no more, and the callee's handler is cancelled; a caller's own short call timeout
/// gives it TIMEOUT after about that long.
#[tokio::test]
async fn deadlines_propagate_and_cancel_the_callee() {
    let neko = start(&[("alpha", ""), ("beta", "")], &[]).await;
    let marker = neko.plugins_dir.join("beta").join("cancelled");

    // The call's own timeout: 1 s, the callee would sleep 5 s.
    let (run, took) = timed_run(
        &neko,
        "alpha",
        "arelay",
        json!({"target": "beta:sleepy", "args": {"seconds": 5}, "timeout": 1}),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "TIMEOUT", "{run}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    wait_for_async(
        || async { marker.exists() },
        "the callee's handler cancelled",
    )
    .await;
    std::fs::remove_file(&marker).unwrap();

    // The caller's entry has 1 s; it asks for 10 s, the callee gets what is left.
    let (run, took) = timed_run(
        &neko,
        "alpha",
        "relay_short",
        json!({"target": "beta:sleepy", "args": {"seconds": 8}}),
    )
    .await;
    assert_eq!(run["status"], "timeout", "{run}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    wait_for_async(
        || async { marker.exists() },
        "the callee's handler cancelled at the caller's deadline",
    )
    .await;
}

/// A1: a sync call inside a handler warns by default and is refused under `reject`; the
/// async form is not checked. `plugins.list` filters work.
#[tokio::test]
async fn sync_call_policy_and_list_filters() {
    let neko = start(
        &[
            ("alpha", ""),
            ("strict", "sync_call_in_handler = \"reject\""),
            ("beta", ""),
        ],
        &[],
    )
    .await;
    let run = neko
        .run(
            "alpha",
            "relay",
            json!({"target": "beta:double", "args": {"x": 1}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    neko.wait_logged(&[
        "Sync call 'trigger_plugin_event' invoked inside handler (plugin_entry.relay)",
    ])
    .await;

    let run = neko
        .run(
            "strict",
            "relay",
            json!({"target": "beta:double", "args": {"x": 1}}),
        )
        .await;
    assert_eq!(run["status"], "failed", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "Sync call 'trigger_plugin_event' invoked inside handler (plugin_entry.relay). This may block the command loop and cause deadlocks/timeouts."
        ),
        "{message}"
    );
    let run = neko
        .run(
            "strict",
            "arelay",
            json!({"target": "beta:double", "args": {"x": 1}}),
        )
        .await;
    assert_eq!(
        run["status"], "succeeded",
        "the async form is not checked: {run}"
    );

    for (filters, expected) in [
        (json!({}), json!(["alpha", "beta", "strict"])),
        (
            json!({"plugin_ids": ["beta", "strict"]}),
            json!(["beta", "strict"]),
        ),
        (json!({"name_contains": "STRICT"}), json!(["strict"])),
        (
            json!({"status_in": ["running"]}),
            json!(["alpha", "beta", "strict"]),
        ),
        (json!({"status_in": ["crashed"]}), json!([])),
        (
            json!({"has_entry": "sleepy", "plugin_ids": "beta"}),
            json!(["beta"]),
        ),
        (json!({"has_entry": "nope"}), json!([])),
    ] {
        let run = neko.run("alpha", "list", json!({"filters": filters})).await;
        assert_eq!(run["status"], "succeeded", "{filters}: {run}");
        assert_eq!(run["result"], expected, "{filters}");
    }
    let run = neko
        .run(
            "alpha",
            "listed",
            json!({"filters": {"plugin_ids": "beta", "include_events": true}}),
        )
        .await;
    let item = &run["result"]["plugins"][0];
    assert_eq!(item["plugin_id"], "beta", "{run}");
    assert_eq!(item["name"], "Caller beta");
    assert_eq!(item["status"], "running");
    let entries = item["events"]["plugin_entry"].as_array().unwrap();
    assert!(entries.iter().any(|e| e == "sleepy"), "{item}");
    let run = neko
        .run("alpha", "list", json!({"filters": {"status_in": 3}}))
        .await;
    assert_eq!(run["error"]["code"], "VALIDATION_ERROR", "{run}");
}

/// As in the reference, a plugin call hands back the callee's raw return value: an `ok(...)` or
/// `fail(...)` envelope arrives whole (a `fail` is data, not an error), while a run of the same
/// entries gets the envelope's data or fails with its code.
#[tokio::test]
async fn envelopes_reach_a_calling_plugin_whole() {
    let neko = start(&[("alpha", ""), ("beta", "")], &[]).await;
    let run = neko
        .run("alpha", "relay_whole", json!({"target": "beta:enveloped"}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let got = &run["result"]["got"];
    assert_eq!(got["success"], true, "{run}");
    assert_eq!(got["data"], json!({"x": 0}), "{run}");
    assert_eq!(got["message"], "fine", "{run}");
    assert!(got["time"].is_string() && got["error"].is_null(), "{run}");

    let run = neko
        .run("alpha", "relay_whole", json!({"target": "beta:refusing"}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let got = &run["result"]["got"];
    assert_eq!(got["success"], false, "{run}");
    assert_eq!(got["error"]["code"], "NOPE", "{run}");
    assert_eq!(got["error"]["message"], "not today", "{run}");
    assert_eq!(got["error"]["details"], "abc", "{run}");

    let run = neko.run("beta", "enveloped", json!({"x": 3})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"], json!({"x": 3}), "{run}");
    let run = neko.run("beta", "refusing", json!({})).await;
    assert_failed(&run, "NOPE", "not today");
    // A run's error details are an object, as the reference wraps them.
    assert_eq!(run["error"]["details"], json!({"details": "abc"}), "{run}");
}

/// Rust → Rust through the echo plugin's `call` entry (async) and `call_blocking` (sync).
#[tokio::test]
async fn rust_plugins_call_each_other() {
    let neko = start(&[], &[echo_plugin("echo", ""), echo_plugin("echo2", "")]).await;
    for entry in ["call", "call_blocking"] {
        let run = neko
            .run(
                "echo",
                entry,
                json!({"target": "echo2:add", "args": {"a": 2, "b": 3}}),
            )
            .await;
        assert_eq!(run["status"], "succeeded", "{entry}: {run}");
    }
    let run = neko
        .run(
            "echo",
            "call",
            json!({"target": "echo:add", "args": {"a": 2, "b": 3}}),
        )
        .await;
    assert_failed(&run, "DEADLOCK", "echo.call → echo");
}

/// A Rust plugin's custom event (`Plugin::event`): declared in HELLO, callable by other plugins as
/// `"<plugin>:<event_type>:<id>"`, not an entry; an undeclared one is NOT_FOUND.
#[tokio::test]
async fn rust_custom_events_are_callable_by_other_plugins() {
    let neko = start(&[], &[echo_plugin("echo", ""), echo_plugin("echo2", "")]).await;
    let run = neko
        .run(
            "echo",
            "call",
            json!({"target": "echo2:echo_event:shout", "args": {"text": "hi"}}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"], json!({"shouted": "HI"}), "{run}");

    let run = neko
        .run(
            "echo",
            "call",
            json!({"target": "echo2:echo_event:whisper", "args": {}}),
        )
        .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "NOT_FOUND", "{run}");

    // A custom event is not an entry: a run of it fails.
    let run = neko.run("echo2", "shout", json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "NOT_FOUND", "{run}");
}
