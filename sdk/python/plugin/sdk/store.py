"""`self.store`: a plugin's persistent key-value store (reference §5.7, plugin/sdk/store.py).

A SQLite table `kv_store(key, value, created_at, updated_at)` in `<plugin dir>/store.db`, the
reference's own table and encoding: values are msgpack BLOBs, so a store.db written by the
reference reads here, and the other way round. Anything msgpack takes can be stored (dicts,
lists, str, bytes, numbers, booleans, None); tuples come back as lists; other values raise
`TypeError` when set. (Rows an earlier neko wrote as JSON text still read.)

The store is off unless the plugin's plugin.toml says

    [plugin.store]
    enabled = true

Off, it behaves as the reference's does: reads find nothing (`get` returns its default), writes
are dropped with a warning in the plugin's log, and nothing touches the disk. On, the database
file and table are made at the first call. The store is safe to use from several threads (each
thread has its own connection) and from async code (calls are short; put big loops in
`asyncio.to_thread`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import msgpack

#: The file name inside the plugin folder.
STORE_FILE = "store.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv_store (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

_MISSING = object()


class PluginStore:
    """A persistent dict-like store: `get/set/delete/exists/keys/clear/count/dump/close`, plus
    `store[key]`, `store[key] = value`, `del store[key]`, `key in store` and `len(store)`."""

    def __init__(
        self,
        plugin_id: str,
        plugin_dir: Path | str,
        logger: Any = None,
        enabled: bool = True,
        db_name: str = STORE_FILE,
    ):
        self.plugin_id = plugin_id
        self.plugin_dir = Path(plugin_dir)
        self.logger = logger
        self.enabled = bool(enabled)
        self._db_path = self.plugin_dir / db_name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._initialised = False

    def __repr__(self) -> str:
        return f"PluginStore(plugin_id={self.plugin_id!r}, path={str(self._db_path)!r}, enabled={self.enabled})"

    @property
    def db_path(self) -> Path:
        return self._db_path

    # -- plumbing -----------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            # After close() the store reopens on its next use.
            self.plugin_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self._db_path), timeout=10.0, check_same_thread=False)
            if not self._initialised:
                conn.execute(_SCHEMA)
                conn.commit()
                self._initialised = True
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _encode(self, key: str, value: Any) -> bytes:
        try:
            return msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"PluginStore values must be msgpack-serialisable (dict, list, str, bytes, int, float, bool, None); "
                f"the value for key {key!r} is not: {exc}"
            ) from None

    def _decode(self, key: str, stored: Any, default: Any) -> Any:
        try:
            if isinstance(stored, str):  # a row an earlier neko wrote as JSON text
                return json.loads(stored)
            return msgpack.unpackb(stored, raw=False, strict_map_key=False)
        except Exception as exc:
            if self.logger is not None:
                self.logger.warning("[Store] cannot decode the value of key '{}': {}", key, exc)
            return default

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"PluginStore keys must be strings, not {type(key).__name__}")
        return key

    # -- the API ------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        key = self._check_key(key)
        if not self.enabled:
            return default
        row = self._conn().execute("SELECT value FROM kv_store WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        return self._decode(key, row[0], default)

    def set(self, key: str, value: Any) -> None:
        """Stores `value` (msgpack-serialisable; TypeError otherwise) under `key`."""
        key = self._check_key(key)
        if not self.enabled:
            if self.logger is not None:
                self.logger.warning(
                    "[Store] set('{}') dropped: the store is off (add [plugin.store] enabled = true to plugin.toml)", key
                )
            return
        text = self._encode(key, value)
        now = time.time()
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT INTO kv_store (key, value, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, text, now, now),
            )

    def delete(self, key: str) -> bool:
        """Removes `key`; True when it was there."""
        key = self._check_key(key)
        if not self.enabled:
            return False
        conn = self._conn()
        with conn:
            cursor = conn.execute("DELETE FROM kv_store WHERE key = ?", (key,))
        return cursor.rowcount > 0

    def exists(self, key: str) -> bool:
        key = self._check_key(key)
        if not self.enabled:
            return False
        return self._conn().execute("SELECT 1 FROM kv_store WHERE key = ?", (key,)).fetchone() is not None

    def keys(self, prefix: str = "") -> list[str]:
        """Every key (sorted), or those starting with `prefix` (taken literally, not as a pattern)."""
        if not self.enabled:
            return []
        conn = self._conn()
        if prefix:
            # substr() instead of LIKE: '%' and '_' in a prefix are ordinary characters.
            rows = conn.execute(
                "SELECT key FROM kv_store WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
            ).fetchall()
        else:
            rows = conn.execute("SELECT key FROM kv_store ORDER BY key").fetchall()
        return [row[0] for row in rows]

    def clear(self) -> int:
        """Removes everything; the number of keys removed."""
        if not self.enabled:
            return 0
        conn = self._conn()
        with conn:
            cursor = conn.execute("DELETE FROM kv_store")
        return cursor.rowcount

    def count(self) -> int:
        if not self.enabled:
            return 0
        row = self._conn().execute("SELECT COUNT(*) FROM kv_store").fetchone()
        return int(row[0]) if row else 0

    def dump(self) -> dict[str, Any]:
        """Every key with its value."""
        out: dict[str, Any] = {}
        if not self.enabled:
            return out
        for key, text in self._conn().execute("SELECT key, value FROM kv_store ORDER BY key").fetchall():
            value = self._decode(key, text, _MISSING)
            if value is not _MISSING:
                out[key] = value
        return out

    def close(self) -> None:
        """Closes the store's connections (a later call opens new ones)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for conn in connections:
            try:
                conn.close()
            except Exception:
                pass

    # -- dict-like sugar ------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __bool__(self) -> bool:
        # An empty (or disabled) store is still a store: `if self.store:` must not touch the disk.
        return True


__all__ = ["PluginStore", "STORE_FILE"]
