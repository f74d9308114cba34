"""Bounded reads end to end (issue 12, item 2): a CalDAV calendar holding a minutely series
without end beside a healthy event syncs Ready, the connection names the series in Degraded
(reason ExpansionCapped), and `calsync events` answers at once with the capped answer flagged."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_sync import connection, secret
from tests.support import BIN, Kubectl, Process, condition, connection_uid

pytestmark = pytest.mark.e2e

START = (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).strftime("%Y%m%dT%H%M%SZ")


def _object(uid: str, rule: str | None) -> str:
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//calsync tests//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20250101T000000Z",
        f"DTSTART:{START}",
        "DURATION:PT15M",
        *([f"RRULE:{rule}"] if rule else []),
        f"SUMMARY:{uid}",
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
    return "\r\n".join(lines)


def test_a_series_over_the_cap_is_named_and_reads_stay_bounded(
    kubectl: Kubectl, namespace: str, operator: Process, store_path: Path, caldav_calendar: Any
) -> None:
    caldav_calendar.put("minutely.ics", _object("minutely@example.com", "FREQ=MINUTELY"))
    caldav_calendar.put("weekly.ics", _object("weekly@example.com", "FREQ=WEEKLY"))
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(connection("busy", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/busy", "-n", namespace, "--timeout=120s")
    degraded = condition(kubectl, namespace, "busy", "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "ExpansionCapped")
    assert "minutely.ics" in degraded["message"] and "weekly.ics" not in degraded["message"]

    key = connection_uid(kubectl, namespace, "busy")
    done = subprocess.run(
        [
            str(BIN / "calsync"),
            "events",
            "--connection-key",
            key,
            "--store",
            f"sqlite+aiosqlite:///{store_path}",
            "--format",
            "json",
            "--envelope",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    body = json.loads(done.stdout)
    assert body["truncated"] is True
    assert [pid.rsplit("/", 1)[-1] for pid in body["capped_series"]] == ["minutely.ics"]
    summaries = {o["summary"] for o in body["occurrences"]}
    assert summaries == {"minutely@example.com", "weekly@example.com"}
    assert "output truncated" in done.stderr
