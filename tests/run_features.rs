//! Runs beyond the first path: progress and exports from plugins, cancel, waiting reads, listing,
//! and the history surviving a supervisor restart.

use serde_json::{Value, json};

use crate::helper::{Neko, PythonPlugin, echo_plugin, is_terminal};

/// A Python plugin that reports progress, exports, and waits to be canceled.
fn reporter() -> PythonPlugin {
    PythonPlugin {
        dir: "reporter",
        toml: "[plugin]\nid = \"reporter\"\nentry = \"plugins.reporter:Reporter\"\n".into(),
        init_py: r#"
import asyncio
import time

from plugin.sdk import NekoPluginBase, fail, ok, plugin_entry


class Reporter(NekoPluginBase):
    @plugin_entry(id="report")
    def report(self, n=5, **_):
        for i in range(n):
            self.ctx.run_progress(progress=(i + 1) / n, stage="exporting", message=f"item {i}")
            self.ctx.export_push_text(text=f"item {i}", metadata={"i": i})
        refused = None
        try:
            self.ctx.run_update(progress=2.0)
        except RuntimeError as exc:
            refused = str(exc)
        return ok(data={"pushed": n, "refused": refused})

    @plugin_entry(id="report_async")
    async def report_async(self, **_):
        await self.ctx.run_update_async(progress=0.5, step=1, step_total=2, eta_seconds=1.5, metrics={"k": 1})
        item = await self.ctx.export_push_url_async(url="https://example.invalid/x", description="link")
        return {"item": item}

    @plugin_entry(id="wait_async")
    async def wait_async(self, **_):
        await asyncio.sleep(30)
        return {"finished": True}

    @plugin_entry(id="wait_sync")
    def wait_sync(self, **_):
        deadline = time.time() + 30
        while time.time() < deadline and not self.ctx.cancelled:
            time.sleep(0.01)
        return {"cancelled": self.ctx.cancelled}

    @plugin_entry(id="own_codes")
    def own_codes(self, code="TIMEOUT", **_):
        return fail(code, f"upstream said {code}")

    @plugin_entry(id="stubborn", timeout=1)
    def stubborn(self, **_):
        time.sleep(2)
        return {"finished": True}
"#
        .into(),
        files: Vec::new(),
    }
}

/// Waits until the run is `running`.
async fn wait_running(neko: &Neko, run_id: &str) {
    crate::helper::wait_for_async(
        || async { neko.get(&format!("/runs/{run_id}")).await.1["status"] == "running" },
        "run running",
    )
    .await;
}

/// Creates a run and waits until the plugin is working on it; its id.
async fn running_run(neko: &Neko, plugin: &str, entry: &str, args: Value) -> String {
    let created = neko.create_run(plugin, entry, args).await;
    let run_id = created["run_id"].as_str().unwrap().to_string();
    wait_running(neko, &run_id).await;
    run_id
}

/// Every export item of a run, read `limit` at a time; also returns the number of pages.
async fn all_exports(neko: &Neko, run_id: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let query = match &after {
            Some(a) => format!("/runs/{run_id}/export?limit={limit}&after={a}"),
            None => format!("/runs/{run_id}/export?limit={limit}"),
        };
        let (status, page) = neko.get(&query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return (items, pages),
        }
    }
}

/// Progress updates and exports pushed by a Python entry land on the run, are validated as the
/// reference does, and page in order; the result is the last export item and in `result_refs`.
#[tokio::test]
async fn python_progress_and_exports_are_recorded_and_paged() {
    let neko = Neko::start_mixed(&[], &[reporter()], "");
    neko.wait_running("reporter").await;
    let run = neko.run("reporter", "report", json!({"n": 5})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["pushed"], 5);
    assert!(
        run["result"]["refused"]
            .as_str()
            .unwrap()
            .contains("invalid progress"),
        "{run}"
    );
    assert_eq!(run["progress"], 1.0);
    assert_eq!(run["stage"], "exporting");
    assert_eq!(run["message"], "item 4");
    let run_id = run["run_id"].as_str().unwrap();
    let (items, pages) = all_exports(&neko, run_id, 2).await;
    assert_eq!(pages, 3);
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    assert_eq!(
        &texts[..5],
        ["item 0", "item 1", "item 2", "item 3", "item 4"]
    );
    assert_eq!(items[3]["metadata"]["i"], 3);
    assert_eq!(run["result_refs"], json!([items[5]["export_item_id"]]));
    let response: Value = serde_json::from_str(texts[5]).unwrap();
    assert_eq!(response["plugin_response"]["data"]["pushed"], 5);
    assert!(
        response["plugin_response"]["trace_id"].is_string(),
        "{response}"
    );
    assert_eq!(response["executed_entry"], "report");
    assert_eq!(items[5]["metadata"]["kind"], "trigger_response");
    assert_eq!(items[5]["mime"], Value::Null);

    let run = neko.run("reporter", "report_async", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["step_total"], 2);
    assert_eq!(run["eta_seconds"], 1.5);
    assert_eq!(run["metrics"], json!({"k": 1}));
    let (items, _) = all_exports(&neko, run["run_id"].as_str().unwrap(), 200).await;
    assert_eq!(items[0]["type"], "url");
    assert_eq!(items[0]["url"], "https://example.invalid/x");
    assert_eq!(
        run["result"]["item"]["export_item_id"],
        items[0]["export_item_id"]
    );

    let (status, _) = neko.get("/runs/nope/export").await;
    assert_eq!(status, 404);
    let (status, _) = neko.get(&format!("/runs/{run_id}/export?limit=0")).await;
    assert_eq!(status, 422);
}

/// Cancel reaches the plugin: an async Python entry is cancelled, a sync one sees
/// `ctx.cancelled`, a Rust sync handler sees `is_cancelled()`; one that ignores it still ends
/// `canceled` at its deadline. A terminal run is not changed by a cancel.
#[tokio::test]
async fn cancel_ends_runs_canceled() {
    let neko = Neko::start_mixed(&[echo_plugin("echo", "")], &[reporter()], "");
    neko.wait_running("reporter").await;
    neko.wait_running("echo").await;
    for (plugin, entry, args) in [
        ("reporter", "wait_async", json!({})),
        ("reporter", "wait_sync", json!({})),
        ("echo", "spin", json!({"ms": 30_000})),
        ("reporter", "stubborn", json!({})),
    ] {
        let run_id = running_run(&neko, plugin, entry, args).await;
        let (status, run) = neko
            .post(
                &format!("/runs/{run_id}/cancel"),
                &json!({"reason": "enough"}),
            )
            .await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["status"], "cancel_requested", "{run}");
        assert_eq!(run["cancel_requested"], true);
        assert_eq!(run["cancel_reason"], "enough");
        let run = neko.wait_run(&run_id).await;
        assert_eq!(run["status"], "canceled", "{plugin}/{entry}: {run}");
        assert_eq!(run["error"]["code"], "CANCELED");
        let (_, again) = neko
            .post(&format!("/runs/{run_id}/cancel"), &json!({}))
            .await;
        assert_eq!(again["status"], "canceled", "terminal states never change");
    }
    // The plugins keep serving.
    let run = neko.run("echo", "echo", json!({"x": 1})).await;
    assert_eq!(run["status"], "succeeded");
    let (status, _) = neko.post("/runs/nope/cancel", &json!({})).await;
    assert_eq!(status, 404);
}

/// `wait_ms` on create and on read answers with the terminal record as soon as there is one,
/// or with the current record when the wait is over.
#[tokio::test]
async fn waiting_reads_answer_when_the_run_ends() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let (status, run) = neko
        .post(
            "/runs",
            &json!({"plugin_id": "echo", "entry_id": "echo", "args": {"a": 1}, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["a"], 1);
    assert!(
        run["run_token"].is_string() && run["expires_at"].is_u64(),
        "{run}"
    );

    let slow = neko.create_run("echo", "sleep", json!({"ms": 5_000})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, run) = neko.get(&format!("/runs/{slow}?wait_ms=100")).await;
    assert!(!is_terminal(&run), "{run}");
    let quick = neko.create_run("echo", "sleep", json!({"ms": 200})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, run) = neko.get(&format!("/runs/{quick}?wait_ms=20000")).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, _) = neko.get("/runs/nope?wait_ms=1000").await;
    assert_eq!(status, 404);
}

/// `GET /runs` lists newest first with plugin and status filters and cursor paging.
#[tokio::test]
async fn runs_are_listed_with_filters_and_pages() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(neko.run("echo", "echo", json!({"i": i})).await["run_id"].clone());
    }
    let failed = neko
        .run("echo", "fail", json!({"code": "X", "message": "m"}))
        .await;
    let missing = neko.run("ghost", "echo", json!({})).await;
    assert_eq!(missing["error"]["code"], "NOT_FOUND");

    let (_, page) = neko
        .get("/runs?plugin_id=echo&status=succeeded&limit=2")
        .await;
    let runs = page["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], ids[4], "newest first");
    let mut seen: Vec<Value> = runs.iter().map(|r| r["run_id"].clone()).collect();
    let mut cursor = page["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let (_, page) = neko
            .get(&format!(
                "/runs?plugin_id=echo&status=succeeded&limit=2&cursor={c}"
            ))
            .await;
        seen.extend(
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["run_id"].clone()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (_, page) = neko.get("/runs?status=failed").await;
    let failed_ids: Vec<&Value> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["run_id"])
        .collect();
    assert_eq!(failed_ids, [&missing["run_id"], &failed["run_id"]]);
    let (status, body) = neko.get("/runs?status=bogus").await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = neko.get("/runs?limit=0").await;
    assert_eq!(status, 422);
    let (status, _) = neko.get("/runs?cursor=garbage").await;
    assert_eq!(status, 422);
}

/// SIGKILL of the supervisor mid-run: after a restart on the same data dir every acknowledged
/// run is there with its exports, and the run that was in flight is failed with
/// SUPERVISOR_RESTARTED.
#[tokio::test]
async fn history_survives_a_supervisor_sigkill() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let done = neko.run("echo", "echo", json!({"keep": "me"})).await;
    let in_flight = running_run(&neko, "echo", "sleep", json!({"ms": 30_000})).await;
    let queued_only = neko
        .create_run("echo", "sleep", json!({"ms": 30_000}))
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let neko = neko.kill_and_restart();
    let done_id = done["run_id"].as_str().unwrap();
    let (status, again) = neko.get(&format!("/runs/{done_id}")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, done, "a finished run comes back unchanged");
    let (items, _) = all_exports(&neko, done_id, 200).await;
    assert_eq!(items.len(), 1);
    for id in [&in_flight, &queued_only] {
        let (_, run) = neko.get(&format!("/runs/{id}")).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"]["code"], "SUPERVISOR_RESTARTED", "{run}");
    }
    neko.wait_running("echo").await;
    let run = neko.run("echo", "echo", json!({"after": true})).await;
    assert_eq!(run["status"], "succeeded");
    assert!(neko.data_dir.join("runs.sqlite3").is_file());
}

/// With `[runs] persist = false` nothing is written to disk.
#[tokio::test]
async fn runs_can_stay_in_memory() {
    let neko = Neko::start_with(&[echo_plugin("echo", "")], "[runs]\npersist = false\n");
    neko.wait_running("echo").await;
    let run = neko.run("echo", "echo", json!({})).await;
    assert_eq!(run["status"], "succeeded");
    let (status, _) = neko
        .get(&format!("/runs/{}", run["run_id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert!(!neko.data_dir.join("runs.sqlite3").exists());
}

/// Upload → download round trip with relative URLs; a body over the session's limit is refused
/// (413) and the session stays usable; a finished upload cannot be written again; a run that is
/// not running takes no uploads.
#[tokio::test]
async fn uploads_round_trip_with_a_size_limit() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run_id = running_run(&neko, "echo", "sleep", json!({"ms": 30_000})).await;
    let (status, session) = neko
        .post(
            &format!("/runs/{run_id}/uploads"),
            &json!({"filename": "a.bin", "max_bytes": 1000}),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let upload_url = session["upload_url"].as_str().unwrap();
    let blob_url = session["blob_url"].as_str().unwrap();
    assert_eq!(
        upload_url,
        format!("/uploads/{}", session["upload_id"].as_str().unwrap())
    );
    assert_eq!(session["blob_id"], session["upload_id"]);
    let put = |body: Vec<u8>| {
        neko.client
            .put(format!("{}{upload_url}", neko.base))
            .body(body)
            .send()
    };
    let too_big = put(vec![7u8; 1001]).await.unwrap();
    assert_eq!(too_big.status(), 413);
    let detail: Value = too_big.json().await.unwrap();
    assert_eq!(detail["detail"], "upload too large");
    let content: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let done = put(content.clone()).await.unwrap();
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["ok"], true);
    assert_eq!(done["size"], 1000);
    let again = put(vec![1]).await.unwrap();
    assert_eq!(again.status(), 404, "a finished upload is closed");

    let download = neko
        .client
        .get(format!("{}{blob_url}", neko.base))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let disposition = download.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(disposition.contains(".bin"), "{disposition}");
    assert_eq!(download.bytes().await.unwrap().to_vec(), content);
    let other = neko.create_run("echo", "echo", json!({})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let blob_id = session["blob_id"].as_str().unwrap();
    let (status, _) = neko.get(&format!("/runs/{other}/blobs/{blob_id}")).await;
    assert_eq!(status, 404, "a blob is only reachable through its own run");

    let (status, _) = neko.post("/runs/nope/uploads", &json!({})).await;
    assert_eq!(status, 404);
    neko.wait_run(&other).await;
    let (_, late) = neko
        .post(&format!("/runs/{other}/uploads"), &json!({}))
        .await;
    let late_put = neko
        .client
        .put(format!(
            "{}{}",
            neko.base,
            late["upload_url"].as_str().unwrap()
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(late_put.status(), 409, "run not running");
}

/// `kill -9` of a Python plugin mid-run fails the run with PLUGIN_CRASHED at once (not at its
/// deadline), and the restarted plugin serves the next run.
#[tokio::test]
async fn killed_plugin_fails_its_runs_and_serves_after_restart() {
    let neko = Neko::start_mixed(&[], &[reporter()], "");
    let pid = neko.wait_running("reporter").await;
    let run_id = running_run(&neko, "reporter", "wait_async", json!({})).await;
    crate::helper::signal(pid, libc::SIGKILL);
    let run = neko.wait_run(&run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "PLUGIN_CRASHED", "{run}");
    crate::helper::wait_for_async(
        || async {
            let p = neko.plugin("reporter").await;
            p["status"] == "running" && p["pid"].as_u64().is_some_and(|n| n as u32 != pid)
        },
        "plugin restarted",
    )
    .await;
    let run = neko.run("reporter", "report", json!({"n": 1})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// Retention keeps at most `max_records` finished runs (checked at start and every minute),
/// the newest, with their exports. A backlog larger than one retention pass (500 runs) goes in
/// several, with the tracker answering in between.
#[tokio::test]
async fn retention_deletes_the_oldest_finished_runs() {
    let neko = Neko::start_with(&[echo_plugin("echo", "")], "[runs]\nmax_records = 2\n");
    neko.wait_running("echo").await;
    for _ in 0..44 {
        let burst = (0..25).map(|i| neko.run("echo", "echo", json!({"filler": i})));
        for run in futures::future::join_all(burst).await {
            assert_eq!(run["status"], "succeeded", "{run}");
        }
    }
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            neko.run("echo", "echo", json!({"i": i})).await["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let neko = neko.kill_and_restart();
    // The first pass runs before neko serves, the others a moment apart.
    crate::helper::wait_for_async(
        || async {
            let (_, list) = neko.get("/runs?limit=1000").await;
            list["runs"].as_array().map(Vec::len) == Some(2)
        },
        "retention to leave 2 runs",
    )
    .await;
    for (i, id) in ids.iter().enumerate() {
        let (status, _) = neko.get(&format!("/runs/{id}")).await;
        assert_eq!(status, if i < 2 { 404 } else { 200 }, "run {i}");
        let (status, _) = neko.get(&format!("/runs/{id}/export")).await;
        assert_eq!(status, if i < 2 { 404 } else { 200 }, "exports of run {i}");
    }
}

/// A run in flight when its plugin is stopped by hand ends at once (NOT_READY), and a run for a
/// stopped plugin fails the same way.
#[tokio::test]
async fn stopping_a_plugin_ends_its_runs() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run_id = running_run(&neko, "echo", "sleep", json!({"ms": 30_000})).await;
    let (status, body) = neko.admin_post("/plugin/echo/stop").await;
    assert_eq!(status, 200, "{body}");
    let run = neko.wait_run(&run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "NOT_READY", "{run}");
    let run = neko.run("echo", "echo", json!({})).await;
    assert_eq!(run["error"]["code"], "NOT_READY", "{run}");
}

/// A plugin failing with code TIMEOUT or CANCELED ends its run `failed` (only neko's deadline and
/// a client's cancel make `timeout` / `canceled`), and every answered run, failed ones included,
/// has the "trigger_plugin response" export (only a success lists it in result_refs).
#[tokio::test]
async fn plugin_error_codes_do_not_change_the_run_status() {
    let neko = Neko::start_mixed(&[], &[reporter()], "");
    neko.wait_running("reporter").await;
    for code in ["TIMEOUT", "CANCELED", "ErrorCode.TIMEOUT"] {
        let run = neko
            .run("reporter", "own_codes", json!({"code": code}))
            .await;
        assert_eq!(run["status"], "failed", "{code}: {run}");
        assert_eq!(run["error"]["code"], code.trim_start_matches("ErrorCode."));
        assert_eq!(run["result_refs"], json!([]));
        let (items, _) = all_exports(&neko, run["run_id"].as_str().unwrap(), 200).await;
        assert_eq!(items.len(), 1, "{items:?}");
        let response: Value = serde_json::from_str(items[0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(response["success"], false);
        assert_eq!(
            response["plugin_response"]["error"]["message"],
            format!("upstream said {code}")
        );
    }
    let missing = neko.run("ghost", "x", json!({})).await;
    let (items, _) = all_exports(&neko, missing["run_id"].as_str().unwrap(), 200).await;
    assert_eq!(items.len(), 1, "an unknown plugin's run is answered too");
}
