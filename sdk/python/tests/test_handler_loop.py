"""The handler loop (plugin code's own event loop and thread), its watchdog, and the plugin-level
input_schema in HELLO."""

import asyncio
import io
import threading

import pytest

from plugin._runtime.entries import build_tables, plugin_input_schema
from plugin._runtime.env import RuntimeEnv
from plugin._runtime.handler_loop import HandlerLoop, HandlerLoopWatchdog, name_task
from plugin._runtime.host import PluginHost
from plugin.sdk import NekoPluginBase, plugin_entry
from plugin.sdk.logger import PluginLogger


def capture():
    stream = io.StringIO()
    logger = PluginLogger("t", level="DEBUG").bind(plugin_id="demo")
    logger.remove()
    logger.add(stream, level="DEBUG")
    return logger, stream


@pytest.fixture
def handlers():
    logger, _ = capture()
    h = HandlerLoop(logger)
    h.start()
    yield h
    assert h.stop(2.0)


def test_runs_coroutines_in_its_own_thread(handlers):
    async def where():
        return threading.current_thread().name, asyncio.get_running_loop()

    name, loop = handlers.submit(where()).result(2)
    assert name == "neko-handlers" and loop is handlers.loop

    async def from_io_loop():
        return await handlers.run(where())

    assert asyncio.run(from_io_loop())[0] == "neko-handlers"


def test_cancel_from_another_thread_reaches_the_task(handlers):
    seen = threading.Event()
    started = threading.Event()

    async def waits():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.set()
            raise

    async def io_side():
        work = handlers.run(waits())
        await asyncio.to_thread(started.wait, 2)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work

    asyncio.run(io_side())
    assert seen.wait(2)


def test_stop_reports_a_stuck_loop():
    logger, _ = capture()
    h = HandlerLoop(logger)
    h.start()
    release = threading.Event()
    h.call_soon(release.wait, 5)  # blocks the loop
    assert h.stop(0.2) is False
    release.set()
    h.thread.join(2)
    assert not h.thread.is_alive() and h.loop.is_closed()


def test_watchdog_names_the_blocking_handler(handlers):
    logger, out = capture()

    async def blocking():
        name_task("plugin_entry.stuck")
        threading.Event().wait(0.8)  # blocks inside the standard library: the plugin's line is named

    async def io_side():
        dog = HandlerLoopWatchdog(handlers, asyncio.get_running_loop(), logger, threshold_s=0.3)
        runner = asyncio.ensure_future(dog.run())
        await handlers.run(blocking())
        await asyncio.sleep(0.3)
        runner.cancel()
        return dog

    dog = asyncio.run(io_side())
    text = out.getvalue()
    assert dog.stalls == 1
    assert "unresponsive for" in text and "running 'plugin_entry.stuck'" in text and "in blocking" in text
    assert "responsive again" in text


def test_watchdog_is_quiet_when_the_loop_is_free(handlers):
    logger, out = capture()

    async def io_side():
        dog = HandlerLoopWatchdog(handlers, asyncio.get_running_loop(), logger, threshold_s=0.2)
        runner = asyncio.ensure_future(dog.run())
        await handlers.run(asyncio.sleep(0.6))
        runner.cancel()
        return dog

    assert asyncio.run(io_side()).stalls == 0
    assert out.getvalue() == ""


# -- plugin-level input_schema ------------------------------------------------------------------------


class WithSchema(NekoPluginBase):
    input_schema = {"type": "object", "properties": {"q": {"type": "string"}}}

    @plugin_entry(id="e")
    def e(self, **_):
        return None


class WithoutSchema(NekoPluginBase):
    @plugin_entry(id="e")
    def e(self, **_):
        return None


class Ctx:
    plugin_id = "demo"
    config_path = None
    logger = None


def hello_of(cls):
    logger, _ = capture()
    tables = build_tables(cls(Ctx()), {}, logger)
    env = RuntimeEnv(plugin_id="demo", endpoint="ipc:///nowhere", key=bytes(32))
    host = PluginHost(env, link=None, tables=tables, logger=logger)
    try:
        return host.hello_body()
    finally:
        assert host.shutdown_threads()  # the handler loop was never started: it is just closed
        assert host.handlers.loop.is_closed()


def test_hello_carries_the_class_input_schema():
    body = hello_of(WithSchema)
    assert body["input_schema"] == {"type": "object", "properties": {"q": {"type": "string"}}}
    assert "input_schema" not in hello_of(WithoutSchema)


def test_plugin_input_schema_rules():
    class Empty:
        input_schema = {}

    class NotADict:
        input_schema = "nope"

    class NotJson:
        input_schema = {"x": object()}

    assert plugin_input_schema(WithoutSchema) is None
    assert plugin_input_schema(Empty) is None
    assert plugin_input_schema(NotADict) is None
    assert plugin_input_schema(NotJson) is None
    assert plugin_input_schema(WithSchema) == WithSchema.input_schema
