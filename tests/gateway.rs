//! The gateway's contract: shapes, auth, and clear errors for bad input.

use serde_json::json;

use crate::helper::{Neko, TOKEN, echo_plugin};

/// `/health` and `/available` answer with the reference's shapes.
#[tokio::test]
async fn health_and_available_have_reference_shapes() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let (status, body) = neko.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(body["time"].as_str().unwrap().ends_with('Z'));
    let (status, body) = neko.get("/available").await;
    assert_eq!(status, 200);
    assert_eq!(body["available"], true);
    assert_eq!(body["plugins_count"], 1);
}

/// Admin routes answer 401 without a token, 403 with a wrong one, 200 with the right one
/// (compared case-insensitively, as the reference does).
#[tokio::test]
async fn admin_routes_require_the_bearer_token() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let url = format!("{}/server/info", neko.base);
    let r = neko.client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Missing authorization header");
    let r = neko
        .client
        .get(&url)
        .bearer_auth("WRONGTOKEN")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Invalid authentication code");
    let r = neko
        .client
        .get(&url)
        .bearer_auth(TOKEN.to_lowercase())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["registered_plugins"], json!(["echo"]));
    let (status, _) = neko.post("/plugin/echo/stop", &json!({})).await;
    assert_eq!(status, 401);
}

/// The admin token is written to the data dir with mode 0600.
#[tokio::test]
async fn admin_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let neko = Neko::start(&[]);
    let path = neko.data_dir.join("admin-token");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), TOKEN);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Malformed JSON, missing fields, oversized bodies, unknown runs and routes: 4xx with a JSON
/// `detail`, and the server keeps serving.
#[tokio::test]
async fn bad_input_gets_json_4xx_errors() {
    let neko = Neko::start(&[]);
    let post_raw = |body: Vec<u8>| {
        neko.client
            .post(format!("{}/runs", neko.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // As FastAPI answers them: 422 with a detail list.
    let r = post_raw(b"{\n  not json".to_vec()).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "json_invalid", "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 4]), "{body}");
    assert_eq!(body["detail"][0]["msg"], "JSON decode error", "{body}");

    let r = post_raw(br#"{"plugin_id": "x"}"#.to_vec()).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["detail"],
        json!([{"type": "missing", "loc": ["body", "entry_id"], "msg": "Field required"}])
    );

    let r = post_raw(br#"{"plugin_id": "x", "entry_id": "y", "args": [1]}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);

    // Its own connection: the server answers before reading the whole body, then closes.
    let big = vec![b' '; 9 * 1024 * 1024];
    let r = reqwest::Client::new()
        .post(format!("{}/runs", neko.base))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Request body too large");

    let (status, body) = neko.get("/runs/does-not-exist").await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some("run not found"))
    );
    let (status, body) = neko.get("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "Not Found");
    let (status, _) = neko.get("/health").await;
    assert_eq!(status, 200);
}

/// Run args of a few MiB (an image in base64, say) reach the plugin and come back: the body limit
/// is the plugin frame's, not 1 MiB (the reference has none).
#[tokio::test]
async fn large_run_args_reach_the_plugin() {
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    neko.wait_running("echo").await;
    let blob = "x".repeat(3 * 1024 * 1024);
    let run = neko.run("echo", "echo", json!({"blob": blob})).await;
    assert_eq!(run["status"], "succeeded", "{}", run["error"]);
    assert_eq!(
        run["result"]["blob"].as_str().map(str::len),
        Some(blob.len())
    );
}
