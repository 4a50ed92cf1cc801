"""The API-server request counter: the FlowSchema it installs and the counter it reads."""

from __future__ import annotations

from benchmarks.apiserver_requests import (
    DISPATCHED,
    SERVED,
    dispatched_by_schema,
    flow_schema,
    served_by_kind,
)

EXPOSITION = f"""\
# HELP {DISPATCHED} Number of requests executed by API Priority and Fairness subsystem
# TYPE {DISPATCHED} counter
{DISPATCHED}{{flow_schema="bench-op",priority_level="workload-low"}} 41
{DISPATCHED}{{flow_schema="bench-op",priority_level="global-default"}} 1
{DISPATCHED}{{flow_schema="service-accounts",priority_level="workload-low"}} 900
{DISPATCHED}_other{{flow_schema="bench-op"}} 7
apiserver_request_total{{flow_schema="bench-op"}} 1000
"""


def test_only_the_schema_s_dispatched_requests_are_summed() -> None:
    assert dispatched_by_schema(EXPOSITION, "bench-op") == 42
    assert dispatched_by_schema(EXPOSITION, "service-accounts") == 900
    assert dispatched_by_schema(EXPOSITION, "absent") == 0
    assert dispatched_by_schema("", "bench-op") == 0


def test_the_flow_schema_matches_one_service_account_everywhere() -> None:
    schema = flow_schema("bench-op", "tradingbot-system", "op")
    (rule,) = schema["spec"]["rules"]
    (subject,) = rule["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "serviceAccount": {"namespace": "tradingbot-system", "name": "op"},
    }
    (resources,) = rule["resourceRules"]
    assert resources["clusterScope"] is True and resources["namespaces"] == ["*"]
    # Ahead of the built-in service-accounts schema (9000), or it would take the requests.
    assert schema["spec"]["matchingPrecedence"] < 9000


def test_served_requests_are_summed_by_verb_and_resource_over_codes_and_scopes() -> None:
    pods = 'resource="pods",scope="namespace",subresource=""'
    text = "\n".join(
        [
            f"# TYPE {SERVED} counter",
            f'{SERVED}{{code="201",{pods},verb="POST"}} 9',
            f'{SERVED}{{code="409",{pods},verb="POST"}} 1',
            f'{SERVED}{{code="200",{pods},verb="LIST"}} 3',
            f'{SERVED}{{code="200",resource="pods",subresource="status",verb="PATCH"}} 5',
            f'{SERVED}_other{{resource="pods",verb="POST"}} 100',
            f'{DISPATCHED}{{flow_schema="x",priority_level="y"}} 7',
        ]
    )
    assert served_by_kind(text) == {
        ("POST", "pods"): 10,
        ("LIST", "pods"): 3,
        ("PATCH", "pods/status"): 5,
    }
