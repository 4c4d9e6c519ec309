"""State persistence: a plugin's `__freezable__` attributes saved after its entries and restored
when its process starts again (reference §5.7, plugin/sdk/state.py).

What is saved: the attributes named in the class's `__freezable__` list. When: after an entry
succeeds, if the effective persist mode is not "off" — always when the entry says
`@plugin_entry(persist=True)`, never with `persist=False`, and otherwise when the mode is "auto".
The mode is `[plugin_state] persist_mode` in plugin.toml, else the class's `__persist_mode__`
(legacy `__freeze_mode__`, or `[plugin_checkpoint] freeze_mode`), else "off". Where:
`[plugin_state] backend` (else `NEKO_PLUGIN_STATE_BACKEND`, else "off"):

- "file": `<plugin dir>/.plugin_state`, which survives everything;
- "memory": kept by this neko run (`NEKO_PLUGIN_STATE_DIR`, a private folder neko removes when it
  stops), so a restarted or reloaded process finds it but a new neko does not;
- "off": nothing is saved.

At the next start the state is restored onto the new instance (after its `__init__`), the saved
copy is cleared, and `lifecycle("unfreeze")` runs after `startup`, as in the reference.

Values may be JSON values or the reference's extended types (datetime, date, time, timedelta,
Enum, set, frozenset, tuple, bytes, paths, UUID, Decimal, dataclasses) and objects with
`__freeze_serialize__()` / classmethod `__freeze_deserialize__(data)`; each is saved with a type tag and comes
back as the same type. An attribute that cannot be saved is skipped with a warning.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import importlib
import json
import os
import pathlib
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Optional

#: Types the reference could persist besides JSON types.
EXTENDED_TYPES = (
    _dt.datetime,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    enum.Enum,
    set,
    frozenset,
    tuple,
    bytes,
    pathlib.PurePath,
    uuid.UUID,
    Decimal,
)

#: The file of the "file" backend, in the plugin folder.
STATE_FILE = ".plugin_state"
#: Where neko keeps "memory" states for this run.
STATE_DIR_ENV = "NEKO_PLUGIN_STATE_DIR"
#: The backend when plugin.toml names none.
BACKEND_ENV = "NEKO_PLUGIN_STATE_BACKEND"
MODES = ("auto", "manual", "off")
BACKENDS = ("file", "memory", "off")

_TAG = "__neko_state__"
#: "memory" states when neko gave no folder (a test's fake supervisor): this process only.
_PROCESS_MEMORY: dict[str, dict] = {}


class StateError(ValueError):
    """A value that cannot be saved (or a saved one that cannot be read back)."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def encode(value: Any, depth: int = 0) -> Any:
    """`value` as JSON data, extended types tagged so that `decode` gives them back."""
    if depth > 64:
        raise StateError("nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(value, enum.Enum):
        return value
    if hasattr(type(value), "__freeze_serialize__"):
        return {_TAG: "custom", "cls": _qualified(type(value)), "v": encode(value.__freeze_serialize__(), depth + 1)}
    if isinstance(value, enum.Enum):
        return {_TAG: "enum", "cls": _qualified(type(value)), "v": encode(value.value, depth + 1)}
    if isinstance(value, _dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, _dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, _dt.timedelta):
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, pathlib.PurePath):
        return {_TAG: "path", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, (set, frozenset, tuple)):
        kind = "set" if isinstance(value, set) else "frozenset" if isinstance(value, frozenset) else "tuple"
        return {_TAG: kind, "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: encode(v, depth + 1) for k, v in value.items()}
        return {_TAG: "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "cls": _qualified(type(value)), "v": fields}
    raise StateError(f"{type(value).__name__} cannot be saved")


def decode(data: Any) -> Any:
    """The value `encode` made `data` from."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(_TAG)
    if kind is None:
        return {k: decode(v) for k, v in data.items()}
    v = data.get("v")
    if kind == "datetime":
        return _dt.datetime.fromisoformat(v)
    if kind == "date":
        return _dt.date.fromisoformat(v)
    if kind == "time":
        return _dt.time.fromisoformat(v)
    if kind == "timedelta":
        return _dt.timedelta(seconds=v)
    if kind == "bytes":
        return base64.b64decode(v)
    if kind == "path":
        return Path(v)
    if kind == "uuid":
        return uuid.UUID(v)
    if kind == "decimal":
        return Decimal(v)
    if kind in ("set", "frozenset", "tuple"):
        items = [decode(x) for x in v]
        return {"set": set, "frozenset": frozenset, "tuple": tuple}[kind](items)
    if kind == "dict":
        return {decode(k): decode(x) for k, x in v}
    if kind == "enum":
        return _resolve(data["cls"])(decode(v))
    if kind == "dataclass":
        return _resolve(data["cls"])(**{k: decode(x) for k, x in v.items()})
    if kind == "custom":
        return _resolve(data["cls"]).__freeze_deserialize__(decode(v))
    raise StateError(f"unknown saved type '{kind}'")


def persist_mode(section: dict, cls: Any) -> str:
    """The effective persist mode: `[plugin_state] persist_mode`, else the class's
    `__persist_mode__` / `__freeze_mode__`, else `[plugin_checkpoint] freeze_mode`, else "off"."""
    candidates = [
        (section.get("plugin_state") or {}).get("persist_mode") if isinstance(section.get("plugin_state"), dict) else None,
        getattr(cls, "__persist_mode__", None),
        getattr(cls, "__freeze_mode__", None),
        (section.get("plugin_checkpoint") or {}).get("freeze_mode") if isinstance(section.get("plugin_checkpoint"), dict) else None,
    ]
    for mode in candidates:
        if isinstance(mode, str) and mode.strip().lower() in ("auto", "manual"):
            return mode.strip().lower()
    return "off"


def state_backend(section: dict) -> str:
    """`[plugin_state] backend`, else `NEKO_PLUGIN_STATE_BACKEND`, else "off"."""
    table = section.get("plugin_state")
    for backend in ((table or {}).get("backend") if isinstance(table, dict) else None, os.environ.get(BACKEND_ENV)):
        if isinstance(backend, str) and backend.strip().lower() in BACKENDS:
            return backend.strip().lower()
    return "off"


class StatePersistence:
    """Saves, restores and clears a plugin's `__freezable__` attributes (see the module docs)."""

    def __init__(
        self,
        plugin_id: str = "",
        plugin_dir: Any = None,
        freezable: Optional[Iterable[str]] = None,
        backend: str = "off",
        mode: str = "off",
        logger: Any = None,
    ):
        self.plugin_id = plugin_id
        self.plugin_dir = Path(plugin_dir) if plugin_dir is not None else None
        self.freezable = [k for k in (freezable or []) if isinstance(k, str) and k]
        self.backend = backend if backend in BACKENDS else "off"
        self.mode = mode if mode in MODES else "off"
        self.logger = logger
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StatePersistence(plugin_id={self.plugin_id!r}, freezable={self.freezable!r}, backend={self.backend!r}, mode={self.mode!r})"

    @property
    def enabled(self) -> bool:
        return bool(self.freezable) and self.backend != "off"

    def should_save(self, persist_flag: Optional[bool]) -> bool:
        """After a successful entry whose `persist` flag is `persist_flag`."""
        if not self.enabled or self.mode == "off" or persist_flag is False:
            return False
        return persist_flag is True or self.mode == "auto"

    def _path(self) -> Optional[Path]:
        if self.backend == "file" and self.plugin_dir is not None:
            return self.plugin_dir / STATE_FILE
        folder = os.environ.get(STATE_DIR_ENV, "").strip()
        if self.backend == "memory" and folder:
            return Path(folder) / f"{self.plugin_id}.state"
        return None

    def _warn(self, text: str, *args: Any) -> None:
        if self.logger is not None:
            self.logger.warning(text, *args)

    def snapshot(self, instance: Any) -> dict:
        """The freezable attributes of `instance`, encoded; those that cannot be saved are left out."""
        state: dict[str, Any] = {}
        for key in self.freezable:
            if not hasattr(instance, key):
                continue
            try:
                state[key] = encode(getattr(instance, key))
            except (StateError, TypeError, ValueError) as exc:
                self._warn("[State] attribute '{}' not saved: {}", key, exc)
        return state

    def save(self, instance: Any, reason: str = "manual") -> bool:
        """Saves the freezable attributes of `instance`; False when the backend is off."""
        if self.backend == "off" or not self.freezable:
            return False
        record = {"plugin_id": self.plugin_id, "saved_at": time.time(), "reason": reason, "state": self.snapshot(instance)}
        path = self._path()
        with self._lock:
            if path is None:
                _PROCESS_MEMORY[self.plugin_id] = record
                return True
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".plugin_state.", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(record, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        return True

    def load(self) -> Optional[dict]:
        """The saved attributes (decoded), or None when nothing is saved."""
        if self.backend == "off":
            return None
        path = self._path()
        with self._lock:
            if path is None:
                record = _PROCESS_MEMORY.get(self.plugin_id)
            else:
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                except FileNotFoundError:
                    return None
                except (OSError, ValueError) as exc:
                    self._warn("[State] saved state at {} not read: {}", path, exc)
                    return None
        if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
            return None
        out: dict[str, Any] = {}
        for key, data in record["state"].items():
            try:
                out[key] = decode(data)
            except Exception as exc:
                self._warn("[State] attribute '{}' not restored: {}: {}", key, type(exc).__name__, exc)
        return out

    def restore(self, instance: Any) -> bool:
        """Sets the saved attributes on `instance` and clears the saved copy; True if there was one."""
        state = self.load()
        if state is None:
            return False
        for key, value in state.items():
            if key in self.freezable:
                setattr(instance, key, value)
        self.clear()
        return True

    def clear(self) -> None:
        path = self._path()
        with self._lock:
            if path is None:
                _PROCESS_MEMORY.pop(self.plugin_id, None)
                return
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def has_saved_state(self) -> bool:
        path = self._path()
        return self.plugin_id in _PROCESS_MEMORY if path is None else path.is_file()


__all__ = ["StatePersistence", "EXTENDED_TYPES", "StateError", "encode", "decode", "persist_mode", "state_backend"]
