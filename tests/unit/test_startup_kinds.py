"""The start-up CRD check lists only the kinds a component works with, so each component's
least-privilege RBAC (the chart's) is enough for it to start."""

from __future__ import annotations

import pytest

from calsync.controllers.kube import ALL_KINDS, kinds_for

pytestmark = pytest.mark.unit


def plurals(**components: bool) -> set[str]:
    flags = {"operator": False, "worker": False, "gateway": False, **components}
    return {kind.plural for kind in kinds_for(**flags)}


def test_each_component_checks_the_kinds_it_lists() -> None:
    assert plurals(operator=True) == {k.plural for k in ALL_KINDS}
    assert plurals(worker=True) == {"syncjobs", "calendarconnections"}
    assert plurals(gateway=True) == {"webhooksubscriptions", "syncjobs"}


def test_run_checks_all_three() -> None:
    assert plurals(operator=True, worker=True, gateway=True) == {k.plural for k in ALL_KINDS}
    assert plurals(worker=True, gateway=True) == {k.plural for k in ALL_KINDS}
