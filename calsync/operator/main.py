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
import threading

import httpx
import kopf
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from prometheus_client import start_http_server

from calsync.controllers import connection as connection_controller
from calsync.controllers import kube
from calsync.operator.settings import Settings

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


async def run(settings: Settings, *, stop_flag: threading.Event | None = None) -> None:
    client = _client()
    try:
        await kube.check_crds(client)
    except kube.CrdsMissing as exc:
        await client.close()
        raise StartupError(str(exc)) from exc
    except httpx.TransportError as exc:
        await client.close()
        raise StartupError(f"cannot reach the Kubernetes API server: {exc}") from exc

    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    if settings.metrics_port:
        from calsync.observability.metrics import REGISTRY

        start_http_server(settings.metrics_port, addr=settings.bind_address, registry=REGISTRY)
    memo = kopf.Memo(connections=connection_controller.ConnectionContext(client=client))
    liveness = (
        f"http://{settings.bind_address}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    log.info(
        "calsync operator starting",
        extra={"namespaces": ",".join(settings.namespaces) or "*"},
    )
    try:
        await kopf.operator(
            settings=kopf_settings,
            memo=memo,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
        )
    finally:
        await client.close()


def main(settings: Settings) -> int:
    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0
