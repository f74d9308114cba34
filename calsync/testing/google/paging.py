"""Page tokens and sync tokens: opaque strings that stand for server-side state.

A listing is computed once, at its first page, as the list of its items' JSON; a page token
names the rest of that list (and the parameters it was asked with), so later pages neither
recompute nor drift while the data changes. Only the last page carries the sync token. A sync
token names the change number up to which its listing saw the data, the calendar's
invalidation epoch, and the parameters that must match when it is used.

Both kinds are random strings looked up in bounded tables (oldest dropped first): a token that
fell out is answered like an expired one.
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any, Final

from calsync.testing.google.errors import bad_request

MAX_SYNC_TOKENS: Final = 100_000
MAX_PAGE_STATES: Final = 10_000

Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SyncState:
    kind: str  # "events" | "calendarList"
    scope: str  # calendar id, or the user of a calendar list
    seq: int
    epoch: int
    bound: Params  # parameters that must be the same when the token is used


@dataclass(frozen=True)
class PageState:
    kind: str
    scope: str
    user: str
    params: Params
    items: list[bytes]
    offset: int
    head: dict[str, Any]
    sync_token: str | None


class Pager:
    def __init__(self) -> None:
        self._sync: collections.OrderedDict[str, SyncState] = collections.OrderedDict()
        self._pages: collections.OrderedDict[str, PageState] = collections.OrderedDict()

    def issue(self, state: SyncState) -> str:
        token = "C" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        self._sync[token] = state
        while len(self._sync) > MAX_SYNC_TOKENS:
            self._sync.popitem(last=False)
        return token

    def sync_state(self, token: str) -> SyncState | None:
        return self._sync.get(token)

    def forget(self, kind: str, scope: str) -> None:
        for token, state in list(self._sync.items()):
            if state.kind == kind and state.scope == scope:
                del self._sync[token]

    def first_page(self, state: PageState, size: int) -> bytes:
        return self._serve(state, size)

    def next_page(
        self, token: str, *, kind: str, scope: str, user: str, params: Params, size: int
    ) -> bytes:
        state = self._pages.get(token)
        if state is None:
            raise bad_request("Invalid page token.")
        if (state.kind, state.scope, state.user, state.params) != (kind, scope, user, params):
            raise bad_request("The pageToken was issued for a different request.")
        return self._serve(state, size)

    def _serve(self, state: PageState, size: int) -> bytes:
        end = state.offset + size
        head = json.dumps(state.head, ensure_ascii=False, separators=(",", ":")).encode()
        parts = [head[:-1], b',"items":[', b",".join(state.items[state.offset : end]), b"]"]
        if end < len(state.items):
            token = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode()
            self._pages[token] = replace(state, offset=end)
            while len(self._pages) > MAX_PAGE_STATES:
                self._pages.popitem(last=False)
            parts.append(b',"nextPageToken":' + json.dumps(token).encode())
        elif state.sync_token is not None:
            parts.append(b',"nextSyncToken":' + json.dumps(state.sync_token).encode())
        parts.append(b"}")
        return b"".join(parts)
