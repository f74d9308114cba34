"""The worker scaler against a real API server: real SyncJobs, a real Deployment's scale.

No operator and no worker run here, so the SyncJobs stay where the test puts them. The
controller's `step` is driven with explicit times (the policy's clock), the pending count comes
from a real `PendingCounter` watching the test namespace, and the replicas are read back from
the Deployment. With 100 pending jobs per worker and 1..15 replicas, 2,000 jobs ask for 20
workers: the HPA's rate (max(2 x n, n + 4) per 15 s) and the maximum shape the way up, the
300 s stabilisation window the way down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType

from calsync.controllers.kube import SyncJobResource
from calsync.observability.metrics import REGISTRY
from calsync.scaling.controller import ScalingController
from calsync.scaling.pending import PendingCounter
from calsync.scaling.policy import Limit
from calsync.settings import Settings
from tests.support import Kubectl, until

pytestmark = pytest.mark.e2e

WORKERS = "calsync-worker"
JOBS = 2000
CONCURRENCY = 20


# These tests count pending SyncJobs: they run on the quiet cluster, where no session operator
# takes the jobs they create.
@pytest.fixture
def kubectl(quiet_kubectl: Kubectl) -> Kubectl:
    return quiet_kubectl


@pytest.fixture
def namespace(quiet_namespace: str) -> str:
    return quiet_namespace


@pytest.fixture
async def client(quiet_kubectl: Kubectl) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_file(quiet_kubectl.kubeconfig)
    c = AsyncClient(config=config, field_manager="calsync-test")
    yield c
    await c.close()


def worker_deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    """A Deployment nothing will run (no kubelet here); its scale subresource works all the same."""
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "registry.invalid/none"}]},
            },
        },
    }


async def bounded(items: Iterable[str], action: Callable[[str], Awaitable[Any]]) -> None:
    """`action` on every item, at most CONCURRENCY at a time."""
    pending = iter(items)

    async def lane() -> None:
        for item in pending:
            await action(item)

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))


def job_names(start: int, stop: int) -> list[str]:
    return [f"job-{i:04d}" for i in range(start, stop)]


async def create_jobs(client: AsyncClient, namespace: str, names: Iterable[str]) -> None:
    async def create(name: str) -> None:
        await client.create(
            SyncJobResource(
                metadata=ObjectMeta(name=name, namespace=namespace), spec={"connection": "busy"}
            )
        )

    await bounded(names, create)


async def finish_jobs(client: AsyncClient, namespace: str, names: Iterable[str]) -> None:
    async def finish(name: str) -> None:
        await client.patch(
            SyncJobResource.Status,
            name,
            {"status": {"phase": "Succeeded"}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    await bounded(names, finish)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scaler_settings(namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "namespaces": (namespace,),
        "worker_deployment": WORKERS,
        "worker_deployment_namespace": namespace,
        "scale_up_queue_depth": 100,
        "scale_min_replicas": 1,
        "scale_max_replicas": 15,
    }
    return Settings(**(values | overrides))


async def test_scales_with_the_queue(
    client: AsyncClient, kubectl: Kubectl, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="calsync.scaling.controller")
    kubectl.apply(worker_deployment(WORKERS), namespace)
    counter = PendingCounter(client, [namespace])
    watching = asyncio.create_task(counter.run())
    controller = ScalingController(client, scaler_settings(namespace), pending=counter)
    before = {d: metric("calsync_scaling_decisions_total", direction=d) for d in ("up", "down")}

    async def replicas() -> int:
        deployment = await client.get(Deployment, WORKERS, namespace=namespace)
        assert deployment.spec is not None
        return deployment.spec.replicas or 0

    async def step(now: float, desired: int, limit: Limit) -> None:
        decision = await controller.step(now)
        assert decision is not None
        assert (decision.desired, decision.limit) == (desired, limit), decision.describe()
        assert await replicas() == desired
        assert metric("calsync_worker_replicas_desired") == desired

    try:
        await asyncio.wait_for(counter.wait_synced(), timeout=60)
        assert counter() == 0
        # An empty queue at the start does not remove the one worker (min 1).
        await step(0.0, 1, Limit.STABILIZATION)

        await create_jobs(client, namespace, job_names(0, JOBS))
        await until(lambda: counter() == JOBS, within=60, what=f"{JOBS} pending jobs counted")

        # 2,000 pending at 100 per worker recommends 20: 1 -> 5 -> 10 by the rate, then max 15.
        await step(15.0, 5, Limit.SCALE_UP_LIMIT)
        await step(30.0, 10, Limit.SCALE_UP_LIMIT)
        await step(45.0, 15, Limit.MAX_REPLICAS)
        await step(60.0, 15, Limit.MAX_REPLICAS)

        # Half the jobs finish: 10 recommended, held by the 20s of the last 300 s.
        await finish_jobs(client, namespace, job_names(0, JOBS // 2))
        await until(lambda: counter() == JOBS // 2, within=60, what="half the jobs finished")
        await step(75.0, 15, Limit.STABILIZATION)
        await step(359.0, 15, Limit.STABILIZATION)  # the last 20 was at 60
        await step(360.0, 10, Limit.NONE)

        # The rest finish: 0 recommended, held at 10, then down to the minimum.
        await finish_jobs(client, namespace, job_names(JOBS // 2, JOBS))
        await until(lambda: counter() == 0, within=60, what="all jobs finished")
        await step(375.0, 10, Limit.STABILIZATION)
        await step(659.0, 10, Limit.STABILIZATION)  # the last 10 was at 360
        await step(660.0, 1, Limit.MIN_REPLICAS)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    assert metric("calsync_scaling_decisions_total", direction="up") - before["up"] == 3
    assert metric("calsync_scaling_decisions_total", direction="down") - before["down"] == 2

    events = kubectl.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=Deployment,involvedObject.name={WORKERS}",
    )["items"]
    ours = [e for e in events if e["source"].get("component") == "calsync-operator"]
    messages = [(e["reason"], e["type"], e["message"]) for e in ours]
    assert len(messages) == 5, messages
    assert {m[:2] for m in messages} <= {("ScaledUp", "Normal"), ("ScaledDown", "Normal")}
    texts = {m[2] for m in messages}
    assert (
        "pending 2000, current 1, desired 5, target 100 per worker: capped by the scale-up "
        "limit of 5 replicas per 15 s (recommended 20)" in texts
    )
    assert (
        "pending 2000, current 10, desired 15, target 100 per worker: capped at max replicas "
        "15 (recommended 20)" in texts
    )
    assert "pending 1000, current 15, desired 10, target 100 per worker: as recommended" in texts
    assert any(t.startswith("pending 0, current 10, desired 1,") for t in texts)
    uid = kubectl.json("get", f"deployment/{WORKERS}", "-n", namespace)["metadata"]["uid"]
    assert {e["involvedObject"]["uid"] for e in ours} == {uid}

    changes = [r for r in caplog.records if r.levelno == logging.INFO and hasattr(r, "pending")]
    fields = ("direction", "pending", "current", "desired")
    assert [tuple(vars(r)[f] for f in fields) for r in changes] == [
        ("up", 2000, 1, 5),
        ("up", 2000, 5, 10),
        ("up", 2000, 10, 15),
        ("down", 1000, 15, 10),
        ("down", 0, 10, 1),
    ]


async def test_waits_for_the_count_and_the_deployment(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    known: list[int | None] = [None]
    controller = ScalingController(client, scaler_settings(namespace), pending=lambda: known[0])
    assert await controller.step(0.0) is None  # count not known yet
    known[0] = 5000
    assert await controller.step(1.0) is None  # no Deployment yet
    kubectl.apply(worker_deployment(WORKERS, replicas=3), namespace)
    decision = await controller.step(2.0)
    assert decision is not None
    assert (decision.current, decision.desired) == (3, 7)  # max(2 x 3, 3 + 4)
    # Someone scales by hand: the next decision starts from what the Deployment says.
    kubectl("scale", f"deployment/{WORKERS}", "-n", namespace, "--replicas=2")
    decision = await controller.step(3.0)
    assert decision is not None
    assert decision.current == 2


async def test_counter_follows_several_namespaces(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    other = f"{namespace}-b"
    kubectl("create", "namespace", other)
    try:
        await create_jobs(client, namespace, job_names(0, 3))
        await create_jobs(client, other, job_names(0, 2))
        counter = PendingCounter(client, [namespace, other, namespace])
        assert counter() is None  # nothing listed yet
        watching = asyncio.create_task(counter.run())
        try:
            await asyncio.wait_for(counter.wait_synced(), timeout=60)
            assert counter() == 5
            await finish_jobs(client, namespace, ["job-0000"])
            await until(lambda: counter() == 4, what="a finished job leaves the count")
            await client.delete(SyncJobResource, "job-0001", namespace=other)
            await until(lambda: counter() == 3, what="a deleted job leaves the count")
            await create_jobs(client, other, ["job-0100", "job-0101"])
            await until(lambda: counter() == 5, what="new jobs join the count")
            await client.patch(
                SyncJobResource.Status,
                "job-0100",
                {"status": {"phase": "Running"}},
                namespace=other,
                patch_type=PatchType.MERGE,
            )
            await until(lambda: counter() == 4, what="a running job leaves the count")
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)
