"""Hello: the bundled example plugin for neko's Python SDK."""

import asyncio

from plugin.sdk import NekoPluginBase, lifecycle, neko_plugin, ok, plugin_entry, timer_interval


@neko_plugin
class HelloPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.logger = ctx.logger
        self.greeting = "Hello"
        self.ticks = 0

    @lifecycle(id="startup")
    def on_startup(self, **_):
        # Config is read from plugin.toml through neko.
        self.greeting = self.config.get("hello.greeting", "Hello")
        self.logger.info("hello plugin started; greeting = {!r}", self.greeting)

    @lifecycle(id="shutdown")
    def on_shutdown(self, **_):
        self.logger.info("hello plugin stopping after {} ticks", self.ticks)

    @plugin_entry(
        id="greet",
        name="Greet",
        description="Greets someone",
        input_schema={
            "type": "object",
            "properties": {"name": {"type": "string", "default": "world"}},
        },
    )
    def greet(self, name: str = "world", **_):
        return ok(data={"message": f"{self.greeting}, {name}!"})

    @plugin_entry(
        id="add",
        name="Add",
        description="Adds two numbers",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    )
    async def add(self, a: float, b: float, **_):
        return {"sum": a + b}

    @plugin_entry(
        id="sleep",
        name="Sleep",
        description="Sleeps for `seconds`, then returns",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0}},
            "required": ["seconds"],
        },
    )
    async def sleep(self, seconds: float, **_):
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @plugin_entry(id="boom", name="Boom", description="Always raises ValueError")
    def boom(self, **_):
        raise ValueError("boom requested")

    # Its own 1 s deadline: the call ends with TIMEOUT.
    @plugin_entry(id="slow", name="Slow", description="Takes longer than its 1 s timeout", timeout=1)
    async def slow(self, **_):
        await asyncio.sleep(5)
        return {"finished": True}

    @timer_interval(id="heartbeat", seconds=5)
    def heartbeat(self):
        self.ticks += 1
        self.report_status({"status": "running", "ticks": self.ticks})
