//! Reads the parts of a message-plane RPC reply the bench checks (its `req_id`, `ok` and the
//! number of `result.items`) without decoding the items. A client that decoded 100 records per
//! reply would spend more of the machine's two cores than the neko it measures; skipping walks
//! the same bytes, so a truncated or malformed reply still fails.

use anyhow::{Result, bail};
use rmp::Marker;

/// What the bench checks in a reply.
pub struct ReplySummary {
    pub req_id: String,
    pub ok: bool,
    /// Length of `result.items`, if the result has them.
    pub items: Option<usize>,
}

/// Skims a msgpack reply envelope (`{v, req_id, ok, result, error}`).
pub fn skim_reply(frame: &[u8]) -> Result<ReplySummary> {
    let mut cur = Cursor(frame);
    let mut summary = ReplySummary {
        req_id: String::new(),
        ok: false,
        items: None,
    };
    for _ in 0..cur.map_len()? {
        match cur.str()? {
            b"req_id" => summary.req_id = String::from_utf8_lossy(cur.str()?).into_owned(),
            b"ok" => summary.ok = cur.marker()? == Marker::True,
            b"result" if cur.0.first() != Some(&Marker::Null.to_u8()) => {
                for _ in 0..cur.map_len()? {
                    if cur.str()? == b"items" {
                        let n = cur.array_len()?;
                        cur.skip(n)?;
                        summary.items = Some(n);
                    } else {
                        cur.skip(1)?;
                    }
                }
            }
            _ => cur.skip(1)?,
        }
    }
    if !cur.0.is_empty() {
        bail!("{} bytes after the reply", cur.0.len());
    }
    Ok(summary)
}

/// A read position in a msgpack buffer.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("truncated msgpack");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A big-endian length of `bytes` bytes.
    fn len(&mut self, bytes: usize) -> Result<usize> {
        Ok(self
            .take(bytes)?
            .iter()
            .fold(0, |n, b| (n << 8) | usize::from(*b)))
    }

    fn marker(&mut self) -> Result<Marker> {
        Ok(Marker::from_u8(self.take(1)?[0]))
    }

    fn str(&mut self) -> Result<&'a [u8]> {
        let n = match self.marker()? {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len(1)?,
            Marker::Str16 => self.len(2)?,
            Marker::Str32 => self.len(4)?,
            m => bail!("expected a string, found {m:?}"),
        };
        self.take(n)
    }

    fn map_len(&mut self) -> Result<usize> {
        match self.marker()? {
            Marker::FixMap(n) => Ok(usize::from(n)),
            Marker::Map16 => self.len(2),
            Marker::Map32 => self.len(4),
            m => bail!("expected a map, found {m:?}"),
        }
    }

    fn array_len(&mut self) -> Result<usize> {
        match self.marker()? {
            Marker::FixArray(n) => Ok(usize::from(n)),
            Marker::Array16 => self.len(2),
            Marker::Array32 => self.len(4),
            m => bail!("expected an array, found {m:?}"),
        }
    }

    /// Skips `count` values (and everything nested in them).
    fn skip(&mut self, mut count: usize) -> Result<()> {
        while count > 0 {
            count -= 1;
            // Bytes of this value after its header, and values nested in it.
            let (body, nested) = match self.marker()? {
                Marker::Null
                | Marker::True
                | Marker::False
                | Marker::FixPos(_)
                | Marker::FixNeg(_) => (0, 0),
                Marker::U8 | Marker::I8 => (1, 0),
                Marker::U16 | Marker::I16 => (2, 0),
                Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
                Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
                Marker::FixStr(n) => (usize::from(n), 0),
                Marker::Str8 | Marker::Bin8 => (self.len(1)?, 0),
                Marker::Str16 | Marker::Bin16 => (self.len(2)?, 0),
                Marker::Str32 | Marker::Bin32 => (self.len(4)?, 0),
                Marker::FixArray(n) => (0, usize::from(n)),
                Marker::Array16 => (0, self.len(2)?),
                Marker::Array32 => (0, self.len(4)?),
                Marker::FixMap(n) => (0, 2 * usize::from(n)),
                Marker::Map16 => (0, 2 * self.len(2)?),
                Marker::Map32 => (0, 2 * self.len(4)?),
                // An extension's type byte, then its data.
                Marker::FixExt1 => (2, 0),
                Marker::FixExt2 => (3, 0),
                Marker::FixExt4 => (5, 0),
                Marker::FixExt8 => (9, 0),
                Marker::FixExt16 => (17, 0),
                Marker::Ext8 => (self.len(1)? + 1, 0),
                Marker::Ext16 => (self.len(2)? + 1, 0),
                Marker::Ext32 => (self.len(4)? + 1, 0),
                Marker::Reserved => bail!("reserved msgpack marker 0xc1"),
            };
            self.take(body)?;
            count += nested;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_rmp_serde_wrote() {
        let reply = json!({
            "v": 1, "req_id": "r-7", "ok": true, "error": null,
            "result": {"store": "messages", "light": false,
                       "items": [{"seq": 1, "ts": 1.5, "payload": {"text": "héllo", "n": -3}},
                                 {"seq": 70000, "ts": 2.5, "payload": [1, 2, {"deep": [null]}]}]},
        });
        let s = skim_reply(&rmp_serde::to_vec_named(&reply).unwrap()).unwrap();
        assert_eq!((s.req_id.as_str(), s.ok, s.items), ("r-7", true, Some(2)));

        let error = json!({"v": 1, "req_id": "x", "ok": false, "result": null,
                           "error": {"code": "BAD_ARGS", "message": "no"}});
        let s = skim_reply(&rmp_serde::to_vec_named(&error).unwrap()).unwrap();
        assert_eq!((s.ok, s.items), (false, None));
    }

    #[test]
    fn truncated_replies_fail() {
        let reply = json!({"req_id": "r", "ok": true, "result": {"items": [{"a": "bcd"}]}});
        let bytes = rmp_serde::to_vec_named(&reply).unwrap();
        for cut in 0..bytes.len() {
            assert!(skim_reply(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
