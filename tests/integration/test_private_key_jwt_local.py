"""private_key_jwt through the local stack (what ``make local --client-auth aria=private_key_jwt`` runs): the
Aria function signs client assertions with a KMS key in the embedded AWS (moto), and the Aria emulator checks
them as Keycloak would (signature, iss/sub, aud, exp, jti replay) against the registered public key. An added
connection (``AriaAu``) is given its key as a deployment gives it: by its secret, naming the key's alias."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from local.providers import LOCAL_CREDENTIALS, connection_emulator, local_credentials
from local.stack import DEFAULT_CONNECTIONS, connections_parameter
from tests.integration.conftest import get_token

pytestmark = pytest.mark.integration


def claims(assertion: str) -> dict[str, Any]:
    part = assertion.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_private_key_jwt_through_the_local_stack(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(client_auth={"aria": "private_key_jwt"}, function_env={"FORCE_REFRESH_INTERVAL": "0"})
    emulators["aria"].accept_client_assertions(stack.signing_public_key("aria"))
    first = get_token(stack, "aria")
    assert first.status_code == 200, first.text
    second = get_token(stack, "aria", force_refresh="true")
    assert second.status_code == 200, second.text
    forms = [request.form for request in emulators["aria"].requests]
    assert len(forms) == 2
    client_id = LOCAL_CREDENTIALS["aria"][0]
    for form in forms:
        assert form is not None
        assert "client_secret" not in form  # no shared secret travels, and the secret holds none
        assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assert claims(form["client_assertion"][0])["sub"] == client_id
    assert len({claims(form["client_assertion"][0])["jti"] for form in forms if form}) == 2
    secret = json.loads(stack.client("secretsmanager").get_secret_value(
        SecretId=stack.secret_name("aria"))["SecretString"])
    assert secret == {"client_id": client_id}
    for form in forms:  # the assertion is not logged anywhere
        assert form is not None
        assert form["client_assertion"][0].split(".")[2] not in stack.logs.text()


def test_private_key_jwt_a_key_the_provider_does_not_know_is_rejected(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(client_auth={"aria": "private_key_jwt"})
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    emulators["aria"].accept_client_assertions(other)
    response = get_token(stack, "aria")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_rejected"
    assert response.json()["upstream_error"] == "invalid_client"
    assert emulators["aria"].token_requests == 1  # the secret did not change: no retry (cool-down follows)


def test_an_added_connection_signs_with_the_key_its_secret_names(make_stack: Any) -> None:
    """``AriaAu`` (added by configuration: no parameters) signs as a deployment grants it: with the key aliased
    ``alias/<stack>/AriaAu``, which its secret's ``client_auth`` and ``signing_key_id`` name, its own emulator
    (the AUS realm) checking the assertions against that key."""
    client_id = local_credentials("AriaAu")[0]
    with connection_emulator("AriaAu", {"region": "AUS", "stage": "Prod"}) as emulator:
        stack = make_stack(parameters=connections_parameter([*DEFAULT_CONNECTIONS, "AriaAu"]),
                           secrets={"AriaAu": {"client_id": client_id, "region": "AUS", "stage": "Prod",
                                               "token_url": emulator.url}},
                           client_auth={"AriaAu": "private_key_jwt"})
        emulator.accept_client_assertions(stack.signing_public_key("AriaAu"))
        response = get_token(stack, "AriaAu")
        assert response.status_code == 200, response.text
        [request] = emulator.requests
    assert request.form is not None
    assert "client_secret" not in request.form
    assert claims(request.form["client_assertion"][0])["sub"] == client_id
    assert claims(request.form["client_assertion"][0])["aud"] == emulator.url
    secret = json.loads(stack.client("secretsmanager").get_secret_value(
        SecretId=stack.secret_name("AriaAu"))["SecretString"])
    alias = f"alias/{stack.config.table_name}/AriaAu"
    assert secret["client_auth"] == "private_key_jwt"
    assert secret["signing_key_id"].endswith(f":{alias}")
    assert "client_secret" not in secret
    environment = stack.lambdas.pools["AriaAuFunction"].spec.environment
    assert "SIGNING_KEY_ID" not in environment  # its secret says it all
    assert "CLIENT_AUTH" not in environment
    aliases = stack.client("kms").list_aliases()["Aliases"]
    assert any(entry["AliasName"] == alias for entry in aliases)
