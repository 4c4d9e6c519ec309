//! The MessagePlane over real sockets: PUSH → INGEST, DEALER → RPC, SUB ← PUB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::Actor;
use rmpv::Value;
use serde_json::{Value as J, json};
use zeromq::{DealerSocket, PushSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::codec::{self, JsonOf};
use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn settings() -> MessagePlaneSettings {
    MessagePlaneSettings {
        rpc_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        ingest_endpoint: "tcp://127.0.0.1:0".into(),
        ..MessagePlaneSettings::default()
    }
}

async fn start(
    settings: MessagePlaneSettings,
) -> (
    ActorRef<MessagePlaneMsg>,
    tokio::task::JoinHandle<()>,
    MessagePlaneHandle,
) {
    let (plane, join) = Actor::spawn(None, MessagePlane, settings).await.unwrap();
    let handle = plane
        .call(MessagePlaneMsg::GetHandle, Some(TIMEOUT))
        .await
        .unwrap()
        .success_or(())
        .unwrap();
    (plane, join, handle)
}

async fn stop(plane: ActorRef<MessagePlaneMsg>, join: tokio::task::JoinHandle<()>) {
    plane.stop(None);
    tokio::time::timeout(TIMEOUT, join).await.unwrap().unwrap();
}

/// Polls `cond` until it holds, failing after [`TIMEOUT`].
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pack_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn pack(v: &J) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_json(&mut out, v);
    out
}

fn delta(items: J) -> Vec<u8> {
    pack(
        &json!({"v": 1, "kind": "delta_batch", "from": "test", "ts": 1.0, "batch_id": "b", "items": items}),
    )
}

/// msgpack bytes as JSON (bin as base64).
fn as_json(bytes: &[u8]) -> J {
    serde_json::to_value(JsonOf(bytes)).unwrap()
}

async fn rpc_raw(dealer: &mut DealerSocket, frame: Vec<u8>) -> Vec<u8> {
    dealer.send(ZmqMessage::from(frame)).await.unwrap();
    let reply = tokio::time::timeout(TIMEOUT, dealer.recv())
        .await
        .expect("rpc reply")
        .unwrap();
    reply.into_vec().pop().unwrap().to_vec()
}

/// A msgpack RPC; the reply as JSON.
async fn rpc(dealer: &mut DealerSocket, op: &str, args: J) -> J {
    let req =
        json!({"v": 1, "op": op, "req_id": format!("t:{op}"), "args": args, "from_plugin": "test"});
    let reply = rpc_raw(dealer, pack(&req)).await;
    let reply = as_json(&reply);
    assert_eq!(reply["req_id"], format!("t:{op}"));
    reply
}

/// Receives PUB frames until one whose topic is `topic`; its event.
async fn next_pub(sub: &mut SubSocket, topic: &str) -> J {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .expect("PUB frame")
            .unwrap();
        let frames = msg.into_vec();
        if frames[0] == topic.as_bytes() {
            return serde_json::from_slice(&frames[1]).unwrap();
        }
    }
}

/// Records pushed in delta_batch frames are stored, published as `<store>.<topic>` and readable
/// over RPC (msgpack in, msgpack out, binary data intact); bad items are counted; garbage frames
/// on INGEST and RPC are counted and answered where possible, and the plane keeps serving.
#[tokio::test]
async fn ingest_rpc_and_pub_over_real_sockets() {
    let (plane, join, handle) = start(settings()).await;
    let ep = handle.endpoints().clone();
    assert!(!ep.rpc.ends_with(":0") && !ep.publish.ends_with(":0") && !ep.ingest.ends_with(":0"));

    let mut sub = SubSocket::new();
    sub.connect(&ep.publish).await.unwrap();
    sub.subscribe("messages.").await.unwrap();
    let mut push = PushSocket::new();
    push.connect(&ep.ingest).await.unwrap();
    let mut dealer = DealerSocket::new();
    dealer.connect(&ep.rpc).await.unwrap();

    // A subscription takes effect some time after connecting: probe until one arrives.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let probe = delta(json!([{"store": "messages", "topic": "probe", "payload": {}}]));
        push.send(ZmqMessage::from(probe)).await.unwrap();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            break;
        }
        assert!(Instant::now() < deadline, "PUB never delivered");
    }

    let item = |store: &str, payload: Value| {
        Value::Map(vec![
            (Value::from("store"), Value::from(store)),
            (Value::from("topic"), Value::from("all")),
            (Value::from("payload"), payload),
        ])
    };
    let message = |id: &str, extra: Option<Value>| {
        let mut m = vec![
            (Value::from("type"), Value::from("MESSAGE_PUSH")),
            (Value::from("message_id"), Value::from(id)),
            (Value::from("plugin_id"), Value::from("demo")),
            (Value::from("priority"), Value::from(3)),
            (Value::from("time"), Value::F64(1000.5)),
        ];
        m.extend(extra.map(|bin| (Value::from("binary_data"), bin)));
        Value::Map(m)
    };
    let frame = Value::Map(vec![
        (Value::from("v"), Value::from(1)),
        (Value::from("kind"), Value::from("delta_batch")),
        (
            Value::from("items"),
            Value::Array(vec![
                item("messages", message("m1", None)),
                item(
                    "messages",
                    message("m2", Some(Value::Binary(vec![1, 2, 255]))),
                ),
                item(
                    "events",
                    Value::Map(vec![(Value::from("event_id"), Value::from("e1"))]),
                ),
                item("nope", Value::Map(vec![])),
            ]),
        ),
    ]);
    push.send(ZmqMessage::from(pack_value(&frame)))
        .await
        .unwrap();

    let first = next_pub(&mut sub, "messages.all").await;
    assert_eq!(first["payload"]["message_id"], "m1");
    assert_eq!(first["index"]["plugin_id"], "demo");
    let second = next_pub(&mut sub, "messages.all").await;
    assert_eq!(
        second["payload"]["binary_data"], "AQL/",
        "bytes published as base64"
    );
    assert_eq!(second["seq"].as_u64(), first["seq"].as_u64().map(|s| s + 1));

    // get_recent over msgpack: oldest first, bin stays bin.
    let req = json!({"v": 1, "op": "bus.get_recent", "req_id": "r", "args": {"store": "messages", "topic": "all", "limit": 10, "light": false}});
    let raw = rpc_raw(&mut dealer, pack(&req)).await;
    let reply = codec::to_value(&raw);
    let Value::Map(reply) = reply else {
        panic!("a map")
    };
    let result = &reply
        .iter()
        .find(|(k, _)| k.as_str() == Some("result"))
        .unwrap()
        .1;
    let items = &result
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("items"))
        .unwrap()
        .1;
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 2);
    let payload = &items[1]
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("payload"))
        .unwrap()
        .1;
    let bin = payload
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("binary_data"))
        .unwrap();
    assert_eq!(bin.1, Value::Binary(vec![1, 2, 255]));

    let events = rpc(
        &mut dealer,
        "bus.query",
        json!({"store": "events", "topic": "all", "limit": 10, "light": true}),
    )
    .await;
    assert_eq!(events["ok"], true, "{events}");
    assert_eq!(events["result"]["items"][0]["index"]["id"], "e1");
    assert!(
        events["result"]["items"][0].get("payload").is_none(),
        "light items"
    );

    let plan = json!({"kind": "binary", "op": "merge",
        "left": {"kind": "get", "params": {"params": {"plugin_id": "demo"}}},
        "right": {"kind": "unary", "op": "filter", "params": {"priority_min": 3}, "child": {"kind": "get", "params": {"params": {}}}}});
    let replay = rpc(
        &mut dealer,
        "bus.replay",
        json!({"store": "messages", "plan": plan}),
    )
    .await;
    let ids: Vec<&J> = replay["result"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["message_id"])
        .collect();
    assert_eq!(ids, vec!["m2", "m1"]);

    let topics = rpc(&mut dealer, "bus.list_topics", json!({"store": "messages"})).await;
    assert_eq!(topics["result"]["topic_count"], 2);
    assert_eq!(
        topics["result"]["stores"],
        json!([
            "events",
            "export",
            "lifecycle",
            "memory",
            "messages",
            "runs"
        ])
    );

    let published = rpc(
        &mut dealer,
        "bus.publish",
        json!({"store": "memory", "topic": "t", "payload": 5}),
    )
    .await;
    assert_eq!(published["result"]["event"]["payload"], json!({"value": 5}));

    let deleted = rpc(
        &mut dealer,
        "bus.delete",
        json!({"store": "events", "id": "e1"}),
    )
    .await;
    assert_eq!(deleted["result"], json!({"deleted": true}));

    let strict = rpc_raw(&mut dealer, pack(&json!({"op": "ping", "req_id": "x"}))).await;
    assert_eq!(
        as_json(&strict)["error"]["message"],
        "missing protocol version"
    );

    assert_eq!(handle.stats().dropped_unknown_store, 1);

    // Garbage on INGEST: counted, nothing else happens.
    push.send(ZmqMessage::from(b"garbage".to_vec()))
        .await
        .unwrap();
    push.send(ZmqMessage::from(pack(
        &json!({"kind": "delta_batch", "items": 5}),
    )))
    .await
    .unwrap();
    wait_for("malformed ingest frames counted", || {
        handle.stats().ingest_bad_frames == 2
    })
    .await;

    // Garbage on RPC: answered "invalid rpc envelope" in JSON with an empty req_id.
    let reply: J =
        serde_json::from_slice(&rpc_raw(&mut dealer, b"\xc1\xc1 not a request".to_vec()).await)
            .unwrap();
    assert_eq!(
        reply,
        json!({"v": 1, "req_id": "", "ok": false, "result": null,
               "error": {"code": "ERR", "message": "invalid rpc envelope", "details": null}})
    );
    assert_eq!(handle.stats().rpc_bad_frames, 1);

    // JSON in, JSON out; and the plane still answers.
    let reply: J = serde_json::from_slice(
        &rpc_raw(
            &mut dealer,
            br#"{"v":1,"op":"health","req_id":"h"}"#.to_vec(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        (reply["ok"].clone(), reply["result"]["ok"].clone()),
        (json!(true), json!(true))
    );
    let pong = rpc(&mut dealer, "ping", json!({})).await;
    assert_eq!(pong["ok"], true);

    stop(plane, join).await;
}

/// A store that dies is replaced at once: empty, same sequence going on, other stores untouched,
/// and handles follow the replacement.
#[tokio::test]
async fn killed_store_is_restarted_empty_and_keeps_its_sequence() {
    let (plane, join, handle) = start(settings()).await;
    for i in 0..3 {
        handle.publish(
            StoreName::Events,
            "all",
            json!({"event_id": format!("e{i}")}),
        );
    }
    handle.publish(StoreName::Messages, "all", json!({"message_id": "kept"}));
    let figures = |h: &MessagePlaneHandle, s: StoreName| h.stats().stores[s.index()].clone();
    wait_for("records stored", || {
        figures(&handle, StoreName::Events).records == 3
    })
    .await;

    let old = handle.store(StoreName::Events);
    old.kill();
    wait_for("a replacement", || {
        handle.store(StoreName::Events).get_id() != old.get_id()
    })
    .await;
    assert_eq!(handle.stats().store_restarts, 1);

    assert!(
        handle
            .get_recent(StoreName::Events, "all", 10)
            .await
            .unwrap()
            .is_empty()
    );
    handle.publish(StoreName::Events, "all", json!({"event_id": "after"}));
    let events = handle
        .get_recent(StoreName::Events, "all", 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], 4, "sequence numbers continue");
    let kept = handle
        .get_recent(StoreName::Messages, "all", 10)
        .await
        .unwrap();
    assert_eq!(kept[0]["payload"]["message_id"], "kept");

    stop(plane, join).await;
}

/// The handle: neko's records in, the gateway's reads out; refusals are counted, not fatal.
#[tokio::test]
async fn handle_publishes_queries_and_deletes() {
    let (plane, join, handle) = start(MessagePlaneSettings {
        get_recent_max_limit: 2,
        ..settings()
    })
    .await;
    for (i, pid) in ["a", "b", "a"].into_iter().enumerate() {
        handle.publish(
            StoreName::Lifecycle,
            "all",
            json!({"lifecycle_id": format!("l{i}"), "plugin_id": pid, "priority": i}),
        );
    }
    handle.publish(StoreName::Lifecycle, &"x".repeat(200), json!({}));
    let recent = handle
        .get_recent(StoreName::Lifecycle, "all", 10)
        .await
        .unwrap();
    let ids: Vec<&J> = recent.iter().map(|e| &e["index"]["id"]).collect();
    assert_eq!(
        ids,
        vec!["l1", "l2"],
        "limit capped at get_recent_max_limit"
    );
    let filter = QueryFilter {
        topic: Some("all".into()),
        plugin_id: Some("a".into()),
        limit: 10,
        ..QueryFilter::default()
    };
    let found = handle
        .query(StoreName::Lifecycle, filter.clone())
        .await
        .unwrap();
    let ids: Vec<&J> = found.iter().map(|e| &e["index"]["id"]).collect();
    assert_eq!(ids, vec!["l2", "l0"], "newest first");
    assert!(handle.delete(StoreName::Lifecycle, "l2").await.unwrap());
    assert!(!handle.delete(StoreName::Lifecycle, "l2").await.unwrap());
    assert_eq!(
        handle
            .query(StoreName::Lifecycle, filter)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(handle.stats().records_rejected, 1);
    stop(plane, join).await;
}

/// Binding an endpoint that is taken fails the start with a message naming it.
#[tokio::test]
async fn endpoint_in_use_fails_the_start() {
    let (plane, join, handle) = start(settings()).await;
    let taken = handle.endpoints().rpc.clone();
    let err = Actor::spawn(
        None,
        MessagePlane,
        MessagePlaneSettings {
            rpc_endpoint: taken.clone(),
            ..settings()
        },
    )
    .await
    .expect_err("second bind fails");
    assert!(err.to_string().contains(&taken), "{err}");
    stop(plane, join).await;
}

/// While one producer floods INGEST, another producer's frame is taken in its turn (ZeroMQ's fair
/// queueing behind the ingest window), and RPC keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_producer_does_not_hold_up_another() {
    const FRAMES: usize = 2_000;
    const BATCH: usize = 32;
    let (plane, join, handle) = start(settings()).await;
    let ep = handle.endpoints().clone();
    let mut quiet = PushSocket::new();
    quiet.connect(&ep.ingest).await.unwrap();
    let mut dealer = DealerSocket::new();
    dealer.connect(&ep.rpc).await.unwrap();
    let mut flood = PushSocket::new();
    flood.connect(&ep.ingest).await.unwrap();
    let items: Vec<J> = (0..BATCH).map(bench_item).collect();
    let frame = Bytes::from(delta(J::Array(items)));
    let flooding = tokio::spawn(async move {
        for _ in 0..FRAMES {
            flood.send(ZmqMessage::from(frame.clone())).await.unwrap();
        }
        flood
    });
    let total = (FRAMES * BATCH) as u64;
    wait_for("the flood to start", || {
        handle.stats().ingest_accepted > 10 * BATCH as u64
    })
    .await;
    let pong = rpc(&mut dealer, "ping", json!({})).await;
    assert_eq!(pong["ok"], true);
    quiet
        .send(ZmqMessage::from(delta(
            json!([{"store": "events", "topic": "all", "payload": {"event_id": "quiet"}}]),
        )))
        .await
        .unwrap();
    let events = |h: &MessagePlaneHandle| h.stats().stores[StoreName::Events.index()].records;
    wait_for("the quiet producer's record", || events(&handle) == 1).await;
    // Fair queueing takes the quiet frame within a few of the flood's; half is a wide margin.
    let flooded = handle.stats().ingest_accepted - 1;
    assert!(
        flooded < total / 2,
        "the quiet record waited for {flooded} of {total} flooded records"
    );
    let _flood = flooding.await.unwrap();
    wait_for("the flood to be stored", || {
        handle.stats().ingest_accepted == total + 1
    })
    .await;
    stop(plane, join).await;
}

/// A push_message-like payload of `i`.
fn bench_item(i: usize) -> J {
    json!({"store": "messages", "topic": "all", "payload": {
        "type": "MESSAGE_PUSH", "message_id": format!("bench:{i}"), "plugin_id": format!("p{}", i % 10),
        "source": "bench", "description": "", "priority": i % 5, "message_type": "text",
        "content": format!("hello world number {i}"), "binary_data": null, "binary_url": null,
        "metadata": {}, "unsafe": false, "time": 1.7e9 + i as f64}})
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    format!(
        "p50 {:?}  p99 {:?}  max {:?}  (n={})",
        p(0.5),
        p(0.99),
        v[v.len() - 1],
        v.len()
    )
}

/// Ingest throughput over a real PUSH socket (delta_batches of 256 push_message records), RPC
/// latency while it floods, and get_recent / query latency over 20,000 records.
/// `cargo test -p neko-actors --release message_plane -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; prints figures"]
async fn bench_ingest_and_queries() {
    const BATCH: usize = 256;
    const FRAMES: usize = 4_000;
    let (plane, join, handle) = start(settings()).await;
    let ep = handle.endpoints().clone();
    let frames: Vec<Bytes> = (0..64)
        .map(|f| {
            let items: Vec<J> = (0..BATCH).map(|i| bench_item(f * BATCH + i)).collect();
            Bytes::from(delta(J::Array(items)))
        })
        .collect();
    let frame_bytes = frames[0].len();
    let frames_again = frames.clone();

    let mut push = PushSocket::new();
    push.connect(&ep.ingest).await.unwrap();
    let mut dealer = DealerSocket::new();
    dealer.connect(&ep.rpc).await.unwrap();
    rpc(&mut dealer, "ping", json!({})).await;

    let start_t = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..FRAMES {
            push.send(ZmqMessage::from(frames[i % frames.len()].clone()))
                .await
                .unwrap();
        }
        push
    });
    // RPC pings while the producer floods.
    let mut ping_latency = Vec::new();
    let total = (FRAMES * BATCH) as u64;
    while handle.stats().ingest_accepted < total {
        let t = Instant::now();
        rpc(&mut dealer, "ping", json!({})).await;
        ping_latency.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            start_t.elapsed() < Duration::from_secs(120),
            "ingest stalled: {:?}",
            handle.stats()
        );
    }
    let elapsed = start_t.elapsed();
    let push = producer.await.unwrap();
    let stats = handle.stats();
    assert_eq!(stats.ingest_dropped(), 0);
    println!(
        "ingest: {} records in {:?} = {:.0} records/s ({:.0} MB/s, frames of {} records, {} bytes)",
        total,
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        (FRAMES * frame_bytes) as f64 / elapsed.as_secs_f64() / 1e6,
        BATCH,
        frame_bytes
    );
    println!("rpc ping while flooding: {}", percentiles(ping_latency));
    assert_eq!(stats.stores[0].records, 20_000);

    for limit in [50usize, 1000] {
        let mut via_handle = Vec::new();
        let mut via_rpc = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let got = handle
                .get_recent(StoreName::Messages, "all", limit)
                .await
                .unwrap();
            via_handle.push(t.elapsed());
            assert_eq!(got.len(), limit);
            let t = Instant::now();
            let req = json!({"v": 1, "op": "bus.get_recent", "req_id": "g", "args": {"store": "messages", "topic": "all", "limit": limit}});
            let raw = rpc_raw(&mut dealer, pack(&req)).await;
            via_rpc.push(t.elapsed());
            assert!(raw.len() > limit * 100);
        }
        println!(
            "get_recent limit {limit} (20,000 records): handle→JSON {}",
            percentiles(via_handle)
        );
        let mut direct = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let events = handle
                .get_recent_events(StoreName::Messages, "all", limit)
                .await
                .unwrap();
            let body = serde_json::to_vec(&events).unwrap();
            direct.push(t.elapsed());
            assert!(body.len() > limit * 100);
        }
        println!(
            "get_recent limit {limit} (20,000 records): handle events→JSON bytes {}",
            percentiles(direct)
        );
        println!(
            "get_recent limit {limit} (20,000 records): RPC msgpack {}",
            percentiles(via_rpc)
        );
    }
    let cases = [
        (
            "plugin_id=p3 limit 50",
            json!({"store": "messages", "topic": "all", "limit": 50, "plugin_id": "p3"}),
        ),
        (
            "plugin_id=p3 limit 1000",
            json!({"store": "messages", "topic": "all", "limit": 1000, "plugin_id": "p3"}),
        ),
        (
            "no match (full scan)",
            json!({"store": "messages", "topic": "all", "limit": 50, "plugin_id": "nobody"}),
        ),
    ];
    for (what, args) in cases {
        let mut lat = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let req = json!({"v": 1, "op": "bus.query", "req_id": "q", "args": args});
            rpc_raw(&mut dealer, pack(&req)).await;
            lat.push(t.elapsed());
        }
        println!(
            "query {what} (20,000 records): RPC msgpack {}",
            percentiles(lat)
        );
    }

    // Ingest again with a subscriber taking every event from PUB.
    let mut sub = SubSocket::new();
    sub.connect(&ep.publish).await.unwrap();
    sub.subscribe("").await.unwrap();
    wait_for("the subscriber", || handle.stats().pub_subscribers == 1).await;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let reader = tokio::spawn(async move {
        while sub.recv().await.is_ok() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut push = push;
    let before = handle.stats();
    let n = (FRAMES / 4 * BATCH) as u64;
    let start_t = Instant::now();
    for i in 0..FRAMES / 4 {
        let frame = frames_again[i % frames_again.len()].clone();
        push.send(ZmqMessage::from(frame)).await.unwrap();
    }
    wait_for("ingest with a subscriber", || {
        handle.stats().ingest_accepted >= before.ingest_accepted + n
    })
    .await;
    let elapsed = start_t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = handle.stats();
    println!(
        "ingest with a PUB subscriber: {n} records in {elapsed:?} = {:.0} records/s; published {}, dropped {}, received {}",
        n as f64 / elapsed.as_secs_f64(),
        after.pub_sent - before.pub_sent,
        after.pub_dropped - before.pub_dropped,
        received.load(Ordering::Relaxed),
    );
    reader.abort();
    stop(plane, join).await;
}
