//! `Deserialize` for [`Envelope`], by hand.
//!
//! Every sender writes `kind` before `body` (the SDKs and neko itself), so the body is decoded
//! straight into its message type once `kind` is known. A sender that writes `body` first is
//! still understood: its body is read into a `serde_json::Value` and converted when `kind`
//! arrives (every body field is JSON-shaped, so nothing is lost).
//!
//! The messages of a `batch` are maps of the same shape without `v` and `seq`; they are decoded
//! the same way ([`Message`]'s own `Deserialize`), and may not be batches themselves.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, de::IntoDeserializer};
use serde_json::Value;

use crate::message::{Batch, Envelope, Message};

/// Decodes a body of the message `kind` from `d`; `in_batch` when the message is inside a batch.
fn body<'de, D: Deserializer<'de>>(kind: &str, in_batch: bool, d: D) -> Result<Message, D::Error> {
    Ok(match kind {
        "hello" => Message::Hello(Deserialize::deserialize(d)?),
        "welcome" => Message::Welcome(Deserialize::deserialize(d)?),
        "trigger" => Message::Trigger(Deserialize::deserialize(d)?),
        "result" => Message::Result(Deserialize::deserialize(d)?),
        "cancel" => Message::Cancel(Deserialize::deserialize(d)?),
        "status" => Message::Status(Deserialize::deserialize(d)?),
        "heartbeat" => Message::Heartbeat(Deserialize::deserialize(d)?),
        "stop" => Message::Stop(Deserialize::deserialize(d)?),
        "request" => Message::Request(Deserialize::deserialize(d)?),
        "response" => Message::Response(Deserialize::deserialize(d)?),
        "batch" if in_batch => return Err(de::Error::custom("a batch may not hold a batch")),
        "batch" => Message::Batch(Deserialize::deserialize(d)?),
        other => return Err(de::Error::unknown_variant(other, &Message::KINDS)),
    })
}

/// The body of a known kind, as a map value.
struct BodySeed<'k> {
    kind: &'k str,
    in_batch: bool,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Message;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Message, D::Error> {
        body(self.kind, self.in_batch, d)
    }
}

/// The body as it was read before its kind.
enum Body {
    Missing,
    Early(Value),
    Decoded(Message),
}

/// Reads an envelope map, or (`in_batch`) one message of a batch, where `v` and `seq` mean nothing
/// and are skipped.
struct MessageMapVisitor {
    in_batch: bool,
}

/// What a message map held.
struct MessageMap {
    v: Option<u16>,
    seq: Option<u64>,
    msg: Message,
}

impl<'de> Visitor<'de> for MessageMapVisitor {
    type Value = MessageMap;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(if self.in_batch {
            "a message map {kind, body}"
        } else {
            "an envelope map {v, seq, kind, body}"
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageMap, A::Error> {
        let in_batch = self.in_batch;
        let mut v: Option<u16> = None;
        let mut seq: Option<u64> = None;
        let mut kind: Option<String> = None;
        let mut msg = Body::Missing;
        while let Some(key) = map.next_key::<KeyName>()? {
            match key {
                KeyName::V if !in_batch => set(&mut v, map.next_value()?, "v")?,
                KeyName::Seq if !in_batch => set(&mut seq, map.next_value()?, "seq")?,
                KeyName::Kind => set(&mut kind, map.next_value()?, "kind")?,
                KeyName::Body => {
                    if !matches!(msg, Body::Missing) {
                        return Err(de::Error::duplicate_field("body"));
                    }
                    msg = match &kind {
                        Some(k) => {
                            Body::Decoded(map.next_value_seed(BodySeed { kind: k, in_batch })?)
                        }
                        None => Body::Early(map.next_value()?),
                    };
                }
                KeyName::V | KeyName::Seq | KeyName::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        let msg = match msg {
            Body::Missing => return Err(de::Error::missing_field("body")),
            Body::Decoded(m) => m,
            Body::Early(value) => body(&kind, in_batch, value.into_deserializer())
                .map_err(|e: serde_json::Error| de::Error::custom(e))?,
        };
        Ok(MessageMap { v, seq, msg })
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = d.deserialize_map(MessageMapVisitor { in_batch: false })?;
        Ok(Envelope {
            v: map.v.ok_or_else(|| de::Error::missing_field("v"))?,
            seq: map.seq.ok_or_else(|| de::Error::missing_field("seq"))?,
            msg: map.msg,
        })
    }
}

/// One message of a batch: `{kind, body}`.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(d.deserialize_map(MessageMapVisitor { in_batch: true })?.msg)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            messages: Vec<Message>,
        }
        let Fields { messages } = Fields::deserialize(d)?;
        Ok(Batch { messages })
    }
}

fn set<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(name));
    }
    Ok(())
}

/// An envelope key; others are skipped (as the derive did).
enum KeyName {
    V,
    Seq,
    Kind,
    Body,
    Other,
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an envelope key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<KeyName, E> {
                Ok(match key {
                    "v" => KeyName::V,
                    "seq" => KeyName::Seq,
                    "kind" => KeyName::Kind,
                    "body" => KeyName::Body,
                    _ => KeyName::Other,
                })
            }

            fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<KeyName, E> {
                match std::str::from_utf8(key) {
                    Ok(k) => self.visit_str(k),
                    Err(_) => Ok(KeyName::Other),
                }
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CallResult;

    fn sample() -> Envelope {
        Envelope {
            v: 1,
            seq: 7,
            msg: Message::Result(CallResult {
                call_id: "c1".into(),
                ok: true,
                data: serde_json::json!({"x": [1, 2.5, "s", null]}),
                error: None,
            }),
        }
    }

    fn packed(pairs: &[(&str, rmpv::Value)]) -> Vec<u8> {
        let map = rmpv::Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (rmpv::Value::from(*k), v.clone()))
                .collect(),
        );
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &map).unwrap();
        out
    }

    /// Each name in `Message::KINDS` decodes to the message whose `kind()` it is (an empty body
    /// may lack that kind's required fields, but is never an unknown variant).
    #[test]
    fn every_kind_name_decodes_to_its_kind() {
        for kind in Message::KINDS {
            let body = rmpv::Value::Map(vec![]);
            let bytes = packed(&[
                ("v", 1.into()),
                ("seq", 1.into()),
                ("kind", kind.into()),
                ("body", body),
            ]);
            match rmp_serde::from_slice::<Envelope>(&bytes) {
                Ok(env) => assert_eq!(env.msg.kind(), kind),
                Err(e) => assert!(e.to_string().contains("missing field"), "{kind}: {e}"),
            }
        }
    }

    #[test]
    fn roundtrips_in_the_usual_order() {
        let bytes = rmp_serde::to_vec_named(&sample()).unwrap();
        assert_eq!(rmp_serde::from_slice::<Envelope>(&bytes).unwrap(), sample());
    }

    #[test]
    fn body_before_kind_and_unknown_keys_are_understood() {
        let body = rmpv::Value::Map(vec![
            ("call_id".into(), "c1".into()),
            ("ok".into(), true.into()),
            (
                "data".into(),
                rmpv::Value::Map(vec![(
                    "x".into(),
                    rmpv::Value::Array(vec![1.into(), 2.5.into(), "s".into(), rmpv::Value::Nil]),
                )]),
            ),
        ]);
        let bytes = packed(&[
            ("body", body),
            ("extra", rmpv::Value::Array(vec![1.into()])),
            ("seq", 7.into()),
            ("kind", "result".into()),
            ("v", 1.into()),
        ]);
        assert_eq!(rmp_serde::from_slice::<Envelope>(&bytes).unwrap(), sample());
    }

    #[test]
    fn bad_envelopes_are_refused_with_a_reason() {
        let heartbeat = || {
            rmpv::Value::Map(vec![
                ("pid".into(), 1.into()),
                ("loop_lag_ms".into(), 0.into()),
            ])
        };
        let cases: Vec<(Vec<(&str, rmpv::Value)>, &str)> = vec![
            (
                vec![("v", 1.into()), ("seq", 1.into()), ("body", heartbeat())],
                "kind",
            ),
            (
                vec![
                    ("v", 1.into()),
                    ("seq", 1.into()),
                    ("kind", "heartbeat".into()),
                ],
                "body",
            ),
            (
                vec![
                    ("seq", 1.into()),
                    ("kind", "heartbeat".into()),
                    ("body", heartbeat()),
                ],
                "v",
            ),
            (
                vec![
                    ("v", 1.into()),
                    ("seq", 1.into()),
                    ("kind", "nope".into()),
                    ("body", heartbeat()),
                ],
                "unknown variant",
            ),
            (
                vec![
                    ("v", 1.into()),
                    ("v", 1.into()),
                    ("seq", 1.into()),
                    ("kind", "heartbeat".into()),
                    ("body", heartbeat()),
                ],
                "duplicate field",
            ),
            (
                vec![
                    ("v", 1.into()),
                    ("seq", "x".into()),
                    ("kind", "heartbeat".into()),
                    ("body", heartbeat()),
                ],
                "wrong msgpack marker",
            ),
        ];
        for (pairs, wanted) in cases {
            let err = rmp_serde::from_slice::<Envelope>(&packed(&pairs)).unwrap_err();
            assert!(err.to_string().contains(wanted), "{err} (wanted {wanted})");
        }
    }
}
