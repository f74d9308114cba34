"""Request control: Outlook's throttling, injected faults, artificial latency, and counters.

Outlook limits each app per mailbox to four concurrent requests (a fifth gets 429 with
Retry-After, error `ApplicationThrottled`, "MailboxConcurrency") and to a number of requests
per window (10,000 per 10 minutes; here off unless an admin sets a sustained limit, so tests
can make it small). Faults are rules "the next N requests matching METHOD and a path pattern
answer STATUS", optionally after letting the first `skip` matches through, so a test can fail
exactly the third page of a delta round. `hold` parks every Graph request after it took its
concurrency slot until released: with it a test sees the concurrency limit deterministically,
without timing. Counters record what a test or benchmark wants to assert: requests per path
and mailbox, statuses, peak concurrency, faults served, throttled answers, and a bounded log
of request timestamps.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from calsync.testing.microsoft.clock import SimClock
from calsync.testing.microsoft.errors import GraphError

FAULT_CODES = {
    429: ("TooManyRequests", "Please retry after"),
    500: ("generalException", "An unspecified error has occurred."),
    502: ("BadGateway", "Bad Gateway"),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Try again later."),
    504: ("UnknownError", "The request timed out."),
}
LOG_LIMIT = 20_000


@dataclass
class Fault:
    status: int
    method: str = "*"
    path: str = "*"
    count: int = 1
    skip: int = 0
    retry_after: float | None = None
    code: str | None = None
    message: str | None = None
    served: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method.upper() == method.upper()) and (
            fnmatch.fnmatchcase(path, self.path)
        )


@dataclass
class Sustained:
    requests: int
    window_seconds: float
    retry_after: float | None = None


def retry_after_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


@dataclass
class RequestControl:
    clock: SimClock
    concurrency_limit: int | None = 4
    concurrency_retry_after: float = 1.0
    sustained: Sustained | None = None
    latency: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak_concurrency: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    by_mailbox: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults_served: int = 0
    throttled: int = 0
    total: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    _recent: dict[str, deque[float]] = field(default_factory=dict)
    _gate: asyncio.Event | None = None
    _held: bool = False

    # -- admission ----------------------------------------------------------------------------

    def admit(self, mailbox: str) -> None:
        """Take a concurrency slot for the mailbox, or raise the 429 Outlook answers."""
        if self.sustained is not None:
            window = self._recent.setdefault(mailbox, deque())
            now = self.clock.time()
            while window and window[0] <= now - self.sustained.window_seconds:
                window.popleft()
            if len(window) >= self.sustained.requests:
                wait = self.sustained.retry_after
                if wait is None:
                    wait = max(1.0, float(int(window[0] + self.sustained.window_seconds - now + 1)))
                self.throttled += 1
                raise GraphError(
                    429,
                    "TooManyRequests",
                    "Please retry after",
                    headers={"Retry-After": retry_after_text(wait)},
                )
            window.append(now)
        if self.concurrency_limit is not None and self.in_flight[mailbox] >= self.concurrency_limit:
            self.throttled += 1
            raise GraphError(
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                headers={"Retry-After": retry_after_text(self.concurrency_retry_after)},
            )
        self.in_flight[mailbox] += 1
        if self.in_flight[mailbox] > self.peak_concurrency[mailbox]:
            self.peak_concurrency[mailbox] = self.in_flight[mailbox]

    def release(self, mailbox: str) -> None:
        self.in_flight[mailbox] -= 1
        if self.in_flight[mailbox] <= 0:
            del self.in_flight[mailbox]

    def check_faults(self, method: str, path: str) -> None:
        for fault in self.faults:
            if fault.count <= 0 or not fault.matches(method, path):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            fault.count -= 1
            fault.served += 1
            self.faults_served += 1
            code, message = FAULT_CODES.get(fault.status, ("generalException", "Injected fault"))
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = retry_after_text(fault.retry_after)
            raise GraphError(
                fault.status, fault.code or code, fault.message or message, headers=headers
            )
        self.faults = [f for f in self.faults if f.count > 0]

    async def delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self._held and self._gate is not None:
            await self._gate.wait()

    def hold(self) -> None:
        if self._gate is None:
            self._gate = asyncio.Event()
        self._gate.clear()
        self._held = True

    def release_held(self) -> None:
        self._held = False
        if self._gate is not None:
            self._gate.set()

    @property
    def held(self) -> int:
        return sum(self.in_flight.values()) if self._held else 0

    # -- counters -----------------------------------------------------------------------------

    def record(self, method: str, path: str, mailbox: str | None, status: int) -> None:
        self.total += 1
        self.by_path[path] += 1
        if mailbox is not None:
            self.by_mailbox[mailbox] += 1
        self.by_status[status] += 1
        self.log.append(
            {
                "time": self.clock.time(),
                "method": method,
                "path": path,
                "mailbox": mailbox,
                "status": status,
            }
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "by_mailbox": dict(self.by_mailbox),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "peak_concurrency": dict(self.peak_concurrency),
            "in_flight": dict(self.in_flight),
            "faults_served": self.faults_served,
            "throttled": self.throttled,
            "faults_pending": [asdict(f) for f in self.faults],
            "requests": list(self.log),
        }

    def reset_counters(self) -> None:
        self.by_path.clear()
        self.by_mailbox.clear()
        self.by_status.clear()
        self.peak_concurrency.clear()
        self.faults_served = 0
        self.throttled = 0
        self.total = 0
        self.log.clear()
