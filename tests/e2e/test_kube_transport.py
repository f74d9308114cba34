"""Every calsync process talks to the API server through `api_client` (lightkube on the aiohttp
transport): the calls we make work on a real API server, errors included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lightkube import ApiError
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from calsync.controllers.kube_transport import AiohttpTransport, api_client

pytestmark = pytest.mark.e2e


async def test_create_read_patch_watch_and_delete_on_a_real_api_server(
    kubeconfig: Path, namespace: str
) -> None:
    client = api_client(KubeConfig.from_file(kubeconfig), field_manager="calsync-test")
    assert isinstance(client._client._client._transport, AiohttpTransport)
    try:
        made = await client.create(
            ConfigMap(metadata=ObjectMeta(name="t", namespace=namespace), data={"a": "1"})
        )
        assert made.metadata is not None and made.metadata.resourceVersion
        with pytest.raises(ApiError) as exists:
            await client.create(ConfigMap(metadata=ObjectMeta(name="t", namespace=namespace)))
        assert exists.value.status.code == 409

        patched = await client.patch(
            ConfigMap, "t", {"data": {"b": "2"}}, namespace=namespace, patch_type=PatchType.MERGE
        )
        assert patched.data == {"a": "1", "b": "2"}
        # a patch guarded by a stale resourceVersion is refused (what the gateway's touch uses)
        with pytest.raises(ApiError) as stale:
            await client.patch(
                ConfigMap,
                "t",
                {
                    "metadata": {"resourceVersion": made.metadata.resourceVersion},
                    "data": {"c": "3"},
                },
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        assert stale.value.status.code == 409

        names = [
            cm.metadata.name
            async for cm in client.list(ConfigMap, namespace=namespace)
            if cm.metadata is not None
        ]
        assert "t" in names

        seen: list[tuple[str, str]] = []

        async def follow() -> None:
            async for kind, obj in client.watch(
                ConfigMap, namespace=namespace, resource_version=patched.metadata.resourceVersion
            ):
                seen.append((kind, obj.metadata.name))
                if kind == "DELETED":
                    return

        watcher = asyncio.create_task(follow())
        await client.create(ConfigMap(metadata=ObjectMeta(name="u", namespace=namespace)))
        await client.delete(ConfigMap, "u", namespace=namespace)
        await asyncio.wait_for(watcher, 30)
        assert seen == [("ADDED", "u"), ("DELETED", "u")]

        await client.delete(ConfigMap, "t", namespace=namespace)
        with pytest.raises(ApiError) as gone:
            await client.get(ConfigMap, "t", namespace=namespace)
        assert gone.value.status.code == 404
    finally:
        await client.close()
