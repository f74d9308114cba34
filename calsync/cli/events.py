"""`calsync events`: read a connection's events from the store as a table, JSON or iCalendar.

The store files events under the connection's Kubernetes ``metadata.uid``, not under its name,
so ``--connection NAMESPACE/NAME`` first asks the API server (``$KUBECONFIG``, else
``~/.kube/config``, else the in-cluster account) for the connection. ``--connection-key UID``
skips that and reads the store directly: for a store copied off a cluster, or one whose cluster
is gone.

Output goes to a pipe as often as to a terminal; when the reader stops early
(``calsync events ... | head``) the command ends the way ``cat`` or ``grep`` do, through
SIGPIPE, with nothing on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The store loads SQLAlchemy and lightkube is only needed with --connection: both are imported
# inside the command, so building the parser (`calsync --help`) imports neither.

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


API_TIMEOUT_SECONDS = 15.0
NO_CLUSTER_HINT = "or pass --connection-key UID to read the store without a cluster"


class EventsError(Exception):
    """A one-line reason for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def store_key(body: Mapping[str, Any]) -> str:
    """The key the store files a connection's events under: its ``metadata.uid``."""
    return str(body["metadata"]["uid"])


def _kube_config() -> Any:
    """kubectl's order: the first existing file in KUBECONFIG, ~/.kube/config, in-cluster."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError

    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    try:
        if listed:
            present = [p for p in listed if Path(p).expanduser().is_file()]
            if not present:
                raise EventsError(f"kubeconfig {listed[0]} does not exist; {NO_CLUSTER_HINT}")
            return KubeConfig.from_file(present[0])
        if Path("~/.kube/config").expanduser().is_file():
            return KubeConfig.from_file("~/.kube/config")
        return KubeConfig.from_service_account()
    except ConfigError as exc:
        raise EventsError(
            f"no Kubernetes configuration to look the connection up with ({exc}): set "
            f"KUBECONFIG, {NO_CLUSTER_HINT}"
        ) from None


async def resolve_connection(namespace: str, name: str) -> str:
    """The store key of CalendarConnection ``namespace/name``, read from the API server."""
    import httpx
    from lightkube import ApiError

    from calsync.controllers.kube import get_connection
    from calsync.controllers.kube_transport import api_client

    client = api_client(_kube_config(), timeout=httpx.Timeout(API_TIMEOUT_SECONDS))
    try:
        body = await get_connection(client, namespace, name)
    except ApiError as exc:
        raise EventsError(
            f"cannot read CalendarConnection {namespace}/{name}: the API server answered "
            f"{exc.status.code} ({exc.status.message})"
        ) from None
    except httpx.HTTPError as exc:
        raise EventsError(
            f"cannot reach the Kubernetes API server ({exc or type(exc).__name__}); "
            f"{NO_CLUSTER_HINT}"
        ) from None
    finally:
        await client.close()
    if body is None:
        raise EventsError(f"CalendarConnection {namespace}/{name} not found")
    return store_key(body)


def _namespace_and_name(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise EventsError(f"--connection takes NAMESPACE/NAME, not {text!r}", code=2)
    return namespace, name


async def _show(args: argparse.Namespace) -> int:
    try:
        return await _show_events(args)
    except EventsError as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return exc.code


async def _show_events(args: argparse.Namespace) -> int:
    from calsync.settings import SettingsError, load_settings

    target = _namespace_and_name(args.connection) if args.connection else None
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return 2
    limit = args.limit if args.limit is not None else settings.query_limit
    series_limit = settings.query_series_limit
    # The expansion warns once per series it cuts short (for the worker's log); here the one
    # line after the output names them.
    logging.getLogger("calsync.store.expand").setLevel(logging.ERROR)
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
    if target is not None:
        key = await resolve_connection(*target)
        label = args.connection
    else:
        key = args.connection_key
        label = f"connection key {key}"
    from calsync.store import EventStore, default_store_url

    store = await EventStore.open(args.store or default_store_url())
    try:
        stored = [c.id for c in await store.calendars(key)]
        if not stored and target is None:
            raise EventsError(f"nothing is stored under {label} in this store")
        if args.format == "ics":
            calendars = [args.calendar] if args.calendar else stored
            if not calendars:
                print(f"calsync: no calendars stored for {label}", file=sys.stderr)
                return 1
            for calendar_id in calendars:
                sys.stdout.write(await store.export_ics(key, calendar_id))
            return 0
        result = await store.query(
            key,
            calendar_id=args.calendar,
            start=start,
            end=end,
            limit=limit,
            series_limit=series_limit,
            include_cancelled=True if args.include_cancelled else None,
        )
    finally:
        await store.close()
    if args.format == "json":
        listed = [occurrence_json(o) for o in result.occurrences]
        if args.envelope:
            json.dump(
                {
                    "occurrences": listed,
                    "truncated": result.truncated,
                    "limit": limit,
                    "series_limit": series_limit,
                    "capped_series": list(result.capped_series),
                },
                sys.stdout,
                indent=2,
            )
        else:
            json.dump(listed, sys.stdout, indent=2)
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
        _warn_truncated(result, limit, series_limit)
    return 0


def _warn_truncated(result: Any, limit: int, series_limit: int) -> None:
    """Say on stderr which cap cut the answer short: the total, or some series."""
    capped = list(result.capped_series)
    if capped:
        named = ", ".join(capped[:5]) + (f" and {len(capped) - 5} more" if len(capped) > 5 else "")
        print(
            f"calsync: output truncated: recurring series cut short at {series_limit} "
            f"occurrences per series (CALSYNC_QUERY_SERIES_LIMIT) or by their cost: {named}",
            file=sys.stderr,
        )
    if len(result.occurrences) >= limit or not capped:
        print(
            f"calsync: output truncated at {limit} occurrences; narrow --from/--to",
            file=sys.stderr,
        )


def _die_of_sigpipe() -> int:
    """End as a filter does when its reader is gone: killed by SIGPIPE, silently."""
    # Python's exit flushes stdout once more; point it at /dev/null so that flush is quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    return 128 + signal.SIGPIPE  # not reached where SIGPIPE kills


def add_events_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "events",
        help="show a connection's events from the store",
        description="Read events from the event store, recurring series expanded in the range.",
    )
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--connection",
        help="NAMESPACE/NAME of the connection, looked up in the cluster of $KUBECONFIG",
    )
    which.add_argument(
        "--connection-key",
        metavar="UID",
        help="the connection's store key (its metadata.uid): read the store without a cluster",
    )
    ev.add_argument("--calendar", help="only this calendar id")
    ev.add_argument(
        "--from", dest="start", help="range start (ISO date or date-time; default: 365 days ago)"
    )
    ev.add_argument("--to", dest="end", help="range end (default: 730 days ahead)")
    ev.add_argument("--format", choices=["table", "json", "ics"], default="table")
    ev.add_argument(
        "--envelope",
        action="store_true",
        help="with --format json: print an object with the occurrences and whether a cap cut "
        "the answer short (truncated, limit, series_limit, capped_series) instead of a bare list",
    )
    ev.add_argument(
        "--limit",
        type=_positive,
        default=None,
        help="at most this many occurrences (default: CALSYNC_QUERY_LIMIT, 10000)",
    )
    ev.add_argument(
        "--include-cancelled",
        action="store_true",
        help="also show cancelled events and occurrences (left out by default)",
    )
    ev.add_argument("--store", help="event store URL (default: CALSYNC_STORE_URL or SQLite)")
    ev.set_defaults(func=show_events)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def show_events(args: argparse.Namespace) -> int:
    if args.envelope and args.format != "json":
        print("calsync events: --envelope goes with --format json", file=sys.stderr)
        raise SystemExit(2)
    try:
        code = asyncio.run(_show(args))
        sys.stdout.flush()  # inside the try: a reader that left must not surface at exit
    except BrokenPipeError:
        return _die_of_sigpipe()
    return code
