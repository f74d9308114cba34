"""Google's error answers: the JSON envelope every Calendar API failure comes in.

Google wraps every API error the same way::

    {"error": {"code": 410, "message": "...",
               "errors": [{"domain": "global", "reason": "fullSyncRequired", "message": "..."}],
               "status": "..."}}

Clients branch on `code` and on `errors[0].reason` (403 `rateLimitExceeded` is a rate limit,
403 `forbidden` is not), so the simulator raises `GoogleError` with both and the app renders it.
The OAuth endpoints answer RFC 6749 errors instead (`OAuthError`), which are a different shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

# The canonical status names Google adds beside the numeric code.
STATUS_NAMES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class GoogleError(Exception):
    """An API failure, rendered as Google's error envelope with `status` and `reason`."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # e.g. location / locationType of the faulty parameter

    def envelope(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "domain": self.domain,
            "reason": self.reason,
            "message": self.message,
            **self.extra,
        }
        error: dict[str, Any] = {"code": self.status, "message": self.message, "errors": [detail]}
        name = STATUS_NAMES.get(self.status)
        if name is not None:
            error["status"] = name
        return {"error": error}

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


def bad_request(message: str, reason: str = "invalid", **extra: str) -> GoogleError:
    return GoogleError(400, reason, message, extra=extra)


def invalid_parameter(name: str, value: object) -> GoogleError:
    text = str(value)[:100]
    return GoogleError(
        400,
        "invalid",
        f"Invalid value for: {name} ({text!r})",
        extra={"location": name, "locationType": "parameter"},
    )


def not_found(message: str = "Not Found") -> GoogleError:
    return GoogleError(404, "notFound", message)


def required(message: str) -> GoogleError:
    return GoogleError(400, "required", message)


class OAuthError(Exception):
    """An RFC 6749 error answer of the token endpoint: `{"error", "error_description"}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "error_description": self.description}).encode()
