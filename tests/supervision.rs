//! Supervision: crashes, restarts, give-ups, hangs, the supervisor's own death, forged frames.

use std::time::Duration;

use serde_json::json;

use crate::helper::{Neko, echo_plugin, process_alive, shell_plugin, signal, wait_for_async};

/// `kill -9` of a plugin: its supervisor restarts it and it serves again, logging the crash with
/// pid, exit and restart count.
#[tokio::test]
async fn killed_plugin_is_restarted_and_serves_again() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let pid = neko.wait_running("echo").await;
    signal(pid, libc::SIGKILL);
    wait_for_async(
        || async {
            let p = neko.plugin("echo").await;
            p["status"] == "running" && p["pid"].as_u64().is_some_and(|n| n as u32 != pid)
        },
        "restarted with a new pid",
    )
    .await;
    let p = neko.plugin("echo").await;
    assert_eq!(p["restarts"], 1);
    assert!(p["last_exit"].as_str().unwrap().contains("signal 9"), "{p}");
    let run = neko.run("echo", "echo", json!({"again": true})).await;
    assert_eq!(run["status"], "succeeded");
    assert!(neko.logged(&[
        "plugin crashed; restarting",
        "echo",
        &pid.to_string(),
        "restart_count=1"
    ]));
}

/// A plugin that exits at startup is restarted per its policy, then given up on: `crashed`, with
/// the reason, and it stays down until started by hand.
#[tokio::test]
async fn plugin_failing_at_startup_is_restarted_then_crashed() {
    let neko = Neko::start(&[shell_plugin(
        "crashy",
        "echo starting >&2; exit 3",
        "max_restarts = 3\nbackoff_initial_ms = 20\nbackoff_max_ms = 100",
    )]);
    wait_for_async(
        || async { neko.plugin("crashy").await["status"] == "crashed" },
        "crashy gives up",
    )
    .await;
    let p = neko.plugin("crashy").await;
    assert_eq!(p["restarts"], 3, "{p}");
    // The error quotes what the process said before dying.
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("exit code 3: starting"),
        "{p}"
    );
    neko.wait_logged(&["giving up", "crashy"]).await;
    neko.wait_logged(&["crashy", "starting"]).await;
    // Down means down: no new launch happens on its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(neko.plugin("crashy").await["restarts"], 3);
    let (status, body) = neko.admin_post("/plugin/crashy/start").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("died immediately")
    );
}

/// A plugin that stops answering (SIGSTOP, so no heartbeats) is killed at the heartbeat deadline
/// and restarted.
#[tokio::test]
async fn hung_plugin_is_killed_at_the_heartbeat_deadline_and_restarted() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let pid = neko.wait_running("echo").await;
    let (_, created) = neko
        .post(
            "/runs",
            &json!({"plugin_id": "echo", "entry_id": "freeze", "args": {}}),
        )
        .await;
    wait_for_async(
        || async {
            let p = neko.plugin("echo").await;
            p["status"] == "running" && p["pid"].as_u64().is_some_and(|n| n as u32 != pid)
        },
        "hung plugin replaced",
    )
    .await;
    assert!(neko.logged(&["no heartbeat", "echo"]));
    let (_, run) = neko
        .get(&format!("/runs/{}", created["run_id"].as_str().unwrap()))
        .await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "PLUGIN_CRASHED");
}

/// A plugin that dies in the middle of a run fails that run at once with PLUGIN_CRASHED.
#[tokio::test]
async fn crash_mid_run_fails_the_run_with_plugin_crashed() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run = neko.run("echo", "exit", json!({"code": 7})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "PLUGIN_CRASHED");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 7")
    );
    neko.wait_running("echo").await;
}

/// SIGKILL of the supervisor leaves no plugin process behind.
#[tokio::test]
async fn killing_the_supervisor_leaves_no_plugin_process() {
    let mut neko = Neko::start(&[echo_plugin("a", ""), echo_plugin("b", "")]);
    let pa = neko.wait_running("a").await;
    let pb = neko.wait_running("b").await;
    signal(neko.pid(), libc::SIGKILL);
    let _ = neko.child.wait();
    wait_for_async(
        || async { !process_alive(pa) && !process_alive(pb) },
        "plugins die with the supervisor",
    )
    .await;
}

/// SIGTERM to the supervisor stops every plugin gracefully and exits 0.
#[tokio::test]
async fn sigterm_stops_plugins_and_exits_cleanly() {
    let mut neko = Neko::start(&[echo_plugin("echo", "")]);
    let pid = neko.wait_running("echo").await;
    signal(neko.pid(), libc::SIGTERM);
    let status = neko.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!process_alive(pid));
}

/// A frame signed with the wrong key is dropped and logged; the plugin keeps serving.
#[tokio::test]
async fn forged_frame_is_rejected() {
    use zeromq::{Socket, SocketSend};
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let sock = std::fs::read_dir(neko.data_dir.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("the echo plugin's socket");
    let forger_key = neko_protocol::FrameKey::new(vec![7u8; 32]);
    let mut session = neko_protocol::Session::new(
        forger_key,
        neko_protocol::Direction::PluginToSupervisor,
        1 << 20,
    );
    let [mac, payload] = session
        .seal(neko_protocol::Message::Heartbeat(Default::default()))
        .unwrap();
    let mut dealer = zeromq::DealerSocket::new();
    dealer
        .connect(&format!("ipc://{}", sock.display()))
        .await
        .unwrap();
    let msg =
        zeromq::ZmqMessage::try_from(vec![bytes::Bytes::from(mac), bytes::Bytes::from(payload)])
            .unwrap();
    dealer.send(msg).await.unwrap();
    neko.wait_logged(&["dropped a frame that failed verification", "bad signature"])
        .await;
    let run = neko.run("echo", "echo", json!({"still": "ok"})).await;
    assert_eq!(run["status"], "succeeded");
}

/// A process that never says HELLO is killed at the handshake deadline and, after its restarts,
/// given up on.
#[tokio::test]
async fn silent_plugin_is_killed_at_the_handshake_deadline() {
    let neko = Neko::start_with(
        &[shell_plugin("mute", "exec sleep 30", "max_restarts = 1")],
        "[supervision]\nhandshake_timeout_ms = 200",
    );
    wait_for_async(
        || async { neko.plugin("mute").await["status"] == "crashed" },
        "mute plugin given up",
    )
    .await;
    assert!(neko.logged(&["no HELLO", "mute"]));
    let p = neko.plugin("mute").await;
    assert!(p["last_exit"].as_str().unwrap().contains("signal 9"), "{p}");
}

/// A plugin's own status dict (ctx.update_status) shows in /plugin/status with source
/// child_process.
#[tokio::test]
async fn reported_status_shows_in_plugin_status() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let run = neko.run("echo", "status", json!({"mood": "happy"})).await;
    assert_eq!(run["status"], "succeeded");
    let (_, rec) = neko.get("/plugin/status?plugin_id=echo").await;
    assert_eq!(rec["status"]["mood"], "happy", "{rec}");
    assert_eq!(rec["source"], "child_process");
    assert_eq!(rec["state"], "running");
}

/// A plugin that exits with 78 (EX_CONFIG) before its HELLO cannot start as configured: it is not
/// restarted, and its error says why.
#[tokio::test]
async fn plugin_that_cannot_start_is_not_restarted() {
    let neko = Neko::start(&[shell_plugin(
        "misconfigured",
        "echo 'SyntaxError: invalid syntax (__init__.py, line 3)' >&2; exit 78",
        "",
    )]);
    let p = neko.wait_invalid("misconfigured").await;
    assert!(p["error"].as_str().unwrap().contains("SyntaxError"), "{p}");
    assert!(
        !neko.logged(&["misconfigured", "restarting"]),
        "not restarted"
    );
}

/// neko answers HTTP only once the plugins started at boot are up, so the first request already
/// sees them running with their entries (the reference serves only after loading its plugins).
#[tokio::test]
async fn the_gateway_serves_once_boot_plugins_are_up() {
    let neko = Neko::start_mixed(
        &[echo_plugin("echo", "")],
        &[crate::helper::bundled_plugin("hello")],
        "",
    );
    let (_, body) = neko.get("/plugins").await;
    for id in ["echo", "hello"] {
        let p = body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap();
        assert_eq!(p["status"], "running", "{p}");
        assert!(!p["entries"].as_array().unwrap().is_empty(), "{p}");
    }
}

/// A run for a plugin that is restarting waits for it instead of failing NOT_READY.
#[tokio::test]
async fn runs_wait_for_a_restarting_plugin() {
    let neko = Neko::start_with(
        &[echo_plugin("echo", "")],
        // A kill inside the start window is a failed start: restarted after the backoff.
        "[restart_policy]\nbackoff_initial_ms = 500\nbackoff_max_ms = 500\nstart_window_ms = 60000\n",
    );
    let pid = neko.wait_running("echo").await;
    signal(pid, libc::SIGKILL);
    wait_for_async(
        || async { neko.plugin("echo").await["status"] == "restarting" },
        "the plugin restarting",
    )
    .await;
    let run = neko.run("echo", "echo", json!({"waited": true})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["waited"], true);
}
