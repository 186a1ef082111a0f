"""Per-token renewal timers through the local stack, as deployed: each new token arms an SQS message delayed to
``LEAD_SECONDS`` before its refresh margin (moto server honours ``DelaySeconds``), and the emulated event source
mapping hands it to the provider function, which renews the token if it is still the stored one and in use.

What a caller and the provider see is asserted (token requests, which token is served, the renewal's logged
outcome, the functions' metrics), not timing precision. Tokens live 60 s, so the margin is half of it (30 s) and
the renewal is due 24 s after the fetch (the lead is a fifth of the useful 30 s); the renewed token lives an
hour, so its own renewal stays far away.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from local.lambda_service import failed_items, sqs_record
from tests.integration.conftest import get_token
from token_vending.freshness import RefreshPolicy
from token_vending.renewal import LEAD_SECONDS, LEAD_SHARE
from token_vending.request import fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

    from local.stack import LocalStack

pytestmark = pytest.mark.integration

ROUTE = "invoice-cloud"
LIFETIME = 60
MARGIN = RefreshPolicy(60, 0.1).margin(LIFETIME)
"""The default margin (60 s, 10 %), capped at half the lifetime: 30 s."""
RENEW_AFTER = LIFETIME - MARGIN - min(LEAD_SECONDS, LEAD_SHARE * (LIFETIME - MARGIN))
"""When the renewal is due, counted from the fetch: 24 s (the lead is a fifth of the token's useful 30 s)."""
LONG_LIFETIME = 3600


@pytest.fixture
def renewing(make_stack: Any) -> Callable[..., LocalStack]:
    """A stack with renewal timers; its own moto server (on a free port) holds the queues."""

    def factory(**overrides: Any) -> LocalStack:
        stack: LocalStack = make_stack(renewals=True, aws_port=0, **overrides)
        return stack

    return factory


# --- what the stack's outputs say ------------------------------------------------------------------------------
def log_lines(stack: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stack.logs.text().splitlines() if line.startswith('{"level"')]


def renewal_outcomes(stack: Any) -> list[str]:
    """The outcome of every renewal the provider functions handled (their ``renewal`` log line)."""
    return [line["outcome"] for line in log_lines(stack) if line.get("message") == "renewal"]


def metrics(stack: Any) -> Counter[str]:
    """Metric name -> total over every EMF document the functions logged."""
    totals: Counter[str] = Counter()
    for line in stack.logs.text().splitlines():
        if line.startswith('{"_aws"'):
            document = json.loads(line)
            for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = document[metric["Name"]]
                totals[metric["Name"]] += sum(value) if isinstance(value, list) else value
    return totals


def stored(stack: Any, scope_key: str = "") -> dict[str, Any]:
    item = stack.client("dynamodb").get_item(TableName=stack.config.table_name, ConsistentRead=True,
                                             Key={"pk": {"S": ROUTE}, "sk": {"S": f"token#{scope_key}"}})["Item"]
    return {"access_token": item["access_token"]["S"], "fetched_at": float(item["fetched_at"]["N"]),
            "expires_at": int(item["expires_at"]["N"])}


def wait_for(condition: Callable[[], bool], until: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail once the wall clock passes ``until``."""
    while not condition():
        if time.time() > until:
            pytest.fail(f"{what}: not seen in time")
        time.sleep(0.2)


def first_token(stack: Any, emulators: Any, lifetime: int = LIFETIME) -> dict[str, Any]:
    """A caller's first request: one token request, a short-lived token (min_ttl 0: the default 60 exceeds it)."""
    emulators[ROUTE].configure(expires_in=lifetime)
    response = get_token(stack, ROUTE, min_ttl="0")
    assert response.status_code == 200, response.text
    assert emulators[ROUTE].token_requests == 1
    emulators[ROUTE].configure(expires_in=LONG_LIFETIME)  # the next token's renewal is an hour away
    item = stored(stack)
    assert item["access_token"] == response.json()["access_token"]
    return item


# --- a: renewed before the margin, callers served the new token from the cache -----------------------------------
def test_a_token_is_renewed_before_its_margin_and_callers_get_the_new_one_from_the_cache(
        renewing: Any, emulators: Any) -> None:
    stack = renewing()
    old = first_token(stack, emulators)
    margin_starts = old["expires_at"] - MARGIN
    # The timer renews it before it enters its margin, with no caller asking.
    wait_for(lambda: emulators[ROUTE].token_requests >= 2, margin_starts, "the renewal's token request")
    wait_for(lambda: bool(renewal_outcomes(stack)), margin_starts, "the renewal done")
    assert renewal_outcomes(stack) == ["renewed"]
    new = stored(stack)
    assert new["access_token"] != old["access_token"]
    # Not early (the delay was honoured); not late (it was stored before the margin, the wait above).
    assert new["fetched_at"] - old["fetched_at"] >= RENEW_AFTER - 1

    # A caller after the renewal, before the old token's margin: the new token, from the cache.
    assert time.time() < margin_starts
    response = get_token(stack, ROUTE, min_ttl="0")
    assert response.json()["access_token"] == new["access_token"]
    assert emulators[ROUTE].token_requests == 2  # over the old token's useful life: its fetch and its renewal
    counted = metrics(stack)
    assert counted["ProviderInvoke"] == 1  # only the first caller waited for a provider function
    assert counted["UpstreamRequest"] == 2
    assert counted["CacheHitDynamoDB"] == 1  # the caller was answered by the token API from the table


# --- b: an idle scope set is left to expire ------------------------------------------------------------------------
def test_an_idle_scope_set_is_not_renewed(renewing: Any, emulators: Any) -> None:
    stack = renewing(provider_env={ROUTE: {"REFRESH_AHEAD_IDLE_HOURS": "0.01"}})  # 36 s, the least allowed
    old = first_token(stack, emulators, lifetime=30)  # renewal due 12 s after the fetch (margin 15 s, lead 3 s)
    # As far as the item says, nobody has asked for this scope set for an hour.
    stack.client("dynamodb").update_item(
        TableName=stack.config.table_name, Key={"pk": {"S": ROUTE}, "sk": {"S": "token#"}},
        UpdateExpression="SET used_at = :old", ExpressionAttributeValues={":old": {"N": f"{time.time() - 3600:.3f}"}})
    wait_for(lambda: bool(renewal_outcomes(stack)), old["expires_at"] - 15 + 5, "the renewal")
    assert renewal_outcomes(stack) == ["idle"]
    time.sleep(1)
    assert emulators[ROUTE].token_requests == 1
    assert stored(stack)["access_token"] == old["access_token"]  # left to expire


# --- c: a renewal for a token already replaced does nothing ----------------------------------------------------------
def test_a_renewal_for_a_replaced_token_does_nothing(renewing: Any, emulators: Any) -> None:
    stack = renewing(function_env={"FORCE_REFRESH_INTERVAL": "1"})
    old = first_token(stack, emulators)
    time.sleep(1.1)
    forced = get_token(stack, ROUTE, force_refresh=fingerprint(old["access_token"]))
    assert forced.status_code == 200, forced.text
    replacement = forced.json()["access_token"]
    assert replacement != old["access_token"]
    assert emulators[ROUTE].token_requests == 2
    # The old token's timer still goes off (its replacement armed its own, an hour away): it finds another token.
    wait_for(lambda: bool(renewal_outcomes(stack)), old["expires_at"] - MARGIN + 5, "the old token's renewal")
    assert renewal_outcomes(stack) == ["replaced"]
    time.sleep(1)
    assert emulators[ROUTE].token_requests == 2
    assert stored(stack)["access_token"] == replacement


# --- the event source mapping itself --------------------------------------------------------------------------------
def test_a_failed_invocation_leaves_the_message_for_redelivery(renewing: Any) -> None:
    """The function fails (its init crashes: Powertools refuses the log level): the message is not deleted, SQS
    delivers it again after the visibility timeout. A message that is not a renewal is dropped by the function, so
    deleted. (A bad setting of the product's own is not such a failure: the function drops renewals it cannot act
    on rather than have them redelivered for an hour.)"""
    stack = renewing(provider_env={ROUTE: {"POWERTOOLS_LOG_LEVEL": "NOPE"}})
    sqs = stack.client("sqs")
    queue = stack.renewal_queues[ROUTE]
    [source] = [source for source in stack.event_sources if source.queue_url == queue]
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"renew": "", "fetched_at": 1.0, "due": 1.0}))
    wait_for(lambda: source.redelivered >= 1, time.time() + 30, "the failed invocation")
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"  # in flight until its visibility timeout
    assert source.delivered == 0

    other = stack.renewal_queues["pyng"]
    [pyng] = [source for source in stack.event_sources if source.queue_url == other]
    sqs.send_message(QueueUrl=other, MessageBody="not a renewal")
    wait_for(lambda: pyng.delivered == 1, time.time() + 30, "the dropped message's deletion")
    assert any(line.get("message") == "dropped a message that is not a renewal" for line in log_lines(stack))


def test_batch_item_failures_decide_what_goes_back_to_the_queue() -> None:
    """Lambda's ReportBatchItemFailures rules, as the local event source mapping applies them."""
    ids = {"a", "b"}
    assert failed_items(b'{"batchItemFailures": []}', None, ids) == set()
    assert failed_items(b"null", None, ids) == set()
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', None, ids) == {"b"}
    assert failed_items(b'{"errorType": "X"}', "Unhandled", ids) == ids
    assert failed_items(b"not json", None, ids) == ids
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": ""}]}', None, ids) == ids
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": "z"}]}', None, ids) == ids
    # Without ReportBatchItemFailures, Lambda reads nothing in the answer: only a function error returns the batch.
    assert failed_items(b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', None, ids,
                        report_batch_item_failures=False) == set()
    assert failed_items(b"{}", "Unhandled", ids, report_batch_item_failures=False) == ids
    record = sqs_record({"MessageId": "m", "ReceiptHandle": "r", "Body": "{}", "MD5OfBody": "x",
                         "Attributes": {"ApproximateReceiveCount": "1"},
                         "MessageAttributes": {"k": {"StringValue": "v", "DataType": "String"}}},
                        "arn:aws:sqs:us-east-1:123456789012:q", "us-east-1")
    assert record == {"messageId": "m", "receiptHandle": "r", "body": "{}",
                      "attributes": {"ApproximateReceiveCount": "1"},
                      "messageAttributes": {"k": {"stringValue": "v", "binaryValue": None, "stringListValues": [],
                                                  "binaryListValues": [], "dataType": "String"}},
                      "md5OfBody": "x", "eventSource": "aws:sqs",
                      "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1"}
