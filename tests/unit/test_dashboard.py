"""The Grafana dashboard the chart ships (charts/calsync/files/dashboard.json): a Prometheus
datasource variable used by every panel, and queries that name only metrics calsync exports,
covering every metric an operator watches. tests/e2e/test_prometheus.py runs every query against
a real Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from calsync.observability.metrics import REGISTRY
from tests.support import ROOT

pytestmark = pytest.mark.unit

DASHBOARD = ROOT / "charts/calsync/files/dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the dashboard must show (issue 11): everything but the per-process bookkeeping.
WATCHED = {
    "calsync_syncjobs_finished_total",
    "calsync_sync_duration_seconds",
    "calsync_events_synced_total",
    "calsync_syncjobs_pending",
    "calsync_syncjobs",
    "calsync_syncjobs_running",
    "calsync_workers_live",
    "calsync_worker_replicas_desired",
    "calsync_scaling_decisions_total",
    "calsync_webhook_requests_total",
    "calsync_webhook_latency_seconds",
    "calsync_webhook_jobs_total",
    "calsync_subscriptions",
    "calsync_subscription_expiry_seconds",
    "calsync_subscription_renewal_overdue_seconds",
    "calsync_subscription_operations_total",
    "calsync_provider_requests_total",
    "calsync_provider_request_duration_seconds",
    "calsync_token_refreshes_total",
    "calsync_connection_condition",
    "calsync_connection_condition_transitions_total",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":  # labelled ones have no samples until observed
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets") or []]


def test_datasource_is_a_prometheus_variable_every_panel_uses() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panels_have_unique_ids_and_descriptions() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert all(p.get("description") for p in panels if p["type"] != "row")
    assert dashboard()["uid"] and dashboard()["title"]


def test_queries_name_only_exported_metrics_and_cover_the_watched_ones() -> None:
    named = {m for q in queries() for m in re.findall(r"\bcalsync_[a-z_]+", q)}
    assert named <= exported(), named - exported()
    base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in named}
    assert base >= WATCHED, WATCHED - base


def test_only_grafana_variables_it_can_resolve() -> None:
    for query in queries():
        assert set(re.findall(r"\$\{?(\w+)", query)) <= {"__rate_interval"}, query
