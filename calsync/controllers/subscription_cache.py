"""The WebhookSubscriptions the operator's watch has seen, by name and by connection.

Both controllers read it: the subscription controller reconciles from it, the connection
controller sums up a connection's subscriptions (its `Subscribed` / `Degraded` conditions) and
finds the ones to create or delete. Only the watch handler writes it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from calsync.controllers.push_policy import parse_time, renewal_time

Key = tuple[str, str]  # (namespace, name)


class SubscriptionCache:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self._by_connection: dict[Key, set[str]] = defaultdict(set)

    def observe(self, obj: Mapping[str, Any], deleted: bool) -> tuple[Key, Key | None]:
        """Record a watch event; (the subscription's key, its connection's key)."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        before = self.objects.get(key)
        if before is not None:
            self._unindex(key, before)
        connection = (obj.get("spec") or {}).get("connection")
        owner = (key[0], str(connection)) if connection else None
        if deleted:
            self.objects.pop(key, None)
            return key, owner
        body = dict(obj)
        meta = dict(meta)
        meta.pop("managedFields", None)
        body["metadata"] = meta
        self.objects[key] = body
        if owner is not None:
            self._by_connection[owner].add(key[1])
        return key, owner

    def _unindex(self, key: Key, body: Mapping[str, Any]) -> None:
        connection = (body.get("spec") or {}).get("connection")
        if not connection:
            return
        owner = (key[0], str(connection))
        names = self._by_connection.get(owner)
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_connection[owner]

    def replace(self, body: Mapping[str, Any]) -> None:
        """Keep an object just written (the watch brings it again later)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if key in self.objects:
            self.observe(body, deleted=False)

    def of_connection(self, namespace: str, connection: str) -> dict[str, dict[str, Any]]:
        """{name: object} of the connection's subscriptions."""
        names = self._by_connection.get((namespace, connection), set())
        return {name: self.objects[(namespace, name)] for name in sorted(names)}

    # -- metrics -----------------------------------------------------------------------------

    def count(self, provider: str, ready: bool) -> int:
        n = 0
        for body in self.objects.values():
            if (body.get("spec") or {}).get("provider") != provider:
                continue
            conds = (body.get("status") or {}).get("conditions") or []
            is_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in conds
                if isinstance(c, Mapping)
            )
            n += is_ready == ready
        return n

    def seconds_to_expiry(self, provider: str) -> float:
        """Seconds until the first of the provider's channels expires (+Inf: none)."""
        now = dt.datetime.now(dt.UTC)
        soonest = math.inf
        for body in self.objects.values():
            if (body.get("spec") or {}).get("provider") != provider:
                continue
            expiration = parse_time((body.get("status") or {}).get("expiration"))
            if expiration is not None:
                soonest = min(soonest, (expiration - now).total_seconds())
        return soonest

    def seconds_overdue(self, provider: str, renew_before: float) -> float:
        """How long the provider's most overdue channel has been past its renewal time (0:
        none is); a channel that expired unrenewed stays overdue until it is replaced."""
        now = dt.datetime.now(dt.UTC)
        worst = 0.0
        for body in self.objects.values():
            if (body.get("spec") or {}).get("provider") != provider:
                continue
            status = body.get("status") or {}
            expiration = parse_time(status.get("expiration"))
            if not status.get("channelId") or expiration is None:
                continue
            due = renewal_time(parse_time(status.get("registeredAt")), expiration, renew_before)
            worst = max(worst, (now - due).total_seconds())
        return worst
