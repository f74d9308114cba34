"""A one-year range query over a calendar of worst-case recurrence rules, beside the same query
over a healthy calendar of as many objects (issue 12, item 2: bounded reads).

The hostile calendar holds `SERIES` series, all started on 2000-01-01 and without end, cycling
through the rules that used to make a read hang or balloon: minutely and secondly rules, a rule
that matches once an hour but steps every second, 86,400 times of day on a DAILY rule, the 30th
of February (never), a sparse COUNT rule, and a minutely rule whose instances last a day. The
healthy calendar is icalgen's realistic mix of the same number of objects around the query year.

Both go through the store's real query path (`EventStore.query`, the shipped caps) and through
`calsync events --format json` as a user runs it (a fresh process, so its time includes the
interpreter start, the imports and opening the store). The ratio is hostile over healthy; the
answer for the hostile calendar is capped and says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._results import Row
from bench._util import MiB, peak_rss_bytes
from calsync.model import ChangePage, Resource
from calsync.providers.ical import parse_resource
from calsync.store import EventStore
from calsync.testing.icalgen import generate_events

SERIES = 200
ROUNDS = 3
YEAR_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR_END = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
CALENDAR = "/bench/query/"
RULES = (
    ("FREQ=MINUTELY", "PT15M"),
    ("FREQ=SECONDLY", "PT1S"),
    ("FREQ=SECONDLY;BYMINUTE=0;BYSECOND=0", "PT30M"),
    ("FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24)))
     + ";BYMINUTE=" + ",".join(map(str, range(60)))
     + ";BYSECOND=" + ",".join(map(str, range(60))), "PT1S"),
    ("FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30", "PT1S"),
    ("FREQ=SECONDLY;COUNT=100000;BYMONTH=2;BYMONTHDAY=30", "PT1S"),
    ("FREQ=MINUTELY;INTERVAL=7", "P1D"),
    ("FREQ=HOURLY;INTERVAL=5", "PT1H"),
)  # fmt: skip


def _hostile(count: int) -> list[Resource]:
    found = []
    for n in range(count):
        rule, duration = RULES[n % len(RULES)]
        text = (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync bench//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:hostile-{n}@bench\r\nDTSTART:20000101T000000Z\r\nDURATION:{duration}\r\n"
            f"RRULE:{rule}\r\nSUMMARY:hostile {n}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )
        found.append(parse_resource(f"hostile-{n}.ics", None, text))
    return found


def _healthy(count: int) -> list[Resource]:
    objects = generate_events(count, seed=12, start=YEAR_START + dt.timedelta(days=120))
    return [parse_resource(name, None, text) for name, text in objects.items()]


async def _fill(url: str, key: str, resources: list[Resource]) -> None:
    async with await EventStore.open(url) as store:
        await store.upsert_calendar(key, CALENDAR, "Bench")
        page = ChangePage(upserts=resources, complete=True, full=True)
        await store.apply_page(key, CALENDAR, page)


async def _query(url: str, key: str) -> tuple[float, int, bool, int]:
    async with await EventStore.open(url) as store:
        began = time.perf_counter()
        result = await store.query(key, start=YEAR_START, end=YEAR_END)
        took = time.perf_counter() - began
    return took, len(result.occurrences), result.truncated, len(result.capped_series)


def _cli(url: str, key: str) -> tuple[float, int]:
    began = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "calsync",
            "events",
            "--connection-key",
            key,
            "--store",
            url,
            "--from",
            YEAR_START.date().isoformat(),
            "--to",
            YEAR_END.date().isoformat(),
            "--format",
            "json",
            "--envelope",
        ],
        capture_output=True,
        check=True,
        timeout=600,
    )
    took = time.perf_counter() - began
    return took, len(json.loads(done.stdout)["occurrences"])


def run() -> list[Row]:
    # Each hostile series is named in a warning per query; the figures are what matters here.
    logging.getLogger("calsync.store.expand").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="calsync-bench-query-") as tmp:
        urls = {
            "hostile": f"sqlite+aiosqlite:///{Path(tmp) / 'hostile.db'}",
            "healthy": f"sqlite+aiosqlite:///{Path(tmp) / 'healthy.db'}",
        }
        asyncio.run(_fill(urls["hostile"], "hostile", _hostile(SERIES)))
        asyncio.run(_fill(urls["healthy"], "healthy", _healthy(SERIES)))
        store_times: dict[str, list[float]] = {"hostile": [], "healthy": []}
        cli_times: dict[str, list[float]] = {"hostile": [], "healthy": []}
        shapes: dict[str, tuple[int, bool, int]] = {}
        cli_rows: dict[str, int] = {}
        for _ in range(ROUNDS):  # interleaved rounds
            for name, url in urls.items():
                took, rows, truncated, capped = asyncio.run(_query(url, name))
                store_times[name].append(took)
                shapes[name] = (rows, truncated, capped)
                took, cli_rows[name] = _cli(url, name)
                cli_times[name].append(took)
        print(
            f"one-year query (2026), {SERIES} objects per calendar, median of {ROUNDS} "
            "interleaved rounds; SQLite, shipped caps"
        )
        for name in ("healthy", "hostile"):
            rows, truncated, capped = shapes[name]
            print(
                f"{name}: EventStore.query {statistics.median(store_times[name]):.3f} s "
                f"({rows} occurrences, truncated={truncated}, {capped} series named); "
                f"calsync events --format json {statistics.median(cli_times[name]):.3f} s "
                f"({cli_rows[name]} occurrences)"
            )
        store_ratio = statistics.median(store_times["hostile"]) / statistics.median(
            store_times["healthy"]
        )
        cli_ratio = statistics.median(cli_times["hostile"]) / statistics.median(
            cli_times["healthy"]
        )
        print(
            f"ratio hostile/healthy: store query {store_ratio:.2f}x, "
            f"calsync events {cli_ratio:.2f}x"
        )
        print(f"peak RSS of this process: {peak_rss_bytes() / MiB:.0f} MiB")
    found = []
    for label, times in (
        ("EventStore.query", store_times),
        ("calsync events --format json", cli_times),
    ):
        hostile, healthy = statistics.median(times["hostile"]), statistics.median(times["healthy"])
        rows, truncated, capped = shapes["hostile"]
        found.append(
            Row(
                benchmark="query_bounds",
                case=f"one-year query, {SERIES} hostile series: {label}",
                ours=hostile,
                reference_name=f"{SERIES} healthy objects",
                reference=healthy,
                ratio=hostile / healthy,
                ratio_is="hostile / healthy (time)",
                extra={
                    "hostile_occurrences": rows,
                    "hostile_truncated": truncated,
                    "hostile_capped_series": capped,
                    "healthy_occurrences": shapes["healthy"][0],
                    "rounds": ROUNDS,
                    "raw_hostile_s": times["hostile"],
                    "raw_healthy_s": times["healthy"],
                },
            )
        )
    return found


if __name__ == "__main__":
    run()
