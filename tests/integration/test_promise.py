"""Regression tests for the ways a demanding user broke the promise (issue 8), through the real stack:
DynamoDB Local, moto server, the provider emulators and the functions in their worker processes.

Each test names the numbered item it covers; each fails on the code before the fix.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from local.providers import Fault
from tests.integration.conftest import get_token, table_items

pytestmark = pytest.mark.integration


def invoke(stack: Any, function: str, payload: Any) -> tuple[dict[str, Any], str | None]:
    client = boto3.client("lambda", endpoint_url=stack.lambda_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    response = client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def put_token(stack: Any, provider: str, token: str, *, expires_in: int, lifetime: int, scope_key: str = "",
              fetched_ago: float = 60.0) -> None:
    now = time.time()
    stack.client("dynamodb").put_item(TableName=stack.config.table_name, Item={
        "pk": {"S": provider}, "sk": {"S": f"token#{scope_key}"}, "access_token": {"S": token},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now + expires_in))},
        "fetched_at": {"N": f"{now - fetched_ago:.3f}"}, "lifetime": {"N": str(lifetime)},
        "purge_at": {"N": str(int(now + expires_in + 3600))}})


def leases(stack: Any) -> list[dict[str, Any]]:
    return [item for item in table_items(stack) if item["sk"]["S"].startswith("lease#")]


# --- items 3 and 4: min_ttl gets one answer, decided before any cache access or fetch -----------------
def test_item3_cold_environments_with_an_impossible_min_ttl_make_no_token_request(make_stack: Any,
                                                                                   emulators: Any) -> None:
    stack = make_stack()
    stack.lambdas.warm("AutopayFunction", 5)
    stack.lambdas.warm("TokenApiFunction", 5)
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: get_token(stack, "autopay", min_ttl="40000"), range(5)))
    assert [answer.status_code for answer in answers] == [400] * 5
    assert {answer.json()["error"] for answer in answers} == {"invalid_request"}
    # Autopay promises 10 h tokens; 10 % margin: min_ttl can be at most 32400, whatever the cache holds.
    assert "between 0 and 32400" in answers[0].json()["error_description"]
    assert emulators["autopay"].token_requests == 0


def test_item4_the_same_min_ttl_gets_the_same_answer_cold_warm_and_on_both_interfaces(stack: Any,
                                                                                        emulators: Any) -> None:
    def direct() -> tuple[dict[str, Any], str | None]:
        return invoke(stack, "PyngFunction", {"min_ttl": 850})

    assert get_token(stack, "pyng", min_ttl="850").status_code == 400  # cold cache
    body, error = direct()
    assert error
    assert body["errorType"] == "InvalidRequest"
    assert get_token(stack, "pyng").status_code == 200  # now the token is cached (DynamoDB + memory)
    assert get_token(stack, "pyng", min_ttl="850").status_code == 400  # token API, DynamoDB hit path
    for _ in range(2):  # direct: memory hit, then DynamoDB read
        body, error = direct()
        assert error
        assert body["errorType"] == "InvalidRequest"
    assert get_token(stack, "pyng", min_ttl="810").status_code == 200  # the bound itself is accepted
    assert emulators["pyng"].token_requests == 1


# --- item 5: a request without parameters never gets a client error -------------------------------------
def test_item5_a_default_request_is_served_a_short_lived_token(stack: Any, emulators: Any) -> None:
    emulators["invoice-cloud"].configure(expires_in=90)
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 200, response.text
    assert 80 <= response.json()["expires_in"] <= 90
    body, error = invoke(stack, "InvoiceCloudFunction", {})
    assert error is None
    assert body["access_token"] == response.json()["access_token"]
    assert emulators["invoice-cloud"].token_requests == 1


def test_item5_a_token_shorter_than_a_valid_min_ttl_is_an_upstream_fault_fetched_once(stack: Any,
                                                                                        emulators: Any) -> None:
    """The provider grants shorter tokens than documented: a 502 naming it, the same answer from a warm
    cache, and no new token request per call (that would hammer the provider)."""
    emulators["invoice-cloud"].configure(expires_in=300)  # documented 3600
    for _ in range(3):
        response = get_token(stack, "invoice-cloud", min_ttl="1000")
        assert response.status_code == 502, response.text
        assert response.json()["error"] == "upstream_invalid_response"
        assert "too short for min_ttl 1000" in response.json()["error_description"]
    body, error = invoke(stack, "InvoiceCloudFunction", {"min_ttl": 1000})
    assert error
    assert body["errorType"] == "UpstreamInvalidResponse"
    assert get_token(stack, "invoice-cloud").status_code == 200  # the token itself serves other requests
    assert emulators["invoice-cloud"].token_requests == 1


def test_item5_default_lifetime_below_120_seconds_is_misconfigured(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(provider_env={"invoice-cloud": {"DEFAULT_TOKEN_LIFETIME": "90"}})
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 500
    assert response.json()["error"] == "misconfigured"
    assert "DEFAULT_TOKEN_LIFETIME" in response.json()["error_description"]
    assert emulators["invoice-cloud"].token_requests == 0


# --- item 7: refresh ahead never asks for a scope outside the configured set -----------------------------
def test_item7_refresh_ahead_skips_scope_sets_no_longer_configured(stack: Any, emulators: Any) -> None:
    put_token(stack, "pyng", "old-scope", expires_in=100, lifetime=900, scope_key="billing:admin")
    put_token(stack, "pyng", "kept", expires_in=100, lifetime=900, scope_key="billing:batches:read")
    summary, error = invoke(stack, "PyngFunction", {"refresh_ahead": True})
    assert error is None
    scopes = sorted(request.form_value("scope") or "" for request in emulators["pyng"].requests)
    assert "billing:admin" not in " ".join(scopes)
    assert "billing:batches:read" in scopes  # the configured set near expiry is renewed
    assert summary["failed"] == 0


# --- item 9: DynamoDB down and the provider failing: a cool-down in each environment ---------------------
def test_item9_degraded_mode_cools_down_after_a_failure(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(dynamodb_endpoint="http://127.0.0.1:9", create_resources=False, max_concurrency=1,
                       provider_env={"pyng": {"UPSTREAM_RETRIES": "2"}})
    stack.seed_secrets()
    emulators["pyng"].enqueue(*[Fault(status=503)] * 20)
    answers = [get_token(stack, "pyng") for _ in range(5)]
    assert [answer.status_code for answer in answers] == [503] * 5
    assert emulators["pyng"].token_requests == 3  # one fetch (1 + 2 retries), then the cool-down
    for answer in answers:
        assert 1 <= int(answer.headers["Retry-After"]) <= 10


# --- item 10: no secret name, ARN or account in any error ----------------------------------------------
def test_item10_misconfigured_never_names_the_secret(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(credentials={})  # no secrets exist
    response = get_token(stack, "aria")
    assert response.status_code == 500
    text = response.text
    assert response.json()["error"] == "misconfigured"
    assert stack.secret_name("aria") not in text
    assert "arn:" not in text
    assert "secret" in response.json()["error_description"]
    assert not leases(stack)  # a misconfiguration is not the provider's fault: no cool-down record
    assert emulators["aria"].token_requests == 0


# --- item 11: an access token that is not RFC 6750 b64token is never cached or served ---------------------
@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "two words", 'quote"d', "ü-nicode", "=leading"])
def test_item11_token_syntax_is_enforced(stack: Any, emulators: Any, token: str) -> None:
    emulators["invoice-cloud"].enqueue(Fault(status=200, body={"access_token": token, "token_type": "Bearer",
                                                               "expires_in": 3600}))
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_invalid_response"
    assert token not in response.text
    assert not [item for item in table_items(stack) if item["sk"]["S"].startswith("token#")]


# --- item 12: a cool-down 503 says when to come back: the time really left -----------------------------------
def test_item12_cool_down_answers_carry_the_retry_after_really_left(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(provider_env={"pyng": {"UPSTREAM_RETRIES": "0"}})
    emulators["pyng"].enqueue(Fault(status=503))  # no Retry-After from the provider: our 10 s cool-down
    first = get_token(stack, "pyng")
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "10"
    assert first.json()["retry_after"] == 10
    time.sleep(2.1)
    again = get_token(stack, "pyng")
    assert again.status_code == 503
    assert 1 <= int(again.headers["Retry-After"]) <= 8  # what is left, not the original 10
    assert again.json()["retry_after"] == int(again.headers["Retry-After"])
    assert emulators["pyng"].token_requests == 1


# --- item 8: our own lack of time is not a provider failure --------------------------------------------------
def test_item8_too_little_time_starts_no_cool_down(stack: Any, emulators: Any) -> None:
    """The provider function is invoked with almost no time left (as the schedule or a caller near its own
    deadline might): it answers 504 without asking the provider and records nothing, so the next caller
    with a full budget gets a token."""
    pool = stack.lambdas.pools["AriaFunction"]
    pool.spec.timeout, full = 2.5, pool.spec.timeout  # a new worker's context reports 2.5 s remaining
    try:
        body, error = invoke(stack, "AriaFunction", {})
    finally:
        pool.spec.timeout = full
        stack.lambdas.recycle()  # the next invocations get environments with the full timeout
    assert error
    assert body["errorType"] == "UpstreamTimeout", body
    assert not leases(stack)
    assert emulators["aria"].token_requests == 0
    assert get_token(stack, "aria").status_code == 200
    assert emulators["aria"].token_requests == 1
