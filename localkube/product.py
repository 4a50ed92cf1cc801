"""Installing the product into a local cluster: CRDs, the operator's identity, the samples.

The operator's permissions come from the Helm chart itself (`helm template`), so what runs
locally is exactly what a cluster install grants, never an admin shortcut.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from localkube import binaries
from localkube.cluster import LocalCluster, write_kubeconfig
from tradingbot_api.audit_http import OPERATOR_AUDIENCE

CHART = binaries.REPO_ROOT / "helm" / "tradingbot-operator"
CRD_DIR = binaries.REPO_ROOT / "crds"
SAMPLES = binaries.REPO_ROOT / "config" / "samples"
FIELD_MANAGER = "localkube"
OPERATOR_NAMESPACE = "tradingbot-system"
TOKEN_SECONDS = 7 * 24 * 3600
# Who the operator is, what it may do, and the API priority of its leader Lease.
IDENTITY_KINDS = (
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "FlowSchema",
)


def render_chart(namespace: str, release: str = "tb", **values: str) -> list[dict[str, Any]]:
    sets = [f"--set={key}={value}" for key, value in values.items()]
    out = subprocess.run(
        [
            str(binaries.require_binary("helm")),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            binaries.read_versions()["KUBERNETES_VERSION"],
            *sets,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def apply_objects(
    api: client.ApiClient,
    objects: Iterable[dict[str, Any]],
    namespace: str | None = None,
    field_manager: str = FIELD_MANAGER,
) -> list[Any]:
    """Server-side apply every object, as `kubectl apply --server-side --force-conflicts`
    would: these are objects the product owns (CRDs, RBAC, policies), so its version wins
    over another manager's. Objects users edit (the samples) go through `create_absent`."""
    dynamic = DynamicClient(api)
    applied = []
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        kwargs: dict[str, Any] = {
            "body": obj,
            "field_manager": field_manager,
            "force_conflicts": True,
        }
        if resource.namespaced:
            kwargs["namespace"] = obj.get("metadata", {}).get("namespace") or namespace
        applied.append(resource.server_side_apply(**kwargs))
    return applied


def load_yaml_dir(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def install_crds(api: client.ApiClient, timeout: float = 30) -> None:
    apply_objects(api, load_yaml_dir(CRD_DIR))
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    names = [d["metadata"]["name"] for d in load_yaml_dir(CRD_DIR)]
    while time.monotonic() < deadline:
        ready = all(
            any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(n).status.conditions or []
            )
            for n in names
        )
        if ready:
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRDs {names} not established after {timeout}s")


def ensure_namespace(
    api: client.ApiClient,
    name: str,
    labels: dict[str, str] | None = None,
) -> None:
    apply_objects(
        api,
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            }
        ],
    )


def chart_identities(namespace: str = OPERATOR_NAMESPACE) -> list[dict[str, Any]]:
    """The chart's ServiceAccounts and RBAC: the operator's and the audit sidecar's."""
    return [d for d in render_chart(namespace) if d["kind"] in IDENTITY_KINDS]


def chart_account(namespace: str = OPERATOR_NAMESPACE, *, audit: bool = False) -> str:
    """The name of the chart's operator (or, with `audit`, audit sidecar) ServiceAccount."""
    return next(
        d["metadata"]["name"]
        for d in chart_identities(namespace)
        if d["kind"] == "ServiceAccount"
        and ((d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "audit")
        == audit
    )


def install_identities(api: client.ApiClient, namespace: str = OPERATOR_NAMESPACE) -> None:
    ensure_namespace(api, namespace)
    identity = chart_identities(namespace)
    for other in {d["metadata"].get("namespace") for d in identity} - {None, namespace}:
        ensure_namespace(api, str(other))  # e.g. kube-node-lease, before a node made it
    apply_objects(api, identity, namespace)


def operator_kubeconfig(
    cluster: LocalCluster, api: client.ApiClient, path: Path, namespace: str = OPERATOR_NAMESPACE
) -> Path:
    """Install the chart's RBAC and return a kubeconfig that acts as the operator's
    ServiceAccount, with exactly the chart's permissions."""
    install_identities(api, namespace)
    return service_account_kubeconfig(cluster, api, namespace, chart_account(namespace), path)


def service_account_token(
    api: client.ApiClient,
    namespace: str,
    account: str,
    audiences: list[str] | None = None,
) -> str:
    """A bound token for a ServiceAccount (TokenRequest), a week long; no `audiences`: the
    API server's own."""
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=audiences or [], expiration_seconds=TOKEN_SECONDS
            )
        ),
    )
    return str(token.status.token)


def operator_audit_token(
    api: client.ApiClient, path: Path, namespace: str = OPERATOR_NAMESPACE
) -> Path:
    """The file the chart projects into the operator pod: the operator's token for the audit
    sidecar alone (audience tradingbot-audit), for TRADINGBOT_OPERATOR_AUDIT_TOKEN_FILE."""
    install_identities(api, namespace)
    token = service_account_token(api, namespace, chart_account(namespace), [OPERATOR_AUDIENCE])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)
    return path


def service_account_kubeconfig(
    cluster: LocalCluster, api: client.ApiClient, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig acting as a ServiceAccount (a week-long bound token via TokenRequest)."""
    return write_kubeconfig(
        path,
        cluster.server,
        cluster.pki.ca_cert,
        f"system:serviceaccount:{namespace}:{account}",
        token=service_account_token(api, namespace, account),
    )


def webhook_tls(cluster: LocalCluster, directory: Path) -> tuple[Path, Path, str]:
    """A serving certificate for a webhook on 127.0.0.1, signed by the cluster's CA; returns
    (certificate, key, caBundle for the webhook configuration)."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "webhook.crt", directory / "webhook.key"
    if not cert.exists():
        cluster.pki.issue(
            cert,
            key,
            common_name="tradingbot-webhook",
            server=True,
            dns_names=("localhost",),
            ips=("127.0.0.1",),
        )
    return cert, key, base64.b64encode(cluster.pki.ca_cert.read_bytes()).decode()


POLICY_KINDS = (
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


def admission_policies(namespace: str = OPERATOR_NAMESPACE, **values: str) -> list[dict[str, Any]]:
    """The chart's admission policies (change stamps, access checks, spec rules)."""
    return [d for d in render_chart(namespace, **values) if d["kind"] in POLICY_KINDS]


def install_admission_policies(
    api: client.ApiClient,
    namespace: str = OPERATOR_NAMESPACE,
    timeout: float = 30,
    **values: str,
) -> None:
    """Apply the chart's admission policies and wait until the API server enforces them
    (its policy plugin picks them up about a second later): a bot applied before that would
    carry no change stamp."""
    apply_objects(api, admission_policies(namespace, **values))
    probe: dict[str, Any] = {
        "apiVersion": "trading.r7.dev/v1alpha1",
        "kind": "TradingBot",
        "metadata": {"generateName": "policy-probe-"},
        "spec": {"profile": "stable", "exchange": {"id": "binance"}, "symbols": ["BTC/USDT"]},
    }
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while True:
        try:
            created = custom.create_namespaced_custom_object(
                "trading.r7.dev", "v1alpha1", "default", "tradingbots", probe, dry_run="All"
            )
        except client.ApiException as err:
            if err.status not in (404, 503):  # a CRD just established is served a bit later
                raise
            created = {}
        annotations = (created.get("metadata") or {}).get("annotations") or {}
        if "trading.r7.dev/change-stamp" in annotations:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"admission policies not enforced after {timeout}s")
        time.sleep(0.2)
    # The validating policy is synced by the same informers; one more probe it must refuse.
    refused = {**probe, "spec": {**probe["spec"], "strategy": {"params": {"noSuchParam": 1}}}}
    while True:
        try:
            custom.create_namespaced_custom_object(
                "trading.r7.dev", "v1alpha1", "default", "tradingbots", refused, dry_run="All"
            )
        except client.ApiException as err:
            if err.status in (403, 422):
                return
            raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"admission policies not enforced after {timeout}s")
        time.sleep(0.2)


def remove_admission_policies(api: client.ApiClient) -> None:
    """Delete the chart's admission policies (to act out a cluster without them)."""
    dynamic = DynamicClient(api)
    for obj in admission_policies():
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.delete(name=obj["metadata"]["name"])
        except Exception as err:  # already gone
            if getattr(err, "status", None) != 404:
                raise


def fleet_switch(namespace: str = OPERATOR_NAMESPACE, release: str = "tb") -> str:
    """namespace/name of the chart's fleet-wide kill switch ConfigMap."""
    return f"{namespace}/{release}-tradingbot-operator-fleet-switch"


def operator_username(namespace: str = OPERATOR_NAMESPACE) -> str:
    return f"system:serviceaccount:{namespace}:{chart_account(namespace)}"


def audit_kubeconfig(
    cluster: LocalCluster, api: client.ApiClient, path: Path, namespace: str = OPERATOR_NAMESPACE
) -> Path:
    """The chart's audit sidecar identity: may review tokens and access, and record the chain
    head in its one ConfigMap, nothing else."""
    install_identities(api, namespace)
    account = chart_account(namespace, audit=True)
    return service_account_kubeconfig(cluster, api, namespace, account, path)


AUDIT_HEAD_ROLE_SUFFIX = "-audit-head"


def audit_head_rbac(namespace: str, account: str, release: str = "tb") -> list[dict[str, Any]]:
    """The chart's Role for the audit chain head ConfigMap, bound to `account` (a test's
    own sidecar identity; the chart binds it to the audit sidecar's ServiceAccount)."""
    role = next(
        d
        for d in render_chart(namespace, release)
        if d["kind"] == "Role" and d["metadata"]["name"].endswith(AUDIT_HEAD_ROLE_SUFFIX)
    )
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{account}-chain-head", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    return [role, binding]


def audit_head_configmap(namespace: str = OPERATOR_NAMESPACE, release: str = "tb") -> str:
    """`NAMESPACE/NAME` for the sidecar's --head-configmap: the one ConfigMap the chart's Role
    lets it rewrite."""
    role, _binding = audit_head_rbac(namespace, chart_account(namespace, audit=True), release)
    (name,) = next(rule["resourceNames"] for rule in role["rules"] if rule.get("resourceNames"))
    return f"{namespace}/{name}"


def create_absent(
    api: client.ApiClient, objects: Iterable[dict[str, Any]], namespace: str
) -> list[str]:
    """Create the objects that do not exist yet; existing ones are left exactly as users
    left them (edits, suspends, halts). Returns the names created."""
    dynamic = DynamicClient(api)
    created = []
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.create(body=obj, namespace=obj["metadata"].get("namespace") or namespace)
        except Exception as err:  # the dynamic client raises its own ConflictError
            if getattr(err, "status", None) != 409:
                raise
            continue
        created.append(obj["metadata"]["name"])
    return created


def apply_samples(api: client.ApiClient, namespace: str) -> list[str]:
    """The four sample bots, created when absent (a second `make run` keeps user edits)."""
    samples = load_yaml_dir(SAMPLES)
    create_absent(api, samples, namespace)
    return [s["metadata"]["name"] for s in samples]
