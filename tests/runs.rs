//! Runs against the Rust echo plugin: results, entry errors, timeouts, unknown and down plugins.

use serde_json::json;

use crate::helper::{Neko, echo_plugin};

/// Async and sync entries return the right data, with `_ctx` injected and stripped by the entry.
#[tokio::test]
async fn runs_on_the_rust_plugin_return_the_entry_result() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;

    let run = neko
        .run("echo", "echo", json!({"text": "hi", "n": [1, 2, 3]}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"], json!({"text": "hi", "n": [1, 2, 3]}));
    assert_eq!(run["progress"], 1.0);
    assert!(run["finished_at"].as_f64().unwrap() >= run["created_at"].as_f64().unwrap());

    let run = neko.run("echo", "add", json!({"a": 2, "b": 40})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["sum"], 42.0);

    let run = neko.run("echo", "sleep", json!({"ms": 50})).await;
    assert_eq!(run["result"]["slept_ms"], 50);
}

/// An entry that fails ends its run `failed` with the entry's code and message; a bad argument
/// gives VALIDATION_ERROR.
#[tokio::test]
async fn entry_errors_fail_the_run_with_code_and_message() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run = neko
        .run(
            "echo",
            "fail",
            json!({"code": "QUOTA", "message": "out of quota"}),
        )
        .await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "QUOTA");
    assert_eq!(run["error"]["message"], "out of quota");
    let run = neko.run("echo", "sleep", json!({"ms": "soon"})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "VALIDATION_ERROR");
}

/// A run past its deadline ends `timeout` at the deadline, and the plugin keeps serving.
#[tokio::test]
async fn runs_past_their_deadline_end_in_timeout() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run = neko
        .run(
            "echo",
            "sleep",
            json!({"ms": 10_000, "_ctx": {"entry_timeout": 0.3}}),
        )
        .await;
    assert_eq!(run["status"], "timeout", "{run}");
    assert_eq!(run["error"]["code"], "TIMEOUT");
    let took = run["finished_at"].as_f64().unwrap() - run["started_at"].as_f64().unwrap();
    assert!(took < 5.0, "ended at the deadline, not the sleep ({took}s)");
    let run = neko.run("echo", "echo", json!({"after": "timeout"})).await;
    assert_eq!(run["status"], "succeeded");
}

/// Unknown plugins and entries fail with NOT_FOUND; a stopped plugin with NOT_READY.
#[tokio::test]
async fn unknown_targets_and_down_plugins_fail_clearly() {
    let neko = Neko::start(&[
        echo_plugin("echo", ""),
        echo_plugin("later", "auto_start = false"),
    ]);
    neko.wait_running("echo").await;
    let run = neko.run("nope", "echo", json!({})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "NOT_FOUND");
    assert_eq!(
        run["error"]["message"],
        "Plugin 'nope' is not found/registered"
    );
    assert_eq!(
        run["error"]["details"]["known_plugins"],
        json!(["echo", "later"])
    );
    let run = neko.run("echo", "nope", json!({})).await;
    assert_eq!(run["error"]["code"], "NOT_FOUND");
    assert_eq!(
        run["error"]["message"],
        "Entry 'nope' not found in plugin 'echo'"
    );
    let run = neko.run("later", "echo", json!({})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "NOT_READY");
    assert_eq!(
        run["error"]["message"], "Plugin 'later' is registered but not running",
        "{run}"
    );
    assert_eq!(run["error"]["details"]["status"], "stopped", "{run}");
    assert_eq!(
        run["error"]["details"]["running_plugins"],
        json!(["echo"]),
        "{run}"
    );
}

/// The same idempotency key returns the same run.
#[tokio::test]
async fn idempotency_key_returns_the_same_run() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let body =
        json!({"plugin_id": "echo", "entry_id": "echo", "args": {}, "idempotency_key": "k1"});
    let (_, a) = neko.post("/runs", &body).await;
    let (_, b) = neko.post("/runs", &body).await;
    assert_eq!(a["run_id"], b["run_id"]);
    assert!(a["run_token"].as_str().unwrap().contains('.'));
}
