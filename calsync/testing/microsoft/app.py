"""The HTTP face of the simulator: Graph's `/v1.0/...` paths and the identity endpoints.

One middleware does what every Graph request goes through, in Graph's order: authenticate the
bearer token (401 `InvalidAuthenticationToken`), admit the request against the mailbox's limits
(429 with Retry-After), apply injected faults, wait out any artificial latency or hold, run the
handler, and render any `GraphError` in Graph's envelope with `request-id` and
`client-request-id` headers. Identity endpoints get faults and counters but no bearer check;
`/_admin/...` gets neither.

`running()` serves an app on a real socket (port 0 picks a free one) inside the caller's event
loop, which is how the tests use it; `calsync simulate microsoft` serves the same app.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from calsync.testing.microsoft import admin, identity
from calsync.testing.microsoft import events as ev
from calsync.testing.microsoft.clock import UTC, format_local, parse_instant, resolve_zone
from calsync.testing.microsoft.delta import Round, skiptoken
from calsync.testing.microsoft.errors import GraphError, bad_request
from calsync.testing.microsoft.identity import AccessGrant
from calsync.testing.microsoft.state import GraphSimulator, SyncReset

JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
    "charset=utf-8"
)
UNSUPPORTED_ON_DELTA = ("$select", "$expand", "$filter", "$orderby", "$search")
SIM_KEY = web.AppKey("graph_simulator", GraphSimulator)
GRANT_KEY = web.RequestKey("graph_grant", AccessGrant)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


def _error_response(
    error: GraphError, request_id: str, client_request_id: str, now: dt.datetime
) -> web.Response:
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "innerError": {
                "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    return _json(body, error.status, error.headers)


def base_url(request: web.Request, sim: GraphSimulator) -> str:
    return sim.base_url or f"{request.scheme}://{request.host}"


@dataclass(frozen=True, slots=True)
class Preferences:
    page_size: int | None
    zone: dt.tzinfo
    zone_label: str
    applied: str


def preferences(request: web.Request, sim: GraphSimulator) -> Preferences:
    """`Prefer: odata.maxpagesize=N, outlook.timezone="Zone"` (several headers allowed)."""
    page_size: int | None = None
    zone: dt.tzinfo = UTC
    label = "UTC"
    applied: list[str] = []
    for header in request.headers.getall("Prefer", []):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "odata.maxpagesize":
                try:
                    size = int(value)
                except ValueError:
                    continue
                if size > 0:
                    page_size = min(size, sim.max_page_size)
                    applied.append(f"odata.maxpagesize={page_size}")
            elif name == "outlook.timezone":
                resolved = resolve_zone(value)
                if resolved is not None:
                    zone, label = resolved, value
                    applied.append(f'outlook.timezone="{value}"')
    return Preferences(page_size, zone, label, ", ".join(applied))


def create_app(sim: GraphSimulator | None = None) -> web.Application:
    """The simulator as an aiohttp application (Graph, identity platform, admin API)."""
    sim = sim if sim is not None else GraphSimulator()

    @web.middleware
    async def graph_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_admin"):
            return await handler(request)
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id", request_id)
        control = sim.control
        mailbox: str | None = None
        status = 500
        try:
            try:
                if request.path.startswith("/v1.0/"):
                    grant = sim.identity.authenticate(request.headers.get("Authorization"))
                    request[GRANT_KEY] = grant
                    mailbox = grant.user_id
                    control.admit(mailbox)
                    try:
                        control.check_faults(request.method, request.path)
                        await control.delay()
                        response = await handler(request)
                    finally:
                        control.release(mailbox)
                else:
                    control.check_faults(request.method, request.path)
                    response = await handler(request)
            except SyncReset as exc:
                if exc.status == 410:
                    exc.headers["Location"] = _reset_location(request, sim, exc)
                response = _error_response(exc, request_id, client_request_id, sim.clock.now())
            except GraphError as exc:
                response = _error_response(exc, request_id, client_request_id, sim.clock.now())
            status = response.status
        finally:
            control.record(request.method, request.path, mailbox, status)
        response.headers["request-id"] = request_id
        response.headers["client-request-id"] = client_request_id
        return response

    app = web.Application(middlewares=[graph_middleware], client_max_size=1 << 20)
    app[SIM_KEY] = sim
    app.add_routes(graph_routes(sim))
    app.add_routes(identity.routes(sim))
    app.add_routes(admin.routes(sim))

    async def close_notifier(_: web.Application) -> None:
        await sim.notifier.aclose()

    app.on_cleanup.append(close_notifier)
    return app


def _reset_location(request: web.Request, sim: GraphSimulator, exc: SyncReset) -> str:
    """The initial request again, with an empty $deltatoken, as Graph's 410 points to."""
    base = base_url(request, sim)
    path = request.path
    params: dict[str, str] = {}
    if exc.window is not None:
        params["startDateTime"] = exc.window[0].strftime("%Y-%m-%dT%H:%M:%SZ")
        params["endDateTime"] = exc.window[1].strftime("%Y-%m-%dT%H:%M:%SZ")
    query = urlencode(params)
    return f"{base}{path}?{query + '&' if query else ''}$deltatoken="


# -- Graph ---------------------------------------------------------------------------------------


def _user(request: web.Request) -> str:
    return str(request[GRANT_KEY].user_id)


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Unable to read JSON request payload.", "BadRequest") from None


def _query(request: web.Request) -> dict[str, str]:
    """Query parameters with case-insensitive names (Graph accepts startdatetime too)."""
    return {k.lower(): v for k, v in request.query.items()}


def _window(query: Mapping[str, str]) -> tuple[dt.datetime, dt.datetime]:
    start, end = query.get("startdatetime"), query.get("enddatetime")
    if not start or not end:
        raise bad_request(
            "This request requires a time window specified by the query string parameters "
            "StartDateTime and EndDateTime.",
            "ErrorInvalidParameter",
        )
    try:
        lo, hi = parse_instant(start), parse_instant(end)
    except ValueError:
        raise bad_request(
            "The value of the parameter 'StartDateTime' or 'EndDateTime' is invalid.",
            "ErrorInvalidParameter",
        ) from None
    if hi <= lo:
        raise bad_request(
            "The parameter 'EndDateTime' must be later than 'StartDateTime'.",
            "ErrorInvalidParameter",
        )
    return lo, hi


def graph_routes(sim: GraphSimulator) -> list[web.RouteDef]:
    def render_page(
        request: web.Request, round_: Round, position: int, prefs: Preferences
    ) -> web.Response:
        base = base_url(request, sim)
        owner = sim.users[sim.calendars[round_.calendar].owner].address
        size = prefs.page_size or sim.default_page_size
        chunk = round_.entries[position : position + size]
        value: list[dict[str, Any]] = []
        for entry in chunk:
            if isinstance(entry, str):
                value.append(
                    {
                        "@odata.type": "#microsoft.graph.event",
                        "id": entry,
                        "@removed": {"reason": "deleted"},
                    }
                )
            else:
                value.append(
                    ev.render_instance(
                        entry,
                        zone=prefs.zone,
                        zone_label=prefs.zone_label,
                        base_url=base,
                        owner_address=owner,
                    )
                )
        body: dict[str, Any] = {"@odata.context": f"{base}/v1.0/$metadata#Collection(event)"}
        following = position + len(chunk)
        link = f"{base}{request.path}"
        if following < len(round_.entries):
            body["@odata.nextLink"] = f"{link}?$skiptoken={skiptoken(round_.id, following)}"
        else:
            body["@odata.deltaLink"] = f"{link}?$deltatoken={round_.token.id}"
        body["value"] = value
        headers = {"Preference-Applied": prefs.applied} if prefs.applied else {}
        return _json(body, headers=headers)

    async def delta(request: web.Request) -> web.Response:
        user = _user(request)
        query = _query(request)
        unsupported = [name for name in UNSUPPORTED_ON_DELTA if name in query]
        if unsupported:
            raise bad_request(
                "The following parameters are not supported with change tracking over the "
                f"'CalendarView' resource: '{', '.join(unsupported)}'.",
                "ErrorInvalidUrlQuery",
            )
        prefs = preferences(request, sim)
        calendar_id = request.match_info.get("calendar_id")
        if request.path.startswith("/v1.0/me/calendar/"):
            calendar_id = None
        skip = query.get("$skiptoken")
        token = query.get("$deltatoken")
        if skip:
            round_, position = sim.delta_page(user, skip)
            return render_page(request, round_, position, prefs)
        if token:
            return render_page(request, sim.delta_follow(user, token), 0, prefs)
        lo, hi = _window(query)
        return render_page(request, sim.delta_start(user, calendar_id, lo, hi), 0, prefs)

    async def calendar_view(request: web.Request) -> web.Response:
        user = _user(request)
        query = _query(request)
        lo, hi = _window(query)
        calendar_id = request.match_info.get("calendar_id")
        prefs = preferences(request, sim)
        found = sim.view(user, calendar_id, lo, hi)
        record = sim.calendar_for(user, calendar_id)
        owner = sim.users[record.owner].address
        top = _int_param(query, "$top", prefs.page_size or sim.default_page_size)
        skip = _int_param(query, "$skip", 0)
        base = base_url(request, sim)
        value = [
            ev.render_instance(
                i, zone=prefs.zone, zone_label=prefs.zone_label, base_url=base, owner_address=owner
            )
            for i in found[skip : skip + top]
        ]
        body: dict[str, Any] = {"@odata.context": f"{base}/v1.0/$metadata#Collection(event)"}
        if skip + top < len(found):
            params = {
                "startDateTime": query["startdatetime"],
                "endDateTime": query["enddatetime"],
                "$top": str(top),
                "$skip": str(skip + top),
            }
            body["@odata.nextLink"] = f"{base}{request.path}?{urlencode(params, safe='$:')}"
        body["value"] = value
        headers = {"Preference-Applied": prefs.applied} if prefs.applied else {}
        return _json(body, headers=headers)

    async def me(request: web.Request) -> web.Response:
        user = sim.users[_user(request)]
        base = base_url(request, sim)
        return _json(
            {
                "@odata.context": f"{base}/v1.0/$metadata#users/$entity",
                "id": user.id,
                "displayName": user.name,
                "mail": user.address,
                "userPrincipalName": user.address,
                "businessPhones": [],
                "givenName": user.name.split(" ")[0],
                "surname": None,
                "jobTitle": None,
                "mobilePhone": None,
                "officeLocation": None,
                "preferredLanguage": "en-US",
            }
        )

    async def list_calendars(request: web.Request) -> web.Response:
        user = _user(request)
        query = _query(request)
        records = sim.calendars_for(user)
        top = _int_param(query, "$top", 10)
        skip = _int_param(query, "$skip", 0)
        base = base_url(request, sim)
        body: dict[str, Any] = {
            "@odata.context": f"{base}/v1.0/$metadata#users('{user}')/calendars"
        }
        if skip + top < len(records):
            body["@odata.nextLink"] = f"{base}{request.path}?$top={top}&$skip={skip + top}"
        body["value"] = [
            _select(sim.render_calendar(r, user), query) for r in records[skip : skip + top]
        ]
        return _json(body)

    async def get_calendar(request: web.Request) -> web.Response:
        user = _user(request)
        record = sim.calendar_for(user, request.match_info.get("calendar_id"))
        base = base_url(request, sim)
        body = {
            "@odata.context": f"{base}/v1.0/$metadata#users('{user}')/calendars/$entity",
            **sim.render_calendar(record, user),
        }
        return _json(_select(body, _query(request)))

    async def create_event(request: web.Request) -> web.Response:
        user = _user(request)
        event = sim.create_event(
            user, request.match_info.get("calendar_id"), await _body(request), admin=False
        )
        return _json(_render_stored(request, sim, event, user), status=201)

    async def get_event(request: web.Request) -> web.Response:
        user = _user(request)
        found = sim.get_event(user, request.match_info["event_id"])
        if isinstance(found, ev.Instance):
            prefs = preferences(request, sim)
            owner = sim.users[sim.calendars[found.event.calendar_id].owner].address
            return _json(
                ev.render_instance(
                    found,
                    zone=prefs.zone,
                    zone_label=prefs.zone_label,
                    base_url=base_url(request, sim),
                    owner_address=owner,
                )
            )
        return _json(_render_stored(request, sim, found, user))

    async def patch_event(request: web.Request) -> web.Response:
        user = _user(request)
        event_id = request.match_info["event_id"]
        sim.update_event(user, event_id, await _body(request), admin=False)
        return await get_event(request)

    async def delete_event(request: web.Request) -> web.Response:
        sim.delete_event(_user(request), request.match_info["event_id"])
        return web.Response(status=204)

    async def create_subscription(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        subscription = await sim.notifier.create(
            await _body(request), app_id=grant.client_id, user_id=grant.user_id
        )
        base = base_url(request, sim)
        return _json(
            {
                "@odata.context": f"{base}/v1.0/$metadata#subscriptions/$entity",
                **subscription.to_json(),
            },
            status=201,
        )

    async def list_subscriptions(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        sim.notifier.expire()
        found = [
            s.to_json() for s in sim.notifier.subscriptions.values() if s.app_id == grant.client_id
        ]
        base = base_url(request, sim)
        return _json({"@odata.context": f"{base}/v1.0/$metadata#subscriptions", "value": found})

    async def get_subscription(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        found = sim.notifier.get(request.match_info["subscription_id"], grant.client_id)
        return _json(found.to_json())

    async def patch_subscription(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        updated = sim.notifier.update(
            request.match_info["subscription_id"], await _body(request), grant.client_id
        )
        return _json(updated.to_json())

    async def delete_subscription(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        sim.notifier.delete(request.match_info["subscription_id"], grant.client_id)
        return web.Response(status=204)

    async def reauthorize(request: web.Request) -> web.Response:
        grant = request[GRANT_KEY]
        sim.notifier.get(request.match_info["subscription_id"], grant.client_id)
        return web.Response(status=204)

    cal = "/v1.0/me/calendars/{calendar_id}"
    return [
        web.get("/v1.0/me", me),
        web.get("/v1.0/me/calendars", list_calendars),
        web.get("/v1.0/me/calendar", get_calendar),
        web.get(cal, get_calendar),
        web.get("/v1.0/me/calendarView/delta", delta),
        web.get("/v1.0/me/calendar/calendarView/delta", delta),
        web.get(cal + "/calendarView/delta", delta),
        web.get("/v1.0/me/calendarView", calendar_view),
        web.get("/v1.0/me/calendar/calendarView", calendar_view),
        web.get(cal + "/calendarView", calendar_view),
        web.post("/v1.0/me/events", create_event),
        web.post("/v1.0/me/calendar/events", create_event),
        web.post(cal + "/events", create_event),
        web.get("/v1.0/me/events/{event_id}", get_event),
        web.patch("/v1.0/me/events/{event_id}", patch_event),
        web.delete("/v1.0/me/events/{event_id}", delete_event),
        web.post("/v1.0/subscriptions", create_subscription),
        web.get("/v1.0/subscriptions", list_subscriptions),
        web.get("/v1.0/subscriptions/{subscription_id}", get_subscription),
        web.patch("/v1.0/subscriptions/{subscription_id}", patch_subscription),
        web.delete("/v1.0/subscriptions/{subscription_id}", delete_subscription),
        web.post("/v1.0/subscriptions/{subscription_id}/reauthorize", reauthorize),
    ]


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"Invalid value '{text}' for {name}.", "BadRequest") from None
    if value < 0 or (name == "$top" and value == 0):
        raise bad_request(f"Invalid value '{text}' for {name}.", "BadRequest")
    return min(value, 1000) if name == "$top" else value


def _select(body: dict[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
    chosen = query.get("$select")
    if not chosen:
        return body
    names = {n.strip() for n in chosen.split(",")} | {"id"}
    return {k: v for k, v in body.items() if k in names or k.startswith("@")}


def _render_stored(
    request: web.Request, sim: GraphSimulator, event: ev.StoredEvent, user: str
) -> dict[str, Any]:
    prefs = preferences(request, sim)
    owner = sim.users[sim.calendars[event.calendar_id].owner].address
    return ev.render_master(
        event,
        zone=prefs.zone,
        zone_label=prefs.zone_label,
        base_url=base_url(request, sim),
        owner_address=owner,
    )


# -- serving -------------------------------------------------------------------------------------


@dataclass
class RunningSimulator:
    url: str  # base URL, no trailing slash
    sim: GraphSimulator


@asynccontextmanager
async def running(
    host: str = "127.0.0.1", port: int = 0, sim: GraphSimulator | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on a real socket in the current event loop for the block's duration."""
    sim = sim if sim is not None else GraphSimulator()
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}"
        sim.base_url = url
        yield RunningSimulator(url, sim)
    finally:
        await runner.cleanup()


__all__ = ["RunningSimulator", "create_app", "format_local", "running"]
