"""WebDAV/CalDAV XML: the request bodies calsync sends and a hardened multistatus reader.

Responses come from servers named by users, so the parser trusts nothing: no DTD loading, no
entity resolution, no network, no huge-tree mode, and any document carrying a DOCTYPE is
refused outright (a multistatus never needs one; a billion-laughs or external-entity payload
always does). A multistatus is reduced to what the provider reads: per response its hrefs,
status and the properties found with a 2xx propstat.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from xml.sax.saxutils import escape

from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the dev set

from calsync.providers.base import ProviderError

DAV: Final = "DAV:"
CALDAV: Final = "urn:ietf:params:xml:ns:caldav"
CS: Final = "http://calendarserver.org/ns/"
ICAL: Final = "http://apple.com/ns/ical/"


def _clark(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


MULTISTATUS: Final = _clark(DAV, "multistatus")
RESPONSE: Final = _clark(DAV, "response")
HREF: Final = _clark(DAV, "href")
STATUS: Final = _clark(DAV, "status")
PROPSTAT: Final = _clark(DAV, "propstat")
PROP: Final = _clark(DAV, "prop")
SYNC_TOKEN: Final = _clark(DAV, "sync-token")
RESOURCETYPE: Final = _clark(DAV, "resourcetype")
COLLECTION: Final = _clark(DAV, "collection")
DISPLAYNAME: Final = _clark(DAV, "displayname")
GETETAG: Final = _clark(DAV, "getetag")
GETCONTENTTYPE: Final = _clark(DAV, "getcontenttype")
CURRENT_USER_PRINCIPAL: Final = _clark(DAV, "current-user-principal")
SUPPORTED_REPORT_SET: Final = _clark(DAV, "supported-report-set")
SYNC_COLLECTION: Final = _clark(DAV, "sync-collection")
PRIVILEGE_SET: Final = _clark(DAV, "current-user-privilege-set")
ERROR: Final = _clark(DAV, "error")
VALID_SYNC_TOKEN: Final = _clark(DAV, "valid-sync-token")
CALENDAR: Final = _clark(CALDAV, "calendar")
CALENDAR_DATA: Final = _clark(CALDAV, "calendar-data")
CALENDAR_HOME_SET: Final = _clark(CALDAV, "calendar-home-set")
COMPONENT_SET: Final = _clark(CALDAV, "supported-calendar-component-set")
COMP: Final = _clark(CALDAV, "comp")
GETCTAG: Final = _clark(CS, "getctag")
CALENDAR_COLOR: Final = _clark(ICAL, "calendar-color")

# Privileges that let the account change events (RFC 3744 aggregates included).
WRITE_PRIVILEGES: Final = frozenset(
    _clark(DAV, name) for name in ("write", "write-content", "all", "bind")
)

_HEADER = '<?xml version="1.0" encoding="utf-8"?>\n'
_NAMESPACES = f'xmlns:D="{DAV}" xmlns:C="{CALDAV}" xmlns:CS="{CS}" xmlns:I="{ICAL}"'
_CALENDAR_PROPS = (
    "<D:resourcetype/><D:displayname/><I:calendar-color/><C:supported-calendar-component-set/>"
    "<D:supported-report-set/><D:current-user-privilege-set/>"
)
_STATE_PROPS = "<CS:getctag/><D:sync-token/>"


def propfind(props: str) -> bytes:
    return f"{_HEADER}<D:propfind {_NAMESPACES}><D:prop>{props}</D:prop></D:propfind>".encode()


# The start URL may be a calendar, a principal, a calendar home or a server root: one PROPFIND
# tells which. getctag/sync-token are left out on purpose: some servers (Radicale) compute them
# by reading the whole collection.
DISCOVER: Final = propfind(_CALENDAR_PROPS + "<D:current-user-principal/><C:calendar-home-set/>")
PRINCIPAL: Final = propfind("<C:calendar-home-set/><D:current-user-principal/>")
CALENDARS: Final = propfind(_CALENDAR_PROPS)
CALENDARS_WITH_STATE: Final = propfind(_CALENDAR_PROPS + _STATE_PROPS)
CTAG: Final = propfind("<CS:getctag/><D:sync-token/>")
SYNC_TOKEN_ONLY: Final = propfind("<D:sync-token/>")
ETAGS: Final = propfind("<D:resourcetype/><D:getetag/><D:getcontenttype/>")


def sync_collection(token: str, *, with_data: bool) -> bytes:
    data = "<C:calendar-data/>" if with_data else ""
    return (
        f"{_HEADER}<D:sync-collection {_NAMESPACES}>"
        f"<D:sync-token>{escape(token)}</D:sync-token><D:sync-level>1</D:sync-level>"
        f"<D:prop><D:getetag/>{data}</D:prop></D:sync-collection>"
    ).encode()


def multiget(hrefs: list[str]) -> bytes:
    body = "".join(f"<D:href>{escape(href)}</D:href>" for href in hrefs)
    return (
        f"{_HEADER}<C:calendar-multiget {_NAMESPACES}>"
        f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{body}</C:calendar-multiget>"
    ).encode()


# Every calendar object of a collection with its data: a calendar-query whose only filter is
# the VCALENDAR component, which every object matches (RFC 4791, 9.7.1).
EVERY_OBJECT: Final = (
    f"{_HEADER}<C:calendar-query {_NAMESPACES}>"
    "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
    '<C:filter><C:comp-filter name="VCALENDAR"/></C:filter></C:calendar-query>'
).encode()


def calendar_query(start: str, end: str) -> bytes:
    """VEVENTs overlapping [start, end) (UTC, "YYYYMMDDTHHMMSSZ"), with their data.

    The VEVENT comp-filter is what iCloud insists on; every server accepts it.
    """
    return (
        f"{_HEADER}<C:calendar-query {_NAMESPACES}>"
        "<D:prop><D:getetag/><C:calendar-data/></D:prop>"
        '<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">'
        f'<C:time-range start="{start}" end="{end}"/>'
        "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
    ).encode()


# --- reading --------------------------------------------------------------------------------------


class HostileXML(ProviderError):
    """The server sent XML that is malformed or tries entity tricks; nothing of it is used."""

    retryable = False
    reason = "MalformedResponse"


def _parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers must not be shared between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )


def _declares_doctype(body: bytes) -> bool:
    """Whether the prolog (before the root element) holds a DOCTYPE: checked before parsing."""
    position = 3 if body.startswith(b"\xef\xbb\xbf") else 0
    size = len(body)
    while position < size:
        while position < size and body[position] in b" \t\r\n":
            position += 1
        for opening, closing in ((b"<?", b"?>"), (b"<!--", b"-->")):
            if body.startswith(opening, position):
                end = body.find(closing, position)
                if end < 0:
                    return False
                position = end + len(closing)
                break
        else:
            return body[position : position + 9].upper() == b"<!DOCTYPE"
    return False


def parse_xml(body: bytes) -> etree._Element:
    """Parse a response body with the hardened parser; refuse DTDs and malformed XML."""
    if _declares_doctype(body):
        raise HostileXML("the response declares a DOCTYPE; refused (entity expansion risk)")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        if "encoding" not in str(exc).lower() and "utf-8" not in str(exc).lower():
            raise HostileXML(f"malformed XML in the response: {exc}") from None
        # Stray non-UTF-8 bytes (seen in calendar data): replace them rather than lose the page.
        try:
            repaired = body.decode("utf-8", "replace").encode()
            root = etree.fromstring(repaired, _parser())
        except (etree.XMLSyntaxError, ValueError) as again:
            raise HostileXML(f"malformed XML in the response: {again}") from None
    if root.getroottree().docinfo.doctype:
        raise HostileXML("the response declares a DOCTYPE; refused (entity expansion risk)")
    return root


def status_code(text: str | None) -> int | None:
    """'HTTP/1.1 404 Not Found' -> 404."""
    if not text:
        return None
    parts = text.split(None, 2)
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


@dataclass(slots=True)
class DavResponse:
    href: str
    status: int | None = None  # the response-level status (404 members, 507 truncation)
    props: dict[str, etree._Element] = field(default_factory=dict)  # 2xx propstats only

    def text(self, tag: str) -> str | None:
        element = self.props.get(tag)
        if element is None:
            return None
        return element.text if element.text is not None else ""

    def hrefs_in(self, tag: str) -> list[str]:
        element = self.props.get(tag)
        if element is None:
            return []
        return [(h.text or "").strip() for h in element.iter(HREF) if h.text]

    def child_tags(self, tag: str) -> set[str]:
        element = self.props.get(tag)
        if element is None:
            return set()
        return {child.tag for child in element.iter() if isinstance(child.tag, str)}


@dataclass(slots=True)
class Multistatus:
    responses: list[DavResponse]
    sync_token: str | None = None


@dataclass(slots=True)
class _Walk:
    """What walking a multistatus found: its responses, then the sync-token (if any)."""

    sync_token: str | None = None


def _responses(
    body: bytes, walk: _Walk
) -> Iterator[tuple[list[str], int | None, list[etree._Element]]]:
    """Each DAV:response of a multistatus: its hrefs, its own status, and the properties of
    its 2xx propstats. The top-level sync-token is left in `walk` once the walk is done."""
    root = parse_xml(body)
    if root.tag != MULTISTATUS:
        raise HostileXML(f"expected a DAV:multistatus, got {str(root.tag)[:80]}")
    for node in root:
        tag = node.tag
        if tag == RESPONSE:
            hrefs: list[str] = []
            status: int | None = None
            props: list[etree._Element] = []
            for part in node:
                kind = part.tag
                if kind == HREF:
                    if part.text:
                        hrefs.append(part.text.strip())
                elif kind == PROPSTAT:
                    found = None
                    code = None
                    for piece in part:
                        if piece.tag == PROP:
                            found = piece
                        elif piece.tag == STATUS:
                            code = status_code(piece.text)
                    if found is not None and code is not None and 200 <= code < 300:
                        props.extend(found)
                elif kind == STATUS:
                    status = status_code(part.text)
            yield hrefs, status, props
        elif tag == SYNC_TOKEN:
            walk.sync_token = (node.text or "").strip() or None


def parse_multistatus(body: bytes) -> Multistatus:
    walk = _Walk()
    responses: list[DavResponse] = []
    for hrefs, status, props in _responses(body, walk):
        by_tag = {prop.tag: prop for prop in props}
        responses.extend(DavResponse(href, status, by_tag) for href in hrefs)
    return Multistatus(responses, walk.sync_token)


class Listed(NamedTuple):
    """One member of a listing answer (sync-collection, calendar-query), reduced to its texts.

    A tuple of strings rather than a `DavResponse`: a large listing holds tens of thousands
    of them, and plain tuples neither keep lxml elements alive nor weigh on the garbage
    collector while the pages are parsed and stored.
    """

    href: str
    status: int | None
    etag: str | None  # None: not among the 2xx properties; "" when present but empty
    data: str | None  # calendar-data, same convention
    collection: bool  # its resourcetype names a collection


@dataclass(slots=True)
class Listing:
    members: list[Listed]
    sync_token: str | None = None


def parse_listing(body: bytes) -> Listing:
    """A multistatus read for getetag, calendar-data and resourcetype only (same rules as
    `parse_multistatus`: response-level status, properties of 2xx propstats)."""
    walk = _Walk()
    members: list[Listed] = []
    for hrefs, status, props in _responses(body, walk):
        etag: str | None = None
        data: str | None = None
        collection = False
        for prop in props:
            name = prop.tag
            if name == CALENDAR_DATA:
                data = prop.text or ""
            elif name == GETETAG:
                etag = prop.text or ""
            elif name == RESOURCETYPE:
                collection = any(child.tag == COLLECTION for child in prop.iter())
        members.extend(Listed(href, status, etag, data, collection) for href in hrefs)
    return Listing(members, walk.sync_token)


def error_preconditions(body: bytes) -> set[str]:
    """The precondition elements of a DAV:error body (e.g. DAV:valid-sync-token), if any."""
    if not body.lstrip().startswith(b"<"):
        return set()
    try:
        root = parse_xml(body)
    except HostileXML:
        return set()
    if root.tag != ERROR:
        return set()
    return {child.tag for child in root if isinstance(child.tag, str)}
