"""`calsync events`: read a connection's events from the store as a table, JSON or iCalendar."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from calsync.store import EventStore, default_store_url

DEFAULT_PAST_DAYS = 365
DEFAULT_FUTURE_DAYS = 730


def parse_when(text: str, *, end: bool = False) -> dt.datetime:
    """An ISO date (start of that day, UTC) or date-time (naive = UTC)."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO date or date-time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime | None, all_day: bool) -> str | None:
    if value is None:
        return None
    return value.date().isoformat() if all_day else value.isoformat().replace("+00:00", "Z")


def occurrence_json(occ: Any) -> dict[str, Any]:
    return {
        "uid": occ.uid,
        "recurrence_id": occ.recurrence_id,
        "calendar_id": occ.calendar_id,
        "start": _iso(occ.start, occ.all_day),
        "end": _iso(occ.end, occ.all_day),
        "all_day": occ.all_day,
        "timezone": occ.timezone,
        "summary": occ.summary,
        "location": occ.location,
        "status": occ.status,
        "transparency": occ.transparency,
        "organizer": occ.organizer,
        "attendees": list(occ.attendees),
    }


async def _show(args: argparse.Namespace) -> int:
    if "/" not in args.connection:
        print("calsync: --connection takes NAMESPACE/NAME", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.UTC)
    try:
        start = parse_when(args.start) if args.start else now - dt.timedelta(days=DEFAULT_PAST_DAYS)
        end = parse_when(args.end) if args.end else now + dt.timedelta(days=DEFAULT_FUTURE_DAYS)
    except ValueError as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return 2
    if end <= start:
        print("calsync: --to must be after --from", file=sys.stderr)
        return 2
    store = await EventStore.open(args.store or default_store_url())
    try:
        if args.format == "ics":
            calendars = (
                [args.calendar]
                if args.calendar
                else [c.id for c in await store.calendars(args.connection)]
            )
            if not calendars:
                print(f"calsync: no calendars stored for {args.connection}", file=sys.stderr)
                return 1
            for calendar_id in calendars:
                sys.stdout.write(await store.export_ics(args.connection, calendar_id))
            return 0
        result = await store.query(
            args.connection,
            calendar_id=args.calendar,
            start=start,
            end=end,
            limit=args.limit,
            include_cancelled=True if args.include_cancelled else None,
        )
    finally:
        await store.close()
    if args.format == "json":
        json.dump([occurrence_json(o) for o in result.occurrences], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        rows = [("START", "END", "SUMMARY", "STATUS", "UID")]
        for occ in result.occurrences:
            rows.append(
                (
                    _iso(occ.start, occ.all_day) or "",
                    _iso(occ.end, occ.all_day) or "",
                    (occ.summary or "")[:40],
                    occ.status,
                    occ.uid,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])
    if result.truncated:
        print(
            f"calsync: output truncated at {args.limit} occurrences; narrow --from/--to",
            file=sys.stderr,
        )
    return 0


def show_events(args: argparse.Namespace) -> int:
    return asyncio.run(_show(args))
