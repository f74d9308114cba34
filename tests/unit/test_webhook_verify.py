"""Webhook verification decisions: known channel, right token, the right answer for each."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import channel_token, client_state
from calsync.webhook_gateway.verify import (
    ACCEPTED,
    FORGED,
    MALFORMED,
    RATE_LIMITED,
    UNKNOWN,
    EarlySync,
    Rejected,
    SubscriptionIndex,
    Verified,
    batch_answer,
    graph_items,
    verify_google,
    verify_graph_item,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
RING = KeyRing.generate(NOW)


def subscription(
    name: str,
    provider: str,
    channel: str | None,
    previous: str | None = None,
    uid: str = "uid-1",
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team-a",
            "name": name,
            "uid": uid,
            "ownerReferences": [{"kind": "CalendarConnection", "name": "alice", "uid": "conn-uid"}],
        },
        "spec": {"connection": "alice", "calendarId": "primary", "provider": provider},
        "status": {"channelId": channel, "previousChannelId": previous},
    }


def google_headers(channel: str, token: str | None, state: str = "exists") -> dict[str, str]:
    headers = {"X-Goog-Channel-ID": channel, "X-Goog-Resource-State": state}
    if token is not None:
        headers["X-Goog-Channel-Token"] = token
    return headers


@pytest.fixture
def index() -> SubscriptionIndex:
    idx = SubscriptionIndex()
    idx.update(("team-a", "g"), subscription("g", "google", "ch-new", previous="ch-old"))
    idx.update(("team-a", "m"), subscription("m", "microsoft", "graph-sub", uid="uid-m"))
    return idx


def test_a_google_call_with_the_channels_token_verifies(index: SubscriptionIndex) -> None:
    verdict = verify_google(index, RING, google_headers("ch-new", channel_token(RING, "ch-new")))
    assert isinstance(verdict, Verified)
    assert verdict.target.calendar_id == "primary"
    assert verdict.target.connection_uid == "conn-uid"
    assert not verdict.sync_message


def test_the_previous_channel_still_verifies_during_make_before_break(
    index: SubscriptionIndex,
) -> None:
    verdict = verify_google(index, RING, google_headers("ch-old", channel_token(RING, "ch-old")))
    assert isinstance(verdict, Verified) and verdict.target.name == "g"


def test_the_sync_message_verifies_and_is_marked(index: SubscriptionIndex) -> None:
    verdict = verify_google(
        index, RING, google_headers("ch-new", channel_token(RING, "ch-new"), "sync")
    )
    assert isinstance(verdict, Verified) and verdict.sync_message


def test_the_sync_message_of_a_channel_not_yet_in_the_cache_is_acknowledged(
    index: SubscriptionIndex,
) -> None:
    # Google sends it the moment the channel opens, before its id reaches the status.
    early = verify_google(
        index, RING, google_headers("ch-next", channel_token(RING, "ch-next"), "sync")
    )
    assert early == EarlySync("ch-next")
    # Only with a token made for that very channel id, and only for `sync`.
    for headers in (
        google_headers("ch-next", channel_token(RING, "ch-other"), "sync"),
        google_headers("ch-next", "garbage", "sync"),
        google_headers("ch-next", channel_token(RING, "ch-next"), "exists"),
    ):
        verdict = verify_google(index, RING, headers)
        assert isinstance(verdict, Rejected) and verdict.result == UNKNOWN


@pytest.mark.parametrize(
    ("headers", "result", "status"),
    [
        ({}, MALFORMED, 400),
        (google_headers("ch-new", None), MALFORMED, 400),
        (google_headers("ch-new", "x.y", state="weird"), MALFORMED, 400),
        (google_headers("nope", channel_token(RING, "nope")), UNKNOWN, 403),
        (google_headers("graph-sub", channel_token(RING, "graph-sub")), UNKNOWN, 403),
        (google_headers("ch-new", channel_token(RING, "ch-old")), FORGED, 401),
        (google_headers("ch-new", "garbage"), FORGED, 401),
    ],
)
def test_google_rejections(
    index: SubscriptionIndex, headers: dict[str, str], result: str, status: int
) -> None:
    verdict = verify_google(index, RING, headers)
    assert isinstance(verdict, Rejected)
    assert (verdict.result, verdict.status) == (result, status)


def test_a_subscription_that_changes_channel_is_reindexed(index: SubscriptionIndex) -> None:
    index.update(("team-a", "g"), subscription("g", "google", "ch-3"))
    token = channel_token(RING, "ch-old")
    assert isinstance(verify_google(index, RING, google_headers("ch-old", token)), Rejected)
    assert index.lookup("ch-3") is not None
    index.update(("team-a", "g"), None)
    assert index.lookup("ch-3") is None
    assert index.by_provider() == {"microsoft": 1}


def test_graph_items_verify_against_the_subscription_uid(index: SubscriptionIndex) -> None:
    good = {"subscriptionId": "graph-sub", "clientState": client_state(RING, "uid-m")}
    verdict = verify_graph_item(index, RING, good)
    assert isinstance(verdict, Verified) and verdict.lifecycle_event is None
    lifecycle = {**good, "lifecycleEvent": "missed"}
    verdict = verify_graph_item(index, RING, lifecycle)
    assert isinstance(verdict, Verified) and verdict.lifecycle_event == "missed"
    cases = [
        ("not a dict", MALFORMED),
        ({"clientState": "x"}, MALFORMED),
        ({"subscriptionId": "graph-sub"}, MALFORMED),
        ({"subscriptionId": "other", "clientState": good["clientState"]}, UNKNOWN),
        ({"subscriptionId": "graph-sub", "clientState": client_state(RING, "uid-1")}, FORGED),
    ]
    for item, result in cases:
        verdict = verify_graph_item(index, RING, item)
        assert isinstance(verdict, Rejected) and verdict.result == result, item


def test_graph_bodies_must_carry_a_value_list() -> None:
    assert graph_items(json.dumps({"value": [{"a": 1}]}).encode()) == [{"a": 1}]
    for body in (b"", b"{", b"[]", b'{"value": []}', b'{"value": {}}', b"\xff\xfe"):
        assert graph_items(body) is None


def test_batch_answers() -> None:
    assert batch_answer([ACCEPTED, FORGED], recorded=True) == 202  # mixed: 202
    assert batch_answer([ACCEPTED], recorded=False) == 503
    assert batch_answer([RATE_LIMITED, FORGED], recorded=True) == 429
    assert batch_answer([UNKNOWN, FORGED, MALFORMED], recorded=True) == 401
    assert batch_answer([UNKNOWN, MALFORMED], recorded=True) == 403
    assert batch_answer([MALFORMED], recorded=True) == 400
