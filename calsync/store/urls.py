"""Store URLs: where the events live by default, and which async driver serves which URL.

Users write the URLs they know (`sqlite:///...`, `postgresql://...`, the Helm value
`store.url`); the store only runs on SQLAlchemy's asyncio drivers, so the plain forms are
rewritten to `sqlite+aiosqlite` and `postgresql+asyncpg` here, in one place. Any other database
or a synchronous driver is refused with an error that names the accepted forms.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_URL = "CALSYNC_STORE_URL"

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_ACCEPTED = "sqlite:///PATH, sqlite+aiosqlite:///PATH, postgresql://..., postgresql+asyncpg://..."


class StoreURLError(ValueError):
    """A store URL names a database or driver the store cannot use."""


def redact(url: str | URL) -> str:
    """The URL with any password replaced by `***`, for messages and logs (parsable or not)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        if "@" not in url:
            return url
        scheme = url.split(":", 1)[0] if ":" in url else ""
        return f"{scheme}://***@{url.rpartition('@')[2]}"


def default_store_url() -> str:
    """`CALSYNC_STORE_URL`, else an SQLite file under `$XDG_STATE_HOME/calsync` (created)."""
    configured = os.environ.get(ENV_URL, "").strip()
    if configured:
        return configured
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state else Path.home() / ".local" / "state"
    folder = base / "calsync"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'events.db'}"


def async_url(url: str | URL) -> URL:
    """The URL with its async driver: plain `sqlite` and `postgresql` (or `postgres`) rewritten."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        # Not chained: SQLAlchemy's message quotes the whole URL, password included.
        raise StoreURLError(f"not a database URL: {redact(url)} (accepted: {_ACCEPTED})") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise StoreURLError(f"unsupported database {backend!r} (accepted: {_ACCEPTED})")
    if parsed.drivername not in (backend, wanted, "postgres"):
        raise StoreURLError(
            f"driver {parsed.drivername!r} is not an asyncio driver the store supports "
            f"(accepted: {_ACCEPTED})"
        )
    return parsed.set(drivername=wanted)
