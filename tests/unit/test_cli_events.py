"""`calsync events` as a shell user meets it: piped into `head`, pointed at a store key that
holds nothing, or at a cluster it cannot reach. Real processes on a SQLite file, no servers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from calsync.cli import main
from calsync.cli.events import store_key
from calsync.model import ChangePage
from calsync.providers.ical import parse_resource
from calsync.store import EventStore
from tests.support import BIN

pytestmark = pytest.mark.unit

KEY = "6f1c2a0e-5b7d-4c1e-9a3f-0d2b8e4c7a15"  # a metadata.uid, as the store keys connections
CALENDAR = "/dav/demo/work/"
OCCURRENCES = 3000  # a table of about 300 KB: far more than a pipe holds
RANGE = ("--from", "2025-01-01", "--to", "2035-01-01")
DAILY = "\r\n".join(
    [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//calsync tests//EN",
        "BEGIN:VEVENT",
        "UID:daily@example.com",
        "DTSTAMP:20250101T000000Z",
        "DTSTART:20250101T090000Z",
        "DTEND:20250101T093000Z",
        f"RRULE:FREQ=DAILY;COUNT={OCCURRENCES}",
        "SUMMARY:Stand-up",
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
)


def fill_store(path: Path, key: str = KEY) -> str:
    """A SQLite store holding one daily series under connection `key`; returns its URL."""
    url = f"sqlite+aiosqlite:///{path}"

    async def fill() -> None:
        async with await EventStore.open(url) as store:
            await store.upsert_calendar(key, CALENDAR, "Work")
            page = ChangePage(
                upserts=[parse_resource("daily.ics", None, DAILY)], complete=True, full=True
            )
            await store.apply_page(key, CALENDAR, page)

    asyncio.run(fill())
    return url


def calsync_events(*args: str) -> list[str]:
    return [str(BIN / "calsync"), "events", *args]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return fill_store(tmp_path_factory.mktemp("store") / "events.db")


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_piped_into_head_it_ends_quietly_like_other_filters(store_url: str, fmt: str) -> None:
    writer = subprocess.Popen(
        calsync_events("--connection-key", KEY, "--store", store_url, "--format", fmt, *RANGE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.run(["head", "-n", "1"], stdin=writer.stdout, capture_output=True, check=True)
    writer.stdout.close()  # head has the only reading end now, and it is gone
    stderr = writer.stderr.read().decode()
    writer.stderr.close()
    code = writer.wait(timeout=60)
    assert stderr == ""
    assert head.stdout.strip()
    # what `yes | head -n 1` does to `yes`: killed by SIGPIPE, status 141 in a shell
    assert code == -signal.SIGPIPE


def test_the_whole_table_when_nobody_stops_reading(store_url: str) -> None:
    done = subprocess.run(
        calsync_events("--connection-key", KEY, "--store", store_url, *RANGE),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["START", "END", "SUMMARY", "STATUS", "UID"]
    assert len(lines) == 1 + OCCURRENCES


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`calsync events ARGS` in this process: exit status, stdout, stderr."""
    try:
        code = main(["events", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_key_with_nothing_stored_fails_with_one_line(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--connection-key", "no-such-uid", "--store", store_url)
    assert (code, out) == (1, "")
    assert err == "calsync: nothing is stored under connection key no-such-uid in this store\n"


def test_without_a_cluster_it_says_so_and_points_at_connection_key(
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing.kubeconfig"))
    code, out, err = run(capsys, "--connection", "default/demo", "--store", store_url)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert "missing.kubeconfig does not exist" in err
    assert "--connection-key" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connection", "demo"], "--connection takes NAMESPACE/NAME, not 'demo'"),
        (["--connection", "a/b/c"], "--connection takes NAMESPACE/NAME, not 'a/b/c'"),
        (["--connection", "default/demo", "--connection-key", KEY], "not allowed with"),
        ([], "one of the arguments --connection --connection-key is required"),
    ],
)
def test_usage_mistakes_exit_2(
    store_url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *args, "--store", store_url)
    assert code == 2
    assert message in err


def test_store_key_is_the_uid() -> None:
    body = {"metadata": {"namespace": "default", "name": "demo", "uid": KEY}}
    assert store_key(body) == KEY
