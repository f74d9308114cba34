"""Secrets opt in (docs/decisions/0013): calsync uses a Secret named in a connection only when it
carries the label calsync.io/credentials=true, and CalDAV credentials only for the host their
optional calsync.io/allowed-host annotation names. Pure decisions, no cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers import kube
from calsync.controllers.credentials import (
    UNLABELLED,
    SecretData,
    UnlabelledSecret,
    credentials_from,
    evaluate,
    refusal,
)
from calsync.controllers.provider_factory import ProviderDeps, build_provider
from calsync.providers.base import InvalidConfiguration
from calsync.settings import Settings

pytestmark = pytest.mark.unit

PASSWORD = b"pw-opt-in-secret-value"
CALDAV_DATA = {"username": b"alice", "password": PASSWORD}
LABELS = {"calsync.io/credentials": "true"}


def caldav(url: str = "https://cloud.example.com/dav/", provider: str = "caldav") -> Any:
    caldav: dict[str, Any] = {"credentialsSecretRef": {"name": "alice-caldav"}}
    if url:
        caldav["url"] = url
    return CalendarConnectionSpec.model_validate({"provider": provider, "caldav": caldav})


def oauth(token: bool = False) -> Any:
    refs: dict[str, Any] = {"clientSecretRef": {"name": "google-client"}}
    if token:
        refs["tokenSecretRef"] = {"name": "google-token"}
    return CalendarConnectionSpec.model_validate({"provider": "google", "oauth": refs})


# -- reading a Secret ------------------------------------------------------------------------


def test_an_unlabelled_secret_yields_no_data() -> None:
    got = credentials_from({"app": "x"}, None, CALDAV_DATA)
    assert isinstance(got, UnlabelledSecret)
    assert dict(got) == {} and "password" not in got
    assert PASSWORD.decode() not in repr(got)


@pytest.mark.parametrize("value", ["false", "True", "yes", ""])
def test_only_the_exact_label_value_opts_in(value: str) -> None:
    got = credentials_from({"calsync.io/credentials": value}, None, CALDAV_DATA)
    assert got is UNLABELLED


def test_a_labelled_secret_yields_its_data_and_allowed_host() -> None:
    got = credentials_from(LABELS, {"calsync.io/allowed-host": " cloud.example.com "}, CALDAV_DATA)
    assert isinstance(got, SecretData)
    assert dict(got) == CALDAV_DATA
    assert got.allowed_host == "cloud.example.com"


def test_a_watched_secret_dict_is_judged_the_same_way() -> None:
    obj = {"metadata": {"name": "s", "labels": {}}, "data": {"password": "cHc="}}
    assert kube.secret_credentials(obj) is UNLABELLED
    obj["metadata"]["labels"] = LABELS
    assert dict(kube.secret_credentials(obj)) == {"password": b"pw"}


# -- the condition ---------------------------------------------------------------------------


def test_an_unlabelled_caldav_secret_is_refused_with_the_command_that_fixes_it() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": UNLABELLED}, namespace="team-a")
    for status, reason, message in (verdict.authenticated, verdict.ready):
        assert (status, reason) == ("False", "CredentialsNotLabelled")
        assert "kubectl label secret alice-caldav -n team-a calsync.io/credentials=true" in message
        assert "spec.caldav.credentialsSecretRef" in message


@pytest.mark.parametrize("unlabelled", ["google-client", "google-token"])
def test_every_secret_an_oauth_connection_names_must_opt_in(unlabelled: str) -> None:
    secrets: dict[str, Any] = {
        "google-client": SecretData({"client_id": b"c", "client_secret": b"s"}),
        "google-token": SecretData({"refresh_token": b"r"}),
    }
    secrets[unlabelled] = UNLABELLED
    verdict = evaluate(oauth(token=True), secrets, namespace="team-a")
    assert verdict.ready[:2] == ("False", "CredentialsNotLabelled")
    assert f"kubectl label secret {unlabelled} -n team-a" in verdict.ready[2]


def test_a_missing_secret_still_says_not_found_and_mentions_the_label() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": None})
    assert verdict.ready[1] == "SecretNotFound"
    assert "calsync.io/credentials=true" in verdict.ready[2]


def test_a_labelled_secret_is_usable() -> None:
    verdict = evaluate(caldav(), {"alice-caldav": SecretData(CALDAV_DATA)})
    assert verdict.ready[0] == "True"


# -- allowed host ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://cloud.example.com/dav/",
        "https://CLOUD.example.com:8443/x",
        "https://cloud.example.com./",
    ],
)
def test_the_allowed_host_matches_the_url_host(url: str) -> None:
    data = SecretData(CALDAV_DATA, allowed_host="cloud.example.com")
    assert refusal(caldav(url), {"alice-caldav": data}) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example.net/",
        "https://cloud.example.com.attacker.net/",
        "https://evil-cloud.example.com/",
        "https://user@attacker.example.net/cloud.example.com",
    ],
)
def test_another_host_is_refused(url: str) -> None:
    data = SecretData(CALDAV_DATA, allowed_host="cloud.example.com")
    verdict = evaluate(caldav(url), {"alice-caldav": data})
    assert verdict.ready[:2] == ("False", "CredentialsHostMismatch")
    assert "cloud.example.com" in verdict.ready[2]
    assert PASSWORD.decode() not in verdict.ready[2]


def test_icloud_default_url_is_checked_too() -> None:
    data = SecretData(CALDAV_DATA, allowed_host="caldav.icloud.com")
    assert refusal(caldav("", provider="icloud"), {"alice-caldav": data}) is None
    data = SecretData(CALDAV_DATA, allowed_host="dav.example.org")
    assert refusal(caldav("", provider="icloud"), {"alice-caldav": data}) is not None


def test_no_annotation_means_any_host() -> None:
    data = SecretData(CALDAV_DATA)
    assert refusal(caldav("https://anywhere.example.net/"), {"alice-caldav": data}) is None


async def test_the_provider_factory_refuses_too() -> None:
    """Every path that builds a provider (worker, subscription controller) checks again."""
    deps = ProviderDeps(Settings(), None, None)
    with pytest.raises(InvalidConfiguration, match=r"calsync\.io/credentials"):
        await build_provider(caldav(), {"alice-caldav": UNLABELLED}, budget=None, deps=deps)
    mismatch = SecretData(CALDAV_DATA, allowed_host="cloud.example.com")
    with pytest.raises(InvalidConfiguration, match="allowed-host"):
        await build_provider(
            caldav("https://attacker.example.net/"),
            {"alice-caldav": mismatch},
            budget=None,
            deps=deps,
        )


def test_labelling_or_a_new_allowed_host_changes_the_credentials_digest() -> None:
    """The operator retries at once after a failure when the credentials change."""
    from calsync.controllers.policy import credentials_digest

    plain = credentials_digest({"s": SecretData(CALDAV_DATA)})
    assert plain == credentials_digest({"s": dict(CALDAV_DATA)})  # no change on upgrade
    assert credentials_digest({"s": UNLABELLED}) != credentials_digest({"s": None})
    assert credentials_digest({"s": UNLABELLED}) != plain
    hosted = credentials_digest({"s": SecretData(CALDAV_DATA, allowed_host="a.example")})
    assert hosted != plain
    assert hosted != credentials_digest({"s": SecretData(CALDAV_DATA, allowed_host="b.example")})


# -- watches ---------------------------------------------------------------------------------


def test_the_operator_watches_only_labelled_secrets() -> None:
    import kopf
    from kopf._cogs.structs import references

    from calsync.operator.main import configure_kopf

    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    secrets = references.Resource(
        group="", version="v1", plural="secrets", kind="Secret", namespaced=True
    )
    assert list(settings.watching.label_selectors.collect(secrets)) == [
        "calsync.io/credentials=true"
    ]


async def test_the_worker_lists_and_watches_only_labelled_secrets() -> None:
    from lightkube.resources.core_v1 import Secret

    from calsync.worker.runner import Worker

    calls: list[tuple[str, Any, Any]] = []

    class Listing:
        resourceVersion = "1"

        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> Any:
            raise StopAsyncIteration

    class Client:
        def list(self, resource: Any, **kwargs: Any) -> Listing:
            calls.append(("list", resource, kwargs.get("labels")))
            return Listing()

        async def watch(self, resource: Any, **kwargs: Any) -> Any:
            calls.append(("watch", resource, kwargs.get("labels")))
            raise asyncio.CancelledError
            yield  # pragma: no cover

    class NoStore:
        store_id = "s"

    worker = Worker(Client(), NoStore(), Settings(), identity="w1")  # type: ignore[arg-type]
    try:
        with pytest.raises(asyncio.CancelledError):
            await worker.secrets.run()
    finally:
        await worker.http.aclose()
    assert calls == [
        ("list", Secret, {"calsync.io/credentials": "true"}),
        ("watch", Secret, {"calsync.io/credentials": "true"}),
    ]
