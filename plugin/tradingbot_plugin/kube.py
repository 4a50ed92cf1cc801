"""Access to the Kubernetes API: kubeconfig loading (or the in-cluster service account), the
few calls the plugin makes, and client errors turned into one clear line and an exit code.

Every write is a JSON merge patch sent with fieldManager `kubectl-tradingbot` and a
User-Agent starting with `kubectl-tradingbot/`, which is how the change is attributed to the
source `plugin` in the audit log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from tradingbot_api.constants import API_GROUP, PLURAL, VERSION, state_configmap_name
from tradingbot_plugin.core import ExitCode, PluginError, _mapping, user_agent

FIELD_MANAGER: Final = "kubectl-tradingbot"
RESOURCE: Final = f"{PLURAL}.{API_GROUP}"


def _status_message(exc: Any) -> str:
    """The `message` of the Status the API server sent, or the raw reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
            if isinstance(parsed, Mapping) and parsed.get("message"):
                return str(parsed["message"])
    return str(getattr(exc, "reason", "") or exc)


def _is_resource_not_found(exc: Any) -> bool:
    """404 for the object itself (a Status naming it), not for a missing API (a bare 404)."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, TypeError):
        parsed = json.loads(body or "")
        return (
            isinstance(parsed, Mapping)
            and parsed.get("kind") == "Status"
            and bool(_mapping(parsed.get("details")).get("name"))
        )
    return False


def api_error(
    exc: Exception,
    *,
    verb: str,
    resource: str,
    namespace: str | None,
    name: str | None = None,
    server: str = "",
) -> PluginError:
    """Turn a client exception into one clear line and an exit code (never a traceback)."""
    from kubernetes.client.exceptions import ApiException

    where = f"in namespace {namespace}" if namespace else "cluster-wide"
    if isinstance(exc, ApiException) and exc.status:
        status = exc.status
        message = _status_message(exc)
        if status == 401:
            return PluginError(
                f"the API server did not accept the kubeconfig's credentials ({message})",
                ExitCode.FORBIDDEN,
            )
        if status == 403:
            target = f"{resource} {name}" if name else resource
            return PluginError(
                f"not allowed to {verb} {target} {where}: {message}", ExitCode.FORBIDDEN
            )
        if status == 404:
            if name and resource == RESOURCE and _is_resource_not_found(exc):
                return PluginError(
                    f"tradingbot {name} not found in namespace {namespace}", ExitCode.NOT_FOUND
                )
            if resource == RESOURCE:
                return PluginError(
                    f"the API server does not serve {RESOURCE}/{VERSION}: are the TradingBot "
                    "CRDs installed?",
                    ExitCode.FAILED,
                )
            return PluginError(
                f"{resource} {name or ''} not found {where}".replace("  ", " "), ExitCode.NOT_FOUND
            )
        if status in (400, 409, 422):
            target = f"{resource} {name}" if name else resource
            return PluginError(f"the API server refused to {verb} {target}: {message}")
        return PluginError(f"{verb} {resource} failed (HTTP {status}): {message}")
    reason = getattr(exc, "reason", None) or exc
    return PluginError(f"cannot reach the API server{' at ' + server if server else ''}: {reason}")


def _kube_errors() -> tuple[type[Exception], ...]:
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclasses.dataclass(frozen=True)
class KubeConfigChoice:
    kubeconfig: str | None = None
    context: str | None = None


def _kubeconfig_path(choice: KubeConfigChoice) -> str:
    return choice.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


def load_configuration(choice: KubeConfigChoice) -> tuple[Any, str]:
    """The client Configuration and the context's namespace ("default" when it has none).

    Falls back to the in-cluster service account when no kubeconfig exists and none was
    named (the plugin run from a pod).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    path = _kubeconfig_path(choice)
    try:
        config.load_kube_config(
            config_file=path,
            context=choice.context,
            client_configuration=configuration,
            persist_config=False,
        )
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, ValueError) as exc:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        if choice.kubeconfig or choice.context or not in_cluster:
            raise PluginError(f"cannot load the kubeconfig {path}: {exc}") from None
        config.load_incluster_config(client_configuration=configuration)
        ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        in_pod = ns_file.read_text().strip() if ns_file.exists() else ""
        return configuration, in_pod or "default"
    active = current
    if choice.context:
        active = next((c for c in contexts if c.get("name") == choice.context), current)
    namespace = _mapping(_mapping(active).get("context")).get("namespace")
    return configuration, str(namespace or "default")


def bearer_token(configuration: Any) -> str | None:
    """The kubeconfig user's bearer token, if it has one (client-certificate users do not)."""
    value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not value:
        return None
    text = str(value)
    return text[len("Bearer ") :] if text.startswith("Bearer ") else text


def new_api_client(configuration: Any) -> Any:
    from kubernetes import client

    api = client.ApiClient(configuration=configuration)
    api.user_agent = user_agent()
    return api


class Kube:
    """The few API calls the plugin makes, with errors turned into PluginError."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.server = str(getattr(api.configuration, "host", ""))
        self._errors = _kube_errors()

    def _call(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise self._error(exc, verb, resource, namespace, name) from None

    def _error(
        self, exc: Exception, verb: str, resource: str, namespace: str | None, name: str | None
    ) -> PluginError:
        return api_error(
            exc, verb=verb, resource=resource, namespace=namespace, name=name, server=self.server
        )

    def get_bot(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self._call(
                "get",
                RESOURCE,
                namespace,
                name,
                self.custom.get_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
            )
        )

    def list_bots(self, namespace: str | None, selector: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if selector:
            kwargs["label_selector"] = selector
        if namespace is None:
            return dict(
                self._call(
                    "list",
                    RESOURCE,
                    None,
                    None,
                    self.custom.list_cluster_custom_object,
                    API_GROUP,
                    VERSION,
                    PLURAL,
                    **kwargs,
                )
            )
        return dict(
            self._call(
                "list",
                RESOURCE,
                namespace,
                None,
                self.custom.list_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                **kwargs,
            )
        )

    def patch_bot(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            self._call(
                "patch",
                RESOURCE,
                namespace,
                name,
                self.custom.patch_namespaced_custom_object,
                API_GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                dict(body),
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
            )
        )

    def patch_configmap(
        self, namespace: str, name: str, body: Mapping[str, Any], *, create: bool = False
    ) -> None:
        """Merge-patch a ConfigMap's data; with create, make it when it does not exist."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            core.patch_namespaced_config_map(
                name, namespace, dict(body), field_manager=FIELD_MANAGER
            )
            return
        except self._errors as exc:
            if not (create and getattr(exc, "status", None) == 404):
                raise self._error(exc, "patch", "configmap", namespace, name) from None
        data = {k: v for k, v in (body.get("data") or {}).items() if v is not None}
        try:
            core.create_namespaced_config_map(
                namespace,
                {"metadata": {"name": name, "namespace": namespace}, "data": data},
                field_manager=FIELD_MANAGER,
            )
        except self._errors as exc:
            raise self._error(exc, "create", "configmap", namespace, name) from None

    def list_events(self, namespace: str | None) -> list[dict[str, Any]]:
        """Events as plain JSON; an empty list when they cannot be read (the feed is extra)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            if namespace is None:
                listed = core.list_event_for_all_namespaces(_preload_content=False)
            else:
                listed = core.list_namespaced_event(namespace, _preload_content=False)
            return list(json.loads(listed.data).get("items") or [])
        except Exception:  # a viewer without `list events` still gets the table
            return []

    def read_state(self, namespace: str, bot: str) -> Mapping[str, str]:
        """The data of the bot's state ConfigMap; PluginError when missing or forbidden."""
        return self.read_configmap(namespace, state_configmap_name(bot))

    def read_configmap(self, namespace: str, name: str) -> Mapping[str, str]:
        """The data of a ConfigMap; PluginError when missing or forbidden."""
        # CoreV1Api is imported here, not up front: its module alone takes about a second to
        # import, and only `positions` and `audit verify --head-configmap` need it.
        from kubernetes import client

        try:
            configmap = client.CoreV1Api(self.api).read_namespaced_config_map(name, namespace)
        except self._errors as exc:
            raise self._error(exc, "get", "configmap", namespace, name) from None
        return dict(getattr(configmap, "data", None) or {})
