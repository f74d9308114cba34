"""The connection controller's decision as a pure function of (spec, status, Secrets, jobs, now)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers import policy

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
STORE = "store-a"


def spec(**sync: Any) -> CalendarConnectionSpec:
    return CalendarConnectionSpec.model_validate(
        {
            "provider": "caldav",
            "owner": "alice@example.com",
            "caldav": {
                "url": "https://dav.example.com/",
                "credentialsSecretRef": {"name": "alice"},
            },
            "sync": {"pollInterval": "15m", **sync},
        }
    )


def ts(delta_seconds: float) -> str:
    return (NOW + dt.timedelta(seconds=delta_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def synced_status(s: CalendarConnectionSpec, **extra: Any) -> dict[str, Any]:
    creds = "creds-1"
    return {
        "storeId": STORE,
        "syncedScope": policy.scope_digest(s),
        "lastAttemptTime": ts(-60),
        "lastSyncTime": ts(-55),
        "consecutiveFailures": 0,
        "attempted": policy.attempt_digest(policy.scope_digest(s), creds),
        **extra,
    }


def facts(s: CalendarConnectionSpec | None = None, **kw: Any) -> policy.Facts:
    s = s or spec()
    base = policy.Facts(
        name="alice",
        uid="uid-1",
        generation=1,
        spec=s,
        status={},
        credentials_usable=True,
        credentials="creds-1",
        active_jobs=0,
        queue_pending=0,
        store_id=STORE,
        now=NOW,
        default_poll_interval=900.0,
        queue_cap=5000,
    )
    return replace(base, **kw)


def test_new_connection_gets_a_full_job_now_and_is_bound_to_our_store() -> None:
    plan = policy.decide(facts())
    assert plan.job is not None
    assert (plan.job.mode, plan.job.reason) == ("full", "lifecycle")
    assert plan.bind_store
    assert plan.observed_generation is None  # nothing synced yet


def test_same_state_gives_the_same_job_name() -> None:
    a, b = policy.decide(facts()), policy.decide(facts())
    assert a.job is not None and b.job is not None
    assert a.job.name == b.job.name
    other = policy.decide(facts(uid="uid-2"))
    assert other.job is not None and other.job.name != a.job.name


def test_job_names_fit_the_api_limit() -> None:
    plan = policy.decide(facts(name="x" * 253))
    assert plan.job is not None and len(plan.job.name) <= 253


def test_connection_bound_to_another_store_is_left_alone() -> None:
    plan = policy.decide(facts(status={"storeId": "store-b"}))
    assert plan.foreign_store and plan.job is None


def test_no_job_while_one_is_active() -> None:
    plan = policy.decide(facts(active_jobs=1))
    assert plan.job is None and plan.recheck_after is None


def test_poll_is_due_an_interval_after_the_last_attempt() -> None:
    s = spec()
    plan = policy.decide(facts(s, status=synced_status(s)))
    assert plan.job is None
    assert plan.recheck_after == pytest.approx(900 - 60)
    assert plan.observed_generation == 1
    later = policy.decide(facts(s, status=synced_status(s), now=NOW + dt.timedelta(seconds=841)))
    assert later.job is not None
    assert (later.job.mode, later.job.reason) == ("incremental", "poll")


def test_failures_back_off_from_the_last_attempt() -> None:
    s = spec()
    for failures, delay in [(1, 900), (2, 1800), (3, 3600), (6, 6 * 3600), (12, 6 * 3600)]:
        status = synced_status(s, consecutiveFailures=failures, lastAttemptTime=ts(0))
        plan = policy.decide(facts(s, status=status))
        assert plan.job is None
        assert plan.recheck_after == pytest.approx(delay), failures


def test_a_change_since_a_failed_attempt_makes_the_next_one_due_now() -> None:
    s = spec()
    status = synced_status(s, consecutiveFailures=2, lastAttemptTime=ts(0))
    plan = policy.decide(facts(s, status=status, credentials="creds-2"))
    assert plan.job is not None and plan.job.reason == "lifecycle"


def test_refused_credentials_stop_every_attempt_until_they_change() -> None:
    s = spec()
    status = synced_status(
        s, consecutiveFailures=1, refusedCredentials="creds-1", lastAttemptTime=ts(-86400 * 30)
    )
    plan = policy.decide(facts(s, status=status))
    assert plan.job is None and plan.recheck_after is None
    assert plan.why == "credentials refused"
    fixed = policy.decide(facts(s, status=status, credentials="creds-2"))
    assert fixed.job is not None
    assert fixed.credentials_changed


def test_scope_change_asks_for_a_full_sync_now() -> None:
    s = spec()
    status = synced_status(s)
    wider = spec(window={"pastDays": 30, "futureDays": 30})
    plan = policy.decide(facts(wider, status=status, generation=2))
    assert plan.job is not None and plan.job.mode == "full"
    assert plan.spec_changed
    assert plan.observed_generation is None  # the worker records it once synced


@pytest.mark.parametrize(
    "change", [{"owner": "bob@example.com"}, {"poll": "1h"}, {"suspend": True}]
)
def test_other_spec_changes_need_no_sync(change: dict[str, Any]) -> None:
    s = spec()
    status = synced_status(s)
    raw = s.model_dump(by_alias=True, exclude_none=True)
    if "owner" in change:
        raw["owner"] = change["owner"]
    if "poll" in change:
        raw["sync"]["pollInterval"] = change["poll"]
    if "suspend" in change:
        raw["suspend"] = True
    changed = CalendarConnectionSpec.model_validate(raw)
    plan = policy.decide(facts(changed, status=status, generation=2))
    assert plan.job is None
    assert plan.observed_generation == 2
    assert not plan.spec_changed


def test_unsuspending_resumes_incrementally() -> None:
    s = spec()
    status = synced_status(s, lastAttemptTime=ts(-86400))
    plan = policy.decide(facts(s, status=status, generation=3))
    assert plan.job is not None and plan.job.mode == "incremental"


def test_incomplete_credentials_wait_without_a_timer() -> None:
    plan = policy.decide(facts(credentials_usable=False))
    assert plan.job is None and plan.recheck_after is None


def test_full_queue_refuses_the_job_and_says_so() -> None:
    plan = policy.decide(facts(queue_pending=5000))
    assert plan.job is None and plan.queue_full
    assert plan.recheck_after == policy.QUEUE_FULL_RECHECK


def test_credentials_digest_follows_contents_not_order() -> None:
    a = policy.credentials_digest({"s": {"username": b"a", "password": b"b"}, "t": None})
    b = policy.credentials_digest({"t": None, "s": {"password": b"b", "username": b"a"}})
    c = policy.credentials_digest({"s": {"username": b"a", "password": b"c"}, "t": None})
    assert a == b != c


def test_unset_poll_interval_uses_the_operator_default() -> None:
    raw = spec().model_dump(by_alias=True, exclude_none=True)
    del raw["sync"]["pollInterval"]
    s = CalendarConnectionSpec.model_validate(raw)
    assert s.sync.poll_interval_seconds is None
    status = synced_status(s)
    plan = policy.decide(facts(s, status=status, default_poll_interval=3600.0))
    assert plan.recheck_after == pytest.approx(3600 - 60)
