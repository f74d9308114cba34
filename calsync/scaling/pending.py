"""The number of pending SyncJobs, kept current by watches rather than by listing each time.

Each scope (one configured namespace, or the whole cluster when none is configured) is listed
once, which gives the starting set and a resourceVersion, and then watched from that version.
Events update the set of pending jobs in place; nothing is listed again until the watch fails
(a 410 Gone after a long disconnect, a dropped connection lightkube could not resume, a
transient API error), and then the scope starts over with a fresh list after a short delay
(doubling, up to 30 s, while the lists fail too). A job counts as pending while its
status.phase is Pending or not set yet, the same rule the workers use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from lightkube import ApiError, AsyncClient

from calsync.controllers.kube import SyncJobResource

log = logging.getLogger(__name__)

ALL_NAMESPACES = "*"
LIST_CHUNK = 500
MAX_RETRY_DELAY = 30.0


def is_pending(status: Any) -> bool:
    phase = status.get("phase") if isinstance(status, dict) else None
    return not phase or phase == "Pending"


class PendingCounter:
    """Counts pending SyncJobs in `namespaces` (all namespaces when empty).

    Run `run()` as a task; until every scope has been listed once, calling the counter returns
    None ("not known yet"), which the scaling controller treats as a reason to wait.
    """

    def __init__(
        self,
        client: AsyncClient,
        namespaces: Sequence[str] = (),
        *,
        retry_delay: float = 1.0,
        server_timeout: int | None = None,
    ) -> None:
        self.client = client
        self.scopes = tuple(dict.fromkeys(namespaces)) or (ALL_NAMESPACES,)
        self.retry_delay = retry_delay
        self.server_timeout = server_timeout
        self._pending: dict[str, set[str]] = {scope: set() for scope in self.scopes}
        self._listed: set[str] = set()
        self._synced = asyncio.Event()

    @property
    def count(self) -> int:
        """Pending jobs as far as the watches have seen (0 before the first lists)."""
        return sum(len(keys) for keys in self._pending.values())

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def __call__(self) -> int | None:
        return self.count if self.synced else None

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def run(self) -> None:
        """Watch every scope concurrently until cancelled."""
        async with asyncio.TaskGroup() as group:
            for scope in self.scopes:
                group.create_task(self._follow(scope), name=f"pending SyncJobs in {scope}")

    async def _follow(self, scope: str) -> None:
        delay = self.retry_delay
        while True:
            try:
                version = await self._list(scope)
                delay = self.retry_delay
                await self._watch(scope, version)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                # 410 Gone: the version we resumed from was compacted away (a quiet scope
                # watched for a long time); listing again is the normal way on.
                level = logging.DEBUG if exc.status.code == 410 else logging.WARNING
                log.log(
                    level,
                    "SyncJob watch for the scaler ended (%s); listing again",
                    exc,
                    extra={"scope": scope},
                )
            except Exception as exc:
                log.warning(
                    "SyncJob watch for the scaler ended (%s); listing again",
                    exc,
                    extra={"scope": scope},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)  # lists keep failing: back off

    async def _list(self, scope: str) -> str:
        listing = self.client.list(SyncJobResource, namespace=scope, chunk_size=LIST_CHUNK)
        keys = {_key(job) async for job in listing if is_pending(job.status)}
        self._pending[scope] = keys
        self._listed.add(scope)
        if len(self._listed) == len(self.scopes):
            self._synced.set()
        return listing.resourceVersion

    async def _watch(self, scope: str, version: str) -> None:
        keys = self._pending[scope]
        watch = self.client.watch(
            SyncJobResource,
            namespace=scope,
            resource_version=version,
            server_timeout=self.server_timeout,
        )
        async for kind, job in watch:
            if kind == "DELETED" or not is_pending(job.status):
                keys.discard(_key(job))
            elif kind in ("ADDED", "MODIFIED"):
                keys.add(_key(job))
        # lightkube resumes the watch itself when the server closes it; ending here is unusual.
        raise RuntimeError("the watch stream ended")


def _key(job: Any) -> str:
    return f"{job.metadata.namespace}/{job.metadata.name}"
