"""CalDAV sync end to end without Kubernetes: a real Radicale, the engine, a real store.

Every test runs on SQLite and on PostgreSQL (`store_url`). The server is changed the way users
change it, through a CalDAV client library (`caldav`), and after each sync the store must equal
the server exactly: the same objects with the same etags and the same raw data.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote, unquote, urljoin

import caldav
import httpx
import pytest
from lxml import etree

from calsync.model import Window
from calsync.providers.caldav import CalDAVProvider
from calsync.store import EventStore
from calsync.sync.engine import SyncEngine
from calsync.testing.icalgen import generate_events
from tests.integration.failing_store import FailingStore

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WINDOW = Window.around(NOW, 365, 730)
CONN = "team-a/alice"


def provider_for(cal: Any, **options: Any) -> CalDAVProvider:
    return CalDAVProvider(
        cal.url,
        cal.user,
        cal.password,
        allow_insecure_http=True,
        allow_private_addresses=True,
        **options,
    )


def client_calendar(cal: Any) -> Any:
    client = caldav.DAVClient(url=cal.url, username=cal.user, password=cal.password)
    return client.calendar(url=cal.url)


def server_state(cal: Any) -> dict[str, tuple[str, str]]:
    """href -> (etag, data) as the server has it: a plain PROPFIND and GETs, not our provider."""
    body = (
        '<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>'
    )
    auth = (cal.user, cal.password)
    listing = httpx.request(
        "PROPFIND", cal.url, content=body, headers={"Depth": "1"}, auth=auth, timeout=30
    )
    assert listing.status_code == 207
    root = etree.fromstring(listing.content, etree.XMLParser(resolve_entities=False))
    state = {}
    for response in root.iter("{DAV:}response"):
        href = unquote(response.findtext("{DAV:}href") or "")
        etag = response.findtext(".//{DAV:}getetag")
        if not href.endswith(".ics") or etag is None:
            continue
        data = httpx.get(urljoin(cal.url, quote(href)), auth=auth, timeout=30)
        state[href] = (etag.strip('"'), data.text)
    return state


async def store_state(store: EventStore, calendar_id: str) -> dict[str, str]:
    etags = await store.known_etags(CONN, calendar_id)
    return {pid: str(etag or "").strip('"') for pid, etag in etags.items()}


async def assert_store_equals_server(store: EventStore, cal: Any) -> None:
    server = server_state(cal)
    stored = await store_state(store, cal.path)
    assert stored == {href: etag for href, (etag, _) in server.items()}
    exported = await store.export_ics(CONN, cal.path)
    for href in server:
        uid = next(
            line.split(":", 1)[1].strip()
            for line in server[href][1].splitlines()
            if line.startswith("UID:")
        )
        assert uid in exported
    result = await store.query(CONN, calendar_id=cal.path, expand=False, include_cancelled=True)
    assert {o.provider_id for o in result.occurrences} == set(server)


async def sync(store: EventStore, cal: Any, **options: Any) -> Any:
    provider = provider_for(cal, **options)
    try:
        return await SyncEngine(store, batch_size=50).sync_connection(CONN, provider, window=WINDOW)
    finally:
        await provider.aclose()


async def test_create_modify_delete_recurring_all_day_time_zones(
    store: EventStore, caldav_calendar: Any
) -> None:
    objects = generate_events(60, seed=3, start=NOW)
    calendar = client_calendar(caldav_calendar)
    for text in objects.values():
        calendar.save_event(text)
    first = await sync(store, caldav_calendar)
    assert first.calendars[0].full
    await assert_store_equals_server(store, caldav_calendar)
    kinds = await store.query(CONN, calendar_id=caldav_calendar.path, expand=False)
    assert any(o.all_day for o in kinds.occurrences)
    assert len({o.timezone for o in kinds.occurrences if not o.all_day}) >= 3
    assert any(o.recurrence_id for o in kinds.occurrences)  # overrides of a series

    # A client modifies one series (a moved occurrence), deletes one event, adds one.
    events = calendar.events()
    victim, changed = events[0], events[1]
    victim.delete()
    ical = changed.icalendar_instance
    for component in ical.walk("VEVENT"):
        component["SUMMARY"] = "Changed by a client"
    changed.data = ical.to_ical().decode()
    changed.save()
    (extra,) = generate_events(1, seed=11, start=NOW).values()
    calendar.save_event(extra)

    second = await sync(store, caldav_calendar)
    work = second.calendars[0]
    assert not work.full
    assert work.deleted >= 1 and work.fetched == 2
    await assert_store_equals_server(store, caldav_calendar)
    summaries = {
        o.summary for o in (await store.query(CONN, calendar_id=caldav_calendar.path, expand=False))
    }
    assert "Changed by a client" in summaries

    # Nothing changed: nothing fetched, nothing written.
    third = await sync(store, caldav_calendar)
    assert (third.fetched, third.upserted, third.deleted) == (0, 0, 0)


async def test_invalid_token_leads_to_a_full_resync(
    store: EventStore, caldav_calendar: Any
) -> None:
    caldav_calendar.seed(generate_events(20, seed=4, start=NOW))
    await sync(store, caldav_calendar)
    # The server forgets our token (Radicale drops them after 30 days); meanwhile an object
    # vanished without the store hearing of it.
    await store.set_cursor(CONN, caldav_calendar.path, "sync:http://radicale.org/ns/sync/0bad")
    victim = sorted(server_state(caldav_calendar))[0]
    caldav_calendar.delete(victim.rsplit("/", 1)[1])
    result = await sync(store, caldav_calendar)
    assert result.calendars[0].cursor_reset
    await assert_store_equals_server(store, caldav_calendar)


async def test_failure_between_pages_then_rerun_converges(
    store_url: str, caldav_calendar: Any
) -> None:
    caldav_calendar.seed(generate_events(180, seed=5, start=NOW))
    store = await FailingStore.open(store_url)
    try:
        store.fail_on = 3  # pages of 50: two committed, the third dies
        with pytest.raises(ConnectionResetError):
            await sync(store, caldav_calendar)
        assert await store.get_cursor(CONN, caldav_calendar.path) is None
        partial = await store_state(store, caldav_calendar.path)
        assert 0 < len(partial) < 180

        await sync(store, caldav_calendar)
        await assert_store_equals_server(store, caldav_calendar)
        rows = await store.query(
            CONN, calendar_id=caldav_calendar.path, expand=False, include_cancelled=True
        )
        keys = [(o.provider_id, o.recurrence_id) for o in rows.occurrences]
        assert len(keys) == len(set(keys))  # no duplicates
    finally:
        await store.close()


async def test_fallback_ladder_reaches_the_same_state(
    store: EventStore, caldav_calendar: Any
) -> None:
    caldav_calendar.seed(generate_events(30, seed=6, start=NOW))
    await sync(store, caldav_calendar, use_sync_collection=False)
    await assert_store_equals_server(store, caldav_calendar)
    victim = sorted(server_state(caldav_calendar))[0]
    caldav_calendar.delete(victim.rsplit("/", 1)[1])
    (extra,) = generate_events(1, seed=12, start=NOW).values()
    caldav_calendar.put("added.ics", extra)
    result = await sync(store, caldav_calendar, use_sync_collection=False)
    assert result.calendars[0].fetched == 1 and result.calendars[0].deleted == 1
    await assert_store_equals_server(store, caldav_calendar)
    unchanged = await sync(store, caldav_calendar, use_sync_collection=False)
    assert unchanged.fetched == 0


async def test_malformed_object_is_skipped_and_reported(
    store: EventStore, caldav_calendar: Any
) -> None:
    objects = generate_events(5, seed=8, start=NOW)
    # Well-formed enough for the server, too deep for our extractor (a hostile nesting).
    nested = [f"X-LEVEL{i}" for i in range(10)]
    objects["broken.ics"] = "\r\n".join(
        [
            "BEGIN:VCALENDAR",
            "VERSION:2.0",
            "PRODID:-//test//EN",
            "BEGIN:VEVENT",
            "UID:deep@calsync.test",
            f"DTSTART:{NOW:%Y%m%dT%H%M%SZ}",
            *[f"BEGIN:{n}" for n in nested],
            *[f"END:{n}" for n in reversed(nested)],
            "END:VEVENT",
            "END:VCALENDAR",
            "",
        ]
    )
    caldav_calendar.seed(objects)
    result = await sync(store, caldav_calendar)
    assert [pid for pid, _ in result.skipped] == [caldav_calendar.provider_id("broken.ics")]
    assert len(await store_state(store, caldav_calendar.path)) == 5
