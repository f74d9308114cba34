"""Which SyncJobs a worker may start: a pure function of the job cache, the clock and itself."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from calsync.worker import queue

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def ts(seconds: float) -> str:
    return (NOW + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str, conn: str, created: float = -100, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": ts(created)},
        "spec": {"connection": conn, "mode": status.pop("mode", "incremental")},
        "status": status,
    }


def names(jobs: list[dict[str, Any]]) -> list[str]:
    return [j["metadata"]["name"] for j in jobs]


def test_one_job_per_connection_oldest_first() -> None:
    jobs = [job("b2", "b", -10), job("a1", "a", -50), job("a2", "a", -40), job("b1", "b", -60)]
    picked = queue.select(jobs, NOW, running_here=set(), capacity=10)
    assert names(picked.startable) == ["b1", "a1"]
    assert picked.pending == 4


def test_a_live_lease_anywhere_blocks_the_connection() -> None:
    jobs = [
        job("a1", "a", -50, phase="Running", leaseExpiresAt=ts(30)),
        job("a2", "a", -40),
        job("b1", "b", -30),
    ]
    picked = queue.select(jobs, NOW, running_here=set(), capacity=10)
    assert names(picked.startable) == ["b1"]
    assert picked.next_due == NOW + dt.timedelta(seconds=30)


def test_a_lapsed_lease_is_taken_over() -> None:
    jobs = [job("a1", "a", -50, phase="Running", leaseExpiresAt=ts(-1))]
    picked = queue.select(jobs, NOW, running_here=set(), capacity=10)
    assert names(picked.startable) == ["a1"]


def test_running_here_and_capacity_and_back_off() -> None:
    jobs = [
        job("a1", "a", -50),
        job("b1", "b", -40, nextAttemptAt=ts(20)),
        job("c1", "c", -30),
        job("d1", "d", -20),
    ]
    picked = queue.select(jobs, NOW, running_here={("ns", "a")}, capacity=1)
    assert names(picked.startable) == ["c1"]
    assert picked.next_due == NOW + dt.timedelta(seconds=20)


def test_finished_jobs_are_listed_for_expiry() -> None:
    done = job("a1", "a", -50, phase="Succeeded", completedAt=ts(-4000))
    done["spec"]["ttlSecondsAfterFinished"] = 3600
    fresh = job("a2", "a", -50, phase="Failed", completedAt=ts(-10))
    fresh["spec"]["ttlSecondsAfterFinished"] = 3600
    picked = queue.select([done, fresh], NOW, running_here=set(), capacity=10)
    assert names(picked.finished) == ["a1", "a2"]
    assert queue.expired(done, NOW) == pytest.approx(400)
    assert queue.expired(fresh, NOW) is None


def test_supersede_only_covered_jobs_created_before_the_start() -> None:
    claimed = job("a1", "a", -50, phase="Running", startedAt=ts(-5), mode="full")
    older = job("a0", "a", -60)
    same_second = job("a2", "a", -5)
    later = job("a3", "a", 10)
    other = job("b1", "b", -60)
    out = queue.superseded_by(
        claimed, [claimed, older, same_second, later, other], NOW - dt.timedelta(seconds=5)
    )
    assert names(out) == ["a0"]
    incremental = job("a1", "a", -50, phase="Running", mode="incremental")
    full_pending = job("a0", "a", -60, mode="full")
    assert queue.superseded_by(incremental, [full_pending], NOW) == []


# -- the worker's index of its job cache --------------------------------------------------------


def finished(name: str, conn: str, completed: float, ttl: int | None = 60) -> dict[str, Any]:
    j = job(name, conn, phase="Succeeded", completedAt=ts(completed))
    if ttl is not None:
        j["spec"]["ttlSecondsAfterFinished"] = ttl
    return j


def key(j: dict[str, Any]) -> tuple[str, str]:
    return j["metadata"]["namespace"], j["metadata"]["name"]


def test_the_index_follows_each_job_between_active_and_finished() -> None:
    index = queue.JobIndex()
    a1, a2, b1 = job("a1", "a", -50), job("a2", "a", -40), job("b1", "b", -30)
    for j in (a1, a2, b1):
        index.update(key(j), j)
    assert sorted(names(index.of_connection(("ns", "a")))) == ["a1", "a2"]
    assert sorted(names(list(index.active.values()))) == ["a1", "a2", "b1"]
    done = finished("a1", "a", completed=0)
    index.update(key(done), done)
    assert names(index.of_connection(("ns", "a"))) == ["a2"]
    assert names(list(index.finished.values())) == ["a1"]
    assert index.next_expiry == NOW + dt.timedelta(seconds=60)
    index.update(key(a2), None)
    index.update(key(done), None)
    assert index.of_connection(("ns", "a")) == []
    assert not index.finished
    assert names(list(index.active.values())) == ["b1"]


def test_the_index_hands_out_expired_jobs_only_when_the_earliest_expiry_comes() -> None:
    index = queue.JobIndex()
    early, late = finished("e", "a", completed=-70), finished("l", "b", completed=0)
    kept = finished("k", "c", completed=-1000, ttl=None)  # no TTL: never expires
    for j in (early, late, kept):
        index.update(key(j), j)
    assert index.next_expiry == NOW - dt.timedelta(seconds=10)
    assert names(index.expired(NOW)) == ["e"]
    assert index.next_expiry == NOW + dt.timedelta(seconds=60)
    assert index.expired(NOW) == []  # nothing is due until then
    index.due(NOW + dt.timedelta(seconds=5))  # e.g. another worker's turn to delete ends
    assert index.next_expiry == NOW + dt.timedelta(seconds=5)
    assert names(index.expired(NOW + dt.timedelta(seconds=61))) == ["e", "l"]


def test_a_run_supersedes_only_jobs_that_surely_predate_it() -> None:
    started = NOW + dt.timedelta(milliseconds=700)
    claimed = job("run", "a", 0)
    older = job("older", "a", -30)
    same_second = job("same-second", "a", 0)  # created at 12:00:00.9 reads as 12:00:00
    touched = job("touched", "a", -30)
    touched["metadata"]["annotations"] = {queue.NOTIFIED_AT: ts(0.5)}
    touched_before = job("touched-before", "a", -30)
    touched_before["metadata"]["annotations"] = {queue.NOTIFIED_AT: ts(-5)}
    other_connection = job("other", "b", -30)
    jobs = [claimed, older, same_second, touched, touched_before, other_connection]
    assert sorted(names(list(queue.superseded_by(claimed, jobs, started)))) == [  # type: ignore[arg-type]
        "older",
        "touched-before",
    ]


def test_a_webhook_job_waits_out_its_coalescing_window() -> None:
    window = dt.timedelta(seconds=3)
    fresh = job("w-1", "a", -1)
    fresh["spec"]["reason"] = "webhook"
    old = job("w-2", "b", -10)
    old["spec"]["reason"] = "webhook"
    manual = job("m-1", "c", -1)
    picked = queue.select(
        [fresh, old, manual], NOW, running_here=set(), capacity=10, webhook_delay=window
    )
    assert names(picked.startable) == ["w-2", "m-1"]
    assert picked.next_due == NOW + dt.timedelta(seconds=2)
    # Without a window (the default) it starts at once.
    picked = queue.select([fresh], NOW, running_here=set(), capacity=10)
    assert names(picked.startable) == ["w-1"]
    # A run never supersedes a webhook job still inside its window.
    claimed = job("run", "a", -30)
    assert queue.superseded_by(claimed, [fresh], NOW, window) == []
    assert names(list(queue.superseded_by(claimed, [fresh], NOW))) == ["w-1"]  # type: ignore[arg-type]


def test_each_recorded_notification_moves_the_wait_on_up_to_the_longest() -> None:
    window, longest = dt.timedelta(seconds=3), dt.timedelta(seconds=10)
    hook = job("w-1", "a", -5)
    hook["spec"]["reason"] = "webhook"
    assert queue.coalescing_until(hook, window, longest) == NOW - dt.timedelta(seconds=2)
    hook["metadata"]["annotations"] = {queue.NOTIFIED_AT: ts(-1)}
    assert queue.coalescing_until(hook, window, longest) == NOW + dt.timedelta(seconds=2)
    hook["metadata"]["annotations"] = {queue.NOTIFIED_AT: ts(4)}  # a steady stream...
    assert queue.coalescing_until(hook, window, longest) == NOW + dt.timedelta(
        seconds=5
    )  # ...capped
    assert queue.coalescing_until(job("m", "a", -5), window, longest) is None  # not a webhook job
    assert queue.coalescing_until(hook, dt.timedelta(0), longest) is None  # no window
