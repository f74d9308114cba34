"""Letting go of a next page requested ahead (`calsync.providers.rest.abandon_prefetch`)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from calsync.providers.rest import abandon_prefetch

pytestmark = pytest.mark.unit


async def test_a_running_request_is_cancelled_and_awaited() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    fetch = asyncio.ensure_future(slow())
    await started.wait()
    await abandon_prefetch(fetch)
    assert fetch.cancelled()


async def test_a_failed_request_is_not_reported_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def failing() -> None:
        raise RuntimeError("the next page failed")

    fetch = asyncio.ensure_future(failing())
    await asyncio.wait([fetch])
    await abandon_prefetch(fetch)
    del fetch
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert reported == []


async def test_a_finished_request_is_left_as_it_is() -> None:
    fetch = asyncio.ensure_future(asyncio.sleep(0, result="page"))
    await asyncio.wait([fetch])
    await abandon_prefetch(fetch)
    assert fetch.result() == "page"
