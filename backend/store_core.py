"""Opening the label store: where it lives, the engine, the schema, one transaction.

`StoreCore` is the base the label store's parts build on (store.py puts them together):
it owns the data folder, the engine and the `_tx` transaction helper every part uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from squeezesam.backend.settings import Settings
from squeezesam.backend.store_io import StoreError, insert_ignore, make_engine, redact_url
from squeezesam.backend.store_schema import ADDED_COLUMNS, metadata

log = logging.getLogger(__name__)

DB_FILE = "labels.db"
MASKS_DIR = "masks"


# --- settings -----------------------------------------------------------------------------


def data_dir_from(settings: Settings | None = None) -> Path:
    """SQUEEZESAM_DATA_DIR (`Settings.data_dir`), `~` expanded."""
    return (settings or Settings.from_env()).data_path


def database_url_from(settings: Settings | None = None) -> str:
    return (settings or Settings.from_env()).database_url


def _engine_url(database_url: str, data_dir: Path) -> str:
    if not database_url:
        return f"sqlite:///{data_dir / DB_FILE}"
    # psycopg 3 is the installed driver; SQLAlchemy's bare `postgresql://` means psycopg2
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class StoreCore:
    """The data folder, the engine and the schema; `_tx` for one transaction."""

    def __init__(self, data_dir: str | os.PathLike[str], database_url: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.masks_dir = self.data_dir / MASKS_DIR
        url = _engine_url(database_url, self.data_dir)
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
    def _tx(self, what: str) -> Iterator[Connection]:
        """One transaction; any DB failure becomes a StoreError naming the database."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            msg = f"{what} failed on {self.where}: {getattr(exc, 'orig', exc)}"
            raise StoreError(msg) from exc

    def _insert_new(
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
