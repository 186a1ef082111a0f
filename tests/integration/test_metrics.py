"""The EMF metrics (Powertools Metrics, ``connection`` dimension) each scenario emits, read from the functions'
captured CloudWatch Logs output."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from local.providers import Fault, local_credentials
from tests.integration.conftest import get_token, with_connections

pytestmark = pytest.mark.integration


def emf(stack: Any) -> Counter[tuple[str, str | None]]:
    """(metric name, connection dimension) -> total value, over every EMF document logged so far."""
    totals: Counter[tuple[str, str | None]] = Counter()
    for line in stack.logs.text().splitlines():
        if not line.startswith('{"_aws"'):
            continue
        document = json.loads(line)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "TokenVending"
        for metric in directive["Metrics"]:
            values = document[metric["Name"]]
            totals[(metric["Name"], document.get("connection"))] += sum(values) if isinstance(values, list) else values
    return totals


def test_miss_then_hits(stack: Any) -> None:
    for _ in range(3):
        assert get_token(stack, "aria").status_code == 200
    metrics = emf(stack)
    assert metrics[("CacheMiss", "aria")] == 1
    assert metrics[("UpstreamRequest", "aria")] == 1
    assert metrics[("UpstreamLatency", "aria")] > 0
    assert metrics[("ProviderInvoke", "aria")] == 1
    assert metrics[("CacheHitDynamoDB", "aria")] == 1  # second request: the token API reads the table
    assert metrics[("CacheHitMemory", "aria")] == 1  # third: the same warm environment's memory
    # Every structured log line names its connection and request, warm invocations included.
    lines = [json.loads(line) for line in stack.logs.text().splitlines() if line.startswith('{"level"')]
    assert lines
    assert all(line.get("connection") == "aria" and line.get("function_request_id") for line in lines)


def test_an_added_connection_counts_under_its_own_name(make_stack: Any, emulators: Any) -> None:
    """``AriaAu`` (Aria, added by configuration) beside ``aria``: its metrics and log lines are its own (dimension
    ``connection``), its provider named for context; nothing it does is counted as aria's."""
    stack = make_stack(**with_connections({"AriaAu": {"region": "AUS", "stage": "Prod",
                                                      "token_url": emulators["aria"].url}}))
    emulators["aria"].add_client(*local_credentials("AriaAu"))
    for _ in range(2):
        assert get_token(stack, "AriaAu").status_code == 200
    assert get_token(stack, "aria").status_code == 200
    metrics = emf(stack)
    assert (metrics[("CacheMiss", "AriaAu")], metrics[("UpstreamRequest", "AriaAu")]) == (1, 1)
    assert metrics[("CacheHitDynamoDB", "AriaAu")] == 1
    assert (metrics[("CacheMiss", "aria")], metrics[("UpstreamRequest", "aria")]) == (1, 1)
    assert metrics[("CacheHitDynamoDB", "aria")] == 0
    assert not {dimension for _, dimension in metrics} - {"aria", "AriaAu"}
    lines = [json.loads(line) for line in stack.logs.text().splitlines() if line.startswith('{"level"')]
    added = [line for line in lines if line.get("connection") == "AriaAu"]
    assert added
    assert all(line.get("provider") == "aria" for line in added)


def test_stale_serve_and_upstream_failure(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(function_env={"MEMORY_CACHE_SECONDS": "0"})  # so the aged item is what is read
    assert get_token(stack, "autopay").status_code == 200
    stack.client("dynamodb").update_item(
        TableName=stack.config.table_name, Key={"pk": {"S": "autopay"}, "sk": {"S": "token#"}},
        UpdateExpression="SET expires_at = expires_at - :age, fetched_at = fetched_at - :age",
        ExpressionAttributeValues={":age": {"N": "80000"}})  # fetched 80000 s ago: 6400 s left, inside the margin
    emulators["autopay"].enqueue(*[Fault(status=503)] * 3)
    assert get_token(stack, "autopay").status_code == 200
    metrics = emf(stack)
    assert metrics[("StaleServed", "autopay")] == 1
    assert metrics[("UpstreamFailure_upstream_unavailable", "autopay")] == 1
    assert metrics[("UpstreamFailure", "autopay")] == 1


def test_rejection_is_counted_on_both_functions(stack: Any, emulators: Any) -> None:
    emulators["pyng"].set_credentials("other", "other")
    assert get_token(stack, "pyng").status_code == 502
    metrics = emf(stack)
    assert metrics[("UpstreamFailure_upstream_rejected", "pyng")] == 1
    assert metrics[("Error_upstream_rejected", "pyng")] == 1


def test_lease_waits_are_counted(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(max_concurrency=4)
    stack.lambdas.warm("InvoiceCloudFunction", 4)
    emulators["invoice-cloud"].enqueue(Fault(status=200, delay=1.5, body={
        "access_token": "slow-token", "token_type": "Bearer", "expires_in": 3600}))
    threads = [threading.Thread(target=get_token, args=(stack, "invoice-cloud")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics = emf(stack)
    assert emulators["invoice-cloud"].token_requests == 1
    assert metrics[("UpstreamRequest", "invoice-cloud")] == 1
    assert metrics[("LeaseWait", "invoice-cloud")] >= 1
