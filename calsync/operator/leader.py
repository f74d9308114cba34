"""One active operator: leader election on a coordination.k8s.io Lease.

Every operator replica tries to hold the Lease `operator_lease_name` in the operator's namespace;
only the holder runs the controllers. The holder renews every sixth of the lease duration; a
replica whose holder stopped renewing takes the Lease over once it has expired. All writes are
guarded by the Lease's resourceVersion, so two replicas cannot both believe they won. A leader
that cannot renew within the duration stops acting (the process exits and is restarted), as
client-go's leader election does, so two replicas never act at once for longer than the clock
skew between them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from calsync.observability import metrics
from calsync.worker.runner import dead_local_process

log = logging.getLogger(__name__)


class LeadershipLost(RuntimeError):
    """The Lease could not be renewed in time: this replica must stop acting."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._waiting_logged: str | None = None
        self._held: Lease | None = None

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it now."""
        held = self._held
        if held is not None and held.spec is not None:
            # Renewing the copy we last wrote costs one request; a 409 means someone else
            # wrote it since, and the full check below reads it again.
            held.spec.renewTime = _now()
            try:
                self._held = await self.client.replace(held)
                return True
            except ApiError as exc:
                self._held = None
                if exc.status.code != 409:
                    raise
        now = _now()
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            fresh = Lease(
                metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                spec=LeaseSpec(
                    holderIdentity=self.identity,
                    leaseDurationSeconds=max(1, int(self.duration)),
                    acquireTime=now,
                    renewTime=now,
                    leaseTransitions=0,
                ),
            )
            try:
                self._held = await self.client.create(fresh)
            except ApiError as err:
                if err.status.code == 409:
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        renewed = spec.renewTime
        duration = spec.leaseDurationSeconds or int(self.duration)
        expired = renewed is None or renewed + dt.timedelta(seconds=duration) < now
        # A holder that was a process of this host and is gone (killed, crashed) cannot renew:
        # no need to wait out its lease.
        expired = expired or (holder is not None and dead_local_process(holder))
        if holder not in (None, "", self.identity) and not expired:
            if self._waiting_logged != holder:
                self._waiting_logged = holder
                log.info(
                    "operator Lease %s/%s is held by %s; standing by",
                    self.namespace,
                    self.name,
                    holder,
                )
            return False
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = max(1, int(self.duration))
        lease.spec = spec
        try:
            self._held = await self.client.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        while True:
            try:
                if await self.try_acquire():
                    metrics.OPERATOR_LEADER.set(1)
                    log.info("acting as the operator (Lease %s/%s)", self.namespace, self.name)
                    return
            except Exception as exc:
                log.warning("leader election failed: %s", str(exc) or type(exc).__name__)
            await asyncio.sleep(self.duration / 3)

    async def hold(self) -> None:
        """Renew until cancelled; raise LeadershipLost when the Lease slips away."""
        confirmed = asyncio.get_running_loop().time()
        # Renew every sixth of the duration, each try bounded by as much: a slow or failed
        # renewal is tried again several times before the two-thirds deadline passes.
        step = self.duration / 6
        while True:
            await asyncio.sleep(step)
            try:
                held = await asyncio.wait_for(self.try_acquire(), step)
            except Exception as exc:
                log.warning(
                    "renewing the operator Lease failed: %s", str(exc) or type(exc).__name__
                )
                held = None
            loop_now = asyncio.get_running_loop().time()
            if held:
                confirmed = loop_now
            elif held is False or loop_now - confirmed > self.duration * 2 / 3:
                metrics.OPERATOR_LEADER.set(0)
                raise LeadershipLost(
                    f"lost the operator Lease {self.namespace}/{self.name}; stopping"
                )

    async def release(self) -> None:
        """Hand the Lease over at once on a clean stop."""
        self._held = None
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec is not None and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.renewTime = None
                await self.client.replace(lease)
        except Exception as exc:
            log.debug("could not release the operator Lease: %s", exc)
        metrics.OPERATOR_LEADER.set(0)
