"""The one small interface every calendar provider implements, and the errors it may raise.

The sync engine knows nothing else about a provider: it lists calendars, then pages through one
calendar's changes from a cursor it stored, and reacts to the typed errors below. Providers do
all their own I/O, parsing and rate limiting; they never import kopf or a Kubernetes client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from calsync.model import Calendar, ChangePage, Window

# Returns what the store holds for one calendar: provider id -> etag. The CalDAV fallback ladder
# (no sync-collection) compares it with the server's etag listing to fetch only what changed.
KnownEtags = Callable[[], Awaitable[Mapping[str, str | None]]]


class ProviderError(Exception):
    """A provider call failed; `retryable` says whether the same call may succeed later."""

    retryable: bool = True
    reason: str = "ProviderError"  # CamelCase, used as condition reason and Event reason


class AuthenticationFailed(ProviderError):
    """The credentials were refused (401/403 that is not a rate limit)."""

    retryable = False
    reason = "AuthenticationFailed"


class CredentialsRevoked(AuthenticationFailed):
    """Credentials that used to work are refused now (iCloud app password, invalid_grant)."""

    reason = "CredentialsRevoked"


class InvalidGrant(CredentialsRevoked):
    """The OAuth refresh token was refused (`invalid_grant`): the user must consent again."""

    reason = "InvalidGrant"


class RateLimited(ProviderError):
    """The provider, or our own budget for it, says wait; `retry_after` in seconds."""

    reason = "RateLimited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CursorInvalid(ProviderError):
    """The stored cursor (sync token, delta link) is no longer accepted: resync the calendar."""

    reason = "CursorInvalid"


class CalendarGone(ProviderError):
    """The calendar no longer exists (or is no longer shared with the account)."""

    retryable = False
    reason = "CalendarGone"


class InvalidConfiguration(ProviderError):
    """The connection's settings cannot work (bad URL, blocked address, no calendar home)."""

    retryable = False
    reason = "InvalidConfiguration"


class CalendarProvider(Protocol):
    """What the engine needs from a provider."""

    async def list_calendars(self) -> list[Calendar]:
        """Every calendar of the account that holds events."""
        ...

    def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        """Pages of changes since `cursor` (None: a full listing, pages marked `full`).

        Raises CursorInvalid when the provider rejects `cursor`. Pages hold at most about
        `batch_size` resources. The last page has `complete=True` and the new cursor.
        """
        ...

    async def aclose(self) -> None: ...


# The default of the max_response_size setting: a larger provider response body is not read.
MAX_RESPONSE_BYTES: Final = 256 << 20


def response_too_large(method: str, url: str, cap: int) -> ProviderError:
    """The refusal of a response body over `cap` bytes: final, a retry would read it again."""
    size = f"{cap >> 20} MiB" if cap >= 1 << 20 and not cap % (1 << 20) else f"{cap} bytes"
    error = ProviderError(
        f"{method} {url}: response larger than {size} (MAX_RESPONSE_SIZE); not read further"
    )
    error.retryable = False
    return error


def too_large(size: int, limit: int) -> str:
    """Why an event's JSON was skipped: the same words as the iCalendar path's refusal."""
    return f"event of {size} characters exceeds the limit of {limit} (MAX_OBJECT_SIZE)"


async def let_go(task: asyncio.Future[Any]) -> None:
    """Cancel `task` (work started ahead that will not be used) and wait until it has ended.

    Its outcome is retrieved, so asyncio logs nothing about it. Unlike `suppress(BaseException)`
    around `await task`, this never swallows a cancellation of the caller itself (a run's
    timeout, a lost claim): that one still ends the caller."""
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
    if not task.cancelled():
        task.exception()
