"""The real runner making and serving plugin-to-plugin calls (PROTOCOL.md §9b) against a fake
supervisor that answers `plugin.call` and `plugins.query` itself."""

import pytest

from fake_supervisor import FakeSupervisor

PLUGIN_CODE = '''
from plugin.sdk import NekoPluginBase, PluginCallError, custom_event, fail, ok, plugin_entry


class Alpha(NekoPluginBase):
    @plugin_entry(id="call_sync")
    def call_sync(self, **_):
        return {"got": self.plugins.call_entry("beta:echo", {"x": 1}, timeout=2), "call_id": self.ctx.call_id}

    @plugin_entry(id="call_async")
    async def call_async(self, **_):
        got = await self.ctx.trigger_plugin_event("beta", "game", "ping", {"x": 2}, timeout=1.5)
        return {"got": got, "call_id": self.ctx.call_id}

    @plugin_entry(id="cycle")
    async def cycle(self, **_):
        try:
            await self.plugins.call_entry("beta:bounce")
        except PluginCallError as exc:
            return {"code": exc.code, "message": str(exc), "details": exc.details}

    @plugin_entry(id="slow_callee")
    def slow_callee(self, **_):
        try:
            self.plugins.call_entry("beta:slow", timeout=0.2)
        except TimeoutError as exc:
            return {"timeout": str(exc)}

    @plugin_entry(id="query")
    async def query(self, **_):
        return await self.plugins.require("beta")

    @plugin_entry(id="enveloped")
    def enveloped(self, **_):
        return ok(data={"a": 1}, message="fine")

    @plugin_entry(id="refusing")
    async def refusing(self, **_):
        return fail("NOPE", "not today")

    @custom_event(event_type="game", id="ping")
    async def ping(self, n=0, **_):
        return {"pong": n, "caller": self.ctx.caller_plugin_id, "label": self.ctx.handler_ctx}
'''


def plugin_call(body):
    args = body["args"]
    if args["event_id"] == "echo":
        return {"result": {"echoed": args["args"]}}
    if args["event_id"] == "ping":
        return {"result": 7}
    if args["event_id"] == "bounce":
        return {"ok": False, "error": {"code": "DEADLOCK", "message": "call would deadlock: alpha.cycle → beta.bounce → alpha",
                                        "details": {"cycle": ["alpha", "beta", "alpha"]}}}
    return {"ok": False, "error": {"code": "TIMEOUT", "message": "timed out", "details": {"deadline": True}}}


@pytest.fixture(scope="module")
def sup(tmp_path_factory):
    plugin_dir = tmp_path_factory.mktemp("p2p") / "root" / "alpha"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text('[plugin]\nid = "alpha"\nentry = "plugins.alpha:Alpha"\n')
    (plugin_dir / "__init__.py").write_text(PLUGIN_CODE)
    s = FakeSupervisor(plugin_dir, "alpha", "plugins.alpha:Alpha", heartbeat_ms=200)
    s.op_handlers["plugin.call"] = plugin_call
    s.op_handlers["plugins.query"] = lambda body: {"result": {"plugins": [{"plugin_id": "beta", "name": "Beta", "status": "running"}]}}
    s.start(NEKO_PLUGIN_SYNC_CALL_POLICY="warn")
    s.hello = s.handshake()
    yield s
    s.close()


def calls_made(sup):
    return [r for r in sup.requests if r["op"] in ("plugin.call", "plugins.query")]


def test_hello_declares_the_custom_event(sup):
    assert sup.hello.body["events"] == [{"event_type": "game", "id": "ping"}]


def test_calls_from_sync_and_async_handlers_carry_their_call_id(sup):
    r = sup.call("call_sync", call_id="sync-1")
    assert r["ok"] and r["data"] == {"got": {"echoed": {"x": 1}}, "call_id": "sync-1"}
    request = calls_made(sup)[-1]
    assert request["call_id"] == "sync-1"
    assert request["args"] == {"plugin_id": "beta", "event_type": "plugin_entry", "event_id": "echo", "args": {"x": 1}, "timeout_ms": 2000}
    # A1 (default warn): the sync call inside a handler is logged.
    assert "Sync call 'trigger_plugin_event' invoked inside handler (plugin_entry.call_sync)" in sup.stderr()

    r = sup.call("call_async", call_id="async-1")
    assert r["ok"] and r["data"] == {"got": 7, "call_id": "async-1"}  # the raw result
    request = calls_made(sup)[-1]
    assert request["call_id"] == "async-1" and request["args"]["timeout_ms"] == 1500 and request["args"]["event_type"] == "game"


def test_errors_reach_the_handler(sup):
    r = sup.call("cycle")
    assert r["data"] == {"code": "DEADLOCK", "message": "call would deadlock: alpha.cycle → beta.bounce → alpha",
                         "details": {"cycle": ["alpha", "beta", "alpha"]}}
    r = sup.call("slow_callee")
    assert r["data"] == {"timeout": "Plugin beta event plugin_entry.slow timed out after 0.2s"}
    r = sup.call("query", call_id="q-1")
    assert r["data"] == {"plugin_id": "beta", "name": "Beta", "status": "running"}
    request = calls_made(sup)[-1]
    assert request == {"request_id": request["request_id"], "op": "plugins.query", "args": {"filters": {"plugin_ids": ["beta"]}}, "call_id": "q-1"}


def test_custom_event_called_by_another_plugin(sup):
    r = sup.result(sup.trigger("ping", {"n": 5}, event_type="game", caller="beta", timeout_ms=5000))
    assert r["ok"] and r["data"] == {"pong": 5, "caller": "beta", "label": "game.ping"}
    r = sup.result(sup.trigger("pong", {}, event_type="game", caller="beta"))
    assert r["error"] == {"code": "NOT_FOUND", "message": "Custom event 'game.pong' not found", "details": None}


def test_envelopes_reach_a_calling_plugin_whole_and_runs_unwrapped(sup):
    """The reference hands a plugin call the callee's raw return value: an ok()/fail() envelope is
    the data itself (a fail() is not an error); a run of the same entry is unwrapped as usual."""
    r = sup.result(sup.trigger("enveloped", {}, caller="beta"))
    assert r["ok"] and r["data"]["success"] is True and r["data"]["data"] == {"a": 1} and r["data"]["message"] == "fine"
    assert {"error", "time", "trace_id"} <= set(r["data"])
    r = sup.result(sup.trigger("refusing", {}, caller="beta"))
    assert r["ok"] and r["data"]["success"] is False and r["data"]["error"]["code"] == "NOPE"
    assert r["data"]["error"]["message"] == "not today"
    # Through /runs (no caller) the envelope is the run's outcome.
    r = sup.call("enveloped")
    assert r["ok"] and r["data"] == {"a": 1}
    r = sup.call("refusing")
    assert not r["ok"] and r["error"]["code"] == "NOPE" and r["error"]["message"] == "not today"
