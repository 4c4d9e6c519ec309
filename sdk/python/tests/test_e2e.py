"""The real runner (`python -m plugin.runner`) against a fake supervisor."""

import os
import signal
import time
from pathlib import Path

import pytest

from fake_supervisor import FakeSupervisor

PLUGIN_TOML = """
[plugin]
id = "demo"
name = "Demo"
version = "0.1.0"
entry = "plugins.demo:Demo"
entries = [{ id = "undecorated", name = "Undecorated", description = "listed in plugin.toml" }]

[plugin.sdk]
supported = ">=0.1.0,<0.2.0"

[demo]
greeting = "Hi"
nested = { level = 3 }
"""

PLUGIN_CODE = '''
import asyncio
import threading
import time

from plugin.sdk import ErrorCode, NekoPluginBase, fail, lifecycle, neko_plugin, ok, plugin_entry, worker

from .helpers import double

spin_cancelled = threading.Event()


@neko_plugin
class Demo(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.logger = ctx.logger
        # Read before the link is up: answered from plugin.toml itself.
        self.init_greeting = self.config.get("demo.greeting")

    @lifecycle(id="startup")
    async def startup(self):
        self.startup_greeting = await self.config.get("demo.greeting")
        self.ctx.update_status({"phase": "started"})

    @lifecycle(id="shutdown")
    def shutdown(self):
        self.ctx.update_status({"phase": "shutdown"})

    @plugin_entry(id="echo", description="returns its arguments")
    def echo(self, **kwargs):
        return kwargs

    @plugin_entry(id="aecho")
    async def aecho(self, **kwargs):
        return kwargs

    @plugin_entry(id="add", timeout=5, input_schema={"type": "object", "properties": {"a": {}, "b": {}}})
    def add(self, a, b):
        return ok(data={"sum": double(a) / 2 + b})

    @plugin_entry(id="asleep")
    async def asleep(self, seconds, **_):
        await asyncio.sleep(seconds)
        return {"slept": seconds, "run_id": self.ctx.run_id}

    @plugin_entry(id="ssleep")
    def ssleep(self, seconds, _ctx=None):
        time.sleep(seconds)
        return {"run_id": self.ctx.run_id, "ctx": _ctx}

    @plugin_entry(id="short", timeout=0.3)
    async def short(self, **_):
        await asyncio.sleep(10)

    @plugin_entry(id="spin")
    def spin(self, **_):
        deadline = time.monotonic() + 10
        while not self.ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.ctx.is_cancelled():
            spin_cancelled.set()
        return {"spun": True}

    @plugin_entry(id="spin_seen")
    def spin_seen(self, **_):
        return {"cancel_seen": spin_cancelled.wait(5)}

    @plugin_entry(id="boom")
    def boom(self, **_):
        raise ValueError("boom requested")

    @plugin_entry(id="aboom")
    async def aboom(self, **_):
        raise KeyError("nope")

    @plugin_entry(id="fails")
    def fails(self, **_):
        return fail(ErrorCode.NOT_FOUND, "nothing here", details={"k": 1})

    @plugin_entry(id="bad")
    def bad(self, **_):
        return {"x": object()}

    @plugin_entry(id="lazy")
    def lazy(self, x=1, **_):
        async def later():
            await asyncio.sleep(0)
            return {"x": x, "run_id": self.ctx.run_id}

        return later()

    @plugin_entry(id="none")
    def none(self, **_):
        return None

    @plugin_entry(id="config")
    async def config_entry(self, **_):
        return {
            "greeting": await self.config.get("demo.greeting"),
            "level": await self.config.get("demo.nested.level"),
            "from_supervisor": await self.config.get("demo.from_supervisor", False),
            "default": await self.config.get("demo.nope", "dflt"),
            "init": self.init_greeting,
            "startup": self.startup_greeting,
        }

    @plugin_entry(id="config_sync")
    def config_sync(self, **_):
        return {"greeting": self.config.get("demo.greeting"), "from_supervisor": self.config.get("demo.from_supervisor", False)}

    @plugin_entry(id="status")
    def status(self, n=1, **_):
        self.report_status({"n": n})
        return {"reported": n}

    @plugin_entry(id="astatus")
    async def astatus(self, n=1, **_):
        self.report_status({"n": n})
        return {"reported": n}

    @plugin_entry(id="pending")
    def pending(self, **_):
        try:
            self.ctx.query_memory("lan", "q")
        except NotImplementedError as exc:
            return {"error": str(exc)}

    @worker(timeout=2)
    @plugin_entry(id="work")
    def work(self, **_):
        return {"run_id": self.ctx.run_id, "thread": threading.current_thread().name}

    def undecorated(self, **_):
        return {"undecorated": True}

    def public_helper(self):
        return "not invocable"
'''


def write_plugin(root: Path) -> Path:
    plugin_dir = root / "demo"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text(PLUGIN_TOML)
    (plugin_dir / "__init__.py").write_text(PLUGIN_CODE)
    (plugin_dir / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    return plugin_dir


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    # The plugins root is deliberately not called "plugins".
    return write_plugin(tmp_path_factory.mktemp("e2e") / "my_plugins")


def launch(plugin_dir, heartbeat_ms=200, **env):
    sup = FakeSupervisor(plugin_dir, "demo", "plugins.demo:Demo", heartbeat_ms=heartbeat_ms)
    sup.config_extra = {"demo": {"from_supervisor": True}}
    sup.start(**env)
    return sup


@pytest.fixture(scope="module")
def sup(plugin_dir):
    s = launch(plugin_dir)
    s.hello = s.handshake()
    yield s
    s.close()


def test_hello_declares_the_entries(sup):
    body = sup.hello.body
    assert (body["protocol"], body["plugin_id"], body["sdk"], body["sdk_version"]) == (1, "demo", "neko-sdk-python", "0.1.0")
    assert body["pid"] == sup.proc.pid
    assert body["input_schema"] is None  # the class defines no plugin-level input_schema: not sent
    entries = {e["id"]: e for e in body["entries"]}
    assert "undecorated" in entries and "public_helper" not in entries
    assert "startup" not in entries and "shutdown" not in entries
    assert entries["add"]["timeout_ms"] == 5000
    assert entries["short"]["timeout_ms"] == 300
    assert entries["work"]["timeout_ms"] == 2000  # the @worker timeout
    assert entries["echo"]["timeout_ms"] is None
    assert entries["echo"]["name"] == "echo" and entries["echo"]["description"] == "returns its arguments"
    assert entries["echo"]["input_schema"] == {}  # as the reference's decorator stores it
    assert entries["echo"]["kind"] == "action"
    assert entries["undecorated"]["name"] == "Undecorated"


def test_no_batches_unless_granted(sup):
    assert sup.hello.body["features"] == ["batch"]
    ids = [sup.trigger("aecho", {"i": i}) for i in range(20)]
    assert [sup.result(c)["data"] for c in ids] == [{"i": i} for i in range(20)]
    assert sup.batches == []


def test_granted_batches_carry_a_burst_of_results_in_order(plugin_dir):
    sup = launch(plugin_dir)
    try:
        sup.handshake(features=("batch",))
        # The handler loop answers a burst in the same turns: RESULTs leave in batches of at most
        # 16, in the order the calls finished, each exactly once.
        ids = [sup.trigger("aecho", {"i": i}) for i in range(40)]
        results = [sup.result(c) for c in ids]
        assert [r["data"] for r in results] == [{"i": i} for i in range(40)]
        assert sup.batches and max(sup.batches) <= 16, sup.batches
        # neko's batches reach the handlers in order too, whatever their entries.
        frames = sup.session.seal_batch([("trigger", {"call_id": f"b-{i}", "entry_id": "echo" if i % 2 else "aecho", "args": {"i": i}, "timeout_ms": 5000}) for i in range(10)])
        sup.send_raw(frames)
        assert [sup.result(f"b-{i}")["data"] for i in range(10)] == [{"i": i} for i in range(10)]
        # A lone call is answered at once, in a frame of its own.
        before = list(sup.batches)
        assert sup.call("aecho", {"x": 1})["data"] == {"x": 1}
        assert sup.batches == before
    finally:
        sup.close()


def test_welcome_may_share_a_batch_with_the_first_triggers(plugin_dir):
    sup = launch(plugin_dir)
    try:
        hello = sup.expect("hello", 15.0)
        assert "batch" in hello.body["features"]
        welcome = {"plugin_id": "demo", "heartbeat_interval_ms": sup.heartbeat_ms, "features": ["batch"]}
        trigger = {"call_id": "first", "entry_id": "aecho", "args": {"n": 1}, "timeout_ms": 5000}
        sup.send_raw(sup.session.seal_batch([("welcome", welcome), ("trigger", trigger)]))
        assert sup.result("first")["data"] == {"n": 1}
    finally:
        sup.close()


def test_status_from_startup_and_heartbeats(sup):
    assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "started").body
    sup.expect("heartbeat")
    sup.expect("heartbeat")


def test_sync_and_async_entries_with_ctx(sup):
    r = sup.call("echo", {"text": "hi"}, run_id="r-1")
    assert r["ok"] and r["data"] == {"text": "hi", "_ctx": {"run_id": "r-1"}}
    r = sup.call("aecho", {"n": 1}, run_id="r-2")
    assert r["data"] == {"n": 1, "_ctx": {"run_id": "r-2"}}
    # `add` takes neither _ctx nor **kwargs: _ctx is dropped; ok(...) gives its data.
    r = sup.call("add", {"a": 2, "b": 3}, run_id="r-3")
    assert r == {"call_id": r["call_id"], "ok": True, "data": {"sum": 5.0}, "error": None}
    r = sup.call("ssleep", {"seconds": 0}, run_id="r-4")
    assert r["data"] == {"run_id": "r-4", "ctx": {"run_id": "r-4"}}
    r = sup.call("asleep", {"seconds": 0}, run_id="r-5")
    assert r["data"] == {"slept": 0, "run_id": "r-5"}
    r = sup.call("work", {}, run_id="r-6")
    assert r["data"]["run_id"] is None and r["data"]["thread"].startswith("neko-worker")
    assert sup.call("undecorated")["data"] == {"undecorated": True}


def test_results_and_errors(sup):
    r = sup.call("none")
    assert r["ok"] is True and r["data"] is None
    r = sup.call("lazy", {"x": 5}, run_id="r-9")  # a sync handler that returns a coroutine
    assert r["data"] == {"x": 5, "run_id": "r-9"}
    r = sup.call("boom")
    assert r["error"] == {
        "code": "INTERNAL",
        "message": "Plugin 'demo' entry 'entry boom' execution failed: Invalid call: boom requested",
        "details": {"plugin_id": "demo", "entry_id": "boom", "type": "PluginExecutionError", "exception_type": "ValueError"},
    }
    r = sup.call("aboom")
    assert r["error"]["code"] == "INTERNAL" and r["error"]["message"] == "Plugin 'demo' entry 'entry aboom' execution failed: Unexpected error: 'nope'"
    r = sup.call("fails")
    assert r["error"] == {"code": "NOT_FOUND", "message": "nothing here", "details": {"k": 1}}
    r = sup.call("bad")
    assert r["error"]["code"] == "INTERNAL"
    assert r["error"]["message"].endswith(" is not JSON serializable")
    r = sup.call("add", {"a": 1})
    assert r["error"]["code"] == "INTERNAL" and r["error"]["message"] == "Plugin 'demo' entry 'entry add' execution failed: Invalid call: missing a required argument: 'b'"
    for entry_id in ("nope", "public_helper", "startup"):
        r = sup.call(entry_id)
        assert r["error"]["code"] == "NOT_FOUND"
        assert r["error"]["message"] == f"Entry '{entry_id}' not found in plugin 'demo'"
    r = sup.call("pending")
    assert "memory queries" in r["data"]["error"]


def test_entries_run_concurrently(sup):
    start = time.monotonic()
    ids = [sup.trigger("asleep", {"seconds": 0.5}) for _ in range(5)]
    ids += [sup.trigger("ssleep", {"seconds": 0.5}) for _ in range(3)]
    results = [sup.result(i) for i in ids]
    elapsed = time.monotonic() - start
    assert all(r["ok"] for r in results)
    assert elapsed < 2.0, f"8 calls of 0.5 s took {elapsed:.2f}s: they did not run concurrently"


def test_deadlines(sup):
    start = time.monotonic()
    r = sup.call("asleep", {"seconds": 5}, timeout_ms=200)
    assert r["error"]["code"] == "TIMEOUT"
    assert r["error"]["message"] == "Entry 'asleep' timed out after 200ms"
    assert time.monotonic() - start < 3
    # No deadline from the supervisor: the entry's own timeout applies.
    r = sup.call("short", timeout_ms=0)
    assert r["error"] == {"code": "TIMEOUT", "message": "Entry 'short' timed out after 300ms", "details": None}
    # A sync handler is told through ctx.cancelled.
    r = sup.call("spin", timeout_ms=200)
    assert r["error"]["code"] == "TIMEOUT"
    assert sup.call("spin_seen")["data"] == {"cancel_seen": True}
    # ...and the runner still serves.
    assert sup.call("add", {"a": 1, "b": 1})["data"] == {"sum": 2.0}


def test_cancel(sup):
    call_id = sup.trigger("asleep", {"seconds": 10})
    start = time.monotonic()
    sup.send("cancel", {"call_id": call_id})
    r = sup.result(call_id)
    assert r["error"]["code"] == "CANCELED" and time.monotonic() - start < 3
    sup.send("cancel", {"call_id": "no-such-call"})  # ignored
    assert sup.call("add", {"a": 1, "b": 2})["ok"]


def test_forged_and_replayed_frames_are_ignored(sup):
    # Wrong MAC.
    frames = sup.session.seal("trigger", {"call_id": "forged", "entry_id": "aecho", "args": {}, "timeout_ms": 1000})
    sup.send_raw([bytes(32), frames[1]])
    # Signed as if the plugin had sent it (reflection).
    from plugin._runtime.protocol import P2S, Session

    reflected = Session(sup.key, P2S).seal("trigger", {"call_id": "reflected", "entry_id": "aecho", "args": {}, "timeout_ms": 1000})
    sup.send_raw(reflected)
    # A valid frame, then the same frame again.
    replay = sup.send("trigger", {"call_id": "once", "entry_id": "aecho", "args": {}, "timeout_ms": 1000})
    sup.send_raw(replay)
    sup.send_raw([b"only one frame"])
    after = sup.trigger("aecho", {"after": True}, call_id="after")
    assert sup.result(after)["data"] == {"after": True}
    assert sup.result("once")["ok"]
    seen = [e.body["call_id"] for e in sup.backlog if e.kind == "result"]
    assert "forged" not in seen and "reflected" not in seen and seen.count("once") == 0


def test_config_round_trip(sup):
    r = sup.call("config")
    assert r["data"] == {"greeting": "Hi", "level": 3, "from_supervisor": True, "default": "dflt", "init": "Hi", "startup": "Hi"}
    r = sup.call("config_sync")
    assert r["data"] == {"greeting": "Hi", "from_supervisor": True}
    assert {q["op"] for q in sup.requests} == {"config.get"}


@pytest.mark.parametrize("entry_id", ["status", "astatus"])
def test_status_goes_before_the_result(sup, entry_id):
    for n in range(20):  # async handlers report from the handler loop, results leave from the I/O loop
        call_id = sup.trigger(entry_id, {"n": n})
        order = []
        while not order or order[-1] != "result":
            env = sup.wait_for(lambda e: (e.kind == "status" and e.body["status"].get("n") == n) or (e.kind == "result" and e.body["call_id"] == call_id))
            order.append(env.kind)
        assert order == ["status", "result"]


def test_stop_runs_shutdown_and_exits_zero(plugin_dir):
    sup = launch(plugin_dir)
    try:
        sup.handshake()
        assert sup.call("add", {"a": 1, "b": 1})["ok"]
        sup.send("stop", {"grace_ms": 3000})
        assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "shutdown")
        assert sup.proc.wait(timeout=10) == 0
        assert "stopped" in sup.stderr()
    finally:
        sup.close()


def test_sigterm_is_a_stop(plugin_dir):
    sup = launch(plugin_dir)
    try:
        sup.handshake()
        sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "started")
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("phase") == "shutdown")
        assert sup.proc.wait(timeout=10) == 0
    finally:
        sup.close()


def test_exits_when_the_supervisor_is_gone(plugin_dir):
    # Our pid plus one is not the runner's parent: the runner concludes its supervisor died.
    sup = launch(plugin_dir, NEKO_SUPERVISOR_PID=str(os.getpid() + 1))
    try:
        sup.handshake()
        assert sup.proc.wait(timeout=10) == 0
        assert "is gone" in sup.stderr()
    finally:
        sup.close()


TICKER_CODE = '''
import threading

from plugin.sdk import NekoPluginBase, custom_event, lifecycle, plugin_entry, timer_interval


class Ticker(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.ticks = 0

    @lifecycle(id="startup")
    def startup(self):
        raise RuntimeError("startup went wrong")

    @timer_interval(id="tick", seconds=0.05)
    def tick(self):
        self.ticks += 1
        self.report_status({"ticks": self.ticks})

    @timer_interval(id="atick", seconds=0.05)
    async def atick(self):
        raise ValueError("async timer failure is only logged")

    @custom_event(event_type="warmup", id="once", auto_start=True, trigger_method="auto")
    def warmup(self):
        self.report_status({"auto": True})

    @plugin_entry(id="ticks")
    def get_ticks(self, **_):
        return {"ticks": self.ticks}
'''


def test_startup_failure_is_not_fatal_and_timers_run(tmp_path):
    plugin_dir = tmp_path / "root" / "ticker"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text('[plugin]\nid = "ticker"\nentry = "plugins.ticker:Ticker"\n')
    (plugin_dir / "__init__.py").write_text(TICKER_CODE)
    sup = FakeSupervisor(plugin_dir, "ticker", "plugins.ticker:Ticker")
    try:
        sup.start()
        sup.handshake()
        assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("auto") is True)
        assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("ticks", 0) >= 3)
        assert sup.call("ticks")["data"]["ticks"] >= 3
        log = sup.stderr()
        assert "lifecycle.startup failed" in log and "RuntimeError: startup went wrong" in log
        assert "timer.atick failed" in log
        sup.send("stop", {"grace_ms": 1000})
        assert sup.proc.wait(timeout=10) == 0
    finally:
        sup.close()


HELLO_DIR = Path(__file__).resolve().parent / "../../../plugins/hello"


def test_bundled_hello_plugin(tmp_path):
    sup = FakeSupervisor(HELLO_DIR.resolve(), "hello", "plugins.hello:HelloPlugin")
    try:
        sup.start(PYTHONDONTWRITEBYTECODE="1")
        hello = sup.handshake()
        entries = {e["id"]: e for e in hello.body["entries"]}
        assert set(entries) == {"greet", "add", "sleep", "boom", "slow"}
        assert entries["slow"]["timeout_ms"] == 1000
        assert sup.wait_for(lambda e: e.kind == "status" and e.body["status"].get("ticks") == 1)
        assert sup.call("greet", {"name": "neko"}, run_id="r-1")["data"] == {"message": "Hello, neko!"}
        assert sup.call("add", {"a": 2, "b": 3})["data"] == {"sum": 5}
        assert sup.call("sleep", {"seconds": 0.01})["data"] == {"slept": 0.01}
        assert sup.call("boom")["error"]["message"] == "Plugin 'hello' entry 'entry boom' execution failed: Invalid call: boom requested"
        # As neko sends it: the TRIGGER carries the entry's own timeout.
        assert sup.call("slow", timeout_ms=entries["slow"]["timeout_ms"])["error"]["code"] == "TIMEOUT"
        sup.send("stop", {"grace_ms": 2000})
        assert sup.proc.wait(timeout=10) == 0
        assert "hello plugin stopping after" in sup.stderr()
    finally:
        sup.close()


def test_bad_environment_exits_cannot_start(plugin_dir):
    # 78 (EX_CONFIG): cannot start as configured, which neko does not retry.
    sup = FakeSupervisor(plugin_dir, "demo", "plugins.demo:Demo")
    try:
        sup.start(NEKO_PLUGIN_ENDPOINT="")
        assert sup.proc.wait(timeout=10) == 78
        assert "NEKO_PLUGIN_ENDPOINT is not set" in sup.stderr()
    finally:
        sup.close()
    sup = FakeSupervisor(plugin_dir, "demo", "plugins.demo:Demo")
    try:
        sup.start(NEKO_PLUGIN_ENTRY="plugins.demo:Missing")
        assert sup.proc.wait(timeout=10) == 78
        assert "cannot import the plugin class 'plugins.demo:Missing'" in sup.stderr()
        assert sup.key.hex() not in sup.stderr()
    finally:
        sup.close()
