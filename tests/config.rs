//! The config routes (`/plugin/{id}/config…`, admin): reads, atomic writes checked on disk,
//! protected fields, profiles and their overlay, and the refusals (bad TOML, unknown plugin,
//! traversal, no token). The effective config is also what a plugin's `self.config` reads.

use serde_json::{Value, json};

use crate::helper::{Neko, PythonPlugin, TOKEN, echo_plugin};

/// `method path` with an optional JSON body, as admin unless `admin` is false.
async fn call(
    neko: &Neko,
    method: &str,
    path: &str,
    body: Option<Value>,
    admin: bool,
) -> (u16, Value) {
    let mut req = neko
        .client
        .request(method.parse().unwrap(), format!("{}{path}", neko.base));
    if admin {
        req = req.bearer_auth(TOKEN);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin(neko: &Neko, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(neko, method, path, body, true).await
}

fn read(neko: &Neko, rel: &str) -> String {
    std::fs::read_to_string(neko.plugins_dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn read_toml(neko: &Neko, rel: &str) -> toml::Table {
    toml::from_str(&read(neko, rel)).unwrap()
}

/// The file names in the plugin folder (no temp files may be left behind by a write).
fn folder_files(neko: &Neko) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(neko.plugins_dir.join("echo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// GET config, config/toml and config/base show plugin.toml as it is on disk.
#[tokio::test]
async fn config_reads_show_the_file_on_disk() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin_id"], "echo");
    assert_eq!(body["config"]["plugin"]["id"], "echo");
    assert_eq!(body["config"]["plugin"]["command"], "neko-plugin-echo");
    assert!(
        body["config_path"]
            .as_str()
            .unwrap()
            .ends_with("echo/plugin.toml"),
        "{body}"
    );
    assert!(body["last_modified"].as_str().is_some(), "{body}");

    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/toml", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["toml"], read(&neko, "echo/plugin.toml"));

    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/base", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["config"]["plugin"]["sdk"]["supported"],
        ">=0.1.0,<0.2.0"
    );
}

/// PUT config and PUT config/toml write the file atomically (no temp file left), keep or protect
/// `plugin.id` / `plugin.entry`, and say a reload is needed; bad TOML changes nothing.
#[tokio::test]
async fn config_writes_reach_the_disk_and_protect_the_plugin_id() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let before = folder_files(&neko);
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config",
        Some(json!({"config": {"plugin": {"name": "Renamed", "runtime": "native", "command": "neko-plugin-echo"}, "extra": {"a": 1, "list": [1, 2]}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["requires_reload"], true);
    assert_eq!(body["message"], "Config updated successfully");
    assert_eq!(body["config"]["extra"]["a"], 1);
    let on_disk = read_toml(&neko, "echo/plugin.toml");
    assert_eq!(
        on_disk["plugin"]["id"].as_str(),
        Some("echo"),
        "id copied back"
    );
    assert_eq!(on_disk["plugin"]["name"].as_str(), Some("Renamed"));
    assert_eq!(on_disk["extra"]["list"].as_array().unwrap().len(), 2);
    assert!(on_disk["plugin"].get("sdk").is_none(), "a full replace");
    assert_eq!(folder_files(&neko), before);

    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config",
        Some(json!({"config": {"plugin": {"id": "other"}}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Cannot modify critical field 'plugin.id'. This field is protected."
    );
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config",
        Some(json!({"config": {"plugin": {"entry": "mod:Class"}}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Cannot modify critical field 'plugin.entry'. This field is protected."
    );

    let text = "# hand-written\n[plugin]\nid = \"echo\"\nruntime = \"native\"\ncommand = \"neko-plugin-echo\"\n\n[extra]\nb = 2 # kept\n";
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/toml",
        Some(json!({"toml": text})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requires_reload"], true);
    assert_eq!(body["config"]["extra"]["b"], 2);
    assert_eq!(read(&neko, "echo/plugin.toml"), text, "written verbatim");

    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/toml",
        Some(json!({"toml": "[plugin\nid="})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Invalid TOML format: "),
        "{body}"
    );
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/toml",
        Some(json!({"toml": "[plugin]\nid = \"stolen\"\n"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Cannot modify critical field 'plugin.id'. This field is protected."
    );
    assert_eq!(
        read(&neko, "echo/plugin.toml"),
        text,
        "refused writes change nothing"
    );
    assert_eq!(folder_files(&neko), before);

    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config",
        Some(json!({"config": {"a": null}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config",
        Some(json!({"config": "x"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

/// parse_toml and render_toml convert without writing; parse refuses a changed plugin id.
#[tokio::test]
async fn parse_and_render_round_trip_without_writing() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let before = read(&neko, "echo/plugin.toml");
    let config = json!({"a": 1, "t": {"s": "x", "f": 1.5, "l": [true, false], "n": {"deep": 3}}});
    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/render_toml",
        Some(json!({"config": config})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin_id"], "echo");
    let text = body["toml"].as_str().unwrap().to_string();
    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/parse_toml",
        Some(json!({"toml": text})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"], config);
    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/parse_toml",
        Some(json!({"toml": "a = "})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Invalid TOML format: "),
        "{body}"
    );
    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/parse_toml",
        Some(json!({"toml": "[plugin]\nid = \"x\"\n"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(read(&neko, "echo/plugin.toml"), before);
}

/// A profile is created (file + profiles.toml), activated, overlays GET config, and deleting the
/// active profile removes the `active` key (neko's decision 8) while keeping the file.
#[tokio::test]
async fn profiles_overlay_the_config_until_the_active_one_is_deleted() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/profiles", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profiles_exists"], false);
    assert_eq!(body["config_profiles"], Value::Null);

    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/profiles/dev",
        Some(json!({"config": {"plugin_runtime": {"note": "dev"}, "db": {"host": "dev-host"}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["name"], "dev");
    assert_eq!(body["profile"]["path"], "profiles/dev.toml");
    assert_eq!(body["profile"]["exists"], true);
    assert_eq!(body["config"]["db"]["host"], "dev-host");
    assert_eq!(
        read_toml(&neko, "echo/profiles/dev.toml")["db"]["host"].as_str(),
        Some("dev-host")
    );
    let profiles = read_toml(&neko, "echo/profiles.toml");
    assert_eq!(
        profiles["config_profiles"]["active"].as_str(),
        Some("dev"),
        "first profile is active"
    );
    assert_eq!(
        profiles["config_profiles"]["files"]["dev"].as_str(),
        Some("profiles/dev.toml")
    );

    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/profiles/prod",
        Some(json!({"config": {"db": {"host": "prod-host", "port": 5432}}, "make_active": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = admin(&neko, "GET", "/plugin/echo/config", None).await;
    assert_eq!(body["config"]["db"]["host"], "dev-host", "{body}");
    assert_eq!(
        body["config"]["plugin_runtime"]["note"], "dev",
        "deep merge"
    );
    assert_eq!(body["config"]["plugin"]["id"], "echo");

    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/profiles/prod/activate",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profiles_exists"], true);
    assert_eq!(body["config_profiles"]["active"], "prod");
    assert_eq!(body["config_profiles"]["files"]["prod"]["exists"], true);
    assert_eq!(
        read_toml(&neko, "echo/profiles.toml")["config_profiles"]["active"].as_str(),
        Some("prod")
    );
    let (_, body) = admin(&neko, "GET", "/plugin/echo/config", None).await;
    assert_eq!(body["config"]["db"]["host"], "prod-host", "{body}");
    assert_eq!(body["config"]["db"]["port"], 5432);
    let (_, base) = admin(&neko, "GET", "/plugin/echo/config/base", None).await;
    assert!(base["config"].get("db").is_none(), "{base}");

    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/profiles/dev", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"]["db"]["host"], "dev-host");
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/profiles/unmapped", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["path"], "profiles/unmapped.toml");
    assert_eq!(body["profile"]["exists"], false);
    assert_eq!(body["config"], json!({}));

    let (status, body) = admin(&neko, "DELETE", "/plugin/echo/config/profiles/prod", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"plugin_id": "echo", "profile": "prod", "removed": true})
    );
    let profiles = read_toml(&neko, "echo/profiles.toml");
    assert!(
        profiles["config_profiles"].get("active").is_none(),
        "{profiles:?}"
    );
    assert!(profiles["config_profiles"]["files"].get("prod").is_none());
    assert!(
        neko.plugins_dir.join("echo/profiles/prod.toml").is_file(),
        "the file is kept"
    );
    let (_, body) = admin(&neko, "GET", "/plugin/echo/config", None).await;
    assert!(
        body["config"].get("db").is_none(),
        "back to the base: {body}"
    );
    let (_, body) = admin(&neko, "DELETE", "/plugin/echo/config/profiles/prod", None).await;
    assert_eq!(body["removed"], false);

    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/profiles/prod/activate",
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["detail"], "profile not found in config_profiles.files");
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/profiles/bad",
        Some(json!({"config": {"plugin": {"id": "x"}}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Profile config must not define top-level 'plugin' section."
    );
    std::fs::write(neko.plugins_dir.join("echo/profiles/broken.toml"), "a = ").unwrap();
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/profiles/broken", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Failed to load profile 'broken': "),
        "{body}"
    );
}

/// Activating without profiles.toml is a 404 with the reference's text.
#[tokio::test]
async fn activate_without_profiles_file_is_not_found() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let (status, body) = admin(
        &neko,
        "POST",
        "/plugin/echo/config/profiles/dev/activate",
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["detail"], "profiles.toml not found");
}

/// Bad ids and profile names, traversal in either, profile paths leaving the plugin folder,
/// unknown plugins and missing tokens are all refused, and nothing outside is read or written.
#[tokio::test]
async fn config_routes_refuse_traversal_unknown_plugins_and_missing_tokens() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let (status, body) = admin(&neko, "GET", "/plugin/ghost/config", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["detail"], "Plugin 'ghost' configuration not found");
    let (status, _) = admin(
        &neko,
        "PUT",
        "/plugin/ghost/config/profiles/dev",
        Some(json!({"config": {}})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(!neko.plugins_dir.join("ghost").exists());

    let (status, body) = admin(&neko, "GET", "/plugin/a.b/config", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["detail"],
        "Invalid plugin_id: 'a.b'. Only alphanumeric characters, underscores, and hyphens are allowed."
    );
    for path in [
        "/plugin/..%2F..%2Fetc/config",
        "/plugin/..%2Fecho/config/toml",
        "/plugin/echo/config/profiles/..%2F..%2Fplugin",
        "/plugin/echo/config/profiles/.hidden",
        "/plugin/echo/config/profiles/a.b",
    ] {
        let (status, body) = admin(&neko, "GET", path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/profiles/..%2F..%2Fescape",
        Some(json!({"config": {"x": 1}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!neko.plugins_dir.join("escape.toml").exists());
    assert!(
        !neko
            .plugins_dir
            .parent()
            .unwrap()
            .join("escape.toml")
            .exists()
    );

    // A profiles.toml that maps a profile outside the folder is refused (the reference follows it).
    std::fs::write(
        neko.plugins_dir.join("echo/profiles.toml"),
        "[config_profiles]\nactive = \"out\"\n[config_profiles.files]\nout = \"../../neko.toml\"\n",
    )
    .unwrap();
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config/profiles/out", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("inside the plugin folder"),
        "{body}"
    );
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/echo/config/profiles/out",
        Some(json!({"config": {}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(&neko, "GET", "/plugin/echo/config", None).await;
    assert_eq!(
        status, 200,
        "an unreachable profile leaves the base config: {body}"
    );
    let (_, profiles) = admin(&neko, "GET", "/plugin/echo/config/profiles", None).await;
    assert_eq!(
        profiles["config_profiles"]["files"]["out"]["resolved_path"],
        Value::Null,
        "{profiles}"
    );

    for (method, path) in [
        ("GET", "/plugin/echo/config"),
        ("GET", "/plugin/echo/config/toml"),
        ("PUT", "/plugin/echo/config"),
        ("POST", "/plugin/echo/config/parse_toml"),
        ("POST", "/plugin/echo/config/render_toml"),
        ("PUT", "/plugin/echo/config/toml"),
        ("GET", "/plugin/echo/config/base"),
        ("GET", "/plugin/echo/config/profiles"),
        ("GET", "/plugin/echo/config/profiles/dev"),
        ("PUT", "/plugin/echo/config/profiles/dev"),
        ("DELETE", "/plugin/echo/config/profiles/dev"),
        ("POST", "/plugin/echo/config/profiles/dev/activate"),
    ] {
        let (status, body) = call(&neko, method, path, Some(json!({"config": {}})), false).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
}

/// A Python plugin's `self.config` reads the effective config: a profile activated over HTTP
/// changes what the running plugin sees, as it changes `GET /plugin/{id}/config`. The plugin also
/// reads its profiles and plugin.toml alone, and deep-merges writes into plugin.toml (never its
/// `plugin.id`), as the reference's `self.config.update/set` do.
#[tokio::test]
async fn plugin_reads_the_same_effective_config() {
    let plugin = PythonPlugin {
        dir: "cfgprobe",
        toml: "[plugin]\nid = \"cfgprobe\"\nentry = \"plugins.cfgprobe:Probe\"\n\n[plugin.sdk]\nsupported = \">=0.1.0,<0.2.0\"\n\n[probe]\nanswer = 42\nkeep = \"base\"\n".into(),
        init_py: r#"
from plugin.sdk import NekoPluginBase, PluginConfigError, neko_plugin, plugin_entry, ok


@neko_plugin
class Probe(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.at_init = self.config.get("probe.answer")

    @plugin_entry(id="init_read")
    def init_read(self, **_):
        return {"answer": self.at_init}

    @plugin_entry(id="read")
    def read(self, **_):
        return ok(data={"answer": self.config.get_sync("probe.answer"), "keep": self.config.get_sync("probe.keep")})

    @plugin_entry(id="profiles")
    async def profiles(self, **_):
        return {
            "state": await self.config.get_profiles_state(),
            "dev": await self.config.get_profile("dev"),
            "base": await self.config.dump_base(),
            "as_dev": await self.config.dump_effective("dev"),
        }

    @plugin_entry(id="system")
    async def system(self, **_):
        from plugin.sdk import SystemInfo

        return {"config": await self.ctx.get_system_config(), "settings": await SystemInfo(self.ctx).get_server_settings()}

    @plugin_entry(id="write")
    def write(self, **_):
        self.config.set_sync("probe.answer", 99)
        written = self.config.update_sync({"probe": {"added": [1, 2]}})
        try:
            self.config.update_sync({"plugin": {"id": "other"}})
            refused = None
        except PluginConfigError as exc:
            refused = str(exc)
        return {"written": written, "refused": refused}
"#
        .into(),
        files: Vec::new(),
    };
    let neko = Neko::start_mixed(&[], &[plugin], "");
    neko.wait_running("cfgprobe").await;
    let run = neko.run("cfgprobe", "read", json!({})).await;
    assert_eq!(run["result"]["answer"], 42, "{run}");
    let (status, body) = admin(
        &neko,
        "PUT",
        "/plugin/cfgprobe/config/profiles/dev",
        Some(json!({"config": {"probe": {"answer": 7}}, "make_active": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, http) = admin(&neko, "GET", "/plugin/cfgprobe/config", None).await;
    assert_eq!(http["config"]["probe"]["answer"], 7);
    let run = neko.run("cfgprobe", "read", json!({})).await;
    assert_eq!(run["result"]["answer"], 7, "{run}");
    assert_eq!(run["result"]["keep"], "base", "{run}");

    let run = neko.run("cfgprobe", "profiles", json!({})).await;
    let seen = &run["result"];
    assert_eq!(seen["state"]["config_profiles"]["active"], "dev", "{run}");
    assert_eq!(seen["dev"]["probe"]["answer"], 7, "{run}");
    assert_eq!(seen["base"]["probe"]["answer"], 42, "{run}");
    assert_eq!(
        seen["as_dev"]["probe"],
        json!({"answer": 7, "keep": "base"}),
        "{run}"
    );

    let run = neko.run("cfgprobe", "write", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The config itself (the active profile over the written base), as the reference's
    // PluginConfig unwraps it.
    let written = &run["result"]["written"];
    assert_eq!(written["probe"]["added"], json!([1, 2]), "{run}");
    assert_eq!(written["probe"]["answer"], 7, "{run}");
    let refused = run["result"]["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("critical field 'plugin.id'"), "{run}");
    let on_disk = read_toml(&neko, "cfgprobe/plugin.toml");
    assert_eq!(on_disk["plugin"]["id"].as_str(), Some("cfgprobe"));
    let probe = on_disk["probe"].as_table().expect("[probe]");
    assert_eq!(probe["answer"].as_integer(), Some(99));
    assert_eq!(probe["keep"].as_str(), Some("base"));
    assert_eq!(probe["added"].as_array().map(Vec::len), Some(2));
    // The active profile still wins over the written base value.
    let run = neko.run("cfgprobe", "read", json!({})).await;
    assert_eq!(run["result"]["answer"], 7, "{run}");

    // neko's settings under the reference's names, with this plugin's message plane.
    let run = neko.run("cfgprobe", "system", json!({})).await;
    let config = &run["result"]["config"]["config"];
    let root = std::path::PathBuf::from(config["PLUGIN_CONFIG_ROOT"].as_str().unwrap_or_default());
    assert_eq!(
        root.canonicalize().ok(),
        neko.plugins_dir.canonicalize().ok(),
        "{run}"
    );
    assert_eq!(config["RUN_TOKEN_TTL_SECONDS"], 3600, "{run}");
    let rpc = config["MESSAGE_PLANE_ZMQ_RPC_ENDPOINT"]
        .as_str()
        .unwrap_or_default();
    assert!(rpc.starts_with("tcp://127.0.0.1:"), "{run}");
    assert_eq!(run["result"]["settings"], *config, "{run}");

    // A read in the constructor, before the plugin is connected, sees the active profile too.
    let run = neko.run("cfgprobe", "init_read", json!({})).await;
    assert_eq!(
        run["result"]["answer"], 42,
        "started before the profile: {run}"
    );
    let (status, body) = admin(&neko, "POST", "/plugin/cfgprobe/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let run = neko.run("cfgprobe", "init_read", json!({})).await;
    assert_eq!(run["result"]["answer"], 7, "{run}");
}
