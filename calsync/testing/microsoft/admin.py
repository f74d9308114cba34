"""The admin API under `/_admin/`: steer a simulator that runs as a separate process.

Everything a Python test does on `GraphSimulator` directly is available here as JSON over HTTP
(no authentication; bind the simulator to loopback). Errors use Graph's envelope. Every
endpoint is listed in docs/simulators/microsoft.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from calsync.testing.microsoft.clock import format_timestamp, parse_instant
from calsync.testing.microsoft.errors import GraphError, bad_request
from calsync.testing.microsoft.throttle import Fault, Sustained

if TYPE_CHECKING:
    from calsync.testing.microsoft.state import GraphSimulator

AdminHandler = Callable[[web.Request, dict[str, Any]], Awaitable[Any]]


def _wrap(handler: AdminHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def run(request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                parsed = await request.json()
            except ValueError:
                return web.json_response(
                    {"error": {"code": "BadRequest", "message": "The body is not JSON."}},
                    status=400,
                )
            if not isinstance(parsed, dict):
                return web.json_response(
                    {"error": {"code": "BadRequest", "message": "The body must be an object."}},
                    status=400,
                )
            body = parsed
        try:
            result = await handler(request, body)
        except GraphError as exc:
            return web.json_response(
                {"error": {"code": exc.code, "message": exc.message}}, status=exc.status
            )
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response(
                {"error": {"code": "BadRequest", "message": f"bad admin request: {exc}"}},
                status=400,
            )
        if isinstance(result, web.Response):
            return result
        return web.json_response(result if result is not None else {"ok": True})

    return run


def _calendar_ref(sim: GraphSimulator, user: str, ref: str) -> str | None:
    """'default' (or the default calendar's id/name) -> None; a name or id -> the id."""
    if ref in ("default", "calendar"):
        return None
    owner = sim.user(user)
    for record in sim.calendars_for(owner.id):
        if record.id == ref or record.name == ref:
            return record.id
    raise GraphError(404, "ErrorItemNotFound", f"No calendar {ref!r} for {user}.")


def _time(value: Any) -> dt.datetime | None:
    return parse_instant(value) if isinstance(value, str) and value else None


def routes(sim: GraphSimulator) -> list[web.RouteDef]:
    async def state(request: web.Request, body: dict[str, Any]) -> Any:
        return sim.summary()

    async def reset(request: web.Request, body: dict[str, Any]) -> Any:
        sim.reset()
        return sim.summary()

    async def add_user(request: web.Request, body: dict[str, Any]) -> Any:
        user = sim.add_user(body["address"], body.get("name"), user_id=body.get("id"))
        return {**asdict(user)}

    async def list_users(request: web.Request, body: dict[str, Any]) -> Any:
        return {"value": [asdict(u) for u in sim.users.values()]}

    async def add_calendar(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        record = sim.add_calendar(
            user, body["name"], color=body.get("color", "auto"), hex_color=body.get("hexColor", "")
        )
        return sim.render_calendar(record, sim.user(user).id)

    async def list_calendars(request: web.Request, body: dict[str, Any]) -> Any:
        user = sim.user(request.match_info["user"])
        return {"value": [sim.render_calendar(r, user.id) for r in sim.calendars_for(user.id)]}

    async def remove_calendar(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        calendar_id = _calendar_ref(sim, user, request.match_info["calendar"])
        if calendar_id is None:
            raise bad_request("The default calendar cannot be deleted.")
        sim.remove_calendar(calendar_id)
        return None

    async def share(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        calendar_id = _calendar_ref(sim, user, request.match_info["calendar"])
        record = sim.calendar_for(user, calendar_id)
        if body.get("remove"):
            sim.unshare_calendar(record.id, body["with"])
        else:
            sim.share_calendar(record.id, body["with"], can_edit=bool(body.get("canEdit", False)))
        return None

    async def create_event(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        calendar_id = _calendar_ref(sim, user, request.match_info["calendar"])
        event = sim.create_event(user, calendar_id, body, admin=True)
        return {"id": event.id, "iCalUId": event.ical_uid, "changeKey": event.change_key}

    async def update_event(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        event = sim.update_event(user, request.match_info["event"], body, admin=True)
        return {"id": event.id, "changeKey": event.change_key}

    async def delete_event(request: web.Request, body: dict[str, Any]) -> Any:
        mark = request.query.get("mode") == "mark" or body.get("mode") == "mark"
        sim.delete_event(
            request.match_info["user"], request.match_info["event"], mark_cancelled=mark
        )
        return None

    async def generate(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        calendar_id = _calendar_ref(sim, user, request.match_info["calendar"])
        return sim.generate_events(
            user,
            calendar_id,
            int(body["count"]),
            seed=int(body.get("seed", 1)),
            start=_time(body.get("start")),
            past_days=int(body.get("pastDays", 300)),
            future_days=int(body.get("futureDays", 700)),
            recurring_every=int(body.get("recurringEvery", 10)),
        )

    async def view(request: web.Request, body: dict[str, Any]) -> Any:
        user = request.match_info["user"]
        calendar_id = _calendar_ref(sim, user, request.match_info["calendar"])
        lo = _time(request.query.get("start")) or sim.clock.now() - dt.timedelta(days=365)
        hi = _time(request.query.get("end")) or sim.clock.now() + dt.timedelta(days=730)
        items = sim.view(user, calendar_id, lo, hi)
        return {
            "value": [
                {
                    "id": i.id,
                    "type": i.kind,
                    "etag": i.etag,
                    "seriesMasterId": i.event.id if i.kind != "singleInstance" else None,
                    "start": format_timestamp(i.start),
                    "end": format_timestamp(i.end),
                }
                for i in items
            ]
        }

    async def invalidate(request: web.Request, body: dict[str, Any]) -> Any:
        mode = body.get("mode", "gone")
        status, code = {
            "gone": (410, "syncStateNotFound"),
            "syncStateNotFound": (400, "syncStateNotFound"),
            "resyncRequired": (400, "resyncRequired"),
        }.get(mode, (int(body.get("status", 410)), str(body.get("code", "syncStateNotFound"))))
        status = int(body.get("status", status))
        code = str(body.get("code", code))
        calendar_id = None
        if body.get("user") and body.get("calendar"):
            calendar_id = _calendar_ref(sim, body["user"], body["calendar"])
            if calendar_id is None:
                calendar_id = sim.user(body["user"]).default_calendar
        marked = sim.invalidate_delta_tokens(
            calendar_id=calendar_id, user_ref=body.get("user"), status=status, code=code
        )
        return {"invalidated": marked}

    async def replay(request: web.Request, body: dict[str, Any]) -> Any:
        sim.replay_next(int(body.get("rounds", 1)))
        return {"rounds": sim.replay_rounds}

    async def page_size(request: web.Request, body: dict[str, Any]) -> Any:
        if "default" in body:
            sim.default_page_size = int(body["default"])
        if "max" in body:
            sim.max_page_size = int(body["max"])
        return {"default": sim.default_page_size, "max": sim.max_page_size}

    async def add_client(request: web.Request, body: dict[str, Any]) -> Any:
        client = sim.identity.add_client(
            body["client_id"],
            body["client_secret"],
            list(body.get("redirect_uris", [])),
            body.get("name", ""),
        )
        return {"client_id": client.client_id, "redirect_uris": client.redirect_uris}

    async def consent(request: web.Request, body: dict[str, Any]) -> Any:
        settings = sim.identity.settings
        if "user" in body:
            settings.consent_user = sim.user(body["user"]).id if body["user"] else None
        if "deny" in body:
            settings.deny_consent = bool(body["deny"])
        return {"user": settings.consent_user, "deny": settings.deny_consent}

    async def token_settings(request: web.Request, body: dict[str, Any]) -> Any:
        settings = sim.identity.settings
        if "accessTokenLifetime" in body:
            settings.access_token_lifetime = int(body["accessTokenLifetime"])
        if "codeLifetime" in body:
            settings.code_lifetime = int(body["codeLifetime"])
        if "invalidateUsedRefreshTokens" in body:
            settings.invalidate_used_refresh_tokens = bool(body["invalidateUsedRefreshTokens"])
        return asdict(settings)

    async def mint(request: web.Request, body: dict[str, Any]) -> Any:
        user = sim.user(body["user"])
        client_id = body["client_id"]
        if client_id not in sim.identity.clients:
            raise bad_request(f"Unknown client {client_id!r}.")
        scope = body.get("scope", "offline_access https://graph.microsoft.com/Calendars.Read")
        return sim.identity.issue(user.id, client_id, scope)

    def _who(body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
        user = sim.user(body["user"]).id if body.get("user") else None
        return user, body.get("client_id"), body.get("refresh_token")

    async def expire_access(request: web.Request, body: dict[str, Any]) -> Any:
        user = sim.user(body["user"]).id if body.get("user") else None
        return {"expired": sim.identity.expire_access_tokens(user)}

    async def revoke(request: web.Request, body: dict[str, Any]) -> Any:
        return {"revoked": sim.identity.revoke(*_who(body))}

    async def inactive(request: web.Request, body: dict[str, Any]) -> Any:
        return {"marked": sim.identity.mark_inactive(*_who(body))}

    async def issued(request: web.Request, body: dict[str, Any]) -> Any:
        # Every token value handed out, so tests can prove none of them leaks anywhere.
        return {
            "access_tokens": sorted(sim.identity.access),
            "refresh_tokens": sorted(sim.identity.refresh),
        }

    async def add_fault(request: web.Request, body: dict[str, Any]) -> Any:
        fault = Fault(
            status=int(body["status"]),
            method=str(body.get("method", "*")),
            path=str(body.get("path", "*")),
            count=int(body.get("count", 1)),
            skip=int(body.get("skip", 0)),
            retry_after=float(body["retryAfter"]) if body.get("retryAfter") is not None else None,
            code=body.get("code"),
            message=body.get("message"),
        )
        sim.control.faults.append(fault)
        return asdict(fault)

    async def clear_faults(request: web.Request, body: dict[str, Any]) -> Any:
        sim.control.faults.clear()
        return None

    async def throttle(request: web.Request, body: dict[str, Any]) -> Any:
        control = sim.control
        if "concurrency" in body:
            value = body["concurrency"]
            control.concurrency_limit = int(value) if value is not None else None
        if "concurrencyRetryAfter" in body:
            control.concurrency_retry_after = float(body["concurrencyRetryAfter"])
        if "sustained" in body:
            spec = body["sustained"]
            control.sustained = (
                Sustained(
                    int(spec["requests"]),
                    float(spec["windowSeconds"]),
                    float(spec["retryAfter"]) if spec.get("retryAfter") is not None else None,
                )
                if spec
                else None
            )
        if "latency" in body:
            control.latency = float(body["latency"])
        return {
            "concurrency": control.concurrency_limit,
            "concurrencyRetryAfter": control.concurrency_retry_after,
            "sustained": asdict(control.sustained) if control.sustained else None,
            "latency": control.latency,
        }

    async def hold(request: web.Request, body: dict[str, Any]) -> Any:
        if body.get("hold", True):
            sim.control.hold()
        else:
            sim.control.release_held()
        return {"held": sim.control.held}

    async def clock(request: web.Request, body: dict[str, Any]) -> Any:
        if "advance_seconds" in body:
            sim.clock.advance(float(body["advance_seconds"]))
            expired = sim.notifier.expire()
        else:
            expired = []
        return {"now": sim.clock.now().isoformat(), "expiredSubscriptions": expired}

    async def counters(request: web.Request, body: dict[str, Any]) -> Any:
        return sim.control.snapshot()

    async def reset_counters(request: web.Request, body: dict[str, Any]) -> Any:
        sim.control.reset_counters()
        return None

    async def subscriptions(request: web.Request, body: dict[str, Any]) -> Any:
        sim.notifier.expire()
        return {"value": [s.to_json() for s in sim.notifier.subscriptions.values()]}

    async def lifecycle(request: web.Request, body: dict[str, Any]) -> Any:
        subscription = sim.notifier.lifecycle(request.match_info["id"], body["event"])
        return {"id": subscription.id, "sent": subscription.lifecycle_url is not None}

    async def notifications(request: web.Request, body: dict[str, Any]) -> Any:
        return {"endpoints": sim.notifier.stats(), "log": list(sim.notifier.log)}

    async def notification_settings(request: web.Request, body: dict[str, Any]) -> Any:
        settings = sim.notifier.settings
        for name in (
            "batch_window",
            "delivery_timeout",
            "validation_timeout",
            "backoff",
            "min_lifetime_minutes",
        ):
            if name in body:
                setattr(settings, name, float(body[name]))
        if "max_attempts" in body:
            settings.max_attempts = int(body["max_attempts"])
        if "over_max" in body:
            if body["over_max"] not in ("cap", "reject"):
                raise bad_request("over_max is 'cap' or 'reject'.")
            settings.over_max = body["over_max"]
        if "allow_http" in body:
            settings.allow_http = bool(body["allow_http"])
        return asdict(settings)

    user_path = "/_admin/users/{user}"
    table: list[tuple[str, str, AdminHandler]] = [
        ("GET", "/_admin/state", state),
        ("POST", "/_admin/reset", reset),
        ("POST", "/_admin/users", add_user),
        ("GET", "/_admin/users", list_users),
        ("POST", user_path + "/calendars", add_calendar),
        ("GET", user_path + "/calendars", list_calendars),
        ("DELETE", user_path + "/calendars/{calendar}", remove_calendar),
        ("POST", user_path + "/calendars/{calendar}/share", share),
        ("POST", user_path + "/calendars/{calendar}/events", create_event),
        ("POST", user_path + "/calendars/{calendar}/generate", generate),
        ("GET", user_path + "/calendars/{calendar}/view", view),
        ("PATCH", user_path + "/events/{event}", update_event),
        ("DELETE", user_path + "/events/{event}", delete_event),
        ("POST", "/_admin/delta/invalidate", invalidate),
        ("POST", "/_admin/delta/replay", replay),
        ("POST", "/_admin/delta/page-size", page_size),
        ("POST", "/_admin/clients", add_client),
        ("POST", "/_admin/consent", consent),
        ("POST", "/_admin/tokens/settings", token_settings),
        ("POST", "/_admin/tokens/mint", mint),
        ("POST", "/_admin/tokens/expire-access", expire_access),
        ("POST", "/_admin/tokens/revoke", revoke),
        ("POST", "/_admin/tokens/inactive", inactive),
        ("GET", "/_admin/tokens/issued", issued),
        ("POST", "/_admin/faults", add_fault),
        ("DELETE", "/_admin/faults", clear_faults),
        ("POST", "/_admin/throttle", throttle),
        ("POST", "/_admin/hold", hold),
        ("POST", "/_admin/clock", clock),
        ("GET", "/_admin/counters", counters),
        ("POST", "/_admin/counters/reset", reset_counters),
        ("GET", "/_admin/subscriptions", subscriptions),
        ("POST", "/_admin/subscriptions/{id}/lifecycle", lifecycle),
        ("GET", "/_admin/notifications", notifications),
        ("POST", "/_admin/notifications/settings", notification_settings),
    ]
    return [web.route(method, path, _wrap(handler)) for method, path, handler in table]
