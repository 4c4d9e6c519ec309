//! Bad input campaign (issue 7, point 3): property-based fuzzing of the message plane's RPC and
//! INGEST decoders, through the sockets plugins use.
//!
//! The decoders (`rpc::decode` / `prepare`, `ingest::decode_frame`) are private to the plane, so
//! they are driven through its smallest public surface: a real `MessagePlane` actor on loopback
//! ports, a DEALER on RPC and a PUSH on INGEST, as a plugin would. That also covers what comes
//! after decoding: store calls, replay plans, replies in both encodings, and reading back
//! whatever garbage INGEST accepted (JSON and msgpack views).
//!
//! Checks: every RPC request gets exactly one well-formed reply (`v`, `req_id`, `ok`, and an
//! `error` with `code` and `message` when not ok) within a deadline, in each validation mode
//! (strict, warn, off); every INGEST frame is counted and the plane keeps serving; no panic
//! anywhere in the process (a panic hook counts them, including in the plane's tasks).
//!
//! Budget: `NEKO_FUZZ_CASES` cases per target (default below: a few seconds in a debug build).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use neko_actors::message_plane::{
    MessagePlane, MessagePlaneHandle, MessagePlaneMsg, MessagePlaneSettings, QueryFilter,
    StoreName, ValidateMode,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[path = "../../protocol/tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{apply, cases, config, mutation};
use ractor::{Actor, ActorRef};
use rmpv::Value;
use serde_json::{Value as J, json};
use zeromq::{DealerSocket, PushSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// How long one reply may take (generous: CI machines are slow and debug builds slower).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this process (tests, the plane's actors and tasks alike).
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plane on free loopback ports, small limits so caps are reached.
async fn start(mode: ValidateMode) -> (ActorRef<MessagePlaneMsg>, MessagePlaneHandle) {
    let settings = MessagePlaneSettings {
        rpc_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        ingest_endpoint: "tcp://127.0.0.1:0".into(),
        store_maxlen: 64,
        topic_max: 32,
        payload_max_bytes: 2048,
        get_recent_max_limit: 100,
        validate_mode: mode,
    };
    let (plane, _join) = Actor::spawn(None, MessagePlane, settings).await.unwrap();
    let handle = plane
        .call(MessagePlaneMsg::GetHandle, Some(REPLY_TIMEOUT))
        .await
        .unwrap()
        .success_or(())
        .unwrap();
    (plane, handle)
}

async fn dealer(handle: &MessagePlaneHandle) -> DealerSocket {
    let mut d = DealerSocket::new();
    d.connect(&handle.endpoints().rpc).await.unwrap();
    d
}

/// msgpack bytes of a value.
fn pack(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

/// msgpack value of JSON.
fn mp(j: &J) -> Value {
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::from(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or_default())),
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(mp).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), mp(v)))
                .collect(),
        ),
    }
}

/// JSON text of a msgpack value, where JSON can say it (bin → array, ext → null).
fn to_json(v: &Value) -> J {
    match v {
        Value::Nil | Value::Ext(..) => J::Null,
        Value::Boolean(b) => J::from(*b),
        Value::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        Value::F32(f) => J::from(f64::from(*f)),
        Value::F64(f) => J::from(*f),
        Value::String(s) => J::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => J::from(b.clone()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

/// Sends one request frame and reads its reply; checks the reply's shape.
async fn rpc(dealer: &mut DealerSocket, frame: Vec<u8>) -> Result<J, String> {
    dealer
        .send(ZmqMessage::from(frame))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, dealer.recv())
        .await
        .map_err(|_| "no reply within the deadline".to_string())?
        .map_err(|e| format!("recv: {e}"))?;
    let frames = reply.into_vec();
    if frames.len() != 1 {
        return Err(format!("reply has {} frames", frames.len()));
    }
    let bytes = &frames[0];
    let reply: J = match serde_json::from_slice(bytes) {
        Ok(j) => j,
        Err(_) => {
            let mut rd: &[u8] = bytes;
            let v = rmpv::decode::read_value(&mut rd).map_err(|e| format!("reply: {e}"))?;
            if !rd.is_empty() {
                return Err("trailing bytes after the reply".into());
            }
            to_json(&v)
        }
    };
    let ok = reply["ok"].as_bool().ok_or(format!("no ok: {reply}"))?;
    if reply["v"] != json!(1) || !reply["req_id"].is_string() {
        return Err(format!("bad reply envelope: {reply}"));
    }
    let error = &reply["error"];
    if !ok && (!error["code"].is_string() || !error["message"].is_string()) {
        return Err(format!("error without code/message: {reply}"));
    }
    Ok(reply)
}

/// Three planes, one per validation mode, and a DEALER on each.
struct Planes {
    planes: Vec<(ActorRef<MessagePlaneMsg>, MessagePlaneHandle)>,
    dealers: Vec<DealerSocket>,
}

impl Planes {
    async fn start() -> Self {
        let mut planes = Vec::new();
        let mut dealers = Vec::new();
        for mode in [ValidateMode::Strict, ValidateMode::Warn, ValidateMode::Off] {
            let (plane, handle) = start(mode).await;
            dealers.push(dealer(&handle).await);
            planes.push((plane, handle));
        }
        Self { planes, dealers }
    }

    /// Sends `frame` to every plane; every one must answer well.
    async fn rpc_all(&mut self, frame: &[u8]) -> Result<Vec<J>, String> {
        let mut out = Vec::new();
        for (d, mode) in self.dealers.iter_mut().zip(["strict", "warn", "off"]) {
            let reply = rpc(d, frame.to_vec())
                .await
                .map_err(|e| format!("{e} (mode {mode}, frame {frame:02x?})"))?;
            out.push(reply);
        }
        Ok(out)
    }

    /// Every plane still answers a ping, no store was restarted, nothing panicked.
    async fn healthy(&mut self) {
        let ping = serde_json::to_vec(&json!({"v": 1, "op": "ping", "req_id": "p"})).unwrap();
        for reply in self.rpc_all(&ping).await.unwrap() {
            assert_eq!(reply["ok"], true, "{reply}");
        }
        for (_, h) in &self.planes {
            assert_eq!(h.stats().store_restarts, 0, "a store failed");
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    }

    fn stop(self) {
        for (plane, _) in self.planes {
            plane.stop(None);
        }
    }
}

// ----- generators -----

const OPS: [&str; 12] = [
    "ping",
    "health",
    "bus.list_topics",
    "bus.publish",
    "bus.get_recent",
    "bus.get_since",
    "bus.query",
    "bus.replay",
    "bus.delete",
    "bus.nope",
    "",
    "PING",
];

const ARG_KEYS: [&str; 24] = [
    "store",
    "bus",
    "topic",
    "limit",
    "light",
    "after_seq",
    "plugin_id",
    "source",
    "kind",
    "type",
    "priority_min",
    "since_ts",
    "until_ts",
    "id",
    "payload",
    "plan",
    "trace",
    "max_count",
    "params",
    "op",
    "child",
    "left",
    "right",
    "n",
];

const PLAN_KEYS: [&str; 14] = [
    "kind", "op", "params", "child", "left", "right", "n", "by", "reverse", "field", "value",
    "values", "pattern", "strict",
];

/// Any msgpack value, nested a little, biased to what the plane reads.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        (-5i64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::F64),
        any::<f32>().prop_map(Value::F32),
        prop::sample::select(vec![
            "",
            "all",
            "messages",
            "events",
            "lifecycle",
            "runs",
            "export",
            "memory",
            "nope",
            "get",
            "unary",
            "binary",
            "merge",
            "intersection",
            "difference",
            "limit",
            "sort",
            "filter",
            "where_eq",
            "where_in",
            "where_contains",
            "where_regex",
            "timestamp",
            " 12 ",
            "1_0",
            "-3",
            "nan",
            "inf",
            "1e400",
            "(a+)+$",
            "[",
            "\\",
            ".*",
            "x{99999}",
        ])
        .prop_map(Value::from),
        "\\PC{0,10}".prop_map(|s| Value::from(s.as_str())),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(ARG_KEYS.to_vec()).prop_map(Value::from),
            2 => prop::sample::select(PLAN_KEYS.to_vec()).prop_map(Value::from),
            1 => inner.clone(),
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..6).prop_map(Value::Map),
        ]
    })
}

/// A request envelope with each field right, wrong or absent.
fn envelope() -> impl Strategy<Value = Value> {
    let v =
        prop_oneof![4 => Just(Some(Value::from(1))), 1 => Just(None), 1 => value().prop_map(Some)];
    let op = prop_oneof![
        5 => prop::sample::select(OPS.to_vec()).prop_map(|o| Some(Value::from(o))),
        1 => value().prop_map(Some),
    ];
    let req_id = prop_oneof![
        4 => "[a-z0-9:]{1,12}".prop_map(|s| Some(Value::from(s.as_str()))),
        1 => Just(Some(Value::from("x".repeat(65)))),
        1 => Just(None),
        1 => value().prop_map(Some),
    ];
    let store = prop_oneof![
        4 => prop::sample::select(vec!["messages", "events", "lifecycle", "runs", "export", "memory"])
            .prop_map(Value::from),
        1 => value(),
    ];
    let args = (
        store,
        proptest::collection::vec((prop::sample::select(ARG_KEYS.to_vec()), value()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(store, kv, with_store)| {
            let mut m = Vec::new();
            if with_store {
                m.push((Value::from("store"), store));
            }
            m.extend(kv.into_iter().map(|(k, v)| (Value::from(k), v)));
            Value::Map(m)
        });
    let args = prop_oneof![5 => args.prop_map(Some), 1 => Just(None), 1 => value().prop_map(Some)];
    let from = prop_oneof![
        3 => Just(None),
        1 => "\\PC{0,8}".prop_map(|s| Some(Value::from(s.as_str()))),
        1 => value().prop_map(Some),
    ];
    let extra = proptest::collection::vec((value(), value()), 0..2);
    (v, op, req_id, args, from, extra).prop_map(|(v, op, req_id, args, from, extra)| {
        let mut m = Vec::new();
        for (k, val) in [
            ("v", v),
            ("op", op),
            ("req_id", req_id),
            ("args", args),
            ("from_plugin", from),
        ] {
            if let Some(val) = val {
                m.push((Value::from(k), val));
            }
        }
        m.extend(extra);
        Value::Map(m)
    })
}

/// A replay plan node, nested, with right and wrong parts.
fn plan() -> impl Strategy<Value = Value> {
    let get = proptest::collection::vec((prop::sample::select(ARG_KEYS.to_vec()), value()), 0..4)
        .prop_map(|kv| {
            let params = Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
            Value::Map(vec![
                (Value::from("kind"), Value::from("get")),
                (
                    Value::from("params"),
                    Value::Map(vec![(Value::from("params"), params)]),
                ),
            ])
        });
    get.prop_recursive(6, 32, 2, |inner| {
        let unary_op = prop::sample::select(vec![
            "limit",
            "sort",
            "filter",
            "where_eq",
            "where_in",
            "where_contains",
            "where_regex",
            "x",
        ]);
        let params =
            proptest::collection::vec((prop::sample::select(PLAN_KEYS.to_vec()), value()), 0..4)
                .prop_map(|kv| {
                    Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
                });
        prop_oneof![
            (unary_op, params, inner.clone()).prop_map(|(op, params, child)| Value::Map(vec![
                (Value::from("kind"), Value::from("unary")),
                (Value::from("op"), Value::from(op)),
                (Value::from("params"), params),
                (Value::from("child"), child),
            ])),
            (
                prop::sample::select(vec!["merge", "intersection", "difference", "union"]),
                inner.clone(),
                inner
            )
                .prop_map(|(op, left, right)| Value::Map(vec![
                    (Value::from("kind"), Value::from("binary")),
                    (Value::from("op"), Value::from(op)),
                    (Value::from("left"), left),
                    (Value::from("right"), right),
                ])),
        ]
    })
}

/// Valid requests of every op, to mutate.
fn rpc_seeds() -> Vec<J> {
    let env = |op: &str, args: J| json!({"v": 1, "op": op, "req_id": "seed", "args": args, "from_plugin": "fuzz"});
    let plan = json!({"kind": "binary", "op": "merge",
        "left": {"kind": "unary", "op": "where_regex", "params": {"field": "source", "pattern": "^s.*", "strict": false},
                 "child": {"kind": "get", "params": {"params": {"topic": "t", "limit": 5}}}},
        "right": {"kind": "unary", "op": "sort", "params": {"by": ["priority", "timestamp"], "reverse": true},
                  "child": {"kind": "unary", "op": "filter", "params": {"flt": {"kind": "k"}, "priority_min": 1, "strict": true},
                            "child": {"kind": "get", "params": {"params": {"plugin_id": "p", "since_ts": 0}}}}}});
    vec![
        env("ping", json!({})),
        env("health", json!({})),
        env("bus.list_topics", json!({"store": "messages"})),
        env(
            "bus.publish",
            json!({"store": "messages", "topic": "t", "payload": {"plugin_id": "p", "source": "s", "priority": 3, "id": "i1", "content": "hello", "time": 1.5}}),
        ),
        env(
            "bus.get_recent",
            json!({"store": "messages", "topic": "t", "limit": 10, "light": false}),
        ),
        env(
            "bus.get_since",
            json!({"store": "events", "topic": "t", "after_seq": 0, "limit": 10}),
        ),
        env(
            "bus.query",
            json!({"store": "messages", "topic": "t", "limit": 10, "plugin_id": "p", "source": "s", "kind": "k", "type": "x", "priority_min": 0, "since_ts": 0.0, "until_ts": 1e12, "light": true}),
        ),
        env(
            "bus.replay",
            json!({"store": "messages", "plan": plan, "light": false, "limit": 5}),
        ),
        env("bus.delete", json!({"store": "messages", "id": "i1"})),
    ]
}

/// Runs `target` over `strategy` against three fresh planes, then checks they are healthy.
fn run_rpc<S: Strategy>(default_cases: u32, strategy: S, frame_of: impl Fn(S::Value) -> Vec<u8>)
where
    S::Value: std::fmt::Debug,
{
    count_panics();
    let rt = runtime();
    let planes = Mutex::new(Some(rt.block_on(Planes::start())));
    let started = Instant::now();
    let result = TestRunner::new(config(default_cases)).run(&strategy, |input| {
        let frame = frame_of(input);
        let mut guard = planes.lock().unwrap();
        let planes = guard.as_mut().unwrap();
        rt.block_on(planes.rpc_all(&frame))
            .map_err(TestCaseError::fail)?;
        Ok(())
    });
    let mut planes = planes.into_inner().unwrap().unwrap();
    rt.block_on(planes.healthy());
    result.unwrap();
    eprintln!(
        "rpc target: {} cases in {:?}",
        cases(default_cases),
        started.elapsed()
    );
    planes.stop();
}

/// Arbitrary bytes (and arbitrary text, which may be JSON) on RPC: one well-formed reply each.
#[test]
fn rpc_arbitrary_frames_get_one_well_formed_reply() {
    let frame = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        "\\PC{0,64}".prop_map(String::into_bytes),
        // Starts like a map, so msgpack decoding goes further.
        (
            0x80u8..=0x8f,
            proptest::collection::vec(any::<u8>(), 0..128)
        )
            .prop_map(|(m, mut b)| {
                b.insert(0, m);
                b
            }),
    ];
    run_rpc(1000, frame, |f| f);
}

/// Envelopes with right, wrong and absent fields, in msgpack or JSON, including replay plans.
#[test]
fn rpc_structured_requests_get_one_well_formed_reply() {
    let request = prop_oneof![
        3 => envelope(),
        2 => (plan(), prop::sample::select(vec!["messages", "events", "nope"]), value()).prop_map(
            |(plan, store, limit)| Value::Map(vec![
                (Value::from("v"), Value::from(1)),
                (Value::from("op"), Value::from("bus.replay")),
                (Value::from("req_id"), Value::from("r")),
                (
                    Value::from("args"),
                    Value::Map(vec![
                        (Value::from("store"), Value::from(store)),
                        (Value::from("plan"), plan),
                        (Value::from("limit"), limit),
                    ])
                ),
            ])
        ),
    ];
    run_rpc(300, (request, any::<bool>()), |(req, as_json)| {
        if as_json {
            serde_json::to_vec(&to_json(&req)).unwrap()
        } else {
            pack(&req)
        }
    });
}

/// Valid requests of every op, in msgpack or JSON, mutated.
#[test]
fn rpc_mutated_valid_requests_get_one_well_formed_reply() {
    let strategy = (
        prop::sample::select(rpc_seeds()),
        any::<bool>(),
        proptest::collection::vec(mutation(), 1..5),
    );
    run_rpc(1000, strategy, |(seed, as_json, mutations)| {
        let mut frame = if as_json {
            serde_json::to_vec(&seed).unwrap()
        } else {
            pack(&mp(&seed))
        };
        for m in &mutations {
            apply(&mut frame, m);
        }
        frame
    });
}

/// Deeply nested requests (msgpack up to the decoder's limit and beyond, JSON likewise): one
/// reply each, no stack overflow.
#[test]
fn rpc_deep_nesting_gets_a_reply() {
    count_panics();
    let rt = runtime();
    rt.block_on(async {
        let mut planes = Planes::start().await;
        for depth in [100, 127, 128, 129, 1_000, 1_023, 1_024, 1_025, 5_000, 100_000] {
            // {"v":1,"op":"bus.publish","req_id":"d","args":{"topic":"t","payload":{"k":[[[…]]]}}}
            let mut f = b"\x84\xa1v\x01\xa2op\xabbus.publish\xa6req_id\xa1d\xa4args\x82".to_vec();
            f.extend_from_slice(b"\xa5topic\xa1t\xa7payload\x81\xa1k");
            f.extend(std::iter::repeat_n(0x91, depth));
            f.push(0xc0);
            for reply in planes.rpc_all(&f).await.unwrap() {
                // A payload within the plane's depth limit is stored; a deeper one refused.
                // ({"k": [...]}: the payload is one level deeper than the arrays.)
                if depth != 128 {
                    let want = depth < 128;
                    assert_eq!(reply["ok"], want, "publish nested {depth} deep: {reply}");
                }
            }
            // The same nesting as the protocol version, which `off` mode prints back.
            let mut f = b"\x83\xa2op\xa4ping\xa6req_id\xa1d\xa1v".to_vec();
            f.extend(std::iter::repeat_n(0x91, depth));
            f.push(0x01);
            planes.rpc_all(&f).await.unwrap();
            let json = format!(
                r#"{{"v":1,"op":"bus.publish","req_id":"d","args":{{"topic":"t","payload":{{"k":{}1{}}}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            planes.rpc_all(json.as_bytes()).await.unwrap();
        }
        planes.healthy().await;
        planes.stop();
    });
}

// ----- INGEST -----

/// Valid INGEST frames to mutate (the SDKs' shapes).
fn ingest_seeds() -> Vec<Vec<u8>> {
    let item = |store: &str, topic: &str, payload: J| json!({"store": store, "topic": topic, "payload": payload});
    let payload = json!({"plugin_id": "p", "source": "s", "priority": 2, "kind": "k", "type": "t",
        "timestamp": 1.5, "id": "i", "content": "hello", "metadata": {"a": [1, 2.5, null]}});
    let seeds = [
        json!({"v": 1, "kind": "delta_batch", "from": "fuzz", "ts": 1.0, "batch_id": "b",
            "items": [item("messages", "all", payload.clone()), item("events", "e", json!({"x": 1})),
                      {"bus": "memory", "topic": "m", "payload": "scalar"}]}),
        json!({"items": [item("messages", "t", payload.clone())], "kind": "delta_batch"}),
        json!({"v": 1, "kind": "snapshot", "store": "lifecycle", "topic": "snap", "mode": "append",
            "items": [payload.clone(), {"id": "x"}]}),
        json!({"kind": "snapshot", "bus": "runs", "items": [payload]}),
    ];
    let mut out: Vec<Vec<u8>> = seeds.iter().map(|s| pack(&mp(s))).collect();
    // A payload with binary data and an ext value, which JSON cannot say.
    out.push(pack(&Value::Map(vec![
        (Value::from("kind"), Value::from("delta_batch")),
        (
            Value::from("items"),
            Value::Array(vec![Value::Map(vec![
                (Value::from("store"), Value::from("messages")),
                (Value::from("topic"), Value::from("bin")),
                (
                    Value::from("payload"),
                    Value::Map(vec![
                        (Value::from("binary_data"), Value::Binary(vec![0, 159, 255])),
                        (Value::from("e"), Value::Ext(5, vec![1, 2])),
                        (Value::from("f"), Value::F32(f32::NAN)),
                        (Value::from(7), Value::from("int key")),
                    ]),
                ),
            ])]),
        ),
    ])));
    out
}

/// A structured INGEST frame: a map with the frame's keys, items with right and wrong parts.
fn ingest_frame() -> impl Strategy<Value = Value> {
    let item = (
        prop_oneof![
            3 => prop::sample::select(vec!["messages", "events", "lifecycle", "runs", "export", "memory"])
                .prop_map(Value::from),
            1 => value(),
        ],
        prop_oneof![
            3 => "[a-z]{1,4}".prop_map(|s| Value::from(s.as_str())),
            1 => Just(Value::from("t".repeat(200))),
            1 => value(),
        ],
        value(),
        any::<u8>(),
    )
        .prop_map(|(store, topic, payload, keys)| {
            let mut m = Vec::new();
            for (bit, k, v) in [(1, "store", store.clone()), (2, "bus", store), (4, "topic", topic), (8, "payload", payload)] {
                if keys & bit != 0 || keys > 0xf0 {
                    m.push((Value::from(k), v));
                }
            }
            Value::Map(m)
        });
    let items = prop_oneof![
        4 => proptest::collection::vec(prop_oneof![4 => item, 1 => value()], 0..6).prop_map(Value::Array),
        1 => value(),
    ];
    let kind = prop_oneof![
        2 => Just(Value::from("delta_batch")),
        2 => Just(Value::from("snapshot")),
        1 => value(),
    ];
    (kind, items, value(), value(), value(), any::<bool>()).prop_map(
        |(kind, items, store, topic, mode, kind_first)| {
            let mut m = vec![
                (Value::from("store"), store),
                (Value::from("topic"), topic),
                (Value::from("mode"), mode),
            ];
            if kind_first {
                m.insert(0, (Value::from("kind"), kind));
                m.push((Value::from("items"), items));
            } else {
                m.push((Value::from("items"), items));
                m.push((Value::from("kind"), kind));
            }
            Value::Map(m)
        },
    )
}

/// Frames of every kind on INGEST: each is counted, the plane keeps serving, and whatever was
/// stored reads back over RPC (msgpack and JSON) and through the handle (JSON view).
#[test]
fn ingest_frames_are_counted_and_stored_data_reads_back() {
    count_panics();
    let rt = runtime();
    let frame = prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..128),
        3 => (prop::sample::select(ingest_seeds()), proptest::collection::vec(mutation(), 1..5))
            .prop_map(|(mut f, ms)| {
                for m in &ms {
                    apply(&mut f, m);
                }
                f
            }),
        3 => ingest_frame().prop_map(|v| pack(&v)),
    ];
    let batch = proptest::collection::vec(frame, 1..8);
    let state = Mutex::new(rt.block_on(async {
        let planes = Planes::start().await;
        let mut pushes = Vec::new();
        for (_, h) in &planes.planes {
            let mut push = PushSocket::new();
            push.connect(&h.endpoints().ingest).await.unwrap();
            pushes.push(push);
        }
        (planes, pushes, 0u64, 0u32)
    }));
    let started = Instant::now();
    let reads: Vec<Vec<u8>> = ["messages", "events", "lifecycle", "runs", "export", "memory"]
        .iter()
        .flat_map(|store| {
            let plan = json!({"kind": "unary", "op": "sort", "params": {"by": "priority"},
                "child": {"kind": "get", "params": {"params": {"limit": 50}}}});
            let reqs = [
                json!({"v": 1, "op": "bus.list_topics", "req_id": "l", "args": {"store": store}}),
                json!({"v": 1, "op": "bus.get_since", "req_id": "s", "args": {"store": store, "limit": 100}}),
                json!({"v": 1, "op": "bus.query", "req_id": "q", "args": {"store": store, "topic": "all", "limit": 100}}),
                json!({"v": 1, "op": "bus.replay", "req_id": "r", "args": {"store": store, "plan": plan}}),
            ];
            reqs.into_iter()
                .flat_map(|r| [serde_json::to_vec(&r).unwrap(), pack(&mp(&r))])
                .collect::<Vec<_>>()
        })
        .collect();
    let result = TestRunner::new(config(200)).run(&batch, |frames| {
        let mut guard = state.lock().unwrap();
        let (planes, pushes, sent, batches) = &mut *guard;
        rt.block_on(async {
            for f in &frames {
                for push in pushes.iter_mut() {
                    push.send(ZmqMessage::from(f.clone())).await.unwrap();
                }
            }
            *sent += frames.len() as u64;
            let deadline = Instant::now() + REPLY_TIMEOUT;
            for (_, h) in &planes.planes {
                while h.stats().ingest_frames < *sent {
                    prop_assert!(
                        Instant::now() < deadline,
                        "INGEST stopped counting frames: {} of {}",
                        h.stats().ingest_frames,
                        sent
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Every few cases, read back everything stored so far, every way there is.
            *batches += 1;
            if *batches % 10 != 1 {
                return Ok(());
            }
            for r in &reads {
                planes.rpc_all(r).await.map_err(TestCaseError::fail)?;
            }
            for (_, h) in &planes.planes {
                for store in StoreName::ALL {
                    json_view(h, store).await.map_err(TestCaseError::fail)?;
                }
            }
            Ok(())
        })
    });
    let (mut planes, _pushes, sent, _) = state.into_inner().unwrap();
    rt.block_on(async {
        // Everything stored, read back once more.
        for r in &reads {
            planes.rpc_all(r).await.unwrap();
        }
        for (_, h) in &planes.planes {
            for store in StoreName::ALL {
                json_view(h, store).await.unwrap();
            }
        }
        planes.healthy().await;
    });
    result.unwrap();
    eprintln!(
        "ingest target: {} cases ({sent} frames per plane) in {:?}",
        cases(200),
        started.elapsed()
    );
    for (_, h) in &planes.planes {
        let s = h.stats();
        eprintln!(
            "  ingest_frames {} bad {} accepted {} dropped {}",
            s.ingest_frames,
            s.ingest_bad_frames,
            s.ingest_accepted,
            s.ingest_dropped()
        );
    }
    planes.stop();
}

/// The handle's JSON reads (what `GET /plugin/messages` uses) over whatever a store holds.
async fn json_view(h: &MessagePlaneHandle, store: StoreName) -> Result<(), String> {
    {
        let filter = QueryFilter {
            limit: 100,
            ..QueryFilter::default()
        };
        let events = h.query(store, filter).await.map_err(|e| e.to_string())?;
        for e in &events {
            serde_json::to_string(e).map_err(|e| e.to_string())?;
        }
        for topic in ["all", "t", "bin", "m", "e", "snap", "snapshot.all"] {
            h.get_recent(store, topic, 100)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
