"""Every metric calsync exports has a row in docs/operations.md's metrics tables, with its type
and its labels, and every row there names a metric that still exists.

The exported metrics are collected twice: from the registry the components serve
(`calsync.observability.metrics.REGISTRY`), and from the source, every prometheus_client
`Counter`/`Gauge`/`Histogram`/`Summary`/`Info`/`Enum` constructed anywhere under calsync/ with a
literal name, so that a metric defined in another module or registered elsewhere is not missed.
"""

from __future__ import annotations

import ast
import re

import pytest

from calsync.observability.metrics import REGISTRY
from tests.support import ROOT

pytestmark = pytest.mark.unit

DOC = ROOT / "docs" / "operations.md"
KINDS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def documented() -> dict[str, tuple[str, set[str]]]:
    """Rows of the tables under `## Metrics`: name -> (type, label names)."""
    text = DOC.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(calsync_[a-z0-9_]+)` \| ([a-z]+) \|([^|]*)\|", line)
        if match is None:
            continue
        name, kind, labels = match.groups()
        assert name not in rows, f"{name} has two rows in docs/operations.md"
        # "`provider`, `result` (`ok`, ...)": the names outside the parentheses of values
        rows[name] = (kind, set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", labels))))
    return rows


def registered() -> dict[str, tuple[str, set[str]]]:
    """The families of the served registry, named as they are scraped (counters with _total)."""
    found: dict[str, tuple[str, set[str]]] = {}
    # label names are only on the collectors (a labelled family without children has no samples)
    for collector in list(REGISTRY._collector_to_names):
        kind = getattr(collector, "_type", None)
        name = getattr(collector, "_name", None)
        if isinstance(kind, str) and isinstance(name, str):
            labels = set(getattr(collector, "_labelnames", ()))
            found[name + "_total" if kind == "counter" else name] = (kind, labels)
            continue
        # a custom collector: the families it describes, with the labels they were made with
        describe = getattr(collector, "describe", None)
        for family in describe() if describe is not None else ():
            labels = set(getattr(family, "_labelnames", ()))
            kind, name = family.type, family.name
            found[name + "_total" if kind == "counter" else name] = (kind, labels)
    return found


def in_source() -> set[str]:
    """Literal names passed to a prometheus_client metric class anywhere under calsync/."""
    names: set[str] = set()
    for path in sorted((ROOT / "calsync").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {  # local name -> metric class
            alias.asname or alias.name: alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("prometheus_client")
            for alias in node.names
            if alias.name in KINDS
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = (
                imported[func.id]
                if isinstance(func, ast.Name) and func.id in imported
                else func.attr
                if isinstance(func, ast.Attribute)
                and func.attr in KINDS
                and isinstance(func.value, ast.Name)
                and func.value.id in ("prometheus_client", "prom")
                else None
            )
            first = node.args[0]
            if called and isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                if called == "Counter" and not name.endswith("_total"):
                    name += "_total"  # prometheus_client serves a counter with the suffix
                names.add(name)
    return names


def test_the_doc_and_the_collectors_are_found() -> None:
    """Guards the parsers: an empty side would make the comparisons below pass vacuously."""
    assert len(documented()) >= 20
    assert len(registered()) >= 20
    assert in_source() >= {"calsync_syncjobs_pending", "calsync_webhook_requests_total"}
    # nothing the registry serves escapes `registered()` (a custom collector, say)
    served = {f.name + ("_total" if f.type == "counter" else "") for f in REGISTRY.collect()}
    assert served <= set(registered())


def test_every_exported_metric_is_documented() -> None:
    exported = set(registered()) | in_source()
    missing = sorted(exported - set(documented()))
    assert not missing, f"metrics with no row in docs/operations.md's metrics tables: {missing}"


def test_every_documented_metric_still_exists() -> None:
    exported = set(registered()) | in_source()
    gone = sorted(set(documented()) - exported)
    assert not gone, f"docs/operations.md documents metrics calsync no longer has: {gone}"


def test_every_source_metric_is_served() -> None:
    """A metric constructed in the source but not in the served registry never reaches /metrics."""
    unserved = sorted(in_source() - set(registered()))
    assert not unserved, f"defined but not registered in REGISTRY: {unserved}"


@pytest.mark.parametrize("name", sorted(registered()))
def test_documented_type_and_labels_match_the_code(name: str) -> None:
    rows = documented()
    if name not in rows:
        pytest.skip("reported by test_every_exported_metric_is_documented")
    kind, labels = registered()[name]
    assert rows[name] == (kind, labels), f"docs/operations.md row of {name}"
