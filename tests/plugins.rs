//! The registry and manual lifecycle: listing, broken plugins, start/stop/reload.

use serde_json::json;

use crate::helper::{Neko, PluginDir, echo_plugin, process_alive, shell_plugin, wait_for_async};

/// `GET /plugins` lists running plugins with the entries from their HELLO and stopped ones; as
/// in the reference, plugins whose plugin.toml cannot be used are not registered: they are
/// listed apart in `invalid_plugins`, with their error, while the others run normally.
#[tokio::test]
async fn listing_shows_entries_status_and_broken_plugins() {
    let neko = Neko::start(&[
        echo_plugin("echo", ""),
        shell_plugin("idle", "exit 0", "auto_start = false"),
        PluginDir {
            dir: "broken",
            toml: "[plugin\nid = 'broken'".into(),
        },
        PluginDir {
            dir: "wrongsdk",
            toml: "[plugin]\nid = 'wrongsdk'\nruntime = 'native'\ncommand = 'x'\n[plugin.sdk]\nsupported = '>=2.0'\n".into(),
        },
        PluginDir {
            dir: "jvm",
            toml: "[plugin]\nid = 'jvm'\nruntime = 'jvm'\n".into(),
        },
    ]);
    neko.wait_running("echo").await;
    let (status, body) = neko.get("/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "");
    let plugins = body["plugins"].as_array().unwrap();
    let find = |id: &str| plugins.iter().find(|p| p["id"] == id).cloned().unwrap();

    let echo = find("echo");
    assert_eq!(echo["status"], "running");
    assert_eq!(echo["runtime"], "native");
    let entries: Vec<&str> = echo["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for e in ["echo", "sleep", "add", "fail"] {
        assert!(entries.contains(&e), "entry {e} in {entries:?}");
    }
    let echo_entry = echo["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "echo")
        .unwrap();
    assert_eq!(echo_entry["event_key"], "echo.echo");
    assert!(echo_entry["input_schema"].is_object());

    assert_eq!(find("idle")["status"], "stopped");
    let ids: Vec<&str> = plugins.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["echo", "idle"], "only registered plugins: {body}");
    for p in plugins {
        assert!(p["status"] == "running" || p["status"] == "stopped", "{p}");
    }
    let invalid = body["invalid_plugins"].as_array().unwrap();
    let invalid_one = |id: &str| invalid.iter().find(|p| p["id"] == id).cloned().unwrap();
    let broken = invalid_one("broken");
    assert_eq!(broken["status"], "invalid");
    assert!(
        broken["error"].as_str().unwrap().contains("TOML"),
        "{broken}"
    );
    assert!(
        invalid_one("wrongsdk")["error"]
            .as_str()
            .unwrap()
            .contains("0.1.0")
    );
    assert!(
        invalid_one("jvm")["error"]
            .as_str()
            .unwrap()
            .contains("jvm")
    );
    let (_, available) = neko.get("/available").await;
    assert_eq!(available["plugins_count"], 2, "{available}");

    let (_, status) = neko.get("/plugin/status?plugin_id=echo").await;
    assert_eq!(status["status"]["status"], "running");
    assert_eq!(status["source"], "main_process_synthetic");
}

/// Stop ends the process and reports `stopped`; start brings it back; reload gives a new
/// process; a second start says it is already running; unknown and broken ids are refused.
#[tokio::test]
async fn start_stop_reload_drive_the_process() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let pid = neko.wait_running("echo").await;

    let (status, body) = neko.admin_post("/plugin/echo/stop").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Plugin stopped successfully");
    assert!(!process_alive(pid), "process {pid} is gone after stop");
    assert_eq!(neko.plugin("echo").await["status"], "stopped");
    neko.wait_logged(&["plugin stopped", "echo"]).await;

    let (status, body) = neko.admin_post("/plugin/echo/stop").await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some("Plugin 'echo' is not running"))
    );

    let (status, body) = neko.admin_post("/plugin/echo/start").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Plugin started successfully");
    let pid2 = neko.wait_running("echo").await;
    assert_ne!(pid, pid2);
    let (_, body) = neko.admin_post("/plugin/echo/start").await;
    assert_eq!(body["message"], "Plugin is already running");

    // Reload re-reads plugin.toml.
    let toml_path = neko.plugins_dir.join("echo/plugin.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(&toml_path, text.replace("Echo (echo)", "Echo renamed")).unwrap();
    let (status, body) = neko.admin_post("/plugin/echo/reload").await;
    assert_eq!(status, 200, "{body}");
    let pid3 = neko.wait_running("echo").await;
    assert_eq!(neko.plugin("echo").await["name"], "Echo renamed");
    assert_ne!(pid2, pid3);
    assert!(!process_alive(pid2));
    let run = neko.run("echo", "echo", json!({"x": 1})).await;
    assert_eq!(run["status"], "succeeded");

    let (status, _) = neko.admin_post("/plugin/nope/start").await;
    assert_eq!(status, 404);
    let (status, _) = neko.admin_post("/plugin/..%2Fetc/start").await;
    assert_eq!(status, 400);
}

/// A plugin disabled in plugin.toml is listed but cannot be started.
#[tokio::test]
async fn disabled_plugin_is_listed_and_refuses_to_start() {
    let neko = Neko::start(&[echo_plugin("off", "enabled = false")]);
    wait_for_async(
        || async {
            let p = neko.plugin("off").await;
            p["state"] == "disabled" && p["status"] == "stopped" && p["runtime_auto_start"] == false
        },
        "disabled plugin listed",
    )
    .await;
    let (status, body) = neko.admin_post("/plugin/off/start").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("disabled"));
}
