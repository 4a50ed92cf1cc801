"""The sidecar's way to the Kubernetes API server: credentials, and raw JSON requests over the
official client's (blocking) transport. TokenReview and SubjectAccessReview (auth.py) and the
chain head ConfigMap (head.py) both go through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Final

AUTH_REQUEST_TIMEOUT: Final = 5.0


def kube_api_client(kubeconfig: str | None = None) -> Any:
    """The given kubeconfig; else in-cluster credentials; else the default kubeconfig."""
    from kubernetes import client, config

    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        configuration = client.Configuration()
        try:
            # In a pod: the projected token is re-read when it rotates (the loader's
            # refresh hook), so a long-running sidecar keeps working.
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ValueError(f"no usable Kubernetes credentials: {exc}") from exc
    return client.ApiClient(configuration)


class KubeTransport:
    """Raw JSON requests over the official client's (blocking) transport: the sidecar's one
    way to the API server, shared by the reviews and the chain head."""

    def __init__(self, api_client: Any, *, timeout: float = AUTH_REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeTransport:
        return cls(kube_api_client(kubeconfig))

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """(HTTP status, body); raises when the API server cannot be reached."""
        method, url, headers, payload, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=None if body is None else dict(body),
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self.timeout
        )
        return int(response.status), bytes(response.read())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()
