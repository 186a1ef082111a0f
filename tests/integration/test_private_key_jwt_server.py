"""``private_key_jwt`` (RFC 7523 client assertions) against a standards-based authorization server on 127.0.0.1.

The verifier is Authlib's own :class:`JWTBearerClientAssertion` (joserfc underneath) registered as the
``private_key_jwt`` method of Authlib's ``AuthorizationServer`` (``tests.support.authlib_server``): it checks the
signature with the client's registered JWK set (the header's ``kid`` picks the key), ``iss`` = ``sub`` = a
registered client, ``aud``, ``exp`` and ``jti`` replay -- none of that is code written here. The provider
function is the real ``ProviderFunction`` with a throwaway ``standard`` profile, DynamoDB Local and Secrets
Manager (and KMS, for keys kept there) on the moto server.

The registered keys are what an operator would register: the public half of the secret's PEM (imported by
joserfc, ``kid`` = joserfc's RFC 7638 thumbprint or the secret's ``kid``) or the KMS key's public key from
``kms:GetPublicKey`` (``kid`` = the KMS key id).
"""

from __future__ import annotations

import base64
import json
import socket
import time
import types
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwk

from tests.support import harness
from tests.support.authlib_server import AuthlibTokenServer, Incoming, RegisteredClient
from tests.support.harness import create_table
from tests.support.pki import key_leak_forms, key_pem, leaks, token_leak_forms
from token_vending.profile import ClientAuth

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


pytestmark = pytest.mark.integration

PROVIDER = "standard"
CLIENT_ID = "urn:acme:svc-jwt-1"
LIFETIME = 900
SCOPES = frozenset({"billing:read", "billing:write", "reports:read"})
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PEM_ALGORITHMS = ["RS256", "PS256", "ES256"]
MOTO_PS256 = ("moto signs RSASSA_PSS_SHA_256 with the maximum PSS salt length where KMS (and JOSE's PS256) use the "
              "digest length, so no standards verifier accepts moto's PS256 signatures")

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(algorithm: str) -> Key:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def registered_jwk(public_pem: bytes, *, kid: str | None = None, algorithm: str | None = None) -> dict[str, Any]:
    """The JWK an operator registers for a public key, made by joserfc (not by the code under test): ``kid``
    is the RFC 7638 thumbprint unless given."""
    key = jwk.import_key(public_pem, "EC" if _is_ec(public_pem) else "RSA")
    params: dict[str, Any] = {"kid": kid or key.thumbprint(), "use": "sig"}
    if algorithm:
        params["alg"] = algorithm
    return dict(key.as_dict(private=False, **params))


def _is_ec(public_pem: bytes) -> bool:
    return isinstance(serialization.load_pem_public_key(public_pem), ec.EllipticCurvePublicKey)


def public_pem(key: Key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jws_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def decode(part: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))

    header, payload, _ = assertion.split(".")
    return decode(header), decode(payload)


# --- one deployment and its execution environments (the AWS clients: the integration conftest's ``aws``) -------
class Deployment(harness.Deployment):
    provider = PROVIDER
    auth = ClientAuth.PRIVATE_KEY_JWT
    server: AuthlibTokenServer

    def assertions(self) -> list[str]:
        """Every client assertion the server received."""
        return [value for request in self.server.received() for value in request.form.get("client_assertion", [])]

    def leak_forms(self, *keys: Key) -> dict[str, list[str]]:
        forms = {f"private key {n}": key_leak_forms(key) for n, key in enumerate(keys)}
        for n, assertion in enumerate(self.assertions()):
            forms[f"client assertion {n}"] = [assertion, *token_leak_forms(assertion.rsplit(".", 1)[1])]
        return forms

    def assert_no_leak(self, *keys: Key) -> None:
        assert leaks(self.outputs.text(), self.leak_forms(*keys)) == []


@pytest.fixture
def deploy(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: Authlib's server with one ``private_key_jwt`` client registered with ``jwks`` and a ``standard``
    deployment pointing at it (TOKEN_VENDING_LOCAL_MODE lets the function use http://127.0.0.1)."""
    servers: list[AuthlibTokenServer] = []

    def factory(jwks: list[dict[str, Any]], *, secret: dict[str, str], env: dict[str, str] | None = None,
                audiences: list[str] | None = None,
                respond: Callable[[Incoming, int, dict[str, Any]], tuple[int, dict[str, Any]]] | None = None,
                ) -> Deployment:
        client = RegisteredClient(CLIENT_ID, "", SCOPES, frozenset({"private_key_jwt"}), jwks={"keys": jwks})
        server = AuthlibTokenServer([client], expires_in=LIFETIME, audiences=audiences, respond=respond).__enter__()
        servers.append(server)
        unique = uuid.uuid4().hex[:8]
        deployment = Deployment(aws, server, table=f"tokens-pkjwt-{unique}", secret_id=f"token-vending/pkjwt-{unique}")
        create_table(aws["dynamodb"], deployment.table)
        deployment.put_secret(**secret)
        settings = {
            **DUMMY_AWS, "TOKEN_VENDING_LOCAL_MODE": "true", "CONNECTION_NAME": PROVIDER, "TOKEN_URL": server.url,
            "SECRET_ID": deployment.secret_id, "CACHE_TABLE_NAME": deployment.table,
            "ALLOWED_SCOPES": " ".join(sorted(SCOPES)), "DEFAULT_SCOPES": "billing:read",
            "TOKEN_LIFETIME": str(LIFETIME), "UPSTREAM_RETRIES": "0", "UPSTREAM_READ_TIMEOUT": "5",
            "LEASE_SECONDS": "10", "AWS_ENDPOINT_URL_KMS": aws["moto"],
            "POWERTOOLS_SERVICE_NAME": "token-vending", "POWERTOOLS_METRICS_NAMESPACE": "TokenVending",
            **(env or {}),
        }
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                     "AWS_PROFILE", "CLIENT_AUTH", "SIGNING_KEY_ID", "ASSERTION_AUDIENCE", "UPSTREAM_CA_BUNDLE"):
            if name not in settings:
                monkeypatch.delenv(name, raising=False)
        return deployment

    yield factory
    for server in servers:
        server.__exit__(None, None, None)


def pem_secret(key: Key, algorithm: str | None = None, kid: str | None = None) -> dict[str, str]:
    secret = {"client_id": CLIENT_ID, "private_key": key_pem(key)}
    if algorithm:
        secret["algorithm"] = algorithm
    if kid:
        secret["kid"] = kid
    return secret


def assert_token(answer: dict[str, Any], deployment: Deployment, scope: str = "billing:read") -> None:
    assert set(answer) == {"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"}, answer
    issued = deployment.server.issued[-1]
    assert answer["access_token"] == issued["access_token"]
    assert issued["client_id"] == CLIENT_ID
    assert (answer["provider"], answer["token_type"], answer["scope"]) == (PROVIDER, "Bearer", scope)
    assert LIFETIME - 30 <= answer["expires_in"] <= LIFETIME


def assert_rejected_invalid_client(answer: dict[str, Any]) -> None:
    assert answer.get("errorType") == "UpstreamRejected", answer
    assert (answer["status"], answer["error"], answer["upstream_error"]) == (502, "upstream_rejected",
                                                                             "invalid_client")
    assert answer["provider"] == PROVIDER


def assert_assertion_form(deployment: Deployment, *, alg: str, kid: str, aud: str) -> dict[str, Any]:
    """The one token request: RFC 7523 2.2's form, no secret anywhere, and the assertion's header and claims."""
    (received,) = deployment.server.received()
    assert "Authorization" not in received.headers
    assert set(received.form) == {"grant_type", "client_id", "client_assertion_type", "client_assertion", "scope"}
    assert received.form["grant_type"] == ["client_credentials"]
    assert received.form["client_id"] == [CLIENT_ID]
    assert received.form["client_assertion_type"] == [ASSERTION_TYPE]
    header, claims = jws_parts(received.form["client_assertion"][0])
    assert (header["alg"], header["kid"]) == (alg, kid)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == aud
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 30
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    return claims


# --- PEM key in the secret -------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_pem_key_is_accepted_by_authlib(deploy: Any, algorithm: str) -> None:
    """RS256 and ES256 by default for an RSA and an EC key; PS256 because the secret says so."""
    key = new_key(algorithm)
    jwks = [registered_jwk(public_pem(key), algorithm=algorithm)]
    deployment = deploy(jwks, secret=pem_secret(key, "PS256" if algorithm == "PS256" else None))
    environment = deployment.environment()
    answer = environment.call({"scope": "billing:read"})
    assert_token(answer, deployment)
    assert_assertion_form(deployment, alg=algorithm, kid=jwks[0]["kid"], aud=deployment.server.url)
    assert deployment.server.answers()[0].status == 200
    assert environment.call({"scope": "billing:read"})["access_token"] == answer["access_token"]  # cached
    assert deployment.environment().call({"scope": "billing:read"})["access_token"] == answer["access_token"]
    assert deployment.server.token_requests == 1
    deployment.assert_no_leak(key)


def test_private_key_jwt_kid_from_the_secret_is_the_header_s_kid(deploy: Any) -> None:
    key = new_key("ES256")
    deployment = deploy([registered_jwk(public_pem(key), kid="acme-2026-11")],
                        secret=pem_secret(key, kid="acme-2026-11"))
    assert_token(deployment.environment().call(), deployment)
    assert_assertion_form(deployment, alg="ES256", kid="acme-2026-11", aud=deployment.server.url)


def test_private_key_jwt_from_the_client_auth_setting_overrides_the_profile(deploy: Any) -> None:
    """``CLIENT_AUTH=private_key_jwt`` turns a ``client_secret_basic`` catalogue entry into client assertions; the
    secret needs no ``client_secret``."""
    key = new_key("RS256")
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key),
                        env={"CLIENT_AUTH": "private_key_jwt"})
    assert_token(deployment.environment(ClientAuth.BASIC_HEADER).call(), deployment)
    (received,) = deployment.server.received()
    assert "Authorization" not in received.headers
    assert "client_secret" not in received.form


@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_wrong_audience_is_rejected(deploy: Any, algorithm: str) -> None:
    """``ASSERTION_AUDIENCE`` names an audience the server is not: Authlib refuses (``invalid_client``)."""
    key = new_key(algorithm)
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key, algorithm),
                        env={"ASSERTION_AUDIENCE": "https://elsewhere.example/oauth/token"})
    assert_rejected_invalid_client(deployment.environment().call())
    (exchange,) = deployment.server.answers()
    assert exchange.body["error"] == "invalid_client"
    assert jws_parts(exchange.request.form["client_assertion"][0])[1]["aud"] == "https://elsewhere.example/oauth/token"
    assert deployment.server.issued == []
    deployment.assert_no_leak(key)


def test_private_key_jwt_assertion_audience_setting_is_used(deploy: Any) -> None:
    """A server that identifies itself by its issuer rather than its token URL: ``ASSERTION_AUDIENCE`` set to
    that issuer is accepted, and the token URL (the default) would not be."""
    key = new_key("ES256")
    issuer = "https://issuer.example"
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key), audiences=[issuer],
                        env={"ASSERTION_AUDIENCE": issuer})
    assert_token(deployment.environment().call(), deployment)
    assert jws_parts(deployment.assertions()[0])[1]["aud"] == issuer


@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_expired_assertion_is_rejected(deploy: Any, algorithm: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer's clock is ten minutes slow: its assertion (60 s lifetime) expired long before Authlib's 60 s
    leeway. Only the assertion module's wall clock is shifted: the cache and the deadlines run on real time."""
    import token_vending.assertion

    key = new_key(algorithm)
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key, algorithm))
    real = time.time
    monkeypatch.setattr(token_vending.assertion, "time",
                        types.SimpleNamespace(time=lambda: real() - 600, monotonic=time.monotonic))
    assert_rejected_invalid_client(deployment.environment().call())
    (exchange,) = deployment.server.answers()
    assert exchange.body["error"] == "invalid_client"
    assert "expired" in exchange.body["error_description"].lower()
    assert jws_parts(exchange.request.form["client_assertion"][0])[1]["exp"] < time.time() - 500


@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_replayed_jti_is_rejected_and_the_function_never_reuses_one(deploy: Any,
                                                                                    algorithm: str) -> None:
    key = new_key(algorithm)
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key, algorithm))
    environment = deployment.environment()
    assert_token(environment.call({"scope": "billing:read"}), deployment)
    assert_token(environment.call({"scope": "reports:read"}), deployment, "reports:read")  # a second fetch
    first, second = deployment.server.received()
    jtis = [jws_parts(request.form["client_assertion"][0])[1]["jti"] for request in (first, second)]
    assert jtis[0] != jtis[1]
    # The same assertion again, straight to the server (a replay by whoever saw it): Authlib refuses it.
    replay = requests.post(deployment.server.url, data={name: values[0] for name, values in first.form.items()},
                           timeout=10)
    assert replay.status_code in (400, 401)
    assert replay.json()["error"] == "invalid_client"
    assert "JWT ID" in replay.json()["error_description"]
    assert len(deployment.server.issued) == 2


@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_key_the_server_does_not_know_is_rejected(deploy: Any, algorithm: str) -> None:
    """The server registered another public key under the very ``kid`` the function sends (so the signature
    check, not a key lookup, is what fails): 502 ``upstream_rejected`` ``invalid_client``; the secret did not
    change, so no second request, and the rejection is replayed during its cool-down."""
    key, other = new_key(algorithm), new_key(algorithm)
    kid = jwk.import_key(public_pem(key), "EC" if algorithm == "ES256" else "RSA").thumbprint()
    deployment = deploy([registered_jwk(public_pem(other), kid=kid)], secret=pem_secret(key, algorithm))
    environment = deployment.environment()
    assert_rejected_invalid_client(environment.call())
    assert_rejected_invalid_client(environment.call())
    assert_rejected_invalid_client(deployment.environment().call())
    assert deployment.server.token_requests == 1
    (exchange,) = deployment.server.answers()
    assert exchange.body["error"] == "invalid_client"
    assert jws_parts(exchange.request.form["client_assertion"][0])[0]["kid"] == kid
    deployment.assert_no_leak(key)


def test_private_key_jwt_rotated_key_is_reread_once_after_invalid_client(deploy: Any) -> None:
    """The environment still holds the old key (secret cache age not reached); the server knows only the new
    one and refuses (``invalid_client``); the function re-reads the secret, finds the new key and retries once."""
    old, new = new_key("ES256"), new_key("ES256")
    deployment = deploy([registered_jwk(public_pem(new))], secret=pem_secret(old))
    environment = deployment.environment()
    environment.function.vendor().credentials.get()  # warm: the old key is in this environment
    deployment.put_secret(**pem_secret(new))
    assert_token(environment.call(), deployment)
    assert [exchange.status for exchange in deployment.server.answers()] == [400, 200]
    kids = [jws_parts(assertion)[0]["kid"] for assertion in deployment.assertions()]
    assert kids == [jwk.import_key(public_pem(key), "EC").thumbprint() for key in (old, new)]
    deployment.assert_no_leak(old, new)


@pytest.mark.parametrize(("secret", "named"), [
    pytest.param({"private_key": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n"
                                 "-----END PRIVATE KEY-----\n"}, "private_key", id="truncated-pem"),
    pytest.param({"algorithm": "ES256"}, "private_key", id="rsa-key-for-es256"),
    pytest.param({"algorithm": "HS256"}, "algorithm", id="unsupported-algorithm"),
    pytest.param({"private_key": ""}, "private_key", id="no-key"),
    pytest.param({"private_key": "encrypted"}, "private_key", id="encrypted-key"),
])
def test_private_key_jwt_unusable_key_is_misconfigured_naming_the_field(deploy: Any, secret: dict[str, str],
                                                                        named: str) -> None:
    key = new_key("RS256")
    if secret.get("private_key") == "encrypted":  # exported with a pass phrase: a plausible operator mistake
        secret = {"private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.BestAvailableEncryption(b"pass")).decode()}
    deployment = deploy([registered_jwk(public_pem(key))], secret={**pem_secret(key), **secret})
    answer = deployment.environment().call()
    assert answer.get("errorType") == "Misconfigured", answer
    assert (answer["status"], answer["error"]) == (500, "misconfigured")
    assert named in answer["error_description"]
    assert deployment.server.token_requests == 0
    deployment.assert_no_leak(key)
    assert "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49" not in deployment.outputs.text()


# --- the sentinel: an echoing provider -------------------------------------------------------------------------
def echo_everything(request: Incoming, status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A provider that refuses and repeats what it received: the assertion in its description, its signature as
    the error code, the whole form as a message."""
    assertion = request.form.get("client_assertion", [""])[0]
    return 400, {"error": assertion.rsplit(".", 1)[-1][:60], "error_description": f"bad assertion {assertion}",
                 "message": request.body.decode()}


@pytest.mark.parametrize("algorithm", PEM_ALGORITHMS)
def test_private_key_jwt_echoed_assertion_never_reaches_logs_metrics_or_errors(deploy: Any, algorithm: str) -> None:
    key = new_key(algorithm)
    deployment = deploy([registered_jwk(public_pem(key))], secret=pem_secret(key, algorithm),
                        respond=echo_everything)
    answer = deployment.environment().call()
    assert answer.get("errorType") == "UpstreamRejected", answer
    assert answer["status"] == 502
    assert len(deployment.assertions()) == 1
    deployment.assert_no_leak(key)


# --- the key in KMS (moto) -------------------------------------------------------------------------------------
def kms_key(kms: Any, algorithm: str) -> tuple[str, bytes]:
    """A new KMS signing key (its id) and its public key as PEM, from ``kms:GetPublicKey`` as an operator would
    fetch it to register."""
    spec = {"ES256": "ECC_NIST_P256", "ES384": "ECC_NIST_P384", "ES512": "ECC_NIST_P521"}.get(algorithm, "RSA_2048")
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]["KeyId"]
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    return key_id, serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("algorithm", [
    "RS256", "ES256", "ES384", "ES512", pytest.param("PS256", marks=pytest.mark.skip(reason=MOTO_PS256))])
@pytest.mark.parametrize("reference", ["key-id", "alias"])
def test_private_key_jwt_kms_key_is_accepted_by_authlib(deploy: Any, aws: dict[str, Any], algorithm: str,
                                                        reference: str) -> None:
    """``SIGNING_KEY_ID`` names the KMS key (by id or alias); the secret holds only ``client_id`` (plus the
    algorithm for PS256); the server registered the key's public half with ``kid`` = the KMS key id."""
    key_id, public = kms_key(aws["kms"], algorithm)
    signing_key_id = key_id
    if reference == "alias":
        signing_key_id = f"alias/token-signing-{uuid.uuid4().hex[:8]}"
        aws["kms"].create_alias(AliasName=signing_key_id, TargetKeyId=key_id)
    secret = {"client_id": CLIENT_ID, **({"algorithm": "PS256"} if algorithm == "PS256" else {})}
    deployment = deploy([registered_jwk(public, kid=key_id, algorithm=algorithm)], secret=secret,
                        env={"SIGNING_KEY_ID": signing_key_id})
    environment = deployment.environment()
    assert_token(environment.call({"scope": "billing:read"}), deployment)
    assert_assertion_form(deployment, alg=algorithm, kid=key_id, aud=deployment.server.url)
    assert_token(environment.call({"scope": "reports:read"}), deployment, "reports:read")
    assert deployment.server.token_requests == 2
    deployment.assert_no_leak()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_private_key_jwt_kms_key_the_server_does_not_know_is_rejected(deploy: Any, aws: dict[str, Any],
                                                                      algorithm: str) -> None:
    key_id, _ = kms_key(aws["kms"], algorithm)
    _, other = kms_key(aws["kms"], algorithm)
    deployment = deploy([registered_jwk(other, kid=key_id)], secret={"client_id": CLIENT_ID},
                        env={"SIGNING_KEY_ID": key_id})
    assert_rejected_invalid_client(deployment.environment().call())
    assert deployment.server.token_requests == 1
    deployment.assert_no_leak()


@pytest.mark.parametrize("case", ["no-such-key", "secp256k1-key", "encrypt-decrypt-key"])
def test_private_key_jwt_kms_key_that_cannot_sign_is_misconfigured(deploy: Any, aws: dict[str, Any],
                                                                   case: str) -> None:
    """A key KMS does not have, a secp256k1 key (KMS offers ECDSA_SHA_256 for it, but no JOSE algorithm is
    secp256k1's but ES256K, which providers do not take) or an encryption key: a setting to fix (500
    ``misconfigured``, naming the key spec where there is one), not the provider's fault; never asked."""
    if case == "no-such-key":
        key_id = str(uuid.uuid4())
    elif case == "secp256k1-key":
        key_id = aws["kms"].create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_SECG_P256K1")["KeyMetadata"]["KeyId"]
    else:
        key_id = aws["kms"].create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["KeyId"]
    deployment = deploy([], secret={"client_id": CLIENT_ID}, env={"SIGNING_KEY_ID": key_id})
    answer = deployment.environment().call()
    assert answer.get("errorType") == "Misconfigured", answer
    assert (answer["status"], answer["error"]) == (500, "misconfigured")
    assert "signing key" in answer["error_description"] or "KMS key" in answer["error_description"]
    if case == "secp256k1-key":
        assert "ECC_SECG_P256K1" in answer["error_description"]
    assert deployment.server.token_requests == 0


def test_private_key_jwt_kms_unreachable_is_unavailable_without_a_cool_down(deploy: Any, aws: dict[str, Any],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """KMS cannot be reached: 503 ``upstream_unavailable`` (Step Functions retries it), but the provider was
    not at fault, so no cool-down: once KMS is back, the next call signs and gets a token."""
    key_id, public = kms_key(aws["kms"], "ES256")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connection refused
        deployment = deploy([registered_jwk(public, kid=key_id)], secret={"client_id": CLIENT_ID},
                            env={"SIGNING_KEY_ID": key_id, "AWS_ENDPOINT_URL_KMS": dead})
        environment = deployment.environment()
        answer = environment.call()
    assert answer.get("errorType") == "UpstreamUnavailable", answer
    assert (answer["status"], answer["error"]) == (503, "upstream_unavailable")
    assert deployment.server.token_requests == 0
    # Another environment, KMS reachable again (the endpoint is read when the KMS client is made).
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", aws["moto"])
    assert_token(deployment.environment().call(), deployment)


def test_private_key_jwt_kms_alias_moved_every_assertion_verifies_by_its_kid(deploy: Any, aws: dict[str, Any],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's rotation against Authlib holding both keys (it picks the key by ``kid``): a token before the
    alias moves, one while the environment still has the old key resolved, one once that resolution (a minute)
    has aged, however long the secret is cached. Every request is granted; the ``kid`` moves with the alias."""
    import token_vending.assertion

    old_id, old_public = kms_key(aws["kms"], "ES256")
    new_id, new_public = kms_key(aws["kms"], "ES256")
    alias = f"alias/token-signing-{uuid.uuid4().hex[:8]}"
    aws["kms"].create_alias(AliasName=alias, TargetKeyId=old_id)
    jwks = [registered_jwk(old_public, kid=old_id, algorithm="ES256"),
            registered_jwk(new_public, kid=new_id, algorithm="ES256")]
    deployment = deploy(jwks, secret={"client_id": CLIENT_ID},
                        env={"SIGNING_KEY_ID": f"arn:aws:kms:us-east-1:123456789012:{alias}",
                             "SECRET_MAX_AGE": "3600"})
    environment = deployment.environment()
    assert_token(environment.call({"scope": "billing:read"}), deployment)
    aws["kms"].update_alias(AliasName=alias, TargetKeyId=new_id)
    assert_token(environment.call({"scope": "reports:read"}), deployment, "reports:read")
    later = time.monotonic() + 61
    monkeypatch.setattr(token_vending.assertion, "time",
                        types.SimpleNamespace(time=time.time, monotonic=lambda: later))
    assert_token(environment.call({"scope": "billing:write"}), deployment, "billing:write")
    assert [exchange.status for exchange in deployment.server.answers()] == [200, 200, 200]
    assert [jws_parts(assertion)[0]["kid"] for assertion in deployment.assertions()] == [old_id, old_id, new_id]
