//! Plugin metrics: `GET /plugin/metrics`, `/plugin/metrics/{id}` and its history, sampled from
//! the real echo plugin's `/proc` entries.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helper::{Neko, TIMEOUT, echo_plugin, wait_for_async};

/// Samples every 100 ms, at most 5 kept per plugin.
const FAST_METRICS: &str = "[metrics]\ninterval_ms = 100\nhistory = 5\n";

/// Polls `probe` every 20 ms until it yields a value, failing the test after [`TIMEOUT`].
async fn poll<T, F, Fut>(mut probe: F, what: &str) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Plugin `id`'s entry in `GET /plugin/metrics`, once it has one.
async fn wait_current(neko: &Neko, id: &str) -> Value {
    poll(
        || async {
            let (status, body) = neko.admin_get("/plugin/metrics").await;
            assert_eq!(status, 200, "{body}");
            body["metrics"]
                .as_array()
                .and_then(|l| l.iter().find(|m| m["plugin_id"] == id).cloned())
        },
        "a metrics sample of the plugin",
    )
    .await
}

/// A running plugin is sampled from its own process: the pid `/plugin/status` reports, real
/// resident memory and threads, sums in `global`, and the same sample under its id.
#[tokio::test]
async fn running_plugin_is_sampled_from_its_process() {
    let neko = Neko::start_with(&[echo_plugin("echo", "")], FAST_METRICS);
    let pid = neko.wait_running("echo").await;
    let m = wait_current(&neko, "echo").await;
    let (_, status) = neko.get("/plugin/status?plugin_id=echo").await;
    assert_eq!(status["pid"], pid);
    assert_eq!(m["pid"], pid, "{m}");
    assert!(m["memory_mb"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["memory_percent"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["num_threads"].as_u64().unwrap() >= 1, "{m}");
    assert!(m["cpu_percent"].as_f64().unwrap() >= 0.0, "{m}");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'), "{m}");
    for key in [
        "total_executions",
        "successful_executions",
        "failed_executions",
        "avg_execution_time",
        "pending_requests",
        "queue_size",
    ] {
        assert_eq!(m[key].as_f64(), Some(0.0), "{key}: {m}");
    }

    let (status, body) = neko.admin_get("/plugin/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 1, "{body}");
    let global = &body["global"];
    assert_eq!(global["active_plugins"], 1, "{body}");
    assert_eq!(global["total_memory_mb"], body["metrics"][0]["memory_mb"]);
    assert_eq!(global["total_threads"], body["metrics"][0]["num_threads"]);
    assert!(body["time"].as_str().unwrap().ends_with('Z'));

    let (status, one) = neko.admin_get("/plugin/metrics/echo").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["plugin_id"], "echo");
    assert_eq!(one["metrics"]["pid"], pid, "{one}");
    assert!(one["time"].is_string());
}

/// The history grows with every sample up to `[metrics] history`, oldest first, and `limit`
/// returns the newest samples.
#[tokio::test]
async fn history_grows_and_is_bounded() {
    // Room for 20 samples, so the first read surely finds the history still growing.
    let neko = Neko::start_with(
        &[echo_plugin("echo", "")],
        "[metrics]\ninterval_ms = 100\nhistory = 20\n",
    );
    neko.wait_running("echo").await;
    let first_count = poll(
        || async {
            let (_, h) = neko.admin_get("/plugin/metrics/echo/history").await;
            h["count"].as_u64().filter(|n| *n >= 1)
        },
        "a first sample in the history",
    )
    .await;
    let last = poll(
        || async {
            let (status, h) = neko.admin_get("/plugin/metrics/echo/history").await;
            assert_eq!(status, 200, "{h}");
            assert!(
                h["count"].as_u64().unwrap() <= 20,
                "history over its bound: {h}"
            );
            (h["count"] == 20).then_some(h)
        },
        "the history to fill up",
    )
    .await;
    assert!(first_count < 20, "{first_count}");
    assert_eq!(last["plugin_id"], "echo");
    let history = last["history"].as_array().unwrap();
    assert_eq!(history.len(), 20);
    let stamps: Vec<&str> = history
        .iter()
        .map(|m| m["timestamp"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    // More rounds: still 20, and newer.
    wait_for_async(
        || async {
            let (_, h) = neko.admin_get("/plugin/metrics/echo/history").await;
            assert_eq!(h["count"], 20, "{h}");
            h["history"][0]["timestamp"].as_str() > Some(stamps[0])
        },
        "older samples to be dropped",
    )
    .await;
    let (status, h) = neko
        .admin_get("/plugin/metrics/echo/history?limit=2&start_time=x&end_time=y")
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["count"], 2);
    let (_, all) = neko.admin_get("/plugin/metrics/echo/history").await;
    let newest = &all["history"][19]["timestamp"];
    let h_newest = &h["history"][1]["timestamp"];
    // A round may land between the two reads.
    assert!(h_newest.as_str() <= newest.as_str(), "{h} vs {all}");
}

/// A stopped plugin leaves the current list, answers `metrics: null` with why, and keeps its
/// samples in its history.
#[tokio::test]
async fn stopped_plugin_keeps_its_history_but_is_not_current() {
    let neko = Neko::start_with(&[echo_plugin("echo", "")], FAST_METRICS);
    neko.wait_running("echo").await;
    wait_current(&neko, "echo").await;
    let (status, body) = neko.admin_post("/plugin/echo/stop").await;
    assert_eq!(status, 200, "{body}");
    wait_for_async(
        || async { neko.admin_get("/plugin/metrics").await.1["count"] == 0 },
        "the stopped plugin to leave the current list",
    )
    .await;
    let (status, one) = neko.admin_get("/plugin/metrics/echo").await;
    assert_eq!(status, 200, "{one}");
    assert!(one["metrics"].is_null(), "{one}");
    assert_eq!(one["plugin_running"], false);
    assert_eq!(one["process_alive"], false);
    assert!(one["message"].as_str().unwrap().contains("not running"));
    let (_, global) = neko.admin_get("/plugin/metrics").await;
    assert_eq!(global["global"]["active_plugins"], 0);
    assert_eq!(global["global"]["total_memory_mb"], 0.0);
    let (_, h) = neko.admin_get("/plugin/metrics/echo/history").await;
    assert!(h["count"].as_u64().unwrap() >= 1, "{h}");
}

/// Admin only (401 without the token), 404 for an unregistered plugin, 422 for a `limit`
/// outside 1..=1000 or not a number: all JSON errors.
#[tokio::test]
async fn metrics_routes_check_auth_ids_and_limits() {
    let neko = Neko::start_with(&[echo_plugin("echo", "")], FAST_METRICS);
    for path in [
        "/plugin/metrics",
        "/plugin/metrics/echo",
        "/plugin/metrics/echo/history",
    ] {
        let (status, body) = neko.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["detail"], "Missing authorization header");
    }
    let (status, body) = neko.admin_get("/plugin/metrics/nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["detail"], "Plugin 'nope' not found");
    for limit in ["0", "1001", "-3", "many"] {
        let (status, body) = neko
            .admin_get(&format!("/plugin/metrics/echo/history?limit={limit}"))
            .await;
        assert_eq!(status, 422, "limit={limit}: {body}");
        assert!(body["detail"].is_array(), "{body}");
    }
    for limit in ["1", "1000"] {
        let (status, body) = neko
            .admin_get(&format!("/plugin/metrics/echo/history?limit={limit}"))
            .await;
        assert_eq!(status, 200, "limit={limit}: {body}");
    }
}
