"""The scaling loop: size the worker Deployment from the number of pending SyncJobs.

Every `scale_interval` seconds the controller reads the Deployment's scale subresource, asks the
policy (calsync.scaling.policy) for the desired replicas, and writes them back through the same
subresource when they differ, guarded by the resourceVersion it read, so that a concurrent
change (a person running `kubectl scale`, a rollout) makes it skip one round instead of
overwriting. Each applied change becomes a Normal Event on the Deployment (ScaledUp or
ScaledDown) whose message names the inputs and the rule that settled the number; every decision
is counted in `calsync_scaling_decisions_total{direction}`, sets
`calsync_worker_replicas_desired`, and is logged with its inputs (changes at INFO, holds at
DEBUG).

Memory: the policy's windows live in this object. A freshly started controller counts the
replicas it first finds as a recommendation of that moment, so an operator restart cannot
shrink the workers before a whole stabilisation window has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from lightkube import ApiError, AsyncClient
from lightkube.models.autoscaling_v1 import ScaleSpec
from lightkube.resources.apps_v1 import Deployment, DeploymentScale

from calsync.controllers import kube
from calsync.observability import metrics
from calsync.scaling.pending import PendingCounter
from calsync.scaling.policy import Decision, History, Parameters, Sample, decide
from calsync.settings import Settings, default_keyring_namespace

log = logging.getLogger(__name__)

COMPONENT = "calsync-operator"
REASONS = {"up": "ScaledUp", "down": "ScaledDown"}


class ScalingController:
    """Scales `settings.worker_deployment` on the count that `pending` returns.

    `pending` returns the number of pending SyncJobs, or None while it does not know yet (a
    `PendingCounter` before its first lists); the controller then leaves the Deployment alone.
    `clock` is the monotonic time used for the policy's windows when `step` is given no time.
    """

    def __init__(
        self,
        client: AsyncClient,
        settings: Settings,
        *,
        pending: Callable[[], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.worker_deployment:
            raise ValueError("worker_deployment is not set: there is nothing to scale")
        self.client = client
        self.name = settings.worker_deployment
        self.namespace = settings.worker_deployment_namespace or default_keyring_namespace()
        self.params = Parameters.from_settings(settings)
        self.interval = settings.scale_interval
        self.pending = pending
        self.clock = clock
        self.history: History | None = None  # None until the first step has read the scale
        self.last: Decision | None = None
        self._missing_reported = False

    async def run(self) -> None:
        """Decide every `scale_interval` seconds until cancelled; errors wait for the next turn."""
        log.info(
            "scaling the worker Deployment %s/%s: %d..%d replicas, %d pending jobs per worker",
            self.namespace,
            self.name,
            self.params.min_replicas,
            self.params.max_replicas,
            self.params.target_per_worker,
        )
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaling step failed; trying again in %g s", self.interval)
            await asyncio.sleep(self.interval)

    async def step(self, now: float | None = None) -> Decision | None:
        """Make one decision at `now` (default: the clock) and apply it.

        Returns the decision, or None when there was nothing to decide on (pending count not
        known yet, no such Deployment) or the write lost against a concurrent change.
        """
        now = self.clock() if now is None else now
        pending = self.pending()
        if pending is None:
            log.debug("pending SyncJobs not counted yet; not scaling")
            return None
        scale = await self._read_scale()
        if scale is None:
            return None
        current = (scale.spec.replicas if scale.spec else None) or 0
        if self.history is None:
            self.history = History(recommendations=(Sample(now, current),))
        decision = decide(current, pending, self.params, self.history, now)
        self.history = decision.history
        if decision.desired != current:
            if not await self._write_scale(scale, decision.desired):
                return None
            self.history = self.history.scaled(now, decision.desired - current)
        await self._report(decision, scale.metadata.uid if scale.metadata else None)
        self.last = decision
        return decision

    async def _read_scale(self) -> DeploymentScale | None:
        try:
            scale = await self.client.get(Deployment.Scale, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            if not self._missing_reported:
                log.warning(
                    "the worker Deployment %s/%s does not exist; not scaling until it does",
                    self.namespace,
                    self.name,
                )
                self._missing_reported = True
            return None
        self._missing_reported = False
        return scale

    async def _write_scale(self, scale: DeploymentScale, replicas: int) -> bool:
        """Replace the scale at the resourceVersion read; False when someone changed it since."""
        scale.spec = ScaleSpec(replicas=replicas)
        try:
            await self.client.replace(scale, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            log.info(
                "the worker Deployment %s/%s was scaled concurrently; deciding again next time",
                self.namespace,
                self.name,
            )
            return False
        return True

    async def _report(self, decision: Decision, uid: str | None) -> None:
        direction = decision.direction
        metrics.SCALING_DECISIONS.labels(direction).inc()
        metrics.WORKER_REPLICAS_DESIRED.set(decision.desired)
        message = decision.describe()
        log.log(
            logging.DEBUG if direction == "none" else logging.INFO,
            "worker scaling: %s",
            message,
            extra={
                "deployment": f"{self.namespace}/{self.name}",
                "direction": direction,
                "pending": decision.pending,
                "current": decision.current,
                "recommended": decision.recommended,
                "desired": decision.desired,
                "target": decision.target,
                "limit": str(decision.limit),
            },
        )
        if direction == "none":
            return
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": uid},
        }
        # Best effort: kube.post_event logs a failure and returns.
        await kube.post_event(
            self.client,
            body,
            type="Normal",
            reason=REASONS[direction],
            message=message,
            component=COMPONENT,
        )


async def run_scaler(client: AsyncClient, settings: Settings) -> None:
    """The scaler with its own `PendingCounter` over `settings.namespaces`, until cancelled."""
    counter = PendingCounter(client, settings.namespaces)
    controller = ScalingController(client, settings, pending=counter)
    async with asyncio.TaskGroup() as group:
        group.create_task(counter.run(), name="pending SyncJob counter")
        group.create_task(controller.run(), name="worker scaler")
