"""A simulator of the Google Calendar API v3 and Google's OAuth endpoints, for tests.

Google's API is not reachable from calsync's tests, so this package stands in for it: an
aiohttp application serving the same paths (`/calendar/v3/...`, `/o/oauth2/v2/auth`,
`/token`) with the documented behaviour of Google's API (sync tokens only on the last page,
410 `fullSyncRequired`, masters and exceptions, push channels that POST real notifications,
OAuth codes with PKCE, expiring access tokens, Google's error envelope), plus an admin API under
`/_admin/` to set up accounts and data and to inject faults. It is product code: users run it
(`calsync simulate google`) for their own tests. docs/simulators/google.md is the manual.

    async with running() as google:          # a free port on 127.0.0.1
        google.sim.create_user("alice@example.com")
        token = google.sim.mint_access_token("alice@example.com")
        ...  # GET f"{google.url}/calendar/v3/users/me/calendarList" with the bearer token
"""

from __future__ import annotations

from calsync.testing.google.app import RunningSimulator, create_app, running
from calsync.testing.google.errors import GoogleError, OAuthError
from calsync.testing.google.state import GoogleSimulator

__all__ = [
    "GoogleError",
    "GoogleSimulator",
    "OAuthError",
    "RunningSimulator",
    "create_app",
    "running",
]
