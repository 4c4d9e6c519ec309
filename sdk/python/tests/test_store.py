"""`self.store` (PluginStore), `self.db` (PluginDatabase) and `MemoryClient`."""

import asyncio
import sqlite3
import sys
import threading

import msgpack
import pytest

from plugin._runtime.context import PluginContext
from plugin.sdk import MemoryClient, NekoPluginBase, PluginDatabase, PluginStore
from plugin.sdk.logger import PluginLogger


def store(tmp_path, enabled=True):
    return PluginStore("demo", tmp_path, enabled=enabled)


def test_set_get_and_the_rest(tmp_path):
    s = store(tmp_path)
    assert not (tmp_path / "store.db").exists(), "nothing is made before the first call"
    assert s.get("missing") is None and s.get("missing", 5) == 5
    s.set("a", {"n": 1, "items": [1, "two", None, True, 2.5]})
    s.set("b", "text")
    s.set("b", "text2")  # overwrite
    s.set("n", None)  # None is a value, not a missing key
    assert (tmp_path / "store.db").exists()
    assert s.get("a") == {"n": 1, "items": [1, "two", None, True, 2.5]}
    assert s.get("b") == "text2"
    assert s.exists("n") and s.get("n", "dflt") is None
    assert s.count() == 3 and len(s) == 3
    assert s.keys() == ["a", "b", "n"]
    assert s.dump() == {"a": {"n": 1, "items": [1, "two", None, True, 2.5]}, "b": "text2", "n": None}
    assert s.delete("b") is True and s.delete("b") is False
    assert not s.exists("b")
    assert s.clear() == 2 and s.count() == 0 and s.dump() == {}


def test_msgpack_semantics_and_bad_values(tmp_path):
    s = store(tmp_path)
    s.set("t", (1, 2))
    s.set("d", {1: "x"})
    s.set("b", b"\x00bytes")
    assert s.get("t") == [1, 2]  # as msgpack has it
    assert s.get("d") == {1: "x"}
    assert s.get("b") == b"\x00bytes"
    for bad in (object(), {1, 2}, {"nested": object()}, 1 << 70):
        with pytest.raises(TypeError) as info:
            s.set("bad", bad)
        assert "msgpack-serialisable" in str(info.value) and "'bad'" in str(info.value)
    assert not s.exists("bad")
    with pytest.raises(TypeError):
        s.set(1, "key must be a string")


def test_rows_are_the_reference_encoding_and_old_json_rows_still_read(tmp_path):
    s = store(tmp_path)
    s.set("v", {"a": [1, 2]})
    s.close()
    conn = sqlite3.connect(tmp_path / "store.db")
    (raw,) = conn.execute("SELECT value FROM kv_store WHERE key = 'v'").fetchone()
    assert isinstance(raw, bytes) and msgpack.unpackb(raw) == {"a": [1, 2]}
    # A row as the reference writes it, and one an earlier neko wrote as JSON text.
    conn.execute("INSERT INTO kv_store VALUES ('ref', ?, 1.0, 1.0)", (msgpack.packb({"from": "reference"}, use_bin_type=True),))
    conn.execute("""INSERT INTO kv_store VALUES ('old', '{"from": "json"}', 1.0, 1.0)""")
    conn.commit()
    conn.close()
    assert s.get("ref") == {"from": "reference"} and s.get("old") == {"from": "json"}
    assert s.dump() == {"v": {"a": [1, 2]}, "ref": {"from": "reference"}, "old": {"from": "json"}}
    s.close()


def test_keys_prefix_is_literal(tmp_path):
    s = store(tmp_path)
    for key in ("user:1", "user:2", "users", "u%x", "u_x", "uXx", "other"):
        s.set(key, key)
    assert s.keys("user:") == ["user:1", "user:2"]
    assert s.keys("user") == ["user:1", "user:2", "users"]
    assert s.keys("u%") == ["u%x"]
    assert s.keys("u_") == ["u_x"]
    assert s.keys("nothing") == []


def test_dict_sugar(tmp_path):
    s = store(tmp_path)
    s["k"] = [1]
    assert s["k"] == [1] and "k" in s and "z" not in s and 3 not in s
    assert list(s) == ["k"]
    with pytest.raises(KeyError):
        s["z"]
    del s["k"]
    with pytest.raises(KeyError):
        del s["k"]
    assert bool(s) is True  # an empty store is still truthy


def test_persists_across_instances_and_close(tmp_path):
    s = store(tmp_path)
    s.set("kept", {"v": 1})
    s.close()
    assert s.get("kept") == {"v": 1}  # reopens after close()
    s.close()
    other = store(tmp_path)
    assert other.get("kept") == {"v": 1}
    # The table is the reference's: kv_store(key, value, created_at, updated_at).
    conn = sqlite3.connect(tmp_path / "store.db")
    cols = [row[1] for row in conn.execute("PRAGMA table_info(kv_store)")]
    conn.close()
    assert cols == ["key", "value", "created_at", "updated_at"]
    other.close()


def test_threads_and_async_code(tmp_path):
    s = store(tmp_path)
    errors = []

    def writer(i):
        try:
            for j in range(20):
                s.set(f"t{i}:{j}", j)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and s.count() == 80

    async def main():
        s.set("from_async", True)
        return await asyncio.to_thread(s.get, "from_async")

    assert asyncio.run(main()) is True
    s.close()


def test_a_disabled_store_reads_nothing_and_drops_writes_with_a_warning(tmp_path):
    lines = []
    logger = PluginLogger("test").bind(plugin_id="demo")
    logger.remove()
    logger.add(lambda message: lines.append(str(message)), level="WARNING")
    s = PluginStore("demo", tmp_path, logger=logger, enabled=False)
    s.set("a", 1)
    s["b"] = 2
    assert s.get("a") is None and s.get("a", 5) == 5
    assert (s.exists("a"), s.delete("a"), s.keys(), s.count(), s.clear(), s.dump()) == (False, False, [], 0, 0, {})
    assert "a" not in s and len(s) == 0 and list(s) == []
    with pytest.raises(KeyError):
        s["a"]
    assert len(lines) == 2 and "[plugin.store]" in lines[0] and "enabled = true" in lines[0]
    assert not (tmp_path / "store.db").exists()


# -- NekoPluginBase wiring ---------------------------------------------------------------------------


def make_ctx(plugin_dir, toml):
    (plugin_dir / "plugin.toml").write_text(toml)
    logger = PluginLogger("test").bind(plugin_id="demo")
    logger.remove()

    class NoTransport:
        def post(self, kind, body, cork=False):
            raise AssertionError("no message expected")

        def start_request(self, op, args):
            raise AssertionError(f"no round-trip expected in __init__ ({op})")

        def forget(self, request_id):
            pass

    return PluginContext("demo", plugin_dir / "plugin.toml", logger, NoTransport(), plugin_dir)


def test_base_sets_store_and_db_from_plugin_toml(tmp_path):
    ctx = make_ctx(tmp_path, '[plugin]\nid = "demo"\n[plugin.store]\nenabled = true\n[plugin.database]\nenabled = true\nname = "mine.db"\n')
    plugin = NekoPluginBase(ctx)
    assert isinstance(plugin.store, PluginStore) and plugin.store.enabled
    assert isinstance(plugin.db, PluginDatabase) and plugin.db.enabled
    assert plugin.db.db_path == tmp_path / "mine.db"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plugin.toml"], "no file is made in __init__"
    plugin.store.set("x", 1)
    assert plugin.store.get("x") == 1 and (tmp_path / "store.db").exists()
    plugin.store.close()


def test_base_leaves_store_and_db_off_by_default(tmp_path):
    ctx = make_ctx(tmp_path, '[plugin]\nid = "demo"\n')
    plugin = NekoPluginBase(ctx)
    assert plugin.store.enabled is False and plugin.db.enabled is False
    assert plugin.db.db_path == tmp_path / "demo.db"
    plugin.store.set("x", 1)  # dropped, as the reference does
    assert plugin.store.get("x") is None
    with pytest.raises(RuntimeError, match=r"\[plugin.database\]"):
        plugin.db.session().__enter__()
    with pytest.raises(RuntimeError, match=r"\[plugin.database\]"):
        plugin.db.create_all()
    # An unreadable plugin.toml (or none) means off, never an error in __init__.
    (tmp_path / "plugin.toml").write_text("not [valid toml")
    assert NekoPluginBase(ctx).store.enabled is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plugin.toml"]


def test_subclass_may_define_store_itself(tmp_path):
    ctx = make_ctx(tmp_path, '[plugin]\nid = "demo"\n')

    class Own(NekoPluginBase):
        @property
        def store(self):
            return "mine"

    assert Own(ctx).store == "mine"


# -- PluginDatabase ------------------------------------------------------------------------------------


def test_database_without_sqlalchemy_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import sqlalchemy → ImportError
    db = PluginDatabase("demo", tmp_path, enabled=True)  # constructing never imports it
    for use in (lambda: db.Base, lambda: db.engine, lambda: db.create_all(), lambda: db.session().__enter__()):
        with pytest.raises(ImportError) as info:
            use()
        assert "sqlalchemy" in str(info.value) and info.value.name == "sqlalchemy"

    async def in_loop():
        return db.create_all()

    with pytest.raises(ImportError, match="sqlalchemy"):
        asyncio.run(in_loop())
    assert list(tmp_path.iterdir()) == []


def test_database_with_sqlalchemy(tmp_path):
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import Column, Integer, String, select

    db = PluginDatabase("demo", tmp_path, enabled=True)

    class Note(db.Base):
        __tablename__ = "notes"
        id = Column(Integer, primary_key=True)
        text = Column(String)

    assert not db.db_exists
    db.create_all()
    assert db.db_exists
    with db.session() as session:
        session.add(Note(text="hi"))
        session.commit()
    with db.session() as session:
        assert [n.text for n in session.execute(select(Note)).scalars()] == ["hi"]

    async def smart():
        await db.drop_all()  # in async code the smart form is a coroutine
        await db.create_all()

    asyncio.run(smart())
    with db.session() as session:
        assert session.execute(select(Note)).scalars().all() == []
    # A failing block is rolled back.
    with pytest.raises(ValueError):
        with db.session() as session:
            session.add(Note(text="lost"))
            session.flush()
            raise ValueError("abort")
    with db.session() as session:
        assert session.execute(select(Note)).scalars().all() == []
    db.close()


def test_database_async_session(tmp_path):
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("aiosqlite")
    pytest.importorskip("greenlet")
    from sqlalchemy import Column, Integer, String, select

    db = PluginDatabase("demo", tmp_path, enabled=True)

    class Item(db.Base):
        __tablename__ = "items"
        id = Column(Integer, primary_key=True)
        name = Column(String)

    async def main():
        await db.create_all()
        async with db.async_session() as session:
            session.add(Item(name="a"))
            await session.commit()
        async with db.async_session() as session:
            names = [i.name for i in (await session.execute(select(Item))).scalars()]
        await db.close_async()
        return names

    assert asyncio.run(main()) == ["a"]


# -- MemoryClient ----------------------------------------------------------------------------------------


class MemoryCtx:
    def __init__(self, answer):
        self.answer = answer
        self.calls = []

        class Bus:
            class memory:
                @staticmethod
                def get(bucket_id, limit=20, timeout=5.0):
                    return ["record", bucket_id, limit]

                @staticmethod
                async def get_async(bucket_id, limit=20, timeout=5.0):
                    return ["async record", bucket_id, limit]

        self.bus = Bus()

    def query_memory(self, lanlan_name, query, timeout=5.0):
        self.calls.append((lanlan_name, query, timeout))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.answer

        async def later():
            return self.answer

        return later()


def test_memory_client_wraps_the_context():
    from plugin.sdk.memory import MemoryClient as FromModule

    assert MemoryClient is FromModule
    assert MemoryClient(MemoryCtx({"hits": []})).query("neko", "food") == {"hits": []}
    client = MemoryClient(MemoryCtx("plain text"))
    assert client.query("neko", "food", timeout=2) == {"result": "plain text"}
    assert client.ctx.calls == [("neko", "food", 2)]
    assert client.get("bucket", limit=3) == ["record", "bucket", 3]

    async def in_loop():
        return await client.query("neko", "x"), await client.query_async("neko", "y"), await client.get_async("b")

    assert asyncio.run(in_loop()) == ({"result": "plain text"}, {"result": "plain text"}, ["async record", "b", 20])
    assert client.query_sync("neko", "z") == {"result": "plain text"}


def test_memory_client_on_the_real_context_is_not_served_yet(tmp_path):
    ctx = make_ctx(tmp_path, '[plugin]\nid = "demo"\n')
    with pytest.raises(NotImplementedError, match="memory queries"):
        MemoryClient(ctx).query("neko", "food")
