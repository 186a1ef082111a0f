"""RFC 7523 client assertions for ``private_key_jwt`` (OpenID Connect Core section 9).

Instead of a shared secret, the client proves who it is with a short-lived JWT signed by its private key:
``iss`` = ``sub`` = client id, ``aud`` = the token endpoint, a unique ``jti``, ``iat`` and an ``exp`` at
most five minutes later. The key lives either in AWS KMS (``kms:Sign``: the private key never leaves KMS)
or, for teams that cannot use KMS, as a PEM in the provider's secret.

KMS signs RS256 (RSASSA_PKCS1_V1_5_SHA_256), PS256 (RSASSA_PSS_SHA_256, salt = digest length, as JOSE
requires) and ES256 (ECDSA_SHA_256). KMS returns ECDSA signatures DER-encoded; JOSE wants the raw 64-byte
``r || s`` (RFC 7518 section 3.4), hence :func:`der_to_jose`.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 60
"""Lifetime of one assertion: long enough for clock skew, far below the 5 minutes the issue allows."""
MAX_ASSERTION_SECONDS = 300
KMS_ALGORITHMS = {"RS256": "RSASSA_PKCS1_V1_5_SHA_256", "PS256": "RSASSA_PSS_SHA_256", "ES256": "ECDSA_SHA_256"}
"""JOSE ``alg`` -> KMS ``SigningAlgorithm``."""
ES256_PART_BYTES = 32


class SigningKeyError(ValueError):
    """The signing key or its algorithm cannot be used (names the condition, never key material)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der_to_jose(signature: bytes, part_bytes: int = ES256_PART_BYTES) -> bytes:
    """ECDSA-Sig-Value ``SEQUENCE { r INTEGER, s INTEGER }`` (DER) -> ``r || s``, each ``part_bytes`` long."""

    def read_length(data: bytes, at: int) -> tuple[int, int]:
        first = data[at]
        if first < 0x80:
            return first, at + 1
        count = first & 0x7F
        return int.from_bytes(data[at + 1:at + 1 + count], "big"), at + 1 + count

    def read_integer(data: bytes, at: int) -> tuple[int, int]:
        if data[at] != 0x02:
            raise SigningKeyError("the ECDSA signature is not DER")
        length, at = read_length(data, at + 1)
        return int.from_bytes(data[at:at + length], "big"), at + length

    try:
        if signature[0] != 0x30:
            raise SigningKeyError("the ECDSA signature is not DER")
        _, at = read_length(signature, 1)
        r, at = read_integer(signature, at)
        s, _ = read_integer(signature, at)
        return r.to_bytes(part_bytes, "big") + s.to_bytes(part_bytes, "big")
    except (IndexError, OverflowError):
        raise SigningKeyError("the ECDSA signature is not DER") from None


DEFAULT_ORDER = ("ES256", "RS256")
"""The algorithm a KMS key signs with when none is configured, from what the key supports: ES256 for a P-256
key, RS256 (the most widely accepted) for an RSA key."""


class Signer(Protocol):
    def header(self) -> dict[str, str]:
        """The JOSE header members this signer fixes: ``alg`` and ``kid``."""
        ...

    def sign(self, signing_input: bytes) -> bytes:
        """The JOSE signature of ``signing_input``."""
        ...


@dataclass
class KmsSigner:
    """Signs in AWS KMS. ``key_id`` may be a key ARN, id or alias: an alias moved to a new key is picked up
    within ``max_age`` seconds, without a deploy. ``kid`` is the key's KMS id (the JWKS command prints the
    same), so the provider can tell an old key from a new one during a rotation."""

    client: KMSClient
    key_id: str
    algorithm: str = ""
    """``RS256``, ``PS256`` or ``ES256``; empty: from what the key supports (:data:`DEFAULT_ORDER`)."""
    max_age: float = 300.0
    _resolved: tuple[float, str, str] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm and self.algorithm not in KMS_ALGORITHMS:
            raise SigningKeyError(f"signing algorithm must be one of {', '.join(KMS_ALGORITHMS)}")

    def _resolve(self) -> tuple[str, str]:
        """(alg, kid), from ``kms:GetPublicKey`` at most every ``max_age`` seconds (an alias may move)."""
        with self._lock:
            if self._resolved is None or time.monotonic() - self._resolved[0] > self.max_age:
                response = self.client.get_public_key(KeyId=self.key_id)
                supported = response.get("SigningAlgorithms", [])
                algorithm = self.algorithm or next(
                    (jose for jose in DEFAULT_ORDER if KMS_ALGORITHMS[jose] in supported), "")
                if not algorithm or KMS_ALGORITHMS[algorithm] not in supported:
                    raise SigningKeyError(f"the KMS key cannot sign {algorithm or 'RS256, PS256 or ES256'}")
                self._resolved = (time.monotonic(), algorithm, response["KeyId"].rsplit("/", 1)[-1])
            return self._resolved[1], self._resolved[2]

    def kid(self) -> str:
        return self._resolve()[1]

    def header(self) -> dict[str, str]:
        algorithm, kid = self._resolve()
        return {"alg": algorithm, "kid": kid}

    def sign(self, signing_input: bytes) -> bytes:
        algorithm, _ = self._resolve()
        response = self.client.sign(KeyId=self.key_id, Message=signing_input, MessageType="RAW",
                                    SigningAlgorithm=KMS_ALGORITHMS[algorithm])  # type: ignore[arg-type]
        signature = response["Signature"]
        return der_to_jose(signature) if algorithm == "ES256" else signature


@dataclass
class PemSigner:
    """Signs with a PEM private key from the provider's secret (``cryptography``, imported on first use)."""

    private_key_pem: str = field(repr=False)
    algorithm: str = ""
    """``RS256``, ``PS256`` or ``ES256``; empty: ES256 for an EC key, RS256 for an RSA key."""
    key_id: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm and self.algorithm not in KMS_ALGORITHMS:
            raise SigningKeyError(f"signing algorithm must be one of {', '.join(KMS_ALGORITHMS)}")
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            self._key = load_pem_private_key(self.private_key_pem.encode(), password=None)
        except (ValueError, TypeError):
            raise SigningKeyError("secret field private_key is not an unencrypted PEM private key") from None
        if not self.algorithm:
            self.algorithm = "ES256" if isinstance(self._key, ec.EllipticCurvePrivateKey) else "RS256"
        wanted = ec.EllipticCurvePrivateKey if self.algorithm == "ES256" else rsa.RSAPrivateKey
        if not isinstance(self._key, wanted):
            raise SigningKeyError(f"secret field private_key does not fit {self.algorithm}")

    def kid(self) -> str:
        """The secret's ``kid``, else the RFC 7638 thumbprint of the public key (what the JWKS command prints)."""
        return self.key_id or jwk_thumbprint(public_jwk(self._key.public_key()))

    def header(self) -> dict[str, str]:
        return {"alg": self.algorithm, "kid": self.kid()}

    def sign(self, signing_input: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding

        key: Any = self._key
        if self.algorithm == "ES256":
            return der_to_jose(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        if self.algorithm == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
            return bytes(key.sign(signing_input, pss, hashes.SHA256()))
        return bytes(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


def client_assertion(signer: Signer, *, client_id: str, audience: str, now: float | None = None,
                     lifetime: int = ASSERTION_SECONDS) -> str:
    """A signed RFC 7523 section 3 client assertion; a fresh ``jti`` every time (providers refuse replays)."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "jti": secrets.token_urlsafe(24),
              "iat": issued, "nbf": issued, "exp": issued + min(lifetime, MAX_ASSERTION_SECONDS)}
    header = {**signer.header(), "typ": "JWT"}
    signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(signer.sign(signing_input))}"


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def public_jwk(public_key: Any, *, kid: str | None = None, algorithm: str | None = None) -> dict[str, str]:
    """The JWK (RFC 7517) of an RSA or P-256 public key (a ``cryptography`` key object)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        jwk = {"kty": "RSA", "n": b64url(_unsigned(numbers.n)), "e": b64url(_unsigned(numbers.e))}
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        point = public_key.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64url(point.x.to_bytes(32, "big")),
               "y": b64url(point.y.to_bytes(32, "big"))}
    else:
        raise SigningKeyError("only RSA and P-256 keys are supported")
    if kid is not None:
        jwk["kid"] = kid
    if algorithm is not None:
        jwk["alg"] = algorithm
    jwk["use"] = "sig"
    return jwk


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, lexicographically ordered, no white space."""
    import hashlib

    required = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _unsigned(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
