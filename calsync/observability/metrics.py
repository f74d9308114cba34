"""The calsync_* Prometheus metrics of the operator.

Condition gauges follow kube-state-metrics' shape (one series per condition type and status, the
current one set to 1) so that an alert can select `status="False"` directly.

Every label takes values from a small fixed set (providers, phases, results): no series carries
a user, connection or calendar id except the condition gauges, which have one per connection by
design (like kube-state-metrics). The counters that alerts divide are created for all their label
values at import (`_initialize`), at 0, so a rate of errors is 0 rather than absent while nothing
failed, and an alert's ratio has a numerator from the first scrape on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)


class _ConnectionConditions(Collector):
    """`calsync_connection_condition`, built at scrape time from one small tuple per connection.

    A labelled Gauge keeps an object with a lock for each of the 18 series of a connection (6
    types x 3 statuses): about 13 KiB per connection, 13 MB at 1,000 and 130 MB at 10,000. The
    statuses themselves are a few dozen bytes; the series are made from them only when scraped.
    Each connection's value is replaced whole, never changed in place, so the scrape thread
    reads consistent entries while the event loop writes."""

    name = "calsync_connection_condition"
    documentation = (
        "Conditions of each CalendarConnection: 1 for the current status of each type (exported "
        "by the operator, from the statuses its watch sees)."
    )
    labels = ("namespace", "name", "type", "status")

    def __init__(self) -> None:
        self.current: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for (namespace, name), conditions in list(self.current.items()):
            for ctype, status in conditions:
                for candidate in _STATUSES:
                    family.add_metric(
                        (namespace, name, ctype, candidate), 1.0 if candidate == status else 0.0
                    )
        yield family


_STATUSES = ("True", "False", "Unknown")
CONNECTION_CONDITION = _ConnectionConditions()
REGISTRY.register(CONNECTION_CONDITION)
CONNECTION_TRANSITIONS = Counter(
    "calsync_connection_condition_transitions_total",
    "Condition transitions of CalendarConnections, by type, new status and reason.",
    ["type", "status", "reason"],
    registry=REGISTRY,
)

SYNCJOBS_PENDING = Gauge(
    "calsync_syncjobs_pending",
    "SyncJobs waiting for a worker, as this process's SyncJob watch sees them (operator and "
    "workers alike); scale workers on its maximum.",
    registry=REGISTRY,
)
SYNCJOB_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Superseded")
SYNCJOBS = Gauge(
    "calsync_syncjobs",
    "SyncJobs by phase, as the operator's SyncJob watch sees them (a job without a phase yet "
    "counts as Pending).",
    ["phase"],
    registry=REGISTRY,
)
SYNCJOBS_RUNNING = Gauge(
    "calsync_syncjobs_running", "SyncJobs this worker is running now.", registry=REGISTRY
)
SYNCJOBS_FINISHED = Counter(
    "calsync_syncjobs_finished_total",
    "SyncJobs this worker finished, by final phase.",
    ["phase"],
    registry=REGISTRY,
)
POLLS = Counter(
    "calsync_polls_total",
    "Polls this worker ran (asked for through the event store, not SyncJobs), by outcome: "
    "Retried (failed; the next poll retries), Failed (permanently, or SYNC_MAX_RETRIES in a row).",
    ["outcome"],
    registry=REGISTRY,
)
POLL_OUTCOMES = ("Succeeded", "Retried", "Failed")
POLLS_OLDEST_WAITING = Gauge(
    "calsync_polls_oldest_waiting_seconds",
    "How long the oldest poll due and not yet started has waited, at this worker's last look "
    "into the event store (0: none waiting); it grows when the workers cannot keep up.",
    registry=REGISTRY,
)
POLLS_WAITING = Gauge(
    "calsync_polls_waiting",
    "Polls due in the event store and not started yet (operator, counted every 15 s); the "
    "scaler adds them to the pending SyncJobs.",
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "calsync_scaling_decisions_total",
    "Decisions of the worker scaler, by direction (up, down, none).",
    ["direction"],
    registry=REGISTRY,
)
WORKER_REPLICAS_DESIRED = Gauge(
    "calsync_worker_replicas_desired",
    "Replicas of the worker Deployment chosen by the scaler's last decision.",
    registry=REGISTRY,
)
SYNC_DURATION = Histogram(
    "calsync_sync_duration_seconds",
    "Duration of successful SyncJob attempts.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
EVENTS_SYNCED = Counter(
    "calsync_events_synced_total",
    "Events read from providers (fetched) and written to or removed from the store.",
    ["operation"],
    registry=REGISTRY,
)

TOKEN_REFRESH_RESULTS = ("ok", "invalid_grant", "throttled", "error")
TOKEN_REFRESHES = Counter(
    "calsync_token_refreshes_total",
    "OAuth access-token refreshes, by provider and result (ok; invalid_grant: the refresh "
    "token was refused, consent is needed again; throttled; error: the token endpoint failed "
    "or was unreachable).",
    ["provider", "result"],
    registry=REGISTRY,
)
PROVIDERS = ("google", "microsoft", "caldav", "icloud")
PROVIDER_RESULTS = (
    "ok",
    "client_error",
    "unauthorized",
    "throttled",
    "server_error",
    "unreachable",
)
PROVIDER_REQUESTS = Counter(
    "calsync_provider_requests_total",
    "HTTP requests to provider APIs (each attempt and redirect hop), by provider and result: "
    "ok (below 400), client_error (other 4xx, e.g. 404, 410, 412), unauthorized (401, 403), "
    "throttled (429, 503 with Retry-After, Google's rateLimitExceeded), server_error (other "
    "5xx), unreachable (connection failed or timed out).",
    ["provider", "result"],
    registry=REGISTRY,
)
PROVIDER_REQUEST_DURATION = Histogram(
    "calsync_provider_request_duration_seconds",
    "Time from sending a provider API request to its answer (or its failure), by provider.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


def provider_request(provider: str, result: str, seconds: float) -> None:
    """Count one provider API request (`provider` outside the known set counts as `other`)."""
    label = provider if provider in PROVIDERS else "other"
    PROVIDER_REQUESTS.labels(label, result).inc()
    PROVIDER_REQUEST_DURATION.labels(label).observe(seconds)


CONSENTS = Counter(
    "calsync_oauth_consents_total",
    "OAuth consent flows finished at the gateway, by provider and result.",
    ["provider", "result"],
    registry=REGISTRY,
)
GATEWAY_REQUESTS = Counter(
    "calsync_gateway_requests_total",
    "Requests answered by the gateway, by route and status code.",
    ["route", "code"],
    registry=REGISTRY,
)
WEBHOOK_PROVIDERS = ("google", "microsoft")
WEBHOOK_RESULTS = (
    "accepted",
    "validation",
    "sync_message",
    "unknown",
    "forged",
    "malformed",
    "too_large",
    "rate_limited",
    "overloaded",
    "error",
)
WEBHOOK_REQUESTS = Counter(
    "calsync_webhook_requests_total",
    "Provider webhook calls answered by the gateway, by provider and result (accepted, "
    "validation, sync_message, unknown, forged, malformed, too_large, rate_limited, "
    "overloaded, error). A Graph batch counts once per item.",
    ["provider", "result"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "calsync_webhook_latency_seconds",
    "Time from a webhook call's arrival to its answer, by provider (Graph throttles endpoints "
    "slower than 3 s).",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.9, 5, 10, 30),
    registry=REGISTRY,
)
WEBHOOK_JOBS = Counter(
    "calsync_webhook_jobs_total",
    "What verified notifications became, by provider and action: created (a new SyncJob), "
    "touched (a Pending one re-armed), covered (handled by a recording another notification "
    "started).",
    ["provider", "action"],
    registry=REGISTRY,
)
WEBHOOK_AHEAD = Counter(
    "calsync_webhook_ahead_total",
    "Recordings the gateway made ahead, for no notification in particular, by provider and "
    "action: touched (a Pending webhook job re-armed before its coalescing wait ran out) or "
    "created (its successor, once the job's wait reached WEBHOOK_COALESCE_MAX).",
    ["provider", "action"],
    registry=REGISTRY,
)
WEBHOOK_RECORDINGS_IN_FLIGHT = Gauge(
    "calsync_webhook_recordings_in_flight",
    "Recordings of notifications as sync work the gateway is carrying out now.",
    registry=REGISTRY,
)
KEY_ROTATIONS = Counter(
    "calsync_key_rotations_total",
    "Token keyring rotations performed by this process, by result.",
    ["result"],
    registry=REGISTRY,
)

SYNCJOBS_REFUSED = Counter(
    "calsync_syncjobs_refused_total",
    "Sync jobs the operator did not create, by reason (queue_full: the queue cap was reached).",
    ["reason"],
    registry=REGISTRY,
)
SYNCJOBS_SKIPPED = Counter(
    "calsync_syncjobs_skipped_total",
    "SyncJobs a worker would not claim, by reason (foreign_store: the connection is bound to "
    "another event store).",
    ["reason"],
    registry=REGISTRY,
)
SYNC_RUNS_FENCED = Counter(
    "calsync_sync_runs_fenced_total",
    "Sync runs stopped because they lost the connection's claim (its writes were refused).",
    registry=REGISTRY,
)
SYNC_RUNS_ABANDONED = Counter(
    "calsync_sync_runs_abandoned_total",
    "Sync runs still going a whole SYNC_LEASE after their SYNC_JOB_TIMEOUT cancelled them: "
    "their claim is let go so another run takes the connection over.",
    registry=REGISTRY,
)
PURGES = Counter(
    "calsync_connection_purges_total",
    "Deleted connections whose data was purged (ok) or given up on after the purge timeout.",
    ["result"],
    registry=REGISTRY,
)
RECONCILES = Counter(
    "calsync_connection_reconciles_total",
    "Reconciles of CalendarConnections by the operator, by result (ok, error).",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_QUEUE = Gauge(
    "calsync_connection_reconcile_queue",
    "Connections waiting for a reconcile (due now) in the operator.",
    registry=REGISTRY,
)
OPERATOR_LEADER = Gauge(
    "calsync_operator_leader",
    "1 while this operator process holds the leader Lease and acts, else 0.",
    registry=REGISTRY,
)
WORKERS_LIVE = Gauge(
    "calsync_workers_live",
    "Workers on this event store seen alive by this worker (provider budgets are split by it).",
    registry=REGISTRY,
)


def observe_conditions(namespace: str, name: str, conditions: list[tuple[str, str]]) -> None:
    """Make the condition gauges of one connection say exactly what its status says now: the
    types given are set, any other type recorded before is removed."""
    CONNECTION_CONDITION.current[(namespace, name)] = tuple(dict(conditions).items())


def forget_connection(namespace: str, name: str) -> None:
    """Drop every series of a deleted connection so dashboards do not show ghosts."""
    CONNECTION_CONDITION.current.pop((namespace, name), None)


# -- push subscriptions (the subscription controller) -----------------------------------------

SUBSCRIPTION_OPERATIONS = Counter(
    "calsync_subscription_operations_total",
    "Provider calls of the subscription controller, by provider, operation (register, renew, "
    "stop, delete, reauthorize, recreate, resync) and result (ok, gone, error, refused, "
    "abandoned: a deleted subscription released after the purge timeout).",
    ["provider", "operation", "result"],
    registry=REGISTRY,
)
SUBSCRIPTION_EXPIRY = Gauge(
    "calsync_subscription_expiry_seconds",
    "Seconds until the first push channel of the provider expires (+Inf when there is none); "
    "alert when it falls below the renewal margin.",
    ["provider"],
    registry=REGISTRY,
)
SUBSCRIPTION_RENEWAL_OVERDUE = Gauge(
    "calsync_subscription_renewal_overdue_seconds",
    "How long the most overdue push channel of the provider has been past its renewal time "
    "(expiration minus WEBHOOK_RENEWAL_BEFORE_EXPIRY, or half-life for short lifetimes) without "
    "being renewed; 0 when none is. Only a failing renewal keeps it above a few seconds.",
    ["provider"],
    registry=REGISTRY,
)
SUBSCRIPTIONS = Gauge(
    "calsync_subscriptions",
    "WebhookSubscriptions the operator's watch sees, by provider and whether they are Ready.",
    ["provider", "ready"],
    registry=REGISTRY,
)


def _initialize() -> None:
    """Create the series alerts and dashboards divide or compare, at 0 (see the docstring)."""
    for phase in ("Succeeded", "Failed", "Superseded"):
        SYNCJOBS_FINISHED.labels(phase)
    for outcome in POLL_OUTCOMES:
        POLLS.labels(outcome)
    for provider in PROVIDERS:
        for result in PROVIDER_RESULTS:
            PROVIDER_REQUESTS.labels(provider, result)
    for provider in ("google", "microsoft"):
        for result in TOKEN_REFRESH_RESULTS:
            TOKEN_REFRESHES.labels(provider, result)
    for provider in WEBHOOK_PROVIDERS:
        for result in WEBHOOK_RESULTS:
            WEBHOOK_REQUESTS.labels(provider, result)


_initialize()


@functools.lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label set: the webhook path counts four
    things per call, and `labels` validates and locks on every call (about 4 % of the gateway's
    CPU under load). For metrics whose label values come from a small fixed set only."""
    return metric.labels(*values)
