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


LifecycleEventName = Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]


class LifecycleEvent(ApiModel):
    """A Graph lifecycle notification the gateway received and the controller has to act on."""

    event: LifecycleEventName = Field(description="The lifecycleEvent Graph sent.")
    received_at: Timestamp = Field(description="When the gateway received it.")


class WebhookSubscriptionStatus(ApiModel):
    """The channel as registered with the provider.

    Who writes what: the subscription controller (in the operator) everything about the
    channel; the gateway only `notificationsReceived`, `lastNotificationTime` (in batches) and
    `lifecycleEvents` (Graph, before it answers 202); the controller empties `lifecycleEvents`
    once it has acted on them. Every write is guarded by the resourceVersion it read.
    """

    channel_id: str | None = Field(
        default=None,
        description=(
            "Id of the Google watch channel or Microsoft Graph subscription that is current. "
            "Google channel ids are chosen by calsync (a new one for every channel); Graph "
            "subscription ids by Graph."
        ),
    )
    resource_id: str | None = Field(
        default=None,
        description="The provider's id of the watched resource (Google resourceId).",
    )
    expiration: Timestamp | None = Field(
        default=None, description="When the provider stops delivering on this channel."
    )
    registered_at: Timestamp | None = Field(
        default=None, description="When the current channel was registered or last renewed."
    )
    channel_generation: int = Field(
        default=0,
        ge=0,
        description="How many channels were registered for this subscription so far; a new "
        "Google channel id is derived from it.",
    )
    previous_channel_id: str | None = Field(
        default=None,
        description=(
            "Google: the channel a renewal replaced, still accepted until it is stopped "
            "(make-before-break)."
        ),
    )
    previous_resource_id: str | None = Field(
        default=None, description="Google: the resourceId of the previous channel."
    )
    lifecycle_events: list[LifecycleEvent] = Field(
        default_factory=list,
        max_length=16,
        description="Graph lifecycle notifications received and not yet acted on.",
    )
    consecutive_failures: int = Field(
        default=0, ge=0, description="Failed registrations or renewals in a row."
    )
    last_error: str | None = Field(
        default=None, description="Why the last registration, renewal or stop failed."
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
