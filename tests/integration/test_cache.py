"""Cache semantics and failure handling through the real stack (DynamoDB Local, moto, emulators)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest

from local.providers import LOCAL_CREDENTIALS, Fault
from tests.integration.conftest import get_token, table_items
from token_vending.request import fingerprint

pytestmark = pytest.mark.integration


def put_token(stack: Any, provider: str, token: str, *, expires_in: int, lifetime: int = 3600, scope_key: str = "",
              fetched_ago: float = 600.0, used_ago: float | None = None) -> None:
    client = stack.client("dynamodb")
    now = time.time()
    item = {
        "pk": {"S": provider}, "sk": {"S": f"token#{scope_key}"}, "access_token": {"S": token},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now + expires_in))},
        "fetched_at": {"N": f"{now - fetched_ago:.3f}"}, "lifetime": {"N": str(lifetime)},
        "purge_at": {"N": str(int(now + expires_in + 3600))}}
    if used_ago is not None:
        item["used_at"] = {"N": f"{now - used_ago:.3f}"}
    client.put_item(TableName=stack.config.table_name, Item=item)


def invoke(stack: Any, function: str, payload: Any) -> tuple[dict[str, Any], str | None]:
    client = boto3.client("lambda", endpoint_url=stack.lambda_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    response = client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def test_an_expired_item_that_dynamodb_has_not_deleted_is_never_served(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "expired-token", expires_in=-5)
    body = get_token(stack, "invoice-cloud").json()
    assert body["access_token"] != "expired-token"
    assert emulators["invoice-cloud"].token_requests == 1


def test_a_token_inside_the_refresh_margin_is_replaced(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "nearly-expired", expires_in=300)  # margin = max(60, 10% of 3600) = 360
    body = get_token(stack, "invoice-cloud").json()
    assert body["access_token"] != "nearly-expired"
    assert emulators["invoice-cloud"].token_requests == 1


def test_a_fresh_cached_token_is_served_without_upstream_calls(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "cached-token", expires_in=3000)
    body = get_token(stack, "invoice-cloud").json()
    assert body["access_token"] == "cached-token"
    assert 2990 <= body["expires_in"] <= 3000  # remaining lifetime, not the original one
    assert emulators["invoice-cloud"].token_requests == 0


def test_min_ttl_longer_than_what_is_left_forces_a_new_token(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "cached-token", expires_in=1000)
    assert get_token(stack, "invoice-cloud").json()["access_token"] == "cached-token"
    body = get_token(stack, "invoice-cloud", min_ttl="1200").json()
    assert body["access_token"] != "cached-token"
    assert body["expires_in"] >= 1200
    assert emulators["invoice-cloud"].token_requests == 1


def test_force_refresh_discards_the_token_once_per_interval(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(function_env={"FORCE_REFRESH_INTERVAL": "1"})
    first = get_token(stack, "pyng").json()["access_token"]
    time.sleep(1.1)
    forced = get_token(stack, "pyng", force_refresh="true").json()["access_token"]
    assert forced != first
    # A burst of forced refreshes right after: the token just fetched is served, no new upstream call.
    for _ in range(3):
        assert get_token(stack, "pyng", force_refresh="true").json()["access_token"] == forced
    assert emulators["pyng"].token_requests == 2


def test_a_forced_refresh_naming_a_replaced_token_serves_the_replacement(make_stack: Any, emulators: Any) -> None:
    """Callers that got a 401 for token A name it (its fingerprint): the first replaces it; those asking later,
    even after the force-refresh interval, get the replacement without a token request, through the API and
    directly. Naming the current token replaces it."""
    stack = make_stack(function_env={"FORCE_REFRESH_INTERVAL": "1"})
    first = get_token(stack, "pyng").json()["access_token"]
    time.sleep(1.1)
    second = get_token(stack, "pyng", force_refresh=fingerprint(first)).json()["access_token"]
    assert second != first
    assert emulators["pyng"].token_requests == 2
    time.sleep(1.1)  # past the interval: only the fingerprint keeps the replacement
    assert get_token(stack, "pyng", force_refresh=fingerprint(first)).json()["access_token"] == second
    body, error = invoke(stack, "PyngFunction", {"force_refresh": fingerprint(first)})
    assert error is None
    assert body["access_token"] == second
    assert emulators["pyng"].token_requests == 2
    third = get_token(stack, "pyng", force_refresh=fingerprint(second)).json()["access_token"]
    assert third not in (first, second)
    assert emulators["pyng"].token_requests == 3


@pytest.mark.parametrize("outage", [True, False], ids=["provider down", "provider up"])
def test_a_forced_refresh_naming_a_replaced_token_serves_the_replacement_inside_its_margin(
        make_stack: Any, emulators: Any, outage: bool) -> None:
    """The refused token is gone and its replacement, inside its refresh margin, still meets min_ttl: both
    interfaces serve the replacement without asking the provider (down or up) and without spending the budget."""
    stack = make_stack(provider_env={"invoice-cloud": {"UPSTREAM_RETRIES": "0"}})
    put_token(stack, "invoice-cloud", "replacement", expires_in=200)  # margin 360: inside it, valid for min_ttl 60
    if outage:
        emulators["invoice-cloud"].enqueue(*[Fault(status=503)] * 10)
    refused = fingerprint("the-refused-token")
    response = get_token(stack, "invoice-cloud", force_refresh=refused)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == "replacement"
    body, error = invoke(stack, "InvoiceCloudFunction", {"force_refresh": refused})
    assert error is None, body
    assert body["access_token"] == "replacement"
    assert emulators["invoice-cloud"].token_requests == 0
    assert not [item for item in table_items(stack) if item["sk"]["S"].startswith(("budget#", "lease#"))]
    # Naming the stored token itself still replaces it (or, with the provider down, is a 503).
    response = get_token(stack, "invoice-cloud", force_refresh=fingerprint("replacement"))
    assert response.status_code == (503 if outage else 200), response.text
    assert emulators["invoice-cloud"].token_requests == 1


def test_stale_token_is_served_when_the_refresh_fails(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "still-valid", expires_in=200)  # inside the margin, valid for min_ttl 60
    emulators["invoice-cloud"].enqueue(*[Fault(status=503)] * 3)
    body = get_token(stack, "invoice-cloud").json()
    assert body["access_token"] == "still-valid"
    [item] = [item for item in table_items(stack) if item["sk"]["S"] == "token#"]
    assert item["access_token"]["S"] == "still-valid"  # the cache is intact


@pytest.mark.parametrize(("fault", "status", "code"), [
    (Fault(status=500), 503, "upstream_unavailable"),
    (Fault(status=429, headers={"Retry-After": "120"}), 503, "upstream_unavailable"),
    (Fault(status=200, body="<html>maintenance</html>", headers={"Content-Type": "text/html"}), 502,
     "upstream_invalid_response"),
    (Fault(status=200, body={"token_type": "Bearer", "expires_in": 3600}), 502, "upstream_invalid_response"),
    (Fault(status=200, body={"access_token": "x", "expires_in": "soon"}), 502, "upstream_invalid_response"),
    (Fault(drop=True), 503, "upstream_unavailable"),
])
def test_upstream_failures_map_to_the_contract(make_stack: Any, emulators: Any, fault: Fault, status: int,
                                               code: str) -> None:
    stack = make_stack(provider_env={"invoice-cloud": {"UPSTREAM_RETRIES": "1"}})
    emulators["invoice-cloud"].enqueue(fault, fault)
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    if fault.status == 429:
        assert response.headers["Retry-After"] == "120"  # too long to wait inside the invocation
    assert not [item for item in table_items(stack) if item["sk"]["S"].startswith("token#")]


def test_5xx_is_retried_then_succeeds(stack: Any, emulators: Any) -> None:
    emulators["invoice-cloud"].enqueue(Fault(status=502), Fault(status=503))
    assert get_token(stack, "invoice-cloud").status_code == 200
    assert emulators["invoice-cloud"].token_requests == 3


def test_a_hanging_provider_gives_504(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(provider_env={"invoice-cloud": {"UPSTREAM_READ_TIMEOUT": "1"}})
    emulators["invoice-cloud"].enqueue(Fault(status=200, delay=5))
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert emulators["invoice-cloud"].token_requests == 1  # no retry after a read timeout


def test_connection_refused_gives_503(make_stack: Any) -> None:
    stack = make_stack(provider_urls={"invoice-cloud": "http://127.0.0.1:9/biller/v1/authentication/oauth2/token"})
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_unavailable"


def test_rotation_after_the_interval(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(function_env={"FORCE_REFRESH_INTERVAL": "0"})
    assert get_token(stack, "pyng").status_code == 200
    emulators["pyng"].set_credentials("rotated-id", "rotated-secret")
    stack.client("secretsmanager").put_secret_value(
        SecretId=stack.secret_name("pyng"), SecretString=json.dumps({"client_id": "rotated-id",
                                                               "client_secret": "rotated-secret"}))
    response = get_token(stack, "pyng", force_refresh="true")
    assert response.status_code == 200, response.text
    assert emulators["pyng"].token_requests == 3  # first token, refused old secret, accepted new one
    assert emulators["pyng"].requests[-1].basic_auth == ("rotated-id", "rotated-secret")


@pytest.mark.parametrize(("secret", "field"), [
    ({"client_id": "abc"}, "client_secret"), ({"client_secret": "s3cr3t-value"}, "client_id"),
    ("not json at all s3cr3t-value", "JSON"),
])
def test_malformed_secret_is_misconfigured_naming_the_field_not_the_value(
        make_stack: Any, emulators: Any, secret: Any, field: str) -> None:
    stack = make_stack(credentials={"invoice-cloud": LOCAL_CREDENTIALS["invoice-cloud"]})
    value = secret if isinstance(secret, str) else json.dumps(secret)
    stack.client("secretsmanager").put_secret_value(SecretId=stack.secret_name("invoice-cloud"), SecretString=value)
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 500
    assert response.json()["error"] == "misconfigured"
    assert field in response.json()["error_description"]
    assert "s3cr3t-value" not in response.text
    assert emulators["invoice-cloud"].token_requests == 0


def test_missing_secret_is_misconfigured(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(credentials={})
    response = get_token(stack, "aria")
    assert response.status_code == 500
    assert response.json()["error"] == "misconfigured"
    assert "ResourceNotFoundException" in response.json()["error_description"]
    assert emulators["aria"].token_requests == 0


def test_plain_http_token_url_is_refused_outside_local_mode(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(provider_env={"aria": {"TOKEN_VENDING_LOCAL_MODE": "false"}})
    response = get_token(stack, "aria")
    assert response.status_code == 500
    assert response.json()["error"] == "misconfigured"
    assert "TOKEN_URL must be an https:// URL" in response.json()["error_description"]
    assert emulators["aria"].token_requests == 0


def test_direct_invocation_returns_the_body_and_raises_named_errors(stack: Any, emulators: Any) -> None:
    body, error = invoke(stack, "PyngFunction", {"scope": "billing:batches:read", "min_ttl": 60,
                                                  "force_refresh": False})
    assert error is None
    assert body["provider"] == "pyng"
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "billing:batches:read"
    body, error = invoke(stack, "PyngFunction", {"scope": "billing:admin"})
    assert error == "Unhandled"
    assert body["errorType"] == "InvalidRequest"
    assert json.loads(body["errorMessage"])["error"] == "invalid_request"
    emulators["aria"].set_credentials("x", "y")
    body, error = invoke(stack, "AriaFunction", {})
    assert body["errorType"] == "UpstreamRejected"
    assert json.loads(body["errorMessage"])["upstream_error"] == "invalid_client"
    body, _ = invoke(stack, "AriaFunction", {"min_ttl": True})
    assert body["errorType"] == "InvalidRequest"


def test_concurrent_cold_misses_make_one_upstream_request(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(max_concurrency=6)
    stack.lambdas.warm("PyngFunction", 6)
    stack.lambdas.warm("TokenApiFunction", 6)
    results: list[int] = []

    def call() -> None:
        results.append(get_token(stack, "pyng").status_code)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 12
    assert emulators["pyng"].token_requests == 1


def test_refresh_ahead_renews_scope_sets_in_use_near_expiry_and_leaves_idle_ones(stack: Any, emulators: Any) -> None:
    # Empty cache: nobody uses any scope set yet, so nothing is fetched ahead of a caller.
    summary, error = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert error is None
    assert summary == {"renewed": 0, "armed": 0, "fresh": 0, "idle": 0, "failed": 0}
    assert emulators["invoice-cloud"].token_requests == 0
    # A caller's token is fresh for longer than margin + 1.5 intervals (360 + 450 s): nothing to do.
    assert get_token(stack, "invoice-cloud").status_code == 200
    summary, _ = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert summary == {"renewed": 0, "armed": 0, "fresh": 1, "idle": 0, "failed": 0}
    assert emulators["invoice-cloud"].token_requests == 1
    # A token in use that would enter the margin before the next run is renewed now, while still valid.
    put_token(stack, "invoice-cloud", "ageing", expires_in=700, used_ago=3600)
    summary, _ = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert summary == {"renewed": 1, "armed": 0, "fresh": 0, "idle": 0, "failed": 0}
    renewed = get_token(stack, "invoice-cloud").json()["access_token"]
    assert renewed != "ageing"
    assert emulators["invoice-cloud"].token_requests == 2
    # Nobody asked for it during RefreshAheadIdleHours (24 h): left to expire, served while it lasts.
    put_token(stack, "invoice-cloud", "idle", expires_in=700, fetched_ago=26 * 3600, used_ago=25 * 3600)
    summary, _ = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert summary == {"renewed": 0, "armed": 0, "fresh": 0, "idle": 1, "failed": 0}
    assert emulators["invoice-cloud"].token_requests == 2
    # Serving it marks the set in use again (one write), so the next run renews it.
    stack.lambdas.recycle()  # environments that remember the renewed token in memory start afresh
    assert get_token(stack, "invoice-cloud").json()["access_token"] == "idle"
    item = stack.client("dynamodb").get_item(TableName=stack.config.table_name,
                                             Key={"pk": {"S": "invoice-cloud"}, "sk": {"S": "token#"}})["Item"]
    assert time.time() - float(item["used_at"]["N"]) < 60
    summary, _ = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert summary == {"renewed": 1, "armed": 0, "fresh": 0, "idle": 0, "failed": 0}
    assert emulators["invoice-cloud"].token_requests == 3


def test_refresh_ahead_failure_keeps_the_cached_token(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "ageing", expires_in=700)
    emulators["invoice-cloud"].enqueue(*[Fault(status=500)] * 3)
    summary, error = invoke(stack, "InvoiceCloudFunction", {"refresh_ahead": True})
    assert error is None
    assert summary == {"renewed": 0, "armed": 0, "fresh": 0, "idle": 0, "failed": 1}  # reported (a metric)...
    # ...while the still-valid token stays cached and keeps being served.
    assert get_token(stack, "invoice-cloud").json()["access_token"] == "ageing"


# --- a failed refresh is remembered, min_ttl is bounded, odd grants are refused ----------------------
def test_a_failed_refresh_holds_every_caller_off_the_provider(stack: Any, emulators: Any) -> None:
    emulators["pyng"].enqueue(*[Fault(status=429, headers={"Retry-After": "120"})] * 3)
    first = get_token(stack, "pyng")
    assert first.status_code == 503
    calls = emulators["pyng"].token_requests
    # Callers keep coming (some forcing a refresh): the provider is not asked again during the cool-down.
    for params in ({}, {"force_refresh": "true"}, {}, {"min_ttl": "30"}):
        response = get_token(stack, "pyng", **params)
        assert response.status_code == 503
        assert 100 <= int(response.headers["Retry-After"]) <= 120  # what is left of the provider's 120 s
    assert emulators["pyng"].token_requests == calls
    [lease] = [item for item in table_items(stack) if item["sk"]["S"].startswith("lease#")]
    assert float(lease["lease_expires_at"]["N"]) >= time.time() + 100  # Retry-After honoured for everyone


def test_a_cool_down_still_serves_a_valid_cached_token(stack: Any, emulators: Any) -> None:
    put_token(stack, "invoice-cloud", "still-valid", expires_in=200)
    emulators["invoice-cloud"].enqueue(*[Fault(status=503)] * 3)
    assert get_token(stack, "invoice-cloud").json()["access_token"] == "still-valid"
    calls = emulators["invoice-cloud"].token_requests
    assert get_token(stack, "invoice-cloud").json()["access_token"] == "still-valid"
    assert emulators["invoice-cloud"].token_requests == calls


def test_rejected_credentials_are_not_retried_by_the_next_caller(stack: Any, emulators: Any) -> None:
    emulators["autopay"].set_credentials("other", "other")
    for _ in range(4):
        response = get_token(stack, "autopay")
        assert response.status_code == 502
        assert response.json()["upstream_error"] == "access_denied"
    assert emulators["autopay"].token_requests == 1  # Autopay cuts off clients that over-request


def test_a_min_ttl_the_provider_cannot_keep_is_refused_without_fetching(stack: Any, emulators: Any) -> None:
    assert get_token(stack, "pyng").status_code == 200  # 900 s tokens, renewed 90 s before expiry
    response = get_token(stack, "pyng", min_ttl="900")
    assert response.status_code == 400
    assert "between 0 and 810" in response.json()["error_description"]
    assert get_token(stack, "pyng", min_ttl="800").status_code == 200
    assert emulators["pyng"].token_requests == 1


@pytest.mark.parametrize("body", [
    {"access_token": "short", "token_type": "Bearer", "expires_in": 5},
    {"access_token": "eyJhbGciOiJub25lIn0.eyJleHAiOjEwfQ.x", "token_type": "Bearer"},  # JWT exp in 1970
])
def test_a_token_that_expires_at_once_is_an_invalid_response(stack: Any, emulators: Any,
                                                             body: dict[str, Any]) -> None:
    emulators["invoice-cloud"].enqueue(Fault(status=200, body=body))
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_invalid_response"


def test_a_narrower_grant_than_requested_is_refused(stack: Any, emulators: Any) -> None:
    emulators["pyng"].enqueue(Fault(status=200, body={"access_token": "narrow", "token_type": "Bearer",
                                                      "expires_in": 900, "scope": "billing:batches:read"}))
    response = get_token(stack, "pyng", scope="billing:batches:read billing:customers:read")
    assert response.status_code == 502
    assert response.json()["upstream_error"] == "invalid_scope"
    assert not [item for item in table_items(stack) if item["sk"]["S"].startswith("token#")]
