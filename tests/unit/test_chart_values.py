"""The chart's values without helm: every operator setting is a value with the seed's default,
and values.schema.json types every value in values.yaml (the rendering itself is tested against
a real API server in tests/e2e/test_chart.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from calsync.settings import Settings, env_name, load_settings
from tests.support import ROOT

pytestmark = pytest.mark.unit

CHART = ROOT / "charts" / "calsync"

# Settings the chart derives from other values instead of `settings:` (values.yaml says so too).
DERIVED = {
    "namespaces": "watchNamespaces",
    "log_level": "logging.level",
    "log_format": "logging.format",
    "store_url": "store",
    "gateway_url": "gateway.publicUrl",
    "gateway_port": "ports.http",
    "metrics_port": "ports.metrics",
    "health_port": "ports.health",
    "keyring_namespace": "the release namespace",
    "worker_identity": "the pod name",
    "worker_deployment": "scaling.enabled",
    "worker_deployment_namespace": "scaling.enabled",
    "scale_up_queue_depth": "scaling.queueDepthPerWorker",
    "scale_min_replicas": "scaling.minReplicas",
    "scale_max_replicas": "scaling.maxReplicas",
    "scale_interval": "scaling.interval",
    "scale_down_stabilization": "scaling.scaleDownStabilization",
}


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def _snake(camel: str) -> str:
    """Sprig's snakecase, as the settings ConfigMap uses it."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", camel).lower()


def test_every_setting_is_a_value_or_derived() -> None:
    chart_settings = {_snake(key) for key in _values()["settings"]}
    fields = set(Settings.model_fields)
    assert chart_settings <= fields, f"values naming no setting: {chart_settings - fields}"
    missing = fields - chart_settings - set(DERIVED)
    assert not missing, f"settings with no chart value: {sorted(missing)}"
    assert not chart_settings & set(DERIVED)


def test_chart_defaults_are_the_seed_defaults() -> None:
    values = _values()
    environ = {
        env_name(_snake(k)): str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in values["settings"].items()
    }
    environ[env_name("scale_up_queue_depth")] = str(values["scaling"]["queueDepthPerWorker"])
    environ[env_name("scale_min_replicas")] = str(values["scaling"]["minReplicas"])
    environ[env_name("scale_max_replicas")] = str(values["scaling"]["maxReplicas"])
    environ[env_name("scale_interval")] = values["scaling"]["interval"]
    environ[env_name("scale_down_stabilization")] = values["scaling"]["scaleDownStabilization"]
    environ[env_name("log_level")] = values["logging"]["level"]
    from_chart = load_settings(environ=environ)
    seed = load_settings(environ={})
    for name in Settings.model_fields:
        if name in ("log_format",):
            continue  # the chart writes JSON lines; the process default picks by terminal
        assert getattr(from_chart, name) == getattr(seed, name), name
    assert values["logging"]["format"] == "json"
    assert values["ports"] == {
        "http": seed.gateway_port,
        "metrics": seed.metrics_port,
        "health": seed.health_port,
    }


def test_every_setting_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = lines.index("settings:")
    previous = ""
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        match = re.match(r"^  (\w+):", line)
        if match:
            assert previous.lstrip().startswith("#"), f"settings.{match.group(1)} has no comment"
        previous = line


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= _schema_paths(sub, path)
    return paths


def _value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in values.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        if isinstance(sub, dict) and sub:
            paths |= _value_paths(sub, path)
    return paths


# Free-form maps: their keys are Kubernetes objects or labels, not chart values.
FREE_FORM = re.compile(
    r"(\.resources\.|Context\.|\.nodeSelector\.|\.affinity\.|\.annotations\.|\.labels\.)"
)


def test_schema_covers_every_value_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = _values()
    uncovered = {
        p for p in _value_paths(values) - _schema_paths(schema) if not FREE_FORM.search(p + ".")
    }
    assert not uncovered, f"values without a schema: {sorted(uncovered)}"
    assert schema["additionalProperties"] is False
    for key in ("image", "store", "settings", "operator", "worker", "gateway", "scaling", "keda"):
        assert schema["properties"][key]["additionalProperties"] is False, key
    assert schema["properties"]["store"]["properties"]["type"]["enum"] == ["sqlite", "postgresql"]


def test_chart_crd_copies_are_the_generated_ones() -> None:
    """templates/crds.yaml renders files/crds/, which `make crds` writes and `make crds-check`
    checks; here too, byte for byte."""
    generated = sorted((ROOT / "crds").glob("*.yaml"))
    assert len(generated) == 3
    copies = sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in generated]
    for path in generated:
        assert (CHART / "files" / "crds" / path.name).read_bytes() == path.read_bytes()
