"""The generated CRDs on a real API server: examples apply, impossible specs are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, Kubectl

pytestmark = pytest.mark.e2e


def connection(spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_crds_are_established_with_short_names_and_category(
    kubectl: Kubectl, crds: list[str]
) -> None:
    assert sorted(crds) == [
        "calendarconnections.calsync.io",
        "syncjobs.calsync.io",
        "webhooksubscriptions.calsync.io",
    ]
    resources = kubectl("api-resources", "--api-group=calsync.io", "-o", "wide").stdout
    for short in ("calconn", "whsub", "sj"):
        assert short in resources
    assert resources.count("calsync") >= 3


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: Path(p).name
)
def test_every_example_applies(kubectl: Kubectl, namespace: str, path: Path) -> None:
    kubectl("apply", "-n", namespace, "-f", str(path))
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            kubectl("get", "-n", namespace, f"{kind}/{name}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"provider": "caldav", "caldav": {"credentialsSecretRef": {"name": "s"}}},
            "spec.caldav.url or spec.caldav.domain is required when provider is caldav",
        ),
        (
            {
                "provider": "caldav",
                "caldav": {"url": "http://dav.example.com/", "credentialsSecretRef": {"name": "s"}},
            },
            "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true",
        ),
        (
            {"provider": "google"},
            "spec.oauth.clientSecretRef is required when provider is google or microsoft",
        ),
        (
            {"provider": "microsoft", "oauth": {}},
            "spec.oauth.clientSecretRef: Required value",
        ),
        ({"provider": "yahoo"}, "spec.provider must be one of google, microsoft, caldav, icloud"),
        (
            {
                "provider": "caldav",
                "caldav": {
                    "url": "https://dav.example.com/",
                    "domain": "example.com",
                    "credentialsSecretRef": {"name": "s"},
                },
            },
            "spec.caldav.url and spec.caldav.domain are exclusive",
        ),
        (
            {
                "provider": "caldav",
                "caldav": {"domain": "alice@example.com", "credentialsSecretRef": {"name": "s"}},
            },
            "spec.caldav.domain must be a DNS domain name such as example.com",
        ),
    ],
    ids=[
        "caldav-without-url",
        "http-without-opt-in",
        "google-without-oauth",
        "microsoft-empty-oauth",
        "unknown-provider",
        "url-and-domain",
        "email-as-domain",
    ],
)
def test_impossible_specs_are_refused(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], message: str
) -> None:
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(connection(spec)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert kubectl("get", "calconn", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_http_is_accepted_with_the_explicit_opt_in(kubectl: Kubectl, namespace: str) -> None:
    spec = {
        "provider": "caldav",
        "caldav": {
            "url": "http://127.0.0.1:5232/",
            "allowInsecureHTTP": True,
            "credentialsSecretRef": {"name": "s"},
        },
    }
    kubectl.apply(connection(spec, "local"), namespace)
    got = kubectl.json("get", "calconn/local", "-n", namespace)
    assert got["spec"]["caldav"]["allowInsecureHTTP"] is True
    # Left unset: the operator's CALDAV_POLL_INTERVAL applies, so the schema defaults nothing.
    assert "pollInterval" not in got["spec"]["sync"]


def test_a_domain_alone_is_accepted(kubectl: Kubectl, namespace: str) -> None:
    spec = {
        "provider": "caldav",
        "caldav": {"domain": "example.com", "credentialsSecretRef": {"name": "s"}},
    }
    kubectl.apply(connection(spec, "by-domain"), namespace)
    got = kubectl.json("get", "calconn/by-domain", "-n", namespace)
    assert got["spec"]["caldav"]["domain"] == "example.com"


def test_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "caldav-demo.yaml"))
    header = kubectl("get", "calconn", "-A").stdout.splitlines()[0].split()
    assert header[:2] == ["NAMESPACE", "NAME"]
    assert " ".join(header[2:]) == "PROVIDER OWNER READY EVENTS LAST SYNC AGE"
    header = kubectl("get", "sj", "-A").stdout.splitlines()
    assert not header or "PHASE" in header[0]


def test_poll_interval_below_a_minute_is_refused(kubectl: Kubectl, namespace: str) -> None:
    spec = {
        "provider": "icloud",
        "caldav": {"credentialsSecretRef": {"name": "s"}},
        "sync": {"pollInterval": "30s"},
    }
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(connection(spec)), check=False
    )
    assert result.returncode != 0
    assert "spec.sync.pollInterval must be at least 1m" in result.stderr


def test_syncjob_spec_is_immutable(kubectl: Kubectl, namespace: str) -> None:
    job = {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "SyncJob",
        "metadata": {"name": "once"},
        "spec": {"connection": "demo", "mode": "full", "reason": "manual"},
    }
    kubectl.apply(job, namespace)
    job["spec"]["mode"] = "incremental"
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr


SKIPPED_RULES = "some validation rules were not checked"


def refusal(kubectl: Kubectl, namespace: str, spec: dict[str, Any]) -> str:
    """The API server's answer to `kubectl apply` of a connection that must be refused."""
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(connection(spec)), check=False
    )
    assert result.returncode != 0, f"accepted: {spec}"
    assert kubectl("get", "calconn", "-n", namespace, "-o", "name").stdout.strip() == ""
    return result.stderr


def caldav_spec(url: str, **caldav: Any) -> dict[str, Any]:
    return {
        "provider": "caldav",
        "caldav": {"url": url, "credentialsSecretRef": {"name": "s"}, **caldav},
    }


def with_poll_interval(interval: str) -> dict[str, Any]:
    return {**caldav_spec("https://dav.example.com/"), "sync": {"pollInterval": interval}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            caldav_spec("htp://127.0.0.1:5232/", allowInsecureHTTP=True),
            "spec.caldav.url is not a usable server URL: it must start with https:// (or "
            "http://) followed by a host name",
        ),
        (
            caldav_spec("127.0.0.1:5232/demo/", allowInsecureHTTP=True),
            "spec.caldav.url is not a usable server URL",
        ),
        (
            caldav_spec("http://exa mple.com/", allowInsecureHTTP=True),
            "spec.caldav.url is not a usable server URL",
        ),
        (
            with_poll_interval("15 minutes"),
            "spec.sync.pollInterval must be a duration like 15m or 1h30m",
        ),
        (with_poll_interval("1h30"), "spec.sync.pollInterval must be a duration like 15m or 1h30m"),
        (with_poll_interval("999999h"), "spec.sync.pollInterval must be at most 24h"),
        (with_poll_interval("99999999999999999999h"), "spec.sync.pollInterval must be at most 24h"),
        (with_poll_interval("24h1s"), "spec.sync.pollInterval must be at most 24h"),
        (with_poll_interval("59s"), "spec.sync.pollInterval must be at least 1m"),
        (
            {"provider": "outlook", "oauth": {"clientSecretRef": {"name": "s"}}},
            "spec.provider must be one of google, microsoft, caldav, icloud",
        ),
        (
            {"provider": "outlook", "caldav": {"credentialsSecretRef": {"name": "s"}}},
            "spec.provider must be one of google, microsoft, caldav, icloud",
        ),
    ],
    ids=[
        "url-bad-scheme-with-opt-in",
        "url-without-scheme-with-opt-in",
        "url-space-in-host",
        "poll-words",
        "poll-no-unit",
        "poll-999999h",
        "poll-beyond-go-durations",
        "poll-a-second-over-a-day",
        "poll-under-a-minute",
        "provider-outlook-with-oauth",
        "provider-outlook-with-caldav",
    ],
)
def test_each_mistake_gets_one_message_that_says_what_is_wrong(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], message: str
) -> None:
    stderr = refusal(kubectl, namespace, spec)
    # one problem, one message: nothing else is blamed, no rule is skipped, and neither a
    # regular expression nor a CEL conversion error reaches the user
    assert stderr.count(message) == 1, stderr
    for noise in (
        SKIPPED_RULES,
        "allowInsecureHTTP is true",
        "type conversion error",
        "google.protobuf.Duration",
        "should match",
        "[0-9]",
        "is only valid when",
        "is required when",
    ):
        assert noise not in stderr, stderr


@pytest.mark.parametrize("interval", ["1m", "90s", "1h30m", "24h", "1440m"])
def test_poll_intervals_between_a_minute_and_a_day_are_accepted(
    kubectl: Kubectl, namespace: str, interval: str
) -> None:
    kubectl.apply(connection(with_poll_interval(interval), "ok"), namespace)
    got = kubectl.json("get", "calconn/ok", "-n", namespace)
    assert got["spec"]["sync"]["pollInterval"] == interval


def test_plain_http_without_the_opt_in_is_blamed_on_the_missing_opt_in(
    kubectl: Kubectl, namespace: str
) -> None:
    stderr = refusal(kubectl, namespace, caldav_spec("http://dav.example.com/"))
    assert "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true" in (
        stderr
    )
    assert "not a usable server URL" not in stderr
