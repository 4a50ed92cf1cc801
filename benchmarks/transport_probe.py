"""One candidate of the transport benchmark, in a fresh interpreter (so its RSS is its own):
`python -m benchmarks.transport_probe CANDIDATE KUBECONFIG NAMESPACE CALLS` prints JSON."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GROUP, VERSION, PLURAL, NAME = "trading.r7.dev", "v1alpha1", "tradingbots", "bench"
MERGE = "application/merge-patch+json"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def patch_body(i: int) -> dict[str, Any]:
    return {"status": {"trades": {"total": i}}}


async def timed(calls: int, call: Any) -> list[float]:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)
        times.append(time.perf_counter() - started)
    return times


async def official(kubeconfig: str, namespace: str, calls: int) -> dict[str, Any]:
    from kubernetes import client, config

    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    rss = rss_mib()
    args = (GROUP, VERSION, namespace, PLURAL, NAME)
    gets = await timed(
        calls, lambda i: asyncio.to_thread(custom.get_namespaced_custom_object, *args)
    )
    patches = await timed(
        calls,
        lambda i: asyncio.to_thread(
            custom.patch_namespaced_custom_object_status, *args, patch_body(i)
        ),
    )
    return {"rss": rss, "gets": gets, "patches": patches}


async def kubernetes_asyncio(kubeconfig: str, namespace: str, calls: int) -> dict[str, Any]:
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)
        rss = rss_mib()
        args = (GROUP, VERSION, namespace, PLURAL, NAME)
        gets = await timed(calls, lambda i: custom.get_namespaced_custom_object(*args))
        patches = await timed(
            calls,
            lambda i: custom.patch_namespaced_custom_object_status(
                *args, patch_body(i), _content_type=MERGE
            ),
        )
    return {"rss": rss, "gets": gets, "patches": patches}


async def lightkube(kubeconfig: str, namespace: str, calls: int) -> dict[str, Any]:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.types import PatchType

    bot = create_namespaced_resource(GROUP, VERSION, "TradingBot", PLURAL)
    kube = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    rss = rss_mib()
    gets = await timed(calls, lambda i: kube.get(bot, NAME, namespace=namespace))
    patches = await timed(
        calls,
        lambda i: kube.patch(
            bot.Status, NAME, patch_body(i), namespace=namespace, patch_type=PatchType.MERGE
        ),
    )
    await kube.close()
    return {"rss": rss, "gets": gets, "patches": patches}


async def raw_aiohttp(kubeconfig: str, namespace: str, calls: int) -> dict[str, Any]:
    import aiohttp

    cfg = yaml.safe_load(Path(kubeconfig).read_text())  # noqa: ASYNC240 - before timing
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    context = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    if user.get("client-certificate-data"):
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "cert", Path(tmp) / "key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            context.load_cert_chain(str(cert), str(key))
    headers = {"Accept": "application/json"}
    if user.get("token"):
        headers["Authorization"] = "Bearer " + user["token"]
    url = f"{cluster['server']}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{NAME}"
    async with aiohttp.ClientSession(headers=headers) as session:
        rss = rss_mib()

        async def get(i: int) -> None:
            async with session.get(url, ssl=context) as response:
                await response.json()

        async def patch(i: int) -> None:
            data = json.dumps(patch_body(i))
            async with session.patch(
                url + "/status", ssl=context, data=data, headers={"Content-Type": MERGE}
            ) as response:
                await response.json()

        gets = await timed(calls, get)
        patches = await timed(calls, patch)
    return {"rss": rss, "gets": gets, "patches": patches}


async def shared_layer(kubeconfig: str, namespace: str, calls: int) -> dict[str, Any]:
    """What the programs use: tradingbot_api.kubeclient.KubeClient (aiohttp underneath)."""
    from tradingbot_api.kubeclient import KubeClient

    kube = KubeClient.from_environment(kubeconfig)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{NAME}"
    try:
        await kube.request("GET", path)  # the session and TLS context are made on first use
        rss = rss_mib()
        gets = await timed(calls, lambda i: kube.request("GET", path))
        patches = await timed(
            calls,
            lambda i: kube.request(
                "PATCH", path + "/status", body=patch_body(i), content_type=MERGE
            ),
        )
    finally:
        await kube.close()
    return {"rss": rss, "gets": gets, "patches": patches}


# -- the audit sidecar's ingest: one event per POST ----------------------------------------------


def audit_event(i: int) -> dict[str, Any]:
    return {
        "event_type": "restart",
        "severity": "info",
        "source": "operator",
        "target": "bench",
        "action": "restart_completed",
        "details": {"durationSeconds": 1.2, "i": i},
        "user_id": "system:serviceaccount:bench:operator",
        "namespace": "bench",
        "dedup_key": f"bench-{i}",
    }


async def audit_shared(url: str, calls: int) -> dict[str, Any]:
    from tradingbot_api.audit_http import AuditClient

    async with AuditClient(url) as audit:
        await audit.send([audit_event(-1)])
        rss = rss_mib()
        posts = await timed(calls, lambda i: audit.send([audit_event(i)]))
    return {"rss": rss, "posts": posts}


async def audit_httpx(url: str, calls: int) -> dict[str, Any]:
    import httpx2

    async with httpx2.AsyncClient(timeout=5.0) as http:

        async def post(i: int) -> None:
            response = await http.post(url, json={"events": [audit_event(i)]})
            response.raise_for_status()
            response.json()

        await post(-1)
        rss = rss_mib()
        posts = await timed(calls, post)
    return {"rss": rss, "posts": posts}


async def audit_urllib(url: str, calls: int) -> dict[str, Any]:
    import urllib.request

    def post_sync(i: int) -> None:
        request = urllib.request.Request(
            url,
            data=json.dumps({"events": [audit_event(i)]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            json.loads(response.read())

    await asyncio.to_thread(post_sync, -1)
    rss = rss_mib()
    posts = await timed(calls, lambda i: asyncio.to_thread(post_sync, i))
    return {"rss": rss, "posts": posts}


CANDIDATES = {
    "official": official,
    "kubernetes_asyncio": kubernetes_asyncio,
    "lightkube": lightkube,
    "aiohttp": raw_aiohttp,
    "shared layer": shared_layer,
}
AUDIT_CANDIDATES = {
    "AuditClient (aiohttp)": audit_shared,
    "httpx2": audit_httpx,
    "urllib in a thread": audit_urllib,
}


def main() -> None:
    if sys.argv[1] == "audit":
        candidate, url, calls = sys.argv[2:5]
        result = asyncio.run(AUDIT_CANDIDATES[candidate](url, int(calls)))
    else:
        candidate, kubeconfig, namespace, calls = sys.argv[1:5]
        result = asyncio.run(CANDIDATES[candidate](kubeconfig, namespace, int(calls)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
