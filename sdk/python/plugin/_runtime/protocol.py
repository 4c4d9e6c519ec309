"""The wire codec of neko's plugin protocol v1 (protocol/PROTOCOL.md).

One message = two ZeroMQ frames `[mac, payload]`: `payload` is a msgpack map
`{"v": 1, "seq": n, "kind": "<kind>", "body": {...}}` and `mac` is HMAC-SHA256 keyed by the
launch secret over the direction tag (`p2s` / `s2p`) followed by the payload.

Once both sides announced the `batch` feature (HELLO's and WELCOME's `features`), one payload may
be a `batch` envelope, `{"v": 1, "seq": n, "kind": "batch", "body": {"messages": [{"kind": ...,
"body": {...}}, ...]}}`: several messages under one MAC and one sequence number, to be handled in
order as if each had come alone (a batch never holds a batch).

`Session.open` checks, in order: frame count, size (before decoding), MAC (constant time),
decoding (including the body's field types, as the Rust side's serde types would), version, and
that `seq` grows. Any failure raises `FrameError` with a `reason`; the frame is to be dropped.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from . import codec

PROTOCOL_VERSION = 1
MAC_LEN = 32
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
P2S = "p2s"
S2P = "s2p"
#: The optional feature that allows `batch` frames (announced in HELLO, granted in WELCOME).
FEATURE_BATCH = "batch"

_U16 = (1 << 16) - 1
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


class FrameError(Exception):
    """A frame was refused. `reason` is one of: frame_count, too_large, bad_mac, decode, version,
    replay, encode."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Envelope:
    v: int
    seq: int
    kind: str
    body: dict


def parse_key(secret_hex: str) -> bytes:
    """The launch key from its hex form (at least 16 bytes). ValueError otherwise (without the key)."""
    try:
        key = bytes.fromhex(secret_hex.strip())
    except ValueError:
        raise ValueError("NEKO_PLUGIN_SECRET is not valid hex") from None
    if len(key) < 16:
        raise ValueError("NEKO_PLUGIN_SECRET must be at least 16 bytes of hex")
    return key


def compute_mac(key: bytes, direction: str, payload: bytes) -> bytes:
    return hmac.new(key, direction.encode("ascii") + payload, hashlib.sha256).digest()


# -- body schemas ----------------------------------------------------------------------------
#
# Each kind's body is checked field by field, mirroring the serde types in
# protocol/src/message.rs: a required field must be present; a "default" field may be absent (the
# default is filled in); an "optional" field may be absent or nil. Keys nobody knows are ignored.


class _Bad(Exception):
    pass


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _json_value(value: Any, where: str) -> Any:
    """Checks that `value` is a JSON value as msgpack carries it (no bin, no ext, str keys) and
    returns it as it is: the decoder made it, so there is nothing to copy. msgpack's integers all
    fit the i64/u64 range serde_json takes."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    try:
        _check_json(value, kind, where)
    except RecursionError:
        raise _Bad(f"{where}: nested too deeply") from None
    return value


def _check_json(value: Any, kind: type, where: str) -> None:
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Bad(f"{where}: map key is not a string")
            t = type(v)
            if t not in _JSON_SCALARS:
                _check_json(v, t, where)
    elif kind is list:
        for v in value:
            t = type(v)
            if t not in _JSON_SCALARS:
                _check_json(v, t, where)
    else:
        raise _Bad(f"{where}: {kind.__name__} is not a JSON value")


def _uint(limit: int) -> Callable[[Any, str], int]:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > limit:
            raise _Bad(f"{where}: expected an unsigned integer")
        return value

    return check


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{where}: expected a string")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{where}: expected a bool")
    return value


def _map(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{where}: expected a map")
    return value


REQUIRED = object()
OPTIONAL = object()


def _default_schema() -> dict:
    return {"type": "object", "properties": {}}


def _json_map(value: Any, where: str) -> dict:
    """A JSON object (a msgpack map with string keys and JSON values)."""
    return _json_value(_map(value, where), where)


def _wire_error(value: Any, where: str) -> dict:
    return _fields(_map(value, where), _ERROR_FIELDS, where)


def _entry(value: Any, where: str) -> dict:
    return _fields(_map(value, where), _ENTRY_FIELDS, where)


def _entries(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise _Bad(f"{where}: expected an array")
    return [_entry(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _events(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise _Bad(f"{where}: expected an array")
    return [_fields(_map(v, f"{where}[{i}]"), _EVENT_FIELDS, f"{where}[{i}]") for i, v in enumerate(value)]


def _str_list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{where}: expected an array of strings")
    return value


def _batch_messages(value: Any, where: str) -> list:
    """The messages of a batch as (kind, body) pairs, each body checked as its kind's."""
    if not isinstance(value, list):
        raise _Bad(f"{where}: expected an array")
    out = []
    for i, item in enumerate(value):
        item = _map(item, f"{where}[{i}]")
        kind = item.get("kind")
        if type(kind) is not str or kind not in BODY_FIELDS:
            raise _Bad(f"{where}[{i}]: unknown kind {kind!r}")
        if kind == "batch":
            raise _Bad(f"{where}[{i}]: a batch may not hold a batch")
        if "body" not in item:
            raise _Bad(f"{where}[{i}]: missing field 'body'")
        out.append((kind, _fields(_map(item["body"], kind), BODY_FIELDS[kind], kind)))
    return out


# field name → (checker, presence) where presence is REQUIRED, OPTIONAL or a default factory.
_ERROR_FIELDS = {
    "code": (_str, REQUIRED),
    "message": (_str, REQUIRED),
    "details": (_json_value, OPTIONAL),
}
_ENTRY_FIELDS = {
    "id": (_str, REQUIRED),
    "name": (_str, lambda: ""),
    "description": (_str, lambda: ""),
    "input_schema": (_json_value, _default_schema),
    "timeout_ms": (_uint(_U64), OPTIONAL),
    "kind": (_str, lambda: "action"),
}
#: A custom event in HELLO's `events` (the reference's `@custom_event`).
_EVENT_FIELDS = {
    "event_type": (_str, REQUIRED),
    "id": (_str, REQUIRED),
}
BODY_FIELDS: dict[str, dict] = {
    "hello": {
        "protocol": (_uint(_U16), REQUIRED),
        "plugin_id": (_str, REQUIRED),
        "sdk": (_str, REQUIRED),
        "sdk_version": (_str, REQUIRED),
        "pid": (_uint(_U32), REQUIRED),
        "entries": (_entries, list),
        # The plugin-level input schema (the plugin class's `input_schema`); absent when it has none.
        "input_schema": (_json_map, OPTIONAL),
        # Custom events other plugins may call besides the entries; absent when there are none.
        "events": (_events, list),
        # Optional protocol features this side understands (FEATURE_BATCH).
        "features": (_str_list, list),
    },
    "welcome": {
        "plugin_id": (_str, REQUIRED),
        "heartbeat_interval_ms": (_uint(_U64), REQUIRED),
        # The features of HELLO's list neko will use on this link.
        "features": (_str_list, list),
    },
    "trigger": {
        "call_id": (_str, REQUIRED),
        "entry_id": (_str, REQUIRED),
        "args": (_json_value, REQUIRED),
        "timeout_ms": (_uint(_U64), REQUIRED),
        "run_id": (_str, OPTIONAL),
        # Set when the call is for a custom event (then `entry_id` is the event's id).
        "event_type": (_str, OPTIONAL),
        # The calling plugin, for plugin-to-plugin calls.
        "caller": (_str, OPTIONAL),
    },
    "result": {
        "call_id": (_str, REQUIRED),
        "ok": (_bool, REQUIRED),
        "data": (_json_value, lambda: None),
        "error": (_wire_error, OPTIONAL),
    },
    "cancel": {"call_id": (_str, REQUIRED)},
    "status": {"status": (_json_value, REQUIRED)},
    "heartbeat": {},
    "stop": {"grace_ms": (_uint(_U64), REQUIRED)},
    "request": {
        "request_id": (_str, REQUIRED),
        "op": (_str, REQUIRED),
        "args": (_json_value, lambda: None),
        # The TRIGGER whose handler sends the request; absent outside handlers.
        "call_id": (_str, OPTIONAL),
    },
    "response": {
        "request_id": (_str, REQUIRED),
        "ok": (_bool, REQUIRED),
        "result": (_json_value, lambda: None),
        "error": (_wire_error, OPTIONAL),
    },
    # `messages` is decoded to [(kind, body)]; `decode_payload` makes them envelopes.
    "batch": {"messages": (_batch_messages, REQUIRED)},
}

#: Which side sends which kind.
P2S_KINDS = frozenset({"hello", "result", "status", "heartbeat", "request", "batch"})
S2P_KINDS = frozenset({"welcome", "trigger", "cancel", "stop", "response", "batch"})


#: (schema, where) → the schema's fields with their paths for messages, made once (a frame's fields
#: are checked without formatting a path for each).
_FIELD_PLANS: dict[tuple[int, str], list] = {}
_FIELD_PLANS_MAX = 4096


def _plan(schema: dict, where: str) -> list:
    key = (id(schema), where)
    plan = _FIELD_PLANS.get(key)
    if plan is None:
        plan = [(name, check, presence, f"{where}.{name}") for name, (check, presence) in schema.items()]
        if len(_FIELD_PLANS) >= _FIELD_PLANS_MAX:
            _FIELD_PLANS.clear()
        _FIELD_PLANS[key] = plan
    return plan


def _fields(raw: dict, schema: dict, where: str) -> dict:
    out: dict = {}
    for name, check, presence, path in _plan(schema, where):
        if name not in raw:
            if presence is REQUIRED:
                raise _Bad(f"{where}: missing field '{name}'")
            out[name] = None if presence is OPTIONAL else presence()
            continue
        value = raw[name]
        if value is None and presence is OPTIONAL:
            out[name] = None
            continue
        if check is _str and type(value) is str:  # the most common field, checked inline
            out[name] = value
            continue
        out[name] = check(value, path)
    return out


def decode_payload(payload: bytes) -> Envelope:
    """Decodes and type-checks an envelope (no MAC, version or sequence checks)."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise FrameError("decode", f"not msgpack: {type(exc).__name__}") from None
    try:
        top = _map(raw, "envelope")
        for k in top:
            if not isinstance(k, str):
                raise _Bad("envelope: map key is not a string")
        v = _check_u16(top["v"] if "v" in top else _missing("v"), "v")
        seq = _check_u64(top["seq"] if "seq" in top else _missing("seq"), "seq")
        kind = _str(top["kind"] if "kind" in top else _missing("kind"), "kind")
        if kind not in BODY_FIELDS:
            raise _Bad(f"unknown kind '{kind}'")
        body_raw = top.get("body", _MISSING)
        if body_raw is _MISSING:
            raise _Bad("missing field 'body'")
        body = _fields(_map(body_raw, "body"), BODY_FIELDS[kind], kind)
    except _Bad as exc:
        raise FrameError("decode", str(exc)) from None
    if kind == "batch":
        body["messages"] = [Envelope(v, seq, k, b) for k, b in body["messages"]]
    return Envelope(v=v, seq=seq, kind=kind, body=body)


_MISSING = object()
_check_u16 = _uint(_U16)
_check_u64 = _uint(_U64)


def _missing(name: str) -> Any:
    raise _Bad(f"missing field '{name}'")


def encode_payload(v: int, seq: int, kind: str, body: dict) -> bytes:
    try:
        return codec.packb({"v": v, "seq": seq, "kind": kind, "body": body})
    except Exception as exc:
        raise FrameError("encode", f"{type(exc).__name__}: {exc}") from None


def open_frames(key: bytes, direction: str, frames: list, max_frame_bytes: int) -> Envelope:
    """Checks one received message (frames after any routing identity) sent in `direction`."""
    return _open_frames(lambda payload: compute_mac(key, direction, payload), frames, max_frame_bytes)


def _open_frames(mac_of: Callable[[bytes], bytes], frames: list, max_frame_bytes: int) -> Envelope:
    if len(frames) != 2:
        raise FrameError("frame_count", f"expected 2 frames [mac, payload], got {len(frames)}")
    mac, payload = bytes(frames[0]), bytes(frames[1])
    if len(payload) > max_frame_bytes:
        raise FrameError("too_large", f"payload of {len(payload)} bytes exceeds the limit of {max_frame_bytes}")
    if not hmac.compare_digest(mac_of(payload), mac):
        raise FrameError("bad_mac", "bad signature (sender does not hold this plugin's secret)")
    env = decode_payload(payload)
    if env.v != PROTOCOL_VERSION:
        raise FrameError("version", f"unsupported protocol version {env.v}")
    return env


def _mac_function(key: bytes, direction: str) -> Callable[[bytes], bytes]:
    """`compute_mac(key, direction, ·)`, from an HMAC already keyed and fed the direction tag (the
    key schedule and the tag are done once per session instead of once per frame)."""
    base = hmac.new(key, direction.encode("ascii"), hashlib.sha256)
    # OpenSSL's HMAC object behind the `hmac` module's Python wrapper, when there is one: three
    # method calls per frame without the wrapper's own layer.
    inner = getattr(base, "_hmac", None)
    if not all(callable(getattr(inner, name, None)) for name in ("copy", "update", "digest")):
        inner = base

    def mac_of(payload: bytes) -> bytes:
        mac = inner.copy()
        mac.update(payload)
        return mac.digest()

    return mac_of


class Session:
    """One side of a link: signs what it sends (`outbound` direction), verifies what it receives,
    and keeps both sequence numbers. Not thread-safe: one task owns it."""

    def __init__(self, key: bytes, outbound: str = P2S, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        if outbound not in (P2S, S2P):
            raise ValueError("outbound must be 'p2s' or 's2p'")
        self._key = key
        self.outbound = outbound
        self.inbound = S2P if outbound == P2S else P2S
        self.max_frame_bytes = max_frame_bytes
        self.next_out = 1
        self.last_in = 0
        self._mac_out = _mac_function(key, self.outbound)
        self._mac_in = _mac_function(key, self.inbound)

    def seal(self, kind: str, body: dict) -> list[bytes]:
        """Encodes and signs a message, consuming the next sequence number."""
        payload = encode_payload(PROTOCOL_VERSION, self.next_out, kind, body)
        self.next_out += 1
        return [self._mac_out(payload), payload]

    def seal_batch(self, messages: list) -> list[bytes]:
        """Encodes and signs [(kind, body), ...] as one `batch` message (for a peer that granted
        FEATURE_BATCH), consuming one sequence number."""
        items = [{"kind": kind, "body": body} for kind, body in messages]
        return self.seal("batch", {"messages": items})

    def open(self, frames: list) -> Envelope:
        env = _open_frames(self._mac_in, frames, self.max_frame_bytes)
        if env.seq <= self.last_in:
            raise FrameError("replay", f"replayed or reordered frame: seq {env.seq} after {self.last_in}")
        self.last_in = env.seq
        return env


__all__ = [
    "PROTOCOL_VERSION",
    "MAC_LEN",
    "DEFAULT_MAX_FRAME_BYTES",
    "P2S",
    "S2P",
    "FEATURE_BATCH",
    "FrameError",
    "Envelope",
    "Session",
    "parse_key",
    "compute_mac",
    "decode_payload",
    "encode_payload",
    "open_frames",
    "BODY_FIELDS",
    "P2S_KINDS",
    "S2P_KINDS",
]
