"""Microsoft 365 / Outlook.com calendars through Microsoft Graph: `MicrosoftProvider`.

`provider` pages calendar-view delta rounds on `calsync.providers.rest.JsonApi` and manages
change-notification subscriptions (`GraphSubscription`, `SubscriptionGone`); `convert`
turns Graph event JSON into the store's resources (one per instance of a series).
"""

from calsync.providers.microsoft.convert import MalformedEvent, iana_zone, to_event, to_resource
from calsync.providers.microsoft.provider import (
    GRAPH_URL,
    WINDOW_TOLERANCE,
    GraphSubscription,
    MicrosoftProvider,
    SubscriptionGone,
    calendar_resource,
    classify,
    make_cursor,
    parse_cursor,
)

__all__ = [
    "GRAPH_URL",
    "WINDOW_TOLERANCE",
    "GraphSubscription",
    "MalformedEvent",
    "MicrosoftProvider",
    "SubscriptionGone",
    "calendar_resource",
    "classify",
    "iana_zone",
    "make_cursor",
    "parse_cursor",
    "to_event",
    "to_resource",
]
