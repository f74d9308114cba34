"""The simulator as an aiohttp application, served on the same paths as Google.

`create_app(sim)` serves the Calendar API under `/calendar/v3/`, the OAuth endpoints at
`/o/oauth2/v2/auth` and `/token`, and the admin API under `/_admin/` (`admin.py`).
`running(...)` binds it to a socket for the duration of an `async with`.

One middleware does what applies to every API and OAuth request (not to admin requests):
injected faults answer before anything else (as a front end would), the counters record the
request, and every failure leaves as Google's error envelope (or, on `/token`, as an RFC 6749
error). Handlers authenticate through `_grant`, which also applies the sustained per-user rate
limit, so a refused request never reaches the state.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from calsync.testing.google.errors import GoogleError, OAuthError, bad_request
from calsync.testing.google.oauth import AccessGrant, AuthorizePageError
from calsync.testing.google.state import GoogleSimulator

log = logging.getLogger(__name__)

SIM: Final = web.AppKey("google_simulator", GoogleSimulator)
USER: Final = web.RequestKey("google_user", str)
MAX_BODY: Final = 1 << 20
JSON_TYPE: Final = "application/json; charset=UTF-8"
MULTI_PARAMS: Final = ("privateExtendedProperty", "sharedExtendedProperty", "eventTypes")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _sim(request: web.Request) -> GoogleSimulator:
    return request.app[SIM]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


def _raw_json(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": JSON_TYPE})


def _error_response(exc: GoogleError) -> web.Response:
    return web.Response(
        body=exc.body(),
        status=exc.status,
        headers={"Content-Type": JSON_TYPE, **exc.headers},
    )


def _oauth_response(exc: OAuthError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=exc.body(),
        status=exc.status,
        headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store", **(headers or {})},
    )


def _grant(request: web.Request) -> AccessGrant:
    """The caller's access grant; 401 without a valid token, 403 beyond the rate limit."""
    sim = _sim(request)
    grant = sim.oauth.authenticate(request.headers.get("Authorization"))
    request[USER] = grant.user
    limit = sim.rate_limit
    if limit is not None and not limit.admit(grant.user, sim.clock()):
        sim.stats_data.rate_limited += 1
        headers = {"Retry-After": limit.retry_after} if limit.retry_after else {}
        raise GoogleError(
            403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits", headers=headers
        )
    return grant


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Parse Error", reason="parseError") from None


def _query(request: web.Request) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key in request.query:
        if key in MULTI_PARAMS:
            multi[key] = request.query.getall(key)
        elif key not in single:
            single[key] = request.query[key]
    return single, multi


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return f"{request.method} {canonical or request.path}"


def _pretty(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Google indents its JSON unless the request says `prettyPrint=false`."""
    if (
        request.path.startswith("/calendar/")
        and request.query.get("prettyPrint", "true").lower() != "false"
        and isinstance(response, web.Response)
        and isinstance(response.body, bytes)
        and response.body
        and response.content_type == "application/json"
    ):
        data = json.loads(response.body)
        response.body = json.dumps(data, indent=1, ensure_ascii=False).encode()
    return response


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _served(request, handler)
    return _pretty(request, response)


async def _served(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_admin"):
        return await handler(request)
    sim = _sim(request)
    stats = sim.stats_data
    stats.in_flight += 1
    stats.peak_concurrency = max(stats.peak_concurrency, stats.in_flight)
    status = 500
    oauth = request.path == "/token"
    try:
        user = sim.oauth.peek_user(request.headers.get("Authorization"))
        fault = sim.take_fault(request.method, request.path, request.query_string, user)
        if fault is not None:
            stats.faults[fault.reason] += 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if oauth:
                code = "temporarily_unavailable" if fault.status in (429, 503) else "server_error"
                status = fault.status
                retry = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return _oauth_response(OAuthError(code, fault.message, fault.status), retry)
            raise fault.error()
        response = await handler(request)
        status = response.status
        return response
    except GoogleError as exc:
        status = exc.status
        return _error_response(exc)
    except OAuthError as exc:
        status = exc.status
        return _oauth_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            status = exc.status
            raise
        status = exc.status
        reason = {404: "notFound", 405: "httpMethodNotAllowed", 413: "uploadTooLarge"}.get(
            exc.status, "invalid"
        )
        return _error_response(GoogleError(exc.status, reason, exc.reason))
    except Exception:
        log.exception("simulator failure on %s %s", request.method, request.path)
        return _error_response(GoogleError(500, "backendError", "Backend Error"))
    finally:
        stats.in_flight -= 1
        name = _route_name(request)
        who = request.get(USER) or sim.oauth.peek_user(request.headers.get("Authorization"))
        stats.requests[name] += 1
        if who:
            stats.by_user[who] += 1
        stats.statuses[status] += 1
        stats.timestamps.append((sim.clock(), request.method, request.path, who, status))


# --- Calendar API -----------------------------------------------------------------------------


async def calendar_list(request: web.Request) -> web.Response:
    grant = _grant(request)
    query, _ = _query(request)
    return _raw_json(_sim(request).api_calendar_list(grant, query))


async def calendar_list_entry(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_sim(request).api_calendar_list_entry(grant, request.match_info["calendarId"]))


async def calendar_get(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_sim(request).api_calendar(grant, request.match_info["calendarId"]))


async def events_list(request: web.Request) -> web.Response:
    grant = _grant(request)
    query, multi = _query(request)
    body = _sim(request).api_list_events(grant, request.match_info["calendarId"], query, multi)
    return _raw_json(body)


async def events_insert(request: web.Request) -> web.Response:
    grant = _grant(request)
    body = await _body(request)
    return _json(_sim(request).api_insert_event(grant, request.match_info["calendarId"], body))


async def events_get(request: web.Request) -> web.Response:
    grant = _grant(request)
    info = request.match_info
    return _json(_sim(request).api_get_event(grant, info["calendarId"], info["eventId"]))


async def events_update(request: web.Request) -> web.Response:
    grant = _grant(request)
    body = await _body(request)
    info = request.match_info
    event = _sim(request).api_update_event(
        grant,
        info["calendarId"],
        info["eventId"],
        body,
        replace_all=request.method == "PUT",
        if_match=request.headers.get("If-Match"),
    )
    return _json(event)


async def events_delete(request: web.Request) -> web.Response:
    grant = _grant(request)
    info = request.match_info
    _sim(request).api_delete_event(
        grant, info["calendarId"], info["eventId"], request.headers.get("If-Match")
    )
    return web.Response(status=204)


async def events_watch(request: web.Request) -> web.Response:
    grant = _grant(request)
    body = await _body(request)
    base = f"{request.scheme}://{request.host}"
    channel = _sim(request).api_watch(grant, request.match_info["calendarId"], body, base)
    return _json(channel)


async def channels_stop(request: web.Request) -> web.Response:
    grant = _grant(request)
    body = await _body(request)
    _sim(request).api_stop_channel(grant, body)
    return web.Response(status=204)


# --- OAuth ------------------------------------------------------------------------------------


async def authorize(request: web.Request) -> web.Response:
    try:
        location = _sim(request).oauth.authorize(dict(request.query))
    except AuthorizePageError as exc:
        page = (
            "<!doctype html><title>Error</title>"
            f"<h1>Error {exc.status}: {html.escape(exc.error)}</h1>"
            f"<p>{html.escape(exc.description)}</p>"
        )
        return web.Response(text=page, status=exc.status, content_type="text/html")
    return web.Response(status=302, headers={"Location": location})


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "Malformed client credentials.", 401) from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "Malformed client credentials.", 401)
    return user, password


async def token(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded.")
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    answer = _sim(request).oauth.token(fields, _basic(request.headers.get("Authorization")))
    return _json(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# --- the app ----------------------------------------------------------------------------------


def create_app(sim: GoogleSimulator | None = None) -> web.Application:
    """The simulator's aiohttp application (a new GoogleSimulator unless one is given)."""
    from calsync.testing.google import admin

    simulator = sim if sim is not None else GoogleSimulator()
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_api_middleware])
    app[SIM] = simulator
    base = "/calendar/v3"
    app.router.add_get(f"{base}/users/me/calendarList", calendar_list)
    app.router.add_get(f"{base}/users/me/calendarList/{{calendarId}}", calendar_list_entry)
    app.router.add_get(f"{base}/calendars/{{calendarId}}", calendar_get)
    app.router.add_get(f"{base}/calendars/{{calendarId}}/events", events_list)
    app.router.add_post(f"{base}/calendars/{{calendarId}}/events", events_insert)
    app.router.add_post(f"{base}/calendars/{{calendarId}}/events/watch", events_watch)
    events = app.router.add_resource(f"{base}/calendars/{{calendarId}}/events/{{eventId}}")
    events.add_route("GET", events_get)
    events.add_route("PUT", events_update)
    events.add_route("PATCH", events_update)
    events.add_route("DELETE", events_delete)
    app.router.add_post(f"{base}/channels/stop", channels_stop)
    app.router.add_get("/o/oauth2/v2/auth", authorize)
    app.router.add_post("/token", token)
    admin.add_routes(app)

    async def bind(_: web.Application) -> None:
        simulator.push.bind(asyncio.get_running_loop())

    async def close(_: web.Application) -> None:
        await simulator.push.close()

    app.on_startup.append(bind)
    app.on_cleanup.append(close)
    return app


@dataclass(frozen=True)
class RunningSimulator:
    url: str  # base URL, no trailing slash
    sim: GoogleSimulator
    app: web.Application


@asynccontextmanager
async def running(
    host: str = "127.0.0.1", port: int = 0, sim: GoogleSimulator | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on host:port (0: a free port) inside the current event loop."""
    simulator = sim if sim is not None else GoogleSimulator()
    app = create_app(simulator)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound[1]}"
        simulator.base_url = url
        yield RunningSimulator(url, simulator, app)
    finally:
        await runner.cleanup()
