"""Per-provider OAuth settings: endpoints, scopes, consent parameters, and a connection's client.

Scopes are the ones the README asks users to grant: Google `calendar.readonly` and
`calendar.events`; Microsoft `Calendars.ReadWrite` and `User.Read`, plus `offline_access`,
without which the identity platform issues no refresh token.
"""

from __future__ import annotations

from collections.abc import Mapping

from calsync.api import CalendarConnectionSpec
from calsync.providers.oauth import OAuthClient
from calsync.settings import Settings

OAUTH_PROVIDERS = ("google", "microsoft")

GOOGLE_SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
)
MICROSOFT_SCOPES = (
    "offline_access",
    "https://graph.microsoft.com/Calendars.ReadWrite",
    "https://graph.microsoft.com/User.Read",
)


class OAuthSetupError(ValueError):
    """The connection's OAuth client cannot be built; the message says what is missing."""


def oauth_client(
    provider: str, settings: Settings, client_id: str, client_secret: str
) -> OAuthClient:
    if provider == "google":
        return OAuthClient(
            client_id=client_id,
            client_secret=client_secret,
            token_url=settings.google_token_url,
            authorize_url=settings.google_authorize_url,
            scopes=GOOGLE_SCOPES,
        )
    if provider == "microsoft":
        return OAuthClient(
            client_id=client_id,
            client_secret=client_secret,
            token_url=settings.microsoft_token_url,
            authorize_url=settings.microsoft_authorize_url,
            scopes=MICROSOFT_SCOPES,
        )
    raise OAuthSetupError(f"provider {provider!r} does not use OAuth")


def consent_parameters(provider: str, owner: str | None) -> dict[str, str]:
    """Extra authorization-request parameters: ask for a refresh token, hint the account."""
    extra: dict[str, str] = {}
    if provider == "google":
        # offline + consent: Google returns a refresh token only then, also on a second consent.
        extra.update(access_type="offline", prompt="consent", include_granted_scopes="true")
    elif provider == "microsoft":
        extra.update(response_mode="query", prompt="select_account")
    if owner and "@" in owner:
        extra["login_hint"] = owner
    return extra


def redirect_uri(settings: Settings, provider: str) -> str:
    return f"{settings.public_gateway_url}/auth/{provider}/callback"


def connection_client(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    settings: Settings,
) -> OAuthClient:
    """The OAuth client named by `spec.oauth.clientSecretRef`, from the Secrets' data."""
    if spec.oauth is None:
        raise OAuthSetupError("spec.oauth is missing")
    name = spec.oauth.client_secret_ref.name
    data = secrets.get(name)
    if data is None:
        raise OAuthSetupError(f"Secret {name!r} named in spec.oauth.clientSecretRef is missing")
    try:
        client_id = data["client_id"].decode().strip()
        client_secret = data["client_secret"].decode().strip()
    except (KeyError, UnicodeDecodeError):
        raise OAuthSetupError(
            f"Secret {name!r} needs the keys 'client_id' and 'client_secret' (UTF-8)"
        ) from None
    if not client_id or not client_secret:
        raise OAuthSetupError(f"Secret {name!r} has an empty client_id or client_secret")
    return oauth_client(spec.provider, settings, client_id, client_secret)
