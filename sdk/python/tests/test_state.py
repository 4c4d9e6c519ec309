"""State persistence: `__freezable__` attributes, the extended types, the backends and the modes."""

import dataclasses
import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from plugin.sdk.state import STATE_FILE, StatePersistence, decode, encode, persist_mode, state_backend


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Custom:
    def __init__(self, n):
        self.n = n

    def __freeze_serialize__(self):
        return {"n": self.n}

    @classmethod
    def __freeze_deserialize__(cls, data):
        return cls(data["n"])


def test_extended_types_round_trip_through_json():
    values = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "at": dt.time(3, 4, 5),
        "span": dt.timedelta(seconds=90.5),
        "color": Color.BLUE,
        "tags": {"a", "b"},
        "frozen": frozenset({1, 2}),
        "pair": (1, "two"),
        "raw": b"\x00\xff",
        "path": Path("/tmp/x"),
        "id": uuid.UUID(int=7),
        "money": Decimal("1.10"),
        "point": Point(1, 2.5),
        "by_int": {1: "one", (2, 3): "pair"},
        "nested": [{"deep": {("t",)}}],
        "plain": {"a": [1, None, True, 1.5, "s"]},
    }
    data = json.loads(json.dumps(encode(values)))
    back = decode(data)
    assert back == values
    assert type(back["pair"]) is tuple and type(back["frozen"]) is frozenset and type(back["point"]) is Point
    custom = decode(json.loads(json.dumps(encode(Custom(4)))))
    assert isinstance(custom, Custom) and custom.n == 4
    with pytest.raises(ValueError):
        encode(object())


class Plugin:
    def __init__(self):
        self.count = 0
        self.seen = set()
        self.unsaved = "x"


def test_file_backend_saves_restores_once_and_skips_what_it_cannot_save(tmp_path):
    logs = []

    class Log:
        def warning(self, text, *args):
            logs.append(text.format(*args))

    state = StatePersistence("p", tmp_path, freezable=["count", "seen", "bad", "missing"], backend="file", mode="auto", logger=Log())
    p = Plugin()
    p.count, p.seen, p.bad = 3, {"a"}, object()
    assert state.save(p) is True and (tmp_path / STATE_FILE).is_file()
    assert any("'bad' not saved" in line for line in logs)
    fresh = Plugin()
    assert state.restore(fresh) is True
    assert (fresh.count, fresh.seen, fresh.unsaved) == (3, {"a"}, "x")
    assert not (tmp_path / STATE_FILE).exists()  # cleared once restored
    assert state.restore(Plugin()) is False
    assert [f.name for f in tmp_path.iterdir()] == []  # no temp file left behind


def test_memory_backend_uses_nekos_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NEKO_PLUGIN_STATE_DIR", str(tmp_path / "run"))
    state = StatePersistence("p", tmp_path / "plugin", freezable=["count"], backend="memory", mode="manual")
    p = Plugin()
    p.count = 9
    state.save(p)
    assert (tmp_path / "run" / "p.state").is_file() and not (tmp_path / "plugin").exists()
    assert state.load() == {"count": 9}
    monkeypatch.delenv("NEKO_PLUGIN_STATE_DIR")
    in_process = StatePersistence("q", None, freezable=["count"], backend="memory", mode="auto")
    in_process.save(p)
    assert in_process.has_saved_state() and in_process.load() == {"count": 9}
    in_process.clear()
    assert not in_process.has_saved_state()


def test_when_an_entry_saves():
    auto = StatePersistence("p", None, freezable=["a"], backend="file", mode="auto")
    manual = StatePersistence("p", None, freezable=["a"], backend="file", mode="manual")
    assert (auto.should_save(None), auto.should_save(True), auto.should_save(False)) == (True, True, False)
    assert (manual.should_save(None), manual.should_save(True)) == (False, True)
    assert not StatePersistence("p", None, freezable=["a"], backend="off", mode="auto").should_save(True)
    assert not StatePersistence("p", None, freezable=[], backend="file", mode="auto").should_save(True)
    assert not StatePersistence("p", None, freezable=["a"], backend="file", mode="off").should_save(True)


def test_mode_and_backend_come_from_plugin_toml_then_the_class_then_the_environment(monkeypatch):
    class Auto:
        __persist_mode__ = "auto"

    class Legacy:
        __persist_mode__ = "off"
        __freeze_mode__ = "manual"

    assert persist_mode({"plugin_state": {"persist_mode": "manual"}}, Auto) == "manual"
    assert persist_mode({}, Auto) == "auto"
    assert persist_mode({}, Legacy) == "manual"
    assert persist_mode({"plugin_checkpoint": {"freeze_mode": "auto"}}, object) == "auto"
    assert persist_mode({"plugin_state": {"persist_mode": "bogus"}}, object) == "off"
    monkeypatch.delenv("NEKO_PLUGIN_STATE_BACKEND", raising=False)
    assert state_backend({}) == "off"
    assert state_backend({"plugin_state": {"backend": "FILE"}}) == "file"
    monkeypatch.setenv("NEKO_PLUGIN_STATE_BACKEND", "memory")
    assert state_backend({}) == "memory"
    assert state_backend({"plugin_state": {"backend": "off"}}) == "off"
