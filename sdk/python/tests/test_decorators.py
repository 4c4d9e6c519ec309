"""Decorator metadata (reference §5.2) and how entries are collected."""

import pytest

from plugin.sdk import (
    EVENT_META_ATTR,
    NEKO_PLUGIN_TAG,
    PERSIST_ATTR,
    WORKER_MODE_ATTR,
    EventMeta,
    NekoPluginBase,
    custom_event,
    lifecycle,
    message,
    neko_plugin,
    on_event,
    plugin,
    plugin_entry,
    timer_interval,
    worker,
)
from plugin.sdk.events import EventHandler, WorkerConfig


def meta(fn) -> EventMeta:
    return getattr(fn, EVENT_META_ATTR)


def test_attribute_names_are_the_contract():
    assert EVENT_META_ATTR == "__neko_event_meta__"
    assert PERSIST_ATTR == "_neko_persist"
    assert WORKER_MODE_ATTR == "_neko_worker_mode"
    assert NEKO_PLUGIN_TAG == "__neko_plugin__"


def test_plugin_entry_metadata():
    def fn(**_):
        return None

    out = plugin_entry(id="greet", description="Greets", input_schema={"type": "object"}, timeout=2.5, persist=True)(fn)
    assert out is fn  # not wrapped
    m = meta(fn)
    assert (m.event_type, m.id, m.name, m.description, m.kind, m.auto_start) == ("plugin_entry", "greet", "greet", "Greets", "action", False)
    assert m.input_schema == {"type": "object"}
    assert m.extra == {}
    assert m.timeout == 2.5
    assert getattr(fn, PERSIST_ATTR) is True
    assert {f for f in EventMeta.__dataclass_fields__} >= {"event_type", "id", "name", "description", "input_schema", "kind", "auto_start", "extra"}


def test_plugin_entry_positional_id_bare_use_and_alias():
    @plugin_entry("pos", name="Positional")
    def a():
        pass

    @plugin_entry
    def bare():
        pass

    @plugin.entry(id="via_alias")
    def b():
        pass

    assert (meta(a).id, meta(a).name) == ("pos", "Positional")
    assert meta(bare).id == "bare"
    assert meta(b).id == "via_alias"
    with pytest.raises(ValueError):
        plugin_entry(id="x", timeout=-1)


def test_lifecycle_timer_message_custom():
    @lifecycle(id="startup")
    def start():
        pass

    assert (meta(start).event_type, meta(start).kind) == ("lifecycle", "lifecycle")
    with pytest.raises(ValueError):
        lifecycle(id="boot")

    @timer_interval(id="tick", seconds=5)
    def tick():
        pass

    m = meta(tick)
    assert (m.event_type, m.kind, m.auto_start) == ("timer", "timer", True)
    assert m.extra == {"mode": "interval", "seconds": 5}
    assert m.description == "Run every 5s"

    @message(id="inbox", source="chat")
    def inbox(**_):
        pass

    m = meta(inbox)
    assert (m.event_type, m.kind, m.auto_start) == ("message", "consumer", True)
    assert set(m.input_schema["properties"]) == {"text", "sender", "ts"}

    @custom_event(event_type="weather", id="changed", trigger_method="auto", auto_start=True)
    def changed():
        pass

    m = meta(changed)
    assert (m.event_type, m.kind, m.extra["trigger_method"], m.auto_start) == ("weather", "custom", "auto", True)
    for standard in ("plugin_entry", "lifecycle", "message", "timer"):
        with pytest.raises(ValueError):
            custom_event(event_type=standard, id="x")
    with pytest.raises(ValueError):
        custom_event(event_type="weather", id="x", trigger_method="telepathy")


def test_on_event_checkpoint_and_worker():
    @on_event(event_type="plugin_entry", id="legacy", checkpoint=False)
    def legacy():
        pass

    assert getattr(legacy, PERSIST_ATTR) is False

    @worker(timeout=60, priority=3)
    @plugin_entry(id="heavy")
    def heavy():
        pass

    @plugin.worker
    def plain():
        pass

    assert getattr(heavy, WORKER_MODE_ATTR) == WorkerConfig(timeout=60.0, priority=3)
    assert meta(heavy).id == "heavy"
    assert getattr(plain, WORKER_MODE_ATTR) == WorkerConfig()


class FakeCtx:
    plugin_id = "demo"
    config_path = None
    logger = None

    def __init__(self):
        self.statuses = []

    def update_status(self, status):
        self.statuses.append(status)


@neko_plugin
class Demo(NekoPluginBase):
    input_schema = {"type": "object", "properties": {"q": {"type": "string"}}}

    @plugin_entry(id="b_entry")
    def b(self, **_):
        return 1

    @plugin_entry(id="a_entry")
    async def a(self, **_):
        return 2

    @plugin_entry(id="_hidden")
    def _private(self):
        return 3

    @lifecycle(id="startup")
    def start(self):
        pass

    def helper(self):
        return "not an entry"

    @property
    def expensive(self):
        raise AssertionError("collection must not evaluate properties")


def test_base_class_and_collection():
    ctx = FakeCtx()
    d = Demo(ctx)
    assert getattr(Demo, NEKO_PLUGIN_TAG) is True
    assert d.ctx is ctx and d.plugin_id == "demo" and d._plugin_id == "demo"
    assert d.logger is not None
    d.logger = "custom"  # plugins may assign their own logger
    assert d.logger == "custom"
    entries = d.collect_entries()
    # Alphabetical by attribute name (`_private`, `a`, `b`); decorated private members count.
    assert list(entries) == ["_hidden", "a_entry", "b_entry"]
    assert isinstance(entries["a_entry"], EventHandler)
    assert entries["b_entry"].handler() == 1
    assert "helper" not in entries and "start" not in entries
    assert d.get_input_schema() == Demo.input_schema
    d.report_status({"ok": True})
    assert ctx.statuses == [{"ok": True}]
