"""The WebhookSubscription kind: one push channel for one calendar of a connection.

The connection controller creates one per (connection, calendar) for providers that push
change notifications (a Google Calendar watch channel, a Microsoft Graph subscription). The
subscription controller registers it with the provider, renews it before it expires and
records in status what it needs to find the channel again after a restart: the channel id
is the idempotency key that prevents a retry from opening a second channel.

The spec is the subscription's identity and cannot change; a different calendar is a
different subscription.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from calsync.api.conditions import ConditionList
from calsync.api.meta import (
    ApiModel,
    CalendarId,
    ObjectName,
    SpecModel,
    Timestamp,
    immutable,
)

PushProvider = Literal["google", "microsoft"]


class WebhookSubscriptionSpec(SpecModel):
    """Which calendar of which connection to receive change notifications for."""

    connection: ObjectName = Field(
        json_schema_extra=immutable("spec.connection"),
        description="Name of the CalendarConnection, in the same namespace, that owns this.",
    )
    calendar_id: CalendarId = Field(
        min_length=1,
        json_schema_extra=immutable("spec.calendarId"),
        description="The provider's id of the calendar to watch.",
    )
    provider: PushProvider = Field(
        json_schema_extra=immutable("spec.provider"),
        description="Provider of the connection: google (watch channel) or microsoft (Graph).",
    )


class WebhookSubscriptionStatus(ApiModel):
    """The channel as registered with the provider."""

    channel_id: str | None = Field(
        default=None,
        description=(
            "Id of the Google watch channel or Microsoft Graph subscription. Chosen before "
            "registering, so a retried registration reuses it."
        ),
    )
    resource_id: str | None = Field(
        default=None,
        description="The provider's id of the watched resource (Google resourceId).",
    )
    expiration: Timestamp | None = Field(
        default=None, description="When the provider stops delivering on this channel."
    )
    next_renewal_time: Timestamp | None = Field(
        default=None, description="When the operator will renew or replace the channel."
    )
    notifications_received: int = Field(
        default=0, ge=0, description="Notifications accepted for this channel so far."
    )
    last_notification_time: Timestamp | None = Field(
        default=None, description="When the last notification for this channel arrived."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )
    conditions: ConditionList = Field(
        default_factory=list,
        description="Ready and Subscribed, each with a reason and message.",
    )


class WebhookSubscription(ApiModel):
    """A whole WebhookSubscription object as stored by the API server."""

    api_version: Literal["calsync.io/v1alpha1"] = "calsync.io/v1alpha1"
    kind: Literal["WebhookSubscription"] = "WebhookSubscription"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: WebhookSubscriptionSpec
    status: WebhookSubscriptionStatus | None = None
