"""`python -m bench`'s one table and JSON document, from synthetic rows and fake benchmarks, and
the row builders of the heavy benchmarks fed with made-up measurements (nothing is measured)."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench._results import Row, at_least, at_most, document, error_row, table

pytestmark = pytest.mark.unit


def _row(**changes: Any) -> Row:
    fields: dict[str, Any] = {
        "benchmark": "demo",
        "case": "initial",
        "ours": 0.25,
        "reference_name": "bare",
        "reference": 1.0,
        "ratio": 0.25,
        "target": "<= 0.5x",
        "passed": True,
    }
    fields.update(changes)
    return Row(**fields)


def _cells(line: str) -> list[str]:
    """The cells of one markdown table line (escaped pipes stay inside their cell)."""
    inner = line.strip()[1:-1].replace("\\|", "\0")
    return [cell.strip().replace("\0", "\\|") for cell in inner.split("|")]


def test_targets_hold_on_the_limit_and_fail_past_it() -> None:
    assert at_most(0.5, 0.5) == ("<= 0.5x", True)
    assert at_most(0.51, 0.5) == ("<= 0.5x", False)
    assert at_least(0.5, 0.5) == (">= 0.5x", True)
    assert at_least(0.49, 0.5) == (">= 0.5x", False)
    assert at_most(1.49, 1.5) == ("<= 1.5x", True)
    assert not at_most(math.nan, 1.5)[1]


def test_table_has_a_line_per_row_with_the_verdict() -> None:
    rows = [
        _row(),
        _row(case="incremental", ours=2.0, ratio=2.0, passed=False),
        _row(case="context", target="", passed=None, unit="/s", ours=1234.5, reference=None),
    ]
    lines = table(rows).splitlines()
    assert _cells(lines[0]) == [
        "benchmark",
        "case",
        "ours",
        "reference",
        "ratio",
        "target",
        "result",
    ]
    assert len(lines) == 2 + len(rows)
    assert _cells(lines[2]) == [
        "demo",
        "initial",
        "0.250 s",
        "bare: 1.00 s",
        "0.25x",
        "<= 0.5x",
        "pass",
    ]
    assert _cells(lines[3])[-1] == "MISS"
    assert _cells(lines[3])[4] == "2.00x"
    assert _cells(lines[4]) == ["demo", "context", "1,234 /s", "bare: -", "0.25x", "-", "-"]


def test_table_escapes_pipes_and_newlines_inside_cells() -> None:
    text = table([_row(case="a | b\nc")])
    line = text.splitlines()[2]
    assert "\n" not in line
    assert _cells(line)[1] == "a \\| b c"
    assert len(_cells(line)) == 7


def test_an_error_row_shows_the_error_and_no_figures() -> None:
    row = error_row("caldav_sync", RuntimeError("vdirsyncer not found"))
    assert row.error == "RuntimeError: vdirsyncer not found"
    assert row.verdict == "ERROR"
    cells = _cells(table([row]).splitlines()[2])
    assert cells[0] == "caldav_sync"
    assert "RuntimeError: vdirsyncer not found" in cells[1]
    assert cells[2:5] == ["-", "-", "-"]
    assert cells[-1] == "ERROR"


def test_document_is_strict_json_with_a_summary() -> None:
    rows = [
        _row(),
        _row(passed=False),
        _row(ratio=math.nan, extra={"raw": [1.0, math.inf], "nested": {"x": -math.inf}}),
        error_row("boom", ValueError("no")),
    ]
    data = document(
        rows,
        runs=[{"name": "demo", "seconds": 1.5}],
        machine={"cpus": 2},
        git={"commit": "abc", "dirty": False},
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:01:00+00:00",
    )
    text = json.dumps(data, allow_nan=False)  # raises on NaN or infinity left anywhere
    back = json.loads(text)
    assert back["summary"] == {"rows": 4, "passed": 2, "missed": 1, "errors": 1}
    assert [r["result"] for r in back["rows"]] == ["pass", "MISS", "pass", "ERROR"]
    assert back["rows"][2]["ratio"] is None
    assert back["rows"][2]["extra"] == {"raw": [1.0, None], "nested": {"x": None}}
    assert back["rows"][3]["error"] == "ValueError: no"
    assert back["git"] == {"commit": "abc", "dirty": False}
    assert back["machine"] == {"cpus": 2}
    assert set(back["rows"][0]) >= {
        "benchmark",
        "case",
        "ours",
        "reference_name",
        "reference",
        "ratio",
        "target",
        "passed",
        "unit",
        "extra",
    }


# -- python -m bench, with fake benchmarks -----------------------------------------------------


@pytest.fixture
def fake_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    def ok() -> list[Row]:
        print("fake_ok's own report")
        return [_row(benchmark="fake_ok")]

    def boom() -> list[Row]:
        raise RuntimeError("the server did not start")

    def silent() -> None:
        return None

    for name, run in (("fake_ok", ok), ("fake_boom", boom), ("fake_silent", silent)):
        module = types.ModuleType(f"bench.{name}")
        module.run = run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
    monkeypatch.setattr(bench_main, "BENCHMARKS", ("fake_boom", "fake_ok", "fake_silent"))
    # No waiting for an idle machine here (the test suite keeps it busy): a fixed answer.
    monkeypatch.setattr(bench_main, "settle", lambda: (1.5, 0.9))


@pytest.mark.usefixtures("fake_benchmarks")
def test_a_benchmark_that_raises_keeps_the_others_rows_and_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    status = bench_main.main(["fake_boom", "fake_ok", "--json", str(out)])
    assert status == 1
    data = json.loads(out.read_text())
    assert [(r["benchmark"], r["result"]) for r in data["rows"]] == [
        ("fake_boom", "ERROR"),
        ("fake_ok", "pass"),
    ]
    assert "the server did not start" in data["rows"][0]["error"]
    assert [b["name"] for b in data["benchmarks"]] == ["fake_boom", "fake_ok"]
    assert "error" in data["benchmarks"][0]
    assert "error" not in data["benchmarks"][1]
    printed = capsys.readouterr().out
    assert "fake_ok's own report" in printed
    table_lines = [line for line in printed.splitlines() if line.startswith("| fake_")]
    assert len(table_lines) == 2


@pytest.mark.usefixtures("fake_benchmarks")
def test_a_clean_run_exits_zero_even_with_a_miss_and_records_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert bench_main.main(["fake_ok", "fake_silent"]) == 0
    data = json.loads((tmp_path / bench_main.DEFAULT_JSON).read_text())
    assert len(data["rows"]) == 1
    assert data["machine"]["cpus"] >= 1
    assert data["machine"]["python"].count(".") == 2
    assert data["benchmarks"][1] == {**data["benchmarks"][1], "name": "fake_silent", "rows": 0}
    assert data["benchmarks"][0]["settled_s"] == 1.5  # the wait for an idle machine, recorded
    assert data["benchmarks"][0]["idle_before"] == 0.9
    assert set(data["git"]) == {"commit", "dirty"}


def test_unknown_names_are_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["no_such_benchmark"])
    assert exc.value.code == 2


# -- the heavy benchmarks' row builders, on made-up measurements ---------------------------------


def test_google_sync_rows_compare_against_the_sum_of_the_floors() -> None:
    from bench.google_sync import Results, rows

    results = Results(
        ours=[0.60, 0.62, 0.70],
        ours_rss=[100 * 2**20, 120 * 2**20],
        sqlite_floor=[0.19, 0.18, 0.20],
        provider=[0.30, 0.31, 0.29],
        bare=[0.12, 0.12, 0.13],
        items=10_680,
        pages=5,
    )
    head, rate, provider = rows(results)
    assert head.reference == pytest.approx(0.12 + 0.19)
    assert head.ratio == pytest.approx(0.62 / 0.31)
    assert (head.target, head.passed) == ("<= 1.5x", False)
    assert head.extra["peak_rss_mib"] == pytest.approx(120)
    assert rate.ratio == pytest.approx(0.12 / 0.62)
    assert rate.passed is None
    assert provider.ratio == pytest.approx(0.12 / 0.30)


def test_google_sync_leads_with_the_kubectl_apply_path_against_the_same_floors() -> None:
    from bench._apply import ApplyRun, Interleaved
    from bench.google_sync import Results, rows

    runs = [ApplyRun(s, 0.2, 12, {"durationSeconds": 0.5}, 1.0, 10_680) for s in (0.9, 0.5, 1.0)]
    results = Results(
        ours=[0.45],
        ours_rss=[2**27],
        sqlite_floor=[0.20],
        provider=[0.25],
        bare=[0.12],
        items=10_680,
        pages=5,
        stored={"events": 10_680},
        applied=Interleaved(runs, [0.10, 0.14, 0.12], 1.1),
    )
    head, engine, *_ = rows(results)
    assert "kubectl apply" in head.case and "engine in-process" in engine.case
    assert head.reference == pytest.approx(0.12 + 0.20)  # the bare rounds beside it + SQLite
    assert head.ratio == pytest.approx(0.9 / 0.32)
    assert (head.target, head.passed) == ("<= 1.5x", False)
    assert head.extra["raw_kubectl_apply_s"] == [0.2, 0.2, 0.2]
    assert (engine.target, engine.passed) == ("<= 1.5x", True)


def test_microsoft_sync_headline_is_a_rate_and_checks_the_stored_count() -> None:
    from bench._apply import ApplyRun, Interleaved
    from bench.microsoft_sync import _apply_row

    def applied(count: int) -> Interleaved:
        runs = [ApplyRun(s, 0.2, 60, {}, 3.0, count) for s in (4.0, 3.6, 4.4)]
        return Interleaved(runs, [2.0, 1.9, 2.2], 4.1)

    row = _apply_row(applied(19_560), 19_560, 19_559)  # an occurrence at the window's edge
    assert row.ratio == pytest.approx(2.0 / 4.0)
    assert (row.target, row.passed) == (">= 0.5x", True)
    with pytest.raises(RuntimeError, match="stored"):
        _apply_row(applied(19_000), 19_560, 19_560)


def test_the_oauth_manifest_is_what_a_user_applies() -> None:
    import yaml

    from bench._apply import CONNECTION, oauth_manifest

    docs = list(
        yaml.safe_load_all(oauth_manifest("ns-1", "google", "a@example.com", ("id", "s"), "r"))
    )
    assert [d["kind"] for d in docs] == ["Namespace", "Secret", "Secret", "CalendarConnection"]
    assert all(d["metadata"].get("namespace", "ns-1") == "ns-1" for d in docs)
    client, token, connection = docs[1:]
    for secret in (client, token):
        assert secret["metadata"]["labels"] == {"calsync.io/credentials": "true"}
    assert client["stringData"] == {"client_id": "id", "client_secret": "s"}
    assert token["stringData"] == {"refresh_token": "r"}
    assert connection["metadata"]["name"] == CONNECTION
    assert connection["spec"] == {
        "provider": "google",
        "owner": "a@example.com",
        "oauth": {
            "clientSecretRef": {"name": client["metadata"]["name"]},
            "tokenSecretRef": {"name": token["metadata"]["name"]},
        },
    }


def test_caldav_sync_rows_lead_with_the_kubectl_apply_path() -> None:
    from bench.caldav_sync import CASES, ApplyRun, Bench, Case

    bench = object.__new__(Bench)  # no vdirsyncer lookup: only the figures are needed
    bench.batch_size = 500
    bench.server_resources, bench.server_vevents = 10_000, 12_561
    bench.applied = [ApplyRun(s, 0.2, 10, {}, 2.0, 12_561) for s in (3.0, 3.4, 2.9)]
    bench.applied_vdirsyncer = [6.5, 6.6, 7.0]
    bench.cases = {
        name: Case(ours=[0.6], ours_wall=[1.2], ours_rss=[2**27], vdirsyncer=[2.6], report=[0.5])
        for name in CASES
    }
    found = bench.rows()
    head = found[0]
    assert "kubectl apply" in head.case
    assert head.ratio == pytest.approx(3.0 / 6.6)
    assert (head.target, head.passed) == ("<= 0.5x", True)
    targets = [(r.case, r.reference_name, r.target, r.passed) for r in found[1:]]
    assert targets == [
        ("initial, engine in-process", "vdirsyncer", "<= 0.5x", True),
        ("incremental, engine in-process", "vdirsyncer", "<= 0.25x", True),
        ("incremental, engine in-process", "bare sync-collection REPORT", "<= 1.5x", True),
        ("no-change, engine in-process", "vdirsyncer", "<= 0.25x", True),
        ("no-change, engine in-process", "bare sync-collection REPORT", "<= 1.5x", True),
    ]


def test_platform_benchmark_rows_carry_their_absolute_targets() -> None:
    from bench import idle_cost, syncjob_throughput, webhook_throughput

    rounds = [
        {"per_minute": 2800.0, "reference": 9000.0, "ratio": 0.31, "syncs_per_minute": 300.0,
         "per_job": 3.5, "per_sync": 9.0, "jobs": 600, "seconds": 15.0,
         "machine": {"kube-apiserver": 9.0, "calsync-worker-1": 9.0}, "steal": 0.0},
        {"per_minute": 3200.0, "reference": 9400.0, "ratio": 0.34, "syncs_per_minute": 320.0,
         "per_job": 3.4, "per_sync": 8.0, "jobs": 600, "seconds": 12.0,
         "machine": {"kube-apiserver": 9.0, "calsync-worker-1": 15.0}, "steal": 0.0},
    ]  # fmt: skip
    sizes = {"jobs": 600, "connections": 50}
    jobs, syncs = syncjob_throughput.rows(sizes, {"results": {3: rounds}})
    assert jobs.ours == pytest.approx(3000.0)
    # CPU of every process per job: 30 and 40 ms; the cores allow cores x 60 s / that.
    cores = os.cpu_count() or 1
    assert jobs.extra["cpu_ms_per_job"] == pytest.approx(35.0)
    assert jobs.extra["ceiling_per_minute"] == pytest.approx(
        (cores * 60 / 0.030 + cores * 60 / 0.040) / 2
    )
    assert jobs.extra["cores_busy"] == pytest.approx((18 / (15 * cores) + 24 / (12 * cores)) / 2)
    assert (jobs.target, jobs.passed, jobs.unit) == ("> 1,000/min", True, "/min")
    # The target asks for every job to be a sync: judged on the Succeeded ones only.
    assert syncs.ours == pytest.approx(310.0)
    assert (syncs.target, syncs.passed, syncs.unit) == (">= 3,000/min", False, "/min")

    window = {"rate": 2.5, "requests": [None] * 300, "seconds": 120.0, "polls": 0,
              "before_first_due": 600.0, "rss": {"op": 2**20}, "hwm": {"op": 2**21},
              "cpu": {"op": 1.0}, "workers": 1}  # fmt: skip
    poll = {"per_poll": 3.0, "per_poll_raw": 3.4, "polls": 180}
    idle, steady = idle_cost.rows(
        {"connections": 1000}, {"idle": [window], "poll": poll, "poll_connections": 100}
    )
    assert (idle.target, idle.passed) == ("<= 2/s", False)
    assert steady.ours == pytest.approx(3.0 * 1000 / 900 + 2.5)
    assert steady.passed is False

    ours = {"ok_per_second": 2500.0, "statuses": {"200": 25_000}, "p50": 4.0, "p99": 60.0,
            "max": 80.0}  # fmt: skip
    one = {"ours": ours, "before": {"ok_per_second": 6000.0, "p99": 9.0},
           "after": {"ok_per_second": 4000.0, "p99": 11.0}, "reference": 5000.0, "ratio": 0.5,
           "channels": 100}  # fmt: skip
    two = {"jobs": {str(i): {} for i in range(51)}, "channels": 20, "problems": [], "rows": 2000}
    sizes = {"concurrency": 32, "storm_notifications": 10_000}
    verdicts = [(r.target, r.passed) for r in webhook_throughput.bench_rows(one, two, sizes)]
    assert verdicts == [
        (">= 0.5x", True),
        (">= 2,000/s", True),
        ("< 50 ms", False),
        ("<= 50", False),
        ("equal", True),
    ]
