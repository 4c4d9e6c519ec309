//! Bad input campaign (issue 7, point 3): HTTP garbage against the real binary.
//!
//! Every route gets malformed JSON, wrong types, bodies over the limit, path traversal in ids
//! and blob names (raw `../`, `%2F`, percent-encoded NUL, invalid UTF-8, very long ids), bad
//! query strings, wrong methods, and every kind of `Authorization` header. Requests are written
//! on raw TCP, so paths reach neko exactly as written (an HTTP client library would resolve
//! `../` itself). Checked for every answer: no 5xx, no hang; a 4xx carries a JSON body with a
//! `detail` key. After the campaign neko's log has no panic, `/health` answers, and a run still
//! goes through. Also: a real blob cannot be reached through a traversal in its id.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helper::{Neko, TOKEN, echo_plugin};

/// One request's deadline: longer means neko hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight at once.
const PARALLEL: usize = 8;

/// A request as written on the wire.
#[derive(Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn admin(self) -> Self {
        self.header("Authorization", format!("Bearer {TOKEN}"))
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// For failure reports: the request line, headers and the start of the body.
    fn describe(&self) -> String {
        let target: String = self.target.chars().take(160).collect();
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v);
                format!("{k}: {}", v.chars().take(40).collect::<String>())
            })
            .collect();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(80)]).into_owned();
        format!(
            "{} {target}{} [{}] body({} bytes)={body:?}",
            self.method,
            if self.target.len() > 160 { "…" } else { "" },
            headers.join("; "),
            self.body.len()
        )
    }
}

/// A parsed answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; `None` while incomplete.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if raw.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends `req` on its own connection and reads the answer (a stream's headers only).
async fn send(port: u16, req: &Req) -> Result<Reply, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
        req.method, req.target
    )
    .into_bytes();
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.extend_from_slice(format!("Content-Length: {}\r\n", req.body.len()).as_bytes());
    }
    for (k, v) in &req.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&req.body);
    // The server may answer (and close) before reading everything; that is fine.
    let _ = stream.write_all(&head).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let reply = parse_head(&buf[..end])?;
            let rest = &buf[end + 4..];
            let streaming = reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/event-stream"));
            if streaming || req.method == "HEAD" {
                return Ok(reply);
            }
            if let Some(n) = reply.header("content-length") {
                let n: usize = n.trim().parse().map_err(|_| "bad content-length")?;
                if rest.len() >= n {
                    return Ok(Reply {
                        body: rest[..n].to_vec(),
                        ..reply
                    });
                }
            } else if reply
                .header("transfer-encoding")
                .is_some_and(|t| t.contains("chunked"))
                && let Some(body) = dechunk(rest)
            {
                return Ok(Reply { body, ..reply });
            }
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => return Err(format!("read: {e} after {} bytes", buf.len())),
        };
        if n == 0 {
            let end = find(&buf, b"\r\n\r\n").ok_or_else(|| {
                format!(
                    "connection closed without an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                )
            })?;
            let reply = parse_head(&buf[..end])?;
            return Ok(Reply {
                body: buf[end + 4..].to_vec(),
                ..reply
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(head: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: Vec::new(),
    })
}

/// What is wrong with an answer, if anything.
fn judge(req: &Req, reply: &Reply) -> Option<String> {
    if reply.status >= 500 {
        return Some(format!("{} (5xx)", reply.status));
    }
    if !(200..500).contains(&reply.status) {
        return Some(format!("{} (unexpected status class)", reply.status));
    }
    // hyper's own answer to a request line over its URI limit (65534 bytes), before neko sees
    // the request: no body to make JSON.
    if reply.status == 414 && reply.body.is_empty() && req.target.len() > 60_000 {
        return None;
    }
    if reply.status >= 400 && req.method != "HEAD" {
        let is_json = reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"));
        let detail = reply.json().filter(|j| j.get("detail").is_some());
        if !is_json || detail.is_none() {
            return Some(format!(
                "{} without a JSON detail: content-type {:?}, body {:?}",
                reply.status,
                reply.header("content-type"),
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
            ));
        }
    }
    None
}

/// Sends every request (a few at a time); returns the answers in order, and the problems.
async fn campaign(port: u16, reqs: &[Req]) -> (Vec<Option<Reply>>, Vec<String>) {
    let results: Vec<(usize, Result<Reply, String>)> =
        futures::stream::iter(reqs.iter().enumerate())
            .map(|(i, req)| async move {
                let r = match tokio::time::timeout(REQUEST_TIMEOUT, send(port, req)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?} (hang)")),
                };
                (i, r)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    let mut replies: Vec<Option<Reply>> = (0..reqs.len()).map(|_| None).collect();
    let mut problems = Vec::new();
    for (i, r) in results {
        match r {
            Ok(reply) => {
                if let Some(p) = judge(&reqs[i], &reply) {
                    problems.push(format!("{} → {p}", reqs[i].describe()));
                }
                replies[i] = Some(reply);
            }
            Err(e) => problems.push(format!("{} → {e}", reqs[i].describe())),
        }
    }
    (replies, problems)
}

/// Ids and blob names that try to get out of their place, or to break the parser.
fn bad_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "nope",
        "..",
        "%2e%2e",
        "..%2F..%2Fetc%2Fpasswd",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
        "..%5C..%5Cwindows",
        "%2Fetc%2Fpasswd",
        "%00",
        "a%00b",
        "echo%00",
        "%FF",
        "%C0%AE%C0%AE",
        "%E2%80%AE",
        "%",
        "%zz",
        "%20",
        "%0d%0aX-Injected:%201",
        "*",
        "'%3B%20DROP%20TABLE%20runs%3B--",
        "%7B%7D",
        "%22quoted%22",
        "%C3%A9",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("x".repeat(300));
    ids.push("9".repeat(5_000));
    ids.push("%41".repeat(20_000));
    ids
}

/// Route templates with `{id}` (and `{blob}`: a blob or profile name) placeholders: (method,
/// template, admin route).
const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/health", false),
    ("GET", "/available", false),
    ("GET", "/server/info", true),
    ("GET", "/plugin/status", false),
    ("GET", "/plugins", false),
    ("POST", "/plugin/{id}/start", true),
    ("POST", "/plugin/{id}/stop", true),
    ("POST", "/plugin/{id}/reload", true),
    ("POST", "/runs", false),
    ("GET", "/runs", false),
    ("GET", "/runs/{id}", false),
    ("POST", "/runs/{id}/cancel", false),
    ("GET", "/runs/{id}/export", false),
    ("POST", "/runs/{id}/uploads", false),
    ("PUT", "/uploads/{id}", false),
    ("GET", "/runs/{id}/blobs/{blob}", false),
    ("GET", "/plugin/messages", false),
    ("GET", "/plugin/messages/stream", false),
    ("GET", "/calls", true),
    ("GET", "/plugin/{id}/config", true),
    ("PUT", "/plugin/{id}/config", true),
    ("GET", "/plugin/{id}/config/toml", true),
    ("PUT", "/plugin/{id}/config/toml", true),
    ("POST", "/plugin/{id}/config/parse_toml", true),
    ("POST", "/plugin/{id}/config/render_toml", true),
    ("GET", "/plugin/{id}/config/base", true),
    ("GET", "/plugin/{id}/config/profiles", true),
    ("GET", "/plugin/{id}/config/profiles/{blob}", true),
    ("PUT", "/plugin/{id}/config/profiles/{blob}", true),
    ("DELETE", "/plugin/{id}/config/profiles/{blob}", true),
    ("POST", "/plugin/{id}/config/profiles/{blob}/activate", true),
    ("GET", "/ws/run", false),
    ("GET", "/ws/admin", false),
];

fn fill(template: &str, id: &str, blob: &str) -> String {
    template.replace("{id}", id).replace("{blob}", blob)
}

/// Bodies for the routes that read one.
fn bad_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "   ",
        "{not json",
        "{\"plugin_id\": ",
        "[]",
        "null",
        "1",
        "\"string\"",
        "true",
        "{}",
        "{\"plugin_id\": 1, \"entry_id\": [], \"args\": \"x\"}",
        "{\"plugin_id\": \"echo\"}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": [1, 2]}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {}, \"wait_ms\": -1}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {}, \"wait_ms\": 1e308}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {}, \"wait_ms\": 18446744073709551616}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"nope\", \"args\": {}, \"wait_ms\": 18446744073709551615}",
        "{\"plugin_id\": \"../../etc\", \"entry_id\": \"..\", \"args\": {\"_ctx\": {\"entry_timeout\": -1}}}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {\"_ctx\": {\"entry_timeout\": \"soon\"}}, \"task_id\": 5}",
        "{\"plugin_id\": \"\\u0000\", \"entry_id\": \"\\ud800\", \"args\": {}}",
        "{\"reason\": 12}",
        "{\"reason\": {\"nested\": [1]}}",
        "{\"filename\": \"../../../etc/passwd\", \"mime\": 7, \"max_bytes\": -1}",
        "{\"filename\": null, \"max_bytes\": 99999999999999999999999}",
        "{\"a\": 1, \"a\": 2}",
        "{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {}} trailing",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(b"\xff\xfe\x00garbage\x00".to_vec());
    bodies.push(vec![0u8; 100]);
    bodies.push(format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes());
    bodies.push(format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes());
    bodies.push(
        format!(
            "{{\"plugin_id\": \"{}\", \"entry_id\": \"echo\", \"args\": {{}}}}",
            "p".repeat(500_000)
        )
        .into_bytes(),
    );
    bodies
}

/// Query strings for the routes that read them.
fn bad_queries() -> Vec<&'static str> {
    vec![
        "?wait_ms=abc",
        "?wait_ms=-1",
        "?wait_ms=99999999999999999999999",
        "?wait_ms=1.5",
        "?wait_ms=",
        "?limit=0",
        "?limit=-5",
        "?limit=abc",
        "?limit=1001",
        "?limit=99999999999999999999999",
        "?status=bogus",
        "?status=,,,",
        "?status=queued,%00",
        "?cursor=garbage",
        "?cursor=%00%FF",
        "?cursor=eyJ0cyI6Im5vdCBhIG51bWJlciJ9",
        "?after=..%2F..&limit=3",
        "?plugin_id=..%2F..%2Fetc",
        "?plugin_id[]=x&plugin_id[]=y",
        "?plugin_id=a&plugin_id=b",
        "?max_count=0",
        "?max_count=abc",
        "?max_count=100000",
        "?priority_min=abc",
        "?priority_min=-99999999999999999999",
        "?store=../etc",
        "?store=",
        "?store=%00",
        "?a=%",
        "?%%%",
        "?=&=&",
        "?%FF=%FE",
        "?&&&&",
    ]
}

const QUERY_ROUTES: &[&str] = &[
    "/runs",
    "/runs/{id}",
    "/runs/{id}/export",
    "/plugin/status",
    "/plugin/messages",
    "/plugin/messages/stream",
];

/// Every route, every kind of garbage: 4xx with a JSON `detail` (or a legit 2xx), never 5xx,
/// never a hang, never a panic; neko keeps serving.
#[tokio::test]
async fn http_garbage_gets_json_4xx_and_never_5xx() {
    let started = Instant::now();
    let neko = Neko::start(&[echo_plugin("echo", "")]);
    let port: u16 = neko
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the base URL");
    neko.wait_running("echo").await;
    // A terminal run (so `wait_ms` answers at once) and a running one (uploads need it).
    let done = neko.run("echo", "echo", json!({"x": 1})).await;
    let done_id = done["run_id"].as_str().unwrap().to_string();
    let running = neko
        .create_run(
            "echo",
            "sleep",
            json!({"ms": 300_000, "_ctx": {"entry_timeout": 600}}),
        )
        .await;
    let running_id = running["run_id"].as_str().unwrap().to_string();

    let mut reqs: Vec<Req> = Vec::new();
    let ids = bad_ids();
    // 1. Every route with every bad id (and blob name), with and without the admin token.
    for &(method, template, _) in ROUTES {
        let mut fills: Vec<String> = Vec::new();
        if template.contains("{id}") {
            for id in &ids {
                fills.push(fill(template, id, id));
                if template.contains("{blob}") {
                    fills.push(fill(template, &done_id, id));
                    fills.push(fill(template, &running_id, id));
                }
            }
            // Raw traversal segments (a client library would resolve these before sending).
            fills.push(fill(template, "..", "..").replace("/..", "/../.."));
            fills.push(
                template
                    .replace("{id}", "../../etc/passwd")
                    .replace("{blob}", "x"),
            );
            fills.push(template.replace("{id}", "./.").replace("{blob}", "./."));
            fills.push(
                template
                    .replace("{id}", &done_id)
                    .replace("{blob}", "../runs.sqlite3"),
            );
        } else {
            fills.push(template.to_string());
            fills.push(format!("{template}/"));
            fills.push(format!("{template}/../health"));
            fills.push(format!("{template}%00"));
            fills.push(format!("/..{template}"));
        }
        for target in fills {
            // Plugin lifecycle for real ids would stop the plugin under test; ids here are bad.
            reqs.push(Req::new(method, target.clone()));
            reqs.push(Req::new(method, target).admin());
        }
    }
    // 2. Wrong methods on every route (a valid id in the path).
    for &(method, template, _) in ROUTES {
        let target = fill(template, &done_id, "nope");
        for wrong in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO",
        ] {
            if wrong == method
                || (wrong == "HEAD" && method == "GET")
                || template.starts_with("/plugin/{id}/")
            {
                continue;
            }
            reqs.push(Req::new(wrong, target.clone()).body("{}"));
        }
    }
    // 3. Bad bodies, with and without a JSON content type, on every route that reads one.
    let body_routes = [
        ("POST", "/runs".to_string()),
        ("POST", format!("/runs/{done_id}/cancel")),
        ("POST", "/runs/nope/cancel".to_string()),
        ("POST", format!("/runs/{done_id}/uploads")),
        ("POST", "/runs/nope/uploads".to_string()),
        ("PUT", "/uploads/nope".to_string()),
        ("POST", "/plugin/nope/start".to_string()),
        ("PUT", "/plugin/nope/config".to_string()),
        ("PUT", "/plugin/echo/config/toml".to_string()),
        ("POST", "/plugin/echo/config/parse_toml".to_string()),
        ("PUT", "/plugin/echo/config/profiles/dev".to_string()),
    ];
    for body in bad_bodies() {
        for (method, target) in &body_routes {
            for content_type in [
                Some("application/json"),
                Some("text/plain; charset=latin1"),
                None,
            ] {
                let mut req = Req::new(method, target.clone()).body(body.clone());
                if let Some(t) = content_type {
                    req = req.header("Content-Type", t);
                }
                if target.starts_with("/plugin/") {
                    req = req.admin();
                }
                reqs.push(req);
            }
        }
    }
    // 4. Bad query strings on every route that reads one.
    for query in bad_queries() {
        for template in QUERY_ROUTES {
            for id in [done_id.as_str(), "nope"] {
                reqs.push(Req::new(
                    "GET",
                    format!("{}{query}", fill(template, id, "x")),
                ));
            }
        }
    }
    // 5. Every kind of Authorization header on the admin routes.
    let auths: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"bearer WRONG".to_vec(),
        b"Basic dXNlcjpwYXNz".to_vec(),
        format!("Bearer {TOKEN} extra").into_bytes(),
        format!("Bearer {}", "A".repeat(10_000)).into_bytes(),
        b"Bearer \xff\xfe\xfd".to_vec(),
        b"Bearer \xc3\xa9".to_vec(),
        format!("Token {TOKEN}").into_bytes(),
        b"Bearer %00".to_vec(),
    ];
    for auth in &auths {
        for (method, target) in [
            ("GET", "/server/info"),
            ("GET", "/calls"),
            ("POST", "/plugin/nope/stop"),
            ("POST", "/plugin/nope/start"),
            ("POST", "/plugin/nope/reload"),
            ("PUT", "/plugin/echo/config"),
        ] {
            reqs.push(Req::new(method, target).header("Authorization", auth.clone()));
        }
    }
    // 6. Odd headers: lying or absurd content types and lengths, CORS preflights.
    for target in ["/runs", "/health", "/plugins"] {
        for (k, v) in [
            ("Content-Type", b"application/json; charset=ebcdic" as &[u8]),
            ("Content-Type", b"multipart/form-data; boundary="),
            ("Content-Encoding", b"gzip"),
            ("Origin", b"http://evil.example"),
            ("Origin", b"http://localhost:5173"),
            ("Accept", b"\xff"),
        ] {
            reqs.push(Req::new("POST", target).header(k, v).body("{}"));
        }
        reqs.push(
            Req::new("OPTIONS", target)
                .header("Origin", "http://127.0.0.1:9")
                .header("Access-Control-Request-Method", "DELETE"),
        );
    }

    let (replies, mut problems) = campaign(port, &reqs).await;
    let sent = reqs.len();
    let statuses = replies.iter().flatten().fold(
        std::collections::BTreeMap::<u16, usize>::new(),
        |mut m, r| {
            *m.entry(r.status).or_default() += 1;
            m
        },
    );

    // 7. Huge bodies (over the 8 MiB limit), each on its own connection.
    let big = vec![b'{'; 9 * 1024 * 1024];
    let client = reqwest::Client::new();
    for (method, target, admin) in [
        ("POST", "/runs".to_string(), false),
        ("POST", format!("/runs/{done_id}/cancel"), false),
        ("POST", format!("/runs/{done_id}/uploads"), false),
        ("POST", "/plugin/nope/start".to_string(), true),
        ("PUT", "/uploads/nope".to_string(), false),
        ("GET", "/runs".to_string(), false),
    ] {
        let mut rb = client
            .request(method.parse().unwrap(), format!("{}{target}", neko.base))
            .header("content-type", "application/json")
            .body(big.clone());
        if admin {
            rb = rb.bearer_auth(TOKEN);
        }
        let what = format!("{method} {target} with a 9 MiB body");
        match tokio::time::timeout(REQUEST_TIMEOUT, rb.send()).await {
            Err(_) => problems.push(format!("{what} → no answer (hang)")),
            // The server may close before reading the whole body; a reset is not an answer.
            Ok(Err(e)) => eprintln!("{what}: {e} (connection closed early)"),
            Ok(Ok(r)) => {
                let status = r.status().as_u16();
                let is_json = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with("application/json"));
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status >= 500 || (status >= 400 && (!is_json || body.get("detail").is_none())) {
                    problems.push(format!("{what} → {status} {body}"));
                }
            }
        }
    }

    // 8. A real blob: reachable by its id, never through a traversal or another run's path. On a
    // run of its own: the campaign above may have canceled `running_id` (POST .../cancel).
    let running_id = neko
        .create_run(
            "echo",
            "sleep",
            json!({"ms": 300_000, "_ctx": {"entry_timeout": 600}}),
        )
        .await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, upload) = neko
        .post(
            &format!("/runs/{running_id}/uploads"),
            &json!({"filename": "../../../etc/passwd", "mime": "text/plain"}),
        )
        .await;
    assert_eq!(status, 200, "{upload}");
    let blob_id = upload["blob_id"].as_str().unwrap().to_string();
    let put = client
        .put(format!("{}/uploads/{blob_id}", neko.base))
        .body("secret blob")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let ok = send(
        port,
        &Req::new("GET", format!("/runs/{running_id}/blobs/{blob_id}")),
    )
    .await
    .unwrap();
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"secret blob"[..]));
    let mut sneaky = Vec::new();
    for target in [
        format!("/runs/{done_id}/blobs/{blob_id}"),
        format!("/runs/nope/blobs/{blob_id}"),
        format!("/runs/{running_id}/blobs/{blob_id}.blob"),
        format!("/runs/{running_id}/blobs/..%2F{blob_id}"),
        format!("/runs/{running_id}/blobs/{blob_id}%00"),
        format!("/runs/{running_id}/blobs/..%2Fblobs%2F{blob_id}"),
        format!("/runs/{running_id}/blobs/..%2F..%2Fruns.sqlite3"),
        format!("/runs/{running_id}/blobs/..%2F..%2Fadmin-token"),
        format!("/runs/{running_id}/blobs/%2E%2E%2F%2E%2E%2Fadmin-token"),
        format!("/runs/{running_id}/blobs/../../admin-token"),
        format!("/runs/{running_id}/../{running_id}/blobs/{blob_id}"),
        format!("/uploads/{blob_id}/../../runs/{running_id}/blobs/{blob_id}"),
    ] {
        sneaky.push(Req::new("GET", target));
    }
    // The finished upload cannot be written again, under any spelling.
    sneaky.push(Req::new("PUT", format!("/uploads/{blob_id}")).body("overwrite"));
    sneaky.push(Req::new("PUT", format!("/uploads/..%2F{blob_id}")).body("overwrite"));
    let (sneaky_replies, sneaky_problems) = campaign(port, &sneaky).await;
    problems.extend(sneaky_problems);
    for (req, reply) in sneaky.iter().zip(&sneaky_replies) {
        if let Some(r) = reply
            && r.status < 300
        {
            problems.push(format!(
                "{} → {}: the blob was reachable",
                req.describe(),
                r.status
            ));
        }
    }
    let again = send(
        port,
        &Req::new("GET", format!("/runs/{running_id}/blobs/{blob_id}")),
    )
    .await
    .unwrap();
    assert_eq!(again.body, b"secret blob", "the blob was changed");
    let token_file = std::fs::read_to_string(neko.data_dir.join("admin-token")).unwrap();
    assert_eq!(token_file.trim(), TOKEN);

    // 9. Deeply nested (but accepted) args: every acknowledged run stays readable, alone and in
    // the list, and the list never fails.
    for depth in [100, 120, 124, 125, 126, 127, 128] {
        let args = format!(
            "{{\"plugin_id\": \"echo\", \"entry_id\": \"echo\", \"args\": {}[1]{}}}",
            "{\"k\":".repeat(depth - 1),
            "}".repeat(depth - 1)
        );
        let created = send(
            port,
            &Req::new("POST", "/runs")
                .header("Content-Type", "application/json")
                .body(args),
        )
        .await
        .unwrap();
        if let Some(p) = judge(&Req::new("POST", "/runs"), &created) {
            problems.push(format!("POST /runs with args nested {depth} deep → {p}"));
            continue;
        }
        let Some(run_id) = created
            .json()
            .and_then(|j| j["run_id"].as_str().map(str::to_owned))
        else {
            continue;
        };
        let run = neko.wait_run(&run_id).await;
        let (status, read) = neko.get(&format!("/runs/{run_id}")).await;
        if status != 200 {
            problems.push(format!(
                "run {run_id} with args nested {depth} deep ({}) is not readable: {status} {read}",
                run["status"]
            ));
        }
        let (status, list) = neko.get("/runs?limit=1000").await;
        if status != 200 {
            problems.push(format!(
                "GET /runs after a run with args nested {depth} deep → {status} {list}"
            ));
        }
    }

    // 10. Garbage on the WebSockets after auth (the auth frame itself is covered by the
    // websockets tests): every request is answered or the socket is closed cleanly.
    let ws_problems = websocket_garbage(&neko).await;
    problems.extend(ws_problems);

    // neko is still fine: no panic logged, /health answers, a run still goes through.
    let (status, _) = neko.get("/health").await;
    assert_eq!(status, 200, "/health after the campaign");
    let after = neko.run("echo", "echo", json!({"after": true})).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    let _ = neko
        .post(&format!("/runs/{running_id}/cancel"), &json!({}))
        .await;
    if neko.logged(&["panicked"]) {
        problems.push("neko's log has a \"panicked\" line".into());
    }
    eprintln!(
        "bad input campaign: {sent} raw requests + 6 huge bodies + {} blob probes + websockets \
         in {:?}; statuses {statuses:?}",
        sneaky.len(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} bad answers:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Opens `/ws/admin`, authenticates, and sends garbage requests; returns the problems seen.
async fn websocket_garbage(neko: &Neko) -> Vec<String> {
    let mut problems = Vec::new();
    let url = format!("{}/ws/admin", neko.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    ws.send(Message::text(
        json!({"type": "auth", "code": TOKEN}).to_string(),
    ))
    .await
    .unwrap();
    let frames: Vec<Message> = vec![
        Message::text("not json"),
        Message::text("[]"),
        Message::text("null"),
        Message::text(r#"{"type": "req"}"#),
        Message::text(r#"{"type": "req", "id": 5, "method": 7}"#),
        Message::text(r#"{"type": "req", "id": "a", "method": "run.get", "params": "x"}"#),
        Message::text(
            r#"{"type": "req", "id": "b", "method": "run.get", "params": {"run_id": "../../etc/passwd"}}"#,
        ),
        Message::text(
            r#"{"type": "req", "id": "c", "method": "runs.list", "params": {"plugin_id": 1}}"#,
        ),
        Message::text(
            r#"{"type": "req", "id": "d", "method": "export.list", "params": {"run_id": "nope", "limit": -1, "after": {}}}"#,
        ),
        Message::text(
            r#"{"type": "req", "id": "e", "method": "run.create", "params": {"plugin_id": [], "entry_id": null}}"#,
        ),
        Message::text(
            r#"{"type": "req", "id": "f", "method": "run.cancel", "params": {"run_id": "\u0000"}}"#,
        ),
        Message::text(
            r#"{"type": "req", "id": "g", "method": "plugin.stop", "params": {"plugin_id": "..%2F"}}"#,
        ),
        Message::text(r#"{"type": "req", "id": "h", "method": "no.such.method", "params": {}}"#),
        Message::text(format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000))),
        Message::binary(vec![0xff, 0x00, 0x81]),
        Message::text(r#"{"type": "req", "id": "z", "method": "runs.list", "params": {}}"#),
    ];
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    // Read until the last request's answer or a close.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline.into(), ws.next()).await else {
            problems.push("/ws/admin: no answer and no close after garbage (hang)".into());
            break;
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if frame["type"] == "ping" {
                    let _ = ws
                        .send(Message::text(json!({"type": "pong"}).to_string()))
                        .await;
                }
                // (The list may hold runs nested deeper than this client's JSON parser takes.)
                if frame["type"] == "resp" && frame["id"] == "z"
                    || text.contains(r#""id":"z""#) && text.contains(r#""type":"resp""#)
                {
                    break;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                if let Some(f) = &frame
                    && u16::from(f.code) == 1011
                {
                    problems.push(format!("/ws/admin closed with an internal error: {f:?}"));
                }
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                problems.push(format!("/ws/admin failed: {e}"));
                break;
            }
            None => {
                problems.push("/ws/admin ended without a close frame".into());
                break;
            }
        }
    }
    problems
}
