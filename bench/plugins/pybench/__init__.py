"""PyBench: trivial entries for neko-bench's Python run figures, and pushes for its plane figure."""

from plugin.sdk import NekoPluginBase, neko_plugin, plugin_entry

PUSH_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0}},
    "required": ["n"],
}


@neko_plugin
class PyBench(NekoPluginBase):
    # A plain `def`: the SDK runs it on its thread pool for synchronous entries.
    @plugin_entry(id="noop_sync", name="No-op (sync)", description="Returns at once")
    def noop_sync(self, **_):
        return {"ok": True}

    # An `async def`: the SDK runs it on its event loop.
    @plugin_entry(id="noop_async", name="No-op (async)", description="Returns at once")
    async def noop_async(self, **_):
        return {"ok": True}

    @plugin_entry(
        id="push_fast",
        name="Push (fast mode)",
        description="push_message(fast_mode=True) n times; returns {submitted, stats}",
        input_schema=PUSH_SCHEMA,
    )
    def push_fast(self, n: int, **_):
        return self._push(n, fast_mode=True)

    @plugin_entry(
        id="push_normal",
        name="Push (normal mode)",
        description="push_message() n times, a frame each; returns {submitted, stats}",
        input_schema=PUSH_SCHEMA,
    )
    def push_normal(self, n: int, **_):
        return self._push(n, fast_mode=False)

    def _push(self, n: int, fast_mode: bool) -> dict:
        # Returns as soon as the SDK took the messages (fast mode: queued for its batcher thread,
        # which keeps sending after the run ends): the bench times the plane's own counter of
        # accepted records, so nothing here flushes (ctx.close() would end the plugin's plane).
        submitted = 0
        for i in range(n):
            receipt = self.ctx.push_message(source="bench", message_type="text", content=i, fast_mode=fast_mode)
            submitted += bool(receipt["submitted"])
        return {"submitted": submitted, "stats": self.ctx.message_stats()}
