"""Refused credentials and the spec: a changed scope is tried once, anything else waits.

The Ready message of a refused connection says no sync is attempted "until a referenced Secret
or the spec changes"; these cases pin down what counts as a change of the spec.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers import policy

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
CREDS = "creds-1"


def spec(url: str = "https://dav.example.com/", **sync: Any) -> CalendarConnectionSpec:
    return CalendarConnectionSpec.model_validate(
        {
            "provider": "caldav",
            "owner": "alice@example.com",
            "caldav": {"url": url, "credentialsSecretRef": {"name": "alice"}},
            "sync": {"pollInterval": "1m", **sync},
        }
    )


def refused_status(attempted_with: CalendarConnectionSpec) -> dict[str, Any]:
    """The status after the provider refused CREDS on a first sync of `attempted_with`."""
    return {
        "storeId": "store-a",
        "lastAttemptTime": "2026-12-05T11:00:00Z",
        "consecutiveFailures": 1,
        "refusedCredentials": CREDS,
        "attempted": policy.attempt_digest(policy.scope_digest(attempted_with), CREDS),
    }


def decide(s: CalendarConnectionSpec, status: dict[str, Any], generation: int) -> policy.Plan:
    return policy.decide(
        policy.Facts(
            name="alice",
            uid="uid-1",
            generation=generation,
            spec=s,
            status=status,
            credentials_usable=True,
            credentials=CREDS,
            active_jobs=0,
            queue_pending=0,
            store_id="store-a",
            now=NOW,
            default_poll_interval=900.0,
            queue_cap=5000,
        )
    )


def test_unchanged_refused_credentials_wait_without_a_timer() -> None:
    plan = decide(spec(), refused_status(spec()), generation=1)
    assert plan.job is None and plan.recheck_after is None
    assert plan.why == "credentials refused"


@pytest.mark.parametrize(
    "changed",
    [spec(url="https://other.example.com/"), spec(window={"pastDays": 30, "futureDays": 30})],
)
def test_a_changed_scope_is_tried_once(changed: CalendarConnectionSpec) -> None:
    plan = decide(changed, refused_status(spec()), generation=2)
    assert plan.job is not None
    assert (plan.job.mode, plan.job.reason) == ("full", "lifecycle")
    # Refused again for that scope: waiting again.
    again = decide(changed, refused_status(changed), generation=2)
    assert again.job is None and again.why == "credentials refused"


def test_a_change_outside_the_scope_tries_nothing() -> None:
    plan = decide(spec(pollInterval="5m"), refused_status(spec()), generation=2)
    assert plan.job is None and plan.why == "credentials refused"
