"""The figures every benchmark hands back, and the one table and JSON document made of them.

Each benchmark's `run()` prints its own detailed report and returns a list of `Row`: one per
headline figure, ours beside its reference as the benchmark already computes them. `python -m
bench` collects the rows of every benchmark it ran into one markdown table (`table`) and one JSON
document (`document`); docs/performance.md says what each row means.

A row's `ratio` reads in the direction its `target` states: for a time it is ours over the
reference (lower is better, "<= 0.5x"), for a rate it is our rate over the reference's (higher
is better, ">= 0.5x"); `ratio_is` says which in words. A row without a target is context for
another row (`passed` None); a benchmark that raised leaves one row with `error` set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SECONDS = "s"


@dataclass(frozen=True)
class Row:
    benchmark: str
    case: str
    ours: float | None
    reference_name: str
    reference: float | None
    ratio: float | None
    target: str = ""  # e.g. "<= 0.5x"; empty when the row is context, not a goal
    passed: bool | None = None  # None: no target, or not measured
    unit: str = SECONDS  # of `ours` and `reference`
    ratio_is: str = "ours / reference (time)"
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.passed is None:
            return "-"
        return "pass" if self.passed else "MISS"


def error_row(benchmark: str, exc: BaseException) -> Row:
    """The row that stands for a benchmark that raised instead of returning its rows."""
    message = f"{type(exc).__name__}: {exc}".strip()
    return Row(
        benchmark=benchmark,
        case="(the benchmark raised)",
        ours=None,
        reference_name="",
        reference=None,
        ratio=None,
        passed=False,
        error=message[:2000],
    )


def at_most(ratio: float, limit: float) -> tuple[str, bool]:
    """(target text, passed) for a ratio that must not exceed `limit` (times: lower is better)."""
    return f"<= {limit:g}x", ratio <= limit


def at_least(ratio: float, limit: float) -> tuple[str, bool]:
    """(target text, passed) for a ratio that must reach `limit` (rates: higher is better)."""
    return f">= {limit:g}x", ratio >= limit


# -- the table ---------------------------------------------------------------------------------


def quantity(value: float | None, unit: str = SECONDS) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    size = abs(value)
    if size >= 100:
        text = f"{value:,.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}" if unit else text


def times(ratio: float | None) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "-"
    return f"{ratio:.2f}x" if abs(ratio) >= 0.1 else f"{ratio:.3f}x"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


HEADER = ("benchmark", "case", "ours", "reference", "ratio", "target", "result")


def table(rows: Iterable[Row]) -> str:
    """One markdown table of every row, in the order given."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for row in rows:
        if row.error is not None:
            cells = [row.benchmark, row.case, "-", "-", "-", row.target or "-", "ERROR"]
            cells[1] = f"{row.case}: {row.error}"
        else:
            reference = quantity(row.reference, row.unit)
            if row.reference_name:
                reference = f"{row.reference_name}: {reference}"
            cells = [
                row.benchmark,
                row.case,
                quantity(row.ours, row.unit),
                reference,
                times(row.ratio),
                row.target or "-",
                row.verdict,
            ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# -- the JSON document -------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null, inside containers too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def row_dict(row: Row) -> dict[str, Any]:
    data: dict[str, Any] = _finite(asdict(row))
    data["result"] = row.verdict
    return data


def document(
    rows: Sequence[Row],
    *,
    runs: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
    git: Mapping[str, Any],
    started: str,
    finished: str,
) -> dict[str, Any]:
    """The JSON document `python -m bench --json PATH` writes."""
    data: dict[str, Any] = _finite(
        {
            "format": 1,
            "started": started,
            "finished": finished,
            "git": dict(git),
            "machine": dict(machine),
            "benchmarks": [dict(run) for run in runs],
        }
    )
    data["rows"] = [row_dict(row) for row in rows]
    data["summary"] = {
        "rows": len(rows),
        "passed": sum(1 for row in rows if row.error is None and row.passed is True),
        "missed": sum(1 for row in rows if row.error is None and row.passed is False),
        "errors": sum(1 for row in rows if row.error is not None),
    }
    return data
