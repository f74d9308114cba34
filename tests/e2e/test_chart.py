"""The Helm chart on a real API server: lint, render, server-side dry-run, refusals, install,
upgrade and uninstall.

Everything that touches a cluster uses the quiet API server (no session operator acts on the
objects there). The control plane has no kubelet or scheduler, so Deployments never get running
pods: install, upgrade and uninstall are asserted on the objects. The monitoring.coreos.com
(ServiceMonitor, PrometheusRule) and keda.sh (ScaledObject) kinds are not served by a bare
control plane: the `stub_crds` fixture installs minimal CRDs for them (any spec accepted), so
the API server still checks that those objects are well-formed objects of a served kind in the
right namespace, and their contents are asserted here in Python against the chart's files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.serviceaccounts import helm_binary
from tests.support import ROOT, Kubectl, Process, condition, free_port, poll, private_cluster

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "calsync"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
CRD_NAMES = (
    "calendarconnections.calsync.io",
    "syncjobs.calsync.io",
    "webhooksubscriptions.calsync.io",
)
PG = {"store": {"type": "postgresql", "postgresql": {"existingSecret": "calsync-pg"}}}


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    """The cached helm binary (`make helm` / `calsync devcluster helm` builds it once)."""
    return helm_binary()


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values dicts, later ones win."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def run_helm(
    helm: str, *args: str, values: dict[str, Any] | None = None, kubectl: Kubectl | None = None
) -> subprocess.CompletedProcess[str]:
    """helm with the values on stdin; against `kubectl`'s cluster when given."""
    env = dict(kubectl.env) if kubectl else None
    extra = ["-f", "-"] if values is not None else []
    return subprocess.run(
        [helm, *args, *extra],
        input=yaml.safe_dump(values) if values is not None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def template(
    helm: str, values: dict[str, Any], namespace: str = "calsync", release: str = "calsync"
) -> list[dict[str, Any]]:
    done = run_helm(helm, "template", release, str(CHART), "-n", namespace, values=values)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def refused(helm: str, values: dict[str, Any]) -> str:
    done = run_helm(helm, "template", "calsync", str(CHART), values=values)
    assert done.returncode != 0, "rendered although it must be refused"
    return done.stderr


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(owner name, pod spec, container) of every Deployment and Pod."""
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            spec = doc["spec"]
        else:
            continue
        out += [(doc["metadata"]["name"], spec, c) for c in spec["containers"]]
    return out


def dry_run(kubectl: Kubectl, docs: list[dict[str, Any]]) -> str:
    """Server-side apply dry-run of everything: the API server validates every object (schemas,
    CRD schemas, Pod Security admission). Every namespaced object names its namespace (the chart
    sets it). Returns the warnings."""
    done = kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-test",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture
def restricted_namespace(quiet_kubectl: Kubectl) -> Iterator[str]:
    """A namespace that enforces (and warns about) the restricted Pod Security Standard."""
    name = f"chart-{uuid.uuid4().hex[:8]}"
    quiet_kubectl("create", "namespace", name)
    quiet_kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    yield name
    quiet_kubectl("delete", "namespace", name, "--wait=false", check=False)


def _stub_crd(group: str, kind: str, plural: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def stub_crds(quiet_kubectl: Kubectl) -> Iterator[None]:
    stubs = [
        _stub_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "v1"),
        _stub_crd("monitoring.coreos.com", "PrometheusRule", "prometheusrules", "v1"),
        _stub_crd("keda.sh", "ScaledObject", "scaledobjects", "v1alpha1"),
    ]
    quiet_kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(stubs))
    names = [f"crd/{s['metadata']['name']}" for s in stubs]
    quiet_kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    yield
    quiet_kubectl("delete", *names, "--wait=false", check=False)


# -- lint and rendering ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        merge(PG, {"worker": {"replicas": 3}, "scaling": {"enabled": True}}),
        merge(PG, {"keda": {"enabled": True, "serverAddress": "http://prom:9090"}}),
        {"watchNamespaces": ["a", "b"], "networkPolicy": {"enabled": True}},
    ],
    ids=["defaults", "postgresql-scaler", "keda", "namespaces-netpol"],
)
def test_helm_lint_strict(helm: str, values: dict[str, Any]) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), values=values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_defaults_are_sqlite_all_in_one_with_restricted_pods(helm: str) -> None:
    docs = template(helm, {})
    deployments = kinds(docs, "Deployment")
    assert list(deployments) == ["calsync-run"]
    run = deployments["calsync-run"]["spec"]
    assert run["replicas"] == 1 and run["strategy"] == {"type": "Recreate"}
    pod = run["template"]["spec"]
    assert pod["serviceAccountName"] == "calsync-run"
    assert pod["containers"][0]["args"] == ["run"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "calsync-store"
    assert "calsync-store" in kinds(docs, "PersistentVolumeClaim")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["CALSYNC_STORE_URL"]["value"] == "sqlite+aiosqlite:////var/lib/calsync/events.db"
    # the gateway Service points at the all-in-one pod
    service = kinds(docs, "Service")["calsync-gateway"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "run"
    assert len(kinds(docs, "CustomResourceDefinition")) == 3
    assert {
        n: d["metadata"]["annotations"] for n, d in kinds(docs, "CustomResourceDefinition").items()
    } == {n: {"helm.sh/resource-policy": "keep"} for n in CRD_NAMES}
    _assert_restricted_and_bounded(docs)
    _assert_labels(docs)


def _assert_restricted_and_bounded(docs: list[dict[str, Any]]) -> None:
    found = containers(docs)
    assert found
    for owner, spec, container in found:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532, owner
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, owner
        assert sc["readOnlyRootFilesystem"] is True, owner
        assert sc["capabilities"] == {"drop": ["ALL"]}, owner
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (owner, kind)
        if spec.get("restartPolicy") != "Never":  # not the helm test Pod
            assert "livenessProbe" in container and "startupProbe" in container, owner
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/calsync"} <= mounts, owner


def _assert_labels(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "component"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], doc["metadata"]["name"], key)
        assert labels["helm.sh/chart"] == "calsync-0.1.0"


def test_postgresql_three_components_and_the_builtin_scaler(helm: str) -> None:
    docs = template(helm, merge(PG, {"worker": {"replicas": 3}, "scaling": {"enabled": True}}))
    deployments = kinds(docs, "Deployment")
    assert set(deployments) == {"calsync-operator", "calsync-worker", "calsync-gateway"}
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name.removeprefix("calsync-")]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
        env = {e["name"]: e for e in container.get("env", [])}
        if name == "calsync-gateway":
            assert "CALSYNC_STORE_URL" not in env  # the gateway does not open the store
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        else:
            ref = env["CALSYNC_STORE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "calsync-pg", "key": "url"}
    # the scaler owns the worker replicas: the chart does not set them
    assert "replicas" not in deployments["calsync-worker"]["spec"]
    settings = kinds(docs, "ConfigMap")["calsync-settings"]["data"]
    assert settings["CALSYNC_WORKER_DEPLOYMENT"] == "calsync-worker"
    assert settings["CALSYNC_WORKER_DEPLOYMENT_NAMESPACE"] == "calsync"
    assert settings["CALSYNC_SCALE_UP_QUEUE_DEPTH"] == "500"
    assert settings["CALSYNC_SYNC_CONCURRENCY"] == "10"
    assert settings["CALSYNC_LOG_FORMAT"] == "json"
    own = kinds(docs, "Role")["calsync-operator-own"]["rules"]
    scale = [r for r in own if r["resources"] == ["deployments/scale"]]
    assert scale == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": ["calsync-worker"],
            "verbs": ["get", "update"],
        }
    ]
    assert set(kinds(docs, "PodDisruptionBudget")) == set(deployments)


def _rules(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> Any:
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
            return doc["rules"]
    raise AssertionError(f"no {kind} {namespace}/{name}")


def test_watch_namespaces_gives_roles_and_nothing_cluster_wide(helm: str) -> None:
    docs = template(helm, merge(PG, {"watchNamespaces": ["a", "b"]}))
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"
    }
    for component in ("operator", "worker", "gateway"):
        assert {("a", f"calsync-{component}"), ("b", f"calsync-{component}")} <= roles
        assert ("calsync", f"calsync-{component}-own") in roles
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert len(bindings) == len(roles)
    for binding in bindings:
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        (subject,) = binding["subjects"]
        assert subject["namespace"] == "calsync"
    assert kinds(docs, "ConfigMap")["calsync-settings"]["data"]["CALSYNC_NAMESPACES"] == "a,b"
    # least privilege: no wildcards, and the worker and gateway only read the keyring here
    for doc in docs:
        for rule in doc.get("rules", []) if doc["kind"] in ("Role", "ClusterRole") else []:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
    for component in ("worker", "gateway"):
        assert _rules(docs, "Role", f"calsync-{component}-own", "calsync") == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["calsync-keyring"],
                "verbs": ["get"],
            }
        ]
    gateway = _rules(docs, "Role", "calsync-gateway", "a")
    assert not any(
        "delete" in r["verbs"] or ("list" in r["verbs"] and r["resources"] == ["secrets"])
        for r in gateway
    )


def test_ingress_tls_networkpolicy_and_pdbs(helm: str) -> None:
    values = merge(
        PG,
        {
            "gateway": {
                "replicas": 2,
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "host": "calsync.example.com",
                    "tls": {"enabled": True, "secretName": "calsync-tls"},
                    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                },
            },
            "networkPolicy": {
                "enabled": True,
                "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
            },
            "podDisruptionBudget": {"enabled": True},
        },
    )
    docs = template(helm, values)
    ingress = kinds(docs, "Ingress")["calsync-gateway"]
    assert ingress["spec"]["tls"] == [
        {"hosts": ["calsync.example.com"], "secretName": "calsync-tls"}
    ]
    paths = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/api/webhooks", "/auth"]
    settings = kinds(docs, "ConfigMap")["calsync-settings"]["data"]
    assert settings["CALSYNC_GATEWAY_URL"] == "https://calsync.example.com"
    policies = kinds(docs, "NetworkPolicy")
    assert set(policies) == {"calsync-operator", "calsync-worker", "calsync-gateway"}
    gateway_ingress = policies["calsync-gateway"]["spec"]["ingress"]
    assert gateway_ingress == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    for name, policy in policies.items():
        egress = policy["spec"]["egress"]
        assert egress[0]["ports"] == [
            {"port": 53, "protocol": "UDP"},
            {"port": 53, "protocol": "TCP"},
        ]
        assert egress[1] == {
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
            "ports": [{"port": 6443, "protocol": "TCP"}],
        }
        assert egress[2]["ports"] == [{"port": 443, "protocol": "TCP"}]
        postgres = [e for e in egress if e["ports"] == [{"port": 5432, "protocol": "TCP"}]]
        assert len(postgres) == (0 if name == "calsync-gateway" else 1), name
        if name != "calsync-gateway":
            assert policy["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    pdbs = kinds(docs, "PodDisruptionBudget")
    assert {n: p["spec"]["maxUnavailable"] for n, p in pdbs.items()} == {
        "calsync-operator": 1,
        "calsync-worker": 1,
        "calsync-gateway": 1,
    }


MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}


def _monitoring_files_present() -> bool:
    return ALERTS.exists() and DASHBOARD.exists()


def test_monitoring_objects(helm: str) -> None:
    if not _monitoring_files_present():
        assert "no files/alerts.yaml" in refused(
            helm, MONITORING
        ) or "no files/dashboard.json" in refused(helm, MONITORING)
        pytest.skip("charts/calsync/files/alerts.yaml or dashboard.json does not exist yet")
    docs = template(helm, merge(PG, MONITORING))
    monitor = kinds(docs, "ServiceMonitor")["calsync"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    # calsync_connection_condition's own `namespace` label must survive the scrape
    assert endpoint["honorLabels"] is True
    selector = monitor["spec"]["selector"]["matchLabels"]
    metrics_services = [
        s
        for s in kinds(docs, "Service").values()
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in metrics_services} == {
        "calsync-operator-metrics",
        "calsync-worker-metrics",
        "calsync-gateway-metrics",
    }
    for service in metrics_services:
        (port,) = service["spec"]["ports"]
        assert port["name"] == "metrics"
    rule = kinds(docs, "PrometheusRule")["calsync"]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"]
    dashboard = kinds(docs, "ConfigMap")["calsync-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["calsync.json"]) == json.loads(DASHBOARD.read_text())


def test_keda_scaled_object(helm: str) -> None:
    values = merge(
        PG,
        {
            "keda": {"enabled": True, "serverAddress": "http://prometheus.monitoring:9090"},
            "scaling": {"minReplicas": 0, "maxReplicas": 20, "queueDepthPerWorker": 250},
        },
    )
    docs = template(helm, values)
    scaled = kinds(docs, "ScaledObject")["calsync-worker"]["spec"]
    assert scaled["scaleTargetRef"] == {"name": "calsync-worker"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 20)
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["query"] == (
        "max(calsync_syncjobs_pending) + (max(calsync_polls_waiting) or vector(0))"
    )
    assert trigger["metadata"]["threshold"] == "250"
    assert "replicas" not in kinds(docs, "Deployment")["calsync-worker"]["spec"]
    # KEDA, not the built-in scaler: the operator gets neither the Deployment nor its rights
    assert "CALSYNC_WORKER_DEPLOYMENT" not in kinds(docs, "ConfigMap")["calsync-settings"]["data"]
    own = _rules(docs, "Role", "calsync-operator-own", "calsync")
    assert not any(r["resources"] == ["deployments/scale"] for r in own)


@pytest.mark.parametrize(
    "values",
    [{}, merge(PG, {"scaling": {"enabled": True}, "watchNamespaces": ["a", "b"]})],
    ids=["defaults", "postgresql-scaler-namespaces"],
)
def test_rendered_settings_are_what_calsync_loads(helm: str, values: dict[str, Any]) -> None:
    """The environment a pod gets (the settings ConfigMap plus the container's literal env)
    loads without error into calsync's Settings, with the chart's values in it."""
    from calsync.settings import load_settings

    docs = template(helm, merge(values, {"settings": {"syncJobTimeout": "20m"}}))
    data = kinds(docs, "ConfigMap")["calsync-settings"]["data"]
    for name, _, container in containers(docs):
        if name.endswith("-test"):
            continue
        literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        settings = load_settings(environ={**data, **literal})
        assert settings.sync_job_timeout == 1200.0
        assert settings.keyring_namespace == "calsync"
        assert settings.log_format == "json"
        assert settings.namespaces == tuple(values.get("watchNamespaces", ()))
        if values.get("scaling"):
            assert settings.worker_deployment == "calsync-worker"


def test_crds_disabled(helm: str) -> None:
    docs = template(helm, {"crds": {"enabled": False}})
    assert not kinds(docs, "CustomResourceDefinition")
    docs = template(helm, {"crds": {"keep": False}})
    for crd in kinds(docs, "CustomResourceDefinition").values():
        assert "annotations" not in crd["metadata"]


def test_chart_crds_are_the_generated_ones(helm: str) -> None:
    docs = template(helm, {})
    for name, crd in kinds(docs, "CustomResourceDefinition").items():
        plural = name.split(".")[0]
        source = yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
        for extra in ("labels", "annotations"):
            crd["metadata"].pop(extra)
        assert crd == source, name


def test_helm_test_hook_checks_readyz_with_the_calsync_image(helm: str) -> None:
    docs = template(helm, {})
    (pod,) = kinds(docs, "Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/calsync/calsync:0.1.0"
    script = container["command"][-1]
    assert "http://calsync-gateway.calsync.svc:80/readyz" in script


# -- what the chart refuses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"worker": {"replicas": 3}}, "SQLite serves one worker only. Set store.type=postgresql"),
        ({"gateway": {"replicas": 2}}, "gateway.replicas=2: with store.type=sqlite"),
        ({"scaling": {"enabled": True}}, "scaling.enabled=true needs several workers"),
        (
            {"keda": {"enabled": True, "serverAddress": "http://p:9090"}},
            "keda.enabled=true needs several workers",
        ),
        (
            merge(
                PG,
                {
                    "scaling": {"enabled": True},
                    "keda": {"enabled": True, "serverAddress": "http://p"},
                },
            ),
            "scaling.enabled and keda.enabled both size the worker Deployment",
        ),
        ({"store": {"type": "postgresql"}}, "needs store.postgresql.existingSecret"),
        (
            {"settings": {"syncConcurency": 20}},
            "additional properties 'syncConcurency' not allowed",
        ),
        ({"workers": {"replicas": 2}}, "additional properties 'workers' not allowed"),
        (
            {"store": {"type": "mysql"}},
            "at '/store/type': value must be one of 'sqlite', 'postgresql'",
        ),
        ({"worker": {"replicas": "three"}}, "at '/worker/replicas': got string, want integer"),
        ({"settings": {"syncJobTimeout": "10 minutes"}}, "at '/settings/syncJobTimeout'"),
        (
            {"logging": {"format": "xml"}},
            "at '/logging/format': value must be one of 'json', 'text'",
        ),
        ({"operator": {"replicas": 5}}, "at '/operator/replicas'"),
        (
            {"gateway": {"ingress": {"enabled": True}}},
            "gateway.ingress.enabled=true needs gateway.ingress.host",
        ),
        ({"operator": {"replicas": 2}}, "operator.replicas=2: with store.type=sqlite"),
        (
            merge(PG, {"keda": {"enabled": True}}),
            "keda.enabled=true needs keda.serverAddress",
        ),
        (
            merge(PG, {"scaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}),
            "scaling.minReplicas (5) is above scaling.maxReplicas (2)",
        ),
        (
            merge(
                PG,
                {
                    "gateway": {
                        "ingress": {
                            "enabled": True,
                            "host": "calsync.example.com",
                            "tls": {"enabled": True},
                        }
                    }
                },
            ),
            "gateway.ingress.tls.enabled=true needs gateway.ingress.tls.secretName",
        ),
    ],
    ids=[
        "sqlite-workers",
        "sqlite-gateways",
        "sqlite-scaler",
        "sqlite-keda",
        "keda-and-scaler",
        "postgresql-no-secret",
        "misspelt-setting",
        "misspelt-top-level",
        "bad-enum",
        "bad-type",
        "bad-duration",
        "bad-log-format",
        "operator-replicas",
        "ingress-no-host",
        "sqlite-operator-standby",
        "keda-no-server",
        "scaling-min-above-max",
        "ingress-tls-no-secret",
    ],
)
def test_refused_with_a_clear_message(helm: str, values: dict[str, Any], message: str) -> None:
    assert message in refused(helm, values)


# -- the API server accepts every combination ------------------------------------------------

COMBINATIONS = {
    "defaults-sqlite": {},
    "postgresql-3-workers-scaler": merge(
        PG, {"worker": {"replicas": 3}, "scaling": {"enabled": True}}
    ),
    "ingress-tls-netpol-pdb": merge(
        PG,
        {
            "gateway": {
                "replicas": 2,
                "ingress": {
                    "enabled": True,
                    "host": "calsync.example.com",
                    "tls": {"enabled": True, "secretName": "calsync-tls"},
                },
            },
            "networkPolicy": {"enabled": True},
            "podDisruptionBudget": {"enabled": True},
        },
    ),
    "keda": merge(PG, {"keda": {"enabled": True, "serverAddress": "http://prometheus:9090"}}),
    "crds-disabled": {"crds": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
    "monitoring": merge(PG, MONITORING),
}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_server_side_dry_run_accepts(
    helm: str,
    quiet_kubectl: Kubectl,
    restricted_namespace: str,
    stub_crds: None,
    name: str,
) -> None:
    if name == "monitoring" and not _monitoring_files_present():
        pytest.skip("charts/calsync/files/alerts.yaml or dashboard.json does not exist yet")
    docs = template(helm, COMBINATIONS[name], namespace=restricted_namespace)
    warnings = dry_run(quiet_kubectl, docs)
    assert "PodSecurity" not in warnings, warnings


def test_pod_security_check_bites(
    helm: str, quiet_kubectl: Kubectl, restricted_namespace: str
) -> None:
    """The dry-runs above would notice a pod template that breaks the restricted profile."""
    values = {
        "tests": {"enabled": False},
        "containerSecurityContext": {"allowPrivilegeEscalation": True, "runAsNonRoot": True},
    }
    docs = template(helm, values, namespace=restricted_namespace)
    warnings = dry_run(quiet_kubectl, docs)
    assert 'would violate PodSecurity "restricted:latest"' in warnings
    assert "allowPrivilegeEscalation != false" in warnings


def test_server_side_dry_run_of_namespaced_rbac(
    helm: str, quiet_kubectl: Kubectl, restricted_namespace: str
) -> None:
    watched = [f"{restricted_namespace}-a", f"{restricted_namespace}-b"]
    for ns in watched:
        quiet_kubectl("create", "namespace", ns)
    try:
        docs = template(
            helm, merge(PG, {"watchNamespaces": watched}), namespace=restricted_namespace
        )
        dry_run(quiet_kubectl, docs)
    finally:
        for ns in watched:
            quiet_kubectl("delete", "namespace", ns, "--wait=false", check=False)


# -- install, upgrade, uninstall --------------------------------------------------------------


def _helm_ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _exists(kubectl: Kubectl, *args: str) -> bool:
    return kubectl("get", *args, "-o", "name", check=False).returncode == 0


def test_install_upgrade_uninstall(helm: str, quiet_kubectl: Kubectl, quiet_namespace: str) -> None:
    ns = quiet_namespace
    watched = f"{ns}-w"
    quiet_kubectl("create", "namespace", watched)
    quiet_kubectl(
        "create",
        "secret",
        "generic",
        "calsync-pg",
        "-n",
        ns,
        "--from-literal=url=postgresql://calsync:secret@postgres:5432/calsync",
    )
    release = f"r{uuid.uuid4().hex[:6]}"
    values = merge(
        PG,
        {
            "crds": {"enabled": False},  # the quiet cluster's CRDs belong to no release
            "watchNamespaces": [watched],
            "worker": {"replicas": 2},
        },
    )
    try:
        notes = _helm_ok(
            run_helm(
                helm, "install", release, str(CHART), "-n", ns, values=values, kubectl=quiet_kubectl
            )
        )
        assert "WARNING: gateway.publicUrl is not set" in notes
        assert f"kubectl apply -n {watched} -f examples/caldav-demo.yaml" in notes
        full = f"{release}-calsync"
        for component in ("operator", "worker", "gateway"):
            quiet_kubectl(
                "get",
                "-n",
                ns,
                f"deployment/{full}-{component}",
                f"serviceaccount/{full}-{component}",
            )
            quiet_kubectl(
                "get", "-n", watched, f"role/{full}-{component}", f"rolebinding/{full}-{component}"
            )
        worker = quiet_kubectl.json("get", "-n", ns, f"deployment/{full}-worker")
        assert worker["spec"]["replicas"] == 2
        # The chart's RBAC as the API server sees it: the operator may read Secrets in the
        # watched namespace, not in any other, and the gateway may not list them anywhere.
        operator = f"system:serviceaccount:{ns}:{full}-operator"
        gateway = f"system:serviceaccount:{ns}:{full}-gateway"

        def can(who: str, *args: str) -> bool:
            done = quiet_kubectl("auth", "can-i", *args, f"--as={who}", check=False)
            return done.stdout.strip() == "yes"

        assert can(operator, "get", "secrets", "-n", watched)
        assert not can(operator, "get", "secrets", "-n", "default")
        assert not can(gateway, "list", "secrets", "-n", watched)
        assert can(operator, "update", "leases/calsync-operator", "-n", ns)
        assert not can(operator, "get", "secrets/someone-else", "-n", ns)

        # upgrade: change values, see them take effect
        before = worker["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
        notes = _helm_ok(
            run_helm(
                helm,
                "upgrade",
                release,
                str(CHART),
                "-n",
                ns,
                values=merge(
                    values,
                    {
                        "worker": {"replicas": 3},
                        "settings": {"syncConcurrency": 20},
                        "gateway": {"publicUrl": "https://calsync.example.com"},
                    },
                ),
                kubectl=quiet_kubectl,
            )
        )
        assert "https://calsync.example.com/api/webhooks/microsoft/lifecycle" in notes
        assert "https://calsync.example.com/auth/google/callback" in notes
        assert "WARNING" not in notes
        worker = quiet_kubectl.json("get", "-n", ns, f"deployment/{full}-worker")
        assert worker["spec"]["replicas"] == 3
        assert worker["spec"]["template"]["metadata"]["annotations"]["checksum/settings"] != before
        data = quiet_kubectl.json("get", "-n", ns, f"configmap/{full}-settings")["data"]
        assert data["CALSYNC_SYNC_CONCURRENCY"] == "20"
        assert data["CALSYNC_GATEWAY_URL"] == "https://calsync.example.com"
        history = json.loads(
            _helm_ok(
                run_helm(helm, "history", release, "-n", ns, "-o", "json", kubectl=quiet_kubectl)
            )
        )
        assert [h["revision"] for h in history] == [1, 2]

        # uninstall: every object goes
        _helm_ok(run_helm(helm, "uninstall", release, "-n", ns, kubectl=quiet_kubectl))
        poll(
            lambda: (
                not _exists(quiet_kubectl, "-n", ns, f"deployment/{full}-operator")
                and not _exists(quiet_kubectl, "-n", watched, f"role/{full}-worker")
                and not _exists(quiet_kubectl, "-n", ns, f"configmap/{full}-settings")
            ),
            timeout=30,
            what="the release's objects to be gone",
        )
    finally:
        run_helm(helm, "uninstall", release, "-n", ns, kubectl=quiet_kubectl)
        quiet_kubectl("delete", "namespace", watched, "--wait=false", check=False)


def _adopt_crds(kubectl: Kubectl, release: str, namespace: str) -> None:
    """Mark the cluster's CRDs as the release's, the way Helm adopts existing objects. A CRD
    kept by an earlier uninstall still carries helm.sh/resource-policy: keep, which a fresh
    install does not remove (Helm has no previous manifest to diff against); drop it, as the
    chart README tells users to."""
    for name in CRD_NAMES:
        kubectl("label", "--overwrite", f"crd/{name}", "app.kubernetes.io/managed-by=Helm")
        kubectl(
            "annotate",
            "--overwrite",
            f"crd/{name}",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
            "helm.sh/resource-policy-",
        )


def _restore_crds(kubectl: Kubectl) -> None:
    """Apply crds/ again once no CRD is terminating any more (applying to a terminating CRD
    would be lost with it)."""

    def settled() -> bool:
        for name in CRD_NAMES:
            done = kubectl("get", f"crd/{name}", "-o", "json", check=False)
            if done.returncode == 0 and json.loads(done.stdout)["metadata"].get(
                "deletionTimestamp"
            ):
                return False
        return True

    poll(settled, timeout=60, what="no calsync CRD to be terminating")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in CRD_NAMES]
    )


def test_crds_kept_on_uninstall_when_asked_and_removed_otherwise(helm: str) -> None:
    """Deleting the CRDs deletes every calsync object of a cluster, and waits for the
    finalizers of those that have one: on a cluster of its own, never a shared one, where a
    connection another test left behind (its finalizer with no operator to remove it) would
    hold the CRDs in Terminating and every later test with them."""
    with private_cluster("e2e-chart-crds") as own:
        _crd_lifecycle(helm, own)


def _crd_lifecycle(helm: str, quiet_kubectl: Kubectl) -> None:
    ns = f"t-{uuid.uuid4().hex[:10]}"
    quiet_kubectl("create", "namespace", ns)
    release = f"c{uuid.uuid4().hex[:6]}"
    quiet_kubectl("create", "-n", ns, "-f", str(ROOT / "examples" / "syncjob-manual.yaml"))
    try:
        for keep in (True, False):
            _adopt_crds(quiet_kubectl, release, ns)
            _helm_ok(
                run_helm(
                    helm,
                    "install",
                    release,
                    str(CHART),
                    "-n",
                    ns,
                    values={"crds": {"enabled": True, "keep": keep}},
                    kubectl=quiet_kubectl,
                )
            )
            for name in CRD_NAMES:
                crd = quiet_kubectl.json("get", f"crd/{name}")
                annotations = crd["metadata"]["annotations"]
                assert annotations["meta.helm.sh/release-name"] == release
                assert (annotations.get("helm.sh/resource-policy") == "keep") is keep
            _helm_ok(run_helm(helm, "uninstall", release, "-n", ns, kubectl=quiet_kubectl))
            if keep:
                for name in CRD_NAMES:
                    quiet_kubectl("get", f"crd/{name}")
                assert quiet_kubectl.json("get", "sj", "-n", ns)["items"], "objects kept too"
            else:
                poll(
                    lambda: not any(_exists(quiet_kubectl, f"crd/{n}") for n in CRD_NAMES),
                    timeout=60,
                    what="the CRDs to be deleted with crds.keep=false",
                )
    finally:
        run_helm(helm, "uninstall", release, "-n", ns, kubectl=quiet_kubectl)
        _restore_crds(quiet_kubectl)


# -- the default release's process, as its own ServiceAccount --------------------------------


def _token_kubeconfig(admin: Kubectl, account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that presents a bound token of ServiceAccount namespace/account (the
    TokenRequest API, what the kubelet mounts into the pod), trusting the admin's CA."""
    token = admin("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(admin.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster["cluster"]}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def test_default_release_runs_and_syncs_as_its_service_account(
    helm: str,
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    caldav_calendar: Any,
    tmp_path: Path,
) -> None:
    """The chart's default shape (SQLite, one `calsync run`) cannot run as a pod here (no
    kubelet), so its container runs as a local process instead: the Deployment's args, the
    settings ConfigMap and the container's env as installed, authenticated as the release's
    `run` ServiceAccount. Only the listeners (loopback, free ports) and the paths of the store
    and state are changed. It gets ready and syncs a CalDAV connection: the default RBAC and
    environment are enough."""
    ns = quiet_namespace
    release = f"s{uuid.uuid4().hex[:6]}"
    full = f"{release}-calsync"
    values = {
        "crds": {"enabled": False},
        "watchNamespaces": [ns],
        # Radicale listens on loopback, which the URL guard refuses by default
        "settings": {"allowPrivateAddresses": True},
    }
    _helm_ok(
        run_helm(
            helm, "install", release, str(CHART), "-n", ns, values=values, kubectl=quiet_kubectl
        )
    )
    proc: Process | None = None
    try:
        deployment = quiet_kubectl.json("get", "-n", ns, f"deployment/{full}-run")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        data = quiet_kubectl.json("get", "-n", ns, f"configmap/{full}-settings")["data"]
        literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        gateway, metrics, health = free_port(), free_port(), free_port()
        state = tmp_path / "state"  # the pod's PVC mount
        state.mkdir()
        env = {
            "PATH": os.environ["PATH"],
            **data,
            **literal,
            "CALSYNC_WORKER_IDENTITY": f"{full}-run-0",  # the pod name, from the downward API
            "KUBECONFIG": str(
                _token_kubeconfig(quiet_kubectl, pod["serviceAccountName"], ns, tmp_path / "kc")
            ),
            "CALSYNC_BIND_ADDRESS": "127.0.0.1",
            "CALSYNC_GATEWAY_PORT": str(gateway),
            "CALSYNC_METRICS_PORT": str(metrics),
            "CALSYNC_HEALTH_PORT": str(health),
            "HOME": str(tmp_path),
            "XDG_STATE_HOME": str(state),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{state / 'events.db'}",
        }
        assert pod["serviceAccountName"] == f"{full}-run"
        assert set(data) | set(literal) >= {"CALSYNC_KEYRING_NAMESPACE", "CALSYNC_NAMESPACES"}
        proc = Process(container["args"], env, tmp_path / "run.log")

        def ready() -> bool:
            if proc is not None and proc.proc.poll() is not None:
                pytest.fail(
                    f"calsync run exited ({proc.proc.returncode}):\n{proc.output()[-4000:]}"
                )
            try:
                return httpx.get(f"http://127.0.0.1:{gateway}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, timeout=60, what="the release's calsync run to be ready")
        # the operator created the keyring in the release namespace with its own rights
        quiet_kubectl("get", "-n", ns, f"secret/{data['CALSYNC_KEYRING_NAME']}")

        caldav_calendar.put(
            "chart.ics",
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//chart test//EN\r\n"
            "BEGIN:VEVENT\r\nUID:chart-1\r\nDTSTAMP:20260101T000000Z\r\n"
            f"DTSTART:{dt.datetime.now(dt.UTC):%Y%m%dT%H0000Z}\r\nDURATION:PT1H\r\n"
            "SUMMARY:chart\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        quiet_kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "dav", "labels": {"calsync.io/credentials": "true"}},
                "stringData": {
                    "username": caldav_calendar.user,
                    "password": caldav_calendar.password,
                },
            },
            ns,
        )
        quiet_kubectl.apply(
            {
                "apiVersion": "calsync.io/v1alpha1",
                "kind": "CalendarConnection",
                "metadata": {"name": "alice"},
                "spec": {
                    "provider": "caldav",
                    "owner": "alice@example.com",
                    "caldav": {
                        "url": caldav_calendar.url,
                        "allowInsecureHTTP": True,
                        "credentialsSecretRef": {"name": "dav"},
                    },
                },
            },
            ns,
        )
        poll(
            lambda: (condition(quiet_kubectl, ns, "alice", "Ready") or {}).get("status") == "True",
            timeout=90,
            what="the connection to be Ready",
        )
        assert quiet_kubectl.json("get", "calconn/alice", "-n", ns)["status"]["eventCount"] == 1
        # deleting it runs the finalizer (purge, token cleanup) with the same rights
        quiet_kubectl("delete", "calconn/alice", "-n", ns, "--timeout=60s")
        forbidden = [
            line for line in proc.output().splitlines() if re.search(r"\b403\b|[Ff]orbidden", line)
        ]
        assert not forbidden, "\n".join(forbidden[:10])
    finally:
        if proc is not None:
            code = proc.stop()
            assert code == 0, f"calsync run exited with {code}:\n{proc.output()[-4000:]}"
        run_helm(helm, "uninstall", release, "-n", ns, kubectl=quiet_kubectl)
