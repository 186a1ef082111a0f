"""The events in events/ and the contract's responses, through the real handlers with in-process moto."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from local.stack import PROVIDERS as DEPLOYED
from tests.unit.conftest import REPO_ROOT, TABLE, load_app
from token_vending.catalogue import connection
from token_vending.exceptions import UpstreamRejected

EVENTS = REPO_ROOT / "events"
ROUTES = {provider.route: provider.route for provider in DEPLOYED}
"""Route (connection name) -> what ``load_app`` loads for it (the one provider function as that connection's copy):
the connections the template deploys by default."""
PYNG_SCOPES = "billing:customers:invite billing:customers:read billing:batches:submit billing:batches:read"
SCOPES = {provider.route: provider.environment.get("ALLOWED_SCOPES", "") for provider in DEPLOYED}
"""Route -> the scopes its template parameters grant by default (what ``events/`` requests from)."""


def _lifetime(route: str) -> int:
    profile = connection(route)
    assert profile is not None, route
    return profile.lifetime


PROVIDERS = {route: {"function": f"{route}-fn", "lifetime": _lifetime(route)} for route in ROUTES}
"""The token API's ``PROVIDERS`` (as ``sam local`` has it): functions and lifetimes, no scopes."""


def seed(client: Any, route: str, scope_key: str, token: str, expires_in: int = 3000) -> None:
    now = time.time()
    client.put_item(TableName=TABLE, Item={
        "pk": {"S": route}, "sk": {"S": f"token#{scope_key}"}, "access_token": {"S": token},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now + expires_in))},
        "fetched_at": {"N": str(now - 600)}, "lifetime": {"N": "3600"}, "purge_at": {"N": str(int(now) + 9999)}})


class PyngFunction:
    """A Lambda client whose every invoke is Pyng's function answering with ``token``, fresh for 800 s."""

    def __init__(self, token: str) -> None:
        self.token = token

    def invoke(self, **_: Any) -> dict[str, Any]:
        import io

        body = {"provider": "pyng", "access_token": self.token, "token_type": "Bearer", "expires_in": 800,
                "expires_at": int(time.time()) + 800, "scope": PYNG_SCOPES}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(body).encode())}


def scope_key_of(raw: str | None, route: str) -> str:
    """The cache key of a request's ``scope``: ``""`` when it names none (the connection's default scopes)."""
    del route  # every connection keys alike
    return " ".join(sorted(set((raw or "").split())))


@pytest.fixture
def api_app(moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("PROVIDERS", json.dumps(PROVIDERS))
    return load_app("token_api")


@pytest.mark.parametrize("route", list(ROUTES))
def test_api_event_files_are_served_from_the_cache(api_app: Any, moto_table: Any, context: Any, route: str) -> None:
    event = json.loads((EVENTS / f"api-{route}.json").read_text())
    assert event["resource"] == "/token/{provider}"
    assert event["pathParameters"] == {"provider": route}
    raw_scope = (event.get("queryStringParameters") or {}).get("scope")
    seed(moto_table, route, scope_key_of(raw_scope, route), f"cached-{route}", expires_in=86000)
    response = api_app.handler(event, context)
    assert response["statusCode"] == 200, response["body"]
    assert response["headers"]["Cache-Control"] == "no-store"
    assert response["headers"]["Pragma"] == "no-cache"
    body = json.loads(response["body"])
    assert body["access_token"] == f"cached-{route}"
    assert body["token_type"] == "Bearer"


@pytest.mark.parametrize("route", list(ROUTES))
def test_invoke_event_files_are_served_from_the_cache(moto_table: Any, context: Any, route: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("CONNECTION_NAME", route)
    monkeypatch.setenv("TOKEN_URL", "https://provider.invalid/token")
    monkeypatch.setenv("SECRET_ID", f"token-vending/{route}")
    monkeypatch.setenv("ALLOWED_SCOPES", SCOPES[route])
    event = json.loads((EVENTS / f"invoke-{route}.json").read_text())
    seed(moto_table, route, scope_key_of(event.get("scope"), route), f"cached-{route}")
    body = load_app(ROUTES[route]).handler(event, context)
    assert body["access_token"] == f"cached-{route}"
    assert body["provider"] == route
    assert set(body) == {"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"}


@pytest.mark.parametrize(("error_type", "message", "status", "code"), [
    ("UpstreamRejected", str(UpstreamRejected("refused", upstream_error="invalid_client", provider="pyng")), 502,
     "upstream_rejected"),
    ("UpstreamUnavailable", json.dumps({"error": "upstream_unavailable", "error_description": "down",
                                        "retry_after": 30}), 503, "upstream_unavailable"),
    ("UpstreamTimeout", "{}", 504, "upstream_timeout"),
    ("Misconfigured", "not json", 500, "misconfigured"),
    ("Sandbox.Timedout", "Task timed out after 25.00 seconds", 504, "upstream_timeout"),
    ("KeyError", "'x'", 500, "internal_error"),
])
def test_provider_function_errors_become_contract_responses(api_app: Any, context: Any, error_type: str,
                                                            message: str, status: int, code: str) -> None:
    class FakeLambda:
        def invoke(self, **_: Any) -> dict[str, Any]:
            import io

            payload = json.dumps({"errorType": error_type, "errorMessage": message, "stackTrace": ["secret"]})
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": io.BytesIO(payload.encode())}

    api_app.api.lambda_client = FakeLambda()
    event = json.loads((EVENTS / "api-pyng.json").read_text())
    response = api_app.handler(event, context)
    assert response["statusCode"] == status
    body = json.loads(response["body"])
    assert body["error"] == code
    assert body["provider"] == "pyng"
    assert "stackTrace" not in response["body"]
    if code == "upstream_rejected":
        assert body["upstream_error"] == "invalid_client"
    if code == "upstream_unavailable":
        assert response["headers"]["Retry-After"] == "30"


@pytest.mark.parametrize("function_error", ["Unhandled", None])
def test_an_error_document_is_the_functions_error_with_or_without_the_flag(api_app: Any, context: Any,
                                                                          function_error: str | None) -> None:
    """`sam local start-lambda` answers an error whose document carries ``requestId`` (as Lambda's Python runtime
    writes it) without ``X-Amz-Function-Error``: the provider's refusal must still be a 502 upstream_rejected."""
    import io

    document = {"errorMessage": str(UpstreamRejected("refused", upstream_error="invalid_client", provider="pyng")),
                "errorType": "UpstreamRejected", "requestId": "0f1e", "stackTrace": ["  File \"/var/task/app.py\""]}

    class FakeLambda:
        def invoke(self, **_: Any) -> dict[str, Any]:
            answer: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(document).encode())}
            if function_error:
                answer["FunctionError"] = function_error
            return answer

    api_app.api.lambda_client = FakeLambda()
    response = api_app.handler(json.loads((EVENTS / "api-pyng.json").read_text()), context)
    assert response["statusCode"] == 502, response
    body = json.loads(response["body"])
    assert (body["error"], body["upstream_error"], body["provider"]) == ("upstream_rejected", "invalid_client", "pyng")
    assert "stackTrace" not in response["body"]


def test_api_never_raises_on_garbage_events(api_app: Any, context: Any) -> None:
    for event in ({}, {"pathParameters": None}, {"pathParameters": {"provider": 5}},
                  {"pathParameters": {"provider": "pyng"}, "queryStringParameters": "x"},
                  {"pathParameters": {"provider": "pyng"}, "multiValueQueryStringParameters": {"scope": ["a", "b"]}}):
        response = api_app.handler(event, context)
        assert response["statusCode"] in (400, 404)
        assert json.loads(response["body"])["error"] in ("invalid_request", "unknown_provider")


def test_event_files_exist_for_every_provider() -> None:
    names = {path.name for path in Path(EVENTS).glob("*.json")}
    for route in ROUTES:
        assert {f"api-{route}.json", f"invoke-{route}.json"} <= names


def test_a_provider_function_that_outlasts_the_invoke_timeout_is_504(api_app: Any, context: Any) -> None:
    from botocore.exceptions import ReadTimeoutError

    class SlowLambda:
        def invoke(self, **_: Any) -> dict[str, Any]:
            raise ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")

    api_app.api.lambda_client = SlowLambda()
    response = api_app.handler(json.loads((EVENTS / "api-pyng.json").read_text()), context)
    assert response["statusCode"] == 504
    assert json.loads(response["body"])["error"] == "upstream_timeout"


def test_token_grant_repr_hides_the_token() -> None:
    from token_vending.upstream import TokenGrant

    grant = TokenGrant(access_token="secret-token-value", token_type="Bearer", scope=None, lifetime=60,
                       fetched_at=0.0, expires_at=60)
    assert "secret-token-value" not in repr(grant)


def test_cache_hits_make_no_client_they_do_not_need(api_app: Any, moto_table: Any, context: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold starts answered from the cache skip the Lambda client (token API) and the Secrets Manager client
    (provider function): each is made on the first miss or secret read instead."""
    import boto3

    made: list[str] = []
    real = boto3.client

    def recording(service: str, *args: Any, **kwargs: Any) -> Any:
        made.append(service)
        return real(service, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(boto3, "client", recording)
    event = json.loads((EVENTS / "api-pyng.json").read_text())
    seed(moto_table, "pyng", scope_key_of(event["queryStringParameters"]["scope"], "pyng"), "cached", expires_in=86000)
    assert api_app.handler(event, context)["statusCode"] == 200
    monkeypatch.setenv("CONNECTION_NAME", "pyng")
    monkeypatch.setenv("TOKEN_URL", "https://provider.invalid/token")
    monkeypatch.setenv("SECRET_ID", "token-vending/pyng")
    monkeypatch.setenv("ALLOWED_SCOPES", PYNG_SCOPES)
    provider = load_app("pyng")
    payload = json.loads((EVENTS / "invoke-pyng.json").read_text())
    assert provider.handler(payload, context)["access_token"] == "cached"
    assert api_app.api._lambda_client is None
    assert "lambda" not in made
    assert "secretsmanager" not in made
    assert made.count("dynamodb") == 1  # the provider's; the token API's was made before this test recorded


def test_a_forced_refresh_naming_the_cached_token_counts_no_cache_hit(api_app: Any, moto_table: Any, context: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Naming the token still cached delegates to the provider function: that request is a ProviderInvoke, not
    a cache hit; naming another token is served from the cache and counted as a hit."""
    import hashlib

    api_app.api.lambda_client = PyngFunction("fresh")
    event = json.loads((EVENTS / "api-pyng.json").read_text())
    seed(moto_table, "pyng", scope_key_of(event["queryStringParameters"]["scope"], "pyng"), "cached", expires_in=86000)

    def metrics_of(force_refresh: str) -> tuple[str, set[str]]:
        query = {**event["queryStringParameters"], "force_refresh": force_refresh}
        response = api_app.handler({**event, "queryStringParameters": query,
                                    "multiValueQueryStringParameters": {k: [v] for k, v in query.items()}}, context)
        names = set()
        for line in capsys.readouterr().out.splitlines():
            document = json.loads(line) if line.startswith("{") else {}
            for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
                names |= {metric["Name"] for metric in directive["Metrics"]}
        return json.loads(response["body"])["access_token"], names

    served, names = metrics_of(hashlib.sha256(b"cached").hexdigest()[:8])
    assert served == "fresh"
    assert "ProviderInvoke" in names
    assert not names & {"CacheHitMemory", "CacheHitDynamoDB"}
    served, names = metrics_of(hashlib.sha256(b"an-older-token").hexdigest()[:8])
    assert served == "cached"  # (this fake function stored nothing: the table still holds "cached")
    assert "CacheHitDynamoDB" in names
    assert "ProviderInvoke" not in names


def test_a_forced_refresh_naming_a_token_is_never_answered_with_an_older_one_from_memory(
        api_app: Any, moto_table: Any, context: Any) -> None:
    """An environment still remembers token A; B has replaced it in the table, and the caller was refused with B.
    A is not "the token that replaced B": the latest stored token is read (consistently), found to be B, and the
    provider function is asked."""
    import hashlib

    api_app.api.lambda_client = PyngFunction("C")
    event = json.loads((EVENTS / "api-pyng.json").read_text())
    key = scope_key_of(event["queryStringParameters"]["scope"], "pyng")
    seed(moto_table, "pyng", key, "A", expires_in=86000)
    assert json.loads(api_app.handler(event, context)["body"])["access_token"] == "A"  # now in this one's memory
    seed(moto_table, "pyng", key, "B", expires_in=86000)
    query = {**event["queryStringParameters"], "force_refresh": hashlib.sha256(b"B").hexdigest()[:8]}
    response = api_app.handler({**event, "queryStringParameters": query,
                                "multiValueQueryStringParameters": {k: [v] for k, v in query.items()}}, context)
    assert json.loads(response["body"])["access_token"] == "C"


def test_an_incomplete_secret_is_read_again_within_seconds_once_filled_not_after_its_max_age(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A placeholder secret is ``misconfigured`` until it is filled: read again 5 s after it was found incomplete
    (not SecretMaxAge, 300 s), and meanwhile answered without a read on every request."""
    import types

    import boto3
    from moto import mock_aws

    from token_vending import credentials as module
    from token_vending.credentials import CredentialStore
    from token_vending.exceptions import Misconfigured

    clock = [1000.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]), raising=False)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="pyng", SecretString=json.dumps({"client_id": "", "client_secret": ""}))
        reads: list[str] = []
        client.meta.events.register("before-call.secrets-manager.GetSecretValue", lambda **_: reads.append("read"))
        store = CredentialStore("pyng", "pyng", max_age=300, client=client)
        for _ in range(5):
            with pytest.raises(Misconfigured, match="client_id is missing or empty"):
                store.get()
        assert reads == ["read"]  # a broken secret is not read on every request
        client.put_secret_value(SecretId="pyng", SecretString=json.dumps({"client_id": "id", "client_secret": "s"}))
        clock[0] += 5  # docs/operations.md's promise: used within 5 s of being filled
        assert store.get().client_id == "id"
        assert store.get().client_id == "id"
        assert reads == ["read", "read"]  # then cached for its max age again


@pytest.mark.parametrize(("secret", "message"), [
    ('{"client_id": "id", "client_secret": "first", "client_secret": "second"}', "names a field twice"),
    ("[" * 60000, "not a JSON object"),
])
def test_a_secret_that_is_ambiguous_or_too_deep_is_misconfigured(secret: str, message: str) -> None:
    """A secret naming ``client_secret`` twice is not read as its last value (another parser keeps the first),
    and one nested past the parser's depth is no object: both the operator's mistake, never internal_error."""
    import boto3
    from moto import mock_aws

    from token_vending.credentials import CredentialStore
    from token_vending.exceptions import Misconfigured

    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="pyng", SecretString=secret)
        with pytest.raises(Misconfigured, match=message) as caught:
            CredentialStore("pyng", "pyng", max_age=300, client=client).get()
    assert "first" not in str(caught.value)
    assert "second" not in str(caught.value)
