"""Consent links and OAuth state: sealed, bound to one connection, expiring."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest

from calsync.security.consent import (
    ConnectionRef,
    ConsentError,
    FlowState,
    consent_link,
    make_link_token,
    make_state,
    open_link_token,
    open_state,
)
from calsync.security.keyring import KeyRing

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
RING = KeyRing.generate(dt.datetime(2026, 11, 26, tzinfo=dt.UTC))
REF = ConnectionRef("team-a", "alice.work", "0b6c-uid")


def test_link_round_trip() -> None:
    token = make_link_token(RING, REF, "google", NOW + 60)
    assert open_link_token(RING, token, "google", NOW) == REF


def test_link_url_shape() -> None:
    url = consent_link("https://gw.example/", RING, REF, "microsoft", NOW + 60)
    parts = urlsplit(url)
    assert parts.path == "/auth/microsoft/start"
    query = parse_qs(parts.query)
    assert query["exp"] == [str(int(NOW + 60))]
    assert open_link_token(RING, query["c"][0], "microsoft", NOW) == REF


def test_link_expires() -> None:
    token = make_link_token(RING, REF, "google", NOW - 1)
    with pytest.raises(ConsentError, match="expired"):
        open_link_token(RING, token, "google", NOW)


def test_link_for_another_provider_is_refused() -> None:
    token = make_link_token(RING, REF, "google", NOW + 60)
    with pytest.raises(ConsentError, match="provider"):
        open_link_token(RING, token, "microsoft", NOW)


def test_link_cannot_be_pointed_at_another_connection() -> None:
    token = make_link_token(RING, REF, "google", NOW + 60)
    sealed = token.partition(".")[2]
    other = ConnectionRef("team-b", "alice.work", "0b6c-uid").encode()
    with pytest.raises(ConsentError, match="not issued for this connection"):
        open_link_token(RING, f"{other}.{sealed}", "google", NOW)


def test_link_from_another_keyring_is_refused() -> None:
    token = make_link_token(KeyRing.generate(dt.datetime.now(dt.UTC)), REF, "google", NOW + 60)
    with pytest.raises(ConsentError):
        open_link_token(RING, token, "google", NOW)


@pytest.mark.parametrize("token", ["", "abc", "abc.", ".def", "!!!.xyz", "W10.abc"])
def test_damaged_links_are_refused(token: str) -> None:
    with pytest.raises(ConsentError):
        open_link_token(RING, token, "google", NOW)


def test_state_round_trip_and_binding() -> None:
    flow = FlowState(REF, "google", "nonce1", "verifier1", int(NOW + 600))
    state = make_state(RING, flow)
    assert "verifier1" not in state and "nonce1" not in state
    assert open_state(RING, state, "google", NOW) == flow
    with pytest.raises(ConsentError):
        open_state(RING, state, "microsoft", NOW)
    with pytest.raises(ConsentError, match="expired"):
        open_state(RING, state, "google", NOW + 601)
    # A link token is not a state, even for the same connection.
    with pytest.raises(ConsentError):
        open_state(RING, make_link_token(RING, REF, "google", NOW + 60), "google", NOW)


def test_connection_ref_rejects_wrong_shapes() -> None:
    for text in ["", "e30", ConnectionRef("a", "b", "c").encode()[:-2]]:
        with pytest.raises(ConsentError):
            ConnectionRef.decode(text)
