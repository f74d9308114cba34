"""The CalendarConnection controller: keep each connection's conditions true to what it sees.

Reconciling reads the connection afresh, reads the Secrets its spec names, judges them
(`credentials.evaluate`), and writes the complete condition list into status. A condition whose
status or reason changes posts a Kubernetes Event and counts in
`calsync_connection_condition_transitions_total`.

A Secret that appears or is fixed after its connection must make the connection Ready without
anyone touching the connection, so Secrets are watched too: an in-memory index maps
(namespace, Secret name) to the connections that reference it, and an event on such a Secret
reconciles those connections. Reconciles of one connection are serialised by a per-object lock
so that a create and a Secret event arriving together do not post the same Event twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from lightkube import AsyncClient
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.conditions import (
    AUTHENTICATED,
    READY,
    Condition,
    conditions_from_status,
    set_condition,
)
from calsync.api.meta import CALENDAR_CONNECTION, GROUP
from calsync.controllers import kube
from calsync.controllers.credentials import Status, evaluate, referenced_secrets
from calsync.observability import metrics

log = logging.getLogger(__name__)

PLURAL = CALENDAR_CONNECTION.plural


@dataclass
class ConnectionContext:
    """What the connection handlers share, carried in Kopf's memo."""

    client: AsyncClient
    locks: defaultdict[tuple[str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )


def _context(memo: Any) -> ConnectionContext:
    ctx = memo.get("connections") if hasattr(memo, "get") else None
    if not isinstance(ctx, ConnectionContext):
        raise kopf.PermanentError("operator context missing: started without calsync.operator")
    return ctx


async def reconcile(ctx: ConnectionContext, namespace: str, name: str) -> None:
    """Bring one connection's status in line with its spec and Secrets."""
    async with ctx.locks[(namespace, name)]:
        body = await kube.get_connection(ctx.client, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        generation = int(body["metadata"].get("generation", 0))
        status = body.get("status") or {}
        conditions = conditions_from_status(status)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)

        try:
            spec = CalendarConnectionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            # The CRD schema admits it but our model does not: say so on the object.
            message = f"spec not understood: {exc.errors()[0]['msg']}"
            wanted: list[tuple[str, Status, str, str]] = [(READY, "False", "InvalidSpec", message)]
        else:
            secrets = {
                secret: await kube.read_secret(ctx.client, namespace, secret)
                for secret in sorted(referenced_secrets(spec))
            }
            verdict = evaluate(spec, secrets)
            wanted = [(AUTHENTICATED, *verdict.authenticated), (READY, *verdict.ready)]

        transitions: list[Condition] = []
        for ctype, cstatus, reason, message in wanted:
            conditions, changed = set_condition(
                conditions,
                type=ctype,
                status=cstatus,
                reason=reason,
                message=message,
                observed_generation=generation,
                now=now,
            )
            if changed:
                transitions.extend(c for c in conditions if c.type == ctype)

        await kube.patch_connection_status(
            ctx.client,
            namespace,
            name,
            {
                "observedGeneration": generation,
                "conditions": [
                    c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in conditions
                ],
            },
        )
        metrics.record_conditions(namespace, name, [(c.type, c.status) for c in conditions])
        for cond in transitions:
            metrics.CONNECTION_TRANSITIONS.labels(cond.type, cond.status, cond.reason).inc()
            # Ready carries the summary; one Event per transition of it (or of Authenticated
            # when it says something Ready does not).
            if cond.type == READY or cond.reason != _reason(conditions, READY):
                kopf.event(
                    kopf.Body(cast(kopf.RawBody, body)),
                    type="Normal" if cond.status == "True" else "Warning",
                    reason=cond.reason,
                    message=f"{cond.type}={cond.status}: {cond.message}",
                )
            log.info(
                "condition %s=%s (%s) on %s/%s",
                cond.type,
                cond.status,
                cond.reason,
                namespace,
                name,
            )


def _reason(conditions: list[Condition], ctype: str) -> str | None:
    return next((c.reason for c in conditions if c.type == ctype), None)


@kopf.on.resume(GROUP, PLURAL)
@kopf.on.create(GROUP, PLURAL)
@kopf.on.update(GROUP, PLURAL, field="spec")
async def connection_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None  # the kind is namespaced
    await reconcile(_context(memo), namespace, name)


@kopf.on.delete(GROUP, PLURAL)
async def connection_deleted(
    namespace: str | None, name: str, status: Any, memo: Any, **_: Any
) -> None:
    """Forget the connection's metric series (the store purge joins here with the sync engine)."""
    assert namespace is not None
    ctx = _context(memo)
    types = [c.type for c in conditions_from_status(status)]
    metrics.forget_connection(namespace, name, types)
    ctx.locks.pop((namespace, name), None)


@kopf.index(GROUP, PLURAL)
def connections_by_secret(
    namespace: str | None, name: str, spec: Any, **_: Any
) -> dict[tuple[str, str], str]:
    assert namespace is not None
    try:
        parsed = CalendarConnectionSpec.model_validate(dict(spec))
    except ValidationError:
        return {}
    return {(namespace, secret): name for secret in referenced_secrets(parsed)}


@kopf.on.event("", "v1", "secrets")
async def secret_changed(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    index: kopf.Index[tuple[str, str], str] = kwargs["connections_by_secret"]
    if namespace is None:
        return
    for connection in sorted(set(index.get((namespace, name), []))):
        await reconcile(_context(memo), namespace, connection)
