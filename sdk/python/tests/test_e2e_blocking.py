"""The runner with plugin code that blocks its event loop (as plugins written for the reference do,
where each async call ran on its own thread): heartbeats, CANCELs and sync entries must go on."""

import time

import pytest

from fake_supervisor import FakeSupervisor

PLUGIN_CODE = '''
import asyncio
import time

from plugin.sdk import NekoPluginBase, lifecycle, plugin_entry


class Blocker(NekoPluginBase):
    input_schema = {"type": "object", "properties": {"mode": {"type": "string"}}}

    @lifecycle(id="startup")
    async def startup(self):
        time.sleep(1.0)  # blocks the handler loop while neko waits for heartbeats
        self.report_status({"phase": "started"})

    @lifecycle(id="shutdown")
    def shutdown(self):
        self.report_status({"phase": "shutdown"})

    @plugin_entry(id="block")
    async def block(self, seconds=3, **_):
        self.report_status({"blocking": seconds})
        time.sleep(seconds)  # a blocking call inside async def
        return {"blocked": seconds, "run_id": self.ctx.run_id}

    @plugin_entry(id="quick")
    def quick(self, **_):
        return {"quick": True, "run_id": self.ctx.run_id}

    @plugin_entry(id="aquick")
    async def aquick(self, **_):
        await asyncio.sleep(0)
        return {"aquick": True, "run_id": self.ctx.run_id}

    @plugin_entry(id="anow")
    async def anow(self, **_):
        return {"now": True}

    @plugin_entry(id="ablock")
    async def ablock(self, seconds=3, **_):
        time.sleep(seconds)  # blocks, and sends nothing before it
        return {"blocked": seconds}

    @plugin_entry(id="spin")
    def spin(self, **_):
        deadline = time.monotonic() + 10
        while not self.ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"cancelled": self.ctx.cancelled}

    @plugin_entry(id="asleep")
    async def asleep(self, seconds=10, **_):
        await asyncio.sleep(seconds)
        return {"slept": seconds}
'''

HEARTBEAT_MS = 100


def start(tmp_path, features=(), heartbeat_ms=HEARTBEAT_MS, **env):
    plugin_dir = tmp_path / "root" / "blocker"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text('[plugin]\nid = "blocker"\nentry = "plugins.blocker:Blocker"\n')
    (plugin_dir / "__init__.py").write_text(PLUGIN_CODE)
    sup = FakeSupervisor(plugin_dir, "blocker", "plugins.blocker:Blocker", heartbeat_ms=heartbeat_ms)
    sup.start(**env)
    sup.hello = sup.handshake(features=features)
    return sup


def watch(sup, predicate, timeout=15.0):
    """Waits for a message matching `predicate`; returns it and the arrival times of the heartbeats
    seen meanwhile."""
    beats = []

    def match(env):
        if env.kind == "heartbeat":
            beats.append(time.monotonic())
            return False
        return predicate(env)

    return sup.wait_for(match, timeout).body, beats


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


@pytest.fixture
def sup(tmp_path):
    s = start(tmp_path, NEKO_PLUGIN_LOOP_STALL_WARN_MS="1500")
    yield s
    s.close()


def test_blocking_async_handlers_do_not_stop_heartbeats(sup):
    # A blocking async startup hook: heartbeats keep coming while it runs.
    started = time.monotonic()
    _, beats = watch(sup, lambda e: e.kind == "status" and e.body["status"].get("phase") == "started")
    assert time.monotonic() - started >= 0.8
    assert len(beats) >= 5, f"only {len(beats)} heartbeats during a 1 s blocking startup"
    assert max(gaps(beats), default=0) < 0.6

    # An async entry that blocks its loop for 3 s (the supervisor's heartbeat period is 100 ms).
    block = sup.trigger("block", {"seconds": 3}, run_id="r-block")
    sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("blocking") == 3)
    t0 = time.monotonic()
    # While it blocks: a sync entry is answered, a CANCEL reaches a sync handler, and an async entry
    # waits for the loop.
    quick = sup.trigger("quick", run_id="r-quick")
    spin = sup.trigger("spin")
    aquick = sup.trigger("aquick", run_id="r-aquick")
    r, beats_quick = watch(sup, lambda e: e.kind == "result" and e.body["call_id"] == quick)
    assert r["ok"] and r["data"] == {"quick": True, "run_id": "r-quick"}
    assert time.monotonic() - t0 < 1.5, "a sync entry waited for the blocked async handler"
    sup.send("cancel", {"call_id": spin})
    r, beats_spin = watch(sup, lambda e: e.kind == "result" and e.body["call_id"] == spin)
    assert r["error"]["code"] == "CANCELED"
    assert time.monotonic() - t0 < 2.0

    r, beats_block = watch(sup, lambda e: e.kind == "result" and e.body["call_id"] == block)
    elapsed = time.monotonic() - t0
    assert r["ok"] and r["data"] == {"blocked": 3, "run_id": "r-block"}
    beats = sorted(beats_quick + beats_spin + beats_block)
    assert elapsed >= 2.5
    assert len(beats) >= 15, f"only {len(beats)} heartbeats in {elapsed:.1f}s of a blocked handler loop"
    assert max(gaps(beats), default=0) < 0.6

    # The async entry ran once the loop was free, with its own run id.
    r = sup.result(aquick)
    assert r["ok"] and r["data"] == {"aquick": True, "run_id": "r-aquick"}

    # The watchdog said what blocked the loop, and that it recovered.
    deadline = time.monotonic() + 5
    while "responsive again" not in sup.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = sup.stderr()
    assert "the handler loop has been unresponsive" in log and "'plugin_entry.block'" in log, log
    assert "asyncio.to_thread" in log
    assert "responsive again" in log

    # The plugin-level input_schema went out in HELLO.
    assert sup.hello.body["input_schema"] == {"type": "object", "properties": {"mode": {"type": "string"}}}


def test_deadline_and_cancel_of_a_blocking_async_handler(sup):
    watch(sup, lambda e: e.kind == "status" and e.body["status"].get("phase") == "started")
    # The caller gets TIMEOUT at the deadline, while the handler still blocks its loop.
    t0 = time.monotonic()
    r = sup.call("block", {"seconds": 2}, timeout_ms=300)
    assert r["error"]["code"] == "TIMEOUT" and time.monotonic() - t0 < 1.5
    # CANCEL of an async handler that awaits (queued behind the blocked loop) is answered at once.
    call = sup.trigger("asleep", {"seconds": 30})
    sup.send("cancel", {"call_id": call})
    assert sup.result(call)["error"]["code"] == "CANCELED"
    assert time.monotonic() - t0 < 1.8
    # Once the loop is free again, async entries work.
    assert sup.call("aquick", run_id="r-1")["data"] == {"aquick": True, "run_id": "r-1"}


def test_stop_while_the_handler_loop_is_stuck(sup):
    watch(sup, lambda e: e.kind == "status" and e.body["status"].get("phase") == "started")
    sup.trigger("block", {"seconds": 60})
    sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("blocking") == 60)
    t0 = time.monotonic()
    sup.send("stop", {"grace_ms": 1000})
    assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "shutdown")
    assert sup.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 6
    assert "the handler loop did not stop" in sup.stderr()


def test_a_result_held_for_a_batch_is_not_held_by_a_blocking_handler(tmp_path):
    # Heartbeats far apart: any other message sent meanwhile would take the held RESULT along.
    sup = start(tmp_path, features=("batch",), heartbeat_ms=10000)
    try:
        sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "started")
        time.sleep(0.5)  # the handler loop reads the link again after its blocking startup
        sup.trigger("asleep", {"seconds": 5})  # another open call: RESULTs are held for batches
        # One frame: `anow` finishes in the turn in which `ablock` then blocks the loop for 3 s.
        sup.send_raw(sup.session.seal_batch([
            ("trigger", {"call_id": "now-1", "entry_id": "anow", "args": {}, "timeout_ms": 10000}),
            ("trigger", {"call_id": "block-1", "entry_id": "ablock", "args": {"seconds": 3}, "timeout_ms": 10000}),
        ]))
        t0 = time.monotonic()
        r = sup.result("now-1")
        assert r["ok"] and r["data"] == {"now": True}
        assert time.monotonic() - t0 < 1.5, "the RESULT waited for the blocked turn to end"
        assert sup.result("block-1")["ok"]
    finally:
        sup.close()
