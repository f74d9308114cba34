"""Hostile CalDAV XML, generated and hand-made: every parser either reads the document or
raises the provider's HostileXML (a clear, non-retryable job failure), never anything else;
entities are never expanded and nothing is fetched."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calsync.providers.caldav import xml

pytestmark = pytest.mark.unit

MULTISTATUS = (
    b'<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
    b'<d:response><d:href>/cal/a.ics</d:href><d:propstat><d:prop><d:getetag>"1"</d:getetag>'
    b"</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>&x;</d:href></d:response>'
    b"</d:multistatus>"
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>&c;</d:href></d:response>'
    b"</d:multistatus>"
)
DEEP = (
    b'<d:multistatus xmlns:d="DAV:">' + b"<d:x>" * 50_000 + b"</d:x>" * 50_000 + b"</d:multistatus>"
)


def _mutated(data: bytes, position: int, byte: int) -> bytes:
    return data[:position] + bytes([byte]) + data[position + 1 :] if data else data


@given(
    st.binary(max_size=512)
    | st.builds(
        _mutated, st.just(MULTISTATUS), st.integers(0, len(MULTISTATUS) - 1), st.integers(0, 255)
    )
)
@example(XXE)
@example(LAUGHS)
@example(DEEP)
@example(b"")
@example(b"<html><body>a login page</body></html>")
@settings(max_examples=300, deadline=None)
def test_every_parser_reads_or_refuses_with_hostile_xml(body: bytes) -> None:
    for parse in (xml.parse_multistatus, xml.parse_listing):
        try:
            parse(body)
        except xml.HostileXML as exc:
            assert str(exc)
    assert isinstance(xml.error_preconditions(body), set)


@pytest.mark.parametrize("body", [XXE, LAUGHS], ids=["external-entity", "billion-laughs"])
def test_documents_with_a_doctype_are_refused_before_any_expansion(body: bytes) -> None:
    with pytest.raises(xml.HostileXML, match="DOCTYPE"):
        xml.parse_multistatus(body)
