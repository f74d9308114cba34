"""What push notifications need now: pure functions of (connection, subscription, now, settings).

Three questions, each answered without I/O so every rule has a unit test (docs/decisions/0011):

- `wanted_subscriptions`: which WebhookSubscriptions a connection should have: one per calendar
  in `status.calendars` of a `google` or `microsoft` connection with `spec.sync.push` (default
  true), named `<connection>-push-<first 10 hex of sha1(calendar id)>`.
- `decide_subscription`: what the subscription controller does next for one subscription:
  register a channel, renew it (Google: a new channel, make-before-break; Graph: PATCH), stop
  the channel a renewal replaced, act on Graph lifecycle events, refuse an insecure URL, wait
  out a back-off, or nothing; and when to look again.
- `summarize`: the connection's `Subscribed` / `Degraded` from its subscriptions' `Ready`
  conditions, and `effective_poll_interval`: polls every `push_poll_interval` while every
  channel is healthy.

Renewal time is `expiration - renew_before`; a channel whose lifetime (expiration -
registeredAt) is shorter than twice that is renewed at half-life instead, so a provider that
grants short channels is never renewed in a tight loop. Failures back off exponentially from
the failed attempt (`consecutiveFailures`, capped), recorded as `nextRenewalTime`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from calsync.api.meta import parse_timestamp

PUSH_PROVIDERS = frozenset({"google", "microsoft"})
NAME_MAX = 253
NAME_HASH = 10
BACKOFF_BASE = 30.0
BACKOFF_CAP = 3600.0
# Graph event subscriptions live at most 10,080 minutes; ask for a little less, so a clock
# running ahead of Graph's is not refused, and read back what Graph granted.
GRAPH_MAX_LIFETIME = 10_080 * 60.0
GRAPH_LIFETIME_MARGIN = 600.0
# A channel without an expiration (Google may omit it) is replaced after this long anyway.
DEFAULT_LIFETIME = 7 * 86400.0

GOOGLE_WEBHOOK_PATH = "/api/webhooks/google"
GRAPH_WEBHOOK_PATH = "/api/webhooks/microsoft"
GRAPH_LIFECYCLE_PATH = "/api/webhooks/microsoft/lifecycle"

Action = Literal[
    "nothing",  # the channel is fine: look again at `wake_after`
    "wait",  # nothing can be done now (no connection, back-off): look again at `wake_after`
    "refuse_insecure",  # the notification URL is not HTTPS and insecure URLs are not allowed
    "register",  # no live channel: open one
    "renew",  # due: Google opens a new channel (make-before-break), Graph PATCHes
    "stop_previous",  # Google: stop the channel a renewal replaced
    "reauthorize",  # Graph reauthorizationRequired: PATCH the expiration
    "recreate",  # Graph subscriptionRemoved: a new subscription
    "resync",  # Graph missed: no provider call, only a resync job
]

# Reasons of a subscription's Ready=False that describe progress, not a problem.
PROGRESS_REASONS = frozenset({"Registering"})


# -- names ------------------------------------------------------------------------------------


def subscription_name(connection: str, calendar_id: str) -> str:
    """`<connection>-push-<10 hex>`, the connection part shortened to keep a valid name."""
    digest = hashlib.sha1(calendar_id.encode(), usedforsecurity=False).hexdigest()[:NAME_HASH]
    suffix = f"-push-{digest}"
    return connection[: NAME_MAX - len(suffix)].rstrip("-.") + suffix


def google_channel_id(subscription_uid: str, generation: int) -> str:
    """`calsync-<first 8 of the WebhookSubscription's uid>-<generation>` (a new id per channel)."""
    return f"calsync-{subscription_uid.replace('-', '')[:8]}-{generation}"


def push_enabled(spec: Mapping[str, Any]) -> bool:
    if spec.get("provider") not in PUSH_PROVIDERS:
        return False
    return bool((spec.get("sync") or {}).get("push", True))


def wanted_subscriptions(body: Mapping[str, Any], *, configured: bool = True) -> dict[str, str]:
    """{WebhookSubscription name: calendar id} a connection should have now.

    Empty for providers without push, with `spec.sync.push: false`, when push is not
    `configured` (no public gateway URL: providers could not reach us), and until a sync has
    listed the connection's calendars in `status.calendars`.
    """
    spec = body.get("spec") or {}
    if not configured or not push_enabled(spec):
        return {}
    name = str((body.get("metadata") or {}).get("name") or "")
    calendars = (body.get("status") or {}).get("calendars") or []
    wanted: dict[str, str] = {}
    for entry in calendars:
        calendar_id = entry.get("id") if isinstance(entry, Mapping) else None
        if isinstance(calendar_id, str) and calendar_id:
            wanted[subscription_name(name, calendar_id)] = calendar_id
    return wanted


def notification_urls(public_url: str, provider: str) -> tuple[str, str | None]:
    """(notification URL, Graph lifecycle URL) under the gateway's public base URL."""
    base = public_url.rstrip("/")
    if provider == "google":
        return base + GOOGLE_WEBHOOK_PATH, None
    return base + GRAPH_WEBHOOK_PATH, base + GRAPH_LIFECYCLE_PATH


def insecure(url: str) -> bool:
    return urlsplit(url).scheme != "https"


# -- time -------------------------------------------------------------------------------------


parse_time = parse_timestamp


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def renewal_time(
    registered_at: dt.datetime | None, expiration: dt.datetime, renew_before: float
) -> dt.datetime:
    """`expiration - renew_before`; at half-life when the lifetime is under twice that."""
    before = dt.timedelta(seconds=renew_before)
    if registered_at is not None and registered_at < expiration:
        lifetime = expiration - registered_at
        if lifetime < 2 * before:
            return registered_at + lifetime / 2
    return expiration - before


def backoff(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds from a failed attempt to the next one."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 30)))


def graph_expiration(now: dt.datetime) -> dt.datetime:
    """The expiration to ask Graph for (it answers with the one it granted)."""
    return now + dt.timedelta(seconds=GRAPH_MAX_LIFETIME - GRAPH_LIFETIME_MARGIN)


# -- one subscription -------------------------------------------------------------------------


@dataclass(frozen=True)
class PushParams:
    """The settings the decision uses."""

    renew_before: float
    allow_insecure: bool
    public_url: str
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP


@dataclass(frozen=True)
class ConnectionFacts:
    """What the subscription controller knows about the owning connection."""

    found: bool  # in the cache and not being deleted
    authenticated: bool = True  # not known to be refused by the provider (Authenticated!=False)
    auth_reason: str = ""


@dataclass(frozen=True)
class SubscriptionPlan:
    action: Action
    wake_after: float | None = None  # seconds until the decision may change by itself
    resync: Literal["full", "incremental"] | None = None  # a resync job to create
    handled: tuple[int, ...] = ()  # indexes of status.lifecycleEvents acted on by this plan
    reason: str = ""  # Ready's reason while waiting or refusing
    message: str = ""
    expired: bool = False  # the current channel is past its expiration


def _lifecycle(status: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    events = status.get("lifecycleEvents") or []
    out = []
    for index, entry in enumerate(events):
        if isinstance(entry, Mapping):
            out.append((index, str(entry.get("event") or ""), str(entry.get("receivedAt") or "")))
    return out


def lifecycle_key(events: Sequence[Mapping[str, Any]], handled: Sequence[int]) -> str:
    """A stable key of the lifecycle events a plan handles (for a deterministic job name)."""
    parts = [
        f"{events[i].get('event')}@{events[i].get('receivedAt')}"
        for i in handled
        if i < len(events)
    ]
    return ",".join(parts)


def decide_subscription(
    provider: str,
    status: Mapping[str, Any],
    connection: ConnectionFacts,
    now: dt.datetime,
    params: PushParams,
) -> SubscriptionPlan:
    """What to do for one WebhookSubscription now, and when to look again."""
    if not connection.found:
        # Its connection is gone or going: the garbage collector or the connection's own
        # finalizer deletes this object; nothing to register meanwhile.
        return SubscriptionPlan("wait", reason="ConnectionNotFound", message="no connection")
    channel = status.get("channelId")
    expiration = parse_time(status.get("expiration"))
    registered = parse_time(status.get("registeredAt"))
    failures = int(status.get("consecutiveFailures") or 0)
    next_attempt = parse_time(status.get("nextRenewalTime"))
    events = _lifecycle(status) if provider == "microsoft" else []
    if provider != "microsoft" and status.get("lifecycleEvents"):
        # Only Graph sends lifecycle events; anything else there is dropped.
        stray = tuple(i for i, _, _ in _lifecycle(status))
        return SubscriptionPlan("nothing", wake_after=0.0, handled=stray)

    if failures and next_attempt is not None and next_attempt > now:
        return SubscriptionPlan(
            "wait",
            wake_after=(next_attempt - now).total_seconds(),
            reason="BackingOff",
            message=f"{failures} failed attempts; next at {format_time(next_attempt)}",
        )
    if not connection.authenticated:
        return SubscriptionPlan(
            "wait",
            reason="ConnectionNotAuthenticated",
            message=f"the connection's credentials do not work ({connection.auth_reason})",
        )

    url, _ = notification_urls(params.public_url, provider)
    refuse = insecure(url) and not params.allow_insecure
    refusal = SubscriptionPlan(
        "refuse_insecure",
        reason="InsecureNotificationURL",
        message=f"the notification URL {url} is not HTTPS; set WEBHOOK_ALLOW_INSECURE=true "
        "only for simulators and development",
    )

    # Google: a channel a renewal replaced is stopped first.
    if provider == "google" and status.get("previousChannelId"):
        return SubscriptionPlan("stop_previous")

    # Graph lifecycle events, the strongest first; one plan handles all of them.
    if events:
        kinds = {kind for _, kind, _ in events}
        handled = tuple(i for i, _, _ in events)
        if "subscriptionRemoved" in kinds or ("reauthorizationRequired" in kinds and not channel):
            if refuse:
                return refusal
            return SubscriptionPlan("recreate", resync="full", handled=handled)
        resync: Literal["incremental"] | None = "incremental" if "missed" in kinds else None
        if "reauthorizationRequired" in kinds:
            return SubscriptionPlan("reauthorize", resync=resync, handled=handled)
        if resync is not None:
            return SubscriptionPlan("resync", resync=resync, handled=handled)
        # Unknown events: logged by the gateway, dropped here.
        return SubscriptionPlan("nothing", wake_after=0.0, handled=handled)

    if not channel or expiration is None:
        if refuse:
            return refusal
        return SubscriptionPlan("register")
    if expiration <= now:
        # Lapsed (the operator was away): notifications were missed meanwhile.
        if refuse:
            return refusal
        if provider == "google":
            return SubscriptionPlan("register", resync="incremental", expired=True)
        return SubscriptionPlan("recreate", resync="full", expired=True)
    due = renewal_time(registered, expiration, params.renew_before)
    if due <= now:
        if refuse and provider == "google":
            return refusal
        return SubscriptionPlan("renew")
    return SubscriptionPlan("nothing", wake_after=(due - now).total_seconds())


# -- conditions of one subscription -----------------------------------------------------------


CondTuple = tuple[str, str, str, str]  # (type, status, reason, message)


def subscribed_condition(status: Mapping[str, Any], now: dt.datetime) -> CondTuple:
    """Subscribed: the provider holds a live channel for us."""
    channel = status.get("channelId")
    expiration = parse_time(status.get("expiration"))
    if not channel:
        return ("Subscribed", "False", "NotRegistered", "no channel registered yet")
    if expiration is not None and expiration <= now:
        return (
            "Subscribed",
            "False",
            "ChannelExpired",
            f"channel {channel} expired at {format_time(expiration)}",
        )
    until = f" until {format_time(expiration)}" if expiration is not None else ""
    return ("Subscribed", "True", "ChannelActive", f"channel {channel} is active{until}")


def ready_condition(
    status: Mapping[str, Any], now: dt.datetime, problem: tuple[str, str] | None
) -> CondTuple:
    """Ready: subscribed and the last operation succeeded; else the problem or progress."""
    if problem is not None:
        return ("Ready", "False", problem[0], problem[1])
    sub = subscribed_condition(status, now)
    if sub[1] == "True":
        return ("Ready", "True", "Subscribed", sub[3])
    if sub[2] == "ChannelExpired":
        return ("Ready", "False", "ChannelExpired", sub[3])
    return ("Ready", "False", "Registering", "registering the channel with the provider")


# -- the connection's summary -----------------------------------------------------------------


@dataclass(frozen=True)
class PushSummary:
    """The connection's Subscribed / Degraded as its subscriptions say (None: not pushing)."""

    subscribed: Literal["True", "False"] | None
    reason: str = ""
    message: str = ""
    degraded: bool = False  # a subscription is failing (not merely registering)
    counts: Mapping[str, int] = field(default_factory=dict)


def _ready_of(obj: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    if obj is None:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return (
                str(cond.get("status")),
                str(cond.get("reason") or ""),
                str(cond.get("message") or ""),
            )
    return None


NOT_CONFIGURED = PushSummary(
    "False",
    "PushNotConfigured",
    "no public gateway URL is set, so providers cannot deliver change notifications: set "
    "CALSYNC_GATEWAY_URL to the gateway's public HTTPS URL; polling keeps the mirror current "
    "meanwhile",
)


def summarize(
    wanted: Mapping[str, str],
    existing: Mapping[str, Mapping[str, Any]],
    *,
    body: Mapping[str, Any] | None = None,
    configured: bool = True,
) -> PushSummary:
    """Subscribed True when every wanted subscription is Ready; else the first failing one's
    reason, with Degraded when that is a failure rather than registration in progress.

    A push connection (`body`) on an operator without a public gateway URL is not failing:
    it says so (`PushNotConfigured`), without Degraded, and is polled as usual."""
    if not configured and body is not None and push_enabled(body.get("spec") or {}):
        return NOT_CONFIGURED
    if not wanted:
        return PushSummary(None)
    first: tuple[str, str, str] | None = None
    failing = False
    ready = 0
    for name in sorted(wanted):
        cond = _ready_of(existing.get(name))
        if cond is None:
            cond = ("False", "Registering", f"{name}: waiting for the subscription controller")
        if cond[0] == "True":
            ready += 1
            continue
        if cond[1] not in PROGRESS_REASONS:
            failing = True
            if first is None or first[1] in PROGRESS_REASONS:
                first = (name, cond[1], cond[2])
        elif first is None:
            first = (name, cond[1], cond[2])
    total = len(wanted)
    if first is None:
        channels = f"{total} channel{'s' * (total != 1)}"
        return PushSummary("True", "Subscribed", f"{channels} active", counts={"ready": ready})
    name, reason, message = first
    return PushSummary(
        "False",
        reason,
        f"{ready}/{total} subscriptions ready; {name}: {message}",
        degraded=failing,
        counts={"ready": ready},
    )


def effective_poll_interval(interval: float, subscribed: bool, push_poll_interval: float) -> float:
    """Seconds between polls: `push_poll_interval` while push works (never more often than
    the connection's own interval asks), else the connection's interval."""
    if subscribed:
        return max(interval, push_poll_interval)
    return interval
