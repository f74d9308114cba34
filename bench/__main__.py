"""Run every benchmark (or the ones named on the command line) and print their reports."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        module.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
