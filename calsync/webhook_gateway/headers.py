"""The seed's security headers, on every answer of the gateway, errors included."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-DNS-Prefetch-Control": "on",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": "1; mode=block",
    "Referrer-Policy": "origin-when-cross-origin",
    "Content-Security-Policy": "default-src 'self'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _apply(response: web.StreamResponse) -> None:
    # setdefault: a route may be stricter (the consent pages send Referrer-Policy:
    # no-referrer so the code and state in their URLs never leave in a Referer header).
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply(exc)
        raise
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        response = web.Response(status=500, text="internal error\n")
    _apply(response)
    return response
