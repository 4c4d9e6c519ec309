//! msgpack and JSON plumbing of the message plane.
//!
//! Stored payloads stay msgpack bytes, as received: INGEST copies each item's bytes once and reads
//! only the index fields out of them, RPC replies append them unchanged, and the JSON view (PUB,
//! HTTP) is produced from them on demand. That keeps ingest at one allocation per record.
//!
//! - [`Reader`]: a zero-copy reader over a msgpack buffer (heads, whole values, skipping).
//! - [`JsonOf`]: msgpack bytes serialized as JSON; `bin` (and `ext`) become base64 strings.
//! - [`Doc`]: an RPC reply, written as msgpack or serialized as JSON.
//! - `py_*`: the Python coercions (`int()`, `float()`, `str()`, truthiness, `==`) the reference
//!   applies to request arguments and plan parameters, so lenient inputs behave the same.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmpv::Value;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::store::{Event, IndexStr};

/// Deepest nesting accepted in a payload (deeper ones are refused at ingest, so every later walk
/// over stored bytes is bounded).
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not one well-formed msgpack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed msgpack: {0}")]
pub struct DecodeError(pub &'static str);

/// The head of one msgpack value: scalars whole, containers as their length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    BigUint(u64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Ext(i8, &'a [u8]),
    Array(u32),
    Map(u32),
}

/// Reads msgpack from a buffer without copying.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn ext(&mut self, len: usize) -> Result<Head<'a>, DecodeError> {
        let kind = self.u8()? as i8;
        Ok(Head::Ext(kind, self.bytes(len)?))
    }

    /// Reads the head of the next value.
    pub fn head(&mut self) -> Result<Head<'a>, DecodeError> {
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => Head::Int(i64::from(marker)),
            0x80..=0x8f => Head::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Str(self.bytes(usize::from(marker & 0x1f))?),
            0xc0 => Head::Nil,
            0xc1 => return Err(DecodeError("reserved marker 0xc1")),
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => {
                let n = self.u8()?;
                Head::Bin(self.bytes(usize::from(n))?)
            }
            0xc5 => {
                let n = self.u16()?;
                Head::Bin(self.bytes(usize::from(n))?)
            }
            0xc6 => {
                let n = self.u32()?;
                Head::Bin(self.bytes(n as usize)?)
            }
            0xc7 => {
                let n = self.u8()?;
                self.ext(usize::from(n))?
            }
            0xc8 => {
                let n = self.u16()?;
                self.ext(usize::from(n))?
            }
            0xc9 => {
                let n = self.u32()?;
                self.ext(n as usize)?
            }
            0xca => Head::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Head::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Head::Int(i64::from(self.u8()?)),
            0xcd => Head::Int(i64::from(self.u16()?)),
            0xce => Head::Int(i64::from(self.u32()?)),
            0xcf => {
                let v = u64::from_be_bytes(self.array()?);
                i64::try_from(v).map_or(Head::BigUint(v), Head::Int)
            }
            0xd0 => Head::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Head::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Head::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Head::Int(i64::from_be_bytes(self.array()?)),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.u8()?;
                Head::Str(self.bytes(usize::from(n))?)
            }
            0xda => {
                let n = self.u16()?;
                Head::Str(self.bytes(usize::from(n))?)
            }
            0xdb => {
                let n = self.u32()?;
                Head::Str(self.bytes(n as usize)?)
            }
            0xdc => Head::Array(u32::from(self.u16()?)),
            0xdd => Head::Array(self.u32()?),
            0xde => Head::Map(u32::from(self.u16()?)),
            0xdf => Head::Map(self.u32()?),
            0xe0..=0xff => Head::Int(i64::from(marker as i8)),
        })
    }

    /// Skips the elements of a container whose head was just read.
    pub fn skip_rest(&mut self, head: Head<'_>, depth: usize) -> Result<(), DecodeError> {
        let items = match head {
            Head::Array(n) => u64::from(n),
            Head::Map(n) => 2 * u64::from(n),
            _ => return Ok(()),
        };
        if depth == 0 {
            return Err(DecodeError("nested too deeply"));
        }
        self.skip_values(items, depth - 1)
    }

    /// Skips one whole value.
    pub fn skip(&mut self) -> Result<(), DecodeError> {
        self.skip_values(1, MAX_DEPTH)
    }

    fn len_at(&self, at: usize, width: usize) -> Result<usize, DecodeError> {
        let b = self
            .buf
            .get(at..at + width)
            .ok_or(DecodeError("truncated"))?;
        Ok(b.iter().fold(0usize, |n, x| (n << 8) | usize::from(*x)))
    }

    /// Skips `n` values working on marker bytes only (this is the hot path of INGEST: most of a
    /// payload is skipped). Containers nest at most `depth` more levels.
    fn skip_values(&mut self, mut n: u64, depth: usize) -> Result<(), DecodeError> {
        while n > 0 {
            n -= 1;
            let m = *self.buf.get(self.pos).ok_or(DecodeError("truncated"))?;
            let p = self.pos + 1;
            // (bytes after the marker, values nested inside)
            let (bytes, nested): (usize, u64) = match m {
                0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
                0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
                0x90..=0x9f => (0, u64::from(m & 0x0f)),
                0xa0..=0xbf => (usize::from(m & 0x1f), 0),
                0xc4 | 0xd9 => (1 + self.len_at(p, 1)?, 0),
                0xc5 | 0xda => (2 + self.len_at(p, 2)?, 0),
                0xc6 | 0xdb => (4 + self.len_at(p, 4)?, 0),
                0xc7 => (2 + self.len_at(p, 1)?, 0),
                0xc8 => (3 + self.len_at(p, 2)?, 0),
                0xc9 => (5 + self.len_at(p, 4)?, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xca | 0xce | 0xd2 => (4, 0),
                0xcb | 0xcf | 0xd3 => (8, 0),
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                0xdc => (2, self.len_at(p, 2)? as u64),
                0xdd => (4, self.len_at(p, 4)? as u64),
                0xde => (2, 2 * self.len_at(p, 2)? as u64),
                0xdf => (4, 2 * self.len_at(p, 4)? as u64),
                0xc1 => return Err(DecodeError("reserved marker 0xc1")),
            };
            let end = p
                .checked_add(bytes)
                .filter(|e| *e <= self.buf.len())
                .ok_or(DecodeError("truncated"))?;
            self.pos = end;
            if nested > 0 {
                if depth == 0 {
                    return Err(DecodeError("nested too deeply"));
                }
                // Each value takes at least a byte, so a lying count ends at the buffer's end.
                self.skip_values(nested, depth - 1)?;
            }
        }
        Ok(())
    }

    /// The bytes read since `start`.
    pub fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    /// The bytes of the next whole value.
    pub fn value(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        self.skip()?;
        Ok(self.since(start))
    }
}

/// The value of `key` in a msgpack map (the last one if repeated, as a Python dict keeps); `None`
/// when the bytes are not a map or the key is absent.
pub fn map_get<'a>(map: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut r = Reader::new(map);
    let Ok(Head::Map(n)) = r.head() else {
        return None;
    };
    let mut found = None;
    for _ in 0..n {
        let k = r.head().ok()?;
        let is_key = matches!(k, Head::Str(s) if s == key.as_bytes());
        r.skip_rest(k, MAX_DEPTH).ok()?;
        let v = r.value().ok()?;
        if is_key {
            found = Some(v);
        }
    }
    found
}

/// rmpv's depth budget for a value nested [`MAX_DEPTH`] deep: it spends two units per
/// container level (and more on a leaf), so its own "depth" is not levels.
pub const RMPV_DEPTH: usize = 2 * (MAX_DEPTH + 4);

/// Decodes one msgpack value (stored bytes are well-formed; anything else reads as nil).
pub fn to_value(bytes: &[u8]) -> Value {
    let mut rd = bytes;
    rmpv::decode::read_value_with_max_depth(&mut rd, RMPV_DEPTH).unwrap_or(Value::Nil)
}

// ----- msgpack writing (into a Vec, which cannot fail) -----

pub fn put_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xc3 } else { 0xc2 });
}

pub fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn put_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_str_bytes(out, s.as_bytes());
}

/// A str whose bytes are known to be UTF-8.
fn put_str_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= usize::from(u8::MAX) {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

pub fn put_array_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub fn put_map_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A JSON value as msgpack (what neko's own producers hand to the plane).
pub fn put_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => put_nil(out),
        J::Bool(b) => put_bool(out, *b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                put_uint(out, u);
            } else if let Some(i) = n.as_i64() {
                put_int(out, i);
            } else {
                put_f64(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        J::String(s) => put_str(out, s),
        J::Array(a) => {
            put_array_len(out, a.len());
            for x in a {
                put_json(out, x);
            }
        }
        J::Object(m) => {
            put_map_len(out, m.len());
            for (k, x) in m {
                put_str(out, k);
                put_json(out, x);
            }
        }
    }
}

/// A JSON request as the msgpack value model the RPC layer works on.
pub fn json_to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(s.into()),
        J::Array(a) => Value::Array(a.into_iter().map(json_to_value).collect()),
        J::Object(m) => Value::Map(
            m.into_iter()
                .map(|(k, x)| (Value::String(k.into()), json_to_value(x)))
                .collect(),
        ),
    }
}

// ----- the JSON view of msgpack -----

/// Serializes msgpack bytes (one whole value) as JSON: `bin`/`ext` as base64 strings, map keys
/// that are not strings as their Python `str()`.
pub struct JsonOf<'a>(pub &'a [u8]);

impl Serialize for JsonOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = Reader::new(self.0);
        match r.head().map_err(S::Error::custom)? {
            Head::Nil => s.serialize_unit(),
            Head::Bool(b) => s.serialize_bool(b),
            Head::Int(i) => s.serialize_i64(i),
            Head::BigUint(u) => s.serialize_u64(u),
            Head::Float(f) => s.serialize_f64(f),
            Head::Str(b) => s.serialize_str(&String::from_utf8_lossy(b)),
            Head::Bin(b) | Head::Ext(_, b) => s.serialize_str(&BASE64.encode(b)),
            Head::Array(n) => {
                let mut seq = s.serialize_seq(Some(n as usize))?;
                for _ in 0..n {
                    let v = r.value().map_err(S::Error::custom)?;
                    seq.serialize_element(&JsonOf(v))?;
                }
                seq.end()
            }
            Head::Map(n) => {
                let mut map = s.serialize_map(Some(n as usize))?;
                for _ in 0..n {
                    let k = r.value().map_err(S::Error::custom)?;
                    let v = r.value().map_err(S::Error::custom)?;
                    map.serialize_entry(&JsonKey(k), &JsonOf(v))?;
                }
                map.end()
            }
        }
    }
}

struct JsonKey<'a>(&'a [u8]);

impl Serialize for JsonKey<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match Reader::new(self.0).head() {
            Ok(Head::Str(b)) => s.serialize_str(&String::from_utf8_lossy(b)),
            _ => s.serialize_str(&py_str(&to_value(self.0))),
        }
    }
}

/// An event as JSON (`light` leaves the payload out, as the reference's light items).
pub struct EventJson<'a> {
    pub event: &'a Event,
    pub light: bool,
}

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let mut map = s.serialize_map(Some(if self.light { 5 } else { 6 }))?;
        map.serialize_entry("seq", &e.seq())?;
        map.serialize_entry("ts", &e.ts())?;
        map.serialize_entry("store", e.store().as_str())?;
        map.serialize_entry("topic", e.topic())?;
        if !self.light {
            map.serialize_entry("payload", &JsonOf(e.payload_msgpack()))?;
        }
        map.serialize_entry("index", &IndexJson(e))?;
        map.end()
    }
}

struct IndexJson<'a>(&'a Event);

impl Serialize for IndexJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("plugin_id", &e.plugin_id())?;
        map.serialize_entry("source", &e.source())?;
        map.serialize_entry("priority", &e.priority())?;
        map.serialize_entry("kind", &e.kind())?;
        map.serialize_entry("type", &e.record_type())?;
        map.serialize_entry("timestamp", &e.timestamp())?;
        map.serialize_entry("id", &e.id())?;
        map.end()
    }
}

/// Writes an event as msgpack; the payload bytes are appended as stored.
pub fn put_event(out: &mut Vec<u8>, e: &Event, light: bool) {
    put_map_len(out, if light { 5 } else { 6 });
    put_str(out, "seq");
    put_uint(out, e.seq());
    put_str(out, "ts");
    put_f64(out, e.ts());
    put_str(out, "store");
    put_str(out, e.store().as_str());
    put_str(out, "topic");
    put_str(out, e.topic());
    if !light {
        put_str(out, "payload");
        out.extend_from_slice(e.payload_msgpack());
    }
    put_str(out, "index");
    put_map_len(out, 7);
    // The index strings as stored: checked to be UTF-8 when the event was indexed.
    let opt = |out: &mut Vec<u8>, key: &str, field: IndexStr| {
        put_str(out, key);
        match e.index_str_bytes(field) {
            Some(s) => put_str_bytes(out, s),
            None => put_nil(out),
        }
    };
    opt(out, "plugin_id", IndexStr::PluginId);
    opt(out, "source", IndexStr::Source);
    put_str(out, "priority");
    put_int(out, e.priority());
    opt(out, "kind", IndexStr::Kind);
    opt(out, "type", IndexStr::Type);
    put_str(out, "timestamp");
    put_f64(out, e.timestamp());
    opt(out, "id", IndexStr::Id);
}

// ----- replies -----

/// An RPC reply (or part of one), written in the request's encoding.
#[derive(Debug, Clone)]
pub enum Doc {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    List(Vec<Doc>),
    Map(Vec<(&'static str, Doc)>),
    /// A JSON value (a record's `args`), written as msgpack or JSON as the rest.
    Json(serde_json::Value),
    Event {
        event: Event,
        light: bool,
    },
    /// A list of events, written straight from the store's answer.
    Events {
        events: Vec<Event>,
        light: bool,
    },
}

impl Doc {
    pub fn str(s: impl Into<String>) -> Self {
        Doc::Str(s.into())
    }

    pub fn opt_str(s: Option<impl Into<String>>) -> Self {
        s.map_or(Doc::Nil, |s| Doc::Str(s.into()))
    }

    /// About the size of the msgpack form, so a reply is written without growing its buffer.
    pub fn size_hint(&self) -> usize {
        match self {
            Doc::Str(s) => s.len() + 5,
            Doc::List(items) => 5 + items.iter().map(Doc::size_hint).sum::<usize>(),
            Doc::Map(entries) => {
                5 + entries
                    .iter()
                    .map(|(k, v)| k.len() + 1 + v.size_hint())
                    .sum::<usize>()
            }
            // The keys, the index and the payload.
            Doc::Event { event, .. } => event_size_hint(event),
            Doc::Events { events, .. } => 5 + events.iter().map(event_size_hint).sum::<usize>(),
            _ => 9,
        }
    }

    pub fn write_msgpack(&self, out: &mut Vec<u8>) {
        match self {
            Doc::Nil => put_nil(out),
            Doc::Bool(b) => put_bool(out, *b),
            Doc::Int(i) => put_int(out, *i),
            Doc::UInt(u) => put_uint(out, *u),
            Doc::Float(f) => put_f64(out, *f),
            Doc::Str(s) => put_str(out, s),
            Doc::Json(v) => put_json(out, v),
            Doc::List(items) => {
                put_array_len(out, items.len());
                for d in items {
                    d.write_msgpack(out);
                }
            }
            Doc::Map(entries) => {
                put_map_len(out, entries.len());
                for (k, d) in entries {
                    put_str(out, k);
                    d.write_msgpack(out);
                }
            }
            Doc::Event { event, light } => put_event(out, event, *light),
            Doc::Events { events, light } => {
                put_array_len(out, events.len());
                for event in events {
                    put_event(out, event, *light);
                }
            }
        }
    }
}

/// The keys, the index and the payload.
fn event_size_hint(event: &Event) -> usize {
    192 + event.topic().len() + event.payload_msgpack().len()
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Nil => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Int(i) => s.serialize_i64(*i),
            Doc::UInt(u) => s.serialize_u64(*u),
            Doc::Float(f) => s.serialize_f64(*f),
            Doc::Str(x) => s.serialize_str(x),
            Doc::Json(v) => v.serialize(s),
            Doc::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for d in items {
                    seq.serialize_element(d)?;
                }
                seq.end()
            }
            Doc::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, d) in entries {
                    map.serialize_entry(k, d)?;
                }
                map.end()
            }
            Doc::Event { event, light } => EventJson {
                event,
                light: *light,
            }
            .serialize(s),
            Doc::Events { events, light } => {
                let mut seq = s.serialize_seq(Some(events.len()))?;
                for event in events {
                    seq.serialize_element(&EventJson {
                        event,
                        light: *light,
                    })?;
                }
                seq.end()
            }
        }
    }
}

// ----- Python coercions -----

/// Python truthiness.
pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Nil => false,
        Value::Boolean(b) => *b,
        Value::Integer(i) => i.as_i64() != Some(0),
        Value::F32(f) => *f != 0.0,
        Value::F64(f) => *f != 0.0,
        Value::String(s) => !s.as_bytes().is_empty(),
        Value::Binary(b) => !b.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Map(m) => !m.is_empty(),
        Value::Ext(..) => true,
    }
}

/// Python `int(v)`, saturated to i64; `None` where Python raises.
pub fn py_int(v: &Value) -> Option<i64> {
    match v {
        Value::Boolean(b) => Some(i64::from(*b)),
        Value::Integer(i) => i.as_i64().or(i.as_u64().map(|_| i64::MAX)),
        Value::F32(f) => float_to_int(f64::from(*f)),
        Value::F64(f) => float_to_int(*f),
        Value::String(s) => s.as_str().and_then(parse_py_int),
        Value::Binary(b) => std::str::from_utf8(b).ok().and_then(parse_py_int),
        _ => None,
    }
}

fn float_to_int(f: f64) -> Option<i64> {
    // `as` saturates, which is what a huge Python int looks like once it has to fit.
    f.is_finite().then(|| f.trunc() as i64)
}

/// Python's `int("...")`: surrounding whitespace, a sign, digits with single underscores between.
pub fn parse_py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut n: i64 = 0;
    for b in digits.bytes().filter(u8::is_ascii_digit) {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    Some(if neg { -n } else { n })
}

/// Python `float(v)`; `None` where Python raises.
pub fn py_float(v: &Value) -> Option<f64> {
    match v {
        Value::Boolean(b) => Some(f64::from(u8::from(*b))),
        Value::Integer(i) => i.as_f64(),
        Value::F32(f) => Some(f64::from(*f)),
        Value::F64(f) => Some(*f),
        Value::String(s) => s.as_str().and_then(parse_py_float),
        Value::Binary(b) => std::str::from_utf8(b).ok().and_then(parse_py_float),
        _ => None,
    }
}

/// Python's `float("...")`: whitespace around, `inf`/`nan` spellings, underscores between digits.
pub fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    let cleaned: std::borrow::Cow<'_, str> = if t.contains('_') {
        t.replace('_', "").into()
    } else {
        t.into()
    };
    cleaned.parse::<f64>().ok()
}

/// Python `repr(float)`: shortest round-trip digits, exponent outside [1e-4, 1e16).
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        // Rust writes `1e20` / `1.5e-7`; Python writes `1e+20` / `1.5e-07`.
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    format!("{f:?}")
}

/// Python `str(v)` (containers approximated by their JSON-like repr).
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => py_repr(v),
    }
}

/// Python `repr(v)`, as `"unsupported protocol version: {v!r}"` shows it.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Nil => "None".into(),
        Value::Boolean(true) => "True".into(),
        Value::Boolean(false) => "False".into(),
        Value::Integer(i) => i.to_string(),
        Value::F32(f) => py_float_repr(f64::from(*f)),
        Value::F64(f) => py_float_repr(*f),
        Value::String(s) => {
            let s = String::from_utf8_lossy(s.as_bytes());
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        }
        Value::Binary(b) => format!("b'{}'", b.escape_ascii()),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(py_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Map(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, x)| format!("{}: {}", py_repr(k), py_repr(x)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Ext(t, d) => format!("ExtType(code={t}, data=b'{}')", d.escape_ascii()),
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Boolean(b) => Some(f64::from(u8::from(*b))),
        Value::Integer(i) => i.as_f64(),
        Value::F32(f) => Some(f64::from(*f)),
        Value::F64(f) => Some(*f),
        _ => None,
    }
}

/// Python `a == b` for decoded values (numbers compare by value, bool as int, dicts unordered).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x == y,
        (Value::String(x), Value::String(y)) => x.as_bytes() == y.as_bytes(),
        (Value::Binary(x), Value::Binary(y)) => x == y,
        (Value::Nil, Value::Nil) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .rev()
                        .find(|(k2, _)| py_eq(k, k2))
                        .is_some_and(|(_, v2)| py_eq(v, v2))
                })
        }
        (Value::Ext(t1, d1), Value::Ext(t2, d2)) => t1 == t2 && d1 == d2,
        _ => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    /// The reader agrees with rmpv on every kind of value, and `value()` spans exactly one.
    #[test]
    fn reader_walks_every_kind_of_value() {
        let v = Value::Map(vec![
            (Value::from("a"), Value::from(-5)),
            (Value::from("b"), Value::from(u64::MAX)),
            (Value::from("c"), Value::F64(1.5)),
            (Value::from("d"), Value::Binary(vec![1, 2, 3])),
            (
                Value::from("e"),
                Value::Array(vec![
                    Value::Nil,
                    Value::from(true),
                    Value::from("x".repeat(40)),
                ]),
            ),
            (Value::from("f"), Value::Ext(3, vec![9; 5])),
            (Value::from(7), Value::F32(0.5)),
        ]);
        let mut bytes = packed(&v);
        bytes.extend_from_slice(&packed(&Value::from(1)));
        let mut r = Reader::new(&bytes);
        let first = r.value().unwrap();
        assert_eq!(first, packed(&v).as_slice());
        assert_eq!(r.head().unwrap(), Head::Int(1));
        let mut big = Reader::new(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(big.head().unwrap(), Head::BigUint(u64::MAX));
        assert!(r.at_end());
        assert_eq!(to_value(first), v);
        assert_eq!(
            map_get(first, "c"),
            Some(packed(&Value::F64(1.5)).as_slice())
        );
        assert_eq!(map_get(first, "zz"), None);
    }

    /// Lying lengths and absurd nesting are errors, never panics or huge allocations.
    #[test]
    fn reader_refuses_truncated_and_too_deep_input() {
        assert!(Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).skip().is_err());
        assert!(
            Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'])
                .skip()
                .is_err()
        );
        assert!(Reader::new(&[0xc1]).skip().is_err());
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert!(Reader::new(&deep).skip().is_err());
    }

    /// The writers produce what rmpv reads back.
    #[test]
    fn writers_round_trip_through_rmpv() {
        for n in [
            0i64,
            5,
            -1,
            -33,
            200,
            -200,
            70_000,
            -70_000,
            5_000_000_000,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_int(&mut out, n);
            assert_eq!(to_value(&out), Value::from(n), "{n}");
        }
        let j =
            serde_json::json!({"a": [1, -2, 2.5, null, true, "s"], "b": {"c": "x".repeat(300)}});
        let mut out = Vec::new();
        put_json(&mut out, &j);
        assert_eq!(serde_json::to_value(JsonOf(&out)).unwrap(), j);
        assert_eq!(to_value(&out), json_to_value(j));
    }

    /// Binary data shows as base64 in JSON.
    #[test]
    fn json_view_encodes_bytes_as_base64() {
        let v = Value::Map(vec![(Value::from("bin"), Value::Binary(b"hi!".to_vec()))]);
        let j = serde_json::to_value(JsonOf(&packed(&v))).unwrap();
        assert_eq!(j, serde_json::json!({"bin": "aGkh"}));
    }

    /// The coercions follow Python's `int()`, `float()`, `str()`, `repr()` and `==`.
    #[test]
    fn python_coercions() {
        assert_eq!(py_int(&Value::from(" 42 ")), Some(42));
        assert_eq!(py_int(&Value::from("-1_000")), Some(-1000));
        assert_eq!(py_int(&Value::from("3.5")), None);
        assert_eq!(py_int(&Value::F64(2.9)), Some(2));
        assert_eq!(py_int(&Value::F64(f64::NAN)), None);
        assert_eq!(py_int(&Value::from(true)), Some(1));
        assert_eq!(py_int(&Value::Nil), None);
        assert_eq!(py_float(&Value::from(" 1e3 ")), Some(1000.0));
        assert!(py_float(&Value::from("nan")).unwrap().is_nan());
        assert_eq!(py_float(&Value::from("x")), None);
        assert_eq!(py_repr(&Value::from(2)), "2");
        assert_eq!(py_repr(&Value::from("2")), "'2'");
        assert_eq!(py_repr(&Value::F64(2.0)), "2.0");
        assert_eq!(py_repr(&Value::F64(1e20)), "1e+20");
        assert_eq!(py_repr(&Value::F64(1.5e-7)), "1.5e-07");
        assert_eq!(py_repr(&Value::Nil), "None");
        assert_eq!(py_str(&Value::from("x")), "x");
        assert!(py_eq(&Value::from(1), &Value::F64(1.0)));
        assert!(py_eq(&Value::from(true), &Value::from(1)));
        assert!(!py_eq(&Value::from("1"), &Value::from(1)));
        assert!(!py_truthy(&Value::from(0)));
        assert!(py_truthy(&Value::from("0")));
    }
}
