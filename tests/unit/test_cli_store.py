"""`calsync store backup|info`: refusals that change nothing, and a live SQLite copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from calsync.cli import main
from calsync.cli.store import backup_sqlite

pytestmark = pytest.mark.unit


def test_a_postgresql_store_is_pointed_at_pg_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["store", "backup", "--store", "postgresql://u:pw@db/x", str(tmp_path / "b")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err and "pw" not in err
    assert not (tmp_path / "b").exists()


def test_an_existing_destination_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b.db").write_text("keep me")
    code = main(
        ["store", "backup", "--store", f"sqlite:///{tmp_path}/x.db", str(tmp_path / "b.db")]
    )
    assert code == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "b.db").read_text() == "keep me"


def test_info_on_a_missing_sqlite_file_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "info", "--store", f"sqlite:///{tmp_path}/none.db"]) == 1
    assert "no SQLite store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_backup_copies_a_database_another_connection_holds_open_in_wal_mode(
    tmp_path: Path,
) -> None:
    source = tmp_path / "live.db"
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    writer.commit()  # committed rows sit in the WAL, not yet in the main file
    try:
        backup_sqlite(source, tmp_path / "copy.db")
    finally:
        writer.close()
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    copy.close()
    assert not (tmp_path / "copy.db.partial").exists()
