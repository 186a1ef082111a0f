"""Each provider end to end through the local API: what the provider received, what the caller got,
what was stored, and how many upstream token requests were made."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from local.providers import LOCAL_CREDENTIALS, OMIT, Fault
from local.stack import PYNG_SCOPES
from tests.integration.conftest import get_token, table_items

pytestmark = pytest.mark.integration

PYNG_DEFAULT = " ".join(sorted(PYNG_SCOPES.split()))

# route -> (path, content type, credentials in Basic header?, exact fields the provider must receive, lifetime)
EXPECTED: dict[str, dict[str, Any]] = {
    "invoice-cloud": {"path": "/biller/v1/authentication/oauth2/token", "type": "application/x-www-form-urlencoded",
                      "basic": False, "lifetime": 3600,
                      "fields": {"grant_type": "client_credentials", "client_id": LOCAL_CREDENTIALS["invoice-cloud"][0],
                                 "client_secret": LOCAL_CREDENTIALS["invoice-cloud"][1]}},
    "pyng": {"path": "/billing/oauth2/token", "type": "application/x-www-form-urlencoded", "basic": True,
             "lifetime": 900, "fields": {"grant_type": "client_credentials", "scope": PYNG_DEFAULT}},
    "aria": {"path": "/realms/aria/protocol/openid-connect/token", "type": "application/x-www-form-urlencoded",
             "basic": False, "lifetime": 3600,
             "fields": {"grant_type": "client_credentials", "client_id": LOCAL_CREDENTIALS["aria"][0],
                        "client_secret": LOCAL_CREDENTIALS["aria"][1]}},
    "autopay": {"path": "/oauth/token", "type": "application/json", "basic": False, "lifetime": 86400,
                "json": {"client_id": LOCAL_CREDENTIALS["autopay"][0], "client_secret": LOCAL_CREDENTIALS["autopay"][1],
                         "audience": "", "grant_type": "client_credentials"}},
    "alternative-payments": {"path": "/oauth/token", "type": "application/x-www-form-urlencoded", "basic": True,
                             "lifetime": 3600, "fields": {"grant_type": "client_credentials"}},
}
# What each provider answers for credentials it does not know, as its document says.
REJECTION = {"invoice-cloud": (400, "invalid_client"), "pyng": (401, "invalid_client"),
             "aria": (401, "invalid_client"), "autopay": (401, "access_denied"),
             "alternative-payments": (403, "invalid_client")}
ROUTES = list(EXPECTED)


def assert_token_response(response: Any, route: str, lifetime: int) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"}
    assert body["provider"] == route
    assert body["token_type"] == "Bearer"
    assert lifetime - 10 <= body["expires_in"] <= lifetime
    expires_at = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(expires_at.timestamp() - (time.time() + body["expires_in"])) <= 2
    return dict(body)


@pytest.mark.parametrize("route", ROUTES)
def test_token_request_follows_the_providers_document_and_is_cached(stack: Any, emulators: Any, route: str) -> None:
    expected = EXPECTED[route]
    emulator = emulators[route]

    first = assert_token_response(get_token(stack, route), route, expected["lifetime"])

    assert emulator.token_requests == 1
    received = emulator.requests[0]
    assert received.method == "POST"
    assert received.path == expected["path"]
    assert received.headers["content-type"] == expected["type"]
    client_id, client_secret = LOCAL_CREDENTIALS[route]
    if expected["basic"]:
        assert received.basic_auth == (client_id, client_secret)
        assert received.headers["authorization"] == "Basic " + base64.b64encode(
            f"{client_id}:{client_secret}".encode()).decode()
    else:
        assert "authorization" not in received.headers
    if "json" in expected:
        assert received.json == expected["json"]
        assert received.form is None
    else:
        assert received.form == {key: [value] for key, value in expected["fields"].items()}
    assert first["access_token"] == emulator.issued[0]["access_token"]

    # A second request inside the token's lifetime makes no upstream request.
    second = assert_token_response(get_token(stack, route), route, expected["lifetime"])
    assert second["access_token"] == first["access_token"]
    assert emulator.token_requests == 1

    [item] = [item for item in table_items(stack) if item["sk"]["S"].startswith("token#")]
    assert item["pk"]["S"] == route
    assert item["access_token"]["S"] == first["access_token"]
    expires_at = int(item["expires_at"]["N"])
    assert abs(expires_at - (time.time() + expected["lifetime"])) <= 10
    assert int(item["purge_at"]["N"]) > expires_at


def test_pyng_scope_is_space_separated_percent_encoded_and_normalised(stack: Any, emulators: Any) -> None:
    response = get_token(stack, "pyng", scope="billing:customers:read billing:batches:read billing:batches:read")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "billing:batches:read billing:customers:read"
    received = emulators["pyng"].requests[0]
    assert received.body == b"grant_type=client_credentials&scope=billing:batches:read%20billing:customers:read"
    # The same set in another order is the same cache key: no second upstream request.
    again = get_token(stack, "pyng", scope="billing:customers:read billing:batches:read")
    assert again.json()["access_token"] == response.json()["access_token"]
    assert emulators["pyng"].token_requests == 1
    # A different scope set is a different token.
    other = get_token(stack, "pyng", scope="billing:batches:read")
    assert other.json()["access_token"] != response.json()["access_token"]
    assert emulators["pyng"].token_requests == 2


@pytest.mark.parametrize("route", ROUTES)
def test_rejected_credentials_give_upstream_rejected_with_the_providers_code(
        stack: Any, emulators: Any, route: str) -> None:
    emulators[route].set_credentials("someone-else", "another-secret")
    response = get_token(stack, route)
    status, code = REJECTION[route]
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "upstream_rejected"
    assert body["provider"] == route
    assert body["upstream_error"] == code
    assert body["upstream_status"] == status
    assert LOCAL_CREDENTIALS[route][1] not in response.text
    assert response.headers["Cache-Control"] == "no-store"
    # The secret did not change, so retrying with credentials already refused would only count against us.
    assert emulators[route].token_requests == 1
    assert not [item for item in table_items(stack) if item["sk"]["S"].startswith("token#")]


def test_pyng_scope_not_granted_to_the_partner_is_passed_on(stack: Any, emulators: Any) -> None:
    emulators["pyng"].configure(granted_scopes=("billing:batches:read",))
    response = get_token(stack, "pyng", scope="billing:customers:invite")
    assert response.status_code == 502
    assert response.json()["upstream_error"] == "invalid_scope"


def test_scope_outside_the_configured_set_is_refused_before_any_upstream_call(stack: Any, emulators: Any) -> None:
    response = get_token(stack, "pyng", scope="billing:admin")
    assert response.status_code == 400
    body = response.json()
    assert (body["error"], body["provider"]) == ("invalid_request", "pyng")
    assert body["error_description"].startswith("scope names 1 scope(s) outside the configured set; this provider "
                                                "allows: billing:")
    assert "billing:admin" not in body["error_description"]
    assert get_token(stack, "invoice-cloud", scope="anything").status_code == 400
    assert emulators["pyng"].token_requests == 0
    assert emulators["invoice-cloud"].token_requests == 0


@pytest.mark.parametrize(("params", "fragment"), [
    ({"min_ttl": "abc"}, "min_ttl"), ({"min_ttl": "-1"}, "min_ttl"), ({"min_ttl": "3601"}, "min_ttl"),
    ({"force_refresh": "yes"}, "force_refresh"), ({"scope": "a\"b"}, "scope"), ({"unexpected": "1"}, "unknown"),
])
def test_bad_parameters_are_400_invalid_request(stack: Any, emulators: Any, params: dict[str, str],
                                                fragment: str) -> None:
    response = get_token(stack, "invoice-cloud", **params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert fragment in body["error_description"]
    assert emulators["invoice-cloud"].token_requests == 0


def test_unknown_provider_is_404_from_the_function(stack: Any) -> None:
    response = get_token(stack, "paypal")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown_provider", "error_description": "no such provider is deployed",
                               "provider": "paypal"}
    traversal = get_token(stack, "..%2F..%2Fetc%2Fpasswd")
    assert traversal.status_code == 404
    assert traversal.json()["provider"] is None


def test_token_type_and_lifetime_quirks(stack: Any, emulators: Any) -> None:
    # Alternative Payments answers lowercase "bearer": callers always get "Bearer".
    assert get_token(stack, "alternative-payments").json()["token_type"] == "Bearer"
    # expires_in as a numeric string.
    emulators["invoice-cloud"].configure(expires_in="1800")
    assert 1790 <= get_token(stack, "invoice-cloud").json()["expires_in"] <= 1800


def test_aria_jwt_exp_is_used_when_expires_in_is_missing(stack: Any, emulators: Any) -> None:
    emulators["aria"].configure(expires_in=OMIT, token_lifetime=1200)
    body = get_token(stack, "aria").json()
    payload = body["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert int(expires.timestamp()) == claims["exp"]
    assert 1190 <= body["expires_in"] <= 1200


def test_default_lifetime_when_neither_expires_in_nor_jwt(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(provider_env={"alternative-payments": {"DEFAULT_TOKEN_LIFETIME": "420"}})
    emulators["alternative-payments"].configure(expires_in=OMIT)
    assert 410 <= get_token(stack, "alternative-payments").json()["expires_in"] <= 420


def test_autopay_misspelled_expries_in_is_honoured(stack: Any, emulators: Any) -> None:
    emulators["autopay"].enqueue(Fault(status=200, body={"access_token": "eyJ.autopay.token", "token_type": "Bearer",
                                                         "expries_in": 7200, "scope": "payments:read"}))
    body = get_token(stack, "autopay").json()
    assert 7190 <= body["expires_in"] <= 7200
