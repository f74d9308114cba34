"""Encrypted OAuth token storage in Kubernetes Secrets, and rotation of the keys that seal it.

Two kinds of Secret live here:

* the keyring Secret (`calsync-keyring` in the operator's namespace): every AES-256 key, the
  primary marked, as one JSON document so a change is one resourceVersion-guarded write;
* one token Secret per connection (`<name>-calsync-tokens` in the connection's namespace), owned
  by the connection so Kubernetes garbage collection removes it with the connection. The token
  fields are sealed by `calsync.security.keyring`; expiry and scope stay readable.

Every write is guarded by resourceVersion and retried after a re-read, so a token refresh and a
key rotation can run at the same time without either losing the other's write. Rotation adds a
new primary first (old keys stay, so every process keeps decrypting), then re-encrypts each token
Secret; processes pick up the new primary when they meet a key they do not know, or after
`max_ring_age` seconds. A key is retired only when no token Secret uses it any more.

Tokens never reach logs, exceptions or reprs: errors name Secrets, fields and key ids only.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Secret

from calsync.api.meta import API_VERSION, CALENDAR_CONNECTION
from calsync.controllers.credentials import CREDENTIALS_LABEL, CREDENTIALS_LABEL_VALUE
from calsync.providers.oauth import TokenSet
from calsync.security.keyring import (
    DecryptionError,
    InvalidKeyRing,
    KeyRing,
    TokenContext,
    UnknownKey,
    ciphertext_key_id,
)

log = logging.getLogger(__name__)

DEFAULT_KEYRING_NAME = "calsync-keyring"
# Names, not secrets (ruff's S105 cannot tell).
KEYRING_SECRET_TYPE = "calsync.io/keyring"  # noqa: S105
TOKEN_SECRET_TYPE = "calsync.io/tokens"  # noqa: S105
TOKEN_STORE_LABEL = "calsync.io/token-store"  # noqa: S105
TOKEN_STORE_VERSION = "v1"  # noqa: S105
CONNECTION_LABEL = "calsync.io/connection"
MANAGED_BY = {"app.kubernetes.io/managed-by": "calsync"}
ENCRYPTED_FIELDS = ("refresh_token", "access_token")
TOKEN_SECRET_SUFFIX = "-calsync-tokens"  # noqa: S105
MAX_NAME = 253
MAX_LABEL_VALUE = 63

_ATTEMPTS = 8
_ROTATION_PASSES = 3
_ROTATION_CONCURRENCY = 4


class TokenStoreError(RuntimeError):
    """A connection's tokens cannot be read or written; the message fits a condition.

    `reason` is the condition reason the controller shows (`Authenticated=False`).
    """

    def __init__(self, message: str, *, reason: str = "TokenUnreadable") -> None:
        super().__init__(message)
        self.reason = reason


class KeyringNotFound(TokenStoreError):
    """The keyring Secret does not exist (or cannot be created where it should be)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="KeyringMissing")


class KeyringInvalid(TokenStoreError):
    """The keyring Secret exists but its content is unusable (the message says why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="KeyringInvalid")


class KeyringConflict(RuntimeError):
    """The keyring Secret kept changing between our read and our guarded write."""


class KeyringCreateForbidden(RuntimeError):
    """There is no keyring Secret yet and this process may not create one (workers and gateways
    may only read it: the operator creates it)."""


class KeyInUse(RuntimeError):
    """A key cannot be retired: token Secrets are still sealed with it."""

    def __init__(self, key_id: str, secrets: Sequence[str]) -> None:
        self.key_id = key_id
        self.secrets = list(secrets)
        shown = ", ".join(self.secrets[:20]) + (" ..." if len(self.secrets) > 20 else "")
        super().__init__(
            f"key {key_id!r} is still used by {len(self.secrets)} token Secret(s): {shown}; "
            "run `calsync keys rotate` to re-encrypt them first (or --force to retire anyway, "
            "which makes those tokens unreadable)"
        )


@dataclass(frozen=True)
class StoredTokens:
    """A connection's OAuth tokens. The repr never shows the tokens."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # epoch seconds
    scope: str | None = None

    @classmethod
    def granted(cls, tokens: TokenSet) -> StoredTokens | None:
        """What to keep of tokens the provider issued; None without a refresh token."""
        if tokens.refresh_token is None:
            return None
        return cls(
            refresh_token=tokens.refresh_token,
            access_token=tokens.access_token,
            expires_at=tokens.expires_at,
            scope=tokens.scope,
        )

    def __repr__(self) -> str:
        access = "None" if self.access_token is None else "'<redacted>'"
        return (
            f"StoredTokens(refresh_token='<redacted>', access_token={access}, "
            f"expires_at={self.expires_at!r}, scope={self.scope!r})"
        )


@dataclass(frozen=True)
class RotationReport:
    new_key_id: str
    reencrypted: int = 0
    already_current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # ("ns/name", reason)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: dt.datetime
    primary: bool
    retired: bool
    secrets: int  # token Secrets with at least one field sealed by this key


# -- names ---------------------------------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    """`text` if it fits, else a prefix plus a hash of the whole (stays unique and valid)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return text[: limit - len(digest) - 1].rstrip("-.") + "-" + digest


def token_secret_name(connection_name: str) -> str:
    """The name of a connection's token Secret (a valid DNS subdomain, at most 253 chars)."""
    return _shorten(connection_name, MAX_NAME - len(TOKEN_SECRET_SUFFIX)) + TOKEN_SECRET_SUFFIX


def _label_value(name: str) -> str:
    """A label value naming the connection (label values stop at 63 characters)."""
    return _shorten(name, MAX_LABEL_VALUE)


def _context(connection: Mapping[str, Any]) -> TokenContext:
    meta = connection.get("metadata") or {}
    namespace, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
    if not (namespace and name and uid):
        raise ValueError("the connection body needs metadata.namespace, .name and .uid")
    return TokenContext(str(namespace), str(name), str(uid))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- Secret data ---------------------------------------------------------------------------


def _decoded(secret: Secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _encoded(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode("ascii") for k, v in data.items()}


def _sealed_fields(secret: Secret) -> dict[str, str]:
    data = _decoded(secret)
    return {f: data[f].decode("ascii", "replace") for f in ENCRYPTED_FIELDS if f in data}


def _key_ids(secret: Secret) -> set[str] | None:
    """The key ids a token Secret's sealed fields name, or None when one is malformed."""
    try:
        return {ciphertext_key_id(text) for text in _sealed_fields(secret).values()}
    except DecryptionError:
        return None


def _where(secret: Secret) -> str:
    meta = secret.metadata or ObjectMeta()
    return f"{meta.namespace}/{meta.name}"


def _is_token_secret(secret: Secret) -> bool:
    labels = (secret.metadata.labels if secret.metadata else None) or {}
    return labels.get(TOKEN_STORE_LABEL) == TOKEN_STORE_VERSION


def _owned_by_other(secret: Secret, uid: str) -> bool:
    """True when the Secret belongs to an earlier connection of the same name (GC pending)."""
    refs = (secret.metadata.ownerReferences if secret.metadata else None) or []
    ours = [r for r in refs if r.kind == CALENDAR_CONNECTION.kind]
    return bool(ours) and all(r.uid != uid for r in ours)


async def _get_secret(client: AsyncClient, namespace: str, name: str) -> Secret | None:
    try:
        return await client.get(Secret, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


# -- the keyring Secret --------------------------------------------------------------------


async def read_keyring(
    client: AsyncClient, *, keyring_namespace: str, keyring_name: str = DEFAULT_KEYRING_NAME
) -> tuple[KeyRing, Secret] | None:
    """The keyring and its Secret (for a guarded update), or None when there is none."""
    secret = await _get_secret(client, keyring_namespace, keyring_name)
    if secret is None:
        return None
    try:
        return KeyRing.from_secret_data(_decoded(secret)), secret
    except InvalidKeyRing as exc:
        raise KeyringInvalid(f"keyring Secret {keyring_namespace}/{keyring_name}: {exc}") from None


async def _require_keyring(
    client: AsyncClient, keyring_namespace: str, keyring_name: str
) -> tuple[KeyRing, Secret]:
    found = await read_keyring(
        client, keyring_namespace=keyring_namespace, keyring_name=keyring_name
    )
    if found is None:
        raise KeyringNotFound(
            f"there is no keyring Secret {keyring_namespace}/{keyring_name}: create it with "
            "`calsync keys init` or by starting the operator"
        )
    return found


async def ensure_keyring(
    client: AsyncClient,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    now: dt.datetime | None = None,
) -> tuple[KeyRing, bool]:
    """Read the keyring, creating it with one fresh key when absent: (ring, created).

    Two processes starting at once both try to create it; the loser gets 409 and reads the
    winner's ring, so there is only ever one.
    """
    for _ in range(_ATTEMPTS):
        found = await read_keyring(
            client, keyring_namespace=keyring_namespace, keyring_name=keyring_name
        )
        if found is not None:
            return found[0], False
        ring = KeyRing.generate(now or _now())
        secret = Secret(
            metadata=ObjectMeta(
                name=keyring_name,
                namespace=keyring_namespace,
                labels={**MANAGED_BY, "app.kubernetes.io/component": "keyring"},
            ),
            type=KEYRING_SECRET_TYPE,
            data=_encoded(ring.to_secret_data()),
        )
        try:
            await client.create(secret)
        except ApiError as exc:
            if exc.status.code == 409:
                continue
            if exc.status.code == 404:
                raise KeyringNotFound(
                    f"cannot create the keyring Secret {keyring_namespace}/{keyring_name}: "
                    f"namespace {keyring_namespace!r} does not exist ({exc.status.message})"
                ) from exc
            if exc.status.code == 403:
                raise KeyringCreateForbidden(
                    f"there is no keyring Secret {keyring_namespace}/{keyring_name} yet and "
                    f"this process may not create it ({exc.status.message})"
                ) from exc
            raise
        log.info(
            "created keyring Secret %s/%s with key %s",
            keyring_namespace,
            keyring_name,
            ring.primary.id,
        )
        return ring, True
    raise KeyringConflict(
        f"the keyring Secret {keyring_namespace}/{keyring_name} keeps appearing and vanishing"
    )


async def _update_keyring(
    client: AsyncClient,
    keyring_namespace: str,
    keyring_name: str,
    change: Callable[[KeyRing], KeyRing],
) -> KeyRing:
    """Read-change-write the keyring, guarded by resourceVersion, retried on conflicts."""
    for _ in range(_ATTEMPTS):
        ring, secret = await _require_keyring(client, keyring_namespace, keyring_name)
        new = change(ring)
        if new == ring:
            return ring
        secret.data = _encoded(new.to_secret_data())
        if secret.metadata is not None:
            secret.metadata.managedFields = None
        try:
            await client.replace(secret)
        except ApiError as exc:
            if exc.status.code == 409:
                continue
            raise
        return new
    raise KeyringConflict(
        f"could not update the keyring Secret {keyring_namespace}/{keyring_name}: it kept "
        "changing under us"
    )


class _RingSource:
    """The keyring as one process sees it, re-read when it turns out to be stale."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._ring: KeyRing | None = None
        self.loaded_at = 0.0

    @property
    def ring(self) -> KeyRing:
        if self._ring is None:
            raise RuntimeError("the token vault is not started: call start() first")
        return self._ring

    def set(self, ring: KeyRing) -> None:
        self._ring = ring
        self.loaded_at = time.monotonic()

    async def reload(self) -> KeyRing:
        ring, _ = await _require_keyring(self.client, self.namespace, self.name)
        if self._ring is not None and ring.primary.id != self._ring.primary.id:
            log.info("keyring reloaded: primary key is now %s", ring.primary.id)
        self.set(ring)
        return ring

    async def decrypt(self, text: str, ctx: TokenContext, name: str) -> str:
        """Decrypt, re-reading the keyring once if the ciphertext names a key we do not know."""
        try:
            return self.ring.decrypt(text, ctx, name)
        except UnknownKey as exc:
            if exc.retired:
                raise
            await self.reload()
            return self.ring.decrypt(text, ctx, name)


def _unreadable(where: str, exc: Exception) -> TokenStoreError:
    if isinstance(exc, UnknownKey):
        return TokenStoreError(
            f"token Secret {where} is sealed with key {exc.key_id!r}, which "
            + ("has been retired" if exc.retired else "is not in the keyring")
            + "; authorize the connection again"
        )
    return TokenStoreError(f"token Secret {where} cannot be decrypted: {exc}")


async def _open(source: _RingSource, secret: Secret, ctx: TokenContext) -> dict[str, str]:
    """The plaintext of a token Secret's sealed fields, or TokenStoreError."""
    where = _where(secret)
    plain: dict[str, str] = {}
    for name, text in _sealed_fields(secret).items():
        try:
            plain[name] = await source.decrypt(text, ctx, name)
        except (UnknownKey, DecryptionError) as exc:
            raise _unreadable(where, exc) from None
    return plain


def _context_of_secret(secret: Secret) -> TokenContext | None:
    """The connection a token Secret belongs to, from its controller ownerReference."""
    meta = secret.metadata or ObjectMeta()
    for ref in meta.ownerReferences or []:
        if ref.kind == CALENDAR_CONNECTION.kind and ref.controller:
            return TokenContext(str(meta.namespace), ref.name, ref.uid)
    return None


# -- the vault -----------------------------------------------------------------------------


class TokenVault:
    """Read and write connections' tokens, sealed with the keyring's primary key."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        keyring_namespace: str,
        keyring_name: str = DEFAULT_KEYRING_NAME,
        max_ring_age: float = 60.0,
    ) -> None:
        self._client = client
        self._source = _RingSource(client, keyring_namespace, keyring_name)
        self._max_ring_age = max_ring_age

    def __repr__(self) -> str:
        return f"TokenVault(keyring={self._source.namespace}/{self._source.name})"

    @property
    def keyring(self) -> KeyRing:
        return self._source.ring

    async def start(self) -> None:
        """Load the keyring Secret, creating it (one fresh key) when there is none."""
        ring, _ = await ensure_keyring(
            self._client,
            keyring_namespace=self._source.namespace,
            keyring_name=self._source.name,
        )
        self._source.set(ring)

    async def reload(self) -> None:
        """Re-read the keyring Secret (a rotation elsewhere added a key)."""
        await self._source.reload()

    async def load(self, connection: Mapping[str, Any]) -> StoredTokens | None:
        """The connection's tokens, None when it has none; TokenStoreError when unreadable."""
        ctx = _context(connection)
        secret = await _get_secret(self._client, ctx.namespace, token_secret_name(ctx.name))
        if secret is None:
            return None
        where = _where(secret)
        if not _is_token_secret(secret):
            raise TokenStoreError(
                f"Secret {where} exists but is not a calsync token store (label "
                f"{TOKEN_STORE_LABEL}={TOKEN_STORE_VERSION} missing); rename or delete it",
                reason="TokenSecretConflict",
            )
        if _owned_by_other(secret, ctx.uid):
            log.debug("token Secret %s belongs to an earlier connection; ignoring it", where)
            return None
        plain = await _open(self._source, secret, ctx)
        if not plain.get("refresh_token"):
            raise TokenStoreError(f"token Secret {where} holds no refresh_token")
        data = _decoded(secret)
        return StoredTokens(
            refresh_token=plain["refresh_token"],
            access_token=plain.get("access_token"),
            expires_at=_float_or_none(data.get("expires_at"), where),
            scope=data["scope"].decode() if "scope" in data else None,
        )

    async def save(self, connection: Mapping[str, Any], tokens: StoredTokens) -> None:
        """Create or replace the connection's token Secret (guarded, retried on conflict)."""
        ctx = _context(connection)
        name = token_secret_name(ctx.name)
        if time.monotonic() - self._source.loaded_at > self._max_ring_age:
            await self._source.reload()
        for _ in range(_ATTEMPTS):
            existing = await _get_secret(self._client, ctx.namespace, name)
            if existing is not None:
                if not _is_token_secret(existing):
                    raise TokenStoreError(
                        f"Secret {_where(existing)} exists but is not a calsync token store; "
                        "rename or delete it so calsync can store the tokens",
                        reason="TokenSecretConflict",
                    )
                # Sealed with a key we do not know: a rotation happened since we read the ring.
                ids = _key_ids(existing) or set()
                if any(key_id not in self._source.ring for key_id in ids):
                    await self._source.reload()
            secret = self._token_secret(connection, ctx, name, tokens, existing)
            try:
                if existing is None:
                    await self._client.create(secret)
                else:
                    await self._client.replace(secret)
            except ApiError as exc:
                if exc.status.code in (404, 409):  # deleted or changed meanwhile: start over
                    log.debug(
                        "token Secret %s/%s changed meanwhile (%d); retrying",
                        ctx.namespace,
                        name,
                        exc.status.code,
                    )
                    continue
                raise
            log.debug(
                "stored tokens of %s in %s/%s (key %s)",
                ctx,
                ctx.namespace,
                name,
                self._source.ring.primary.id,
            )
            return
        raise TokenStoreError(
            f"could not store tokens in Secret {ctx.namespace}/{name}: it kept changing",
            reason="TokenStoreConflict",
        )

    def _token_secret(
        self,
        connection: Mapping[str, Any],
        ctx: TokenContext,
        name: str,
        tokens: StoredTokens,
        existing: Secret | None,
    ) -> Secret:
        ring = self._source.ring
        data = {"refresh_token": ring.encrypt(tokens.refresh_token, ctx, "refresh_token")}
        if tokens.access_token is not None:
            data["access_token"] = ring.encrypt(tokens.access_token, ctx, "access_token")
        if tokens.expires_at is not None:
            data["expires_at"] = repr(float(tokens.expires_at))
        if tokens.scope is not None:
            data["scope"] = tokens.scope
        old = existing.metadata if existing is not None and existing.metadata else ObjectMeta()
        labels = {
            **(old.labels or {}),
            **MANAGED_BY,
            CONNECTION_LABEL: _label_value(ctx.name),
            TOKEN_STORE_LABEL: TOKEN_STORE_VERSION,
            # The operator and workers watch only Secrets with this label.
            CREDENTIALS_LABEL: CREDENTIALS_LABEL_VALUE,
        }
        owner = OwnerReference(
            apiVersion=str(connection.get("apiVersion") or API_VERSION),
            kind=CALENDAR_CONNECTION.kind,
            name=ctx.name,
            uid=ctx.uid,
            controller=True,
            blockOwnerDeletion=True,
        )
        return Secret(
            metadata=ObjectMeta(
                name=name,
                namespace=ctx.namespace,
                labels=labels,
                annotations=old.annotations,
                ownerReferences=[owner],
                resourceVersion=old.resourceVersion,
            ),
            type=TOKEN_SECRET_TYPE,
            data=_encoded(data),
        )

    async def delete(self, connection: Mapping[str, Any]) -> None:
        """Delete the connection's token Secret; a missing one counts as deleted.

        A Secret of that name that calsync did not create is left alone.
        """
        ctx = _context(connection)
        name = token_secret_name(ctx.name)
        existing = await _get_secret(self._client, ctx.namespace, name)
        if existing is None:
            return
        if not _is_token_secret(existing):
            log.info("not deleting Secret %s: it is not a calsync token store", _where(existing))
            return
        try:
            await self._client.delete(Secret, name, namespace=ctx.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise


def _float_or_none(raw: bytes | None, where: str) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        log.warning("token Secret %s: expires_at is not a number; treating as expired", where)
        return 0.0


# -- rotation and retirement ---------------------------------------------------------------


async def list_token_secrets(client: AsyncClient, namespaces: Sequence[str] = ()) -> list[Secret]:
    """Every calsync token Secret, in all namespaces or only in `namespaces`."""
    labels: dict[str, Any] = {TOKEN_STORE_LABEL: TOKEN_STORE_VERSION}
    found: list[Secret] = []
    for namespace in namespaces or ("*",):
        found += [s async for s in client.list(Secret, namespace=namespace, labels=labels)]
    return found


async def _reencrypt_one(
    client: AsyncClient, source: _RingSource, secret: Secret
) -> tuple[str, str | None]:
    """Bring one token Secret onto the primary key: ("reencrypted"|"current"|"gone"|"failed", why).

    Guarded by resourceVersion: on a conflict (a refresh wrote new tokens meanwhile) the Secret
    is read again and the new tokens are re-encrypted, so no concurrent write is lost.
    """
    where = _where(secret)
    ctx = _context_of_secret(secret)
    if ctx is None:
        return "failed", "no CalendarConnection controller ownerReference (cannot rebuild AAD)"
    current: Secret | None = secret
    for _ in range(_ATTEMPTS):
        if current is None:
            return "gone", None
        sealed = _sealed_fields(current)
        ring = source.ring
        try:
            stale = {n: t for n, t in sealed.items() if ring.key_id_of(t) != ring.primary.id}
        except DecryptionError as exc:
            return "failed", str(exc)
        if not stale:
            return "current", None
        try:
            plain = {n: await source.decrypt(t, ctx, n) for n, t in stale.items()}
        except (UnknownKey, DecryptionError) as exc:
            return "failed", str(_unreadable(where, exc))
        ring = source.ring  # the decrypt may have reloaded it
        data = _decoded(current)
        for n, text in plain.items():
            data[n] = ring.encrypt(text, ctx, n).encode()
        current.data = {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}
        if current.metadata is not None:
            current.metadata.managedFields = None
            # Token Secrets of older versions get the label the watches select on.
            current.metadata.labels = {
                **(current.metadata.labels or {}),
                CREDENTIALS_LABEL: CREDENTIALS_LABEL_VALUE,
            }
        try:
            await client.replace(current)
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                return "failed", f"{exc.status.code} {exc.status.reason}: {exc.status.message}"
            log.debug("token Secret %s changed during re-encryption; re-reading", where)
            meta = current.metadata or ObjectMeta()
            current = await _get_secret(client, str(meta.namespace), str(meta.name))
            continue
        return "reencrypted", None
    return "failed", "kept changing during re-encryption"


async def reencrypt_tokens(
    client: AsyncClient,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    namespaces: Sequence[str] = (),
    new_key_id: str | None = None,
) -> RotationReport:
    """Re-encrypt every token Secret not yet on the primary key (rotation's step 2).

    Runs a few passes: a process that had not yet seen the new primary may have written a
    Secret with the old key while the first pass ran.
    """
    source = _RingSource(client, keyring_namespace, keyring_name)
    await source.reload()
    gate = asyncio.Semaphore(_ROTATION_CONCURRENCY)
    outcome: dict[str, tuple[str, str | None]] = {}  # ns/name -> (state, why it failed)

    async def one(secret: Secret) -> None:
        async with gate:
            state, why = await _reencrypt_one(client, source, secret)
        where = _where(secret)
        if state == "gone":
            outcome.pop(where, None)
        elif state != "current" or outcome.get(where, ("",))[0] != "reencrypted":
            outcome[where] = (state, why)

    for _ in range(_ROTATION_PASSES):
        pending: list[Secret] = []
        for secret in await list_token_secrets(client, namespaces):
            where = _where(secret)
            ids = _key_ids(secret)
            if ids is not None and ids <= {source.ring.primary.id}:
                outcome.setdefault(where, ("current", None))
            elif outcome.get(where, ("",))[0] != "failed":
                pending.append(secret)
        if not pending:
            break
        await asyncio.gather(*(one(s) for s in pending))
    failed = sorted((w, r or "") for w, (state, r) in outcome.items() if state == "failed")
    for where, reason in failed:
        log.warning("could not re-encrypt token Secret %s: %s", where, reason)
    return RotationReport(
        new_key_id=new_key_id or source.ring.primary.id,
        reencrypted=sum(1 for state, _ in outcome.values() if state == "reencrypted"),
        already_current=sum(1 for state, _ in outcome.values() if state == "current"),
        failed=failed,
    )


async def rotate_keys(
    client: AsyncClient,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    namespaces: Sequence[str] = (),
    now: dt.datetime | None = None,
    on_step: Callable[[str], None] | None = None,
) -> RotationReport:
    """Add a new primary key, then re-encrypt every token Secret with it.

    Step 1 keeps the old keys, so running processes go on decrypting; step 2 re-encrypts each
    Secret with resourceVersion-guarded writes. Rerunning after a failure is safe.
    """
    before: list[str] = []

    def add_key(ring: KeyRing) -> KeyRing:
        before[:] = [ring.primary.id]
        return ring.with_new_primary(now or _now())

    ring = await _update_keyring(client, keyring_namespace, keyring_name, add_key)
    log.info("keyring: new primary key %s (was %s)", ring.primary.id, before[0])
    if on_step is not None:
        on_step(f"step 1: added key {ring.primary.id} as the primary (previous: {before[0]})")
    report = await reencrypt_tokens(
        client,
        keyring_namespace=keyring_namespace,
        keyring_name=keyring_name,
        namespaces=namespaces,
        new_key_id=ring.primary.id,
    )
    log.info(
        "key rotation to %s: %d re-encrypted, %d already current, %d failed",
        report.new_key_id,
        report.reencrypted,
        report.already_current,
        len(report.failed),
    )
    if on_step is not None:
        on_step(
            f"step 2: re-encrypted {report.reencrypted} token Secret(s), "
            f"{report.already_current} already current, {len(report.failed)} failed"
        )
    return report


async def rotate_if_due(
    client: AsyncClient,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    interval: float,
    now: dt.datetime | None = None,
    namespaces: Sequence[str] = (),
) -> RotationReport | None:
    """Rotate when the primary key is older than `interval` seconds (0 disables); else None."""
    if interval <= 0:
        return None
    when = now or _now()
    ring, _ = await _require_keyring(client, keyring_namespace, keyring_name)
    if (when - ring.primary.created).total_seconds() < interval:
        return None
    return await rotate_keys(
        client,
        keyring_namespace=keyring_namespace,
        keyring_name=keyring_name,
        namespaces=namespaces,
        now=when,
    )


async def _usage(client: AsyncClient, namespaces: Sequence[str] = ()) -> dict[str, list[str]]:
    """Which token Secrets (ns/name) use each key id; malformed ones under "?"."""
    usage: dict[str, list[str]] = {}
    for secret in await list_token_secrets(client, namespaces):
        ids = _key_ids(secret)
        for key_id in ids if ids is not None else {"?"}:
            usage.setdefault(key_id, []).append(_where(secret))
    return usage


async def retire_key(
    client: AsyncClient,
    key_id: str,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    force: bool = False,
) -> None:
    """Wipe a key's material from the keyring; refused for the primary or a key still in use."""
    ring, _ = await _require_keyring(client, keyring_namespace, keyring_name)
    if key_id not in ring:
        raise UnknownKey(key_id)
    if key_id == ring.primary.id:
        raise InvalidKeyRing(
            f"key {key_id!r} is the primary key; rotate (`calsync keys rotate`) before retiring it"
        )
    users = sorted((await _usage(client)).get(key_id, []))
    if users and not force:
        raise KeyInUse(key_id, users)
    await _update_keyring(client, keyring_namespace, keyring_name, lambda r: r.without(key_id))
    if users:
        log.warning(
            "retired key %s by force; %d token Secret(s) are now unreadable", key_id, len(users)
        )
    else:
        log.info("retired key %s", key_id)


async def list_keys(
    client: AsyncClient,
    *,
    keyring_namespace: str,
    keyring_name: str = DEFAULT_KEYRING_NAME,
    namespaces: Sequence[str] = (),
) -> list[KeyInfo]:
    """Every key of the ring, oldest first, with the number of token Secrets using it."""
    ring, _ = await _require_keyring(client, keyring_namespace, keyring_name)
    usage = await _usage(client, namespaces)
    return [
        KeyInfo(
            id=key.id,
            created=key.created,
            primary=key.id == ring.primary.id,
            retired=key.retired,
            secrets=len(usage.get(key.id, [])),
        )
        for key in ring.keys
    ]
