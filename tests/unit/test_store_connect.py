"""Connection settings retried while another connection creates the same SQLite database."""

from __future__ import annotations

import sqlite3

import pytest

from calsync.store.connect import _execute_when_unlocked

pytestmark = pytest.mark.unit


class FlakyCursor:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.executed: list[str] = []

    def execute(self, statement: str) -> None:
        self.executed.append(statement)
        if self.failures:
            raise self.failures.pop(0)


def test_a_locked_database_is_retried_until_the_setting_takes() -> None:
    locked = sqlite3.OperationalError("database is locked")
    cursor = FlakyCursor([locked, locked])
    _execute_when_unlocked(cursor, "PRAGMA journal_mode = WAL")
    assert cursor.executed == ["PRAGMA journal_mode = WAL"] * 3


def test_other_errors_are_not_retried() -> None:
    cursor = FlakyCursor([sqlite3.OperationalError("disk I/O error")])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _execute_when_unlocked(cursor, "PRAGMA journal_mode = WAL")
    assert len(cursor.executed) == 1
