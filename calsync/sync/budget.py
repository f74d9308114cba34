"""Per-connection request budgets: a token bucket with a sustained rate and a generous burst.

The seed platform limited providers per hour (CalDAV 100, Google 1000, Microsoft 10000 requests
per connection). A plain fixed window would throttle the first sync of a large calendar, so
each connection gets a bucket whose capacity is a whole hour's budget: an initial sync may spend
it at once (a sync-collection initial sync of 10,000 events takes a handful of requests; the
multiget fallback about one request per 100 changed events), and afterwards the bucket refills
at the sustained rate. A request that would have to wait longer than `max_wait` raises
RateLimited with the wait as `retry_after`, so a job gives its worker slot back instead of
sleeping in it; shorter waits are simply slept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from calsync.providers.base import RateLimited


class TokenBucket:
    def __init__(
        self,
        per_hour: float,
        *,
        burst: float | None = None,
        max_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_hour <= 0:
            raise ValueError("per_hour must be positive")
        self.rate = per_hour / 3600.0
        self.capacity = burst if burst is not None else per_hour
        self.max_wait = max_wait
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()
        self.spent = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens

    def wait_time(self, cost: float = 1.0) -> float:
        self._refill()
        return 0.0 if self._tokens >= cost else (cost - self._tokens) / self.rate

    async def acquire(self, cost: float = 1.0) -> None:
        async with self._lock:
            wait = self.wait_time(cost)
            if wait > self.max_wait:
                raise RateLimited(
                    f"request budget exhausted ({self.capacity:.0f} burst, "
                    f"{self.rate * 3600:.0f}/hour); next request in {wait:.0f} s",
                    retry_after=wait,
                )
            if wait > 0:
                await asyncio.sleep(wait)
                self._refill()
            self._tokens -= cost
            self.spent += 1


class Budgets:
    """One bucket per (connection, provider kind), created on first use and kept."""

    def __init__(self, per_hour: dict[str, int]) -> None:
        self._per_hour = per_hour
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def for_connection(self, connection: str, provider: str) -> TokenBucket:
        key = (connection, provider)
        bucket = self._buckets.get(key)
        if bucket is None:
            limit = self._per_hour.get(provider) or self._per_hour.get("caldav", 100)
            bucket = self._buckets[key] = TokenBucket(limit)
        return bucket

    def forget(self, connection: str) -> None:
        for key in [k for k in self._buckets if k[0] == connection]:
            del self._buckets[key]
