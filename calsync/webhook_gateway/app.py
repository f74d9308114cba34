"""The gateway: provider webhooks, OAuth consent, health and metrics over aiohttp.

Webhooks (`webhooks`, decision 0011) are verified against a watch-fed cache of
WebhookSubscriptions and recorded as SyncJobs (`recorder`) before they are answered; the
caches and the counter flusher start and stop with the app (`PushGateway`).

Consent, step by step:

1. The operator publishes `status.authorizationURL`, a sealed link to `/auth/{provider}/start`.
2. `start` opens the link, reads the connection and its OAuth client Secret, creates a PKCE pair
   and a sealed `state`, sets a cookie with the state's nonce, and redirects the browser to the
   provider's authorization endpoint.
3. The provider redirects back to `/auth/{provider}/callback` with a code. The callback opens
   the state (right connection, not expired, same browser), exchanges the code with the PKCE
   verifier, stores the tokens encrypted in the connection's token Secret and posts an Event.
   The operator sees the token Secret change and starts the first sync.

Every answer is a short plain page that says what happened and, on failure, what to do; none
contains a token. `/healthz` says the process is alive, `/readyz` that it can serve consent
and webhooks (keyring loaded, both watch caches synced), `/metrics` is the Prometheus
registry, `/api/health[/...]` the seed's JSON health checks (`health`). Every answer carries
the seed's security headers (`headers`).
"""

from __future__ import annotations

import html
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web
from lightkube import AsyncClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.controllers import kube
from calsync.controllers.credentials import referenced_secrets, refusal
from calsync.controllers.oauth_setup import (
    OAUTH_PROVIDERS,
    OAuthSetupError,
    connection_client,
    consent_parameters,
    redirect_uri,
)
from calsync.controllers.tokens import StoredTokens, TokenVault
from calsync.observability import metrics
from calsync.observability.logging import log_context
from calsync.providers.base import ProviderError
from calsync.providers.oauth import authorization_url, exchange_code, pkce_pair
from calsync.security.consent import (
    ConnectionRef,
    ConsentError,
    FlowState,
    make_state,
    new_nonce,
    open_link_token,
    open_state,
)
from calsync.settings import Settings
from calsync.webhook_gateway import health, webhooks
from calsync.webhook_gateway.headers import security_headers
from calsync.webhook_gateway.push import PushGateway

log = logging.getLogger(__name__)

COOKIE = "calsync_consent"
MAX_BODY = 64 * 1024  # PROTOCOLS.md: cap webhook bodies at 64 KiB; consent needs far less


@dataclass
class GatewayContext:
    settings: Settings
    client: AsyncClient
    vault: TokenVault
    http: httpx.AsyncClient = field(
        default_factory=lambda: httpx.AsyncClient(timeout=30.0, follow_redirects=False)
    )
    ready: bool = False
    # The event store, where the process has one (only /api/health/database reads it).
    store: Any | None = None
    # Built by create_app unless given; `watch=False` leaves its caches to the caller (tests).
    push: PushGateway | None = None
    watch: bool = True


CONTEXT = web.AppKey("calsync_gateway", GatewayContext)


def _page(status: int, title: str, message: str) -> web.Response:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>calsync: "
        f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message)}</p></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# New request ids: 16 hex digits drawn once per process, then a counter (32 in all, like a
# UUID's hex): unique across replicas and restarts for log correlation, and a fraction of the
# cost of a uuid4 per call, which the webhook path pays thousands of times a second.
_RUN = secrets.token_hex(8)
_SEQUENCE = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a sane token (an ingress sets one), else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if given and _REQUEST_ID.fullmatch(given) else f"{_RUN}{next(_SEQUENCE):016x}"


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    rid = request_id(request)
    try:
        with log_context(request_id=rid):
            response = await handler(request)
    except web.HTTPException as exc:
        metrics.labelled(metrics.GATEWAY_REQUESTS, name, str(exc.status)).inc()
        exc.headers["X-Request-Id"] = rid
        raise
    metrics.labelled(metrics.GATEWAY_REQUESTS, name, str(response.status)).inc()
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if not ctx.ready:
        return web.Response(status=503, text="keyring not loaded yet\n")
    if ctx.push is not None and not ctx.push.synced:
        return web.Response(status=503, text="WebhookSubscription and SyncJob caches not synced\n")
    return web.Response(text="ok\n")


async def metrics_endpoint(_: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _provider(request: web.Request) -> str:
    provider = request.match_info["provider"]
    if provider not in OAUTH_PROVIDERS:
        raise web.HTTPNotFound(text=f"no OAuth consent for provider {provider!r}\n")
    return provider


async def _connection(
    ctx: GatewayContext, ref: ConnectionRef, provider: str
) -> tuple[dict[str, Any], CalendarConnectionSpec]:
    body = await kube.get_connection(ctx.client, ref.namespace, ref.name)
    if body is None or body["metadata"].get("uid") != ref.uid:
        raise ConsentError(
            f"CalendarConnection {ref.namespace}/{ref.name} no longer exists "
            "(it was deleted, or deleted and created again: use its new consent link)"
        )
    if body["metadata"].get("deletionTimestamp"):
        raise ConsentError(f"CalendarConnection {ref.namespace}/{ref.name} is being deleted")
    try:
        spec = CalendarConnectionSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        raise ConsentError(f"the spec of {ref.namespace}/{ref.name} is not valid") from None
    if spec.provider != provider:
        raise ConsentError(
            f"{ref.namespace}/{ref.name} is a {spec.provider} connection, not {provider}"
        )
    return body, spec


async def _client_for(ctx: GatewayContext, namespace: str, spec: CalendarConnectionSpec) -> Any:
    secrets = {
        name: await kube.read_credentials_secret(ctx.client, namespace, name)
        for name in sorted(referenced_secrets(spec))
    }
    refused = refusal(spec, secrets, namespace)
    if refused is not None:
        raise OAuthSetupError(refused[1])
    return connection_client(spec, secrets, ctx.settings)


async def start(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    provider = _provider(request)
    now = time.time()
    try:
        ref = open_link_token(ctx.vault.keyring, request.query.get("c", ""), provider, now)
        _, spec = await _connection(ctx, ref, provider)
        client = await _client_for(ctx, ref.namespace, spec)
    except ConsentError as exc:
        return _page(400, "This consent link cannot be used", str(exc))
    except OAuthSetupError as exc:
        return _page(409, "The connection is not ready for consent", str(exc))
    verifier, challenge = pkce_pair()
    flow = FlowState(ref, provider, new_nonce(), verifier, int(now + ctx.settings.consent_flow_ttl))
    target = authorization_url(
        client,
        redirect_uri=redirect_uri(ctx.settings, provider),
        state=make_state(ctx.vault.keyring, flow),
        code_challenge=challenge,
        extra=consent_parameters(provider, spec.owner),
    )
    response = web.Response(
        status=302,
        headers={"Location": target, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
    response.set_cookie(
        COOKIE,
        flow.nonce,
        max_age=int(ctx.settings.consent_flow_ttl),
        path=f"/auth/{provider}/",
        httponly=True,
        secure=ctx.settings.public_gateway_url.startswith("https://"),
        samesite="Lax",
    )
    log.info("consent started", extra={"namespace": ref.namespace, "connection": ref.name})
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    provider = _provider(request)
    try:
        flow = open_state(ctx.vault.keyring, request.query.get("state", ""), provider, time.time())
    except ConsentError as exc:
        metrics.CONSENTS.labels(provider, "bad_state").inc()
        return _page(400, "This consent answer cannot be used", str(exc))
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or cookie != flow.nonce:
        metrics.CONSENTS.labels(provider, "bad_state").inc()
        return _page(
            400,
            "This consent answer cannot be used",
            "it belongs to a consent started in another browser session: open the consent "
            "link again in this browser",
        )
    ref = flow.ref
    try:
        body, spec = await _connection(ctx, ref, provider)
    except ConsentError as exc:
        metrics.CONSENTS.labels(provider, "gone").inc()
        return _page(404, "The connection is gone", str(exc))
    error = request.query.get("error")
    if error:
        description = request.query.get("error_description", "")[:300]
        metrics.CONSENTS.labels(provider, "denied").inc()
        await kube.post_event(
            ctx.client,
            body,
            type="Warning",
            reason="ConsentDenied",
            message=f"{provider} answered {error!r} to the consent request {description}".strip(),
        )
        return _page(
            403,
            "Access was not granted",
            f"{provider} answered {error!r}. Open the consent link again to retry.",
        )
    code = request.query.get("code")
    if not code:
        return _page(400, "This consent answer cannot be used", "it carries no code")
    try:
        client = await _client_for(ctx, ref.namespace, spec)
        tokens = await exchange_code(
            ctx.http,
            client,
            code=code,
            redirect_uri=redirect_uri(ctx.settings, provider),
            code_verifier=flow.verifier,
        )
    except OAuthSetupError as exc:
        return _page(409, "The connection is not ready for consent", str(exc))
    except ProviderError as exc:
        metrics.CONSENTS.labels(provider, "exchange_failed").inc()
        await kube.post_event(
            ctx.client, body, type="Warning", reason="ConsentFailed", message=str(exc)
        )
        return _page(502, "The provider refused the consent", f"{exc}. Start again.")
    stored = StoredTokens.granted(tokens)
    if stored is None:
        metrics.CONSENTS.labels(provider, "no_refresh_token").inc()
        message = (
            f"{provider} granted access but issued no refresh token, so calsync could not keep "
            "syncing; revoke calsync's access in the account settings and consent again"
        )
        await kube.post_event(
            ctx.client, body, type="Warning", reason="ConsentFailed", message=message
        )
        return _page(502, "No refresh token", message)
    await ctx.vault.save(body, stored)
    metrics.CONSENTS.labels(provider, "granted").inc()
    await kube.post_event(
        ctx.client,
        body,
        type="Normal",
        reason="ConsentGranted",
        message=f"{provider} access granted; tokens stored encrypted",
    )
    log.info("consent granted", extra={"namespace": ref.namespace, "connection": ref.name})
    return _page(
        200,
        "Calendar connected",
        f"calsync may now read the {provider} calendars of {ref.namespace}/{ref.name}. "
        "You can close this window.",
    )


def create_app(ctx: GatewayContext) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[security_headers, count_requests])
    app[CONTEXT] = ctx
    if ctx.push is None:
        ctx.push = PushGateway(ctx.settings, ctx.client, ctx.vault)
    push = ctx.push
    app[webhooks.PUSH] = push
    app[health.SOURCES] = health.HealthSources(
        push=push,
        keyring_loaded=lambda: _keyring_loaded(ctx),
        store=ctx.store,
        providers={
            "google": ctx.settings.google_api_url,
            "microsoft": ctx.settings.microsoft_graph_url,
        },
    )
    webhooks.add_routes(app)
    health.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/auth/{provider}/start", start)
    app.router.add_get("/auth/{provider}/callback", callback)

    async def close_http(_: web.Application) -> None:
        await ctx.http.aclose()

    async def push_lifecycle(_: web.Application) -> AsyncIterator[None]:
        if ctx.watch:
            push.start()
        yield
        await push.stop()

    app.cleanup_ctx.append(push_lifecycle)
    app.on_cleanup.append(close_http)
    return app


def _keyring_loaded(ctx: GatewayContext) -> bool:
    if not ctx.ready:
        return False
    try:
        ctx.vault.keyring  # noqa: B018 - raises until the vault is started
    except RuntimeError:
        return False
    return True


async def serve(ctx: GatewayContext, host: str, port: int) -> web.AppRunner:
    """Start the gateway on host:port; the caller cleans the runner up."""
    runner = web.AppRunner(create_app(ctx), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
