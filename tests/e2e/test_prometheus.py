"""A real Prometheus scrapes calsync's three components during an end-to-end run, loads the alert
rules the chart ships, and every alert expression and every dashboard query returns real series.

Everything is real: Prometheus from Debian's `prometheus` package (its own TSDB in a temporary
directory, 1 s scrapes of static targets), `calsync operator`, `calsync worker` and `calsync
gateway` as separate processes on one PostgreSQL store, the quiet cluster's API server, a
Radicale calendar and the Google simulator. The operator and the worker serve /metrics on their
own `CALSYNC_METRICS_PORT`; the gateway serves /metrics on its own listener, as the chart's
ServiceMonitor scrapes it (a standalone gateway opens no metrics port). The run drives a CalDAV
connection to Ready, a CalDAV connection with a wrong password to Failed, a Google connection to
a registered push channel and a notification that becomes a SyncJob, and webhook calls the
gateway rejects (malformed, unknown channel, forged token), so the series have samples; the
operator sizes a worker Deployment nothing runs, so the scaler decides too.

How the queries are checked:

- Alerts: each alert's `expr` ends in its threshold comparison (`> 0.10`, `< 0.95`, ...). The
  test strips that comparison and queries what is left, the quantity the alert compares: it must
  return at least one series. Querying the alert as written would return nothing in a healthy
  run, and a recorded series per alert would test a copy instead of the expression. Prometheus'
  own rules API must also list every alert of the file with health `ok` (evaluated without an
  error).
- Dashboard: every target of every panel in charts/calsync/files/dashboard.json, with Grafana's
  `$__rate_interval` replaced by `1m` (the datasource is `${datasource}` in the panel's
  `datasource`, never in a query); no `$` may remain.

The TSDB is new, so any series returned was scraped during this run. Because the alerted
counters exist at 0 from a component's start, the test also checks that the run was counted:
provider requests by result, token refreshes, jobs by phase, scaling decisions and rejected
webhook calls are above 0, and no renewal is overdue. No sleeps: Prometheus' HTTP
API is polled against a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fixtures.manifests import caldav_connection, secret
from tests.fixtures.radicale import CalDAVCalendar
from tests.fixtures.simulators import Simulator
from tests.queue_fleet import simple_events
from tests.support import ROOT, Kubectl, Process, condition, free_port, poll

pytestmark = pytest.mark.e2e

ALERTS = ROOT / "charts/calsync/files/alerts.yaml"
DASHBOARD = ROOT / "charts/calsync/files/dashboard.json"
THRESHOLD = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9][0-9.e+]*\s*$")
WORKERS = "calsync-worker"


# -- the queries under test ---------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_quantity(expr: str) -> str:
    """The alert's expression without its final threshold comparison."""
    stripped = THRESHOLD.sub("", expr.strip())
    assert stripped != expr.strip(), f"no threshold comparison at the end of: {expr}"
    return stripped


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target, with Grafana's variables substituted."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets") or []:
            query = target["expr"].replace("$__rate_interval", "1m")
            assert "$" not in query, f"unsubstituted variable in {panel['title']!r}: {query}"
            out.append((panel["title"], query))
    return out


# -- Prometheus ---------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            pytest.fail("prometheus is not on PATH: install Debian's `prometheus` package")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited:\n{self.log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def series(self, query: str) -> list[dict[str, Any]]:
        data = self.api("query", query=query)
        return list(data["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


# -- the run ------------------------------------------------------------------------------------


def google_connection(kc: Kubectl, ns: str, sim: Simulator, name: str) -> str:
    """A Google user with one event and a push connection to it; the calendar id."""
    email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    sim.admin("POST", "users", {"email": email})
    sim.admin("POST", f"calendars/{email}/events", google_event("first"))
    client = sim.admin("POST", "clients", {"redirect_uris": ["http://127.0.0.1/cb"]})
    token = sim.admin("POST", "tokens/refresh", {"user": email, "client_id": client["client_id"]})
    kc.apply(
        secret(
            f"{name}-client", client_id=client["client_id"], client_secret=client["client_secret"]
        ),
        ns,
    )
    kc.apply(secret(f"{name}-token", refresh_token=token["refresh_token"]), ns)
    kc.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "CalendarConnection",
            "metadata": {"name": name},
            "spec": {
                "provider": "google",
                "owner": email,
                "oauth": {
                    "clientSecretRef": {"name": f"{name}-client"},
                    "tokenSecretRef": {"name": f"{name}-token"},
                },
                "sync": {"push": True, "pollInterval": "24h"},
            },
        },
        ns,
    )
    return email


def google_event(summary: str) -> dict[str, Any]:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    return {
        "summary": summary,
        "start": {"dateTime": start.isoformat().replace("+00:00", "Z"), "timeZone": "UTC"},
        "end": {
            "dateTime": (start + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "timeZone": "UTC",
        },
    }


def worker_deployment() -> dict[str, Any]:
    """A Deployment nothing runs (no kubelet here); the scaler sizes it all the same."""
    labels = {"app.kubernetes.io/name": WORKERS}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WORKERS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "registry.invalid/none"}]},
            },
        },
    }


def ready(url: str, proc: Process) -> bool:
    if proc.proc.poll() is not None:
        pytest.fail(f"{proc.log.name} exited:\n{proc.output()[-4000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def is_ready(kc: Kubectl, ns: str, name: str, status: str) -> bool:
    cond = condition(kc, ns, name, "Ready")
    return cond is not None and cond["status"] == status


@pytest.fixture
def components(
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    postgres_url: str,
    google_sim: Simulator,
    tmp_path: Path,
) -> Iterator[dict[str, int]]:
    """Operator, worker and gateway as processes; {component: port serving its /metrics}."""
    kc, ns = quiet_kubectl, quiet_namespace
    kc.apply(worker_deployment(), ns)
    store = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    gateway_port = free_port()
    base = {
        **os.environ,
        "KUBECONFIG": str(kc.kubeconfig),
        "CALSYNC_NAMESPACES": ns,
        "CALSYNC_KEYRING_NAMESPACE": ns,
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_LOG_LEVEL": "INFO",
        "CALSYNC_STORE_URL": store,
        "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
        "CALSYNC_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
        "CALSYNC_WEBHOOK_ALLOW_INSECURE": "true",
        "CALSYNC_WEBHOOK_COALESCE": "0.5",
        "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
        "CALSYNC_OPERATOR_LEASE_NAME": f"prom-{uuid.uuid4().hex[:6]}",
        "CALSYNC_GOOGLE_API_URL": google_sim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{google_sim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{google_sim.url}/token",
    }
    ports = {"operator": free_port(), "worker": free_port(), "gateway": gateway_port}
    health = free_port()
    environments = {
        "operator": {
            **base,
            "CALSYNC_METRICS_PORT": str(ports["operator"]),
            "CALSYNC_HEALTH_PORT": str(health),
            "CALSYNC_GATEWAY_PORT": "0",
            "CALSYNC_WORKER_DEPLOYMENT": WORKERS,
            "CALSYNC_WORKER_DEPLOYMENT_NAMESPACE": ns,
            "CALSYNC_SCALE_INTERVAL": "1",
        },
        "worker": {
            **base,
            "CALSYNC_METRICS_PORT": str(ports["worker"]),
            "CALSYNC_HEALTH_PORT": "0",
            "CALSYNC_GATEWAY_PORT": "0",
        },
        "gateway": {
            **base,
            "CALSYNC_GATEWAY_PORT": str(gateway_port),
            "CALSYNC_METRICS_PORT": "0",
            "CALSYNC_HEALTH_PORT": "0",
        },
    }
    # What says each one is up: the operator's liveness once Kopf runs, the worker's metrics
    # listener (it has no other), the gateway's readiness once its caches have synced.
    up = {
        "operator": f"http://127.0.0.1:{health}/healthz",
        "worker": f"http://127.0.0.1:{ports['worker']}/metrics",
        "gateway": f"http://127.0.0.1:{gateway_port}/readyz",
    }
    started: dict[str, Process] = {}
    try:
        for component, env in environments.items():
            started[component] = Process([component], env, tmp_path / f"{component}.log")
        for component, proc in started.items():
            poll(
                lambda u=up[component], p=proc: ready(u, p),
                timeout=60,
                what=f"{component} up",
            )
        yield ports
    finally:
        codes = {component: proc.stop() for component, proc in started.items()}
        failed = {component: code for component, code in codes.items() if code != 0}
        assert not failed, f"components exited with {failed}"


def test_alerts_and_dashboard_queries_return_series_from_a_real_run(
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    components: dict[str, int],
    caldav_calendar: CalDAVCalendar,
    google_sim: Simulator,
    tmp_path: Path,
) -> None:
    kc, ns = quiet_kubectl, quiet_namespace
    prometheus = Prometheus(
        tmp_path,
        {f"calsync-{name}": f"127.0.0.1:{port}" for name, port in components.items()},
    )
    try:
        poll(prometheus.ready, timeout=30, what="prometheus /-/ready")

        # A CalDAV sync to Ready, and one with a wrong password to a Failed job.
        caldav_calendar.seed(simple_events("prom", 3, dt.datetime.now(dt.UTC)))
        kc.apply(
            secret("dav", username=caldav_calendar.user, password=caldav_calendar.password), ns
        )
        kc.apply(secret("dav-wrong", username=caldav_calendar.user, password="not-it"), ns)
        kc.apply(caldav_connection("dav", caldav_calendar.url, "dav"), ns)
        kc.apply(caldav_connection("dav-wrong", caldav_calendar.url, "dav-wrong"), ns)

        # A Google connection with a push channel.
        calendar = google_connection(kc, ns, google_sim, "goog")
        poll(lambda: is_ready(kc, ns, "dav", "True"), timeout=60, what="dav Ready")
        poll(lambda: is_ready(kc, ns, "dav-wrong", "False"), timeout=60, what="dav-wrong not Ready")

        def channel() -> str | None:
            subs = kc.json("get", "whsub", "-n", ns)["items"]
            for sub in subs:
                status = sub.get("status") or {}
                conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
                if conds.get("Ready") == "True" and status.get("channelId"):
                    return str(status["channelId"])
            return None

        channel_id = poll(channel, timeout=60, what="a Ready Google WebhookSubscription")

        # A change at Google: the simulator notifies the gateway, which records a SyncJob.
        google_sim.admin("POST", f"calendars/{calendar}/events", google_event("changed"))
        poll(
            lambda: prometheus.series(
                'sum(calsync_webhook_jobs_total{provider="google"}) > 0'
                ' and sum(calsync_webhook_requests_total{result="accepted"}) > 0'
            ),
            timeout=60,
            what="the notification recorded, as Prometheus sees it",
        )

        # Calls the gateway rejects.
        gateway = f"http://127.0.0.1:{components['gateway']}"
        google = f"{gateway}/api/webhooks/google"
        answers = [
            httpx.post(google, timeout=10).status_code,  # no headers: malformed
            httpx.post(
                google,
                headers={
                    "X-Goog-Channel-ID": "calsync-00000000-1",
                    "X-Goog-Channel-Token": "nope",
                    "X-Goog-Resource-State": "exists",
                },
                timeout=10,
            ).status_code,  # unknown channel
            httpx.post(
                google,
                headers={
                    "X-Goog-Channel-ID": channel_id,
                    "X-Goog-Channel-Token": "forged",
                    "X-Goog-Resource-State": "exists",
                },
                timeout=10,
            ).status_code,  # forged token
            httpx.post(
                f"{gateway}/api/webhooks/microsoft", content=b"{not json", timeout=10
            ).status_code,
        ]
        assert answers == [400, 403, 401, 400]

        # Every target is scraped and every alert evaluates without an error.
        def targets_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        poll(targets_up, timeout=30, what="all three components scraped")

        # The new series count what happened, not only exist at 0: each of these must be > 0.
        happened = [
            'calsync_provider_requests_total{job="calsync-worker",provider="caldav",result="ok"}',
            'calsync_provider_requests_total{provider="caldav",result="unauthorized"}',
            'calsync_provider_requests_total{provider="google",result="ok"}',
            'calsync_provider_request_duration_seconds_count{provider="google"}',
            'calsync_token_refreshes_total{provider="google",result="ok"}',
            'calsync_syncjobs{job="calsync-operator",phase="Succeeded"}',
            'calsync_syncjobs{job="calsync-operator",phase="Failed"}',
            'calsync_syncjobs_finished_total{job="calsync-worker",phase="Failed"}',
            'calsync_subscription_expiry_seconds{provider="google"}',
            'calsync_scaling_decisions_total{direction="none"}',
            'calsync_webhook_requests_total{provider="google",result="forged"}',
            'calsync_webhook_requests_total{provider="google",result="unknown"}',
            'calsync_webhook_requests_total{provider="microsoft",result="malformed"}',
            # Conditions the worker wrote, as the operator's watch saw them.
            'calsync_connection_condition{job="calsync-operator",name="dav",type="Synced",'
            'status="True"}',
            'calsync_connection_condition{job="calsync-operator",name="dav-wrong",'
            'type="Authenticated",status="False"}',
        ]
        missing = list(happened)

        def counted() -> bool:
            missing[:] = [q for q in missing if not prometheus.series(f"sum({q}) > 0")]
            return not missing

        try:
            poll(counted, timeout=30, interval=1, what="the run counted")
        except pytest.fail.Exception:
            pytest.fail(f"nothing counted in: {missing}")
        # Only the operator exports connection conditions: a worker's copy would go stale.
        assert prometheus.series('calsync_connection_condition{job!="calsync-operator"}') == []
        overdue = prometheus.series("max(calsync_subscription_renewal_overdue_seconds)")
        assert overdue and float(overdue[0]["value"][1]) == 0.0  # the channel is fresh

        names = {rule["alert"] for rule in alert_rules()}

        def rules_healthy() -> dict[str, str] | None:
            loaded = {
                rule["name"]: rule["health"]
                for group in prometheus.api("rules", type="alert")["groups"]
                for rule in group["rules"]
            }
            return (
                loaded
                if loaded and set(loaded) == names and all(h == "ok" for h in loaded.values())
                else None
            )

        poll(rules_healthy, timeout=30, what=f"Prometheus evaluating every alert of {ALERTS.name}")

        queries = [(f"alert {r['alert']}", alert_quantity(r["expr"])) for r in alert_rules()]
        queries += [
            (f"panel {title!r} target {i}", query)
            for i, (title, query) in enumerate(dashboard_queries())
        ]
        empty = dict(queries)
        assert len(empty) == len(queries)

        def all_answered() -> bool:
            for what, query in list(empty.items()):
                if prometheus.series(query):
                    del empty[what]
            return not empty

        try:
            poll(all_answered, timeout=45, interval=1, what="a series for every query")
        except pytest.fail.Exception:
            pytest.fail(
                "queries without a series from this run:\n"
                + "\n".join(f"{what}: {query}" for what, query in empty.items())
            )
        assert len(queries) >= len(names) + 25
    finally:
        prometheus.stop()
