"""Status conditions in the ``metav1.Condition`` shape, and pure helpers to maintain them.

Every calsync kind reports its state as a list of conditions, one per type. Controllers
compute the new list with :func:`set_condition`, which also says whether anything a human
would care about changed (status or reason), so they post a Kubernetes Event only on real
transitions. Kopf replaces whole lists in status patches, so the full list is always written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from calsync.api.meta import ApiModel, Timestamp

READY = "Ready"
AUTHENTICATED = "Authenticated"
SUBSCRIBED = "Subscribed"
SYNCED = "Synced"
THROTTLED = "Throttled"
DEGRADED = "Degraded"

ConditionStatus = Literal["True", "False", "Unknown"]

CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(ApiModel):
    """One aspect of the object's current state, in the shape of metav1.Condition."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description=(
            "Aspect the condition reports on: Ready, Authenticated, Subscribed, Synced, "
            "Throttled or Degraded."
        ),
    )
    status: ConditionStatus = Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase word saying why the condition is in its current status.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Human-readable details; may be empty.",
    )
    last_transition_time: Timestamp = Field(
        description="When the status last changed from one value to another."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation of the object the condition was computed from.",
    )


ConditionList = Annotated[
    list[Condition],
    Field(
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        }
    ),
]
"""A status' conditions: at most one per type, merged by type in server-side apply."""


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    """The condition of the given type, or ``None`` when there is none."""
    for condition in conditions:
        if condition.type == type:
            return condition
    return None


def is_true(conditions: Sequence[Condition], type: str) -> bool:
    """Whether a condition of this type exists and has status ``"True"``."""
    condition = get_condition(conditions, type)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> tuple[list[Condition], bool]:
    """Return the new condition list and whether this was a transition.

    The list keeps its order; a type seen for the first time is appended. The second value
    is true when the condition is new or its status or reason changed, which is when an
    Event is worth posting. ``lastTransitionTime`` moves to ``now`` only when the status
    changes (or the condition is new); a changed reason or message alone keeps it.

    Raises ``pydantic.ValidationError`` when the reason or type is malformed.
    """
    existing = get_condition(conditions, type)
    status_changed = existing is None or existing.status != status
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=(
            existing.last_transition_time if existing is not None and not status_changed else now
        ),
    )
    transition = status_changed or (existing is not None and existing.reason != reason)
    if existing is None:
        return [*conditions, updated], True
    return [updated if c.type == type else c for c in conditions], transition


def conditions_from_status(raw: Mapping[str, Any] | None) -> list[Condition]:
    """Read ``status.conditions`` from a raw object's status, skipping malformed entries.

    Anything unusable (no status, conditions not a list, an entry missing its type or with
    a bad timestamp) is dropped rather than raised, and of two entries with the same type the
    first wins: a controller should be able to recover from whatever an older version or a
    human left behind.
    """
    if not isinstance(raw, Mapping):
        return []
    entries = raw.get("conditions")
    if not isinstance(entries, list):
        return []
    parsed: list[Condition] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        try:
            condition = Condition.model_validate(entry)
        except ValidationError:
            continue
        if condition.type in seen:
            continue
        seen.add(condition.type)
        parsed.append(condition)
    return parsed
