"""Every SQLite connection of the store comes with the settings connect.py promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from calsync.store import EventStore

pytestmark = pytest.mark.integration


async def test_sqlite_connections_are_set_up(tmp_path: Path) -> None:
    store = await EventStore.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        async with store.engine.connect() as conn:
            values = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in (
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "busy_timeout",
                    "wal_autocheckpoint",
                    "temp_store",
                )
            }
        # The page writer's own connection (see connect.thread_writer) too.
        assert store._thread_writer is not None
        with store._thread_writer.connect() as blocking:
            writer_temp_store = blocking.exec_driver_sql("PRAGMA temp_store").scalar()
    finally:
        await store.close()
    assert values == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": 30_000,
        "wal_autocheckpoint": 10_000,
        "temp_store": 2,  # MEMORY
    }
    assert writer_temp_store == 2
