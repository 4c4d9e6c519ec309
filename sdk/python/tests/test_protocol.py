"""The codec against protocol/vectors/vectors.json, plus the receiver's checks."""

import json
from pathlib import Path

import msgpack
import pytest

from plugin._runtime.protocol import (
    P2S,
    S2P,
    FrameError,
    Session,
    compute_mac,
    decode_payload,
    open_frames,
    parse_key,
)

VECTORS_PATH = Path(__file__).resolve().parent / "../../../protocol/vectors/vectors.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
KEY = bytes.fromhex(VECTORS["secret_hex"])
LIMIT = 8 * 1024 * 1024


def frames_of(v):
    return [bytes.fromhex(v["mac_hex"]), bytes.fromhex(v["payload_hex"])]


def receiver(direction):
    """A session that receives frames sent in `direction`."""
    return Session(KEY, S2P if direction == P2S else P2S, LIMIT)


def rust_view(envelope):
    """The envelope as the Rust types see it: the payload's body after defaults are applied
    (decoding a msgpack map through this codec's schema)."""
    payload = msgpack.packb(envelope, use_bin_type=True)
    env = decode_payload(payload)
    return {"v": env.v, "seq": env.seq, "kind": env.kind, "body": env.body}


def test_every_kind_has_a_vector():
    kinds = {v["envelope"]["kind"] for v in VECTORS["vectors"]}
    assert kinds == {"hello", "welcome", "trigger", "result", "cancel", "status", "heartbeat", "stop", "request", "response", "batch"}


def test_vectors_decode_in_file_order():
    sessions = {P2S: receiver(P2S), S2P: receiver(S2P)}
    for v in VECTORS["vectors"]:
        env = sessions[v["direction"]].open(frames_of(v))
        # The payload is exactly the documented envelope...
        assert msgpack.unpackb(bytes.fromhex(v["payload_hex"])) == v["envelope"], v["name"]
        # ...and decodes to it (with the Rust defaults filled in).
        assert {"v": env.v, "seq": env.seq, "kind": env.kind, "body": env.body} == rust_view(v["envelope"]), v["name"]
        # Our MAC function produces the vector's MAC.
        assert compute_mac(KEY, v["direction"], bytes.fromhex(v["payload_hex"])).hex() == v["mac_hex"]


@pytest.mark.parametrize("reject", VECTORS["rejects"], ids=lambda r: r["name"])
def test_rejects_are_refused_for_their_reason(reject):
    with pytest.raises(FrameError) as info:
        open_frames(KEY, reject["direction"], frames_of(reject), LIMIT)
    assert info.value.reason == reject["error"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_encoder_output_decodes_back(vector):
    env = vector["envelope"]
    sender = Session(KEY, vector["direction"], LIMIT)
    sender.next_out = env["seq"]
    frames = sender.seal(env["kind"], env["body"])
    decoded = receiver(vector["direction"]).open(frames)
    assert {"v": decoded.v, "seq": decoded.seq, "kind": decoded.kind, "body": decoded.body} == rust_view(env)
    assert sender.next_out == env["seq"] + 1


def test_sequence_numbers_must_grow():
    sender, rx = Session(KEY, S2P, LIMIT), Session(KEY, P2S, LIMIT)
    first = sender.seal("heartbeat", {})
    second = sender.seal("cancel", {"call_id": "x"})
    assert rx.open(second).seq == 2
    with pytest.raises(FrameError) as info:
        rx.open(first)  # older
    assert info.value.reason == "replay"
    with pytest.raises(FrameError) as info:
        rx.open(second)  # replayed
    assert info.value.reason == "replay"
    assert rx.last_in == 2


def test_frame_count_size_and_direction():
    sender = Session(KEY, S2P, LIMIT)
    frames = sender.seal("stop", {"grace_ms": 10})
    with pytest.raises(FrameError) as info:
        open_frames(KEY, S2P, frames[1:], LIMIT)
    assert info.value.reason == "frame_count"
    with pytest.raises(FrameError) as info:
        open_frames(KEY, S2P, frames, len(frames[1]) - 1)
    assert info.value.reason == "too_large"
    with pytest.raises(FrameError) as info:
        open_frames(KEY, P2S, frames, LIMIT)  # an s2p frame offered as p2s
    assert info.value.reason == "bad_mac"


def signed(payload_obj, direction=S2P):
    payload = msgpack.packb(payload_obj, use_bin_type=True)
    return [compute_mac(KEY, direction, payload), payload]


@pytest.mark.parametrize(
    "envelope",
    [
        {"v": 1, "seq": 1, "kind": "launch", "body": {}},  # unknown kind
        {"v": 1, "seq": 1, "kind": "stop", "body": {}},  # missing field
        {"v": 1, "seq": 1, "kind": "stop", "body": {"grace_ms": True}},  # a bool is not a number
        {"v": 1, "seq": 1, "kind": "stop", "body": {"grace_ms": -1}},
        {"v": 1, "seq": 1, "kind": "cancel", "body": {"call_id": b"bytes"}},  # bin is not str
        {"v": 1, "seq": 1, "kind": "trigger", "body": {"call_id": "c", "entry_id": "e", "args": {1: 2}, "timeout_ms": 5}},
        {"v": 1, "seq": 1, "kind": "trigger", "body": {"call_id": "c", "entry_id": "e", "timeout_ms": 5}},  # args required
        {"v": 1, "kind": "heartbeat", "body": {}},
        [1, 1, "heartbeat", {}],
        {"v": 1, "seq": 1, "kind": "batch", "body": {}},  # messages required
        {"v": 1, "seq": 1, "kind": "batch", "body": {"messages": [{"kind": "batch", "body": {"messages": []}}]}},
        {"v": 1, "seq": 1, "kind": "batch", "body": {"messages": [{"kind": "stop", "body": {}}]}},  # an item's fields are checked
        {"v": 1, "seq": 1, "kind": "batch", "body": {"messages": [{"kind": "launch", "body": {}}]}},
        {"v": 1, "seq": 1, "kind": "batch", "body": {"messages": [{"kind": "heartbeat"}]}},
    ],
)
def test_malformed_envelopes_fail_decoding(envelope):
    with pytest.raises(FrameError) as info:
        open_frames(KEY, S2P, signed(envelope), LIMIT)
    assert info.value.reason == "decode"


def test_optional_fields_and_unknown_keys():
    env = open_frames(
        KEY,
        S2P,
        signed({"v": 1, "seq": 3, "kind": "trigger", "extra": 1, "body": {"call_id": "c", "entry_id": "e", "args": {}, "timeout_ms": 0, "run_id": None, "future": [1]}}),
        LIMIT,
    )
    assert env.body == {"call_id": "c", "entry_id": "e", "args": {}, "timeout_ms": 0, "run_id": None, "event_type": None, "caller": None}
    hello = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": {"protocol": 1, "plugin_id": "p", "sdk": "s", "sdk_version": "0.1.0", "pid": 1, "entries": [{"id": "x"}]}}))
    assert hello.body["entries"] == [{"id": "x", "name": "", "description": "", "input_schema": {"type": "object", "properties": {}}, "timeout_ms": None, "kind": "action"}]
    assert hello.body["events"] == []


def test_plugin_to_plugin_fields():
    # PROTOCOL.md §6: TRIGGER's event_type and caller, REQUEST's call_id, HELLO's events.
    trigger = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "trigger", "body": {
        "call_id": "c", "entry_id": "ping", "args": {}, "timeout_ms": 5, "event_type": "game", "caller": "alpha"}}))
    assert (trigger.body["event_type"], trigger.body["caller"]) == ("game", "alpha")
    request = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "request", "body": {
        "request_id": "q", "op": "plugin.call", "args": {}, "call_id": "c-1"}}))
    assert request.body["call_id"] == "c-1"
    assert decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "request", "body": {"request_id": "q", "op": "x"}})).body["call_id"] is None
    hello = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": {
        "protocol": 1, "plugin_id": "p", "sdk": "s", "sdk_version": "0.1.0", "pid": 1,
        "events": [{"event_type": "game", "id": "ping", "extra": 1}]}}))
    assert hello.body["events"] == [{"event_type": "game", "id": "ping"}]
    for bad in ([{"event_type": "game"}], [{"event_type": 1, "id": "x"}], {"event_type": "game", "id": "x"}):
        with pytest.raises(FrameError):
            decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": {
                "protocol": 1, "plugin_id": "p", "sdk": "s", "sdk_version": "0.1.0", "pid": 1, "events": bad}}))


def test_key_parsing():
    assert parse_key("00" * 16) == bytes(16)
    for bad in ("abcd", "zz" * 16, ""):
        with pytest.raises(ValueError) as info:
            parse_key(bad)
        assert bad not in str(info.value) or bad == ""


def test_hello_input_schema_is_optional():
    base = {"protocol": 1, "plugin_id": "p", "sdk": "s", "sdk_version": "0.1.0", "pid": 1}
    hello = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": base}))
    assert hello.body["input_schema"] is None  # absent: the field is optional
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    hello = decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": {**base, "input_schema": schema}}))
    assert hello.body["input_schema"] == schema
    for bad in ("not a map", [1], {1: "int key"}):
        with pytest.raises(FrameError) as info:
            decode_payload(msgpack.packb({"v": 1, "seq": 1, "kind": "hello", "body": {**base, "input_schema": bad}}))
        assert info.value.reason == "decode"


def test_a_batch_carries_messages_in_order_under_one_sequence_number():
    sender, rx = Session(KEY, S2P, LIMIT), Session(KEY, P2S, LIMIT)
    frames = sender.seal_batch([("cancel", {"call_id": "a"}), ("stop", {"grace_ms": 5}), ("response", {"request_id": "q", "ok": True})])
    assert sender.next_out == 2
    env = rx.open(frames)
    assert (env.kind, env.seq) == ("batch", 1)
    assert [(m.kind, m.seq, m.body) for m in env.body["messages"]] == [
        ("cancel", 1, {"call_id": "a"}),
        ("stop", 1, {"grace_ms": 5}),
        ("response", 1, {"request_id": "q", "ok": True, "result": None, "error": None}),
    ]
