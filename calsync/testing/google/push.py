"""Push notification channels (`events.watch`) and their delivery over real HTTP.

A channel watches one calendar's events. The simulator POSTs to the channel's address with no
body and the `X-Goog-*` headers: first a `sync` message (number 1), queued before the watch
call answers, so it may arrive first, as Google warns; then `exists` after every change to the
calendar, and `not_exists` when the calendar goes away. Message numbers increase but skip
values, as Google's do, so a receiver cannot count on consecutive numbers.

Each channel has one delivery task that sends its messages in order. An answer of 200, 201,
202, 204 or 102 is a delivery; 500, 502, 503, 504 and connection failures are retried with
exponential back-off, up to `max_attempts` tries per message; anything else is given up at
once. Nothing is sent once the channel has expired or been stopped. Every attempt is logged
(`deliveries`), which is what tests read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp

from calsync.testing.google.errors import GoogleError, bad_request, not_found, required
from calsync.testing.google.model import Settings

log = logging.getLogger(__name__)

DELIVERED: Final = frozenset({102, 200, 201, 202, 204})
RETRIED: Final = frozenset({500, 502, 503, 504})


@dataclass
class Delivery:
    number: int
    state: str  # sync | exists | not_exists
    attempt: int
    at: float
    status: int | None = None
    error: str | None = None
    outcome: str = "pending"  # delivered | retrying | failed | expired

    def as_json(self) -> dict[str, Any]:
        return {
            "message_number": self.number,
            "state": self.state,
            "attempt": self.attempt,
            "at": self.at,
            "status": self.status,
            "error": self.error,
            "outcome": self.outcome,
        }


@dataclass(eq=False)
class Channel:
    id: str
    resource_id: str
    resource_uri: str
    token: str | None
    address: str
    expiration_ms: int
    user: str
    client_id: str
    calendar_id: str
    created: float
    next_number: int = 1
    stopped: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    queue: asyncio.Queue[tuple[int, str]] | None = None
    task: asyncio.Task[None] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
            "token": self.token,
            "address": self.address,
            "expiration": str(self.expiration_ms),
            "user": self.user,
            "client_id": self.client_id,
            "calendarId": self.calendar_id,
            "stopped": self.stopped,
            "deliveries": [d.as_json() for d in self.deliveries],
        }

    def resource(self) -> dict[str, Any]:
        """The answer to events.watch."""
        out: dict[str, Any] = {
            "kind": "api#channel",
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
            "expiration": str(self.expiration_ms),
        }
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass
class PushSettings:
    retry_backoff: float = 0.5  # first retry after this many seconds, doubling
    max_attempts: int = 4
    timeout: float = 10.0


class Deliverer:
    """Runs the delivery tasks of all channels on the simulator's event loop."""

    def __init__(self, clock: Callable[[], float], settings: PushSettings, seed: int) -> None:
        self._clock = clock
        self.settings = settings
        self._random = random.Random(seed)  # noqa: S311 - message number gaps, not secrets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def next_number(self, channel: Channel) -> int:
        number = channel.next_number
        channel.next_number += self._random.randint(2, 9)
        return number

    def enqueue(self, channel: Channel, state: str) -> None:
        """Queue one message; safe from any thread, a no-op before the app has started."""
        if channel.stopped:
            return
        number = self.next_number(channel)
        loop = self._loop
        if loop is None or loop.is_closed():
            log.warning("push message for channel %s dropped: simulator not running", channel.id)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(channel, number, state)
        else:  # another thread (a test driving the simulator object directly)
            loop.call_soon_threadsafe(self._put, channel, number, state)

    def _put(self, channel: Channel, number: int, state: str) -> None:
        if channel.stopped:
            return
        if channel.queue is None:
            channel.queue = asyncio.Queue()
        channel.queue.put_nowait((number, state))
        if channel.task is None or channel.task.done():
            channel.task = asyncio.get_running_loop().create_task(self._run(channel))
            self._tasks.add(channel.task)
            channel.task.add_done_callback(self._tasks.discard)

    def stop(self, channel: Channel) -> None:
        channel.stopped = True
        task = channel.task
        if task is not None and not task.done():
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    async def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout)
            )
        return self._session

    def _expired(self, channel: Channel) -> bool:
        return self._clock() * 1000 >= channel.expiration_ms

    async def _run(self, channel: Channel) -> None:
        assert channel.queue is not None
        while not channel.queue.empty():
            number, state = channel.queue.get_nowait()
            await self._deliver(channel, number, state)

    async def _deliver(self, channel: Channel, number: int, state: str) -> None:
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": email.utils.formatdate(
                channel.expiration_ms / 1000, usegmt=True
            ),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        delay = self.settings.retry_backoff
        for attempt in range(1, self.settings.max_attempts + 1):
            record = Delivery(number, state, attempt, self._clock())
            channel.deliveries.append(record)
            if channel.stopped or self._expired(channel):
                record.outcome = "expired" if not channel.stopped else "failed"
                record.error = "channel stopped" if channel.stopped else "channel expired"
                return
            try:
                session = await self._session_get()
                async with session.post(channel.address, data=b"", headers=headers) as response:
                    await response.read()
                    record.status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                record.error = type(exc).__name__
            if record.status in DELIVERED:
                record.outcome = "delivered"
                return
            if record.status is not None and record.status not in RETRIED:
                record.outcome = "failed"
                return
            if attempt == self.settings.max_attempts:
                record.outcome = "failed"
                return
            record.outcome = "retrying"
            await asyncio.sleep(delay)
            delay *= 2

    async def idle(self) -> None:
        """Wait until every queued message has been delivered or given up (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


DEFAULT_TTL: Final = 7 * 24 * 3600.0
CHANNEL_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="
)


class Channels:
    """The open channels (by id), the last thousand stopped ones, and their deliverer."""

    def __init__(
        self, clock: Callable[[], float], settings: Settings, deliverer: Deliverer
    ) -> None:
        self._clock = clock
        self._settings = settings
        self.deliverer = deliverer
        self.active: dict[str, Channel] = {}
        self.stopped: collections.deque[Channel] = collections.deque(maxlen=1000)

    def watch(
        self,
        *,
        user: str,
        client_id: str,
        calendar_id: str,
        resource_id: str,
        body: Any,
        base_url: str,
    ) -> dict[str, Any]:
        """events.watch: validate the channel, open it, queue its `sync` message."""
        if not isinstance(body, Mapping):
            raise bad_request("Invalid channel body.", reason="parseError")
        channel_id = body.get("id")
        if not channel_id:
            raise required("Required channel id")
        if (
            not isinstance(channel_id, str)
            or len(channel_id) > 64
            or not set(channel_id) <= CHANNEL_ID_CHARS
        ):
            raise bad_request("Invalid channel id.")
        kind = body.get("type")
        if kind not in ("web_hook", "webhook"):
            raise bad_request(f"Unknown channel type: {str(kind)[:40]}")
        address = body.get("address")
        if not isinstance(address, str) or not address:
            raise required("Required address")
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"Invalid webhook address: {address[:200]}")
        if self._settings.require_https and parts.scheme != "https":
            raise GoogleError(
                400, "push.webhookUrlNotHttps", f"WebHook callback must be HTTPS: {address[:200]}"
            )
        token = body.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > 256):
            raise bad_request("Invalid channel token (at most 256 characters).")
        if channel_id in self.active:
            raise GoogleError(400, "channelIdNotUnique", "Channel id not unique")
        expiration = self._expiration(body)
        channel = Channel(
            id=channel_id,
            resource_id=resource_id,
            resource_uri=f"{base_url}/calendar/v3/calendars/{quote(calendar_id, safe='')}"
            "/events?alt=json",
            token=token,
            address=address,
            expiration_ms=expiration,
            user=user,
            client_id=client_id,
            calendar_id=calendar_id,
            created=self._clock(),
        )
        self.active[channel_id] = channel
        self.deliverer.enqueue(channel, "sync")
        return channel.resource()

    def _expiration(self, body: Mapping[str, Any]) -> int:
        now_ms = int(self._clock() * 1000)
        longest = now_ms + int(self._settings.max_channel_ttl * 1000)
        ttl = DEFAULT_TTL
        params = body.get("params")
        if params is not None:
            if not isinstance(params, Mapping):
                raise bad_request("Invalid channel params.")
            if params.get("ttl") is not None:
                try:
                    ttl = float(params["ttl"])
                except (TypeError, ValueError):
                    raise bad_request("Invalid value for: params.ttl") from None
                if not 0 < ttl < 1e12:
                    raise bad_request("Invalid value for: params.ttl")
        if body.get("expiration") is None:
            return min(now_ms + int(ttl * 1000), longest)
        try:
            asked = int(str(body["expiration"]))
        except ValueError:
            raise bad_request("Invalid value for: expiration") from None
        if asked <= now_ms:
            raise bad_request("Channel expiration is in the past.")
        return min(asked, longest)

    def stop(self, *, user: str, client_id: str, body: Any) -> None:
        """channels.stop: only the user and client that opened a channel may stop it."""
        if not isinstance(body, Mapping):
            raise bad_request("Invalid channel body.", reason="parseError")
        channel_id, resource_id = body.get("id"), body.get("resourceId")
        if not channel_id:
            raise required("Required channel id")
        if not resource_id:
            raise required("Required resourceId")
        channel = self.active.get(str(channel_id))
        if (
            channel is None
            or channel.resource_id != resource_id
            or channel.user != user
            or channel.client_id != client_id
        ):
            raise not_found(f"Channel '{str(channel_id)[:64]}' not found for project")
        self._close(channel)

    def _close(self, channel: Channel) -> None:
        self.active.pop(channel.id, None)
        self.deliverer.stop(channel)
        self.stopped.append(channel)

    def changed(self, calendar_id: str) -> None:
        """`exists` to every open channel on the calendar."""
        self._expire()
        for channel in list(self.active.values()):
            if channel.calendar_id == calendar_id:
                self.deliverer.enqueue(channel, "exists")

    def calendar_gone(self, calendar_id: str) -> None:
        """`not_exists` to the calendar's channels, which then close."""
        for channel in list(self.active.values()):
            if channel.calendar_id == calendar_id:
                self.deliverer.enqueue(channel, "not_exists")
                self.active.pop(channel.id, None)
                self.stopped.append(channel)

    def user_gone(self, user: str) -> None:
        for channel in list(self.active.values()):
            if channel.user == user:
                self._close(channel)

    def _expire(self) -> None:
        now_ms = self._clock() * 1000
        for channel in list(self.active.values()):
            if channel.expiration_ms <= now_ms:
                self._close(channel)

    def close_all(self) -> None:
        for channel in list(self.active.values()):
            self._close(channel)

    def as_json(self) -> list[dict[str, Any]]:
        self._expire()
        return [c.as_json() for c in self.active.values()] + [c.as_json() for c in self.stopped]
