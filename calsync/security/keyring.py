"""The token keyring: AES-256-GCM encryption of provider tokens under rotating keys.

OAuth refresh tokens are the keys to a user's calendars, so calsync never writes them to the API
server in plaintext: every token is sealed with AES-256-GCM under the ring's primary key before it
goes into a Secret, and the Secret alone (or an etcd backup of it) gives nothing away.

A ciphertext names the key that sealed it, so a ring can hold several keys at once: the newest
(the primary) encrypts, every live key decrypts. That is what makes rotation possible without
downtime: add a new primary, re-encrypt at leisure, and only then retire the old key. Retiring
wipes the key's material and keeps a tombstone (id, creation time), so a ciphertext sealed with a
retired key fails with a message that says so, and an id is never handed out twice.

The associated data binds each ciphertext to one connection (namespace, name, uid) and one field
("refresh_token", "access_token"): a ciphertext copied into another connection's Secret, or into
another field, or left behind by a deleted connection of the same name, does not decrypt.

Text format (base64url, no padding) of the bytes::

    b"csk1" | u8 len(key_id) | key_id (ASCII) | nonce (12) | ciphertext + tag (16)

Pure code: no Kubernetes here. `calsync.controllers.tokens` stores the ring and the sealed tokens
in Secrets.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"csk1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
AAD_PREFIX = b"calsync.io/token/v1"

#: The one entry of the keyring Secret: the whole ring as JSON, so it changes atomically.
SECRET_KEY = "keyring.json"  # noqa: S105 - an entry name
RING_FORMAT = 1

_KEY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class KeyringError(Exception):
    """Base of the keyring's errors. Messages never contain key material or plaintext."""


class InvalidKeyRing(KeyringError):
    """A ring (or its stored form) is inconsistent: wrong key length, no primary, duplicates."""


class UnknownKey(KeyringError):
    """A ciphertext names a key this ring does not hold (or holds only as a retired tombstone)."""

    def __init__(self, key_id: str, *, retired: bool = False) -> None:
        self.key_id = key_id
        self.retired = retired
        if retired:
            message = f"key {key_id!r} has been retired: its material is gone from the keyring"
        else:
            message = f"key {key_id!r} is not in the keyring"
        super().__init__(message)


class DecryptionError(KeyringError):
    """A ciphertext is corrupt, or was sealed for a different connection or field."""


@dataclass(frozen=True)
class TokenContext:
    """The connection a token belongs to; part of the associated data of its ciphertext."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Key:
    """One AES-256 key. A retired key has no material left (b"")."""

    id: str
    material: bytes = field(repr=False)
    created: dt.datetime
    retired: bool = False

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.id):
            raise InvalidKeyRing(
                f"invalid key id {self.id!r}: lower-case letters, digits, '.', '_' and '-', "
                "at most 63 characters"
            )
        if self.retired:
            if self.material:
                raise InvalidKeyRing(f"retired key {self.id!r} still carries key material")
        elif len(self.material) != KEY_BYTES:
            raise InvalidKeyRing(
                f"key {self.id!r} has {len(self.material)} bytes of material; AES-256 needs "
                f"{KEY_BYTES}"
            )
        if self.created.tzinfo is None:
            raise InvalidKeyRing(f"key {self.id!r}: creation time must carry a time zone")

    @classmethod
    def new(cls, now: dt.datetime, taken: Iterable[str] = ()) -> Key:
        """A fresh random key whose id sorts by creation time and differs from `taken`."""
        used = set(taken)
        stamp = _utc(now).strftime("k%Y%m%dt%H%M%S")
        while True:
            key_id = f"{stamp}-{secrets.token_hex(2)}"
            if key_id not in used:
                return cls(key_id, AESGCM.generate_key(bit_length=256), _utc(now))


def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError("a time zone aware datetime is needed")
    return when.astimezone(dt.UTC).replace(microsecond=0)


def _aad(header: bytes, ctx: TokenContext, field_name: str) -> bytes:
    """Associated data: the header plus each context part, length-prefixed (no ambiguity)."""
    parts = [AAD_PREFIX, header]
    parts += [s.encode() for s in (ctx.namespace, ctx.name, ctx.uid, field_name)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _decode(text: str) -> bytes:
    raw = text.strip()
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError("not a calsync ciphertext: the text is not base64url") from exc


def _split(blob: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(key id, header, nonce, ciphertext + tag) of a sealed token, or DecryptionError."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise DecryptionError("not a calsync ciphertext (unknown format or version)")
    id_len = blob[len(MAGIC)]
    id_end = len(MAGIC) + 1 + id_len
    if len(blob) < id_end + NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("the ciphertext is truncated")
    try:
        key_id = blob[len(MAGIC) + 1 : id_end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecryptionError("the ciphertext's key id is corrupt") from exc
    return key_id, blob[:id_end], blob[id_end : id_end + NONCE_BYTES], blob[id_end + NONCE_BYTES :]


def ciphertext_key_id(text: str) -> str:
    """The id of the key that sealed `text`, read from its header (DecryptionError if malformed)."""
    return _split(_decode(text))[0]


class KeyRing:
    """An immutable set of keys, one of them the primary. Changes return a new ring."""

    def __init__(self, keys: Iterable[Key], primary_id: str) -> None:
        self._keys: dict[str, Key] = {}
        for key in keys:
            if key.id in self._keys:
                raise InvalidKeyRing(f"duplicate key id {key.id!r} in the keyring")
            self._keys[key.id] = key
        if not self._keys:
            raise InvalidKeyRing("the keyring holds no keys")
        primary = self._keys.get(primary_id)
        if primary is None:
            raise InvalidKeyRing(f"the primary key {primary_id!r} is not in the keyring")
        if primary.retired:
            raise InvalidKeyRing(f"the primary key {primary_id!r} is retired")
        self._primary = primary

    # -- reading ---------------------------------------------------------------------------

    @property
    def primary(self) -> Key:
        return self._primary

    @property
    def keys(self) -> tuple[Key, ...]:
        """All keys, tombstones included, oldest first."""
        return tuple(sorted(self._keys.values(), key=lambda k: (k.created, k.id)))

    def get(self, key_id: str) -> Key | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        ids = ", ".join(k.id + (" (retired)" if k.retired else "") for k in self.keys)
        return f"KeyRing(primary={self._primary.id!r}, keys=[{ids}])"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return self._keys == other._keys and self._primary.id == other._primary.id

    __hash__ = None  # type: ignore[assignment]

    # -- sealing ---------------------------------------------------------------------------

    def encrypt(self, plaintext: str, ctx: TokenContext, field: str) -> str:
        """Seal `plaintext` under the primary key for one connection's `field`."""
        key_id = self._primary.id.encode("ascii")
        header = MAGIC + bytes([len(key_id)]) + key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._primary.material).encrypt(
            nonce, plaintext.encode("utf-8"), _aad(header, ctx, field)
        )
        return base64.urlsafe_b64encode(header + nonce + sealed).rstrip(b"=").decode("ascii")

    def key_id_of(self, text: str) -> str:
        """The id of the key that sealed `text` (no decryption; DecryptionError if malformed)."""
        return ciphertext_key_id(text)

    def decrypt(self, text: str, ctx: TokenContext, field: str) -> str:
        """Open a sealed token; UnknownKey or DecryptionError when that is impossible."""
        key_id, header, nonce, sealed = _split(_decode(text))
        key = self._keys.get(key_id)
        if key is None or key.retired:
            raise UnknownKey(key_id, retired=key is not None)
        try:
            plain = AESGCM(key.material).decrypt(nonce, sealed, _aad(header, ctx, field))
        except InvalidTag:
            raise DecryptionError(
                f"the {field} ciphertext does not decrypt for connection {ctx} (uid {ctx.uid}) "
                f"with key {key_id!r}: it was encrypted for a different connection or field, "
                "or it is corrupt"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # authenticated, so only a sealing bug could get here
            raise DecryptionError(f"the {field} plaintext is not UTF-8") from None

    # -- changing --------------------------------------------------------------------------

    @classmethod
    def generate(cls, now: dt.datetime) -> KeyRing:
        """A new ring with one fresh key."""
        key = Key.new(now)
        return cls([key], key.id)

    def with_new_primary(self, now: dt.datetime) -> KeyRing:
        """This ring plus a fresh key that becomes the primary; the old keys stay to decrypt."""
        key = Key.new(now, taken=self._keys)
        return KeyRing([*self._keys.values(), key], key.id)

    def without(self, key_id: str) -> KeyRing:
        """This ring with `key_id`'s material wiped (a retired tombstone stays). Not the primary."""
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKey(key_id)
        if key_id == self._primary.id:
            raise InvalidKeyRing(
                f"key {key_id!r} is the primary key and cannot be retired; rotate first"
            )
        if key.retired:
            return self
        tombstone = replace(key, material=b"", retired=True)
        return KeyRing(
            [tombstone if k.id == key_id else k for k in self._keys.values()], self._primary.id
        )

    # -- storage ---------------------------------------------------------------------------

    def to_secret_data(self) -> dict[str, str]:
        """The keyring Secret's data (plain strings; the caller base64-encodes them)."""
        document = {
            "format": RING_FORMAT,
            "primary": self._primary.id,
            "keys": [
                {
                    "id": key.id,
                    "created": key.created.isoformat().replace("+00:00", "Z"),
                    "retired": key.retired,
                    "material": base64.b64encode(key.material).decode("ascii"),
                }
                for key in self.keys
            ],
        }
        return {SECRET_KEY: json.dumps(document, indent=1)}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> KeyRing:
        """Parse and check the keyring Secret's decoded data; InvalidKeyRing says what is wrong."""
        raw = data.get(SECRET_KEY)
        if raw is None:
            raise InvalidKeyRing(f"the keyring Secret has no {SECRET_KEY!r} entry")
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidKeyRing(
                f"{SECRET_KEY} is not valid JSON ({exc.__class__.__name__})"
            ) from None
        if not isinstance(document, dict):
            raise InvalidKeyRing(f"{SECRET_KEY} must be a JSON object")
        if document.get("format") != RING_FORMAT:
            raise InvalidKeyRing(
                f"{SECRET_KEY} has format {document.get('format')!r}; this calsync reads format "
                f"{RING_FORMAT}"
            )
        primary = document.get("primary")
        if not isinstance(primary, str) or not primary:
            raise InvalidKeyRing(f"{SECRET_KEY} names no primary key")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise InvalidKeyRing(f"{SECRET_KEY} has no list of keys")
        keys = [_key_from_json(entry, n) for n, entry in enumerate(entries)]
        return cls(keys, primary)


def _key_from_json(entry: object, index: int) -> Key:
    if not isinstance(entry, dict):
        raise InvalidKeyRing(f"key #{index} is not a JSON object")
    key_id = entry.get("id")
    if not isinstance(key_id, str):
        raise InvalidKeyRing(f"key #{index} has no id")
    where = f"key {key_id!r}"
    try:
        material = base64.b64decode(str(entry.get("material", "")), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyRing(f"{where}: its material is not base64") from None
    try:
        created = dt.datetime.fromisoformat(str(entry.get("created", "")).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidKeyRing(f"{where}: its creation time is not an ISO date-time") from None
    retired = entry.get("retired", False)
    if not isinstance(retired, bool):
        raise InvalidKeyRing(f"{where}: 'retired' must be true or false")
    return Key(key_id, material, created, retired)
