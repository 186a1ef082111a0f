"""No client secret and no whole access token leaks, end to end through the real local stack.

Every scenario runs with sentinel credentials (``SENTINEL-SECRET-<uuid>``, seeded into the secret
store and accepted by the provider emulators) and sentinel tokens (``SENTINEL-TOKEN-<uuid>``, issued
by the emulators), then searches everything a caller or an operator can see:

* every HTTP response of the local API (status line aside: body and every header),
* every direct-invocation answer of the Lambda Invoke API (token bodies and error documents),
* the functions' logs (what their execution environments write: Powertools JSON logs and EMF metrics),
  captured at DEBUG level,
* the test process's own log records of the local API, Lambda service and provider emulators (caplog).

The contract (DESIGN.md): "No response, log line, metric or error ever contains a client secret or a
whole access token." A token may appear in a response only as the ``access_token`` of a token body;
logs may carry a short fingerprint of it, never the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from local.providers import Fault
from local.stack import PROVIDERS
from tests.support.signing import signed_get

if TYPE_CHECKING:
    from collections.abc import Callable

    import requests

    from local.providers import EmulatorFleet
    from local.stack import LocalStack

pytestmark = pytest.mark.integration

FUNCTIONS = {provider.route: provider.function for provider in PROVIDERS}
ROUTES = tuple(FUNCTIONS)
PYNG_SCOPE = "billing:batches:read"
SECRET_PREFIX = "SENTINEL-SECRET-"
TOKEN_PREFIX = "SENTINEL-TOKEN-"
SECRET_WINDOW = 12
BASIC_WINDOW = 16


@dataclass
class Sentinels:
    """Unique credentials per provider and every token issued during one test."""

    credentials: dict[str, tuple[str, str]] = field(default_factory=lambda: {
        route: (f"sentinel-id-{route}-{uuid.uuid4().hex[:8]}", f"{SECRET_PREFIX}{uuid.uuid4()}") for route in ROUTES})
    tokens: list[str] = field(default_factory=list)

    def new_token(self) -> str:
        token = f"{TOKEN_PREFIX}{uuid.uuid4()}"
        self.tokens.append(token)
        return token

    def secret_forms(self) -> dict[str, list[str]]:
        """Every spelling of a secret that would give it away: as is, any 12 characters of its random
        part (a truncated echo still leaks most of it), and the HTTP Basic credentials built from it
        (what Pyng and Alternative Payments receive), whole or any 16 characters encoding only secret
        bytes."""
        forms: dict[str, list[str]] = {}
        for route, (client_id, secret) in self.credentials.items():
            random_part = secret.removeprefix(SECRET_PREFIX)
            forms[f"{route} client secret"] = [secret] + [
                random_part[start:start + SECRET_WINDOW] for start in range(len(random_part) - SECRET_WINDOW + 1)]
            basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            first = -(-(len(client_id) + 1 + len(SECRET_PREFIX)) // 3) * 4  # first base64 group of secret bytes only
            forms[f"{route} client secret as HTTP Basic credentials"] = [basic] + [
                basic[start:start + BASIC_WINDOW] for start in range(first, len(basic) - BASIC_WINDOW - 3, 4)]
        return forms


def excerpt(text: str, needle: str, width: int = 160) -> str:
    at = text.find(needle)
    return text[max(0, at - width): at + len(needle) + width]


def settled(read: Callable[[], str], quiet: float = 0.4, limit: float = 10.0) -> str:
    """The functions' logs arrive through pipes: wait until nothing more has come for a moment."""
    text, since, deadline = read(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        latest = read()
        if latest != text:
            text, since = latest, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return text


@dataclass
class Seen:
    """One thing a caller saw: an HTTP response or a direct-invocation answer."""

    what: str
    status: int | str
    headers: dict[str, str]
    body: str

    def token_body(self) -> dict[str, Any] | None:
        """The parsed token body when this is a successful token answer, else ``None``."""
        if self.status not in (200, "ok"):
            return None
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(document, dict) and isinstance(document.get("access_token"), str):
            return document
        return None


class LeakAudit:
    """Drives one stack, records what callers see, and checks it (and the logs) for sentinels."""

    def __init__(self, stack: LocalStack, emulators: EmulatorFleet, sentinels: Sentinels,
                 caplog: pytest.LogCaptureFixture) -> None:
        self.stack = stack
        self.emulators = emulators
        self.sentinels = sentinels
        self.caplog = caplog
        self.seen: list[Seen] = []
        self.emulator_tokens: list[str] = []
        self.lambda_client = boto3.client(
            "lambda", endpoint_url=stack.lambda_url, region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(read_timeout=60, retries={"max_attempts": 1}))
        for route, (client_id, secret) in sentinels.credentials.items():
            emulators[route].set_credentials(client_id, secret)

    # -- driving ------------------------------------------------------------------------------
    def issue(self, route: str, **extra: Any) -> str:
        """The next token request to ``route`` is answered with a fresh sentinel token."""
        token = self.sentinels.new_token()
        self.emulators[route].enqueue(Fault(status=200, body={
            "access_token": token, "token_type": "Bearer", "expires_in": 3600,
            **({"scope": PYNG_SCOPE} if route == "pyng" else {}), **extra}))
        return token

    def get(self, route: str, params: dict[str, Any] | list[tuple[str, str]] | None = None) -> requests.Response:
        response = signed_get(f"{self.stack.api_url}{route}", params=params, timeout=60)
        self.seen.append(Seen(f"GET /token/{route} {params}", response.status_code, dict(response.headers),
                              response.text))
        return response

    def invoke(self, route: str, payload: Any) -> tuple[Any, str | None]:
        response = self.lambda_client.invoke(FunctionName=FUNCTIONS[route], Payload=json.dumps(payload).encode())
        raw = response["Payload"].read().decode()
        error = response.get("FunctionError")
        headers = {key: str(value) for key, value in response["ResponseMetadata"].get("HTTPHeaders", {}).items()}
        self.seen.append(Seen(f"invoke {FUNCTIONS[route]} {payload}", "error" if error else "ok", headers, raw))
        return json.loads(raw), error

    def sent_secret(self, route: str, index: int = -1) -> str | None:
        """The client secret the provider emulator received in a request (proves the secret flowed)."""
        request = self.emulators[route].requests[index]
        if request.basic_auth is not None:
            return request.basic_auth[1]
        if request.json is not None:
            return str(request.json.get("client_secret"))
        return request.form_value("client_secret")

    def forget_emulator_state(self) -> None:
        """Between scenarios: keep the tokens the emulators issued (they must not leak either)."""
        for route in ROUTES:
            self.emulator_tokens.extend(str(body.get("access_token")) for body in self.emulators[route].issued)
            self.emulators[route].reset()

    # -- checking -----------------------------------------------------------------------------
    def tokens(self) -> dict[str, list[str]]:
        """Whole tokens (and a sentinel token's random part); a short prefix or fingerprint is fine."""
        self.forget_emulator_state()
        forms = {f"token {token[:24]}...": [token, token.removeprefix(TOKEN_PREFIX)] for token in self.sentinels.tokens}
        forms.update({f"emulator-issued token {token[:12]}...": [token] for token in self.emulator_tokens})
        return forms

    def check(self) -> None:
        secrets = self.sentinels.secret_forms()
        tokens = self.tokens()
        problems: list[str] = []

        def search(source: str, text: str, forms: dict[str, list[str]]) -> None:
            for label, needles in forms.items():
                found = next((needle for needle in needles if needle in text), None)
                if found is not None:
                    problems.append(f"{label} ({found!r}) in {source}: ...{excerpt(text, found)}...")

        for item in self.seen:
            headers = "\n".join(f"{key}: {value}" for key, value in item.headers.items())
            token_body = item.token_body()
            # A token may be in a successful token body's access_token, and nowhere else.
            rest = (json.dumps({key: value for key, value in token_body.items() if key != "access_token"})
                    if token_body is not None else item.body)
            search(f"the body of {item.what} -> {item.status}", item.body, secrets)
            search(f"the headers of {item.what} -> {item.status}", headers, {**secrets, **tokens})
            search(f"the body of {item.what} -> {item.status}", rest, tokens)
        logs = settled(self.stack.logs.text)  # type: ignore[attr-defined]
        assert '"level"' in logs, "the functions' logs were not captured"
        search("the functions' logs", logs, {**secrets, **tokens})
        search("the local API/emulators' logs", "\n".join(record.getMessage() for record in self.caplog.records),
               {**secrets, **tokens})
        assert not problems, "\n".join(problems)


@pytest.fixture
def audit(make_stack: Any, emulators: EmulatorFleet, caplog: pytest.LogCaptureFixture
          ) -> Callable[..., LeakAudit]:
    caplog.set_level(logging.DEBUG, logger="local")

    def start(**overrides: Any) -> LeakAudit:
        sentinels = Sentinels()
        function_env = {"POWERTOOLS_LOG_LEVEL": "DEBUG", **overrides.pop("function_env", {})}
        stack = make_stack(credentials=dict(sentinels.credentials), function_env=function_env, **overrides)
        return LeakAudit(stack, emulators, sentinels, caplog)

    return start


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


# -- scenarios ------------------------------------------------------------------------------------
def test_success_cache_hit_and_forced_refresh_leak_nothing(audit: Callable[..., LeakAudit]) -> None:
    run = audit(function_env={"FORCE_REFRESH_INTERVAL": "0"})
    for route in ROUTES:
        params = {"scope": PYNG_SCOPE} if route == "pyng" else None
        first = run.issue(route)
        response = run.get(route, params)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"] == first
        assert run.sent_secret(route) == run.sentinels.credentials[route][1]  # the secret really flowed
        # Cache hit: no new upstream request, same token.
        again = run.get(route, params)
        assert again.json()["access_token"] == first
        assert run.emulators[route].token_requests == 1
        # Forced refresh: a new token.
        second = run.issue(route)
        forced = run.get(route, {**(params or {}), "force_refresh": "true"})
        assert forced.status_code == 200, forced.text
        assert forced.json()["access_token"] == second
        assert run.emulators[route].token_requests == 2
        # And one the emulator makes up itself (a JWT for Aria and Autopay).
        own = run.get(route, {**(params or {}), "force_refresh": "true"})
        assert own.status_code == 200, own.text
        assert own.json()["access_token"] == run.emulators[route].issued[-1]["access_token"]
    run.check()
    # Logs identify tokens by fingerprint, which is what operators correlate on.
    logs = settled(run.stack.logs.text)  # type: ignore[attr-defined]
    assert _fingerprint(run.sentinels.tokens[0]) in logs


BASIC_AUTH_ROUTES = frozenset({"pyng", "alternative-payments"})


def _echo_of_request(route: str, client_id: str, secret: str) -> str:
    """What the provider received, quoted back verbatim by a chatty error message."""
    if route in BASIC_AUTH_ROUTES:
        return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    if route == "autopay":
        return json.dumps({"client_id": client_id, "client_secret": secret, "audience": "",
                           "grant_type": "client_credentials"})
    return f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}"


@pytest.mark.parametrize("echo", ["error_description", "error", "request"])
def test_rejected_credentials_echoed_by_the_provider_leak_nothing(audit: Callable[..., LeakAudit],
                                                                  echo: str) -> None:
    """The provider refuses the credentials and quotes them back: in its description, in its error
    code, or by echoing the request it received (Authorization header or body)."""
    run = audit()
    for route in ROUTES:
        client_id, secret = run.sentinels.credentials[route]
        quoted = {"error_description": f"bad secret {secret} for client {client_id}",
                  "error": f"invalid_client:{secret}",
                  "request": _echo_of_request(route, client_id, secret)}[echo]
        if route == "alternative-payments":  # its documented error body: an object of strings, no OAuth error
            body: dict[str, Any] = {"message": quoted}
            status = 403
        else:
            error = quoted if echo == "error" else ("access_denied" if route == "autopay" else "invalid_client")
            body = {"error": error, "error_description": quoted if echo != "error" else "Unauthorized"}
            status = 400 if route == "invoice-cloud" else 401
        run.emulators[route].enqueue(*[Fault(status=status, body=body)] * 2)
        response = run.get(route, {"scope": PYNG_SCOPE} if route == "pyng" else None)
        assert response.status_code == 502, response.text
        assert response.json()["error"] == "upstream_rejected"
        assert run.sent_secret(route, 0) == secret
        if route in BASIC_AUTH_ROUTES:  # the echo is exactly what the provider received
            assert run.emulators[route].requests[0].headers["authorization"] == _echo_of_request(
                route, client_id, secret)
        run.forget_emulator_state()
        # The same refusal through direct invocation.
        run.emulators[route].enqueue(*[Fault(status=status, body=body)] * 2)
        document, function_error = run.invoke(route, {"force_refresh": True})
        assert function_error == "Unhandled"
        assert document["errorType"] == "UpstreamRejected"
        run.forget_emulator_state()
    run.check()


def end_cool_downs(stack: Any) -> None:
    """Delete lease items, as if every failed refresh's cool-down had lapsed."""
    client = stack.client("dynamodb")
    for item in client.scan(TableName=stack.config.table_name)["Items"]:
        if item["sk"]["S"].startswith("lease#"):
            client.delete_item(TableName=stack.config.table_name, Key={"pk": item["pk"], "sk": item["sk"]})


def test_provider_errors_carrying_the_token_leak_nothing(audit: Callable[..., LeakAudit]) -> None:
    """The provider fails (5xx, or 2xx without a usable token) with a token in its answer."""
    run = audit(provider_env={route: {"UPSTREAM_RETRIES": "1"} for route in ROUTES})
    for route in ROUTES:
        params = {"scope": PYNG_SCOPE} if route == "pyng" else None
        token = run.sentinels.new_token()
        server_error = Fault(status=500, body={"access_token": token, "token_type": "Bearer", "expires_in": 3600,
                                               "error": "server_error", "error_description": f"oops {token}"})
        run.emulators[route].enqueue(server_error, server_error)
        response = run.get(route, params)
        assert response.status_code == 503, response.text
        token = run.sentinels.new_token()
        for unusable in ({"access_token": token, "token_type": "mac", "expires_in": 3600},
                         {"access_token": token, "token_type": "Bearer", "expires_in": "soon"},
                         {"access_token": token, "token_type": "Bearer", "expires_in": -5}):
            end_cool_downs(run.stack)  # a failed refresh holds callers off for a while: skip the wait
            run.emulators[route].enqueue(Fault(status=200, body=unusable))
            response = run.get(route, params)
            assert response.status_code == 502, response.text
            assert response.json()["error"] == "upstream_invalid_response"
        end_cool_downs(run.stack)
        run.emulators[route].enqueue(Fault(status=200, body=f"access_token={token}&token_type=bearer"))
        document, error = run.invoke(route, {"scope": PYNG_SCOPE} if route == "pyng" else {})
        assert error == "Unhandled"
        assert document["errorType"] == "UpstreamInvalidResponse"
        run.forget_emulator_state()
    run.check()


@pytest.mark.parametrize("malformed", [
    lambda client_id, secret: json.dumps({"client_secret": secret}),
    lambda client_id, secret: json.dumps({"client_id": client_id, "client_secret": [secret]}),
    lambda client_id, secret: json.dumps({"client_id": client_id, "client_secret": {"value": secret}}),
    lambda client_id, secret: f'{{"client_id": "{client_id}", "client_secret": "{secret}"',
    lambda client_id, secret: f"client_id={client_id}&client_secret={secret}",
    lambda client_id, secret: json.dumps([client_id, secret]),
], ids=["missing-id", "secret-in-list", "secret-in-object", "truncated-json", "form-encoded", "json-array"])
def test_malformed_secret_leaks_nothing(audit: Callable[..., LeakAudit],
                                        malformed: Callable[[str, str], str]) -> None:
    run = audit()
    secrets = run.stack.client("secretsmanager")
    for route in ROUTES:
        client_id, secret = run.sentinels.credentials[route]
        secrets.put_secret_value(SecretId=run.stack.secret_name(route), SecretString=malformed(client_id, secret))
        response = run.get(route, {"scope": PYNG_SCOPE} if route == "pyng" else None)
        assert response.status_code == 500, response.text
        assert response.json()["error"] == "misconfigured"
        document, error = run.invoke(route, {})
        assert error == "Unhandled"
        assert document["errorType"] == "Misconfigured"
        assert run.emulators[route].token_requests == 0
    run.check()


def test_bad_query_parameters_and_payloads_carrying_secrets_and_tokens_leak_nothing(
        audit: Callable[..., LeakAudit]) -> None:
    """A caller pastes a token (or a secret it should not have) into parameters: nothing echoes it."""
    run = audit()
    token = run.issue("pyng")
    assert run.get("pyng", {"scope": PYNG_SCOPE}).json()["access_token"] == token
    secret = run.sentinels.credentials["pyng"][1]
    for value in (token, secret, f"{PYNG_SCOPE} {token}", f"{PYNG_SCOPE}\n{secret}"):
        for params in ({"scope": value}, {"min_ttl": value}, {"force_refresh": value}, {"access_token": value},
                       {"client_secret": value, "scope": PYNG_SCOPE}, [("scope", PYNG_SCOPE), ("scope", value)]):
            response = run.get("pyng", params)
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error"] == "invalid_request"
        for payload in ({"scope": value}, {"min_ttl": value}, {"force_refresh": value}, {"access_token": value},
                        [value], value):
            document, error = run.invoke("pyng", payload)
            assert error == "Unhandled", document
            assert document["errorType"] == "InvalidRequest"
    response = run.get("no-such-provider", {"scope": token})
    assert response.status_code == 404
    assert run.emulators["pyng"].token_requests == 1
    run.check()


def test_direct_invocation_success_and_cache_hits_leak_nothing(audit: Callable[..., LeakAudit]) -> None:
    run = audit()
    for route in ROUTES:
        payload = {"scope": PYNG_SCOPE, "min_ttl": 60, "force_refresh": False} if route == "pyng" else {}
        token = run.issue(route)
        document, error = run.invoke(route, payload)
        assert error is None, document
        assert document["access_token"] == token
        document, error = run.invoke(route, payload)  # served from the cache
        assert error is None, document
        assert document["access_token"] == token
        assert run.emulators[route].token_requests == 1
        assert run.get(route, payload or None).json()["access_token"] == token  # and through the API
    run.check()
