"""Build the provider object for a connection from its spec and the contents of its Secrets."""

from __future__ import annotations

from collections.abc import Mapping

from calsync.api import CalendarConnectionSpec
from calsync.providers.base import CalendarProvider, InvalidConfiguration
from calsync.providers.caldav import CalDAVProvider
from calsync.sync.budget import TokenBucket


def build_provider(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    *,
    budget: TokenBucket | None,
    allow_private_addresses: bool,
    timeout: float,
) -> CalendarProvider:
    if spec.provider in ("caldav", "icloud"):
        assert spec.caldav is not None  # the CRD's rules guarantee it
        ref = spec.caldav.credentials_secret_ref
        data = secrets.get(ref.name) if ref is not None else None
        if data is None:
            raise InvalidConfiguration(f"Secret {ref.name if ref else '?'!r} is missing")
        return CalDAVProvider(
            spec.caldav_url or "",
            data["username"].decode(),
            data["password"].decode(),
            icloud=spec.provider == "icloud",
            allow_insecure_http=spec.caldav.allow_insecure_http,
            allow_private_addresses=allow_private_addresses,
            rate_limiter=budget,
            timeout=timeout,
        )
    raise InvalidConfiguration(
        f"provider {spec.provider!r} is not available in this calsync version yet"
    )
