"""Encrypted token storage and key rotation against a real API server (no operator running).

Each test keeps its keyring in its own namespace and restricts rotation to that namespace, so the
tests do not touch each other's token Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Secret

from calsync.controllers.tokens import (
    KeyInUse,
    StoredTokens,
    TokenStoreError,
    TokenVault,
    list_keys,
    retire_key,
    rotate_if_due,
    rotate_keys,
    token_secret_name,
)
from calsync.security.keyring import InvalidKeyRing, ciphertext_key_id
from tests.support import BIN, Kubectl, free_port, poll

pytestmark = pytest.mark.e2e

KEYRING = "calsync-keyring"


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager="calsync-test")
    yield c
    await c.close()


def vault(client: AsyncClient, namespace: str) -> TokenVault:
    return TokenVault(client, keyring_namespace=namespace, keyring_name=KEYRING)


def google_connection(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    """A minimal valid CalendarConnection, as the API server returns it (with its uid)."""
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "google-client", "labels": {"calsync.io/credentials": "true"}},
            "stringData": {"client_id": "id", "client_secret": "client-secret"},
        },
        namespace,
    )
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "CalendarConnection",
            "metadata": {"name": name},
            "spec": {"provider": "google", "oauth": {"clientSecretRef": {"name": "google-client"}}},
        },
        namespace,
    )
    body: dict[str, Any] = kubectl.json("get", f"calconn/{name}", "-n", namespace)
    return body


def raw_secret(kubectl: Kubectl, namespace: str, name: str) -> str:
    return kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout


def sealed_key_ids(kubectl: Kubectl, namespace: str, name: str) -> set[str]:
    """The ids of the keys that sealed a token Secret's fields, read from the raw Secret."""
    data = json.loads(raw_secret(kubectl, namespace, name))["data"]
    return {
        ciphertext_key_id(base64.b64decode(data[f]).decode())
        for f in ("refresh_token", "access_token")
        if f in data
    }


async def test_start_creates_one_keyring_even_when_two_processes_race(
    client: AsyncClient, kubeconfig: Path, kubectl: Kubectl, namespace: str
) -> None:
    # Separate clients, as two processes would have.
    other = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager="calsync-test-2")
    try:
        first, second = vault(client, namespace), vault(other, namespace)
        await asyncio.gather(first.start(), second.start())
    finally:
        await other.close()
    assert first.keyring.primary.id == second.keyring.primary.id
    assert len(first.keyring.keys) == 1
    secrets = kubectl.json(
        "get", "secrets", "-n", namespace, "--field-selector", "type=calsync.io/keyring"
    )
    assert [s["metadata"]["name"] for s in secrets["items"]] == [KEYRING]
    assert secrets["items"][0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "calsync"

    # A later start reads the ring; it does not replace it.
    third = vault(client, namespace)
    await third.start()
    assert third.keyring == first.keyring


async def test_save_load_round_trip_without_plaintext_and_gc_with_the_connection(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "alice")
    tokens = StoredTokens(
        refresh_token="1//refresh-ALICE-aaaaaaaaaaaaaaaa",
        access_token="ya29.access-ALICE-bbbbbbbbbbbbbbb",
        expires_at=1_900_000_000.5,
        scope="https://www.googleapis.com/auth/calendar.readonly",
    )
    v = vault(client, namespace)
    await v.start()
    assert await v.load(conn) is None
    await v.save(conn, tokens)
    assert await v.load(conn) == tokens

    name = token_secret_name("alice")
    raw = raw_secret(kubectl, namespace, name)
    decoded = " ".join(base64.b64decode(x).decode() for x in json.loads(raw)["data"].values())
    assert tokens.access_token is not None and tokens.scope is not None
    for secret_value in (tokens.refresh_token, tokens.access_token):
        assert secret_value not in raw and secret_value not in decoded
        assert base64.b64encode(secret_value.encode()).decode() not in raw
    assert tokens.scope in decoded  # expiry and scope stay readable on purpose

    obj = json.loads(raw)
    assert obj["type"] == "calsync.io/tokens"
    assert obj["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "calsync",
        "calsync.io/connection": "alice",
        "calsync.io/token-store": "v1",
        "calsync.io/credentials": "true",  # the label the Secret watches select on
    }
    [owner] = obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "CalendarConnection",
        "alice",
        conn["metadata"]["uid"],
    )
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert "refresh-ALICE" not in repr(tokens)

    # Replacing keeps the one Secret; no access token is fine.
    refreshed = StoredTokens(refresh_token="1//refresh-ALICE-second")
    await v.save(conn, refreshed)
    assert await v.load(conn) == refreshed
    assert "access_token" not in json.loads(raw_secret(kubectl, namespace, name))["data"]

    # Deleting the connection lets the garbage collector remove the token Secret.
    kubectl("delete", "calconn/alice", "-n", namespace)
    poll(
        lambda: kubectl("get", "secret", name, "-n", namespace, check=False).returncode != 0,
        what="the garbage collector to delete the token Secret",
    )
    await v.delete(conn)  # already gone: still fine


async def test_delete_removes_the_token_secret(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "dora")
    v = vault(client, namespace)
    await v.start()
    await v.save(conn, StoredTokens(refresh_token="1//refresh-DORA"))
    await v.delete(conn)
    assert (
        kubectl("get", "secret", token_secret_name("dora"), "-n", namespace, check=False).returncode
        != 0
    )
    assert await v.load(conn) is None


async def test_ciphertext_copied_to_another_connection_is_refused(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    alice = google_connection(kubectl, namespace, "alice")
    bob = google_connection(kubectl, namespace, "bob")
    v = vault(client, namespace)
    await v.start()
    await v.save(alice, StoredTokens(refresh_token="1//refresh-ALICE", access_token="at-ALICE"))
    await v.save(bob, StoredTokens(refresh_token="1//refresh-BOB"))

    alice_secret = await client.get(Secret, token_secret_name("alice"), namespace=namespace)
    bob_secret = await client.get(Secret, token_secret_name("bob"), namespace=namespace)
    bob_secret.data = alice_secret.data
    await client.replace(bob_secret)

    with pytest.raises(TokenStoreError) as err:
        await v.load(bob)
    message = str(err.value)
    assert "different connection or field" in message
    assert f"{namespace}/{token_secret_name('bob')}" in message
    assert err.value.reason == "TokenUnreadable"
    assert "ALICE" not in message and "BOB" not in message
    # Alice's own Secret is untouched and still reads.
    loaded = await v.load(alice)
    assert loaded is not None and loaded.refresh_token == "1//refresh-ALICE"


async def test_a_foreign_secret_with_the_token_name_is_not_overwritten(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "erin")
    name = token_secret_name("erin")
    kubectl("create", "secret", "generic", name, "-n", namespace, "--from-literal=mine=keep")
    v = vault(client, namespace)
    await v.start()
    with pytest.raises(TokenStoreError, match="not a calsync token store"):
        await v.save(conn, StoredTokens(refresh_token="1//refresh-ERIN"))
    with pytest.raises(TokenStoreError, match="not a calsync token store"):
        await v.load(conn)
    await v.delete(conn)
    data = json.loads(raw_secret(kubectl, namespace, name))["data"]
    assert base64.b64decode(data["mine"]) == b"keep"


async def test_rotation_under_concurrent_refreshes_loses_nothing(
    client: AsyncClient, kubeconfig: Path, kubectl: Kubectl, namespace: str
) -> None:
    names = [f"user{i}" for i in range(6)]
    conns = [google_connection(kubectl, namespace, n) for n in names]
    # A process that has not re-read the keyring on its own (no periodic reload in the test).
    writer = TokenVault(
        client, keyring_namespace=namespace, keyring_name=KEYRING, max_ring_age=86400
    )
    await writer.start()
    old_key = writer.keyring.primary.id
    for conn in conns:
        await writer.save(conn, StoredTokens(refresh_token=f"rt-{conn['metadata']['name']}-0"))

    last: dict[str, StoredTokens] = {}
    rounds_after_rotation = 0
    rotated = asyncio.Event()
    stop = asyncio.Event()

    async def refresh_loop() -> None:
        """The operator refreshing tokens, with the keyring it read before the rotation."""
        nonlocal rounds_after_rotation
        i = 0
        while not stop.is_set():
            i += 1
            for conn in conns:
                n = conn["metadata"]["name"]
                tokens = StoredTokens(
                    refresh_token=f"rt-{n}-{i}", access_token=f"at-{n}-{i}", expires_at=float(i)
                )
                await writer.save(conn, tokens)
                last[n] = tokens
            if rotated.is_set():
                rounds_after_rotation += 1
                if rounds_after_rotation >= 2:
                    stop.set()

    rotator = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager="calsync-rotate")
    try:
        task = asyncio.create_task(refresh_loop())
        report = await rotate_keys(
            rotator, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=[namespace]
        )
        rotated.set()
        await asyncio.wait_for(task, timeout=120)
    finally:
        await rotator.close()

    assert report.failed == []
    assert report.new_key_id != old_key
    assert report.reencrypted >= 1
    assert report.reencrypted + report.already_current == len(names)

    reader = vault(client, namespace)
    await reader.start()
    assert reader.keyring.primary.id == report.new_key_id
    for conn in conns:
        n = conn["metadata"]["name"]
        assert await reader.load(conn) == last[n], f"{n} lost a refresh"
        assert sealed_key_ids(kubectl, namespace, token_secret_name(n)) == {report.new_key_id}

    keys = {
        k.id: k
        for k in await list_keys(
            client, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=[namespace]
        )
    }
    assert keys[report.new_key_id].primary and keys[report.new_key_id].secrets == len(names)
    assert keys[old_key].secrets == 0 and not keys[old_key].primary

    with pytest.raises(InvalidKeyRing, match="primary"):
        await retire_key(
            client, report.new_key_id, keyring_namespace=namespace, keyring_name=KEYRING
        )
    await retire_key(client, old_key, keyring_namespace=namespace, keyring_name=KEYRING)
    keys = {
        k.id: k
        for k in await list_keys(
            client, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=[namespace]
        )
    }
    assert keys[old_key].retired
    for conn in conns:
        assert await reader.load(conn) == last[conn["metadata"]["name"]]

    # A new primary with no re-encryption (rotation limited to a namespace with no tokens):
    # every Secret still uses the previous key, so retiring it is refused, naming them all.
    partial = await rotate_keys(
        client, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=["kube-public"]
    )
    assert partial.reencrypted == 0
    with pytest.raises(KeyInUse) as err:
        await retire_key(
            client, report.new_key_id, keyring_namespace=namespace, keyring_name=KEYRING
        )
    assert err.value.secrets == sorted(f"{namespace}/{token_secret_name(n)}" for n in names)
    assert str(len(names)) in str(err.value)
    assert "rt-" not in str(err.value)


async def test_a_process_with_an_old_keyring_reloads_to_read_new_ciphertexts(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "frank")
    stale = vault(client, namespace)
    await stale.start()
    await stale.save(conn, StoredTokens(refresh_token="1//refresh-FRANK-0"))
    report = await rotate_keys(
        client, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=[namespace]
    )
    assert stale.keyring.primary.id != report.new_key_id  # it has not looked yet
    loaded = await stale.load(conn)  # sealed with a key it does not know: reload, then read
    assert loaded is not None and loaded.refresh_token == "1//refresh-FRANK-0"
    assert stale.keyring.primary.id == report.new_key_id


async def test_force_retired_key_makes_tokens_unreadable_with_a_clear_message(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "gina")
    v = vault(client, namespace)
    await v.start()
    old_key = v.keyring.primary.id
    await v.save(conn, StoredTokens(refresh_token="1//refresh-GINA"))
    await rotate_keys(
        client, keyring_namespace=namespace, keyring_name=KEYRING, namespaces=["kube-public"]
    )
    await retire_key(client, old_key, keyring_namespace=namespace, keyring_name=KEYRING, force=True)
    await v.reload()
    with pytest.raises(TokenStoreError) as err:
        await v.load(conn)
    assert old_key in str(err.value) and "retired" in str(err.value)
    assert "GINA" not in str(err.value)


async def test_long_connection_names_get_valid_secret_names_and_labels(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    name = "a" * 120 + "." + "b" * 132  # 253 characters, the longest object name
    conn = google_connection(kubectl, namespace, name)
    v = vault(client, namespace)
    await v.start()
    await v.save(conn, StoredTokens(refresh_token="1//refresh-LONG"))
    loaded = await v.load(conn)
    assert loaded is not None and loaded.refresh_token == "1//refresh-LONG"
    obj = json.loads(raw_secret(kubectl, namespace, token_secret_name(name)))
    assert len(obj["metadata"]["name"]) <= 253
    assert len(obj["metadata"]["labels"]["calsync.io/connection"]) <= 63


async def test_rotate_if_due_follows_the_primary_keys_age(
    client: AsyncClient, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "ivan")
    v = vault(client, namespace)
    await v.start()
    await v.save(conn, StoredTokens(refresh_token="1//refresh-IVAN"))
    created = v.keyring.primary.created
    ninety_days = 90 * 86400.0
    due: dict[str, Any] = {
        "keyring_namespace": namespace,
        "keyring_name": KEYRING,
        "namespaces": [namespace],
    }
    assert (
        await rotate_if_due(client, **due, interval=0, now=created + dt.timedelta(days=900)) is None
    )
    not_yet = created + dt.timedelta(days=89)
    assert await rotate_if_due(client, **due, interval=ninety_days, now=not_yet) is None
    later = created + dt.timedelta(days=90, seconds=1)
    report = await rotate_if_due(client, **due, interval=ninety_days, now=later)
    assert report is not None and report.reencrypted == 1 and report.failed == []
    assert sealed_key_ids(kubectl, namespace, token_secret_name("ivan")) == {report.new_key_id}
    # The new primary is young again: the next tick does nothing.
    assert await rotate_if_due(client, **due, interval=ninety_days, now=later) is None


def keys_command() -> list[str]:
    return [str(BIN / "calsync"), "keys"]


def run_keys(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*keys_command(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_list_rotate_retire(
    client: AsyncClient, kubeconfig: Path, kubectl: Kubectl, namespace: str
) -> None:
    conn = google_connection(kubectl, namespace, "hank")
    v = vault(client, namespace)
    await v.start()
    old_key = v.keyring.primary.id
    await v.save(conn, StoredTokens(refresh_token="1//refresh-HANK", access_token="at-HANK"))
    ns = ["--namespace", namespace, "--keyring-name", KEYRING]

    listed = run_keys(kubeconfig, "list", *ns)  # flags after the action work too
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["KEY", "ID", "CREATED", "PRIMARY", "RETIRED", "SECRETS"]
    assert row.split()[0] == old_key and row.split()[-2:] == ["yes", "1"]

    rotated = run_keys(kubeconfig, *ns, "rotate", "--token-namespace", namespace)
    assert rotated.returncode == 0, rotated.stderr
    lines = rotated.stdout.splitlines()
    assert lines[0].startswith("step 1: added key ") and old_key in lines[0]
    new_key = lines[0].split()[4]
    assert lines[1].startswith("step 2: re-encrypted 1 token Secret(s)")
    assert sealed_key_ids(kubectl, namespace, token_secret_name("hank")) == {new_key}
    loaded = await v.load(conn)
    assert loaded is not None and loaded.access_token == "at-HANK"

    listed = run_keys(kubeconfig, *ns, "list")
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[new_key][-2:] == ["yes", "1"]
    assert rows[old_key][-1] == "0"

    refused = run_keys(kubeconfig, *ns, "retire", new_key)
    assert refused.returncode == 1 and "primary" in refused.stderr
    retired = run_keys(kubeconfig, *ns, "retire", old_key)
    assert retired.returncode == 0, retired.stderr
    listed = run_keys(kubeconfig, *ns, "list")
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[old_key][-2:] == ["yes", "0"]  # RETIRED yes, no Secrets


def test_cli_failures_are_clear(kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    missing = run_keys(kubeconfig, "--namespace", namespace, "--keyring-name", "nope", "rotate")
    assert missing.returncode == 1
    assert "no keyring Secret" in missing.stderr and "calsync keys init" in missing.stderr
    assert "Traceback" not in missing.stderr

    init = run_keys(kubeconfig, "--namespace", namespace, "--keyring-name", "nope", "init")
    assert init.returncode == 0 and "created keyring Secret" in init.stdout
    again = run_keys(kubeconfig, "--namespace", namespace, "--keyring-name", "nope", "init")
    assert again.returncode == 0 and "exists" in again.stdout

    no_ns = run_keys(kubeconfig, "--namespace", "no-such-namespace-x", "init")
    assert no_ns.returncode == 1 and "does not exist" in no_ns.stderr

    # A kubeconfig whose server does not listen.
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    unreachable = run_keys(dead, "--namespace", namespace, "list")
    assert unreachable.returncode == 1
    assert "cannot reach the Kubernetes API server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
