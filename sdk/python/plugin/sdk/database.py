"""`self.db`: a plugin's own SQLite database through SQLAlchemy (reference §5.7,
plugin/sdk/database.py).

The database is off unless the plugin's plugin.toml says

    [plugin.database]
    enabled = true
    name = "mydata.db"     # optional; default "<plugin_id>.db", in the plugin folder

SQLAlchemy is not a dependency of the SDK: a plugin that uses `self.db` installs it (and
`sqlalchemy[asyncio]` plus `aiosqlite` for `async_session()`). Nothing is imported, created or
opened before first use; then a missing package raises `ImportError` naming it, and a disabled
database raises `RuntimeError` saying how to enable it.

    from sqlalchemy import Column, Integer, String, select

    class Note(self.db.Base):              # models derive from the plugin's own Base
        __tablename__ = "notes"
        id = Column(Integer, primary_key=True)
        text = Column(String)

    self.db.create_all()                   # in async code: await self.db.create_all()
    with self.db.session() as session:
        session.add(Note(text="hi"))
        session.commit()
    async with self.db.async_session() as session:      # needs aiosqlite and greenlet
        notes = (await session.execute(select(Note))).scalars().all()
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def require_sqlalchemy() -> Any:
    """The `sqlalchemy` module, or ImportError naming it."""
    try:
        return importlib.import_module("sqlalchemy")
    except ImportError as exc:
        raise ImportError(
            "PluginDatabase (self.db) needs SQLAlchemy, which is not installed in the plugin's "
            "Python environment: install the 'sqlalchemy' package (and 'sqlalchemy[asyncio]' plus 'aiosqlite' for async_session())",
            name="sqlalchemy",
        ) from exc


def require_async_support() -> None:
    """ImportError naming what SQLAlchemy's asyncio support lacks (aiosqlite, greenlet)."""
    for name in ("aiosqlite", "greenlet"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(
                f"PluginDatabase async sessions (self.db.async_session / async_engine) need the '{name}' "
                f"package, which is not installed in the plugin's Python environment: install "
                f"'sqlalchemy[asyncio]' and 'aiosqlite'",
                name=name,
            ) from exc


class PluginDatabase:
    """SQLAlchemy access to `<plugin dir>/<name>`: `Base`, `session()`, `async_session()`,
    `create_all()`, `drop_all()`, `engine`, `async_engine`, `close()`."""

    def __init__(
        self,
        plugin_id: str,
        plugin_dir: Path | str,
        logger: Any = None,
        enabled: bool = True,
        db_name: Optional[str] = None,
    ):
        self.plugin_id = plugin_id
        self.plugin_dir = Path(plugin_dir)
        self.logger = logger
        self.enabled = bool(enabled)
        self._db_path = self.plugin_dir / (db_name or f"{plugin_id}.db")
        self._lock = threading.RLock()
        self._base: Any = None
        self._engine: Any = None
        self._session_factory: Any = None
        self._async_engine: Any = None
        self._async_session_factory: Any = None

    def __repr__(self) -> str:
        return f"PluginDatabase(plugin_id={self.plugin_id!r}, path={str(self._db_path)!r}, enabled={self.enabled})"

    # -- paths ----------------------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self._db_path

    @property
    def db_exists(self) -> bool:
        return self._db_path.exists()

    # -- setup (lazy) -----------------------------------------------------------------------------------

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise RuntimeError(
                f"PluginDatabase is disabled for plugin '{self.plugin_id}': add\n"
                f"    [plugin.database]\n    enabled = true\n"
                f"to its plugin.toml to use self.db (and install the 'sqlalchemy' package)"
            )

    @property
    def Base(self) -> Any:  # noqa: N802 (the reference's name)
        """The declarative base the plugin's models derive from (one per plugin)."""
        with self._lock:
            if self._base is None:
                require_sqlalchemy()
                from sqlalchemy.orm import declarative_base

                self._base = declarative_base()
            return self._base

    @property
    def engine(self) -> Any:
        """The synchronous SQLAlchemy engine (made on first use)."""
        self._require_enabled()
        with self._lock:
            if self._engine is None:
                sqlalchemy = require_sqlalchemy()
                from sqlalchemy.orm import sessionmaker

                self.plugin_dir.mkdir(parents=True, exist_ok=True)
                engine = sqlalchemy.create_engine(f"sqlite:///{self._db_path}", connect_args={"check_same_thread": False})
                sqlalchemy.event.listen(engine, "connect", _enable_foreign_keys)
                self._session_factory = sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)
                self._engine = engine
            return self._engine

    @property
    def async_engine(self) -> Any:
        """The asyncio SQLAlchemy engine (`sqlite+aiosqlite`, made on first use)."""
        self._require_enabled()
        with self._lock:
            if self._async_engine is None:
                require_sqlalchemy()
                require_async_support()
                from sqlalchemy import event
                from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

                self.plugin_dir.mkdir(parents=True, exist_ok=True)
                engine = create_async_engine(f"sqlite+aiosqlite:///{self._db_path}")
                event.listen(engine.sync_engine, "connect", _enable_foreign_keys)
                self._async_session_factory = async_sessionmaker(bind=engine, class_=AsyncSession, autoflush=False, expire_on_commit=False)
                self._async_engine = engine
            return self._async_engine

    # -- sessions ---------------------------------------------------------------------------------------

    def get_session(self) -> Any:
        """A new Session (close it yourself; `session()` does that for you)."""
        _ = self.engine
        return self._session_factory()

    def get_async_session(self) -> Any:
        """A new AsyncSession (close it yourself; `async_session()` does that for you)."""
        _ = self.async_engine
        return self._async_session_factory()

    @contextmanager
    def session(self) -> Iterator[Any]:
        """`with self.db.session() as session:`; rolled back on an exception, always closed."""
        session = self.get_session()
        try:
            yield session
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()

    @asynccontextmanager
    async def async_session(self) -> AsyncIterator[Any]:
        """`async with self.db.async_session() as session:` (needs aiosqlite and greenlet)."""
        session = self.get_async_session()
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
        finally:
            await session.close()

    # -- schema -----------------------------------------------------------------------------------------

    def create_all_sync(self) -> None:
        """Creates the tables of every model derived from `Base` (existing ones are kept)."""
        self._check_usable()
        self.Base.metadata.create_all(bind=self.engine)

    def drop_all_sync(self) -> None:
        """Drops the tables of every model derived from `Base` (their data is lost)."""
        self._check_usable()
        self.Base.metadata.drop_all(bind=self.engine)

    async def create_all_async(self) -> None:
        await asyncio.to_thread(self.create_all_sync)

    async def drop_all_async(self) -> None:
        await asyncio.to_thread(self.drop_all_sync)

    def create_all(self) -> Any:
        """Smart: in async code returns a coroutine (`await self.db.create_all()`, run in a thread),
        elsewhere creates the tables at once."""
        if _running_loop() is not None:
            self._check_usable()
            return self.create_all_async()
        return self.create_all_sync()

    def drop_all(self) -> Any:
        """Smart, like `create_all`."""
        if _running_loop() is not None:
            self._check_usable()
            return self.drop_all_async()
        return self.drop_all_sync()

    def _check_usable(self) -> None:
        # Raised at the call, not at the await, so the error points at the plugin's line.
        self._require_enabled()
        require_sqlalchemy()

    # -- closing ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Releases the engines' connections (a later use opens new ones)."""
        with self._lock:
            engine, self._engine = self._engine, None
            self._session_factory = None
            self._async_engine = None  # an async engine can only be disposed from async code
            self._async_session_factory = None
        if engine is not None:
            engine.dispose()

    async def close_async(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
            async_engine, self._async_engine = self._async_engine, None
            self._session_factory = None
            self._async_session_factory = None
        if engine is not None:
            engine.dispose()
        if async_engine is not None:
            await async_engine.dispose()


def _enable_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


__all__ = ["PluginDatabase", "require_sqlalchemy"]
