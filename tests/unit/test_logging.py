"""JsonFormatter: one JSON object per record, kopf's object reference folded in, extras kept."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from calsync.observability.logging import JsonFormatter, configure_logging

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
