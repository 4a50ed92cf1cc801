"""Helpers for tests that talk to the real local API server (no mocks)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from localkube import product
from localkube.cluster import LocalCluster, write_kubeconfig

FIELD_MANAGER = "tradingbot-tests"


def admin_client(cluster: LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def load_documents(source: str | Path | dict[str, Any] | Iterable[dict[str, Any]]) -> list[dict]:
    """YAML text, a file path, one object or many, as a list of objects."""
    if isinstance(source, dict):
        return [source]
    if isinstance(source, Path):
        source = source.read_text()
    if isinstance(source, str):
        return [doc for doc in yaml.safe_load_all(source) if doc]
    return list(source)


def apply(
    api: client.ApiClient,
    source: str | Path | dict[str, Any] | Iterable[dict[str, Any]],
    namespace: str | None = None,
) -> list[Any]:
    """Server-side apply every object, as `kubectl apply --server-side` would."""
    return product.apply_objects(api, load_documents(source), namespace, FIELD_MANAGER)


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    """Poll until predicate returns something truthy; fail with `message` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


def create_namespace(api: client.ApiClient, labels: dict[str, str] | None = None) -> str:
    """A fresh namespace with a `default` ServiceAccount (no controller-manager makes one)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )
    return name


def service_account_token(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    seconds: int = 3600,
    audiences: list[str] | None = None,
) -> str:
    """A real bound token for the ServiceAccount (created if missing), via TokenRequest; no
    `audiences`: the API server's own."""
    core = client.CoreV1Api(api)
    try:
        core.read_namespaced_service_account(name, namespace)
    except client.ApiException as err:
        if err.status != 404:
            raise
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds)
    )
    response = core.create_namespaced_service_account_token(name, namespace, request)
    return str(response.status.token)


def service_account_kubeconfig(
    cluster: LocalCluster, api: client.ApiClient, namespace: str, name: str, directory: Path
) -> Path:
    token = service_account_token(api, namespace, name)
    return write_kubeconfig(
        directory / f"{namespace}-{name}.kubeconfig",
        cluster.server,
        cluster.pki.ca_cert,
        f"system:serviceaccount:{namespace}:{name}",
        token=token,
        namespace=namespace,
    )


def service_account_client(
    cluster: LocalCluster, api: client.ApiClient, namespace: str, name: str, directory: Path
) -> client.ApiClient:
    path = service_account_kubeconfig(cluster, api, namespace, name, directory)
    return config.new_client_from_config(config_file=str(path))


def admission_stamps(api: client.ApiClient) -> dict[str, str]:
    """The change-stamp annotations a dry-run creation gets now (empty: no stamping policy)."""
    probe = {
        "apiVersion": "trading.r7.dev/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"generateName": "probe-"},
        "spec": {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ["BTC/USDT"]},
    }
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "trading.r7.dev", "v1alpha1", "default", "tradingbots", probe, dry_run="All"
    )
    annotations = (created.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith("trading.r7.dev/change")}


def admission_refuses_unknown_parameters(api: client.ApiClient) -> bool:
    """Whether the validating admission policy is enforced right now (dry run)."""
    probe = {
        "apiVersion": "trading.r7.dev/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"generateName": "probe-"},
        "spec": {
            "profile": "stable",
            "exchange": {"id": "binance"},
            "symbols": ["BTC/USDT"],
            "strategy": {"params": {"noSuchParameter": 1}},
        },
    }
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "trading.r7.dev", "v1alpha1", "default", "tradingbots", probe, dry_run="All"
        )
    except client.ApiException as err:
        if err.status in (403, 422):
            return True
        raise
    return False


def remove_admission_policies(api: client.ApiClient) -> None:
    """Delete the chart's admission policies and wait until the API server stops enforcing
    them (its informers take a moment)."""
    product.remove_admission_policies(api)
    wait_for(
        lambda: not admission_stamps(api) and not admission_refuses_unknown_parameters(api),
        timeout=30,
        message="admission policies no longer enforced",
    )
