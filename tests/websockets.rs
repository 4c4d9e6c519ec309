//! The WebSockets: `/ws/run` (one run's changes, opened with its run token) and `/ws/admin`
//! (every change, opened with the admin token), spoken to with a real WebSocket client.

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helper::ws::{Ws, closed, next_json, try_connect};
use crate::helper::{Neko, TIMEOUT, TOKEN, echo_plugin};

async fn connect(neko: &Neko, path: &str) -> Ws {
    try_connect(neko, path).await.expect("websocket connects")
}

async fn send(ws: &mut Ws, frame: &Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// The next JSON frame from the server (pings are answered and skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let frame = next_json(ws, TIMEOUT).await;
        if frame["type"] == "ping" {
            send(ws, &json!({"type": "pong"})).await;
            continue;
        }
        return frame;
    }
}

/// Sends a request and returns its response (events received meanwhile are dropped).
async fn request(ws: &mut Ws, id: &str, method: &str, params: Value) -> Value {
    send(
        ws,
        &json!({"type": "req", "id": id, "method": method, "params": params}),
    )
    .await;
    loop {
        let frame = recv(ws).await;
        if frame["type"] == "resp" && frame["id"] == id {
            return frame;
        }
    }
}

/// The result of a request that must succeed.
async fn call(ws: &mut Ws, method: &str, params: Value) -> Value {
    let resp = request(ws, method, method, params).await;
    assert_eq!(resp["ok"], true, "{method}: {resp}");
    resp["result"].clone()
}

/// The error of a request that must fail.
async fn call_err(ws: &mut Ws, method: &str, params: Value) -> String {
    let resp = request(ws, "err", method, params).await;
    assert_eq!(resp["ok"], false, "{method}: {resp}");
    resp["error"].as_str().expect("error text").to_string()
}

/// A `/ws/run` socket past its auth frame; returns it with the session.ready data.
async fn open_run(neko: &Neko, token: &str) -> (Ws, Value) {
    let mut ws = connect(neko, "/ws/run").await;
    send(&mut ws, &json!({"type": "auth", "token": token})).await;
    let ready = recv(&mut ws).await;
    assert_eq!(ready["event"], "session.ready", "{ready}");
    (ws, ready["data"].clone())
}

/// A `/ws/admin` socket past its auth frame.
async fn open_admin(neko: &Neko) -> Ws {
    let mut ws = connect(neko, "/ws/admin").await;
    send(&mut ws, &json!({"type": "auth", "code": TOKEN})).await;
    let ready = recv(&mut ws).await;
    assert_eq!(
        ready,
        json!({"type": "event", "event": "session.ready", "data": {"role": "admin"}})
    );
    ws
}

/// `bus.change` events until the run `run_id` reaches a terminal state (that change included).
async fn events_until_done(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = recv(ws).await;
        assert_eq!(frame["type"], "event", "{frame}");
        assert_eq!(frame["event"], "bus.change", "{frame}");
        let data = frame["data"].clone();
        let done = data["bus"] == "runs"
            && data["payload"]["run_id"] == run_id
            && crate::helper::is_terminal(&data["payload"]);
        events.push(data);
        if done {
            return events;
        }
    }
}

/// The first frame of a socket that must be refused: the close code and reason.
async fn refused(neko: &Neko, path: &str, first: Message) -> (u16, String) {
    let mut ws = connect(neko, path).await;
    ws.send(first).await.expect("frame sent");
    closed(&mut ws).await
}

/// `/ws/run`: session.ready with the token's run and expiry, this run's progress in order, its
/// exports and terminal change; `run.get` and `export.list` answer for the token's run.
#[tokio::test]
async fn websockets_run_socket_streams_progress_and_answers_requests() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let created = neko
        .create_run("echo", "progress", json!({"steps": 5, "delay_ms": 50}))
        .await;
    let run_id = created["run_id"].as_str().unwrap();
    let (mut ws, ready) = open_run(&neko, created["run_token"].as_str().unwrap()).await;
    assert_eq!(ready["run_id"], run_id);
    assert_eq!(ready["perm"], "read");
    assert_eq!(ready["exp"], created["expires_at"]);
    // A second client of the same run: revisions are the bus's, not the socket's.
    let (mut ws2, _) = open_run(&neko, created["run_token"].as_str().unwrap()).await;

    let events = events_until_done(&mut ws, run_id).await;
    let events2 = events_until_done(&mut ws2, run_id).await;
    assert_eq!(
        events.last().unwrap()["payload"]["rev"],
        events2.last().unwrap()["payload"]["rev"],
        "two clients see the same revision for the same change"
    );
    let mut progress = Vec::new();
    let mut revs = (0, 0);
    for e in &events {
        let p = &e["payload"];
        assert_eq!(p["run_id"], run_id, "another run's event: {e}");
        assert_eq!(p["source"], e["bus"]);
        assert_eq!(p["kind"], e["bus"]);
        assert_eq!(p["type"], e["op"]);
        assert_eq!(p["priority"], 0);
        let rev = p["rev"].as_u64().unwrap();
        if e["bus"] == "runs" {
            assert_eq!(p["plugin_id"], "echo");
            assert_eq!(p["entry_id"], "progress");
            assert_eq!(p["id"], run_id);
            assert_eq!(p["timestamp"], p["updated_at"]);
            assert!(rev > revs.0, "runs rev not increasing: {e}");
            revs.0 = rev;
            if p["status"] == "running"
                && let Some(x) = p["progress"].as_f64()
            {
                progress.push(x);
            }
        } else {
            assert_eq!(e["bus"], "export", "{e}");
            assert_eq!(e["op"], "add");
            assert_eq!(p["id"], p["export_item_id"]);
            assert_eq!(p["export_type"], "text");
            assert_eq!(p["plugin_id"], "echo");
            assert!(p.get("text").is_none(), "content is not in the event: {e}");
            assert!(rev > revs.1, "export rev not increasing: {e}");
            revs.1 = rev;
        }
    }
    assert!(!progress.is_empty(), "no progress seen: {events:?}");
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "progress out of order: {progress:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["payload"]["status"], "succeeded");
    assert_eq!(last["payload"]["progress"], 1.0);
    assert!(
        events.iter().any(|e| e["bus"] == "export"),
        "no export event before the end: {events:?}"
    );

    let run = call(&mut ws, "run.get", Value::Null).await;
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["status"], "succeeded");
    let all = call(&mut ws, "export.list", json!({})).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["next_after"], Value::Null);
    let page = call(&mut ws, "export.list", json!({"limit": 1})).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["next_after"], all["items"][0]["export_item_id"]);
    let rest = call(&mut ws, "export.list", json!({"after": page["next_after"]})).await;
    assert_eq!(rest["items"][0], all["items"][1]);
    assert_eq!(
        call_err(&mut ws, "runs.list", json!({})).await,
        "unknown method"
    );
    let resp = request(&mut ws, "x", "run.get", json!([1])).await;
    assert_eq!(resp["error"], "invalid params");
    let resp = request(&mut ws, "y", "", json!({})).await;
    assert_eq!(resp["error"], "missing method");
}

/// `/ws/run` refuses sockets without a valid first frame, with the reference's codes and reasons.
#[tokio::test]
async fn websockets_run_socket_refuses_bad_auth() {
    let neko = Neko::start(&[]);
    let policy = |reason: &str| (1008, reason.to_string());
    let auth = |v: Value| Message::text(v.to_string());
    assert_eq!(
        refused(
            &neko,
            "/ws/run",
            auth(json!({"type": "auth", "token": "garbage"}))
        )
        .await,
        policy("invalid token")
    );
    assert_eq!(
        refused(&neko, "/ws/run", auth(json!({"type": "auth"}))).await,
        policy("invalid token")
    );
    assert_eq!(
        refused(
            &neko,
            "/ws/run",
            auth(json!({"type": "hello", "token": "t"}))
        )
        .await,
        policy("auth required")
    );
    assert_eq!(
        refused(&neko, "/ws/run", Message::text("not json")).await,
        policy("invalid auth")
    );
    let long = json!({"type": "auth", "token": "t".repeat(20_000)});
    assert_eq!(
        refused(&neko, "/ws/run", auth(long)).await,
        policy("invalid auth")
    );
}

/// After auth, a frame over 262,144 characters closes the socket 1009; smaller junk is ignored.
#[tokio::test]
async fn websockets_oversized_frame_closes_1009() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let created = neko.create_run("echo", "echo", json!({"x": 1})).await;
    neko.wait_run(created["run_id"].as_str().unwrap()).await;
    let (mut ws, _) = open_run(&neko, created["run_token"].as_str().unwrap()).await;
    for junk in [
        "not json",
        "[1]",
        r#"{"type":"other"}"#,
        r#"{"type":"pong"}"#,
    ] {
        ws.send(Message::text(junk)).await.unwrap();
    }
    // Still answering; the limit counts characters, not bytes.
    let pad = "é".repeat(200_000);
    assert_eq!(
        call(&mut ws, "run.get", json!({"pad": pad})).await["status"],
        "succeeded"
    );
    let big = json!({"type": "req", "id": "1", "method": "run.get", "params": {"pad": "a".repeat(300_000)}});
    ws.send(Message::text(big.to_string())).await.unwrap();
    assert_eq!(closed(&mut ws).await, (1009, "message too large".into()));
}

/// `/ws/admin` auth: missing code, wrong code, and the right one in any case.
#[tokio::test]
async fn websockets_admin_socket_auth() {
    let neko = Neko::start(&[]);
    let auth = |v: Value| Message::text(v.to_string());
    assert_eq!(
        refused(
            &neko,
            "/ws/admin",
            auth(json!({"type": "auth", "code": "WRONG"}))
        )
        .await,
        (1008, "forbidden".into())
    );
    assert_eq!(
        refused(
            &neko,
            "/ws/admin",
            auth(json!({"type": "auth", "code": " "}))
        )
        .await,
        (1008, "invalid code".into())
    );
    assert_eq!(
        refused(&neko, "/ws/admin", auth(json!({"type": "auth"}))).await,
        (1008, "invalid code".into())
    );
    assert_eq!(
        refused(&neko, "/ws/admin", Message::text("{")).await,
        (1008, "invalid auth".into())
    );
    let mut ws = connect(&neko, "/ws/admin").await;
    let code = format!(" {} ", TOKEN.to_ascii_lowercase());
    send(&mut ws, &json!({"type": "auth", "code": code})).await;
    assert_eq!(recv(&mut ws).await["data"]["role"], "admin");
}

/// `/ws/admin` sees runs created over HTTP, filters by plugin after `subscribe`, and its
/// methods create, read, list, cancel runs and stop plugins.
#[tokio::test]
async fn websockets_admin_socket_events_filter_and_methods() {
    let neko = Neko::start(&[echo_plugin("echo_a", ""), echo_plugin("echo_b", "")]);
    neko.wait_running("echo_a").await;
    neko.wait_running("echo_b").await;
    let mut ws = open_admin(&neko).await;

    // Every change, add first.
    let a1 = neko.create_run("echo_a", "echo", json!({"n": 1})).await;
    let a1_id = a1["run_id"].as_str().unwrap();
    let events = events_until_done(&mut ws, a1_id).await;
    assert_eq!(events[0]["bus"], "runs");
    assert_eq!(events[0]["op"], "add");
    assert_eq!(events[0]["payload"]["run_id"], a1_id);
    assert_eq!(events[0]["payload"]["status"], "queued");
    assert!(events.iter().any(|e| e["bus"] == "export"));

    // Filtered to echo_b.
    send(
        &mut ws,
        &json!({"type": "subscribe", "plugin_id": "echo_b"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "event", "event": "subscribed", "data": {"plugin_id": "echo_b"}})
    );
    let a2 = neko.create_run("echo_a", "echo", json!({"n": 2})).await;
    neko.wait_run(a2["run_id"].as_str().unwrap()).await;
    let b1 = neko.create_run("echo_b", "echo", json!({"n": 3})).await;
    let b1_id = b1["run_id"].as_str().unwrap();
    let events = events_until_done(&mut ws, b1_id).await;
    for e in &events {
        assert_eq!(e["payload"]["plugin_id"], "echo_b", "not filtered: {e}");
        assert_eq!(e["payload"]["run_id"], b1_id);
    }
    // And back to everything.
    send(&mut ws, &json!({"type": "subscribe", "plugin_id": null})).await;
    assert_eq!(recv(&mut ws).await["data"]["plugin_id"], Value::Null);

    // Methods.
    let listed = call(&mut ws, "runs.list", json!({"plugin_id": "echo_a"})).await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    // In the order they were created, as the reference lists them.
    assert_eq!(ids, [a1_id, a2["run_id"].as_str().unwrap()], "{listed}");
    assert_eq!(
        call(&mut ws, "run.get", json!({"run_id": b1_id})).await["status"],
        "succeeded"
    );
    let exports = call(&mut ws, "export.list", json!({"run_id": b1_id})).await;
    assert_eq!(exports["items"].as_array().unwrap().len(), 1, "{exports}");

    let created = call(
        &mut ws,
        "run.create",
        json!({"plugin_id": "echo_b", "entry_id": "sleep", "args": {"ms": 10_000}}),
    )
    .await;
    assert_eq!(created["status"], "queued");
    assert_eq!(created["run_token"], Value::Null);
    assert_eq!(created["expires_at"], Value::Null);
    let run_id = created["run_id"].as_str().unwrap().to_string();
    crate::helper::wait_for_async(
        || async { neko.get(&format!("/runs/{run_id}")).await.1["status"] == "running" },
        "run running",
    )
    .await;
    let canceled = call(
        &mut ws,
        "run.cancel",
        json!({"run_id": run_id, "reason": "test"}),
    )
    .await;
    assert_eq!(canceled["cancel_requested"], true, "{canceled}");
    assert_eq!(canceled["cancel_reason"], "test");
    assert_eq!(neko.wait_run(&run_id).await["status"], "canceled");

    let stopped = call(&mut ws, "plugin.stop", json!({"plugin_id": "echo_a"})).await;
    assert_eq!(stopped["success"], true, "{stopped}");
    assert_eq!(stopped["plugin_id"], "echo_a");

    // Errors.
    for (method, params, error) in [
        ("run.get", json!({}), "run_id required"),
        ("run.get", json!({"run_id": "nope"}), "run not found"),
        ("run.cancel", json!({"run_id": "nope"}), "run not found"),
        ("export.list", json!({"run_id": "nope"}), "run not found"),
        (
            "run.create",
            json!({"entry_id": "echo"}),
            "plugin_id required",
        ),
        (
            "run.create",
            json!({"plugin_id": "echo_b"}),
            "entry_id required",
        ),
        (
            "run.create",
            json!({"plugin_id": "echo_b", "entry_id": "echo", "args": [1]}),
            "args must be object",
        ),
        ("plugin.stop", json!({}), "plugin_id required"),
        ("nope", json!({}), "unknown method"),
    ] {
        assert_eq!(call_err(&mut ws, method, params).await, error, "{method}");
    }
    let again = call_err(&mut ws, "plugin.stop", json!({"plugin_id": "echo_a"})).await;
    assert_eq!(again, "404: Plugin 'echo_a' is not running");
}

/// When neko shuts down (SIGTERM), open `/ws/admin` and `/ws/run` sockets get a 1001 close frame
/// before the process exits, and neko still exits cleanly.
#[tokio::test]
async fn websockets_are_closed_1001_at_shutdown() {
    let mut neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let mut admin = open_admin(&neko).await;
    let created = neko
        .create_run("echo", "sleep", json!({"ms": 60_000}))
        .await;
    let (mut run, _) = open_run(&neko, created["run_token"].as_str().unwrap()).await;
    crate::helper::signal(neko.pid(), libc::SIGTERM);
    for ws in [&mut admin, &mut run] {
        assert_eq!(closed(ws).await, (1001, "server shutting down".to_string()));
    }
    let status = neko.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
