"""Requests one identity sends the API server, counted by the API server itself.

A FlowSchema of our own matches exactly one ServiceAccount (ahead of the built-in schemas),
so the API server's priority-and-fairness counter
`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` counts that identity's
requests alone: what the operator sends, not what its bots' Lease renewals or the stand-in
kubelet send. A watch counts once, when it is opened (again on every re-establishment).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Final

from kubernetes import client

from localkube import product

DISPATCHED: Final = "apiserver_flowcontrol_dispatched_requests_total"
SERVED: Final = "apiserver_request_total"
# Ahead of the built-in service-accounts schema (9000) that would take the requests, behind
# the chart's own FlowSchema for the leader Lease (190), which is counted beside it.
PRECEDENCE: Final = 1000
PRIORITY_LEVEL: Final = "workload-low"


def flow_schema(name: str, namespace: str, account: str) -> dict[str, Any]:
    """A FlowSchema that catches every request of one ServiceAccount."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": PRECEDENCE,
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"namespace": namespace, "name": account},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def dispatched_by_schema(exposition: str, schema: str) -> float:
    """The sum of the dispatched-requests counter for `schema` in a /metrics text."""
    total = 0.0
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != DISPATCHED:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("flow_schema") == schema:
            total += float(match["value"])
    return total


def served_by_kind(exposition: str) -> Counter[tuple[str, str]]:
    """Every client's requests by (verb, resource[/subresource]) in a /metrics text, summed
    over response codes and scopes. Not per identity: take the difference over a window in
    which the clients are known."""
    served: Counter[tuple[str, str]] = Counter()
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != SERVED:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        served[(labels.get("verb", ""), resource)] += int(float(match["value"]))
    return served


def metrics_text(api: client.ApiClient) -> str:
    """The API server's /metrics (the admin client authenticates at the TLS layer)."""
    response = api.call_api("GET", f"{api.configuration.host}/metrics")
    response.read()
    return str(response.data.decode())


class RequestCounter:
    """Counts one ServiceAccount's requests: `install()` once, `count()` at any time."""

    def __init__(self, api: client.ApiClient, namespace: str, account: str) -> None:
        self.api = api
        self.schema = f"bench-{account}"[:63]
        self.namespace = namespace
        self.account = account
        # The chart's FlowSchemas (the leader Lease's) take some of its requests first.
        self.chart_schemas = [
            d["metadata"]["name"]
            for d in product.chart_identities(namespace)
            if d["kind"] == "FlowSchema"
        ]

    def install(self) -> None:
        product.apply_objects(self.api, [flow_schema(self.schema, self.namespace, self.account)])

    def count(self) -> float:
        text = metrics_text(self.api)
        return sum(dispatched_by_schema(text, s) for s in [self.schema, *self.chart_schemas])
