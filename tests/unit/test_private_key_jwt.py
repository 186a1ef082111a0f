"""private_key_jwt client assertions (RFC 7523), signed in KMS (moto) or with a PEM key, verified by joserfc:
a standards-based library, not code written here."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, RSAKey

from token_vending.assertion import (
    ASSERTION_SECONDS,
    KmsSigner,
    PemSigner,
    SigningKeyError,
    b64url,
    client_assertion,
    der_to_jose,
    jwk_thumbprint,
    public_jwk,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

AUDIENCE = "https://idp.example/realms/acme/protocol/openid-connect/token"
KEY_SPECS = {"RS256": "RSA_2048", "PS256": "RSA_2048", "ES256": "ECC_NIST_P256"}


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def joserfc_key(public_key: Any) -> Any:
    data = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ECKey.import_key(data) if isinstance(public_key, ec.EllipticCurvePublicKey) else RSAKey.import_key(data)


def new_key(algorithm: str) -> Any:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def check_claims(token: str, key: Any, algorithm: str, client_id: str) -> dict[str, Any]:
    decoded = jwt.decode(token, joserfc_key(key), algorithms=[algorithm])
    claims = decoded.claims
    now = time.time()
    assert decoded.header["alg"] == algorithm
    assert decoded.header["typ"] == "JWT"
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["aud"] == AUDIENCE
    assert now - 5 <= claims["iat"] <= now + 1
    assert claims["exp"] - claims["iat"] == ASSERTION_SECONDS <= 300
    assert len(claims["jti"]) >= 20
    jwt.JWTClaimsRegistry(aud={"essential": True, "value": AUDIENCE}, exp={"essential": True}).validate(claims)
    return dict(decoded.header)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256"])
def test_private_key_jwt_pem_signer_verified_by_joserfc(algorithm: str) -> None:
    key = new_key(algorithm)
    signer = PemSigner(pem(key), algorithm)
    token = client_assertion(signer, client_id="urn:acme:svc-1", audience=AUDIENCE)
    header = check_claims(token, key.public_key(), algorithm, "urn:acme:svc-1")
    assert header["kid"] == jwk_thumbprint(public_jwk(key.public_key()))  # the JWKS command's kid


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256"])
def test_private_key_jwt_a_wrong_key_is_refused(algorithm: str) -> None:
    token = client_assertion(PemSigner(pem(new_key(algorithm)), algorithm), client_id="c", audience=AUDIENCE)
    with pytest.raises(BadSignatureError):
        jwt.decode(token, joserfc_key(new_key(algorithm).public_key()), algorithms=[algorithm])


def test_private_key_jwt_every_assertion_has_its_own_jti() -> None:
    signer = PemSigner(pem(new_key("ES256")), "ES256")
    tokens = [client_assertion(signer, client_id="c", audience=AUDIENCE) for _ in range(50)]
    jtis = {json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "==")).get("jti") for t in tokens}
    assert len(jtis) == 50


@pytest.mark.parametrize(("algorithm", "key"), [("ES256", "rsa"), ("RS256", "ec"), ("HS256", "rsa")])
def test_private_key_jwt_pem_that_does_not_fit_is_refused_without_echoing_it(algorithm: str, key: str) -> None:
    material = pem(new_key("ES256" if key == "ec" else "RS256"))
    with pytest.raises(SigningKeyError) as caught:
        PemSigner(material, algorithm)
    assert "PRIVATE KEY" not in str(caught.value)


def test_private_key_jwt_pem_signer_repr_hides_the_key() -> None:
    material = pem(new_key("ES256"))
    assert "PRIVATE" not in repr(PemSigner(material, "ES256"))


def test_private_key_jwt_der_to_jose_keeps_leading_zeros_and_strips_der_padding() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(20):
        der = key.sign(b"message", ec.ECDSA(hashes.SHA256()))
        raw = der_to_jose(der)
        assert len(raw) == 64
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        assert encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")) == der
    with pytest.raises(SigningKeyError):
        der_to_jose(b"\x02\x01\x01")


# --- KMS (moto) ----------------------------------------------------------------------------------------
@pytest.fixture
def kms() -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        import boto3

        yield boto3.client("kms", region_name="us-east-1")


def kms_key(kms: Any, algorithm: str) -> tuple[str, Any]:
    key = kms.create_key(KeySpec=KEY_SPECS[algorithm], KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    kms.create_alias(AliasName=f"alias/token-signing-{algorithm.lower()}", TargetKeyId=key["KeyId"])
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
    return key["KeyId"], public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_private_key_jwt_kms_signer_verified_by_joserfc(kms: Any, algorithm: str) -> None:
    key_id, public = kms_key(kms, algorithm)
    signer = KmsSigner(kms, f"alias/token-signing-{algorithm.lower()}", algorithm)
    token = client_assertion(signer, client_id="acme", audience=AUDIENCE)
    header = check_claims(token, public, algorithm, "acme")
    assert header["kid"] == key_id  # the alias resolved: what the JWKS command prints for this key


def test_private_key_jwt_kms_ps256_signs_with_pss_over_the_signing_input(kms: Any) -> None:
    """moto signs RSASSA_PSS_SHA_256 with the maximum salt length where KMS uses the digest length (what
    JOSE's PS256 requires), so joserfc cannot verify moto's PS256 signatures. Nearest real check: the
    signature is a valid RSASSA-PSS SHA-256 signature over the JWS signing input (any salt length); the PS256
    encoding itself is verified by joserfc with the PEM signer above."""
    _, public = kms_key(kms, "PS256")
    token = client_assertion(KmsSigner(kms, "alias/token-signing-ps256", "PS256"), client_id="acme",
                             audience=AUDIENCE)
    signing_input, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    public.verify(raw, signing_input.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                           salt_length=padding.PSS.AUTO), hashes.SHA256())


def test_private_key_jwt_kms_key_that_cannot_sign_the_algorithm_is_refused(kms: Any) -> None:
    kms_key(kms, "ES256")
    with pytest.raises(SigningKeyError, match="cannot sign RS256"):
        client_assertion(KmsSigner(kms, "alias/token-signing-es256", "RS256"), client_id="c", audience=AUDIENCE)


def test_private_key_jwt_kms_alias_moved_to_a_new_key_is_picked_up(kms: Any) -> None:
    old_id, _ = kms_key(kms, "ES256")
    signer = KmsSigner(kms, "alias/token-signing-es256", "ES256", max_age=0)
    assert signer.kid() == old_id
    new_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.update_alias(AliasName="alias/token-signing-es256", TargetKeyId=new_id)
    new_public = serialization.load_der_public_key(kms.get_public_key(KeyId=new_id)["PublicKey"])
    token = client_assertion(signer, client_id="c", audience=AUDIENCE)
    assert check_claims(token, new_public, "ES256", "c")["kid"] == new_id


def test_private_key_jwt_b64url_has_no_padding() -> None:
    assert b64url(b"\xff\xfe") == "__4"


# --- key rotation: a verifier that picks the key by kid ------------------------------------------------------
class Clock:
    """The assertion module's monotonic clock, moved by hand (the KMS key's resolution ages by it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import types

    import token_vending.assertion

    fake = Clock()
    monkeypatch.setattr(token_vending.assertion, "time",
                        types.SimpleNamespace(monotonic=fake.monotonic, time=fake.time))
    return fake


def sign_calls(kms: Any) -> list[str]:
    """The KeyId of every kms:Sign call the client makes (botocore's own event, before the request is built)."""
    calls: list[str] = []
    kms.meta.events.register("provide-client-params.kms.Sign", lambda params, **_: calls.append(params["KeyId"]))
    return calls


def kms_jwk_set(kms: Any, *key_ids: str) -> Any:
    """What the operator registered with the provider: every key's public half, kid = its KMS key id (joserfc)."""
    from joserfc.jwk import KeySet

    keys = []
    for key_id in key_ids:
        public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
        jwk = joserfc_key(public).as_dict(private=False, kid=key_id, use="sig")
        keys.append(jwk)
    return KeySet.import_key_set({"keys": keys})


def verify_by_kid(token: str, keys: Any, algorithm: str = "ES256") -> str:
    """joserfc picks the key by the header's kid, as Authlib, Keycloak and most providers do."""
    decoded = jwt.decode(token, keys, algorithms=[algorithm])
    return str(decoded.header["kid"])


def test_private_key_jwt_kms_alias_move_every_assertion_verifies_by_its_kid(kms: Any, clock: Clock) -> None:
    """The guide's rotation: register the new key beside the old, move the alias (UpdateAlias). Before, during
    (the old key still resolved, for up to a minute) and after, every assertion verifies with the key its kid
    names, and kms:Sign is always called with that key, never with the alias."""
    alias = "alias/token-signing-es256"
    old_id, _ = kms_key(kms, "ES256")
    new_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    keys = kms_jwk_set(kms, old_id, new_id)
    calls = sign_calls(kms)
    signer = KmsSigner(kms, alias, max_age=300)  # the secret's cache age, as the provider function passes it

    kids = [verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys)]
    kms.update_alias(AliasName=alias, TargetKeyId=new_id)
    for _ in range(3):  # during: the resolution is still the old key's
        clock.now += 15
        kids.append(verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys))
    clock.now += 20  # past a minute since the key was resolved, well within the secret's cache age
    kids.append(verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys))
    assert kids == [old_id] * 4 + [new_id]
    assert [call.rsplit("/", 1)[-1] for call in calls] == kids
    assert not any(call.startswith("alias/") or ":alias/" in call for call in calls)


def test_private_key_jwt_kms_key_the_alias_left_is_given_up_at_once(kms: Any, clock: Clock) -> None:
    """With an alias grant (kms:ResourceAliases), KMS refuses the old key as soon as the alias has left it (here
    as IAM would: AccessDeniedException): the signer resolves the alias again and signs with the new key, kid
    and signature agreeing, instead of failing until its resolution ages."""
    from botocore.exceptions import ClientError

    alias = "alias/token-signing-es256"
    old_id, _ = kms_key(kms, "ES256")
    new_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    keys = kms_jwk_set(kms, new_id)  # the provider no longer knows the old key either
    signer = KmsSigner(kms, alias)
    assert signer.kid() == old_id
    kms.update_alias(AliasName=alias, TargetKeyId=new_id)

    def refuse_old_key(params: dict[str, Any], **_: Any) -> None:
        if params["KeyId"].rsplit("/", 1)[-1] == old_id:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "Sign")

    kms.meta.events.register("provide-client-params.kms.Sign", refuse_old_key)
    assert verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys) == new_id


def test_private_key_jwt_kms_key_id_refused_by_kms_is_not_retried(kms: Any) -> None:
    """A key ARN (no alias to follow) that KMS refuses: the refusal itself, once."""
    from botocore.exceptions import ClientError

    key_id, _ = kms_key(kms, "ES256")
    calls = sign_calls(kms)

    def refuse(params: dict[str, Any], **_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "Sign")

    kms.meta.events.register("provide-client-params.kms.Sign", refuse)
    with pytest.raises(ClientError, match="AccessDenied"):
        client_assertion(KmsSigner(kms, key_id), client_id="c", audience=AUDIENCE)
    assert len(calls) == 1


# --- the key decides the algorithm -----------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "algorithm"), [("ECC_NIST_P256", "ES256"), ("ECC_NIST_P384", "ES384"),
                                                 ("ECC_NIST_P521", "ES512"), ("RSA_3072", "RS256")])
def test_private_key_jwt_kms_key_spec_decides_the_algorithm(kms: Any, spec: str, algorithm: str) -> None:
    key_id = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    token = client_assertion(KmsSigner(kms, key_id), client_id="acme", audience=AUDIENCE)
    assert check_claims(token, public, algorithm, "acme")["kid"] == key_id


@pytest.mark.parametrize("spec", ["ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_256"])
def test_private_key_jwt_kms_key_without_a_jose_algorithm_is_refused_naming_its_spec(kms: Any, spec: str) -> None:
    """KMS offers ECDSA_SHA_256 for a secp256k1 key: labelled ES256 it would be refused by every provider."""
    usage = "SIGN_VERIFY" if spec.startswith("ECC") else "ENCRYPT_DECRYPT" if spec == "SYMMETRIC_DEFAULT" else \
        "GENERATE_VERIFY_MAC"
    key_id = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
    calls = sign_calls(kms)
    with pytest.raises(SigningKeyError) as caught:
        client_assertion(KmsSigner(kms, key_id), client_id="c", audience=AUDIENCE)
    assert spec in str(caught.value) or usage in str(caught.value)
    assert calls == []


@pytest.mark.parametrize(("curve", "algorithm"), [(ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")])
def test_private_key_jwt_pem_curve_decides_the_algorithm(curve: Any, algorithm: str) -> None:
    key = ec.generate_private_key(curve)
    token = client_assertion(PemSigner(pem(key)), client_id="c", audience=AUDIENCE)
    header = check_claims(token, key.public_key(), algorithm, "c")
    assert header["kid"] == joserfc_key(key.public_key()).thumbprint()  # RFC 7638, computed by joserfc


@pytest.mark.parametrize(("key", "named"), [
    pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1", id="secp256k1"),
    pytest.param(lambda: rsa.generate_private_key(65537, 1024), "1024-bit", id="rsa-1024"),  # noqa: S505 - refused
])
def test_private_key_jwt_pem_key_without_a_jose_algorithm_is_refused(key: Any, named: str) -> None:
    for algorithm in ("", "ES256", "RS256"):
        with pytest.raises(SigningKeyError, match=named):
            PemSigner(pem(key()), algorithm)


def test_private_key_jwt_kms_new_key_not_yet_granted_signs_with_the_old_one(kms: Any, clock: Clock) -> None:
    """KMS documents up to five minutes before an alias move affects authorisation: the alias already resolves
    to the new key while IAM (kms:ResourceAliases) still refuses it and still grants the old one. The signer
    keeps signing with the old key, naming it in kid, rather than failing the token request."""
    from botocore.exceptions import ClientError

    alias = "alias/token-signing-es256"
    old_id, _ = kms_key(kms, "ES256")
    new_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    keys = kms_jwk_set(kms, old_id, new_id)
    signer = KmsSigner(kms, alias)
    assert verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys) == old_id
    kms.update_alias(AliasName=alias, TargetKeyId=new_id)
    clock.now += 61

    def refuse_new_key(params: dict[str, Any], **_: Any) -> None:
        if params["KeyId"].rsplit("/", 1)[-1] == new_id:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "Sign")

    kms.meta.events.register("provide-client-params.kms.Sign", refuse_new_key)
    assert verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys) == old_id
    kms.meta.events.unregister("provide-client-params.kms.Sign", refuse_new_key)
    clock.now += 61
    assert verify_by_kid(client_assertion(signer, client_id="c", audience=AUDIENCE), keys) == new_id


@pytest.mark.parametrize(("key_id", "region"), [
    ("arn:aws:kms:eu-west-1:210987654321:key/1a5b2c3d-0000-4000-8000-000000000001", "eu-west-1"),
    ("arn:aws:kms:ap-southeast-2:123456789012:alias/token-signing", "ap-southeast-2"),
    ("alias/token-signing", "us-east-1"),
    ("1a5b2c3d-0000-4000-8000-000000000001", "us-east-1"),
])
def test_private_key_jwt_kms_client_is_in_the_region_the_key_arn_names(key_id: str, region: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The template grants the key (or alias) in the Region its ARN names: the function calls KMS there."""
    from token_vending.provider_function import _kms_client

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert _kms_client(key_id).meta.region_name == region
