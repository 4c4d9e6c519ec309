"""A small loguru-style logger without third-party dependencies.

`logger.info("x {} y", a)` formats like loguru (`str.format`); `%`-style arguments work too. Every
record is written to stderr as `time | LEVEL | plugin_id | message`; a record with several lines
(a traceback) repeats the prefix on each line, so every line stands alone in neko's log.
`bind(**kw)` and `opt(...)` return derived loggers sharing the same sinks.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time as _time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

LEVELS = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}

_write_lock = threading.RLock()


def level_number(level: Any) -> int:
    """The number of a level given by name (any case) or number; ValueError for an unknown name."""
    if isinstance(level, bool):
        raise ValueError(f"invalid log level: {level!r}")
    if isinstance(level, int):
        return level
    name = str(level).strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        raise ValueError(f"invalid log level: {level!r}")
    return LEVELS[name]


def level_name(number: int) -> str:
    for name, value in LEVELS.items():
        if value == number:
            return name
    return f"LEVEL{number}"


def _format_message(message: Any, args: tuple, kwargs: dict) -> str:
    text = message if isinstance(message, str) else str(message)
    if not args and not kwargs:
        return text
    if "{" in text:
        try:
            return text.format(*args, **kwargs)
        except (IndexError, KeyError, ValueError, AttributeError):
            pass
    elif "%" in text and args and not kwargs:
        try:
            return text % args
        except (TypeError, ValueError):
            pass
    # No placeholders (print-style call) or a mismatch: show the arguments after the text.
    extra = " ".join(str(a) for a in args)
    if kwargs:
        extra = (extra + " " if extra else "") + " ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{text} {extra}"


class StreamSink:
    """Writes lines to a text stream (stderr by default), one write per record."""

    def __init__(self, stream: Any = None):
        self._stream = stream

    def __call__(self, lines: list[str], level: int) -> None:
        stream = self._stream or sys.stderr
        with _write_lock:
            try:
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed: nothing sensible left to do

    def close(self) -> None:
        pass


class RotatingFileSink:
    """Writes lines to a file that rotates at `max_bytes` keeping `backup_count` old copies."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def __call__(self, lines: list[str], level: int) -> None:
        record = logging.LogRecord("neko", level, "", 0, "\n".join(lines), None, None)
        self._handler.handle(record)

    def close(self) -> None:
        self._handler.close()


class CallableSink:
    """Wraps a user callable (`logger.add(fn)`): it gets each formatted line."""

    def __init__(self, fn: Callable[[str], Any]):
        self._fn = fn

    def __call__(self, lines: list[str], level: int) -> None:
        try:
            self._fn("\n".join(lines) + "\n")
        except Exception:
            pass

    def close(self) -> None:
        pass


class _Core:
    """What bound loggers share: sinks (each with a minimum level)."""

    def __init__(self) -> None:
        self.sinks: dict[int, tuple[Any, int]] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def add(self, sink: Any, level: int) -> int:
        with self._lock:
            sink_id = self._next_id
            self._next_id += 1
            self.sinks[sink_id] = (sink, level)
            return sink_id

    def remove(self, sink_id: Optional[int]) -> None:
        with self._lock:
            ids = list(self.sinks) if sink_id is None else [sink_id]
            for i in ids:
                entry = self.sinks.pop(i, None)
                if entry is None and sink_id is not None:
                    raise ValueError(f"There is no existing handler with id {sink_id!r}")
                if entry is not None:
                    entry[0].close()

    def min_level(self) -> int:
        levels = [lvl for _, lvl in self.sinks.values()]
        return min(levels) if levels else 1000


def default_level() -> int:
    """INFO, or `NEKO_PLUGIN_LOG_LEVEL` when set to a valid level name."""
    try:
        return level_number(os.environ.get("NEKO_PLUGIN_LOG_LEVEL", "INFO"))
    except ValueError:
        return LEVELS["INFO"]


class PluginLogger:
    """A loguru-like logger: `trace/debug/info/success/warning/error/critical/exception/log`,
    `bind(**extra)`, `opt(exception=..., lazy=...)`, `add(sink)`/`remove(id)`."""

    def __init__(
        self,
        name: str = "plugin",
        *,
        core: Optional[_Core] = None,
        extra: Optional[dict] = None,
        exception: Any = None,
        lazy: bool = False,
        level: Any = None,
    ):
        self._name = name
        if core is None:
            core = _Core()
            core.add(StreamSink(), level_number(level) if level is not None else default_level())
        self._core = core
        self._extra = dict(extra or {})
        self._exception = exception
        self._lazy = lazy

    # -- derived loggers ------------------------------------------------------------------

    def bind(self, **kwargs: Any) -> "PluginLogger":
        return PluginLogger(self._name, core=self._core, extra={**self._extra, **kwargs})

    def opt(
        self,
        *,
        exception: Any = None,
        record: bool = False,
        lazy: bool = False,
        colors: bool = False,
        raw: bool = False,
        capture: bool = True,
        depth: int = 0,
        ansi: bool = False,
    ) -> "PluginLogger":
        return PluginLogger(
            self._name, core=self._core, extra=self._extra, exception=exception, lazy=lazy
        )

    # -- sinks ----------------------------------------------------------------------------

    def add(self, sink: Any, *, level: Any = "DEBUG", **_ignored: Any) -> int:
        """Adds a sink: a path (a file, appended to) or a callable taking each formatted record."""
        number = level_number(level)
        if isinstance(sink, (str, Path)):
            return self._core.add(RotatingFileSink(Path(sink), 0, 0), number)
        if hasattr(sink, "write"):
            return self._core.add(StreamSink(sink), number)
        if callable(sink):
            return self._core.add(CallableSink(sink), number)
        raise TypeError(f"cannot log to {sink!r}")

    def remove(self, handler_id: Optional[int] = None) -> None:
        self._core.remove(handler_id)

    def set_level(self, level: Any) -> None:
        """Changes the minimum level of every sink."""
        number = level_number(level)
        with self._core._lock:
            for key, (sink, _) in list(self._core.sinks.items()):
                self._core.sinks[key] = (sink, number)

    def is_enabled_for(self, level: Any) -> bool:
        return level_number(level) >= self._core.min_level()

    # -- records --------------------------------------------------------------------------

    def _emit(self, level: int, message: Any, args: tuple, kwargs: dict, exc: Any = None) -> None:
        if level < self._core.min_level():
            return
        if self._lazy:
            args = tuple(a() if callable(a) else a for a in args)
            kwargs = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
        text = _format_message(message, args, kwargs)
        exc = exc if exc is not None else self._exception
        tb_text = _traceback_text(exc)
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        ident = self._extra.get("plugin_id", self._name)
        extras = {k: v for k, v in self._extra.items() if k != "plugin_id"}
        suffix = (" [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]") if extras else ""
        prefix = f"{stamp} | {level_name(level):<8} | {ident} | "
        body = (text + suffix).splitlines() or [""]
        if tb_text:
            body.extend(tb_text.rstrip("\n").splitlines())
        lines = [prefix + line for line in body]
        for sink, min_level in list(self._core.sinks.values()):
            if level >= min_level:
                sink(lines, level)

    def log(self, level: Any, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(level_number(level), message, args, kwargs)

    def trace(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["TRACE"], message, args, kwargs)

    def debug(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["DEBUG"], message, args, kwargs)

    def info(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["INFO"], message, args, kwargs)

    def success(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["SUCCESS"], message, args, kwargs)

    def warning(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["WARNING"], message, args, kwargs)

    warn = warning

    def error(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["ERROR"], message, args, kwargs)

    def critical(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(LEVELS["CRITICAL"], message, args, kwargs)

    def exception(self, message: Any, *args: Any, **kwargs: Any) -> None:
        """ERROR with the traceback of the exception being handled."""
        self._emit(LEVELS["ERROR"], message, args, kwargs, exc=True)


def _traceback_text(exc: Any) -> str:
    if not exc:
        return ""
    if exc is True:
        info = sys.exc_info()
        if info[0] is None:
            return ""
        return "".join(traceback.format_exception(*info))
    if isinstance(exc, BaseException):
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, tuple) and len(exc) == 3 and exc[0] is not None:
        return "".join(traceback.format_exception(*exc))
    return ""


def get_plugin_logger(plugin_id: str, level: Any = None) -> PluginLogger:
    """A logger writing to stderr, bound with `plugin_id`."""
    return PluginLogger(f"plugin.{plugin_id}", level=level).bind(plugin_id=plugin_id)


# -- file logging ---------------------------------------------------------------------------

DEFAULT_FILE_LEVEL = "INFO"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 10
DEFAULT_MAX_FILES = 20


def _sanitize_id(plugin_id: str) -> str:
    cleaned = "".join(c if (c.isascii() and (c.isalnum() or c in "_-")) else "_" for c in plugin_id)
    return cleaned.strip("_-")[:64] or "plugin"


def _prune_old_files(log_dir: Path, stem: str, keep: int) -> None:
    if keep <= 0:
        return
    files = sorted(log_dir.glob(f"{stem}_*.log"), key=lambda p: p.stat().st_mtime)
    for old in files[: max(0, len(files) - keep)]:
        try:
            old.unlink()
        except OSError:
            pass


def enable_plugin_file_logging(
    plugin_id: str,
    plugin_dir: Path,
    log_level: Any = None,
    max_bytes: Optional[int] = None,
    backup_count: Optional[int] = None,
    max_files: Optional[int] = None,
) -> PluginLogger:
    """A logger that writes to stderr and to `<plugin_dir>/logs/<id>_<YYYYmmdd_HHMMSS>.log`
    (rotating at `max_bytes`, keeping `backup_count` rotated copies and at most `max_files` log files)."""
    level = level_number(log_level if log_level is not None else DEFAULT_FILE_LEVEL)
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    backup_count = DEFAULT_BACKUP_COUNT if backup_count is None else int(backup_count)
    max_files = DEFAULT_MAX_FILES if max_files is None else int(max_files)
    if max_bytes <= 0 or backup_count < 0:
        raise ValueError("max_bytes must be > 0 and backup_count >= 0")
    stem = _sanitize_id(plugin_id)
    log_dir = Path(plugin_dir) / "logs"
    path = log_dir / f"{stem}_{_time.strftime('%Y%m%d_%H%M%S')}.log"
    core = _Core()
    core.add(StreamSink(), level)
    core.add(RotatingFileSink(path, max_bytes, backup_count), level)
    _prune_old_files(log_dir, stem, max_files)
    logger = PluginLogger(f"plugin.{plugin_id}", core=core).bind(plugin_id=plugin_id)
    logger.log_file = path  # type: ignore[attr-defined]
    return logger


class PluginFileLogger:
    """Object form of `enable_plugin_file_logging` (reference name)."""

    def __init__(self, plugin_id: str, plugin_dir: Path, **options: Any):
        self.logger = enable_plugin_file_logging(plugin_id, plugin_dir, **options)

    def get_logger(self) -> PluginLogger:
        return self.logger


def plugin_file_logger(**options: Any) -> Callable[[type], type]:
    """Class decorator: the plugin enables file logging when it is constructed (`self.file_logger`)."""

    def decorate(cls: type) -> type:
        original_init = cls.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            enable = getattr(self, "enable_file_logging", None)
            if callable(enable):
                enable(**options)

        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return decorate


class StdlibBridge(logging.Handler):
    """Routes records of Python's `logging` module to a `PluginLogger`."""

    def __init__(self, logger: PluginLogger):
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.name and record.name != "root":
            message = f"{record.name}: {message}"
        self._logger._emit(record.levelno, message, (), {}, exc=record.exc_info or None)


__all__ = [
    "LEVELS",
    "PluginLogger",
    "get_plugin_logger",
    "enable_plugin_file_logging",
    "PluginFileLogger",
    "plugin_file_logger",
    "StdlibBridge",
    "level_number",
]
