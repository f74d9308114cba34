"""Deterministic bulk events for a simulated calendar (benchmarks, large tests).

`generate(sim, calendar_id, count, seed=..., start=...)` inserts `count` events, the same ones
for the same arguments: about 70 % timed events in several time zones (some with attendees),
15 % all-day events, 15 % recurring series (weekly with COUNT, daily with UNTIL, monthly
open-ended, some with EXDATE), and on a third of the series one moved and one cancelled
instance (exceptions, extra to `count`). Ids derive from the seed, so two simulators fed the
same arguments hold the same ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from typing import TYPE_CHECKING, Any, Final

from calsync.testing.google.errors import GoogleError

if TYPE_CHECKING:
    from calsync.testing.google.state import GoogleSimulator

ZONES: Final = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", "Australia/Sydney")
WORDS: Final = (
    "Planning",
    "Review",
    "Standup",
    "Retro",
    "Lunch",
    "Workshop",
    "1:1",
    "Interview",
    "Budget",
    "Design",
    "Roadmap",
    "Sync",
    "Demo",
    "Offsite",
    "Training",
    "Café",
)
PLACES: Final = ("Room 4.12", "Berlin HQ", "https://meet.example.com/abc", "Zürich", "", "")


def _event_id(seed: int, index: int) -> str:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=16).digest()
    alphabet = "abcdefghijklmnopqrstuv0123456789"
    return "".join(alphabet[b % 32] for b in digest) + "g"


def _local(start: dt.datetime, zone: str) -> dict[str, str]:
    return {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": zone}


def bodies(count: int, *, seed: int, start: dt.datetime) -> list[dict[str, Any]]:
    """The event bodies (masters and singles; exceptions are marked `_exceptions`)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    out: list[dict[str, Any]] = []
    origin = start.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    for index in range(count):
        roll = rng.random()
        zone = rng.choice(ZONES)
        day = origin + dt.timedelta(days=rng.randint(-180, 365))
        begin = day.replace(hour=rng.randint(7, 18), minute=rng.choice((0, 15, 30, 45)))
        length = dt.timedelta(minutes=rng.choice((30, 45, 60, 90, 120)))
        body: dict[str, Any] = {
            "id": _event_id(seed, index),
            "summary": f"{rng.choice(WORDS)} {rng.choice(WORDS).lower()} #{index}",
            "description": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))),
            "location": rng.choice(PLACES),
        }
        if roll < 0.15:
            first = day.date()
            body["start"] = {"date": first.isoformat()}
            body["end"] = {"date": (first + dt.timedelta(days=rng.randint(1, 3))).isoformat()}
            body["transparency"] = "transparent"
        elif roll < 0.30:
            body["start"] = _local(begin, zone)
            body["end"] = _local(begin + length, zone)
            kind = rng.randrange(3)
            if kind == 0:
                rule = f"RRULE:FREQ=WEEKLY;COUNT={rng.randint(5, 40)}"
            elif kind == 1:
                until = (begin + dt.timedelta(days=rng.randint(10, 90))).strftime("%Y%m%d")
                rule = f"RRULE:FREQ=DAILY;UNTIL={until}T235959Z"
            else:
                rule = "RRULE:FREQ=MONTHLY"
            body["recurrence"] = [rule]
            if rng.random() < 0.3:
                skipped = begin + dt.timedelta(days=7 if kind == 0 else 1 if kind == 1 else 0)
                if kind != 2:
                    body["recurrence"].append(
                        f"EXDATE;TZID={zone}:{skipped.strftime('%Y%m%dT%H%M%S')}"
                    )
            if rng.random() < 0.33:
                step = {0: 7, 1: 1, 2: 0}[kind]
                if step:
                    moved = begin + dt.timedelta(days=2 * step)
                    cancelled = begin + dt.timedelta(days=3 * step)
                    body["_exceptions"] = [
                        {
                            "originalStartTime": _local(moved, zone),
                            "start": _local(moved + dt.timedelta(hours=1), zone),
                            "end": _local(moved + dt.timedelta(hours=1) + length, zone),
                            "summary": body["summary"] + " (moved)",
                        },
                        {"originalStartTime": _local(cancelled, zone), "status": "cancelled"},
                    ]
        else:
            body["start"] = _local(begin, zone)
            body["end"] = _local(begin + length, zone)
            if rng.random() < 0.3:
                body["attendees"] = [
                    {"email": f"person{rng.randint(1, 500)}@example.com"}
                    for _ in range(rng.randint(1, 6))
                ]
        out.append(body)
    return out


def generate(
    sim: GoogleSimulator,
    calendar_id: str,
    count: int,
    *,
    seed: int = 1,
    start: dt.datetime | None = None,
) -> dict[str, int]:
    """Insert the events; one push notification for the whole batch."""
    if not isinstance(count, int) or not 0 < count <= 1_000_000:
        raise ValueError("count must be between 1 and 1,000,000")
    origin = start or dt.datetime.now(dt.UTC)
    made = {"events": 0, "recurring": 0, "exceptions": 0, "cancelled_instances": 0}
    for body in bodies(count, seed=seed, start=origin):
        exceptions = body.pop("_exceptions", [])
        created = sim.create_event(calendar_id, body, notify=False)
        made["events"] += 1
        if created.get("recurrence"):
            made["recurring"] += 1
        for exception in exceptions:
            if exception.get("status") == "cancelled":
                try:
                    sim.cancel_instance(
                        calendar_id, created["id"], exception["originalStartTime"], notify=False
                    )
                except GoogleError:
                    continue  # the instance fell on an EXDATE
                made["cancelled_instances"] += 1
            else:
                try:
                    sim.create_event(
                        calendar_id,
                        {**exception, "recurringEventId": created["id"]},
                        notify=False,
                    )
                except GoogleError:
                    continue
                made["exceptions"] += 1
    sim.notify(calendar_id)
    return made
