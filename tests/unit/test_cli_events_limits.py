"""`calsync events` under its caps: CALSYNC_QUERY_LIMIT / CALSYNC_QUERY_SERIES_LIMIT (or --limit)
bound the answer, and a capped answer says so: on stderr always, and in the JSON itself with
--envelope, while plain `--format json` stays the list existing consumers parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calsync.cli import main
from tests.unit.test_cli_events import KEY, RANGE, fill_store

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return fill_store(tmp_path_factory.mktemp("store") / "events.db")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["events", "--connection-key", KEY, *RANGE, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_query_limit_setting_caps_the_answer_and_stderr_says_so(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_QUERY_LIMIT", "10")
    code, out, err = run(capsys, "--store", store_url, "--format", "json")
    assert code == 0
    assert len(json.loads(out)) == 10  # still the plain list
    assert "truncated at 10 occurrences" in err


def test_limit_flag_overrides_the_setting(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_QUERY_LIMIT", "10")
    code, out, _ = run(capsys, "--store", store_url, "--format", "json", "--limit", "4")
    assert code == 0 and len(json.loads(out)) == 4


def test_the_envelope_carries_the_truncation_flag(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_QUERY_LIMIT", "10")
    code, out, _ = run(capsys, "--store", store_url, "--format", "json", "--envelope")
    body = json.loads(out)
    assert code == 0
    assert body["truncated"] is True
    assert (body["limit"], body["series_limit"]) == (10, 3000)
    assert body["capped_series"] == []
    assert len(body["occurrences"]) == 10
    monkeypatch.setenv("CALSYNC_QUERY_LIMIT", "100000")
    _, out, err = run(capsys, "--store", store_url, "--format", "json", "--envelope")
    body = json.loads(out)
    assert body["truncated"] is False and len(body["occurrences"]) == 3000
    assert err == ""


def test_the_series_limit_setting_caps_each_series_and_names_it(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_QUERY_SERIES_LIMIT", "7")
    code, out, err = run(capsys, "--store", store_url, "--format", "json", "--envelope")
    body = json.loads(out)
    assert code == 0
    assert len(body["occurrences"]) == 7
    assert body["truncated"] is True and body["capped_series"] == ["daily.ics"]
    assert "daily.ics" in err and "7 occurrences per series" in err


def test_envelope_needs_json(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        run(capsys, "--store", store_url, "--envelope")
    assert raised.value.code == 2


def test_a_bad_setting_is_one_line(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALSYNC_QUERY_LIMIT", "0")
    code, out, err = run(capsys, "--store", store_url)
    assert (code, out) == (2, "")
    assert "query_limit" in err and len(err.splitlines()) == 1


def test_the_settings_defaults_are_the_store_defaults() -> None:
    from calsync.settings import Settings
    from calsync.store import DEFAULT_LIMIT, DEFAULT_SERIES_LIMIT

    assert (Settings().query_limit, Settings().query_series_limit) == (
        DEFAULT_LIMIT,
        DEFAULT_SERIES_LIMIT,
    )


def test_series_not_expanded_are_named_once_not_warned_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from calsync.model import ChangePage
    from calsync.providers.ical import parse_resource
    from calsync.store import EventStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'hostile.db'}"
    text = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VEVENT\r\nUID:h\r\n"
        "DTSTART:20000101T000000Z\r\nDURATION:PT1S\r\n"
        "RRULE:FREQ=SECONDLY;COUNT=100000;BYMONTH=2;BYMONTHDAY=30\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )

    async def fill() -> None:
        async with await EventStore.open(url) as store:
            page = ChangePage(
                upserts=[parse_resource("h.ics", None, text)], complete=True, full=True
            )
            await store.apply_page(KEY, "/cal/", page)

    asyncio.run(fill())
    code, out, err = run(capsys, "--store", url, "--format", "json")
    assert (code, out.strip()) == (0, "[]")
    assert err.count("h.ics") == 1 and "not expanding" not in err
