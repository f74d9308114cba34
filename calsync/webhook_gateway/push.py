"""The gateway's push state: the two watch-fed caches, the recorder, the limits, the stats.

One `PushGateway` per gateway process. It watches WebhookSubscriptions (indexed by channel
id, for verification) and SyncJobs (indexed by calendar, for recording) in the configured
namespaces, flushes subscription counters every few seconds, and keeps what `/api/health`
reports. The routes that use it are in `webhooks`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter

from lightkube import AsyncClient

from calsync.controllers import kube
from calsync.controllers.tokens import TokenVault
from calsync.settings import Settings
from calsync.webhook_gateway.counters import StatusWriter
from calsync.webhook_gateway.limits import KeyedLimiter, address_limiter, channel_limiter
from calsync.webhook_gateway.recorder import Recorder, WebhookJobIndex
from calsync.webhook_gateway.verify import SubscriptionIndex
from calsync.worker.informer import Informer

log = logging.getLogger(__name__)

RING_RELOAD_INTERVAL = 30.0  # at most one keyring re-read per this many seconds


class PushGateway:
    def __init__(
        self,
        settings: Settings,
        client: AsyncClient,
        vault: TokenVault,
        *,
        flush_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.vault = vault
        self.flush_interval = flush_interval
        self.subscription_index = SubscriptionIndex()
        self.job_index = WebhookJobIndex()
        self.subscriptions = Informer(
            client,
            kube.WebhookSubscriptionResource,
            settings.namespaces,
            index=self.subscription_index.update,
            name="webhooksubscriptions",
        )
        self.jobs = Informer(
            client,
            kube.SyncJobResource,
            settings.namespaces,
            index=self.job_index.update,
            name="syncjobs",
        )
        self.recorder = Recorder(
            client,
            self.jobs,
            self.job_index,
            timeout=settings.webhook_timeout,
            ttl=int(settings.syncjob_history),
            connection_uid=self._connection_uid,
            coalesce=settings.webhook_coalesce,
            coalesce_max=settings.webhook_coalesce_max,
        )
        self.writer = StatusWriter(client, self.subscriptions)
        self.channels: KeyedLimiter = channel_limiter(settings.webhook_rate_limit)
        self.addresses: KeyedLimiter = address_limiter(settings.webhook_address_rate_limit)
        # Log lines about calls cut off by the address limit: 10 per second, all addresses.
        self.flood_log = KeyedLimiter(10, 10.0, max_keys=1)
        self.flood_log_suppressed = 0
        self.results: Counter[tuple[str, str]] = Counter()
        self.last_verified: dt.datetime | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self._ring_loaded = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def synced(self) -> bool:
        return self.subscriptions.ready.is_set() and self.jobs.ready.is_set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.subscriptions.run(), name="gateway-webhooksubscriptions"),
            asyncio.create_task(self.jobs.run(), name="gateway-syncjobs"),
            asyncio.create_task(self.writer.run(self.flush_interval), name="gateway-counters"),
        ]

    async def stop(self) -> None:
        """Stop the watches; the counter flusher writes what it still holds on its way out."""
        await self.recorder.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _connection_uid(self, namespace: str, name: str) -> str | None:
        """Only for subscriptions without an owner reference (normally there is one)."""
        body = await kube.get_connection(self.client, namespace, name)
        return str(body["metadata"]["uid"]) if body is not None else None

    async def refresh_ring(self, presented: str | None) -> None:
        """Re-read the keyring when a value names a key we do not know (rotated elsewhere),
        at most once per RING_RELOAD_INTERVAL however many such values arrive."""
        key_id, dot, _ = (presented or "").partition(".")
        if not dot or not key_id:
            return
        try:
            if self.vault.keyring.get(key_id) is not None:
                return
        except RuntimeError:
            return
        now = time.monotonic()
        if now - self._ring_loaded < RING_RELOAD_INTERVAL:
            return
        self._ring_loaded = now
        try:
            await self.vault.reload()
        except Exception as exc:
            log.warning("could not re-read the keyring: %s", exc)
