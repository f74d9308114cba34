"""The CalendarConnection kind: one user's account at one calendar provider.

A connection says where the calendars live (provider, CalDAV URL or OAuth client), where the
credentials are (Secret references), which calendars to mirror and how often to poll. Its
status is what the operator learned: whether it could authenticate, the calendars it found,
how many events it holds and when it last synced.

The admission rules (``x-kubernetes-validations``) declared here are also enforced by the
model itself, so a spec that the API server would reject fails the same way in Python, with
the same message.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from calsync.api.conditions import ConditionList
from calsync.api.duration import DURATION_MAX_LENGTH, DURATION_PATTERN, parse_duration
from calsync.api.meta import (
    NAME_MAX_LENGTH,
    URL_MAX_LENGTH,
    ApiModel,
    CalendarId,
    JsonDict,
    SecretReference,
    SpecModel,
    Timestamp,
    cel_rule,
)

Provider = Literal["google", "microsoft", "caldav", "icloud"]
PROVIDERS: tuple[Provider, ...] = ("google", "microsoft", "caldav", "icloud")
CALDAV_PROVIDERS: tuple[Provider, ...] = ("caldav", "icloud")
OAUTH_PROVIDERS: tuple[Provider, ...] = ("google", "microsoft")

ICLOUD_CALDAV_URL = "https://caldav.icloud.com/"
MIN_POLL_INTERVAL_SECONDS = 60.0
MAX_POLL_INTERVAL_SECONDS = 86400.0
PROVIDER_MAX_LENGTH = 64

MSG_CALDAV_URL_REQUIRED = (
    "spec.caldav.url or spec.caldav.domain is required when provider is caldav"
)
MSG_URL_AND_DOMAIN = (
    "spec.caldav.url and spec.caldav.domain are exclusive: set the server's URL, or the domain "
    "whose DNS SRV records name the server, not both"
)
MSG_DOMAIN_MALFORMED = (
    "spec.caldav.domain must be a DNS domain name such as example.com (no scheme, path, port "
    "or user; for alice@example.com write example.com)"
)
MSG_CALDAV_CREDENTIALS_REQUIRED = (
    "spec.caldav.credentialsSecretRef is required when provider is caldav or icloud"
)
MSG_OAUTH_CLIENT_REQUIRED = (
    "spec.oauth.clientSecretRef is required when provider is google or microsoft"
)
MSG_CALDAV_NOT_ALLOWED = "spec.caldav is only valid when provider is caldav or icloud"
MSG_OAUTH_NOT_ALLOWED = "spec.oauth is only valid when provider is google or microsoft"
MSG_INSECURE_URL = "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true"
MSG_URL_MALFORMED = (
    "spec.caldav.url is not a usable server URL: it must start with https:// (or http://) "
    "followed by a host name, e.g. https://dav.example.com/"
)
MSG_PROVIDER_UNSUPPORTED = "spec.provider must be one of google, microsoft, caldav, icloud"
MSG_POLL_INTERVAL_FORMAT = "spec.sync.pollInterval must be a duration like 15m or 1h30m"
MSG_POLL_INTERVAL_MIN = "spec.sync.pollInterval must be at least 1m"
MSG_POLL_INTERVAL_MAX = "spec.sync.pollInterval must be at most 24h"

# Why the rules below look the way they do.
#
# The API server skips every CEL rule of an object once plain schema validation has found an
# enum, required, too-long, too-many or wrong-type error, and then adds "some validation rules
# were not checked because the object was invalid". So `provider` carries no `enum`: a CEL rule
# checks it, and the rules that mention the provider hold vacuously for a provider they do not
# know, which leaves a typo such as `outlook` with exactly one message.
#
# A CEL rule that fails at run time (a string that `duration()` or `url()` cannot convert)
# reports the conversion error instead of our message, so every conversion is guarded by a
# check that it will succeed.

_PROVIDER_LIST = ", ".join(f"'{p}'" for p in PROVIDERS)
_CALDAV_LIST = ", ".join(f"'{p}'" for p in CALDAV_PROVIDERS)
_OAUTH_LIST = ", ".join(f"'{p}'" for p in OAUTH_PROVIDERS)

# Every number no larger than 24h in its unit: at most 2 digits of hours, 4 of minutes, 5 of
# seconds, 8 of ms, 11 of us, 14 of ns (leading zeros aside). A duration that matches
# DURATION_PATTERN but not this one has a component beyond 24h, so it is too long whatever its
# other components; one that matches this one sums to far less than Go's 290-year limit, so
# `duration()` always converts it.
_POLL_INTERVAL_BOUNDED = (
    "^(0*("
    "[0-9]{1,2}([.][0-9]+)?h|"
    "[0-9]{1,4}([.][0-9]+)?m|"
    "[0-9]{1,5}([.][0-9]+)?s|"
    "[0-9]{1,8}([.][0-9]+)?ms|"
    "[0-9]{1,11}([.][0-9]+)?us|"
    "[0-9]{1,14}([.][0-9]+)?ns"
    "))+$"
)
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A DNS name: dot-separated labels of letters, digits, '-' and '_' (not first or last), at most
# 253 characters, an optional final dot. The same pattern is the CRD's.
DOMAIN_MAX_LENGTH = 254
DOMAIN_PATTERN = (
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"([.][A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*[.]?$"
)


def _url_problem(url: str) -> bool:
    """Whether ``url`` fails the CRD's URL rule (close to Go's ``url.ParseRequestURI``)."""
    if _URL_CONTROL.search(url):
        return True
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        return True
    host = parts.hostname or ""
    return parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in host)


def _provider_schema(schema: JsonDict) -> None:
    """Replace the generated ``enum`` by a CEL rule (see the note above the rules)."""
    schema.pop("enum", None)
    schema["type"] = "string"
    schema["maxLength"] = PROVIDER_MAX_LENGTH
    schema["x-kubernetes-validations"] = [
        cel_rule(f"self in [{_PROVIDER_LIST}]", MSG_PROVIDER_UNSUPPORTED)
    ]


class CalDAVSettings(SpecModel):
    """Where the CalDAV server is and how to log in (providers caldav and icloud)."""

    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=URL_MAX_LENGTH,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "isURL(self) && url(self).getScheme() in ['http', 'https']"
                    " && url(self).getHostname() != ''",
                    MSG_URL_MALFORMED,
                )
            ]
        },
        description=(
            "Where discovery starts: the server's root (well-known lookup, RFC 6764), a "
            "principal or a single calendar collection. Required for caldav unless domain is "
            f"set; for icloud it defaults to {ICLOUD_CALDAV_URL}."
        ),
    )
    domain: str | None = Field(
        default=None,
        min_length=1,
        max_length=DOMAIN_MAX_LENGTH,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(f"self.matches('{DOMAIN_PATTERN}')", MSG_DOMAIN_MALFORMED)
            ]
        },
        description=(
            "Instead of url: the domain (e.g. the part after @ of the account's address) whose "
            "DNS names the server (RFC 6764): the SRV record _caldavs._tcp.<domain> gives host "
            "and port, its TXT record path=... the path (default /.well-known/caldav). "
            "_caldav._tcp.<domain> (plain HTTP) is looked up only with allowInsecureHTTP. The "
            "URL found passes the same address checks as a configured one."
        ),
    )
    allow_insecure_http: bool = Field(
        default=False,
        alias="allowInsecureHTTP",
        description=(
            "Permit a plain http:// URL (with domain: the _caldav._tcp SRV record). "
            "Credentials then cross the network unencrypted: meant for local servers in "
            "demos and tests only."
        ),
    )
    credentials_secret_ref: SecretReference = Field(
        description=(
            "Secret with the keys 'username' and 'password'. For iCloud the password is an "
            "app-specific password, never the Apple ID password."
        ),
    )

    @field_validator("url")
    @classmethod
    def _url_is_usable(cls, value: str | None) -> str | None:
        if value is not None and _url_problem(value):
            raise ValueError(MSG_URL_MALFORMED)
        return value

    @field_validator("domain")
    @classmethod
    def _domain_is_usable(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) > DOMAIN_MAX_LENGTH or not re.fullmatch(DOMAIN_PATTERN, value)
        ):
            raise ValueError(MSG_DOMAIN_MALFORMED)
        return value


class OAuthSettings(SpecModel):
    """The OAuth client the operator signs in with (providers google and microsoft)."""

    client_secret_ref: SecretReference = Field(
        description="Secret with the keys 'client_id' and 'client_secret' of the OAuth client.",
    )
    token_secret_ref: SecretReference | None = Field(
        default=None,
        description=(
            "Secret holding a refresh token obtained elsewhere (key 'refresh_token'). Without "
            "it the operator publishes a consent link in status.authorizationURL."
        ),
    )


class CalendarSelection(SpecModel):
    """Which of the account's calendars to mirror."""

    include: list[CalendarId] = Field(
        default_factory=list,
        description="Calendar ids to mirror. Empty means every calendar the account can see.",
    )
    exclude: list[CalendarId] = Field(
        default_factory=list,
        description="Calendar ids never to mirror, even when listed in include.",
    )


class SyncWindow(SpecModel):
    """The span of time around now whose events are kept in the store."""

    past_days: int = Field(
        default=365, ge=0, le=3650, description="Days before today to keep events for."
    )
    future_days: int = Field(
        default=730, ge=0, le=3650, description="Days after today to keep events for."
    )


class SyncSettings(SpecModel):
    """When and how much to synchronise."""

    window: SyncWindow = Field(
        default_factory=SyncWindow,
        json_schema_extra={"default": {}},
        description="Time range of events to mirror.",
    )
    poll_interval: str | None = Field(
        default=None,
        max_length=DURATION_MAX_LENGTH,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(f"self.matches('{DURATION_PATTERN}')", MSG_POLL_INTERVAL_FORMAT),
                cel_rule(
                    f"!self.matches('{_POLL_INTERVAL_BOUNDED}')"
                    " || duration(self) >= duration('1m')",
                    MSG_POLL_INTERVAL_MIN,
                ),
                cel_rule(
                    f"!self.matches('{DURATION_PATTERN}')"
                    f" || (self.matches('{_POLL_INTERVAL_BOUNDED}')"
                    " && duration(self) <= duration('24h'))",
                    MSG_POLL_INTERVAL_MAX,
                ),
            ]
        },
        description=(
            "How often to look for changes without being told, as a duration such as 90s, "
            "15m or 1h30m; at least 1m and at most 24h. Unset: the operator's "
            "CALDAV_POLL_INTERVAL setting (15m by default). The only trigger for CalDAV, a "
            "safety net for push providers."
        ),
    )
    push: bool = Field(
        default=True,
        description=(
            "Subscribe to change notifications where the provider offers them (Google, "
            "Microsoft): one WebhookSubscription per calendar. While every channel is "
            "healthy the connection is polled only at the operator's PUSH_POLL_INTERVAL (1h). "
            "When false, polling alone keeps the mirror current."
        ),
    )

    @field_validator("poll_interval")
    @classmethod
    def _poll_interval_in_range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(DURATION_PATTERN, value):
            raise ValueError(MSG_POLL_INTERVAL_FORMAT)
        seconds = parse_duration(value)
        if seconds < MIN_POLL_INTERVAL_SECONDS:
            raise ValueError(MSG_POLL_INTERVAL_MIN)
        if seconds > MAX_POLL_INTERVAL_SECONDS:
            raise ValueError(MSG_POLL_INTERVAL_MAX)
        return value

    @property
    def poll_interval_seconds(self) -> float | None:
        """The spec's poll interval in seconds; None when the operator's default applies."""
        return parse_duration(self.poll_interval) if self.poll_interval is not None else None


_CONNECTION_RULES: list[JsonValue] = [
    cel_rule(
        "self.provider != 'caldav'"
        " || (has(self.caldav) && (has(self.caldav.url) || has(self.caldav.domain)))",
        MSG_CALDAV_URL_REQUIRED,
        field_path=".caldav.url",
        reason="FieldValueRequired",
    ),
    cel_rule(
        "!has(self.caldav) || !has(self.caldav.url) || !has(self.caldav.domain)",
        MSG_URL_AND_DOMAIN,
        field_path=".caldav.domain",
        reason="FieldValueForbidden",
    ),
    cel_rule(
        f"!(self.provider in [{_CALDAV_LIST}])"
        " || (has(self.caldav) && has(self.caldav.credentialsSecretRef))",
        MSG_CALDAV_CREDENTIALS_REQUIRED,
        field_path=".caldav.credentialsSecretRef",
        reason="FieldValueRequired",
    ),
    cel_rule(
        f"!(self.provider in [{_OAUTH_LIST}])"
        " || (has(self.oauth) && has(self.oauth.clientSecretRef))",
        MSG_OAUTH_CLIENT_REQUIRED,
        field_path=".oauth.clientSecretRef",
        reason="FieldValueRequired",
    ),
    # "forbidden for the providers that use the other block" rather than "only for these":
    # an unknown provider gets the provider rule's message alone.
    cel_rule(
        f"!has(self.caldav) || !(self.provider in [{_OAUTH_LIST}])",
        MSG_CALDAV_NOT_ALLOWED,
        field_path=".caldav",
        reason="FieldValueForbidden",
    ),
    cel_rule(
        f"!has(self.oauth) || !(self.provider in [{_CALDAV_LIST}])",
        MSG_OAUTH_NOT_ALLOWED,
        field_path=".oauth",
        reason="FieldValueForbidden",
    ),
    # Only a well-formed http:// URL is this rule's business; the url field's own rule speaks
    # about anything malformed.
    cel_rule(
        "!has(self.caldav) || !has(self.caldav.url) || !isURL(self.caldav.url)"
        " || url(self.caldav.url).getScheme() != 'http'"
        " || (has(self.caldav.allowInsecureHTTP) && self.caldav.allowInsecureHTTP)",
        MSG_INSECURE_URL,
        field_path=".caldav.url",
    ),
]


class CalendarConnectionSpec(SpecModel):
    """One account at a calendar provider whose events calsync mirrors into its store."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _CONNECTION_RULES})

    provider: Provider = Field(
        json_schema_extra=_provider_schema,
        description=(
            "Calendar service: google (Google Calendar), microsoft (Microsoft 365 / Outlook via "
            "Graph), caldav (any CalDAV server) or icloud (Apple iCloud over CalDAV)."
        ),
    )
    owner: str | None = Field(
        default=None,
        max_length=NAME_MAX_LENGTH,
        description="Whose calendars these are, e.g. an email address; free text for humans.",
    )
    caldav: CalDAVSettings | None = Field(
        default=None,
        description="Server and credentials; only for providers caldav and icloud.",
    )
    oauth: OAuthSettings | None = Field(
        default=None,
        description="OAuth client and optional token; only for providers google and microsoft.",
    )
    calendars: CalendarSelection = Field(
        default_factory=CalendarSelection,
        description="Which calendars of the account to mirror. By default all of them.",
    )
    sync: SyncSettings = Field(
        default_factory=SyncSettings,
        json_schema_extra={"default": {}},
        description="Time window, polling interval and push notifications.",
    )
    suspend: bool = Field(
        default=False,
        description=(
            "Stop syncing and polling while true. Stored events and subscriptions are kept; "
            "setting it back to false resumes incrementally."
        ),
    )

    @model_validator(mode="after")
    def _admission_rules(self) -> CalendarConnectionSpec:
        problems = []
        caldav, oauth = self.caldav, self.oauth
        if self.provider == "caldav" and (
            caldav is None or (caldav.url is None and caldav.domain is None)
        ):
            problems.append(MSG_CALDAV_URL_REQUIRED)
        if caldav is not None and caldav.url is not None and caldav.domain is not None:
            problems.append(MSG_URL_AND_DOMAIN)
        if self.provider in CALDAV_PROVIDERS and caldav is None:
            problems.append(MSG_CALDAV_CREDENTIALS_REQUIRED)
        if self.provider in OAUTH_PROVIDERS and oauth is None:
            problems.append(MSG_OAUTH_CLIENT_REQUIRED)
        if caldav is not None and self.provider not in CALDAV_PROVIDERS:
            problems.append(MSG_CALDAV_NOT_ALLOWED)
        if oauth is not None and self.provider not in OAUTH_PROVIDERS:
            problems.append(MSG_OAUTH_NOT_ALLOWED)
        if (
            caldav is not None
            and caldav.url is not None
            and not caldav.allow_insecure_http
            and urlsplit(caldav.url).scheme == "http"
        ):
            problems.append(MSG_INSECURE_URL)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def caldav_domain(self) -> str | None:
        """The domain whose DNS SRV records name the CalDAV server (instead of a URL)."""
        return self.caldav.domain if self.caldav is not None else None

    @property
    def caldav_url(self) -> str | None:
        """The CalDAV URL to start from, with iCloud's well-known default filled in.

        None when the URL comes from DNS (`caldav_domain`)."""
        if self.caldav is not None and self.caldav.url is not None:
            return self.caldav.url
        if self.caldav is not None and self.caldav.domain is not None:
            return None
        if self.provider == "icloud":
            return ICLOUD_CALDAV_URL
        return None


class CalendarStatus(ApiModel):
    """One calendar the operator found and mirrors."""

    id: CalendarId = Field(description="The provider's id of the calendar.")
    name: str | None = Field(default=None, description="Display name at the provider.")
    events: int | None = Field(
        default=None, ge=0, description="Events of this calendar in the store."
    )
    last_sync_time: Timestamp | None = Field(
        default=None, description="When this calendar last finished a sync."
    )


class CalendarConnectionStatus(ApiModel):
    """What the operator observed about the connection."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The metadata.generation the store reflects: the one the last sync ran with, or "
            "a later one whose change needed no sync (owner, poll interval, suspend)."
        ),
    )
    conditions: ConditionList = Field(
        default_factory=list,
        description=(
            "Ready, Authenticated, Subscribed, Synced, Throttled and Degraded, each with a "
            "reason and message."
        ),
    )
    authorization_url: str | None = Field(
        default=None,
        alias="authorizationURL",
        description=(
            "Link where the account owner grants access, present while consent is needed "
            "(OAuth providers without a usable token)."
        ),
    )
    calendars: list[CalendarStatus] = Field(
        default_factory=list, description="Calendars found at the provider and being mirrored."
    )
    event_count: int | None = Field(
        default=None, ge=0, description="Events of all calendars in the store."
    )
    last_sync_time: Timestamp | None = Field(
        default=None, description="When a sync of this connection last finished successfully."
    )
    last_attempt_time: Timestamp | None = Field(
        default=None,
        description=(
            "When the last sync attempt started, successful or not; polls are timed from it."
        ),
    )
    consecutive_failures: int | None = Field(
        default=None,
        ge=0,
        description="Sync jobs that failed since the last success; polls back off with it.",
    )
    store_id: str | None = Field(
        default=None,
        description=(
            "Identity of the event store that holds this connection's events. Only workers "
            "on that store run its SyncJobs."
        ),
    )
    synced_scope: str | None = Field(
        default=None,
        description=(
            "Digest of what the last full sync mirrored (URL, calendars, window); a spec "
            "change that alters it asks for a full sync, any other change does not."
        ),
    )
    attempted: str | None = Field(
        default=None,
        description=(
            "Digest of the spec scope and credentials the last attempt used; after a failure, "
            "a change of either makes the next attempt due at once."
        ),
    )
    refused_credentials: str | None = Field(
        default=None,
        description=(
            "Digest of the credentials the provider refused. No sync is attempted until the "
            "referenced Secrets or the spec change."
        ),
    )


class CalendarConnection(ApiModel):
    """A whole CalendarConnection object as stored by the API server."""

    api_version: Literal["calsync.io/v1alpha1"] = "calsync.io/v1alpha1"
    kind: Literal["CalendarConnection"] = "CalendarConnection"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CalendarConnectionSpec
    status: CalendarConnectionStatus | None = None
