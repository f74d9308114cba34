"""All of the Google simulator's state, in memory, and the operations on it.

`GoogleSimulator` is both what the HTTP app serves (the `api_*` methods, called with the
caller's access grant, and the OAuth endpoints in `oauth`) and what tests drive directly from
Python (the methods without a prefix, mirrored one to one by the admin API under `/_admin/`).
It is not thread-safe: use it from the event loop that serves it, or through the admin API.

Changes are numbered by one simulator-wide counter. A sync token stands for "everything of this
calendar (or calendar list) up to change N, listed with these parameters"; an incremental
listing returns what changed after N, deleted events as `cancelled` (paging.py, listing.py).
Invalidating a calendar's tokens (admin) makes every outstanding one answer 410
`fullSyncRequired`. Parts live in their own modules: event writes (writes.py), OAuth
(oauth.py), push channels (push.py), faults and counters (faults.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from calsync.testing.google import listing
from calsync.testing.google.errors import GoogleError, not_found
from calsync.testing.google.faults import Fault, RateLimit, Stats, fault_from
from calsync.testing.google.model import (
    PALETTE,
    ROLES,
    WRITE_ROLES,
    CalendarData,
    ListEntry,
    Settings,
    User,
)
from calsync.testing.google.oauth import (
    DEFAULT_SCOPE,
    WRITE_SCOPES,
    AccessGrant,
    OAuthServer,
    insufficient_scopes,
)
from calsync.testing.google.paging import Pager
from calsync.testing.google.push import Channels, Deliverer, PushSettings
from calsync.testing.google.times import zone
from calsync.testing.google.writes import EventWriter, random_event_id


class GoogleSimulator:
    """Accounts, calendars, events, OAuth and push channels of a simulated Google."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        access_token_ttl: float = 3600.0,
        refresh_token_ttl: float | None = None,
        require_https: bool = False,
        push_retry_backoff: float = 0.5,
        push_max_attempts: int = 4,
    ) -> None:
        self.clock = clock
        self.settings = Settings(
            access_token_ttl=access_token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            require_https=require_https,
        )
        self.push = Deliverer(
            self.now,
            PushSettings(retry_backoff=push_retry_backoff, max_attempts=push_max_attempts),
            seed,
        )
        self.base_url = "https://www.googleapis.com"  # the served URL once running
        self._reset()

    def _reset(self) -> None:
        self._seq = 0
        self.users: dict[str, User] = {}
        self.calendars: dict[str, CalendarData] = {}
        self.oauth = OAuthServer(self.now, self.settings, lambda email: email in self.users)
        self.pager = Pager()
        self.channels_registry = Channels(self.now, self.settings, self.push)
        self.writer = EventWriter(self.now, self._next_seq)
        self._faults: list[Fault] = []
        self._fault_ids = 0
        self.rate_limit: RateLimit | None = None
        self.stats_data = Stats()

    def reset(self) -> None:
        """Forget every user, calendar, client, token, channel, fault and counter."""
        self.channels_registry.close_all()
        in_flight = self.stats_data.in_flight
        self._reset()
        self.stats_data.in_flight = in_flight

    def now(self) -> float:
        """The simulator's time (`clock` may be replaced at any moment, e.g. by a test)."""
        return self.clock()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- users and calendars ------------------------------------------------------------------

    def create_user(self, email: str, *, time_zone: str = "UTC") -> dict[str, Any]:
        """A user with a primary calendar whose id is the email address. The first user
        created is the default consenting user."""
        if not isinstance(email, str) or "@" not in email or len(email) > 254 or "/" in email:
            raise ValueError("a user needs an email address")
        if zone(time_zone) is None:
            raise ValueError(f"unknown time zone {time_zone!r}")
        if email in self.users or email in self.calendars:
            raise ValueError(f"user {email} exists")
        self.users[email] = User(email, time_zone)
        self.create_calendar(email, summary=email, time_zone=time_zone, calendar_id=email)
        self.calendars[email].primary = True
        if self.oauth.consent_user is None:
            self.oauth.consent_user = email
        return {"email": email, "timeZone": time_zone, "primary": email}

    def _user(self, email: str) -> User:
        user = self.users.get(email)
        if user is None:
            raise KeyError(f"no user {email!r}")
        return user

    def _calendar(self, calendar_id: str) -> CalendarData:
        calendar = self.calendars.get(calendar_id)
        if calendar is None:
            raise KeyError(f"no calendar {calendar_id!r}")
        return calendar

    def create_calendar(
        self,
        owner: str,
        *,
        summary: str,
        time_zone: str | None = None,
        calendar_id: str | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """A calendar owned by `owner` (a secondary one unless its id is the owner's email)."""
        user = self._user(owner)
        tz = time_zone or user.time_zone
        if zone(tz) is None:
            raise ValueError(f"unknown time zone {tz!r}")
        cid = calendar_id or f"{random_event_id(26)}@group.calendar.google.com"
        if cid in self.calendars or cid == "primary" or "/" in cid or not cid.strip():
            raise ValueError(f"calendar id {cid!r} is taken or unusable")
        self.calendars[cid] = CalendarData(
            cid,
            owner,
            str(summary),
            str(description),
            tz,
            self.clock(),
            resource_id=base64.urlsafe_b64encode(secrets.token_bytes(20)).decode().rstrip("="),
        )
        self._set_entry(user, cid, "owner")
        return self.calendars[cid].resource()

    def _set_entry(self, user: User, calendar_id: str, role: str) -> None:
        entry = user.entries.get(calendar_id)
        if entry is None:
            color = list(PALETTE)[len(user.entries) % len(PALETTE)]
            user.entries[calendar_id] = ListEntry(calendar_id, role, self._next_seq(), color)
        else:
            entry.role, entry.deleted, entry.seq = role, False, self._next_seq()

    def share_calendar(self, calendar_id: str, user: str, role: str = "reader") -> None:
        """Give `user` access with `role`: the calendar appears in their calendar list."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        calendar = self._calendar(calendar_id)
        if user == calendar.owner:
            raise ValueError("the owner's access cannot change")
        self._set_entry(self._user(user), calendar_id, role)

    def unshare_calendar(self, calendar_id: str, user: str) -> None:
        """Take access away: the entry becomes `deleted: true` in the user's list."""
        calendar = self._calendar(calendar_id)
        if user == calendar.owner:
            raise ValueError("the owner's access cannot change")
        entry = self._user(user).entries.get(calendar_id)
        if entry is None or entry.deleted:
            raise KeyError(f"{calendar_id!r} is not shared with {user!r}")
        entry.deleted, entry.seq = True, self._next_seq()

    def delete_calendar(self, calendar_id: str) -> None:
        """Delete a secondary calendar: gone from every list; its channels get `not_exists`."""
        calendar = self._calendar(calendar_id)
        if calendar.primary:
            raise ValueError("a primary calendar cannot be deleted")
        for user in self.users.values():
            entry = user.entries.get(calendar_id)
            if entry is not None and not entry.deleted:
                entry.deleted, entry.seq = True, self._next_seq()
        del self.calendars[calendar_id]
        self.channels_registry.calendar_gone(calendar_id)

    def set_calendar_entry(
        self,
        user: str,
        calendar_id: str,
        *,
        summary_override: str | None = None,
        hidden: bool | None = None,
        color_id: str | None = None,
    ) -> None:
        """Change how a calendar shows in one user's list (as the user would in the UI)."""
        entry = self._user(user).entries.get(calendar_id)
        if entry is None or entry.deleted:
            raise KeyError(f"{calendar_id!r} is not in {user!r}'s list")
        if color_id is not None and color_id not in PALETTE:
            raise ValueError(f"colorId must be one of {', '.join(PALETTE)}")
        if summary_override is not None:
            entry.summary_override = summary_override or None
        if hidden is not None:
            entry.hidden = hidden
        if color_id is not None:
            entry.color_id = color_id
        entry.seq = self._next_seq()

    # -- events -------------------------------------------------------------------------------

    def _changed(self, calendar: CalendarData, seq: int, notify: bool = True) -> None:
        calendar.seq = max(calendar.seq, seq)
        if notify:
            self.channels_registry.changed(calendar.id)

    def create_event(
        self, calendar_id: str, body: Mapping[str, Any], *, notify: bool = True
    ) -> dict[str, Any]:
        """Insert an event; with `recurringEventId` + `originalStartTime`, an exception.

        `id`, `iCalUID` and `organizer` are taken as given. Raises GoogleError (400) for a body
        Google would refuse, KeyError for an unknown calendar.
        """
        calendar = self._calendar(calendar_id)
        if isinstance(body, Mapping) and body.get("recurringEventId") is not None:
            event = self.writer.exception(calendar, body)
        else:
            event = self.writer.insert(calendar, body, admin=True)
        self._changed(calendar, event.seq, notify)
        return event.resource()

    def update_event(
        self, calendar_id: str, event_id: str, patch: Mapping[str, Any], *, notify: bool = True
    ) -> dict[str, Any]:
        """PATCH semantics; an instance id (`<master>_<stamp>`) changes that one instance."""
        calendar = self._calendar(calendar_id)
        event = self.writer.patch(calendar, event_id, patch, admin=True, replace_all=False)
        self._changed(calendar, event.seq, notify)
        return event.resource()

    def delete_event(self, calendar_id: str, event_id: str, *, notify: bool = True) -> None:
        """Delete an event (a cancelled tombstone stays for incremental sync). An instance id
        cancels that one instance; a master takes its exceptions along."""
        calendar = self._calendar(calendar_id)
        event = self.writer.delete(calendar, event_id)
        self._changed(calendar, event.seq, notify)

    def cancel_instance(
        self,
        calendar_id: str,
        master_id: str,
        original_start: Mapping[str, str],
        *,
        notify: bool = True,
    ) -> dict[str, Any]:
        """Cancel one instance of a series, named by its `originalStartTime`."""
        calendar = self._calendar(calendar_id)
        event = self.writer.cancel_instance(calendar, master_id, original_start)
        self._changed(calendar, event.seq, notify)
        return event.resource()

    def notify(self, calendar_id: str) -> None:
        """Send `exists` to the calendar's channels (after changes made with notify=False)."""
        self.channels_registry.changed(self._calendar(calendar_id).id)

    def generate_events(
        self, calendar_id: str, count: int, *, seed: int = 1, start: dt.datetime | None = None
    ) -> dict[str, int]:
        """Bulk-insert `count` deterministic events (see generate.py)."""
        from calsync.testing.google.generate import generate

        return generate(self, calendar_id, count, seed=seed, start=start)

    def event_resources(self, calendar_id: str) -> list[dict[str, Any]]:
        """Every stored event of a calendar, cancelled ones included, as full resources."""
        return [event.resource() for event in self._calendar(calendar_id).events.values()]

    def live_events(self, calendar_id: str) -> dict[str, dict[str, Any]]:
        """What a full listing without showDeleted holds: event id -> full resource."""
        shown = listing.shown(self._calendar(calendar_id), show_deleted=False)
        return {event.id: event.resource() for event in shown}

    def invalidate_sync_tokens(
        self, calendar_id: str | None = None, *, user: str | None = None
    ) -> None:
        """Make the outstanding sync tokens of a calendar (or of a user's calendar list)
        answer 410 fullSyncRequired."""
        if calendar_id is not None:
            self._calendar(calendar_id).epoch += 1
        if user is not None:
            self._user(user)
            self.pager.forget("calendarList", user)

    # -- OAuth (admin) ------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
    ) -> dict[str, Any]:
        return self.oauth.register_client(client_id, client_secret, redirect_uris)

    def set_consent(self, user: str | None = None, *, deny: bool = False) -> None:
        """Who the authorization endpoint consents as (without login_hint), or deny it."""
        self.oauth.set_consent(user, deny=deny)

    def mint_refresh_token(self, user: str, client_id: str, scope: str = DEFAULT_SCOPE) -> str:
        """A refresh token for (user, client) without the consent dance (pre-provisioned)."""
        return self.oauth.mint_refresh_token(user, client_id, scope)

    def mint_access_token(
        self,
        user: str,
        client_id: str = "admin",
        scope: str = DEFAULT_SCOPE,
        ttl: float | None = None,
    ) -> str:
        """An access token for direct use (StaticTokens, benchmarks)."""
        return self.oauth.mint_access_token(user, client_id, scope, ttl)

    def expire_access_tokens(self, user: str | None = None) -> int:
        """Expire every access token now (of one user, or all); returns how many."""
        return self.oauth.expire_access_tokens(user)

    def revoke_refresh_tokens(self, user: str, client_id: str | None = None) -> int:
        """Revoke a user's refresh tokens and the access tokens bought with them."""
        self._user(user)
        return self.oauth.revoke_refresh_tokens(user, client_id)

    # -- faults and counters (admin) ----------------------------------------------------------

    def inject_fault(self, **spec: Any) -> dict[str, Any]:
        """The next `count` API requests matching `method` / `path` fail as `kind` says."""
        self._fault_ids += 1
        fault = fault_from(spec, self._fault_ids)
        self._faults.append(fault)
        return fault.as_json()

    def faults(self) -> list[dict[str, Any]]:
        return [f.as_json() for f in self._faults]

    def clear_faults(self) -> None:
        self._faults.clear()

    def take_fault(self, method: str, path: str, query: str, user: str | None) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path, query, user):
                fault.remaining -= 1
                fault.served += 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def set_rate_limit(
        self, per_second: float | None, retry_after: float | str | None = None
    ) -> None:
        """At most `per_second` API requests per user in any second (None: no limit)."""
        if per_second is None:
            self.rate_limit = None
            return
        if not isinstance(per_second, (int, float)) or isinstance(per_second, bool):
            raise ValueError("per_second must be a positive number")
        if per_second <= 0:
            raise ValueError("per_second must be a positive number")
        text = None if retry_after is None else str(retry_after)
        self.rate_limit = RateLimit(float(per_second), text)

    def stats(self) -> dict[str, Any]:
        return self.stats_data.as_json()

    def reset_stats(self) -> None:
        in_flight = self.stats_data.in_flight
        self.stats_data = Stats()
        self.stats_data.in_flight = in_flight

    def channels(self) -> list[dict[str, Any]]:
        """Open channels, then stopped ones (the last thousand), with their delivery logs."""
        return self.channels_registry.as_json()

    # -- the API ------------------------------------------------------------------------------

    def _access_to(self, grant: AccessGrant, calendar_id: str) -> tuple[CalendarData, ListEntry]:
        """The calendar if the caller's list has it ("primary" is their own); else 404."""
        cid = grant.user if calendar_id == "primary" else calendar_id
        user = self.users.get(grant.user)
        entry = user.entries.get(cid) if user is not None else None
        calendar = self.calendars.get(cid)
        if entry is None or entry.deleted or calendar is None:
            raise not_found()
        return calendar, entry

    def _writable(self, grant: AccessGrant, calendar_id: str) -> CalendarData:
        calendar, entry = self._access_to(grant, calendar_id)
        if not grant.scopes() & WRITE_SCOPES:
            raise insufficient_scopes()
        if entry.role not in WRITE_ROLES:
            raise GoogleError(
                403, "requiredAccessLevel", "You need to have writer access to this calendar."
            )
        return calendar

    def api_calendar_list(self, grant: AccessGrant, query: Mapping[str, str]) -> bytes:
        return listing.list_calendars(
            self._user(grant.user), self.calendars, query, self.pager, seq=self._seq
        )

    def api_calendar_list_entry(self, grant: AccessGrant, calendar_id: str) -> dict[str, Any]:
        _, entry = self._access_to(grant, calendar_id)
        return listing.entry_resource(self._user(grant.user), entry, self.calendars)

    def api_calendar(self, grant: AccessGrant, calendar_id: str) -> dict[str, Any]:
        calendar, _ = self._access_to(grant, calendar_id)
        return calendar.resource()

    def api_list_events(
        self,
        grant: AccessGrant,
        calendar_id: str,
        query: Mapping[str, str],
        multi: Mapping[str, list[str]] | None = None,
    ) -> bytes:
        calendar, entry = self._access_to(grant, calendar_id)
        return listing.list_events(
            calendar,
            entry.role,
            grant.user,
            query,
            multi or {},
            self.pager,
            seq=self._seq,
            now=self.clock(),
            horizon_days=self.settings.instance_horizon_days,
        )

    def api_get_event(self, grant: AccessGrant, calendar_id: str, event_id: str) -> dict[str, Any]:
        calendar, entry = self._access_to(grant, calendar_id)
        event, master, original = self.writer.find(calendar, event_id)
        if event is not None:
            resource = event.resource()
        else:
            assert master is not None and original is not None
            resource = listing.instance_resource(
                master, master.resource(), original, listing.duration(master)
            )
        if entry.role == "freeBusyReader":
            resource = {k: v for k, v in resource.items() if k in listing.FREE_BUSY_FIELDS}
        return resource

    def api_insert_event(self, grant: AccessGrant, calendar_id: str, body: Any) -> dict[str, Any]:
        calendar = self._writable(grant, calendar_id)
        event = self.writer.insert(calendar, body, admin=False)
        self._changed(calendar, event.seq)
        return event.resource()

    def api_update_event(
        self,
        grant: AccessGrant,
        calendar_id: str,
        event_id: str,
        body: Any,
        *,
        replace_all: bool,
        if_match: str | None,
    ) -> dict[str, Any]:
        calendar = self._writable(grant, calendar_id)
        self._precondition(calendar, event_id, if_match)
        event = self.writer.patch(calendar, event_id, body, admin=False, replace_all=replace_all)
        self._changed(calendar, event.seq)
        return event.resource()

    def api_delete_event(
        self, grant: AccessGrant, calendar_id: str, event_id: str, if_match: str | None
    ) -> None:
        calendar = self._writable(grant, calendar_id)
        self._precondition(calendar, event_id, if_match)
        event = self.writer.delete(calendar, event_id)
        self._changed(calendar, event.seq)

    def _precondition(self, calendar: CalendarData, event_id: str, if_match: str | None) -> None:
        if if_match is None or if_match.strip() == "*":
            return
        event = calendar.events.get(event_id)
        if event is None or event.etag != if_match.strip():
            raise GoogleError(412, "conditionNotMet", "Precondition Failed")

    def api_watch(
        self, grant: AccessGrant, calendar_id: str, body: Any, base_url: str
    ) -> dict[str, Any]:
        calendar, _ = self._access_to(grant, calendar_id)
        return self.channels_registry.watch(
            user=grant.user,
            client_id=grant.client_id,
            calendar_id=calendar.id,
            resource_id=calendar.resource_id,
            body=body,
            base_url=base_url,
        )

    def api_stop_channel(self, grant: AccessGrant, body: Any) -> None:
        self.channels_registry.stop(user=grant.user, client_id=grant.client_id, body=body)
