"""Plugin-to-plugin calls on the SDK side (PROTOCOL.md §9b): the REQUEST's call_id, `plugin.call`
and `plugins.query` through `ctx` and `self.plugins`, the A1 sync-call policy, HELLO's `events`, and
custom-event TRIGGERs."""

import asyncio
import concurrent.futures
import io
import threading
import time

import pytest

from plugin._runtime import context as context_module
from plugin._runtime import scope
from plugin._runtime.context import PluginContext
from plugin._runtime.entries import build_tables
from plugin._runtime.env import RuntimeEnv
from plugin._runtime.host import PluginHost
from plugin._runtime.link import Link
from plugin.sdk import NekoPluginBase, Plugins, custom_event, plugin_entry
from plugin.sdk.errors import PluginCallError, RequestError
from plugin.sdk.logger import PluginLogger


def capture():
    stream = io.StringIO()
    logger = PluginLogger("t", level="DEBUG").bind(plugin_id="demo")
    logger.remove()
    logger.add(stream, level="DEBUG")
    return logger, stream


class ScriptedTransport:
    """Answers each request with `answer(op, args)`: a RESPONSE body (without request_id), a
    number of seconds to wait before answering `{"ok": True, "result": "late"}`, or None (never)."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []
        self.forgotten = []

    def post(self, kind, body, cork=False):
        return True

    def start_request(self, op, args):
        self.requests.append((op, args))
        request_id = f"q-{len(self.requests)}"
        future = concurrent.futures.Future()
        reply = self.answer(op, args)
        if isinstance(reply, (int, float)):
            threading.Timer(reply, future.set_result, ({"request_id": request_id, "ok": True, "result": "late"},)).start()
        elif reply is not None:
            future.set_result({"request_id": request_id, **reply})
        return request_id, future

    def forget(self, request_id):
        self.forgotten.append(request_id)


def ok(result):
    return {"ok": True, "result": result}


def err(code, message, details=None):
    return {"ok": False, "result": None, "error": {"code": code, "message": message, "details": details}}


def make_ctx(answer, config_path=None):
    logger, stream = capture()
    transport = ScriptedTransport(answer)
    return PluginContext("demo", config_path, logger, transport), transport, stream


def in_handler(fn, label="plugin_entry.caller", call=None):
    """Runs `fn` on a thread as a sync handler would run (scope set); returns its value or raises."""
    box = {}

    def target():
        try:
            box["value"] = scope.run_scoped(fn, label=label, call=call or scope.CallScope("c-9", "caller"))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- the REQUEST's call_id ---------------------------------------------------------------------------


def running_link():
    logger, _ = capture()
    link = Link("ipc:///nowhere", bytes(32), 1 << 20, logger)
    link._state = "running"  # as after WELCOME; post() is replaced, so no socket is needed
    sent = []
    link.post = lambda kind, body, cork=False: sent.append((kind, body)) or True
    return link, sent


def test_requests_carry_the_call_id_inside_a_handler_scope_only():
    link, sent = running_link()
    link.start_request("config.get", {})  # outside any call: no call_id key at all
    call = scope.CallScope("c-7", "caller")

    # A sync handler on a worker thread.
    in_handler(lambda: link.start_request("plugin.call", {"plugin_id": "b"}), call=call)

    # An async handler: its task has its own context; a to_thread() from it inherits the context.
    async def handler():
        scope.enter("plugin_entry.caller", None, call)
        link.start_request("plugins.query", {})
        await asyncio.to_thread(link.start_request, "export.push", {})

    async def main():
        await asyncio.create_task(handler())
        link.start_request("run.update", {})  # the main task never entered the scope

    asyncio.run(main())

    # Once the call has ended, code still running for it sends no call_id.
    call.ended = True
    in_handler(lambda: link.start_request("config.get", {}), call=call)

    bodies = [body for kind, body in sent if kind == "request"]
    assert [b["op"] for b in bodies] == ["config.get", "plugin.call", "plugins.query", "export.push", "run.update", "config.get"]
    assert [b.get("call_id") for b in bodies] == [None, "c-7", "c-7", "c-7", None, None]
    assert "call_id" not in bodies[0] and "call_id" not in bodies[4] and "call_id" not in bodies[5]


# -- plugin.call through ctx -----------------------------------------------------------------------


def test_plugin_call_args_and_raw_results():
    results = iter([{"a": 1}, 42, "text", [1, 2], None])
    ctx, transport, _ = make_ctx(lambda op, args: ok(next(results)))
    assert ctx.trigger_plugin_event("other", "plugin_entry", "e", {"x": 1}, timeout=2.5) == {"a": 1}
    assert ctx.trigger_plugin_event_sync("other", "game", "ping", None) == 42  # not {"result": 42}
    assert ctx.trigger_plugin_event("other", "plugin_entry", "e", timeout=0.25) == "text"

    async def inside():
        pending = ctx.trigger_plugin_event("other", "plugin_entry", "e", {"y": 2})
        assert asyncio.iscoroutine(pending)  # smart: awaited inside a loop
        assert await pending == [1, 2]
        assert await ctx.trigger_plugin_event_async("other", "plugin_entry", "e") is None

    asyncio.run(inside())
    assert transport.requests == [
        ("plugin.call", {"plugin_id": "other", "event_type": "plugin_entry", "event_id": "e", "args": {"x": 1}, "timeout_ms": 2500}),
        ("plugin.call", {"plugin_id": "other", "event_type": "game", "event_id": "ping", "args": {}, "timeout_ms": 10000}),
        ("plugin.call", {"plugin_id": "other", "event_type": "plugin_entry", "event_id": "e", "args": {}, "timeout_ms": 250}),
        ("plugin.call", {"plugin_id": "other", "event_type": "plugin_entry", "event_id": "e", "args": {"y": 2}, "timeout_ms": 10000}),
        ("plugin.call", {"plugin_id": "other", "event_type": "plugin_entry", "event_id": "e", "args": {}, "timeout_ms": 10000}),
    ]
    assert len(transport.forgotten) == 5


def test_plugin_call_timeouts(monkeypatch):
    message = "Plugin other event plugin_entry.e timed out after 0.5s"
    # neko's TIMEOUT answer.
    ctx, _, _ = make_ctx(lambda op, args: err("TIMEOUT", "call timed out", {"deadline": True}))
    with pytest.raises(TimeoutError) as info:
        ctx.trigger_plugin_event("other", "plugin_entry", "e", {}, timeout=0.5)
    assert str(info.value) == message

    async def inside():
        with pytest.raises(TimeoutError, match=message):
            await ctx.trigger_plugin_event("other", "plugin_entry", "e", {}, timeout=0.5)

    asyncio.run(inside())

    # neko enforces the deadline; the SDK waits a grace period longer for its answer ...
    ctx, _, _ = make_ctx(lambda op, args: 0.3)
    assert ctx.trigger_plugin_event("other", "plugin_entry", "e", {}, timeout=0.1) == "late"
    # ... and gives up itself only after it, with the same error.
    monkeypatch.setattr(context_module, "PLUGIN_CALL_GRACE_S", 0.05)
    ctx, transport, _ = make_ctx(lambda op, args: None)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="Plugin other event game.ping timed out after 0.1s"):
        ctx.trigger_plugin_event_sync("other", "game", "ping", {}, timeout=0.1)
    assert 0.14 <= time.monotonic() - start < 2
    assert transport.forgotten == ["q-1"]


def test_plugin_call_errors_keep_code_and_message():
    ctx, _, _ = make_ctx(lambda op, args: err("PLUGIN_CRASHED", "plugin 'other' exited during the call"))
    with pytest.raises(RequestError, match="plugin 'other' exited during the call") as info:
        ctx.trigger_plugin_event("other", "plugin_entry", "e")
    assert info.value.code == "PLUGIN_CRASHED" and isinstance(info.value, RuntimeError)


def test_a_blocked_call_ends_when_its_own_call_is_canceled():
    ctx, transport, _ = make_ctx(lambda op, args: None)  # neko never answers
    call = scope.CallScope("c-1", "caller")
    threading.Timer(0.2, call.flag.set).start()
    start = time.monotonic()
    with pytest.raises(PluginCallError, match="abandoned: the current call was canceled") as info:
        in_handler(lambda: Plugins(ctx).call_entry("other:e", timeout=30), call=call)
    assert info.value.code == "CANCELED" and time.monotonic() - start < 2
    assert transport.forgotten == ["q-1"]


# -- self.plugins --------------------------------------------------------------------------------------

DEADLOCK = err("DEADLOCK", "call would deadlock: demo.caller → other.back → demo", {"cycle": ["demo", "other", "demo"]})


def test_plugins_errors_are_plugin_call_errors():
    ctx, transport, _ = make_ctx(lambda op, args: DEADLOCK)
    plugins = Plugins(ctx)
    with pytest.raises(PluginCallError, match="call would deadlock: demo.caller → other.back → demo") as info:
        plugins.call_entry("other:back", {"n": 1})
    assert info.value.code == "DEADLOCK" and info.value.details == {"cycle": ["demo", "other", "demo"]}
    assert isinstance(info.value, RuntimeError)
    assert transport.requests[-1] == (
        "plugin.call", {"plugin_id": "other", "event_type": "plugin_entry", "event_id": "back", "args": {"n": 1}, "timeout_ms": 10000}
    )

    async def inside():
        pending = plugins.call_event("other:game:ping", {"n": 2}, timeout=3)
        assert inspect_awaitable(pending)
        with pytest.raises(PluginCallError) as info:
            await pending
        assert info.value.code == "DEADLOCK"

    asyncio.run(inside())
    assert transport.requests[-1][1]["event_type"] == "game" and transport.requests[-1][1]["timeout_ms"] == 3000

    ctx, _, _ = make_ctx(lambda op, args: err("TIMEOUT", "timed out", {"deadline": True}))
    with pytest.raises(TimeoutError, match="Plugin other event plugin_entry.e timed out after 2s"):
        Plugins(ctx).call(plugin_id="other", event_type="plugin_entry", event_id="e", timeout=2)

    for bad in ("no-colon", "a:", ":b", "a:b:c"):
        with pytest.raises(PluginCallError, match="Invalid reference") as info:
            Plugins(ctx).call_entry(bad)
        assert info.value.code == "VALIDATION_ERROR"
    with pytest.raises(PluginCallError, match="Invalid reference"):
        Plugins(ctx).call_event("a:b")


def inspect_awaitable(value):
    return hasattr(value, "__await__")


def test_plugins_list_and_require():
    listed = {"plugins": [{"plugin_id": "other", "name": "Other", "status": "running"}]}
    ctx, transport, _ = make_ctx(lambda op, args: ok(listed) if args["filters"].get("plugin_ids") != ["ghost"] else ok({"plugins": []}))
    plugins = Plugins(ctx)
    assert plugins.list({"name_contains": "oth"}) == listed
    assert plugins.require("other") == listed["plugins"][0]
    with pytest.raises(PluginCallError, match="Required plugin 'ghost' not found") as info:
        plugins.require("ghost")
    assert info.value.code == "NOT_FOUND"

    async def inside():
        assert await plugins.list() == listed
        assert (await plugins.require("other"))["name"] == "Other"

    asyncio.run(inside())
    assert transport.requests[:3] == [
        ("plugins.query", {"filters": {"name_contains": "oth"}}),
        ("plugins.query", {"filters": {"plugin_ids": ["other"]}}),
        ("plugins.query", {"filters": {"plugin_ids": ["ghost"]}}),
    ]

    ctx, _, _ = make_ctx(lambda op, args: err("VALIDATION_ERROR", "status_in must be a string or a list of strings"))
    with pytest.raises(PluginCallError, match="status_in must be") as info:
        Plugins(ctx).list({"status_in": 1})
    assert info.value.code == "VALIDATION_ERROR"


def test_sync_forms_refuse_a_running_loop():
    ctx, transport, _ = make_ctx(lambda op, args: ok({}))

    async def inside():
        with pytest.raises(RuntimeError, match=r"^trigger_plugin_event_sync cannot be used inside a running event loop; use 'await trigger_plugin_event\(\.\.\.\)' instead$"):
            ctx.trigger_plugin_event_sync("other", "plugin_entry", "e")
        with pytest.raises(RuntimeError, match=r"^query_plugins_sync cannot be used inside a running event loop"):
            ctx.query_plugins_sync()

    asyncio.run(inside())
    assert transport.requests == []


# -- A1: sync calls inside handlers --------------------------------------------------------------------

A1_TEXT = (
    "Sync call 'trigger_plugin_event' invoked inside handler (plugin_entry.caller). "
    "This may block the command loop and cause deadlocks/timeouts."
)


def test_a1_policy_warn_reject_allow(monkeypatch, tmp_path):
    monkeypatch.delenv("NEKO_PLUGIN_LOG_SYNC_CALL_WARNINGS", raising=False)
    call = lambda ctx: lambda: ctx.trigger_plugin_event("other", "plugin_entry", "e")  # noqa: E731

    # warn (the default): logged, then the call proceeds.
    monkeypatch.delenv("NEKO_PLUGIN_SYNC_CALL_POLICY", raising=False)
    ctx, transport, stream = make_ctx(lambda op, args: ok("done"))
    assert in_handler(call(ctx)) == "done"
    assert A1_TEXT in stream.getvalue() and len(transport.requests) == 1
    # Outside a handler scope nothing is checked.
    stream.truncate(0)
    assert ctx.trigger_plugin_event("other", "plugin_entry", "e") == "done"
    assert "Sync call" not in stream.getvalue()

    # reject: raised before anything is sent (as PluginCallError through self.plugins, same text).
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "reject")
    ctx, transport, stream = make_ctx(lambda op, args: ok("done"))
    with pytest.raises(RuntimeError) as info:
        in_handler(call(ctx))
    assert str(info.value) == A1_TEXT
    with pytest.raises(PluginCallError) as info:
        in_handler(lambda: Plugins(ctx).list())
    assert str(info.value) == A1_TEXT.replace("trigger_plugin_event", "query_plugins")
    assert transport.requests == [] and "Sync call" not in stream.getvalue()

    # allow: neither a check nor a log line.
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "ALLOW")
    ctx, transport, stream = make_ctx(lambda op, args: ok("done"))
    assert in_handler(call(ctx)) == "done" and in_handler(lambda: Plugins(ctx).call_entry("other:e")) == "done"
    assert "Sync call" not in stream.getvalue() and len(transport.requests) == 2

    # Anything else is warn.
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "sometimes")
    ctx, _, stream = make_ctx(lambda op, args: ok("done"))
    assert in_handler(call(ctx)) == "done" and A1_TEXT in stream.getvalue()

    # plugin.toml's [plugin.safety] sync_call_in_handler wins over the environment.
    toml = tmp_path / "plugin.toml"
    toml.write_text('[plugin]\nid = "demo"\n\n[plugin.safety]\nsync_call_in_handler = "allow"\n')
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "reject")
    ctx, _, stream = make_ctx(lambda op, args: ok("done"), config_path=toml)
    assert in_handler(call(ctx)) == "done" and "Sync call" not in stream.getvalue()
    toml.write_text('[plugin]\nid = "demo"\n\n[plugin.safety]\nsync_call_in_handler = "reject"\n')
    ctx, _, _ = make_ctx(lambda op, args: ok("done"), config_path=toml)
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "allow")
    with pytest.raises(RuntimeError, match=r"Sync call 'trigger_plugin_event' invoked inside handler"):
        in_handler(call(ctx))


def test_async_forms_are_not_checked(monkeypatch):
    monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "reject")
    ctx, transport, _ = make_ctx(lambda op, args: ok("done") if op == "plugin.call" else ok({"plugins": []}))

    async def handler():
        scope.enter("plugin_entry.caller", None, scope.CallScope("c-1", "caller"))
        return await ctx.trigger_plugin_event("other", "plugin_entry", "e"), await Plugins(ctx).list()

    assert asyncio.run(handler()) == ("done", {"plugins": []})
    assert len(transport.requests) == 2


# -- custom events: HELLO and TRIGGER ---------------------------------------------------------------


class Events(NekoPluginBase):
    @plugin_entry(id="e")
    def e(self, **_):
        return None

    @custom_event(event_type="game", id="ping")
    def ping(self, n=0, _ctx=None):
        return {
            "pong": n,
            "ctx": _ctx,
            "caller": self.ctx.caller_plugin_id,
            "label": self.ctx.handler_ctx,
            "call_id": self.ctx.call_id,
            "thread": threading.current_thread().name,
        }

    @custom_event(event_type="game", id="aping")
    async def aping(self, n=0):
        await asyncio.sleep(0)
        return {"pong": n, "caller": self.ctx.caller_plugin_id, "label": self.ctx.handler_ctx, "thread": threading.current_thread().name}

    @custom_event(event_type="game", id="slow")
    async def slow(self):
        await asyncio.sleep(10)

    @custom_event(event_type="game", id="boom")
    def boom(self):
        raise ValueError("bad move")

    @custom_event(event_type="game", id="odd")
    def odd(self):
        return {"x": object()}


class NoEvents(NekoPluginBase):
    @plugin_entry(id="e")
    def e(self, **_):
        return None


class HostCtx:
    """What the plugin instance needs from its context in these tests (the call scope)."""

    plugin_id = "demo"
    config_path = None
    logger = None
    caller_plugin_id = property(lambda self: (scope.current_call.get() or scope.CallScope("", "")).caller)
    handler_ctx = property(lambda self: scope.handler_label.get())
    call_id = property(lambda self: scope.current_call_id())


class RecordingLink:
    def __init__(self):
        self.posted = []
        self.got = threading.Event()

    def post(self, kind, body, cork=False):
        self.posted.append((kind, body))
        self.got.set()
        return True


def make_host(cls):
    logger, stream = capture()
    tables = build_tables(cls(HostCtx()), {}, logger)
    env = RuntimeEnv(plugin_id="demo", endpoint="ipc:///nowhere", key=bytes(32))
    host = PluginHost(env, link=RecordingLink(), tables=tables, logger=logger)
    return host, stream


def test_hello_declares_custom_events():
    host, _ = make_host(Events)
    try:
        body = host.hello_body()
        assert sorted(body["events"], key=lambda e: e["id"]) == [{"event_type": "game", "id": i} for i in ("aping", "boom", "odd", "ping", "slow")]
        assert [e["id"] for e in body["entries"]] == ["e"]  # custom events are not entries
    finally:
        assert host.shutdown_threads()
    host, _ = make_host(NoEvents)
    try:
        assert "events" not in host.hello_body()  # as neko's serde: absent when empty
    finally:
        assert host.shutdown_threads()


def test_custom_event_triggers():
    host, stream = make_host(Events)
    host.handlers.start()

    async def main():
        host.loop = asyncio.get_running_loop()
        host.started = True

        async def call(body):
            host.link.posted.clear()
            host._dispatch({"args": {}, "timeout_ms": 5000, **body})
            while not host.link.posted:
                await asyncio.sleep(0.01)
            kind, result = host.link.posted[0]
            assert kind == "result" and result["call_id"] == body["call_id"]
            return result

        r = await call({"call_id": "c-1", "entry_id": "ping", "event_type": "game", "caller": "alpha", "args": {"n": 3, "_ctx": {"run_id": "r-1"}}})
        assert r["ok"], r
        assert r["data"] == {"pong": 3, "ctx": {"run_id": "r-1"}, "caller": "alpha", "label": "game.ping", "call_id": "c-1", "thread": r["data"]["thread"]}
        assert r["data"]["thread"].startswith("neko-entry")  # sync handlers run on the pool

        r = await call({"call_id": "c-2", "entry_id": "aping", "event_type": "game", "args": {"n": 4, "_ctx": {"run_id": "r-2"}}})
        assert r["data"] == {"pong": 4, "caller": None, "label": "game.aping", "thread": "neko-handlers"}

        r = await call({"call_id": "c-3", "entry_id": "slow", "event_type": "game", "timeout_ms": 100})
        assert r["error"] == {"code": "TIMEOUT", "message": "Custom event 'game.slow' timed out after 100ms"}

        host._dispatch({"call_id": "c-4", "entry_id": "slow", "event_type": "game", "args": {}, "timeout_ms": 5000})
        host.calls["c-4"].cancel()
        while not any(b["call_id"] == "c-4" for _, b in host.link.posted):
            await asyncio.sleep(0.01)
        assert [b["error"]["code"] for _, b in host.link.posted if b["call_id"] == "c-4"] == ["CANCELED"]

        r = await call({"call_id": "c-5", "entry_id": "boom", "event_type": "game"})
        assert r["error"]["code"] == "INTERNAL" and r["error"]["message"] == "Plugin 'demo' entry 'custom event game.boom' execution failed: Invalid call: bad move"

        r = await call({"call_id": "c-6", "entry_id": "odd", "event_type": "game"})
        assert r["error"]["code"] == "INTERNAL" and r["error"]["message"].endswith("is not JSON serializable")

        r = await call({"call_id": "c-7", "entry_id": "nope", "event_type": "game"})
        assert r["error"] == {"code": "NOT_FOUND", "message": "Custom event 'game.nope' not found"}
        r = await call({"call_id": "c-8", "entry_id": "ping", "event_type": "other"})
        assert r["error"] == {"code": "NOT_FOUND", "message": "Custom event 'other.ping' not found"}
        r = await call({"call_id": "c-9", "entry_id": "n", "event_type": "game", "args": {"bogus": 1}})
        assert r["error"]["code"] == "NOT_FOUND"  # "n" is no event

        # event_type "plugin_entry" is an ordinary entry; custom events are not entries.
        r = await call({"call_id": "c-10", "entry_id": "e", "event_type": "plugin_entry", "caller": "alpha"})
        assert r["ok"] and r["data"] is None
        r = await call({"call_id": "c-11", "entry_id": "ping"})
        assert r["error"] == {"code": "NOT_FOUND", "message": "Entry 'ping' not found in plugin 'demo'"}
        assert host.calls == {}

    try:
        asyncio.run(main())
    finally:
        host.shutdown_threads()
    assert "Custom event 'game.boom' raised ValueError: bad move" in stream.getvalue()
