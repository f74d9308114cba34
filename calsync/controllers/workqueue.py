"""A keyed work queue with due times: the operator's one scheduler.

Keys (a connection's namespace and name) are added when something about them may have changed (a
watch event of the connection, one of its SyncJobs or one of its Secrets) or when a time they
asked for comes (the next poll). A fixed number of tasks take keys off the queue and reconcile
them; a key is never handled by two tasks at once, and a key added while it is being handled
is handled once more afterwards, so no change is missed. A handler that raises is retried with
capped exponential back-off per key, like client-go's rate-limited queue.

Two properties follow, and they are why this exists instead of a Kopf timer per object: idle
objects cost nothing (no task, no request, only a heap entry), and the number of API calls in
flight is bounded by the number of tasks, so a burst of a thousand changes queues up instead of
exhausting the HTTP client's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

ERROR_BACKOFF_BASE = 1.0
ERROR_BACKOFF_CAP = 300.0


class WorkQueue(Generic[K]):
    """Reconcile keys when they are added or fall due, at most `concurrency` at a time."""

    def __init__(
        self,
        handler: Callable[[K], Awaitable[float | None]],
        *,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
        name: str = "workqueue",
    ) -> None:
        """`handler(key)` returns seconds until it wants to run again for that key, or None."""
        self._handler = handler
        self._concurrency = concurrency
        self._clock = clock
        self._name = name
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()  # in _ready, not yet taken
        self._active: set[K] = set()  # being handled now
        self._again: set[K] = set()  # added while active: handle once more
        self._due: list[tuple[float, int, K]] = []  # heap of (when, seq, key)
        self._due_at: dict[K, float] = {}  # the earliest live due time of each key
        self._seq = 0
        self._failures: dict[K, int] = {}
        self._wake = asyncio.Event()

    # -- feeding -----------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Handle `key` as soon as a task is free (once, however often it is added)."""
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def add_after(self, key: K, seconds: float) -> None:
        """Handle `key` in `seconds` (an earlier request for it wins)."""
        if seconds <= 0:
            self.add(key)
            return
        when = self._clock() + seconds
        current = self._due_at.get(key)
        if current is not None and current <= when:
            return
        self._due_at[key] = when
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, key))
        self._wake.set()

    def forget(self, key: K) -> None:
        """Drop what is scheduled for `key` (it was deleted); a running handler finishes."""
        self._due_at.pop(key, None)
        self._failures.pop(key, None)
        self._again.discard(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._due_at)

    @property
    def scheduled(self) -> int:
        return len(self._due_at)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._work(), name=f"{self._name}-{i}")
            for i in range(self._concurrency)
        ]
        tasks.append(asyncio.create_task(self._timer(), name=f"{self._name}-timer"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _timer(self) -> None:
        while True:
            now = self._clock()
            while self._due and self._due[0][0] <= now:
                when, _, key = heapq.heappop(self._due)
                if self._due_at.get(key) == when:
                    del self._due_at[key]
                    self.add(key)
            timeout = self._due[0][0] - now if self._due else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            # What the handler returns replaces whatever was scheduled for the key.
            self._due_at.pop(key, None)
            try:
                again = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(ERROR_BACKOFF_CAP, ERROR_BACKOFF_BASE * 2 ** (failures - 1))
                log.warning(
                    "reconciling %s failed (%s: %s); again in %.0f s",
                    key,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
                if again is not None:
                    self.add_after(key, again)
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
