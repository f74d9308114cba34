"""Which Secrets a connection needs, and what their presence says about its conditions.

Pure functions, no I/O: the connection controller reads the Secrets and hands their data here.
Each provider needs particular keys; an empty value counts as missing, because an empty password
would only fail later with a far less helpful message from the provider.

Secrets opt in (docs/decisions/0013): calsync uses a Secret named in a connection's spec only
when it carries the label `calsync.io/credentials: "true"`, and watches only such Secrets. The
readers (`credentials_from`) turn an unlabelled Secret into `UnlabelledSecret`, which holds no
data at all, so no code path can send its contents anywhere; `refusal` names the condition. A
Secret may also name the one host its CalDAV credentials are for (annotation
`calsync.io/allowed-host`); a connection whose URL points elsewhere is refused before any
request. For a connection by `spec.caldav.domain` the host is the SRV target DNS names, known
only when the provider is built: `discovered_host_refusal` judges it there (docs/decisions/0015).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from calsync.api import CalendarConnectionSpec

CALDAV_KEYS = ("username", "password")
OAUTH_CLIENT_KEYS = ("client_id", "client_secret")
OAUTH_TOKEN_KEYS = ("refresh_token",)

Status = Literal["True", "False", "Unknown"]

CREDENTIALS_LABEL = "calsync.io/credentials"
CREDENTIALS_LABEL_VALUE = "true"
# The label selector of every Secret watch and listing calsync makes.
CREDENTIALS_SELECTOR = f"{CREDENTIALS_LABEL}={CREDENTIALS_LABEL_VALUE}"
ALLOWED_HOST_ANNOTATION = "calsync.io/allowed-host"


class SecretData(dict[str, bytes]):
    """The decoded data of a labelled Secret, with the host its annotation allows (if any).

    Its repr and str name the keys, never a value (a password is one), so a log line, an
    f-string or an exception message that shows the mapping shows no secret. Copies made with
    `dict(...)`, `.items()` or `.values()` are plain and show the values: do not log those.
    """

    allowed_host: str | None = None

    def __init__(self, data: Mapping[str, bytes], allowed_host: str | None = None) -> None:
        super().__init__(data)
        self.allowed_host = allowed_host

    def __repr__(self) -> str:
        return f"SecretData(keys={sorted(self)!r}, allowed_host={self.allowed_host!r})"

    __str__ = __repr__


class UnlabelledSecret(Mapping[str, bytes]):
    """A Secret that exists but lacks the opt-in label: no data, on purpose.

    Anything that reads it as data finds it empty, so an unlabelled Secret's contents never
    leave the reader even where a caller forgets to check.
    """

    def __getitem__(self, key: str) -> bytes:
        raise KeyError(key)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnlabelledSecret)

    def __hash__(self) -> int:
        return hash(UnlabelledSecret)

    def __repr__(self) -> str:
        return "UnlabelledSecret()"


UNLABELLED = UnlabelledSecret()


def is_labelled(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(CREDENTIALS_LABEL) == CREDENTIALS_LABEL_VALUE


def credentials_from(
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
    data: Mapping[str, bytes],
) -> SecretData | UnlabelledSecret:
    """What calsync may use of a Secret: its data when labelled, else nothing."""
    if not is_labelled(labels):
        return UNLABELLED
    host = ((annotations or {}).get(ALLOWED_HOST_ANNOTATION) or "").strip()
    return SecretData(data, host or None)


def label_command(name: str, namespace: str | None) -> str:
    where = f" -n {namespace}" if namespace else ""
    return f"kubectl label secret {name}{where} {CREDENTIALS_SELECTOR}"


def _host(url: str | None) -> str:
    try:
        return (urlsplit(url or "").hostname or "").lower()
    except ValueError:
        return ""


def _allowed(host: str, allowed: str) -> bool:
    allowed = allowed.strip().lower().rstrip(".")
    return bool(host) and host.rstrip(".") == allowed


@dataclass(frozen=True)
class SecretNeed:
    name: str
    keys: tuple[str, ...]
    field: str  # where the spec names it, for messages


@dataclass(frozen=True)
class Verdict:
    """The conditions the credentials imply: (status, reason, message) for each type."""

    authenticated: tuple[Status, str, str]
    ready: tuple[Status, str, str]


def secret_needs(spec: CalendarConnectionSpec) -> list[SecretNeed]:
    needs: list[SecretNeed] = []
    if spec.provider in ("caldav", "icloud"):
        if spec.caldav is not None and spec.caldav.credentials_secret_ref is not None:
            needs.append(
                SecretNeed(
                    spec.caldav.credentials_secret_ref.name,
                    CALDAV_KEYS,
                    "spec.caldav.credentialsSecretRef",
                )
            )
    elif spec.oauth is not None:
        needs.append(
            SecretNeed(
                spec.oauth.client_secret_ref.name, OAUTH_CLIENT_KEYS, "spec.oauth.clientSecretRef"
            )
        )
        if spec.oauth.token_secret_ref is not None:
            needs.append(
                SecretNeed(
                    spec.oauth.token_secret_ref.name, OAUTH_TOKEN_KEYS, "spec.oauth.tokenSecretRef"
                )
            )
    return needs


def referenced_secrets(spec: CalendarConnectionSpec) -> set[str]:
    return {need.name for need in secret_needs(spec)}


def refusal(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    namespace: str | None = None,
) -> tuple[str, str] | None:
    """Why calsync may not use the Secrets the spec names, as (reason, message), or None.

    `CredentialsNotLabelled`: a named Secret lacks the opt-in label (the message gives the
    command that adds it). `CredentialsHostMismatch`: the CalDAV credentials Secret allows
    one host (annotation `calsync.io/allowed-host`) and `spec.caldav.url` names another.
    Missing Secrets are not judged here (`evaluate` says SecretNotFound).
    """
    for need in secret_needs(spec):
        data = secrets.get(need.name)
        if isinstance(data, UnlabelledSecret):
            return (
                "CredentialsNotLabelled",
                f"Secret {need.name!r} named in {need.field} is not labelled "
                f'{CREDENTIALS_LABEL}: "{CREDENTIALS_LABEL_VALUE}"; calsync uses only Secrets '
                f"that opt in: run `{label_command(need.name, namespace)}`",
            )
    for need in secret_needs(spec):
        data = secrets.get(need.name)
        allowed = getattr(data, "allowed_host", None)
        if need.field != "spec.caldav.credentialsSecretRef" or not allowed:
            continue
        if spec.caldav_domain is not None:
            continue  # the host is the SRV target: judged once DNS has named it
        host = _host(spec.caldav_url)
        if not _allowed(host, allowed):
            return (
                "CredentialsHostMismatch",
                f"Secret {need.name!r} named in {need.field} may be used only for host "
                f"{allowed!r} (annotation {ALLOWED_HOST_ANNOTATION}), but spec.caldav.url "
                f"points at {host or 'no host'!r}: no request is sent",
            )
    return None


def discovered_host_refusal(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    host: str,
    found_by: str,
) -> tuple[str, str] | None:
    """`CredentialsHostMismatch` for the host DNS discovery chose (`found_by` says how), or None.

    The host is the one the credentials would actually be sent to, the SRV target, not the
    domain the spec names.
    """
    for need in secret_needs(spec):
        allowed = getattr(secrets.get(need.name), "allowed_host", None)
        if need.field != "spec.caldav.credentialsSecretRef" or not allowed:
            continue
        if not _allowed(host.lower(), allowed):
            return (
                "CredentialsHostMismatch",
                f"Secret {need.name!r} named in {need.field} may be used only for host "
                f"{allowed!r} (annotation {ALLOWED_HOST_ANNOTATION}), but {found_by} points at "
                f"{host or 'no host'!r}: no request is sent",
            )
    return None


def evaluate(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    *,
    tokens_stored: bool = False,
    token_problem: tuple[str, str] | None = None,
    namespace: str | None = None,
) -> Verdict:
    """Judge the credentials from the Secrets' data (None = the Secret does not exist).

    For OAuth providers, `tokens_stored` says whether calsync holds encrypted tokens for the
    connection (from consent or an earlier refresh), and `token_problem` (reason, message) why
    they cannot be read (a key retired too early, a Secret copied from another connection).
    """
    if spec.suspend:
        message = "spec.suspend is true: no sync runs until it is cleared"
        return Verdict(("Unknown", "Suspended", message), ("False", "Suspended", message))

    for need in secret_needs(spec):
        data = secrets.get(need.name)
        if data is None:
            message = (
                f"Secret {need.name!r} named in {need.field} does not exist (calsync sees only "
                f"Secrets labelled {CREDENTIALS_SELECTOR})"
            )
            return Verdict(
                ("False", "SecretNotFound", message), ("False", "SecretNotFound", message)
            )
        if isinstance(data, UnlabelledSecret):
            break  # refusal() below says what to do
        missing = [key for key in need.keys if not data.get(key)]
        if missing:
            message = (
                f"Secret {need.name!r} named in {need.field} lacks "
                f"{', '.join(repr(k) for k in missing)} (needs {', '.join(need.keys)})"
            )
            return Verdict(
                ("False", "SecretKeyMissing", message), ("False", "SecretKeyMissing", message)
            )

    refused = refusal(spec, secrets, namespace)
    if refused is not None:
        reason, message = refused
        return Verdict(("False", reason, message), ("False", reason, message))

    if token_problem is not None:
        reason, problem = token_problem
        message = f"the stored tokens cannot be used ({problem})"
        if reason == "TokenUnreadable":
            message += "; grant access again through status.authorizationURL"
        return Verdict(("False", reason, message), ("False", reason, message))
    if (
        spec.provider in ("google", "microsoft")
        and not tokens_stored
        and (spec.oauth is None or spec.oauth.token_secret_ref is None)
    ):
        message = (
            "no refresh token yet: the account owner must grant access through the consent URL "
            "(status.authorizationURL), or set spec.oauth.tokenSecretRef"
        )
        return Verdict(("False", "ConsentRequired", message), ("False", "ConsentRequired", message))

    names = ", ".join(sorted(referenced_secrets(spec))) or "none"
    return Verdict(
        (
            "Unknown",
            "CredentialsFound",
            f"credentials present (Secrets: {names}); the provider checks them on the first sync",
        ),
        ("True", "CredentialsFound", f"configuration valid and credentials present ({names})"),
    )
