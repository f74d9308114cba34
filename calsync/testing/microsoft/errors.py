"""Graph's error envelope, raised anywhere in the simulator and rendered by one middleware.

Every Graph failure has the same shape:
`{"error": {"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}`.
The identity platform (token endpoint) has its own, built in `identity.py`.
"""

from __future__ import annotations

from collections.abc import Mapping


class GraphError(Exception):
    """An answer other than success: status, Graph error code, message, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str, code: str = "ErrorInvalidRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str = "The specified object was not found in the store.") -> GraphError:
    return GraphError(404, "ErrorItemNotFound", message)
