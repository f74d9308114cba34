"""The simulator's accounts and calendars, and its settings.

A `User` has a calendar list: one `ListEntry` per calendar they can see, with their access
role. Owning a calendar, or having it shared with you, is having an entry; unsharing or deleting
the calendar marks the entry `deleted` (kept, since an incremental calendar-list sync must
report it). Every change to an entry takes a new simulator-wide change number, which is what
calendar-list sync tokens compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from calsync.testing.google.events import StoredEvent

ROLES: Final = ("owner", "writer", "reader", "freeBusyReader")  # most to least access
WRITE_ROLES: Final = ("owner", "writer")
# colorId -> (backgroundColor, foregroundColor): Google's calendar palette, in part
PALETTE: Final = {
    "1": ("#ac725e", "#1d1d1d"),
    "2": ("#d06b64", "#1d1d1d"),
    "7": ("#42d692", "#1d1d1d"),
    "9": ("#7bd148", "#1d1d1d"),
    "14": ("#9fe1e7", "#1d1d1d"),
    "16": ("#4986e7", "#1d1d1d"),
    "17": ("#9a9cff", "#1d1d1d"),
    "24": ("#a47ae2", "#1d1d1d"),
}


@dataclass
class ListEntry:
    calendar_id: str
    role: str
    seq: int
    color_id: str
    summary_override: str | None = None
    deleted: bool = False
    hidden: bool = False


@dataclass
class User:
    email: str
    time_zone: str
    entries: dict[str, ListEntry] = field(default_factory=dict)


@dataclass
class CalendarData:
    id: str
    owner: str
    summary: str
    description: str
    time_zone: str
    created: float
    resource_id: str  # what push channels on its events report as X-Goog-Resource-ID
    events: dict[str, StoredEvent] = field(default_factory=dict)
    epoch: int = 0  # bumped by an invalidation: older sync tokens answer 410
    seq: int = 0  # change number of the last change to its events
    primary: bool = False

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "calendar#calendar",
            "etag": f'"{self.created * 1000:.0f}"',
            "id": self.id,
            "summary": self.summary,
            "timeZone": self.time_zone,
        }
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Settings:
    """What the admin API can change at run time (`PATCH /_admin/settings`)."""

    access_token_ttl: float = 3600.0
    refresh_token_ttl: float | None = None  # e.g. 7 days, as for apps in "Testing" status
    require_https: bool = False  # real Google refuses http:// push addresses
    max_channel_ttl: float = 30 * 24 * 3600.0
    instance_horizon_days: int = 730  # singleEvents expansion of open series without timeMax

    def update(self, values: Mapping[str, Any]) -> None:
        checked: dict[str, Any] = {}
        for key, value in values.items():
            if key not in type(self).__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            elif key == "refresh_token_ttl" and value is None:
                pass
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive number")
            checked[key] = value
        for key, value in checked.items():  # all or nothing
            setattr(self, key, value)

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).__dataclass_fields__}
