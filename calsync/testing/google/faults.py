"""Fault injection, a sustained per-user rate limit, and the counters tests read.

Faults: "the next N requests matching METHOD and PATH answer X". A fault names one of Google's
failure kinds (`KINDS`) or an explicit status and reason, optionally a Retry-After and a delay
before answering. Matching uses shell-style patterns (`fnmatch`) on the method, the path and
the raw query string, so `*/events` matches every calendar's listing, `/token` the token
endpoint, and the query pattern `*pageToken=*` only the pages after the first.

The sustained limit models Google's per-user quota: at most `per_second` API requests of one
user are served in any one-second window; beyond that the request answers 403
`rateLimitExceeded` (with a Retry-After when one is configured). Refused requests do not use
up the window, so a client that backs off converges.

The counters record what was served (per route and per user), the faults and rate-limit refusals
answered, the peak number of concurrent requests, and the time of every API request, so a test
can check a rate was respected without timing anything itself.
"""

from __future__ import annotations

import collections
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Final

from calsync.testing.google.errors import GoogleError

# kind -> (status, reason, message)
KINDS: Final[dict[str, tuple[int, str, str]]] = {
    "tooManyRequests": (429, "rateLimitExceeded", "Rate Limit Exceeded"),
    "rateLimitExceeded": (403, "rateLimitExceeded", "Rate Limit Exceeded"),
    "userRateLimitExceeded": (403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
    "quotaExceeded": (403, "quotaExceeded", "Calendar usage limits exceeded."),
    "backendError": (500, "backendError", "Backend Error"),
    "serviceUnavailable": (503, "backendError", "The service is currently unavailable."),
}
KINDS["429"] = KINDS["tooManyRequests"]
KINDS["500"] = KINDS["backendError"]
KINDS["503"] = KINDS["serviceUnavailable"]

MAX_TIMESTAMPS: Final = 200_000


@dataclass
class Fault:
    id: int
    status: int
    reason: str
    message: str
    method: str = "*"
    path: str = "*"
    query: str = "*"
    remaining: int = 1
    retry_after: str | None = None
    user: str | None = None  # only this user's requests (None: anyone's)
    delay: float = 0.0
    served: int = 0

    def matches(self, method: str, path: str, query: str, user: str | None) -> bool:
        if self.remaining <= 0:
            return False
        if self.user is not None and self.user != user:
            return False
        return (
            fnmatch.fnmatchcase(method.upper(), self.method.upper())
            and fnmatch.fnmatchcase(path, self.path)
            and fnmatch.fnmatchcase(query, self.query)
        )

    def error(self) -> GoogleError:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        domain = "usageLimits" if self.status in (403, 429) else "global"
        return GoogleError(self.status, self.reason, self.message, domain=domain, headers=headers)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "remaining": self.remaining,
            "served": self.served,
            "retry_after": self.retry_after,
            "user": self.user,
            "delay": self.delay,
        }


@dataclass
class RateLimit:
    per_second: float
    retry_after: str | None = None
    accepted: dict[str, collections.deque[float]] = field(default_factory=dict)

    def admit(self, user: str, now: float) -> bool:
        window = self.accepted.setdefault(user, collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.per_second:
            return False
        window.append(now)
        return True


@dataclass
class Stats:
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    by_user: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    rate_limited: int = 0
    in_flight: int = 0
    peak_concurrency: int = 0
    timestamps: collections.deque[tuple[float, str, str, str | None, int]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_TIMESTAMPS)
    )

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_by_user": dict(self.by_user),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "faults_served": dict(self.faults),
            "rate_limited": self.rate_limited,
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "api_requests": [
                {"at": at, "method": method, "path": path, "user": user, "status": status}
                for at, method, path, user, status in self.timestamps
            ],
        }


def fault_from(spec: dict[str, Any], fault_id: int) -> Fault:
    """A Fault from the admin API's JSON (or keyword arguments); ValueError when unusable."""
    kind = spec.get("kind")
    status = spec.get("status")
    reason = spec.get("reason")
    message = spec.get("message")
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        status, reason, default_message = KINDS[str(kind)]
        message = message or default_message
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("a fault needs a kind, or a status between 400 and 599")
    count = spec.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise ValueError("count must be a positive integer")
    retry_after = spec.get("retry_after")
    if retry_after is not None and not isinstance(retry_after, (int, float, str)):
        raise ValueError("retry_after must be seconds or an HTTP date")
    delay = spec.get("delay", 0.0)
    if not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
        raise ValueError("delay must be between 0 and 60 seconds")
    user = spec.get("user")
    unknown = set(spec) - {
        "kind",
        "status",
        "reason",
        "message",
        "method",
        "path",
        "query",
        "count",
        "retry_after",
        "delay",
        "user",
    }
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    return Fault(
        id=fault_id,
        status=status,
        reason=str(reason or "backendError"),
        message=str(message or "Error"),
        method=str(spec.get("method") or "*"),
        path=str(spec.get("path") or "*"),
        query=str(spec.get("query") or "*"),
        remaining=count,
        retry_after=_retry_after_text(retry_after),
        user=str(user) if user else None,
        delay=float(delay),
    )


def _retry_after_text(value: int | float | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
