//! Plugin log files: a plugin's output lands in `<data_dir>/logs/plugins/<id>/`, and
//! `GET /plugin/{id}/logs` and `/plugin/{id}/logs/files` read it back; `WS /ws/logs/{id}` tails it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helper::{Neko, PluginDir, TIMEOUT, bin_dir, bundled_plugin, echo_plugin, shell_plugin};

/// A native plugin that prints one line on stderr, then (a moment later, so the order in the
/// file is known) six on stdout, then runs the echo plugin, which speaks the protocol.
fn talker() -> PluginDir {
    let echo = bin_dir().join("neko-plugin-echo");
    shell_plugin(
        "talker",
        &format!(
            "echo 'Oops On Stderr' >&2; sleep 0.2; echo 'hello from stdout'; \
             for i in 1 2 3 4 5; do echo \"line $i\"; done; exec {}",
            echo.display()
        ),
        "",
    )
}

/// `GET path` as admin, polled until `done` holds for its body, failing after [`TIMEOUT`].
async fn wait_body(neko: &Neko, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = neko.admin_get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out on {path}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn messages(body: &Value) -> Vec<&str> {
    body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect()
}

/// What a plugin prints is written to its file in neko's data dir and read back parsed (INFO,
/// neko's timestamp); `lines` takes the tail, `level` and `search` filter, and the file is listed.
#[tokio::test]
async fn plugin_output_is_written_to_its_file_and_read_back() {
    let neko = Neko::start(&[talker()]);
    neko.wait_running("talker").await;
    let body = wait_body(&neko, "/plugin/talker/logs", |b| {
        messages(b).contains(&"line 5")
    })
    .await;
    assert_eq!(body["plugin_id"], "talker");
    let got = messages(&body);
    let at = |m: &str| {
        got.iter()
            .position(|g| *g == m)
            .unwrap_or_else(|| panic!("{m}: {body}"))
    };
    assert!(at("Oops On Stderr") < at("hello from stdout"), "{body}");
    assert!(at("line 1") < at("line 5"), "{body}");
    let first = &body["logs"][at("line 1")];
    assert_eq!(first["level"], "INFO", "{body}");
    let ts = first["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "YYYY-MM-DD HH:MM:SS".len(), "{ts}");
    assert_eq!(body["returned_lines"], got.len());
    assert_eq!(body["total_lines"], got.len());

    // The file is under the data dir, named after the plugin and its start.
    let file = body["log_file"].as_str().unwrap().to_string();
    assert!(
        file.starts_with("talker_") && file.ends_with(".log"),
        "{file}"
    );
    let on_disk = neko.data_dir.join("logs/plugins/talker").join(&file);
    let text = std::fs::read_to_string(&on_disk).unwrap();
    assert!(text.contains(" | INFO | line 3\n"), "{text}");

    // The tail of the file, in order.
    let (_, tail) = neko.admin_get("/plugin/talker/logs?lines=2").await;
    assert_eq!(tail["total_lines"], 2, "{tail}");
    assert_eq!(tail["returned_lines"], 2, "{tail}");

    // Filters: level exact after upper-casing, search a substring in any case.
    let (_, info) = neko.admin_get("/plugin/talker/logs?level=info").await;
    assert_eq!(info["returned_lines"], body["returned_lines"], "{info}");
    let (_, errors) = neko.admin_get("/plugin/talker/logs?level=ERROR").await;
    assert_eq!(errors["returned_lines"], 0, "{errors}");
    assert_eq!(errors["total_lines"], body["total_lines"], "{errors}");
    let (_, found) = neko
        .admin_get("/plugin/talker/logs?search=oops%20ON&start_time=x&end_time=y")
        .await;
    assert_eq!(messages(&found), vec!["Oops On Stderr"], "{found}");

    let (status, files) = neko.admin_get("/plugin/talker/logs/files").await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files["plugin_id"], "talker");
    assert_eq!(files["count"], 1, "{files}");
    assert_eq!(files["log_files"][0]["filename"], file.as_str());
    assert!(
        files["log_files"][0]["size"].as_u64().unwrap() > 0,
        "{files}"
    );
    assert!(files["log_files"][0]["modified"].as_f64().unwrap() > 0.0);
    assert!(files["time"].is_string());
}

/// A Python plugin's log lines keep their own level in neko's file: an entry that raises is found
/// with `level=ERROR`, with the SDK's message, not as INFO output.
#[tokio::test]
async fn python_plugin_lines_keep_their_level() {
    let neko = Neko::start_mixed(&[], &[bundled_plugin("hello")], "");
    neko.wait_running("hello").await;
    let run = neko.run("hello", "boom", serde_json::json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let body = wait_body(&neko, "/plugin/hello/logs?level=ERROR", |b| {
        messages(b).iter().any(|m| m.contains("boom requested"))
    })
    .await;
    let entry = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("boom requested"))
        .unwrap();
    assert_eq!(entry["level"], "ERROR", "{body}");
    assert!(
        !entry["message"].as_str().unwrap().contains("| ERROR |"),
        "{body}"
    );
    // neko's own log carries the line at its level too, not as INFO output.
    neko.wait_logged(&["ERROR neko::plugin_output", "boom requested"])
        .await;
}

/// Without files in neko's folder (here: `plugin_files = false`), the plugin's own `logs/` is
/// read, in the Python SDK's format, with its levels.
#[tokio::test]
async fn sdk_log_files_in_the_plugin_folder_are_read() {
    let neko = Neko::start_with(
        &[echo_plugin("sdkfmt", "")],
        "[log]\nplugin_files = false\n",
    );
    let logs = neko.plugins_dir.join("sdkfmt/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        logs.join("sdkfmt_20260101_000000.log"),
        "2026-01-01 00:00:00.001 | DEBUG    | sdkfmt | starting up\n\
         2026-01-01 00:00:01.002 | WARNING  | sdkfmt | disk almost full\n\
         not a log line",
    )
    .unwrap();
    let (status, body) = neko.admin_get("/plugin/sdkfmt/logs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["log_file"], "sdkfmt_20260101_000000.log", "{body}");
    assert_eq!(
        messages(&body),
        vec!["starting up", "disk almost full", "not a log line"]
    );
    let levels: Vec<&str> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, vec!["DEBUG", "WARNING", "UNKNOWN"]);
    assert_eq!(body["logs"][1]["timestamp"], "2026-01-01 00:00:01");
    let (_, warn) = neko.admin_get("/plugin/sdkfmt/logs?level=warning").await;
    assert_eq!(messages(&warn), vec!["disk almost full"], "{warn}");
    // neko wrote nothing of its own.
    assert!(!neko.data_dir.join("logs/plugins/sdkfmt").exists());
    let (_, files) = neko.admin_get("/plugin/sdkfmt/logs/files").await;
    assert_eq!(files["count"], 1, "{files}");
}

/// A plugin with no log files answers empty, as in the reference; `_server` is neko's own log
/// (the same events as on stderr); the routes are admin only, a bad id is a 400 and a bad `lines`
/// a 422.
#[tokio::test]
async fn logs_routes_answer_empty_without_files_and_check_their_input() {
    let neko = Neko::start(&[]);
    let (status, body) = neko.admin_get("/plugin/ghost/logs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin_id"], "ghost");
    assert_eq!(body["logs"], serde_json::json!([]), "{body}");
    assert_eq!(body["returned_lines"], 0);
    assert_eq!(body["total_lines"], 0);
    assert!(body["log_file"].is_null(), "{body}");
    let (status, files) = neko.admin_get("/plugin/ghost/logs/files").await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files["count"], 0, "{files}");
    assert_eq!(files["log_files"], serde_json::json!([]));

    let (status, body) = neko
        .admin_get("/plugin/_server/logs?search=plugins%20scanned")
        .await;
    assert_eq!(status, 200, "{body}");
    let line = &body["logs"][0];
    assert_eq!(line["level"], "INFO", "{body}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("plugins scanned"),
        "{body}"
    );
    assert!(line["timestamp"].as_str().unwrap().len() == 19, "{body}");
    let (status, files) = neko.admin_get("/plugin/_server/logs/files").await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files["count"], 1, "{files}");
    for path in ["/plugin/ghost/logs", "/plugin/ghost/logs/files"] {
        let (status, body) = neko.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    for path in [
        "/plugin/..%2F..%2Fetc%2Fpasswd/logs",
        "/plugin/..%2F..%2Fetc/logs/files",
        "/plugin/a.b/logs",
    ] {
        let (status, body) = neko.admin_get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["detail"].is_string(), "{body}");
    }
    for lines in ["0", "10001", "many"] {
        let (status, body) = neko
            .admin_get(&format!("/plugin/ghost/logs?lines={lines}"))
            .await;
        assert_eq!(status, 422, "{lines}: {body}");
    }
}

mod live {
    //! `WS /ws/logs/{id}?code=<admin token>`: the live tail.

    use serde_json::Value;
    use tokio_tungstenite::tungstenite::Error;

    use super::{Neko, TIMEOUT, bin_dir, shell_plugin};
    use crate::helper::TOKEN;
    use crate::helper::ws::{Ws, closed, next_json, try_connect as connect};

    /// The next JSON frame that is not a ping.
    async fn recv(ws: &mut Ws) -> Value {
        loop {
            let frame = next_json(ws, TIMEOUT).await;
            if frame["type"] != "ping" {
                return frame;
            }
        }
    }

    fn messages(frame: &Value) -> Vec<String> {
        frame["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect()
    }

    /// A client that says nothing for 30 s gets a `ping` frame (the reference's keep-alive); when
    /// neko shuts down, the socket is closed with 1001 "server shutting down".
    #[tokio::test]
    async fn silent_clients_are_pinged_and_shutdown_closes_the_socket() {
        let neko = Neko::start(&[crate::helper::echo_plugin("echo", "")]);
        neko.wait_running("echo").await;
        let mut ws = connect(&neko, &format!("/ws/logs/echo?code={TOKEN}"))
            .await
            .expect("connects");
        assert_eq!(recv(&mut ws).await["type"], "initial");
        let started = std::time::Instant::now();
        // Appends may come first (the plugin's start-up lines); the ping follows 30 s of silence.
        let ping = loop {
            let frame = next_json(&mut ws, std::time::Duration::from_secs(40)).await;
            if frame["type"] == "ping" {
                break frame;
            }
        };
        assert_eq!(ping, serde_json::json!({"type": "ping"}));
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(29),
            "pinged early"
        );

        crate::helper::signal(neko.pid(), libc::SIGTERM);
        assert_eq!(
            closed(&mut ws).await,
            (1001, "server shutting down".to_string())
        );
    }

    /// The initial frame holds the plugin's lines so far; what the plugin prints later arrives
    /// in append frames, exactly those lines; a wrong or missing code, or a bad id, is refused
    /// before the upgrade.
    #[tokio::test]
    async fn the_live_tail_sends_the_file_then_what_the_plugin_prints() {
        let trigger = tempfile::tempdir().unwrap();
        let go = trigger.path().join("go");
        // Prints two lines at start, two more once `go` exists, and speaks the protocol.
        let plugin = shell_plugin(
            "tailed",
            &format!(
                "echo 'early one'; echo 'early two'; \
                 (while [ ! -e '{go}' ]; do sleep 0.05; done; echo 'later A'; echo 'later B') & \
                 exec {echo}",
                go = go.display(),
                echo = bin_dir().join("neko-plugin-echo").display()
            ),
            "",
        );
        let neko = Neko::start(&[plugin]);
        neko.wait_running("tailed").await;
        super::wait_body(&neko, "/plugin/tailed/logs", |b| {
            super::messages(b).contains(&"early two")
        })
        .await;

        let code = TOKEN.to_ascii_lowercase();
        let mut ws = connect(&neko, &format!("/ws/logs/tailed?code={code}"))
            .await
            .expect("connects with the admin token");
        let initial = recv(&mut ws).await;
        assert_eq!(initial["type"], "initial", "{initial}");
        let lines = messages(&initial);
        let at = |m: &str| lines.iter().position(|l| l == m);
        assert!(
            at("early one").is_some() && at("early one") < at("early two"),
            "{initial}"
        );
        assert_eq!(initial["total_lines"], lines.len());
        let file = initial["log_file"].as_str().unwrap();
        assert!(
            file.starts_with("tailed_") && file.ends_with(".log"),
            "{file}"
        );
        assert_eq!(initial["logs"][0]["level"], "INFO");

        std::fs::write(&go, "").unwrap();
        let mut appended = Vec::new();
        while appended.len() < 2 {
            let frame = recv(&mut ws).await;
            assert_eq!(frame["type"], "append", "{frame}");
            // The SDK's own log lines (its handshake, on stderr) may come too; they are not
            // the test's to predict.
            appended.extend(
                messages(&frame)
                    .into_iter()
                    .filter(|m| !m.contains("neko_sdk")),
            );
        }
        assert_eq!(appended, vec!["later A", "later B"]);

        for path in [
            "/ws/logs/tailed",
            "/ws/logs/tailed?code=",
            "/ws/logs/tailed?code=WRONG",
        ] {
            match connect(&neko, path).await {
                Err(Error::Http(resp)) => assert_eq!(resp.status(), 403, "{path}"),
                other => panic!("{path}: {:?}", other.map(|_| ())),
            }
        }
        match connect(&neko, &format!("/ws/logs/a.b?code={TOKEN}")).await {
            Err(Error::Http(resp)) => assert_eq!(resp.status(), 400),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
