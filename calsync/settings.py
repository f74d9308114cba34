"""Operator settings: one typed model, filled from defaults, then `CALSYNC_*` variables, then flags.

The defaults are the settings of the platform calsync grew from (its deployment guide), kept where
they still mean something in a Kubernetes-native design; the README's settings table and the Helm
chart's values list the same names and defaults. Durations accept Go-style strings ("15m", "24h").
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from calsync.api.duration import parse_duration

ENV_PREFIX = "CALSYNC_"


def _seconds(value: object) -> object:
    if isinstance(value, str):
        stripped = value.strip()
        try:
            seconds = float(stripped)
        except ValueError:
            return parse_duration(stripped)
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a finite number of seconds")
        return seconds
    return value


def _check_nameserver(text: str) -> None:
    """An IP address with an optional port: `192.0.2.53`, `127.0.0.1:5353`, `[::1]:53`."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if not rest else "x")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (with an optional :port)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")


class Settings(BaseModel):
    """Every operator setting, its seed default, and what it controls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Scope and identity
    namespaces: tuple[str, ...] = Field(
        default=(), description="namespaces to watch; empty = the whole cluster"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: text on a terminal, JSON lines otherwise"
    )
    bind_address: str = Field(
        default="0.0.0.0",  # noqa: S104 - pods serve /metrics to Prometheus
        description="address of the /metrics and /healthz listeners",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables /metrics")
    health_port: int = Field(default=8081, ge=0, le=65535, description="0 disables /healthz")

    # Store and workers
    store_url: str | None = Field(
        default=None,
        description="event store URL; default: SQLite under $XDG_STATE_HOME/calsync/events.db",
    )
    allow_private_addresses: bool = Field(
        default=False,
        description="let CalDAV URLs and their redirects reach loopback/private addresses",
    )
    worker_identity: str | None = Field(default=None, description="default: hostname-pid")
    sync_lease: float = Field(default=60.0, ge=5.0, description="SyncJob claim lease")
    sync_retry_backoff: float = Field(
        default=5.0, gt=0, description="first retry delay; doubles per attempt, capped at 5 min"
    )
    provider_timeout: float = Field(default=30.0, gt=0, description="one provider request")
    dns_nameservers: tuple[str, ...] = Field(
        default=(),
        description="DNS servers (IP or IP:port, comma-separated) for CalDAV SRV discovery "
        "(spec.caldav.domain); empty = the system resolver",
    )

    # OAuth providers' endpoints: the public services by default; point them at the simulators
    # (`calsync simulate google|microsoft`) for tests and demos.
    google_api_url: str = Field(default="https://www.googleapis.com")
    google_authorize_url: str = Field(default="https://accounts.google.com/o/oauth2/v2/auth")
    google_token_url: str = Field(default="https://oauth2.googleapis.com/token")
    microsoft_graph_url: str = Field(default="https://graph.microsoft.com")
    microsoft_login_url: str = Field(
        default="https://login.microsoftonline.com",
        description="identity platform base; the tenant and /oauth2/v2.0/... are appended",
    )
    microsoft_tenant: str = Field(default="common", description="seed: MICROSOFT_TENANT_ID")

    # Gateway (OAuth consent, health, /metrics; provider webhooks come with push support)
    gateway_port: int = Field(
        default=8080, ge=0, le=65535, description="gateway listener; 0 disables it in `run`"
    )
    gateway_url: str | None = Field(
        default=None,
        description="the gateway's public base URL, used in consent links and OAuth redirect "
        "URIs; default http://127.0.0.1:<gateway_port>",
    )
    consent_link_ttl: float = Field(
        default=7 * 86400.0, ge=60.0, description="how long a published consent link is valid"
    )
    consent_flow_ttl: float = Field(
        default=600.0, ge=30.0, description="time allowed between starting consent and callback"
    )
    keyring_namespace: str | None = Field(
        default=None,
        description="namespace of the calsync-keyring Secret; default: the pod's namespace, "
        "else default",
    )
    keyring_name: str = Field(default="calsync-keyring", description="the keyring Secret")

    # Sync queue (seed: SYNC_CONCURRENT_JOBS, SYNC_MAX_RETRIES, SYNC_TIMEOUT_MS, SYNC_BATCH_SIZE)
    sync_concurrency: int = Field(default=10, ge=1, le=1000, description="jobs per worker")
    sync_max_retries: int = Field(default=5, ge=0, le=100)
    sync_job_timeout: float = Field(default=600.0, gt=0)
    sync_batch_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="objects per store transaction (CalDAV: also per multiget request; Graph "
        "pages of 1,000 are stored in such batches); Google pages are always 2,500",
    )
    caldav_poll_interval: float = Field(
        default=900.0,
        ge=60.0,
        description="poll interval of connections whose spec.sync.pollInterval is unset",
    )
    syncjob_history: float = Field(
        default=3600.0,
        ge=0,
        description="ttlSecondsAfterFinished of the SyncJobs the operator creates",
    )
    operator_concurrency: int = Field(
        default=8, ge=1, le=256, description="connections the operator reconciles at once"
    )
    purge_timeout: float = Field(
        default=300.0,
        ge=0,
        description="how long a deleted connection's purge is retried before the finalizer "
        "lets go (with a Warning Event)",
    )
    operator_lease_name: str = Field(
        default="calsync-operator",
        description="coordination.k8s.io Lease that elects the one active operator replica",
    )
    operator_lease_duration: float = Field(
        default=30.0,
        ge=5.0,
        description="how long a silent leader keeps the operator Lease; a standby takes over "
        "after it",
    )

    # Provider budgets in requests per hour (seed: GOOGLE/MICROSOFT/CALDAV_API_RATE_LIMIT)
    google_rate_limit: int = Field(default=1000, ge=1)
    microsoft_rate_limit: int = Field(default=10_000, ge=1)
    caldav_rate_limit: int = Field(default=100, ge=1)

    # Limits on what one calendar may cost (hostile input, docs/decisions/0014)
    max_object_size: int = Field(
        default=1 << 20,
        ge=1024,
        description="largest calendar object a sync reads, in characters (an iCalendar "
        "resource, or one Google/Graph event's JSON); a larger one is skipped and reported on "
        "the connection",
    )
    max_response_size: int = Field(
        default=256 << 20,
        ge=1 << 16,
        description="largest provider response body, in bytes after decompression (CalDAV, "
        "Google, Graph); a larger one fails the sync attempt for good",
    )
    query_series_limit: int = Field(
        default=3_000,
        ge=1,
        description="most occurrences one recurring series expands to in a range query; a "
        "series with more in the connection's window is named in its Degraded condition",
    )
    query_limit: int = Field(
        default=10_000,
        ge=1,
        description="most occurrences one range query (calsync events) returns; a capped "
        "answer says it is truncated",
    )

    # Push (seed: WEBHOOK_TIMEOUT_MS, WEBHOOK_RATE_LIMIT, WEBHOOK_RENEWAL_THRESHOLD_HOURS)
    webhook_timeout: float = Field(
        default=30.0,
        gt=0,
        description="how long the gateway tries to record a notification as sync work before "
        "it answers 503 (the provider retries)",
    )
    webhook_rate_limit: int = Field(
        default=1000,
        ge=1,
        description="notifications per hour one channel (Google) or subscription (Graph) may "
        "deliver; more are answered 429",
    )
    webhook_address_rate_limit: float = Field(
        default=20.0,
        gt=0,
        description="rejected webhook calls per second one client address may make before it "
        "is answered 429 without any check",
    )
    webhook_renewal_before_expiry: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="renew a channel this long before it expires (at half-life when its "
        "lifetime is shorter than twice this)",
    )
    webhook_coalesce: float = Field(
        default=3.0,
        ge=0,
        le=60.0,
        description="a webhook SyncJob waits this long after its creation, or after the last "
        "notification the gateway recorded on it, before a worker may start it; notifications "
        "meanwhile join it, without any API write while 1 s of the wait is left",
    )
    webhook_coalesce_max: float = Field(
        default=10.0,
        ge=0,
        le=300.0,
        description="however many notifications keep arriving, a webhook SyncJob may start "
        "this long after its creation",
    )
    webhook_allow_insecure: bool = Field(
        default=False,
        description="register http:// notification URLs (development and simulators only; "
        "providers require HTTPS with a valid certificate)",
    )
    push_poll_interval: float = Field(
        default=3600.0,
        ge=60.0,
        description="poll interval of a connection while all its push channels are healthy "
        "(the safety net under push)",
    )

    # Scaling (seed: queue depth 500 to scale up, queue cap 5000)
    scale_up_queue_depth: int = Field(
        default=500, ge=1, description="pending SyncJobs per worker the scaler aims for"
    )
    queue_cap: int = Field(default=5000, ge=1)
    worker_deployment: str | None = Field(
        default=None, description="the worker Deployment the scaler sizes; unset = no scaler"
    )
    worker_deployment_namespace: str | None = Field(
        default=None, description="its namespace; default: the operator's namespace"
    )
    scale_min_replicas: int = Field(default=1, ge=0)
    scale_max_replicas: int = Field(default=10, ge=1)
    scale_interval: float = Field(default=15.0, gt=0, description="time between decisions")
    scale_down_stabilization: float = Field(
        default=300.0, ge=0, description="scale down to the highest recommendation of this window"
    )

    # Security (seed: key rotation 90 d)
    key_rotation_interval: float = Field(default=90 * 86400.0, ge=0)

    @field_validator(
        "sync_job_timeout",
        "sync_lease",
        "sync_retry_backoff",
        "provider_timeout",
        "caldav_poll_interval",
        "syncjob_history",
        "webhook_timeout",
        "webhook_renewal_before_expiry",
        "push_poll_interval",
        "webhook_coalesce",
        "webhook_coalesce_max",
        "key_rotation_interval",
        "purge_timeout",
        "operator_lease_duration",
        "consent_link_ttl",
        "consent_flow_ttl",
        "scale_interval",
        "scale_down_stabilization",
        mode="before",
    )
    @classmethod
    def _durations(cls, value: object) -> object:
        return _seconds(value)

    @field_validator("scale_max_replicas")
    @classmethod
    def _replica_bounds(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("scale_min_replicas")
        if low is not None and low > value:
            raise ValueError(f"below scale_min_replicas ({low})")
        return value

    @property
    def public_gateway_url(self) -> str:
        return (self.gateway_url or f"http://127.0.0.1:{self.gateway_port}").rstrip("/")

    @property
    def microsoft_authorize_url(self) -> str:
        base = self.microsoft_login_url.rstrip("/")
        return f"{base}/{self.microsoft_tenant}/oauth2/v2.0/authorize"

    @property
    def microsoft_token_url(self) -> str:
        return f"{self.microsoft_login_url.rstrip('/')}/{self.microsoft_tenant}/oauth2/v2.0/token"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _split_nameservers(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(ns.strip() for ns in value.split(",") if ns.strip())
        if isinstance(value, tuple | list):
            for entry in value:
                _check_nameserver(str(entry))
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_keyring_namespace() -> str:
    """The pod's own namespace in a cluster; `default` elsewhere (a laptop, CI)."""
    try:
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        namespace = ""
    return namespace or "default"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the setting and its source."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then `CALSYNC_<FIELD>` environment variables, then explicit overrides (flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        if env_name(name) in env:
            values[name] = env[env_name(name)]
            sources[name] = f"environment variable {env_name(name)}"
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "--" + name.replace("_", "-")
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            source = sources.get(field, "default")
            problems.append(f"{field} (from {source}): {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
