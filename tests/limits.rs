//! Per-plugin resource limits (`[limits]`, overridden in plugin.toml's `[plugin_runtime]`): memory
//! and open files as rlimits of the real process, the message rate counted by the host.

use serde_json::json;

use crate::helper::{Neko, PythonPlugin, shell_plugin, wait_for_async};

/// Waits until `id` is given up on (`crashed`) and returns its `GET /plugins` entry.
async fn wait_crashed(neko: &Neko, id: &str) -> serde_json::Value {
    wait_for_async(
        || async { neko.plugin(id).await["status"] == "crashed" },
        &format!("{id} crashed"),
    )
    .await;
    neko.plugin(id).await
}

/// A process that allocates past `max_memory_mb` gets no memory (Python: MemoryError), dies, and
/// its status names the limit; without the limit the same allocation works.
#[tokio::test]
async fn allocation_past_max_memory_mb_fails_and_the_status_names_the_limit() {
    let script = "exec python3 -c 'b = bytearray(512 * 1024 * 1024); print(\"allocated\", flush=True); raise SystemExit(3)'";
    let neko = Neko::start(&[
        shell_plugin("hog", script, "max_memory_mb = 64\nmax_restarts = 0"),
        shell_plugin("free", script, "max_restarts = 0"),
    ]);
    let p = wait_crashed(&neko, "hog").await;
    let last_exit = p["last_exit"].as_str().unwrap_or_default();
    assert!(
        last_exit.contains("exceeded max_memory_mb (limit 64 MiB): MemoryError"),
        "{p}"
    );
    assert!(
        p["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded max_memory_mb"),
        "{p}"
    );
    let (_, status) = neko.get("/plugin/status?plugin_id=hog").await;
    assert!(
        status["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("max_memory_mb"),
        "{status}"
    );
    // One structured line with the plugin, the limit and what was seen.
    neko.wait_logged(&[
        "resource limit",
        "hog",
        "max_memory_mb",
        "limit_value=64",
        "MemoryError",
    ])
    .await;
    // The control plugin allocated (and then exited with 3 on purpose): no limit in its status.
    let free = wait_crashed(&neko, "free").await;
    assert!(neko.logged(&["free", "allocated"]), "{free}");
    assert!(
        !free["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("max_memory_mb"),
        "{free}"
    );
}

/// `max_open_files` is the process's RLIMIT_NOFILE: opening more fails with EMFILE, and a plugin
/// that dies of it says so in its status. The default (4096) applies to plugins without a key.
#[tokio::test]
async fn opening_past_max_open_files_fails_with_emfile() {
    let neko = Neko::start(&[
        shell_plugin(
            "leaky",
            "echo nofile=$(ulimit -n); exec python3 -c 'import os\nfds = [os.open(\"/dev/null\", os.O_RDONLY) for _ in range(64)]'",
            "max_open_files = 32\nmax_restarts = 0",
        ),
        shell_plugin(
            "plain",
            "echo nofile=$(ulimit -n); exit 3",
            "max_restarts = 0",
        ),
    ]);
    let p = wait_crashed(&neko, "leaky").await;
    assert!(neko.logged(&["leaky", "nofile=32"]));
    let last_exit = p["last_exit"].as_str().unwrap_or_default();
    assert!(last_exit.contains("Too many open files"), "{p}");
    assert!(
        last_exit.contains("exceeded max_open_files (limit 32)"),
        "{p}"
    );
    neko.wait_logged(&[
        "resource limit",
        "leaky",
        "max_open_files",
        "limit_value=32",
    ])
    .await;
    wait_crashed(&neko, "plain").await;
    assert!(neko.logged(&["plain", "nofile=4096"]));
}

/// A Python plugin that sends STATUS frames in a tight loop.
fn flooder() -> PythonPlugin {
    PythonPlugin {
        dir: "flooder",
        toml: r#"[plugin]
id = "flooder"
entry = "plugins.flooder:Flooder"

[plugin.sdk]
supported = ">=0.1.0,<0.2.0"

[plugin_runtime]
max_message_rate = 2000
max_restarts = 0
"#
        .into(),
        init_py: r#"
from plugin.sdk import NekoPluginBase, neko_plugin, plugin_entry


@neko_plugin
class Flooder(NekoPluginBase):
    @plugin_entry(id="flood")
    def flood(self, n: int = 10, **_):
        for i in range(n):
            self.ctx.update_status({"i": i})
        return {"sent": n}
"#
        .into(),
        files: Vec::new(),
    }
}

/// A burst under `max_message_rate` is fine; a flood past it kills the plugin, and the run, the
/// status and the log say why.
#[tokio::test]
async fn flooding_the_link_past_max_message_rate_kills_the_plugin() {
    let neko = Neko::start_mixed(&[], &[flooder()], "");
    let pid = neko.wait_running("flooder").await;
    let run = neko.run("flooder", "flood", json!({"n": 500})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(neko.plugin("flooder").await["pid"], pid);

    let run = neko.run("flooder", "flood", json!({"n": 1_000_000})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "PLUGIN_CRASHED", "{run}");
    let p = wait_crashed(&neko, "flooder").await;
    for text in [
        p["last_exit"].as_str().unwrap_or_default(),
        p["error"].as_str().unwrap_or_default(),
        run["error"]["message"].as_str().unwrap_or_default(),
    ] {
        assert!(
            text.contains("exceeded max_message_rate (limit 2000 msgs/s): 2001 msgs in"),
            "{text}\n{p}\n{run}"
        );
    }
    neko.wait_logged(&[
        "resource limit",
        "flooder",
        "max_message_rate",
        "limit_value=2000",
        &format!("pid={pid}"),
    ])
    .await;
}
