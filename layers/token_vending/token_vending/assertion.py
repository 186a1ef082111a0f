"""RFC 7523 client assertions for ``private_key_jwt`` (OpenID Connect Core section 9).

Instead of a shared secret, the client proves who it is with a short-lived JWT signed by its private key:
``iss`` = ``sub`` = client id, ``aud`` = the token endpoint, a unique ``jti``, ``iat`` and an ``exp`` at
most five minutes later. The key lives either in AWS KMS (``kms:Sign``: the private key never leaves KMS)
or, for teams that cannot use KMS, as a PEM in the provider's secret.

The key decides the JWS ``alg`` (RFC 7518 section 3.1): ES256, ES384 and ES512 for the NIST curves P-256,
P-384 and P-521 (each with its own hash), RS256 or PS256 for RSA (2048 bits or more). Any other key is
refused by name (its KMS key spec or its curve): KMS also offers ``ECDSA_SHA_256`` for a secp256k1 key, and
labelling such a signature ES256 would only have every token request refused by the provider. PS256 uses a
salt of the digest length, as JOSE requires. ECDSA signatures (KMS's, and ``cryptography``'s) are DER; JOSE
wants the raw ``r || s`` (RFC 7518 section 3.4), hence :func:`der_to_jose`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from token_vending.aws_errors import error_code

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_kms import KMSClient

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 60
"""Lifetime of one assertion: long enough for clock skew, far below the 5 minutes the issue allows."""
MAX_ASSERTION_SECONDS = 300
KMS_ALGORITHMS = {"RS256": "RSASSA_PKCS1_V1_5_SHA_256", "PS256": "RSASSA_PSS_SHA_256", "ES256": "ECDSA_SHA_256",
                  "ES384": "ECDSA_SHA_384", "ES512": "ECDSA_SHA_512"}
"""JOSE ``alg`` -> KMS ``SigningAlgorithm``: every algorithm this service signs with."""
EC_ALGORITHMS = {"ES256": ("secp256r1", "P-256", 32), "ES384": ("secp384r1", "P-384", 48),
                 "ES512": ("secp521r1", "P-521", 66)}
"""ECDSA ``alg`` -> (the curve RFC 7518 section 3.4 ties it to, its JWK ``crv``, bytes of ``r`` and of ``s``)."""
RSA_ALGORITHMS = ("RS256", "PS256")
"""For an RSA key; the first unless the secret's ``algorithm`` says otherwise (the most widely accepted)."""
MIN_RSA_BITS = 2048
"""RFC 7518 sections 3.3 and 3.5: a key of 2048 bits or larger MUST be used."""
KEY_SPEC_ALGORITHMS = {
    "ECC_NIST_P256": ("ES256",), "ECC_NIST_P384": ("ES384",), "ECC_NIST_P521": ("ES512",),
    "RSA_2048": RSA_ALGORITHMS, "RSA_3072": RSA_ALGORITHMS, "RSA_4096": RSA_ALGORITHMS,
}
"""KMS ``KeySpec`` -> the JOSE algorithms its key may sign; any other spec (``ECC_SECG_P256K1``, ``SM2``,
HMAC, symmetric, ML-DSA) is refused by name."""
KEY_MAX_AGE = 60.0
"""Seconds a KMS key's resolution (alias -> key, ``alg``, ``kid``) is kept: an alias moved to a new key is
signed with, and named in ``kid``, within a minute, whatever the secret's cache age."""
KEY_GONE_CODES = frozenset({"AccessDeniedException", "DisabledException", "KMSInvalidStateException",
                            "NotFoundException"})
"""What KMS answers when a key an alias no longer points at is used: the grant followed the alias (an IAM
grant by ``kms:ResourceAliases``), or the old key was disabled or scheduled for deletion."""


class SigningKeyError(ValueError):
    """The signing key or its algorithm cannot be used (names the condition, never key material)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der_to_jose(signature: bytes, part_bytes: int = 32) -> bytes:
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


def _choose(allowed: tuple[str, ...], configured: str, what: str) -> str:
    """``configured`` if the key may sign it, else the key's first algorithm; refused when it does not fit."""
    if configured and configured not in KMS_ALGORITHMS:
        raise SigningKeyError(f"signing algorithm must be one of {', '.join(KMS_ALGORITHMS)}")
    if configured and configured not in allowed:
        raise SigningKeyError(f"{what} cannot sign {configured} (it signs {' or '.join(allowed)})")
    return configured or allowed[0]


def _jose_signature(algorithm: str, signature: bytes) -> bytes:
    """A signature as JOSE carries it: ECDSA's DER as ``r || s`` of the curve's size, RSA's as it is."""
    curve = EC_ALGORITHMS.get(algorithm)
    return der_to_jose(signature, curve[2]) if curve else signature


class Signer(Protocol):
    def compact(self, claims: dict[str, Any]) -> str:
        """``claims`` as a compact JWS whose header's ``alg`` and ``kid`` name the very key that signed it."""
        ...


def _compact(header: dict[str, str], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    header = {**header, "typ": "JWT"}
    signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(sign(signing_input))}"


@dataclass(frozen=True)
class KmsKey:
    """One resolution of the configured key id: the key itself (``key_id``: the key ARN KMS answered with,
    never the alias), the algorithm its spec signs and the ``kid`` the provider knows it by."""

    key_id: str
    algorithm: str
    kid: str
    resolved_at: float = 0.0


def kms_key(response: Any, configured: str = "", resolved_at: float = 0.0) -> KmsKey:
    """A ``kms:GetPublicKey`` answer -> the key to sign with; refused (naming the key spec) unless its spec has a
    JOSE algorithm and KMS offers that algorithm for it."""
    spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec") or "unknown"
    if response.get("KeyUsage", "SIGN_VERIFY") != "SIGN_VERIFY":
        raise SigningKeyError(f"the KMS key is not a signing key (key usage {response.get('KeyUsage')})")
    allowed = KEY_SPEC_ALGORITHMS.get(spec)
    if allowed is None:
        raise SigningKeyError(f"the KMS key's spec {spec} has no JOSE algorithm; use ECC_NIST_P256, ECC_NIST_P384, "
                              f"ECC_NIST_P521 or RSA_2048 and up")
    algorithm = _choose(allowed, configured, f"the KMS key ({spec})")
    if KMS_ALGORITHMS[algorithm] not in response.get("SigningAlgorithms", []):
        raise SigningKeyError(f"the KMS key ({spec}) cannot sign {algorithm}")
    key_id = response["KeyId"]
    return KmsKey(key_id=key_id, algorithm=algorithm, kid=key_id.rsplit("/", 1)[-1], resolved_at=resolved_at)


def _is_alias(key_id: str) -> bool:
    return key_id.startswith("alias/") or ":alias/" in key_id


@dataclass
class KmsSigner:
    """Signs in AWS KMS. ``key_id`` may be a key ARN, id or alias. The alias is resolved to its key by
    ``kms:GetPublicKey`` (at most every :data:`KEY_MAX_AGE` seconds) and ``kms:Sign`` is then called with that
    key's ARN, never with the alias: the ``kid`` in the header (the key's KMS id, as the JWKS command prints it)
    always names the key that signed, even while the alias moves. A key KMS refuses (the alias has left it, it
    was disabled or scheduled for deletion) makes the alias be resolved again at once."""

    client: KMSClient
    key_id: str
    algorithm: str = ""
    """Empty: from the key spec (RS256 for RSA); ``PS256`` for an RSA key that should sign RSASSA-PSS."""
    max_age: float = KEY_MAX_AGE
    """Bounded by :data:`KEY_MAX_AGE` whatever the caller passes."""
    _resolved: KmsKey | None = field(default=None, repr=False)
    _last_signed: KmsKey | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm and self.algorithm not in KMS_ALGORITHMS:
            raise SigningKeyError(f"signing algorithm must be one of {', '.join(KMS_ALGORITHMS)}")

    def resolve(self, *, refresh: bool = False) -> KmsKey:
        """The key ``key_id`` names now, from ``kms:GetPublicKey``, kept at most ``max_age`` seconds."""
        with self._lock:
            now = time.monotonic()
            resolved = self._resolved
            if refresh or resolved is None or now - resolved.resolved_at > min(self.max_age, KEY_MAX_AGE):
                response = self.client.get_public_key(KeyId=self.key_id)
                resolved = self._resolved = kms_key(response, self.algorithm, now)
            return resolved

    def kid(self) -> str:
        return self.resolve().kid

    def compact(self, claims: dict[str, Any]) -> str:
        from botocore.exceptions import ClientError

        failed: KmsKey | None = None
        try:
            failed = self.resolve()
            return self._signed(failed, claims)
        except ClientError as exc:
            if not _is_alias(self.key_id) or error_code(exc) not in KEY_GONE_CODES:
                raise
            # Another key, once: the alias's key now (it has moved on), else the last key that signed (KMS
            # documents up to five minutes before an alias move affects authorisation: the new key may not be
            # granted yet while the old one still is). Either way kid and signature name the same key.
            others = [self._last_signed]
            with contextlib.suppress(ClientError):
                others.insert(0, self.resolve(refresh=True))
            for other in others:
                if other is not None and (failed is None or other.key_id != failed.key_id):
                    return self._signed(other, claims)
            raise

    def _signed(self, key: KmsKey, claims: dict[str, Any]) -> str:
        token = self._compact(key, claims)
        self._last_signed = key
        return token

    def _compact(self, key: KmsKey, claims: dict[str, Any]) -> str:
        def sign(signing_input: bytes) -> bytes:
            response = self.client.sign(KeyId=key.key_id, Message=signing_input, MessageType="RAW",
                                        SigningAlgorithm=KMS_ALGORITHMS[key.algorithm])  # type: ignore[arg-type]
            return _jose_signature(key.algorithm, response["Signature"])

        return _compact({"alg": key.algorithm, "kid": key.kid}, claims, sign)


def pem_algorithm(key: Any, configured: str = "", what: str = "secret field private_key") -> str:
    """The JOSE algorithm a ``cryptography`` key (private or public) signs; refused naming its curve or size."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise SigningKeyError(f"{what} is a {key.key_size}-bit RSA key; JOSE requires {MIN_RSA_BITS} bits or more")
        return _choose(RSA_ALGORITHMS, configured, f"{what} (RSA)")
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = next((alg for alg, (curve, _, _) in EC_ALGORITHMS.items() if curve == key.curve.name), None)
        if algorithm is None:
            raise SigningKeyError(f"{what} is an EC key on {key.curve.name}, which no JOSE algorithm signs with; "
                                  f"use P-256, P-384 or P-521")
        return _choose((algorithm,), configured, f"{what} ({EC_ALGORITHMS[algorithm][1]})")
    raise SigningKeyError(f"{what} is neither an RSA nor an EC key")


def load_pem_key(text: str, what: str, *, private: bool = False) -> Any:
    """A PEM private key (or, unless ``private``, a public one), else :class:`SigningKeyError` naming ``what`` and
    never echoing the text: not PEM, encrypted, or of a kind ``cryptography`` has no code for (its
    ``UnsupportedAlgorithm`` is no ``ValueError``: an SM2 or secp112r1 key)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    data = text.encode()
    try:
        if private or b"PRIVATE KEY" in data:
            return load_pem_private_key(data, password=None)
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        kind = "an unencrypted PEM private key" if private else "an unencrypted PEM key"
        raise SigningKeyError(f"{what} is not {kind}") from None
    except UnsupportedAlgorithm:
        raise SigningKeyError(f"{what} is a key on a curve or of a type no JOSE algorithm signs with; use P-256, "
                              f"P-384, P-521 or RSA (2048 bits or more)") from None


@dataclass
class PemSigner:
    """Signs with a PEM private key from the provider's secret (``cryptography``, imported on first use)."""

    private_key_pem: str = field(repr=False)
    algorithm: str = ""
    """Empty: from the key (ES256/ES384/ES512 by curve, RS256 for RSA); ``PS256`` for RSASSA-PSS."""
    key_id: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm and self.algorithm not in KMS_ALGORITHMS:
            raise SigningKeyError(f"signing algorithm must be one of {', '.join(KMS_ALGORITHMS)}")
        self._key = load_pem_key(self.private_key_pem, "secret field private_key", private=True)
        self.algorithm = pem_algorithm(self._key, self.algorithm)

    def kid(self) -> str:
        """The secret's ``kid``, else the RFC 7638 thumbprint of the public key (what the JWKS command prints)."""
        return self.key_id or jwk_thumbprint(public_jwk(self._key.public_key()))

    def compact(self, claims: dict[str, Any]) -> str:
        return _compact({"alg": self.algorithm, "kid": self.kid()}, claims, self.sign)

    def sign(self, signing_input: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding

        key: Any = self._key
        if self.algorithm in EC_ALGORITHMS:
            digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[self.algorithm]
            return _jose_signature(self.algorithm, key.sign(signing_input, ec.ECDSA(digest)))
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
    return signer.compact(claims)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def public_jwk(public_key: Any, *, kid: str | None = None, algorithm: str | None = None) -> dict[str, str]:
    """The JWK (RFC 7517) of an RSA, P-256, P-384 or P-521 public key (a ``cryptography`` key object)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        jwk = {"kty": "RSA", "n": b64url(_unsigned(numbers.n)), "e": b64url(_unsigned(numbers.e))}
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        _, crv, size = EC_ALGORITHMS[pem_algorithm(public_key, what="the public key")]
        point = public_key.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": b64url(point.x.to_bytes(size, "big")),
               "y": b64url(point.y.to_bytes(size, "big"))}
    else:
        raise SigningKeyError("only RSA and P-256, P-384 and P-521 keys are supported")
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
