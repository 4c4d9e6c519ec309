"""Bus records, `BusList` and `BusListWatcher` (reference §5.6).

A `BusList` is an immutable list of records that remembers how it was made: `get()` on a bus
client starts a plan (a `GetNode`), and every structured operation (`filter`, `where_eq`,
`where_in`, `where_contains`, `where_regex`, `sort(by=...)`, `limit`, `merge`/`intersection`/
`difference`) wraps it in a `UnaryNode` or `BinaryNode`. Operations are applied locally at once;
the plan is what `reload()` replays against live data and what watchers re-evaluate.

`reload()` sends the plan to the message plane as one `bus.replay` RPC when the message plane can
run all of it (§9.3 node shapes). Steps it cannot run (`where(predicate)`, `sort(key=...)`,
`where_gt/ge/lt/le`, `sort(cast=...)`) are replayed here on top of what the message plane
returns for the part below them, so every list made from a `get()` can be reloaded.

Ordering: local `merge` keeps the left list's order and appends the right list's new records;
`intersection`/`difference` keep the left list's order; duplicates (same identity) are dropped.
A `bus.replay` of a binary node returns the message plane's order (newest first).

Identity of a record: its message-plane `index.id` (the first of message_id, event_id,
lifecycle_id, id, task_id, run_id), else its own id field, else its sequence number.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import (
    Any,
    Callable,
    ClassVar,
    Final,
    Generic,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    Union,
)

BusChangeOp = Literal["add", "del", "change"]


class BusChange:
    ADD: Final = "add"
    DEL: Final = "del"
    CHANGE: Final = "change"


class BusHubProtocol(Protocol):
    """What `ctx.bus` offers (typing only; imported by plugins written for the reference)."""

    messages: Any
    events: Any
    lifecycle: Any
    memory: Any


class BusReplayContext(Protocol):
    """A context a `BusList` can reload through (typing only)."""

    bus: BusHubProtocol


def parse_timestamp(value: Any) -> Optional[float]:
    """Seconds since the epoch from a number, a numeric string or an ISO-8601 string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


parse_iso_timestamp = parse_timestamp


def _str_or_none(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _int_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusRecord:
    """One bus item. `raw` is the payload as stored; `seq` and `index` are the message plane's."""

    kind: str
    type: str
    timestamp: Optional[float]
    plugin_id: Optional[str] = None
    source: Optional[str] = None
    priority: int = 0
    content: Any = None
    metadata: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    seq: Optional[int] = None
    index: Optional[dict] = None

    default_kind: ClassVar[str] = "record"
    default_type: ClassVar[str] = "RECORD"

    def dump(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else value
        return out

    # The fields a subclass fills from the payload besides the common ones.
    @classmethod
    def _extra_fields(cls, payload: dict, index: dict) -> dict:
        return {}

    @classmethod
    def from_raw(cls, raw: Any, *, seq: Optional[int] = None, index: Optional[dict] = None, event_ts: Optional[float] = None) -> "BusRecord":
        """A record from a stored payload (plus the event's `seq`/`index`/`ts` when known)."""
        payload = dict(raw) if isinstance(raw, dict) else {"content": raw}
        idx = dict(index) if isinstance(index, dict) else {}
        return cls._build(payload, idx, seq, event_ts)

    @classmethod
    def _build(cls, payload: dict, idx: dict, seq: Any, event_ts: Any) -> "BusRecord":
        """The record of `payload` and `idx`, which it keeps (the caller copies what it shares)."""
        timestamp = idx.get("timestamp")
        if type(timestamp) is not float:  # the usual case, a float from the plane, as it is
            timestamp = parse_timestamp(timestamp)
            if timestamp is None:
                timestamp = parse_timestamp(payload.get("timestamp"))
            if timestamp is None:
                timestamp = parse_timestamp(payload.get("time"))
            if timestamp is None:
                timestamp = parse_timestamp(event_ts)
        metadata = payload.get("metadata")
        priority = payload.get("priority", idx.get("priority", 0))
        values = {
            "kind": str(payload.get("kind") or idx.get("kind") or cls.default_kind),
            "type": cls._record_type(payload, idx),
            "timestamp": timestamp,
            "plugin_id": _str_or_none(payload.get("plugin_id", idx.get("plugin_id"))),
            "source": _str_or_none(payload.get("source", idx.get("source"))),
            "priority": priority if type(priority) is int else _int_or_zero(priority),
            "content": payload.get("content"),
            "metadata": dict(metadata) if isinstance(metadata, dict) else {},
            "raw": payload,
            "seq": seq if isinstance(seq, int) else None,
            "index": idx or None,
        }
        values.update(cls._extra_fields(payload, idx))
        # A bus read makes hundreds of records: filling the instance dict at once costs a fifth of
        # the frozen dataclass's __init__ (one object.__setattr__ per field). `values` holds every
        # field (tests compare with __init__), and these classes have no __post_init__.
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", values)
        return record

    @classmethod
    def _record_type(cls, payload: dict, index: dict) -> str:
        return str(payload.get("type") or index.get("type") or cls.default_type)

    @classmethod
    def from_event(cls, event: dict) -> "BusRecord":
        """A record from a message-plane event `{seq, ts, store, topic, payload, index}`; light
        events (no payload) give a record built from the index alone. The event's payload and
        index become the record's (a decoded reply is not shared)."""
        payload = event.get("payload")
        index = event.get("index")
        if not isinstance(index, dict):
            index = {}
        seq = event.get("seq")
        if not isinstance(payload, dict):
            light = {"index": index, "seq": seq, "ts": event.get("ts")}
            record = cls.from_raw({}, seq=seq, index=index, event_ts=event.get("ts"))
            return _replace(record, raw=light, kind=str(index.get("kind") or cls.default_kind))
        return cls._build(payload, index, seq, event.get("ts"))


def _replace(record: BusRecord, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(record, **changes)


@dataclass(frozen=True)
class MessageRecord(BusRecord):
    message_id: Optional[str] = None
    message_type: Optional[str] = None
    description: Optional[str] = None

    default_kind: ClassVar[str] = "message"
    default_type: ClassVar[str] = "MESSAGE"

    @classmethod
    def _record_type(cls, payload: dict, index: dict) -> str:
        # As the reference: the record's type is the message type (text, url, binary, ...).
        return str(payload.get("message_type") or index.get("type") or payload.get("type") or cls.default_type)

    @classmethod
    def _extra_fields(cls, payload: dict, index: dict) -> dict:
        return {
            "message_id": _str_or_none(payload.get("message_id") or index.get("id")),
            "message_type": _str_or_none(payload.get("message_type") or index.get("type")),
            "description": _str_or_none(payload.get("description")),
        }


@dataclass(frozen=True)
class EventRecord(BusRecord):
    event_id: Optional[str] = None
    entry_id: Optional[str] = None
    args: Optional[dict] = None

    default_kind: ClassVar[str] = "event"
    default_type: ClassVar[str] = "EVENT"

    @classmethod
    def _extra_fields(cls, payload: dict, index: dict) -> dict:
        args = payload.get("args")
        return {
            "event_id": _str_or_none(payload.get("event_id") or payload.get("trace_id") or index.get("id")),
            "entry_id": _str_or_none(payload.get("entry_id")),
            "args": dict(args) if isinstance(args, dict) else None,
        }


@dataclass(frozen=True)
class LifecycleRecord(BusRecord):
    lifecycle_id: Optional[str] = None

    default_kind: ClassVar[str] = "lifecycle"
    default_type: ClassVar[str] = "LIFECYCLE"

    @classmethod
    def _extra_fields(cls, payload: dict, index: dict) -> dict:
        return {"lifecycle_id": _str_or_none(payload.get("lifecycle_id") or payload.get("trace_id") or index.get("id"))}


@dataclass(frozen=True)
class MemoryRecord(BusRecord):
    bucket_id: Optional[str] = None

    default_kind: ClassVar[str] = "memory"
    default_type: ClassVar[str] = "MEMORY"

    @classmethod
    def _extra_fields(cls, payload: dict, index: dict) -> dict:
        return {"bucket_id": _str_or_none(payload.get("bucket_id"))}


def record_key(record: Any) -> tuple:
    """A record's identity: message-plane `index.id`, else its id field, else `seq`."""
    index = getattr(record, "index", None)
    if isinstance(index, dict):
        value = index.get("id")
        if isinstance(value, str) and value:
            return ("id", value)
    for attr in ("message_id", "event_id", "lifecycle_id"):
        value = getattr(record, attr, None)
        if isinstance(value, str) and value:
            return ("id", value)
    raw = getattr(record, "raw", None)
    if isinstance(raw, dict):
        for name in ("message_id", "event_id", "lifecycle_id", "id", "task_id", "run_id"):
            value = raw.get(name)
            if isinstance(value, str) and value:
                return ("id", value)
    seq = getattr(record, "seq", None)
    if isinstance(seq, int):
        return ("seq", seq)
    try:
        return ("dump", repr(sorted(record.dump().items(), key=lambda kv: kv[0])))
    except Exception:
        return ("object", id(record))


def field_of(record: Any, name: str) -> Any:
    """A record's field: its attribute, else the payload's key, else the index's."""
    if name in getattr(type(record), "__dataclass_fields__", {}):
        return getattr(record, name)
    raw = getattr(record, "raw", None)
    if isinstance(raw, dict) and name in raw:
        return raw[name]
    index = getattr(record, "index", None)
    if isinstance(index, dict) and name in index:
        return index[name]
    return getattr(record, name, None)


def _sort_value(value: Any) -> tuple:
    # Numbers before strings before missing values, as the message plane sorts.
    if value is None:
        return (2, "")
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def _cast(value: Any, cast: Optional[str]) -> Any:
    if cast is None:
        return value
    kind = str(cast).strip().lower()
    try:
        if kind in ("int", "i"):
            return int(str(value).strip())
        if kind in ("float", "f"):
            return float(str(value).strip())
    except (TypeError, ValueError):
        return 0 if kind in ("int", "i") else 0.0
    if kind in ("str", "s"):
        return "" if value is None else str(value)
    return value


# -- filters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusFilter:
    kind: Optional[str] = None
    type: Optional[str] = None
    plugin_id: Optional[str] = None
    source: Optional[str] = None
    kind_re: Optional[str] = None
    type_re: Optional[str] = None
    plugin_id_re: Optional[str] = None
    source_re: Optional[str] = None
    content_re: Optional[str] = None
    priority_min: Optional[int] = None
    since_ts: Optional[float] = None
    until_ts: Optional[float] = None

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


FILTER_KEYS = frozenset(f.name for f in fields(BusFilter))


class BusFilterError(ValueError):
    pass


class NonReplayableTraceError(RuntimeError):
    pass


T = TypeVar("T", bound=BusRecord)


@dataclass(frozen=True)
class BusFilterResult(Generic[T]):
    ok: bool
    value: Optional["BusList[T]"] = None
    error: Optional[Exception] = None


def _compile(pattern: str, what: str, strict: bool) -> Optional[re.Pattern]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        if strict:
            raise BusFilterError(f"Invalid regex for {what}: {pattern!r}") from exc
        return None


def filter_predicate(flt: BusFilter, strict: bool = True) -> Callable[[Any], bool]:
    """The test `BusList.filter` applies (exact fields, regex fields, priority and time window)."""
    regexes = []
    for name in ("kind", "type", "plugin_id", "source", "content"):
        pattern = getattr(flt, f"{name}_re")
        if pattern is not None:
            regexes.append((name, _compile(str(pattern), f"{name}_re", strict)))

    def number(value: Any, what: str) -> Optional[float]:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            if strict:
                raise BusFilterError(f"Invalid {what}: {value!r}") from exc
            return None

    priority_min = None if flt.priority_min is None else number(flt.priority_min, "priority_min")
    since = None if flt.since_ts is None else number(flt.since_ts, "since_ts")
    until = None if flt.until_ts is None else number(flt.until_ts, "until_ts")

    def keep(record: Any) -> bool:
        for name in ("kind", "type", "plugin_id", "source"):
            wanted = getattr(flt, name)
            if wanted is not None and getattr(record, name, None) != wanted:
                return False
        for name, compiled in regexes:
            value = getattr(record, name, None)
            if compiled is None or value is None or compiled.search(str(value)[:1024]) is None:
                return False
        if flt.priority_min is not None and (priority_min is None or _int_or_zero(record.priority) < priority_min):
            return False
        ts = record.timestamp
        if flt.since_ts is not None and (since is None or ts is None or ts < since):
            return False
        if flt.until_ts is not None and (until is None or ts is None or ts > until):
            return False
        return True

    return keep


# -- plans ------------------------------------------------------------------------------------------

#: Unary operations the message plane replays itself (§9.3).
REMOTE_UNARY_OPS = frozenset({"limit", "sort", "filter", "where_eq", "where_in", "where_contains", "where_regex"})
BINARY_OPS = frozenset({"merge", "intersection", "difference"})


@dataclass(frozen=True)
class BusOp:
    """One step of a list's trace (for `trace_dump()` / `explain()`)."""

    name: str
    params: dict
    at: float


@dataclass(frozen=True)
class TraceNode:
    op: str
    params: dict
    at: float

    #: Whether the message plane can replay this whole subtree.
    @property
    def remote(self) -> bool:
        return False

    def dump(self) -> dict:
        return {"op": self.op, "params": dict(self.params), "at": self.at}

    def explain(self) -> str:
        return f"{self.op}({self.params})" if self.params else f"{self.op}()"

    def store(self) -> str:
        return ""


@dataclass(frozen=True)
class GetNode(TraceNode):
    """`params` = {"bus": store, "params": {max_count, plugin_id, source, ..., topic}}."""

    @property
    def remote(self) -> bool:
        return True

    def dump(self) -> dict:
        out = super().dump()
        out["params"] = {"bus": self.params.get("bus"), "params": dict(self.params.get("params") or {})}
        out["kind"] = "get"
        return out

    def explain(self) -> str:
        return f"get({self.params.get('bus')}, {self.params.get('params')})"

    def store(self) -> str:
        return str(self.params.get("bus") or "")


@dataclass(frozen=True)
class UnaryNode(TraceNode):
    child: TraceNode = None  # type: ignore[assignment]
    #: Re-applies this step to a list (used when the message plane cannot run it).
    apply: Optional[Callable[["BusList"], "BusList"]] = field(default=None, compare=False, repr=False)
    replayable: bool = True

    @property
    def remote(self) -> bool:
        return self.replayable and self.op in REMOTE_UNARY_OPS and self.child.remote

    def dump(self) -> dict:
        out = super().dump()
        out["kind"] = "unary"
        out["child"] = self.child.dump()
        return out

    def explain(self) -> str:
        return f"{self.child.explain()} -> {super().explain()}"

    def store(self) -> str:
        return self.child.store()


@dataclass(frozen=True)
class BinaryNode(TraceNode):
    left: TraceNode = None  # type: ignore[assignment]
    right: TraceNode = None  # type: ignore[assignment]

    @property
    def remote(self) -> bool:
        return self.left.remote and self.right.remote and self.left.store() == self.right.store()

    def dump(self) -> dict:
        out = super().dump()
        out["kind"] = "binary"
        out["left"] = self.left.dump()
        out["right"] = self.right.dump()
        return out

    def explain(self) -> str:
        return f"({self.left.explain()}) {self.op} ({self.right.explain()})"

    def store(self) -> str:
        return self.left.store() or self.right.store()


def _hub_of(ctx: Any) -> Any:
    """`ctx.bus` for a plugin context, or `ctx` itself when it already is a bus hub."""
    hub = getattr(ctx, "bus", None)
    return hub if hub is not None and hasattr(hub, "_replay") else ctx


# -- lists ----------------------------------------------------------------------------------------


class BusList(Generic[T]):
    """An immutable list of bus records with chainable, replayable query operations."""

    #: The store the records of this list class come from ("messages", "events", ...).
    store_name: ClassVar[str] = ""
    record_class: ClassVar[type] = BusRecord

    def __init__(
        self,
        items: Iterable[T] = (),
        *,
        ctx: Any = None,
        trace: Optional[Sequence[BusOp]] = None,
        plan: Optional[TraceNode] = None,
        fast_mode: bool = False,
        plugin_id: Optional[str] = None,
    ):
        self._items: list[T] = list(items)
        self._ctx = ctx
        self._fast_mode = bool(fast_mode)
        self._trace: tuple[BusOp, ...] = () if self._fast_mode else tuple(trace or ())
        self._plan: Optional[TraceNode] = None if self._fast_mode else plan
        self.plugin_id = plugin_id

    # -- plain list behaviour --------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._items)} records)"

    def count(self) -> int:
        return len(self._items)

    def size(self) -> int:
        return len(self._items)

    def dump(self) -> list[dict]:
        """The records as dicts."""
        return [item.dump() for item in self._items]

    def dump_records(self) -> list[T]:
        """A shallow copy of the records."""
        return list(self._items)

    def keys(self) -> list[tuple]:
        """The identity of each record (see `record_key`)."""
        return [record_key(item) for item in self._items]

    # -- trace and plan ----------------------------------------------------------------------------

    @property
    def fast_mode(self) -> bool:
        return self._fast_mode

    @property
    def trace(self) -> tuple[BusOp, ...]:
        return self._trace

    @property
    def plan(self) -> Optional[TraceNode]:
        return self._plan

    def trace_dump(self) -> list[dict]:
        return [{"name": op.name, "params": dict(op.params), "at": op.at} for op in self._trace]

    def trace_tree_dump(self) -> Optional[dict]:
        """The replayable plan as sent in `bus.replay` (None without a plan)."""
        return None if self._plan is None else self._plan.dump()

    def explain(self) -> str:
        if self._plan is not None:
            return self._plan.explain()
        parts = [f"{op.name}({op.params})" if op.params else f"{op.name}()" for op in self._trace]
        return " -> ".join(parts) if parts else "<no-trace>"

    def _new(self, items: Iterable[T], trace: tuple[BusOp, ...], plan: Optional[TraceNode], plugin_id: Any = ...) -> "BusList[T]":
        return type(self)(
            items,
            ctx=self._ctx,
            trace=trace,
            plan=plan,
            fast_mode=self._fast_mode,
            plugin_id=self.plugin_id if plugin_id is ... else plugin_id,
        )

    def _step(
        self,
        items: Iterable[T],
        op: str,
        params: dict,
        apply: Callable[["BusList"], "BusList"],
        replayable: bool = True,
    ) -> "BusList[T]":
        if self._fast_mode:
            return self._new(items, (), None)
        now = time.time()
        trace = self._trace + (BusOp(op, dict(params), now),)
        plan = None
        if self._plan is not None:
            plan = UnaryNode(op=op, params=dict(params), at=now, child=self._plan, apply=apply, replayable=replayable)
        return self._new(items, trace, plan)

    def _binary(self, op: str, other: "BusList[T]", items: list[T]) -> "BusList[T]":
        plugin_id = self.plugin_id if self.plugin_id == getattr(other, "plugin_id", None) else "*"
        if self._fast_mode:
            return self._new(items, (), None, plugin_id)
        now = time.time()
        params = {"left": len(self._items), "right": len(other._items)}
        trace = self._trace + (BusOp(op, params, now),)
        plan = None
        if self._plan is not None and other._plan is not None:
            plan = BinaryNode(op=op, params=params, at=now, left=self._plan, right=other._plan)
        out = self._new(items, trace, plan, plugin_id)
        if out._ctx is None:
            out._ctx = other._ctx
        return out

    # -- set operations --------------------------------------------------------------------------

    def _check_same(self, other: Any, what: str) -> None:
        if not isinstance(other, BusList):
            raise TypeError(f"Cannot {what} a {type(self).__name__} with {type(other).__name__}")
        if type(self) is not type(other) and type(self) is not BusList and type(other) is not BusList:
            raise TypeError(f"Cannot {what} different bus list types: {type(self).__name__} and {type(other).__name__}")

    def merge(self, other: "BusList[T]") -> "BusList[T]":
        """This list's records, then `other`'s that are not in it (by identity)."""
        self._check_same(other, "merge")
        seen: set = set()
        items: list[T] = []
        for item in [*self._items, *other._items]:
            key = record_key(item)
            if key not in seen:
                seen.add(key)
                items.append(item)
        return self._binary("merge", other, items)

    def __add__(self, other: "BusList[T]") -> "BusList[T]":
        return self.merge(other)

    def intersection(self, other: "BusList[T]") -> "BusList[T]":
        """This list's records that are also in `other`, in this list's order."""
        self._check_same(other, "intersect")
        right = {record_key(item) for item in other._items}
        seen: set = set()
        items: list[T] = []
        for item in self._items:
            key = record_key(item)
            if key in right and key not in seen:
                seen.add(key)
                items.append(item)
        return self._binary("intersection", other, items)

    intersect = intersection

    def __and__(self, other: "BusList[T]") -> "BusList[T]":
        return self.intersection(other)

    def difference(self, other: "BusList[T]") -> "BusList[T]":
        """This list's records that are not in `other`, in this list's order."""
        self._check_same(other, "diff")
        right = {record_key(item) for item in other._items}
        seen: set = set()
        items: list[T] = []
        for item in self._items:
            key = record_key(item)
            if key not in right and key not in seen:
                seen.add(key)
                items.append(item)
        return self._binary("difference", other, items)

    subtract = difference

    def __sub__(self, other: "BusList[T]") -> "BusList[T]":
        return self.difference(other)

    # -- filters ---------------------------------------------------------------------------------

    def filter(self, flt: Optional[BusFilter] = None, *, strict: bool = True, **kwargs: Any) -> "BusList[T]":
        """Records matching a `BusFilter` (or its fields as keywords): exact kind/type/plugin_id/
        source, `*_re` regex searches (kind, type, plugin_id, source, content), `priority_min`,
        `since_ts`/`until_ts` on the record's timestamp. `strict`: a bad regex or number raises
        `BusFilterError` (else it matches nothing). Replayable."""
        if flt is None:
            unknown = sorted(set(kwargs) - FILTER_KEYS)
            if unknown:
                raise BusFilterError(f"unknown filter field(s): {', '.join(unknown)}")
            flt = BusFilter(**kwargs)
        elif kwargs:
            merged = {**flt.params(), **kwargs}
            flt = BusFilter(**merged)
        keep = filter_predicate(flt, strict)
        items = [item for item in self._items if keep(item)]
        params = {**flt.params(), "strict": bool(strict)}
        return self._step(items, "filter", params, lambda lst: lst.filter(flt, strict=strict))

    def try_filter(self, flt: Optional[BusFilter] = None, **kwargs: Any) -> BusFilterResult[T]:
        """`filter(..., strict=True)` that returns `BusFilterResult(ok, value, error)` instead of raising."""
        try:
            return BusFilterResult(ok=True, value=self.filter(flt, strict=True, **kwargs))
        except (BusFilterError, TypeError) as exc:
            return BusFilterResult(ok=False, error=exc)

    def where(self, predicate: Callable[[T], bool]) -> "BusList[T]":
        """Records for which `predicate(record)` is true. Replayed locally by `reload()`."""
        items = [item for item in self._items if predicate(item)]
        name = getattr(predicate, "__name__", "<callable>")
        return self._step(items, "where", {"predicate": name}, lambda lst: lst.where(predicate), replayable=False)

    def where_eq(self, field: str, value: Any) -> "BusList[T]":
        items = [item for item in self._items if field_of(item, field) == value]
        return self._step(items, "where_eq", {"field": field, "value": value}, lambda lst: lst.where_eq(field, value))

    def where_in(self, field: str, values: Iterable[Any]) -> "BusList[T]":
        allowed = list(values)
        items = [item for item in self._items if field_of(item, field) in allowed]
        return self._step(items, "where_in", {"field": field, "values": allowed}, lambda lst: lst.where_in(field, allowed))

    def where_contains(self, field: str, value: Any) -> "BusList[T]":
        needle = str(value)
        items = [item for item in self._items if isinstance(field_of(item, field), str) and needle in field_of(item, field)]
        return self._step(items, "where_contains", {"field": field, "value": needle}, lambda lst: lst.where_contains(field, needle))

    def where_regex(self, field: str, pattern: str, *, strict: bool = True) -> "BusList[T]":
        compiled = _compile(str(pattern), f"where_regex({field})", strict)
        items = []
        for item in self._items:
            value = field_of(item, field)
            if compiled is not None and value is not None and compiled.search(str(value)[:1024]) is not None:
                items.append(item)
        params = {"field": field, "pattern": str(pattern), "strict": bool(strict)}
        return self._step(items, "where_regex", params, lambda lst: lst.where_regex(field, pattern, strict=strict))

    def _compare(self, op: str, field: str, value: Any, cast: Optional[str], test: Callable[[Any, Any], bool]) -> "BusList[T]":
        target = _cast(value, cast)
        items = []
        for item in self._items:
            current = _cast(field_of(item, field), cast)
            try:
                if current is not None and test(current, target):
                    items.append(item)
            except TypeError:
                continue
        params = {"field": field, "value": value, "cast": cast}
        method = getattr(type(self), op)
        return self._step(items, op, params, lambda lst: method(lst, field, value, cast=cast), replayable=False)

    def where_gt(self, field: str, value: Any, *, cast: Optional[str] = None) -> "BusList[T]":
        return self._compare("where_gt", field, value, cast, lambda a, b: a > b)

    def where_ge(self, field: str, value: Any, *, cast: Optional[str] = None) -> "BusList[T]":
        return self._compare("where_ge", field, value, cast, lambda a, b: a >= b)

    def where_lt(self, field: str, value: Any, *, cast: Optional[str] = None) -> "BusList[T]":
        return self._compare("where_lt", field, value, cast, lambda a, b: a < b)

    def where_le(self, field: str, value: Any, *, cast: Optional[str] = None) -> "BusList[T]":
        return self._compare("where_le", field, value, cast, lambda a, b: a <= b)

    # -- order and size --------------------------------------------------------------------------

    def limit(self, n: int) -> "BusList[T]":
        """The first `n` records (none for n <= 0)."""
        count = int(n)
        items = self._items[: max(0, count)]
        return self._step(items, "limit", {"n": count}, lambda lst: lst.limit(count))

    def sort(
        self,
        *,
        by: Optional[Union[str, Sequence[str]]] = None,
        key: Optional[Callable[[T], Any]] = None,
        cast: Optional[str] = None,
        reverse: bool = False,
    ) -> "BusList[T]":
        """Sorted by field(s) `by` (default timestamp, created_at, time; numbers < strings <
        missing) or by a `key` function (not both). Stable."""
        if key is not None and by is not None:
            raise ValueError("Specify only one of 'key' or 'by'")
        if key is None:
            names = ["timestamp", "created_at", "time"] if by is None else ([by] if isinstance(by, str) else list(by))

            def sort_key(item: Any) -> tuple:
                return tuple(_sort_value(_cast(field_of(item, name), cast)) for name in names)

        else:
            sort_key = key
        items = sorted(self._items, key=sort_key, reverse=bool(reverse))
        params = {
            "by": by if isinstance(by, (str, type(None))) else list(by),
            "key": getattr(key, "__name__", "<callable>") if key is not None else None,
            "cast": cast,
            "reverse": bool(reverse),
        }
        if params["by"] is None and key is None:
            params["by"] = ["timestamp", "created_at", "time"]
        remote_ok = key is None and cast is None
        wire = {k: v for k, v in params.items() if k in ("by", "reverse")} if remote_ok else params
        return self._step(items, "sort", wire, lambda lst: lst.sort(by=by, key=key, cast=cast, reverse=reverse), replayable=remote_ok)

    def sorted(self, **kwargs: Any) -> "BusList[T]":
        return self.sort(**kwargs)

    # -- reload and watch ------------------------------------------------------------------------------

    def _require_plan(self) -> TraceNode:
        if self._plan is None:
            raise NonReplayableTraceError("reload is unavailable when fast_mode=True or plan is missing")
        return self._plan

    def _evaluate(self, hub: Any, node: TraceNode, timeout: float) -> "BusList[T]":
        if node.remote:
            events = hub._replay(node.store() or self.store_name, node.dump(), timeout)
            records = [self.record_class.from_event(ev) for ev in events if isinstance(ev, dict)]
            return type(self)(records, ctx=self._ctx, plan=node, plugin_id=self.plugin_id)
        if isinstance(node, UnaryNode):
            if node.apply is None:
                raise NonReplayableTraceError(f"cannot replay {node.op}")
            return node.apply(self._evaluate(hub, node.child, timeout))
        if isinstance(node, BinaryNode):
            left = self._evaluate(hub, node.left, timeout)
            right = self._evaluate(hub, node.right, timeout)
            return {"merge": left.merge, "intersection": left.intersection, "difference": left.difference}[node.op](right)
        raise NonReplayableTraceError(f"cannot replay a {type(node).__name__}")

    def reload_with(self, ctx: Any = None, *, inplace: bool = False, incremental: bool = False, timeout: float = 5.0) -> "BusList[T]":
        """Re-runs the plan against live data (see the module doc). `inplace=True` updates this
        list instead of returning a new one. `incremental` is accepted and means a full reload."""
        plan = self._require_plan()
        ctx = ctx if ctx is not None else self._ctx
        if ctx is None:
            raise TypeError("reload() missing required argument: 'ctx' (BusList is not bound to a context)")
        fresh = self._evaluate(_hub_of(ctx), plan, timeout)
        if inplace:
            self._items = list(fresh._items)
            self._ctx = ctx
            self._trace = self._trace + (BusOp("reload", {}, time.time()),)
            return self
        return type(self)(fresh._items, ctx=ctx, trace=self._trace, plan=plan, plugin_id=self.plugin_id)

    def reload(self, ctx: Any = None, *, incremental: bool = False, timeout: float = 5.0) -> "BusList[T]":
        """A new list: this list's plan run again (one `bus.replay` when the plane can run it all)."""
        return self.reload_with(ctx, incremental=incremental, timeout=timeout)

    async def reload_async(self, ctx: Any = None, *, timeout: float = 5.0) -> "BusList[T]":
        return await asyncio.to_thread(self.reload_with, ctx, timeout=timeout)

    def watch(self, ctx: Any = None, *, bus: Optional[str] = None, debounce_ms: float = 0.0) -> "BusListWatcher[T]":
        """A watcher that re-evaluates this list when its store changes (see `BusListWatcher`)."""
        ctx = ctx if ctx is not None else self._ctx
        if ctx is None:
            raise TypeError("watch() missing required argument: 'ctx' (BusList is not bound to a context)")
        return BusListWatcher(self, ctx, bus=bus, debounce_ms=debounce_ms)


class MessageList(BusList[MessageRecord]):
    store_name = "messages"
    record_class = MessageRecord


class EventList(BusList[EventRecord]):
    store_name = "events"
    record_class = EventRecord


class LifecycleList(BusList[LifecycleRecord]):
    store_name = "lifecycle"
    record_class = LifecycleRecord


class MemoryList(BusList[MemoryRecord]):
    store_name = "memory"
    record_class = MemoryRecord

    @property
    def bucket_id(self) -> Optional[str]:
        node = self._plan
        while isinstance(node, UnaryNode):
            node = node.child
        if isinstance(node, GetNode):
            return (node.params.get("params") or {}).get("topic")
        return None


LIST_CLASSES: dict[str, type[BusList]] = {
    "messages": MessageList,
    "events": EventList,
    "lifecycle": LifecycleList,
    "memory": MemoryList,
}


# -- watchers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusListDelta(Generic[T]):
    """What changed between two evaluations of a watched list."""

    kind: str
    added: tuple
    removed: tuple  # identities (see record_key) of records that left
    current: BusList
    changed: tuple = ()
    removed_records: tuple = ()


def _injected(fn: Callable[..., Any]) -> Callable[[BusListDelta], Any]:
    """Calls `fn(delta)`, or with the keyword arguments it names (delta, added, removed, changed,
    current/list, kind/op, count/len/length, quickdump)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) == 1 and len(positional) == 1:
        return fn

    def call(delta: BusListDelta) -> Any:
        mapping = {
            "delta": delta,
            "d": delta,
            "added": delta.added,
            "removed": delta.removed,
            "removed_records": delta.removed_records,
            "changed": delta.changed,
            "current": delta.current,
            "list": delta.current,
            "buslist": delta.current,
            "kind": delta.kind,
            "op": delta.kind,
            "count": len(delta.added),
            "len": len(delta.added),
            "length": len(delta.added),
            "quickdump": tuple(item.dump() for item in delta.added),
        }
        kwargs = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in mapping:
                kwargs[p.name] = mapping[p.name]
            elif p.default is p.empty:
                return fn(delta)
        return fn(**kwargs)

    return call


class BusListWatcher(Generic[T]):
    """Fires callbacks when a list's query gives different records.

    `start()` opens a SUB socket on the message plane's PUB endpoint (topic prefix `<store>.`) in a
    daemon thread. Each published event (bursts are coalesced; with `debounce_ms` the watcher
    waits for that much quiet first) makes it `reload()` the list and compare identities with the
    previous result: new ones fire `add`, missing ones `del`, any difference (including a record
    whose stored payload changed) fires `change`. Callbacks run in the watcher's thread, each at
    most once per evaluation; their exceptions are logged.

        watcher = ctx.bus.messages.get(source="chat").watch()

        @watcher.subscribe(on="add")
        def on_new(delta):
            ...

        watcher.start()   # ...; watcher.stop()
    """

    def __init__(self, lst: BusList[T], ctx: Any, *, bus: Optional[str] = None, debounce_ms: float = 0.0):
        plan = lst.plan
        if plan is None:
            raise NonReplayableTraceError("watcher requires a replayable plan; build the list with a bus client's get()")
        store = bus.strip() if isinstance(bus, str) and bus.strip() else plan.store() or lst.store_name
        if not store:
            raise NonReplayableTraceError("watcher cannot tell which bus the list comes from; pass bus=...")
        self._list = lst
        self._ctx = ctx
        self._hub = _hub_of(ctx)
        self.store = store
        self.debounce_s = max(0.0, float(debounce_ms or 0.0)) / 1000.0
        self._callbacks: list[tuple[Callable[[BusListDelta], Any], tuple[str, ...]]] = []
        self._lock = threading.Lock()
        self._last = {record_key(item): item for item in lst}
        self._current: BusList[T] = lst
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error_logged_at = 0.0
        self._eval_lock = threading.Lock()
        self.evaluations = 0

    @property
    def current(self) -> BusList[T]:
        """The list as last evaluated."""
        return self._current

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscribe(self, *, on: Union[str, Sequence[str]] = ("add",)) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `@watcher.subscribe(on="add" | "del" | "change" | [...])`."""
        rules = (on,) if isinstance(on, str) else tuple(on)
        bad = [rule for rule in rules if rule not in ("add", "del", "change")]
        if bad:
            raise ValueError(f"subscribe(on=...) takes 'add', 'del' or 'change', not {bad}")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            with self._lock:
                self._callbacks.append((_injected(fn), rules))
            return fn

        return decorate

    def start(self) -> "BusListWatcher[T]":
        """Starts watching (idempotent). RuntimeError when the message plane is not available."""
        if self.running:
            return self
        plane = self._hub._plane_for("bus watchers")
        plane.require("pub", "bus watchers")
        plane.require("rpc", "bus watchers")
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(plane,), name=f"neko-bus-watch-{self.store}", daemon=True)
        self._thread.start()
        self._ready.wait(2.0)
        track = getattr(getattr(self._hub, "ctx", None), "_track_watcher", None)
        if track is not None:
            track(self)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stops watching and waits (briefly) for the thread to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        untrack = getattr(getattr(self._hub, "ctx", None), "_untrack_watcher", None)
        if untrack is not None:
            untrack(self)

    def _run(self, plane: Any) -> None:
        try:
            sock = plane.subscriber([f"{self.store}."], "bus watchers")
        except Exception as exc:
            self._log_error(exc)
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                self._drain(sock)
                if self.debounce_s > 0:
                    while not self._stop.is_set() and sock.poll(int(self.debounce_s * 1000) or 1):
                        self._drain(sock)
                if self._stop.is_set():
                    break
                self.check()
        except Exception as exc:  # the socket went away (closing); nothing to report to anyone
            if not self._stop.is_set():
                self._log_error(exc)
        finally:
            sock.close(linger=0)

    @staticmethod
    def _drain(sock: Any) -> None:
        import zmq

        while True:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _log_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._error_logged_at < 1.0:
            return
        self._error_logged_at = now
        logger = getattr(getattr(self._hub, "ctx", None), "logger", None)
        if logger is not None:
            logger.warning("bus watcher on '{}' could not reload its list: {}: {}", self.store, type(exc).__name__, exc)

    def check(self) -> Optional[BusListDelta]:
        """Re-evaluates the list now and fires callbacks; returns the delta (None if unchanged)."""
        with self._eval_lock:
            return self._check()

    def _check(self) -> Optional[BusListDelta]:
        try:
            fresh = self._list.reload(self._ctx)
        except Exception as exc:
            self._log_error(exc)
            return None
        self.evaluations += 1
        new = {record_key(item): item for item in fresh}
        added = tuple(item for key, item in new.items() if key not in self._last)
        removed_keys = tuple(key for key in self._last if key not in new)
        removed_records = tuple(self._last[key] for key in removed_keys)
        changed = tuple(item for key, item in new.items() if key in self._last and self._last[key].raw != item.raw)
        self._last = new
        self._current = fresh
        fired = set()
        if added:
            fired.add("add")
        if removed_keys:
            fired.add("del")
        if added or removed_keys or changed:
            fired.add("change")
        if not fired:
            return None
        kind = "add" if fired == {"add", "change"} else "del" if fired == {"del", "change"} else "change"
        delta = BusListDelta(kind=kind, added=added, removed=removed_keys, current=fresh, changed=changed, removed_records=removed_records)
        with self._lock:
            callbacks = list(self._callbacks)
        for fn, rules in callbacks:
            if not fired.intersection(rules):
                continue
            try:
                fn(delta)
            except Exception as exc:
                logger = getattr(getattr(self._hub, "ctx", None), "logger", None)
                if logger is not None:
                    logger.opt(exception=exc).error("bus watcher callback failed: {}: {}", type(exc).__name__, exc)
        return delta


__all__ = [
    "BusChange",
    "BusChangeOp",
    "BusRecord",
    "MessageRecord",
    "EventRecord",
    "LifecycleRecord",
    "MemoryRecord",
    "BusFilter",
    "BusFilterError",
    "BusFilterResult",
    "NonReplayableTraceError",
    "BusOp",
    "TraceNode",
    "GetNode",
    "UnaryNode",
    "BinaryNode",
    "BusList",
    "MessageList",
    "EventList",
    "LifecycleList",
    "MemoryList",
    "BusListDelta",
    "BusListWatcher",
    "record_key",
    "parse_timestamp",
    "parse_iso_timestamp",
]


# The reference's name for the same helper.
parse_iso_timestamp = parse_timestamp
