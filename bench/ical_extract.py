"""The CalDAV hot path's iCalendar extraction beside icalendar's full parse, on 10,000 objects.

The reference is `icalendar.Calendar.from_ical` alone on the same generated objects (icalgen's
realistic mix), which is what a client built on icalendar pays before it reads a single field;
ours includes building the `Resource` and every `Event` field.
"""

from __future__ import annotations

import statistics
import time
import warnings

import icalendar

from bench._results import Row
from calsync.providers.ical import parse_resource
from calsync.testing.icalgen import generate_events

COUNT = 10_000
ROUNDS = 3


def _time(action: object) -> float:
    assert callable(action)
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run() -> list[Row]:
    objects = list(generate_events(COUNT, seed=42).items())
    size = sum(len(raw) for _, raw in objects)

    def ours() -> None:
        for name, raw in objects:
            parse_resource(name, None, raw)

    def reference() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _, raw in objects:
                icalendar.Calendar.from_ical(raw)

    ours()  # warm the zone cache, as a running worker would have it
    mine = statistics.median(_time(ours) for _ in range(ROUNDS))
    theirs = statistics.median(_time(reference) for _ in range(ROUNDS))
    events = sum(len(parse_resource(n, None, r).events) for n, r in objects[:1000]) * COUNT // 1000
    print(f"{COUNT} objects, {size / 1e6:.1f} MB, about {events} VEVENTs; median of {ROUNDS}")
    print(
        f"calsync.providers.ical.parse_resource: {mine:.3f} s ({mine / COUNT * 1e6:.0f} us/object)"
    )
    print(f"icalendar.Calendar.from_ical (reference): {theirs:.3f} s")
    print(f"ratio: {mine / theirs:.3f}x  ({theirs / mine:.1f} times faster)")
    return [
        Row(
            benchmark="ical_extract",
            case=f"{COUNT} iCalendar objects: parse_resource",
            ours=mine,
            reference_name="icalendar.Calendar.from_ical",
            reference=theirs,
            ratio=mine / theirs,
            extra={"objects": COUNT, "bytes": size, "vevents_estimate": events, "rounds": ROUNDS},
        )
    ]


if __name__ == "__main__":
    run()
