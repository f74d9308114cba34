"""`calsync simulate google|microsoft`: serve a provider simulator until interrupted.

The simulators live in `calsync.testing`, which no runtime module may import (an import
contract in pyproject.toml); the CLI may, and does so only when this command runs. This binds
one simulator to a socket, prints its base URL (tests and scripts read the first line) and stops
cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any


def _runner(provider: str) -> Callable[..., contextlib.AbstractAsyncContextManager[Any]]:
    if provider == "google":
        from calsync.testing.google import running as google_running

        return google_running
    from calsync.testing.microsoft import running as microsoft_running

    return microsoft_running


async def _serve(provider: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _runner(provider)(host=host, port=port) as running:
        print(running.url, flush=True)
        print(
            f"{provider} simulator listening; admin API at {running.url}/_admin/ "
            "(docs/simulators/); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()


def add_simulate_parser(sub: Any) -> None:
    sim = sub.add_parser(
        "simulate",
        help="run a provider simulator (Google Calendar API, Microsoft Graph) for tests",
        description="Serve a faithful in-memory simulator of a provider's API and OAuth "
        "endpoints on 127.0.0.1, with an admin API under /_admin/ (see docs/simulators/).",
    )
    sim.add_argument("provider", choices=["google", "microsoft"])
    sim.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sim.set_defaults(func=simulate)


def simulate(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(args.provider, args.host, args.port))
    except OSError as exc:
        print(f"calsync: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
