"""Microsoft Graph initial sync of 10,000 events from the simulator, beside bare delta paging.

The Graph simulator runs in a child process of its own (its CPU does not count on our side),
loaded with 10,000 events generated deterministically: single events in four time zones,
all-day events, and every tenth a daily, weekly or monthly series (some with a moved and a
cancelled occurrence), which a calendar-view delta returns as one item per instance. Two ways
of reading the same delta round are measured, interleaved round by round (order rotated),
three rounds each, medians reported:

- ours: `SyncEngine.sync_connection` with a `MicrosoftProvider` into an empty SQLite store, in
  a child process of its own, timed inside the child around the sync call (list calendars,
  every delta page, conversion, store commits); its peak RSS is the child's own (VmHWM).
- bare: a plain httpx client in a child process that pages the same delta (same window, same
  `Prefer: odata.maxpagesize`, same time zone preference) and decodes every page's JSON: the
  floor for any Graph client.

Rates are instances per second (the items a round delivers). Target: ours >= 0.5x bare.

`python -m bench microsoft_sync` runs it; `python -m bench.microsoft_sync --profile FILE`
writes a pyinstrument profile of one of our syncs (install pyinstrument ad hoc).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._apply import (
    APPLY_POLL,
    ApplyPath,
    Interleaved,
    interleaved,
    oauth_manifest,
    print_rounds,
    raw_extra,
)
from bench._results import Row, at_least
from bench._util import MiB, median, peak_rss_bytes, rotate, verdict

COUNT = 10_000
SEED = 1
ROUNDS = 3
BATCH_SIZE = 500  # the engine's store transactions in-process
GRAPH_PAGE = 1000  # what our provider asks of Graph, and so the bare client too
PAST_DAYS, FUTURE_DAYS = 365, 730
CONNECTION = "bench"
TARGET = 0.5
TOOLS = ("ours", "bare")
GRAPH_SCOPE = "offline_access https://graph.microsoft.com/Calendars.Read"
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret"  # the simulator's throwaway app
ROOT = Path(__file__).resolve().parents[1]


# -- the simulator, in a child process ------------------------------------------------------------


async def _serve(count: int) -> None:
    from calsync.testing.microsoft import running

    async with running() as graph:
        sim = graph.sim
        user = sim.add_user("bench@example.com", "Bench")
        sim.identity.add_client(CLIENT_ID, CLIENT_SECRET, ["http://127.0.0.1/cb"])
        token = sim.identity.issue(user.id, "bench", "Calendars.Read")
        # What consent gives a user of `calsync run`: a refresh token (Graph keeps an old one
        # working after a refresh, so one serves every round of the headline).
        consent = sim.identity.issue(user.id, "bench", GRAPH_SCOPE)
        sim.identity.settings.access_token_lifetime = 86400
        made = sim.generate_events(user.id, None, count, seed=SEED)
        now = sim.clock.now()
        window = (now - dt.timedelta(days=PAST_DAYS), now + dt.timedelta(days=FUTURE_DAYS))
        instances = len(sim.view(user.id, None, *window))
        print(
            json.dumps(
                {
                    "url": graph.url,
                    "token": token["access_token"],
                    "refresh_token": consent["refresh_token"],
                    "address": "bench@example.com",
                    "calendar": user.default_calendar,
                    "generated": made,
                    "instances": instances,
                    "window": [w.isoformat() for w in window],
                }
            ),
            flush=True,
        )
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class Simulator:
    def __init__(self, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.microsoft_sync", "--serve", "--count", str(count)],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the Graph simulator did not start")
        self.info: dict[str, Any] = json.loads(line)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the two clients, each in a child process -----------------------------------------------------


async def _ours(info: dict[str, Any], store_url: str, profile: str | None) -> dict[str, Any]:
    from calsync.model import Window
    from calsync.providers.microsoft import MicrosoftProvider
    from calsync.providers.oauth import StaticTokens
    from calsync.store import EventStore
    from calsync.sync.engine import SyncEngine

    start, end = (dt.datetime.fromisoformat(w) for w in info["window"])
    store = await EventStore.open(store_url)
    provider = MicrosoftProvider(info["url"], StaticTokens(info["token"]), timeout=120)
    profiler: Any = None
    profile_text = ""
    try:
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
        started = time.perf_counter()
        result = await SyncEngine(store, batch_size=BATCH_SIZE).sync_connection(
            CONNECTION, provider, window=Window(start, end)
        )
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            profile_text = profiler.output_text(unicode=True, show_all=False)
        return {
            "seconds": seconds,
            "items": result.fetched,
            "stored": await store.count_events(CONNECTION),
            "pages": sum(c.pages for c in result.calendars),
            "requests": provider.api.requests,
            "skipped": len(result.skipped),
            "duplicates": len(result.duplicates),
            "peak_rss": peak_rss_bytes(),
            "profile_text": profile_text,
        }
    finally:
        await provider.aclose()
        await store.close()


async def _bare(info: dict[str, Any]) -> dict[str, Any]:
    import httpx

    start, end = (dt.datetime.fromisoformat(w) for w in info["window"])
    headers = {
        "Authorization": f"Bearer {info['token']}",
        "Prefer": f'odata.maxpagesize={GRAPH_PAGE}, outlook.timezone="UTC"',
    }
    url: str | None = f"{info['url']}/v1.0/me/calendars/{info['calendar']}/calendarView/delta"
    params: dict[str, str] | None = {
        "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    items = pages = 0
    async with httpx.AsyncClient(headers=headers, timeout=120) as client:
        started = time.perf_counter()
        while url is not None:
            response = await client.get(url, params=params)
            response.raise_for_status()
            body = response.json()
            items += len(body["value"])
            pages += 1
            url, params = body.get("@odata.nextLink"), None
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "items": items, "pages": pages, "peak_rss": peak_rss_bytes()}


def _env() -> dict[str, str]:
    extra = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), extra]))}


def _child(
    tool: str, info: dict[str, Any], store: Path | None, profile: Path | None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.microsoft_sync", "--child", tool]
    if store is not None:
        command += ["--store", f"sqlite+aiosqlite:///{store}"]
    if profile is not None:
        command += ["--profile", str(profile)]
    done = subprocess.run(
        command, cwd=ROOT, env=_env(), input=json.dumps(info), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


# -- the headline: kubectl apply through `calsync run` ------------------------------------------


def apply_path(info: dict[str, Any], root: Path, rounds: int) -> Interleaved:
    """`kubectl apply` of a Microsoft connection until Ready through one `calsync run` on the
    shipped defaults (pointed at the simulator), interleaved with bare delta paging; one
    untimed warm-up round first."""

    def manifest(namespace: str) -> str:
        client = (CLIENT_ID, CLIENT_SECRET)
        return oauth_manifest(
            namespace, "microsoft", info["address"], client, info["refresh_token"]
        )

    def bare() -> float:
        return float(_child("bare", info, None, None)["seconds"])

    env = {"CALSYNC_MICROSOFT_GRAPH_URL": info["url"], "CALSYNC_MICROSOFT_LOGIN_URL": info["url"]}
    path = ApplyPath(root / "apply", "microsoft", manifest, None, env)
    return interleaved(path, rounds, bare)


def _apply_row(applied: Interleaved, items: int, stored: int) -> Row:
    ours, bare = median([r.seconds for r in applied.runs]), median(applied.reference)
    ratio = bare / ours
    counts = sorted({r.events for r in applied.runs})
    print(
        "headline, the initial sync as users run it: `kubectl apply` of a Namespace, the app's "
        "and the refresh token's Secrets and a microsoft CalendarConnection, until it reads "
        "Ready, through one `calsync run` on the shipped defaults (SQLite store, pointed at the "
        f"simulator); the connection read every {APPLY_POLL * 1000:.0f} ms (plus one GET's "
        f"time); {len(applied.runs)} rounds interleaved with bare delta paging, one untimed "
        f"warm-up ({applied.warm:.2f} s); each round's namespace deleted before the next"
    )
    print(
        f"ours {ours:.3f} s, bare delta paging {bare:.3f} s: our rate {ratio:.2f}x of bare; "
        f"target >= {TARGET}x {verdict(ratio >= TARGET)}; status.eventCount {counts} "
        f"(the in-process sync stored {stored} events)"
    )
    print(
        "rounds: ours "
        + ", ".join(f"{r.seconds:.3f}" for r in applied.runs)
        + "; bare "
        + ", ".join(f"{v:.3f}" for v in applied.reference)
    )
    print_rounds(applied.runs)
    print()
    # The connection's window is "now" when it syncs, the simulator's a few seconds earlier:
    # an occurrence or two may fall in or out at the edges, nothing more.
    if any(abs(r.events - stored) > max(2, stored // 1000) for r in applied.runs):
        raise RuntimeError(f"the connection stored {counts} events, the in-process sync {stored}")
    target, passed = at_least(ratio, TARGET)
    return Row(
        benchmark="microsoft_sync",
        case=f"initial sync, {items} calendar-view instances: kubectl apply -> Ready through "
        "`calsync run`, rate",
        ours=ours,
        reference_name="bare delta paging",
        reference=bare,
        ratio=ratio,
        target=target,
        passed=passed,
        ratio_is="our rate / the reference's rate",
        extra={
            "events": counts,
            "rounds": len(applied.runs),
            "warmup_s": applied.warm,
            "raw_bare_s": applied.reference,
            **raw_extra(applied.runs),
        },
    )


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


def bench(
    count: int = COUNT, rounds: int = ROUNDS, profile: Path | None = None, apply: bool = True
) -> list[Row]:
    started = time.perf_counter()
    simulator = Simulator(count)
    load_seconds = time.perf_counter() - started
    info = simulator.info
    measured = {tool: Measured() for tool in TOOLS}
    try:
        with tempfile.TemporaryDirectory(prefix="calsync-bench-graph-") as folder:
            for round_ in range(rounds):
                for tool in rotate(TOOLS, round_):
                    store = Path(folder) / f"store-{round_}.db" if tool == "ours" else None
                    want_profile = profile if tool == "ours" and round_ == rounds - 1 else None
                    data = _child(tool, info, store, want_profile)
                    if data["items"] != info["instances"]:
                        raise RuntimeError(
                            f"{tool} read {data['items']} items, the view holds {info['instances']}"
                        )
                    measured[tool].seconds.append(float(data["seconds"]))
                    measured[tool].rss.append(int(data["peak_rss"]))
                    measured[tool].last = data
            applied = apply_path(info, Path(folder), rounds) if apply else None
    finally:
        simulator.stop()
    ours, bare = (median(measured[t].seconds) for t in TOOLS)
    items = info["instances"]
    ratio = float(bare / ours)
    generated = info["generated"]
    print(
        f"simulator: {generated['events']} events ({generated['series']} series, "
        f"{generated['exceptions']} moved and {generated['cancelled']} cancelled occurrences) "
        f"= {items} calendar-view instances in the window; loaded in {load_seconds:.1f} s"
    )
    print()
    headline = (
        [] if applied is None else [_apply_row(applied, items, measured["ours"].last["stored"])]
    )
    print(
        f"in-process detail (not the path users run): Graph pages of {GRAPH_PAGE}, store "
        f"transactions of {BATCH_SIZE}, median of "
        f"{rounds} rounds, interleaved (order rotated)"
    )
    print()
    print(f"{'':8} {'seconds':>9} {'items/s':>10} {'peak RSS':>10}")
    for tool in TOOLS:
        seconds = median(measured[tool].seconds)
        rss = max(measured[tool].rss) / MiB
        print(f"{tool:8} {seconds:9.3f} {items / seconds:10.0f} {rss:8.1f} MiB")
    print()
    ok = ratio >= TARGET
    last = measured["ours"].last
    print(f"ours / bare: {ratio:.2f}x (target >= {TARGET}x) {verdict(ok)}")
    print(
        f"ours: {last['pages']} pages, {last['requests']} requests, {last['stored']} events "
        f"stored, {last['skipped']} skipped, {last['duplicates']} duplicate UIDs"
    )
    print("raw rounds (s): " + "; ".join(f"{t} {measured[t].seconds}" for t in TOOLS))
    if profile is not None:
        print(f"pyinstrument profile of our last round in {profile}")
    target, passed = at_least(ratio, TARGET)
    return [
        *headline,
        Row(
            benchmark="microsoft_sync",
            case=f"initial sync, {items} calendar-view instances, engine in-process: sync + "
            "SQLite store, rate",
            ours=ours,
            reference_name="bare delta paging",
            reference=bare,
            ratio=ratio,
            target=target,
            passed=passed,
            ratio_is="our rate / the reference's rate",
            extra={
                "instances": items,
                "events_per_s": items / ours,
                "bare_events_per_s": items / bare,
                "peak_rss_mib": max(measured["ours"].rss) / MiB,
                "pages": last.get("pages"),
                "requests": last.get("requests"),
                "rounds": rounds,
                "raw_ours_s": measured["ours"].seconds,
                "raw_bare_s": measured["bare"].seconds,
            },
        ),
    ]


def run() -> list[Row]:
    return bench()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.microsoft_sync", description=__doc__)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of ours here")
    parser.add_argument(
        "--no-apply",
        action="store_true",
        help="skip the headline (kubectl apply through `calsync run`): the engine in-process only",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.count))
        return 0
    if args.child:
        info = json.loads(sys.stdin.read())
        if args.child == "ours":
            profile = str(args.profile) if args.profile else None
            outcome = asyncio.run(_ours(info, args.store, profile))
            text = outcome.pop("profile_text")
            if args.profile:
                args.profile.write_text(text)
        else:
            outcome = asyncio.run(_bare(info))
        print(json.dumps(outcome), flush=True)
        return 0
    bench(args.count, args.rounds, args.profile, apply=not args.no_apply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
