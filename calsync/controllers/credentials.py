"""Which Secrets a connection needs, and what their presence says about its conditions.

Pure functions, no I/O: the connection controller reads the Secrets and hands their data here.
Each provider needs particular keys; an empty value counts as missing, because an empty password
would only fail later with a far less helpful message from the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from calsync.api import CalendarConnectionSpec

CALDAV_KEYS = ("username", "password")
OAUTH_CLIENT_KEYS = ("client_id", "client_secret")
OAUTH_TOKEN_KEYS = ("refresh_token",)

Status = Literal["True", "False", "Unknown"]


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


def evaluate(
    spec: CalendarConnectionSpec,
    secrets: Mapping[str, Mapping[str, bytes] | None],
    *,
    tokens_stored: bool = False,
    token_problem: tuple[str, str] | None = None,
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
            message = f"Secret {need.name!r} named in {need.field} does not exist"
            return Verdict(
                ("False", "SecretNotFound", message), ("False", "SecretNotFound", message)
            )
        missing = [key for key in need.keys if not data.get(key)]
        if missing:
            message = (
                f"Secret {need.name!r} named in {need.field} lacks "
                f"{', '.join(repr(k) for k in missing)} (needs {', '.join(need.keys)})"
            )
            return Verdict(
                ("False", "SecretKeyMissing", message), ("False", "SecretKeyMissing", message)
            )

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
