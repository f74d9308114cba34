"""Which Secrets each provider needs, and the conditions their presence (or absence) implies.

The verdicts go into status messages and Events, which anyone with read access to the object
sees: no Secret value may ever appear in them.
"""

from __future__ import annotations

import logging
import pprint
from collections.abc import Mapping
from typing import Any

import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers.credentials import (
    CALDAV_KEYS,
    OAUTH_CLIENT_KEYS,
    OAUTH_TOKEN_KEYS,
    SecretData,
    SecretNeed,
    Verdict,
    evaluate,
    referenced_secrets,
    secret_needs,
)

pytestmark = pytest.mark.unit

# Distinctive values: if any of these shows up in a message, a secret leaked.
USERNAME = b"usr-7f3a9c-alice"
PASSWORD = b"pw-Zq8!kR2#secret-value"
CLIENT_ID = b"cid-4b1e8d.apps.example"
CLIENT_SECRET = b"csec-9Xy2Lm7Qp4-secret-value"
REFRESH_TOKEN = b"rtok-1//0gH5vT8wK3-secret-value"
ALL_VALUES = (USERNAME, PASSWORD, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN)

CALDAV_DATA = {"username": USERNAME, "password": PASSWORD}
CLIENT_DATA = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
TOKEN_DATA = {"refresh_token": REFRESH_TOKEN}


def caldav(**overrides: Any) -> CalendarConnectionSpec:
    wire: dict[str, Any] = {
        "provider": "caldav",
        "caldav": {
            "url": "https://cloud.example.com/",
            "credentialsSecretRef": {"name": "alice-caldav"},
        },
    }
    wire.update(overrides)
    return CalendarConnectionSpec.model_validate(wire)


def icloud(**overrides: Any) -> CalendarConnectionSpec:
    wire: dict[str, Any] = {
        "provider": "icloud",
        "caldav": {"credentialsSecretRef": {"name": "bob-icloud"}},
    }
    wire.update(overrides)
    return CalendarConnectionSpec.model_validate(wire)


def oauth(provider: str, *, token: bool, **overrides: Any) -> CalendarConnectionSpec:
    refs: dict[str, Any] = {"clientSecretRef": {"name": f"{provider}-client"}}
    if token:
        refs["tokenSecretRef"] = {"name": f"{provider}-token"}
    wire: dict[str, Any] = {"provider": provider, "oauth": refs}
    wire.update(overrides)
    return CalendarConnectionSpec.model_validate(wire)


def assert_no_secret_values(verdict: Verdict) -> None:
    for _, reason, message in (verdict.authenticated, verdict.ready):
        for value in ALL_VALUES:
            text = value.decode()
            assert text not in message, f"secret value leaked into message: {message!r}"
            assert text not in reason
            assert repr(value) not in message


# -- secret_needs / referenced_secrets ------------------------------------------------------------


def test_caldav_needs_username_and_password() -> None:
    spec = caldav()
    assert secret_needs(spec) == [
        SecretNeed("alice-caldav", ("username", "password"), "spec.caldav.credentialsSecretRef")
    ]
    assert referenced_secrets(spec) == {"alice-caldav"}


def test_icloud_needs_the_same_keys_as_caldav() -> None:
    spec = icloud()
    assert secret_needs(spec) == [
        SecretNeed("bob-icloud", CALDAV_KEYS, "spec.caldav.credentialsSecretRef")
    ]
    assert referenced_secrets(spec) == {"bob-icloud"}


def test_google_without_token_needs_only_the_client_secret() -> None:
    spec = oauth("google", token=False)
    assert secret_needs(spec) == [
        SecretNeed("google-client", OAUTH_CLIENT_KEYS, "spec.oauth.clientSecretRef")
    ]
    assert referenced_secrets(spec) == {"google-client"}


def test_google_with_token_needs_client_and_token_secrets() -> None:
    spec = oauth("google", token=True)
    assert secret_needs(spec) == [
        SecretNeed("google-client", ("client_id", "client_secret"), "spec.oauth.clientSecretRef"),
        SecretNeed("google-token", ("refresh_token",), "spec.oauth.tokenSecretRef"),
    ]
    assert referenced_secrets(spec) == {"google-client", "google-token"}


def test_microsoft_with_token_needs_client_and_token_secrets() -> None:
    spec = oauth("microsoft", token=True)
    assert [(n.name, n.keys) for n in secret_needs(spec)] == [
        ("microsoft-client", OAUTH_CLIENT_KEYS),
        ("microsoft-token", OAUTH_TOKEN_KEYS),
    ]
    assert referenced_secrets(spec) == {"microsoft-client", "microsoft-token"}


def test_microsoft_without_token_needs_only_the_client_secret() -> None:
    spec = oauth("microsoft", token=False)
    assert referenced_secrets(spec) == {"microsoft-client"}


def test_one_secret_for_client_and_token_is_referenced_once() -> None:
    spec = CalendarConnectionSpec.model_validate(
        {
            "provider": "google",
            "oauth": {"clientSecretRef": {"name": "g"}, "tokenSecretRef": {"name": "g"}},
        }
    )
    assert len(secret_needs(spec)) == 2
    assert referenced_secrets(spec) == {"g"}


# -- evaluate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [caldav(suspend=True), icloud(suspend=True), oauth("google", token=False, suspend=True)],
    ids=["caldav", "icloud", "google"],
)
def test_suspended_wins_over_everything(spec: CalendarConnectionSpec) -> None:
    verdict = evaluate(spec, {})  # no Secrets at all: suspension is still what is reported
    assert verdict.authenticated[:2] == ("Unknown", "Suspended")
    assert verdict.ready[:2] == ("False", "Suspended")
    assert "spec.suspend" in verdict.ready[2]


def test_missing_secret_is_named() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": None})
    assert verdict.authenticated[:2] == ("False", "SecretNotFound")
    assert verdict.ready[:2] == ("False", "SecretNotFound")
    message = verdict.ready[2]
    assert "'alice-caldav'" in message
    assert "spec.caldav.credentialsSecretRef" in message
    assert "does not exist" in message


def test_secret_absent_from_the_mapping_counts_as_missing() -> None:
    verdict = evaluate(icloud(), {})
    assert verdict.ready[1] == "SecretNotFound"
    assert "'bob-icloud'" in verdict.ready[2]


def test_missing_token_secret_is_named_after_the_client_secret_is_found() -> None:
    verdict = evaluate(oauth("google", token=True), {"google-client": CLIENT_DATA})
    assert verdict.ready[1] == "SecretNotFound"
    assert "'google-token'" in verdict.ready[2]
    assert "spec.oauth.tokenSecretRef" in verdict.ready[2]
    assert "google-client" not in verdict.ready[2]
    assert_no_secret_values(verdict)


def test_missing_key_is_listed() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": {"username": USERNAME}})
    assert verdict.authenticated[:2] == ("False", "SecretKeyMissing")
    assert verdict.ready[:2] == ("False", "SecretKeyMissing")
    message = verdict.ready[2]
    assert "'alice-caldav'" in message
    assert "'password'" in message
    assert "'username'" not in message  # present keys are not reported missing
    assert "needs username, password" in message
    assert_no_secret_values(verdict)


def test_empty_value_counts_as_missing() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": {"username": b"", "password": PASSWORD}})
    assert verdict.ready[1] == "SecretKeyMissing"
    assert "'username'" in verdict.ready[2]
    assert "'password'" not in verdict.ready[2]
    assert_no_secret_values(verdict)


def test_all_missing_keys_are_listed() -> None:
    verdict = evaluate(oauth("microsoft", token=False), {"microsoft-client": {"other": b"x"}})
    assert verdict.ready[1] == "SecretKeyMissing"
    assert "'client_id', 'client_secret'" in verdict.ready[2]
    assert "spec.oauth.clientSecretRef" in verdict.ready[2]


def test_empty_refresh_token_counts_as_missing() -> None:
    verdict = evaluate(
        oauth("google", token=True),
        {"google-client": CLIENT_DATA, "google-token": {"refresh_token": b""}},
    )
    assert verdict.ready[1] == "SecretKeyMissing"
    assert "'refresh_token'" in verdict.ready[2]
    assert "'google-token'" in verdict.ready[2]
    assert_no_secret_values(verdict)


@pytest.mark.parametrize("provider", ["google", "microsoft"])
def test_oauth_without_token_secret_requires_consent(provider: str) -> None:
    verdict = evaluate(oauth(provider, token=False), {f"{provider}-client": CLIENT_DATA})
    assert verdict.authenticated[:2] == ("False", "ConsentRequired")
    assert verdict.ready[:2] == ("False", "ConsentRequired")
    assert "authorizationURL" in verdict.ready[2]
    assert "tokenSecretRef" in verdict.ready[2]
    assert_no_secret_values(verdict)


def test_missing_client_secret_is_reported_before_consent() -> None:
    verdict = evaluate(oauth("google", token=False), {})
    assert verdict.ready[1] == "SecretNotFound"


@pytest.mark.parametrize(
    ("spec", "secrets", "names"),
    [
        (caldav(), {"alice-caldav": CALDAV_DATA}, "alice-caldav"),
        (icloud(), {"bob-icloud": CALDAV_DATA}, "bob-icloud"),
        (
            oauth("google", token=True),
            {"google-client": CLIENT_DATA, "google-token": TOKEN_DATA},
            "google-client, google-token",
        ),
        (
            oauth("microsoft", token=True),
            {"microsoft-client": CLIENT_DATA, "microsoft-token": TOKEN_DATA},
            "microsoft-client, microsoft-token",
        ),
    ],
    ids=["caldav", "icloud", "google", "microsoft"],
)
def test_all_good(
    spec: CalendarConnectionSpec, secrets: Mapping[str, Mapping[str, bytes]], names: str
) -> None:
    verdict = evaluate(spec, secrets)
    assert verdict.ready[:2] == ("True", "CredentialsFound")
    assert verdict.authenticated[:2] == ("Unknown", "CredentialsFound")
    assert names in verdict.ready[2]
    assert names in verdict.authenticated[2]
    assert_no_secret_values(verdict)


def test_unrelated_secrets_and_extra_keys_do_not_matter() -> None:
    verdict = evaluate(
        caldav(),
        {
            "alice-caldav": {**CALDAV_DATA, "note": b"extra"},
            "someone-else": None,
        },
    )
    assert verdict.ready[:2] == ("True", "CredentialsFound")
    assert "someone-else" not in verdict.ready[2]


def test_no_message_ever_contains_a_secret_value() -> None:
    """Every path through evaluate(), fed the distinctive values wherever they fit."""
    cases: list[tuple[CalendarConnectionSpec, dict[str, dict[str, bytes] | None]]] = [
        (caldav(suspend=True), {"alice-caldav": CALDAV_DATA}),
        (caldav(), {"alice-caldav": None}),
        (caldav(), {"alice-caldav": {"username": USERNAME}}),
        (caldav(), {"alice-caldav": {"password": PASSWORD, "username": b""}}),
        (caldav(), {"alice-caldav": CALDAV_DATA}),
        (oauth("google", token=False), {"google-client": CLIENT_DATA}),
        (oauth("google", token=False), {"google-client": {"client_id": CLIENT_ID}}),
        (oauth("google", token=True), {"google-client": CLIENT_DATA, "google-token": None}),
        (
            oauth("google", token=True),
            {"google-client": CLIENT_DATA, "google-token": {"refresh_token": b""}},
        ),
        (
            oauth("microsoft", token=True),
            {"microsoft-client": CLIENT_DATA, "microsoft-token": TOKEN_DATA},
        ),
    ]
    reasons = set()
    for spec, secrets in cases:
        verdict = evaluate(spec, secrets)
        assert_no_secret_values(verdict)
        reasons.add(verdict.ready[1])
    assert reasons == {
        "Suspended",
        "SecretNotFound",
        "SecretKeyMissing",
        "ConsentRequired",
        "CredentialsFound",
    }


@pytest.mark.parametrize("provider", ["google", "microsoft"])
def test_oauth_with_stored_tokens_needs_no_consent(provider: str) -> None:
    verdict = evaluate(
        oauth(provider, token=False), {f"{provider}-client": CLIENT_DATA}, tokens_stored=True
    )
    assert verdict.authenticated[:2] == ("Unknown", "CredentialsFound")
    assert verdict.ready[0] == "True"


def test_unreadable_tokens_ask_for_consent_again() -> None:
    verdict = evaluate(
        oauth("google", token=False),
        {"google-client": CLIENT_DATA},
        token_problem=("TokenUnreadable", "encrypted for another connection"),
    )
    assert verdict.authenticated[:2] == ("False", "TokenUnreadable")
    assert "another connection" in verdict.ready[2]
    assert "authorizationURL" in verdict.ready[2]
    assert_no_secret_values(verdict)


def test_secret_data_never_shows_a_value(caplog: pytest.LogCaptureFixture) -> None:
    secret = SecretData(
        {"username": b"alice-login", "password": b"hunter2-secret"}, "cloud.example.com"
    )
    shown = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s %r" % (secret, secret),  # noqa: UP031 (the logging style, on purpose)
        "{} {!r}".format(secret, secret),  # noqa: UP032 (str.format, on purpose)
        repr([secret]),
        str({"credentials": secret}),
        pprint.pformat(secret),
    ]
    caplog.set_level(logging.DEBUG, logger="calsync.test.secretdata")
    logger = logging.getLogger("calsync.test.secretdata")
    logger.warning("data %r", secret)
    logger.warning("data %s", secret)
    logger.warning("data %(data)s", {"data": secret})
    shown += [record.getMessage() for record in caplog.records]
    for text in shown:
        assert "hunter2" not in text and "alice-login" not in text, text
        assert "password" in text and "username" in text, text  # the keys are shown
    assert repr(secret) == (
        "SecretData(keys=['password', 'username'], allowed_host='cloud.example.com')"
    )
    # Still the same mapping for the code that reads it.
    assert secret["password"] == b"hunter2-secret" and secret == {
        "username": b"alice-login",
        "password": b"hunter2-secret",
    }
