"""Delta rounds over a calendar view: state tokens, pages, and what changed since a token.

Graph describes a round as: the first request (startDateTime, endDateTime) or a deltaLink
starts it; `@odata.nextLink` pages (`$skiptoken`) continue it; the last page carries
`@odata.deltaLink` (`$deltatoken`) for the next round. Here a round is computed whole when it
starts, against a snapshot (instance id -> etag) stored under the delta token that ended the
previous round:

- an instance not in the snapshot, or with another etag, is reported in full;
- an id in the snapshot that is no longer in the view (deleted, cancelled, moved out of the
  window) is reported as `{"id", "@removed": {"reason": "deleted"}}`;
- an event changed since the token that has nothing in the window now and had nothing then is
  reported as removed too, as Graph documents ("events that are outside the date range and that
  have been added, deleted, or updated since the previous delta call").

A `$skiptoken` names a round and a position, so repeating a nextLink (a client retrying after a
lost answer) gives the same page again. Tokens and rounds live in bounded caches: like
Outlook's delta token cache, the oldest are forgotten first, and a forgotten or invalidated
token answers `410 Gone` (or the configured 4xx variant).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from calsync.testing.microsoft.events import Instance

Entry = Instance | str  # a str entry is the id of a removed item


@dataclass
class DeltaToken:
    id: str
    user: str
    calendar: str
    window: tuple[dt.datetime, dt.datetime]
    snapshot: dict[str, tuple[str, str]]  # instance id -> (etag, event id)
    seq: int
    delivered: tuple[str, ...] = ()
    invalid: tuple[int, str] | None = None


@dataclass
class Round:
    id: str
    user: str
    calendar: str
    window: tuple[dt.datetime, dt.datetime]
    entries: list[Entry]
    token: DeltaToken
    invalid: tuple[int, str] | None = None
    served: set[int] = field(default_factory=set)


def new_token_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def skiptoken(round_id: str, position: int) -> str:
    return f"{round_id}.{position}"


def parse_skiptoken(value: str) -> tuple[str, int] | None:
    round_id, dot, position = value.rpartition(".")
    if not dot or not position.isdigit():
        return None
    return round_id, int(position)


class DeltaCache:
    """Bounded, least-recently-used stores of delta tokens and rounds."""

    def __init__(self, token_capacity: int = 500, round_capacity: int = 200) -> None:
        self.token_capacity = token_capacity
        self.round_capacity = round_capacity
        self.tokens: OrderedDict[str, DeltaToken] = OrderedDict()
        self.rounds: OrderedDict[str, Round] = OrderedDict()

    def add_token(self, token: DeltaToken) -> None:
        self.tokens[token.id] = token
        while len(self.tokens) > self.token_capacity:
            self.tokens.popitem(last=False)

    def add_round(self, round_: Round) -> None:
        self.rounds[round_.id] = round_
        while len(self.rounds) > self.round_capacity:
            self.rounds.popitem(last=False)

    def token(self, token_id: str) -> DeltaToken | None:
        found = self.tokens.get(token_id)
        if found is not None:
            self.tokens.move_to_end(token_id)
        return found

    def round(self, round_id: str) -> Round | None:
        found = self.rounds.get(round_id)
        if found is not None:
            self.rounds.move_to_end(round_id)
        return found

    def invalidate(
        self, status: int, code: str, *, calendar: str | None = None, user: str | None = None
    ) -> int:
        """Mark matching tokens and unfinished rounds invalid; returns how many were marked."""
        marked = 0
        items: list[DeltaToken | Round] = [*self.tokens.values(), *self.rounds.values()]
        for item in items:
            if calendar is not None and item.calendar != calendar:
                continue
            if user is not None and item.user != user:
                continue
            item.invalid = (status, code)
            marked += 1
        return marked

    def clear(self) -> None:
        self.tokens.clear()
        self.rounds.clear()


def diff(
    current: list[Instance],
    since: DeltaToken,
    changed_events: set[str],
    replay: bool,
) -> list[Entry]:
    """What a round from `since` reports: changes and removals, each id once."""
    entries: list[Entry] = []
    seen: set[str] = set()
    present_events = {i.event.id for i in current}
    current_ids = {i.id: i for i in current}
    for instance_id, (_, event_id) in since.snapshot.items():
        if instance_id not in current_ids:
            entries.append(instance_id)
            seen.add(instance_id)
        present_events.add(event_id)
    for item in current:
        known = since.snapshot.get(item.id)
        if known is None or known[0] != item.etag:
            entries.append(item)
            seen.add(item.id)
    for event_id in sorted(changed_events - present_events):
        if event_id not in seen:
            entries.append(event_id)
            seen.add(event_id)
    if replay:
        for instance_id in since.delivered:
            if instance_id in seen:
                continue
            seen.add(instance_id)
            again = current_ids.get(instance_id)
            entries.append(again if again is not None else instance_id)
    return entries
