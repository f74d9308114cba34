"""The seed's JSON health endpoints: `/api/health` and `/api/health/{database,providers,
webhooks,sync}`.

Each answers what it checked and an overall `status`: `ok` (HTTP 200), `degraded` (200: it
works, with a caveat) or `failing` (503). None makes an outbound call: they read the
gateway's own state (keyring, watch caches, counters), so a probe cannot overload anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from calsync.webhook_gateway.push import PushGateway

OK, DEGRADED, FAILING = "ok", "degraded", "failing"
_RANK = {OK: 0, DEGRADED: 1, FAILING: 2}

Check = dict[str, Any]


class HealthSources:
    """What the endpoints read, given by app.py."""

    def __init__(
        self,
        *,
        push: PushGateway,
        keyring_loaded: Callable[[], bool],
        store: Any | None,
        providers: dict[str, str],
    ) -> None:
        self.push = push
        self.keyring_loaded = keyring_loaded
        self.store = store
        self.providers = providers


SOURCES = web.AppKey("calsync_health", HealthSources)


def overall(*statuses: str) -> str:
    return max(statuses, key=lambda s: _RANK[s], default=OK)


def answer(checked: str, status: str, **details: Any) -> web.Response:
    return web.json_response(
        {"status": status, "checked": checked, **details},
        status=503 if status == FAILING else 200,
    )


async def database_check(sources: HealthSources) -> Check:
    if sources.store is None:
        return {"status": OK, "used": False, "detail": "not used by the gateway"}
    import sqlalchemy  # only a gateway with a store needs it

    try:
        async with sources.store.engine.connect() as conn:
            await conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        return {"status": FAILING, "used": True, "error": str(exc)[:300]}
    return {"status": OK, "used": True, "dialect": sources.store.dialect}


def providers_check(sources: HealthSources) -> Check:
    loaded = sources.keyring_loaded()
    return {
        "status": OK if loaded else FAILING,
        "keyringLoaded": loaded,
        "endpoints": sources.providers,
        "detail": "configured base URLs; not called",
    }


def webhooks_check(sources: HealthSources) -> Check:
    push = sources.push
    results: dict[str, dict[str, int]] = {}
    for (provider, result), count in sorted(push.results.items()):
        results.setdefault(provider, {})[result] = count
    synced = {
        "webhookSubscriptions": push.subscriptions.ready.is_set(),
        "syncJobs": push.jobs.ready.is_set(),
    }
    return {
        "status": OK if all(synced.values()) else FAILING,
        "cachesSynced": synced,
        "subscriptionsByProvider": push.subscription_index.by_provider(),
        "requestsSinceStart": results,
        "since": push.started_at.isoformat(timespec="seconds"),
        "lastVerifiedNotification": (
            push.last_verified.isoformat(timespec="seconds") if push.last_verified else None
        ),
        "recordingsInFlight": push.recorder.in_flight,
        "counterFlushes": push.writer.flushes,
    }


def sync_check(sources: HealthSources) -> Check:
    push = sources.push
    pending, cap = push.job_index.pending, push.settings.queue_cap
    if not push.jobs.ready.is_set():
        status = FAILING
    elif pending >= cap:
        status = FAILING  # notifications are answered 503 now
    elif pending >= 0.8 * cap:
        status = DEGRADED
    else:
        status = OK
    return {
        "status": status,
        "pendingSyncJobs": pending,
        "queueCap": cap,
        "cacheSynced": push.jobs.ready.is_set(),
    }


async def health(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    checks = {
        "database": await database_check(sources),
        "providers": providers_check(sources),
        "webhooks": webhooks_check(sources),
        "sync": sync_check(sources),
    }
    return answer(
        "keyring, watch caches, pending SyncJobs, the store if the gateway uses one",
        overall(*(c["status"] for c in checks.values())),
        checks=checks,
    )


def _single(
    checked: str, check: Callable[[HealthSources], Awaitable[Check] | Check]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        result = check(request.app[SOURCES])
        if isinstance(result, Awaitable):
            result = await result
        details = dict(result)
        return answer(checked, str(details.pop("status")), **details)

    return handler


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/health", health)
    app.router.add_get(
        "/api/health/database",
        _single("the event store answers SELECT 1 (if the gateway has one)", database_check),
    )
    app.router.add_get(
        "/api/health/providers",
        _single("provider base URLs configured and keyring loaded", providers_check),
    )
    app.router.add_get(
        "/api/health/webhooks",
        _single("watch caches synced; webhook calls since start", webhooks_check),
    )
    app.router.add_get(
        "/api/health/sync", _single("pending SyncJobs (watch cache) vs QUEUE_CAP", sync_check)
    )
