"""Bus records and lists (the shapes `ctx.bus.*` will return once neko has the message plane)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar


@dataclass(frozen=True)
class BusRecord:
    kind: str
    type: str
    timestamp: Optional[float]
    plugin_id: Optional[str] = None
    source: Optional[str] = None
    priority: int = 0
    content: Any = None
    metadata: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def dump(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MessageRecord(BusRecord):
    message_id: Optional[str] = None
    message_type: Optional[str] = None
    description: Optional[str] = None


@dataclass(frozen=True)
class EventRecord(BusRecord):
    event_id: Optional[str] = None


@dataclass(frozen=True)
class LifecycleRecord(BusRecord):
    lifecycle_id: Optional[str] = None


@dataclass(frozen=True)
class MemoryRecord(BusRecord):
    bucket_id: Optional[str] = None


@dataclass(frozen=True)
class BusFilter:
    kind: Optional[str] = None
    type: Optional[str] = None
    plugin_id: Optional[str] = None
    source: Optional[str] = None
    priority_min: Optional[int] = None
    since_ts: Optional[float] = None
    until_ts: Optional[float] = None


class BusFilterError(ValueError):
    pass


T = TypeVar("T", bound=BusRecord)


class BusList(Generic[T]):
    """An immutable list of records with a few query helpers."""

    def __init__(self, items: Iterable[T] = ()):
        self._items = list(items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def count(self) -> int:
        return len(self._items)

    size = count

    def dump(self) -> list[dict]:
        return [item.dump() for item in self._items]

    def dump_records(self) -> list[T]:
        return list(self._items)

    def where(self, predicate: Callable[[T], bool]) -> "BusList[T]":
        return type(self)(item for item in self._items if predicate(item))

    def limit(self, n: int) -> "BusList[T]":
        return type(self)(self._items[: max(0, int(n))])

    def filter(self, flt: Optional[BusFilter] = None, **kwargs: Any) -> "BusList[T]":
        flt = flt or BusFilter(**kwargs)

        def keep(item: T) -> bool:
            for name in ("kind", "type", "plugin_id", "source"):
                wanted = getattr(flt, name)
                if wanted is not None and getattr(item, name) != wanted:
                    return False
            if flt.priority_min is not None and item.priority < flt.priority_min:
                return False
            ts = item.timestamp
            if flt.since_ts is not None and (ts is None or ts < flt.since_ts):
                return False
            if flt.until_ts is not None and (ts is None or ts > flt.until_ts):
                return False
            return True

        return self.where(keep)

    def __add__(self, other: "BusList[T]") -> "BusList[T]":
        return type(self)([*self._items, *other])

    merge = __add__


class MessageList(BusList[MessageRecord]):
    pass


class EventList(BusList[EventRecord]):
    pass


class LifecycleList(BusList[LifecycleRecord]):
    pass


class MemoryList(BusList[MemoryRecord]):
    pass


__all__ = [
    "BusRecord",
    "MessageRecord",
    "EventRecord",
    "LifecycleRecord",
    "MemoryRecord",
    "BusFilter",
    "BusFilterError",
    "BusList",
    "MessageList",
    "EventList",
    "LifecycleList",
    "MemoryList",
]
