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
from calsync.controllers import subscriptions as subscription_controller
from calsync.controllers.credentials import CREDENTIALS_SELECTOR
from calsync.controllers.kube_transport import api_client
from calsync.controllers.status import store_key
from calsync.controllers.tokens import KeyringCreateForbidden, TokenVault, rotate_if_due
from calsync.observability import metrics
from calsync.observability.metrics import REGISTRY
from calsync.operator.leader import LeaderElector, LeadershipLost
from calsync.operator.listeners import GATEWAY, METRICS, ListenError, check_listeners, listen_error
from calsync.scaling.controller import ScalingController
from calsync.settings import Settings, default_keyring_namespace
from calsync.store import EventStore, default_store_url
from calsync.webhook_gateway.app import GatewayContext
from calsync.webhook_gateway.app import serve as serve_gateway
from calsync.worker import Worker, WorkerRefused

log = logging.getLogger(__name__)

POLL_COUNT_SECONDS = 15.0

PREFIX = "calsync.io"
FINALIZER = f"{PREFIX}/finalizer"

# Importing the controllers registers their handlers with Kopf's default registry.
_CONTROLLERS = (connection_controller, subscription_controller)


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
    # Secrets opt in (docs/decisions/0013): the API server lists and watches only labelled
    # ones for us, so no other Secret of the cluster ever reaches this process.
    selectors = getattr(settings.watching, "label_selectors", None)
    if selectors is None:
        raise StartupError(
            "this kopf version cannot filter watches by label (kopf >= 1.45 is needed); "
            "calsync would list every Secret of the cluster: upgrade kopf"
        )
    selectors["", "v1", "secrets"] = CREDENTIALS_SELECTOR
    # Kopf logs every handled watch event at INFO ("Handler 'secret_event' succeeded"): one
    # line per Secret and SyncJob change in the cluster. Keep its failures, drop the chatter,
    # unless the operator runs at DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


class StartupError(RuntimeError):
    """The operator cannot start; the message says why and what to do."""


def _client() -> AsyncClient:
    try:
        config = KubeConfig.from_env()
    except Exception as exc:
        raise StartupError(
            f"no Kubernetes configuration: set KUBECONFIG or run in a pod ({exc})"
        ) from exc
    return api_client(config, field_manager="calsync-operator")


KEY_ROTATION_CHECK = 3600.0


KEYRING_WAIT = 100.0  # a worker or gateway waits this long for the operator to make the keyring
# (within the chart's startup probe: 24 x 5 s)
KEYRING_POLL = 2.0


def keyring_namespace(settings: Settings) -> str:
    """Where the keyring Secret lives: the setting, else the pod's namespace, else default."""
    return settings.keyring_namespace or default_keyring_namespace()


async def _open_vault(
    client: AsyncClient, settings: Settings, *, wait: float = KEYRING_WAIT
) -> TokenVault:
    """Load the keyring, creating it when this process may. A worker or gateway may only read
    it: started before the operator has created it (a fresh install), it waits up to `wait`
    seconds for it instead of exiting into a restart loop."""
    namespace = keyring_namespace(settings)
    vault = TokenVault(client, keyring_namespace=namespace, keyring_name=settings.keyring_name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    told = False
    try:
        while True:
            try:
                await vault.start()
                break
            except KeyringCreateForbidden:
                if loop.time() >= deadline:
                    raise
                if not told:
                    told = True
                    log.info(
                        "waiting up to %.0f s for the operator to create the keyring Secret "
                        "%s/%s (this component may only read it)",
                        wait,
                        namespace,
                        settings.keyring_name,
                    )
                await asyncio.sleep(KEYRING_POLL)
    except Exception as exc:
        raise StartupError(
            f"cannot load or create the token keyring Secret {namespace}/"
            f"{settings.keyring_name}: {exc} (set CALSYNC_KEYRING_NAMESPACE to an existing "
            "namespace the operator may write Secrets in)"
        ) from exc
    return vault


async def _count_polls(context: connection_controller.ConnectionContext) -> None:
    """Keep `calsync_polls_waiting` (and the scaler's view of the polls) current: the waiting
    polls of connections that exist and are not suspended (a suspended connection's poll waits
    until it resumes; a connection whose purge was given up on leaves its row behind)."""
    while True:
        try:
            waiting = await context.store.waiting_polls()
            known = {store_key(b): b for b in context.connections.values()}
            context.polls_waiting = sum(
                1
                for uid in waiting
                if (body := known.get(uid)) is not None
                and not (body.get("spec") or {}).get("suspend")
            )
        except Exception as exc:
            log.warning("could not count the polls waiting in the event store: %s", exc)
        else:
            metrics.POLLS_WAITING.set(context.polls_waiting)
        await asyncio.sleep(POLL_COUNT_SECONDS)


async def _rotate_keys_when_due(client: AsyncClient, settings: Settings) -> None:
    """The optional rotation timer (seed: every 90 days); 0 disables it."""
    while True:
        await asyncio.sleep(KEY_ROTATION_CHECK)
        try:
            report = await rotate_if_due(
                client,
                keyring_namespace=keyring_namespace(settings),
                keyring_name=settings.keyring_name,
                interval=settings.key_rotation_interval,
                namespaces=settings.namespaces,
            )
        except Exception:
            metrics.KEY_ROTATIONS.labels("failed").inc()
            log.exception("scheduled key rotation failed; trying again in an hour")
            continue
        if report is not None:
            metrics.KEY_ROTATIONS.labels("ok").inc()
            log.info("rotated the token keyring", extra={"key": report.new_key_id})


async def run(
    settings: Settings,
    *,
    operator: bool = True,
    worker: bool = False,
    gateway: bool = False,
    stop_flag: threading.Event | None = None,
) -> None:
    """Run the Kopf controllers, the SyncJob worker, the gateway, or any of them together."""
    try:  # first: a taken port is a one-line error, before the cluster or the store is touched
        check_listeners(settings, operator=operator, worker=worker, gateway=gateway)
    except ListenError as exc:
        raise StartupError(str(exc)) from exc
    client = _client()
    try:
        kinds = kube.kinds_for(operator=operator, worker=worker, gateway=gateway)
        await kube.check_crds(client, settings.namespaces, kinds)
    except kube.CrdsMissing as exc:
        await client.close()
        raise StartupError(str(exc)) from exc
    except httpx.TransportError as exc:
        await client.close()
        raise StartupError(f"cannot reach the Kubernetes API server: {exc}") from exc

    try:
        vault = await _open_vault(client, settings)
    except StartupError:
        await client.close()
        raise
    store: EventStore | None = None
    if operator or worker:  # the gateway alone does not read the store (yet)
        try:
            store = await EventStore.open(settings.store_url or default_store_url())
        except Exception as exc:
            await client.close()
            raise StartupError(f"cannot open the event store: {exc}") from exc
    if settings.metrics_port and (operator or worker):
        try:
            start_http_server(settings.metrics_port, addr=settings.bind_address, registry=REGISTRY)
        except OSError as exc:  # taken since check_listeners
            if store is not None:
                await store.close()
            await client.close()
            raise StartupError(str(listen_error(METRICS, settings, exc))) from exc
    log.info(
        "calsync starting",
        extra={
            "components": ",".join(
                c
                for c, on in (("operator", operator), ("worker", worker), ("gateway", gateway))
                if on
            ),
            "namespaces": ",".join(settings.namespaces) or "*",
        },
    )
    tasks: list[asyncio.Task[None]] = []
    gateway_runner = None
    try:
        if gateway and settings.gateway_port:
            ctx = GatewayContext(
                settings=settings, client=client, vault=vault, ready=True, store=store
            )
            try:
                gateway_runner = await serve_gateway(
                    ctx, settings.bind_address, settings.gateway_port
                )
            except OSError as exc:  # taken since check_listeners
                raise StartupError(str(listen_error(GATEWAY, settings, exc))) from exc
        identity = settings.worker_identity or f"{socket.gethostname()}-{os.getpid()}"
        if worker:
            assert store is not None
            runner = Worker(
                client,
                store,
                settings,
                identity=identity,
                namespaces=settings.namespaces,
                vault=vault,
            )
            try:
                await runner.join()
            except WorkerRefused as exc:
                raise StartupError(str(exc)) from exc
            log.info(
                "worker %s writes to event store %s (%s)", identity, store.store_id, store.dialect
            )
            tasks.append(asyncio.create_task(runner.run(), name="worker"))
        if operator:
            assert store is not None
            elector = LeaderElector(
                client,
                namespace=keyring_namespace(settings),
                name=settings.operator_lease_name,
                identity=identity,
                duration=settings.operator_lease_duration,
            )
            await elector.acquire()
            try:
                await _lead(settings, client, store, vault, elector, stop_flag)
            finally:
                await elector.release()
        else:
            await _wait_for_signal()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if gateway_runner is not None:
            await gateway_runner.cleanup()
        if store is not None:
            await store.close()
        await client.close()


async def _lead(
    settings: Settings,
    client: AsyncClient,
    store: EventStore,
    vault: TokenVault,
    elector: LeaderElector,
    stop_flag: threading.Event | None,
) -> None:
    """Everything only the elected operator does, until stopped or the Lease is lost."""
    context = connection_controller.ConnectionContext(
        client=client, store=store, settings=settings, vault=vault
    )
    push = subscription_controller.SubscriptionContext(connections=context)
    helpers = [
        asyncio.create_task(context.queue.run(), name="connection-queue"),
        asyncio.create_task(push.queue.run(), name="subscription-queue"),
        asyncio.create_task(elector.hold(), name="operator-lease"),
    ]
    if settings.key_rotation_interval:
        helpers.append(asyncio.create_task(_rotate_keys_when_due(client, settings), name="keys"))
    helpers.append(asyncio.create_task(_count_polls(context), name="poll-counter"))
    if settings.worker_deployment:
        # Polls wait in the store, not as SyncJobs (decision 0018): both are work to scale for.
        scaler = ScalingController(
            client, settings, pending=lambda: context.pending_total + context.polls_waiting
        )
        helpers.append(asyncio.create_task(scaler.run(), name="worker-scaler"))
    log.info("operator bound to event store %s (%s)", store.store_id, store.dialect)
    operator_task = asyncio.create_task(_run_kopf(settings, context, push, stop_flag), name="kopf")
    try:
        done, _ = await asyncio.wait([operator_task, *helpers], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not operator_task and not task.cancelled() and task.exception():
                exc = task.exception()
                if isinstance(exc, LeadershipLost):
                    raise StartupError(str(exc)) from exc
                raise StartupError(f"{task.get_name()} stopped: {exc}") from exc
        if operator_task in done and not operator_task.cancelled():
            operator_task.result()
    finally:
        for task in [operator_task, *helpers]:
            task.cancel()
        await asyncio.gather(operator_task, *helpers, return_exceptions=True)
        await push.aclose()


async def _run_kopf(
    settings: Settings,
    context: connection_controller.ConnectionContext,
    push: subscription_controller.SubscriptionContext,
    stop_flag: threading.Event | None,
) -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    memo = kopf.Memo(connections=context, subscriptions=push)
    liveness = (
        f"http://{settings.bind_address}:{settings.health_port}/healthz"
        if settings.health_port
        else None
    )
    # standalone: one replica acts because only the holder of the operator Lease runs Kopf.
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


def main(
    settings: Settings, *, operator: bool = True, worker: bool = False, gateway: bool = False
) -> int:
    try:
        asyncio.run(run(settings, operator=operator, worker=worker, gateway=gateway))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0
