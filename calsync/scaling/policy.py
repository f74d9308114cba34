"""How many workers the SyncJob queue calls for, decided the way the HorizontalPodAutoscaler does.

Everything here is arithmetic on what the caller hands in: the replicas the Deployment has now,
the pending jobs, the parameters, what was recommended and changed earlier, and the time. It
performs no I/O, so the reference table in the unit tests pins the behaviour exactly; the
controller does the reading and writing. docs/decisions/0009-queue-scaling.md explains the
choices.

The steps, in the HPA's order:

1. Recommend. The metric is pending jobs per worker; its ratio to the target decides. Inside the
   tolerance band (|ratio - 1| <= 10 %) the recommendation is the current count; outside it is
   ceil(pending / target), which is ceil(current x ratio). With no replicas at all there is no
   ratio and the recommendation is ceil(pending / target) straight away.
2. Stabilise. Scaling down goes no lower than the highest recommendation of the stabilisation
   window (300 s by default); scaling up is not delayed.
3. Limit the rate. Within any scale-up period (15 s) the count may grow to at most
   max(2 x n, n + 4), n being the count at the start of the period.
4. Clamp to [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from calsync.settings import Settings

Direction = Literal["up", "down", "none"]


class Limit(StrEnum):
    """The rule that settled the desired count (the last one that changed it)."""

    NONE = "none"  # the recommendation as it is
    TOLERANCE = "tolerance"  # the queue is close enough to the target: keep the current count
    STABILIZATION = "stabilization"  # a higher recommendation inside the window holds it up
    SCALE_UP_LIMIT = "scale-up limit"  # growing faster than the period allows
    MAX_REPLICAS = "max replicas"
    MIN_REPLICAS = "min replicas"


@dataclass(frozen=True)
class Parameters:
    """The knobs of the policy; `from_settings` maps the operator's settings onto them."""

    target_per_worker: int
    min_replicas: int
    max_replicas: int
    stabilization: float = 300.0
    tolerance: float = 0.1
    scale_up_period: float = 15.0
    scale_up_pods: int = 4
    scale_up_percent: int = 100

    def __post_init__(self) -> None:
        if self.target_per_worker < 1:
            raise ValueError("target_per_worker must be at least 1")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.stabilization < 0 or self.tolerance < 0 or self.scale_up_period < 0:
            raise ValueError("windows and tolerance cannot be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> Parameters:
        return cls(
            target_per_worker=settings.scale_up_queue_depth,
            min_replicas=settings.scale_min_replicas,
            max_replicas=settings.scale_max_replicas,
            stabilization=settings.scale_down_stabilization,
        )


@dataclass(frozen=True)
class Sample:
    """A number of replicas at a moment (seconds on the caller's monotonic clock)."""

    at: float
    replicas: int


@dataclass(frozen=True)
class History:
    """What the policy remembers between decisions.

    `recommendations` are the step-1 recommendations, for the stabilisation window; `changes`
    are the replicas added (negative: removed) by applied decisions, for the scale-up period.
    """

    recommendations: tuple[Sample, ...] = ()
    changes: tuple[Sample, ...] = ()

    def recommended(self, at: float, replicas: int) -> History:
        return History((*self.recommendations, Sample(at, replicas)), self.changes)

    def scaled(self, at: float, change: int) -> History:
        """The history after the caller applied a change of `change` replicas at `at`."""
        if change == 0:
            return self
        return History(self.recommendations, (*self.changes, Sample(at, change)))

    def pruned(self, now: float, params: Parameters) -> History:
        """Forget what no window can see any more."""
        return History(
            tuple(r for r in self.recommendations if r.at > now - params.stabilization),
            tuple(c for c in self.changes if c.at > now - params.scale_up_period),
        )


@dataclass(frozen=True)
class Decision:
    """One decision with everything it was made from, for the Event, the log and the tests."""

    at: float
    current: int
    pending: int
    target: int
    recommended: int  # step 1
    stabilized: int  # after step 2
    scale_up_limit: int  # the step-3 ceiling for this period
    desired: int  # after steps 3 and 4
    limit: Limit
    params: Parameters = field(repr=False)
    history: History = field(repr=False)  # including this decision's recommendation

    @property
    def direction(self) -> Direction:
        if self.desired > self.current:
            return "up"
        if self.desired < self.current:
            return "down"
        return "none"

    @property
    def ratio(self) -> float | None:
        """Pending jobs per worker over the target; None with no workers."""
        if self.current == 0:
            return None
        return self.pending / (self.current * self.target)

    def describe(self) -> str:
        """One line naming the inputs, the outcome and the rule that settled it."""
        p = self.params
        why = {
            Limit.NONE: "as recommended",
            Limit.TOLERANCE: f"within the {p.tolerance:.0%} tolerance of the target",
            Limit.STABILIZATION: (
                f"held by the highest recommendation of the last {p.stabilization:g} s "
                f"({self.stabilized}; recommended now {self.recommended})"
            ),
            Limit.SCALE_UP_LIMIT: (
                f"capped by the scale-up limit of {self.scale_up_limit} replicas per "
                f"{p.scale_up_period:g} s (recommended {self.recommended})"
            ),
            Limit.MAX_REPLICAS: (
                f"capped at max replicas {p.max_replicas} (recommended {self.recommended})"
            ),
            Limit.MIN_REPLICAS: (
                f"raised to min replicas {p.min_replicas} (recommended {self.recommended})"
            ),
        }[self.limit]
        return (
            f"pending {self.pending}, current {self.current}, desired {self.desired}, "
            f"target {self.target} per worker: {why}"
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def recommend(current: int, pending: int, params: Parameters) -> tuple[int, bool]:
    """Step 1: the recommendation, and whether the tolerance band kept the current count."""
    target = params.target_per_worker
    if current > 0:
        # Exact arithmetic, so that both edges of the band are inside it (550 / 500 in floats
        # is a hair above 1.1).
        ratio = Fraction(pending, current * target)
        if abs(ratio - 1) <= Fraction(repr(params.tolerance)):
            return current, True
    return _ceil_div(pending, target), False


def scale_up_limit(current: int, history: History, params: Parameters) -> int:
    """Step 3's ceiling: max(2 x n, n + 4) for n the count at the start of the period."""
    start = max(0, current - sum(c.replicas for c in history.changes))
    limit = max(
        math.ceil(start * (100 + params.scale_up_percent) / 100), start + params.scale_up_pods
    )
    return max(limit, current)  # scaled up too far already: stay, until the period passes


def decide(
    current: int, pending: int, params: Parameters, history: History, now: float
) -> Decision:
    """The desired replicas for `current` replicas and `pending` jobs at time `now`.

    `history` is the one returned in the previous decision (`History()` at first), with the
    changes the caller applied recorded through `History.scaled`.
    """
    if current < 0 or pending < 0:
        raise ValueError("replicas and pending jobs cannot be negative")
    history = history.pruned(now, params)
    recommended, within = recommend(current, pending, params)
    history = history.recommended(now, recommended)
    limit = Limit.TOLERANCE if within else Limit.NONE

    # Step 2: up at once, down only to the highest recommendation of the window.
    desired = recommended
    if recommended < current:
        highest = max(r.replicas for r in history.recommendations)
        desired = min(current, highest)
        if desired != recommended:
            limit = Limit.STABILIZATION
    stabilized = desired

    # Step 3: the scale-up rate.
    ceiling = scale_up_limit(current, history, params)
    if desired > current and desired > ceiling:
        desired = ceiling
        limit = Limit.SCALE_UP_LIMIT

    # Step 4: the bounds, which win over everything else.
    if desired > params.max_replicas:
        desired = params.max_replicas
        limit = Limit.MAX_REPLICAS
    elif desired < params.min_replicas:
        desired = params.min_replicas
        limit = Limit.MIN_REPLICAS

    return Decision(
        at=now,
        current=current,
        pending=pending,
        target=params.target_per_worker,
        recommended=recommended,
        stabilized=stabilized,
        scale_up_limit=ceiling,
        desired=desired,
        limit=limit,
        params=params,
        history=history,
    )
