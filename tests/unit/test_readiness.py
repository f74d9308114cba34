"""How conditions follow from the credentials verdict and from sync outcomes."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.controllers import readiness
from calsync.controllers.credentials import Verdict

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
OK = Verdict(("Unknown", "CredentialsFound", "present"), ("True", "CredentialsFound", "ok"))
MISSING = Verdict(("False", "SecretNotFound", "no s"), ("False", "SecretNotFound", "no s"))
SUSPENDED = Verdict(("Unknown", "Suspended", "paused"), ("False", "Suspended", "paused"))


def fresh() -> readiness.Conditions:
    return readiness.Conditions([], 1, NOW)


def state(conds: readiness.Conditions) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conds.items}


def test_credentials_present_but_never_synced_is_not_ready() -> None:
    conds = fresh()
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    assert state(conds)["Ready"] == ("False", "AwaitingFirstSync")
    assert state(conds)["Authenticated"] == ("Unknown", "CredentialsFound")


def test_sync_success_makes_ready_and_survives_a_later_credentials_check() -> None:
    conds = fresh()
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    readiness.apply_sync_success(conds, events=5, calendars=1, duplicates=[], skipped=[])
    assert state(conds)["Ready"] == ("True", "Synced")
    assert state(conds)["Authenticated"] == ("True", "Authenticated")
    readiness.apply_credentials(conds, OK, credentials_changed=True)
    assert state(conds)["Ready"] == ("True", "Synced")
    assert state(conds)["Authenticated"] == ("True", "Authenticated")


def test_missing_secret_wins_over_an_old_success() -> None:
    conds = fresh()
    readiness.apply_sync_success(conds, events=5, calendars=1, duplicates=[], skipped=[])
    readiness.apply_credentials(conds, MISSING, credentials_changed=True)
    assert state(conds)["Ready"] == ("False", "SecretNotFound")


def test_provider_refusal_is_kept_until_the_secret_changes() -> None:
    conds = fresh()
    readiness.apply_sync_failure(
        conds, reason="AuthenticationFailed", message="401", auth=True, final=True
    )
    assert state(conds)["Ready"] == ("False", "AuthenticationFailed")
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    assert state(conds)["Authenticated"] == ("False", "AuthenticationFailed")
    readiness.apply_credentials(conds, OK, credentials_changed=True)
    assert state(conds)["Authenticated"] == ("Unknown", "CredentialsUpdated")
    assert state(conds)["Ready"][0] == "False"


def test_retryable_failures_show_only_when_final() -> None:
    conds = fresh()
    readiness.apply_sync_success(conds, events=1, calendars=1, duplicates=[], skipped=[])
    readiness.apply_sync_failure(
        conds, reason="ProviderError", message="boom", auth=False, final=False
    )
    assert state(conds)["Ready"] == ("True", "Synced")
    readiness.apply_sync_failure(
        conds, reason="ProviderError", message="boom", auth=False, final=True
    )
    assert state(conds)["Ready"] == ("False", "SyncFailed")
    assert state(conds)["Synced"] == ("False", "SyncFailed")


def test_suspension_and_resume() -> None:
    conds = fresh()
    readiness.apply_sync_success(conds, events=1, calendars=1, duplicates=[], skipped=[])
    readiness.apply_credentials(conds, SUSPENDED, credentials_changed=False)
    assert state(conds)["Ready"] == ("False", "Suspended")
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    assert state(conds)["Ready"] == ("True", "Synced")


def test_duplicates_degrade_but_stay_ready() -> None:
    conds = fresh()
    readiness.apply_sync_success(
        conds,
        events=3,
        calendars=1,
        duplicates=[("/cal/", "uid-1", ["/cal/a.ics", "/cal/b.ics"])],
        skipped=[],
    )
    assert state(conds)["Ready"] == ("True", "Synced")
    assert state(conds)["Degraded"] == ("True", "DuplicateUID")
    degraded = conds.get("Degraded")
    assert degraded is not None and "uid-1" in degraded.message
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=[], skipped=[])
    assert state(conds)["Degraded"] == ("False", "AsExpected")


def test_transitions_are_recorded_once() -> None:
    conds = fresh()
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    assert {c.type for c in conds.transitions} == {"Authenticated", "Ready"}
    again = readiness.Conditions(conds.items, 1, NOW)
    readiness.apply_credentials(again, OK, credentials_changed=False)
    assert again.transitions == []


def test_unchecked_duplicates_leave_degraded_alone() -> None:
    conds = fresh()
    dup = [("/cal/", "uid-1", ["/cal/a.ics", "/cal/b.ics"])]
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=dup, skipped=[])
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=None, skipped=[])
    assert state(conds)["Degraded"] == ("True", "DuplicateUID")
    assert state(conds)["Ready"] == ("True", "Synced")


def test_invalid_grant_is_kept_until_the_credentials_change() -> None:
    conds = fresh()
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    readiness.apply_sync_failure(
        conds, reason="InvalidGrant", message="refused", auth=True, final=True
    )
    assert state(conds)["Ready"] == ("False", "InvalidGrant")
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    assert state(conds)["Authenticated"] == ("False", "InvalidGrant")
    readiness.apply_credentials(conds, OK, credentials_changed=True)
    assert state(conds)["Authenticated"] == ("Unknown", "CredentialsUpdated")


@pytest.mark.parametrize(
    ("events", "calendars", "message"),
    [
        (1, 1, "1 event in 1 calendar"),
        (0, 1, "0 events in 1 calendar"),
        (5, 2, "5 events in 2 calendars"),
        (0, 0, "0 events in 0 calendars"),
    ],
)
def test_synced_message_counts_in_singular_and_plural(
    events: int, calendars: int, message: str
) -> None:
    conds = fresh()
    readiness.apply_sync_success(
        conds, events=events, calendars=calendars, duplicates=[], skipped=[]
    )
    synced = conds.get("Synced")
    assert synced is not None and synced.message == message


def test_a_never_synced_connection_shows_each_failed_attempt_at_once() -> None:
    conds = fresh()
    readiness.apply_credentials(conds, OK, credentials_changed=False)
    readiness.apply_sync_failure(
        conds, reason="ProviderError", message="connection refused", auth=False, final=False
    )
    assert state(conds)["Ready"] == ("False", "SyncRetrying")
    assert conds.get("Ready") is not None and "connection refused" in conds.get("Ready").message  # type: ignore[union-attr]


def test_a_spec_change_makes_ready_false_until_the_next_sync() -> None:
    conds = fresh()
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=[], skipped=[])
    readiness.apply_spec_changed(conds, 2)
    assert state(conds)["Ready"] == ("False", "SpecChanged")
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=[], skipped=[])
    assert state(conds)["Ready"] == ("True", "Synced")


def test_a_full_queue_throttles_and_room_recovers() -> None:
    conds = fresh()
    readiness.apply_queue_full(conds, 5000, 5000)
    assert state(conds)["Throttled"] == ("True", "QueueFull")
    readiness.apply_queue_room(conds)
    assert state(conds)["Throttled"] == ("False", "WithinBudget")


def test_series_cut_short_by_the_expansion_cap_are_named_in_degraded() -> None:
    conds = fresh()
    capped = [("/cal/minutely.ics", "more than 3000 occurrences")]
    readiness.apply_sync_success(
        conds, events=3, calendars=1, duplicates=[], skipped=[], capped=capped
    )
    degraded = conds.get("Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "ExpansionCapped")
    assert "/cal/minutely.ics" in degraded.message
    assert "QUERY_SERIES_LIMIT" in degraded.message
    assert state(conds)["Ready"] == ("True", "Synced")  # reported, not fatal
    readiness.apply_sync_success(conds, events=3, calendars=1, duplicates=[], skipped=[])
    assert state(conds)["Degraded"] == ("False", "AsExpected")


def test_skipped_resources_are_named_with_their_reasons() -> None:
    conds = fresh()
    long_reason = "calendar object of 2000000 characters exceeds the limit of 1048576 " + "x" * 500
    readiness.apply_sync_success(
        conds,
        events=3,
        calendars=1,
        duplicates=[],
        skipped=[
            ("/cal/deep.ics", "components nested deeper than 8"),
            ("/cal/big.ics", long_reason),
        ],
    )
    degraded = conds.get(readiness.DEGRADED)
    assert degraded is not None and degraded.reason == "MalformedEvents"
    message = degraded.message
    assert "/cal/deep.ics: components nested deeper than 8" in message
    assert "/cal/big.ics: calendar object of 2000000 characters exceeds" in message
    assert len(message) < 1000, "one bounded line per skipped resource, at most five"
