"""The provider webhook routes: verify, limit, record, then answer (decision 0011).

- `POST /api/webhooks/google`: one notification per call, in headers. 200 once recorded;
  the `sync` message that opens a channel is verified and answered 200 without work.
- `POST /api/webhooks/microsoft` and `/api/webhooks/microsoft/lifecycle`: a batch of items
  in a JSON body; 202 once every verified item is recorded. `?validationToken=...` on either
  is the subscription handshake: 200, text/plain, the decoded token, nothing else checked.
  Items carrying `lifecycleEvent` (on either URL) are appended to the subscription's
  `status.lifecycleEvents` before the answer; `missed` also records sync work.

Order of checks for every call: the caller's address over its budget of rejected calls:
429 before anything else; body over 64 KiB: 413 (Content-Length first, then at most
64 KiB + 1 bytes read); malformed 400; unknown channel 403; wrong token or clientState
401; channel over WEBHOOK_RATE_LIMIT 429; pending SyncJobs at QUEUE_CAP: 503 with
Retry-After; recording failed or late: 503. Every 4xx is one rejected call of its address
and one security log line (no token in it); `calsync_webhook_requests_total` counts a Graph
batch once per item, but its rejected items share one line per call (`Call.rejected_items`),
so a small body of many bad items cannot buy a log line per item.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from calsync.controllers import kube
from calsync.observability import metrics
from calsync.webhook_gateway.push import PushGateway
from calsync.webhook_gateway.recorder import RECORDING_ERRORS, Work
from calsync.webhook_gateway.verify import (
    ACCEPTED,
    FORGED,
    MALFORMED,
    RATE_LIMITED,
    UNKNOWN,
    EarlySync,
    Rejected,
    Target,
    Verified,
    batch_answer,
    graph_items,
    verify_google,
    verify_graph_item,
)

log = logging.getLogger(__name__)
security = logging.getLogger("calsync.security.webhooks")

PUSH = web.AppKey("calsync_push", PushGateway)

MAX_BODY = 64 * 1024
MAX_ITEMS = 1000
RETRY_AFTER = 30
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
# Subscription ids (each cut to CHANNEL_PREFIX characters) named in the one line of a batch.
CHANNEL_SAMPLE = 3
CHANNEL_PREFIX = 12
# The result a batch's line is filed under: the one its answer would give (`batch_answer`).
_SEVERITY = (RATE_LIMITED, FORGED, UNKNOWN, MALFORMED)


class TooLarge(Exception):
    pass


# One rejected item of a batch: result, status, channel (subscription id), why.
Rejection = tuple[str, int, str, str]


async def read_capped(request: web.Request, cap: int = MAX_BODY) -> bytes:
    """The body, never more than `cap` + 1 bytes of it buffered; TooLarge beyond `cap`."""
    if request.content_length is not None and request.content_length > cap:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await request.content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > cap:
        raise TooLarge
    return b"".join(chunks)


@dataclass
class Call:
    request: web.Request
    push: PushGateway
    provider: str
    address: str
    started: float
    body: bytes = b""

    def count(self, result: str, n: int = 1) -> None:
        metrics.labelled(metrics.WEBHOOK_REQUESTS, self.provider, result).inc(n)
        self.push.results[(self.provider, result)] += n

    def rejected(
        self, result: str, status: int, channel: str = "", why: str = "", *, flood: bool = False
    ) -> None:
        """Count and log one rejection. Calls cut off by the address limit (`flood`) share a
        budget of log lines, so a flood cannot become a flood of log lines too: those past it
        are counted and reported as `suppressed` on the next line that is written."""
        self.count(result)
        suppressed = 0
        if flood:
            if not self.push.flood_log.take("lines", time.monotonic()):
                self.push.flood_log_suppressed += 1
                return
            suppressed, self.push.flood_log_suppressed = self.push.flood_log_suppressed, 0
        security.warning(
            "webhook call rejected",
            extra={
                "security": "webhook_rejected",
                "address": self.address,
                "provider": self.provider,
                "result": result,
                "status": status,
                "channel": channel[:CHANNEL_PREFIX],
                "why": why,
                "suppressed": suppressed,
            },
        )

    def rejected_items(self, rejections: list[Rejection], items: int) -> None:
        """Count every rejected item of a Graph batch (the metric is per item) and write one
        security line for all of them: the result the answer is judged by, the count per
        result (`forged:990,unknown:9`), and the first few distinct subscription ids, cut to
        their prefixes and joined by commas. Plain strings and numbers: one JSON line."""
        if not rejections:
            return
        by_result: Counter[str] = Counter()
        sample: list[str] = []
        for result, _status, channel, _why in rejections:
            by_result[result] += 1
            prefix = channel[:CHANNEL_PREFIX]
            if prefix and prefix not in sample and len(sample) < CHANNEL_SAMPLE:
                sample.append(prefix)
        for result, n in by_result.items():
            self.count(result, n)
        worst = next(r for r in (*_SEVERITY, *by_result) if r in by_result)
        status, _, why = next((s, c, w) for r, s, c, w in rejections if r == worst)
        security.warning(
            "webhook call rejected",
            extra={
                "security": "webhook_rejected",
                "address": self.address,
                "provider": self.provider,
                "result": worst,
                "status": status,
                "channel": sample[0] if sample else "",
                "why": why,
                "suppressed": 0,
                "rejected": len(rejections),
                "items": items,
                "results": ",".join(f"{r}:{n}" for r, n in by_result.items()),
                "channels": ",".join(sample),
            },
        )

    def refuse(self, status: int, result: str, channel: str = "", why: str = "") -> web.Response:
        self.push.addresses.take(self.address, time.monotonic())
        self.rejected(result, status, channel, why)
        response = web.Response(status=status, text=f"{result}\n")
        if status == 413:
            response.force_close()  # do not read what is left of a huge body
        return response


def _overloaded(call: Call) -> web.Response:
    call.count("overloaded")
    return web.Response(
        status=503,
        text="too many pending SyncJobs; try again later\n",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def _starting(call: Call) -> web.Response:
    """The caches have not loaded yet: a known channel would look unknown, and a 403 is
    dropped, not retried. 503 makes the provider come back once the gateway knows it."""
    call.count("overloaded")
    return web.Response(
        status=503,
        text="starting: subscriptions not loaded yet; try again\n",
        headers={"Retry-After": "1"},
    )


def _failed(call: Call, exc: Exception) -> web.Response:
    call.count("error")
    log.warning("notification not recorded, answering 503: %s", exc)
    return web.Response(
        status=503, text="not recorded; try again\n", headers={"Retry-After": str(RETRY_AFTER)}
    )


def _work(target: Target) -> Work:
    return Work(
        namespace=target.namespace,
        connection=target.connection,
        calendar_id=target.calendar_id,
        connection_uid=target.connection_uid,
        provider=target.provider,
    )


def _queue_full(push: PushGateway) -> bool:
    return push.job_index.pending >= push.settings.queue_cap


def _accepted(call: Call, target: Target, now: dt.datetime, result: str = ACCEPTED) -> None:
    call.count(result)
    call.push.writer.count(target.key, now)
    call.push.last_verified = now


Route = Callable[[Call], Awaitable[web.Response]]


def _route(provider: str, inner: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        push = request.app[PUSH]
        call = Call(request, push, provider, request.remote or "unknown", time.monotonic())
        try:
            if not push.addresses.allows(call.address, call.started):
                call.rejected(
                    RATE_LIMITED, 429, why="address over its budget of rejected calls", flood=True
                )
                return web.Response(status=429, text="rate_limited\n", headers={"Retry-After": "1"})
            try:
                call.body = await read_capped(request)
            except TooLarge:
                return call.refuse(413, "too_large", why=f"body over {MAX_BODY} bytes")
            return await inner(call)
        finally:
            metrics.labelled(metrics.WEBHOOK_LATENCY, provider).observe(
                time.monotonic() - call.started
            )

    return handler


async def _google(call: Call) -> web.Response:
    push = call.push
    if not push.synced:
        return _starting(call)
    headers = call.request.headers
    await push.refresh_ring(headers.get("X-Goog-Channel-Token"))
    verdict = verify_google(push.subscription_index, push.vault.keyring, headers)
    if isinstance(verdict, Rejected):
        return call.refuse(verdict.status, verdict.result, verdict.channel_id, verdict.why)
    if isinstance(verdict, EarlySync):
        call.count("sync_message")
        return web.Response(status=200, text="ok\n")
    if not push.channels.take(verdict.channel_id, time.monotonic()):
        return call.refuse(429, RATE_LIMITED, verdict.channel_id, "channel over WEBHOOK_RATE_LIMIT")
    now = dt.datetime.now(dt.UTC)
    if verdict.sync_message:
        _accepted(call, verdict.target, now, "sync_message")
        return web.Response(status=200, text="ok\n")
    if _queue_full(push):
        return _overloaded(call)
    try:
        await push.recorder.record(_work(verdict.target))
    except RECORDING_ERRORS as exc:
        return _failed(call, exc)
    _accepted(call, verdict.target, now)
    return web.Response(status=200, text="ok\n")


async def _microsoft(call: Call) -> web.Response:
    push = call.push
    token = call.request.query.get("validationToken")
    if token is not None:
        call.count("validation")
        return web.Response(status=200, text=token, content_type="text/plain")
    if not push.synced:
        return _starting(call)
    items = graph_items(call.body)
    if items is None or len(items) > MAX_ITEMS:
        return call.refuse(400, MALFORMED, why="not a Graph notification body")
    results: list[str] = []
    verified: list[Verified] = []
    rejections: list[Rejection] = []
    ring = push.vault.keyring
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("clientState"), str):
            await push.refresh_ring(item["clientState"])
            ring = push.vault.keyring
        verdict = verify_graph_item(push.subscription_index, ring, item)
        if isinstance(verdict, Rejected):
            rejections.append((verdict.result, verdict.status, verdict.channel_id, verdict.why))
            results.append(verdict.result)
        elif not push.channels.take(verdict.channel_id, time.monotonic()):
            rejections.append((RATE_LIMITED, 429, verdict.channel_id, "over WEBHOOK_RATE_LIMIT"))
            results.append(RATE_LIMITED)
        else:
            verified.append(verdict)
            results.append(ACCEPTED)
    call.rejected_items(rejections, len(items))
    now = dt.datetime.now(dt.UTC)
    work: dict[tuple[str, str, str], Work] = {}
    for verdict in verified:
        event = verdict.lifecycle_event
        if event is None or event == "missed":
            work.setdefault(_work(verdict.target).key, _work(verdict.target))
    if work and _queue_full(push):
        return _overloaded(call)
    recorded = True
    if verified:
        recorded = await _record(call, verified, list(work.values()), now)
    status = batch_answer(results, recorded)
    if status == 503:
        call.count("error")
        return web.Response(
            status=503, text="not recorded; try again\n", headers={"Retry-After": str(RETRY_AFTER)}
        )
    if 400 <= status < 500:
        push.addresses.take(call.address, time.monotonic())
    elif verified:
        for verdict in verified:
            _accepted(call, verdict.target, now)
    text = {202: "accepted\n", 429: "rate_limited\n"}.get(status, "rejected\n")
    return web.Response(status=status, text=text)


async def _record(call: Call, verified: list[Verified], work: list[Work], now: dt.datetime) -> bool:
    """Lifecycle events into status, then sync work, all before the answer."""
    push = call.push
    try:
        for verdict in verified:
            event = verdict.lifecycle_event
            if event is None:
                continue
            if event not in LIFECYCLE_EVENTS:
                log.warning(
                    "ignoring unknown Graph lifecycle event %r for %s/%s",
                    event[:64],
                    *verdict.target.key,
                )
                continue
            await push.writer.add_lifecycle_event(verdict.target.key, event, now)
            log.info("Graph lifecycle event %s for %s/%s recorded", event, *verdict.target.key)
        await asyncio.gather(*(push.recorder.record(w) for w in work))
    except (*RECORDING_ERRORS, kube.Conflict) as exc:
        log.warning("Graph notifications not recorded, answering 503: %s", exc)
        return False
    return True


google = _route("google", _google)
microsoft = _route("microsoft", _microsoft)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/webhooks/google", google)
    app.router.add_post("/api/webhooks/microsoft", microsoft)
    app.router.add_post("/api/webhooks/microsoft/lifecycle", microsoft)
