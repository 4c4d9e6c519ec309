"""PyBench: trivial entries for neko-bench's Python run figures, and pushes for its plane figure."""

import asyncio
import time

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

    @plugin_entry(
        id="call_loop",
        name="Call loop",
        description="Calls `target` ('plugin:entry') n times, `concurrency` at once; returns each call's latency",
        timeout=600.0,
    )
    async def call_loop(self, target: str, n: int, concurrency: int = 1, **_):
        latencies: list[int] = []
        errors: list[str] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                try:
                    await self.plugins.call_entry(target, {}, timeout=10.0)
                except Exception as exc:  # counted, the loop goes on
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(int((time.perf_counter() - started) * 1e6))

        concurrency = max(1, min(concurrency, n or 1))
        shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(worker(share) for share in shares))
        return {
            "latencies_us": latencies,
            "elapsed_s": time.perf_counter() - started,
            "failed": len(errors),
            "first_error": errors[0] if errors else None,
        }

    @plugin_entry(
        id="bus_get",
        name="Bus reads",
        description="self.ctx.bus.messages.get(max_count) n times, one after the other; returns each read's latency",
        timeout=600.0,
    )
    def bus_get(self, n: int, max_count: int = 100, **_):
        latencies: list[int] = []
        sizes: set[int] = set()
        started = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            got = self.ctx.bus.messages.get(max_count=max_count)
            latencies.append(int((time.perf_counter() - t) * 1e6))
            sizes.add(len(got))
        return {"latencies_us": latencies, "elapsed_s": time.perf_counter() - started, "sizes": sorted(sizes)}

    def _push(self, n: int, fast_mode: bool) -> dict:
        # Returns as soon as the SDK took the messages (fast mode: queued for its batcher thread,
        # which keeps sending after the run ends): the bench times the plane's own counter of
        # accepted records, so nothing here flushes (ctx.close() would end the plugin's plane).
        submitted = 0
        for i in range(n):
            receipt = self.ctx.push_message(source="bench", message_type="text", content=i, fast_mode=fast_mode)
            submitted += bool(receipt["submitted"])
        return {"submitted": submitted, "stats": self.ctx.message_stats()}
