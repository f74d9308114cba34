"""A Microsoft Graph (Outlook calendar) simulator for tests, benchmarks and users' own tests.

It serves Graph's calendar paths (`/v1.0/me/calendars`, calendar-view delta rounds, events,
subscriptions with the validation handshake and batched change notifications) and the Microsoft
identity platform's authorize and token endpoints, with Outlook's throttling, injectable faults,
a controllable clock and an admin API under `/_admin/`. docs/simulators/microsoft.md describes
what it implements and where it differs from the real service.

    async with running() as graph:          # a real socket on 127.0.0.1, a free port
        alice = graph.sim.add_user("alice@example.com")
        graph.sim.create_event(alice.id, None, {...Graph event JSON...})
        ... point a client at graph.url ...

`create_app(sim)` gives the aiohttp application for serving it any other way.
"""

from calsync.testing.microsoft.app import RunningSimulator, create_app, running
from calsync.testing.microsoft.clock import SimClock
from calsync.testing.microsoft.errors import GraphError
from calsync.testing.microsoft.state import GraphSimulator

__all__ = ["GraphError", "GraphSimulator", "RunningSimulator", "SimClock", "create_app", "running"]
