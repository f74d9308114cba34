"""Condition gauges in kube-state-metrics' shape: one series per type and status, the current
status at 1, the others at 0; a deleted connection's series disappear."""

from __future__ import annotations

import uuid

import pytest

from calsync.observability.metrics import (
    CONNECTION_CONDITION,
    REGISTRY,
    forget_connection,
    observe_conditions,
)

pytestmark = pytest.mark.unit

METRIC = "calsync_connection_condition"
STATUSES = ("True", "False", "Unknown")


@pytest.fixture
def conn() -> tuple[str, str]:
    """A namespace and name no other test uses, so the shared registry does not interfere."""
    suffix = uuid.uuid4().hex[:10]
    return f"ns-{suffix}", f"conn-{suffix}"


def sample(namespace: str, name: str, ctype: str, status: str) -> float | None:
    return REGISTRY.get_sample_value(
        METRIC, {"namespace": namespace, "name": name, "type": ctype, "status": status}
    )


def series(namespace: str, name: str, ctype: str) -> dict[str, float | None]:
    return {status: sample(namespace, name, ctype, status) for status in STATUSES}


def test_exactly_one_status_per_type_is_one(conn: tuple[str, str]) -> None:
    ns, name = conn
    observe_conditions(ns, name, [("Ready", "True"), ("Authenticated", "Unknown")])
    assert series(ns, name, "Ready") == {"True": 1.0, "False": 0.0, "Unknown": 0.0}
    assert series(ns, name, "Authenticated") == {"True": 0.0, "False": 0.0, "Unknown": 1.0}


def test_a_change_moves_the_one(conn: tuple[str, str]) -> None:
    ns, name = conn
    observe_conditions(ns, name, [("Ready", "True")])
    observe_conditions(ns, name, [("Ready", "False")])
    assert series(ns, name, "Ready") == {"True": 0.0, "False": 1.0, "Unknown": 0.0}
    assert sum(v or 0.0 for v in series(ns, name, "Ready").values()) == 1.0


def test_connections_are_independent(conn: tuple[str, str]) -> None:
    ns, name = conn
    observe_conditions(ns, name, [("Ready", "True")])
    observe_conditions(ns, name + "-other", [("Ready", "False")])
    observe_conditions(ns + "-other", name, [("Ready", "Unknown")])
    assert series(ns, name, "Ready") == {"True": 1.0, "False": 0.0, "Unknown": 0.0}
    assert sample(ns, name + "-other", "Ready", "False") == 1.0
    assert sample(ns + "-other", name, "Ready", "Unknown") == 1.0


def test_nothing_recorded_means_no_series(conn: tuple[str, str]) -> None:
    ns, name = conn
    assert series(ns, name, "Ready") == {"True": None, "False": None, "Unknown": None}


def test_forget_connection_removes_every_series(conn: tuple[str, str]) -> None:
    ns, name = conn
    other = name + "-kept"
    observe_conditions(ns, name, [("Ready", "True"), ("Authenticated", "False")])
    observe_conditions(ns, other, [("Ready", "True")])
    forget_connection(ns, name)
    assert series(ns, name, "Ready") == {"True": None, "False": None, "Unknown": None}
    assert series(ns, name, "Authenticated") == {"True": None, "False": None, "Unknown": None}
    assert sample(ns, other, "Ready", "True") == 1.0  # the neighbour is untouched


def test_a_connection_holds_one_small_tuple_not_a_gauge_per_series(conn: tuple[str, str]) -> None:
    """The 18 series of a connection are made at scrape time from its (type, status) pairs."""
    ns, name = conn
    types = ["Ready", "Authenticated", "Subscribed", "Synced", "Throttled", "Degraded"]
    observe_conditions(ns, name, [(t, "True") for t in types])
    assert CONNECTION_CONDITION.current[(ns, name)] == tuple((t, "True") for t in types)
    assert all(series(ns, name, t) == {"True": 1.0, "False": 0.0, "Unknown": 0.0} for t in types)


def test_forgetting_unknown_series_is_harmless(conn: tuple[str, str]) -> None:
    ns, name = conn
    forget_connection(ns, name)  # never recorded
    observe_conditions(ns, name, [("Ready", "True")])
    forget_connection(ns, name)
    forget_connection(ns, name)  # twice
    assert sample(ns, name, "Ready", "True") is None


def test_observed_conditions_replace_what_the_status_no_longer_has(conn: tuple[str, str]) -> None:
    """The operator sets a connection's gauges from its whole status: a type the status lost
    (a Subscribed condition after push is turned off) loses its series."""
    ns, name = conn
    observe_conditions(ns, name, [("Ready", "True"), ("Subscribed", "True")])
    observe_conditions(ns, name, [("Ready", "False")])
    assert series(ns, name, "Ready") == {"True": 0.0, "False": 1.0, "Unknown": 0.0}
    assert series(ns, name, "Subscribed") == {"True": None, "False": None, "Unknown": None}
    observe_conditions(ns, name, [("Ready", "True"), ("Subscribed", "Unknown")])
    assert series(ns, name, "Subscribed") == {"True": 0.0, "False": 0.0, "Unknown": 1.0}


def test_forget_connection_without_types_removes_every_recorded_type(
    conn: tuple[str, str],
) -> None:
    ns, name = conn
    observe_conditions(ns, name, [("Ready", "True"), ("Synced", "False")])
    forget_connection(ns, name)
    assert series(ns, name, "Ready") == {"True": None, "False": None, "Unknown": None}
    assert series(ns, name, "Synced") == {"True": None, "False": None, "Unknown": None}
    observe_conditions(ns, name, [("Ready", "Unknown")])  # a new object of the same name
    assert series(ns, name, "Ready") == {"True": 0.0, "False": 0.0, "Unknown": 1.0}
    assert series(ns, name, "Synced") == {"True": None, "False": None, "Unknown": None}
