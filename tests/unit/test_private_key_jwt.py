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
