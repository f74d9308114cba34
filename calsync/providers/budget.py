"""The request budget a provider spends before every HTTP request (rate limiting).

Providers only need something to wait on; the engine owns the policy (`calsync.sync.budget`
has the token bucket). `acquire` may sleep, or raise `RateLimited` when the wait would be too
long for the job to hold its worker.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RequestBudget(Protocol):
    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        ...
