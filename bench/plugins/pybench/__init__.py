"""PyBench: trivial entries for neko-bench's Python run figures."""

from plugin.sdk import NekoPluginBase, neko_plugin, plugin_entry


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
