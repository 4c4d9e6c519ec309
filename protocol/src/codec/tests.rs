//! Codec tests, against the shared test vectors in `protocol/vectors/vectors.json`.
//!
//! The vectors are written from the Rust encoder with `NEKO_WRITE_VECTORS=1 cargo test -p
//! neko-protocol`; without it, the test checks that the committed file still matches the encoder
//! byte for byte, so neither side can drift silently.

use super::*;
use crate::message::*;
use crate::status::ErrorCode;
use serde_json::{Value, json};

const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.json");

fn key() -> FrameKey {
    FrameKey::from_hex(SECRET_HEX).unwrap()
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::PluginToSupervisor => "p2s",
        Direction::SupervisorToPlugin => "s2p",
    }
}

/// One example of every message kind, in the direction it travels.
fn samples() -> Vec<(&'static str, Direction, Envelope)> {
    let env = |seq, msg| Envelope { v: 1, seq, msg };
    vec![
        (
            "hello",
            Direction::PluginToSupervisor,
            env(
                1,
                Message::Hello(Hello {
                    protocol: 1,
                    plugin_id: "echo".into(),
                    sdk: "neko-sdk-rust".into(),
                    sdk_version: "0.1.0".into(),
                    pid: 4242,
                    entries: vec![EntrySpec {
                        id: "echo".into(),
                        name: "Echo".into(),
                        description: "Returns its arguments".into(),
                        input_schema: default_input_schema(),
                        timeout_ms: Some(5000),
                        kind: "action".into(),
                    }],
                    input_schema: None,
                    events: Vec::new(),
                    features: vec![FEATURE_BATCH.into()],
                }),
            ),
        ),
        (
            "welcome",
            Direction::SupervisorToPlugin,
            env(
                1,
                Message::Welcome(Welcome {
                    plugin_id: "echo".into(),
                    heartbeat_interval_ms: 1000,
                    features: vec![FEATURE_BATCH.into()],
                }),
            ),
        ),
        (
            "trigger",
            Direction::SupervisorToPlugin,
            env(
                2,
                Message::Trigger(Trigger {
                    call_id: "c-1".into(),
                    entry_id: "echo".into(),
                    args: json!({"text": "hi", "n": 3, "_ctx": {"run_id": "r-1"}}),
                    timeout_ms: 30000,
                    run_id: Some("r-1".into()),
                    event_type: None,
                    caller: None,
                }),
            ),
        ),
        (
            "result_ok",
            Direction::PluginToSupervisor,
            env(
                2,
                Message::Result(CallResult::success("c-1", json!({"text": "hi"}))),
            ),
        ),
        (
            "result_error",
            Direction::PluginToSupervisor,
            env(
                3,
                Message::Result(CallResult::failure(
                    "c-2",
                    WireError {
                        code: ErrorCode::ValidationError,
                        message: "ms must be a number".into(),
                        details: Some(json!({"field": "ms"})),
                    },
                )),
            ),
        ),
        (
            "cancel",
            Direction::SupervisorToPlugin,
            env(
                3,
                Message::Cancel(Cancel {
                    call_id: "c-2".into(),
                }),
            ),
        ),
        (
            "status",
            Direction::PluginToSupervisor,
            env(
                4,
                Message::Status(StatusUpdate {
                    status: json!({"status": "busy", "queue": 2}),
                }),
            ),
        ),
        (
            "heartbeat",
            Direction::PluginToSupervisor,
            env(5, Message::Heartbeat(Heartbeat {})),
        ),
        (
            "stop",
            Direction::SupervisorToPlugin,
            env(4, Message::Stop(Stop { grace_ms: 5000 })),
        ),
        (
            "request",
            Direction::PluginToSupervisor,
            env(
                6,
                Message::Request(Request {
                    request_id: "q-1".into(),
                    op: "config.get".into(),
                    args: json!({}),
                    call_id: None,
                }),
            ),
        ),
        (
            "response",
            Direction::SupervisorToPlugin,
            env(
                5,
                Message::Response(Response::success(
                    "q-1",
                    json!({"config": {"plugin": {"id": "echo"}, "debug": {"level": 2}}}),
                )),
            ),
        ),
        (
            "batch",
            Direction::PluginToSupervisor,
            env(7, Message::Batch(sample_batch())),
        ),
    ]
}

fn sample_batch() -> Batch {
    Batch {
        messages: vec![
            Message::Result(CallResult::success("c-3", json!({"n": 1}))),
            Message::Status(StatusUpdate {
                status: json!({"status": "idle"}),
            }),
            Message::Result(CallResult::success("c-4", json!([1, "two", null]))),
        ],
    }
}

fn vectors_json() -> Value {
    let k = key();
    let vectors: Vec<Value> = samples()
        .into_iter()
        .map(|(name, dir, env)| {
            let [mac, payload] = seal_envelope(&k, dir, &env).unwrap();
            json!({
                "name": name,
                "direction": dir_name(dir),
                "mac_hex": hex::encode(mac),
                "payload_hex": hex::encode(payload),
                "envelope": serde_json::to_value(&env).unwrap(),
            })
        })
        .collect();
    // Frames every decoder must refuse, with the reason.
    let [mac, payload] = seal_envelope(
        &FrameKey::from_hex(&"ff".repeat(32)).unwrap(),
        Direction::PluginToSupervisor,
        &samples()[0].2,
    )
    .unwrap();
    let [good_mac, good_payload] =
        seal_envelope(&k, Direction::PluginToSupervisor, &samples()[0].2).unwrap();
    let [v2_mac, v2_payload] = seal_envelope(
        &k,
        Direction::PluginToSupervisor,
        &Envelope {
            v: 2,
            seq: 1,
            msg: Message::Heartbeat(Heartbeat {}),
        },
    )
    .unwrap();
    let garbage = b"\xc1\xc1not msgpack".to_vec();
    let garbage_mac = k
        .mac(Direction::PluginToSupervisor, &garbage)
        .finalize()
        .into_bytes()
        .to_vec();
    let rejects = json!([
        {"name": "wrong_key", "direction": "p2s", "mac_hex": hex::encode(mac),
         "payload_hex": hex::encode(payload), "error": "bad_mac"},
        {"name": "reflected", "direction": "s2p", "mac_hex": hex::encode(&good_mac),
         "payload_hex": hex::encode(&good_payload), "error": "bad_mac"},
        {"name": "wrong_version", "direction": "p2s", "mac_hex": hex::encode(v2_mac),
         "payload_hex": hex::encode(v2_payload), "error": "version"},
        {"name": "not_msgpack", "direction": "p2s", "mac_hex": hex::encode(garbage_mac),
         "payload_hex": hex::encode(garbage), "error": "decode"},
    ]);
    json!({
        "protocol": 1,
        "secret_hex": SECRET_HEX,
        "mac_input": "direction tag (ascii 'p2s' or 's2p') followed by the payload bytes",
        "vectors": vectors,
        "rejects": rejects,
    })
}

#[test]
fn vectors_file_matches_the_encoder() {
    let expected = vectors_json();
    if std::env::var_os("NEKO_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(VECTORS, text).unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap())
        .expect("vectors.json parses");
    assert_eq!(
        committed, expected,
        "vectors.json is stale: rerun with NEKO_WRITE_VECTORS=1"
    );
}

#[test]
fn every_vector_decodes_to_its_envelope() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let k = FrameKey::from_hex(file["secret_hex"].as_str().unwrap()).unwrap();
    for v in file["vectors"].as_array().unwrap() {
        let dir = if v["direction"] == "p2s" {
            Direction::PluginToSupervisor
        } else {
            Direction::SupervisorToPlugin
        };
        let mac = hex::decode(v["mac_hex"].as_str().unwrap()).unwrap();
        let payload = hex::decode(v["payload_hex"].as_str().unwrap()).unwrap();
        let env = open_envelope(&k, dir, &[&mac, &payload], 1 << 20).unwrap();
        let expected: Envelope = serde_json::from_value(v["envelope"].clone()).unwrap();
        assert_eq!(env, expected, "vector {}", v["name"]);
    }
}

#[test]
fn every_reject_vector_is_refused_for_its_reason() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let k = FrameKey::from_hex(file["secret_hex"].as_str().unwrap()).unwrap();
    for v in file["rejects"].as_array().unwrap() {
        let dir = if v["direction"] == "p2s" {
            Direction::PluginToSupervisor
        } else {
            Direction::SupervisorToPlugin
        };
        let mac = hex::decode(v["mac_hex"].as_str().unwrap()).unwrap();
        let payload = hex::decode(v["payload_hex"].as_str().unwrap()).unwrap();
        let err = open_envelope(&k, dir, &[&mac, &payload], 1 << 20).unwrap_err();
        let reason = match err {
            CodecError::BadMac => "bad_mac",
            CodecError::Version(_) => "version",
            CodecError::Decode(_) => "decode",
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(reason, v["error"], "reject {}", v["name"]);
    }
}

#[test]
fn session_rejects_replays_and_oversized_frames_before_decoding() {
    let mut plugin = Session::new(key(), Direction::PluginToSupervisor, 1024);
    let mut sup = Session::new(key(), Direction::SupervisorToPlugin, 1024);
    let a = plugin.seal(Message::Heartbeat(Heartbeat {})).unwrap();
    let b = plugin.seal(Message::Heartbeat(Heartbeat {})).unwrap();
    assert_eq!(sup.open(&[&a[0], &a[1]]).unwrap().seq, 1);
    assert_eq!(sup.open(&[&b[0], &b[1]]).unwrap().seq, 2);
    assert_eq!(
        sup.open(&[&a[0], &a[1]]),
        Err(CodecError::Replay { got: 1, last: 2 })
    );
    let big = vec![0u8; 2048];
    assert!(matches!(
        sup.open(&[&a[0], &big]),
        Err(CodecError::TooLarge { size: 2048, .. })
    ));
    assert_eq!(sup.open(&[&a[1]]), Err(CodecError::FrameCount(1)));
}

#[test]
fn frame_key_debug_hides_the_secret() {
    assert!(!format!("{:?}", key()).contains("0001"));
}

/// `seal_many` writes a batch's head by hand: its bytes are those serde writes for the same
/// envelope, and the receiver gets the messages back in order.
#[test]
fn seal_many_writes_one_batch_frame_equal_to_the_encoder() {
    let mut plugin = Session::new(key(), Direction::PluginToSupervisor, 1 << 20);
    plugin.next_out = 7;
    let (frames, errors) = plugin.seal_many(sample_batch().messages, true);
    assert!(errors.is_empty());
    let expected = Envelope {
        v: 1,
        seq: 7,
        msg: Message::Batch(sample_batch()),
    };
    assert_eq!(
        frames,
        vec![seal_envelope(&key(), Direction::PluginToSupervisor, &expected).unwrap()]
    );
    let mut sup = Session::new(key(), Direction::SupervisorToPlugin, 1 << 20);
    sup.last_in = 6;
    assert_eq!(sup.open(&[&frames[0][0], &frames[0][1]]).unwrap(), expected);
}

/// Under the size limit, messages are split over several frames, in order; a single message is
/// sealed plain.
#[test]
fn seal_many_splits_batches_at_the_frame_limit() {
    let limit = 400;
    let mut plugin = Session::new(key(), Direction::PluginToSupervisor, limit);
    let msgs: Vec<Message> = (0..20)
        .map(|i| Message::Result(CallResult::success(format!("c-{i}"), json!({"i": i}))))
        .collect();
    let (frames, errors) = plugin.seal_many(msgs.clone(), true);
    assert!(errors.is_empty());
    assert!(frames.len() > 1, "{} frames", frames.len());
    let mut sup = Session::new(key(), Direction::SupervisorToPlugin, limit);
    let mut got = Vec::new();
    for [mac, payload] in &frames {
        assert!(payload.len() <= limit, "{} bytes", payload.len());
        match sup.open(&[mac, payload]).unwrap().msg {
            Message::Batch(batch) => got.extend(batch.messages),
            one => got.push(one),
        }
    }
    assert_eq!(got, msgs);

    let (frames, _) = plugin.seal_many(vec![Message::Heartbeat(Heartbeat {})], true);
    let env = sup.open(&[&frames[0][0], &frames[0][1]]).unwrap();
    assert_eq!(env.msg, Message::Heartbeat(Heartbeat {}));

    // For a peer without batches: one plain frame each.
    let (frames, _) = plugin.seal_many(msgs[..3].to_vec(), false);
    let plain: Vec<Message> = frames
        .iter()
        .map(|[mac, payload]| sup.open(&[mac, payload]).unwrap().msg)
        .collect();
    assert_eq!(plain, msgs[..3].to_vec());
}

/// A batch inside a batch is undecodable, like any other malformed frame.
#[test]
fn a_batch_may_not_hold_a_batch() {
    let inner = Message::Batch(Batch {
        messages: vec![Message::Heartbeat(Heartbeat {})],
    });
    let env = Envelope {
        v: 1,
        seq: 1,
        msg: Message::Batch(Batch {
            messages: vec![inner],
        }),
    };
    let [mac, payload] = seal_envelope(&key(), Direction::PluginToSupervisor, &env).unwrap();
    let err = open_envelope(
        &key(),
        Direction::PluginToSupervisor,
        &[&mac, &payload],
        1 << 20,
    )
    .unwrap_err();
    assert!(err.to_string().contains("may not hold a batch"), "{err}");
}
