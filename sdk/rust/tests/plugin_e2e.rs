//! End to end: a real [`Plugin`] runs in-process through [`Plugin::run_with`] against a ZeroMQ
//! ROUTER socket that the test binds and drives as the supervisor would, with the real codec.
//! Every wait is bounded by [`WAIT`]; nothing sleeps before an assert.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use neko_protocol::{
    CallResult, Cancel, Direction, ErrorCode, FrameKey, Message, Request, Response, Session, Stop,
    Trigger, Welcome, WireError,
};
use neko_sdk::serde_json::{Value, json};
use neko_sdk::{
    Context, Entry, EntryError, Plugin, PluginEnv, RunError, RunUpdate, SDK_NAME, SDK_VERSION,
    args_without_ctx,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// The one deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_SECRET: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The supervisor's side of one link: a bound ROUTER and the supervisor's session.
struct FakeSupervisor {
    router: RouterSocket,
    session: Session,
    /// The plugin's routing identity, learnt from its first frame.
    peer: Option<Bytes>,
    heartbeats: usize,
}

impl FakeSupervisor {
    async fn bind(endpoint: &str) -> (Self, String) {
        let mut router = RouterSocket::new();
        let bound = router.bind(endpoint).await.expect("bind").to_string();
        let sup = Self {
            router,
            session: Session::new(key(SECRET), Direction::SupervisorToPlugin, 1 << 20),
            peer: None,
            heartbeats: 0,
        };
        (sup, bound)
    }

    /// The next message the plugin sent, heartbeats included.
    async fn recv_any(&mut self) -> Message {
        let frames = within("a frame from the plugin", self.router.recv())
            .await
            .expect("router recv")
            .into_vec();
        self.peer = Some(frames[0].clone());
        let parts: Vec<&[u8]> = frames[1..].iter().map(Bytes::as_ref).collect();
        self.session
            .open(&parts)
            .expect("every frame the plugin sends verifies")
            .msg
    }

    /// The next message that is not a heartbeat.
    async fn recv(&mut self) -> Message {
        loop {
            match self.recv_any().await {
                Message::Heartbeat(_) => self.heartbeats += 1,
                other => return other,
            }
        }
    }

    async fn result(&mut self) -> CallResult {
        match self.recv().await {
            Message::Result(r) => r,
            other => panic!("expected RESULT, got {other:?}"),
        }
    }

    async fn send(&mut self, msg: Message) {
        let frames = self.session.seal(msg).expect("seal");
        self.send_frames(frames).await;
    }

    async fn send_frames(&mut self, [mac, payload]: [Vec<u8>; 2]) {
        let peer = self
            .peer
            .clone()
            .expect("the plugin has not said anything yet");
        let mut msg = ZmqMessage::from(peer);
        msg.push_back(Bytes::from(mac));
        msg.push_back(Bytes::from(payload));
        self.router.send(msg).await.expect("router send");
    }

    async fn request(&mut self) -> Request {
        match self.recv().await {
            Message::Request(r) => r,
            other => panic!("expected REQUEST, got {other:?}"),
        }
    }

    async fn trigger(&mut self, call_id: &str, entry_id: &str, args: Value, timeout_ms: u64) {
        self.send(Message::Trigger(Trigger {
            call_id: call_id.into(),
            entry_id: entry_id.into(),
            args,
            timeout_ms,
            run_id: None,
            event_type: None,
            caller: None,
        }))
        .await;
    }

    /// A TRIGGER that belongs to run `run_id`, as `POST /runs` sends it.
    async fn trigger_run(&mut self, call_id: &str, entry_id: &str, run_id: &str) {
        self.send(Message::Trigger(Trigger {
            call_id: call_id.into(),
            entry_id: entry_id.into(),
            args: json!({"_ctx": {"run_id": run_id}}),
            timeout_ms: 5000,
            run_id: Some(run_id.into()),
            event_type: None,
            caller: None,
        }))
        .await;
    }

    /// Receives HELLO and answers WELCOME; returns the HELLO.
    async fn handshake(&mut self) -> neko_protocol::Hello {
        let Message::Hello(hello) = self.recv().await else {
            panic!("the first message must be HELLO");
        };
        self.send(Message::Welcome(Welcome {
            plugin_id: hello.plugin_id.clone(),
            heartbeat_interval_ms: 50,
            features: Vec::new(),
        }))
        .await;
        hello
    }
}

/// A socket path in the temp dir, removed on drop so that a failing test leaves nothing behind.
struct SocketFile(std::path::PathBuf);

impl SocketFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("neko-sdk-e2e-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn key(hex: &str) -> FrameKey {
    FrameKey::from_hex(hex).expect("test key")
}

fn test_env(endpoint: &str) -> PluginEnv {
    let mut env = PluginEnv::new("echo", endpoint, key(SECRET));
    env.handshake_timeout = Duration::from_secs(5);
    env
}

/// What the plugin's hooks and handlers report to the test.
#[derive(Clone, Default)]
struct Probe {
    shut_down: Arc<AtomicBool>,
}

/// A plugin with one entry of each behaviour the tests need. `noticed` receives the call id of
/// every synchronous handler that saw its cancel flag.
fn test_plugin(probe: &Probe, noticed: mpsc::UnboundedSender<String>) -> Plugin {
    let shut_down = probe.shut_down.clone();
    Plugin::new()
        .entry(
            Entry::new("echo")
                .name("Echo")
                .description("Returns its arguments")
                .input_schema(json!({"type": "object"})),
            |_ctx: Context, args: Value| async move { Ok(args) },
        )
        .sync_entry(
            Entry::new("add").timeout(Duration::from_secs(5)),
            |_ctx: Context, args: Value| -> Result<Value, EntryError> {
                let (Some(a), Some(b)) = (args["a"].as_i64(), args["b"].as_i64()) else {
                    return Err(EntryError::validation("a and b must be integers"));
                };
                Ok(json!({"sum": a + b}))
            },
        )
        .entry(
            Entry::new("explode"),
            |_ctx: Context, args: Value| async move {
                assert!(args.get("boom").is_none(), "kaboom");
                Ok(args)
            },
        )
        .entry(
            Entry::new("sleep"),
            |_ctx: Context, args: Value| async move {
                let ms = args["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            },
        )
        .sync_entry(Entry::new("spin"), move |ctx: Context, _args: Value| {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let call_id = ctx.call_id().unwrap_or_default().to_string();
            // The receiver may be gone when the test already finished.
            let _ = noticed.send(call_id);
            Ok(json!("stopped"))
        })
        .entry(
            Entry::new("status"),
            |ctx: Context, args: Value| async move {
                ctx.update_status(args_without_ctx(&args))?;
                Ok(json!({"ok": true, "run_id": ctx.run_id()}))
            },
        )
        .on_shutdown(move |_ctx: Context| async move {
            shut_down.store(true, Ordering::SeqCst);
        })
}

fn spawn_plugin(
    plugin: Plugin,
    env: PluginEnv,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), RunError>> {
    tokio::spawn(plugin.run_with(env, shutdown))
}

/// The handshake carries the declared entries; TRIGGERs are answered with the handler's value
/// (args as sent, `_ctx` included), undeclared entries with NOT_FOUND, panics with INTERNAL;
/// forged and replayed frames are dropped without disturbing later calls; STOP runs the shutdown
/// hook and ends `run_with` cleanly; heartbeats flow meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_calls_ignores_forged_frames_and_stops() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let probe = Probe::default();
    let (noticed, _noticed_rx) = mpsc::unbounded_channel();
    let plugin = spawn_plugin(
        test_plugin(&probe, noticed),
        test_env(&endpoint),
        std::future::pending(),
    );

    let hello = sup.handshake().await;
    assert_eq!(hello.protocol, 1);
    assert_eq!(hello.plugin_id, "echo");
    assert_eq!(hello.sdk, SDK_NAME);
    assert_eq!(hello.sdk_version, SDK_VERSION);
    assert_eq!(hello.pid, std::process::id());
    let ids: Vec<&str> = hello.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["echo", "add", "explode", "sleep", "spin", "status"]);
    let echo = &hello.entries[0];
    assert_eq!(echo.name, "Echo");
    assert_eq!(echo.description, "Returns its arguments");
    assert_eq!(echo.input_schema, json!({"type": "object"}));
    assert_eq!(echo.kind, "action");
    assert_eq!(hello.entries[1].timeout_ms, Some(5000));

    let args = json!({"_ctx": {"run_id": "r-1"}, "text": "hi"});
    sup.trigger("c-1", "echo", args.clone(), 5000).await;
    let r = sup.result().await;
    assert_eq!((r.call_id.as_str(), r.ok), ("c-1", true));
    assert_eq!(r.data, args);

    // A TRIGGER signed with another key, then a byte-exact replay of an accepted frame.
    let mut forger = Session::new(key(OTHER_SECRET), Direction::SupervisorToPlugin, 1 << 20);
    let forged = forger
        .seal(Message::Trigger(Trigger {
            call_id: "c-forged".into(),
            entry_id: "echo".into(),
            args: json!({}),
            timeout_ms: 5000,
            run_id: None,
            event_type: None,
            caller: None,
        }))
        .unwrap();
    sup.send_frames(forged).await;
    let replayed = sup
        .session
        .seal(Message::Trigger(Trigger {
            call_id: "c-2".into(),
            entry_id: "add".into(),
            args: json!({"a": 2, "b": 3}),
            timeout_ms: 5000,
            run_id: None,
            event_type: None,
            caller: None,
        }))
        .unwrap();
    sup.send_frames(replayed.clone()).await;
    sup.send_frames(replayed).await;
    sup.trigger("c-3", "nope", json!({}), 5000).await;

    // Exactly c-2 (once) and c-3 come back, in either order (c-2 runs in its own task, c-3 is
    // answered by the I/O loop at once). An accepted forgery or replay would show up here or
    // before c-4's answer below.
    let mut answered = Vec::new();
    while answered.len() < 2 {
        answered.push(sup.result().await);
    }
    answered.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    assert_eq!(answered[0].call_id, "c-2");
    assert_eq!(answered[0].data, json!({"sum": 5}));
    assert_eq!(answered[1].call_id, "c-3");
    let err = answered[1].error.clone().unwrap();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(err.message, "Entry 'nope' not found in plugin 'echo'");

    sup.trigger("c-4", "explode", json!({"boom": true}), 5000)
        .await;
    let r = sup.result().await;
    assert_eq!(
        r.call_id, "c-4",
        "no answer to the forged or replayed frame"
    );
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert_eq!(err.code, ErrorCode::Internal);
    assert_eq!(err.message, "Entry 'explode' panicked: kaboom");

    while sup.heartbeats == 0 {
        match sup.recv_any().await {
            Message::Heartbeat(_) => sup.heartbeats += 1,
            other => panic!("nothing is pending, yet the plugin sent {other:?}"),
        }
    }

    sup.send(Message::Stop(Stop { grace_ms: 2000 })).await;
    let outcome = within("run_with to return after STOP", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(probe.shut_down.load(Ordering::SeqCst), "on_shutdown ran");
}

/// A call past its deadline gets TIMEOUT; CANCEL gets CANCELED; in both cases a synchronous
/// handler sees its cancel flag and an async one is dropped. The injected shutdown signal (what
/// SIGTERM does in production) ends `run_with` cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_cancels_end_calls() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let probe = Probe::default();
    let (noticed, mut noticed_rx) = mpsc::unbounded_channel();
    let (term_tx, term_rx) = oneshot::channel::<()>();
    let plugin = spawn_plugin(test_plugin(&probe, noticed), test_env(&endpoint), async {
        let _ = term_rx.await;
    });
    sup.handshake().await;

    sup.trigger("t-async", "sleep", json!({"ms": 60_000}), 100)
        .await;
    let r = sup.result().await;
    assert_eq!(r.call_id, "t-async");
    let err = r.error.unwrap();
    assert_eq!(err.code, ErrorCode::Timeout);
    assert_eq!(err.message, "Entry 'sleep' timed out after 100ms");

    sup.trigger("t-sync", "spin", json!({}), 100).await;
    let r = sup.result().await;
    assert_eq!(r.call_id, "t-sync");
    assert_eq!(r.error.unwrap().code, ErrorCode::Timeout);
    assert_eq!(
        within("the sync handler to notice", noticed_rx.recv()).await,
        Some("t-sync".to_string())
    );

    sup.trigger("c-async", "sleep", json!({"ms": 60_000}), 60_000)
        .await;
    sup.trigger("c-sync", "spin", json!({}), 60_000).await;
    for call_id in ["c-async", "c-sync"] {
        sup.send(Message::Cancel(Cancel {
            call_id: call_id.into(),
        }))
        .await;
    }
    let mut canceled = [sup.result().await, sup.result().await];
    canceled.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    for (r, call_id) in canceled.iter().zip(["c-async", "c-sync"]) {
        assert_eq!(r.call_id, call_id);
        let err = r.error.clone().unwrap();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::Canceled, "canceled")
        );
    }
    assert_eq!(
        within("the sync handler to notice", noticed_rx.recv()).await,
        Some("c-sync".to_string())
    );

    term_tx.send(()).unwrap();
    let outcome = within("run_with to return after SIGTERM", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(probe.shut_down.load(Ordering::SeqCst), "on_shutdown ran");
}

/// Over ipc (neko's default transport): TRIGGERs sent while `on_startup` runs wait for it and are
/// then served; `update_status` reaches the supervisor as STATUS before the call's RESULT; the
/// run id comes from `_ctx` when the TRIGGER carries none; a shutdown hook that hangs is cut off
/// by the STOP's grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_gates_calls_and_status_is_reported() {
    let socket = SocketFile::new();
    let (mut sup, endpoint) = FakeSupervisor::bind(&format!("ipc://{}", socket.0.display())).await;
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let plugin = Plugin::new()
        .entry(
            Entry::new("status"),
            |ctx: Context, args: Value| async move {
                ctx.update_status(args_without_ctx(&args))?;
                Ok(json!({"run_id": ctx.run_id()}))
            },
        )
        .on_startup(|_ctx: Context| async move {
            gate_rx
                .await
                .map_err(|_| EntryError::internal("gate dropped"))
        })
        .on_shutdown(|_ctx: Context| std::future::pending());
    let plugin = spawn_plugin(plugin, test_env(&endpoint), std::future::pending());
    sup.handshake().await;

    sup.trigger(
        "s-1",
        "status",
        json!({"_ctx": {"run_id": "r-9"}, "queue": 2}),
        5000,
    )
    .await;
    // Heartbeats flow while startup runs: the loop turns.
    while sup.heartbeats == 0 {
        match sup.recv_any().await {
            Message::Heartbeat(_) => sup.heartbeats += 1,
            other => panic!("nothing but heartbeats before startup ends, got {other:?}"),
        }
    }
    gate_tx.send(()).unwrap();

    match sup.recv().await {
        Message::Status(s) => assert_eq!(s.status, json!({"queue": 2})),
        other => panic!("expected STATUS, got {other:?}"),
    }
    let r = sup.result().await;
    assert_eq!(r.call_id, "s-1");
    assert_eq!(r.data, json!({"run_id": "r-9"}));

    sup.send(Message::Stop(Stop { grace_ms: 200 })).await;
    let outcome = within("run_with to return despite a hanging hook", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// STOP while `on_startup` still runs: the TRIGGER that waited for startup and one that arrives
/// during the shutdown hook are both answered NOT_READY; `run_with` returns once the hook ends.
#[tokio::test]
async fn stop_during_startup_refuses_waiting_calls() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let (hook_tx, hook_rx) = oneshot::channel::<()>();
    let plugin = Plugin::new()
        .entry(
            Entry::new("echo"),
            |_c: Context, a: Value| async move { Ok(a) },
        )
        .on_startup(|_ctx: Context| std::future::pending())
        .on_shutdown(|_ctx: Context| async move {
            let _ = hook_rx.await;
        });
    let plugin = spawn_plugin(plugin, test_env(&endpoint), std::future::pending());
    sup.handshake().await;

    sup.trigger("q-1", "echo", json!({}), 5000).await;
    sup.send(Message::Stop(Stop { grace_ms: 5000 })).await;
    sup.trigger("q-2", "echo", json!({}), 5000).await;
    for call_id in ["q-1", "q-2"] {
        let r = sup.result().await;
        assert_eq!(r.call_id, call_id);
        let err = r.error.unwrap();
        assert_eq!(err.code, ErrorCode::NotReady);
        assert_eq!(err.message, "Plugin 'echo' is stopping");
    }

    hook_tx.send(()).unwrap();
    let outcome = within("run_with to return after the hook", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// A supervisor that never answers HELLO makes `run_with` fail with `NoWelcome` after the
/// handshake timeout, the error `run` turns into a non-zero exit.
#[tokio::test]
async fn unanswered_hello_is_an_error() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let mut env = test_env(&endpoint);
    env.handshake_timeout = Duration::from_millis(300);
    let plugin = spawn_plugin(Plugin::new(), env, std::future::pending());
    assert!(matches!(sup.recv().await, Message::Hello(_)));
    let outcome = within("run_with to give up", plugin).await.unwrap();
    assert!(
        matches!(outcome, Err(RunError::NoWelcome(_))),
        "{outcome:?}"
    );
}

/// When the parent process is not the supervisor named in the environment, the plugin exits
/// cleanly on its own (here the "supervisor" is the test process itself, never its own parent).
#[tokio::test]
async fn exits_when_the_supervisor_is_not_the_parent() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let mut env = test_env(&endpoint);
    env.supervisor_pid = Some(std::process::id());
    let plugin = spawn_plugin(Plugin::new(), env, std::future::pending());
    sup.handshake().await;
    let outcome = within("run_with to notice the missing supervisor", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// A handler's requests reach the supervisor as REQUESTs with the reference's op and args, and
/// the RESPONSE with the same id is what the handler gets: `run.update`'s answer and
/// `export.push`'s item id end up in the call's RESULT. A refusal surfaces as the call's error
/// (code, message, details unchanged); an unanswered request times out; a late or unknown
/// RESPONSE is dropped without disturbing later requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_refused_and_timed_out() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let plugin = Plugin::new()
        .entry(
            Entry::new("report"),
            |ctx: Context, _args: Value| async move {
                let mut metrics = neko_sdk::serde_json::Map::new();
                metrics.insert("loss".into(), json!(0.5));
                let update = ctx
                    .run_update(RunUpdate {
                        progress: Some(0.5),
                        stage: Some("train".into()),
                        step: Some(1),
                        step_total: Some(2),
                        metrics: Some(metrics),
                        ..RunUpdate::default()
                    })
                    .await?;
                let export_item_id = ctx.export_push_text("log line", Some("the log")).await?;
                Ok(json!({"update": update, "export_item_id": export_item_id}))
            },
        )
        .entry(
            Entry::new("slow_export"),
            |ctx: Context, _args: Value| async move {
                let id = ctx
                    .with_request_timeout(Duration::from_millis(200))
                    .export_push_url("https://example.com/r", None)
                    .await?;
                Ok(json!(id))
            },
        );
    let plugin = spawn_plugin(plugin, test_env(&endpoint), std::future::pending());
    sup.handshake().await;

    sup.trigger_run("p-1", "report", "r-1").await;
    let update = sup.request().await;
    assert_eq!(update.op, "run.update");
    assert_eq!(
        update.args,
        json!({"run_id": "r-1", "progress": 0.5, "stage": "train", "step": 1, "step_total": 2,
               "metrics": {"loss": 0.5}})
    );
    let applied = json!({"ok": true, "applied": true, "run_id": "r-1", "status": "running",
                         "updated_at": 1_700_000_000.5});
    // A RESPONSE for no open request first: dropped, the real answer still gets through.
    sup.send(Message::Response(Response::success(
        "req-unknown",
        json!(1),
    )))
    .await;
    sup.send(Message::Response(Response::success(
        &update.request_id,
        applied.clone(),
    )))
    .await;
    let export = sup.request().await;
    assert_ne!(export.request_id, update.request_id);
    assert_eq!(export.op, "export.push");
    assert_eq!(
        export.args,
        json!({"run_id": "r-1", "export_type": "text", "text": "log line", "description": "the log"})
    );
    sup.send(Message::Response(Response::success(
        &export.request_id,
        json!({"export_item_id": "e-42"}),
    )))
    .await;
    let r = sup.result().await;
    assert_eq!((r.call_id.as_str(), r.ok), ("p-1", true), "{r:?}");
    assert_eq!(r.data, json!({"update": applied, "export_item_id": "e-42"}));

    // The supervisor refuses: the entry's `?` passes the refusal on as its own error.
    sup.trigger_run("p-2", "report", "r-2").await;
    let refused = sup.request().await;
    assert_eq!(refused.args["run_id"], "r-2");
    let mut error = WireError::new(ErrorCode::NotFound, "run 'r-2' not found");
    error.details = Some(json!({"run_id": "r-2"}));
    sup.send(Message::Response(Response::failure(
        &refused.request_id,
        error.clone(),
    )))
    .await;
    let r = sup.result().await;
    assert_eq!((r.call_id.as_str(), r.ok), ("p-2", false));
    assert_eq!(r.error, Some(error));

    // Nobody answers: the request times out after the context's timeout.
    sup.trigger_run("p-3", "slow_export", "r-3").await;
    let unanswered = sup.request().await;
    assert_eq!(
        unanswered.args,
        json!({"run_id": "r-3", "export_type": "url", "url": "https://example.com/r"})
    );
    let r = sup.result().await;
    assert_eq!(r.call_id, "p-3");
    let err = r.error.unwrap();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::Timeout, "export.push timed out after 0.2s")
    );
    // Its answer comes too late and is dropped; the next request is served normally.
    sup.send(Message::Response(Response::success(
        &unanswered.request_id,
        json!({"export_item_id": "late"}),
    )))
    .await;
    sup.trigger_run("p-4", "slow_export", "r-4").await;
    let next = sup.request().await;
    sup.send(Message::Response(Response::success(
        &next.request_id,
        json!({"export_item_id": "e-43"}),
    )))
    .await;
    let r = sup.result().await;
    assert_eq!((r.call_id.as_str(), r.data), ("p-4", json!("e-43")));

    // Outside a run there is no run id to report on; nothing is sent.
    sup.trigger("p-5", "report", json!({}), 5000).await;
    let r = sup.result().await;
    assert_eq!(r.call_id, "p-5");
    let err = r.error.unwrap();
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            ErrorCode::ValidationError,
            "run_id is required (this entry may not be triggered via /runs)"
        )
    );

    sup.send(Message::Stop(Stop { grace_ms: 2000 })).await;
    let outcome = within("run_with to return after STOP", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// Plugin-to-plugin calls from handlers: an async and a synchronous handler each send
/// `plugin.call` inside their own call (its `call_id`), and the callee's data or neko's refusal
/// (code, message, details) is what they return. A blocking call from an async handler is refused
/// without sending anything, and without panicking the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_calls_wait_in_their_call() {
    let (mut sup, endpoint) = FakeSupervisor::bind("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugin.toml");
    std::fs::write(
        &config,
        "[plugin.safety]\nsync_call_in_handler = \"allow\"\n",
    )
    .unwrap();
    let mut env = test_env(&endpoint);
    env.plugin_config = Some(config);
    let plugin = Plugin::new()
        .entry(
            Entry::new("relay"),
            |ctx: Context, _args: Value| async move {
                ctx.plugins()
                    .call_entry("beta:bounce", json!({"n": 1}), WAIT)
                    .await
            },
        )
        .sync_entry(
            Entry::new("relay_blocking"),
            |ctx: Context, _args: Value| {
                ctx.plugins()
                    .call_entry_blocking("beta:bounce", json!({"n": 1}), WAIT)
            },
        )
        .entry(
            Entry::new("misuse"),
            |ctx: Context, _args: Value| async move {
                ctx.plugins()
                    .call_entry_blocking("beta:bounce", json!({}), WAIT)
            },
        );
    let plugin = spawn_plugin(plugin, env, std::future::pending());
    sup.handshake().await;

    for entry in ["relay", "relay_blocking"] {
        sup.trigger(&format!("{entry}-1"), entry, json!({}), 30_000)
            .await;
        let sent = sup.request().await;
        assert_eq!(sent.op, "plugin.call");
        assert_eq!(sent.call_id.as_deref(), Some(format!("{entry}-1").as_str()));
        assert_eq!(
            sent.args,
            json!({"plugin_id": "beta", "event_type": "plugin_entry", "event_id": "bounce",
                   "args": {"n": 1}, "timeout_ms": WAIT.as_millis() as u64})
        );
        sup.send(Message::Response(Response::success(
            &sent.request_id,
            json!({"bounced": 1}),
        )))
        .await;
        let r = sup.result().await;
        assert_eq!((r.ok, r.data), (true, json!({"bounced": 1})), "{entry}");

        sup.trigger(&format!("{entry}-2"), entry, json!({}), 30_000)
            .await;
        let sent = sup.request().await;
        let mut refusal = WireError::new(
            ErrorCode::Deadlock,
            "call would deadlock: echo.relay → beta.bounce → echo",
        );
        refusal.details = Some(json!({"cycle": ["echo", "beta", "echo"]}));
        sup.send(Message::Response(Response::failure(
            &sent.request_id,
            refusal.clone(),
        )))
        .await;
        let r = sup.result().await;
        assert_eq!(r.error, Some(refusal), "{entry}");
    }

    sup.trigger("m-1", "misuse", json!({}), 30_000).await;
    let r = sup.result().await;
    let err = r.error.unwrap();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(
        err.message.starts_with(
            "Sync call 'plugins.call_entry_blocking' cannot be used inside a running event loop"
        ),
        "{}",
        err.message
    );

    sup.send(Message::Stop(Stop { grace_ms: 2000 })).await;
    let outcome = within("run_with to return after STOP", plugin)
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// Two entries with one id are refused before anything is sent.
#[tokio::test]
async fn duplicate_entry_ids_are_refused() {
    let plugin = Plugin::new()
        .entry(
            Entry::new("x"),
            |_c: Context, a: Value| async move { Ok(a) },
        )
        .sync_entry(Entry::new("x"), |_c: Context, a: Value| Ok(a));
    let outcome = plugin
        .run_with(test_env("tcp://127.0.0.1:1"), std::future::pending::<()>())
        .await;
    assert!(
        matches!(&outcome, Err(RunError::DuplicateEntry(id)) if id == "x"),
        "{outcome:?}"
    );
}

/// Custom events: the same (type, id) twice, or the type `plugin_entry` or none, are refused
/// before anything is sent.
#[tokio::test]
async fn bad_custom_events_are_refused() {
    let event = |p: Plugin, t: &str| {
        p.event(
            t,
            Entry::new("e"),
            |_c: Context, a: Value| async move { Ok(a) },
        )
    };
    let run = |p: Plugin| p.run_with(test_env("tcp://127.0.0.1:1"), std::future::pending::<()>());
    let twice = event(event(Plugin::new(), "tick"), "tick");
    let outcome = run(twice).await;
    assert!(
        matches!(&outcome, Err(RunError::DuplicateEntry(id)) if id == "tick.e"),
        "{outcome:?}"
    );
    for bad in ["plugin_entry", ""] {
        let outcome = run(event(Plugin::new(), bad)).await;
        assert!(
            matches!(&outcome, Err(RunError::BadEventType(t)) if t == bad),
            "{outcome:?}"
        );
    }
}
