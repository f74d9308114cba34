"""OAuth 2.0 for the providers that use it (Google, Microsoft): consent URLs, PKCE, tokens.

Both providers follow RFC 6749 with PKCE (RFC 7636): the gateway sends the user to the
provider's authorization endpoint with an S256 code challenge, the provider redirects back with
a code, and the code plus the verifier buys an access token and a refresh token. Afterwards the
refresh token buys new access tokens. Microsoft hands out a new refresh token on every refresh
and the old one eventually stops working, so every refresh reports the new `TokenSet` to
`on_refresh`, whose owner stores it (encrypted) before the token is used.

Failures are mapped to the provider errors the engine and the controllers understand:
`invalid_grant` (revoked, expired, or inactive refresh token) is `InvalidGrant`, which is not
retried: the connection needs the user's consent again. Token values never appear in messages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

from calsync.providers.base import (
    AuthenticationFailed,
    InvalidGrant,
    ProviderError,
    RateLimited,
)
from calsync.providers.rest import parse_retry_after

# Refresh this long before the provider's stated expiry, so a token never dies mid-request.
EXPIRY_SKEW = 60.0


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None  # epoch seconds
    scope: str | None = None

    def expired(self, now: float, skew: float = EXPIRY_SKEW) -> bool:
        return self.expires_at is not None and now >= self.expires_at - skew


@dataclass(frozen=True, slots=True)
class OAuthClient:
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str
    authorize_url: str
    scopes: tuple[str, ...]


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge) pair."""
    verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43..128
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def authorization_url(
    client: OAuthClient,
    *,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The provider URL the user's browser is sent to for consent."""
    params = {
        "client_id": client.client_id,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": " ".join(client.scopes),
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        **(extra or {}),
    }
    separator = "&" if "?" in client.authorize_url else "?"
    return client.authorize_url + separator + urlencode(params)


class OAuthError(ProviderError):
    """The token endpoint refused a request for a reason other than the grant or a rate limit."""

    retryable = False
    reason = "OAuthError"


async def _token_request(
    http: httpx.AsyncClient, client: OAuthClient, form: dict[str, str]
) -> TokenSet:
    form = {**form, "client_id": client.client_id, "client_secret": client.client_secret}
    try:
        response = await http.post(
            client.token_url, data=form, headers={"Accept": "application/json"}
        )
    except httpx.TransportError as exc:
        raise ProviderError(f"token endpoint unreachable: {type(exc).__name__}") from None
    body: dict[str, Any]
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        body = {}
    if response.is_success:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise OAuthError("token endpoint answered without an access_token")
        refresh = body.get("refresh_token")
        expires_in = body.get("expires_in")
        expires_at = None
        if isinstance(expires_in, (int, float, str)):
            try:
                expires_at = time.time() + float(expires_in)
            except ValueError:
                expires_at = None
        scope = body.get("scope")
        return TokenSet(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=expires_at,
            scope=scope if isinstance(scope, str) else None,
        )
    error = str(body.get("error") or f"HTTP {response.status_code}")
    # error_description is the provider's prose (Microsoft puts its AADSTS code first); it never
    # carries the token, so it is safe to show.
    description = str(body.get("error_description") or "").splitlines()[0:1]
    detail = f"{error}: {description[0]}" if description else error
    if error == "invalid_grant":
        raise InvalidGrant(f"the refresh token or code was refused ({detail})")
    if error in ("invalid_client", "unauthorized_client"):
        raise AuthenticationFailed(f"the OAuth client was refused ({detail})")
    if response.status_code == 429 or response.status_code >= 500:
        if response.status_code in (429, 503):
            raise RateLimited(
                f"token endpoint throttled ({detail})",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        raise ProviderError(f"token endpoint failed ({detail})")
    raise OAuthError(f"token request refused ({detail})")


async def exchange_code(
    http: httpx.AsyncClient,
    client: OAuthClient,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
) -> TokenSet:
    """Trade an authorization code (and its PKCE verifier) for tokens."""
    return await _token_request(
        http,
        client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        },
    )


async def refresh_tokens(
    http: httpx.AsyncClient, client: OAuthClient, refresh_token: str
) -> TokenSet:
    """A new access token (and, at Microsoft, a new refresh token) for a refresh token."""
    tokens = await _token_request(
        http, client, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    if tokens.refresh_token is None:  # Google keeps the refresh token it issued with the code
        tokens = TokenSet(tokens.access_token, refresh_token, tokens.expires_at, tokens.scope)
    return tokens


class AccessTokens(Protocol):
    async def get(self) -> str:
        """A valid access token, refreshed first when it is about to expire."""
        ...

    async def refreshed(self, stale: str) -> str:
        """A new access token after the provider refused `stale` (a 401)."""
        ...


class StaticTokens:
    """A fixed access token: for tests, benchmarks and short-lived scripts."""

    def __init__(self, access_token: str) -> None:
        self._token = access_token

    async def get(self) -> str:
        return self._token

    async def refreshed(self, stale: str) -> str:
        raise AuthenticationFailed("the access token was refused and cannot be refreshed")


OnRefresh = Callable[[TokenSet], Awaitable[None]]
OnRefreshFailure = Callable[[ProviderError], None]


class RefreshingTokens:
    """Access tokens from a refresh token, refreshed once for all concurrent callers."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        client: OAuthClient,
        tokens: TokenSet,
        *,
        on_refresh: OnRefresh | None = None,
        on_failure: OnRefreshFailure | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._client = client
        self._tokens = tokens
        self._on_refresh = on_refresh
        self._on_failure = on_failure  # told of every refresh that failed (for the metrics)
        self._clock = clock
        self._lock = asyncio.Lock()
        self.refreshes = 0

    @property
    def tokens(self) -> TokenSet:
        return self._tokens

    async def get(self) -> str:
        if self._tokens.access_token and not self._tokens.expired(self._clock()):
            return self._tokens.access_token
        return await self._refresh(self._tokens.access_token)

    async def refreshed(self, stale: str) -> str:
        return await self._refresh(stale)

    async def _refresh(self, stale: str) -> str:
        async with self._lock:
            current = self._tokens
            if current.access_token != stale and not current.expired(self._clock()):
                return current.access_token  # another caller refreshed while we waited
            try:
                if current.refresh_token is None:
                    raise InvalidGrant("no refresh token is stored for this connection")
                fresh = await refresh_tokens(self._http, self._client, current.refresh_token)
            except ProviderError as exc:
                if self._on_failure is not None:
                    self._on_failure(exc)
                raise
            if self._on_refresh is not None:
                # Stored before use: a rotated refresh token must survive a crash right after.
                await self._on_refresh(fresh)
            self._tokens = fresh
            self.refreshes += 1
            return fresh.access_token
