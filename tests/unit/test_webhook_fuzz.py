"""Hostile webhook input, generated: whatever arrives, verification ends in a verdict (never an
exception, which the gateway would answer 500 and the provider retry), and nothing unverified
is ever accepted. The cases hypothesis found once are kept as explicit examples."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calsync.security.push_tokens import channel_token, client_state
from calsync.webhook_gateway.verify import (
    EarlySync,
    Rejected,
    SubscriptionIndex,
    Verified,
    graph_items,
    verify_google,
    verify_graph_item,
)
from calsync.webhook_gateway.webhooks import MAX_BODY
from tests.unit.test_webhook_verify import RING, subscription

pytestmark = pytest.mark.unit

INDEX = SubscriptionIndex()
INDEX.update(("team-a", "g"), subscription("g", "google", "ch-new", previous="ch-old"))
INDEX.update(("team-a", "m"), subscription("m", "microsoft", "graph-sub", uid="uid-m"))

HEADER_TEXT = st.text(max_size=300) | st.sampled_from(["ch-new", "ch-old", "graph-sub", "sync"])
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)


def nested(depth: int) -> bytes:
    return b'{"value": ' + b"[" * depth + b"]" * depth + b"}"


@given(
    st.dictionaries(
        st.sampled_from(["X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Resource-State"]),
        HEADER_TEXT,
    )
)
@settings(max_examples=300, deadline=None)
def test_google_headers_always_get_a_verdict_and_forgeries_never_pass(
    headers: dict[str, str],
) -> None:
    verdict = verify_google(INDEX, RING, headers)
    assert isinstance(verdict, Verified | Rejected | EarlySync)
    if not isinstance(verdict, Rejected):
        channel = headers["X-Goog-Channel-ID"].strip()
        assert headers["X-Goog-Channel-Token"] == channel_token(RING, channel)


@given(st.binary(max_size=2048) | JSON.map(lambda doc: json.dumps(doc).encode()))
@example(nested(MAX_BODY // 2 - 20))  # a body inside the cap, nested past any parser's stack
@example(b"[" * MAX_BODY)
@example(b'{"value": [1e999999]}')
@example("\ud800".encode("utf-8", "surrogatepass"))
@settings(max_examples=300, deadline=None)
def test_any_graph_body_is_a_list_of_items_or_refused(body: bytes) -> None:
    items = graph_items(body)
    assert items is None or (isinstance(items, list) and items)


@given(st.dictionaries(st.sampled_from(["subscriptionId", "clientState", "lifecycleEvent"]), JSON))
@settings(max_examples=300, deadline=None)
def test_graph_items_always_get_a_verdict_and_forgeries_never_pass(item: dict[str, Any]) -> None:
    verdict = verify_graph_item(INDEX, RING, item)
    assert isinstance(verdict, Verified | Rejected)
    if isinstance(verdict, Verified):
        assert item["clientState"] == client_state(RING, "uid-m")
