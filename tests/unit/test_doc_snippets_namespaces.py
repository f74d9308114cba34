"""The install and first-connection snippets of the README and the docs work on a new cluster:
every namespace a command uses is created earlier in the same snippet (`kubectl create
namespace`, or `helm install --create-namespace`), unless Kubernetes has it from the start.

A snippet is checked when it installs the chart or applies one of the examples: those are the
ones a new user copies in order. Placeholders (`<namespace>`) are left alone."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.unit

DOCS = [
    ROOT / "README.md",
    ROOT / "charts/calsync/README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
BUILT_IN = {"default", "kube-system", "kube-public", "kube-node-lease"}


def snippets(path: Path) -> list[tuple[int, list[str]]]:
    """The shell blocks of a Markdown file: (first line number, lines with continuations joined)."""
    source = path.read_text()
    blocks = []
    for match in re.finditer(r"^```(?:sh|bash|shell)\n(.*?)^```", source, re.M | re.S):
        text = match.group(1).replace("\\\n", " ")
        line = source[: match.start()].count("\n") + 2
        blocks.append((line, [c for c in text.splitlines() if c.strip()]))
    return blocks


def words(command: str) -> list[str]:
    """The words of one command line, comments dropped ([] when shlex cannot split it)."""
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return []


def first_use(command: str) -> tuple[str, bool, str | None]:
    """(program and verb, whether it creates namespaces, the namespace it names or None)."""
    split = words(command)
    if split[:1] not in (["kubectl"], ["helm"]):
        return " ".join(split[:3]), False, None  # `-n` means something else to head, xargs, ...
    namespace = None
    for i, word in enumerate(split):
        if word in ("-n", "--namespace") and i + 1 < len(split):
            namespace = split[i + 1]
        elif word.startswith("--namespace="):
            namespace = word.split("=", 1)[1]
    verb = " ".join(split[:3])
    creates = "--create-namespace" in split or verb.startswith(
        ("kubectl create namespace", "kubectl create ns")
    )
    return verb, creates, namespace


def missing_namespaces(lines: list[str]) -> list[str]:
    available = set(BUILT_IN)
    problems = []
    for command in lines:
        verb, creates, namespace = first_use(command)
        if verb.startswith(("kubectl create namespace", "kubectl create ns")):
            available.update(words(command)[3:4])
            continue
        if namespace is None or namespace.startswith(("<", "$")):
            continue
        if creates:
            available.add(namespace)
        if namespace not in available:
            problems.append(f"{command.strip()!r} uses namespace {namespace!r} before it exists")
    return problems


def first_steps() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line, lines in snippets(path):
            text = "\n".join(lines)
            if "helm install" in text or re.search(r"-f examples/\S+\.yaml", text):
                found.append((f"{path.relative_to(ROOT)}:{line}", lines))
    return found


def test_the_checker_finds_the_snippets_and_a_missing_namespace() -> None:
    places = [place for place, _ in first_steps()]
    assert any(p.startswith("README.md:") for p in places)
    assert any(p.startswith("docs/operations.md:") for p in places)
    assert missing_namespaces(["kubectl apply -n team-a -f examples/caldav-demo.yaml"])
    assert missing_namespaces(
        [
            "kubectl create secret generic s -n calsync",
            "helm install c x -n calsync --create-namespace",
        ]
    )
    assert not missing_namespaces(
        ["kubectl create namespace team-a", "kubectl apply -n team-a -f examples/caldav-demo.yaml"]
    )


@pytest.mark.parametrize(("place", "lines"), first_steps(), ids=[p for p, _ in first_steps()])
def test_first_step_snippets_create_their_namespaces(place: str, lines: list[str]) -> None:
    assert not missing_namespaces(lines), place
