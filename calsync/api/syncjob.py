"""The SyncJob kind: one unit of synchronisation work for a connection.

Anything that wants a sync creates a SyncJob: the gateway on a webhook, the poll timer, the
connection controller on lifecycle changes, or a person with ``kubectl create -f`` ("sync
now"). Workers claim pending jobs through a resourceVersion-guarded status patch and record
progress and counts in status. A job is a request, so its spec never changes after
creation; finished jobs are deleted after ``ttlSecondsAfterFinished``, like a batch Job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from calsync.api.conditions import ConditionList
from calsync.api.meta import (
    ApiModel,
    CalendarId,
    ObjectName,
    SpecModel,
    Timestamp,
    cel_rule,
)

SyncReason = Literal["webhook", "poll", "manual", "resync", "lifecycle"]
SyncMode = Literal["incremental", "full"]
SyncJobPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Superseded"]

PENDING: SyncJobPhase = "Pending"
RUNNING: SyncJobPhase = "Running"
SUCCEEDED: SyncJobPhase = "Succeeded"
FAILED: SyncJobPhase = "Failed"
SUPERSEDED: SyncJobPhase = "Superseded"
FINISHED_PHASES: frozenset[SyncJobPhase] = frozenset({SUCCEEDED, FAILED, SUPERSEDED})

DEFAULT_TTL_SECONDS_AFTER_FINISHED = 3600


class SyncJobSpec(SpecModel):
    """What to synchronise and why. Immutable once created."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel_rule("self == oldSelf", "spec is immutable")]
        }
    )

    connection: ObjectName = Field(
        description="Name of the CalendarConnection, in the same namespace, to synchronise.",
    )
    calendar_id: CalendarId = Field(
        default="",
        description="The provider's id of the calendar to synchronise; empty means all of them.",
    )
    reason: SyncReason = Field(
        default="manual",
        description=(
            "Why the job exists: webhook (a provider notification), poll (the interval "
            "elapsed), manual (a person asked), resync (the provider invalidated the sync "
            "cursor) or lifecycle (the connection was created or changed)."
        ),
    )
    mode: SyncMode = Field(
        default="incremental",
        description=(
            "incremental fetches changes since the stored cursor (falling back to full when "
            "there is none); full re-reads the whole window and removes what is gone."
        ),
    )
    ttl_seconds_after_finished: int | None = Field(
        default=DEFAULT_TTL_SECONDS_AFTER_FINISHED,
        ge=0,
        description=(
            "Seconds to keep the job once it has Succeeded, Failed or been Superseded; 0 "
            "deletes it right away."
        ),
    )


class SyncCounts(ApiModel):
    """How many events a job touched."""

    fetched: int = Field(default=0, ge=0, description="Events read from the provider.")
    upserted: int = Field(default=0, ge=0, description="Events written to the store.")
    deleted: int = Field(default=0, ge=0, description="Events removed from the store.")


class SyncJobStatus(ApiModel):
    """Progress of the job, written by the worker that claimed it."""

    phase: SyncJobPhase = Field(
        default=PENDING,
        description=(
            "Pending (waiting for a worker), Running, Succeeded, Failed (gave up after "
            "retries) or Superseded (a newer job covers the same work)."
        ),
    )
    attempts: int = Field(default=0, ge=0, description="Times a worker has started this job.")
    claimed_by: str | None = Field(
        default=None,
        description="Identity of the worker that holds the job while Running, or last ran it.",
    )
    store_id: str | None = Field(
        default=None,
        description="Identity of the event store the run writes to (the connection's storeId).",
    )
    lease_expires_at: Timestamp | None = Field(
        default=None,
        description="When the worker's claim lapses unless renewed; then another may take over.",
    )
    started_at: Timestamp | None = Field(
        default=None, description="When the current or last attempt started."
    )
    completed_at: Timestamp | None = Field(
        default=None, description="When the job reached Succeeded, Failed or Superseded."
    )
    next_attempt_at: Timestamp | None = Field(
        default=None,
        description="After a failed attempt: no worker starts the job again before this time.",
    )
    duration_seconds: float | None = Field(
        default=None, ge=0, description="How long the last attempt took."
    )
    counts: SyncCounts = Field(
        default_factory=SyncCounts, description="Events fetched, upserted and deleted."
    )
    error: str | None = Field(default=None, description="Why the last attempt failed, when it did.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )
    conditions: ConditionList = Field(
        default_factory=list,
        description=(
            "Complete=True once the job Succeeded or was Superseded, Failed=True once it gave "
            "up, like a batch Job: `kubectl wait --for=condition=Complete sj/NAME` works."
        ),
    )

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


class SyncJob(ApiModel):
    """A whole SyncJob object as stored by the API server."""

    api_version: Literal["calsync.io/v1alpha1"] = "calsync.io/v1alpha1"
    kind: Literal["SyncJob"] = "SyncJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SyncJobSpec
    status: SyncJobStatus | None = None
