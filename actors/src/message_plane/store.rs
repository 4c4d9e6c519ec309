//! One store of the message plane as a plain data structure (the `TopicStore` actor owns one).
//!
//! Semantics are the reference's TopicStore (v1 reference §9.2):
//! - one ring buffer per topic, `maxlen` records each (the oldest is evicted);
//! - one sequence counter per store (1, 2, 3 … shared by its topics);
//! - per-topic meta `{created_at, last_ts, count_total}`;
//! - an index computed from each payload at publish (plugin_id, source, priority, kind, type,
//!   timestamp, id), which is what `query` filters on.
//!
//! Payloads are kept as the msgpack bytes they arrived as (always a map; anything else was wrapped
//! as `{"value": …}`), so `bin` values survive and RPC replies copy them unchanged; the index's
//! strings point into those bytes instead of being copied. Events are cheap to clone (two
//! reference counts), which is how readers get them out of the actor.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{self, DecodeError, Head, MAX_DEPTH, Reader};

/// Longest topic name, in characters (`NEKO_MESSAGE_PLANE_TOPIC_NAME_MAX_LEN`).
pub const TOPIC_NAME_MAX: usize = 128;

/// The stores of the plane (the reference's fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreName {
    Messages,
    Events,
    Lifecycle,
    Runs,
    Export,
    Memory,
}

impl StoreName {
    /// Every store, in the order actors are spawned.
    pub const ALL: [StoreName; 6] = [
        StoreName::Messages,
        StoreName::Events,
        StoreName::Lifecycle,
        StoreName::Runs,
        StoreName::Export,
        StoreName::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreName::Messages => "messages",
            StoreName::Events => "events",
            StoreName::Lifecycle => "lifecycle",
            StoreName::Runs => "runs",
            StoreName::Export => "export",
            StoreName::Memory => "memory",
        }
    }

    /// The store of this name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::from_bytes(name.as_bytes())
    }

    /// [`StoreName::parse`] on raw bytes (INGEST reads every item's store name).
    pub fn from_bytes(name: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().as_bytes() == name)
    }

    /// Position in [`StoreName::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every name, sorted (what `bus.list_topics` reports as `stores`).
    pub fn sorted_names() -> Vec<&'static str> {
        let mut names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sizes a store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Records kept per topic.
    pub maxlen: usize,
    /// Topics per store.
    pub topic_max: usize,
    /// Largest payload, in msgpack bytes.
    pub payload_max_bytes: usize,
}

/// Why a record was not stored (the reference's error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("topic is required")]
    TopicRequired,
    #[error("topic too long")]
    TopicTooLong,
    #[error("too many topics")]
    TooManyTopics,
    #[error("payload too large")]
    PayloadTooLarge,
}

/// Where a string of the index sits inside the payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// The index fields as found in a payload (before the publish time is known).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Fields {
    plugin_id: Option<Span>,
    source: Option<Span>,
    kind: Option<Span>,
    record_type: Option<Span>,
    id: Option<Span>,
    priority: i64,
}

/// A record's payload: msgpack bytes of a map, with its index fields read out.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    bytes: Bytes,
    fields: Fields,
    /// `timestamp` (else `time`) when it is a number or a numeric string.
    timestamp: Option<f64>,
}

impl Payload {
    /// A payload from one msgpack value; anything but a map is wrapped as `{"value": …}`, as the
    /// reference does. Fails on malformed bytes, trailing bytes, or nesting deeper than 128.
    pub fn from_msgpack(value: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(value);
        let raw = RawPayload::read(&mut r)?;
        if !r.at_end() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(raw.to_payload())
    }

    /// A payload from JSON (neko's own records); non-objects are wrapped as `{"value": …}`.
    pub fn from_json(value: &serde_json::Value) -> Self {
        let mut bytes = Vec::new();
        codec::put_json(&mut bytes, value);
        // JSON always encodes to one well-formed value; the depth check is the only way out.
        Self::from_msgpack(&bytes).unwrap_or_else(|_| Self::wrap_nil())
    }

    /// A payload from a decoded msgpack value (an RPC `bus.publish`).
    pub fn from_value(value: &rmpv::Value) -> Result<Self, DecodeError> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value)
            .map_err(|_| DecodeError("cannot encode payload"))?;
        Self::from_msgpack(&bytes)
    }

    fn wrap_nil() -> Self {
        Self::from_msgpack(&[0xc0]).unwrap_or_else(|_| unreachable!("nil is valid msgpack"))
    }

    /// Size in msgpack bytes (what `payload_max_bytes` limits).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The msgpack bytes (a map).
    pub fn as_msgpack(&self) -> &[u8] {
        &self.bytes
    }
}

/// A payload found in a buffer (an INGEST frame), read in one pass but not yet copied.
pub(crate) struct RawPayload<'a> {
    value: &'a [u8],
    fields: Fields,
    timestamp: Option<f64>,
    is_map: bool,
}

impl<'a> RawPayload<'a> {
    /// Reads the next value of `r` as a payload: its extent and its index fields together.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let start = r.pos();
        let head = r.head()?;
        let Head::Map(n) = head else {
            r.skip_rest(head, MAX_DEPTH)?;
            return Ok(Self {
                value: r.since(start),
                fields: Fields::default(),
                timestamp: None,
                is_map: false,
            });
        };
        let (fields, timestamp) = scan_fields(r, n, start)?;
        Ok(Self {
            value: r.since(start),
            fields,
            timestamp,
            is_map: true,
        })
    }

    /// The size once stored (a wrapped value takes 7 more bytes).
    pub fn stored_len(&self) -> usize {
        if self.is_map {
            self.value.len()
        } else {
            self.value.len() + WRAP_OVERHEAD
        }
    }

    /// The payload as a slice of `copy`, a copy of `buffer` (the one this payload was read from);
    /// copied out if it must be wrapped.
    pub fn to_payload_in(&self, copy: &Bytes, buffer: &[u8]) -> Payload {
        let start = self.value.as_ptr() as usize - buffer.as_ptr() as usize;
        let end = start + self.value.len();
        if !self.is_map || end > copy.len() {
            return self.to_payload();
        }
        Payload {
            bytes: copy.slice(start..end),
            fields: self.fields,
            timestamp: self.timestamp,
        }
    }

    /// The payload, copied out of the buffer (wrapped if it is not a map).
    pub fn to_payload(&self) -> Payload {
        if self.is_map {
            return Payload {
                bytes: Bytes::copy_from_slice(self.value),
                fields: self.fields,
                timestamp: self.timestamp,
            };
        }
        let mut bytes = Vec::with_capacity(self.value.len() + WRAP_OVERHEAD);
        codec::put_map_len(&mut bytes, 1);
        codec::put_str(&mut bytes, "value");
        bytes.extend_from_slice(self.value);
        Payload {
            bytes: bytes.into(),
            fields: Fields::default(),
            timestamp: None,
        }
    }
}

/// `{"value": …}` around a value: a one-entry map header and the key.
const WRAP_OVERHEAD: usize = 7;

/// Reads the index fields from the `n` entries of a payload map that starts at `base` in the
/// reader's buffer (Python's `dict.get`: the last occurrence of a key wins).
fn scan_fields(
    r: &mut Reader<'_>,
    n: u32,
    base: usize,
) -> Result<(Fields, Option<f64>), DecodeError> {
    #[derive(Clone, Copy)]
    enum Val<'a> {
        Str(Span, &'a [u8]),
        Int(i64),
        Float(f64),
        Bool(bool),
        Nil,
        Other,
    }
    const ID_KEYS: [&[u8]; 6] = [
        b"message_id",
        b"event_id",
        b"lifecycle_id",
        b"id",
        b"task_id",
        b"run_id",
    ];
    let mut plugin_id = None;
    let mut source = None;
    let mut kind = None;
    let mut record_type = None;
    let mut message_type = None;
    let mut timestamp = None;
    let mut time = None;
    let mut priority = None;
    let mut ids: [Option<Val<'_>>; 6] = [None; 6];
    for _ in 0..n {
        let key_head = r.head()?;
        let Head::Str(key) = key_head else {
            r.skip_rest(key_head, MAX_DEPTH)?;
            r.skip()?;
            continue;
        };
        let slot = match key {
            b"plugin_id" => &mut plugin_id,
            b"source" => &mut source,
            b"kind" => &mut kind,
            b"type" => &mut record_type,
            b"message_type" => &mut message_type,
            b"timestamp" => &mut timestamp,
            b"time" => &mut time,
            b"priority" => &mut priority,
            _ => match ID_KEYS.iter().position(|k| *k == key) {
                Some(i) => &mut ids[i],
                None => {
                    r.skip()?;
                    continue;
                }
            },
        };
        let head = r.head()?;
        *slot = Some(match head {
            // UTF-8 is checked when the index is built (`span` below).
            Head::Str(s) => Val::Str(
                Span {
                    start: (r.pos() - s.len() - base) as u32,
                    len: s.len() as u32,
                },
                s,
            ),
            Head::Int(i) => Val::Int(i),
            // Python's int() of it does not fit; saturate like every other huge priority.
            Head::BigUint(_) => Val::Int(i64::MAX),
            Head::Float(f) => Val::Float(f),
            Head::Bool(b) => Val::Bool(b),
            Head::Nil => Val::Nil,
            _ => Val::Other,
        });
        r.skip_rest(head, MAX_DEPTH)?;
    }
    // A string that is not UTF-8 is absent from the index, as it would be no Python str.
    let span = |v: Option<Val<'_>>| match v {
        Some(Val::Str(s, text)) if std::str::from_utf8(text).is_ok() => Some(s),
        _ => None,
    };
    let non_empty = |v: Option<Val<'_>>| span(v).filter(|s| s.len > 0);
    let fields = Fields {
        plugin_id: span(plugin_id),
        source: span(source),
        kind: non_empty(kind),
        record_type: non_empty(record_type).or(non_empty(message_type)),
        id: ids.into_iter().find_map(non_empty),
        // Python's `int(payload.get("priority", 0))`, 0 where it raises.
        priority: match priority {
            Some(Val::Int(i)) => i,
            Some(Val::Float(f)) if f.is_finite() => f.trunc() as i64,
            Some(Val::Bool(b)) => i64::from(b),
            Some(Val::Str(_, text)) => std::str::from_utf8(text)
                .ok()
                .and_then(codec::parse_py_int)
                .unwrap_or(0),
            _ => 0,
        },
    };
    // `timestamp`, else `time` (absent and nil alike); numbers and numeric strings only.
    let raw = match timestamp {
        None | Some(Val::Nil) => time,
        other => other,
    };
    let ts = match raw {
        Some(Val::Int(i)) => Some(i as f64),
        Some(Val::Float(f)) => Some(f),
        Some(Val::Bool(b)) => Some(f64::from(u8::from(b))),
        Some(Val::Str(_, text)) => std::str::from_utf8(text)
            .ok()
            .and_then(codec::parse_py_float),
        _ => None,
    };
    Ok((fields, ts))
}

/// The string fields of an event's index.
#[derive(Debug, Clone, Copy)]
pub enum IndexStr {
    PluginId,
    Source,
    Kind,
    Type,
    Id,
}

/// Index fields of a stored event.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Index {
    fields: Fields,
    timestamp: f64,
}

/// One stored record, as the reference's event `{seq, ts, store, topic, payload, index}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    seq: u64,
    ts: f64,
    store: StoreName,
    topic: Arc<str>,
    payload: Bytes,
    index: Index,
}

impl Event {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Publish time (unix seconds).
    pub fn ts(&self) -> f64 {
        self.ts
    }

    pub fn store(&self) -> StoreName {
        self.store
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload as msgpack bytes (a map).
    pub fn payload_msgpack(&self) -> &[u8] {
        &self.payload
    }

    /// The payload decoded.
    pub fn payload_value(&self) -> rmpv::Value {
        codec::to_value(&self.payload)
    }

    fn span(&self, s: Option<Span>) -> Option<&str> {
        std::str::from_utf8(self.span_bytes(s)?).ok()
    }

    fn span_bytes(&self, s: Option<Span>) -> Option<&[u8]> {
        let s = s?;
        self.payload
            .get(s.start as usize..(s.start + s.len) as usize)
    }

    /// An index string's bytes, UTF-8 (checked when the event was indexed), for writers that
    /// copy it without looking.
    pub fn index_str_bytes(&self, field: IndexStr) -> Option<&[u8]> {
        let f = &self.index.fields;
        self.span_bytes(match field {
            IndexStr::PluginId => f.plugin_id,
            IndexStr::Source => f.source,
            IndexStr::Kind => f.kind,
            IndexStr::Type => f.record_type,
            IndexStr::Id => f.id,
        })
    }

    /// `index.plugin_id`: the payload's `plugin_id` when it is a string.
    pub fn plugin_id(&self) -> Option<&str> {
        self.span(self.index.fields.plugin_id)
    }

    /// `index.source`: the payload's `source` when it is a string.
    pub fn source(&self) -> Option<&str> {
        self.span(self.index.fields.source)
    }

    /// `index.kind`: the payload's `kind` when it is a non-empty string.
    pub fn kind(&self) -> Option<&str> {
        self.span(self.index.fields.kind)
    }

    /// `index.type`: the payload's `type`, else its `message_type` (non-empty strings).
    pub fn record_type(&self) -> Option<&str> {
        self.span(self.index.fields.record_type)
    }

    /// `index.id`: the first non-empty string among `message_id`, `event_id`, `lifecycle_id`,
    /// `id`, `task_id`, `run_id`.
    pub fn id(&self) -> Option<&str> {
        self.span(self.index.fields.id)
    }

    /// `index.priority`: the payload's `priority` as Python's `int()` reads it, else 0.
    pub fn priority(&self) -> i64 {
        self.index.fields.priority
    }

    /// `index.timestamp`: the payload's `timestamp` (else `time`) when numeric, else `ts`.
    pub fn timestamp(&self) -> f64 {
        self.index.timestamp
    }

    /// The event as JSON (`bin` values as base64), for the HTTP gateway and PUB.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(codec::EventJson {
            event: self,
            light: false,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

/// Serializes the JSON view of the event (as [`Event::to_json`]: binary data as base64), so the
/// gateway can write events without building `serde_json::Value`s.
impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::EventJson {
            event: self,
            light: false,
        }
        .serialize(s)
    }
}

/// A topic's entry in `bus.list_topics`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicInfo {
    pub topic: String,
    pub created_at: f64,
    pub last_ts: f64,
    pub count_total: u64,
}

/// Filters of `query` (the reference's `bus.query` arguments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryFilter {
    /// One topic; `None`, `""` or `"*"` mean every topic.
    pub topic: Option<String>,
    pub plugin_id: Option<String>,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub record_type: Option<String>,
    pub priority_min: Option<i64>,
    pub since_ts: Option<f64>,
    pub until_ts: Option<f64>,
    pub limit: usize,
}

struct Topic {
    /// Shared by every event of the topic (no copy of the name per record).
    name: Arc<str>,
    events: VecDeque<Event>,
    created_at: f64,
    last_ts: f64,
    count_total: u64,
}

/// One store: its topics, their ring buffers and the store's sequence counter.
pub struct Store {
    name: StoreName,
    limits: StoreLimits,
    /// In creation order (topics are never removed), which is also the reference's (dict) order
    /// for topics with the same `last_ts`.
    topics: Vec<Topic>,
    by_name: HashMap<Arc<str>, usize>,
    /// The topic written last: batches go to one topic, so most lookups end here, unhashed.
    last: usize,
    seq: u64,
    records: usize,
}

impl Store {
    /// An empty store whose next event gets `last_seq + 1`.
    pub fn new(name: StoreName, limits: StoreLimits, last_seq: u64) -> Self {
        Self {
            name,
            limits,
            topics: Vec::new(),
            by_name: HashMap::new(),
            last: 0,
            seq: last_seq,
            records: 0,
        }
    }

    pub fn name(&self) -> StoreName {
        self.name
    }

    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Records held, over all topics.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    fn find(&self, topic: &str) -> Option<usize> {
        match self.topics.get(self.last) {
            Some(t) if &*t.name == topic => Some(self.last),
            _ => self.by_name.get(topic).copied(),
        }
    }

    /// The topic's position if it exists (`None`: it may be created).
    fn admit(&self, topic: &str) -> Result<Option<usize>, Rejected> {
        if topic.is_empty() {
            return Err(Rejected::TopicRequired);
        }
        if topic.len() > TOPIC_NAME_MAX && topic.chars().count() > TOPIC_NAME_MAX {
            return Err(Rejected::TopicTooLong);
        }
        match self.find(topic) {
            Some(i) => Ok(Some(i)),
            None if self.topics.len() >= self.limits.topic_max => Err(Rejected::TooManyTopics),
            None => Ok(None),
        }
    }

    /// Whether a record may go to `topic`: non-empty, at most [`TOPIC_NAME_MAX`] characters, and
    /// an existing topic or room for a new one.
    pub fn check_topic(&self, topic: &str) -> Result<(), Rejected> {
        self.admit(topic).map(|_| ())
    }

    /// Stores a record; checks the topic, then the payload size.
    pub fn publish(&mut self, topic: &str, payload: Payload, now: f64) -> Result<&Event, Rejected> {
        let found = self.admit(topic)?;
        if payload.len() > self.limits.payload_max_bytes {
            return Err(Rejected::PayloadTooLarge);
        }
        let i = match found {
            Some(i) => i,
            None => self.create(topic, now),
        };
        Ok(self.append(i, payload, now))
    }

    fn create(&mut self, topic: &str, now: f64) -> usize {
        let name: Arc<str> = Arc::from(topic);
        let i = self.topics.len();
        self.by_name.insert(name.clone(), i);
        self.topics.push(Topic {
            name,
            events: VecDeque::new(),
            created_at: now,
            last_ts: now,
            count_total: 0,
        });
        i
    }

    fn append(&mut self, i: usize, payload: Payload, now: f64) -> &Event {
        self.seq += 1;
        self.last = i;
        let maxlen = self.limits.maxlen.max(1);
        let event = Event {
            seq: self.seq,
            ts: now,
            store: self.name,
            topic: self.topics[i].name.clone(),
            index: Index {
                fields: payload.fields,
                timestamp: payload.timestamp.unwrap_or(now),
            },
            payload: payload.bytes,
        };
        let t = &mut self.topics[i];
        if t.events.len() >= maxlen {
            t.events.pop_front();
        } else {
            self.records += 1;
        }
        t.events.push_back(event);
        t.last_ts = now;
        t.count_total += 1;
        t.events
            .back()
            .unwrap_or_else(|| unreachable!("just pushed"))
    }

    /// The last `limit` events of `topic`, oldest first.
    pub fn get_recent(&self, topic: &str, limit: usize) -> Vec<Event> {
        self.recent_refs(topic, limit)
            .into_iter()
            .cloned()
            .collect()
    }

    pub(crate) fn recent_refs(&self, topic: &str, limit: usize) -> Vec<&Event> {
        let Some(t) = self.find(topic).map(|i| &self.topics[i]) else {
            return Vec::new();
        };
        let skip = t.events.len().saturating_sub(limit);
        t.events.iter().skip(skip).collect()
    }

    /// Topics a `topic` argument selects: `None`, `""` and `"*"` (ignoring surrounding
    /// whitespace) select every topic.
    fn selected<'a>(&'a self, topic: Option<&str>) -> Vec<&'a Topic> {
        match topic.map(str::trim) {
            None | Some("") | Some("*") => self.topics.iter().collect(),
            Some(_) => topic
                .and_then(|t| self.find(t))
                .map(|i| &self.topics[i])
                .into_iter()
                .collect(),
        }
    }

    /// Events with `seq > after_seq` in the selected topics, oldest first, at most `limit`.
    pub fn get_since(&self, topic: Option<&str>, after_seq: u64, limit: usize) -> Vec<Event> {
        if limit == 0 {
            return Vec::new();
        }
        let mut out: Vec<&Event> = Vec::new();
        for t in self.selected(topic) {
            // Within a topic, events are in seq order.
            let from = t.events.partition_point(|e| e.seq <= after_seq);
            out.extend(t.events.range(from..).take(limit));
        }
        out.sort_unstable_by_key(|e| e.seq);
        out.truncate(limit);
        out.into_iter().cloned().collect()
    }

    /// Events of the selected topics matching every filter, newest first, at most `limit`.
    pub fn query(&self, q: &QueryFilter) -> Vec<Event> {
        self.query_refs(q).into_iter().cloned().collect()
    }

    pub(crate) fn query_refs(&self, q: &QueryFilter) -> Vec<&Event> {
        if q.limit == 0 {
            return Vec::new();
        }
        // Empty strings filter nothing, as in the reference.
        fn want(f: &Option<String>) -> Option<&str> {
            f.as_deref().filter(|s| !s.is_empty())
        }
        let (pid, src, kind, rtype) = (
            want(&q.plugin_id),
            want(&q.source),
            want(&q.kind),
            want(&q.record_type),
        );
        let matches = |e: &&Event| {
            pid.is_none_or(|p| e.plugin_id() == Some(p))
                && src.is_none_or(|s| e.source() == Some(s))
                && kind.is_none_or(|k| e.kind() == Some(k))
                && rtype.is_none_or(|t| e.record_type() == Some(t))
                && q.priority_min.is_none_or(|m| e.priority() >= m)
                // NaN timestamps pass, as Python's comparisons let them.
                && q.since_ts.is_none_or(|s| e.timestamp().partial_cmp(&s) != Some(Ordering::Less))
                && q.until_ts.is_none_or(|u| e.timestamp().partial_cmp(&u) != Some(Ordering::Greater))
        };
        let topics = self.selected(q.topic.as_deref());
        let single = topics.len() == 1;
        let mut out: Vec<&Event> = Vec::new();
        for t in topics {
            // Newest first within a topic; a topic never contributes more than `limit`.
            out.extend(t.events.iter().rev().filter(matches).take(q.limit));
        }
        if !single {
            out.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
            out.truncate(q.limit);
        }
        out
    }

    /// Empties `topic` (its meta starts over) and publishes `records` into it. The caller checked
    /// the topic; records over the size limit are skipped.
    pub fn replace_topic(&mut self, topic: &str, records: Vec<Payload>, now: f64) -> Vec<Event> {
        let max = self.limits.payload_max_bytes;
        let i = match self.find(topic) {
            Some(i) => {
                let t = &mut self.topics[i];
                self.records -= t.events.len();
                t.events = VecDeque::new();
                t.created_at = now;
                t.last_ts = now;
                t.count_total = 0;
                i
            }
            None => self.create(topic, now),
        };
        records
            .into_iter()
            .filter(|p| p.len() <= max)
            .map(|p| self.append(i, p, now).clone())
            .collect()
    }

    /// Every topic with its meta, most recently written first.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut topics: Vec<&Topic> = self.topics.iter().collect();
        // Stable: equal `last_ts` keep creation order.
        topics.sort_by(|a, b| b.last_ts.partial_cmp(&a.last_ts).unwrap_or(Ordering::Equal));
        topics
            .into_iter()
            .map(|t| TopicInfo {
                topic: t.name.to_string(),
                created_at: t.created_at,
                last_ts: t.last_ts,
                count_total: t.count_total,
            })
            .collect()
    }

    /// Removes every event whose `index.id` is `id`; whether any was removed.
    pub fn delete(&mut self, id: &str) -> bool {
        let mut removed = 0;
        for t in &mut self.topics {
            let before = t.events.len();
            t.events.retain(|e| e.id() != Some(id));
            removed += before - t.events.len();
        }
        self.records -= removed;
        removed > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as J, json};

    fn limits(maxlen: usize) -> StoreLimits {
        StoreLimits {
            maxlen,
            topic_max: 3,
            payload_max_bytes: 64,
        }
    }

    fn put(s: &mut Store, topic: &str, payload: J, now: f64) -> Event {
        s.publish(topic, Payload::from_json(&payload), now)
            .unwrap()
            .clone()
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(Event::seq).collect()
    }

    /// An index string that is not UTF-8 is absent from the index (no Python str), in every
    /// form the index is read in; a UTF-8 one is there.
    #[test]
    fn index_strings_must_be_utf8() {
        // {"plugin_id": <str 0xff 0xfe>, "source": "ok"}
        let mut payload = vec![0x82, 0xa9];
        payload.extend_from_slice(b"plugin_id");
        payload.extend_from_slice(&[0xa2, 0xff, 0xfe, 0xa6]);
        payload.extend_from_slice(b"source");
        payload.push(0xa2);
        payload.extend_from_slice(b"ok");
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        let event = s
            .publish("t", Payload::from_msgpack(&payload).unwrap(), 1.0)
            .unwrap()
            .clone();
        assert_eq!((event.plugin_id(), event.source()), (None, Some("ok")));
        assert_eq!(event.index_str_bytes(IndexStr::PluginId), None);
        assert_eq!(event.index_str_bytes(IndexStr::Source), Some(&b"ok"[..]));
        let mut written = Vec::new();
        codec::put_event(&mut written, &event, true);
        let index = &codec::to_value(&written)["index"];
        assert_eq!(index["plugin_id"], rmpv::Value::Nil);
        assert_eq!(index["source"], rmpv::Value::from("ok"));
    }

    /// One counter per store, shared by its topics, starting after `last_seq`.
    #[test]
    fn sequence_numbers_are_per_store() {
        let mut s = Store::new(StoreName::Events, limits(10), 0);
        assert_eq!(put(&mut s, "a", json!({}), 1.0).seq(), 1);
        assert_eq!(put(&mut s, "b", json!({}), 1.0).seq(), 2);
        assert_eq!(put(&mut s, "a", json!({}), 1.0).seq(), 3);
        let mut other = Store::new(StoreName::Runs, limits(10), 0);
        assert_eq!(put(&mut other, "a", json!({}), 1.0).seq(), 1);
        let mut resumed = Store::new(StoreName::Events, limits(10), 41);
        let e = put(&mut resumed, "a", json!({}), 1.0);
        assert_eq!(
            (e.seq(), e.store(), e.topic(), e.ts()),
            (42, StoreName::Events, "a", 1.0)
        );
    }

    /// get_recent: the last `limit`, oldest first; the ring keeps `maxlen` per topic.
    #[test]
    fn get_recent_and_eviction_per_topic() {
        let mut s = Store::new(StoreName::Messages, limits(3), 0);
        for i in 0..5 {
            put(&mut s, "a", json!({"i": i}), f64::from(i));
        }
        put(&mut s, "b", json!({}), 9.0);
        assert_eq!(seqs(&s.get_recent("a", 10)), vec![3, 4, 5]);
        assert_eq!(seqs(&s.get_recent("a", 2)), vec![4, 5]);
        assert!(s.get_recent("a", 0).is_empty());
        assert!(s.get_recent("nope", 5).is_empty());
        assert_eq!(seqs(&s.get_recent("b", 5)), vec![6]);
        assert_eq!(s.records(), 4);
        let a = s
            .list_topics()
            .into_iter()
            .find(|t| t.topic == "a")
            .unwrap();
        assert_eq!((a.count_total, a.created_at, a.last_ts), (5, 0.0, 4.0));
    }

    /// get_since: seq > after_seq over the selected topics, ascending, first `limit`.
    #[test]
    fn get_since_across_topics() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        for t in ["a", "b", "a", "c", "b"] {
            put(&mut s, t, json!({}), 1.0);
        }
        for all in [None, Some(""), Some("*"), Some(" * ")] {
            assert_eq!(seqs(&s.get_since(all, 1, 10)), vec![2, 3, 4, 5], "{all:?}");
        }
        assert_eq!(seqs(&s.get_since(None, 0, 2)), vec![1, 2]);
        assert_eq!(seqs(&s.get_since(Some("b"), 0, 10)), vec![2, 5]);
        assert_eq!(seqs(&s.get_since(Some("b"), 2, 10)), vec![5]);
        assert!(s.get_since(Some("zz"), 0, 10).is_empty());
        assert!(s.get_since(None, 0, 0).is_empty());
    }

    /// query: exact index matches, priority >= min, since <= timestamp <= until; newest first.
    #[test]
    fn query_filters_and_order() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        put(
            &mut s,
            "a",
            json!({"plugin_id": "p", "source": "s", "priority": 1, "kind": "k", "type": "t", "timestamp": 10}),
            1.0,
        );
        put(
            &mut s,
            "a",
            json!({"plugin_id": "p", "priority": 5, "timestamp": 20}),
            1.0,
        );
        put(
            &mut s,
            "b",
            json!({"plugin_id": "q", "priority": 9, "timestamp": 30}),
            1.0,
        );
        put(
            &mut s,
            "a",
            json!({"plugin_id": "p", "priority": 2, "timestamp": 40, "message_type": "t"}),
            1.0,
        );
        let q = |f: QueryFilter| seqs(&s.query(&QueryFilter { limit: 10, ..f }));
        assert_eq!(q(QueryFilter::default()), vec![4, 3, 2, 1]);
        assert_eq!(
            q(QueryFilter {
                topic: Some("a".into()),
                ..Default::default()
            }),
            vec![4, 2, 1]
        );
        assert_eq!(
            q(QueryFilter {
                plugin_id: Some("p".into()),
                ..Default::default()
            }),
            vec![4, 2, 1]
        );
        assert_eq!(
            q(QueryFilter {
                plugin_id: Some(String::new()),
                ..Default::default()
            }),
            vec![4, 3, 2, 1]
        );
        assert_eq!(
            q(QueryFilter {
                source: Some("s".into()),
                ..Default::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(QueryFilter {
                kind: Some("k".into()),
                ..Default::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(QueryFilter {
                record_type: Some("t".into()),
                ..Default::default()
            }),
            vec![4, 1]
        );
        assert_eq!(
            q(QueryFilter {
                priority_min: Some(5),
                ..Default::default()
            }),
            vec![3, 2]
        );
        assert_eq!(
            q(QueryFilter {
                since_ts: Some(20.0),
                until_ts: Some(30.0),
                ..Default::default()
            }),
            vec![3, 2]
        );
        assert_eq!(
            seqs(&s.query(&QueryFilter {
                limit: 2,
                ..Default::default()
            })),
            vec![4, 3]
        );
        assert_eq!(
            seqs(&s.query(&QueryFilter {
                topic: Some("a".into()),
                limit: 1,
                ..Default::default()
            })),
            vec![4]
        );
        assert!(s.query(&QueryFilter::default()).is_empty());
    }

    /// replace_topic: the topic starts over (meta too), others are untouched, seq continues.
    #[test]
    fn replace_topic_resets_one_topic() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        put(&mut s, "a", json!({}), 1.0);
        put(&mut s, "a", json!({}), 2.0);
        put(&mut s, "b", json!({}), 3.0);
        let records = vec![
            Payload::from_json(&json!({"x": 1})),
            Payload::from_json(&json!({"x": 2})),
        ];
        let events = s.replace_topic("a", records, 5.0);
        assert_eq!(seqs(&events), vec![4, 5]);
        assert_eq!(seqs(&s.get_recent("a", 10)), vec![4, 5]);
        assert_eq!(seqs(&s.get_recent("b", 10)), vec![3]);
        assert_eq!(s.records(), 3);
        let a = s
            .list_topics()
            .into_iter()
            .find(|t| t.topic == "a")
            .unwrap();
        assert_eq!((a.created_at, a.last_ts, a.count_total), (5.0, 5.0, 2));
        // An empty replace leaves the topic, empty.
        assert!(s.replace_topic("c", Vec::new(), 6.0).is_empty());
        assert_eq!(s.topic_count(), 3);
    }

    /// list_topics: most recently written first; ties in creation order.
    #[test]
    fn list_topics_order() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        put(&mut s, "x", json!({}), 1.0);
        put(&mut s, "y", json!({}), 2.0);
        put(&mut s, "z", json!({}), 2.0);
        let names: Vec<String> = s.list_topics().into_iter().map(|t| t.topic).collect();
        assert_eq!(names, vec!["y", "z", "x"]);
    }

    /// Topic and payload limits, with the reference's messages.
    #[test]
    fn limits_are_enforced() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        let p = || Payload::from_json(&json!({}));
        assert_eq!(
            s.publish("", p(), 1.0).unwrap_err(),
            Rejected::TopicRequired
        );
        assert_eq!(
            s.publish(&"t".repeat(129), p(), 1.0).unwrap_err(),
            Rejected::TopicTooLong
        );
        assert!(s.publish(&"t".repeat(128), p(), 1.0).is_ok());
        // Characters, not bytes.
        assert!(s.publish(&"é".repeat(128), p(), 1.0).is_ok());
        assert!(s.publish("third", p(), 1.0).is_ok());
        assert_eq!(
            s.publish("fourth", p(), 1.0).unwrap_err(),
            Rejected::TooManyTopics
        );
        assert!(
            s.publish("third", p(), 1.0).is_ok(),
            "existing topics still take records"
        );
        let big = Payload::from_json(&json!({"x": "y".repeat(100)}));
        assert_eq!(
            s.publish("third", big, 1.0).unwrap_err(),
            Rejected::PayloadTooLarge
        );
        assert_eq!(Rejected::TooManyTopics.to_string(), "too many topics");
        assert_eq!(s.last_seq(), 4, "refused records take no sequence number");
    }

    fn index(payload: J) -> J {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        s.limits.payload_max_bytes = 1 << 20;
        put(&mut s, "a", payload, 123.5).to_json()["index"].clone()
    }

    /// The index is computed exactly as the reference does.
    #[test]
    fn index_rules() {
        assert_eq!(
            index(json!({})),
            json!({"plugin_id": null, "source": null, "priority": 0, "kind": null, "type": null, "timestamp": 123.5, "id": null})
        );
        // plugin_id/source: any string, even empty; kind/type: non-empty strings only.
        let i = index(json!({"plugin_id": "", "source": 5, "kind": "", "type": ""}));
        assert_eq!(
            (&i["plugin_id"], &i["source"], &i["kind"], &i["type"]),
            (&json!(""), &J::Null, &J::Null, &J::Null)
        );
        assert_eq!(
            index(json!({"type": "", "message_type": "text"}))["type"],
            "text"
        );
        assert_eq!(
            index(json!({"type": "a", "message_type": "text"}))["type"],
            "a"
        );
        // priority: Python's int(), 0 where it fails.
        for (p, want) in [
            (json!(7), 7),
            (json!("7"), 7),
            (json!(" -3 "), -3),
            (json!(2.9), 2),
            (json!(true), 1),
            (json!("2.5"), 0),
            (json!(null), 0),
            (json!([1]), 0),
        ] {
            assert_eq!(
                index(json!({"priority": p.clone()}))["priority"],
                want,
                "{p}"
            );
        }
        // timestamp, else time; numbers and numeric strings, else the publish time.
        assert_eq!(index(json!({"timestamp": 5}))["timestamp"], 5.0);
        assert_eq!(index(json!({"timestamp": "6.5"}))["timestamp"], 6.5);
        assert_eq!(
            index(json!({"timestamp": null, "time": 7}))["timestamp"],
            7.0
        );
        assert_eq!(
            index(json!({"time": "2026-01-01T00:00:00Z"}))["timestamp"],
            123.5
        );
        assert_eq!(
            index(json!({"timestamp": {"a": 1}, "time": 7}))["timestamp"],
            123.5
        );
        assert_eq!(index(json!({"timestamp": 1, "time": 7}))["timestamp"], 1.0);
        // id: the first non-empty string in the reference's order.
        assert_eq!(
            index(json!({"run_id": "r", "id": "i", "message_id": ""}))["id"],
            "i"
        );
        assert_eq!(index(json!({"task_id": "t", "event_id": 5}))["id"], "t");
        assert_eq!(
            index(json!({"lifecycle_id": "l", "message_id": "m"}))["id"],
            "m"
        );
        // A repeated key: the last one counts, as in a Python dict.
        let mut dup = Vec::new();
        codec::put_map_len(&mut dup, 2);
        codec::put_str(&mut dup, "plugin_id");
        codec::put_str(&mut dup, "first");
        codec::put_str(&mut dup, "plugin_id");
        codec::put_str(&mut dup, "second");
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        let e = s
            .publish("a", Payload::from_msgpack(&dup).unwrap(), 1.0)
            .unwrap();
        assert_eq!(e.plugin_id(), Some("second"));
    }

    /// Payloads that are not maps are wrapped; binary data survives and shows as base64 in JSON.
    #[test]
    fn payloads_keep_their_bytes() {
        let mut s = Store::new(StoreName::Messages, limits(10), 0);
        let e = put(&mut s, "a", json!([1, 2]), 1.0);
        assert_eq!(e.to_json()["payload"], json!({"value": [1, 2]}));
        let bin = rmpv::Value::Map(vec![(
            rmpv::Value::from("binary_data"),
            rmpv::Value::Binary(vec![0, 255]),
        )]);
        let e = s
            .publish("a", Payload::from_value(&bin).unwrap(), 1.0)
            .unwrap()
            .clone();
        assert_eq!(e.payload_value(), bin);
        assert_eq!(e.to_json()["payload"]["binary_data"], "AP8=");
        let j = e.to_json();
        assert_eq!(
            (
                j["seq"].clone(),
                j["ts"].clone(),
                j["store"].clone(),
                j["topic"].clone()
            ),
            (json!(2), json!(1.0), json!("messages"), json!("a"))
        );
        assert!(Payload::from_msgpack(b"\x81").is_err());
        assert!(
            Payload::from_msgpack(b"\x80\x80").is_err(),
            "trailing bytes"
        );
    }

    /// delete removes every record with that index.id, in every topic.
    #[test]
    fn delete_by_id() {
        let mut s = Store::new(StoreName::Events, limits(10), 0);
        put(&mut s, "a", json!({"event_id": "e1"}), 1.0);
        put(&mut s, "b", json!({"event_id": "e1"}), 1.0);
        put(&mut s, "a", json!({"event_id": "e2"}), 1.0);
        assert!(s.delete("e1"));
        assert!(!s.delete("e1"));
        assert_eq!(s.records(), 1);
        assert_eq!(seqs(&s.get_since(None, 0, 10)), vec![3]);
    }
}
