"""Connections through the local stack (the one ``make local`` runs), against DynamoDB Local.

Isolation: two connections of one provider (``pyng`` and ``PyngOrg2``) against the SAME emulator, so that only the
connection tells them apart (each its own client_id and secret, registered at that emulator). Every cache key,
lease, budget and renewal is the connection's: a caller of one never receives the other's token, whatever is
requested in between (interleaved, forced, another scope set), a spent budget or a held lease on one does not touch
the other, and each renewal renews its own connection's token from its own queue. What is asserted is what the
provider received (the client_id of every request), which client each served token was issued to, and the stored
items' partition keys.

Configuration alone: a connection added by the ``Connections`` parameter and its secret's fields serves tokens,
over the signed API and by direct invocation; a generic RFC 6749 server that needs an audience (Auth0-style) works
with ``audience`` (and RFC 8707 ``resource``s) in the secret, against Authlib's server requiring them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from local.providers import LOCAL_CREDENTIALS, decode_jwt, local_credentials
from local.stack import PYNG_SCOPES
from tests.integration.conftest import get_token, table_items, with_connections
from tests.support.authlib_server import AuthlibTokenServer, RegisteredClient
from token_vending.cache import TokenCache

if TYPE_CHECKING:
    from local.providers import EmulatorFleet
    from local.stack import LocalStack

pytestmark = pytest.mark.integration

PYNG_CLIENT = LOCAL_CREDENTIALS["pyng"][0]
ORG2_CLIENT = local_credentials("PyngOrg2")[0]
CLIENTS = {"pyng": PYNG_CLIENT, "PyngOrg2": ORG2_CLIENT}
ORG2_SCOPES = "billing:customers:read billing:batches:read"
"""PyngOrg2's own allowed scopes (its secret's ``scopes``), its default ``billing:batches:read``."""
READ = "billing:customers:read"
"""A scope both connections may ask for."""


def org2(emulators: EmulatorFleet, **overrides: Any) -> dict[str, Any]:
    """``make_stack`` overrides deploying PyngOrg2 beside the five, its token URL that of pyng's emulator, which
    registers PyngOrg2's credentials as another client."""
    emulator = emulators["pyng"]
    emulator.add_client(*local_credentials("PyngOrg2"))
    fields = {"token_url": emulator.url, "scopes": ORG2_SCOPES, "default_scopes": "billing:batches:read"}
    return with_connections({"PyngOrg2": fields}, **overrides)


def served(response: Any, connection: str, emulators: EmulatorFleet) -> str:
    """The token of a 200 for ``connection``, checked to be one the provider issued to that connection's client."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == connection
    token: str = body["access_token"]
    assert emulators["pyng"].issued_to.get(token) == CLIENTS[connection], (
        f"{connection} was served a token issued to {emulators['pyng'].issued_to.get(token)}")
    return token


def clients_asked(emulators: EmulatorFleet) -> list[tuple[str | None, str | None]]:
    """(client_id, scope) of every token request pyng's emulator received, in order."""
    return [(request.client_id, request.form_value("scope")) for request in emulators["pyng"].requests]


def stored_tokens(stack: LocalStack) -> dict[tuple[str, str], str]:
    """(partition, scope key) -> access token of every token item."""
    return {(item["pk"]["S"], item["sk"]["S"].removeprefix("token#")): item["access_token"]["S"]
            for item in table_items(stack) if item["sk"]["S"].startswith("token#")}


# --- isolation ---------------------------------------------------------------------------------------------------
def test_two_connections_of_one_provider_never_serve_each_others_tokens(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(**org2(emulators, function_env={"FORCE_REFRESH_INTERVAL": "0", "MEMORY_CACHE_SECONDS": "0"}))
    tokens: dict[str, set[str]] = {"pyng": set(), "PyngOrg2": set()}
    # Interleaved, same scope keys on both: the "" key (each connection's own default set) and READ.
    for connection, scope in [("pyng", None), ("PyngOrg2", None), ("PyngOrg2", READ), ("pyng", READ),
                              ("pyng", None), ("PyngOrg2", None), ("pyng", READ), ("PyngOrg2", READ)]:
        response = get_token(stack, connection, **({"scope": scope} if scope else {}))
        tokens[connection].add(served(response, connection, emulators))
    assert Counter(clients_asked(emulators)) == Counter({
        (PYNG_CLIENT, " ".join(sorted(PYNG_SCOPES.split()))): 1,
        (ORG2_CLIENT, "billing:batches:read"): 1, (ORG2_CLIENT, READ): 1, (PYNG_CLIENT, READ): 1})
    assert len(tokens["pyng"]) == len(tokens["PyngOrg2"]) == 2  # each key fetched once, then a hit
    assert not tokens["pyng"] & tokens["PyngOrg2"]

    # Forced refreshes of one connection, concurrent with plain requests of the other: each gets its own.
    before = stored_tokens(stack)
    results: dict[str, list[Any]] = {"pyng": [], "PyngOrg2": []}

    def ask(connection: str, **params: str) -> None:
        results[connection].append(get_token(stack, connection, **params))

    threads = [threading.Thread(target=ask, args=("pyng",), kwargs={"scope": READ, "force_refresh": "true"}),
               threading.Thread(target=ask, args=("PyngOrg2",), kwargs={"scope": READ}),
               threading.Thread(target=ask, args=("PyngOrg2",)),
               threading.Thread(target=ask, args=("pyng",), kwargs={"force_refresh": "true"})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for connection, responses in results.items():
        for response in responses:
            tokens[connection].add(served(response, connection, emulators))
    after = stored_tokens(stack)
    assert after["PyngOrg2", READ] == before["PyngOrg2", READ]  # pyng's forced refresh left PyngOrg2's alone
    assert after["PyngOrg2", ""] == before["PyngOrg2", ""]
    assert after["pyng", READ] != before["pyng", READ]
    assert after["pyng", ""] != before["pyng", ""]
    assert not tokens["pyng"] & tokens["PyngOrg2"]
    assert [client for client, _ in clients_asked(emulators)[4:]] == [PYNG_CLIENT, PYNG_CLIENT]

    # A forced refresh of PyngOrg2 naming pyng's current token (its fingerprint) replaces PyngOrg2's own.
    from token_vending.request import fingerprint

    response = get_token(stack, "PyngOrg2", scope=READ, force_refresh=fingerprint(after["pyng", READ]))
    tokens["PyngOrg2"].add(served(response, "PyngOrg2", emulators))
    assert stored_tokens(stack)["pyng", READ] == after["pyng", READ]
    assert not tokens["pyng"] & tokens["PyngOrg2"]

    # Every stored item sits in its connection's partition and holds a token issued to that connection.
    items = stored_tokens(stack)
    assert {pk for pk, _ in items} == {"pyng", "PyngOrg2"}
    for (pk, _), token in items.items():
        assert emulators["pyng"].issued_to[token] == CLIENTS[pk], pk
    # And no request the emulator received mixed one connection's client with the other's scopes.
    assert all(scope is not None and set(scope.split()) <= set(ORG2_SCOPES.split())
               for client, scope in clients_asked(emulators) if client == ORG2_CLIENT)


def test_a_spent_budget_of_one_connection_leaves_the_other_alone(make_stack: Any, emulators: Any) -> None:
    """UpstreamBudgets ``PyngOrg2=1``: PyngOrg2's callers may make one token request this hour; pyng (default
    budget, same provider) goes on fetching, before and after PyngOrg2's is spent."""
    stack = make_stack(**org2(emulators, parameters={"UpstreamBudgets": "PyngOrg2=1"}))
    served(get_token(stack, "pyng"), "pyng", emulators)
    served(get_token(stack, "PyngOrg2", scope=READ), "PyngOrg2", emulators)
    refused = get_token(stack, "PyngOrg2")  # another scope key: a miss past the budget
    assert refused.status_code == 503, refused.text
    assert "budget" in refused.json()["error_description"]
    assert refused.json()["provider"] == "PyngOrg2"
    for scope in (READ, "billing:batches:read", "billing:batches:submit"):
        served(get_token(stack, "pyng", scope=scope), "pyng", emulators)
    assert [client for client, _ in clients_asked(emulators)] == [PYNG_CLIENT, ORG2_CLIENT, *[PYNG_CLIENT] * 3]
    budgets = {item["pk"]["S"]: int(item["spent"]["N"]) for item in table_items(stack)
               if item["sk"]["S"].startswith("budget#")}
    assert budgets == {"pyng": 4, "PyngOrg2": 1}


def test_a_lease_held_on_one_connection_does_not_block_the_other(make_stack: Any, emulators: Any) -> None:
    """Someone holds pyng's lease on a scope key (a fetch in progress, 20 s): PyngOrg2's miss on the same key
    takes its own lease at once and fetches; pyng's key stays leased by its holder."""
    stack = make_stack(**org2(emulators))
    cache = TokenCache(stack.config.table_name, stack.client("dynamodb"))
    assert cache.acquire_lease("pyng", READ, "another-environment", 20).acquired
    started = time.monotonic()
    served(get_token(stack, "PyngOrg2", scope=READ), "PyngOrg2", emulators)
    assert time.monotonic() - started < 5, "PyngOrg2 waited on pyng's lease"
    assert clients_asked(emulators) == [(ORG2_CLIENT, READ)]
    leases = {(item["pk"]["S"], item["sk"]["S"]): item.get("owner", {}).get("S") for item in table_items(stack)
              if item["sk"]["S"].startswith("lease#")}
    assert leases.get(("pyng", f"lease#{READ}")) == "another-environment"
    assert "LeaseWait" not in stack.logs.text()  # type: ignore[attr-defined]


def test_each_renewal_renews_its_own_connections_token(make_stack: Any, emulators: Any) -> None:
    """Renewal timers armed for both (60 s tokens: each due 24 s after its fetch): each connection's queue hands
    its own function a message naming its own token, which is renewed with its own credentials."""
    stack = make_stack(**org2(emulators, renewals=True, aws_port=0))
    delivered: list[tuple[str, dict[str, Any]]] = []
    invoke = stack.lambdas.invoke

    def recording(function: str, event: Any) -> tuple[bytes, str | None]:
        if isinstance(event, dict) and "Records" in event:
            delivered.append((function, event))
        return invoke(function, event)

    stack.lambdas.invoke = recording  # type: ignore[method-assign]
    emulators["pyng"].configure(expires_in=60)
    first = {connection: served(get_token(stack, connection, min_ttl="0"), connection, emulators)
             for connection in ("pyng", "PyngOrg2")}
    emulators["pyng"].configure(expires_in=3600)  # the renewed tokens' own renewals stay far away
    fetched = {pk: float(item["fetched_at"]["N"]) for item in table_items(stack)
               for pk in [item["pk"]["S"]] if item["sk"]["S"] == "token#"}
    deadline = time.time() + 55
    while len(renewal_outcomes(stack)) < 2 and time.time() < deadline:  # each logged once its token is stored
        time.sleep(0.3)
    assert [client for client, _ in clients_asked(emulators)[2:]] in (
        [PYNG_CLIENT, ORG2_CLIENT], [ORG2_CLIENT, PYNG_CLIENT]), clients_asked(emulators)
    assert {function for function, _ in delivered} == {"PyngFunction", "PyngOrg2Function"}
    for function, event in delivered:
        connection = {"PyngFunction": "pyng", "PyngOrg2Function": "PyngOrg2"}[function]
        for record in event["Records"]:
            assert record["eventSourceARN"].endswith(stack.renewal_queue_name(connection)), record["eventSourceARN"]
            assert json.loads(record["body"])["fetched_at"] == pytest.approx(fetched[connection], abs=0.002)
    renewed = stored_tokens(stack)
    for connection in ("pyng", "PyngOrg2"):
        assert renewed[connection, ""] != first[connection]
        assert emulators["pyng"].issued_to[renewed[connection, ""]] == CLIENTS[connection]
    assert sorted(renewal_outcomes(stack)) == [("PyngOrg2", "renewed"), ("pyng", "renewed")]


def renewal_outcomes(stack: Any) -> list[tuple[str | None, str | None]]:
    """(connection, outcome) of every renewal the functions logged."""
    lines = [json.loads(line) for line in stack.logs.text().splitlines() if line.startswith('{"level"')]
    return [(line.get("connection"), line.get("outcome")) for line in lines if line.get("message") == "renewal"]


# --- configuration alone -----------------------------------------------------------------------------------------
def lambda_client(stack: LocalStack) -> Any:
    return boto3.client("lambda", endpoint_url=stack.lambda_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def invoke(stack: LocalStack, function: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    response = lambda_client(stack).invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def test_connections_added_by_configuration_alone_serve_tokens(make_stack: Any, emulators: Any) -> None:
    """``AutopaySandbox`` (Autopay's JSON body, the same emulator as autopay, its own credentials) and
    ``OAuth2Acme`` (the generic RFC 6749 entry; its token URL and scopes only in its secret): the Connections
    parameter and their secrets are all it takes, over the signed API and by direct invocation."""
    emulators["autopay"].add_client(*local_credentials("AutopaySandbox"))
    emulators["oauth2"].set_credentials(*local_credentials("OAuth2Acme"))
    stack = make_stack(**with_connections({
        "AutopaySandbox": {"token_url": emulators["autopay"].url},
        "OAuth2Acme": {"token_url": emulators["oauth2"].url, "scopes": "billing:read billing:write",
                       "default_scopes": "billing:read"},
    }))
    assert {provider.route: provider.function for provider in stack.providers if provider.added} == {
        "AutopaySandbox": "AutopaySandboxFunction", "OAuth2Acme": "OAuth2AcmeFunction"}
    sandbox = get_token(stack, "AutopaySandbox")
    assert sandbox.status_code == 200, sandbox.text
    claims = decode_jwt(sandbox.json()["access_token"], emulators["autopay"].jwt_key)
    assert claims["azp"] == local_credentials("AutopaySandbox")[0]
    [request] = emulators["autopay"].requests
    assert request.json == {"client_id": local_credentials("AutopaySandbox")[0],
                            "client_secret": local_credentials("AutopaySandbox")[1], "audience": "",
                            "grant_type": "client_credentials"}
    body, error = invoke(stack, "AutopaySandboxFunction", {"min_ttl": 300})
    assert error is None, body
    assert body["access_token"] == sandbox.json()["access_token"]  # the API's token, from the cache

    acme = get_token(stack, "OAuth2Acme", scope="billing:write")
    assert acme.status_code == 200, acme.text
    body, error = invoke(stack, "OAuth2AcmeFunction", {})
    assert error is None, body
    assert body["provider"] == "OAuth2Acme"
    requests_made = emulators["oauth2"].requests
    assert [(r.basic_auth, r.form_value("scope")) for r in requests_made] == [
        (local_credentials("OAuth2Acme"), "billing:write"), (local_credentials("OAuth2Acme"), "billing:read")]
    refused, error = invoke(stack, "OAuth2AcmeFunction", {"scope": "billing:admin"})
    assert error == "Unhandled"
    assert json.loads(refused["errorMessage"])["error"] == "invalid_request"
    assert len(emulators["oauth2"].requests) == 2  # a scope outside the secret's is refused before any fetch
    partitions = {item["pk"]["S"] for item in table_items(stack) if item["sk"]["S"].startswith("token#")}
    assert partitions == {"AutopaySandbox", "OAuth2Acme"}
    assert emulators["autopay"].issued_to[sandbox.json()["access_token"]] == local_credentials("AutopaySandbox")[0]


# --- a generic RFC 6749 server that needs an audience (Auth0-style), by configuration --------------------------
ACME_API = "https://api.acme.example"
RESOURCES = ["https://api.acme.example/billing", "https://api.acme.example/reports"]
ACME_ID, ACME_SECRET = "urn:acme:svc-1", "p@ss:w+rd/=&"
"""A client id with colons and a secret with reserved characters: RFC 6749 2.3.1 form-urlencoding decides."""


@pytest.fixture
def acme_server() -> Any:
    with AuthlibTokenServer([RegisteredClient(ACME_ID, ACME_SECRET, frozenset({"billing:read", "reports:read"}))],
                            expires_in=3600, api_audience=ACME_API,
                            resources=frozenset([*RESOURCES, "https://api.acme.example/other"])) as server:
        yield server


def test_an_auth0_style_server_requiring_an_audience_works_by_configuration(make_stack: Any,
                                                                            acme_server: Any) -> None:
    fields = {"client_id": ACME_ID, "client_secret": ACME_SECRET, "token_url": acme_server.url,
              "scopes": "billing:read reports:read", "default_scopes": "billing:read"}
    stack = make_stack(**with_connections({
        "OAuth2Acme": {**fields, "audience": ACME_API, "resource": RESOURCES,
                       "extra_parameters": {"organization": "org_123"}},
        "OAuth2NoAudience": fields,
    }))
    response = get_token(stack, "OAuth2Acme")
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    [issued] = acme_server.issued
    assert (issued["access_token"], issued["client_id"]) == (token, ACME_ID)
    assert (issued["audience"], issued["resource"], issued["scope"]) == (ACME_API, RESOURCES, "billing:read")
    [received] = acme_server.received()
    assert received.form == {"grant_type": ["client_credentials"], "scope": ["billing:read"], "audience": [ACME_API],
                             "resource": RESOURCES, "organization": ["org_123"]}
    assert received.headers["Authorization"].startswith("Basic ")  # client_secret_basic, RFC 6749 2.3.1 encoded
    assert "client_secret" not in received.form
    # By direct invocation, another scope set: the audience and resources again.
    body, error = invoke(stack, "OAuth2AcmeFunction", {"scope": "reports:read"})
    assert error is None, body
    assert acme_server.issued[-1]["audience"] == ACME_API
    assert acme_server.issued[-1]["scope"] == "reports:read"
    # The same server without the audience in the connection's secret: Authlib refuses it, as configured.
    refused = get_token(stack, "OAuth2NoAudience")
    assert refused.status_code == 502, refused.text
    assert refused.json()["upstream_error"] == "invalid_request"
    assert acme_server.answers()[-1].body["error"] == "invalid_request"
    assert len(acme_server.issued) == 2
