"""A store that fails one page commit, as a worker dying between two pages would."""

from __future__ import annotations

from typing import Any

from calsync.model import ChangePage
from calsync.store import EventStore
from calsync.store.results import ApplyResult


class FailingStore(EventStore):
    """Fails the Nth page commit once (`fail_on`), as a crash between two pages would."""

    fail_on: int | None = None
    commits = 0

    async def apply_page(
        self,
        connection: str,
        calendar_id: str,
        page: ChangePage,
        *,
        run_seen: set[str] | None = None,
        **options: Any,
    ) -> ApplyResult:
        self.commits += 1
        if self.fail_on is not None and self.commits == self.fail_on:
            self.fail_on = None
            raise ConnectionResetError("the worker died between two pages")
        return await super().apply_page(connection, calendar_id, page, run_seen=run_seen, **options)
