"""Tests of the loopback provider emulators in :mod:`local.providers`.

The emulators stand in for the real providers in local runs and integration tests, so these tests
pin their wire contract to the provider documents: status codes, error bodies, field names and
case, and what is recorded about each request. Every test binds ephemeral ports on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import requests

from local.providers import (
    DEFAULT_PORTS,
    LOCAL_CREDENTIALS,
    OMIT,
    PYNG_SCOPES,
    ROUTES,
    EmulatorFleet,
    Fault,
    ProviderEmulator,
    RecordedRequest,
    decode_jwt,
    local_credentials,
)
from token_vending import catalogue
from token_vending.profile import ClientAuth, ClientCredentialsProfile, EmulatorRules, ScopeMode

JSON_TYPE = "application/json;charset=UTF-8"
TIMEOUT = (2.0, 5.0)
DOCUMENTED = ("invoice-cloud", "pyng", "aria", "autopay", "alternative-payments")
"""The providers whose emulators these tests describe by hand, from their documents (a catalogue entry added
later gets the standards server, tested on its own below)."""
ALL_PYNG_SCOPES = " ".join(PYNG_SCOPES)

Factory = Callable[..., ProviderEmulator]


@pytest.fixture
def start() -> Iterator[Factory]:
    """Start emulators on ephemeral ports and always stop them, even when a test fails."""
    started: list[ProviderEmulator] = []

    def _start(route: str, **kwargs: Any) -> ProviderEmulator:
        emulator = ProviderEmulator(route, **kwargs).start()
        started.append(emulator)
        return emulator

    yield _start
    for emulator in started:
        emulator.stop()


# --- request helpers, one per provider's documented request shape ---------------------------


def creds(route: str) -> tuple[str, str]:
    return LOCAL_CREDENTIALS[route]


def post_form(url: str, data: dict[str, str] | str | bytes, **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {})
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    timeout = kwargs.pop("timeout", TIMEOUT)
    return requests.post(url, data=data, headers=headers, timeout=timeout, **kwargs)


def invoice_cloud(emu: ProviderEmulator, **overrides: str) -> requests.Response:
    client_id, secret = creds("invoice-cloud")
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, **overrides}
    return post_form(emu.url, data)


def pyng(emu: ProviderEmulator, scope: str | None = ALL_PYNG_SCOPES, **kwargs: Any) -> requests.Response:
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    data.update(kwargs.pop("data", {}))
    auth = kwargs.pop("auth", creds("pyng"))
    return post_form(emu.url, data, auth=auth, **kwargs)


def aria(emu: ProviderEmulator, **overrides: str) -> requests.Response:
    client_id, secret = creds("aria")
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, **overrides}
    return post_form(emu.url, data)


def autopay(emu: ProviderEmulator, **overrides: Any) -> requests.Response:
    client_id, secret = creds("autopay")
    body = {
        "client_id": client_id,
        "client_secret": secret,
        "audience": "",
        "grant_type": "client_credentials",
    }
    body.update(overrides)
    return requests.post(emu.url, json=body, timeout=TIMEOUT)


def alt_payments(emu: ProviderEmulator, **kwargs: Any) -> requests.Response:
    data = kwargs.pop("data", {"grant_type": "client_credentials"})
    auth = kwargs.pop("auth", creds("alternative-payments"))
    return post_form(emu.url, data, auth=auth, **kwargs)


SUCCESS: dict[str, Callable[[ProviderEmulator], requests.Response]] = {
    "invoice-cloud": invoice_cloud,
    "pyng": pyng,
    "aria": aria,
    "autopay": autopay,
    "alternative-payments": alt_payments,
}


def assert_json(response: requests.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- public constants ------------------------------------------------------------------------


def test_public_constants() -> None:
    assert ROUTES[:len(DOCUMENTED)] == DOCUMENTED
    assert dict(zip(ROUTES, range(9001, 9001 + len(ROUTES)), strict=True)) == DEFAULT_PORTS
    assert set(LOCAL_CREDENTIALS) == set(ROUTES)
    for route, (client_id, secret) in LOCAL_CREDENTIALS.items():
        assert client_id == f"local-{route}-client"
        assert secret.startswith(f"local-{route}-secret-")


def test_unknown_route_and_option_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown route"):
        ProviderEmulator("nope")
    with pytest.raises(TypeError, match="granted_scopes"):
        ProviderEmulator("invoice-cloud", granted_scopes="x")
    with pytest.raises(TypeError):
        ProviderEmulator("pyng", expires_in=1.5)


# --- common behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("route", DOCUMENTED)
def test_success_common_headers_unique_tokens_and_issued(start: Factory, route: str) -> None:
    emu = start(route)
    first = assert_json(SUCCESS[route](emu), 200)
    second = assert_json(SUCCESS[route](emu), 200)
    assert first["access_token"] != second["access_token"]
    assert emu.issued == [first, second]
    assert emu.token_requests == 2
    assert emu.url == f"http://127.0.0.1:{emu.port}{emu.token_path}"
    assert emu.port != 0


@pytest.mark.parametrize("route", DOCUMENTED)
def test_other_method_is_405_and_other_path_is_404(start: Factory, route: str) -> None:
    emu = start(route)
    response = requests.get(emu.url, timeout=TIMEOUT)
    body = assert_json(response, 405)
    assert response.headers["Allow"] == "POST"
    assert body["error"] == "method_not_allowed"
    body = assert_json(requests.post(f"http://127.0.0.1:{emu.port}/elsewhere", timeout=TIMEOUT), 404)
    assert body["error"] == "not_found"
    assert [r.method for r in emu.requests] == ["GET", "POST"]
    assert emu.issued == []


def test_query_string_is_recorded_but_does_not_change_routing(start: Factory) -> None:
    emu = start("invoice-cloud")
    client_id, secret = creds("invoice-cloud")
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    assert_json(post_form(emu.url + "?x=1", data), 200)
    assert emu.requests[0].path == emu.token_path
    assert emu.requests[0].query == "x=1"


# --- Invoice Cloud -----------------------------------------------------------------------------


def test_invoice_cloud_success_and_recording(start: Factory) -> None:
    emu = start("invoice-cloud")
    body = assert_json(invoice_cloud(emu), 200)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"].startswith("ic_")
    [req] = emu.requests
    client_id, secret = creds("invoice-cloud")
    assert isinstance(req, RecordedRequest)
    assert (req.method, req.path) == ("POST", "/biller/v1/authentication/oauth2/token")
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.form == {
        "grant_type": ["client_credentials"],
        "client_id": [client_id],
        "client_secret": [secret],
    }
    assert req.form_value("client_id") == client_id
    assert req.json is None
    assert req.basic_auth is None


@pytest.mark.parametrize(
    "overrides",
    [{"client_secret": "wrong"}, {"client_id": "someone-else"}, {"client_secret": ""}],
)
def test_invoice_cloud_bad_credentials_are_400_invalid_client(
    start: Factory, overrides: dict[str, str]
) -> None:
    emu = start("invoice-cloud")
    response = invoice_cloud(emu, **overrides)
    assert_json(response, 400)
    # The documented body, field order included.
    assert response.text == '{"error_description":"Invalid client authentication","error":"invalid_client"}'
    assert emu.issued == []


def test_invoice_cloud_missing_credentials_and_basic_instead_of_body(start: Factory) -> None:
    emu = start("invoice-cloud")
    body = assert_json(
        post_form(emu.url, {"grant_type": "client_credentials"}, auth=creds("invoice-cloud")), 400
    )
    assert body["error"] == "invalid_client"


def test_invoice_cloud_wrong_grant_and_json_body(start: Factory) -> None:
    emu = start("invoice-cloud")
    body = assert_json(invoice_cloud(emu, grant_type="password"), 400)
    assert body["error"] == "unsupported_grant_type"
    client_id, secret = creds("invoice-cloud")
    payload = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    body = assert_json(requests.post(emu.url, json=payload, timeout=TIMEOUT), 400)
    assert body["error"] == "invalid_client"  # a JSON body carries no form parameters


def test_invoice_cloud_non_utf8_form_is_invalid_request(start: Factory) -> None:
    emu = start("invoice-cloud")
    body = assert_json(post_form(emu.url, b"grant_type=client_credentials&client_id=%ff%fe"), 400)
    assert body["error"] == "invalid_request"
    assert emu.requests[0].form is None


# --- Pyng ----------------------------------------------------------------------------------------


def test_pyng_success_and_recording(start: Factory) -> None:
    emu = start("pyng")
    body = assert_json(pyng(emu, scope="billing:customers:read billing:batches:read"), 200)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "billing:customers:read billing:batches:read"
    assert body["access_token"].startswith("pyng_")
    [req] = emu.requests
    assert req.basic_auth == creds("pyng")
    assert req.headers["authorization"] == basic(*creds("pyng"))
    assert req.form == {
        "grant_type": ["client_credentials"],
        "scope": ["billing:customers:read billing:batches:read"],
    }
    assert b"scope=billing%3Acustomers%3Aread+billing%3Abatches%3Aread" in req.body


def test_pyng_all_documented_scopes_by_default(start: Factory) -> None:
    emu = start("pyng")
    assert assert_json(pyng(emu), 200)["scope"] == ALL_PYNG_SCOPES


@pytest.mark.parametrize(
    "auth",
    [None, ("local-pyng-client", "wrong"), ("other", creds("pyng")[1])],
)
def test_pyng_bad_or_missing_basic_is_401(start: Factory, auth: tuple[str, str] | None) -> None:
    emu = start("pyng")
    response = pyng(emu, auth=auth)
    assert assert_json(response, 401) == {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
    }
    assert response.headers["WWW-Authenticate"] == "Basic"


def test_pyng_credentials_in_body_count_as_missing(start: Factory) -> None:
    emu = start("pyng")
    client_id, secret = creds("pyng")
    response = pyng(emu, auth=None, data={"client_id": client_id, "client_secret": secret})
    assert assert_json(response, 401)["error"] == "invalid_client"


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer abc",
    ],
)
def test_pyng_malformed_authorization_is_401(start: Factory, header: str) -> None:
    emu = start("pyng")
    response = pyng(emu, auth=None, headers={"Authorization": header})
    assert assert_json(response, 401)["error"] == "invalid_client"
    assert emu.requests[0].basic_auth is None


def test_pyng_missing_scope_is_invalid_request(start: Factory) -> None:
    emu = start("pyng")
    assert assert_json(pyng(emu, scope=None), 400)["error"] == "invalid_request"
    assert assert_json(pyng(emu, scope=""), 400)["error"] == "invalid_request"


def test_pyng_scope_outside_granted_set_is_invalid_scope(start: Factory) -> None:
    emu = start("pyng", granted_scopes=("billing:customers:read",))
    assert assert_json(pyng(emu, scope="billing:customers:read"), 200)["scope"] == "billing:customers:read"
    assert assert_json(pyng(emu, scope="billing:batches:submit"), 400)["error"] == "invalid_scope"
    assert assert_json(pyng(emu, scope="billing:everything"), 400)["error"] == "invalid_scope"
    emu.configure(granted_scopes=PYNG_SCOPES)
    assert assert_json(pyng(emu, scope="billing:batches:submit"), 200)["scope"] == "billing:batches:submit"


def test_pyng_wrong_grant_type(start: Factory) -> None:
    emu = start("pyng")
    assert assert_json(pyng(emu, data={"grant_type": "password"}), 400)["error"] == "unsupported_grant_type"


# --- Aria (Keycloak) -----------------------------------------------------------------------------


def test_aria_success_is_a_keycloak_body_with_a_jwt(start: Factory) -> None:
    emu = start("aria")
    assert emu.token_path == "/realms/aria/protocol/openid-connect/token"
    body = assert_json(aria(emu), 200)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "api"
    assert body["refresh_expires_in"] == 0
    assert body["not-before-policy"] == 0
    token = body["access_token"]
    header_b64 = token.split(".")[0]
    assert "=" not in token
    assert json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4))) == {
        "alg": "HS256",
        "typ": "JWT",
    }
    claims = decode_jwt(token, emu.jwt_key)
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["aud"] == "billie-connect-api"
    assert {"iss", "sub", "client_no", "account_no"} <= set(claims)
    with pytest.raises(ValueError, match="signature"):
        decode_jwt(token, b"another key")
    assert emu.requests[0].form_value("client_secret") == creds("aria")[1]


@pytest.mark.parametrize("overrides", [{"client_secret": "wrong"}, {"client_id": "nobody"}])
def test_aria_bad_credentials_are_401(start: Factory, overrides: dict[str, str]) -> None:
    emu = start("aria")
    assert assert_json(aria(emu, **overrides), 401) == {
        "error": "invalid_client",
        "error_description": "Invalid client or Invalid client credentials",
    }


def test_aria_wrong_or_missing_grant(start: Factory) -> None:
    emu = start("aria")
    assert assert_json(aria(emu, grant_type="password"), 400)["error"] == "unsupported_grant_type"
    assert assert_json(post_form(emu.url, {"client_id": "x"}), 400)["error"] == "invalid_request"


def test_aria_jwt_lifetime_follows_expires_in_override(start: Factory) -> None:
    emu = start("aria", expires_in="1800")
    body = assert_json(aria(emu), 200)
    assert body["expires_in"] == "1800"
    claims = decode_jwt(body["access_token"])
    assert claims["exp"] - claims["iat"] == 1800
    emu.configure(expires_in=OMIT)
    body = assert_json(aria(emu), 200)
    assert "expires_in" not in body
    claims = decode_jwt(body["access_token"])
    assert claims["exp"] - claims["iat"] == 3600  # the client can still fall back to the JWT exp


# --- Autopay ------------------------------------------------------------------------------------


def test_autopay_success_and_recording(start: Factory) -> None:
    emu = start("autopay")
    body = assert_json(autopay(emu), 200)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["scope"] == "payments:read payments:write"
    assert body["access_token"].startswith("eyJ")
    claims = decode_jwt(body["access_token"], emu.jwt_key)
    assert claims["exp"] - claims["iat"] == 86400
    [req] = emu.requests
    client_id, secret = creds("autopay")
    assert req.headers["content-type"] == "application/json"
    assert req.json == {
        "client_id": client_id,
        "client_secret": secret,
        "audience": "",
        "grant_type": "client_credentials",
    }
    assert req.form is None


def test_autopay_configurable_scope_and_path(start: Factory) -> None:
    emu = start("autopay", scope="payments:read", token_path="/api/v1/token")
    assert emu.url.endswith("/api/v1/token")
    assert assert_json(autopay(emu), 200)["scope"] == "payments:read"


@pytest.mark.parametrize(
    "overrides", [{"client_secret": "wrong"}, {"client_id": "nobody"}, {"client_id": 42}]
)
def test_autopay_bad_credentials_are_401_access_denied(start: Factory, overrides: dict[str, Any]) -> None:
    emu = start("autopay")
    assert assert_json(autopay(emu, **overrides), 401) == {
        "error": "access_denied",
        "error_description": "Unauthorized",
    }


def test_autopay_json_content_type_with_charset_and_chunked_body(start: Factory) -> None:
    emu = start("autopay")
    client_id, secret = creds("autopay")
    payload = json.dumps(
        {"client_id": client_id, "client_secret": secret, "audience": "", "grant_type": "client_credentials"}
    ).encode()
    response = requests.post(
        emu.url,
        data=iter([payload[:10], payload[10:]]),  # a generator body is sent chunked
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=TIMEOUT,
    )
    assert_json(response, 200)
    assert emu.requests[0].headers["transfer-encoding"] == "chunked"
    assert emu.requests[0].body == payload


def test_autopay_form_body_is_rejected(start: Factory) -> None:
    emu = start("autopay")
    client_id, secret = creds("autopay")
    data = {
        "client_id": client_id,
        "client_secret": secret,
        "audience": "",
        "grant_type": "client_credentials",
    }
    assert assert_json(post_form(emu.url, data), 400)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"\xff\xfe{}", b"[]", b'"x"'],
)
def test_autopay_malformed_json_is_invalid_request(start: Factory, payload: bytes) -> None:
    emu = start("autopay")
    response = requests.post(
        emu.url, data=payload, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert assert_json(response, 400)["error"] == "invalid_request"


@pytest.mark.parametrize("audience", ["https://api.autopay", None, 0])
def test_autopay_audience_must_be_empty_string(start: Factory, audience: Any) -> None:
    emu = start("autopay")
    assert assert_json(autopay(emu, audience=audience), 400)["error"] == "invalid_request"


def test_autopay_missing_audience_and_grant(start: Factory) -> None:
    emu = start("autopay")
    client_id, secret = creds("autopay")
    body = {"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials"}
    response = requests.post(emu.url, json=body, timeout=TIMEOUT)
    assert assert_json(response, 400)["error"] == "invalid_request"
    assert assert_json(autopay(emu, grant_type="password"), 400)["error"] == "unsupported_grant_type"


# --- Alternative Payments ----------------------------------------------------------------------


def test_alternative_payments_success_and_recording(start: Factory) -> None:
    emu = start("alternative-payments")
    assert emu.token_path == "/oauth/token"
    body = assert_json(alt_payments(emu), 200)
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    token = body["access_token"]
    assert len(token) == 56
    assert all(c in "0123456789abcdef" for c in token)
    [req] = emu.requests
    assert req.basic_auth == creds("alternative-payments")
    assert req.form == {"grant_type": ["client_credentials"]}


@pytest.mark.parametrize("auth", [None, ("local-alternative-payments-client", "wrong")])
def test_alternative_payments_bad_credentials_are_403_message(
    start: Factory, auth: tuple[str, str] | None
) -> None:
    emu = start("alternative-payments")
    body = assert_json(alt_payments(emu, auth=auth), 403)
    assert body == {"message": "Invalid credentials"}
    assert "error" not in body


def test_alternative_payments_body_is_grant_type_only(start: Factory) -> None:
    emu = start("alternative-payments")
    client_id, secret = creds("alternative-payments")
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    body = assert_json(alt_payments(emu, data=data), 400)
    assert "message" in body
    assert "error" not in body
    assert secret not in body["message"]
    assert "message" in assert_json(alt_payments(emu, data={"grant_type": "password"}), 400)


def test_duplicate_form_parameters_are_rejected(start: Factory) -> None:
    emu = start("alternative-payments")
    assert assert_json(
        alt_payments(emu, data="grant_type=client_credentials&grant_type=client_credentials"), 400
    )


# --- A provider with default EmulatorRules: a plain RFC 6749 server ---------------------------------


def test_public_constants_derive_from_the_catalogue() -> None:
    assert tuple(entry.name for entry in catalogue.CATALOGUE) == ROUTES
    assert catalogue.by_name()["pyng"].emulator.scopes == PYNG_SCOPES
    assert {route: local_credentials(route) for route in ROUTES} == LOCAL_CREDENTIALS


def standard_request(profile: ClientCredentialsProfile, emu: ProviderEmulator, scope: str = "") -> requests.Response:
    """The request the service's own client sends for this profile (its build_request), to this emulator."""
    client_id, secret = emu.credentials
    headers, body = profile.build_request(client_id=client_id, client_secret=secret, scope=scope, audience="")
    return requests.post(emu.url, data=body, headers=headers, timeout=TIMEOUT)


@pytest.mark.parametrize("auth", [ClientAuth.BASIC_HEADER, ClientAuth.FORM_BODY])
def test_a_profile_without_emulator_rules_gets_a_standards_server(start: Factory, auth: ClientAuth) -> None:
    profile = ClientCredentialsProfile(name="acme", auth=auth, scope=ScopeMode.OPTIONAL)
    assert profile.emulator == EmulatorRules()
    # RFC 6749 2.3.1 form-urlencodes id and secret inside Basic: a standards server decodes them.
    emu = start(profile, client_id="urn:acme:svc-1", client_secret="s:e/c r+t%2F é")
    assert (emu.route, emu.token_path) == ("acme", "/oauth/token")
    response = standard_request(profile, emu)
    body = assert_json(response, 200)
    assert list(body) == ["access_token", "token_type", "expires_in"]
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    scoped = assert_json(standard_request(profile, emu, scope="read write read"), 200)
    assert list(scoped) == ["access_token", "token_type", "expires_in", "scope"]
    assert scoped["scope"] == "read write"
    assert emu.issued == [body, scoped]


def test_standards_server_errors_are_rfc6749_5_2(start: Factory) -> None:
    emu = start(ClientCredentialsProfile(name="acme", auth=ClientAuth.BASIC_HEADER))
    client_id, secret = local_credentials("acme")
    assert emu.credentials == (client_id, secret)
    refused = {"error": "invalid_client", "error_description": "Client authentication failed"}
    response = post_form(emu.url, {"grant_type": "client_credentials"}, auth=(client_id, "wrong"))
    assert assert_json(response, 401) == refused
    assert response.headers["WWW-Authenticate"] == "Basic"  # Basic was used (RFC 6749 5.2)
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "wrong"}
    response = post_form(emu.url, data)
    assert assert_json(response, 401) == refused
    assert "WWW-Authenticate" not in response.headers
    assert assert_json(post_form(emu.url, {"grant_type": "password"}, auth=(client_id, secret)), 400) == {
        "error": "unsupported_grant_type", "error_description": "Unsupported grant type"}
    assert assert_json(post_form(emu.url, {"scope": "x"}, auth=(client_id, secret)), 400) == {
        "error": "invalid_request", "error_description": "Missing grant_type parameter"}
    data["client_secret"] = secret  # client_secret_post works as well
    assert_json(post_form(emu.url, data), 200)


def test_a_new_catalogue_entry_needs_no_other_change(monkeypatch: pytest.MonkeyPatch) -> None:
    sixth = ClientCredentialsProfile(name="one-more", auth=ClientAuth.BASIC_HEADER)
    monkeypatch.setattr(catalogue, "CATALOGUE", (*catalogue.CATALOGUE, sixth))
    with EmulatorFleet() as fleet:
        assert list(fleet.urls()) == [*ROUTES, "one-more"]
        assert_json(standard_request(sixth, fleet["one-more"]), 200)
        assert_json(SUCCESS["pyng"](fleet["pyng"]), 200)
    with ProviderEmulator("one-more") as emu:
        assert_json(standard_request(sixth, emu), 200)


def test_a_route_outside_the_catalogue_may_bring_its_rules(start: Factory) -> None:
    emu = start("elsewhere", rules=EmulatorRules(path="/token", token_prefix="tok_", expires_in=60))
    client_id, secret = local_credentials("elsewhere")
    body = assert_json(post_form(emu.url, {"grant_type": "client_credentials"}, auth=(client_id, secret)), 200)
    assert body["access_token"].startswith("tok_")
    assert body["expires_in"] == 60
    with pytest.raises(ValueError, match="response_fields"):
        ProviderEmulator("elsewhere", rules=EmulatorRules(response_fields=("access_token", "id_token")))


# --- Overrides -----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", DOCUMENTED)
def test_expires_in_override_as_numeric_string_and_omitted(start: Factory, route: str) -> None:
    emu = start(route, expires_in="3600")
    body = assert_json(SUCCESS[route](emu), 200)
    assert body["expires_in"] == "3600"
    assert '"expires_in":"3600"' in json.dumps(body, separators=(",", ":"))
    emu.configure(expires_in=OMIT)
    body = assert_json(SUCCESS[route](emu), 200)
    assert "expires_in" not in body
    assert "access_token" in body
    assert "token_type" in body
    emu.configure(expires_in=None)  # back to the provider's default
    assert isinstance(assert_json(SUCCESS[route](emu), 200)["expires_in"], int)


def test_token_type_override(start: Factory) -> None:
    emu = start("invoice-cloud", token_type="bearer")
    assert assert_json(invoice_cloud(emu), 200)["token_type"] == "bearer"


@pytest.mark.parametrize("route", DOCUMENTED)
def test_set_credentials_rotation(start: Factory, route: str) -> None:
    emu = start(route)
    assert_json(SUCCESS[route](emu), 200)
    emu.set_credentials("rotated-id", "rotated-secret")
    assert emu.credentials == ("rotated-id", "rotated-secret")
    old = SUCCESS[route](emu)
    assert old.status_code in (400, 401, 403)
    emu.set_credentials(*creds(route))
    assert_json(SUCCESS[route](emu), 200)


def test_rotated_credentials_are_accepted(start: Factory) -> None:
    emu = start("pyng", client_id="id-2", client_secret="s:e:c/r+e t")
    assert assert_json(pyng(emu, auth=("id-2", "s:e:c/r+e t")), 200)
    assert emu.requests[0].basic_auth == ("id-2", "s:e:c/r+e t")
    assert pyng(emu).status_code == 401


# --- Faults ----------------------------------------------------------------------------------------


def test_enqueued_faults_replace_responses_fifo_and_are_recorded(start: Factory) -> None:
    emu = start("invoice-cloud")
    emu.enqueue(
        Fault(status=503, body={"error": "temporarily_unavailable"}, headers={"Retry-After": "7"}),
        Fault(status=502, body="<html>bad gateway</html>", headers={"Content-Type": "text/html"}),
        Fault(status=200, body=b'{"access_token":"x"'),
    )
    first = invoice_cloud(emu)
    assert first.status_code == 503
    assert first.json() == {"error": "temporarily_unavailable"}
    assert first.headers["Retry-After"] == "7"
    assert first.headers["Content-Type"] == JSON_TYPE
    second = invoice_cloud(emu)
    assert (second.status_code, second.text, second.headers["Content-Type"]) == (
        502,
        "<html>bad gateway</html>",
        "text/html",
    )
    third = invoice_cloud(emu)
    assert third.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        third.json()
    assert_json(invoice_cloud(emu), 200)  # queue exhausted: normal handling again
    assert emu.token_requests == 4
    assert all(r.form_value("grant_type") == "client_credentials" for r in emu.requests)
    assert len(emu.issued) == 1


def test_fault_with_empty_body(start: Factory) -> None:
    emu = start("pyng")
    emu.enqueue(Fault())
    response = pyng(emu)
    assert (response.status_code, response.content) == (500, b"")


def test_drop_fault_gives_a_connection_error(start: Factory) -> None:
    emu = start("autopay")
    emu.enqueue(Fault(drop=True))
    with pytest.raises(requests.ConnectionError):
        autopay(emu)
    assert emu.token_requests == 1
    assert_json(autopay(emu), 200)


def test_delay_fault_exceeding_read_timeout(start: Factory) -> None:
    emu = start("aria")
    emu.enqueue(Fault(status=200, body={"late": True}, delay=1.0))
    client_id, secret = creds("aria")
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    began = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(emu.url, data=data, timeout=(1.0, 0.2))
    assert time.monotonic() - began < 0.9
    assert emu.token_requests == 1


def test_delay_fault_within_read_timeout_still_answers(start: Factory) -> None:
    emu = start("aria")
    emu.enqueue(Fault(status=429, body={"error": "slow_down"}, delay=0.3))
    began = time.monotonic()
    response = aria(emu)
    assert time.monotonic() - began >= 0.3
    assert response.status_code == 429


def test_stop_ends_a_scripted_hang_promptly(start: Factory) -> None:
    emu = start("alternative-payments")
    emu.enqueue(Fault(delay=30))
    with pytest.raises(requests.ReadTimeout):
        alt_payments(emu, timeout=(1.0, 0.2))
    began = time.monotonic()
    emu.stop()
    assert time.monotonic() - began < 3


def test_handler_exception_is_a_500_json_not_a_dropped_connection(
    start: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = start("invoice-cloud")

    def boom(*_: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(emu._rules, "evaluate", boom)
    assert assert_json(invoice_cloud(emu), 500)["error"] == "server_error"


def test_reset_clears_requests_issued_and_faults(start: Factory) -> None:
    emu = start("invoice-cloud")
    assert_json(invoice_cloud(emu), 200)
    emu.enqueue(Fault(status=500))
    emu.reset()
    assert (emu.requests, emu.issued, emu.token_requests) == ([], [], 0)
    assert_json(invoice_cloud(emu), 200)


def test_restart_rebinds_same_port(start: Factory) -> None:
    emu = start("invoice-cloud")
    url = emu.url
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        invoice_cloud(emu)
    emu.start()
    assert emu.url == url
    assert_json(invoice_cloud(emu), 200)


# --- Logging ---------------------------------------------------------------------------------------


def test_logs_one_line_per_request_without_secrets_or_tokens(
    start: Factory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    emu = start("aria")
    with caplog.at_level(logging.INFO, logger="local.providers"):
        token = assert_json(aria(emu), 200)["access_token"]
        aria(emu, client_secret="wrong-secret-value")
    lines = [r.getMessage() for r in caplog.records if r.name == "local.providers"]
    assert any("POST /realms/aria/protocol/openid-connect/token -> 200" in line for line in lines)
    assert any("-> 401" in line for line in lines)
    text = "\n".join(lines) + capfd.readouterr().err
    for secret in (creds("aria")[1], "wrong-secret-value", token):
        assert secret not in text


# --- Fleet and command line ----------------------------------------------------------------------


def test_fleet_starts_all_five_on_ephemeral_ports() -> None:
    with EmulatorFleet() as fleet:
        urls = fleet.urls()
        assert list(urls) == list(ROUTES)
        assert len({fleet[r].port for r in ROUTES}) == len(ROUTES)
        for route in ROUTES:
            assert urls[route] == fleet[route].url
        for route in DOCUMENTED:
            assert_json(SUCCESS[route](fleet[route]), 200)
    with pytest.raises(requests.ConnectionError):
        invoice_cloud(fleet["invoice-cloud"])


def _free_port_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports (best effort; the OS could still race)."""
    for base in range(23_000, 60_000, 97):
        sockets: list[socket.socket] = []
        try:
            for offset in range(size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    pytest.skip("no block of free ports")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_main_serves_until_signalled(sig: signal.Signals) -> None:
    base = _free_port_block(len(ROUTES))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.providers", "--port-base", str(base)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in ROUTES]
        for index, (route, line) in enumerate(zip(ROUTES, lines, strict=True)):
            assert line.startswith(route)
            assert f"http://127.0.0.1:{base + index}/" in line
            assert LOCAL_CREDENTIALS[route][0] in line
            assert LOCAL_CREDENTIALS[route][1] not in line
        client_id, secret = creds("invoice-cloud")
        data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        url = f"http://127.0.0.1:{base}/biller/v1/authentication/oauth2/token"
        assert_json(post_form(url, data), 200)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "-> 200" in err
    assert secret not in out + err


@pytest.mark.parametrize("token", ["opaque", "jwt"])
def test_an_entry_s_documented_lifetime_is_what_its_emulator_issues(start: Factory,
                                                                    token: Literal["opaque", "jwt"]) -> None:
    """A provider documented at 300 s gets 300 s tokens locally (``expires_in`` and a JWT's ``exp - iat``),
    without stating it again in its emulator rules."""
    rules = EmulatorRules(token=token, claims=(("iat", "{iat}"), ("exp", "{exp}")) if token == "jwt" else ())
    profile = ClientCredentialsProfile(name="acme", auth=ClientAuth.BASIC_HEADER, lifetime=300, emulator=rules)
    emu = start(profile)
    body = assert_json(standard_request(profile, emu), 200)
    assert body["expires_in"] == 300
    if token == "jwt":
        claims = decode_jwt(body["access_token"], emu.jwt_key)
        assert claims["exp"] - claims["iat"] == 300
