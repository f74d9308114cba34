"""Start the Kopf operator with calsync's settings, storage prefixes and startup checks.

Kopf keeps its bookkeeping in annotations under our own prefix (`calsync.io/...`) rather than in
status, where the structural CRD schema would prune it; its finalizer is
`calsync.io/finalizer`. Handler log lines do not become Events: controllers post Events
deliberately, one per condition transition. Before any handler runs, the operator checks that
the CRDs are served and exits with a message that says how to install them when they are not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading

import httpx
import kopf
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from prometheus_client import start_http_server

from calsync.controllers import connection as connection_controller
from calsync.controllers import kube
from calsync.controllers.syncjob import Worker
from calsync.observability.metrics import REGISTRY
from calsync.settings import Settings
from calsync.store import EventStore, default_store_url

log = logging.getLogger(__name__)

PREFIX = "calsync.io"
FINALIZER = f"{PREFIX}/finalizer"

# Importing the controllers registers their handlers with Kopf's default registry.
_CONTROLLERS = (connection_controller,)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.reporting_component = "calsync-operator"
    settings.posting.event_name_prefix = "calsync-"
    settings.networking.request_timeout = 60.0
    settings.networking.enforce_retry_after = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Namespaces appear and go: with cluster-wide watching there is nothing to scan.
    settings.scanning.disabled = True


class StartupError(RuntimeError):
    """The operator cannot start; the message says why and what to do."""


def _client() -> AsyncClient:
    try:
        config = KubeConfig.from_env()
    except Exception as exc:
        raise StartupError(
            f"no Kubernetes configuration: set KUBECONFIG or run in a pod ({exc})"
        ) from exc
    return AsyncClient(config=config, field_manager="calsync-operator")


async def run(
    settings: Settings,
    *,
    operator: bool = True,
    worker: bool = False,
    stop_flag: threading.Event | None = None,
) -> None:
    """Run the Kopf controllers, the SyncJob worker, or both in one process."""
    client = _client()
    try:
        await kube.check_crds(client)
    except kube.CrdsMissing as exc:
        await client.close()
        raise StartupError(str(exc)) from exc
    except httpx.TransportError as exc:
        await client.close()
        raise StartupError(f"cannot reach the Kubernetes API server: {exc}") from exc

    try:
        store = await EventStore.open(settings.store_url or default_store_url())
    except Exception as exc:
        await client.close()
        raise StartupError(f"cannot open the event store: {exc}") from exc
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.bind_address, registry=REGISTRY)
    log.info(
        "calsync starting",
        extra={
            "components": ",".join(
                c for c, on in (("operator", operator), ("worker", worker)) if on
            ),
            "namespaces": ",".join(settings.namespaces) or "*",
        },
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        if worker:
            identity = settings.worker_identity or f"{socket.gethostname()}-{os.getpid()}"
            runner = Worker(
                client, store, settings, identity=identity, namespaces=settings.namespaces
            )
            tasks.append(asyncio.create_task(runner.run(), name="worker"))
        if operator:
            await _run_kopf(settings, client, store, stop_flag)
        else:
            await _wait_for_signal()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        await client.close()


async def _run_kopf(
    settings: Settings, client: AsyncClient, store: EventStore, stop_flag: threading.Event | None
) -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    memo = kopf.Memo(
        connections=connection_controller.ConnectionContext(
            client=client, store=store, default_poll_interval=settings.caldav_poll_interval
        )
    )
    liveness = (
        f"http://{settings.bind_address}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    await kopf.operator(
        settings=kopf_settings,
        memo=memo,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
    )


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(settings: Settings, *, operator: bool = True, worker: bool = False) -> int:
    try:
        asyncio.run(run(settings, operator=operator, worker=worker))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0
