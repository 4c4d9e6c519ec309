"""The plugin context and `self.config` / `self.plugins` over a fake transport."""

import asyncio
import json
import concurrent.futures
import threading

import pytest

from plugin._runtime import scope
from plugin._runtime.context import PENDING_FEATURES, SERVED_OPS, PluginContext
from plugin.sdk import NekoPluginBase, PluginConfig, Plugins
from plugin.sdk.bus import BusHub
from plugin.sdk.errors import PluginCallError, PluginConfigError
from plugin.sdk.logger import PluginLogger

CONFIG = {"plugin": {"id": "demo"}, "demo": {"greeting": "Hi", "nested": {"level": 3}, "items": ["a", "b"]}}


class FakeTransport:
    """Answers config.get at once (or never, or with an error)."""

    def __init__(self, mode="answer"):
        self.mode = mode
        self.posted = []
        self.requests = []
        self.forgotten = []

    def post(self, kind, body, cork=False):
        self.posted.append((kind, body))
        return True

    def start_request(self, op, args):
        self.requests.append((op, args))
        future = concurrent.futures.Future()
        request_id = f"q-{len(self.requests)}"
        if self.mode == "answer":
            future.set_result({"request_id": request_id, "ok": True, "result": {"plugin_id": "demo", "config": CONFIG}})
        elif self.mode == "error":
            future.set_result({"request_id": request_id, "ok": False, "error": {"code": "INTERNAL", "message": "cannot read plugin.toml"}})
        return request_id, future

    def forget(self, request_id):
        self.forgotten.append(request_id)


def make_ctx(mode="answer"):
    transport = FakeTransport(mode)
    logger = PluginLogger("test").bind(plugin_id="demo")
    logger.remove()
    return PluginContext("demo", None, logger, transport), transport


def test_update_status_posts_a_status_message():
    ctx, transport = make_ctx()
    ctx.update_status({"phase": "up", "n": (1, 2)})
    assert transport.posted == [("status", {"status": {"phase": "up", "n": [1, 2]}})]
    # Lenient, as the reference was: never fails the caller.
    ctx.update_status("busy")
    ctx.update_status({"when": complex(1, 2)})
    assert transport.posted[1:] == [("status", {"status": {"status": "busy"}}), ("status", {"status": {"when": "(1+2j)"}})]


def test_config_reads_synchronously_outside_a_loop():
    ctx, transport = make_ctx()
    cfg = PluginConfig(ctx)
    assert cfg.dump() == CONFIG
    assert cfg.get("demo.greeting") == "Hi"
    assert cfg.get_sync("demo.nested.level") == 3
    assert cfg.get("demo.items.1") == "b"
    assert cfg.get("demo.missing", None) is None
    assert cfg.get("demo.missing", "dflt") == "dflt"
    assert cfg.require("demo.greeting") == "Hi"
    assert cfg.get_section("demo.nested") == {"level": 3}
    assert cfg.get_section("demo.missing") == {}  # a missing section is empty, as in the reference
    assert cfg.dump_base() == CONFIG
    assert cfg.dump_effective() == CONFIG
    with pytest.raises(PluginConfigError, match="Config key 'demo.missing' not found"):
        cfg.get("demo.missing")
    with pytest.raises(PluginConfigError):
        cfg.get_section("demo.greeting")
    assert {op for op, _ in transport.requests} == {"config.get", "config.base"}
    assert len(transport.forgotten) == len(transport.requests)


def test_config_smart_methods_return_coroutines_inside_a_loop():
    ctx, _ = make_ctx()
    cfg = PluginConfig(ctx)

    async def inside():
        pending = cfg.get("demo.greeting")
        assert asyncio.iscoroutine(pending)
        assert await pending == "Hi"
        assert await cfg.dump() == CONFIG
        assert await cfg.get_async("demo.nested.level") == 3
        with pytest.raises(PluginConfigError, match=r"get_sync cannot be used inside a running event loop; use 'await get\(\.\.\.\)' instead"):
            cfg.get_sync("demo.greeting")
        with pytest.raises(PluginConfigError, match="dump_sync cannot be used inside a running event loop"):
            cfg.dump_sync()
        assert (await ctx.get_own_config())["config"] == CONFIG

    asyncio.run(inside())


def test_request_errors_and_timeouts():
    ctx, _ = make_ctx("error")
    with pytest.raises(RuntimeError, match="cannot read plugin.toml"):
        ctx._request_sync("config.get", {})
    with pytest.raises(PluginConfigError, match="cannot read plugin.toml"):
        PluginConfig(ctx).dump()

    ctx, transport = make_ctx("never")
    with pytest.raises(TimeoutError, match=r"PLUGIN_CONFIG_GET timed out after 0.05s"):
        ctx._request_sync("config.get", {}, timeout=0.05)

    async def inside():
        with pytest.raises(TimeoutError, match=r"PLUGIN_CONFIG_GET timed out after 0.05s"):
            await ctx._request_async("config.get", {}, timeout=0.05)

    asyncio.run(inside())
    assert transport.forgotten == ["q-1", "q-2"]


class LoopTransport(FakeTransport):
    """Answers on the event loop, by hand: the loop-native request form (`start_request_async`)."""

    def __init__(self):
        super().__init__("never")
        self.answers = {}

    def start_request_async(self, op, args):
        self.requests.append((op, args))
        request_id = f"q-{len(self.requests)}"
        self.answers[request_id] = asyncio.get_running_loop().create_future()
        return request_id, self.answers[request_id]


def test_async_request_deadlines_share_one_timer():
    transport = LoopTransport()
    logger = PluginLogger("test").bind(plugin_id="demo")
    logger.remove()
    ctx = PluginContext("demo", None, logger, transport)

    async def inside():
        loop = asyncio.get_running_loop()
        ended = []

        async def ask(name, timeout):
            try:
                result = await ctx._request_async("config.get", {"name": name}, timeout=timeout)
            except TimeoutError as exc:
                result = str(exc)
            ended.append((name, result, round(loop.time() - started, 2)))

        started = loop.time()
        tasks = [asyncio.create_task(ask(n, t)) for n, t in (("late", 0.3), ("early", 0.1), ("answered", 0.1), ("none", 0))]
        await asyncio.sleep(0.03)
        transport.answers["q-3"].set_result({"ok": True, "result": {"config": "x"}})
        await asyncio.sleep(0.02)
        transport.answers["q-4"].set_result({"ok": True, "result": {"config": "y"}})
        await asyncio.gather(*tasks)
        assert [(n, r) for n, r, _ in ended] == [
            ("answered", {"config": "x"}),
            ("none", {"config": "y"}),
            ("early", "PLUGIN_CONFIG_GET timed out after 0.1s"),
            ("late", "PLUGIN_CONFIG_GET timed out after 0.3s"),
        ]
        # No deadline passes early (the order above shows that each passes in turn).
        assert ended[2][2] >= 0.09 and ended[3][2] >= 0.29
        deadlines = ctx._deadlines_of(loop)
        assert deadlines.ends == {} and deadlines.timer is None

    asyncio.run(inside())
    assert transport.forgotten == ["q-3", "q-4", "q-2", "q-1"]


def test_run_updates_and_exports_send_their_requests():
    ctx, transport = make_ctx()
    ctx.run_update(run_id="r", progress=0.5, stage="s")
    ctx.run_progress_sync(run_id="r", progress=1.0)
    ctx.export_push_text(run_id="r", text="t", metadata={"k": 1})
    ctx.export_push_binary(run_id="r", binary_data=b"xy", mime="application/x")
    assert transport.requests == [
        ("run.update", {"run_id": "r", "progress": 0.5, "stage": "s"}),
        ("run.update", {"run_id": "r", "progress": 1.0}),
        ("export.push", {"run_id": "r", "export_type": "text", "text": "t", "metadata": {"k": 1}}),
        ("export.push", {"run_id": "r", "export_type": "binary", "binary_base64": "eHk=", "mime": "application/x"}),
    ]
    with pytest.raises(ValueError, match="binary_data too large"):
        ctx.export_push_binary(run_id="r", binary_data=b"x" * (256 * 1024 + 1))
    with pytest.raises(RuntimeError, match="run_id is required"):
        ctx.run_update(progress=0.1)


def test_features_of_later_releases_name_themselves():
    ctx, transport = make_ctx()
    cases = [
        (lambda: ctx.query_memory("lan", "q"), "memory queries"),
        (lambda: ctx.bus.memory.query("lan", "q"), "memory queries"),
    ]
    for call, words in cases:
        with pytest.raises(NotImplementedError, match=words):
            call()
    assert transport.requests == []  # nothing was sent
    assert isinstance(ctx.bus, BusHub)
    assert set(PENDING_FEATURES) == {"memory.query"}
    assert not set(PENDING_FEATURES) & SERVED_OPS  # a served op is never "pending"


def test_config_writes_and_profiles_send_their_requests():
    ctx, transport = make_ctx()
    cfg = PluginConfig(ctx)
    # Writes and profile reads return the config itself, as the reference unwraps it.
    assert cfg.update({"demo": {"greeting": "Yo"}}) == CONFIG
    assert cfg.set("demo.nested.level", 4) == CONFIG
    assert cfg.dump_base() == CONFIG
    cfg.get_profiles_state_sync()
    assert cfg.get_profile_sync("dev") == CONFIG
    assert cfg.dump_effective_sync("dev") == CONFIG
    assert transport.requests == [
        ("config.update", {"updates": {"demo": {"greeting": "Yo"}}}),
        ("config.update", {"updates": {"demo": {"nested": {"level": 4}}}}),
        ("config.base", {}),
        ("config.profiles", {}),
        ("config.profile", {"profile_name": "dev"}),
        ("config.effective", {"profile_name": "dev"}),
    ]
    with pytest.raises(PluginConfigError, match="Invalid updates: must be a dict"):
        cfg.update_sync(["not", "a", "dict"])
    ctx, _ = make_ctx("error")
    with pytest.raises(PluginConfigError, match="cannot read plugin.toml"):
        PluginConfig(ctx).update({"a": 1})


def test_message_plane_features_need_its_endpoints(monkeypatch):
    # push_message and ctx.bus go to the message plane, not through the supervisor link.
    for name in ("NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT", "NEKO_MESSAGE_PLANE_RPC", "NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT",
                 "NEKO_MESSAGE_PLANE_PUB", "NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT", "NEKO_MESSAGE_PLANE_INGEST"):
        monkeypatch.delenv(name, raising=False)
    ctx, transport = make_ctx()
    cases = [
        (lambda: ctx.push_message("src", "text", content="hi"), "push_message"),
        (lambda: ctx.push_message("src", "text", fast_mode=True), "push_message"),
        (lambda: ctx.bus.messages.get(), "ctx.bus.messages.get"),
        (lambda: ctx.bus.events.get(), "ctx.bus.events.get"),
        (lambda: ctx.bus.lifecycle.delete("x"), "ctx.bus.lifecycle.delete"),
        (lambda: ctx.bus.memory.get("bucket"), "ctx.bus.memory.get"),
    ]
    for call, feature in cases:
        with pytest.raises(RuntimeError, match=f"message_plane is not available for {feature}"):
            call()
    assert transport.requests == []
    ctx.close()
    with pytest.raises(PluginCallError, match="Invalid reference"):
        Plugins(ctx).call_entry("no-colon")


def test_run_id_and_cancel_flag_come_from_the_call_scope():
    ctx, _ = make_ctx()
    assert ctx.run_id is None and not ctx.cancelled
    with pytest.raises(RuntimeError, match=r"run_id is required"):
        ctx.require_run_id()
    call = scope.CallScope("c-1", "entry", "r-7")
    seen = {}

    def handler():
        seen["run_id"] = ctx.run_id
        seen["require"] = ctx.require_run_id()
        seen["label"] = ctx.handler_ctx
        call.flag.set()
        seen["cancelled"] = ctx.cancelled and ctx.is_cancelled()

    thread = threading.Thread(target=scope.run_scoped, args=(handler,), kwargs={"label": "plugin_entry.entry", "run_id": "r-7", "call": call})
    thread.start()
    thread.join()
    assert seen == {"run_id": "r-7", "require": "r-7", "label": "plugin_entry.entry", "cancelled": True}
    assert ctx.run_id is None  # nothing leaked into this thread


def test_sync_call_policy_message(monkeypatch):
    ctx, _ = make_ctx()
    token = scope.handler_label.set("plugin_entry.x")
    try:
        monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "reject")
        with pytest.raises(RuntimeError, match=r"Sync call 'query_plugins' invoked inside handler \(plugin_entry.x\)"):
            ctx._enforce_sync_call_policy("query_plugins")
        monkeypatch.setenv("NEKO_PLUGIN_SYNC_CALL_POLICY", "warn")
        ctx._enforce_sync_call_policy("query_plugins")  # only logs
    finally:
        scope.handler_label.reset(token)


def test_base_does_no_io_in_its_constructor():
    ctx, transport = make_ctx()

    class P(NekoPluginBase):
        pass

    p = P(ctx)
    assert transport.requests == [] and transport.posted == []
    assert p.logger is ctx.logger
    assert isinstance(p.config, PluginConfig) and isinstance(p.plugins, Plugins)
    assert p.get_input_schema() == {}
    p.report_status({"x": 1})
    assert transport.posted == [("status", {"status": {"x": 1}})]
    env = p.system_info.get_python_env()
    assert env["python"]["version_info"]["major"] == 3 and env["python"]["executable"]
    assert env["os"]["system"] and env["os"]["architecture"]["bits"]
    json.dumps(env)  # plain JSON data


def test_reference_settings_module_reads_the_environment(monkeypatch):
    import importlib

    import plugin.settings as settings

    monkeypatch.setenv("NEKO_PLUGIN_EXECUTION_TIMEOUT", "12.5")
    monkeypatch.setenv("NEKO_RUN_TOKEN_TTL_SECONDS", "soon")  # unparsable: the default, as in the reference
    monkeypatch.setenv("PLUGIN_ENABLE_DEPENDENCY_CHECK", "on")  # not one of this flag's true words
    settings = importlib.reload(settings)
    assert settings.PLUGIN_EXECUTION_TIMEOUT == 12.5
    assert settings.RUN_TOKEN_TTL_SECONDS == 3600
    assert settings.PLUGIN_ENABLE_DEPENDENCY_CHECK is False
    assert settings.PLUGIN_LOG_LEVEL == "INFO"
    assert "PLUGIN_SHUTDOWN_TIMEOUT" in settings.__all__
    assert not [name for name in settings.__all__ if name.startswith("_")], "private names are not exported"
    assert settings.get_settings()["SYNC_CALL_IN_HANDLER_POLICY"] == "warn"
