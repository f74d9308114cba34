"""The admin API under `/_admin/`: the simulator's Python methods over HTTP, in JSON.

For tests that run the simulator as a separate process (`calsync simulate google`). Every
endpoint maps to one `GoogleSimulator` method; docs/simulators/google.md lists them all.
Failures answer `{"error": "..."}`: 400 for a bad request, 404 for an unknown user, calendar,
client or event; an event body Google would refuse answers with Google's own envelope.
The admin API has no authentication: bind the simulator to a loopback address.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from calsync.testing.google.errors import GoogleError
from calsync.testing.google.oauth import DEFAULT_SCOPE
from calsync.testing.google.state import GoogleSimulator

Route = Callable[[web.Request], Awaitable[web.Response]]

ENDPOINTS: Final = (
    ("GET", "/_admin/", "this list"),
    ("POST", "/_admin/reset", "forget everything (settings stay)"),
    ("GET", "/_admin/settings", "current settings"),
    ("PATCH", "/_admin/settings", "change settings"),
    ("POST", "/_admin/users", "create a user {email, timeZone?}"),
    ("GET", "/_admin/users", "list users"),
    ("POST", "/_admin/clients", "register an OAuth client"),
    ("GET", "/_admin/clients", "list OAuth clients"),
    ("POST", "/_admin/calendars", "create a calendar {owner, summary, ...}"),
    ("DELETE", "/_admin/calendars/{calendarId}", "delete a secondary calendar"),
    ("PUT", "/_admin/calendars/{calendarId}/acl/{user}", "share {role}"),
    ("DELETE", "/_admin/calendars/{calendarId}/acl/{user}", "unshare"),
    ("PATCH", "/_admin/users/{user}/calendarList/{calendarId}", "change a list entry"),
    ("GET", "/_admin/calendars/{calendarId}/events", "stored events (?live=true)"),
    ("POST", "/_admin/calendars/{calendarId}/events", "create an event or exception"),
    ("PATCH", "/_admin/calendars/{calendarId}/events/{eventId}", "change an event"),
    ("DELETE", "/_admin/calendars/{calendarId}/events/{eventId}", "delete an event"),
    ("POST", "/_admin/calendars/{calendarId}/events/{eventId}/cancel", "cancel an instance"),
    ("POST", "/_admin/calendars/{calendarId}/generate", "bulk-generate events"),
    ("POST", "/_admin/calendars/{calendarId}/invalidate-sync-tokens", "410 for old tokens"),
    ("POST", "/_admin/users/{user}/invalidate-sync-tokens", "410 for calendar list tokens"),
    ("POST", "/_admin/tokens/expire", "expire access tokens {user?}"),
    ("POST", "/_admin/tokens/revoke", "revoke refresh tokens {user, client_id?}"),
    ("POST", "/_admin/tokens/refresh", "mint a refresh token {user, client_id, scope?}"),
    ("POST", "/_admin/tokens/access", "mint an access token {user, client_id?, scope?, ttl?}"),
    ("PUT", "/_admin/consent", "consenting user / deny {user?, deny?}"),
    ("POST", "/_admin/faults", "inject a fault"),
    ("GET", "/_admin/faults", "pending faults"),
    ("DELETE", "/_admin/faults", "drop pending faults"),
    ("PUT", "/_admin/rate-limit", "sustained limit {per_second, retry_after?}"),
    ("GET", "/_admin/stats", "counters"),
    ("DELETE", "/_admin/stats", "reset counters"),
    ("GET", "/_admin/channels", "channels and their deliveries"),
    ("GET", "/_admin/channels/{channelId}", "one channel"),
    ("POST", "/_admin/push/idle", "wait until queued notifications are delivered or given up"),
)


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
    )


def _sim(request: web.Request) -> GoogleSimulator:
    from calsync.testing.google.app import SIM

    return request.app[SIM]


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AdminError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise AdminError(400, "the body must be a JSON object")
    return data


def _field(body: dict[str, Any], name: str, kind: type = str, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise AdminError(400, f"{name} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AdminError(400, f"{name} must be a {kind.__name__}")
    return value


def _wrap(route: Route) -> Route:
    async def handler(request: web.Request) -> web.Response:
        try:
            return await route(request)
        except AdminError as exc:
            return _ok({"error": str(exc)}, exc.status)
        except GoogleError as exc:
            return web.Response(body=exc.body(), status=exc.status, content_type="application/json")
        except KeyError as exc:
            return _ok({"error": str(exc.args[0] if exc.args else exc)}, 404)
        except (ValueError, TypeError) as exc:
            return _ok({"error": str(exc)}, 400)

    return handler


# --- handlers ---------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    return _ok([{"method": m, "path": p, "what": w} for m, p, w in ENDPOINTS])


async def reset(request: web.Request) -> web.Response:
    _sim(request).reset()
    return web.Response(status=204)


async def get_settings(request: web.Request) -> web.Response:
    return _ok(_sim(request).settings.as_json())


async def patch_settings(request: web.Request) -> web.Response:
    sim = _sim(request)
    sim.settings.update(await _body(request))
    return _ok(sim.settings.as_json())


async def create_user(request: web.Request) -> web.Response:
    body = await _body(request)
    created = _sim(request).create_user(
        _field(body, "email"), time_zone=_field(body, "timeZone", optional=True) or "UTC"
    )
    return _ok(created, 201)


async def list_users(request: web.Request) -> web.Response:
    sim = _sim(request)
    return _ok(
        [
            {"email": u.email, "timeZone": u.time_zone, "calendars": sorted(u.entries)}
            for u in sim.users.values()
        ]
    )


async def register_client(request: web.Request) -> web.Response:
    body = await _body(request)
    uris = body.get("redirect_uris", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise AdminError(400, "redirect_uris must be a list of URLs")
    created = _sim(request).register_client(
        _field(body, "client_id", optional=True),
        _field(body, "client_secret", optional=True),
        uris,
    )
    return _ok(created, 201)


async def list_clients(request: web.Request) -> web.Response:
    return _ok(
        [
            {
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "redirect_uris": c.redirect_uris,
            }
            for c in _sim(request).oauth.clients.values()
        ]
    )


async def create_calendar(request: web.Request) -> web.Response:
    body = await _body(request)
    created = _sim(request).create_calendar(
        _field(body, "owner"),
        summary=_field(body, "summary"),
        time_zone=_field(body, "timeZone", optional=True),
        calendar_id=_field(body, "id", optional=True),
        description=_field(body, "description", optional=True) or "",
    )
    return _ok(created, 201)


async def delete_calendar(request: web.Request) -> web.Response:
    _sim(request).delete_calendar(request.match_info["calendarId"])
    return web.Response(status=204)


async def share(request: web.Request) -> web.Response:
    body = await _body(request)
    info = request.match_info
    _sim(request).share_calendar(
        info["calendarId"], info["user"], _field(body, "role", optional=True) or "reader"
    )
    return web.Response(status=204)


async def unshare(request: web.Request) -> web.Response:
    info = request.match_info
    _sim(request).unshare_calendar(info["calendarId"], info["user"])
    return web.Response(status=204)


async def patch_entry(request: web.Request) -> web.Response:
    body = await _body(request)
    info = request.match_info
    hidden = body.get("hidden")
    if hidden is not None and not isinstance(hidden, bool):
        raise AdminError(400, "hidden must be true or false")
    _sim(request).set_calendar_entry(
        info["user"],
        info["calendarId"],
        summary_override=_field(body, "summaryOverride", optional=True),
        hidden=hidden,
        color_id=_field(body, "colorId", optional=True),
    )
    return web.Response(status=204)


async def list_events(request: web.Request) -> web.Response:
    sim = _sim(request)
    calendar_id = request.match_info["calendarId"]
    if request.query.get("live", "").lower() == "true":
        return _ok(list(sim.live_events(calendar_id).values()))
    return _ok(sim.event_resources(calendar_id))


async def create_event(request: web.Request) -> web.Response:
    body = await _body(request)
    return _ok(_sim(request).create_event(request.match_info["calendarId"], body), 201)


async def update_event(request: web.Request) -> web.Response:
    body = await _body(request)
    info = request.match_info
    return _ok(_sim(request).update_event(info["calendarId"], info["eventId"], body))


async def delete_event(request: web.Request) -> web.Response:
    info = request.match_info
    _sim(request).delete_event(info["calendarId"], info["eventId"])
    return web.Response(status=204)


async def cancel_instance(request: web.Request) -> web.Response:
    body = await _body(request)
    info = request.match_info
    original = _field(body, "originalStartTime", dict)
    return _ok(_sim(request).cancel_instance(info["calendarId"], info["eventId"], original))


async def generate(request: web.Request) -> web.Response:
    body = await _body(request)
    start_text = _field(body, "start", optional=True)
    start = None
    if start_text is not None:
        try:
            start = dt.datetime.fromisoformat(start_text)
        except ValueError:
            raise AdminError(400, "start must be an ISO 8601 date-time") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
    seed = _field(body, "seed", int, optional=True)
    made = _sim(request).generate_events(
        request.match_info["calendarId"],
        _field(body, "count", int),
        seed=1 if seed is None else seed,
        start=start,
    )
    return _ok(made, 201)


async def invalidate_calendar(request: web.Request) -> web.Response:
    _sim(request).invalidate_sync_tokens(request.match_info["calendarId"])
    return web.Response(status=204)


async def invalidate_list(request: web.Request) -> web.Response:
    _sim(request).invalidate_sync_tokens(user=request.match_info["user"])
    return web.Response(status=204)


async def expire_tokens(request: web.Request) -> web.Response:
    body = await _body(request)
    return _ok({"expired": _sim(request).expire_access_tokens(_field(body, "user", optional=True))})


async def revoke_tokens(request: web.Request) -> web.Response:
    body = await _body(request)
    count = _sim(request).revoke_refresh_tokens(
        _field(body, "user"), _field(body, "client_id", optional=True)
    )
    return _ok({"revoked": count})


async def mint_refresh(request: web.Request) -> web.Response:
    body = await _body(request)
    token = _sim(request).mint_refresh_token(
        _field(body, "user"),
        _field(body, "client_id"),
        _field(body, "scope", optional=True) or DEFAULT_SCOPE,
    )
    return _ok({"refresh_token": token}, 201)


async def issued_tokens(request: web.Request) -> web.Response:
    return _ok(_sim(request).oauth.issued_tokens())


async def mint_access(request: web.Request) -> web.Response:
    body = await _body(request)
    sim = _sim(request)
    ttl = body.get("ttl")
    if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool)):
        raise AdminError(400, "ttl must be a number of seconds")
    token = sim.mint_access_token(
        _field(body, "user"),
        _field(body, "client_id", optional=True) or "admin",
        _field(body, "scope", optional=True) or DEFAULT_SCOPE,
        ttl=None if ttl is None else float(ttl),
    )
    return _ok({"access_token": token, "token_type": "Bearer"}, 201)


async def consent(request: web.Request) -> web.Response:
    body = await _body(request)
    deny = body.get("deny", False)
    if not isinstance(deny, bool):
        raise AdminError(400, "deny must be true or false")
    sim = _sim(request)
    sim.set_consent(_field(body, "user", optional=True), deny=deny)
    return _ok({"user": sim.oauth.consent_user, "deny": sim.oauth.consent_deny})


async def add_fault(request: web.Request) -> web.Response:
    body = await _body(request)
    return _ok(_sim(request).inject_fault(**body), 201)


async def list_faults(request: web.Request) -> web.Response:
    return _ok(_sim(request).faults())


async def clear_faults(request: web.Request) -> web.Response:
    _sim(request).clear_faults()
    return web.Response(status=204)


async def rate_limit(request: web.Request) -> web.Response:
    body = await _body(request)
    per_second = body.get("per_second")
    if per_second is not None and (
        not isinstance(per_second, (int, float)) or isinstance(per_second, bool)
    ):
        raise AdminError(400, "per_second must be a number or null")
    _sim(request).set_rate_limit(per_second, body.get("retry_after"))
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    return _ok(_sim(request).stats())


async def reset_stats(request: web.Request) -> web.Response:
    _sim(request).reset_stats()
    return web.Response(status=204)


async def channels(request: web.Request) -> web.Response:
    return _ok(_sim(request).channels())


async def channel(request: web.Request) -> web.Response:
    wanted = request.match_info["channelId"]
    for found in _sim(request).channels():
        if found["id"] == wanted:
            return _ok(found)
    raise KeyError(f"no channel {wanted!r}")


async def push_idle(request: web.Request) -> web.Response:
    await _sim(request).push.idle()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    routes: list[tuple[str, str, Route]] = [
        ("GET", "/_admin/", index),
        ("POST", "/_admin/reset", reset),
        ("GET", "/_admin/settings", get_settings),
        ("PATCH", "/_admin/settings", patch_settings),
        ("POST", "/_admin/users", create_user),
        ("GET", "/_admin/users", list_users),
        ("POST", "/_admin/clients", register_client),
        ("GET", "/_admin/clients", list_clients),
        ("POST", "/_admin/calendars", create_calendar),
        ("DELETE", "/_admin/calendars/{calendarId}", delete_calendar),
        ("PUT", "/_admin/calendars/{calendarId}/acl/{user}", share),
        ("DELETE", "/_admin/calendars/{calendarId}/acl/{user}", unshare),
        ("PATCH", "/_admin/users/{user}/calendarList/{calendarId}", patch_entry),
        ("GET", "/_admin/calendars/{calendarId}/events", list_events),
        ("POST", "/_admin/calendars/{calendarId}/events", create_event),
        ("PATCH", "/_admin/calendars/{calendarId}/events/{eventId}", update_event),
        ("DELETE", "/_admin/calendars/{calendarId}/events/{eventId}", delete_event),
        ("POST", "/_admin/calendars/{calendarId}/events/{eventId}/cancel", cancel_instance),
        ("POST", "/_admin/calendars/{calendarId}/generate", generate),
        ("POST", "/_admin/calendars/{calendarId}/invalidate-sync-tokens", invalidate_calendar),
        ("POST", "/_admin/users/{user}/invalidate-sync-tokens", invalidate_list),
        ("POST", "/_admin/tokens/expire", expire_tokens),
        ("POST", "/_admin/tokens/revoke", revoke_tokens),
        ("POST", "/_admin/tokens/refresh", mint_refresh),
        ("POST", "/_admin/tokens/access", mint_access),
        ("GET", "/_admin/tokens/issued", issued_tokens),
        ("PUT", "/_admin/consent", consent),
        ("POST", "/_admin/faults", add_fault),
        ("GET", "/_admin/faults", list_faults),
        ("DELETE", "/_admin/faults", clear_faults),
        ("PUT", "/_admin/rate-limit", rate_limit),
        ("GET", "/_admin/stats", stats),
        ("DELETE", "/_admin/stats", reset_stats),
        ("GET", "/_admin/channels", channels),
        ("GET", "/_admin/channels/{channelId}", channel),
        ("POST", "/_admin/push/idle", push_idle),
    ]
    for method, path, route in routes:
        app.router.add_route(method, path, _wrap(route))
