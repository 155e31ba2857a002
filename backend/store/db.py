"""The label store's engine and I/O: where it lives, one transaction, atomic files.

`Database` owns the data folder, the engine (SQLite with WAL and BEGIN IMMEDIATE, or
PostgreSQL through psycopg 3), the schema (created and upgraded on open) and `tx`, the
one transaction helper every part of the store uses. `read_engine` is the engine the
read path (reads.py) uses. Mask files are written atomically (`write_png_atomic`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from squeezesam.backend.settings import Settings
from squeezesam.backend.store.schema import ADDED_COLUMNS, metadata

log = logging.getLogger(__name__)

DB_FILE = "labels.db"
MASKS_DIR = "masks"


class StoreError(RuntimeError):
    """The store could not read or write (its message names the path or database)."""


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Encode, write to a temp file beside it, fsync, rename: readers see all or nothing."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise StoreError(f"cannot encode PNG for {path}")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        remove_files([tmp])
        raise StoreError(f"cannot write mask {path}: {exc.strerror or exc}") from exc


POSTGRES_MISSING = (
    "DATABASE_URL is PostgreSQL but its driver psycopg is not installed: "
    "pip install 'squeezesam[postgres]'"
)


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql+psycopg") and importlib.util.find_spec("psycopg") is None:
        raise StoreError(POSTGRES_MISSING)  # the `postgres` extra (pyproject.toml)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 10})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # autocommit at the driver level; we issue BEGIN IMMEDIATE ourselves (below) so a
        # read-then-write transaction takes the write lock up front instead of failing with
        # "database is locked" when two processes upgrade at once
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
        cur.execute("PRAGMA synchronous=FULL")  # a committed label survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def insert_ignore(engine: Engine, table: sa.Table, keys: list[str]) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=keys)


def remove_files(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # cleanup must not hide the original error
            log.warning("could not remove %s: %s", path, exc)


def redact_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"


# --- the database ------------------------------------------------------------------------


def data_dir_from(settings: Settings | None = None) -> Path:
    """SQUEEZESAM_DATA_DIR (`Settings.data_dir`), `~` expanded."""
    return (settings or Settings.from_env()).data_path


def database_url_from(settings: Settings | None = None) -> str:
    return (settings or Settings.from_env()).database_url


def engine_url(database_url: str, data_dir: Path) -> str:
    if not database_url:
        return f"sqlite:///{data_dir / DB_FILE}"
    # psycopg 3 is the installed driver; SQLAlchemy's bare `postgresql://` means psycopg2
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class Database:
    """The data folder, the engine and the schema; `tx` for one transaction."""

    def __init__(self, data_dir: str | os.PathLike[str], database_url: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.masks_dir = self.data_dir / MASKS_DIR
        url = engine_url(database_url, self.data_dir)
        self.is_sqlite = url.startswith("sqlite")
        # where errors point: the DB file, or the server URL without its password
        self.where = str(self.data_dir / DB_FILE) if self.is_sqlite else redact_url(url)
        try:
            self.masks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the label store directory {self.masks_dir}: {exc}"
            raise StoreError(msg) from exc
        self.engine = make_engine(url)
        try:
            metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except SQLAlchemyError as exc:
            msg = f"cannot open the label database {self.where}: {getattr(exc, 'orig', exc)}"
            raise StoreError(msg) from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self, what: str) -> Iterator[Connection]:
        """One transaction; any DB failure becomes a StoreError naming the database."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            msg = f"{what} failed on {self.where}: {getattr(exc, 'orig', exc)}"
            raise StoreError(msg) from exc

    def insert_new(
        self, conn: Connection, table: sa.Table, keys: list[str], rows: list[dict[str, Any]]
    ) -> int:
        """Insert rows, skipping those whose `keys` exist already; how many were new.
        Counted from RETURNING rows: rowcount is -1 for this statement on psycopg."""
        insert = insert_ignore(self.engine, table, keys).returning(table.c[keys[0]])
        return sum(len(conn.execute(insert.values(**row)).all()) for row in rows)


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for ADDED_COLUMNS a database made before them lacks.

    Idempotent; all added columns are nullable. Two processes opening an old database at
    once may both try: the loser's "duplicate column" error is ignored after a re-check."""
    inspector = sa.inspect(engine)
    for table, name in ADDED_COLUMNS:
        if name in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        column = table.c[name]
        ddl = (f"ALTER TABLE {table.name} ADD COLUMN {name} "
               f"{column.type.compile(dialect=engine.dialect)}")  # fmt: skip
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)
        except SQLAlchemyError:
            if name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                raise
        log.info("label store: added column %s.%s", table.name, name)
        inspector = sa.inspect(engine)


def read_engine(engine: Engine) -> Engine:
    """An engine for reading. The store's SQLite engine opens every transaction with
    BEGIN IMMEDIATE (the write lock); a dashboard or metrics read holding that lock would
    make a webhook wait, so SQLite reads go through a plain engine on the same file (WAL
    lets readers and the writer run side by side). PostgreSQL reads use the store's engine."""
    if engine.dialect.name != "sqlite":
        return engine
    # keyed by the database file, not by id(engine): a disposed engine's id is reused by
    # the next one, which may be another database (one engine a store opened)
    key = str(engine.url)
    cached = _read_engines.get(key)
    if cached is None:
        cached = sa.create_engine(engine.url, connect_args={"timeout": 10})
        _read_engines[key] = cached
    return cached


_read_engines: dict[str, Engine] = {}
