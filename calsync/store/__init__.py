"""The event store: calendars, resources and events of every connection, on SQLite or PostgreSQL.

`EventStore` is the whole public surface: `await EventStore.open(url)` connects and migrates,
`apply_page` commits a page of changes with its cursor atomically, `query` answers range
questions with recurrences expanded, `export_ics` and `purge_connection` serve backups and
deletion. `claim` hands a worker an exclusive lease on a connection with a `Fence` that its
writes carry, so a run that lost its claim is refused (`Fenced`); `heartbeat` lists the live
workers; `store_id` tells one database from another. SQLite (`sqlite+aiosqlite:///...`, the
embedded default) suits one process; PostgreSQL (`postgresql+asyncpg://...`) is required once
several workers share the store.
The store knows nothing of Kubernetes or of providers: it stores `calsync.model` objects.
"""

from calsync.store.claims import ConnectionPurged, Fence, Fenced, JobDone
from calsync.store.event_store import (
    DEFAULT_LIMIT,
    DEFAULT_SERIES_LIMIT,
    EventStore,
    PreparedPage,
)
from calsync.store.migrations import SchemaTooNew
from calsync.store.results import ApplyResult, CalendarRow, Occurrence, QueryResult
from calsync.store.urls import StoreURLError, async_url, default_store_url

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_SERIES_LIMIT",
    "ApplyResult",
    "CalendarRow",
    "ConnectionPurged",
    "EventStore",
    "Fence",
    "Fenced",
    "JobDone",
    "Occurrence",
    "PreparedPage",
    "QueryResult",
    "SchemaTooNew",
    "StoreURLError",
    "async_url",
    "default_store_url",
]
