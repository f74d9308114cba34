"""What the gateway writes into WebhookSubscription status, and how rarely.

- `notificationsReceived` / `lastNotificationTime`: counted in memory per subscription and
  flushed every few seconds (and on shutdown) with one status patch per subscription,
  guarded by the resourceVersion of the cached object; a 409 re-reads the object and adds
  the delta to what it holds now. A burst of notifications is one write, not one each.
- `lifecycleEvents` (Graph): appended before the lifecycle notification is answered (the
  controller must not miss one), guarded the same way, at most 16 kept (the newest).

Every write is a merge patch of the status subresource with `metadata.resourceVersion`, so
two gateway replicas never overwrite each other's counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient

from calsync.controllers import kube
from calsync.controllers.policy import parse_time
from calsync.worker.informer import Informer

log = logging.getLogger(__name__)

Key = tuple[str, str]
FLUSH_INTERVAL = 5.0
ATTEMPTS = 5
MAX_LIFECYCLE_EVENTS = 16


def timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Delta:
    count: int
    last: dt.datetime


def counted_status(obj: Mapping[str, Any], delta: Delta) -> dict[str, Any]:
    """The status patch that adds `delta` to what `obj` holds (pure)."""
    status = obj.get("status") or {}
    received = int(status.get("notificationsReceived") or 0) + delta.count
    last = timestamp(delta.last)
    previous = parse_time(status.get("lastNotificationTime"))
    if previous is not None and previous > delta.last:
        last = timestamp(previous)
    return {"notificationsReceived": received, "lastNotificationTime": last}


def with_lifecycle_event(
    obj: Mapping[str, Any], event: str, received_at: dt.datetime
) -> dict[str, Any]:
    """The status patch that appends one lifecycle event, keeping the newest 16 (pure)."""
    events = list((obj.get("status") or {}).get("lifecycleEvents") or [])
    events.append({"event": event, "receivedAt": timestamp(received_at)})
    return {"lifecycleEvents": events[-MAX_LIFECYCLE_EVENTS:]}


def _counted(delta: Delta, obj: Mapping[str, Any]) -> dict[str, Any]:
    return counted_status(obj, delta)


class StatusWriter:
    """Guarded status patches of WebhookSubscriptions, starting from the cached object."""

    def __init__(self, client: AsyncClient, subscriptions: Informer) -> None:
        self._client = client
        self._subscriptions = subscriptions
        self._pending: dict[Key, Delta] = {}
        self.flushes = 0

    # -- counters ----------------------------------------------------------------------------

    def count(self, key: Key, when: dt.datetime) -> None:
        delta = self._pending.get(key)
        if delta is None:
            self._pending[key] = Delta(1, when)
        else:
            delta.count += 1
            delta.last = max(delta.last, when)

    def pending(self, key: Key) -> int:
        delta = self._pending.get(key)
        return delta.count if delta else 0

    async def flush(self) -> None:
        """One guarded patch per subscription with uncounted notifications."""
        batch, self._pending = self._pending, {}
        for key, delta in batch.items():
            try:
                await self._update(key, functools.partial(_counted, delta))
            except Exception as exc:  # kept for the next flush, whatever went wrong
                log.warning("could not write notification counts of %s/%s: %s", *key, exc)
                self._merge_back(key, delta)
        self.flushes += 1

    def _merge_back(self, key: Key, delta: Delta) -> None:
        later = self._pending.get(key)
        if later is None:
            self._pending[key] = delta
        else:
            later.count += delta.count
            later.last = max(later.last, delta.last)

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every `interval` seconds until cancelled; then flush once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            if self._pending:
                await asyncio.shield(self._final_flush())

    async def _final_flush(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 5.0)
        except Exception as exc:
            log.warning("could not write notification counts on shutdown: %s", exc)

    # -- lifecycle events -------------------------------------------------------------------

    async def add_lifecycle_event(self, key: Key, event: str, when: dt.datetime) -> None:
        await self._update(key, lambda obj: with_lifecycle_event(obj, event, when))

    # -- the guarded write ------------------------------------------------------------------

    async def _update(
        self, key: Key, change: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> None:
        namespace, name = key
        obj = self._subscriptions.get(namespace, name)
        for _ in range(ATTEMPTS):
            if obj is None:
                obj = await self._read(namespace, name)
                if obj is None:
                    return  # gone: nothing to count on
            try:
                written = await kube.patch_status_guarded(
                    self._client,
                    kube.WebhookSubscriptionResource,
                    namespace,
                    name,
                    obj["metadata"]["resourceVersion"],
                    change(obj),
                )
            except kube.Conflict:
                obj = None
                continue
            except ApiError as exc:
                if exc.status.code == 404:
                    return
                raise
            written.get("metadata", {}).pop("managedFields", None)
            self._subscriptions.put(written)
            return
        raise kube.Conflict(f"{namespace}/{name} kept changing")

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self._client.get(
                kube.WebhookSubscriptionResource, name, namespace=namespace
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        body: dict[str, Any] = obj.to_dict()  # type: ignore[no-untyped-call]
        body.get("metadata", {}).pop("managedFields", None)
        return body
