//! Bad input campaign (issue 7, point 3): property-based fuzzing of the plugin frame decoder.
//!
//! `Session::open` is what the supervisor (and every Rust plugin) runs on each ZeroMQ message
//! that reaches a link. Whatever arrives, it must answer `Ok(envelope)` or a `CodecError`, never
//! panic, never overflow the stack, never allocate what a length prefix claims. The targets:
//!
//! - arbitrary frame lists (any count, any bytes): refused, mostly at the MAC;
//! - arbitrary payloads signed with the right key, so the msgpack decoder is reached;
//! - structured near-envelopes (the right keys with values of random types) signed;
//! - the committed test vectors and freshly sealed messages, mutated (bit flips, overwrites,
//!   insertions, deletions, truncation, splices), both re-signed and not;
//! - sequence numbers: a session accepts exactly the strictly increasing ones.
//!
//! Budget: `NEKO_FUZZ_CASES` cases per target (default below, a few seconds in a debug build);
//! raise it for a longer campaign, e.g. `NEKO_FUZZ_CASES=100000 cargo test -p neko-protocol
//! --test fuzz_codec`.

use hmac::{Hmac, Mac};
use neko_protocol::codec::{Direction, FrameKey, Session, open_envelope, seal_envelope};
use neko_protocol::{CodecError, Envelope, Message};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[path = "support/fuzz.rs"]
mod fuzz;
use fuzz::{apply, config, mutation};
use serde_json::Value;
use sha2::Sha256;

const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const VECTORS: &str = include_str!("../vectors/vectors.json");
/// A small frame limit, so the size check is crossed by generated payloads too.
const MAX_FRAME: usize = 4096;

fn key() -> FrameKey {
    FrameKey::from_hex(SECRET_HEX).unwrap()
}

/// The MAC the sender holding the launch's key puts on `payload` (PROTOCOL.md §3).
fn sign(dir: Direction, payload: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(SECRET_HEX).unwrap()).unwrap();
    mac.update(match dir {
        Direction::PluginToSupervisor => b"p2s",
        Direction::SupervisorToPlugin => b"s2p",
    });
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

/// The supervisor's side of a link: receives p2s.
fn supervisor() -> Session {
    Session::new(key(), Direction::SupervisorToPlugin, MAX_FRAME)
}

/// The plugin's side of a link: receives s2p.
fn plugin() -> Session {
    Session::new(key(), Direction::PluginToSupervisor, MAX_FRAME)
}

/// Opens `[mac, payload]` on both sides of a fresh link (each checks its own direction); checks
/// what an accepted envelope must satisfy. Returns how many sides accepted it.
fn open_both(payload: &[u8]) -> usize {
    let mut accepted = 0;
    for (mut session, dir) in [
        (supervisor(), Direction::PluginToSupervisor),
        (plugin(), Direction::SupervisorToPlugin),
    ] {
        let mac = sign(dir, payload);
        match session.open(&[&mac, payload]) {
            Ok(env) => {
                assert_eq!(env.v, 1, "an accepted envelope has version 1");
                assert!(payload.len() <= MAX_FRAME);
                // What was accepted can be sent on: it re-encodes, and decodes to itself.
                let frames =
                    seal_envelope(&key(), dir, &env).expect("an accepted envelope encodes");
                let again = open_envelope(&key(), dir, &[&frames[0], &frames[1]], usize::MAX)
                    .expect("a re-encoded envelope opens");
                assert_eq!(again.seq, env.seq);
                assert_eq!(again.msg.kind(), env.msg.kind());
                // Replaying the same frame is refused.
                assert!(matches!(
                    session.open(&[&mac, payload]),
                    Err(CodecError::Replay { .. })
                ));
                accepted += 1;
            }
            Err(CodecError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (payload.len(), MAX_FRAME));
            }
            Err(CodecError::Decode(_) | CodecError::Version(_)) => {}
            // seq 0 is never greater than the last accepted (none yet: 0).
            Err(CodecError::Replay { got: 0, last: 0 }) => {}
            Err(other) => panic!("a correctly signed frame refused as {other:?}"),
        }
    }
    accepted
}

/// Valid payloads to mutate: every committed vector and reject, and one sealed message of each
/// kind.
fn seeds() -> Vec<Vec<u8>> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let mut out: Vec<Vec<u8>> = ["vectors", "rejects"]
        .iter()
        .flat_map(|k| doc[k].as_array().unwrap().iter())
        .map(|v| hex::decode(v["payload_hex"].as_str().unwrap()).unwrap())
        .collect();
    let mut s = Session::new(key(), Direction::SupervisorToPlugin, MAX_FRAME);
    let msgs = vec![
        Message::Stop(neko_protocol::Stop { grace_ms: 5000 }),
        Message::Cancel(neko_protocol::Cancel {
            call_id: "c1".into(),
        }),
        Message::Heartbeat(neko_protocol::Heartbeat {}),
        Message::Request(neko_protocol::Request {
            request_id: "r1".into(),
            op: "plugin.call".into(),
            args: serde_json::json!({"plugin_id": "b", "event_id": "e", "args": {"x": [1, 2.5, null, "s"]}}),
            call_id: Some("c1".into()),
        }),
    ];
    for m in msgs {
        out.push(s.seal(m).unwrap()[1].clone());
    }
    out
}

/// A msgpack-encodable value of any JSON type, sometimes nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "hello",
            "welcome",
            "trigger",
            "result",
            "cancel",
            "status",
            "heartbeat",
            "stop",
            "request",
            "response",
            "ErrorCode.TIMEOUT",
            "TIMEOUT",
            "echo",
            "0.1.0",
            "é\u{0}\u{fffd}",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Keys the decoder looks for, and some it does not know.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "v", "seq", "kind", "body", "protocol", "plugin_id", "sdk", "sdk_version", "pid",
            "entries", "input_schema", "events", "id", "name", "description", "timeout_ms",
            "event_type", "heartbeat_interval_ms", "call_id", "entry_id", "args", "run_id",
            "caller", "ok", "data", "error", "code", "message", "details", "status", "grace_ms",
            "request_id", "op", "result",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ]
}

/// A map shaped like an envelope, with each part right or of a random type.
fn near_envelope() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        3 => prop::sample::select(vec![
            "hello", "welcome", "trigger", "result", "cancel", "status", "heartbeat", "stop",
            "request", "response",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ];
    let v = prop_oneof![3 => Just(Value::from(1)), 1 => json_value()];
    let seq = prop_oneof![
        3 => (1u64..1000).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => json_value(),
    ];
    let body = prop_oneof![
        3 => proptest::collection::vec((field_name(), json_value()), 0..10)
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        1 => json_value(),
    ];
    let extra = proptest::collection::vec((field_name(), json_value()), 0..3);
    (v, seq, kind, body, extra, any::<u8>()).prop_map(|(v, seq, kind, body, extra, drop)| {
        let mut map = serde_json::Map::new();
        for (k, val) in [("v", v), ("seq", seq), ("kind", kind), ("body", body)]
            .into_iter()
            .enumerate()
            .filter(|(i, _)| drop & (1 << i) == 0 || drop < 0xc0)
            .map(|(_, kv)| kv)
        {
            map.insert(k.to_owned(), val);
        }
        for (k, val) in extra {
            map.insert(k, val);
        }
        Value::Object(map)
    })
}

/// Any list of frames: wrong counts, wrong MAC lengths, random MACs. Never accepted (a random
/// MAC does not verify), never a panic.
#[test]
fn arbitrary_frame_lists_are_refused() {
    let frames = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..96), 0..5);
    TestRunner::new(config(3000))
        .run(&frames, |frames| {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            for mut session in [supervisor(), plugin()] {
                let got = session.open(&refs);
                match (&got, refs.len()) {
                    (Err(CodecError::FrameCount(n)), count) => prop_assert_eq!(*n, count),
                    (Err(CodecError::BadMac | CodecError::TooLarge { .. }), 2) => {}
                    _ => prop_assert!(false, "unexpected {:?} for {} frames", got, refs.len()),
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Arbitrary payloads with a valid MAC reach the msgpack decoder: an envelope or an error.
#[test]
fn signed_garbage_payloads_are_errors_or_envelopes() {
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // Payloads that start like a map, so the decoder goes further.
        (
            0x80u8..=0x8f,
            proptest::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(m, mut b)| {
                b.insert(0, m);
                b
            }),
        // Over the frame limit: refused before decoding.
        (MAX_FRAME + 1..MAX_FRAME + 64).prop_map(|n| vec![0x84; n]),
    ];
    TestRunner::new(config(3000))
        .run(&payload, |payload| {
            open_both(&payload);
            Ok(())
        })
        .unwrap();
}

/// Maps with the envelope's keys and random values (right or wrong types, unknown kinds, extra
/// keys), encoded as msgpack and signed: decoded or refused, never a panic.
#[test]
fn signed_near_envelopes_are_errors_or_envelopes() {
    let accepted = std::cell::Cell::new(0u32);
    TestRunner::new(config(800))
        .run(&near_envelope(), |value| {
            let payload = rmp_serde::to_vec_named(&value).unwrap();
            accepted.set(accepted.get() + open_both(&payload) as u32);
            Ok(())
        })
        .unwrap();
    // The generator does reach valid envelopes (heartbeats need nothing else), so decoding is
    // exercised past the envelope too.
    assert!(
        accepted.get() > 0,
        "no generated envelope was ever accepted"
    );
}

/// Valid frames (the committed vectors, sealed messages) mutated and re-signed: decoded or
/// refused. Mutated and not re-signed: refused at the MAC.
#[test]
fn mutated_valid_frames_are_errors_or_envelopes() {
    let seeds = seeds();
    let strategy = (
        prop::sample::select(seeds),
        proptest::collection::vec(mutation(), 1..6),
    );
    TestRunner::new(config(3000))
        .run(&strategy, |(seed, mutations)| {
            let mut payload = seed.clone();
            for m in &mutations {
                apply(&mut payload, m);
            }
            open_both(&payload);
            if payload != seed {
                // The seed's own MAC does not cover the mutated bytes.
                for (mut session, dir) in [
                    (supervisor(), Direction::PluginToSupervisor),
                    (plugin(), Direction::SupervisorToPlugin),
                ] {
                    let mac = sign(dir, &seed);
                    let got = session.open(&[&mac, &payload]);
                    prop_assert!(
                        matches!(got, Err(CodecError::BadMac | CodecError::TooLarge { .. })),
                        "mutated frame with the old MAC: {:?}",
                        got
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Deep nesting and lying lengths inside a signed envelope: an error (or an envelope), not a
/// stack overflow or a huge allocation.
#[test]
fn deep_nesting_and_huge_lengths_are_refused() {
    fn envelope_with_args(args_msgpack: &[u8]) -> Vec<u8> {
        // {"v":1,"seq":1,"kind":"request","body":{"request_id":"r","op":"x","args":<args>}}
        let mut p = vec![0x84];
        p.extend_from_slice(b"\xa1v\x01\xa3seq\x01\xa4kind\xa7request\xa4body\x83");
        p.extend_from_slice(b"\xaarequest_id\xa1r\xa2op\xa1x\xa4args");
        p.extend_from_slice(args_msgpack);
        p
    }
    let big = 1 << 20;
    let key = key();
    for depth in [100, 125, 200, 1_000, 10_000, 100_000] {
        for open in [0x91u8, 0x81] {
            let mut args = Vec::new();
            for _ in 0..depth {
                args.push(open);
                if open == 0x81 {
                    args.extend_from_slice(b"\xa1k");
                }
            }
            args.push(0xc0);
            let payload = envelope_with_args(&args);
            let mac = sign(Direction::PluginToSupervisor, &payload);
            // Large limit: the decoder itself must cope.
            let got = open_envelope(&key, Direction::PluginToSupervisor, &[&mac, &payload], big);
            if depth > neko_protocol::codec::MAX_NESTING {
                assert!(
                    matches!(&got, Err(CodecError::Decode(m)) if m.contains("nested")),
                    "depth {depth}: {got:?}"
                );
            } else {
                assert!(got.is_ok(), "depth {depth}: {got:?}");
            }
        }
    }
    for marker in [
        &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
        &[0xdf, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0xff, 0xff, 0xff, 0xff],
        &[0xc6, 0xff, 0xff, 0xff, 0xff],
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    ] {
        let payload = envelope_with_args(marker);
        let mac = sign(Direction::PluginToSupervisor, &payload);
        let got = open_envelope(&key, Direction::PluginToSupervisor, &[&mac, &payload], big);
        assert!(got.is_err(), "{marker:x?}: {got:?}");
    }
}

/// A session accepts exactly the frames whose seq is greater than the last accepted one, and a
/// refused frame does not move the counter.
#[test]
fn sequence_numbers_only_go_up() {
    let seqs = proptest::collection::vec(
        prop_oneof![0u64..20, Just(u64::MAX), Just(u64::MAX - 1)],
        1..20,
    );
    TestRunner::new(config(1000))
        .run(&seqs, |seqs| {
            let mut session = supervisor();
            let mut last = 0u64;
            for seq in seqs {
                let env = Envelope {
                    v: 1,
                    seq,
                    msg: Message::Heartbeat(neko_protocol::Heartbeat {}),
                };
                let frames = seal_envelope(&key(), Direction::PluginToSupervisor, &env).unwrap();
                let got = session.open(&[&frames[0], &frames[1]]);
                if seq > last {
                    prop_assert!(got.is_ok(), "seq {} after {}: {:?}", seq, last, got);
                    last = seq;
                } else {
                    prop_assert_eq!(got, Err(CodecError::Replay { got: seq, last }));
                }
            }
            Ok(())
        })
        .unwrap();
}

/// `FrameKey::from_hex` takes any text: a key or `BadKey`.
#[test]
fn any_secret_text_is_a_key_or_an_error() {
    TestRunner::new(config(1000))
        .run(&"\\PC{0,80}|[0-9a-fA-F ]{0,80}", |text| {
            if let Ok(k) = FrameKey::from_hex(&text) {
                prop_assert!(k.to_hex().len() >= 32);
            }
            Ok(())
        })
        .unwrap();
}
