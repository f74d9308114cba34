"""CalDAV and iCloud: `CalDAVProvider` (iCloud is the same class with `icloud=True`).

Own PROPFIND/REPORT bodies and a hardened lxml reader (`xml`), one guarded keep-alive httpx
client (`http`), the sync-collection path with its ctag/etag fallback ladder (`provider`).
`DavTransports` holds connection pools that many providers of one process share.
"""

from calsync.providers.budget import RequestBudget
from calsync.providers.caldav.http import DavTransports
from calsync.providers.caldav.provider import CTAG_PREFIX, ICLOUD_URL, SYNC_PREFIX, CalDAVProvider
from calsync.providers.ical import MalformedCalendarData

__all__ = [
    "CTAG_PREFIX",
    "ICLOUD_URL",
    "SYNC_PREFIX",
    "CalDAVProvider",
    "DavTransports",
    "MalformedCalendarData",
    "RequestBudget",
]
