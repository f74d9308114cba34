"""Names of the calsync API and the building blocks every kind's model shares.

The group, version and per-kind names live here so that the CRD generator, the operator and
the clients all spell them the same way. The base models fix the wire conventions once:
camelCase field names, UTC timestamps written as RFC 3339 with a trailing ``Z``, and specs
that reject unknown fields so a typo fails loudly instead of being pruned by the API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, PlainSerializer
from pydantic.alias_generators import to_camel

GROUP = "calsync.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "calsync"

JsonDict = dict[str, JsonValue]


@dataclass(frozen=True)
class KindInfo:
    """How one custom resource kind is named on the API server."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]

    @property
    def crd_name(self) -> str:
        """The CustomResourceDefinition's own name, ``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def api_version(self) -> str:
        return API_VERSION


CALENDAR_CONNECTION = KindInfo(
    kind="CalendarConnection",
    plural="calendarconnections",
    singular="calendarconnection",
    short_names=("calconn",),
)
WEBHOOK_SUBSCRIPTION = KindInfo(
    kind="WebhookSubscription",
    plural="webhooksubscriptions",
    singular="webhooksubscription",
    short_names=("whsub",),
)
SYNC_JOB = KindInfo(
    kind="SyncJob",
    plural="syncjobs",
    singular="syncjob",
    short_names=("sj",),
)
KINDS: tuple[KindInfo, ...] = (CALENDAR_CONNECTION, WEBHOOK_SUBSCRIPTION, SYNC_JOB)

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""An object name as Kubernetes accepts it for Secrets and custom resources (RFC 1123)."""

NAME_MAX_LENGTH = 253
URL_MAX_LENGTH = 2048
CALENDAR_ID_MAX_LENGTH = 1024


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; fractions only when the value has them."""
    value = _as_utc(value)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from an RFC 3339 string (or a datetime); None when absent or bad."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


Timestamp = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]
"""A point in time: an aware UTC ``datetime`` in Python, an RFC 3339 string on the wire.

Naive values are taken to be UTC already.
"""

ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN),
]
CalendarId = Annotated[str, Field(max_length=CALENDAR_ID_MAX_LENGTH)]


class ApiModel(BaseModel):
    """Base of every calsync API model: camelCase on the wire, snake_case in Python.

    Statuses and whole objects ignore unknown fields, so an older client can read what a
    newer operator wrote.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form the API server expects: camelCase keys, no ``null`` values."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SpecModel(ApiModel):
    """Base of the user-written parts: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class SecretReference(SpecModel):
    """A Secret in the same namespace as the object that refers to it."""

    name: ObjectName = Field(description="Name of the Secret, in the object's own namespace.")


def cel_rule(
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: str | None = None,
) -> JsonDict:
    """One ``x-kubernetes-validations`` entry, evaluated by the API server at admission."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def immutable(what: str) -> JsonDict:
    """Schema extras that make a field unchangeable once the object exists."""
    return {"x-kubernetes-validations": [cel_rule("self == oldSelf", f"{what} is immutable")]}
