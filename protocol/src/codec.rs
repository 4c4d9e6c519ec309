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
    let env: Envelope =
        rmp_serde::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string()))?;
    if env.v != PROTOCOL_VERSION {
        return Err(CodecError::Version(env.v));
    }
    Ok(env)
}

#[cfg(test)]
mod tests;
