"""Prints what to register with a provider: the public key as a JWKS, and a client certificate's fingerprint.

    python -m token_vending.jwks --kms-key-id alias/acme-token-signing
    python -m token_vending.jwks --pem signing-key.pem --algorithm PS256
    python -m token_vending.jwks --secret-id token-vending/aria          # the PEM key or certificate in it
    python -m token_vending.jwks --certificate client.pem                 # mutual TLS

The ``kid`` printed is the one the provider functions put in their assertions' header: the KMS key id for a
KMS key (the alias resolved), else the secret's ``kid``, else the RFC 7638 thumbprint; the ``alg`` printed is the
one they sign with: the key's (by KMS key spec or curve), or ``--algorithm`` where an RSA key may sign PS256. A
key they would refuse to sign with is refused here too. Nothing secret is printed: the private key never leaves
KMS or the secret.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from token_vending.assertion import (
    KMS_ALGORITHMS,
    SigningKeyError,
    jwk_thumbprint,
    kms_key,
    load_pem_key,
    pem_algorithm,
    public_jwk,
)


def kms_jwks(client: Any, key_id: str, algorithm: str = "") -> dict[str, Any]:
    """The JWKS of the key ``key_id`` names now (an alias resolved), as the provider functions sign with it."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    response = client.get_public_key(KeyId=key_id)
    key = kms_key(response, algorithm)
    public = load_der_public_key(response["PublicKey"])
    return {"keys": [public_jwk(public, kid=key.kid, algorithm=key.algorithm)]}


def pem_jwks(text: str, algorithm: str = "", kid: str | None = None) -> dict[str, Any]:
    key = load_pem_key(text, "the key")
    public = key.public_key() if hasattr(key, "public_key") else key
    jwk = public_jwk(public, algorithm=pem_algorithm(public, algorithm, "the key"))
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    return {"keys": [jwk]}


def certificate_info(text: str, now: float | None = None) -> dict[str, Any]:
    from cryptography import x509

    from token_vending.tls import days_left, fingerprint

    cert = x509.load_pem_x509_certificate(text.encode())
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": round(days_left(text, time.time() if now is None else now), 1),
            "x5t#S256": fingerprint(text)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m token_vending.jwks", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--kms-key-id", help="KMS key id, ARN or alias (asymmetric, SIGN_VERIFY)")
    source.add_argument("--pem", help="a PEM private or public key file")
    source.add_argument("--secret-id", help="the provider's Secrets Manager secret (private_key or certificate)")
    source.add_argument("--certificate", help="a PEM client certificate file (mutual TLS)")
    parser.add_argument("--algorithm", choices=sorted(KMS_ALGORITHMS), default=None)
    parser.add_argument("--kid", default=None, help="key id to print (default: KMS key id or RFC 7638 thumbprint)")
    args = parser.parse_args(argv)
    try:
        out = _describe(args, parser)
    except SigningKeyError as exc:
        parser.error(str(exc))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _describe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.kms_key_id:
        import boto3

        out = kms_jwks(boto3.client("kms"), args.kms_key_id, args.algorithm or "")
    elif args.pem:
        with open(args.pem, encoding="ascii") as handle:
            out = pem_jwks(handle.read(), args.algorithm or "", args.kid)
    elif args.certificate:
        with open(args.certificate, encoding="ascii") as handle:
            out = {"certificate": certificate_info(handle.read())}
    else:
        import boto3

        secret = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=args.secret_id)["SecretString"])
        out = {}
        if secret.get("private_key") and not secret.get("certificate"):
            out = pem_jwks(secret["private_key"], args.algorithm or secret.get("algorithm", ""),
                           args.kid or secret.get("kid"))
        if secret.get("certificate"):
            out["certificate"] = certificate_info(secret["certificate"])
        if not out:
            parser.error("the secret holds neither private_key nor certificate")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
