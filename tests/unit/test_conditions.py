"""set_condition reports transitions the way Events should be posted and keeps
lastTransitionTime honest; reading conditions back survives whatever is in status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from calsync.api import (
    AUTHENTICATED,
    DEGRADED,
    READY,
    SUBSCRIBED,
    SYNCED,
    THROTTLED,
    Condition,
    conditions_from_status,
    get_condition,
    is_true,
    set_condition,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(status: Any = "True", reason: str = "Synced", message: str = "ok") -> list[Condition]:
    conditions, _ = set_condition(
        [],
        type=READY,
        status=status,
        reason=reason,
        message=message,
        observed_generation=1,
        now=T0,
    )
    return conditions


def test_condition_type_names() -> None:
    assert [READY, AUTHENTICATED, SUBSCRIBED, SYNCED, THROTTLED, DEGRADED] == [
        "Ready",
        "Authenticated",
        "Subscribed",
        "Synced",
        "Throttled",
        "Degraded",
    ]


def test_new_condition_is_appended_and_is_a_transition() -> None:
    first = ready()
    conditions, transition = set_condition(
        first,
        type=AUTHENTICATED,
        status="True",
        reason="TokenValid",
        message="",
        observed_generation=1,
        now=T1,
    )
    assert transition
    assert [c.type for c in conditions] == [READY, AUTHENTICATED]
    assert conditions[1].last_transition_time == T1
    assert conditions[0] is first[0]


def test_same_status_and_reason_is_no_transition_but_updates_details() -> None:
    conditions, transition = set_condition(
        ready(),
        type=READY,
        status="True",
        reason="Synced",
        message="1234 events",
        observed_generation=2,
        now=T1,
    )
    assert not transition
    (condition,) = conditions
    assert condition.last_transition_time == T0
    assert condition.message == "1234 events"
    assert condition.observed_generation == 2


def test_reason_change_is_a_transition_that_keeps_the_transition_time() -> None:
    conditions, transition = set_condition(
        ready(),
        type=READY,
        status="True",
        reason="SyncedWithWarnings",
        message="",
        observed_generation=1,
        now=T1,
    )
    assert transition
    assert conditions[0].reason == "SyncedWithWarnings"
    assert conditions[0].last_transition_time == T0


def test_status_change_is_a_transition_that_moves_the_transition_time() -> None:
    conditions, transition = set_condition(
        ready(),
        type=READY,
        status="False",
        reason="Synced",
        message="provider unreachable",
        observed_generation=1,
        now=T1,
    )
    assert transition
    assert conditions[0].status == "False"
    assert conditions[0].last_transition_time == T1


def test_order_is_stable_and_input_is_untouched() -> None:
    conditions: list[Condition] = []
    for type_ in (READY, AUTHENTICATED, SYNCED):
        conditions, _ = set_condition(
            conditions,
            type=type_,
            status="Unknown",
            reason="Starting",
            message="",
            observed_generation=None,
            now=T0,
        )
    before = list(conditions)
    updated, transition = set_condition(
        conditions,
        type=AUTHENTICATED,
        status="False",
        reason="InvalidCredentials",
        message="401 from server",
        observed_generation=3,
        now=T1,
    )
    assert transition
    assert [c.type for c in updated] == [READY, AUTHENTICATED, SYNCED]
    assert conditions == before
    assert get_condition(conditions, AUTHENTICATED) == before[1]
    assert updated[0] is conditions[0] and updated[2] is conditions[2]


@pytest.mark.parametrize("reason", ["", "not camel", "Bad-Reason", "1Starts", "Ends:"])
def test_malformed_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValidationError):
        ready(reason=reason)


def test_status_must_be_a_condition_status() -> None:
    with pytest.raises(ValidationError):
        ready(status="Yes")


def test_conditions_are_frozen() -> None:
    condition = ready()[0]
    with pytest.raises(ValidationError):
        condition.status = "False"  # type: ignore[misc]


def test_get_condition_and_is_true() -> None:
    conditions = ready()
    assert get_condition(conditions, READY) == conditions[0]
    assert get_condition(conditions, SYNCED) is None
    assert is_true(conditions, READY)
    assert not is_true(conditions, SYNCED)
    assert not is_true(ready(status="Unknown"), READY)


def test_wire_form_is_metav1_condition() -> None:
    assert ready()[0].to_wire() == {
        "type": "Ready",
        "status": "True",
        "reason": "Synced",
        "message": "ok",
        "lastTransitionTime": "2026-05-01T12:00:00Z",
        "observedGeneration": 1,
    }


def test_conditions_round_trip_through_status() -> None:
    conditions = ready()
    assert conditions_from_status({"conditions": [c.to_wire() for c in conditions]}) == conditions


@pytest.mark.parametrize(
    "status", [None, {}, {"conditions": None}, {"conditions": "Ready"}, {"conditions": {}}, []]
)
def test_conditions_from_unusable_status(status: Any) -> None:
    assert conditions_from_status(status) == []


def test_conditions_from_status_skips_bad_entries() -> None:
    good = ready()[0].to_wire()
    raw = {
        "conditions": [
            "Ready",
            None,
            {"status": "True", "reason": "X", "lastTransitionTime": "2026-05-01T00:00:00Z"},
            {**good, "type": "Synced", "lastTransitionTime": "yesterday"},
            {**good, "type": "Degraded", "status": "maybe"},
            good,
            {**good, "status": "False"},
            {**good, "type": "Synced", "kopfLeftThis": True},
        ]
    }
    parsed = conditions_from_status(raw)
    assert [(c.type, c.status) for c in parsed] == [("Ready", "True"), ("Synced", "True")]
