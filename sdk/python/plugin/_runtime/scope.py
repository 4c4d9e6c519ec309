"""Context variables describing what plugin code is running for.

- `current_run_id`: the run of the current call (`ctx.run_id`), set in sync and async entry handlers
  (not in `@worker` threads, as in the reference).
- `current_call`: the current call's `CallScope` (its cancel flag), set for every entry and custom-event
  call (also in `@worker` threads). Every REQUEST sent while it is set carries its `call_id`, which is
  how neko follows plugin-to-plugin calls made inside a call (deadlines, deadlock detection).
- `handler_label`: the reference's "handler scope" label (`plugin_entry.<id>`, `lifecycle.startup`,
  `timer.<id>`, ...), used by the sync-call policy.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

current_run_id: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("plugin_current_run_id", default=None)
current_call: contextvars.ContextVar[Optional["CallScope"]] = contextvars.ContextVar("neko_current_call", default=None)
handler_label: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("plugin_in_handler", default=None)


class Flag:
    """A set-once cancel flag with `threading.Event`'s interface, made for every call: setting and
    reading it is a plain attribute; the event behind `wait` is only made when someone waits."""

    __slots__ = ("_set", "_event")
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._set = False
        self._event: Optional[threading.Event] = None

    def is_set(self) -> bool:
        return self._set

    isSet = is_set

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is None:
            with Flag._lock:
                event = self._event
        if event is not None:
            event.set()

    def clear(self) -> None:
        self._set = False
        with Flag._lock:
            if self._event is not None:
                self._event.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._set:
            return True
        with Flag._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._set:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


@dataclass
class CallScope:
    """One call as its handler sees it: ids and the cancel flag (set on CANCEL or at the deadline)."""

    call_id: str
    entry_id: str
    run_id: Optional[str] = None
    flag: Flag = field(default_factory=Flag)
    #: The calling plugin's id, for plugin-to-plugin calls (the TRIGGER's `caller`).
    caller: Optional[str] = None
    #: The custom event's type when the call is for one (None for entries).
    event_type: Optional[str] = None
    #: Set once the call's RESULT is sent: code still running for it (a thread it started) no
    #: longer sends its `call_id`.
    ended: bool = False

    @property
    def cancelled(self) -> bool:
        return self.flag.is_set()


def current_call_id() -> Optional[str]:
    """The id of the TRIGGER whose handler is running in this context, if any."""
    call = current_call.get()
    return call.call_id if call is not None and not call.ended else None


def enter(label: Optional[str] = None, run_id: Optional[str] = None, call: Optional[CallScope] = None) -> None:
    """Sets the scope variables in the current context (a task's or a thread's own copy)."""
    if label is not None:
        handler_label.set(label)
    if run_id is not None:
        current_run_id.set(run_id)
    if call is not None:
        current_call.set(call)


def run_scoped(
    fn: Callable[..., Any],
    kwargs: dict | None = None,
    *,
    label: Optional[str] = None,
    run_id: Optional[str] = None,
    call: Optional[CallScope] = None,
) -> Any:
    """Calls `fn(**kwargs)` in a fresh copy of the current context with the scope set (for threads)."""

    def inner() -> Any:
        enter(label, run_id, call)
        return fn(**(kwargs or {}))

    return contextvars.copy_context().run(inner)
