"""Durations written the way Kubernetes and Go write them: ``90s``, ``15m``, ``1h30m``.

Spec fields such as ``spec.sync.pollInterval`` are strings so that they read naturally in
YAML and match what ``kubectl`` users know from other resources. The CRD checks the shape
with :data:`DURATION_PATTERN`; this module turns a valid string into seconds.

Accepted units are ``h``, ``m``, ``s``, ``ms``, ``us`` and ``ns``; components may repeat and
carry decimals (``1.5h``). Signs and the Go spelling ``µs`` are not accepted: a negative
interval never makes sense here, and ASCII keeps the schema simple.
"""

from __future__ import annotations

import re

DURATION_PATTERN = r"^([0-9]+([.][0-9]+)?(h|ms|m|s|us|ns))+$"
"""Regular expression of a duration string, valid in Python, RE2 and CEL string literals."""

DURATION_MAX_LENGTH = 64

_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "ns": 1e-9,
}
_WHOLE = re.compile(DURATION_PATTERN)
_COMPONENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s|us|ns)")


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``, e.g. ``parse_duration("1h30m") == 5400.0``.

    Raises ``ValueError`` naming the input and the expected form when it is not a duration.
    """
    if len(text) > DURATION_MAX_LENGTH or not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: expected a number followed by a unit "
            "(h, m, s, ms, us, ns), optionally repeated, e.g. '90s', '15m' or '1h30m'"
        )
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _COMPONENT.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest ``h``/``m``/``s`` spelling of a whole number of seconds, e.g. ``"1h30m"``."""
    if seconds < 0 or seconds != int(seconds):
        raise ValueError(f"cannot format {seconds!r}: only whole, non-negative seconds")
    remaining = int(seconds)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
