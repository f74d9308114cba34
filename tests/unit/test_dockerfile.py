"""The Dockerfile, checked for what can be checked without a Docker engine: the entry point is
calsync's console script, the final stage runs as the chart's non-root user and carries no build
tools, and the image it documents is the chart's default image."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.support import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "Dockerfile"
VALUES = ROOT / "charts" / "calsync" / "values.yaml"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for item in logical:
        keyword, _, args = item.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in _instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages(DOCKERFILE.read_text(encoding="utf-8"))[1]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES.read_text(encoding="utf-8"))
    return loaded


def _labels(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for args in stage.all("LABEL"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            labels[key] = value
    return labels


def test_two_slim_stages(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    assert builder.base == final.base == "python:3.11-slim"


def test_entry_point_is_calsync_console_script(stages: list[Stage]) -> None:
    final = stages[-1]
    entrypoint = yaml.safe_load(final.last("ENTRYPOINT"))  # exec form is a JSON list
    assert isinstance(entrypoint, list), "ENTRYPOINT must use the exec form"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert scripts[entrypoint[0]] == "calsync.cli:main"
    assert yaml.safe_load(final.last("CMD")) == ["run"]


def test_final_stage_runs_as_the_charts_non_root_user(
    stages: list[Stage], values: dict[str, Any]
) -> None:
    user, _, group = stages[-1].last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "numeric, so runAsNonRoot can verify it"
    assert not group or (group.isdigit() and int(group) != 0)
    assert int(user) == values["podSecurityContext"]["runAsUser"]
    assert int(user) == values["containerSecurityContext"]["runAsUser"]
    if group:
        assert int(group) == values["podSecurityContext"]["runAsGroup"]
    assert values["podSecurityContext"]["runAsNonRoot"] is True


def test_final_stage_copies_the_venv_and_builds_nothing(stages: list[Stage]) -> None:
    final = stages[-1]
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/calsync /opt/calsync"]
    for command in final.all("RUN"):
        for tool in ("pip", "apt-get", "apk", "gcc", "build-essential", "make"):
            assert not re.search(rf"\b{re.escape(tool)}\b", command), command
    assert "/opt/calsync/bin" in final.last("ENV")


def test_builder_installs_the_project_with_the_pinned_constraints(stages: list[Stage]) -> None:
    runs = " ".join(stages[0].all("RUN"))
    assert "--constraint constraints.txt" in runs
    copied = " ".join(stages[0].all("COPY"))
    for path in ("pyproject.toml", "constraints.txt", "README.md", "calsync"):
        assert path in copied


def test_documented_image_is_the_charts_default(
    stages: list[Stage], values: dict[str, Any]
) -> None:
    repository = values["image"]["repository"]
    assert _labels(stages[-1])["io.calsync.image.repository"] == repository
    assert f"{repository}:" in DOCKERFILE.read_text(encoding="utf-8")
    chart = yaml.safe_load((ROOT / "charts" / "calsync" / "Chart.yaml").read_text())
    from calsync import __version__

    assert chart["appVersion"] == __version__, "the image tag defaults to appVersion"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "calsync"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_dependency_is_pinned_for_the_image() -> None:
    """The builder installs with `--constraint constraints.txt`: every direct dependency has a
    pin there, so two builds of one commit get the same packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        _normalise(line.split("==")[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert _normalise(name) in pinned, f"{name} has no pin in constraints.txt"
