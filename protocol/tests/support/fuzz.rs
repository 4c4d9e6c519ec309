//! What the fuzz targets of both crates share: the case budget (`NEKO_FUZZ_CASES`) and byte
//! mutations of valid inputs. Included with `#[path]` by `protocol/tests/fuzz_codec.rs`,
//! `actors/tests/fuzz_message_plane.rs` and `actors/tests/fuzz_manifest.rs`.

#![allow(dead_code)] // each target uses a part

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target: `NEKO_FUZZ_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("NEKO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

pub fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        // Failures are reported with the shrunk input; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Copies a span of the input over another place (duplicates structure).
    Splice(usize, usize, usize),
    /// Writes a msgpack marker that claims a huge length.
    HugeLength(usize, u8),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>;
    prop_oneof![
        (idx(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (idx(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (idx(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        idx().prop_map(Mutation::Truncate),
        (idx(), idx(), 1usize..32).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        (
            idx(),
            prop::sample::select(vec![0xc6u8, 0xc9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf])
        )
            .prop_map(|(i, m)| Mutation::HugeLength(i, m)),
    ]
}

pub fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let len = buf.len();
    let at = |i: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::FlipBit(i, b) if len > 0 => buf[at(*i)] ^= 1 << b,
        Mutation::Set(i, v) if len > 0 => buf[at(*i)] = *v,
        Mutation::Insert(i, bytes) => {
            let i = if len == 0 { 0 } else { i % (len + 1) };
            buf.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete(i, n) if len > 0 => {
            let i = at(*i);
            buf.drain(i..(i + n).min(len));
        }
        Mutation::Truncate(i) => buf.truncate(if len == 0 { 0 } else { i % len }),
        Mutation::Splice(a, b, n) if len > 0 => {
            let (a, b) = (at(*a), at(*b));
            let n = (*n).min(len - a).min(len - b);
            let span: Vec<u8> = buf[a..a + n].to_vec();
            buf[b..b + n].copy_from_slice(&span);
        }
        Mutation::HugeLength(i, marker) => {
            let i = if len == 0 { 0 } else { i % (len + 1) };
            buf.splice(i..i, [*marker, 0xff, 0xff, 0xff, 0xff]);
        }
        _ => {}
    }
}
