"""push_message, the ctx.bus clients, BusList and watchers against a fake message plane."""

import concurrent.futures
import re
import threading
import time

import msgpack
import pytest

from fake_message_plane import FakeMessagePlane
from plugin._runtime import scope
from plugin._runtime.context import PluginContext
from plugin._runtime.message_plane import MessagePlaneConfig
from plugin.sdk.bus import (
    BusFilter,
    BusFilterError,
    EventList,
    MessageList,
    MessageRecord,
    NonReplayableTraceError,
)
from plugin.sdk.logger import PluginLogger

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class NoLink:
    def post(self, kind, body, cork=False):
        return True

    def start_request(self, op, args):
        raise AssertionError(f"the supervisor link was used for {op}")

    def forget(self, request_id):
        pass


def wait_until(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture
def plane():
    fake = FakeMessagePlane()
    yield fake
    fake.close()


def make_ctx(env, plugin_id="demo", config_path=None):
    lines = []
    logger = PluginLogger("test").bind(plugin_id=plugin_id)
    logger.remove()
    logger.add(lines.append, level="DEBUG")
    config = MessagePlaneConfig.from_environ(env)
    ctx = PluginContext(plugin_id, config_path, logger, NoLink(), message_plane_config=config)
    ctx.log_lines = lines
    return ctx


@pytest.fixture
def ctx(plane):
    c = make_ctx(plane.env())
    yield c
    c.close()


def last_request(plane, op=None):
    reqs = [r for r in plane.requests if op is None or r["op"] == op]
    return reqs[-1]


# -- push_message ----------------------------------------------------------------------------------


def test_push_message_normal_payload_and_receipt(plane, ctx):
    """One delta_batch per call, the reference's payload, a receipt with a uuid4 id."""
    receipt = ctx.push_message("chat", "text", description="d", priority=3, content="hi", binary_data=bytearray(b"\x00\x01"), metadata={"k": 1})
    assert receipt["submitted"] is True and receipt["reason"] is None
    assert UUID_RE.match(receipt["message_id"])
    frame = wait_until(lambda: plane.frames and plane.frames[0])
    assert set(frame) == {"v", "kind", "from", "ts", "batch_id", "items"}
    assert (frame["v"], frame["kind"], frame["from"]) == (1, "delta_batch", "demo")
    assert isinstance(frame["ts"], float) and UUID_RE.match(frame["batch_id"])
    [item] = frame["items"]
    assert (item["store"], item["topic"]) == ("messages", "all")
    payload = item["payload"]
    assert set(payload) == {"type", "message_id", "plugin_id", "source", "description", "priority", "message_type", "content", "binary_data", "binary_url", "metadata", "unsafe", "time"}
    assert payload["type"] == "MESSAGE_PUSH" and payload["message_id"] == receipt["message_id"]
    assert (payload["plugin_id"], payload["source"], payload["message_type"], payload["description"]) == ("demo", "chat", "text", "d")
    assert (payload["priority"], payload["content"], payload["binary_url"], payload["unsafe"]) == (3, "hi", None, False)
    assert payload["binary_data"] == b"\x00\x01"  # msgpack bin
    assert payload["metadata"] == {"k": 1}
    assert isinstance(payload["time"], str) and payload["time"].endswith("Z")
    ctx.push_message("chat", "text")
    wait_until(lambda: len(plane.frames) == 2)
    assert plane.frames[1]["items"][0]["payload"]["metadata"] == {}
    assert ctx.message_stats()["normal"]["sent"] == 2


def test_push_message_timeout_is_a_receipt_not_an_exception(plane):
    # An ingest endpoint nobody reads: ZeroMQ queues 1000 frames, then the send times out.
    ctx = make_ctx({**plane.env(), "NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT": "tcp://127.0.0.1:1", "NEKO_MESSAGE_PLANE_INGEST_SNDTIMEO_MS": "20"})
    try:
        for _ in range(2000):
            receipt = ctx.push_message("s", "text", content="x")
            if not receipt["submitted"]:
                break
        assert receipt["reason"] == "timeout" and UUID_RE.match(receipt["message_id"])
        assert ctx.message_stats()["normal"]["timeouts"] == 1
        assert any("did not accept a push" in line for line in ctx.log_lines)
    finally:
        ctx.close()


def test_push_message_refuses_oversized_and_unpackable_payloads(ctx):
    receipt = ctx.push_message("s", "binary", binary_data=b"x" * (256 * 1024 + 1))
    assert receipt["submitted"] is False and receipt["reason"] == "payload_too_large"
    assert ctx.message_stats()["payload_too_large"] == 1
    with pytest.raises(TypeError):
        ctx.push_message("s", "text", content=object())


def test_fast_mode_flushes_by_count_then_by_time(plane):
    ctx = make_ctx({**plane.env(), "NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS": "400"})
    try:
        start = time.monotonic()
        receipts = [ctx.push_message("s", "text", content=str(i), fast_mode=True) for i in range(600)]
        assert all(r["submitted"] and r["reason"] is None for r in receipts)
        assert [r["message_id"] for r in receipts[:3]] == ["demo:1", "demo:2", "demo:3"]
        # Two full batches leave at once...
        wait_until(lambda: len(plane.frames) >= 2, timeout=0.35)
        assert [len(f["items"]) for f in plane.frames[:2]] == [256, 256]
        # ...the rest when the oldest has waited the flush interval.
        wait_until(lambda: len(plane.frames) >= 3, timeout=3)
        assert len(plane.frames[2]["items"]) == 88 and time.monotonic() - start >= 0.35
        payloads = plane.pushed_payloads()
        assert [p["content"] for p in payloads] == [str(i) for i in range(600)]
        assert isinstance(payloads[0]["time"], float) and payloads[0]["metadata"] == {}
        stats = ctx.message_stats()["fast"]
        assert (stats["accepted"], stats["sent"], stats["batches"], stats["rejected"]) == (600, 600, 3, 0)
    finally:
        ctx.close()


def test_fast_mode_time_flush_and_close_flushes(plane, ctx):
    ctx.push_message("s", "text", content="a", fast_mode=True)
    ctx.push_message("s", "text", content="b", fast_mode=True)
    wait_until(lambda: len(plane.pushed_payloads()) == 2, timeout=1.0)  # 5 ms interval
    assert [p["content"] for p in plane.pushed_payloads()] == ["a", "b"]
    # close() sends what is still queued.
    other = make_ctx({**plane.env(), "NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS": "60000"})
    other.push_message("s", "text", content="late", fast_mode=True)
    other.close()
    wait_until(lambda: any(p["content"] == "late" for p in plane.pushed_payloads()))
    assert other._plane.stats()["fast"]["dropped"] == 0


def test_fast_mode_flood_drops_are_counted_and_never_raise(plane):
    env = {**plane.env(), "NEKO_MESSAGE_PLANE_PUSH_BATCHER_MAX_QUEUE": "100", "NEKO_PLUGIN_ZMQ_MESSAGE_PUSH_FLUSH_INTERVAL_MS": "50"}
    ctx = make_ctx(env)
    try:
        receipts = [ctx.push_message("s", "text", content=i, fast_mode=True) for i in range(5000)]
        rejected = [r for r in receipts if not r["submitted"]]
        assert rejected and all(r["reason"] == "backpressure" for r in rejected)
        stats = ctx.message_stats()["fast"]
        assert stats["rejected"] == len(rejected) and stats["accepted"] + stats["rejected"] == 5000
        assert stats["reject_at"] == 90
        warnings = [line for line in ctx.log_lines if "message_plane backpressure: rejected push_message.fast (x" in line]
        assert len(warnings) == 1  # at most once a second
        wait_until(lambda: len(plane.pushed_payloads()) == stats["accepted"])
    finally:
        ctx.close()


def test_push_from_background_threads(plane, ctx):
    def worker(n):
        out = [ctx.push_message("t", "text", content=f"{n}-{i}") for i in range(20)]
        out += [ctx.push_message("t", "text", content=f"{n}-f{i}", fast_mode=True) for i in range(20)]
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        receipts = [r for rs in pool.map(worker, range(4)) for r in rs]
    assert all(r["submitted"] for r in receipts)
    wait_until(lambda: len(plane.pushed_payloads()) == 160)
    assert len({p["message_id"] for p in plane.pushed_payloads()}) == 160


def test_push_message_async(plane, ctx):
    import asyncio

    async def main():
        a = await ctx.push_message_async("s", "text", content="async")
        b = await ctx.push_message_async("s", "text", content="fast", fast_mode=True)
        return a, b

    a, b = asyncio.run(main())
    assert a["submitted"] and b["submitted"] and b["message_id"] == "demo:1"
    wait_until(lambda: len(plane.pushed_payloads()) == 2)


def test_without_endpoints_features_say_so():
    ctx = make_ctx({})
    try:
        with pytest.raises(RuntimeError, match="message_plane is not available for push_message"):
            ctx.push_message("s", "text")
        with pytest.raises(RuntimeError, match="message_plane is not available for ctx.bus.messages.get"):
            ctx.bus.messages.get()
        with pytest.raises(RuntimeError, match="message_plane is not available for ctx.bus.events.delete"):
            ctx.bus.events.delete("x")
        lst = MessageList([], ctx=ctx, plan=None)
        with pytest.raises(NonReplayableTraceError):
            lst.reload()
    finally:
        ctx.close()


# -- RPC reads ---------------------------------------------------------------------------------------


def test_messages_get_sends_the_reference_envelopes(plane, ctx):
    plane.publish("messages", "all", {"type": "MESSAGE_PUSH", "message_id": "m1", "plugin_id": "a", "source": "chat", "priority": 1, "message_type": "text", "content": "one", "time": 100.0, "metadata": {"x": 1}})
    plane.publish("messages", "all", {"type": "MESSAGE_PUSH", "message_id": "m2", "plugin_id": "b", "source": "chat", "priority": 5, "message_type": "url", "content": "two", "time": "2026-01-01T00:00:00Z"})
    plane.publish("messages", "all", {"type": "MESSAGE_PUSH", "message_id": "m3", "plugin_id": "a", "source": "news", "priority": 9, "message_type": "text", "content": "three", "time": 300.0})

    lst = ctx.bus.messages.get()
    assert last_request(plane) == {
        "v": 1,
        "op": "bus.get_recent",
        "req_id": "demo:1",
        "args": {"store": "messages", "topic": "all", "limit": 50, "light": False},
        "from_plugin": "demo",
    }
    assert isinstance(lst, MessageList) and [r.message_id for r in lst] == ["m1", "m2", "m3"]  # oldest first
    first = lst[0]
    assert isinstance(first, MessageRecord)
    assert (first.kind, first.type, first.plugin_id, first.source, first.priority, first.content) == ("message", "text", "a", "chat", 1, "one")
    assert (first.message_type, first.timestamp, first.metadata, first.seq) == ("text", 100.0, {"x": 1}, 1)
    assert first.raw["message_id"] == "m1" and first.index["id"] == "m1"
    assert lst.plugin_id == "demo"  # the reference's "effective plugin id"

    lst = ctx.bus.messages.get(source="chat", priority_min=2, max_count=10)
    assert last_request(plane)["op"] == "bus.query"
    assert last_request(plane)["args"] == {
        "store": "messages",
        "topic": "all",
        "limit": 10,
        "plugin_id": None,
        "source": "chat",
        "priority_min": 2,
        "since_ts": None,
        "light": False,
    }
    assert [r.message_id for r in lst] == ["m2"]
    assert last_request(plane)["req_id"] == "demo:2"

    lst = ctx.bus.messages.get(plugin_id="a", filter={"until_ts": 1e12, "source_re": "^ne"})
    assert last_request(plane)["args"] == {
        "store": "messages", "topic": "all", "limit": 50, "plugin_id": "a", "source": None,
        "priority_min": None, "since_ts": None, "light": False, "until_ts": 1e12,
    }
    assert [r.message_id for r in lst] == ["m3"]  # newest first from the query; the regex applied here
    # A get node replays without until_ts (§9.3), so it travels in the filter step after the get.
    tree = lst.trace_tree_dump()
    assert (tree["kind"], tree["op"], tree["params"]) == ("unary", "filter", {"source_re": "^ne", "until_ts": 1e12, "strict": True})
    assert tree["child"]["params"] == {"bus": "messages", "params": {"max_count": 50, "plugin_id": "a", "topic": "all"}}

    with pytest.raises(BusFilterError, match="unknown filter field"):
        ctx.bus.messages.get(filter={"nope": 1})

    light = ctx.bus.messages.get(raw=True, max_count=2)
    assert last_request(plane)["args"] == {"store": "messages", "topic": "all", "limit": 2, "light": True}
    assert [r.message_id for r in light] == ["m2", "m3"] and light[0].content is None
    with pytest.raises(NonReplayableTraceError):
        light.reload()

    # The reference's message-plane read: `get` with keyword arguments and a topic.
    mp = ctx.bus.messages.get_message_plane(max_count=5, topic="all")
    assert last_request(plane)["args"] == {"store": "messages", "topic": "all", "limit": 5, "light": False}
    assert [r.message_id for r in mp] == ["m1", "m2", "m3"]
    mp = ctx.bus.messages.get_message_plane(plugin_id="b", topic="other")
    assert last_request(plane)["op"] == "bus.query" and last_request(plane)["args"]["topic"] == "other"

    every = ctx.bus.messages.get_message_plane_all(page_limit=2, priority_min=1)
    since = [r for r in plane.requests if r["op"] == "bus.get_since"]
    assert [r["args"] for r in since] == [
        {"store": "messages", "topic": "*", "after_seq": 0, "limit": 2},
        {"store": "messages", "topic": "*", "after_seq": 2, "limit": 2},
    ]
    assert [r.message_id for r in every] == ["m1", "m2", "m3"]


def test_events_lifecycle_memory_and_deletes(plane, ctx, tmp_path, monkeypatch):
    plane.publish("events", "all", {"type": "plugin_triggered", "event_id": "e1", "plugin_id": "p", "entry_id": "run", "args": {"a": 1}})
    plane.publish("lifecycle", "all", {"type": "plugin_started", "lifecycle_id": "l1", "plugin_id": "p"})
    plane.publish("memory", "bucket-1", {"bucket_id": "bucket-1", "content": "remember"})

    events = ctx.bus.events.get()
    assert last_request(plane)["args"] == {"store": "events", "topic": "all", "limit": 50, "light": False}
    assert isinstance(events, EventList)
    assert (events[0].event_id, events[0].entry_id, events[0].args, events[0].kind, events[0].type) == ("e1", "run", {"a": 1}, "event", "plugin_triggered")
    ctx.bus.events.get(plugin_id="p", since_ts=1.0, filter={"type": "plugin_triggered"})
    assert last_request(plane) ["op"] == "bus.query"
    assert last_request(plane)["args"] == {"store": "events", "topic": "all", "limit": 50, "light": False, "since_ts": 1.0, "plugin_id": "p", "type": "plugin_triggered"}

    life = ctx.bus.lifecycle.get(max_count=5)
    assert last_request(plane)["args"] == {"store": "lifecycle", "topic": "all", "limit": 5, "light": False}
    assert life[0].lifecycle_id == "l1"

    mem = ctx.bus.memory.get("bucket-1")
    assert last_request(plane)["args"] == {"store": "memory", "topic": "bucket-1", "limit": 20, "light": False}
    assert [r.content for r in mem] == ["remember"] and mem[0].bucket_id == "bucket-1" and mem.bucket_id == "bucket-1"

    assert ctx.bus.events.delete("e1") is True
    assert last_request(plane)["op"] == "bus.delete" and last_request(plane)["args"] == {"store": "events", "id": "e1"}
    assert ctx.bus.events.delete("e1") is False
    assert ctx.bus.lifecycle.delete("l1") is True
    with pytest.raises(ValueError):
        ctx.bus.events.delete("")

    # A1: these calls are checked inside handlers; messages.get is not.
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "reject")
    token = scope.handler_label.set("plugin_entry.x")
    try:
        sent = len(plane.requests)
        for call, name in [
            (lambda: ctx.bus.events.get(), "bus.events.get"),
            (lambda: ctx.bus.events.delete("x"), "bus.events.delete"),
            (lambda: ctx.bus.lifecycle.get(), "bus.lifecycle.get"),
            (lambda: ctx.bus.lifecycle.delete("x"), "bus.lifecycle.delete"),
            (lambda: ctx.bus.memory.get("b"), "bus.memory.get"),
        ]:
            with pytest.raises(RuntimeError, match=re.escape(f"Sync call '{name}' invoked inside handler (plugin_entry.x)")):
                call()
        assert len(plane.requests) == sent  # refused before anything was sent
        ctx.bus.messages.get()
        ctx.push_message("s", "text")
    finally:
        scope.handler_label.reset(token)


def test_rpc_timeout_and_error(plane, ctx):
    plane.mute = True
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"message_plane bus.get_recent timed out after 0.2s"):
        ctx.bus.messages.get(timeout=0.2)
    assert time.monotonic() - start < 2
    plane.mute = False
    # The late reply to the timed-out request is skipped; the next call gets its own.
    plane.publish("messages", "all", {"message_id": "late"})
    assert [r.message_id for r in ctx.bus.messages.get()] == ["late"]
    plane.handlers["bus.get_recent"] = lambda args: (_ for _ in ()).throw(ValueError("invalid store"))
    with pytest.raises(RuntimeError, match="invalid store") as info:
        ctx.bus.messages.get()
    assert info.value.code == "ERR"


def test_rpc_from_many_threads(plane, ctx):
    for i in range(5):
        plane.publish("messages", "all", {"message_id": f"m{i}"})

    def read(_):
        return [r.message_id for r in ctx.bus.messages.get()]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(40)))
    assert all(r == [f"m{i}" for i in range(5)] for r in results)
    req_ids = [r["req_id"] for r in plane.requests]
    assert len(set(req_ids)) == 40 and all(rid.startswith("demo:") for rid in req_ids)


# -- BusList ---------------------------------------------------------------------------------------------


def rec(mid, *, source="s", priority=0, ts=0.0, plugin_id="p", content="", seq=None):
    return MessageRecord(kind="message", type="text", timestamp=ts, plugin_id=plugin_id, source=source, priority=priority, content=content, raw={"message_id": mid, "n": priority}, seq=seq, message_id=mid)


def test_records_from_events_equal_the_constructor_built_ones():
    """The fast record builder fills every field as the dataclass constructor would, for every
    record class and for payloads missing fields, with odd types or without an index."""
    import dataclasses

    from plugin.sdk.bus.types import EventRecord, LifecycleRecord, MemoryRecord

    payloads = [
        {"type": "MESSAGE_PUSH", "message_id": "m1", "plugin_id": "p", "source": "s", "priority": 3,
         "message_type": "text", "content": "hi", "metadata": {"k": 1}, "time": 12.5, "description": "d"},
        {"kind": "event", "event_id": "e1", "entry_id": "run", "args": {"a": 1}, "priority": "7", "timestamp": "1970-01-01T00:00:10Z"},
        {"lifecycle_id": "l1", "trace_id": "t", "metadata": "not a dict", "priority": None},
        {"bucket_id": "b", "content": [1, 2]},
        {},
    ]
    indexes = [
        {"plugin_id": "p", "source": "s", "priority": 3, "kind": None, "type": "MESSAGE_PUSH", "timestamp": 12.5, "id": "m1"},
        {"timestamp": 3},
        {"id": "x", "type": "T"},
        None,
    ]
    for cls in (MessageRecord, EventRecord, LifecycleRecord, MemoryRecord):
        for payload in payloads:
            for index in indexes:
                event = {"seq": 5, "ts": 99.0, "store": "s", "topic": "all", "payload": dict(payload), "index": index and dict(index)}
                fast = cls.from_event(event)
                built = cls(**{f.name: getattr(fast, f.name) for f in dataclasses.fields(cls)})
                assert fast == built and repr(fast) == repr(built)
                assert fast.__dict__.keys() == built.__dict__.keys()
                assert fast == cls.from_raw(payload, seq=5, index=index, event_ts=99.0)
                with pytest.raises(dataclasses.FrozenInstanceError):
                    fast.kind = "x"  # type: ignore[misc]
    light = MessageRecord.from_event({"seq": 1, "ts": 2.0, "index": {"kind": "k", "timestamp": 2.0}})
    assert light.raw == {"index": {"kind": "k", "timestamp": 2.0}, "seq": 1, "ts": 2.0} and light.kind == "k"


def test_buslist_operations_and_ordering():
    a = MessageList([rec("1", priority=3, ts=30, source="chat"), rec("2", priority=1, ts=10, content="hello world"), rec("3", priority=5, ts=20, source="chat")])
    b = MessageList([rec("3", priority=5, ts=20, source="chat"), rec("4", priority=2, ts=40)])
    assert a.count() == a.size() == len(a) == 3
    assert [r.message_id for r in a.filter(source="chat")] == ["1", "3"]
    assert [r.message_id for r in a.filter(BusFilter(priority_min=3))] == ["1", "3"]
    assert [r.message_id for r in a.filter(since_ts=15, until_ts=30)] == ["1", "3"]
    assert [r.message_id for r in a.filter(content_re="wor")] == ["2"]
    assert [r.message_id for r in a.where(lambda r: r.priority < 4)] == ["1", "2"]
    assert [r.message_id for r in a.where_eq("source", "chat")] == ["1", "3"]
    assert [r.message_id for r in a.where_in("message_id", ["2", "3"])] == ["2", "3"]
    assert [r.message_id for r in a.where_contains("content", "hello")] == ["2"]
    assert [r.message_id for r in a.where_regex("source", "^ch")] == ["1", "3"]
    assert [r.message_id for r in a.where_gt("priority", 1)] == ["1", "3"]
    assert [r.message_id for r in a.where_ge("n", "3", cast="int")] == ["1", "3"]
    assert [r.message_id for r in a.where_lt("timestamp", 20)] == ["2"]
    assert [r.message_id for r in a.where_le("timestamp", 20)] == ["2", "3"]
    assert [r.message_id for r in a.sort()] == ["2", "3", "1"]  # by timestamp
    assert [r.message_id for r in a.sorted(by="priority", reverse=True)] == ["3", "1", "2"]
    assert [r.message_id for r in a.sort(key=lambda r: r.content)] == ["1", "3", "2"]
    assert [r.message_id for r in a.limit(2)] == ["1", "2"] and a.limit(0).count() == 0
    assert [r.message_id for r in a.merge(b)] == ["1", "2", "3", "4"]
    assert [r.message_id for r in b + a] == ["3", "4", "1", "2"]
    assert [r.message_id for r in a.intersection(b)] == ["3"] and [r.message_id for r in (b & a)] == ["3"]
    assert [r.message_id for r in a.difference(b)] == ["1", "2"] and [r.message_id for r in a - b] == ["1", "2"]
    assert [r.message_id for r in a.subtract(b)] == ["1", "2"] and [r.message_id for r in a.intersect(b)] == ["3"]
    assert a.dump()[0]["message_id"] == "1" and a.dump_records()[0] is a[0]
    with pytest.raises(BusFilterError, match="Invalid regex"):
        a.filter(source_re="(")
    assert a.filter(source_re="(", strict=False).count() == 0
    bad = a.try_filter(source_re="(")
    assert not bad.ok and isinstance(bad.error, BusFilterError)
    good = a.try_filter(source="chat")
    assert good.ok and good.value.count() == 2
    with pytest.raises(TypeError):
        a.merge(EventList([]))
    chained = a.filter(source="chat").sort(by="priority").limit(1)
    # Built by hand, not by get(): traced, but there is no plan to replay.
    assert [op["name"] for op in chained.trace_dump()] == ["filter", "sort", "limit"]
    assert chained.plan is None and chained.trace_tree_dump() is None
    assert chained.explain() == "filter({'source': 'chat', 'strict': True}) -> sort({'by': 'priority', 'reverse': False}) -> limit({'n': 1})"
    with pytest.raises(NonReplayableTraceError):
        chained.reload(ctx=object())


def test_reload_sends_a_replay_plan(plane, ctx):
    for i, (src, prio) in enumerate([("chat", 1), ("chat", 7), ("news", 4), ("chat", 9)]):
        plane.publish("messages", "all", {"message_id": f"m{i}", "plugin_id": "p", "source": src, "priority": prio})
    base = ctx.bus.messages.get(source="chat")
    lst = base.filter(priority_min=2).sort(by="priority", reverse=True).limit(1)
    assert [r.message_id for r in lst] == ["m3"]
    assert lst.explain().startswith("get(messages, ") and " -> limit(" in lst.explain()
    assert [op.name for op in lst.trace] == ["get", "filter", "sort", "limit"]

    plane.publish("messages", "all", {"message_id": "m9", "plugin_id": "p", "source": "chat", "priority": 99})
    fresh = lst.reload()
    assert [r.message_id for r in fresh] == ["m9"] and isinstance(fresh, MessageList)
    request = last_request(plane)
    assert request["op"] == "bus.replay" and set(request["args"]) == {"store", "plan", "light"}
    assert request["args"]["store"] == "messages" and request["args"]["light"] is False
    plan = request["args"]["plan"]
    assert (plan["kind"], plan["op"], plan["params"]) == ("unary", "limit", {"n": 1})
    sort = plan["child"]
    assert (sort["kind"], sort["op"], sort["params"]) == ("unary", "sort", {"by": "priority", "reverse": True})
    flt = sort["child"]
    assert (flt["kind"], flt["op"], flt["params"]) == ("unary", "filter", {"priority_min": 2, "strict": True})
    get = flt["child"]
    assert (get["kind"], get["op"]) == ("get", "get")
    assert get["params"] == {"bus": "messages", "params": {"max_count": 50, "source": "chat", "topic": "all"}}
    assert isinstance(get["at"], float) and lst.trace_tree_dump() == plan

    # A binary plan goes out as one replay too.
    other = ctx.bus.messages.get(source="news")
    merged = (base + other).reload()
    tree = last_request(plane)["args"]["plan"]
    assert (tree["kind"], tree["op"], tree["left"]["kind"], tree["right"]["kind"]) == ("binary", "merge", "get", "get")
    assert tree["params"] == {"left": 3, "right": 1}
    assert {r.message_id for r in merged} == {"m0", "m1", "m2", "m3", "m9"}

    # where(predicate) cannot travel: the replay covers the part below it, the predicate runs here.
    picky = base.where(lambda r: r.priority > 8)
    assert [r.message_id for r in picky.reload()] == ["m9", "m3"]
    assert last_request(plane)["args"]["plan"]["kind"] == "get"
    inplace = base.reload_with(inplace=True)
    assert inplace is base and base.count() == 4


def test_watcher_fires_add_del_and_change(plane, ctx):
    plane.publish("messages", "all", {"message_id": "seed", "plugin_id": "p", "source": "chat"})
    lst = ctx.bus.messages.get(source="chat")
    watcher = lst.watch(debounce_ms=10)
    added, removed, changes = [], [], []
    seen = threading.Event()

    @watcher.subscribe(on="add")
    def on_add(delta):
        added.extend(r.message_id for r in delta.added)
        seen.set()

    @watcher.subscribe(on=["del"])
    def on_del(removed_records, kind):
        removed.extend((r.message_id, kind) for r in removed_records)

    @watcher.subscribe(on="change")
    def on_change(delta):
        changes.append(delta.kind)

    watcher.start()
    try:
        # The first publications may pass before the subscription reaches PUB: push until one lands.
        for i in range(50):
            ctx.push_message("chat", "text", content=f"n{i}")
            if seen.wait(0.1):
                break
        assert added and all(mid for mid in added)
        assert "seed" not in added
        plane.publish("messages", "all", {"message_id": "other", "source": "news"})  # not in the list
        time.sleep(0.2)
        assert "other" not in added
        before = watcher.evaluations
        assert ctx.bus.messages.delete("seed") is True
        plane.publish("messages", "all", {"message_id": "poke", "source": "news"})  # something to wake the watcher
        wait_until(lambda: removed)
        assert removed == [("seed", "del")] and watcher.evaluations > before
        assert "add" in changes and "del" in changes
        assert watcher.current[0].message_id == added[-1]  # a query lists newest first
    finally:
        watcher.stop()
    assert not watcher.running


def test_watcher_needs_a_plan_and_a_message_plane(plane):
    with pytest.raises(NonReplayableTraceError):
        MessageList([]).watch(ctx=object())
    ctx = make_ctx({})
    try:
        from plugin.sdk.bus.types import GetNode

        lst = MessageList([], ctx=ctx, plan=GetNode(op="get", params={"bus": "messages", "params": {}}, at=0.0))
        with pytest.raises(RuntimeError, match="message_plane is not available for bus watchers"):
            lst.watch().start()
    finally:
        ctx.close()


def test_close_stops_watchers_and_nothing_starts_unused(plane):
    ctx = make_ctx(plane.env())
    assert ctx._plane is None  # no client before a feature is used
    lst = ctx.bus.messages.get()
    plane_client = ctx._plane
    assert plane_client._batcher is None and plane_client._push_sockets is None
    watcher = lst.watch().start()
    assert watcher.running
    ctx.close()
    assert not watcher.running
    assert ctx.push_message("s", "text")["reason"] == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        ctx.bus.messages.get()


def test_frames_are_plain_msgpack():
    from plugin._runtime.message_plane import MESSAGES_ITEM_PREFIX, delta_batch_frame, pack_payload

    items = [MESSAGES_ITEM_PREFIX + pack_payload({"i": i}) for i in range(20)]
    frame = msgpack.unpackb(delta_batch_frame("me", items), raw=False)
    assert frame["items"][19] == {"store": "messages", "topic": "all", "payload": {"i": 19}}
    assert frame["from"] == "me" and frame["kind"] == "delta_batch"
