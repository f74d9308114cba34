"""The listing-page reader both JSON providers use: members, items, and each item's own text."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calsync.providers.jsonpage import PageReader

pytestmark = pytest.mark.unit

GOOGLE = PageReader("items", ("nextPageToken", "nextSyncToken", "timeZone"))
GRAPH = PageReader("value", ("@odata.nextLink", "@odata.deltaLink"), required=True)


def test_items_keep_their_text_as_received() -> None:
    text = (
        ' {"kind": "calendar#events", "items" : [ {"id": "a", "summary": "x, ]}"} ,'
        '{"id":"b","n":[1,{"c":"}"}], "s": "Zürich \\u00e9"}\n], "nextSyncToken": "tok"} \n'
    )
    head, items = GOOGLE.read(text.encode())
    assert head == {"nextSyncToken": "tok"}  # members not asked for are skipped
    assert [raw for _, raw in items] == [
        '{"id": "a", "summary": "x, ]}"}',
        '{"id":"b","n":[1,{"c":"}"}], "s": "Zürich \\u00e9"}',
    ]
    assert items[1][0] == {"id": "b", "n": [1, {"c": "}"}], "s": "Zürich é"}
    for decoded, raw in items:
        assert json.loads(raw) == decoded


def test_graph_members_with_odd_names_and_null_members() -> None:
    text = (
        '{ "@odata.context": "c",\n "value": [ {"id": "a", "x": [1, {"y": "é"}]} ,{"id":"b"} ],'
        '\n "@odata.nextLink": null, "@odata.deltaLink": "d" }'
    )
    head, items = GRAPH.read(text.encode())
    assert head == {"@odata.deltaLink": "d"}
    assert [raw for _, raw in items] == ['{"id": "a", "x": [1, {"y": "é"}]}', '{"id":"b"}']
    assert GRAPH.read(b'{"value": []}') == ({}, [])


def test_optional_items_may_be_missing_or_null() -> None:
    assert GOOGLE.read(b"{}") == ({}, [])
    assert GOOGLE.read(b'{"items": null, "timeZone": "UTC"}') == ({"timeZone": "UTC"}, [])


@pytest.mark.parametrize(
    "text",
    [
        b'[{"id": "a"}]',
        b'{"items": [{"id": "a"}',
        b'{"items": [1 2]}',
        b'{"a": 1} x',
        b"",
        b'{"a" 1}',
        b'{"items": 3}',
        b'{"items": [{"s": "\xff"}]}',
    ],
)
def test_what_is_not_one_listing_object_is_refused(text: bytes) -> None:
    with pytest.raises(ValueError):
        GOOGLE.read(text)


@pytest.mark.parametrize("text", [b'{"other": 1}', b'{"value": {}}', b"[1]", b'{"value": [1,]}'])
def test_a_required_items_array_must_be_there(text: bytes) -> None:
    with pytest.raises(ValueError):
        GRAPH.read(text)


class Item(msgspec.Struct, kw_only=True):
    id: Any = None
    start: Any = None


TYPED = PageReader("items", ("nextSyncToken",), item_type=Item)


def test_typed_items_hold_only_the_named_members_and_keep_their_text() -> None:
    text = (
        b'{"items": [{"id": "a", "x": {"deep": [1]}, "start": {"date": "2025-01-01"}}, {"x": 1}]}'
    )
    head, items = TYPED.read(text)
    assert head == {}
    assert [item for item, _ in items] == [Item(id="a", start={"date": "2025-01-01"}), Item()]
    assert items[0][1] == '{"id": "a", "x": {"deep": [1]}, "start": {"date": "2025-01-01"}}'


def test_a_typed_page_hands_items_that_are_not_objects_over_as_they_are() -> None:
    # The caller rejects them one by one; the page's other items are still read.
    head, items = TYPED.read(
        b'{"items": [{"id": "a"}, "text", [1], null, 3], "nextSyncToken": "t"}'
    )
    assert head == {"nextSyncToken": "t"}
    assert [item for item, _ in items] == [Item(id="a"), "text", [1], None, 3]
    assert [raw for _, raw in items] == ['{"id": "a"}', '"text"', "[1]", "null", "3"]


# -- hostile pages --------------------------------------------------------------------------------

_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)
_PAGES = st.fixed_dictionaries(
    {}, optional={"items": _JSON, "nextPageToken": _JSON, "nextSyncToken": _JSON}
).map(lambda page: json.dumps(page).encode())


def _deep(depth: int, where: str) -> bytes:
    nest = b"[" * depth + b"]" * depth
    if where == "item":
        return b'{"items": [{"a": ' + nest + b"}]}"
    return b'{"nextPageToken": ' + nest + b', "items": []}'


@given(st.binary(max_size=1024) | _PAGES)
@example(_deep(100_000, "item"))
@example(_deep(100_000, "member"))
@example(b"\xff\xfe{}")
@settings(max_examples=300, deadline=None)
def test_any_page_is_read_or_refused_with_a_value_error(content: bytes) -> None:
    for reader in (PageReader("items", ["nextPageToken", "nextSyncToken"]), TYPED):
        try:
            head, items = reader.read(content)
        except ValueError as exc:
            assert str(exc)
            continue
        assert set(head) <= {"nextPageToken", "nextSyncToken"}
        assert all(isinstance(text, str) for _, text in items)
        if reader is TYPED:  # an object becomes the struct, anything else stays as it was
            assert all(isinstance(item, Item) == text.startswith("{") for item, text in items)
