"""Who a webhook call claims to be, and whether it proves it: pure decisions, no I/O.

The gateway finds the WebhookSubscription a call names in a watch-fed cache indexed by
`status.channelId` and `status.previousChannelId` (`SubscriptionIndex`), then checks the value
the provider echoes (docs/decisions/0011):

- Google: `X-Goog-Channel-ID` names the channel (current or, during make-before-break, the
  previous one); `X-Goog-Channel-Token` must be `channel_token(ring, channel id)`.
- Graph: each item's `subscriptionId` is the subscription's `status.channelId`; its
  `clientState` must be `client_state(ring, WebhookSubscription uid)`.

The outcome is one of the results counted in `calsync_webhook_requests_total`: `malformed`
(400), `unknown` (403), `forged` (401), or a `Verified` notification.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import verify_channel_token, verify_client_state

Key = tuple[str, str]

MALFORMED = "malformed"
UNKNOWN = "unknown"
FORGED = "forged"

# HTTP answer of each rejection.
STATUS_OF = {MALFORMED: 400, UNKNOWN: 403, FORGED: 401}

GOOGLE_STATES = frozenset({"sync", "exists", "not_exists"})
MAX_ID = 256  # longer channel/subscription ids are not ours (Google: <= 64 chars)


@dataclass(frozen=True)
class Target:
    """What the gateway needs of a WebhookSubscription to verify and record a notification."""

    namespace: str
    name: str
    uid: str
    provider: str
    connection: str
    calendar_id: str
    connection_uid: str | None  # from its owner reference: no read of the connection

    @property
    def key(self) -> Key:
        return self.namespace, self.name


def target_of(obj: Mapping[str, Any]) -> Target | None:
    """The Target of a cached WebhookSubscription, None when it lacks what verification needs."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    connection = str(spec.get("connection") or "")
    calendar = str(spec.get("calendarId") or "")
    if not (meta.get("uid") and connection and calendar):
        return None
    owner_uid = None
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "CalendarConnection" and ref.get("name") == connection:
            owner_uid = ref.get("uid")
            break
    return Target(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta["uid"]),
        provider=str(spec.get("provider") or ""),
        connection=connection,
        calendar_id=calendar,
        connection_uid=str(owner_uid) if owner_uid else None,
    )


class SubscriptionIndex:
    """Channel id -> WebhookSubscription, fed change by change (the Informer's `index`)."""

    def __init__(self) -> None:
        self._by_channel: dict[str, Key] = {}
        self._channels_of: dict[Key, tuple[str, ...]] = {}
        self._targets: dict[Key, Target] = {}

    def update(self, key: Key, obj: dict[str, Any] | None) -> None:
        for channel in self._channels_of.pop(key, ()):
            if self._by_channel.get(channel) == key:
                del self._by_channel[channel]
        self._targets.pop(key, None)
        if obj is None:
            return
        target = target_of(obj)
        if target is None:
            return
        self._targets[key] = target
        status = obj.get("status") or {}
        channels = tuple(
            str(c) for c in (status.get("channelId"), status.get("previousChannelId")) if c
        )
        self._channels_of[key] = channels
        for channel in channels:
            self._by_channel[channel] = key

    def lookup(self, channel_id: str) -> Target | None:
        key = self._by_channel.get(channel_id)
        return self._targets.get(key) if key is not None else None

    def by_provider(self) -> dict[str, int]:
        """How many subscriptions with a channel each provider has (for /api/health)."""
        counts: dict[str, int] = {}
        for key in self._channels_of:
            if self._channels_of[key]:
                provider = self._targets[key].provider
                counts[provider] = counts.get(provider, 0) + 1
        return counts


@dataclass(frozen=True)
class Verified:
    """A notification proven to come from the provider for `target`'s channel `channel_id`."""

    target: Target
    channel_id: str
    sync_message: bool = False  # Google's first message of a channel: no work
    lifecycle_event: str | None = None  # Graph lifecycle notifications


@dataclass(frozen=True)
class Rejected:
    result: str  # MALFORMED, UNKNOWN or FORGED
    channel_id: str = ""
    why: str = ""

    @property
    def status(self) -> int:
        return STATUS_OF[self.result]


@dataclass(frozen=True)
class EarlySync:
    """Google's `sync` message of a channel the cache does not know yet, with a token only we
    could have made for that channel id: Google sends it as soon as the channel is opened,
    before the operator has written the channel into the WebhookSubscription's status. It
    carries no change, so it is answered 200 and nothing is done."""

    channel_id: str


Verdict = Verified | Rejected | EarlySync


def verify_google(index: SubscriptionIndex, ring: KeyRing, headers: Mapping[str, str]) -> Verdict:
    """Verify a Google push call from its headers (its body is empty and ignored)."""
    channel = headers.get("X-Goog-Channel-ID", "").strip()
    token = headers.get("X-Goog-Channel-Token")
    state = headers.get("X-Goog-Resource-State", "").strip()
    if not channel or len(channel) > MAX_ID:
        return Rejected(MALFORMED, why="no usable X-Goog-Channel-ID")
    if not token:
        return Rejected(MALFORMED, channel, "no X-Goog-Channel-Token")
    if state not in GOOGLE_STATES:
        return Rejected(MALFORMED, channel, "no valid X-Goog-Resource-State")
    target = index.lookup(channel)
    if target is None and state == "sync" and verify_channel_token(ring, channel, token):
        return EarlySync(channel)
    if target is None or target.provider != "google":
        return Rejected(UNKNOWN, channel, "no WebhookSubscription has this channel")
    if not verify_channel_token(ring, channel, token):
        return Rejected(FORGED, channel, "wrong channel token")
    return Verified(target, channel, sync_message=state == "sync")


def graph_items(body: bytes) -> list[Any] | None:
    """The `value` list of a Graph notification body, None when the body is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a body inside the size cap can still nest deeper than the parser's
        # stack ("[[[[..."); it is malformed like any other, not a server error.
        return None
    if not isinstance(doc, dict):
        return None
    items = doc.get("value")
    if not isinstance(items, list) or not items:
        return None
    return items


def verify_graph_item(index: SubscriptionIndex, ring: KeyRing, item: Any) -> Verified | Rejected:
    """Verify one item of a Graph change or lifecycle notification batch."""
    if not isinstance(item, dict):
        return Rejected(MALFORMED, why="an item is not an object")
    subscription = item.get("subscriptionId")
    state = item.get("clientState")
    event = item.get("lifecycleEvent")
    if not isinstance(subscription, str) or not subscription or len(subscription) > MAX_ID:
        return Rejected(MALFORMED, why="an item has no subscriptionId")
    if not isinstance(state, str) or not state:
        return Rejected(MALFORMED, subscription, "an item has no clientState")
    if event is not None and not isinstance(event, str):
        return Rejected(MALFORMED, subscription, "lifecycleEvent is not a string")
    target = index.lookup(subscription)
    if target is None or target.provider != "microsoft":
        return Rejected(UNKNOWN, subscription, "no WebhookSubscription has this subscription id")
    if not verify_client_state(ring, target.uid, state):
        return Rejected(FORGED, subscription, "wrong clientState")
    return Verified(target, subscription, lifecycle_event=event or None)


ACCEPTED = "accepted"
RATE_LIMITED = "rate_limited"


def batch_answer(results: list[str], recorded: bool) -> int:
    """The HTTP answer to a Graph batch from each item's result.

    A mixed batch records what verified and answers 202 (503 when that recording failed):
    the provider retries a whole batch, and retrying the genuine items must not be traded
    for telling a forger more. Without an accepted item: 429 if one was only rate limited,
    else forged (401) before unknown (403) before malformed (400): an item that names a real
    subscription says more about the caller than one that does not.
    """
    if ACCEPTED in results:
        return 202 if recorded else 503
    if RATE_LIMITED in results:
        return 429
    for result in (FORGED, UNKNOWN, MALFORMED):
        if result in results:
            return STATUS_OF[result]
    return 400
