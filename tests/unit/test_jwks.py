"""The registration command: the JWKS it prints verifies the assertions the functions sign (checked with
joserfc's key set), and a certificate's fingerprint is RFC 8705's x5t#S256."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import KeySet

from token_vending.assertion import KmsSigner, PemSigner, client_assertion
from token_vending.jwks import certificate_info, kms_jwks, main, pem_jwks

if TYPE_CHECKING:
    from pathlib import Path

AUDIENCE = "https://idp.example/token"


def private_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_private_key_jwt_pem_jwks_verifies_the_assertion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_text(private_pem(key))
    assert main(["--pem", str(tmp_path / "key.pem"), "--algorithm", "ES256"]) == 0
    printed = capsys.readouterr().out
    assert "PRIVATE" not in printed
    assert "\"d\"" not in printed  # no private JWK member
    keys = KeySet.import_key_set(json.loads(printed))
    token = client_assertion(PemSigner(private_pem(key), "ES256"), client_id="c", audience=AUDIENCE)
    assert jwt.decode(token, keys, algorithms=["ES256"]).claims["sub"] == "c"


def test_private_key_jwt_kms_jwks_verifies_the_assertion() -> None:
    from moto import mock_aws

    with mock_aws():
        import boto3

        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        document = kms_jwks(kms, key_id, "RS256")
        token = client_assertion(KmsSigner(kms, key_id, "RS256"), client_id="c", audience=AUDIENCE)
    assert document["keys"][0]["kid"] == key_id
    assert jwt.decode(token, KeySet.import_key_set(document), algorithms=["RS256"]).header["kid"] == key_id


def test_private_key_jwt_pem_jwks_of_a_public_key_matches_the_private_one() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert pem_jwks(public, "ES256") == pem_jwks(private_pem(key), "ES256")


def test_tls_client_auth_certificate_fingerprint_and_expiry() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-token-client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    text = cert.public_bytes(serialization.Encoding.PEM).decode()
    info = certificate_info(text, now=now.timestamp())
    expected = base64.urlsafe_b64encode(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    assert info["x5t#S256"] == expected.rstrip(b"=").decode()
    assert info["subject"] == "CN=acme-token-client"
    assert info["days_left"] == 30.0


def test_private_key_jwt_kms_jwks_alg_and_curve_are_the_key_s(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No --algorithm: the printed alg is the one the functions sign with (ES384 for a P-384 key), the kid the
    key the alias names now; joserfc verifies a function's assertion with it."""
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/token-signing", TargetKeyId=key_id)
        assert main(["--kms-key-id", "alias/token-signing"]) == 0
        token = client_assertion(KmsSigner(kms, "alias/token-signing"), client_id="c", audience=AUDIENCE)
    document = json.loads(capsys.readouterr().out)
    (jwk,) = document["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["crv"]) == (key_id, "ES384", "P-384")
    assert jwt.decode(token, KeySet.import_key_set(document), algorithms=["ES384"]).header["kid"] == key_id


def test_private_key_jwt_kms_jwks_refuses_a_key_the_functions_would_refuse(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A secp256k1 key: nothing to register (the functions would answer misconfigured), and the reason named."""
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        with pytest.raises(SystemExit) as caught:
            main(["--kms-key-id", key_id])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ECC_SECG_P256K1" in captured.err


SECP112R1_KEY = """-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDtLq7pbekgdXxBALeTFjoAcGBSuBBAAGoSADHgAEjXFkGNFPDNA0MZ8e
E0V8zQBKOfFaAmVigJmziw==
-----END EC PRIVATE KEY-----
"""


@pytest.mark.parametrize(("text", "named"), [
    (SECP112R1_KEY, "curve"),  # openssl ecparam -name secp112r1 -genkey: no code for it in cryptography
    ("-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n", "not an unencrypted PEM"),
    ("-----BEGIN PUBLIC KEY-----\nQUJD\n-----END PUBLIC KEY-----\n", "not an unencrypted PEM"),
])
def test_the_jwks_command_refuses_a_key_it_cannot_read_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               text: str, named: str) -> None:
    """A usage error naming what is wrong (exit status 2), never a traceback, never the key."""
    path = tmp_path / "key.pem"
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["--pem", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    assert "QUJD" not in err
    assert "MD4CAQEE" not in err
