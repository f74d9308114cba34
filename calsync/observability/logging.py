"""One JSON log line per record, the same shape in every component.

Kopf's own records carry the object they concern in `extra` (`k8s_ref`); it is folded into the
line so that a log search by namespace and name finds both our lines and Kopf's.

What a line is about comes from `log_context`: the worker sets `connection` and `job` around a
run, the operator `connection` around a reconcile, the gateway `request_id` around a request.
Every line logged inside (by our code or a library's) carries those fields, in both formats.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal

_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar(
    "calsync_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (`connection`, `job`, `request_id`, ...) to every line logged inside.

    Context variables follow asyncio tasks: tasks started inside inherit the fields.
    """
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> Mapping[str, str]:
    return _CONTEXT.get()


_FIELD = "calsync_context"
_base_factory = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Taken when the record is made, so a handler that formats later (a queue, pytest's
    # capture) still sees the fields of the code that logged.
    record = _base_factory(*args, **kwargs)
    setattr(record, _FIELD, _CONTEXT.get())
    return record


if getattr(_base_factory, "__name__", "") != _record_with_context.__name__:
    logging.setLogRecordFactory(_record_with_context)


def _context_of(record: logging.LogRecord) -> Mapping[str, str]:
    fields = getattr(record, _FIELD, None)
    return fields if isinstance(fields, Mapping) else _CONTEXT.get()


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            line["object"] = {k: ref[k] for k in ("kind", "namespace", "name") if ref.get(k)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():  # extras never overwrite the fields above
            if (
                key in line
                or key in _STANDARD
                or key in ("k8s_ref", "k8s_skip", "settings", _FIELD)
            ):
                continue
            line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        for key, value in _context_of(record).items():  # a record's own extra wins
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: the usual one-liner, then the context fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _context_of(record)
        if not fields:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the fields
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{pairs}]{sep}{tail}"


def resolve_format(fmt: Literal["auto", "json", "text"], stream: Any = None) -> str:
    """`auto`: text when the stream is a terminal, JSON lines otherwise (pods, files, pipes)."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


def configure_logging(level: str = "INFO", fmt: Literal["auto", "json", "text"] = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt, sys.stderr) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log and kopf's object-level chatter stay at their own levels.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
