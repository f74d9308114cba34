"""CalendarConnection admission messages as a new user meets them: each mistake gets one
message that names the field and says what is wrong, in Python exactly as at the API server
(tests/e2e/test_crds.py checks the API server's side)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec, parse_duration
from calsync.api.connection import (
    _POLL_INTERVAL_BOUNDED,
    MSG_INSECURE_URL,
    MSG_POLL_INTERVAL_FORMAT,
    MSG_POLL_INTERVAL_MAX,
    MSG_POLL_INTERVAL_MIN,
    MSG_URL_MALFORMED,
)
from calsync.api.duration import DURATION_PATTERN

pytestmark = pytest.mark.unit

GO_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
ONE_DAY = 86400.0


def caldav(url: str, *, insecure: bool | None = None, **spec: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"url": url, "credentialsSecretRef": {"name": "s"}}
    if insecure is not None:
        block["allowInsecureHTTP"] = insecure
    return {"provider": "caldav", "caldav": block, **spec}


def problems(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        CalendarConnectionSpec.model_validate(spec)
    return str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "htp://127.0.0.1:5232/",
        "127.0.0.1:5232/demo/",
        "localhost:5232",
        "http://",
        "https:///calendars/",
        "http://exa mple.com/",
        "http://dav.example.com:port/",
        "ftp://dav.example.com/",
    ],
)
def test_a_malformed_url_is_blamed_on_the_url_not_on_allow_insecure_http(url: str) -> None:
    message = problems(caldav(url, insecure=True))
    assert MSG_URL_MALFORMED in message
    assert "allowInsecureHTTP" not in message.replace(MSG_URL_MALFORMED, "")


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("https://dav.example.com/", None),
        ("HTTPS://Dav.Example.com/", None),
        ("http://127.0.0.1:5232/demo/", True),
        ("http://[::1]:5232/", True),
        ("https://dav.example.com/a path/", None),
    ],
)
def test_usable_urls_are_accepted(url: str, insecure: bool | None) -> None:
    CalendarConnectionSpec.model_validate(caldav(url, insecure=insecure))


def test_plain_http_without_the_opt_in_gets_the_https_message_only() -> None:
    message = problems(caldav("http://dav.example.com/"))
    assert MSG_INSECURE_URL in message
    assert MSG_URL_MALFORMED not in message


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("15 minutes", MSG_POLL_INTERVAL_FORMAT),
        ("1h30", MSG_POLL_INTERVAL_FORMAT),
        ("-5m", MSG_POLL_INTERVAL_FORMAT),
        ("", MSG_POLL_INTERVAL_FORMAT),
        ("PT15M", MSG_POLL_INTERVAL_FORMAT),
        ("30s", MSG_POLL_INTERVAL_MIN),
        ("59999ms", MSG_POLL_INTERVAL_MIN),
        ("24h1s", MSG_POLL_INTERVAL_MAX),
        ("25h", MSG_POLL_INTERVAL_MAX),
        ("999999h", MSG_POLL_INTERVAL_MAX),
        ("99999999999999999999h", MSG_POLL_INTERVAL_MAX),
    ],
)
def test_poll_interval_messages(interval: str, expected: str) -> None:
    message = problems(caldav("https://dav.example.com/", sync={"pollInterval": interval}))
    assert expected in message
    assert "should match pattern" not in message


@pytest.mark.parametrize("interval", ["1m", "60s", "15m", "1h30m", "1.5h", "24h", "1440m", "0024h"])
def test_poll_intervals_from_one_minute_to_a_day_are_accepted(interval: str) -> None:
    spec = CalendarConnectionSpec.model_validate(
        caldav("https://dav.example.com/", sync={"pollInterval": interval})
    )
    assert 60 <= spec.sync.poll_interval_seconds <= ONE_DAY


def random_durations(count: int) -> list[str]:
    rng = random.Random(20260)
    units = ["h", "m", "s", "ms", "us", "ns"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 4)):
            digits = rng.randint(1, 16)
            number = "0" * rng.choice([0, 0, 0, 3]) + str(
                rng.randrange(10 ** (digits - 1), 10**digits)
            )
            if rng.random() < 0.2:
                number += "." + str(rng.randrange(1000))
            parts.append(number + rng.choice(units))
        out.append("".join(parts))
    return out


EDGES = [
    "99h", "100h", "9999m", "10000m", "99999s", "100000s", "99999999ms", "100000000ms",
    "99999999999us", "100000000000us", "99999999999999ns", "100000000000000ns", "000000099h",
    "99.999999999h", "24h", "1m", "9" * 60 + "h",
]  # fmt: skip


def test_the_bounded_pattern_keeps_cel_conversions_safe_and_the_cap_exact() -> None:
    """The CRD's range rules call ``duration()`` only on strings matching the bounded pattern,
    and call anything that is a duration but not bounded too long. Both need: bounded implies
    Go can convert it; a duration that is not bounded is more than 24h."""
    checked = 0
    for text in EDGES + random_durations(5000):
        if len(text) > 64 or not re.fullmatch(DURATION_PATTERN, text):
            continue
        seconds = parse_duration(text)
        if re.fullmatch(_POLL_INTERVAL_BOUNDED, text):
            assert seconds < GO_MAX_DURATION_SECONDS, text
        else:
            assert seconds > ONE_DAY, text
        checked += 1
    assert checked > 1000
