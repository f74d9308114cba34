"""Build the provider object for a connection from its spec, its Secrets and its stored tokens.

CalDAV and iCloud take a username and password from the credentials Secret; a CalDAV connection
by `spec.caldav.domain` first asks DNS where its server is (RFC 6764, `caldav.srv`), and the URL
found meets the URL guard and the Secret's allowed host before the provider exists. Google and
Microsoft take OAuth tokens: the ones calsync stored encrypted (after consent, or after a
refresh rotated them) come first, else the refresh token of a pre-provisioned
`spec.oauth.tokenSecretRef`. Every refresh is written back encrypted before the new token is
used, so a rotated refresh token (Microsoft issues one on every refresh) survives a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from calsync.api import CalendarConnectionSpec
from calsync.controllers.credentials import discovered_host_refusal, refusal
from calsync.controllers.oauth_setup import OAUTH_PROVIDERS, OAuthSetupError, connection_client
from calsync.controllers.tokens import StoredTokens, TokenStoreError, TokenVault
from calsync.observability import metrics
from calsync.providers.base import (
    CalendarProvider,
    InvalidConfiguration,
    InvalidGrant,
    ProviderError,
    RateLimited,
)
from calsync.providers.caldav import CalDAVProvider, DavTransports
from calsync.providers.caldav.srv import Discovered, discover
from calsync.providers.google import GoogleProvider
from calsync.providers.microsoft import MicrosoftProvider
from calsync.providers.oauth import RefreshingTokens, TokenSet
from calsync.security.urlguard import check_url_async
from calsync.settings import Settings
from calsync.sync.budget import TokenBucket

log = logging.getLogger(__name__)


class ConsentMissing(InvalidConfiguration):
    """An OAuth connection has no tokens yet: its owner has to grant access first."""

    reason = "ConsentRequired"


class TokensUnreadable(InvalidConfiguration):
    reason = "TokenUnreadable"


class DiscoveredURLRefused(InvalidConfiguration):
    """DNS named a server the connection may not use (URL guard or the Secret's allowed host)."""

    reason = "DNSDiscoveryRefused"


async def discovered_url(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    settings: Settings,
) -> Discovered:
    """Where DNS says the connection's CalDAV server is, judged before any request to it.

    The Secret's allowed host is compared with the SRV target (the host the credentials would
    go to), and the URL guard checks the target's addresses, so the error names the DNS record
    that led there.
    """
    assert spec.caldav is not None and spec.caldav.domain is not None
    found = await discover(
        spec.caldav.domain,
        allow_insecure_http=spec.caldav.allow_insecure_http,
        nameservers=settings.dns_nameservers,
        lifetime=settings.provider_timeout,
    )
    how = f"the DNS SRV record {found.service}"
    refused = discovered_host_refusal(spec, secrets, found.host, how)
    if refused is not None:
        error = DiscoveredURLRefused(refused[1])
        error.reason = refused[0]
        raise error
    try:
        await check_url_async(
            found.url,
            allow_private=settings.allow_private_addresses,
            allow_insecure_http=spec.caldav.allow_insecure_http,
        )
    except InvalidConfiguration as exc:
        raise DiscoveredURLRefused(
            f"{how} points at {found.url}, which is refused: {exc}"
        ) from None
    log.info("spec.caldav.domain %s: %s", found.domain, found.describe())
    return found


@dataclass
class ProviderDeps:
    """What building providers needs beyond one connection's spec and Secrets."""

    settings: Settings
    vault: TokenVault | None = None
    http: httpx.AsyncClient | None = None  # for token refreshes; shared by all connections
    # Connection pools shared by the CalDAV and iCloud providers (None: each builds its own).
    # The owner closes them after the last provider using them.
    dav_transports: DavTransports | None = None


async def stored_tokens(
    vault: TokenVault | None,
    body: Mapping[str, Any],
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
) -> StoredTokens | None:
    """The connection's tokens: calsync's encrypted copy, else the user's token Secret."""
    if vault is not None:
        try:
            stored = await vault.load(body)
        except TokenStoreError as exc:
            error = TokensUnreadable(str(exc))
            error.reason = exc.reason
            raise error from None
        if stored is not None:
            return stored
    ref = spec.oauth.token_secret_ref if spec.oauth is not None else None
    if ref is not None:
        data = secrets.get(ref.name) or {}
        refresh = data.get("refresh_token", b"").decode(errors="replace").strip()
        if refresh:
            return StoredTokens(refresh_token=refresh)
    return None


async def build_provider(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    *,
    budget: TokenBucket | None,
    deps: ProviderDeps,
    body: Mapping[str, Any] | None = None,
    tokens: StoredTokens | None = None,
) -> CalendarProvider:
    """The provider for a connection; OAuth providers use `tokens` when the caller has
    already looked them up (`stored_tokens`), else look them up here."""
    settings = deps.settings
    refused = refusal(spec, secrets)
    if refused is not None:  # the callers judged it already; this guards every path
        raise InvalidConfiguration(refused[1])
    if spec.provider in ("caldav", "icloud"):
        assert spec.caldav is not None  # the CRD's rules guarantee it
        ref = spec.caldav.credentials_secret_ref
        data = secrets.get(ref.name) if ref is not None else None
        if data is None:
            raise InvalidConfiguration(f"Secret {ref.name if ref else '?'!r} is missing")
        found = (
            await discovered_url(spec, secrets, settings)
            if spec.caldav_domain is not None
            else None
        )
        provider = CalDAVProvider(
            found.url if found is not None else spec.caldav_url or "",
            data["username"].decode(),
            data["password"].decode(),
            icloud=spec.provider == "icloud",
            allow_insecure_http=spec.caldav.allow_insecure_http,
            allow_private_addresses=settings.allow_private_addresses,
            rate_limiter=budget,
            timeout=settings.provider_timeout,
            transports=deps.dav_transports,
            max_object_size=settings.max_object_size,
            max_response_size=settings.max_response_size,
        )
        provider.discovered = found
        return provider
    if spec.provider in OAUTH_PROVIDERS:
        if body is None or deps.http is None:
            raise InvalidConfiguration("OAuth providers need the connection and an HTTP client")
        try:
            client = connection_client(spec, secrets, settings)
        except OAuthSetupError as exc:
            raise InvalidConfiguration(str(exc)) from None
        stored = tokens or await stored_tokens(deps.vault, body, spec, secrets)
        if stored is None:
            raise ConsentMissing(
                "no refresh token yet: the account owner must grant access through "
                "status.authorizationURL, or set spec.oauth.tokenSecretRef"
            )
        access = RefreshingTokens(
            deps.http,
            client,
            TokenSet(
                access_token=stored.access_token or "",
                refresh_token=stored.refresh_token,
                expires_at=stored.expires_at if stored.access_token else 0.0,
                scope=stored.scope,
            ),
            on_refresh=_saver(deps.vault, body, spec.provider),
            on_failure=_refresh_failed(spec.provider),
        )
        if spec.provider == "google":
            return GoogleProvider(
                settings.google_api_url,
                access,
                budget=budget,
                timeout=settings.provider_timeout,
                max_object_size=settings.max_object_size,
                max_response_size=settings.max_response_size,
            )
        return MicrosoftProvider(
            settings.microsoft_graph_url,
            access,
            budget=budget,
            timeout=settings.provider_timeout,
            max_object_size=settings.max_object_size,
            max_response_size=settings.max_response_size,
        )
    raise InvalidConfiguration(f"provider {spec.provider!r} is not supported")


def _saver(vault: TokenVault | None, body: Mapping[str, Any], provider: str) -> Any:
    async def save(tokens: TokenSet) -> None:
        metrics.TOKEN_REFRESHES.labels(provider, "ok").inc()
        stored = StoredTokens.granted(tokens)
        if vault is None or stored is None:
            return
        await vault.save(body, stored)

    return save


def _refresh_failed(provider: str) -> Callable[[ProviderError], None]:
    def count(exc: ProviderError) -> None:
        if isinstance(exc, InvalidGrant):
            result = "invalid_grant"
        elif isinstance(exc, RateLimited):
            result = "throttled"
        else:
            result = "error"
        metrics.TOKEN_REFRESHES.labels(provider, result).inc()

    return count
