"""Run every benchmark (or the ones named on the command line) and print their reports.

Each benchmark prints its own detailed report as it goes and returns its headline figures as
`bench._results.Row`s. At the end, one markdown table of every row is printed and the same rows
are written as JSON (`--json PATH`, default bench-results.json in the current folder) with the
machine and the commit they were measured on. A benchmark that raises is recorded as an error
row and the others still run; the exit status is then 1. A missed target is a figure, not an
error: it shows in the table and the JSON, and the exit status stays 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench._platform import load_average
from bench._results import Row, document, error_row, table
from bench._util import settle

BENCHMARKS = (
    "devcluster_up",
    "store_apply",
    "ical_extract",
    "query_bounds",
    "caldav_sync",
    "google_sync",
    "microsoft_sync",
    "syncjob_throughput",
    "idle_cost",
    "webhook_throughput",
)
DEFAULT_JSON = "bench-results.json"
ROOT = Path(__file__).resolve().parents[1]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_facts() -> dict[str, Any]:
    """The commit the run measured (None outside a git checkout) and whether tracked files
    differed from it."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if head else None
    return {"commit": head, "dirty": bool(status) if status is not None else None}


def machine_facts() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def run_one(name: str) -> tuple[list[Row], dict[str, Any]]:
    """Run one benchmark: its rows (or one error row) and what to record of the run itself."""
    waited, idle = settle()
    if idle is not None:
        print(f"(machine {idle:.0%} idle after {waited:.0f} s of waiting)", flush=True)
    record: dict[str, Any] = {
        "name": name,
        "settled_s": round(waited, 1),
        "idle_before": idle,
        "load_average_before": load_average(),
    }
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        returned = module.run()
    except Exception as exc:
        traceback.print_exc()
        rows = [error_row(name, exc)]
        record["error"] = rows[0].error
    else:
        rows = list(returned or [])
        if not rows:
            print(f"(bench.{name} returned no rows for the table)", file=sys.stderr)
    record["seconds"] = time.perf_counter() - started
    record["load_average_after"] = load_average()
    record["rows"] = len(rows)
    return rows, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=DEFAULT_JSON,
        help=f"write the rows, the machine and the commit here (default: ./{DEFAULT_JSON})",
    )
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)
    started = _now()
    rows: list[Row] = []
    runs: list[dict[str, Any]] = []
    try:
        for name in names:
            print(f"== {name}", flush=True)
            found, record = run_one(name)
            rows += found
            runs.append(record)
    finally:  # an interrupted run still leaves the rows it has
        data = document(
            rows,
            runs=runs,
            machine=machine_facts(),
            git=git_facts(),
            started=started,
            finished=_now(),
        )
        path = Path(args.json)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print()
        print(table(rows))
        summary = data["summary"]
        print(
            f"\n{summary['rows']} rows: {summary['passed']} pass, {summary['missed']} miss, "
            f"{summary['errors']} error(s); written to {path}",
            flush=True,
        )
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
