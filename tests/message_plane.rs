//! The message plane end to end: plugins push (Python normal and fast mode, from handlers and
//! threads; Rust), read the stores back, `@message` handlers and watchers fire, tools outside
//! neko subscribe to PUB, `GET /plugin/messages` shows the real fields, and garbage is counted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeromq::{PushSocket, Socket, SocketSend, ZmqMessage};

use crate::helper::{Neko, PythonPlugin, echo_plugin, python_env_dir, wait_for_async};

/// A Python plugin that pushes, reads the bus, and listens for other plugins' alerts.
fn talker() -> PythonPlugin {
    PythonPlugin {
        dir: "talker",
        toml: "[plugin]\nid = \"talker\"\nentry = \"plugins.talker:Talker\"\n".into(),
        init_py: r#"
import threading
import time

from plugin.sdk import NekoPluginBase, message, plugin_entry


class Talker(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.alerts = []
        self.watched = []

    @plugin_entry(id="say")
    def say(self, text="hi", priority=0, **_):
        return self.ctx.push_message(source="talk", message_type="text", description="said",
                                     priority=priority, content=text, metadata={"k": 1})

    @plugin_entry(id="say_from_thread")
    def say_from_thread(self, text="bg", **_):
        out = {}
        t = threading.Thread(target=lambda: out.update(self.ctx.push_message(source="thread", message_type="text", content=text)))
        t.start()
        t.join()
        return out

    @plugin_entry(id="flood")
    def flood(self, n=100000, **_):
        accepted = 0
        for i in range(n):
            if self.ctx.push_message(source="flood", message_type="text", content=i, fast_mode=True)["submitted"]:
                accepted += 1
        self.ctx.close()
        return {"accepted": accepted, "stats": self.ctx.message_stats()}

    @plugin_entry(id="history")
    def history(self, store="messages", plugin_id=None, **_):
        client = getattr(self.ctx.bus, store)
        records = client.get(plugin_id=plugin_id, max_count=50)
        return {"records": [r.dump() for r in records]}

    @plugin_entry(id="watch")
    def watch(self, **_):
        lst = self.ctx.bus.messages.get(max_count=50)
        watcher = lst.watch()
        watcher.subscribe(on="add")(lambda delta: self.watched.append(len(delta.added)))
        watcher.start()
        self._watcher = watcher
        return {"watching": True}

    @plugin_entry(id="seen")
    def seen(self, **_):
        return {"alerts": self.alerts, "watched": self.watched}

    @message(id="on_alert", source="alerts")
    def on_alert(self, text=None, sender=None, **_):
        self.alerts.append({"text": text, "sender": sender})
"#
        .into(),
        files: Vec::new(),
    }
}

/// Calls `get` until `done` holds for its JSON (the message plane is asynchronous), failing the
/// test after 30 s; returns that JSON.
async fn poll<F, Fut>(mut get: F, done: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get().await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never reached: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pushes from a Python handler and from a thread land in `GET /plugin/messages` with their
/// real fields; filters work; the Rust SDK pushes and reads back too; neko's own lifecycle and
/// events records are in their stores.
#[tokio::test]
async fn pushed_messages_are_stored_and_listed() {
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[talker()], "");
    neko.wait_running("talker").await;
    neko.wait_running("echo").await;
    let run = neko
        .run("talker", "say", json!({"text": "hello", "priority": 5}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["submitted"], true, "{run}");
    let run = neko
        .run(
            "talker",
            "say_from_thread",
            json!({"text": "from a thread"}),
        )
        .await;
    assert_eq!(run["result"]["submitted"], true, "{run}");
    let run = neko
        .run("echo", "push", json!({"n": 3, "source": "rust"}))
        .await;
    assert_eq!(run["result"]["pushed"], 3, "{run}");

    let listed = poll(
        || neko.get("/plugin/messages?max_count=100"),
        |l| l["count"] == 5,
    )
    .await;
    let first = &listed["messages"][0];
    assert_eq!(first["plugin_id"], "talker", "{listed}");
    assert_eq!(first["source"], "talk");
    assert_eq!(first["content"], "hello");
    assert_eq!(first["priority"], 5);
    assert_eq!(first["description"], "said");
    assert_eq!(first["metadata"], json!({"k": 1}));
    assert!(first["message_id"].as_str().is_some_and(|s| !s.is_empty()));
    let (_, only_echo) = neko.get("/plugin/messages?plugin_id=echo").await;
    assert_eq!(only_echo["count"], 3, "{only_echo}");
    let (_, urgent) = neko.get("/plugin/messages?priority_min=5").await;
    assert_eq!(urgent["count"], 1, "{urgent}");
    let (status, _) = neko.get("/plugin/messages?max_count=0").await;
    assert_eq!(status, 422);

    // Read back over RPC, from Rust and from Python.
    let run = neko.run("echo", "recent", json!({"limit": 10})).await;
    assert_eq!(run["result"]["items"].as_array().unwrap().len(), 5, "{run}");
    let run = neko
        .run("talker", "history", json!({"plugin_id": "echo"}))
        .await;
    assert_eq!(
        run["result"]["records"].as_array().unwrap().len(),
        3,
        "{run}"
    );
    let (status, body) = neko.admin_post("/plugin/talker/reload").await;
    assert_eq!(status, 200, "{body}");
    neko.wait_running("talker").await;
    let run = neko
        .run(
            "echo",
            "recent",
            json!({"store": "lifecycle", "limit": 100}),
        )
        .await;
    let records: Vec<&Value> = run["result"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"])
        .collect();
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    // The reference's records (§6.4): the server's own under plugin_id "server".
    for kind in [
        "server_startup_begin",
        "plugin_loaded",
        "plugin_started",
        "server_startup_ready",
        "plugin_reload_requested",
        "plugin_reloaded",
    ] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "server_startup_ready" && r["plugin_id"] == "server"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "plugin_reloaded" && r["plugin_id"] == "talker"),
        "{records:?}"
    );
    let run = neko
        .run("echo", "recent", json!({"store": "events", "limit": 100}))
        .await;
    assert!(
        run["result"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["payload"]["type"] == "plugin_triggered"
                && e["payload"]["entry_id"] == "push"),
        "{run}"
    );
}

/// `@message(source="alerts")` handlers receive matching pushes from other plugins; watchers
/// fire when new messages arrive.
#[tokio::test]
async fn message_handlers_and_watchers_fire() {
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[talker()], "");
    neko.wait_running("talker").await;
    neko.wait_running("echo").await;
    let run = neko.run("talker", "watch", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    neko.run("echo", "push", json!({"n": 1, "source": "alerts"}))
        .await;
    neko.run("echo", "push", json!({"n": 1, "source": "noise"}))
        .await;
    let seen = poll(
        || async {
            (
                200,
                neko.run("talker", "seen", json!({})).await["result"].clone(),
            )
        },
        |seen| {
            !seen["alerts"].as_array().unwrap().is_empty()
                && !seen["watched"].as_array().unwrap().is_empty()
        },
    )
    .await;
    let alerts = seen["alerts"].as_array().unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "only source=alerts reaches the handler: {seen}"
    );
    assert_eq!(alerts[0]["sender"], "alerts");
    assert_eq!(alerts[0]["text"], "message 0");
}

/// A fast-mode flood from one plugin: the supervisor keeps answering, drops (if any) are counted
/// in the plugin, and what was accepted is stored (up to the ring size).
#[tokio::test]
async fn a_flood_does_not_stall_the_supervisor() {
    let neko = Neko::start_mixed(&[], &[talker()], "[message_plane]\nstore_maxlen = 5000\n");
    neko.wait_running("talker").await;
    let (_, created) = neko
        .post(
            "/runs",
            &json!({"plugin_id": "talker", "entry_id": "flood", "args": {"n": 200000}}),
        )
        .await;
    let run_id = created["run_id"].as_str().unwrap().to_string();
    let mut slowest = Duration::ZERO;
    loop {
        let started = Instant::now();
        let (status, _) = neko.get("/health").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
        let (_, run) = neko.get(&format!("/runs/{run_id}")).await;
        if crate::helper::is_terminal(&run) {
            assert_eq!(run["status"], "succeeded", "{run}");
            let stats = &run["result"]["stats"];
            let accepted = run["result"]["accepted"].as_u64().unwrap();
            assert!(accepted > 0, "{run}");
            assert_eq!(
                accepted + stats["fast"]["rejected"].as_u64().unwrap_or(0),
                200000,
                "every push is either accepted or counted as rejected: {stats}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slowest /health during the flood: {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "/health took {slowest:?}");
    poll(
        || neko.get("/plugin/messages?max_count=1000"),
        |l| l["count"] == 1000,
    )
    .await;
}

/// Tools outside neko: a plain pyzmq SUB socket receives `messages.all` frames; garbage sent to
/// INGEST is counted, not fatal; the endpoints and figures are in /server/info.
#[tokio::test]
async fn outside_tools_subscribe_and_garbage_is_counted() {
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[talker()], "");
    neko.wait_running("echo").await;
    neko.wait_running("talker").await;
    let (status, info) = neko.admin_get("/server/info").await;
    assert_eq!(status, 200, "{info}");
    let endpoints = &info["message_plane"]["endpoints"];
    let publish = endpoints["pub"].as_str().unwrap().to_string();
    let ingest = endpoints["ingest"].as_str().unwrap().to_string();

    // A subscriber in plain pyzmq, from the managed environment.
    let python = python_env_dir().join("venv/bin/python");
    let script = r#"
import json, sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB)
s.connect(sys.argv[1])
s.setsockopt(zmq.SUBSCRIBE, b"messages.")
s.setsockopt(zmq.RCVTIMEO, 20000)
print("ready", flush=True)
topic, body = s.recv_multipart()
print(json.dumps({"topic": topic.decode(), "event": json.loads(body)}), flush=True)
"#;
    let mut child = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&publish)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    // PUB drops what is sent before the subscription is through: push until it is heard.
    let heard = async {
        loop {
            neko.run("talker", "say", json!({"text": "to the outside"}))
                .await;
            tokio::select! {
                line = lines.next_line() => return line.unwrap().unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    };
    let line = tokio::time::timeout(Duration::from_secs(20), heard)
        .await
        .expect("the subscriber heard a message");
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["topic"], "messages.all");
    assert_eq!(got["event"]["payload"]["content"], "to the outside");
    let _ = child.kill().await;

    // Garbage on INGEST: counted, the plane keeps working.
    let mut push = PushSocket::new();
    push.connect(&ingest).await.unwrap();
    for garbage in [&b"\xc1\xc1 not msgpack"[..], &b"\x93\x01\x02\x03"[..]] {
        push.send(ZmqMessage::from(garbage.to_vec())).await.unwrap();
    }
    wait_for_async(
        || async {
            let (_, info) = neko.admin_get("/server/info").await;
            info["message_plane"]["stats"]["ingest_bad_frames"].as_u64() >= Some(2)
        },
        "bad frames counted",
    )
    .await;
    let run = neko
        .run("talker", "say", json!({"text": "still fine"}))
        .await;
    assert_eq!(run["result"]["submitted"], true);
}

/// A PUB subscriber that connects and never reads: once the socket buffers between it and neko
/// are full, events for it are dropped and counted (`pub_dropped`), and the stores, INGEST and
/// HTTP go on as if it were not there; when it dies, neko stops counting it (zeromq's XPUB does
/// not report disconnections; neko recounts connections).
#[tokio::test]
async fn a_subscriber_that_never_reads_holds_nothing_up() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let (_, info) = neko.admin_get("/server/info").await;
    let publish = info["message_plane"]["endpoints"]["pub"]
        .as_str()
        .unwrap()
        .to_string();
    let stats = || async {
        let (_, info) = neko.admin_get("/server/info").await;
        info["message_plane"]["stats"].clone()
    };
    assert_eq!(stats().await["pub_subscribers"], 0);

    // Small buffers and a one-message queue, and no recv: it fills up and stays full.
    let script = r#"
import sys, time, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.RCVHWM, 1)
s.setsockopt(zmq.RCVBUF, 4096)
s.setsockopt(zmq.SUBSCRIBE, b"messages.")
s.connect(sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"#;
    let mut child = tokio::process::Command::new(python_env_dir().join("venv/bin/python"))
        .arg("-c")
        .arg(script)
        .arg(&publish)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    wait_for_async(
        || async { stats().await["pub_subscribers"].as_u64() == Some(1) },
        "the subscriber is connected",
    )
    .await;
    let accepted_before = stats().await["ingest_accepted"].as_u64().unwrap();

    let n = 200_000u64;
    let pushed = neko.run("echo", "push", json!({"n": n})).await;
    assert_eq!(pushed["status"], "succeeded", "{pushed}");
    let taken = n - pushed["result"]["dropped"].as_u64().unwrap();
    // Every message the SDK sent reaches the stores although PUB is stuck behind the subscriber.
    wait_for_async(
        || async { stats().await["ingest_accepted"].as_u64().unwrap() >= accepted_before + taken },
        "all pushed messages accepted",
    )
    .await;
    let during = stats().await;
    assert!(
        during["pub_dropped"].as_u64().unwrap() > 0,
        "events for the stuck subscriber are dropped: {during}"
    );
    let started = Instant::now();
    let (status, _) = neko.get("/health").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "HTTP is not held up"
    );
    let one = neko.run("echo", "push", json!({"n": 1})).await;
    assert_eq!(one["result"]["pushed"], 1, "{one}");

    let _ = child.kill().await;
    wait_for_async(
        || async { stats().await["pub_subscribers"].as_u64() == Some(0) },
        "the dead subscriber is no longer counted",
    )
    .await;
}
