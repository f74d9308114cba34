"""The generated CRDs are structural, carry the agreed names, columns and rules, agree with
the models on defaults, and the committed files in crds/ are up to date."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from calsync.api import (
    CALENDAR_CONNECTION,
    SYNC_JOB,
    WEBHOOK_SUBSCRIPTION,
    CalendarConnectionSpec,
    SyncJobSpec,
)
from calsync.api.crdgen import HEADER, all_crds, crd, main, render, rendered_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "nullable"}


def schema_of(definition: dict[str, Any]) -> dict[str, Any]:
    (version,) = definition["spec"]["versions"]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def by_kind(kind: str) -> dict[str, Any]:
    return next(d for d in all_crds() if d["spec"]["names"]["kind"] == kind)


@pytest.mark.parametrize("definition", all_crds(), ids=lambda d: d["metadata"]["name"])
def test_schema_is_structural(definition: dict[str, Any]) -> None:
    for path, node in walk(schema_of(definition)):
        where = path or "<root>"
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{where}: no type"
        assert not FORBIDDEN & node.keys(), f"{where}: {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties", True) is not False, where
        assert node.get("default", ...) is not None, f"{where}: null default"
        if node.get("type") == "object" and "required" in node:
            assert set(node["required"]) <= node.get("properties", {}).keys(), where
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"] and "\n" not in rule["message"], where


@pytest.mark.parametrize("definition", all_crds(), ids=lambda d: d["metadata"]["name"])
def test_every_spec_string_is_bounded(definition: dict[str, Any]) -> None:
    """CEL cost estimates (and ``self == oldSelf``) need a maximum size for every string."""
    for path, node in walk(schema_of(definition)["properties"]["spec"], ".spec"):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, f"{path}: unbounded string"


@pytest.mark.parametrize("definition", all_crds(), ids=lambda d: d["metadata"]["name"])
def test_conditions_are_a_map_list_keyed_by_type(definition: dict[str, Any]) -> None:
    conditions = schema_of(definition)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize(
    ("info", "columns"),
    [
        (CALENDAR_CONNECTION, ["Provider", "Owner", "Ready", "Events", "Last Sync", "Age"]),
        (
            WEBHOOK_SUBSCRIPTION,
            ["Connection", "Calendar", "Provider", "Expires", "Ready", "Age"],
        ),
        (SYNC_JOB, ["Connection", "Calendar", "Mode", "Reason", "Phase", "Attempts", "Age"]),
    ],
    ids=lambda v: getattr(v, "kind", ""),
)
def test_names_scope_and_columns(info: Any, columns: list[str]) -> None:
    definition = crd(info)
    assert definition["apiVersion"] == "apiextensions.k8s.io/v1"
    assert definition["metadata"]["name"] == f"{info.plural}.calsync.io"
    spec = definition["spec"]
    assert spec["group"] == "calsync.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": info.kind,
        "listKind": f"{info.kind}List",
        "plural": info.plural,
        "singular": info.singular,
        "shortNames": list(info.short_names),
        "categories": ["calsync"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == columns
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        assert column["type"] in {"string", "integer", "date"}
        path = column["jsonPath"]
        if path.startswith((".spec.", ".status.")) and "[" not in path:
            node = schema
            for part in path.strip(".").split("."):
                node = node["properties"][part]
    for field in version["selectableFields"]:
        node = schema
        for part in field["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in {"string", "integer", "boolean"}


def test_connection_columns_point_where_the_design_says() -> None:
    (version,) = by_kind("CalendarConnection")["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Events"] == {
        "name": "Events",
        "type": "integer",
        "jsonPath": ".status.eventCount",
        "description": "Events in the store",
    }
    assert columns["Last Sync"]["type"] == "date"


def test_connection_spec_rules_and_wire_names() -> None:
    spec = schema_of(by_kind("CalendarConnection"))["properties"]["spec"]
    messages = {rule["message"] for rule in spec["x-kubernetes-validations"]}
    assert {
        "spec.caldav.url or spec.caldav.domain is required when provider is caldav",
        "spec.caldav.credentialsSecretRef is required when provider is caldav or icloud",
        "spec.oauth.clientSecretRef is required when provider is google or microsoft",
        "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true",
    } <= messages
    caldav = spec["properties"]["caldav"]["properties"]
    assert caldav["allowInsecureHTTP"] == {
        "type": "boolean",
        "default": False,
        "description": caldav["allowInsecureHTTP"]["description"],
    }
    assert caldav["url"]["maxLength"] == 2048
    # no enum and no pattern: either would stop the API server from running the CEL rules
    # (an enum) or show a raw regular expression (a pattern); CEL rules check both instead
    assert "enum" not in spec["properties"]["provider"]
    assert "self in ['google', 'microsoft', 'caldav', 'icloud']" in [
        rule["rule"] for rule in spec["properties"]["provider"]["x-kubernetes-validations"]
    ]
    assert "pattern" not in spec["properties"]["sync"]["properties"]["pollInterval"]
    status = schema_of(by_kind("CalendarConnection"))["properties"]["status"]["properties"]
    assert "authorizationURL" in status
    assert status["lastSyncTime"] == {
        "type": "string",
        "format": "date-time",
        "description": status["lastSyncTime"]["description"],
    }


def test_syncjob_spec_is_immutable_and_subscription_identity_too() -> None:
    job = schema_of(by_kind("SyncJob"))["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable"} in job[
        "x-kubernetes-validations"
    ]
    assert job["required"] == ["connection"]
    assert job["properties"]["ttlSecondsAfterFinished"] == {
        "type": "integer",
        "minimum": 0,
        "default": 3600,
        "description": job["properties"]["ttlSecondsAfterFinished"]["description"],
    }
    sub = schema_of(by_kind("WebhookSubscription"))["properties"]["spec"]["properties"]
    assert sub["connection"]["x-kubernetes-validations"] == [
        {"rule": "self == oldSelf", "message": "spec.connection is immutable"}
    ]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server's structural defaulting does to a value."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, sub in properties.items():
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def assert_contained(server: Any, python: Any, path: str = "spec") -> None:
    if isinstance(server, dict):
        assert isinstance(python, dict), path
        for key, value in server.items():
            assert key in python, f"{path}.{key}: defaulted by the server, not by the model"
            assert_contained(value, python[key], f"{path}.{key}")
    else:
        assert server == python, path


@pytest.mark.parametrize(
    ("kind", "model", "minimal"),
    [
        (
            "CalendarConnection",
            CalendarConnectionSpec,
            {"provider": "icloud", "caldav": {"credentialsSecretRef": {"name": "c"}}},
        ),
        (
            "CalendarConnection",
            CalendarConnectionSpec,
            {"provider": "google", "oauth": {"clientSecretRef": {"name": "g"}}, "sync": {}},
        ),
        ("SyncJob", SyncJobSpec, {"connection": "demo"}),
    ],
)
def test_server_defaults_match_model_defaults(
    kind: str, model: Any, minimal: dict[str, Any]
) -> None:
    spec_schema = schema_of(by_kind(kind))["properties"]["spec"]
    server = apply_defaults(spec_schema, copy.deepcopy(minimal))
    python = model.model_validate(minimal).to_wire()
    assert_contained(server, python)
    assert model.model_validate(server).to_wire() == python


def test_rendering_is_deterministic_and_alias_free() -> None:
    first = rendered_files()
    assert first == rendered_files()
    assert set(first) == {"calendarconnections.yaml", "webhooksubscriptions.yaml", "syncjobs.yaml"}
    for text in first.values():
        assert text.startswith(HEADER)
        assert "&id" not in text and "*id" not in text
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
    assert yaml.safe_load(render(all_crds()[0])) == all_crds()[0]


def test_committed_crds_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--out", str(CRDS)]) == 0
    assert capsys.readouterr().out == ""


def test_check_fails_with_a_diff_on_a_modified_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "crds"
    shutil.copytree(CRDS, out)
    target = out / "syncjobs.yaml"
    target.write_text(
        target.read_text(encoding="utf-8").replace("default: 3600", "default: 60"),
        encoding="utf-8",
    )
    assert main(["--check", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "-                default: 60" in captured.out
    assert "+                default: 3600" in captured.out
    assert "make crds" in captured.err

    (out / "webhooksubscriptions.yaml").unlink()
    assert main(["--check", "--out", str(out)]) == 1


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "generated"
    assert main(["--out", str(out)]) == 0
    capsys.readouterr()
    for name in ("calendarconnections.yaml", "webhooksubscriptions.yaml", "syncjobs.yaml"):
        assert (out / name).read_text(encoding="utf-8") == (CRDS / name).read_text(encoding="utf-8")
    assert main(["--check", "--out", str(out)]) == 0


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "calsync.api.crdgen", "--check", "--out", str(CRDS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
