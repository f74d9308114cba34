"""The secrets providers echo back with every push notification, derived instead of stored.

Google echoes a channel's `token` in `X-Goog-Channel-Token`; Graph echoes a subscription's
`clientState` in every notification. Whoever knows the value can forge notifications for that
channel, so it must not sit in a WebhookSubscription's status (readable by anyone allowed to
list them). Both are therefore an HMAC, under a key derived from the token keyring (the
`calsync-keyring` Secret), of what identifies the channel:

- Google: the channel id (chosen by us, unique per channel, known from the notification's
  `X-Goog-Channel-ID` header);
- Graph: the WebhookSubscription's UID (the subscription id is only known after creation,
  and `clientState` must be sent with the creation).

A value reads `<key id>.<base64url HMAC-SHA256>`: at most 63 + 1 + 43 = 107 characters, inside
Google's 256 and Graph's 128. The key id says which keyring key minted it, so a value minted
before a rotation still verifies while its key is in the ring (not retired). Verification
recomputes the value and compares in constant time; nothing is looked up but the key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from calsync.security.keyring import KeyRing

GOOGLE_CHANNEL = b"calsync push v1: google channel token"
GRAPH_CLIENT_STATE = b"calsync push v1: graph clientState"


@functools.lru_cache(maxsize=64)
def _subkey(material: bytes, purpose: bytes) -> bytes:
    # A key of its own per purpose: the AES key itself never doubles as an HMAC key.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(material)


def _mac(material: bytes, purpose: bytes, subject: str) -> str:
    digest = hmac.new(_subkey(material, purpose), subject.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _mint(ring: KeyRing, purpose: bytes, subject: str) -> str:
    key = ring.primary
    return f"{key.id}.{_mac(key.material, purpose, subject)}"


def _verify(ring: KeyRing, purpose: bytes, subject: str, presented: str | None) -> bool:
    if not presented or not subject:
        return False
    key_id, dot, _ = presented.partition(".")
    key = ring.get(key_id) if dot else None
    if key is None or key.retired or not key.material:
        return False
    expected = f"{key.id}.{_mac(key.material, purpose, subject)}"
    return hmac.compare_digest(expected.encode(), presented.encode())


def channel_token(ring: KeyRing, channel_id: str) -> str:
    """The `token` to register a Google watch channel with."""
    return _mint(ring, GOOGLE_CHANNEL, channel_id)


def verify_channel_token(ring: KeyRing, channel_id: str, token: str | None) -> bool:
    """Whether `token` is the one minted for `channel_id` (constant time)."""
    return _verify(ring, GOOGLE_CHANNEL, channel_id, token)


def client_state(ring: KeyRing, subscription_uid: str) -> str:
    """The `clientState` to create a Graph subscription with."""
    return _mint(ring, GRAPH_CLIENT_STATE, subscription_uid)


def verify_client_state(ring: KeyRing, subscription_uid: str, state: str | None) -> bool:
    """Whether `state` is the one minted for the WebhookSubscription `subscription_uid`."""
    return _verify(ring, GRAPH_CLIENT_STATE, subscription_uid, state)
