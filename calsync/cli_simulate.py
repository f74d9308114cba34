"""`calsync simulate google|microsoft`: serve a provider simulator until interrupted.

The simulators live in `calsync.testing`; this only binds one to a socket, prints its base URL
(tests and scripts read the first line) and stops cleanly on Ctrl-C or SIGTERM.
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


def simulate(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(args.provider, args.host, args.port))
    except OSError as exc:
        print(f"calsync: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
