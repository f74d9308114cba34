"""Push subscriptions as pure decisions: names, what to do next, the connection's summary."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers import policy, push_policy, readiness
from calsync.controllers.push_policy import ConnectionFacts, PushParams

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
HOUR = 3600.0
DAY = 24 * HOUR
SECURE = PushParams(renew_before=DAY, allow_insecure=False, public_url="https://gw.example.com")
INSECURE_URL = PushParams(renew_before=DAY, allow_insecure=False, public_url="http://127.0.0.1")
INSECURE_OK = PushParams(renew_before=DAY, allow_insecure=True, public_url="http://127.0.0.1")
FOUND = ConnectionFacts(found=True)


def ts(seconds: float) -> str:
    return push_policy.format_time(NOW + dt.timedelta(seconds=seconds))


def connection(provider: str = "google", push: bool | None = None, **status: Any) -> Any:
    sync: dict[str, Any] = {} if push is None else {"push": push}
    return {
        "metadata": {"name": "alice", "namespace": "team"},
        "spec": {"provider": provider, "sync": sync},
        "status": status,
    }


# -- names ------------------------------------------------------------------------------------


def test_name_is_connection_push_and_ten_hex_of_the_calendar_ids_sha1() -> None:
    digest = hashlib.sha1(b"primary", usedforsecurity=False).hexdigest()[:10]
    assert push_policy.subscription_name("alice", "primary") == f"alice-push-{digest}"


def test_long_connection_names_are_cut_to_a_valid_name() -> None:
    name = push_policy.subscription_name("a" * 250 + ".-", "x")
    assert len(name) == 253
    assert "-push-" in name
    long = push_policy.subscription_name("b" * 240 + "-" + "c" * 12, "x")
    assert len(long) <= 253
    assert not long.split("-push-")[0].endswith(("-", "."))


def test_google_channel_ids_derive_from_uid_and_generation() -> None:
    uid = "0f3c2a1b-9d8e-4c7b-a6f5-e4d3c2b1a098"
    assert push_policy.google_channel_id(uid, 1) == "calsync-0f3c2a1b-1"
    assert push_policy.google_channel_id(uid, 12) == "calsync-0f3c2a1b-12"


@pytest.mark.parametrize(
    ("provider", "push", "calendars", "expected"),
    [
        ("google", None, [{"id": "primary"}, {"id": "team@x"}], {"primary", "team@x"}),
        ("microsoft", True, [{"id": "AAMk="}], {"AAMk="}),
        ("google", False, [{"id": "primary"}], set()),  # push switched off
        ("caldav", True, [{"id": "/cal/"}], set()),  # no push for CalDAV
        ("icloud", None, [{"id": "/cal/"}], set()),
        ("google", True, None, set()),  # no sync yet: calendars unknown
        ("google", True, [], set()),
        ("google", True, [{"name": "no id"}, "junk"], set()),
    ],
)
def test_wanted_subscriptions(
    provider: str, push: bool | None, calendars: Any, expected: set[str]
) -> None:
    status = {} if calendars is None else {"calendars": calendars}
    wanted = push_policy.wanted_subscriptions(connection(provider, push, **status))
    assert set(wanted.values()) == expected
    for name, calendar in wanted.items():
        assert name == push_policy.subscription_name("alice", calendar)


# -- renewal time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "expires", "before", "due"),
    [
        (0, 7 * DAY, DAY, 6 * DAY),  # the usual: a day before expiry
        (0, 2 * DAY, DAY, DAY),  # lifetime == 2 * before: still expiry - before
        (0, 20.0, DAY, 10.0),  # short channels: at half-life
        (0, 36 * HOUR, DAY, 18 * HOUR),
        (None, 7 * DAY, DAY, 6 * DAY),  # registration time unknown
        (0, 7 * DAY, 0.0, 7 * DAY),
    ],
)
def test_renewal_time(registered: float | None, expires: float, before: float, due: float) -> None:
    reg = None if registered is None else NOW + dt.timedelta(seconds=registered)
    exp = NOW + dt.timedelta(seconds=expires)
    assert push_policy.renewal_time(reg, exp, before) == NOW + dt.timedelta(seconds=due)


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0), (1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (500, 3600)]
)
def test_backoff_doubles_and_is_capped(failures: int, delay: float) -> None:
    assert push_policy.backoff(failures) == delay


# -- the decision: a reference table ----------------------------------------------------------

LIVE = {
    "channelId": "calsync-0f3c2a1b-1",
    "resourceId": "res-1",
    "registeredAt": ts(-DAY),
    "expiration": ts(6 * DAY),
    "channelGeneration": 1,
}


def ev(kind: str, at: float = -5) -> dict[str, str]:
    return {"event": kind, "receivedAt": ts(at)}


CASES: list[tuple[str, str, dict[str, Any], ConnectionFacts, PushParams, str, Any]] = [
    # (id, provider, status, connection, params, action, resync)
    ("new google", "google", {}, FOUND, SECURE, "register", None),
    ("new graph", "microsoft", {}, FOUND, SECURE, "register", None),
    ("insecure refused", "google", {}, FOUND, INSECURE_URL, "refuse_insecure", None),
    ("insecure graph refused", "microsoft", {}, FOUND, INSECURE_URL, "refuse_insecure", None),
    ("insecure allowed", "google", {}, FOUND, INSECURE_OK, "register", None),
    ("no connection", "google", {}, ConnectionFacts(found=False), SECURE, "wait", None),
    (
        "credentials refused",
        "google",
        {},
        ConnectionFacts(found=True, authenticated=False, auth_reason="InvalidGrant"),
        SECURE,
        "wait",
        None,
    ),
    ("live, not due", "google", LIVE, FOUND, SECURE, "nothing", None),
    ("google due", "google", {**LIVE, "expiration": ts(HOUR)}, FOUND, SECURE, "renew", None),
    ("graph due", "microsoft", {**LIVE, "expiration": ts(HOUR)}, FOUND, SECURE, "renew", None),
    (
        "google due, insecure",
        "google",
        {**LIVE, "expiration": ts(HOUR)},
        FOUND,
        INSECURE_URL,
        "refuse_insecure",
        None,
    ),
    (
        "graph PATCH needs no URL",
        "microsoft",
        {**LIVE, "expiration": ts(HOUR)},
        FOUND,
        INSECURE_URL,
        "renew",
        None,
    ),
    (
        "google lapsed",
        "google",
        {**LIVE, "expiration": ts(-10)},
        FOUND,
        SECURE,
        "register",
        "incremental",
    ),
    (
        "graph lapsed",
        "microsoft",
        {**LIVE, "expiration": ts(-10)},
        FOUND,
        SECURE,
        "recreate",
        "full",
    ),
    (
        "previous to stop",
        "google",
        {**LIVE, "previousChannelId": "calsync-0f3c2a1b-0", "previousResourceId": "res-1"},
        FOUND,
        SECURE,
        "stop_previous",
        None,
    ),
    (
        "reauthorization",
        "microsoft",
        {**LIVE, "lifecycleEvents": [ev("reauthorizationRequired")]},
        FOUND,
        SECURE,
        "reauthorize",
        None,
    ),
    (
        "removed",
        "microsoft",
        {**LIVE, "lifecycleEvents": [ev("subscriptionRemoved")]},
        FOUND,
        SECURE,
        "recreate",
        "full",
    ),
    (
        "missed",
        "microsoft",
        {**LIVE, "lifecycleEvents": [ev("missed")]},
        FOUND,
        SECURE,
        "resync",
        "incremental",
    ),
    (
        "missed and reauthorization",
        "microsoft",
        {**LIVE, "lifecycleEvents": [ev("missed"), ev("reauthorizationRequired")]},
        FOUND,
        SECURE,
        "reauthorize",
        "incremental",
    ),
    (
        "removed wins over everything",
        "microsoft",
        {
            **LIVE,
            "lifecycleEvents": [ev("missed"), ev("subscriptionRemoved"), ev("missed", -1)],
        },
        FOUND,
        SECURE,
        "recreate",
        "full",
    ),
    (
        "reauthorization without a subscription",
        "microsoft",
        {"lifecycleEvents": [ev("reauthorizationRequired")]},
        FOUND,
        SECURE,
        "recreate",
        "full",
    ),
    (
        "removed, insecure",
        "microsoft",
        {**LIVE, "lifecycleEvents": [ev("subscriptionRemoved")]},
        FOUND,
        INSECURE_URL,
        "refuse_insecure",
        None,
    ),
    (
        "backing off",
        "google",
        {"consecutiveFailures": 2, "nextRenewalTime": ts(50)},
        FOUND,
        SECURE,
        "wait",
        None,
    ),
    (
        "back-off over",
        "google",
        {"consecutiveFailures": 2, "nextRenewalTime": ts(-1)},
        FOUND,
        SECURE,
        "register",
        None,
    ),
]


@pytest.mark.parametrize(
    ("provider", "status", "conn", "params", "action", "resync"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide_subscription(
    provider: str,
    status: dict[str, Any],
    conn: ConnectionFacts,
    params: PushParams,
    action: str,
    resync: Any,
) -> None:
    plan = push_policy.decide_subscription(provider, status, conn, NOW, params)
    assert plan.action == action
    assert plan.resync == resync


def test_not_due_wakes_at_the_renewal_time() -> None:
    plan = push_policy.decide_subscription("google", LIVE, FOUND, NOW, SECURE)
    assert plan.wake_after == 5 * DAY


def test_short_channels_wake_at_half_life() -> None:
    status = {**LIVE, "registeredAt": ts(-2), "expiration": ts(18)}
    plan = push_policy.decide_subscription("google", status, FOUND, NOW, SECURE)
    assert (plan.action, plan.wake_after) == ("nothing", 8.0)


def test_back_off_wakes_at_the_next_attempt() -> None:
    status = {"consecutiveFailures": 3, "nextRenewalTime": ts(90)}
    plan = push_policy.decide_subscription("microsoft", status, FOUND, NOW, SECURE)
    assert (plan.action, plan.reason, plan.wake_after) == ("wait", "BackingOff", 90.0)


def test_refusal_names_the_url_and_the_setting() -> None:
    plan = push_policy.decide_subscription("google", {}, FOUND, NOW, INSECURE_URL)
    assert plan.reason == "InsecureNotificationURL"
    assert "http://127.0.0.1/api/webhooks/google" in plan.message
    assert "WEBHOOK_ALLOW_INSECURE" in plan.message


def test_lifecycle_plans_name_every_event_they_handle() -> None:
    events = [ev("missed", -9), ev("reauthorizationRequired", -3)]
    plan = push_policy.decide_subscription(
        "microsoft", {**LIVE, "lifecycleEvents": events}, FOUND, NOW, SECURE
    )
    assert plan.handled == (0, 1)
    key = push_policy.lifecycle_key(events, plan.handled)
    assert key == f"missed@{ts(-9)},reauthorizationRequired@{ts(-3)}"


def test_stray_lifecycle_events_on_google_are_dropped() -> None:
    plan = push_policy.decide_subscription(
        "google", {**LIVE, "lifecycleEvents": [ev("missed")]}, FOUND, NOW, SECURE
    )
    assert (plan.action, plan.handled) == ("nothing", (0,))


def test_urls() -> None:
    assert push_policy.notification_urls("https://gw/", "google") == (
        "https://gw/api/webhooks/google",
        None,
    )
    assert push_policy.notification_urls("https://gw", "microsoft") == (
        "https://gw/api/webhooks/microsoft",
        "https://gw/api/webhooks/microsoft/lifecycle",
    )


def test_graph_expiration_stays_under_the_maximum() -> None:
    asked = push_policy.graph_expiration(NOW)
    assert NOW + dt.timedelta(days=6) < asked < NOW + dt.timedelta(minutes=10_080)


# -- a subscription's conditions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "problem", "ready", "subscribed"),
    [
        ({}, None, ("False", "Registering"), ("False", "NotRegistered")),
        (LIVE, None, ("True", "Subscribed"), ("True", "ChannelActive")),
        (
            {**LIVE, "expiration": ts(-1)},
            None,
            ("False", "ChannelExpired"),
            ("False", "ChannelExpired"),
        ),
        (LIVE, ("RenewalFailed", "x"), ("False", "RenewalFailed"), ("True", "ChannelActive")),
        ({}, ("InsecureNotificationURL", "x"), ("False", "InsecureNotificationURL"), None),
    ],
)
def test_subscription_conditions(
    status: dict[str, Any], problem: Any, ready: Any, subscribed: Any
) -> None:
    assert push_policy.ready_condition(status, NOW, problem)[1:3] == ready
    if subscribed is not None:
        assert push_policy.subscribed_condition(status, NOW)[1:3] == subscribed


# -- the connection's summary -----------------------------------------------------------------


def sub(status: str, reason: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}}


@pytest.mark.parametrize(
    ("existing", "subscribed", "reason", "degraded"),
    [
        ({"a": sub("True", "Subscribed"), "b": sub("True", "Subscribed")}, "True", "Subscribed", 0),
        ({"a": sub("True", "Subscribed")}, "False", "Registering", 0),  # b not created yet
        ({"a": sub("True", "Subscribed"), "b": {}}, "False", "Registering", 0),
        (
            {"a": sub("False", "Registering"), "b": sub("False", "InsecureNotificationURL")},
            "False",
            "InsecureNotificationURL",  # a failure names the connection's state, not progress
            1,
        ),
        (
            {"a": sub("False", "RenewalFailed"), "b": sub("False", "AuthenticationFailed")},
            "False",
            "RenewalFailed",  # the first failing one, by name
            1,
        ),
    ],
)
def test_summary(existing: Any, subscribed: str, reason: str, degraded: int) -> None:
    summary = push_policy.summarize({"a": "cal-a", "b": "cal-b"}, existing)
    assert (summary.subscribed, summary.reason, summary.degraded) == (
        subscribed,
        reason,
        bool(degraded),
    )


def test_no_wanted_subscriptions_no_summary() -> None:
    assert push_policy.summarize({}, {"a": sub("True", "Subscribed")}).subscribed is None


@pytest.mark.parametrize(
    ("interval", "subscribed", "expected"),
    [(900.0, False, 900.0), (900.0, True, 3600.0), (7200.0, True, 7200.0), (60.0, False, 60.0)],
)
def test_effective_poll_interval(interval: float, subscribed: bool, expected: float) -> None:
    assert push_policy.effective_poll_interval(interval, subscribed, 3600.0) == expected


def test_connection_polls_at_the_push_interval_while_subscribed() -> None:
    spec = CalendarConnectionSpec.model_validate(
        {
            "provider": "google",
            "owner": "a@example.com",
            "oauth": {"clientSecretRef": {"name": "c"}},
        }
    )
    status = {
        "storeId": "s",
        "syncedScope": policy.scope_digest(spec),
        "lastAttemptTime": ts(-1000),
        "consecutiveFailures": 0,
        "attempted": policy.attempt_digest(policy.scope_digest(spec), "c1"),
    }
    facts = policy.Facts(
        name="alice",
        uid="u",
        generation=1,
        spec=spec,
        status=status,
        credentials_usable=True,
        credentials="c1",
        active_jobs=0,
        queue_pending=0,
        store_id="s",
        now=NOW,
        default_poll_interval=900.0,
        queue_cap=10,
    )
    assert policy.decide(facts).job is not None  # 1000 s since the last poll: due at 900 s
    subscribed = policy.decide(
        policy.Facts(**{**facts.__dict__, "subscribed": True, "push_poll_interval": 3600.0})
    )
    assert subscribed.job is None
    assert subscribed.recheck_after == 2600.0


# -- the connection's conditions --------------------------------------------------------------


def conds(*items: tuple[str, str, str]) -> readiness.Conditions:
    c = readiness.Conditions([], 1, NOW)
    for ctype, status, reason in items:
        c.set(ctype, status, reason, "")  # type: ignore[arg-type]
    c.transitions.clear()
    return c


def state(c: readiness.Conditions, ctype: str) -> tuple[str, str] | None:
    cond = c.get(ctype)
    return None if cond is None else (cond.status, cond.reason)


def test_failing_push_degrades_and_recovery_clears_it() -> None:
    c = conds()
    readiness.apply_push(c, "False", "InsecureNotificationURL", "m", degraded=True)
    assert state(c, "Subscribed") == ("False", "InsecureNotificationURL")
    assert state(c, "Degraded") == ("True", "InsecureNotificationURL")
    readiness.apply_push(c, "True", "Subscribed", "m", degraded=False)
    assert state(c, "Subscribed") == ("True", "Subscribed")
    assert state(c, "Degraded") == ("False", "AsExpected")


def test_registering_is_not_degraded() -> None:
    c = conds()
    readiness.apply_push(c, "False", "Registering", "m", degraded=False)
    assert state(c, "Degraded") is None


def test_push_leaves_a_sync_found_degradation_alone() -> None:
    c = conds(("Degraded", "True", "DuplicateUID"))
    readiness.apply_push(c, "False", "RenewalFailed", "m", degraded=True)
    assert state(c, "Degraded") == ("True", "DuplicateUID")
    readiness.apply_push(c, "True", "Subscribed", "m", degraded=False)
    assert state(c, "Degraded") == ("True", "DuplicateUID")


def test_a_clean_sync_does_not_clear_a_push_degradation() -> None:
    c = conds(("Degraded", "True", "RenewalFailed"))
    readiness.apply_sync_success(c, events=1, calendars=1, duplicates=[], skipped=[])
    assert state(c, "Degraded") == ("True", "RenewalFailed")
    d = conds(("Degraded", "True", "DuplicateUID"))
    readiness.apply_sync_success(d, events=1, calendars=1, duplicates=[], skipped=[])
    assert state(d, "Degraded") == ("False", "AsExpected")


def test_push_switched_off_removes_subscribed_and_its_degradation() -> None:
    c = conds(("Subscribed", "False", "RenewalFailed"), ("Degraded", "True", "RenewalFailed"))
    readiness.apply_push(c, None, "", "", degraded=False)
    assert state(c, "Subscribed") is None
    assert state(c, "Degraded") == ("False", "AsExpected")


def test_without_a_public_gateway_url_push_is_not_configured_and_not_degraded() -> None:
    body = connection("google", None, calendars=[{"id": "primary"}])
    assert push_policy.wanted_subscriptions(body, configured=False) == {}
    summary = push_policy.summarize({}, {}, body=body, configured=False)
    assert (summary.subscribed, summary.reason, summary.degraded) == (
        "False",
        "PushNotConfigured",
        False,
    )
    assert "CALSYNC_GATEWAY_URL" in summary.message
    # Connections that do not push say nothing about it, configured or not.
    off = connection("google", False, calendars=[{"id": "primary"}])
    assert push_policy.summarize({}, {}, body=off, configured=False).subscribed is None
    caldav = connection("caldav", None, calendars=[{"id": "/c/"}])
    assert push_policy.summarize({}, {}, body=caldav, configured=False).subscribed is None
