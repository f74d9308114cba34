"""Engines for the store, with SQLite set up for a long-lived, concurrent process.

The store works through an async engine. On a SQLite file it also has a blocking engine on the
same file (`thread_writer`), set up the same way, for page writes run on a thread of their own
(see `event_store.EventStore.apply_page`).

SQLite needs six settings on every connection: WAL (readers never block the writer), NORMAL
synchronous (durable at checkpoints, safe with WAL), foreign keys (off by default in SQLite), a
busy timeout (wait for another writer instead of failing at once), a WAL of up to 10,000
pages (about 40 MB) before a commit folds it into the database file, and temporary storage in
memory. SQLite's default of 1,000 WAL pages made a large initial sync checkpoint, with its
fsyncs, every few pages of changes: on the Microsoft benchmark (19,551 instances in 40 commits)
commits took 0.8 s of a 3.3 s sync, and the sync ran 0.59x of bare paging instead of 0.54x
with the larger WAL. The file stays at its largest size once grown (SQLite reuses it), so a
busy store keeps up to about 40 MB beside it.

Temporary storage matters for the page writes: a multi-row INSERT that may stop half-way (a
constraint) keeps a statement journal of every page it changes, and past 64 KiB SQLite spills
that journal to a temporary file, written and then closed at each commit. A page of 100 CalDAV
events changes a few hundred index pages, so with the default every page also wrote its journal
to a temporary file besides the WAL: on the CalDAV initial sync (10,000 objects, pages of 100)
that was 0.1-0.15 s of system time out of the 0.8 s of CPU the page writes took. In memory it
is a transient copy of what the statement changes (a few MB for a large page); temporary sort
trees of queries live there too, bounded by what one query reads.

Python's sqlite3 driver opens transactions by itself, late and never for DDL, which breaks
transactional migrations and lets two writers both read before either writes. The store
therefore turns the driver's transaction handling off and emits BEGIN itself: plain BEGIN for
readers, BEGIN IMMEDIATE for writers (taking the write lock up front, so a writer waits on the
busy timeout rather than failing mid-transaction with "database is locked").
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from calsync.store.urls import async_url

BUSY_TIMEOUT_MS = 30_000
_LOCKED_RETRY_SECONDS = 5.0
WRITE = {"calsync_begin": "IMMEDIATE"}
_BEGIN = {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN"}
SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA wal_autocheckpoint = 10000",
    "PRAGMA temp_store = MEMORY",
)


IDLE_IN_TRANSACTION_MS = "30000"


def create_store_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An async engine for a store URL (plain forms accepted, see `async_url`)."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, **options)
        _configure_sqlite(engine.sync_engine)
        return engine
    # No pre-ping: on asyncpg it costs three round trips (BEGIN, a query, ROLLBACK) on every
    # checkout, a third of a short sync's store traffic. A connection the server dropped fails
    # its next statement instead; SQLAlchemy then discards the whole pool, and the caller's
    # retry (a job's back-off, the purge's and the sweep's loops) gets fresh connections.
    options.setdefault("pool_pre_ping", False)
    # A client stopped inside a transaction (a worker frozen by SIGSTOP) would keep its locks
    # for ever; the server ends such a session after this long and the locks go with it.
    connect_args = dict(options.pop("connect_args", {}))
    server_settings = dict(connect_args.get("server_settings", {}))
    server_settings.setdefault("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_MS)
    connect_args["server_settings"] = server_settings
    return create_async_engine(parsed, connect_args=connect_args, **options)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) whose transactions start as writers."""
    return engine.execution_options(**WRITE)


def one_statement(engine: AsyncEngine, *, write: bool) -> AsyncEngine:
    """The same engine (and pool) for work that is one statement, reading or writing.

    On PostgreSQL the statement runs on its own (AUTOCOMMIT): a transaction around it would
    add a BEGIN and a COMMIT or ROLLBACK, two more round trips for nothing, and a no-change
    sync is mostly such statements. On SQLite every writer must hold the write lock (see
    `writer`), and reads cost no round trip, so nothing changes there."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return writer(engine) if write else engine


def thread_writer(engine: AsyncEngine) -> Engine | None:
    """For a SQLite file: a plain (blocking) engine on the same file, set up the same way and
    starting its transactions as writers, for work run on a thread of its own; else None.

    An in-memory database is private to its connection, so it has none."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("mode") == "memory":
        return None
    blocking = create_engine(url.set(drivername="sqlite+pysqlite"))
    _configure_sqlite(blocking)
    return blocking.execution_options(**WRITE)


def _execute_when_unlocked(cursor: Any, statement: str) -> None:
    """Run a setting, retrying while another connection is creating the same database.

    Switching a brand-new database to WAL needs it to itself, and SQLite answers "database is
    locked" at once, without waiting on the busy timeout, when another connection is doing the
    same (two stores, or two processes, opening a new file together). The mode is stored in
    the file, so the retry finds it set by the other connection. The waits are short and happen
    only in that race, so sleeping in place (the connect hook cannot await) is acceptable.
    """
    deadline = time.monotonic() + _LOCKED_RETRY_SECONDS
    while True:
        try:
            cursor.execute(statement)
            return
        except Exception as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                _execute_when_unlocked(cursor, pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("calsync_begin", "DEFERRED")
        conn.exec_driver_sql(_BEGIN[mode])
