"""What 1,000 idle CalDAV connections cost: API requests per second, RSS, and one poll's cost.

Everything is real and local (see bench/_platform.py): the devcluster control plane with an
audit log that names each process, a throwaway PostgreSQL store, Radicale serving a few
calendars shared by the connections, `calsync operator` and `calsync worker` processes with the
shipped defaults (pollInterval 15 m).

1. Idle. `BENCH_IDLE_CONNECTIONS` connections are created and synced (the operator's first full
   job each), then after `BENCH_IDLE_SETTLE` seconds the API requests of the operator and the
   workers are counted over `BENCH_IDLE_WINDOW` seconds. No poll falls due in the window (the
   first falls due 15 minutes after a connection's first sync; the benchmark checks that the
   window ends before the earliest one). Requests are attributed from the API server's audit
   log (kube-apiserver's `apiserver_request_total` has no client label); the benchmark's own
   requests carry another identity and are left out. The reference is the target, <= 2
   requests/s. RSS (VmRSS) of each process at the end of the window. With `BENCH_IDLE_WORKERS`
   "1,3" a second window runs with three workers.
2. Poll cost. The operator is restarted (with `CALSYNC_SYNCJOB_HISTORY=BENCH_POLL_TTL`, which
   mattered while polls were SyncJobs), `BENCH_POLL_CONNECTIONS` connections get
   `pollInterval: 1m`, and after `BENCH_POLL_WARMUP` seconds every request of the operator and
   the workers is counted over `BENCH_POLL_WINDOW` seconds and divided by the polls the workers
   ran in that window (their `calsync_polls_total`: polls are asked for through the event
   store, not as SyncJobs, docs/decisions/0018). The background that does not depend on polls
   (the operator's Lease renewals, watch restarts) is left out of the per-poll figure. The
   steady-state rate at the default interval follows: requests per poll x connections / 900 s,
   plus the idle rate.

`make bench BENCH=idle_cost`; sizes: BENCH_IDLE_CONNECTIONS (1000), BENCH_IDLE_WINDOW (120),
BENCH_IDLE_SETTLE (30), BENCH_IDLE_WORKERS ("1"), BENCH_POLL_CONNECTIONS (100),
BENCH_POLL_WARMUP (120), BENCH_POLL_WINDOW (180), BENCH_POLL_TTL (60), BENCH_CALENDARS (5),
BENCH_EVENTS (20).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request
from collections import Counter
from typing import Any

from bench._platform import (
    OPERATOR_USER,
    Platform,
    bounded,
    breakdown,
    breakdown_rows,
    create_connections,
    env_float,
    env_int,
    env_ints,
    is_calsync,
    load_average,
    say,
    wait_synced,
)
from bench._results import Row

NAMESPACE = "bench"
DEFAULT_POLL = 900.0
TARGET_RATE = 2.0


def _earliest_sync(bodies: list[dict[str, Any]]) -> float:
    stamps = [
        dt.datetime.fromisoformat(str(b["status"]["lastAttemptTime"]).replace("Z", "+00:00"))
        for b in bodies
        if (b.get("status") or {}).get("lastAttemptTime")
    ]
    return min(stamps).timestamp() if stamps else time.time()


async def _connections(client: Any) -> list[dict[str, Any]]:
    from calsync.controllers.kube import CalendarConnectionResource

    return [
        obj.to_dict() async for obj in client.list(CalendarConnectionResource, namespace=NAMESPACE)
    ]


def _polls_run(platform: Platform) -> int:
    """Polls the workers ran so far, from their `calsync_polls_total` (polls are not SyncJobs,
    docs/decisions/0018, so the audit log cannot count them)."""
    total = 0.0
    for component in platform.components:
        url = f"http://127.0.0.1:{component.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("calsync_polls_total{")
        )
    return round(total)


async def window(platform: Platform, seconds: float, label: str) -> dict[str, Any]:
    polls_before = await asyncio.to_thread(_polls_run, platform)
    cpu_before = {c.user: c.cpu_seconds() for c in platform.components}
    load_before = load_average()
    start = time.time()
    say(f"{label}: counting requests for {seconds:.0f} s")
    await asyncio.sleep(seconds)
    end = time.time()
    polls = await asyncio.to_thread(_polls_run, platform) - polls_before
    platform.check()
    assert platform.audit is not None
    requests = platform.audit.between(start, end, is_calsync)
    return {
        "label": label,
        "start": start,
        "end": end,
        "seconds": end - start,
        "requests": requests,
        "rate": len(requests) / (end - start),
        "polls": polls,
        "rss": {c.user: c.rss_bytes() for c in platform.components},
        "hwm": {c.user: c.rss_bytes("VmHWM") for c in platform.components},
        "cpu": {c.user: c.cpu_seconds() - cpu_before.get(c.user, 0.0) for c in platform.components},
        "load": f"{load_before} -> {load_average()}",
    }


async def measure(platform: Platform, sizes: dict[str, Any]) -> dict[str, Any]:
    client = platform.client()
    operator = platform.start_operator()
    platform.start_worker(1)
    n = sizes["connections"]
    say(f"operator and worker 1 running; creating {n} connections")
    created = time.monotonic()
    names = await create_connections(client, NAMESPACE, n, platform.calendar_urls)
    setup = await wait_synced(platform, client, NAMESPACE, n, limit=max(1800.0, n * 2.0))
    say(f"{n} connections synced {time.monotonic() - created:.0f} s after the first create")
    first_due = _earliest_sync(await _connections(client)) + DEFAULT_POLL
    await asyncio.sleep(sizes["settle"])
    idle = []
    running = 1
    for workers in sizes["workers"]:
        while running < workers:
            running += 1
            platform.start_worker(running)
        if workers > 1:
            await asyncio.sleep(sizes["settle"])
        result = await window(platform, sizes["window"], f"idle, {workers} worker(s)")
        result["workers"] = workers
        result["before_first_due"] = first_due - result["end"]
        say(f"{result['label']}: {result['rate']:.3f} requests/s")
        idle.append(result)

    # Phase 2: the cost of one poll.
    platform.stop(operator)
    restarted = time.time()
    operator = platform.start_operator({"CALSYNC_SYNCJOB_HISTORY": str(sizes["poll_ttl"])})
    await asyncio.sleep(sizes["settle"])
    assert platform.audit is not None
    restart_requests = platform.audit.between(restarted, time.time(), lambda u: u == OPERATOR_USER)
    say(f"operator restarted: {len(restart_requests)} requests in {sizes['settle']:.0f} s")
    from lightkube.types import PatchType

    from calsync.controllers.kube import CalendarConnectionResource

    polled = names[: sizes["poll_connections"]]
    await bounded(
        20,
        (
            client.patch(
                CalendarConnectionResource,
                name,
                {"spec": {"sync": {"pollInterval": "1m"}}},
                namespace=NAMESPACE,
                patch_type=PatchType.MERGE,
            )
            for name in polled
        ),
    )
    say(f"{len(polled)} connections now poll every minute; warming up {sizes['poll_warmup']:.0f} s")
    await asyncio.sleep(sizes["poll_warmup"])
    poll = await window(platform, sizes["poll_window"], f"polling, {running} worker(s)")
    poll["deletes"] = sum(
        1 for r in poll["requests"] if r.verb == "delete" and r.resource == "syncjobs"
    )
    # Background that runs whether or not anything polls: the Lease and the watches.
    baseline = sum(1 for r in poll["requests"] if r.resource == "leases" or r.verb == "watch")
    poll["baseline"] = baseline
    polls = max(1, poll["polls"])
    poll["per_poll_raw"] = len(poll["requests"]) / polls
    poll["per_poll"] = (len(poll["requests"]) - baseline) / polls
    await client.close()
    return {
        "idle": idle,
        "poll": poll,
        "setup": setup,
        "restart": restart_requests,
        "poll_connections": len(polled),
    }


def report(sizes: dict[str, Any], out: dict[str, Any]) -> None:
    n = sizes["connections"]
    print(
        f"\n{n} synced CalDAV connections ({sizes['calendars']} Radicale calendars of "
        f"{sizes['events']} events), default pollInterval 15 m, PostgreSQL store, `calsync "
        "operator` + `calsync worker` processes with shipped defaults; requests counted from "
        "the API server's audit log (one identity per process, the benchmark's own excluded)."
    )
    print(
        "\n| case | requests/s (operator + workers) | target | operator RSS | worker RSS "
        "| CPU s in window | polls in window |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in out["idle"]:
        workers_rss = [b for u, b in sorted(r["rss"].items()) if u != OPERATOR_USER]
        print(
            f"| idle, {n} connections, {r['workers']} worker(s), {r['seconds']:.0f} s "
            f"| {r['rate']:.3f} ({len(r['requests'])} requests) "
            f"| <= {TARGET_RATE:g}/s: {'PASS' if r['rate'] <= TARGET_RATE else 'MISS'} "
            f"| {r['rss'].get(OPERATOR_USER, 0) / 2**20:.0f} MiB "
            f"(peak {r['hwm'].get(OPERATOR_USER, 0) / 2**20:.0f}) "
            f"| {', '.join(f'{b / 2**20:.0f} MiB' for b in workers_rss)} "
            f"| {', '.join(f'{s:.1f}' for _, s in sorted(r['cpu'].items()))} "
            f"| {r['polls']} |"
        )
    poll = out["poll"]
    idle_rate = out["idle"][-1]["rate"]
    steady = poll["per_poll"] * n / DEFAULT_POLL + idle_rate
    print(
        f"| polling, {out['poll_connections']} connections at 1 m, {poll['seconds']:.0f} s "
        f"| {poll['rate']:.3f} ({len(poll['requests'])} requests, {poll['polls']} polls, "
        f"{poll['deletes']} TTL deletes) | | | | "
        f"{', '.join(f'{s:.1f}' for _, s in sorted(poll['cpu'].items()))} | {poll['polls']} |"
    )
    print(
        f"| **one poll** | {poll['per_poll']:.2f} requests/poll ({poll['per_poll_raw']:.2f} "
        f"with the {poll['baseline']} Lease and watch requests of the window) | | | | | |"
    )
    print(
        f"| **steady state at 15 m, {n} connections** | {steady:.3f} requests/s "
        f"({poll['per_poll']:.2f} x {n} / {DEFAULT_POLL:.0f} s + idle {idle_rate:.3f}) "
        f"| <= {TARGET_RATE:g}/s: {'PASS' if steady <= TARGET_RATE else 'MISS'} | | | | |"
    )
    print(f"\nset-up: {n} connections synced in {out['setup']:.0f} s (first full sync each)")
    for r in out["idle"]:
        margin = r["before_first_due"]
        print(
            f"{r['label']}: window ended {margin:.0f} s before the first poll fell due"
            + ("" if margin > 0 else " (NOT idle: polls fell due)")
            + f"; load average {r['load']}"
        )
        print(f"\n| who | verb | resource | requests | rate ({r['label']}) |")
        print("|---|---|---|---|---|")
        for row in breakdown_rows(breakdown(r["requests"]), r["seconds"], "/s"):
            print(row)
    print(f"\n| who | verb | resource | requests | per poll ({poll['polls']} polls) |")
    print("|---|---|---|---|---|")
    for row in breakdown_rows(breakdown(poll["requests"]), max(1, poll["polls"]), "/poll"):
        print(row)
    restart = Counter((r.verb, r.resource) for r in out["restart"])
    print(
        f"\noperator restart at {n} connections: {len(out['restart'])} requests in its first "
        f"{sizes['settle']:.0f} s ("
        + ", ".join(f"{v} {res} {c}" for (v, res), c in sorted(restart.items()))
        + ")"
    )
    errors = Counter(
        (r.user, r.verb, r.resource, r.code)
        for phase in [*out["idle"], poll]
        for r in phase["requests"]
        if r.code >= 400
    )
    if errors:
        print(
            "requests answered with an error: "
            + ", ".join(f"{u} {v} {res} {code}: {c}" for (u, v, res, code), c in errors.items())
        )


def rows(sizes: dict[str, Any], out: dict[str, Any]) -> list[Row]:
    """The idle rates and the steady state at 15 m, as `report` computes them, for the table."""
    n = sizes["connections"]
    found = []
    budget = "the budget (issue 9)"
    for r in out["idle"]:
        found.append(
            Row(
                benchmark="idle_cost",
                case=f"idle, {n} connections, {r['workers']} worker(s): API requests/s",
                ours=r["rate"],
                reference_name=budget,
                reference=TARGET_RATE,
                ratio=r["rate"] / TARGET_RATE,
                target=f"<= {TARGET_RATE:g}/s",
                passed=r["rate"] <= TARGET_RATE,
                unit="/s",
                ratio_is="ours / the budget",
                extra={
                    "requests": len(r["requests"]),
                    "window_s": r["seconds"],
                    "polls_in_window": r["polls"],
                    "window_ended_before_first_poll_s": r["before_first_due"],
                    "rss_mib": {u: b / 2**20 for u, b in sorted(r["rss"].items())},
                    "peak_rss_mib": {u: b / 2**20 for u, b in sorted(r["hwm"].items())},
                    "cpu_s": dict(sorted(r["cpu"].items())),
                },
            )
        )
    poll = out["poll"]
    idle_rate = out["idle"][-1]["rate"]
    steady = poll["per_poll"] * n / DEFAULT_POLL + idle_rate
    found.append(
        Row(
            benchmark="idle_cost",
            case=f"steady state at pollInterval 15 m, {n} connections: API requests/s",
            ours=steady,
            reference_name=budget,
            reference=TARGET_RATE,
            ratio=steady / TARGET_RATE,
            target=f"<= {TARGET_RATE:g}/s",
            passed=steady <= TARGET_RATE,
            unit="/s",
            ratio_is="ours / the budget",
            extra={
                "requests_per_poll": poll["per_poll"],
                "requests_per_poll_with_background": poll["per_poll_raw"],
                "polls_in_window": poll["polls"],
                "poll_connections": out["poll_connections"],
                "idle_rate": idle_rate,
            },
        )
    )
    return found


def run() -> list[Row]:
    sizes: dict[str, Any] = {
        "connections": env_int("BENCH_IDLE_CONNECTIONS", 1000),
        "window": env_float("BENCH_IDLE_WINDOW", 120.0),
        "settle": env_float("BENCH_IDLE_SETTLE", 30.0),
        "workers": env_ints("BENCH_IDLE_WORKERS", (1,)),
        "poll_connections": env_int("BENCH_POLL_CONNECTIONS", 100),
        "poll_warmup": env_float("BENCH_POLL_WARMUP", 120.0),
        "poll_window": env_float("BENCH_POLL_WINDOW", 180.0),
        "poll_ttl": env_int("BENCH_POLL_TTL", 60),
        "calendars": env_int("BENCH_CALENDARS", 5),
        "events": env_int("BENCH_EVENTS", 20),
    }
    with Platform(
        "bench-idle",
        workers=max(sizes["workers"]),
        calendars=sizes["calendars"],
        events=sizes["events"],
    ) as platform:
        out = asyncio.run(measure(platform, sizes))
    report(sizes, out)
    return rows(sizes, out)


if __name__ == "__main__":
    run()
