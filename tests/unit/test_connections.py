"""Connections: the catalogue's naming rules, the token API's table, and a connection's function configured by its
secret -- settings over the environment, the ``""`` key, scopes checked before any lease, one partition each
(moto for DynamoDB and Secrets Manager, a token endpoint on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import pytest

from tests.unit.conftest import TABLE, load_app
from tests.unit.test_hostile_input import TokenEndpoint
from token_vending import catalogue
from token_vending.catalogue import CATALOGUE, KEYS, connection, connection_name, entry
from token_vending.exceptions import InvalidRequest, Misconfigured
from token_vending.profile import BasicEncoding, ClientAuth, EmulatorRules, ScopeMode
from token_vending.settings import ApiSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

PYNG_SCOPES = "billing:batches:read billing:customers:read"


# --- names ---------------------------------------------------------------------------------------------------
def test_the_catalogue_keys_and_the_generic_oauth2_entry() -> None:
    # the five providers, then the generic one (a provider added by the guide comes after them)
    assert KEYS[:6] == ("InvoiceCloud", "Pyng", "Aria", "Autopay", "AlternativePayments", "OAuth2")
    assert tuple(profile.key for profile in CATALOGUE) == KEYS
    oauth2 = entry("oauth2")
    assert oauth2 is not None
    assert oauth2.key == "OAuth2"  # not CamelCase's "Oauth2": the template's Connections pattern names OAuth2
    assert (oauth2.auth, oauth2.basic_encoding, oauth2.scope) == (ClientAuth.BASIC_HEADER, BasicEncoding.RFC6749,
                                                                  ScopeMode.OPTIONAL)
    assert oauth2.lifetime == 3600
    assert not oauth2.endpoints
    assert oauth2.credential_error_codes == {"invalid_client"}
    assert oauth2.emulator == EmulatorRules()  # a plain RFC 6749 server
    assert oauth2.provider == "oauth2"
    assert "OAuth2" not in catalogue.DEFAULT_CONNECTIONS
    assert set(catalogue.DEFAULT_CONNECTIONS) < set(KEYS)


@pytest.mark.parametrize(("name", "provider", "key"), [
    ("invoice-cloud", "invoice-cloud", "InvoiceCloud"), ("pyng", "pyng", "Pyng"), ("aria", "aria", "Aria"),
    ("autopay", "autopay", "Autopay"), ("alternative-payments", "alternative-payments", "AlternativePayments"),
    ("oauth2", "oauth2", "OAuth2"),
    ("AriaAu", "aria", "AriaAu"), ("PyngOrg2", "pyng", "PyngOrg2"), ("AutopaySandbox", "autopay", "AutopaySandbox"),
    ("OAuth2Acme", "oauth2", "OAuth2Acme"), ("InvoiceCloud2", "invoice-cloud", "InvoiceCloud2"),
    ("AlternativePaymentsEu", "alternative-payments", "AlternativePaymentsEu"),
])
def test_a_connection_is_its_providers_entry_under_its_own_name(name: str, provider: str, key: str) -> None:
    profile = connection(name)
    assert profile is not None
    assert (profile.name, profile.provider, profile.key) == (name, provider, key)
    assert replace(profile, name=provider, template_key="", provider="") == replace(
        entry(provider), template_key="", provider="")  # type: ignore[arg-type]
    assert connection_name(key) == name


@pytest.mark.parametrize("name", [
    "Aria", "Pyng", "OAuth2", "InvoiceCloud",  # a key alone is no added connection: its name is the entry's
    "Oauth2Acme", "ariaAu", "ARIAAu", "paypal", "", "Aria-Au", "AriaAu ", "Aria_Au", "AriaÄu", "aria-au", "pyng2",
])
def test_a_name_that_fits_no_entry_is_no_connection(name: str) -> None:
    assert connection(name) is None


def test_the_longest_catalogue_key_that_prefixes_a_name_is_its_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """With entries ``Aria`` and ``AriaAu`` (say, a provider of its own for Aria's AUS region), ``AriaAuSyd`` is
    ``AriaAu``'s connection, ``AriaEu`` Aria's, and ``AriaAu`` is no connection but the entry's key."""
    aria = entry("aria")
    assert aria is not None
    aria_au = replace(aria, name="aria-au", lifetime=1800)
    monkeypatch.setattr(catalogue, "CATALOGUE", (*CATALOGUE, aria_au))
    assert catalogue.connection("AriaAuSyd").provider == "aria-au"  # type: ignore[union-attr]
    assert catalogue.connection("AriaAuSyd").lifetime == 1800  # type: ignore[union-attr]
    assert catalogue.connection("AriaEu").provider == "aria"  # type: ignore[union-attr]
    assert catalogue.connection("AriaAu") is None
    assert catalogue.connection("aria-au") == aria_au
    assert catalogue.connection_name("AriaAu") == "aria-au"


def test_key_to_name() -> None:
    assert [connection_name(key) for key in KEYS] == [profile.name for profile in CATALOGUE]
    assert connection_name("AriaAu") == "AriaAu"
    assert connection_name("Whatever") == "Whatever"


# --- the token API's table -------------------------------------------------------------------------------------
def test_the_token_api_knows_a_connection_by_its_function_variable() -> None:
    env = {"CACHE_TABLE_NAME": "t", "FUNCTION_InvoiceCloud": "ic-fn", "FUNCTION_AriaAu": "aria-au-fn",
           "FUNCTION_OAuth2Acme": "acme-fn", "FUNCTION_Autopay": " ", "FUNCTION_PayPal": "paypal-fn",
           "FUNCTION_Aria-Au": "x", "SCOPES_Pyng": "ignored"}
    table = ApiSettings.from_env(env).providers
    assert set(table) == {"invoice-cloud", "AriaAu", "OAuth2Acme"}
    assert (table["AriaAu"].function, table["AriaAu"].provider, table["AriaAu"].lifetime) == ("aria-au-fn", "aria",
                                                                                             3600)
    assert table["invoice-cloud"].takes_scope is False  # Invoice Cloud takes no scope: refused from the catalogue
    assert table["AriaAu"].takes_scope is True
    assert table["OAuth2Acme"].takes_scope is True
    # PROVIDERS (sam local, tests) still works; scope members are ignored, a lifetime may be given.
    more = {**env, "PROVIDERS": json.dumps({"PyngOrg2": {"function": "org2-fn", "scopes": "a b"},
                                            "unit": {"function": "unit-fn", "lifetime": "300"}})}
    table = ApiSettings.from_env(more).providers
    assert (table["PyngOrg2"].function, table["PyngOrg2"].lifetime, table["PyngOrg2"].provider) == ("org2-fn", 900,
                                                                                                   "pyng")
    assert (table["unit"].lifetime, table["unit"].takes_scope, table["unit"].provider) == (300, True, "")
    for bad in ('{"x": {}}', "[1]", '{"x": {"function": "f", "lifetime": "soon"}}'):
        with pytest.raises(Misconfigured, match="PROVIDERS"):
            ApiSettings.from_env({**env, "PROVIDERS": bad})


@pytest.fixture
def api(moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("PROVIDERS", raising=False)
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("FUNCTION_AriaAu", "aria-au-fn")
    monkeypatch.setenv("FUNCTION_InvoiceCloud", "ic-fn")
    return load_app("token_api")


class Invocations:
    """A Lambda client whose function answers with a token for the scope it was asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        import io

        self.calls.append({**kwargs, "Payload": json.loads(kwargs["Payload"])})
        body = {"provider": "AriaAu", "access_token": f"t{len(self.calls)}", "token_type": "Bearer",
                "expires_in": 3000, "expires_at": "2030-01-01T00:00:00Z", "scope": "api"}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(body).encode())}


def api_event(name: str, **query: str) -> dict[str, Any]:
    return {"resource": "/token/{provider}", "path": f"/token/{name}", "httpMethod": "GET",
            "pathParameters": {"provider": name}, "queryStringParameters": query or None,
            "multiValueQueryStringParameters": {key: [value] for key, value in query.items()} or None,
            "requestContext": {"requestId": "r"}}


def test_the_token_api_routes_a_connection_name_and_keys_a_request_without_scope_as_empty(
        api: Any, moto_table: Any, context: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``/token/AriaAu``: the cache is read under its own partition, a request naming no scope under ``""`` (and
    passed on without one), a named one under its normalised set; scopes the token API cannot judge go to the
    connection's function. The metric dimension is the connection."""
    lambda_client = Invocations()
    api.api.lambda_client = lambda_client
    now = time.time()
    moto_table.put_item(TableName=TABLE, Item={
        "pk": {"S": "AriaAu"}, "sk": {"S": "token#"}, "access_token": {"S": "cached-default"},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now) + 3000)}, "fetched_at": {"N": str(now)},
        "lifetime": {"N": "3600"}})
    response = api.handler(api_event("AriaAu"), context)
    assert json.loads(response["body"])["access_token"] == "cached-default"
    assert lambda_client.calls == []
    response = api.handler(api_event("AriaAu", scope="z  api z"), context)
    assert response["statusCode"] == 200
    [call] = lambda_client.calls
    assert call["FunctionName"] == "aria-au-fn"
    assert call["Payload"]["scope"] == "api z"
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emf = [doc for doc in documents if "_aws" in doc]
    assert emf
    assert all(doc["connection"] == "AriaAu" and "provider" not in doc for doc in emf)
    for doc in emf:
        [dimensions] = doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
        assert "connection" in dimensions
        assert "provider" not in dimensions
    # A provider that takes no scope refuses one from the catalogue alone; an unknown route is a 404 naming it.
    refused = api.handler(api_event("invoice-cloud", scope="read"), context)
    assert (refused["statusCode"], json.loads(refused["body"])["error_description"]) == (
        400, "this provider takes no scope")
    missing = json.loads(api.handler(api_event("PyngOrg2"), context)["body"])
    assert (missing["error"], missing["provider"]) == ("unknown_provider", "PyngOrg2")


# --- a connection's function, configured by its secret -----------------------------------------------------------
@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    served = TokenEndpoint()
    yield served
    served.stop()


class Deployed:
    """Functions of connections over one moto table and Secrets Manager, each with its own secret."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import boto3

        self.monkeypatch = monkeypatch
        self.log = io.StringIO()
        self.restore: list[tuple[Any, Any]] = []
        self.secrets = boto3.client("secretsmanager", region_name="us-east-1")
        self.dynamodb = boto3.client("dynamodb", region_name="us-east-1")

    def secret(self, name: str, document: dict[str, Any]) -> None:
        try:
            self.secrets.create_secret(Name=f"tv/{name}", SecretString=json.dumps(document))
        except self.secrets.exceptions.ResourceExistsException:
            self.secrets.put_secret_value(SecretId=f"tv/{name}", SecretString=json.dumps(document))

    def function(self, name: str, **env: str) -> Any:
        for variable in ("TOKEN_URL", "ALLOWED_SCOPES", "DEFAULT_SCOPES", "AUDIENCE", "CLIENT_AUTH", "REGION",
                         "STAGE", "SIGNING_KEY_ID", "ASSERTION_AUDIENCE", "RENEWAL_QUEUE_URL"):
            self.monkeypatch.delenv(variable, raising=False)
        for variable, value in {"CACHE_TABLE_NAME": TABLE, "SECRET_ID": f"tv/{name}",
                                "TOKEN_VENDING_LOCAL_MODE": "true", "UPSTREAM_RETRIES": "0",
                                "FORCE_REFRESH_INTERVAL": "0", "MEMORY_CACHE_SECONDS": "0", **env}.items():
            self.monkeypatch.setenv(variable, value)
        app = load_app(name)
        app.function.vendor()  # reads its environment now: the next function's is another
        # The service's logger is made once per process, its handler writing where it first wrote: here, to the
        # log this test reads (put back afterwards).
        handler = app.logger.registered_handler
        self.restore.append((handler, handler.setStream(self.log)))
        return app

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines() if line.startswith("{")]

    def items(self) -> list[tuple[str, str]]:
        return sorted((item["pk"]["S"], item["sk"]["S"]) for item in self.dynamodb.scan(TableName=TABLE)["Items"])


@pytest.fixture
def deployed(moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployed]:
    functions = Deployed(monkeypatch)
    yield functions
    for handler, stream in reversed(functions.restore):
        handler.setStream(stream)


def form(request: tuple[str, str, dict[str, str], bytes]) -> dict[str, list[str]]:
    return parse_qs(request[3].decode("ascii"), strict_parsing=True)


def test_an_added_connection_is_configured_by_its_secret_alone(deployed: Deployed, endpoint: TokenEndpoint,
                                                               context: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``OAuth2Acme``: token URL, scopes, audience, resources and extra parameters from its secret, which also
    carries a note: warned about by its name only. The request is RFC 6749 2.3.1 Basic with every parameter."""
    deployed.secret("OAuth2Acme", {
        "client_id": "acme-client", "client_secret": "acme-secret", "token_url": endpoint.url,
        "scopes": "read write", "default_scopes": "read", "audience": "https://api.acme.example",
        "resource": ["https://api.acme.example/", "urn:acme:ledger"], "extra_parameters": {"organization": "org_1"},
        "notes": "rotated by jane, sk-do-not-log-me"})
    function = deployed.function("OAuth2Acme")
    body = function.handler({}, context)
    assert (body["provider"], body["scope"]) == ("OAuth2Acme", "read")
    [request] = endpoint.requests
    assert request[2]["Authorization"].startswith("Basic ")
    assert form(request) == {"grant_type": ["client_credentials"], "scope": ["read"],
                             "audience": ["https://api.acme.example"],
                             "resource": ["https://api.acme.example/", "urn:acme:ledger"], "organization": ["org_1"]}
    function.handler({}, context)  # a hit: the secret is not read again, nor warned about
    warnings = [line for line in deployed.logs() if "does not read" in line["message"]]
    assert [warning["fields"] for warning in warnings] == [["notes"]]
    assert warnings[0]["connection"] == "OAuth2Acme"
    assert warnings[0]["provider"] == "oauth2"
    out = deployed.log.getvalue() + capsys.readouterr().out
    emf = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    assert emf
    assert all(doc["connection"] == "OAuth2Acme" and "provider" not in doc for doc in emf)
    assert "sk-do-not-log-me" not in out
    assert "acme-secret" not in out
    assert [item for item in deployed.items() if "token#" in item[1]] == [("OAuth2Acme", "token#")]


def test_the_secrets_settings_override_the_environment_and_a_changed_secret_is_followed(
        deployed: Deployed, endpoint: TokenEndpoint, context: Any) -> None:
    """Pyng's environment names a token URL and scopes; its secret's fields win. When the secret changes (read again
    after SecretMaxAge), the next fetch goes where it now says, with its new scopes."""
    second = TokenEndpoint()
    try:
        deployed.secret("pyng", {"client_id": "id", "client_secret": "s", "token_url": endpoint.url,
                                 "scopes": "a b", "default_scopes": "a"})
        function = deployed.function("pyng", TOKEN_URL="https://pyng.invalid/billing/oauth2/token",
                                     ALLOWED_SCOPES=PYNG_SCOPES, SECRET_MAX_AGE="0")
        assert function.handler({"scope": "b"}, context)["scope"] == "b"
        with pytest.raises(InvalidRequest):
            function.handler({"scope": "billing:batches:read"}, context)  # the environment's set is overridden
        deployed.secret("pyng", {"client_id": "id", "client_secret": "s", "token_url": second.url,
                                 "scopes": "a b c"})
        assert function.handler({"scope": "c"}, context)["scope"] == "c"
        assert [form(request)["scope"] for request in endpoint.requests] == [["b"]]
        assert [form(request)["scope"] for request in second.requests] == [["c"]]
    finally:
        second.stop()


def test_a_misconfigured_secret_names_the_field_and_writes_nothing(deployed: Deployed, endpoint: TokenEndpoint,
                                                                   context: Any) -> None:
    deployed.secret("OAuth2Acme", {"client_id": "i", "client_secret": "s", "token_url": endpoint.url,
                                   "extra_parameters": {"client_id": "other"}})
    function = deployed.function("OAuth2Acme")
    with pytest.raises(Misconfigured) as raised:
        function.handler({}, context)
    assert raised.value.description == ("secret field extra_parameters.client_id is set by the service and cannot "
                                        "be overridden")
    assert "other" not in str(raised.value)
    assert endpoint.requests == []
    assert deployed.items() == []


def test_a_request_without_scope_is_the_empty_key_resolved_to_the_default_scopes(
        deployed: Deployed, endpoint: TokenEndpoint, context: Any) -> None:
    """No scope named: stored under ``""`` and fetched with the default scopes; naming exactly the default set is
    another cache entry (documented); a named set is checked against the allowed ones."""
    deployed.secret("pyng", {"client_id": "id", "client_secret": "s"})
    function = deployed.function("pyng", TOKEN_URL=endpoint.url, ALLOWED_SCOPES=PYNG_SCOPES,
                                 DEFAULT_SCOPES="billing:batches:read")
    first = function.handler({}, context)
    assert first["scope"] == "billing:batches:read"
    assert function.handler({"scope": ""}, context)["access_token"] == first["access_token"]  # the same entry
    named = function.handler({"scope": "billing:batches:read"}, context)
    assert named["access_token"] != first["access_token"]
    assert [form(request)["scope"] for request in endpoint.requests] == [["billing:batches:read"]] * 2
    assert [item for item in deployed.items() if "token#" in item[1]] == [("pyng", "token#"),
                                                                          ("pyng", "token#billing:batches:read")]


def test_a_scope_the_connection_does_not_allow_is_refused_before_any_lease_or_budget(
        deployed: Deployed, endpoint: TokenEndpoint, context: Any) -> None:
    """The secret is read on the miss and the scope checked at once: no lease, no budget item, no token request."""
    deployed.secret("PyngOrg2", {"client_id": "id", "client_secret": "s", "token_url": endpoint.url,
                                 "scopes": PYNG_SCOPES})
    function = deployed.function("PyngOrg2")
    writes: list[str] = []
    for operation in ("PutItem", "UpdateItem", "DeleteItem"):
        function.function.dynamodb.meta.events.register(f"before-call.dynamodb.{operation}",
                                                        lambda operation=operation, **_: writes.append(operation))
    for scope in ("billing:admin", "billing:batches:read billing:admin"):
        with pytest.raises(InvalidRequest) as raised:
            function.handler({"scope": scope, "force_refresh": True}, context)
        assert raised.value.description == ("scope names 1 scope(s) outside the configured set; this provider "
                                            f"allows: {PYNG_SCOPES}")
    assert writes == []
    assert deployed.items() == []
    assert endpoint.requests == []
    assert function.handler({"scope": "billing:customers:read"}, context)["scope"] == "billing:customers:read"
    assert writes  # the same function does write for an allowed scope


def test_two_connections_of_one_provider_keep_apart(deployed: Deployed, endpoint: TokenEndpoint,
                                                    context: Any) -> None:
    """``pyng`` and ``PyngOrg2``: their own secrets, partitions (tokens, leases, budgets) and log keys; the same
    request of each is its own token."""
    deployed.secret("pyng", {"client_id": "default-org", "client_secret": "s1"})
    deployed.secret("PyngOrg2", {"client_id": "org2", "client_secret": "s2", "token_url": endpoint.url,
                                 "scopes": PYNG_SCOPES})
    budgets = "pyng=50,PyngOrg2=40"
    pyng = deployed.function("pyng", TOKEN_URL=endpoint.url, ALLOWED_SCOPES=PYNG_SCOPES, UPSTREAM_BUDGETS=budgets)
    org2 = deployed.function("PyngOrg2", UPSTREAM_BUDGETS=budgets)
    assert pyng.function.vendor().fetcher.budget.per_hour == 50
    assert org2.function.vendor().fetcher.budget.per_hour == 40
    leases: list[str] = []
    for app in (pyng, org2):
        app.function.dynamodb.meta.events.register(
            "before-parameter-build.dynamodb.PutItem", lambda params, **_: leases.append(params["Item"]["pk"]["S"]))
    one = pyng.handler({"scope": "billing:batches:read"}, context)
    two = org2.handler({"scope": "billing:batches:read"}, context)
    assert one["access_token"] != two["access_token"]
    assert (one["provider"], two["provider"]) == ("pyng", "PyngOrg2")
    assert leases == ["pyng", "PyngOrg2"]
    hour = int(time.time() // 3600) * 3600
    assert deployed.items() == [("PyngOrg2", f"budget#{hour}"), ("PyngOrg2", "token#billing:batches:read"),
                                ("pyng", f"budget#{hour}"), ("pyng", "token#billing:batches:read")]
    import base64

    clients = [base64.b64decode(request[2]["Authorization"].split()[1]).decode().split(":")[0]
               for request in endpoint.requests]
    assert clients == ["default-org", "org2"]
    # (Powertools' default dimensions are one per process, as a function is: see the added connection's test.)
    logs = [doc for doc in deployed.logs() if doc.get("connection") == "PyngOrg2"]
    assert logs
    assert all(doc["provider"] == "pyng" for doc in logs)


def test_renewals_resolve_the_empty_key_and_leave_a_set_no_longer_allowed_to_expire(
        deployed: Deployed, endpoint: TokenEndpoint, context: Any) -> None:
    """The scheduled run renews the ``""`` token with today's default scopes, and leaves a stored set the secret no
    longer allows to expire."""
    from token_vending.cache import CachedToken, TokenCache

    deployed.secret("PyngOrg2", {"client_id": "id", "client_secret": "s", "token_url": endpoint.url,
                                 "scopes": "a b", "default_scopes": "b"})
    function = deployed.function("PyngOrg2")
    cache = TokenCache(TABLE, deployed.dynamodb)
    now = time.time()
    for key in ("", "c"):  # "c": allowed once, no longer
        cache.put(CachedToken(provider="PyngOrg2", scope_key=key, access_token=f"old-{key}", expires_at=int(now) + 30,
                              fetched_at=now - 870, lifetime=900, used_at=now))
    summary = function.handler({"refresh_ahead": True}, context)
    assert (summary["renewed"], summary["idle"]) == (1, 1)
    assert [form(request)["scope"] for request in endpoint.requests] == [["b"]]
    renewed = cache.get("PyngOrg2", "", consistent=True)
    assert renewed is not None
    assert renewed.access_token != "old-"
    assert renewed.scope == "b"
    kept = cache.get("PyngOrg2", "c", consistent=True)
    assert kept is not None
    assert kept.access_token == "old-c"


def test_the_secrets_required_fields_follow_its_resolved_client_authentication(
        moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``client_auth`` in the secret decides which credential fields it must hold; each version is resolved (and its
    unknown fields warned about) once, not on every read."""
    import boto3

    from token_vending import credentials as module
    from token_vending.connection_settings import resolve
    from token_vending.credentials import CredentialStore
    from token_vending.settings import ProviderSettings

    monkeypatch.setattr(module, "MISCONFIGURED_REREAD_SECONDS", 0.0)  # a fixed secret is read again at once
    profile = connection("OAuth2Acme")
    assert profile is not None
    settings = ProviderSettings.from_env("OAuth2Acme", {"SECRET_ID": "acme", "CACHE_TABLE_NAME": TABLE,
                                                        "SECRET_MAX_AGE": "0"}, profile=profile)
    client = boto3.client("secretsmanager", region_name="us-east-1")
    document = {"client_id": "acme", "token_url": "https://acme.example/t", "client_auth": "private_key_jwt",
                "note": "x"}
    client.create_secret(Name="acme", SecretString=json.dumps(document))
    warned: list[list[str]] = []
    store = CredentialStore("OAuth2Acme", "acme", 0, client, resolve=lambda doc: resolve(settings, doc, profile),
                            warn=warned.append)
    with pytest.raises(Misconfigured) as raised:
        store.get()
    assert raised.value.description == "secret field private_key is missing or empty"  # not client_secret
    client.put_secret_value(SecretId="acme", SecretString=json.dumps({**document, "private_key": "PEM"}))
    credentials = store.get()
    assert credentials.settings is not None
    assert credentials.settings.auth is ClientAuth.PRIVATE_KEY_JWT
    assert credentials.settings.required_fields() == ("client_id", "private_key")
    assert store.get() is credentials  # the same version: resolved once
    assert warned == [["note"], ["note"]]  # once per version read
