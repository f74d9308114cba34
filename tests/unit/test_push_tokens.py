"""Channel tokens and Graph clientStates: derived from the keyring, verified in constant time."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import (
    channel_token,
    client_state,
    verify_channel_token,
    verify_client_state,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def test_a_token_verifies_for_its_own_channel_only() -> None:
    ring = KeyRing.generate(NOW)
    token = channel_token(ring, "calsync-abc")
    assert verify_channel_token(ring, "calsync-abc", token)
    assert not verify_channel_token(ring, "calsync-abd", token)
    assert not verify_channel_token(
        ring, "calsync-abc", token[:-1] + ("A" if token[-1] != "A" else "B")
    )
    assert not verify_channel_token(ring, "calsync-abc", None)
    assert not verify_channel_token(ring, "calsync-abc", "")
    assert not verify_channel_token(ring, "calsync-abc", "no-dot-here")
    assert not verify_channel_token(KeyRing.generate(NOW), "calsync-abc", token)  # another ring


def test_google_tokens_and_graph_states_never_stand_for_each_other() -> None:
    ring = KeyRing.generate(NOW)
    uid = "0d9e4b12-77a3-4f0c-b5e8-91a2c3d4e5f6"
    state = client_state(ring, uid)
    assert verify_client_state(ring, uid, state)
    assert not verify_channel_token(ring, uid, state)
    assert not verify_client_state(ring, uid, channel_token(ring, uid))


def test_values_fit_the_providers_limits_and_survive_a_rotation_until_retired() -> None:
    ring = KeyRing.generate(NOW)
    token, state = channel_token(ring, "c" * 64), client_state(ring, "u" * 36)
    assert len(token) <= 256 and len(state) <= 128
    rotated = ring.with_new_primary(NOW + dt.timedelta(days=90))
    assert verify_channel_token(rotated, "c" * 64, token)  # minted by the old key, still held
    assert channel_token(rotated, "c" * 64) != token  # new ones come from the new primary
    retired = rotated.without(ring.primary.id)
    assert not verify_channel_token(retired, "c" * 64, token)
