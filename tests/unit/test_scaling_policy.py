"""The queue scaler's policy as a reference table: inputs, the replicas it must choose, and why.

Unless a row says otherwise: 500 pending jobs per worker, 1..10 replicas, a 300 s stabilisation
window, and the HPA's default scale-up rate (max(2 x n, n + 4) per 15 s). Times are seconds on
the policy's clock; each row decides at t = 0, so history entries sit at negative times.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from calsync.scaling.policy import (
    Decision,
    History,
    Limit,
    Parameters,
    Sample,
    decide,
    recommend,
    scale_up_limit,
)
from calsync.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

DEFAULTS = Parameters(target_per_worker=500, min_replicas=1, max_replicas=10)


@dataclass(frozen=True)
class Row:
    current: int
    pending: int
    desired: int
    limit: Limit
    recommendations: tuple[tuple[float, int], ...] = ()  # (at, replicas) seen before t = 0
    changes: tuple[tuple[float, int], ...] = ()  # (at, replicas added) applied before t = 0
    params: dict[str, Any] = field(default_factory=dict)


def row(id: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Row(*args, **kwargs), id=id)


TABLE = [
    # The tolerance band: |pending / (current x target) - 1| <= 0.1 keeps the count; both
    # edges are inside.
    row("on target", 1, 500, 1, Limit.TOLERANCE),
    row("upper edge inside", 1, 550, 1, Limit.TOLERANCE),
    row("just above the band", 1, 551, 2, Limit.NONE),
    row("lower edge inside", 10, 4500, 10, Limit.TOLERANCE),
    row("just below the band", 10, 4499, 9, Limit.NONE),
    row("upper edge, 4 workers", 4, 2200, 4, Limit.TOLERANCE),
    row("above the band, 4 workers", 4, 2201, 5, Limit.NONE),
    row("seed threshold: 501 with one worker stays", 1, 501, 1, Limit.TOLERANCE),
    # Scale-up rate: max(2 x n, n + 4) for n at the start of the 15 s period.
    row("1 worker may become 5", 1, 5000, 5, Limit.SCALE_UP_LIMIT),
    row("2 workers may become 6", 2, 5000, 6, Limit.SCALE_UP_LIMIT),
    row(
        "10 workers may double", 10, 50_000, 20, Limit.SCALE_UP_LIMIT, params={"max_replicas": 100}
    ),
    row("under the limit", 10, 9000, 18, Limit.NONE, params={"max_replicas": 100}),
    row(
        "limit spent in this period",
        5,
        10_000,
        5,
        Limit.SCALE_UP_LIMIT,
        changes=((-10.0, 4),),
        params={"max_replicas": 100},
    ),
    row(
        "next period: a new limit",
        5,
        10_000,
        10,
        Limit.SCALE_UP_LIMIT,
        changes=((-15.0, 4),),
        params={"max_replicas": 100},
    ),
    row(
        "part of the limit left",
        3,
        10_000,
        5,
        Limit.SCALE_UP_LIMIT,
        changes=((-5.0, 2),),
        params={"max_replicas": 100},
    ),
    row("max below the rate limit", 1, 5000, 3, Limit.MAX_REPLICAS, params={"max_replicas": 3}),
    # From zero (allowed when min is 0): no ratio, ceil(pending / target), the rate limit of 4.
    row("zero stays zero", 0, 0, 0, Limit.NONE, params={"min_replicas": 0}),
    row("from zero", 0, 1200, 3, Limit.NONE, params={"min_replicas": 0}),
    row("from zero, limited", 0, 5000, 4, Limit.SCALE_UP_LIMIT, params={"min_replicas": 0}),
    row("from zero to min", 0, 0, 1, Limit.MIN_REPLICAS),
    # Scale-down follows the highest recommendation of the last 300 s.
    row("down held", 10, 0, 10, Limit.STABILIZATION, recommendations=((-299.0, 10),)),
    row("down after 300 s", 10, 0, 1, Limit.MIN_REPLICAS, recommendations=((-300.0, 10),)),
    row(
        "down to zero after 300 s",
        10,
        0,
        0,
        Limit.NONE,
        recommendations=((-300.0, 10),),
        params={"min_replicas": 0},
    ),
    row(
        "down part of the way",
        10,
        0,
        6,
        Limit.STABILIZATION,
        recommendations=((-400.0, 10), (-200.0, 6), (-100.0, 3)),
    ),
    row("down to a held 8", 10, 2000, 8, Limit.STABILIZATION, recommendations=((-250.0, 8),)),
    row("down to the recommendation", 10, 2000, 4, Limit.NONE, recommendations=((-350.0, 8),)),
    row(
        "no window: down at once",
        10,
        2000,
        4,
        Limit.NONE,
        recommendations=((-1.0, 10),),
        params={"stabilization": 0.0},
    ),
    row("up is never held", 2, 2000, 4, Limit.NONE, recommendations=((-10.0, 1),)),
    # Bounds win over everything.
    row("above max, on target", 20, 10_000, 10, Limit.MAX_REPLICAS),
    row("recommendation above max", 8, 6000, 10, Limit.MAX_REPLICAS),
    row("below min", 1, 0, 3, Limit.MIN_REPLICAS, params={"min_replicas": 3}),
    row("held above min", 5, 0, 5, Limit.STABILIZATION, recommendations=((-1.0, 5),)),
]


@pytest.mark.parametrize("case", TABLE)
def test_reference_table(case: Row) -> None:
    params = replace(DEFAULTS, **case.params)
    history = History(
        tuple(Sample(at, n) for at, n in case.recommendations),
        tuple(Sample(at, n) for at, n in case.changes),
    )
    decision = decide(case.current, case.pending, params, history, now=0.0)
    assert (decision.desired, decision.limit) == (case.desired, case.limit), decision
    assert decision.history.recommendations[-1] == Sample(0.0, decision.recommended)


def run_sequence(
    params: Parameters, steps: list[tuple[float, int]], current: int
) -> list[Decision]:
    """Decide at each (time, pending), applying every decision as the controller does."""
    history = History()
    decisions = []
    for now, pending in steps:
        decision = decide(current, pending, params, history, now)
        history = decision.history.scaled(now, decision.desired - current)
        current = decision.desired
        decisions.append(decision)
    return decisions


def test_a_burst_and_its_end() -> None:
    """2,000 jobs at 100 per worker: up as fast as the rate allows, down a window later."""
    params = Parameters(target_per_worker=100, min_replicas=1, max_replicas=15)
    steps = [(0.0, 2000), (15.0, 2000), (30.0, 2000), (45.0, 2000)]
    steps += [(60.0, 1000), (344.0, 1000), (345.0, 1000), (360.0, 0), (644.0, 0), (645.0, 0)]
    decisions = run_sequence(params, steps, current=1)
    assert [d.desired for d in decisions] == [5, 10, 15, 15, 15, 15, 10, 10, 10, 1]
    assert [d.limit for d in decisions] == [
        Limit.SCALE_UP_LIMIT,
        Limit.SCALE_UP_LIMIT,
        Limit.MAX_REPLICAS,
        Limit.MAX_REPLICAS,
        Limit.STABILIZATION,
        Limit.STABILIZATION,
        Limit.NONE,
        Limit.STABILIZATION,
        Limit.STABILIZATION,
        Limit.MIN_REPLICAS,
    ]
    assert [d.direction for d in decisions] == (
        ["up"] * 3 + ["none"] * 3 + ["down"] + ["none"] * 2 + ["down"]
    )


def test_rate_limit_counts_from_the_start_of_the_period() -> None:
    """Deciding more often than every 15 s does not compound the limit."""
    params = Parameters(target_per_worker=100, min_replicas=1, max_replicas=100)
    decisions = run_sequence(params, [(0.0, 5000), (5.0, 5000), (10.0, 5000), (15.0, 5000)], 1)
    assert [d.desired for d in decisions] == [5, 5, 5, 10]


def test_recommend_and_limit_helpers() -> None:
    assert recommend(0, 1, DEFAULTS) == (1, False)
    assert recommend(3, 1500, DEFAULTS) == (3, True)
    assert recommend(3, 1651, DEFAULTS) == (4, False)
    assert scale_up_limit(0, History(), DEFAULTS) == 4
    assert scale_up_limit(100, History(), DEFAULTS) == 200
    # Already above what the period allows (someone else scaled up): stay.
    assert scale_up_limit(9, History(changes=(Sample(-1.0, 8),)), DEFAULTS) == 9
    # Scaled down by hand after our scale-up: the period starts from no fewer than 0.
    assert scale_up_limit(2, History(changes=(Sample(-1.0, 4),)), DEFAULTS) == 4


def test_history_keeps_only_what_the_windows_see() -> None:
    history = History(
        (Sample(-301.0, 1), Sample(-300.0, 2), Sample(-299.0, 3)),
        (Sample(-15.0, 1), Sample(-14.0, 2)),
    )
    pruned = history.pruned(0.0, DEFAULTS)
    assert pruned.recommendations == (Sample(-299.0, 3),)
    assert pruned.changes == (Sample(-14.0, 2),)
    assert history.scaled(0.0, 0) is history


def test_messages_name_inputs_and_limit() -> None:
    limited = decide(1, 5000, DEFAULTS, History(), 0.0)
    assert limited.describe() == (
        "pending 5000, current 1, desired 5, target 500 per worker: capped by the scale-up "
        "limit of 5 replicas per 15 s (recommended 10)"
    )
    held = decide(10, 0, DEFAULTS, History((Sample(-10.0, 10),)), 0.0)
    assert "held by the highest recommendation of the last 300 s (10" in held.describe()
    assert "within the 10% tolerance" in decide(1, 520, DEFAULTS, History(), 0.0).describe()
    assert decide(1, 520, DEFAULTS, History(), 0.0).ratio == pytest.approx(1.04)
    assert decide(0, 0, replace(DEFAULTS, min_replicas=0), History(), 0.0).ratio is None


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        decide(-1, 0, DEFAULTS, History(), 0.0)
    with pytest.raises(ValueError):
        Parameters(target_per_worker=0, min_replicas=1, max_replicas=2)
    with pytest.raises(ValueError):
        Parameters(target_per_worker=1, min_replicas=3, max_replicas=2)


def test_parameters_from_settings() -> None:
    settings = load_settings(
        environ={
            "CALSYNC_WORKER_DEPLOYMENT": "calsync-worker",
            "CALSYNC_SCALE_MIN_REPLICAS": "0",
            "CALSYNC_SCALE_MAX_REPLICAS": "40",
            "CALSYNC_SCALE_INTERVAL": "30s",
            "CALSYNC_SCALE_DOWN_STABILIZATION": "10m",
        }
    )
    assert settings.worker_deployment == "calsync-worker"
    assert settings.scale_interval == 30.0
    assert Parameters.from_settings(settings) == Parameters(
        target_per_worker=500, min_replicas=0, max_replicas=40, stabilization=600.0
    )
    defaults = load_settings(environ={})
    assert defaults.worker_deployment is None
    assert (defaults.scale_min_replicas, defaults.scale_max_replicas) == (1, 10)
    assert (defaults.scale_interval, defaults.scale_down_stabilization) == (15.0, 300.0)


def test_settings_reject_min_above_max() -> None:
    with pytest.raises(SettingsError, match=r"scale_max_replicas .*CALSYNC_SCALE_MAX_REPLICAS"):
        load_settings(
            environ={"CALSYNC_SCALE_MIN_REPLICAS": "5", "CALSYNC_SCALE_MAX_REPLICAS": "2"}
        )
