"""Duplicate UIDs: the same component in two resources, not a series split across resources."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.model import ChangePage, Event, Resource
from calsync.store import EventStore

pytestmark = pytest.mark.integration

CONN = "team-a/alice"
CAL = "primary"
START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def resource(pid: str, event: Event) -> Resource:
    return Resource(provider_id=pid, etag=f'"{pid}"', raw="{}", raw_format="json", events=[event])


async def test_master_and_exceptions_in_separate_resources_are_not_duplicates(
    store: EventStore,
) -> None:
    master = Event(
        uid="series-1",
        start=START,
        end=START + dt.timedelta(hours=1),
        rrule="FREQ=WEEKLY;COUNT=5",
        summary="Weekly",
    )
    moved = Event(
        uid="series-1",
        recurrence_id=(START + dt.timedelta(days=7)).isoformat(),
        start=START + dt.timedelta(days=7, hours=2),
        end=START + dt.timedelta(days=7, hours=3),
        summary="Weekly (moved)",
    )
    await store.apply_page(
        CONN,
        CAL,
        ChangePage(upserts=[resource("m", master), resource("m_x1", moved)], complete=True),
    )
    assert await store.duplicate_uids(CONN, CAL) == []

    # The same master again under another id is a real duplicate.
    await store.apply_page(CONN, CAL, ChangePage(upserts=[resource("copy", master)]))
    assert await store.duplicate_uids(CONN, CAL) == [("series-1", ["copy", "m"])]
