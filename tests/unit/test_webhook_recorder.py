"""The recorder's decisions (job names, which job to touch, the next n) and its single
flight: a burst for one calendar becomes a handful of API writes, answered only after the
recording that covers it."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import httpx
import pytest
from lightkube import ApiError

from calsync.webhook_gateway.recorder import (
    NAME_MAX,
    NOTIFIED_AT,
    Create,
    Recorder,
    RecordingFailed,
    Touch,
    WebhookJobIndex,
    Work,
    calendar_hash,
    job_name,
    job_prefix,
    next_number,
    number_of,
    plan,
    young,
)
from calsync.worker.informer import Informer

pytestmark = pytest.mark.unit


def job(
    name: str,
    phase: str | None = "Pending",
    *,
    reason: str = "webhook",
    calendar: str = "primary",
    connection: str = "alice",
    rv: str = "1",
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "resourceVersion": rv,
            "creationTimestamp": created,
        },
        "spec": {"connection": connection, "calendarId": calendar, "reason": reason},
        "status": {"phase": phase} if phase else {},
    }


PREFIX = job_prefix("alice", "primary")


def test_names_follow_the_decision() -> None:
    assert f"alice-w-{calendar_hash('primary')}-" == PREFIX
    assert len(calendar_hash("primary")) == 8
    assert job_name("alice", "primary", 7) == PREFIX + "7"
    assert number_of(PREFIX + "12", PREFIX) == 12
    for other in (PREFIX + "x", PREFIX + "012", PREFIX, "bob-w-00000000-1", PREFIX + "1-2"):
        assert number_of(other, PREFIX) is None


def test_long_connection_names_are_cut_to_fit() -> None:
    connection = "c" * 240 + "-." + "d" * 11
    name = job_name(connection, "primary", 9_999_999_999)
    assert len(name) <= NAME_MAX
    prefix = job_prefix(connection, "primary")
    assert number_of(name, prefix) == 9_999_999_999
    assert "-.-" not in name and ".-" not in name


def test_a_pending_webhook_job_is_touched_the_newest_first() -> None:
    jobs = [job(PREFIX + "1"), job(PREFIX + "3"), job(PREFIX + "2", "Running")]
    step = plan(jobs, PREFIX)
    assert isinstance(step, Touch) and step.job["metadata"]["name"] == PREFIX + "3"
    # A job without status is Pending too.
    assert isinstance(plan([job(PREFIX + "1", None)], PREFIX), Touch)


def test_a_job_whose_wait_cannot_move_gets_a_successor_instead_of_a_touch() -> None:
    # WEBHOOK_COALESCE 3 s, WEBHOOK_COALESCE_MAX 10 s: the job created at 00:00:00 waits at
    # most until 00:00:10, so from 00:00:08.5 on (REFRESH_AHEAD) a touch keeps it young for
    # too short a time to be worth it.
    window, longest = dt.timedelta(seconds=3), dt.timedelta(seconds=10)
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    only = [job(PREFIX + "1", created="2026-01-01T00:00:00Z")]

    def at(seconds: float, jobs: list[dict[str, Any]]) -> Touch | Create:
        now = created + dt.timedelta(seconds=seconds)
        return plan(jobs, PREFIX, now=now, window=window, longest=longest)

    for seconds in (2.0, 8.0, 8.49):  # a touch still moves the wait
        assert isinstance(at(seconds, only), Touch), seconds
    for seconds in (8.5, 9.0, 10.0, 60.0):  # not for long: the next job instead
        assert at(seconds, only) == Create(2), seconds
    # A second one at most: with two touchable jobs, the newest is touched, spent or not.
    both = [*only, job(PREFIX + "2", created="2026-01-01T00:00:09Z")]
    step = at(60.0, both)
    assert isinstance(step, Touch) and step.job["metadata"]["name"] == PREFIX + "2"
    # A Running job is not touchable: the Pending one after it is the only one, and young.
    running = [job(PREFIX + "1", "Running"), job(PREFIX + "2", created="2026-01-01T00:00:59Z")]
    step = at(60.0, running)
    assert isinstance(step, Touch) and step.job["metadata"]["name"] == PREFIX + "2"
    assert at(69.5, running) == Create(3)
    # Without a coalescing window (or without a clock) nothing changes: touch.
    assert isinstance(plan(only, PREFIX, now=created + dt.timedelta(hours=1)), Touch)
    no_window = plan(only, PREFIX, now=created + dt.timedelta(hours=1), window=dt.timedelta(0))
    assert isinstance(no_window, Touch)


def test_without_a_pending_job_the_next_number_is_created() -> None:
    jobs = [job(PREFIX + "4", "Running"), job(PREFIX + "2", "Succeeded")]
    assert plan(jobs, PREFIX) == Create(5)
    assert plan([], PREFIX) == Create(1)
    assert plan(jobs, PREFIX, taken=[9]) == Create(10)
    deleting = job(PREFIX + "6")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert plan([deleting], PREFIX) == Create(7)
    # Names that are not ours do not count.
    assert next_number([job("manual-1"), job(PREFIX + "x")], PREFIX) == 1


def test_the_index_keeps_webhook_jobs_per_calendar_and_counts_pending() -> None:
    index = WebhookJobIndex()
    index.update(("ns", "a"), job("a"))
    index.update(("ns", "b"), job("b", calendar="other"))
    index.update(("ns", "p"), job("p", reason="poll"))
    index.update(("ns", "r"), job("r", "Running"))
    assert index.pending == 3
    assert {j["metadata"]["name"] for j in index.jobs_of(("ns", "alice", "primary"))} == {"a", "r"}
    index.update(("ns", "a"), job("a", "Running"))
    index.update(("ns", "p"), None)
    assert index.pending == 1
    index.update(("ns", "r"), None)
    assert [j["metadata"]["name"] for j in index.jobs_of(("ns", "alice", "primary"))] == ["a"]


# -- single flight, against an in-memory stand-in for the API server -------------------------


def api_error(code: int) -> ApiError:
    return ApiError(status={"code": code, "message": f"status {code}"})


class Obj:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return self.body


class FakeApi:
    """SyncJobs by name with resourceVersions; each write yields once so calls interleave."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(100)
        self.creates = 0
        self.patches = 0
        self.fail_with: Exception | None = None

    async def create(self, obj: Any) -> Obj:
        await asyncio.sleep(0.001)
        if self.fail_with is not None:
            raise self.fail_with
        self.creates += 1
        body = obj.to_dict()
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise api_error(409)
        body["metadata"]["resourceVersion"] = str(next(self.versions))
        self.jobs[name] = body
        return Obj(body)

    async def patch(self, _res: Any, name: str, patch: dict[str, Any], **_: Any) -> Obj:
        await asyncio.sleep(0.001)
        self.patches += 1
        current = self.jobs.get(name)
        if current is None:
            raise api_error(404)
        if patch["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise api_error(409)
        current["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        current["metadata"]["resourceVersion"] = str(next(self.versions))
        return Obj(current)

    async def get(self, _res: Any, name: str, **_: Any) -> Obj:
        if name not in self.jobs:
            raise api_error(404)
        return Obj(self.jobs[name])

    def claim(self, name: str) -> None:
        """A worker marks the job Running (a guarded status patch that won)."""
        self.jobs[name]["status"] = {"phase": "Running"}
        self.jobs[name]["metadata"]["resourceVersion"] = str(next(self.versions))


def recorder(api: FakeApi, timeout: float = 5.0) -> tuple[Recorder, Informer, WebhookJobIndex]:
    index = WebhookJobIndex()
    informer = Informer(api, object(), ["ns"], index=index.update)  # type: ignore[arg-type]
    rec = Recorder(api, informer, index, timeout=timeout, ttl=60)  # type: ignore[arg-type]
    return rec, informer, index


WORK = Work("ns", "alice", "primary", "conn-uid", "google")


async def test_a_burst_for_one_calendar_is_one_job_and_a_few_touches() -> None:
    api = FakeApi()
    rec, _, _ = recorder(api)
    actions = await asyncio.gather(*(rec.record(WORK) for _ in range(200)))
    assert api.creates == 1
    assert api.patches <= 1  # the burst joined one recording after the first
    assert actions.count("created") == 1
    assert set(actions) <= {"created", "touched", "covered"}
    created = api.jobs[PREFIX + "1"]
    assert created["spec"] == {
        "connection": "alice",
        "calendarId": "primary",
        "mode": "incremental",
        "reason": "webhook",
        "ttlSecondsAfterFinished": 60,
    }
    owner = created["metadata"]["ownerReferences"][0]
    assert (owner["uid"], owner["controller"]) == ("conn-uid", False)


async def test_a_claimed_job_is_not_touched_but_followed_by_the_next() -> None:
    api = FakeApi()
    rec, informer, _ = recorder(api)
    assert await rec.record(WORK) == "created"
    api.claim(PREFIX + "1")  # the cache still shows it Pending: the touch gets 409
    assert await rec.record(WORK) == "created"
    assert set(api.jobs) == {PREFIX + "1", PREFIX + "2"}
    assert informer.get("ns", PREFIX + "1")["status"]["phase"] == "Running"  # type: ignore[index]
    assert await rec.record(WORK) == "touched"
    assert NOTIFIED_AT in api.jobs[PREFIX + "2"]["metadata"]["annotations"]


async def test_a_name_taken_by_a_job_the_cache_missed_is_read_and_skipped() -> None:
    api = FakeApi()
    api.jobs[PREFIX + "1"] = job(PREFIX + "1", "Succeeded", rv="5")
    rec, _, _ = recorder(api)
    assert await rec.record(WORK) == "created"
    assert PREFIX + "2" in api.jobs
    # ... and one that is Pending is touched instead of followed.
    api2 = FakeApi()
    api2.jobs[PREFIX + "1"] = job(PREFIX + "1", "Pending", rv="5")
    rec2, _, _ = recorder(api2)
    assert await rec2.record(WORK) == "touched"
    assert set(api2.jobs) == {PREFIX + "1"}


async def test_a_failed_recording_fails_everyone_it_covers() -> None:
    api = FakeApi()
    api.fail_with = httpx.ConnectError("API server away")
    rec, _, _ = recorder(api)
    results = await asyncio.gather(*(rec.record(WORK) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RecordingFailed) for r in results)
    api.fail_with = None
    assert await rec.record(WORK) == "created"


async def test_a_recording_past_its_deadline_fails() -> None:
    api = FakeApi()

    async def slow(_obj: Any) -> Obj:
        await asyncio.sleep(10)
        raise AssertionError

    api.create = slow  # type: ignore[method-assign]
    rec, _, _ = recorder(api, timeout=0.05)
    with pytest.raises(RecordingFailed, match="longer than"):
        await rec.record(WORK)
    assert rec.in_flight == 0


async def test_a_young_job_about_to_age_is_recorded_again_in_the_background() -> None:
    # WEBHOOK_COALESCE 3 s, WEBHOOK_COALESCE_MAX 10 s. A notification finds the job young (its
    # wait ends in 1.3 s): it is answered at once, and the touch that keeps the job young is
    # made behind it, so the next notifications need not wait for a write either.
    api = FakeApi()
    now = dt.datetime.now(dt.UTC)

    def stamp(seconds_ago: float) -> str:
        return (now - dt.timedelta(seconds=seconds_ago)).isoformat()

    api.jobs[PREFIX + "1"] = job(PREFIX + "1", created=stamp(1.7), rv="5")
    index = WebhookJobIndex()
    informer = Informer(api, object(), ["ns"], index=index.update)  # type: ignore[arg-type]
    rec = Recorder(
        api,  # type: ignore[arg-type]
        informer,
        index,
        timeout=5.0,
        ttl=60,
        coalesce=3.0,
        coalesce_max=10.0,
    )
    informer.put(api.jobs[PREFIX + "1"])
    assert await rec.record(WORK) == "covered"
    await asyncio.gather(*list(rec._tasks))
    assert (api.patches, api.creates) == (1, 0)
    assert NOTIFIED_AT in api.jobs[PREFIX + "1"]["metadata"]["annotations"]
    assert await rec.record(WORK) == "covered"  # young again for about 3 s: nothing more
    assert not rec._tasks and (api.patches, api.creates) == (1, 0)

    # Near its cap (created 8.7 s ago) the job cannot be kept young: its successor is made.
    api.jobs[PREFIX + "1"]["metadata"]["creationTimestamp"] = stamp(8.7)
    api.jobs[PREFIX + "1"]["metadata"]["annotations"][NOTIFIED_AT] = stamp(1.7)
    api.jobs[PREFIX + "1"]["metadata"]["resourceVersion"] = "999"  # a new revision, as always
    informer.put(api.jobs[PREFIX + "1"])
    assert await rec.record(WORK) == "covered"
    await asyncio.gather(*list(rec._tasks))
    assert (api.patches, api.creates) == (1, 1) and PREFIX + "2" in api.jobs


def test_a_job_inside_its_coalescing_window_covers_a_notification_without_a_write() -> None:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    window = dt.timedelta(seconds=3)
    pending = job(f"{PREFIX}1", created="2026-01-01T00:00:00Z")
    assert young([pending], created + dt.timedelta(seconds=1.9), window) == pending
    # From window less the clock margin on, a worker may be about to start it: touch instead.
    assert young([pending], created + dt.timedelta(seconds=2), window) is None
    assert young([job(f"{PREFIX}2", "Running")], created, window) is None
    assert young([job(f"{PREFIX}3", reason="poll")], created, window) is None
    assert young([pending], created, dt.timedelta(seconds=1)) is None  # window too short


def test_a_recorded_notification_extends_the_write_free_time_up_to_the_longest() -> None:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    window, longest = dt.timedelta(seconds=3), dt.timedelta(seconds=10)
    touched = job(f"{PREFIX}1", created="2026-01-01T00:00:00Z")
    touched["metadata"]["annotations"] = {NOTIFIED_AT: "2026-01-01T00:00:04Z"}
    assert young([touched], created + dt.timedelta(seconds=5.9), window, longest) == touched
    assert young([touched], created + dt.timedelta(seconds=6), window, longest) is None
    touched["metadata"]["annotations"] = {NOTIFIED_AT: "2026-01-01T00:00:09Z"}
    assert young([touched], created + dt.timedelta(seconds=8.9), window, longest) == touched
    assert young([touched], created + dt.timedelta(seconds=9), window, longest) is None  # capped
