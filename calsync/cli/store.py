"""`calsync store info|backup`: what an event store holds, and a consistent copy of an SQLite one.

`backup` uses SQLite's online backup API, so the copy is consistent while the operator and the
worker keep writing (WAL readers never block the writer). A PostgreSQL store is backed up with
PostgreSQL's own tools (`pg_dump`), which this command names instead of reimplementing them.
`info` prints the store's identity (the `status.storeId` connections are bound to), its schema
version and what it holds: after a restore it tells whether the right database came back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

# The store's modules load SQLAlchemy: imported inside the commands, so `calsync --help` and
# the other subcommands start without it.

PG_HINT = (
    "a PostgreSQL store is backed up with pg_dump: "
    'pg_dump --format=custom --file=calsync.dump "$CALSYNC_STORE_URL" '
    "(restore: pg_restore --clean --if-exists --no-owner --dbname=URL calsync.dump); "
    "see docs/operations.md"
)


def add_store_parser(sub: Any) -> None:
    store = sub.add_parser(
        "store",
        help="inspect the event store or back up an SQLite one",
        description="Inspect the event store, or take a consistent copy of an SQLite store "
        "while calsync runs (see docs/operations.md, Backup and restore).",
    )
    actions = store.add_subparsers(dest="store_action", required=True)
    info = actions.add_parser("info", help="the store's id, schema version and row counts")
    info.add_argument("--store", help="event store URL (default: CALSYNC_STORE_URL or SQLite)")
    info.set_defaults(func=store_info)
    backup = actions.add_parser(
        "backup", help="copy an SQLite store consistently, even while calsync writes to it"
    )
    backup.add_argument("destination", type=Path, help="the copy to write (must not exist)")
    backup.add_argument("--store", help="event store URL (default: CALSYNC_STORE_URL or SQLite)")
    backup.set_defaults(func=store_backup)


def _url(args: argparse.Namespace) -> str:
    from calsync.store import default_store_url

    return str(args.store or default_store_url())


async def _info(url: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from calsync.store import EventStore
    from calsync.store.schema import calendars, events, resources, schema_version
    from calsync.store.urls import redact

    async with await EventStore.open(url) as store, store.engine.connect() as conn:
        version = await conn.scalar(select(func.max(schema_version.c.version)))
        counts = {
            "connections": await conn.scalar(
                select(func.count(func.distinct(calendars.c.connection)))
            ),
            "calendars": await conn.scalar(select(func.count()).select_from(calendars)),
            "resources": await conn.scalar(select(func.count()).select_from(resources)),
            "events": await conn.scalar(select(func.count()).select_from(events)),
        }
        return {
            "store": redact(url),
            "dialect": store.dialect,
            "storeId": store.store_id,
            "schemaVersion": version,
            **counts,
        }


def store_info(args: argparse.Namespace) -> int:
    from calsync.store import StoreURLError
    from calsync.store.urls import redact

    url = _url(args)
    try:
        path = sqlite_path(url)
        if path is not None and not path.exists():  # opening would create an empty store
            print(f"calsync store info: no SQLite store at {path}", file=sys.stderr)
            return 1
        report = asyncio.run(_info(url))
    except StoreURLError as exc:
        print(f"calsync store info: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store is down or not a calsync store: say so, no traceback
        print(f"calsync store info: cannot read {redact(url)}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite store URL; None for another database."""
    from calsync.store import StoreURLError, async_url

    parsed = async_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise StoreURLError("an in-memory SQLite store has nothing to back up")
    return Path(parsed.database)


def backup_sqlite(source: Path, destination: Path) -> None:
    """Copy `source` to `destination` with SQLite's online backup API (consistent, live)."""
    if not source.exists():
        raise FileNotFoundError(f"no SQLite store at {source}")
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=1024)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            if dst.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                raise RuntimeError("the copy failed SQLite's integrity check")
        finally:
            dst.close()
    finally:
        src.close()
    partial.rename(destination)


def store_backup(args: argparse.Namespace) -> int:
    from calsync.store import StoreURLError

    url = _url(args)
    destination: Path = args.destination
    try:
        source = sqlite_path(url)
    except StoreURLError as exc:
        print(f"calsync store backup: {exc}", file=sys.stderr)
        return 2
    if source is None:
        print(f"calsync store backup: {PG_HINT}", file=sys.stderr)
        return 2
    if destination.exists():
        print(f"calsync store backup: {destination} exists; choose a new file", file=sys.stderr)
        return 2
    try:
        backup_sqlite(source, destination)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        print(f"calsync store backup: {exc}", file=sys.stderr)
        return 1
    size = destination.stat().st_size
    print(f"backed up {source} to {destination} ({size} bytes)")
    return 0
