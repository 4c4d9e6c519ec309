"""State persistence (`__freezable__`, freeze/unfreeze): arrives with a later neko release."""

from __future__ import annotations

import datetime as _dt
import enum
import pathlib
import uuid
from decimal import Decimal
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


class StatePersistence:
    """Saves and restores a plugin's `__freezable__` attributes (not available in neko yet)."""

    def __init__(self, plugin_id: str = "", plugin_dir: Any = None, freezable: Optional[Iterable[str]] = None, backend: str = "off"):
        self.plugin_id = plugin_id
        self.plugin_dir = plugin_dir
        self.freezable = list(freezable or [])
        self.backend = backend

    def _unavailable(self) -> NotImplementedError:
        return NotImplementedError("state persistence (__freezable__, freeze/unfreeze) is not available in neko yet")

    def save(self, *args: Any, **kwargs: Any) -> Any:
        raise self._unavailable()

    def load(self, *args: Any, **kwargs: Any) -> Any:
        raise self._unavailable()

    def restore(self, *args: Any, **kwargs: Any) -> Any:
        raise self._unavailable()

    def clear(self, *args: Any, **kwargs: Any) -> Any:
        raise self._unavailable()


__all__ = ["StatePersistence", "EXTENDED_TYPES"]
