"""Subscription counters: accumulated in memory, one guarded status patch per subscription
per flush, re-read and retried on conflict; lifecycle events appended, newest 16 kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from lightkube import ApiError

from calsync.webhook_gateway.counters import (
    Delta,
    StatusWriter,
    counted_status,
    with_lifecycle_event,
)
from calsync.worker.informer import Informer

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def sub(rv: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "s", "resourceVersion": rv}, "status": status}


def test_counts_add_to_what_status_holds_and_time_never_goes_back() -> None:
    assert counted_status(sub("1"), Delta(3, T0)) == {
        "notificationsReceived": 3,
        "lastNotificationTime": "2026-03-01T12:00:00Z",
    }
    later = "2026-03-01T13:00:00Z"
    patch = counted_status(
        sub("1", notificationsReceived=7, lastNotificationTime=later), Delta(2, T0)
    )
    assert patch == {"notificationsReceived": 9, "lastNotificationTime": later}


def test_lifecycle_events_keep_the_newest_16() -> None:
    events = [{"event": "missed", "receivedAt": "2026-01-01T00:00:00Z"}] * 16
    patch = with_lifecycle_event(sub("1", lifecycleEvents=events), "subscriptionRemoved", T0)
    assert len(patch["lifecycleEvents"]) == 16
    assert patch["lifecycleEvents"][-1] == {
        "event": "subscriptionRemoved",
        "receivedAt": "2026-03-01T12:00:00Z",
    }


class Obj:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return self.body


class FakeApi:
    def __init__(self, current: dict[str, Any]) -> None:
        self.current = current
        self.patches: list[dict[str, Any]] = []

    async def patch(self, _res: Any, _name: str, patch: dict[str, Any], **_: Any) -> Obj:
        self.patches.append(patch)
        if patch["metadata"]["resourceVersion"] != self.current["metadata"]["resourceVersion"]:
            raise ApiError(status={"code": 409, "message": "conflict"})
        status = {**self.current.get("status", {}), **patch["status"]}
        rv = str(int(self.current["metadata"]["resourceVersion"]) + 1)
        self.current = {
            "metadata": {**self.current["metadata"], "resourceVersion": rv},
            "status": status,
        }
        return Obj(self.current)

    async def get(self, _res: Any, _name: str, **_: Any) -> Obj:
        return Obj(self.current)


async def test_one_patch_per_flush_and_a_conflict_rereads() -> None:
    api = FakeApi(sub("5", notificationsReceived=10))
    cache = Informer(api, object(), ["ns"])  # type: ignore[arg-type]
    cache.put(sub("4", notificationsReceived=1))  # stale: the first patch gets 409
    writer = StatusWriter(api, cache)  # type: ignore[arg-type]
    for _ in range(50):
        writer.count(("ns", "s"), T0)
    await writer.flush()
    assert [p["metadata"]["resourceVersion"] for p in api.patches] == ["4", "5"]
    assert api.current["status"]["notificationsReceived"] == 60
    assert writer.pending(("ns", "s")) == 0
    await writer.flush()  # nothing new: no write
    assert len(api.patches) == 2
    writer.count(("ns", "s"), T0)
    await writer.flush()  # the cache holds the written object: no conflict
    assert [p["metadata"]["resourceVersion"] for p in api.patches][-1] == "6"
    assert api.current["status"]["notificationsReceived"] == 61
