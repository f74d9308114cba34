"""A watch-fed cache of one kind: list once, then follow the watch (a client-go informer).

Every configured namespace is listed and watched by a task of its own, concurrently; with no
namespace the whole cluster is one list and one watch. A watch that ends or fails is resumed from
the last resourceVersion seen; when the API server no longer has that version (410 Gone) the
namespace is listed again and the cache replaced, so a deletion missed while disconnected does
not linger. Objects are kept as plain dicts without `managedFields`. `on_change(kind, obj)` is
called after each change (kind: ADDED, MODIFIED, DELETED, or SYNCED after a listing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from lightkube import ApiError, AsyncClient

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
WATCH_TIMEOUT = 290

Key = tuple[str, str]


def _plain(obj: Any) -> dict[str, Any]:
    body = cast(dict[str, Any], obj.to_dict() if hasattr(obj, "to_dict") else dict(obj))
    meta = body.get("metadata") or {}
    meta.pop("managedFields", None)
    return body


class Informer:
    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        namespaces: Sequence[str] = (),
        *,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
        index: Callable[[Key, dict[str, Any] | None], None] | None = None,
        name: str = "informer",
        labels: dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespaces = list(namespaces) or ["*"]
        self._on_change = on_change
        self._index = index
        self._name = name
        self._labels = labels  # a server-side label selector (equality terms)
        self._objects: dict[Key, dict[str, Any]] = {}
        self._synced: set[str] = set()
        self.ready = asyncio.Event()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get((namespace, name))

    def values(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)

    def put(self, obj: dict[str, Any]) -> None:
        """Record an object we just wrote, ahead of its watch event."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self._objects.get(key)
        if current is not None and _newer(current, obj):
            return
        self._set(key, obj)

    def forget(self, namespace: str, name: str) -> None:
        """Drop an object we just deleted, ahead of its watch event."""
        self._set((namespace, name), None)

    def _set(self, key: Key, obj: dict[str, Any] | None) -> dict[str, Any] | None:
        """Every change of the cache goes through here, so `index` sees each one."""
        old = self._objects.pop(key, None) if obj is None else self._objects.get(key)
        if obj is not None:
            self._objects[key] = obj
        if self._index is not None and (obj is not None or old is not None):
            self._index(key, obj)
        return old

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._follow(ns), name=f"{self._name}-{ns}")
            for ns in self._namespaces
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, namespace: str) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(namespace)
                version = await self._watch(namespace, version)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410:
                    version = None  # too old: list again
                    continue
                log.warning("%s watch of %s failed: %s; resuming", self._name, namespace, exc)
            except Exception as exc:
                log.warning("%s watch of %s ended: %s; resuming", self._name, namespace, exc)
            await asyncio.sleep(RETRY_SECONDS)

    async def _list(self, namespace: str) -> str:
        listing = self._client.list(
            self._resource, namespace=namespace, chunk_size=500, labels=self._labels
        )
        fresh: dict[Key, dict[str, Any]] = {}
        async for obj in listing:
            body = _plain(obj)
            meta = body["metadata"]
            fresh[(meta["namespace"], meta["name"])] = body
        version = str(listing.resourceVersion) if _has_version(listing) else "0"
        for key in [k for k in self._objects if _in(k, namespace) and k not in fresh]:
            gone = self._set(key, None)
            assert gone is not None
            self._notify("DELETED", gone)
        for key, body in fresh.items():
            self._set(key, body)
            self._notify("ADDED", body)
        self._synced.add(namespace)
        if len(self._synced) == len(self._namespaces):
            self.ready.set()
        self._notify("SYNCED", {})
        return version

    async def _watch(self, namespace: str, version: str) -> str:
        async for kind, obj in self._client.watch(
            self._resource,
            namespace=namespace,
            resource_version=version,
            server_timeout=WATCH_TIMEOUT,
            labels=self._labels,
        ):
            body = _plain(obj)
            meta = body["metadata"]
            version = meta.get("resourceVersion") or version
            key = (meta["namespace"], meta["name"])
            if kind == "DELETED":
                self._set(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._set(key, body)
            else:
                continue
            self._notify(kind, body)
        return version

    def _notify(self, kind: str, body: dict[str, Any]) -> None:
        if self._on_change is not None:
            try:
                self._on_change(kind, body)
            except Exception:
                log.exception("%s change handler failed", self._name)


def _in(key: Key, namespace: str) -> bool:
    return namespace == "*" or key[0] == namespace


def _has_version(listing: Any) -> bool:
    try:
        return bool(listing.resourceVersion)
    except Exception:
        return False


def _newer(current: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """Whether `current` is already newer than `candidate` (resourceVersions compare as ints)."""
    try:
        return int(current["metadata"]["resourceVersion"]) > int(
            candidate["metadata"]["resourceVersion"]
        )
    except (KeyError, TypeError, ValueError):
        return False
