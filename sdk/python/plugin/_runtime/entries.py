"""The plugin's handler tables, built once from the constructed instance.

Only `@plugin_entry` members and plugin.toml `entries` that name an attribute are invocable as
entries. Custom events (`@custom_event`) are declared in HELLO's `events` and can be called by other
plugins (a TRIGGER with `event_type`), with the same machinery as entries. Lifecycle hooks, timers
and `@message` handlers are kept for the runtime's own use (`@message` ones are fed by
`message_dispatch`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..sdk.logger import PluginLogger
from ..sdk.shared.core.events import EventMeta, WorkerConfig, scan_event_handlers, worker_config_of
from .manifest import manifest_entries


def is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    inner = getattr(fn, "__func__", None)
    if inner is not None and inspect.iscoroutinefunction(inner):
        return True
    call = getattr(type(fn), "__call__", None)
    return call is not None and not inspect.isfunction(fn) and not inspect.ismethod(fn) and inspect.iscoroutinefunction(call)


@dataclass
class RuntimeEntry:
    meta: EventMeta
    handler: Callable[..., Any]
    attr: str
    is_async: bool
    worker: Optional[WorkerConfig] = None

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def is_custom_event(self) -> bool:
        return self.meta.event_type != "plugin_entry"

    @property
    def label(self) -> str:
        """The handler-scope label: `plugin_entry.<id>`, or `<event_type>.<id>` for a custom event."""
        return f"{self.meta.event_type}.{self.meta.id}"

    @property
    def what(self) -> str:
        """How messages name it: `Entry '<id>'` or `Custom event '<event_type>.<id>'`."""
        return f"Custom event '{self.label}'" if self.is_custom_event else f"Entry '{self.meta.id}'"

    @property
    def timeout_ms(self) -> Optional[int]:
        """The entry's own deadline: its `timeout`, else its `@worker` timeout; None = none."""
        if self.meta.timeout and self.meta.timeout > 0:
            return int(round(self.meta.timeout * 1000))
        if self.worker and self.worker.timeout and self.worker.timeout > 0:
            return int(round(self.worker.timeout * 1000))
        return None

    def hello_spec(self) -> dict:
        meta = self.meta
        # An entry without a schema shows `{}`, as the reference's decorators store it.
        schema = meta.input_schema if isinstance(meta.input_schema, dict) else {}
        try:
            schema = json.loads(json.dumps(schema))
        except (TypeError, ValueError):
            schema = {}
        spec = {
            "id": meta.id,
            "name": meta.name if isinstance(meta.name, str) and meta.name else meta.id,
            "description": meta.description if isinstance(meta.description, str) else str(meta.description or ""),
            "input_schema": schema,
            "kind": str(meta.kind or "action"),
        }
        if self.timeout_ms is not None:
            spec["timeout_ms"] = self.timeout_ms
        return spec


@dataclass
class HandlerTables:
    entries: dict[str, RuntimeEntry] = field(default_factory=dict)
    lifecycle: dict[str, Callable[..., Any]] = field(default_factory=dict)
    timers: list[tuple[EventMeta, Callable[..., Any]]] = field(default_factory=list)
    #: `@message` handlers by id, with their metadata (the `source` filter lives in `meta.extra`).
    messages: dict[str, tuple[EventMeta, Callable[..., Any]]] = field(default_factory=dict)
    custom: dict[tuple[str, str], tuple[EventMeta, Callable[..., Any]]] = field(default_factory=dict)
    #: The plugin class's own `input_schema` attribute (the plugin-level schema), as JSON; None when
    #: the class defines none. Sent in HELLO only when set.
    input_schema: Optional[dict] = None

    #: Custom events wrapped as entries, made on their first call.
    _event_entries: dict[tuple[str, str], RuntimeEntry] = field(default_factory=dict)

    def hello_entries(self) -> list[dict]:
        return [entry.hello_spec() for entry in self.entries.values()]

    def hello_events(self) -> list[dict]:
        """HELLO's `events`: the custom events other plugins may call."""
        return [{"event_type": event_type, "id": event_id} for (event_type, event_id) in self.custom]

    def event_entry(self, event_type: str, event_id: str) -> Optional[RuntimeEntry]:
        """The custom event `<event_type>.<event_id>` as a callable entry, or None when undeclared."""
        key = (event_type, event_id)
        found = self._event_entries.get(key)
        if found is None:
            handler = self.custom.get(key)
            if handler is None:
                return None
            meta, fn = handler
            found = RuntimeEntry(meta, fn, getattr(fn, "__name__", event_id), is_async_callable(fn), worker_config_of(fn))
            self._event_entries[key] = found
        return found

    @property
    def auto_events(self) -> list[tuple[EventMeta, Callable[..., Any]]]:
        return [
            (meta, fn)
            for meta, fn in self.custom.values()
            if meta.auto_start and (meta.extra or {}).get("trigger_method") == "auto"
        ]


def plugin_input_schema(cls: type, logger: Optional[PluginLogger] = None) -> Optional[dict]:
    """The class attribute `input_schema` (reference §5.1: the plugin-level schema) as a JSON
    object, or None when the class defines none (or an empty one)."""
    schema = getattr(cls, "input_schema", None)
    if not isinstance(schema, dict) or not schema:
        if schema is not None and not isinstance(schema, dict) and logger is not None:
            logger.warning("the plugin class's input_schema is a {}, not a dict; ignored", type(schema).__name__)
        return None
    try:
        value = json.loads(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        if logger is not None:
            logger.warning("the plugin class's input_schema is not JSON ({}); ignored", exc)
        return None
    return value if isinstance(value, dict) else None


def bare_instance(cls: type) -> Any:
    """An instance of `cls` whose `__init__` never ran: enough to look its methods up."""
    try:
        return cls.__new__(cls)
    except TypeError:  # a __new__ that wants the constructor's arguments
        return object.__new__(cls)


def build_tables(instance: Any, manifest: dict, logger: PluginLogger) -> HandlerTables:
    tables = HandlerTables()
    tables.input_schema = plugin_input_schema(type(instance), logger)

    def skipped(name: str, why: str) -> None:
        logger.warning("member '{}' is decorated but {}; ignored", name, why)

    for found in scan_event_handlers(instance, on_skip=skipped):
        meta, fn = found.meta, found.handler
        kind = meta.event_type
        if kind == "plugin_entry":
            if meta.id in tables.entries:
                logger.warning("entry id '{}' is declared twice ('{}' and '{}'); '{}' is used", meta.id, tables.entries[meta.id].attr, found.attr, found.attr)
            tables.entries[meta.id] = RuntimeEntry(meta, fn, found.attr, is_async_callable(fn), worker_config_of(fn))
        elif kind == "lifecycle":
            tables.lifecycle[meta.id] = fn
        elif kind == "timer":
            tables.timers.append((meta, fn))
        elif kind == "message":
            tables.messages[meta.id] = (meta, fn)
        else:
            tables.custom[(kind, meta.id)] = (meta, fn)

    for item in manifest_entries(manifest):
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"].strip():
            logger.warning("plugin.toml entry {!r} has no id; ignored", item)
            continue
        entry_id = item["id"].strip()
        if entry_id in tables.entries:
            continue  # the decorator's declaration wins
        fn = getattr(instance, entry_id, None)
        if not callable(fn):
            logger.warning("plugin.toml entry '{}' names no method of the plugin class; ignored", entry_id)
            continue
        meta = EventMeta(
            event_type="plugin_entry",
            id=entry_id,
            name=str(item.get("name") or entry_id),
            description=str(item.get("description") or ""),
            input_schema=item.get("input_schema") if isinstance(item.get("input_schema"), dict) else {},
            kind=str(item.get("kind") or "action"),
        )
        tables.entries[entry_id] = RuntimeEntry(meta, fn, entry_id, is_async_callable(fn), worker_config_of(fn))
    return tables
