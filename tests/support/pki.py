"""A throwaway public-key infrastructure for mutual-TLS tests, generated in the test with ``cryptography``.

Mutual TLS can only be tested honestly with certificates a real TLS stack verifies: a CA, a server certificate
for ``127.0.0.1`` (as an IP subjectAltName: Python and urllib3 match IP addresses only against IP SANs), and
client certificates that are valid, expired, not yet valid or issued by another CA. Nothing here is written to
disk except on request (:meth:`CertificateAuthority.write_bundle`), because the tests also check that the
function under test leaves no PEM behind in the temporary directory.

Keys are P-256 by default (fast to generate); RSA on request, so both key types reach the TLS stack.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

KeyType = Literal["ec", "rsa"]
DAY = datetime.timedelta(days=1)


def new_key(key_type: KeyType = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """PKCS#8, unencrypted: the form a secret holds."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def pem_body(pem: str) -> str:
    """The base64 lines of a PEM without its ``-----BEGIN/END-----`` armour: what a leak would show."""
    return "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM text (what the provider's secret holds)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(repr=False)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)

    @property
    def sha256(self) -> str:
        """SHA-256 of the DER certificate, hex (what the mTLS server records for the certificate it verified)."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def common_name(self) -> str:
        return str(self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@dataclass
class CertificateAuthority:
    """A self-signed root that issues server and client certificates."""

    name: str = "Token Vending Test CA"
    key_type: KeyType = "ec"
    parent: CertificateAuthority | None = None
    """The CA that signs this one (an intermediate); ``None``: self-signed root."""

    def __post_init__(self) -> None:
        self.key = new_key(self.key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        start = now() - DAY
        parent: CertificateAuthority | None = self.parent
        issuer = parent.certificate.subject if parent else subject
        signing_key = parent.key if parent else self.key
        self.certificate: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None if self.parent is None else 0),
                           critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(signing_key, hashes.SHA256())
        )

    @property
    def _signing_key(self) -> CertificateIssuerPrivateKeyTypes:
        return self.key

    def intermediate(self, name: str) -> CertificateAuthority:
        """A CA this one signs: its client certificates verify only if the client also sends its certificate
        (the secret's ``ca_chain``), since servers trust the root alone."""
        return CertificateAuthority(name, self.key_type, parent=self)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def write_bundle(self, path: Path) -> str:
        """The CA certificate as a PEM file (``UPSTREAM_CA_BUNDLE``, the server's client-CA file); its path."""
        path.write_text(self.certificate_pem)
        return str(path)

    def issue(self, common_name: str, *, server: bool = False, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, key_type: KeyType = "ec") -> Issued:
        """A leaf certificate. ``server``: for ``127.0.0.1`` (IP SAN, serverAuth); else a client certificate
        (clientAuth, the subject CN being the client id, as RFC 8705 2.1.1's registered subject DN)."""
        key = new_key(key_type)
        start = not_before or now() - DAY
        end = not_after or start + 10 * DAY
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return Issued(builder.sign(self._signing_key, hashes.SHA256()), key)

    def server_certificate(self) -> Issued:
        return self.issue("127.0.0.1", server=True)

    def client_certificate(self, client_id: str, *, days_left: float = 10.0, key_type: KeyType = "ec") -> Issued:
        """Valid now and for ``days_left`` more days (negative: expired that many days ago)."""
        end = now() + datetime.timedelta(days=days_left)
        start = min(now(), end) - 5 * DAY
        return self.issue(client_id, not_before=start, not_after=end, key_type=key_type)


LEAK_WINDOW = 16
"""Any run of this many characters of a key's encoding counts as a leak (a truncated echo still gives most of
it away); long enough never to occur by chance in logs, EMF or error bodies."""


def key_leak_forms(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> list[str]:
    """Every spelling of a private key that would give it away: its PEM body (PKCS#8 and the traditional
    form), any ``LEAK_WINDOW`` characters of either, and the private scalar as a JWK ``d`` member."""
    import base64

    forms: list[str] = []
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        body = pem_body(key.private_bytes(serialization.Encoding.PEM, form,
                                          serialization.NoEncryption()).decode("ascii"))
        forms += [body] + [body[i:i + LEAK_WINDOW] for i in range(len(body) - LEAK_WINDOW + 1)]
    secret = key.private_numbers().private_value if isinstance(key, ec.EllipticCurvePrivateKey) \
        else key.private_numbers().d
    forms.append(base64.urlsafe_b64encode(secret.to_bytes((secret.bit_length() + 7) // 8, "big"))
                 .rstrip(b"=").decode("ascii"))
    return forms


def token_leak_forms(value: str) -> list[str]:
    """A bearer credential (a client assertion, its signature): whole, or any ``LEAK_WINDOW`` characters."""
    return [value] + [value[i:i + LEAK_WINDOW] for i in range(len(value) - LEAK_WINDOW + 1)]


def leaks(text: str, forms: dict[str, list[str]]) -> list[str]:
    """The names of the secrets some form of which occurs in ``text``."""
    return [name for name, spellings in forms.items() if any(form in text for form in spellings)]
