"""Consent links and OAuth `state`: sealed with the token keyring, bound to one connection.

Two values travel through browsers and providers during consent, and both are sealed with
AES-256-GCM (the keyring) with the connection's namespace, name and uid as associated data:

- The consent link the operator publishes in `status.authorizationURL`
  (`/auth/{provider}/start?c=...`). Whoever may read the connection may start its consent; the
  link names the connection and expires (`consent_link_ttl`), and a forged or edited one does
  not open.
- The OAuth `state`, created when the flow starts: it carries the PKCE verifier (sealed, so the
  provider and the browser never see it), a nonce that must match the cookie set on the same
  browser (no login CSRF: a code minted in someone else's flow is refused), and a short
  deadline (`consent_flow_ttl`). The gateway keeps no server-side session, so any gateway
  replica can finish a flow another one started.

The clear part of each value only says which connection it belongs to; it is what picks the
associated data, so editing it makes the sealed part fail to open.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from calsync.security.keyring import TokenContext

LINK_FIELD = "consent_link"
STATE_FIELD = "oauth_state"


class Sealer(Protocol):
    def encrypt(self, plaintext: str, ctx: TokenContext, field: str) -> str: ...

    def decrypt(self, text: str, ctx: TokenContext, field: str) -> str: ...


class ConsentError(ValueError):
    """A consent link or state that cannot be used; the message is shown to the user."""


@dataclass(frozen=True)
class ConnectionRef:
    namespace: str
    name: str
    uid: str

    @property
    def context(self) -> TokenContext:
        return TokenContext(namespace=self.namespace, name=self.name, uid=self.uid)

    def encode(self) -> str:
        raw = json.dumps([self.namespace, self.name, self.uid], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> ConnectionRef:
        try:
            padded = text + "=" * (-len(text) % 4)
            values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ConsentError("the link is damaged: it does not name a connection") from None
        if (
            not isinstance(values, list)
            or len(values) != 3
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise ConsentError("the link is damaged: it does not name a connection")
        return cls(*values)


def _split(token: str) -> tuple[ConnectionRef, str]:
    clear, dot, sealed = token.partition(".")
    if not dot or not sealed:
        raise ConsentError("the link is damaged or incomplete")
    return ConnectionRef.decode(clear), sealed


def _open(sealer: Sealer, ref: ConnectionRef, sealed: str, field: str) -> dict[str, Any]:
    try:
        payload = json.loads(sealer.decrypt(sealed, ref.context, field))
    except Exception:
        # The keyring's own message would only say "does not decrypt"; for the user the cause
        # is an edited, foreign or outdated link.
        raise ConsentError(
            "the link was not issued for this connection, was altered, or its key was retired"
        ) from None
    if not isinstance(payload, dict):
        raise ConsentError("the link is damaged")
    return payload


def make_link_token(sealer: Sealer, ref: ConnectionRef, provider: str, expires: float) -> str:
    sealed = sealer.encrypt(
        json.dumps({"p": provider, "exp": int(expires)}), ref.context, LINK_FIELD
    )
    return f"{ref.encode()}.{sealed}"


def consent_link(
    gateway_url: str, sealer: Sealer, ref: ConnectionRef, provider: str, expires: float
) -> str:
    """The URL published in `status.authorizationURL`; `exp` is repeated in clear for display."""
    query = urlencode({"c": make_link_token(sealer, ref, provider, expires), "exp": int(expires)})
    return f"{gateway_url.rstrip('/')}/auth/{provider}/start?{query}"


def open_link_token(sealer: Sealer, token: str, provider: str, now: float) -> ConnectionRef:
    ref, sealed = _split(token)
    payload = _open(sealer, ref, sealed, LINK_FIELD)
    if payload.get("p") != provider:
        raise ConsentError(f"this link is for provider {payload.get('p')!r}, not {provider!r}")
    if not isinstance(payload.get("exp"), int) or payload["exp"] < now:
        raise ConsentError(
            "this consent link has expired: read the current one from the connection's "
            "status.authorizationURL"
        )
    return ref


@dataclass(frozen=True)
class FlowState:
    ref: ConnectionRef
    provider: str
    nonce: str
    verifier: str
    expires: int


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def make_state(sealer: Sealer, flow: FlowState) -> str:
    payload = {"p": flow.provider, "n": flow.nonce, "v": flow.verifier, "exp": flow.expires}
    sealed = sealer.encrypt(json.dumps(payload), flow.ref.context, STATE_FIELD)
    return f"{flow.ref.encode()}.{sealed}"


def open_state(sealer: Sealer, state: str, provider: str, now: float) -> FlowState:
    ref, sealed = _split(state)
    payload = _open(sealer, ref, sealed, STATE_FIELD)
    expires = payload.get("exp")
    nonce, verifier = payload.get("n"), payload.get("v")
    if payload.get("p") != provider or not isinstance(nonce, str) or not isinstance(verifier, str):
        raise ConsentError("the consent answer does not belong to this provider's flow")
    if not isinstance(expires, int) or expires < now:
        raise ConsentError(
            "the consent took too long and expired: start again from the connection's "
            "status.authorizationURL"
        )
    return FlowState(ref, provider, nonce, verifier, expires)
