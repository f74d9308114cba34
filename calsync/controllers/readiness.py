"""How a connection's conditions follow from what the controllers observe (pure functions).

Two writers touch a connection's conditions: the connection controller, which judges the spec and
Secrets, and the worker, which learns from the provider whether the credentials work and whether
a sync succeeded. Each records what it knows (`Authenticated`, `Synced`, `Throttled`,
`Degraded`) and `Ready` is always derived from those in one place, `derive_ready`, so the two
writers can never disagree about the summary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from calsync.api.conditions import (
    AUTHENTICATED,
    DEGRADED,
    READY,
    SUBSCRIBED,
    SYNCED,
    THROTTLED,
    Condition,
    ConditionStatus,
    get_condition,
    set_condition,
)
from calsync.controllers.credentials import Verdict

# Reasons the connection controller gives from the spec and Secrets alone.
CREDENTIAL_REASONS = frozenset(
    {
        "SecretNotFound",
        "SecretKeyMissing",
        "CredentialsNotLabelled",
        "CredentialsHostMismatch",
        "ConsentRequired",
        "TokenUnreadable",
        "TokenSecretConflict",
        "TokenStoreConflict",
        "KeyringMissing",
        "KeyringInvalid",
        "Suspended",
        "InvalidSpec",
    }
)
# Degraded reasons a sync finds (and a clean sync clears); any other reason of Degraded=True
# comes from the connection's push subscriptions, which the connection controller owns.
SYNC_DEGRADED_REASONS = frozenset({"DuplicateUID", "MalformedEvents", "ExpansionCapped"})
# Reasons the provider gives when it refuses the credentials.
PROVIDER_AUTH_REASONS = frozenset({"AuthenticationFailed", "CredentialsRevoked", "InvalidGrant"})


@dataclass
class Conditions:
    """A condition list being edited, remembering which types changed status or reason."""

    items: list[Condition]
    generation: int
    now: dt.datetime
    transitions: list[Condition] = field(default_factory=list)

    def set(self, ctype: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.items, changed = set_condition(
            self.items,
            type=ctype,
            status=status,
            reason=reason,
            message=message,
            observed_generation=self.generation,
            now=self.now,
        )
        if changed:
            self.transitions.append(next(c for c in self.items if c.type == ctype))

    def get(self, ctype: str) -> Condition | None:
        return get_condition(self.items, ctype)

    def remove(self, ctype: str) -> None:
        """Drop a condition that no longer applies (no Event: nothing transitioned)."""
        self.items = [c for c in self.items if c.type != ctype]


def derive_ready(conds: Conditions) -> None:
    auth, synced = conds.get(AUTHENTICATED), conds.get(SYNCED)
    if auth is not None and (auth.status == "False" or auth.reason in CREDENTIAL_REASONS):
        conds.set(READY, "False", auth.reason, auth.message)
    elif synced is not None and synced.status != "True":
        conds.set(READY, "False", synced.reason, synced.message)
    elif synced is not None and synced.status == "True":
        conds.set(READY, "True", "Synced", synced.message)
    else:
        conds.set(
            READY,
            "False",
            "AwaitingFirstSync",
            "credentials present; waiting for the first sync to finish",
        )


def apply_credentials(conds: Conditions, verdict: Verdict, *, credentials_changed: bool) -> None:
    """Record the connection controller's judgement of the spec and Secrets."""
    status, reason, message = verdict.authenticated
    current = conds.get(AUTHENTICATED)
    # The spec and Secrets speak when they are broken, or when no provider verdict exists yet.
    judged_by_provider = current is not None and current.reason not in CREDENTIAL_REASONS
    if status == "False" or reason in CREDENTIAL_REASONS or not judged_by_provider:
        conds.set(AUTHENTICATED, status, reason, message)
    elif current is not None and current.reason in PROVIDER_AUTH_REASONS and credentials_changed:
        conds.set(
            AUTHENTICATED,
            "Unknown",
            "CredentialsUpdated",
            "the Secret changed since the provider refused it; the next sync checks it again",
        )
    derive_ready(conds)


def apply_spec_changed(conds: Conditions, generation: int) -> None:
    """What is mirrored changed: the last sync no longer describes the spec."""
    synced = conds.get(SYNCED)
    if synced is not None and synced.reason == "SpecChanged":
        return
    conds.set(
        SYNCED,
        "Unknown",
        "SpecChanged",
        f"the spec changed (generation {generation}): a full sync is queued to mirror it",
    )
    derive_ready(conds)


def apply_queue_full(conds: Conditions, pending: int, cap: int) -> None:
    conds.set(
        THROTTLED,
        "True",
        "QueueFull",
        f"the sync queue holds {pending} pending jobs (cap {cap}); the next sync waits for room",
    )


def apply_queue_room(conds: Conditions) -> None:
    throttled = conds.get(THROTTLED)
    if throttled is not None and throttled.reason == "QueueFull":
        conds.set(THROTTLED, "False", "WithinBudget", "the sync queue has room again")


def apply_invalid_spec(conds: Conditions, message: str) -> None:
    conds.set(AUTHENTICATED, "Unknown", "InvalidSpec", message)
    derive_ready(conds)


def _short(why: str, limit: int = 120) -> str:
    """A skip reason on one bounded line (the worker's log has it whole)."""
    line = " ".join(why.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def apply_sync_success(
    conds: Conditions,
    *,
    events: int,
    calendars: int,
    duplicates: Sequence[tuple[str, str, list[str]]] | None,
    skipped: Sequence[tuple[str, str]],
    server: str | None = None,
    capped: Sequence[tuple[str, str]] = (),
) -> None:
    """A successful sync; `duplicates` None means not re-checked (nothing changed).

    `server` says how DNS discovery found the server (spec.caldav.domain), shown with the count.
    `skipped`: resources that could not be read; `capped`: recurring series with more
    occurrences in the window than a range query expands (both (provider id, why)).
    """
    conds.set(AUTHENTICATED, "True", "Authenticated", "the provider accepted the credentials")
    counted = f"{events} event{'s' * (events != 1)} in {calendars} calendar{'s' * (calendars != 1)}"
    if server:
        counted += f"; server found through DNS: {server}"
    conds.set(SYNCED, "True", "Synced", counted)
    if conds.get(THROTTLED) is not None:
        conds.set(THROTTLED, "False", "WithinBudget", "requests are within the budget")
    if duplicates is None and not skipped and not capped:
        derive_ready(conds)  # Degraded stays as the last sync that looked left it
        return
    duplicates = duplicates or []
    problems = []
    if duplicates:
        uids = ", ".join(sorted({uid for _, uid, _ in duplicates})[:5])
        problems.append(f"{len(duplicates)} UIDs appear in more than one resource ({uids})")
    if skipped:
        named = ", ".join(f"{pid}: {_short(why)}" for pid, why in skipped[:5])
        problems.append(f"{len(skipped)} resources could not be read and were skipped: {named}")
    if capped:
        named = ", ".join(f"{pid}: {_short(why)}" for pid, why in capped[:5])
        problems.append(
            f"{len(capped)} recurring series are cut short in range queries "
            f"(QUERY_SERIES_LIMIT, or too costly to expand): {named}"
        )
    if problems:
        reason = (
            "DuplicateUID" if duplicates else "MalformedEvents" if skipped else "ExpansionCapped"
        )
        conds.set(DEGRADED, "True", reason, "; ".join(problems))
    elif _degraded_by_sync_or_clear(conds):
        conds.set(DEGRADED, "False", "AsExpected", "no problems in the last sync")
    derive_ready(conds)


def _degraded_by_sync_or_clear(conds: Conditions) -> bool:
    """Whether a clean sync may write Degraded=False: not while push subscriptions fail."""
    degraded = conds.get(DEGRADED)
    if degraded is None:
        return False
    return degraded.status != "True" or degraded.reason in SYNC_DEGRADED_REASONS


def apply_sync_failure(
    conds: Conditions, *, reason: str, message: str, auth: bool, final: bool
) -> None:
    """A failed attempt: auth failures show at once, other errors once retries are spent.

    A connection that has never synced shows every failed attempt at once: there is no good
    state to keep showing, and "waiting for the first sync" would hide the error.
    """
    synced = conds.get(SYNCED)
    never_synced = synced is None or synced.status != "True"
    if auth:
        conds.set(AUTHENTICATED, "False", reason, message)
    elif final:
        conds.set(SYNCED, "False", "SyncFailed", message)
    elif never_synced:
        conds.set(SYNCED, "False", "SyncRetrying", message)
    derive_ready(conds)


def apply_throttled(conds: Conditions, message: str) -> None:
    conds.set(THROTTLED, "True", "RateLimited", message)


def apply_push(
    conds: Conditions,
    subscribed: str | None,
    reason: str,
    message: str,
    *,
    degraded: bool,
) -> None:
    """Record what the connection's push subscriptions say (`push_policy.summarize`).

    `subscribed` None: the connection does not push (no Subscribed condition). A failing
    subscription makes Degraded=True, unless a sync already holds Degraded=True for its own
    reason; Degraded set for push is cleared when push recovers or stops.
    """
    current = conds.get(DEGRADED)
    pushed_degraded = (
        current is not None
        and current.status == "True"
        and current.reason not in SYNC_DEGRADED_REASONS
    )
    if subscribed is None:
        if conds.get(SUBSCRIBED) is not None:
            conds.remove(SUBSCRIBED)
        degraded = False
    else:
        conds.set(SUBSCRIBED, "True" if subscribed == "True" else "False", reason, message)
    if degraded:
        if current is None or current.status != "True" or pushed_degraded:
            conds.set(DEGRADED, "True", reason, f"push notifications: {message}")
    elif pushed_degraded:
        conds.set(DEGRADED, "False", "AsExpected", "push notifications work again")
