"""Initial Google sync of 10,000 events from the simulator, beside bare paging of the same API.

The simulator runs in a process of its own (`python -m calsync simulate google`), loaded through
its admin API with `generate` (10,000 events, about 15 % of them recurring series, some with a
moved and a cancelled instance, which are extra resources), so its CPU is not ours. Two ways of
reading the calendar are measured, interleaved round by round (the order rotates), five rounds
each, medians reported:

- ours: `SyncEngine.sync_connection` with a `GoogleProvider` (maxResults 2,500) into a fresh
  SQLite store, in a child process of its own, timed inside the child around the sync call
  only; its peak RSS is the child's own (VmHWM, see `bench._util.peak_rss_bytes`).
- ours, provider only: the same `GoogleProvider` paging through the same listing and turning
  every item into a `Resource`, with nothing stored (also in a child process): what our sync
  costs besides the store.
- bare paging: a plain httpx client fetching the same listing (`singleEvents=false`,
  `showDeleted=false`, `maxResults=2500`, following `nextPageToken` to the `nextSyncToken`) and
  decoding each page's JSON; nothing stored. The floor for any client of this API.

Each of our sync children also times SQLite alone after its sync (untimed in ours): plain
sqlite3 inserting the very rows the sync stored into an empty copy of the schema, with the
store's settings and one transaction per page, with no decoding, conversion or row building.
That is a floor no store-backed sync on this machine can go below.

The reference is the sum of the two floors, bare paging plus SQLite alone (medians): what a
client that stores what it reads cannot go below. Target: ours <= 1.5x that sum. Events/s is
resources listed per second.

`python -m bench google_sync` runs it (once registered in bench/__main__.py);
`python -m bench.google_sync --profile FILE` also runs one more sync of ours, untimed, under
cProfile and writes its statistics to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from bench._apply import (
    APPLY_POLL,
    ApplyPath,
    Interleaved,
    interleaved,
    oauth_manifest,
    print_rounds,
    raw_extra,
)
from bench._results import Row, at_most
from bench._util import MiB, median, peak_rss_bytes, rotate, verdict

COUNT = 10_000
SEED = 1
ROUNDS = 5  # the machine's speed drifts by a fifth from minute to minute: five rounds, not three
PAGE_SIZE = 2500
BATCH_SIZE = 500
USER = "bench@example.com"
CONNECTION = "bench"
WARMUP_CONNECTION = "warmup"
PAST_DAYS, FUTURE_DAYS = 365, 730
TARGET = 1.5  # ours / (bare paging + plain SQLite inserts of the same rows), in seconds
TOOLS = ("ours", "provider", "bare")
TOKEN_VARIABLE = "CALSYNC_BENCH_GOOGLE_TOKEN"  # noqa: S105 - a variable name, not a token
WARMUP_VARIABLE = "CALSYNC_BENCH_GOOGLE_WARMUP_TOKEN"
WARMUP_USER, WARMUP_COUNT = "warmup@example.com", 200

ROOT = Path(__file__).resolve().parents[1]


# -- our side, in a child process ---------------------------------------------------------------


async def _child_provider_only(api_url: str, token: str, warmup: str) -> dict[str, Any]:
    from calsync.model import Window
    from calsync.providers.google import GoogleProvider
    from calsync.providers.oauth import StaticTokens

    window = Window.around(dt.datetime.now(dt.UTC), PAST_DAYS, FUTURE_DAYS)

    async def nothing_known() -> dict[str, str | None]:
        return {}

    async def listing(token: str) -> tuple[float, int, int]:
        provider = GoogleProvider(api_url, StaticTokens(token), max_results=PAGE_SIZE)
        try:
            started = time.perf_counter()
            resources = pages = 0
            for calendar in await provider.list_calendars():
                async for page in provider.changes(
                    calendar, None, window=window, known=nothing_known, batch_size=BATCH_SIZE
                ):
                    resources += len(page.upserts)
                    pages += 1
            return time.perf_counter() - started, resources, pages
        finally:
            await provider.aclose()

    await listing(warmup)
    seconds, resources, pages = await listing(token)
    return {"seconds": seconds, "resources": resources, "pages": pages}


async def _child_sync(
    store_url: str, api_url: str, token: str, warmup: str, profile: str | None
) -> dict[str, Any]:
    from calsync.model import Window
    from calsync.providers.google import GoogleProvider
    from calsync.providers.oauth import StaticTokens
    from calsync.settings import Settings
    from calsync.store import EventStore
    from calsync.sync.engine import SyncEngine

    defaults = Settings.model_fields
    store = await EventStore.open(store_url)
    provider = GoogleProvider(api_url, StaticTokens(token), max_results=PAGE_SIZE)
    try:
        engine = SyncEngine(
            store, batch_size=BATCH_SIZE, series_limit=defaults["query_series_limit"].default
        )
        window = Window.around(dt.datetime.now(dt.UTC), PAST_DAYS, FUTURE_DAYS)
        # A worker is a long-lived process: only its very first sync pays the one-time costs
        # (modules imported on first use, statements compiled, zone files read). Another
        # account's small calendar takes them here, untimed, into the same store.
        other = GoogleProvider(api_url, StaticTokens(warmup), max_results=PAGE_SIZE)
        try:
            await engine.sync_connection(WARMUP_CONNECTION, other, window=window)
        finally:
            await other.aclose()
        profiler: Any = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        result = await engine.sync_connection(CONNECTION, provider, window=window)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        peak = peak_rss_bytes()
        stored = 0
        for calendar in result.calendars:
            stored += len(await store.known_etags(CONNECTION, calendar.calendar_id))
        events = sum(row.event_count for row in await store.calendars(CONNECTION))
        floor = await asyncio.to_thread(_sqlite_floor, store_url, CONNECTION)
        return {
            "sqlite_floor": floor,
            "seconds": seconds,
            "peak_rss": peak,
            "fetched": result.fetched,
            "upserted": result.upserted,
            "dropped": sum(c.dropped for c in result.calendars),
            "pages": sum(c.pages for c in result.calendars),
            "resources": stored,
            "events": events,
            "skipped": [list(s) for s in result.skipped],
        }
    finally:
        await provider.aclose()
        await store.close()


def _sqlite_floor(store_url: str, connection: str) -> float:
    """Seconds plain sqlite3 takes to insert the rows our sync stored into an empty copy of the
    schema, with the store's settings, one transaction per page of PAGE_SIZE resources: what
    SQLite itself costs, with no decoding, conversion or row building before it."""
    import sqlite3

    from calsync.store.connect import SQLITE_PRAGMAS

    source_path = store_url.split("///", 1)[1]
    target_path = source_path + ".floor"
    source = sqlite3.connect(source_path)
    try:
        ddl = [
            sql
            for (sql,) in source.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables = {
            name: source.execute(
                f"SELECT * FROM {name} WHERE connection = ? ORDER BY rowid",  # noqa: S608
                (connection,),
            ).fetchall()
            for name in ("calendars", "resources", "events")
        }
    finally:
        source.close()
    target = sqlite3.connect(target_path, isolation_level=None)
    try:
        for pragma in SQLITE_PRAGMAS:
            target.execute(pragma)
        for statement in ddl:
            target.execute(statement)

        def insert(name: str, rows: list[Any]) -> None:
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                target.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)  # noqa: S608

        insert("calendars", tables["calendars"])
        resources, events = tables["resources"], tables["events"]
        started = time.perf_counter()
        for start in range(0, len(resources), PAGE_SIZE):
            target.execute("BEGIN IMMEDIATE")
            insert("resources", resources[start : start + PAGE_SIZE])
            insert("events", events[start : start + PAGE_SIZE])
            target.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        target.close()
        for suffix in ("", "-wal", "-shm"):
            Path(target_path + suffix).unlink(missing_ok=True)


def _child_main(args: argparse.Namespace) -> int:
    token = os.environ.pop(TOKEN_VARIABLE)
    warmup = os.environ.pop(WARMUP_VARIABLE)
    if args.provider_only:
        outcome = asyncio.run(_child_provider_only(args.url, token, warmup))
    else:
        outcome = asyncio.run(_child_sync(args.store, args.url, token, warmup, args.profile))
    print(json.dumps(outcome), flush=True)
    return 0


def run_ours(
    store: Path | None, api_url: str, token: str, warmup: str, profile: Path | None = None
) -> dict[str, Any]:
    """Our sync in a child process (`store` None: the provider alone, nothing stored)."""
    command = [sys.executable, "-m", "bench.google_sync", "--child", "--url", api_url]
    if store is None:
        command.append("--provider-only")
    else:
        command += ["--store", f"sqlite+aiosqlite:///{store}"]
    if profile is not None:
        command += ["--profile", str(profile)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": path, TOKEN_VARIABLE: token, WARMUP_VARIABLE: warmup}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"our sync failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


# -- the bare client ----------------------------------------------------------------------------


def bare_paging(api_url: str, token: str, calendar_id: str) -> tuple[float, int, int]:
    """(seconds, items, pages) of one full listing with a plain httpx client."""
    import httpx

    url = f"{api_url}/calendar/v3/calendars/{calendar_id}/events"
    base = {
        "singleEvents": "false",
        "showDeleted": "false",
        "maxResults": str(PAGE_SIZE),
        "prettyPrint": "false",
    }
    items = pages = 0
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=300.0) as client:
        started = time.perf_counter()
        params = dict(base)
        while True:
            response = client.get(url, params=params)
            response.raise_for_status()
            body = response.json()
            items += len(body["items"])
            pages += 1
            if "nextPageToken" not in body:
                if not body.get("nextSyncToken"):
                    raise RuntimeError("the last page has no nextSyncToken")
                break
            params = {**base, "pageToken": body["nextPageToken"]}
        seconds = time.perf_counter() - started
    return seconds, items, pages


# -- the simulator process ----------------------------------------------------------------------


class Simulator:
    """`calsync simulate google` as a child process, driven through its admin API."""

    def __init__(self, log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "calsync", "simulate", "google", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the simulator did not start (said {line!r})")
        self.url = line

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        response = httpx.request(method, f"{self.url}/_admin{path}", json=body, timeout=600)
        if response.status_code >= 400:
            raise RuntimeError(
                f"admin {method} {path}: {response.status_code} {response.text[:500]}"
            )
        return response.json() if response.content else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Results:
    ours: list[float] = field(default_factory=list)
    ours_rss: list[int] = field(default_factory=list)
    sqlite_floor: list[float] = field(default_factory=list)
    provider: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    items: int = 0
    pages: int = 0
    stored: dict[str, Any] = field(default_factory=dict)
    made: dict[str, int] = field(default_factory=dict)
    warmup: float = 0.0
    applied: Interleaved | None = None  # the headline: kubectl apply -> Ready, and bare paging


def measure(profile: Path | None = None, *, apply: bool = True) -> Results:
    root = Path(tempfile.mkdtemp(prefix="calsync-bench-google-"))
    results = Results()
    with (root / "simulator.log").open("w") as log:
        sim = Simulator(log)
        try:
            sim.admin("POST", "/users", {"email": USER, "timeZone": "Europe/Berlin"})
            today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            results.made = sim.admin(
                "POST",
                f"/calendars/{USER}/generate",
                {"count": COUNT, "seed": SEED, "start": today.isoformat()},
            )
            token = sim.admin("POST", "/tokens/access", {"user": USER})["access_token"]
            sim.admin("POST", "/users", {"email": WARMUP_USER, "timeZone": "America/New_York"})
            sim.admin(
                "POST",
                f"/calendars/{WARMUP_USER}/generate",
                {"count": WARMUP_COUNT, "seed": SEED + 1, "start": today.isoformat()},
            )
            warmup = sim.admin("POST", "/tokens/access", {"user": WARMUP_USER})["access_token"]
            started = time.perf_counter()
            _, results.items, results.pages = bare_paging(sim.url, token, USER)  # warm-up
            results.warmup = time.perf_counter() - started
            for round_ in range(ROUNDS):
                for tool in rotate(TOOLS, round_):
                    if tool == "ours":
                        store = root / f"store-{round_}.db"
                        data = run_ours(store, sim.url, token, warmup)
                        _check(data, results.items)
                        results.stored = data
                        results.ours.append(float(data["seconds"]))
                        results.ours_rss.append(int(data["peak_rss"]))
                        results.sqlite_floor.append(float(data["sqlite_floor"]))
                        for path in root.glob(f"store-{round_}.db*"):
                            path.unlink()
                    elif tool == "provider":
                        data = run_ours(None, sim.url, token, warmup)
                        if data["resources"] != results.items:
                            raise RuntimeError(f"the provider alone saw {data['resources']} items")
                        results.provider.append(float(data["seconds"]))
                    else:
                        seconds, items, _ = bare_paging(sim.url, token, USER)
                        if items != results.items:
                            raise RuntimeError(
                                f"bare paging saw {items} items, then {results.items}"
                            )
                        results.bare.append(seconds)
            if profile is not None:  # one more sync, untimed, under the profiler
                run_ours(root / "store-profile.db", sim.url, token, warmup, profile)
            if apply:
                apply_path(sim, root, results, token)
        except BaseException:
            log.flush()
            print((root / "simulator.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            sim.stop()
            shutil.rmtree(root, ignore_errors=True)
    return results


def apply_path(sim: Simulator, root: Path, results: Results, token: str) -> None:
    """The headline: `kubectl apply` of a Google connection until Ready with every event,
    through one long-running `calsync run` on the shipped defaults (pointed at the simulator),
    interleaved round by round with bare paging; one untimed warm-up round first."""
    client = sim.admin("POST", "/clients", {"redirect_uris": ["http://127.0.0.1/callback"]})

    def manifest(namespace: str) -> str:  # a refresh token per round, minted before the clock
        minted = sim.admin(
            "POST", "/tokens/refresh", {"user": USER, "client_id": client["client_id"]}
        )
        return oauth_manifest(
            namespace,
            "google",
            USER,
            (client["client_id"], client["client_secret"]),
            minted["refresh_token"],
        )

    def bare() -> float:
        seconds, items, _ = bare_paging(sim.url, token, USER)
        if items != results.items:
            raise RuntimeError(f"bare paging saw {items} items, then {results.items}")
        return seconds

    env = {
        "CALSYNC_GOOGLE_API_URL": sim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{sim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{sim.url}/token",
    }
    expected = int(results.stored["events"])
    path = ApplyPath(root / "apply", "google", manifest, expected, env)
    results.applied = interleaved(path, ROUNDS, bare)


def _check(data: dict[str, Any], items: int) -> None:
    if data["fetched"] != items or data["resources"] + data["dropped"] != items or data["skipped"]:
        raise RuntimeError(
            f"our sync fetched {data['fetched']} and stored {data['resources']} resources "
            f"(dropped outside the window: {data['dropped']}, skipped: {data['skipped'][:5]}); "
            f"the listing holds {items}"
        )


def print_apply_report(results: Results) -> None:
    applied = results.applied
    if applied is None:
        return
    ours = [r.seconds for r in applied.runs]
    bare, floor = median(applied.reference), median(results.sqlite_floor)
    reference = bare + floor
    ratio = median(ours) / reference
    print(
        "headline, the initial sync as users run it: `kubectl apply` of a Namespace, the OAuth "
        "client's and the refresh token's Secrets and a google CalendarConnection, until it "
        f"reads Ready with status.eventCount = {results.stored.get('events')}, through one "
        "`calsync run` on the shipped defaults (SQLite store, pointed at the simulator); the "
        f"connection read every {APPLY_POLL * 1000:.0f} ms (plus one GET's time); "
        f"{ROUNDS} rounds interleaved with bare paging, one untimed warm-up "
        f"({applied.warm:.2f} s); each round's namespace deleted before the next"
    )
    print(
        f"ours {median(ours):.3f} s against bare paging {bare:.3f} s + SQLite alone "
        f"{floor:.3f} s = {reference:.3f} s: {ratio:.2f}x; target <= {TARGET}x "
        f"{verdict(ratio <= TARGET)}"
    )
    print(
        "rounds: ours "
        + ", ".join(f"{v:.3f}" for v in ours)
        + "; bare paging "
        + ", ".join(f"{v:.3f}" for v in applied.reference)
    )
    print_rounds(applied.runs)
    print()


def print_report(results: Results) -> None:
    ours, provider, bare = median(results.ours), median(results.provider), median(results.bare)
    bare_rate = results.items / bare
    print(
        f"Python {platform.python_version()}, httpx {metadata.version('httpx')}, "
        f"aiohttp {metadata.version('aiohttp')} (simulator), {os.cpu_count()} CPUs"
    )
    made = results.made
    print(
        f"calendar: {results.items} resources in {results.pages} pages of up to {PAGE_SIZE} "
        f"(generate count={COUNT} seed={SEED}: {made.get('recurring')} recurring series, "
        f"{made.get('exceptions')} moved and {made.get('cancelled_instances')} cancelled "
        f"instances); warm-up listing (untimed): {results.warmup:.2f} s"
    )
    print()
    print_apply_report(results)
    print(
        "in-process detail (not the path users run): "
        f"SyncEngine(batch_size={BATCH_SIZE}) + GoogleProvider(max_results={PAGE_SIZE}), "
        f"SQLite store; stored {results.stored.get('resources')} resources in "
        f"{results.stored.get('pages')} pages (dropped outside the window: "
        f"{results.stored.get('dropped')})"
    )
    print(f"median of {ROUNDS} rounds, interleaved (order rotated per round)")
    print()
    header = f"{'':<22} | {'seconds':>8} | {'events/s':>9} | {'x bare':>6} | {'peak RSS (MiB)':>14}"
    print(header)
    print("-" * len(header))
    rss = f"{max(results.ours_rss) / MiB:.1f}"
    for name, seconds, memory in (
        ("ours (sync + store)", ours, rss),
        ("ours, provider only", provider, ""),
        ("bare paging", bare, ""),
    ):
        rate = results.items / seconds
        print(
            f"{name:<22} | {seconds:>8.3f} | {rate:>9.0f} | {rate / bare_rate:>6.2f} | {memory:>14}"
        )
    floor = median(results.sqlite_floor)
    reference = bare + floor
    ratio = ours / reference
    print()
    print(
        f"SQLite alone: plain sqlite3 inserting the rows our sync stored, into an empty copy of "
        f"the schema with the store's settings (no decoding, conversion or row building): "
        f"{floor:.3f} s"
    )
    print(f"reference: bare paging + SQLite alone = {bare:.3f} + {floor:.3f} = {reference:.3f} s")
    print(
        f"target: ours <= {TARGET}x the reference: {ours:.3f} s is {ratio:.2f}x "
        f"{verdict(ratio <= TARGET)} (vs bare paging alone: {bare / ours:.2f}x of its rate)"
    )
    print(
        f"of our sync's {ours:.3f} s, the provider alone (HTTP, JSON, conversion) takes "
        f"{provider:.3f} s; the rest is the engine and the store"
    )
    print(
        "raw rounds (s): ours "
        + ", ".join(f"{v:.3f}" for v in results.ours)
        + "; provider only "
        + ", ".join(f"{v:.3f}" for v in results.provider)
        + "; bare "
        + ", ".join(f"{v:.3f}" for v in results.bare)
    )
    print("peak RSS ours: the sync child's own peak (VmHWM, max over rounds)")


def rows(results: Results) -> list[Row]:
    """The headline figures for the table of `python -m bench`, as `print_report` computes them."""
    ours, provider, bare = median(results.ours), median(results.provider), median(results.bare)
    floor = median(results.sqlite_floor)
    reference = bare + floor
    target, passed = at_most(ours / reference, TARGET)
    case = f"initial sync, {results.items} resources"
    headline: list[Row] = []
    if results.applied is not None:
        runs = results.applied.runs
        applied = median([r.seconds for r in runs])
        applied_bare = median(results.applied.reference)
        applied_reference = applied_bare + floor
        applied_target, applied_passed = at_most(applied / applied_reference, TARGET)
        headline.append(
            Row(
                benchmark="google_sync",
                case=f"{case}: kubectl apply -> Ready through `calsync run`",
                ours=applied,
                reference_name="bare paging + SQLite alone",
                reference=applied_reference,
                ratio=applied / applied_reference,
                target=applied_target,
                passed=applied_passed,
                extra={
                    "bare_paging_s": applied_bare,
                    "sqlite_alone_s": floor,
                    "events": results.stored.get("events"),
                    "rounds": ROUNDS,
                    "warmup_s": results.applied.warm,
                    "raw_bare_s": results.applied.reference,
                    **raw_extra(runs),
                },
            )
        )
    return [
        *headline,
        Row(
            benchmark="google_sync",
            case=f"{case}, engine in-process: sync + SQLite store",
            ours=ours,
            reference_name="bare paging + SQLite alone",
            reference=reference,
            ratio=ours / reference,
            target=target,
            passed=passed,
            extra={
                "bare_paging_s": bare,
                "sqlite_alone_s": floor,
                "provider_only_s": provider,
                "resources": results.items,
                "pages": results.pages,
                "events_per_s": results.items / ours,
                "peak_rss_mib": max(results.ours_rss) / MiB if results.ours_rss else None,
                "rounds": ROUNDS,
                "raw_ours_s": results.ours,
                "raw_bare_s": results.bare,
                "raw_sqlite_alone_s": results.sqlite_floor,
                "raw_provider_only_s": results.provider,
            },
        ),
        Row(
            benchmark="google_sync",
            case=f"{case}, engine in-process: sync + SQLite store, rate",
            ours=ours,
            reference_name="bare paging",
            reference=bare,
            ratio=bare / ours,
            ratio_is="our rate / the reference's rate",
        ),
        Row(
            benchmark="google_sync",
            case=f"{case}, engine in-process: provider only, nothing stored, rate",
            ours=provider,
            reference_name="bare paging",
            reference=bare,
            ratio=bare / provider,
            ratio_is="our rate / the reference's rate",
        ),
    ]


def run() -> list[Row]:
    results = measure()
    print_report(results)
    return rows(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.google_sync", description=__doc__)
    parser.add_argument("--profile", help="also profile one (untimed) sync of ours into FILE")
    parser.add_argument(
        "--no-apply",
        action="store_true",
        help="skip the headline (kubectl apply through `calsync run`): the engine in-process only",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--provider-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)
    results = measure(
        Path(args.profile).resolve() if args.profile else None, apply=not args.no_apply
    )
    print_report(results)
    if args.profile:
        print(f"cProfile of one extra sync of ours (not in the timings): {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
