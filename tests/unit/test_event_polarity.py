"""Event types follow each condition's polarity: Normal on the healthy path, Warning otherwise."""

from __future__ import annotations

import pytest

from calsync.controllers.status import event_type

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("ctype", "status", "reason", "expected"),
    [
        ("Ready", "True", "Synced", "Normal"),
        ("Ready", "False", "SyncFailed", "Warning"),
        ("Ready", "False", "AwaitingFirstSync", "Normal"),  # a healthy new connection
        ("Ready", "False", "SpecChanged", "Normal"),
        ("Authenticated", "Unknown", "CredentialsFound", "Normal"),
        ("Authenticated", "False", "AuthenticationFailed", "Warning"),
        ("Throttled", "True", "RateLimited", "Warning"),
        ("Throttled", "True", "QueueFull", "Warning"),
        ("Throttled", "False", "WithinBudget", "Normal"),
        ("Degraded", "True", "DuplicateUID", "Warning"),
        ("Degraded", "False", "AsExpected", "Normal"),
    ],
)
def test_event_type(ctype: str, status: str, reason: str, expected: str) -> None:
    assert event_type(ctype, status, reason) == expected
