"""The Microsoft identity platform (v2.0 endpoints) as far as calsync uses it.

`GET /{tenant}/oauth2/v2.0/authorize` consents on the user's behalf (the user named by
`login_hint`, else the default consenting user an admin set) or refuses (`access_denied`), and
redirects to the registered `redirect_uri` with a single-use code bound to the client, the
redirect URI, the scopes and the PKCE challenge. `POST /{tenant}/oauth2/v2.0/token` trades the
code, or a refresh token, for tokens. As at Microsoft:

- a refresh token is handed out only when `offline_access` is among the scopes;
- every refresh answers a NEW refresh token; the old one keeps working (Microsoft does not
  revoke it), unless `invalidate_used_refresh_tokens` is set to model a strict server;
- a refresh token unused for 90 days (simulated clock), or marked inactive by an admin, fails
  with `invalid_grant` AADSTS700082; a revoked one with AADSTS50173;
- errors carry `error`, `error_description` starting with the AADSTS code, `error_codes`,
  `timestamp`, `trace_id` and `correlation_id`; a bad client secret is `invalid_client` (401).

Access tokens are opaque strings (Microsoft's are JWTs; a client must not read them either) and
expire after `access_token_lifetime` seconds of simulated time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from calsync.testing.microsoft.clock import SimClock
from calsync.testing.microsoft.errors import GraphError

if TYPE_CHECKING:
    from calsync.testing.microsoft.state import GraphSimulator

TENANT_ALIASES = ("common", "organizations", "consumers")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
OFFLINE_SCOPES = {"offline_access", "openid", "profile", "email"}
INACTIVITY_LIMIT = dt.timedelta(days=90)


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    name: str = ""


@dataclass
class AuthCode:
    code: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str
    expires_at: float
    used: bool = False


@dataclass
class AccessGrant:
    token: str
    user_id: str
    client_id: str
    scope: str
    expires_at: float


@dataclass
class RefreshGrant:
    token: str
    user_id: str
    client_id: str
    scope: str
    issued_at: float
    last_used: float
    revoked: bool = False
    inactive: bool = False
    superseded: bool = False


@dataclass
class IdentitySettings:
    access_token_lifetime: int = 3600
    code_lifetime: int = 600
    consent_user: str | None = None  # user id
    deny_consent: bool = False
    invalidate_used_refresh_tokens: bool = False


@dataclass
class IdentityState:
    clock: SimClock
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    access: dict[str, AccessGrant] = field(default_factory=dict)
    refresh: dict[str, RefreshGrant] = field(default_factory=dict)
    settings: IdentitySettings = field(default_factory=IdentitySettings)
    token_requests: int = 0

    def add_client(
        self, client_id: str, client_secret: str, redirect_uris: list[str], name: str = ""
    ) -> Client:
        client = Client(client_id, client_secret, list(redirect_uris), name)
        self.clients[client_id] = client
        return client

    def issue(self, user_id: str, client_id: str, scope: str) -> dict[str, Any]:
        """A token response for (user, client, scope), as the token endpoint would answer."""
        now = self.clock.time()
        lifetime = self.settings.access_token_lifetime
        access = "EwB" + secrets.token_urlsafe(48)
        self.access[access] = AccessGrant(access, user_id, client_id, scope, now + lifetime)
        scopes = scope.split()
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(s for s in scopes if s not in OFFLINE_SCOPES),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }
        if "offline_access" in scopes:
            refresh = "M.C" + secrets.token_urlsafe(64)
            self.refresh[refresh] = RefreshGrant(refresh, user_id, client_id, scope, now, now)
            answer["refresh_token"] = refresh
        return answer

    def authenticate(self, header: str | None) -> AccessGrant:
        """The grant behind an `Authorization: Bearer` header, or Graph's 401."""
        if not header:
            raise unauthenticated("Access token is empty.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("Access token validation failure.")
        grant = self.access.get(token.strip())
        if grant is None:
            raise unauthenticated("IDX14100: JWT is not well formed, there are no dots (.).")
        if self.clock.time() >= grant.expires_at:
            raise unauthenticated("Lifetime validation failed, the token is expired.")
        return grant

    def expire_access_tokens(self, user_id: str | None = None) -> int:
        now = self.clock.time()
        count = 0
        for grant in self.access.values():
            if user_id is None or grant.user_id == user_id:
                grant.expires_at = min(grant.expires_at, now)
                count += 1
        return count

    def _refresh_matching(
        self, user_id: str | None, client_id: str | None, token: str | None
    ) -> list[RefreshGrant]:
        return [
            g
            for g in self.refresh.values()
            if (user_id is None or g.user_id == user_id)
            and (client_id is None or g.client_id == client_id)
            and (token is None or g.token == token)
        ]

    def revoke(
        self, user_id: str | None = None, client_id: str | None = None, token: str | None = None
    ) -> int:
        found = self._refresh_matching(user_id, client_id, token)
        for grant in found:
            grant.revoked = True
        return len(found)

    def mark_inactive(
        self, user_id: str | None = None, client_id: str | None = None, token: str | None = None
    ) -> int:
        found = self._refresh_matching(user_id, client_id, token)
        for grant in found:
            grant.inactive = True
        return len(found)


def unauthenticated(message: str) -> GraphError:
    return GraphError(
        401,
        "InvalidAuthenticationToken",
        message,
        headers={
            "WWW-Authenticate": 'Bearer realm="", authorization_uri='
            '"https://login.microsoftonline.com/common/oauth2/authorize", '
            'client_id="00000003-0000-0000-c000-000000000000"'
        },
    )


def valid_tenant(tenant: str) -> bool:
    return tenant in TENANT_ALIASES or bool(_GUID.match(tenant))


def aad_error(
    status: int, error: str, number: int, description: str, clock: SimClock
) -> web.Response:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = clock.now().strftime("%Y-%m-%d %H:%M:%SZ")
    text = (
        f"AADSTS{number}: {description} Trace ID: {trace} Correlation ID: {correlation} "
        f"Timestamp: {stamp}"
    )
    return web.json_response(
        {
            "error": error,
            "error_description": text,
            "error_codes": [number],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={number}",
        },
        status=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _error_page(status: int, number: int, description: str) -> web.Response:
    body = (
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>"
        f"<h1>Sorry, but we're having trouble signing you in.</h1><p>AADSTS{number}: "
        f"{_escape(description)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _redirect(uri: str, params: Mapping[str, str]) -> web.Response:
    separator = "&" if "?" in uri else "?"
    location = uri + separator + urlencode({k: v for k, v in params.items() if v is not None})
    return web.Response(status=302, headers={"Location": location})


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def routes(sim: GraphSimulator) -> list[web.RouteDef]:
    async def authorize(request: web.Request) -> web.Response:
        state = sim.identity
        tenant = request.match_info["tenant"]
        query = request.query
        if not valid_tenant(tenant):
            return _error_page(400, 90002, f"Tenant '{tenant}' not found.")
        client = state.clients.get(query.get("client_id", ""))
        if client is None:
            return _error_page(
                400,
                700016,
                f"Application with identifier '{query.get('client_id', '')}' was not found in "
                f"the directory '{tenant}'.",
            )
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            return _error_page(
                400,
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match "
                f"the redirect URIs configured for the application '{client.client_id}'.",
            )
        state_param = query.get("state")

        def refuse(error: str, number: int, description: str) -> web.Response:
            return _redirect(
                redirect_uri,
                {
                    "error": error,
                    "error_description": f"AADSTS{number}: {description}",
                    "state": state_param or "",
                },
            )

        if query.get("response_type") != "code":
            return refuse(
                "unsupported_response_type",
                700054,
                "response_type must be 'code' for this application.",
            )
        if query.get("response_mode", "query") != "query":
            return refuse("invalid_request", 900144, "The simulator answers response_mode=query.")
        scope = query.get("scope", "").strip()
        if not scope:
            return refuse(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'scope'.",
            )
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method", "plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            return refuse("invalid_request", 501491, f"Invalid code_challenge_method '{method}'.")
        if state.settings.deny_consent:
            return refuse("access_denied", 65004, "User declined to consent to access the app.")
        user = None
        hint = query.get("login_hint")
        if hint:
            user = sim.find_user(hint)
        if user is None and state.settings.consent_user is not None:
            user = sim.find_user(state.settings.consent_user)
        if user is None:
            return refuse(
                "interaction_required",
                50058,
                "A silent sign-in request was sent but no user is signed in.",
            )
        code = "0.A" + secrets.token_urlsafe(48)
        state.codes[code] = AuthCode(
            code=code,
            client_id=client.client_id,
            user_id=user.id,
            redirect_uri=redirect_uri,
            scope=scope,
            challenge=challenge,
            method=method,
            expires_at=state.clock.time() + state.settings.code_lifetime,
        )
        return _redirect(
            redirect_uri,
            {"code": code, "state": state_param or "", "session_state": str(uuid.uuid4())},
        )

    async def token(request: web.Request) -> web.Response:
        state = sim.identity
        state.token_requests += 1
        tenant = request.match_info["tenant"]
        if not valid_tenant(tenant):
            return aad_error(
                400, "invalid_request", 90002, f"Tenant '{tenant}' not found.", sim.clock
            )
        form = await request.post()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        client_id, secret = values.get("client_id"), values.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(basic[6:].strip()).decode()
                client_id, _, secret = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                pass
        fail = _failer(sim.clock)
        grant_type = values.get("grant_type")
        if not grant_type:
            return fail(400, "invalid_request", 900144, _missing("grant_type"))
        if not client_id:
            return fail(400, "invalid_request", 900144, _missing("client_id"))
        client = state.clients.get(client_id)
        if client is None:
            return fail(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'.",
            )
        if not secret:
            return fail(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if not secrets.compare_digest(secret.encode(), client.client_secret.encode()):
            return fail(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
        if grant_type == "authorization_code":
            return _redeem_code(state, client, values, fail)
        if grant_type == "refresh_token":
            return _redeem_refresh(state, client, values, fail)
        return fail(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    return [
        web.get("/{tenant}/oauth2/v2.0/authorize", authorize),
        web.post("/{tenant}/oauth2/v2.0/token", token),
    ]


Fail = Callable[[int, str, int, str], web.Response]


def _failer(clock: SimClock) -> Fail:
    def fail(status: int, error: str, number: int, description: str) -> web.Response:
        return aad_error(status, error, number, description, clock)

    return fail


def _missing(name: str) -> str:
    return f"The request body must contain the following parameter: '{name}'."


def _redeem_code(
    state: IdentityState, client: Client, values: Mapping[str, str], fail: Fail
) -> web.Response:
    code_text = values.get("code")
    if not code_text:
        return fail(400, "invalid_request", 900144, _missing("code"))
    code = state.codes.get(code_text)
    if code is None or code.client_id != client.client_id:
        return fail(
            400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
        )
    if code.used:
        return fail(
            400,
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid "
            "code or use an existing refresh token.",
        )
    if state.clock.time() >= code.expires_at:
        return fail(
            400,
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. "
            "Send a new interactive authorization request for this user and resource.",
        )
    if values.get("redirect_uri") != code.redirect_uri:
        return fail(
            400,
            "invalid_grant",
            500117,
            "The reply uri specified in the request isn't expected.",
        )
    if code.challenge:
        verifier = values.get("code_verifier")
        if not verifier:
            return fail(
                400,
                "invalid_grant",
                501481,
                "The code_verifier is missing; the authorization request carried a code_challenge.",
            )
        expected = s256(verifier) if code.method == "S256" else verifier
        if not secrets.compare_digest(expected.encode(), code.challenge.encode()):
            return fail(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
            )
    code.used = True
    return web.json_response(
        state.issue(code.user_id, client.client_id, code.scope),
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _redeem_refresh(
    state: IdentityState, client: Client, values: Mapping[str, str], fail: Fail
) -> web.Response:
    text = values.get("refresh_token")
    if not text:
        return fail(400, "invalid_request", 900144, _missing("refresh_token"))
    grant = state.refresh.get(text)
    if grant is None:
        return fail(
            400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
        )
    if grant.client_id != client.client_id:
        return fail(
            400,
            "invalid_grant",
            700005,
            "Provided Authorization Code is intended to use against other tenant or client.",
        )
    now = state.clock.time()
    if grant.revoked:
        return fail(
            400,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is "
            "needed. The user might have changed or reset their password.",
        )
    if grant.inactive or now - grant.last_used > INACTIVITY_LIMIT.total_seconds():
        issued = dt.datetime.fromtimestamp(grant.issued_at, dt.UTC)
        return fail(
            400,
            "invalid_grant",
            700082,
            "The refresh token has expired due to inactivity. The token was issued on "
            f"{issued:%Y-%m-%dT%H:%M:%S}Z and was inactive for 90.00:00:00.",
        )
    if grant.superseded:
        return fail(
            400,
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. "
            "Send a new interactive authorization request for this user and resource.",
        )
    scope = grant.scope
    requested = values.get("scope")
    if requested:
        scope = " ".join(dict.fromkeys([*requested.split(), "offline_access"]))
    grant.last_used = now
    if state.settings.invalidate_used_refresh_tokens:
        grant.superseded = True
    answer = state.issue(grant.user_id, client.client_id, scope)
    return web.json_response(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
