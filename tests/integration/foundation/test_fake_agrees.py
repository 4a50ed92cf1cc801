"""The shared async client against the real API server, and the fake that unit tests use
(tests/fakeapi.py) against the same: one script of requests, run on both, must get the same
answers. What the unit tests believe about preconditions, subresources and dry runs is
therefore what the API server does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.fakeapi import FakeApiServer
from tradingbot_api.informer import Informer
from tradingbot_api.kubeclient import APPLY_PATCH, MERGE_PATCH, KubeClient, KubeError

Requester = Any  # KubeClient or FakeApiServer: the same request/stream face
BOTS = "/apis/trading.r7.dev/v1alpha1/namespaces/{ns}/tradingbots"
CONFIGMAPS = "/api/v1/namespaces/{ns}/configmaps"


async def outcome(call: Coroutine[Any, Any, Any]) -> Any:
    """The answer, or the HTTP status it failed with."""
    try:
        return await call
    except KubeError as err:
        return err.status


def configmap(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }


async def configmap_rules(api: Requester, ns: str) -> list[Any]:
    path = CONFIGMAPS.format(ns=ns)
    seen: list[Any] = []
    created = await api.request("POST", path, body=configmap("a", app="x"))
    seen.append(created["data"])
    seen.append(await outcome(api.request("POST", path, body=configmap("a"))))
    seen.append(await outcome(api.request("GET", f"{path}/missing")))
    touched = await api.request(
        "PATCH", f"{path}/a", body={"data": {"k": "v1"}}, content_type=MERGE_PATCH
    )
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    seen.append(
        await outcome(api.request("PATCH", f"{path}/a", body=stale, content_type=MERGE_PATCH))
    )
    current = {
        "metadata": {"resourceVersion": touched["metadata"]["resourceVersion"]},
        "data": {"k": "new", "other": "x"},
    }
    patched = await api.request("PATCH", f"{path}/a", body=current, content_type=MERGE_PATCH)
    seen.append(patched["data"])
    removal = {"data": {"other": None}}
    seen.append(
        (await api.request("PATCH", f"{path}/a", body=removal, content_type=MERGE_PATCH))["data"]
    )
    # Dry runs store nothing.
    await api.request("POST", path, body=configmap("dry"), query={"dryRun": "All"})
    seen.append(await outcome(api.request("GET", f"{path}/dry")))
    # Label selectors.
    await api.request("POST", path, body=configmap("b", app="y"))
    for selector in ("app=x", "app!=x", "app", "app=z"):
        listed = await api.request("GET", path, query={"labelSelector": selector})
        seen.append(sorted(i["metadata"]["name"] for i in listed["items"]))
    # Deletion preconditions.
    wrong = {"preconditions": {"uid": "not-this-one"}}
    seen.append(await outcome(api.request("DELETE", f"{path}/a", body=wrong)))
    uid = (await api.request("GET", f"{path}/a"))["metadata"]["uid"]
    await api.request("DELETE", f"{path}/a", body={"preconditions": {"uid": uid}})
    seen.append(await outcome(api.request("DELETE", f"{path}/a")))
    # Server-side apply: creates, then merges; without a field manager it is refused.
    applied = configmap("c")
    seen.append(
        await outcome(
            api.request("PATCH", f"{path}/c", body=json.dumps(applied), content_type=APPLY_PATCH)
        )
    )
    query = {"fieldManager": "test", "force": "true"}
    first = await api.request(
        "PATCH", f"{path}/c", body=json.dumps(applied), query=query, content_type=APPLY_PATCH
    )
    seen.append(first["data"])
    applied["data"] = {"k": "v2"}
    second = await api.request(
        "PATCH", f"{path}/c", body=json.dumps(applied), query=query, content_type=APPLY_PATCH
    )
    seen.append(second["data"])
    return seen


def tradingbot(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "trading.r7.dev/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"name": name},
        "spec": {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ["BTC/USDT"]},
    }


def phase(bot: dict[str, Any]) -> Any:
    # Only what the script wrote: the fake does not apply the CRD's schema defaults.
    return (bot.get("status") or {}).get("phase")


async def status_rules(api: Requester, ns: str) -> list[Any]:
    path = BOTS.format(ns=ns)
    seen: list[Any] = []
    created = await api.request("POST", path, body=tradingbot("bot-a"))
    seen.append(created["metadata"]["generation"])
    # The main resource ignores status; /status ignores everything else.
    main = {"status": {"phase": "Running"}, "metadata": {"labels": {"a": "b"}}}
    after = await api.request("PATCH", f"{path}/bot-a", body=main, content_type=MERGE_PATCH)
    seen.append((phase(after), after["metadata"]["labels"], after["metadata"]["generation"]))
    sub = {"status": {"phase": "Running"}, "metadata": {"labels": {"c": "d"}}}
    after = await api.request("PATCH", f"{path}/bot-a/status", body=sub, content_type=MERGE_PATCH)
    seen.append((phase(after), after["metadata"]["labels"], after["metadata"]["generation"]))
    # A spec change moves the generation; a status write with a stale version is refused.
    spec = {"spec": {"symbols": ["ETH/USDT"]}}
    after = await api.request("PATCH", f"{path}/bot-a", body=spec, content_type=MERGE_PATCH)
    seen.append(after["metadata"]["generation"])
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "status": {}}
    seen.append(
        await outcome(
            api.request("PATCH", f"{path}/bot-a/status", body=stale, content_type=MERGE_PATCH)
        )
    )
    return seen


async def watch_rules(api: Requester, ns: str) -> list[Any]:
    path = CONFIGMAPS.format(ns=ns)
    created = await api.request("POST", path, body=configmap("w"))
    since = created["metadata"]["resourceVersion"]
    patch = {"data": {"k": "changed"}}
    await api.request("PATCH", f"{path}/w", body=patch, content_type=MERGE_PATCH)
    await api.request("DELETE", f"{path}/w")
    query = {
        "watch": "true",
        "resourceVersion": since,
        "fieldSelector": "metadata.name=w",
        "timeoutSeconds": 1,
    }
    events = []
    async for event in api.stream(path, query=query, read_timeout=10):
        events.append((event["type"], (event["object"].get("data") or {}).get("k")))
    return events


async def informer_rules(api: Requester, ns: str) -> list[Any]:
    """What an informer over labelled ConfigMaps sees of creates, changes and a delete."""
    path = CONFIGMAPS.format(ns=ns)
    await api.request("POST", path, body=configmap("before", app="i"))
    await api.request("POST", path, body=configmap("unlabelled"))
    changes: list[tuple[str, str | None]] = []
    informer = Informer(
        api,
        path,
        query={"labelSelector": "app=i"},
        on_change=lambda key, obj: changes.append(
            (key[1], None if obj is None else (obj.get("data") or {}).get("k"))
        ),
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        await api.request("POST", path, body=configmap("after", app="i"))
        patch = {"data": {"k": "changed"}}
        await api.request("PATCH", f"{path}/before", body=patch, content_type=MERGE_PATCH)
        await api.request("DELETE", f"{path}/after")
        for _ in range(500):
            if len(changes) >= 4:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [changes, sorted(key[1] for key in informer.store.objects)]


SCRIPTS = [configmap_rules, status_rules, watch_rules, informer_rules]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_the_fake_answers_like_the_api_server(
    script: Callable[[Requester, str], Coroutine[Any, Any, list[Any]]],
    kubeconfig: Path,
    namespace: str,
    apply_crds: list[str],
) -> None:
    async def real() -> list[Any]:
        api = KubeClient.from_environment(str(kubeconfig))
        try:
            return await script(api, namespace)
        finally:
            await api.close()

    expected = asyncio.run(real())
    assert asyncio.run(script(FakeApiServer(), namespace)) == expected


def test_the_client_reports_no_answer_as_status_zero(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )

    async def ask() -> KubeError:
        api = KubeClient.from_environment(str(config))
        try:
            await api.request("GET", "/api/v1/namespaces")
        except KubeError as err:
            return err
        finally:
            await api.close()
        raise AssertionError("an answer from a closed port")

    err = asyncio.run(ask())
    assert err.status == 0
