use serde_json::json;

use super::*;

fn folder(base: &str) -> (tempfile::TempDir, PluginFolder) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.toml"), base).unwrap();
    let f = PluginFolder {
        id: PluginId::new("p").unwrap(),
        config_path: dir.join("plugin.toml"),
        dir,
    };
    (tmp, f)
}

const BASE: &str = "[plugin]\nid = 'p'\nentry = 'm:C'\n[debug]\nlevel = 2\nratio = 0.5\nwhen = 1979-05-27\n[db]\nhost = 'a'\nport = 1\n";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn json_of(r: ConfigReply) -> Value {
    serde_json::to_value(r).unwrap()
}

#[test]
fn effective_config_is_the_base_without_profiles() {
    let (_t, f) = folder(BASE);
    let v = json_of(serve(&f, ConfigRequest::Get, None).unwrap());
    assert_eq!(v["plugin_id"], "p");
    assert_eq!(v["config"]["debug"]["level"], 2);
    assert_eq!(v["config"]["debug"]["when"], "1979-05-27");
    assert!(v["last_modified"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn active_profile_is_deep_merged_and_the_env_overrides_it() {
    let (_t, f) = folder(BASE);
    std::fs::create_dir_all(f.dir.join("profiles")).unwrap();
    std::fs::write(
        f.dir.join("profiles/dev.toml"),
        "[db]\nhost = 'dev'\n[extra]\nx = 1\n",
    )
    .unwrap();
    std::fs::write(f.dir.join("profiles/prod.toml"), "[db]\nport = 9\n").unwrap();
    std::fs::write(
        f.dir.join("profiles.toml"),
        "[config_profiles]\nactive = 'dev'\n[config_profiles.files]\ndev = 'profiles/dev.toml'\nprod = 'profiles/prod.toml'\n",
    )
    .unwrap();
    let e = effective(&f, None).unwrap();
    assert_eq!(e["db"]["host"].as_str(), Some("dev"));
    assert_eq!(e["db"]["port"].as_integer(), Some(1));
    assert_eq!(e["extra"]["x"].as_integer(), Some(1));
    let e = effective(&f, Some("prod".into())).unwrap();
    assert_eq!(e["db"]["host"].as_str(), Some("a"));
    assert_eq!(e["db"]["port"].as_integer(), Some(9));
    // An unmapped or missing profile leaves the base config.
    assert_eq!(
        effective(&f, Some("nope".into())).unwrap()["db"]["port"].as_integer(),
        Some(1)
    );
}

#[test]
fn plugin_toml_profile_table_is_the_fallback() {
    let (_t, f) = folder(&format!(
        "{BASE}\n[plugin.config_profiles]\nactive = 'x'\n[plugin.config_profiles.files]\nx = 'x.toml'\n"
    ));
    std::fs::write(f.dir.join("x.toml"), "[debug]\nlevel = 7\n").unwrap();
    assert_eq!(
        effective(&f, None).unwrap()["debug"]["level"].as_integer(),
        Some(7)
    );
}

#[test]
fn profile_with_a_plugin_section_is_an_error() {
    let (_t, f) = folder(BASE);
    std::fs::write(f.dir.join("bad.toml"), "[plugin]\nid = 'q'\n").unwrap();
    std::fs::write(
        f.dir.join("profiles.toml"),
        "[config_profiles]\nactive = 'bad'\nfiles = { bad = 'bad.toml' }\n",
    )
    .unwrap();
    let e = effective(&f, None).unwrap_err();
    assert!(
        e.to_string().contains("must not define top-level 'plugin'"),
        "{e}"
    );
}

#[test]
fn profile_paths_must_stay_inside_the_folder() {
    let (t, f) = folder(BASE);
    std::fs::write(t.path().join("outside.toml"), "[db]\nhost = 'evil'\n").unwrap();
    for bad in [
        "../outside.toml",
        "/etc/passwd",
        "a/../../outside.toml",
        "",
        ".",
    ] {
        assert!(resolve_in(&f.dir, bad).is_err(), "{bad}");
    }
    std::os::unix::fs::symlink(t.path(), f.dir.join("link")).unwrap();
    assert!(resolve_in(&f.dir, "link/outside.toml").is_err());
    assert!(resolve_in(&f.dir, "profiles/../dev.toml").is_ok());
    std::fs::write(
        f.dir.join("profiles.toml"),
        "[config_profiles]\nactive = 'o'\nfiles = { o = '../outside.toml' }\n",
    )
    .unwrap();
    assert_eq!(
        effective(&f, None).unwrap()["db"]["host"].as_str(),
        Some("a")
    );
    for name in ["..", "a/b", "", "x.y"] {
        assert!(
            serve(&f, ConfigRequest::GetProfile(name.into()), None).is_err(),
            "{name}"
        );
    }
}

#[test]
fn replace_keeps_protected_fields_and_refuses_changes() {
    let (_t, f) = folder(BASE);
    let v = json_of(
        serve(
            &f,
            ConfigRequest::Replace(obj(json!({"debug": {"level": 3}}))),
            None,
        )
        .unwrap(),
    );
    assert_eq!(v["requires_reload"], true);
    let on_disk: toml::Table =
        toml::from_str(&std::fs::read_to_string(&f.config_path).unwrap()).unwrap();
    assert_eq!(on_disk["plugin"]["id"].as_str(), Some("p"));
    assert_eq!(on_disk["plugin"]["entry"].as_str(), Some("m:C"));
    assert_eq!(on_disk["debug"]["level"].as_integer(), Some(3));
    assert!(on_disk.get("db").is_none());
    let e = serve(
        &f,
        ConfigRequest::Replace(obj(json!({"plugin": {"id": "q"}}))),
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Cannot modify critical field 'plugin.id'. This field is protected."
    );
    let e = serve(
        &f,
        ConfigRequest::ReplaceToml("[plugin]\nid = 'q'\n".into()),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("plugin.id"), "{e}");
    // As the reference: keys left out are not checked (the text is written as given).
    serve(
        &f,
        ConfigRequest::ReplaceToml("[settings]\nx = 1\n".into()),
        None,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&f.config_path).unwrap(),
        "[settings]\nx = 1\n"
    );
    let e = serve(&f, ConfigRequest::Replace(obj(json!({"a": null}))), None).unwrap_err();
    assert!(e.to_string().contains("'a'"), "{e}");
}

#[test]
fn replace_toml_writes_the_text_verbatim() {
    let (_t, f) = folder(BASE);
    let text = "# kept\n[plugin]\nid = 'p'\nentry = 'm:C'\n\n[x]\ny = 1 # also kept\n";
    serve(&f, ConfigRequest::ReplaceToml(text.into()), None).unwrap();
    assert_eq!(std::fs::read_to_string(&f.config_path).unwrap(), text);
    let e = serve(&f, ConfigRequest::ReplaceToml("[x".into()), None).unwrap_err();
    assert!(e.to_string().starts_with("Invalid TOML format: "), "{e}");
    assert_eq!(std::fs::read_to_string(&f.config_path).unwrap(), text);
}

#[test]
fn render_and_parse_round_trip() {
    let (_t, f) = folder(BASE);
    let config = json!({"a": 1, "t": {"b": [1, 2], "c": "s", "d": {"e": 1.5}}});
    let ConfigReply::Rendered(r) =
        serve(&f, ConfigRequest::RenderToml(obj(config.clone())), None).unwrap()
    else {
        panic!("not rendered")
    };
    let v = json_of(serve(&f, ConfigRequest::ParseToml(r.toml), None).unwrap());
    assert_eq!(v["config"], config);
}

#[test]
fn profile_lifecycle_put_activate_delete() {
    let (_t, f) = folder(BASE);
    let v = json_of(
        serve(
            &f,
            ConfigRequest::PutProfile {
                name: "dev".into(),
                config: obj(json!({"db": {"host": "dev"}})),
                make_active: None,
            },
            None,
        )
        .unwrap(),
    );
    assert_eq!(v["profile"]["path"], "profiles/dev.toml");
    assert_eq!(v["profile"]["exists"], true);
    assert_eq!(v["config"]["db"]["host"], "dev");
    // The first profile becomes active.
    assert_eq!(
        effective(&f, None).unwrap()["db"]["host"].as_str(),
        Some("dev")
    );
    serve(
        &f,
        ConfigRequest::PutProfile {
            name: "prod".into(),
            config: obj(json!({"db": {"port": 5}})),
            make_active: Some(false),
        },
        None,
    )
    .unwrap();
    let v = json_of(serve(&f, ConfigRequest::Activate("prod".into()), None).unwrap());
    assert_eq!(v["config_profiles"]["active"], "prod");
    assert_eq!(v["config_profiles"]["files"]["dev"]["exists"], true);
    let v = json_of(serve(&f, ConfigRequest::DeleteProfile("prod".into()), None).unwrap());
    assert_eq!(v["removed"], true);
    let profiles = std::fs::read_to_string(f.dir.join("profiles.toml")).unwrap();
    assert!(!profiles.contains("active"), "{profiles}");
    assert!(f.dir.join("profiles/prod.toml").is_file());
    assert!(matches!(
        serve(&f, ConfigRequest::Activate("prod".into()), None),
        Err(Error::ConfigMissing(_))
    ));
    let e = serve(
        &f,
        ConfigRequest::PutProfile {
            name: "x".into(),
            config: obj(json!({"plugin": {}})),
            make_active: None,
        },
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Profile config must not define top-level 'plugin' section."
    );
}

#[test]
fn missing_plugin_toml_is_not_found() {
    let (_t, f) = folder(BASE);
    std::fs::remove_file(&f.config_path).unwrap();
    assert!(matches!(
        serve(&f, ConfigRequest::Get, None),
        Err(Error::PluginNotFound(_))
    ));
}

#[test]
fn atomic_write_replaces_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.toml");
    atomic_write(&p, b"one").unwrap();
    atomic_write(&p, b"two").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_plugin_toml_that_does_not_parse_is_shown_and_can_be_fixed() {
    let broken = "[plugin\nid = 'p'\n";
    let (_t, f) = folder(broken);
    let shown = json_of(serve(&f, ConfigRequest::GetToml, None).unwrap());
    assert_eq!(shown["toml"], broken);
    let e = serve(&f, ConfigRequest::Get, None).unwrap_err();
    assert!(e.to_string().starts_with("Invalid TOML format: "), "{e}");
    // Another id is refused, even though the current file cannot say which it was.
    let e = serve(
        &f,
        ConfigRequest::ReplaceToml("[plugin]\nid = 'q'\n".into()),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("'plugin.id'"), "{e}");
    assert_eq!(std::fs::read_to_string(&f.config_path).unwrap(), broken);
    serve(&f, ConfigRequest::ReplaceToml(BASE.into()), None).unwrap();
    assert_eq!(std::fs::read_to_string(&f.config_path).unwrap(), BASE);
}

#[test]
fn update_deep_merges_into_plugin_toml_and_keeps_the_id() {
    let (_t, f) = folder(BASE);
    let patch = obj(json!({"debug": {"level": 3, "extra": [1, 2]}, "new": {"k": "v"}}));
    let written = json_of(serve(&f, ConfigRequest::Update(patch), None).unwrap());
    assert_eq!(written["success"], true);
    assert_eq!(written["requires_reload"], true);
    let on_disk: toml::Table =
        toml::from_str(&std::fs::read_to_string(&f.config_path).unwrap()).unwrap();
    let debug = on_disk["debug"].as_table().unwrap();
    assert_eq!(debug["level"].as_integer(), Some(3));
    assert_eq!(debug["ratio"].as_float(), Some(0.5)); // untouched keys stay
    assert_eq!(debug["extra"].as_array().unwrap().len(), 2);
    assert_eq!(on_disk["new"]["k"].as_str(), Some("v"));
    assert_eq!(on_disk["plugin"]["entry"].as_str(), Some("m:C"));
    for patch in [
        json!({"plugin": {"id": "q"}}),
        json!({"plugin": {"entry": "x:Y"}}),
    ] {
        let e = serve(&f, ConfigRequest::Update(obj(patch)), None).unwrap_err();
        assert!(e.to_string().contains("This field is protected."), "{e}");
    }
    // Other [plugin] keys may change.
    serve(
        &f,
        ConfigRequest::Update(obj(json!({"plugin": {"name": "P"}}))),
        None,
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&f.config_path)
            .unwrap()
            .contains("name = \"P\"")
    );
}

#[test]
fn effective_with_a_profile_name_applies_that_profile() {
    let (_t, f) = folder(BASE);
    std::fs::create_dir_all(f.dir.join("profiles")).unwrap();
    std::fs::write(f.dir.join("profiles/dev.toml"), "[db]\nhost = 'dev'\n").unwrap();
    let view = json_of(serve(&f, ConfigRequest::Effective("dev".into()), None).unwrap());
    assert_eq!(view["effective_profile"], "dev");
    assert_eq!(view["config"]["db"], json!({"host": "dev", "port": 1}));
    // Not active: the effective config itself is still the base.
    let plain = json_of(serve(&f, ConfigRequest::Get, None).unwrap());
    assert_eq!(plain["config"]["db"]["host"], "a");
    std::fs::write(f.dir.join("profiles/bad.toml"), "[plugin]\nid = 'x'\n").unwrap();
    let e = serve(&f, ConfigRequest::Effective("bad".into()), None).unwrap_err();
    assert!(
        e.to_string().contains("must not define top-level 'plugin'"),
        "{e}"
    );
}
