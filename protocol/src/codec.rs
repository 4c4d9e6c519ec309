//! Signed frames: [`Envelope`] ⇄ the two ZeroMQ frames `[mac, payload]`.
//!
//! - `payload` = the envelope as a msgpack map with named fields.
//! - `mac` = HMAC-SHA256 keyed by the per-launch secret over `direction tag ‖ payload`; the tag
//!   (`p2s` plugin → supervisor, `s2p` supervisor → plugin) stops a frame from being reflected back
//!   to its sender.
//!
//! [`Session::open`] checks, in this order and before any msgpack is parsed: frame count, payload
//! size, MAC (constant time). Only then is the payload decoded, and its version and sequence number
//! checked.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

use crate::PROTOCOL_VERSION;
use crate::message::{Envelope, Message};

type HmacSha256 = Hmac<Sha256>;

/// Length of the MAC frame.
pub const MAC_LEN: usize = 32;

/// Deepest nesting of maps and arrays a payload may have (the envelope itself is one level).
/// Checked before decoding, without recursion: the decoder recurses once per level, and a frame
/// nested hundreds deep would overflow a thread's stack (in a debug build well below the
/// decoder's own limit of 1024). 128 is also serde_json's limit, so every value that passes can
/// be stored as JSON and read back.
pub const MAX_NESTING: usize = 128;

/// Which way a frame travels; part of what the MAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    PluginToSupervisor,
    SupervisorToPlugin,
}

impl Direction {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::PluginToSupervisor => b"p2s",
            Self::SupervisorToPlugin => b"s2p",
        }
    }

    fn reverse(self) -> Self {
        match self {
            Self::PluginToSupervisor => Self::SupervisorToPlugin,
            Self::SupervisorToPlugin => Self::PluginToSupervisor,
        }
    }
}

/// The per-launch secret. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct FrameKey(Vec<u8>);

impl FrameKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Parses the hex form found in `NEKO_PLUGIN_SECRET`.
    pub fn from_hex(hex_key: &str) -> Result<Self, CodecError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| CodecError::BadKey)?;
        if bytes.len() < 16 {
            return Err(CodecError::BadKey);
        }
        Ok(Self(bytes))
    }

    /// The hex form, for the child's environment.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    fn mac(&self, dir: Direction, payload: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(dir.tag());
        mac.update(payload);
        mac
    }
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKey(<redacted>)")
    }
}

/// Why a frame was refused. None of these is fatal to a link: the frame is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("expected 2 frames [mac, payload], got {0}")]
    FrameCount(usize),
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("bad signature (sender does not hold this plugin's secret)")]
    BadMac,
    #[error("undecodable payload: {0}")]
    Decode(String),
    #[error("unsupported protocol version {0}")]
    Version(u16),
    #[error("replayed or reordered frame: seq {got} after {last}")]
    Replay { got: u64, last: u64 },
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("secret must be at least 16 bytes of hex")]
    BadKey,
}

/// One side of a link: signs what it sends, verifies what it receives, tracks both sequence numbers.
#[derive(Debug)]
pub struct Session {
    key: FrameKey,
    outbound: Direction,
    max_frame_bytes: usize,
    next_out: u64,
    last_in: u64,
}

impl Session {
    /// A session that sends in direction `outbound` and receives the reverse.
    pub fn new(key: FrameKey, outbound: Direction, max_frame_bytes: usize) -> Self {
        Self {
            key,
            outbound,
            max_frame_bytes,
            next_out: 1,
            last_in: 0,
        }
    }

    /// Encodes and signs `msg`, consuming the next outbound sequence number.
    pub fn seal(&mut self, msg: Message) -> Result<[Vec<u8>; 2], CodecError> {
        let env = Envelope {
            v: PROTOCOL_VERSION,
            seq: self.next_out,
            msg,
        };
        let frames = seal_envelope(&self.key, self.outbound, &env)?;
        self.next_out += 1;
        Ok(frames)
    }

    /// Seals `msgs`, in order. With `batch` (a peer that announced [`crate::FEATURE_BATCH`]) into
    /// as few frames as the size limit allows: consecutive messages share one `batch` envelope
    /// ([`Message::Batch`]), and a message left alone in its frame is sealed plain. Without it, one
    /// frame per message. A message that could not be encoded is left out and its error returned
    /// beside the frames.
    pub fn seal_many(
        &mut self,
        msgs: Vec<Message>,
        batch: bool,
    ) -> (Vec<[Vec<u8>; 2]>, Vec<CodecError>) {
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        if !batch || msgs.len() == 1 {
            for msg in msgs {
                self.seal_into(msg, &mut frames, &mut errors);
            }
            return (frames, errors);
        }
        // Each message as a `{kind, body}` map, then grouped under the size limit.
        let mut group: Vec<(Message, Vec<u8>)> = Vec::new();
        let mut group_bytes = 0;
        for msg in msgs {
            let item = match rmp_serde::to_vec_named(&msg) {
                Ok(item) => item,
                Err(e) => {
                    errors.push(CodecError::Encode(e.to_string()));
                    continue;
                }
            };
            if !group.is_empty() && group_bytes + item.len() + BATCH_HEAD_MAX > self.max_frame_bytes
            {
                self.seal_group(std::mem::take(&mut group), &mut frames, &mut errors);
                group_bytes = 0;
            }
            group_bytes += item.len();
            group.push((msg, item));
        }
        self.seal_group(group, &mut frames, &mut errors);
        (frames, errors)
    }

    fn seal_into(
        &mut self,
        msg: Message,
        frames: &mut Vec<[Vec<u8>; 2]>,
        errors: &mut Vec<CodecError>,
    ) {
        match self.seal(msg) {
            Ok(f) => frames.push(f),
            Err(e) => errors.push(e),
        }
    }

    fn seal_group(
        &mut self,
        mut group: Vec<(Message, Vec<u8>)>,
        frames: &mut Vec<[Vec<u8>; 2]>,
        errors: &mut Vec<CodecError>,
    ) {
        if group.len() <= 1 {
            if let Some((msg, _)) = group.pop() {
                self.seal_into(msg, frames, errors);
            }
            return;
        }
        let items: usize = group.iter().map(|(_, item)| item.len()).sum();
        let mut payload = Vec::with_capacity(items + BATCH_HEAD_MAX);
        write_batch_head(&mut payload, self.next_out, group.len());
        for (_, item) in &group {
            payload.extend_from_slice(item);
        }
        let mac = self
            .key
            .mac(self.outbound, &payload)
            .finalize()
            .into_bytes()
            .to_vec();
        self.next_out += 1;
        frames.push([mac, payload]);
    }

    /// Verifies and decodes one received message (its frames after any routing identity).
    pub fn open(&mut self, frames: &[&[u8]]) -> Result<Envelope, CodecError> {
        let env = open_envelope(
            &self.key,
            self.outbound.reverse(),
            frames,
            self.max_frame_bytes,
        )?;
        if env.seq <= self.last_in {
            return Err(CodecError::Replay {
                got: env.seq,
                last: self.last_in,
            });
        }
        self.last_in = env.seq;
        Ok(env)
    }
}

/// Room for a batch envelope's head: `{"v": 1, "seq": <u64>, "kind": "batch", "body": {"messages":
/// [<array head>`.
const BATCH_HEAD_MAX: usize = 64;

/// Writes the head of a batch envelope holding `count` messages, whose `{kind, body}` maps follow.
fn write_batch_head(out: &mut Vec<u8>, seq: u64, count: usize) {
    use rmp::encode;
    // Writing to a Vec cannot fail.
    let _ = encode::write_map_len(out, 4);
    let _ = encode::write_str(out, "v");
    let _ = encode::write_uint(out, u64::from(PROTOCOL_VERSION));
    let _ = encode::write_str(out, "seq");
    let _ = encode::write_uint(out, seq);
    let _ = encode::write_str(out, "kind");
    let _ = encode::write_str(out, "batch");
    let _ = encode::write_str(out, "body");
    let _ = encode::write_map_len(out, 1);
    let _ = encode::write_str(out, "messages");
    let _ = encode::write_array_len(out, u32::try_from(count).unwrap_or(u32::MAX));
}

/// Signs an envelope as it is (used by [`Session::seal`] and to write test vectors).
pub fn seal_envelope(
    key: &FrameKey,
    dir: Direction,
    env: &Envelope,
) -> Result<[Vec<u8>; 2], CodecError> {
    let payload = rmp_serde::to_vec_named(env).map_err(|e| CodecError::Encode(e.to_string()))?;
    let mac = key.mac(dir, &payload).finalize().into_bytes().to_vec();
    Ok([mac, payload])
}

/// Checks and decodes one message without sequence tracking.
pub fn open_envelope(
    key: &FrameKey,
    dir: Direction,
    frames: &[&[u8]],
    max_frame_bytes: usize,
) -> Result<Envelope, CodecError> {
    let [mac, payload] = frames else {
        return Err(CodecError::FrameCount(frames.len()));
    };
    if payload.len() > max_frame_bytes {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            limit: max_frame_bytes,
        });
    }
    // `verify_slice` compares in constant time.
    key.mac(dir, payload)
        .verify_slice(mac)
        .map_err(|_| CodecError::BadMac)?;
    check_nesting(payload)?;
    let env: Envelope =
        rmp_serde::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string()))?;
    if env.v != PROTOCOL_VERSION {
        return Err(CodecError::Version(env.v));
    }
    Ok(env)
}

/// Refuses a payload nested deeper than [`MAX_NESTING`]. Walks the msgpack heads iteratively;
/// malformed or truncated bytes pass here and are refused by the decoder.
fn check_nesting(payload: &[u8]) -> Result<(), CodecError> {
    // Values still to read in each open container; the first entry is the top level.
    let mut open: Vec<u64> = vec![1];
    let mut pos = 0;
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        let Some((len, items)) = msgpack_head(payload, pos) else {
            return Ok(());
        };
        pos += len;
        if items > 0 {
            if open.len() > MAX_NESTING {
                return Err(CodecError::Decode(format!(
                    "nested deeper than {MAX_NESTING} levels"
                )));
            }
            open.push(items);
        }
    }
    Ok(())
}

/// The msgpack value starting at `pos`: the bytes of its head and scalar body, and how many
/// values a container holds (map keys and values both count); `None` past the end.
fn msgpack_head(buf: &[u8], pos: usize) -> Option<(usize, u64)> {
    let marker = *buf.get(pos)?;
    let n = |width: usize| -> Option<usize> {
        let bytes = buf.get(pos + 1..pos + 1 + width)?;
        Some(bytes.iter().fold(0, |n, b| (n << 8) | usize::from(*b)))
    };
    let (len, items) = match marker {
        0x80..=0x8f => (1, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => (1, u64::from(marker & 0x0f)),
        0xa0..=0xbf => (1 + usize::from(marker & 0x1f), 0),
        0xc4 | 0xd9 => (2 + n(1)?, 0),
        0xc5 | 0xda => (3 + n(2)?, 0),
        0xc6 | 0xdb => (5 + n(4)?, 0),
        0xc7 => (3 + n(1)?, 0),
        0xc8 => (4 + n(2)?, 0),
        0xc9 => (6 + n(4)?, 0),
        0xcc | 0xd0 => (2, 0),
        0xcd | 0xd1 => (3, 0),
        0xca | 0xce | 0xd2 => (5, 0),
        0xcb | 0xcf | 0xd3 => (9, 0),
        0xd4 => (3, 0),
        0xd5 => (4, 0),
        0xd6 => (6, 0),
        0xd7 => (10, 0),
        0xd8 => (18, 0),
        0xdc => (3, n(2)? as u64),
        0xdd => (5, n(4)? as u64),
        0xde => (3, 2 * n(2)? as u64),
        0xdf => (5, 2 * n(4)? as u64),
        // Fixints, nil, bool, the reserved 0xc1: the marker alone.
        _ => (1, 0),
    };
    (pos.checked_add(len)? <= buf.len()).then_some((len, items))
}

#[cfg(test)]
mod tests;
