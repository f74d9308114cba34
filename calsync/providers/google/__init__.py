"""The Google Calendar provider: Calendar API v3 over `calsync.providers.rest.JsonApi`."""

from __future__ import annotations

from calsync.providers.google.convert import MalformedEvent, resource_from_json
from calsync.providers.google.provider import GOOGLE_API_URL, GoogleProvider, classify

__all__ = ["GOOGLE_API_URL", "GoogleProvider", "MalformedEvent", "classify", "resource_from_json"]
