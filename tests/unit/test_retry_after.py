"""One Retry-After parser: the JSON providers' HTTP layer and the CalDAV provider read the
header the same way (they had a copy each, which disagreed on fractions, exponents, infinity,
non-ASCII digits and absurdly long waits)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from calsync.providers.base import RateLimited
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.rest import default_error
from calsync.providers.retry_after import MAX_RETRY_AFTER, parse_retry_after

pytestmark = pytest.mark.unit

SERVER = "https://93.184.215.14/dav/"

CASES = [
    ("120", 120.0),
    (" 7 ", 7.0),
    ("1.5", 1.5),  # Graph and the simulators send fractions
    ("0", 0.0),
    ("inf", None),
    ("nan", None),
    ("1e3", None),
    ("-3", None),
    ("\u00b2", None),  # a "digit" to str.isdigit, not to float
    ("\u0661\u0662", None),  # Arabic-Indic digits
    ("99999999999999999999", MAX_RETRY_AFTER),
    ("soon", None),
    ("", None),
]


def json_wait(header: str) -> float | None:
    error = default_error(httpx.Response(429, headers={"Retry-After": header.encode()}))
    assert isinstance(error, RateLimited)
    return error.retry_after


async def caldav_wait(header: str) -> float | None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": header.encode()})

    async with CalDAVProvider(
        SERVER, "alice", "s3cret", transport=httpx.MockTransport(answer)
    ) as dav:
        with pytest.raises(RateLimited) as info:
            await dav.list_calendars()
    return info.value.retry_after


@pytest.mark.parametrize(("header", "expected"), CASES)
async def test_both_provider_families_read_retry_after_alike(
    header: str, expected: float | None
) -> None:
    assert parse_retry_after(header) == expected
    assert json_wait(header) == expected
    assert await caldav_wait(header) == expected


async def test_http_dates_are_read_alike_and_capped() -> None:
    soon = email.utils.formatdate(time.time() + 600, usegmt=True)
    for wait in (json_wait(soon), await caldav_wait(soon)):
        assert wait is not None and 590 <= wait <= 600
    far = "Wed, 21 Oct 2099 07:28:00 GMT"
    assert json_wait(far) == await caldav_wait(far) == MAX_RETRY_AFTER
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert json_wait(past) == await caldav_wait(past) == 0.0


def test_a_date_without_a_zone_is_utc_not_local_time() -> None:
    # "-0000" is RFC 5322's "no zone information": read as UTC whatever the host's zone is.
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 -0000", now=1445412480.0) == 10.0
