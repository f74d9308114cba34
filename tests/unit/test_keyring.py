"""The token keyring: sealing, associated data, key ids, rotation steps and the stored form."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from calsync.security.keyring import (
    KEY_BYTES,
    SECRET_KEY,
    DecryptionError,
    InvalidKeyRing,
    Key,
    KeyRing,
    TokenContext,
    UnknownKey,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 26, 8, 6, 12, tzinfo=dt.UTC)
CTX = TokenContext("team-a", "alice-work", "7f1c5a1e-0000-4000-8000-000000000001")
TOKEN = "1//0gRefreshTokenValue-with-ünïcode"


def stored(ring: KeyRing) -> dict[str, bytes]:
    """The ring as a Secret's decoded data, the way the Kubernetes side hands it back."""
    return {k: v.encode() for k, v in ring.to_secret_data().items()}


def document(ring: KeyRing) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(ring.to_secret_data()[SECRET_KEY])
    return loaded


def with_document(doc: object) -> dict[str, bytes]:
    return {SECRET_KEY: json.dumps(doc).encode()}


def test_round_trip() -> None:
    ring = KeyRing.generate(NOW)
    sealed = ring.encrypt(TOKEN, CTX, "refresh_token")
    assert TOKEN not in sealed
    assert ring.decrypt(sealed, CTX, "refresh_token") == TOKEN
    assert ring.key_id_of(sealed) == ring.primary.id


def test_ciphertext_format_is_versioned_and_names_the_key() -> None:
    ring = KeyRing.generate(NOW)
    sealed = ring.encrypt("x", CTX, "refresh_token")
    assert "=" not in sealed  # base64url without padding: safe in any text field
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    key_id = ring.primary.id.encode()
    assert raw[:4] == b"csk1"
    assert raw[4] == len(key_id)
    assert raw[5 : 5 + len(key_id)] == key_id
    assert len(raw) == 5 + len(key_id) + 12 + 1 + 16  # nonce, one byte, tag


@pytest.mark.parametrize(
    ("ctx", "field"),
    [
        (TokenContext("team-b", CTX.name, CTX.uid), "refresh_token"),
        (TokenContext(CTX.namespace, "bob-work", CTX.uid), "refresh_token"),
        (
            TokenContext(CTX.namespace, CTX.name, "7f1c5a1e-0000-4000-8000-000000000002"),
            "refresh_token",
        ),
        (CTX, "access_token"),
    ],
    ids=["namespace", "name", "uid", "field"],
)
def test_associated_data_binds_connection_and_field(ctx: TokenContext, field: str) -> None:
    ring = KeyRing.generate(NOW)
    sealed = ring.encrypt(TOKEN, CTX, "refresh_token")
    with pytest.raises(DecryptionError) as err:
        ring.decrypt(sealed, ctx, field)
    message = str(err.value)
    assert "different connection or field" in message
    assert f"{ctx.namespace}/{ctx.name}" in message
    assert TOKEN not in message
    assert base64.b64encode(ring.primary.material).decode() not in message


def test_context_parts_cannot_be_shifted_between_fields() -> None:
    """("a-b", "c") and ("a", "b-c") must not produce the same associated data."""
    ring = KeyRing.generate(NOW)
    sealed = ring.encrypt(TOKEN, TokenContext("ns", "ab", "u"), "f")
    with pytest.raises(DecryptionError):
        ring.decrypt(sealed, TokenContext("nsa", "b", "u"), "f")


def test_every_tampered_byte_is_detected() -> None:
    ring = KeyRing.generate(NOW)
    sealed = ring.encrypt("short token", CTX, "refresh_token")
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(flipped)).decode()
        with pytest.raises((DecryptionError, UnknownKey)):
            ring.decrypt(text, CTX, "refresh_token")


@pytest.mark.parametrize(
    "text",
    ["", "not base64 !!", base64.urlsafe_b64encode(b"csk2" + b"\x00" * 40).decode(), "Y3NrMQ"],
    ids=["empty", "not-base64", "other-version", "truncated"],
)
def test_malformed_text_is_a_decryption_error(text: str) -> None:
    ring = KeyRing.generate(NOW)
    with pytest.raises(DecryptionError):
        ring.decrypt(text, CTX, "refresh_token")
    with pytest.raises(DecryptionError):
        ring.key_id_of(text)


def test_unknown_key_id_is_named() -> None:
    other = KeyRing.generate(NOW)
    sealed = other.encrypt(TOKEN, CTX, "refresh_token")
    ring = KeyRing.generate(NOW)
    with pytest.raises(UnknownKey) as err:
        ring.decrypt(sealed, CTX, "refresh_token")
    assert err.value.key_id == other.primary.id
    assert other.primary.id in str(err.value)
    assert not err.value.retired


def test_nonces_are_unique() -> None:
    ring = KeyRing.generate(NOW)
    nonces = set()
    for _ in range(5000):
        sealed = ring.encrypt("same", CTX, "refresh_token")
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        start = 5 + len(ring.primary.id)
        nonces.add(raw[start : start + 12])
    assert len(nonces) == 5000


def test_key_ids_are_short_sortable_and_unique() -> None:
    ring = KeyRing.generate(NOW)
    assert ring.primary.id.startswith("k20261126t080612-")
    assert len(ring.primary.id) <= 24
    for _ in range(300):  # same second every time: the random suffix keeps ids apart
        ring = ring.with_new_primary(NOW)
    assert len({k.id for k in ring.keys}) == 301
    later = ring.with_new_primary(NOW + dt.timedelta(days=90))
    assert later.primary.id > max(k.id for k in ring.keys)


def test_rotation_keeps_old_keys_for_decryption() -> None:
    ring = KeyRing.generate(NOW)
    old_sealed = ring.encrypt(TOKEN, CTX, "refresh_token")
    rotated = ring.with_new_primary(NOW + dt.timedelta(days=90))
    assert rotated.primary.id != ring.primary.id
    assert rotated.decrypt(old_sealed, CTX, "refresh_token") == TOKEN
    new_sealed = rotated.encrypt(TOKEN, CTX, "refresh_token")
    assert rotated.key_id_of(new_sealed) == rotated.primary.id
    # The old ring does not know the new key: that is what makes a process reload.
    with pytest.raises(UnknownKey):
        ring.decrypt(new_sealed, CTX, "refresh_token")


def test_retiring_wipes_material_and_keeps_a_tombstone() -> None:
    ring = KeyRing.generate(NOW)
    old_id = ring.primary.id
    sealed = ring.encrypt(TOKEN, CTX, "refresh_token")
    retired = ring.with_new_primary(NOW + dt.timedelta(days=1)).without(old_id)
    tombstone = retired.get(old_id)
    assert tombstone is not None and tombstone.retired and tombstone.material == b""
    with pytest.raises(UnknownKey) as err:
        retired.decrypt(sealed, CTX, "refresh_token")
    assert err.value.retired and "retired" in str(err.value)
    # The tombstone survives storage, and its id is not handed out again.
    assert KeyRing.from_secret_data(stored(retired)).get(old_id) == tombstone
    assert retired.without(old_id) == retired


def test_the_primary_cannot_be_removed() -> None:
    ring = KeyRing.generate(NOW)
    with pytest.raises(InvalidKeyRing, match="primary"):
        ring.without(ring.primary.id)
    with pytest.raises(UnknownKey):
        ring.without("k20000101t000000-dead")


def test_serialization_round_trip() -> None:
    ring = KeyRing.generate(NOW).with_new_primary(NOW + dt.timedelta(days=90))
    ring = ring.with_new_primary(NOW + dt.timedelta(days=180)).without(ring.keys[0].id)
    again = KeyRing.from_secret_data(stored(ring))
    assert again == ring
    assert again.primary.id == ring.primary.id
    assert [k.created for k in again.keys] == [k.created for k in ring.keys]
    sealed = ring.encrypt(TOKEN, CTX, "access_token")
    assert again.decrypt(sealed, CTX, "access_token") == TOKEN


def _material() -> str:
    return base64.b64encode(b"\x01" * KEY_BYTES).decode()


def _entry(key_id: str = "k20261126t080612-aaaa", **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": key_id,
        "created": "2026-11-26T08:06:12Z",
        "retired": False,
        "material": _material(),
    }
    entry.update(changes)
    return entry


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no 'keyring.json' entry"),
        ({SECRET_KEY: b"{not json"}, "not valid JSON"),
        (with_document([]), "must be a JSON object"),
        (with_document({"format": 2, "primary": "x", "keys": []}), "format 2"),
        (with_document({"format": 1, "keys": [_entry()]}), "no primary"),
        (
            with_document({"format": 1, "primary": "k20261126t080612-bbbb", "keys": [_entry()]}),
            "'k20261126t080612-bbbb' is not in the keyring",
        ),
        (
            with_document(
                {
                    "format": 1,
                    "primary": "k20261126t080612-aaaa",
                    "keys": [_entry(material=base64.b64encode(b"short").decode())],
                }
            ),
            "5 bytes of material; AES-256 needs 32",
        ),
        (
            with_document(
                {"format": 1, "primary": "k20261126t080612-aaaa", "keys": [_entry(), _entry()]}
            ),
            "duplicate key id 'k20261126t080612-aaaa'",
        ),
        (
            with_document(
                {"format": 1, "primary": "k20261126t080612-aaaa", "keys": [_entry(material="@@")]}
            ),
            "not base64",
        ),
        (
            with_document(
                {"format": 1, "primary": "k20261126t080612-aaaa", "keys": [_entry(created="x")]}
            ),
            "not an ISO date-time",
        ),
        (
            with_document(
                {
                    "format": 1,
                    "primary": "k20261126t080612-aaaa",
                    "keys": [_entry(retired=True)],
                }
            ),
            "still carries key material",
        ),
        (
            with_document(
                {
                    "format": 1,
                    "primary": "k20261126t080612-aaaa",
                    "keys": [_entry(retired=True, material="")],
                }
            ),
            "primary key 'k20261126t080612-aaaa' is retired",
        ),
        (
            with_document({"format": 1, "primary": "Bad Id!", "keys": [_entry("Bad Id!")]}),
            "invalid key id",
        ),
        (with_document({"format": 1, "primary": "x", "keys": []}), "no keys"),
    ],
    ids=[
        "missing-entry",
        "not-json",
        "not-object",
        "format",
        "no-primary",
        "primary-missing",
        "key-length",
        "duplicate",
        "material-not-base64",
        "created",
        "retired-with-material",
        "retired-primary",
        "key-id",
        "empty",
    ],
)
def test_stored_form_is_validated(data: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidKeyRing) as err:
        KeyRing.from_secret_data(data)
    assert message in str(err.value)
    assert _material() not in str(err.value)


def test_constructor_validates_too() -> None:
    key = Key("k1", b"\x02" * KEY_BYTES, NOW)
    with pytest.raises(InvalidKeyRing, match="duplicate"):
        KeyRing([key, key], "k1")
    with pytest.raises(InvalidKeyRing, match="16 bytes"):
        Key("k2", b"\x02" * 16, NOW)
    with pytest.raises(InvalidKeyRing, match="time zone"):
        Key("k3", b"\x02" * KEY_BYTES, NOW.replace(tzinfo=None))


def test_repr_hides_key_material() -> None:
    ring = KeyRing.generate(NOW).with_new_primary(NOW)
    for key in ring.keys:
        for shown in (repr(ring), repr(key), str(key), repr(ring.keys)):
            assert key.id in shown
            assert repr(key.material) not in shown
            assert key.material.hex() not in shown
            assert base64.b64encode(key.material).decode() not in shown


def test_token_secret_names_stay_valid_and_distinct() -> None:
    from calsync.controllers.tokens import token_secret_name

    assert token_secret_name("alice-work") == "alice-work-calsync-tokens"
    long_a = "a" * 200 + "." + "b" * 52  # 253 characters, the longest object name
    long_b = "a" * 200 + "." + "c" * 52
    for name in (long_a, long_b, "x" * 237 + "-" + "y" * 15):
        shortened = token_secret_name(name)
        assert len(shortened) <= 253
        assert shortened.endswith("-calsync-tokens")
        assert ".-" not in shortened and "--calsync" not in shortened
    assert token_secret_name(long_a) != token_secret_name(long_b)


def test_stored_tokens_repr_redacts_tokens() -> None:
    from calsync.controllers.tokens import StoredTokens

    tokens = StoredTokens("1//refresh-SECRET", "ya29.access-SECRET", 1.5, "calendar")
    assert "SECRET" not in repr(tokens) and "SECRET" not in str(tokens)
    assert "calendar" in repr(tokens) and "1.5" in repr(tokens)


def test_granted_tokens_are_kept_only_with_a_refresh_token() -> None:
    from calsync.controllers.tokens import StoredTokens
    from calsync.providers.oauth import TokenSet

    issued = TokenSet("ya29.access", "1//refresh", 1.5, "calendar")
    assert StoredTokens.granted(issued) == StoredTokens(
        "1//refresh", "ya29.access", 1.5, "calendar"
    )
    assert StoredTokens.granted(TokenSet("ya29.access", None, 1.5, "calendar")) is None
