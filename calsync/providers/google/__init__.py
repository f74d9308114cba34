"""The Google Calendar provider: Calendar API v3 over `calsync.providers.rest.JsonApi`."""

from __future__ import annotations

from calsync.providers.google.convert import MalformedEvent, resource_from_json
from calsync.providers.google.provider import (
    GOOGLE_API_URL,
    GoogleProvider,
    WatchChannel,
    classify,
)

__all__ = [
    "GOOGLE_API_URL",
    "GoogleProvider",
    "MalformedEvent",
    "WatchChannel",
    "classify",
    "resource_from_json",
]
