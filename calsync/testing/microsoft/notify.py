"""Change-notification subscriptions: the validation handshake, batched delivery, lifecycle events.

Creating a subscription first proves both URLs: Graph POSTs `?validationToken=<token>` with a
text/plain body and wants, within 10 seconds, a 200 with `Content-Type: text/plain` whose body
is the URL-decoded token; anything else refuses the subscription with a 400. The token here has
spaces and a colon like Graph's, so a receiver that echoes it still URL-encoded fails.

Changes are queued per notification URL and sent after a short batching window, several in one
`{"value": [...]}` POST. A delivery that is not answered 2xx within the timeout (3 s, as Graph's
client) is retried with exponential back-off; after the last attempt it is dropped and, when the
subscription has a lifecycle URL, a `missed` lifecycle notification tells the app to resync.
Each endpoint's answer times are kept: how many deliveries took longer than 2.9 s is what Graph
counts to decide whether an endpoint is slow (>= 10 %) or to drop it (>= 15 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp

from calsync.testing.microsoft.clock import format_timestamp, parse_instant
from calsync.testing.microsoft.errors import GraphError, bad_request

if TYPE_CHECKING:
    from calsync.testing.microsoft.state import GraphSimulator

log = logging.getLogger(__name__)

MAX_LIFETIME_MINUTES = 10_080
SLOW_SECONDS = 2.9
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


@dataclass
class NotifySettings:
    batch_window: float = 0.05
    delivery_timeout: float = 3.0
    validation_timeout: float = 10.0
    max_attempts: int = 5
    backoff: float = 0.5
    min_lifetime_minutes: float = 1.0
    over_max: str = "cap"  # "cap" the expiration at 10,080 minutes, or "reject" like older Graph
    allow_http: bool = True


@dataclass
class Subscription:
    id: str
    app_id: str
    user_id: str
    calendar_id: str
    resource: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: dt.datetime
    creator_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.subscription",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": format_timestamp(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationQueryOptions": None,
            "notificationUrlAppId": None,
        }


@dataclass
class EndpointStats:
    deliveries: int = 0
    attempts: int = 0
    failures: int = 0
    dropped: int = 0
    slow: int = 0
    latencies: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "deliveries": self.deliveries,
            "attempts": self.attempts,
            "failures": self.failures,
            "dropped": self.dropped,
            "slow_over_2_9s": self.slow,
            "slow_ratio": self.slow / self.attempts if self.attempts else 0.0,
            "max_latency": max(self.latencies, default=0.0),
        }


@dataclass
class _Pending:
    items: list[tuple[dict[str, Any], Subscription]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _with_query(url: str, name: str, value: str) -> str:
    return url + ("&" if "?" in url else "?") + f"{name}={quote(value, safe='')}"


class Notifier:
    """Owns the subscriptions of one simulator and delivers their notifications."""

    def __init__(self, sim: GraphSimulator) -> None:
        self.sim = sim
        self.settings = NotifySettings()
        self.subscriptions: dict[str, Subscription] = {}
        self.endpoints: dict[str, EndpointStats] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=5000)
        self._pending: dict[str, _Pending] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- HTTP client -------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        self._pending.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- subscriptions -----------------------------------------------------------------------

    def expire(self) -> list[str]:
        """Drop subscriptions whose expiration passed (not renewed in time); their ids."""
        now = self.sim.clock.now()
        gone = [s.id for s in self.subscriptions.values() if s.expiration <= now]
        for sub_id in gone:
            del self.subscriptions[sub_id]
        return gone

    def get(self, sub_id: str, app_id: str | None = None) -> Subscription:
        self.expire()
        found = self.subscriptions.get(sub_id)
        if found is None or (app_id is not None and found.app_id != app_id):
            raise GraphError(
                404, "ResourceNotFound", f"The object was not found. Subscription Id: {sub_id}."
            )
        return found

    def _expiration(self, value: Any) -> dt.datetime:
        if not isinstance(value, str) or not value:
            raise bad_request(
                "expirationDateTime is a required property for subscription creation.",
                "InvalidRequest",
            )
        try:
            when = parse_instant(value)
        except ValueError:
            raise bad_request(
                f"The expirationDateTime '{value}' is not a valid date and time.",
                "InvalidRequest",
            ) from None
        now = self.sim.clock.now()
        if when <= now:
            raise bad_request(
                "Subscription expiration date cannot be in the past.", "InvalidRequest"
            )
        if when < now + dt.timedelta(minutes=self.settings.min_lifetime_minutes):
            raise bad_request(
                "Subscription expiration must be at least "
                f"{self.settings.min_lifetime_minutes:g} minutes in the future.",
                "InvalidRequest",
            )
        limit = now + dt.timedelta(minutes=MAX_LIFETIME_MINUTES)
        if when > limit:
            if self.settings.over_max == "reject":
                raise bad_request(
                    f"Subscription expiration can only be {MAX_LIFETIME_MINUTES} minutes in "
                    "the future.",
                    "ExtensionError",
                )
            when = limit
        return when

    def _url(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not value:
            raise bad_request(f"{name} is a required property.", "InvalidRequest")
        parts = urlsplit(value)
        schemes = ("https", "http") if self.settings.allow_http else ("https",)
        if parts.scheme not in schemes or not parts.netloc:
            raise bad_request(
                f"Invalid {name}: '{value}'. It must be an HTTPS URL.", "InvalidRequest"
            )
        return value

    async def create(self, body: Mapping[str, Any], *, app_id: str, user_id: str) -> Subscription:
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.", "BadRequest")
        kinds = body.get("changeType")
        if not isinstance(kinds, str) or not kinds:
            raise bad_request("changeType is a required property.", "InvalidRequest")
        change_types = tuple(k.strip() for k in kinds.split(","))
        if any(k not in CHANGE_TYPES for k in change_types):
            raise bad_request(f"Invalid changeType '{kinds}'.", "InvalidRequest")
        resource = body.get("resource")
        if not isinstance(resource, str) or not resource:
            raise bad_request("resource is a required property.", "InvalidRequest")
        calendar_id, owner = self.sim.subscription_target(resource, user_id)
        notification_url = self._url(body.get("notificationUrl"), "notificationUrl")
        lifecycle_url = None
        if body.get("lifecycleNotificationUrl") is not None:
            lifecycle_url = self._url(
                body.get("lifecycleNotificationUrl"), "lifecycleNotificationUrl"
            )
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > 128
        ):
            raise bad_request(
                "clientState must be a string of at most 128 characters.", "InvalidRequest"
            )
        expiration = self._expiration(body.get("expirationDateTime"))
        for url in (notification_url, lifecycle_url):
            if url is not None:
                await self._validate(url)
        subscription = Subscription(
            id=str(uuid.uuid4()),
            app_id=app_id,
            user_id=owner,
            calendar_id=calendar_id,
            resource=resource,
            change_types=change_types,
            notification_url=notification_url,
            lifecycle_url=lifecycle_url,
            client_state=client_state,
            expiration=expiration,
            creator_id=user_id,
        )
        self.subscriptions[subscription.id] = subscription
        return subscription

    def update(self, sub_id: str, body: Mapping[str, Any], app_id: str) -> Subscription:
        subscription = self.get(sub_id, app_id)
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.", "BadRequest")
        if "lifecycleNotificationUrl" in body:
            raise bad_request(
                "lifecycleNotificationUrl cannot be updated; delete the subscription and "
                "create a new one.",
                "InvalidRequest",
            )
        allowed = {"expirationDateTime", "notificationUrl"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise bad_request(f"These properties cannot be updated: {unknown}.", "InvalidRequest")
        expiration = self._expiration(body.get("expirationDateTime"))
        if "notificationUrl" in body:
            subscription.notification_url = self._url(body["notificationUrl"], "notificationUrl")
        subscription.expiration = expiration
        return subscription

    def delete(self, sub_id: str, app_id: str) -> None:
        subscription = self.get(sub_id, app_id)
        del self.subscriptions[subscription.id]

    async def _validate(self, url: str) -> None:
        token = (
            "Validation: Testing client application reachability for subscription "
            f"Request-Id: {uuid.uuid4()}"
        )
        target = _with_query(url, "validationToken", token)
        started = time.monotonic()
        try:
            async with self._client().post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self.settings.validation_timeout),
            ) as response:
                body = await response.text(errors="replace")
                status = response.status
                content_type = response.content_type
        except TimeoutError:
            self._log_validation(url, None, time.monotonic() - started, "timeout")
            raise bad_request(
                "Subscription validation request timed out.", "InvalidRequest"
            ) from None
        except aiohttp.ClientError as exc:
            self._log_validation(url, None, time.monotonic() - started, type(exc).__name__)
            raise bad_request(
                "Subscription validation request failed. HTTP request failed: "
                f"{type(exc).__name__}.",
                "InvalidRequest",
            ) from None
        self._log_validation(url, status, time.monotonic() - started, "answered")
        if status != 200:
            raise bad_request(
                "Subscription validation request failed. Notification endpoint must respond "
                "with 200 OK to validation request.",
                "InvalidRequest",
            )
        if content_type != "text/plain":
            raise bad_request(
                "Subscription validation request failed. Response must have Content-Type "
                "text/plain.",
                "InvalidRequest",
            )
        if body != token:
            raise bad_request(
                "Subscription validation request failed. Response must exactly match "
                "validationToken query parameter.",
                "InvalidRequest",
            )

    def _log_validation(self, url: str, status: int | None, seconds: float, outcome: str) -> None:
        self.log.append(
            {
                "kind": "validation",
                "url": url,
                "status": status,
                "latency": seconds,
                "outcome": outcome,
                "time": self.sim.clock.time(),
            }
        )

    # -- delivery ----------------------------------------------------------------------------

    def event_changed(self, calendar_id: str, event_id: str, etag: str, change_type: str) -> None:
        """Queue a notification for every live subscription that watches the calendar."""
        self.expire()
        for subscription in self.subscriptions.values():
            if subscription.calendar_id != calendar_id:
                continue
            if change_type not in subscription.change_types:
                continue
            path = f"Users/{subscription.user_id}/Events/{event_id}"
            item = {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": format_timestamp(subscription.expiration),
                "changeType": change_type,
                "resource": path,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Event",
                    "@odata.id": path,
                    "@odata.etag": f'W/"{etag}"',
                    "id": event_id,
                },
                "clientState": subscription.client_state,
                "tenantId": self.sim.tenant_id,
            }
            self._enqueue(subscription.notification_url, item, subscription)

    def lifecycle(self, sub_id: str, event: str) -> Subscription:
        """Send a lifecycle event; `subscriptionRemoved` also removes the subscription."""
        if event not in LIFECYCLE_EVENTS:
            raise bad_request(f"Unknown lifecycle event '{event}'.", "InvalidRequest")
        subscription = self.get(sub_id)
        if subscription.lifecycle_url is not None:
            item = {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": format_timestamp(subscription.expiration),
                "tenantId": self.sim.tenant_id,
                "clientState": subscription.client_state,
                "lifecycleEvent": event,
            }
            self._enqueue(subscription.lifecycle_url, item, subscription)
        if event == "subscriptionRemoved":
            self.subscriptions.pop(subscription.id, None)
        return subscription

    def _enqueue(self, url: str, item: dict[str, Any], subscription: Subscription) -> None:
        pending = self._pending.setdefault(url, _Pending())
        pending.items.append((item, subscription))
        if pending.task is None or pending.task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (plain Python use): kept until the next change in a loop
            task = loop.create_task(self._deliver(url))
            pending.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str) -> None:
        await asyncio.sleep(self.settings.batch_window)
        pending = self._pending.get(url)
        if pending is None:
            return
        while pending.items:
            batch, pending.items = pending.items, []
            payload = {"value": [item for item, _ in batch]}
            delivered = await self._post_with_retries(url, payload)
            if not delivered:
                self._missed({sub.id: sub for _, sub in batch}.values(), url)

    async def _post_with_retries(self, url: str, payload: dict[str, Any]) -> bool:
        stats = self.endpoints.setdefault(_endpoint(url), EndpointStats())
        stats.deliveries += 1
        for attempt in range(1, self.settings.max_attempts + 1):
            stats.attempts += 1
            started = time.monotonic()
            status: int | None = None
            outcome = "answered"
            try:
                async with self._client().post(
                    url,
                    json=payload,
                    timeout=aiohttp.ClientTimeout(total=self.settings.delivery_timeout),
                ) as response:
                    await response.read()
                    status = response.status
            except TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError as exc:
                outcome = type(exc).__name__
            latency = time.monotonic() - started
            stats.latencies.append(latency)
            if latency > SLOW_SECONDS:
                stats.slow += 1
            self.log.append(
                {
                    "kind": "notification",
                    "url": url,
                    "attempt": attempt,
                    "status": status,
                    "latency": latency,
                    "outcome": outcome,
                    "items": len(payload["value"]),
                    "payload": payload,
                    "time": self.sim.clock.time(),
                }
            )
            if status is not None and 200 <= status < 300:
                return True
            stats.failures += 1
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(self.settings.backoff * (2 ** (attempt - 1)))
        stats.dropped += 1
        return False

    def _missed(self, subscriptions: Any, url: str) -> None:
        for subscription in subscriptions:
            if subscription.lifecycle_url and subscription.lifecycle_url != url:
                with contextlib.suppress(GraphError):
                    self.lifecycle(subscription.id, "missed")

    async def idle(self) -> None:
        """Wait until every queued notification was delivered or dropped (for tests)."""
        while any(not t.done() for t in self._tasks):
            await asyncio.gather(*[t for t in self._tasks if not t.done()], return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {url: s.to_json() for url, s in self.endpoints.items()}
