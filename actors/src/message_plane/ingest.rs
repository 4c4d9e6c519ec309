//! INGEST: the PULL socket plugins push records to, and the decoding of its frames.
//!
//! Frames are single msgpack maps (v1 reference §9.4), without version check:
//! - `{"kind":"delta_batch", "items":[{"store"|"bus", "topic", "payload"}, …], …}` (any kind but
//!   "snapshot" is read this way);
//! - `{"kind":"snapshot", "store"|"bus", "topic" (default "snapshot.all"), "mode":"replace"
//!   (default)|"append", "items":[{…}, …]}`.
//!
//! Items with an unknown store, a missing, empty or over-long topic, or a payload over the size
//! limit are dropped and counted (a new topic beyond the per-store cap is dropped by the store).
//! Frames that are not msgpack maps of that shape are counted as malformed; nothing here is fatal.
//!
//! Flow control: a frame is read only with a permit of the ingest window ([`WINDOW_FRAMES`]),
//! released when its store(s) handled it. When stores fall behind, the socket is not read, so TCP
//! pushes back on the producers, and ZeroMQ's fair queueing takes one frame per ready producer in
//! turn: a plugin that floods is slowed (its SDK drops its own overflow) while others still get
//! their turn, and the actors' mailboxes stay bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use zeromq::{PullSocket, Socket, SocketRecv};

use super::codec::{DecodeError, Head, MAX_DEPTH, Reader};
use super::store::{Payload, RawPayload, StoreName, TOPIC_NAME_MAX};
use super::topic_store::{IngestBatch, IngestItem, SnapshotBatch, SnapshotMode, TopicStoreMsg};
use super::{PlaneCounters, StoreRefs};

/// Frames decoded but not yet handled by their stores, at most.
pub const WINDOW_FRAMES: usize = 64;

/// Items dropped while decoding one frame, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drops {
    pub unknown_store: u64,
    pub bad_topic: u64,
    pub payload_too_large: u64,
    pub bad_item: u64,
}

/// What a frame asks for.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Accepted items, grouped by store (in the order stores first appear).
    Delta(Vec<(StoreName, Vec<IngestItem>)>),
    Snapshot {
        store: StoreName,
        topic: String,
        mode: SnapshotMode,
        records: Vec<Payload>,
    },
    /// Well-formed, but every item was dropped.
    Nothing,
}

impl std::fmt::Debug for IngestItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestItem")
            .field("topic", &self.topic)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// A store named by a frame or an item (`store`, else `bus` when `store` is falsy).
enum StoreArg {
    Missing,
    Named(StoreName),
    Unknown,
}

/// Python truthiness of a value's head (containers by their length).
fn truthy(h: &Head<'_>) -> bool {
    match h {
        Head::Nil => false,
        Head::Bool(b) => *b,
        Head::Int(i) => *i != 0,
        Head::BigUint(_) => true,
        Head::Float(f) => *f != 0.0,
        Head::Str(s) | Head::Bin(s) => !s.is_empty(),
        Head::Array(n) | Head::Map(n) => *n > 0,
        Head::Ext(..) => true,
    }
}

fn store_arg(store: Option<Head<'_>>, bus: Option<Head<'_>>) -> StoreArg {
    let pick = match store {
        Some(h) if truthy(&h) => Some(h),
        _ => bus,
    };
    match pick {
        None => StoreArg::Missing,
        Some(h) if !truthy(&h) => StoreArg::Missing,
        Some(Head::Str(s)) => StoreName::from_bytes(s).map_or(StoreArg::Unknown, StoreArg::Named),
        Some(_) => StoreArg::Unknown,
    }
}

/// A topic argument: a non-empty string of at most [`TOPIC_NAME_MAX`] characters.
fn topic_arg(bytes: &[u8]) -> Option<&str> {
    let t = std::str::from_utf8(bytes).ok()?;
    let too_long = t.len() > TOPIC_NAME_MAX && t.chars().count() > TOPIC_NAME_MAX;
    (!t.is_empty() && !too_long).then_some(t)
}

/// Room to reserve for `count` items: a frame's counts are not trusted beyond a batch's size.
fn prealloc(count: u32) -> usize {
    (count as usize).min(1024)
}

/// Reads a head, and the rest of the value if it is a container (only scalars are kept).
fn scalar<'a>(r: &mut Reader<'a>) -> Result<Head<'a>, DecodeError> {
    let h = r.head()?;
    r.skip_rest(h, MAX_DEPTH)?;
    Ok(h)
}

/// Decodes one INGEST frame; per-item drops are added to `drops`.
pub(crate) fn decode_frame(
    bytes: &[u8],
    payload_max: usize,
    drops: &mut Drops,
) -> Result<Frame, DecodeError> {
    let mut r = Reader::new(bytes);
    let Head::Map(n) = r.head()? else {
        return Err(DecodeError("frame is not a map"));
    };
    let (mut kind, mut items, mut store, mut bus, mut topic, mut mode) =
        (None, None, None, None, None, None);
    let mut decoded = None;
    for _ in 0..n {
        let key = scalar(&mut r)?;
        let Head::Str(key) = key else {
            r.skip()?;
            continue;
        };
        match key {
            // Producers name the kind before the items (the SDKs do): a delta batch is then
            // decoded in place, in one pass; otherwise the items wait for the rest of the map.
            b"items" if kind.is_some_and(|k| k != Head::Str(b"snapshot")) => {
                let Head::Array(count) = r.head()? else {
                    return Err(DecodeError("items is not a list"));
                };
                decoded = Some(decode_delta(&mut r, count, bytes, payload_max, drops)?);
            }
            b"items" => items = Some(r.value()?),
            b"kind" => kind = Some(scalar(&mut r)?),
            b"store" => store = Some(scalar(&mut r)?),
            b"bus" => bus = Some(scalar(&mut r)?),
            b"topic" => topic = Some(scalar(&mut r)?),
            b"mode" => mode = Some(scalar(&mut r)?),
            _ => r.skip()?,
        }
    }
    if !r.at_end() {
        return Err(DecodeError("trailing bytes"));
    }
    if let Some(frame) = decoded {
        return Ok(frame);
    }
    let items = items.ok_or(DecodeError("no items"))?;
    let mut ir = Reader::new(items);
    let Head::Array(count) = ir.head()? else {
        return Err(DecodeError("items is not a list"));
    };
    if kind == Some(Head::Str(b"snapshot")) {
        decode_snapshot(
            &mut ir,
            count,
            (store, bus, topic, mode),
            payload_max,
            drops,
        )
    } else {
        decode_delta(&mut ir, count, bytes, payload_max, drops)
    }
}

type SnapshotArgs<'a> = (
    Option<Head<'a>>,
    Option<Head<'a>>,
    Option<Head<'a>>,
    Option<Head<'a>>,
);

fn decode_snapshot(
    r: &mut Reader<'_>,
    count: u32,
    (store, bus, topic, mode): SnapshotArgs<'_>,
    payload_max: usize,
    drops: &mut Drops,
) -> Result<Frame, DecodeError> {
    let store = match store_arg(store, bus) {
        StoreArg::Named(s) => s,
        StoreArg::Missing | StoreArg::Unknown => {
            drops.unknown_store += u64::from(count);
            return Ok(Frame::Nothing);
        }
    };
    let topic = match topic {
        Some(Head::Str(t)) if !t.is_empty() => match topic_arg(t) {
            Some(t) => t.to_owned(),
            None => {
                drops.bad_topic += u64::from(count);
                return Ok(Frame::Nothing);
            }
        },
        _ => "snapshot.all".to_owned(),
    };
    let mode = match mode {
        Some(Head::Str(b"append")) => SnapshotMode::Append,
        _ => SnapshotMode::Replace,
    };
    let mut records = Vec::with_capacity(prealloc(count));
    for _ in 0..count {
        let value = r.value()?;
        if !matches!(value.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
            drops.bad_item += 1;
        } else if value.len() > payload_max {
            drops.payload_too_large += 1;
        } else {
            match Payload::from_msgpack(value) {
                Ok(p) => records.push(p),
                Err(_) => drops.bad_item += 1,
            }
        }
    }
    Ok(Frame::Snapshot {
        store,
        topic,
        mode,
        records,
    })
}

fn decode_delta<'a>(
    r: &mut Reader<'a>,
    count: u32,
    frame: &'a [u8],
    payload_max: usize,
    drops: &mut Drops,
) -> Result<Frame, DecodeError> {
    // First the checks, keeping where each accepted payload is; copies come after.
    let mut accepted: Vec<(StoreName, Arc<str>, RawPayload<'a>)> =
        Vec::with_capacity(prealloc(count));
    let mut last_topic: Option<Arc<str>> = None;
    for _ in 0..count {
        let head = r.head()?;
        let Head::Map(fields) = head else {
            r.skip_rest(head, MAX_DEPTH)?;
            drops.bad_item += 1;
            continue;
        };
        let (mut store, mut bus, mut topic, mut payload) = (None, None, None, None);
        for _ in 0..fields {
            let key = scalar(r)?;
            match key {
                Head::Str(b"store") => store = Some(scalar(r)?),
                Head::Str(b"bus") => bus = Some(scalar(r)?),
                Head::Str(b"topic") => topic = Some(scalar(r)?),
                Head::Str(b"payload") => payload = Some(RawPayload::read(r)?),
                _ => r.skip()?,
            }
        }
        let store = match store_arg(store, bus) {
            StoreArg::Named(s) => s,
            StoreArg::Missing | StoreArg::Unknown => {
                drops.unknown_store += 1;
                continue;
            }
        };
        let Some(Head::Str(topic_bytes)) = topic else {
            drops.bad_topic += 1;
            continue;
        };
        let topic = match &last_topic {
            Some(t) if t.as_bytes() == topic_bytes => t.clone(),
            _ => {
                let Some(topic) = topic_arg(topic_bytes) else {
                    drops.bad_topic += 1;
                    continue;
                };
                let t: Arc<str> = Arc::from(topic);
                last_topic = Some(t.clone());
                t
            }
        };
        // A missing payload is None in the reference, stored as {"value": None}.
        let payload = match payload {
            Some(p) => p,
            None => RawPayload::read(&mut Reader::new(&[0xc0]))?,
        };
        if payload.stored_len() > payload_max {
            drops.payload_too_large += 1;
            continue;
        }
        accepted.push((store, topic, payload));
    }
    // When every accepted item goes to one topic and their payloads make up most of the frame,
    // they share one copy of it: one allocation per frame instead of one per record. Such items
    // sit side by side in one ring buffer and are evicted together, so the copy lives no longer
    // than its records, and the bytes kept for nothing stay under the payloads' own size.
    let one_target = accepted
        .first()
        .is_some_and(|(s0, t0, _)| accepted.iter().all(|(s, t, _)| s == s0 && t == t0));
    let payload_bytes: usize = accepted.iter().map(|(_, _, p)| p.stored_len()).sum();
    let shared =
        (one_target && payload_bytes * 2 >= frame.len()).then(|| Bytes::copy_from_slice(frame));
    let mut groups: Vec<(StoreName, Vec<IngestItem>)> = Vec::new();
    for (store, topic, raw) in accepted {
        let payload = match &shared {
            Some(copy) => raw.to_payload_in(copy, frame),
            None => raw.to_payload(),
        };
        let item = IngestItem { topic, payload };
        match groups.iter_mut().find(|(s, _)| *s == store) {
            Some((_, items)) => items.push(item),
            None => {
                let mut items = Vec::with_capacity(prealloc(count));
                items.push(item);
                groups.push((store, items));
            }
        }
    }
    Ok(if groups.is_empty() {
        Frame::Nothing
    } else {
        Frame::Delta(groups)
    })
}

/// The INGEST task's parts.
pub(crate) struct Ingest {
    pub socket: PullSocket,
    pub payload_max: usize,
    pub stores: watch::Receiver<Arc<StoreRefs>>,
    pub counters: Arc<PlaneCounters>,
}

impl Ingest {
    /// Reads frames until shutdown (or until the plane is gone).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let window = Arc::new(Semaphore::new(WINDOW_FRAMES));
        loop {
            let permit = tokio::select! {
                _ = shutdown.changed() => break,
                p = window.clone().acquire_owned() => match p {
                    Ok(p) => Arc::new(p),
                    Err(_) => break,
                },
            };
            let msg = tokio::select! {
                _ = shutdown.changed() => break,
                m = self.socket.recv() => m,
            };
            match msg {
                Ok(msg) => {
                    for part in msg.into_vec() {
                        self.frame(&part, &permit);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "message plane ingest: receive failed"),
            }
        }
        let _ = self.socket.close().await;
    }

    fn frame(&self, bytes: &[u8], permit: &Arc<tokio::sync::OwnedSemaphorePermit>) {
        let c = &self.counters;
        c.ingest_frames.fetch_add(1, Ordering::Relaxed);
        let mut drops = Drops::default();
        let decoded = decode_frame(bytes, self.payload_max, &mut drops);
        c.dropped_unknown_store
            .fetch_add(drops.unknown_store, Ordering::Relaxed);
        c.dropped_bad_topic
            .fetch_add(drops.bad_topic, Ordering::Relaxed);
        c.dropped_payload_too_large
            .fetch_add(drops.payload_too_large, Ordering::Relaxed);
        c.dropped_bad_item
            .fetch_add(drops.bad_item, Ordering::Relaxed);
        let stores = self.stores.borrow().clone();
        match decoded {
            Err(e) => {
                c.ingest_bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(error = %e, bytes = bytes.len(), "message plane ingest: malformed frame");
            }
            Ok(Frame::Nothing) => {}
            Ok(Frame::Delta(groups)) => {
                for (store, items) in groups {
                    let n = items.len() as u64;
                    let batch = IngestBatch {
                        items,
                        permit: permit.clone(),
                    };
                    if stores
                        .get(store)
                        .cast(TopicStoreMsg::Ingest(batch))
                        .is_err()
                    {
                        c.dropped_unavailable.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Ok(Frame::Snapshot {
                store,
                topic,
                mode,
                records,
            }) => {
                let n = records.len() as u64;
                let batch = SnapshotBatch {
                    topic,
                    mode,
                    records,
                    permit: permit.clone(),
                };
                if stores
                    .get(store)
                    .cast(TopicStoreMsg::Snapshot(batch))
                    .is_err()
                {
                    c.dropped_unavailable.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn pack(v: serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &super::super::codec::json_to_value(v)).unwrap();
        out
    }

    fn delta(items: serde_json::Value) -> Vec<u8> {
        pack(
            serde_json::json!({"v": 1, "kind": "delta_batch", "from": "p", "ts": 1.0, "batch_id": "b", "items": items}),
        )
    }

    /// Items are grouped by store (`bus` when `store` is falsy); bad ones are dropped and counted
    /// by reason; a non-map payload is wrapped.
    #[test]
    fn delta_batch_items_are_checked_and_grouped() {
        let long = "t".repeat(TOPIC_NAME_MAX + 1);
        let frame = delta(serde_json::json!([
            {"store": "messages", "topic": "all", "payload": {"a": 1}},
            {"store": "", "bus": "events", "topic": "all", "payload": {"b": 2}},
            {"store": "nope", "topic": "all", "payload": {}},
            {"topic": "all", "payload": {}},
            {"store": "messages", "topic": "", "payload": {}},
            {"store": "messages", "topic": 5, "payload": {}},
            {"store": "messages", "topic": long, "payload": {}},
            {"store": "messages", "topic": "all", "payload": "x".repeat(100)},
            {"store": "messages", "topic": "all", "payload": 7},
            "not a map",
        ]));
        let mut drops = Drops::default();
        let Frame::Delta(groups) = decode_frame(&frame, 90, &mut drops).unwrap() else {
            panic!("a delta frame")
        };
        assert_eq!(
            drops,
            Drops {
                unknown_store: 2,
                bad_topic: 3,
                payload_too_large: 1,
                bad_item: 1
            }
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, StoreName::Messages);
        assert_eq!(groups[0].1.len(), 2);
        assert_eq!(groups[1].0, StoreName::Events);
        let wrapped = super::super::codec::to_value(groups[0].1[1].payload.as_msgpack());
        assert_eq!(
            wrapped,
            Value::Map(vec![(Value::from("value"), Value::from(7))])
        );
        // Items of a frame share one topic string.
        assert!(Arc::ptr_eq(&groups[0].1[0].topic, &groups[0].1[1].topic));
    }

    /// Snapshot frames: store from the frame, default topic and mode, non-map records dropped.
    #[test]
    fn snapshot_frames() {
        let frame = pack(
            serde_json::json!({"v": 1, "kind": "snapshot", "bus": "runs", "items": [{"a": 1}, 3, {"b": 2}]}),
        );
        let mut drops = Drops::default();
        let Frame::Snapshot {
            store,
            topic,
            mode,
            records,
        } = decode_frame(&frame, 1000, &mut drops).unwrap()
        else {
            panic!("a snapshot")
        };
        assert_eq!(
            (store, topic.as_str(), mode, records.len()),
            (StoreName::Runs, "snapshot.all", SnapshotMode::Replace, 2)
        );
        assert_eq!(drops.bad_item, 1);
        let frame = pack(
            serde_json::json!({"kind": "snapshot", "store": "x", "mode": "append", "items": [{}, {}]}),
        );
        let mut drops = Drops::default();
        assert!(matches!(
            decode_frame(&frame, 1000, &mut drops).unwrap(),
            Frame::Nothing
        ));
        assert_eq!(drops.unknown_store, 2);
        let frame = pack(
            serde_json::json!({"kind": "snapshot", "store": "events", "topic": "t", "mode": "append", "items": []}),
        );
        assert!(matches!(
            decode_frame(&frame, 1000, &mut Drops::default()).unwrap(),
            Frame::Snapshot {
                mode: SnapshotMode::Append,
                ..
            }
        ));
    }

    /// Garbage, non-maps, missing or non-list items and truncated frames are malformed.
    #[test]
    fn malformed_frames_are_errors() {
        let mut drops = Drops::default();
        for bad in [
            b"garbage".to_vec(),
            vec![],
            pack(serde_json::json!([1, 2])),
            pack(serde_json::json!({"kind": "delta_batch"})),
            pack(serde_json::json!({"items": {"a": 1}})),
            delta(serde_json::json!([{"store": "messages"}]))[..20].to_vec(),
        ] {
            assert!(decode_frame(&bad, 1000, &mut drops).is_err(), "{bad:?}");
        }
    }
}
