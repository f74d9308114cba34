"""JsonFormatter: one JSON object per record, kopf's object reference folded in, extras kept."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from calsync.observability.logging import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
    resolve_format,
)

pytestmark = pytest.mark.unit


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Capture]]:
    log = logging.getLogger(f"calsync.test.{uuid.uuid4().hex[:8]}")
    capture = Capture()
    log.addHandler(capture)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, capture
    log.removeHandler(capture)


def only_line(capture: Capture) -> dict[str, Any]:
    assert len(capture.lines) == 1
    line = capture.lines[0]
    assert "\n" not in line  # one physical line per record, even with a traceback
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_basic_fields(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    log.warning("synced %d events of %s", 3, "alice")
    line = only_line(capture)
    assert line["level"] == "warning"
    assert line["logger"] == log.name
    assert line["message"] == "synced 3 events of alice"
    when = datetime.fromisoformat(line["time"])
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert "exception" not in line
    assert "object" not in line


def test_no_standard_record_attributes_leak(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    log.info("plain")
    assert set(only_line(capture)) == {"time", "level", "logger", "message"}


def test_each_level_is_lower_case(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    log.debug("d")
    log.info("i")
    log.error("e")
    assert [json.loads(x)["level"] for x in capture.lines] == ["debug", "info", "error"]


def test_kopf_reference_is_folded_into_object(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    ref = {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "name": "alice",
        "uid": "1234",
        "namespace": "team-a",
    }
    log.info("handler succeeded", extra={"k8s_ref": ref, "k8s_skip": False, "settings": object()})
    line = only_line(capture)
    assert line["object"] == {"kind": "CalendarConnection", "namespace": "team-a", "name": "alice"}
    assert "k8s_ref" not in line
    assert "k8s_skip" not in line
    assert "settings" not in line


def test_cluster_scoped_reference_has_no_namespace(
    logger: tuple[logging.Logger, Capture],
) -> None:
    log, capture = logger
    ref = {"kind": "CustomResourceDefinition", "name": "syncjobs.calsync.io", "namespace": None}
    log.info("x", extra={"k8s_ref": ref})
    assert only_line(capture)["object"] == {
        "kind": "CustomResourceDefinition",
        "name": "syncjobs.calsync.io",
    }


def test_custom_extras_are_included(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    log.info(
        "sync done",
        extra={"connection": "alice", "events": 12, "seconds": 1.5, "full": True, "ids": [1, 2]},
    )
    line = only_line(capture)
    assert line["connection"] == "alice"
    assert line["events"] == 12
    assert line["seconds"] == 1.5
    assert line["full"] is True
    assert line["ids"] == "[1, 2]"  # anything else is written as its str()


def test_non_ascii_is_kept(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    log.info("Kalender »Büro« synchronisiert")
    assert "»Büro«" in capture.lines[0]
    assert only_line(capture)["message"] == "Kalender »Büro« synchronisiert"


def test_exception_is_formatted(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger
    try:
        raise RuntimeError("provider said no")
    except RuntimeError:
        log.exception("sync failed")
    line = only_line(capture)
    assert line["level"] == "error"
    assert line["message"] == "sync failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: provider said no" in line["exception"]


def test_formatter_on_a_bare_record() -> None:
    record = logging.LogRecord("calsync.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.created = 0.0
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "time": "1970-01-01T00:00:00.000+00:00",
        "level": "info",
        "logger": "calsync.x",
        "message": "hello you",
    }


def test_configure_logging_installs_one_json_handler() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = [logging.getLogger("aiohttp.access"), logging.getLogger("httpx")]
    saved_quiet = [q.level for q in quiet]
    try:
        configure_logging("DEBUG", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        configure_logging("WARNING", "text")
        assert len(root.handlers) == 1
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
        assert [q.level for q in quiet] == [logging.WARNING, logging.WARNING]
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for q, level in zip(quiet, saved_quiet, strict=True):
            q.setLevel(level)


def test_extras_do_not_overwrite_standard_fields() -> None:
    record = logging.LogRecord("calsync.x", logging.INFO, __file__, 1, "real", None, None)
    record.level = "forged"
    record.message_id = "kept"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info"
    assert line["message"] == "real"
    assert line["message_id"] == "kept"


def test_context_fields_reach_every_line_inside_and_nest(
    logger: tuple[logging.Logger, Capture],
) -> None:
    log, capture = logger
    with log_context(connection="ns/a", job="a-poll-1"):
        log.info("inside")
        with log_context(request_id="r1", job=None):
            log.info("nested")
        log.info("own extra wins", extra={"job": "explicit"})
    log.info("outside")
    lines = [json.loads(x) for x in capture.lines]
    assert lines[0]["connection"] == "ns/a" and lines[0]["job"] == "a-poll-1"
    assert lines[1] == {**lines[1], "connection": "ns/a", "job": "a-poll-1", "request_id": "r1"}
    assert lines[2]["job"] == "explicit"
    assert "connection" not in lines[3] and "job" not in lines[3]


async def test_context_follows_tasks_started_inside(logger: tuple[logging.Logger, Capture]) -> None:
    log, capture = logger

    async def child() -> None:
        await asyncio.sleep(0)
        log.info("from a task")

    with log_context(job="j1"):
        task = asyncio.create_task(child())
    await task
    assert json.loads(capture.lines[0])["job"] == "j1"


def test_text_lines_carry_the_context_before_a_traceback() -> None:
    record = logging.LogRecord("calsync.x", logging.ERROR, __file__, 1, "boom", None, None)
    try:
        raise RuntimeError("inner")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    with log_context(connection="ns/a"):
        text = TextFormatter().format(record)
    first, _, rest = text.partition("\n")
    assert first.endswith("boom [connection=ns/a]")
    assert "RuntimeError: inner" in rest


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", _Stream(True)) == "text"
    assert resolve_format("auto", _Stream(False)) == "json"
    assert resolve_format("json", _Stream(True)) == "json"
    assert resolve_format("text", _Stream(False)) == "text"
