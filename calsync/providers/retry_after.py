"""The one Retry-After parser of the providers (Google, Graph, OAuth token endpoints, CalDAV).

RFC 9110 10.2.3: `Retry-After` is delta-seconds (ASCII digits) or an HTTP date. Accepted here:
- delta-seconds, and a decimal fraction of them ("1.5"): Graph's throttling answers and the
  simulators send those; nothing else that `float()` would take ("inf", "1e9", "-3", "nan",
  non-ASCII digits) counts.
- an HTTP date (IMF-fixdate, or the obsolete forms `email.utils` reads); a date without a zone
  ("-0000") is UTC, never the host's local time; a date in the past means "now" (0).
The result is capped at `MAX_RETRY_AFTER` (one day): a provider that asks for more is asked
again after a day, and a hostile server cannot push a job's next attempt past what a datetime
holds. Anything else is None: the caller then backs off on its own schedule.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
from typing import Final

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after"]

MAX_RETRY_AFTER: Final = 86_400.0
_SECONDS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait (0 to `MAX_RETRY_AFTER`); None when absent or unusable.

    `now` (a POSIX timestamp) is the reference for an HTTP date; the current time by default.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if _SECONDS.fullmatch(text):
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # older Pythons answered None instead of raising
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), MAX_RETRY_AFTER)
