"""Google's OAuth 2.0 endpoints, simulated: consent, authorization codes, tokens.

`GET /o/oauth2/v2/auth` does not show a consent screen: it consents at once as the user named by
`login_hint`, or as the simulator's default consenting user, and redirects back with a code (or
with `error=access_denied` when the admin made consent deny). An unknown client or an
unregistered redirect URI gets an error page and no redirect, as at Google, since redirecting
there would hand the code to an unverified address.

`POST /token` implements the two grants calsync uses, with the checks a real server makes:
client credentials (form fields or HTTP Basic), codes that are single-use and expire after ten
minutes, the redirect URI bound to the code, and PKCE (RFC 7636; S256 or plain). A code
presented twice is refused and the tokens issued for it are revoked (RFC 6749 section 4.1.2).
Refresh tokens are issued only for `access_type=offline`, and Google keeps the same refresh
token on refresh: the answer to a refresh carries none.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from calsync.testing.google.errors import GoogleError, OAuthError
from calsync.testing.google.model import Settings

CODE_TTL: Final = 600.0
DEFAULT_SCOPE: Final = "https://www.googleapis.com/auth/calendar"
_VERIFIER: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
READ_SCOPES: Final = frozenset(
    {
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.readonly",
        "https://www.googleapis.com/auth/calendar.events",
        "https://www.googleapis.com/auth/calendar.events.readonly",
    }
)
WRITE_SCOPES: Final = frozenset(
    {
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.events",
    }
)


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str]


@dataclass
class CodeGrant:
    code: str
    client_id: str
    user: str
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str
    offline: bool
    expires_at: float
    used: bool = False
    issued: list[str] = field(default_factory=list)  # tokens bought with it (revoked on reuse)


@dataclass
class RefreshGrant:
    token: str
    client_id: str
    user: str
    scope: str
    created: float
    expires_at: float | None = None  # apps in "Testing" status: 7 days
    revoked: bool = False


@dataclass
class AccessGrant:
    token: str
    client_id: str
    user: str
    scope: str
    expires_at: float
    refresh_token: str | None = None
    revoked: bool = False

    def scopes(self) -> set[str]:
        return set(self.scope.split())


def verify_pkce(challenge: str, method: str, verifier: str | None) -> None:
    if not verifier:
        raise OAuthError("invalid_grant", "Missing code verifier.")
    if not _VERIFIER.fullmatch(verifier):
        raise OAuthError("invalid_grant", "Invalid code verifier.")
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    else:
        computed = verifier
    if not secrets.compare_digest(computed, challenge):
        raise OAuthError("invalid_grant", "Invalid code verifier.")


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


class AuthorizePageError(Exception):
    """The authorization endpoint shows an error page instead of redirecting."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


_CHALLENGE: Final = 'Bearer realm="https://accounts.google.com/"'


class OAuthServer:
    """Clients, codes and tokens; `authorize` and `token` are the two endpoints."""

    def __init__(
        self,
        clock: Callable[[], float],
        settings: Settings,
        known_user: Callable[[str], bool],
    ) -> None:
        self._clock = clock
        self._settings = settings
        self._known_user = known_user
        self.clients: dict[str, Client] = {}
        self._codes: dict[str, CodeGrant] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        self._access: dict[str, AccessGrant] = {}
        self.consent_user: str | None = None
        self.consent_deny = False

    # -- admin ---------------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
    ) -> dict[str, Any]:
        cid = client_id or (
            f"{secrets.randbelow(10**12):012d}-{secrets.token_hex(16)}.apps.googleusercontent.com"
        )
        secret = client_secret or "GOCSPX-" + secrets.token_urlsafe(21)
        uris = [str(u) for u in redirect_uris]
        for uri in uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"not a usable redirect URI: {uri!r}")
        self.clients[cid] = Client(cid, secret, uris)
        return {"client_id": cid, "client_secret": secret, "redirect_uris": uris}

    def set_consent(self, user: str | None = None, *, deny: bool = False) -> None:
        if user is not None:
            if not self._known_user(user):
                raise KeyError(f"no user {user!r}")
            self.consent_user = user
        self.consent_deny = deny

    def mint_refresh_token(self, user: str, client_id: str, scope: str = DEFAULT_SCOPE) -> str:
        if not self._known_user(user):
            raise KeyError(f"no user {user!r}")
        if client_id not in self.clients:
            raise KeyError(f"no client {client_id!r}")
        return self._new_refresh(user, client_id, scope).token

    def mint_access_token(
        self,
        user: str,
        client_id: str = "admin",
        scope: str = DEFAULT_SCOPE,
        ttl: float | None = None,
    ) -> str:
        if not self._known_user(user):
            raise KeyError(f"no user {user!r}")
        lifetime = ttl if ttl is not None else self._settings.access_token_ttl
        grant = AccessGrant(
            new_token("ya29.sim-"), client_id, user, scope, self._clock() + lifetime
        )
        self._access[grant.token] = grant
        return grant.token

    def issued_tokens(self) -> dict[str, list[str]]:
        """Every token value handed out so far, so tests can prove none of them leaks."""
        return {"access_tokens": sorted(self._access), "refresh_tokens": sorted(self._refresh)}

    def expire_access_tokens(self, user: str | None = None) -> int:
        count = 0
        now = self._clock()
        for grant in self._access.values():
            if (user is None or grant.user == user) and grant.expires_at > now:
                grant.expires_at = now
                count += 1
        return count

    def revoke_refresh_tokens(self, user: str, client_id: str | None = None) -> int:
        count = 0
        for grant in self._refresh.values():
            if grant.user == user and (client_id is None or grant.client_id == client_id):
                count += not grant.revoked
                grant.revoked = True
        for access in self._access.values():
            if access.user == user and (client_id is None or access.client_id == client_id):
                access.revoked = True
        return count

    def forget_user(self, user: str) -> None:
        self.revoke_refresh_tokens(user)

    def _new_refresh(self, user: str, client_id: str, scope: str) -> RefreshGrant:
        now = self._clock()
        ttl = self._settings.refresh_token_ttl
        grant = RefreshGrant(
            new_token("1//sim-"), client_id, user, scope, now, now + ttl if ttl else None
        )
        self._refresh[grant.token] = grant
        return grant

    def _new_access(
        self, user: str, client_id: str, scope: str, refresh: str | None
    ) -> AccessGrant:
        grant = AccessGrant(
            new_token("ya29.sim-"),
            client_id,
            user,
            scope,
            self._clock() + self._settings.access_token_ttl,
            refresh,
        )
        self._access[grant.token] = grant
        return grant

    # -- the API's side ------------------------------------------------------------------------

    def peek_user(self, authorization: str | None) -> str | None:
        """The user a bearer token belongs to, valid or not (for counters and faults)."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        grant = self._access.get(authorization[7:].strip())
        return grant.user if grant is not None else None

    def authenticate(self, authorization: str | None) -> AccessGrant:
        """The grant behind an Authorization header; 401 `required` / `authError` otherwise."""
        where = {"location": "Authorization", "locationType": "header"}
        if not authorization or authorization[:7].lower() != "bearer ":
            raise GoogleError(
                401,
                "required",
                "Login Required.",
                headers={"WWW-Authenticate": _CHALLENGE},
                extra=where,
            )
        grant = self._access.get(authorization[7:].strip())
        if grant is None or grant.revoked or grant.expires_at <= self._clock():
            raise GoogleError(
                401,
                "authError",
                "Invalid Credentials",
                headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
                extra=where,
            )
        if not grant.scopes() & READ_SCOPES:
            raise insufficient_scopes()
        return grant

    # -- the endpoints -------------------------------------------------------------------------

    def authorize(self, query: Mapping[str, str]) -> str:
        """The URL to redirect the browser to (with a code or an error); AuthorizePageError
        when the client or redirect URI cannot be trusted with a redirect."""
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            raise AuthorizePageError(400, "invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise AuthorizePageError(
                400,
                "redirect_uri_mismatch",
                "The redirect URI in the request does not match the ones authorized for the "
                "OAuth client.",
            )
        state = query.get("state")

        def back(**values: str) -> str:
            if state is not None:
                values["state"] = state
            glue = "&" if "?" in redirect_uri else "?"
            return redirect_uri + glue + urlencode(values)

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        scope = " ".join(query.get("scope", "").split())
        if not scope:
            return back(
                error="invalid_request", error_description="Missing required parameter: scope"
            )
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge is not None:
            if method not in ("S256", "plain"):
                return back(
                    error="invalid_request", error_description="Invalid code_challenge_method"
                )
            if not 43 <= len(challenge) <= 128:
                return back(error="invalid_request", error_description="Invalid code_challenge")
        elif method:
            return back(error="invalid_request", error_description="Missing code_challenge")
        hint = query.get("login_hint")
        user = hint if hint and self._known_user(hint) else self.consent_user
        if user is None or not self._known_user(user):
            raise AuthorizePageError(
                400, "no_user", "No user can consent: create one or set the consenting user."
            )
        if self.consent_deny:
            return back(error="access_denied")
        code = "4/sim-" + secrets.token_urlsafe(32)
        self._codes[code] = CodeGrant(
            code=code,
            client_id=client.client_id,
            user=user,
            redirect_uri=redirect_uri,
            scope=scope,
            challenge=challenge,
            method=method,
            offline=query.get("access_type") == "offline",
            expires_at=self._clock() + CODE_TTL,
        )
        return back(code=code, scope=scope)

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        """The token endpoint's answer; OAuthError with the RFC 6749 error otherwise."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if basic is not None:
            if client_id is not None and client_id != basic[0]:
                raise OAuthError("invalid_request", "Conflicting client credentials.")
            client_id, secret = basic
        if not client_id:
            raise OAuthError("invalid_request", "Missing required parameter: client_id")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "The OAuth client was not found.", 401)
        if not secret or not secrets.compare_digest(secret, client.client_secret):
            raise OAuthError("invalid_client", "Unauthorized", 401)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "Missing required parameter: grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(client, form)
        if grant_type == "refresh_token":
            return self._refresh_grant(client, form)
        raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type[:40]}")

    def _exchange_code(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise OAuthError("invalid_request", "Missing required parameter: code")
        grant = self._codes.get(code)
        if grant is None or grant.expires_at <= self._clock():
            raise OAuthError("invalid_grant", "Malformed auth code.")
        if grant.used:
            # A replayed code: refuse it and revoke what it bought (RFC 6749 4.1.2).
            for token in grant.issued:
                if token in self._refresh:
                    self._refresh[token].revoked = True
                if token in self._access:
                    self._access[token].revoked = True
            raise OAuthError("invalid_grant", "Bad Request")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "The code was issued to another client.")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError(
                "invalid_grant", "redirect_uri does not match the authorization request."
            )
        if grant.challenge is not None:
            verify_pkce(grant.challenge, grant.method, form.get("code_verifier"))
        grant.used = True
        refresh = (
            self._new_refresh(grant.user, client.client_id, grant.scope) if grant.offline else None
        )
        access = self._new_access(
            grant.user, client.client_id, grant.scope, refresh.token if refresh else None
        )
        grant.issued.append(access.token)
        answer: dict[str, Any] = {
            "access_token": access.token,
            "expires_in": int(self._settings.access_token_ttl),
            "scope": grant.scope,
            "token_type": "Bearer",
        }
        if refresh is not None:
            grant.issued.append(refresh.token)
            answer["refresh_token"] = refresh.token
            if refresh.expires_at is not None:
                answer["refresh_token_expires_in"] = int(refresh.expires_at - self._clock())
        return answer

    def _refresh_grant(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        grant = self._refresh.get(token)
        if (
            grant is None
            or grant.revoked
            or (grant.expires_at is not None and grant.expires_at <= self._clock())
        ):
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "Unauthorized")
        access = self._new_access(grant.user, client.client_id, grant.scope, grant.token)
        return {
            "access_token": access.token,
            "expires_in": int(self._settings.access_token_ttl),
            "scope": grant.scope,
            "token_type": "Bearer",
        }


def insufficient_scopes() -> GoogleError:
    return GoogleError(
        403, "insufficientPermissions", "Request had insufficient authentication scopes."
    )
