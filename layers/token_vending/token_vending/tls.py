"""Mutual TLS (RFC 8705 ``tls_client_auth``): the client certificate and key from the provider's secret.

Python's ``ssl`` loads a certificate chain only from a path. The PEMs are written to an anonymous
in-memory file (``memfd_create``: no name on any file system, reachable only through this process's own
``/proc/self/fd``) for the moment ``load_cert_chain`` reads them, then closed; where memfd is missing, a
0600 file in the function's own temporary directory, removed at once. Nothing else can read them, and
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


class CertificateError(ValueError):
    """The certificate or key in the secret cannot be used (names the field, never its value)."""


@contextlib.contextmanager
def private_file(text: str) -> Iterator[str]:
    """A path to ``text`` that exists only while the block runs, readable by this process alone."""
    data = text.encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("token-vending-pem", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="token-vending-")  # pragma: no cover - memfd exists on Lambda
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def client_context(certificate: str, private_key: str, ca_chain: str = "", *, cafile: str | None = None
                   ) -> ssl.SSLContext:
    """A verifying TLS client context that presents ``certificate`` (followed by ``ca_chain``)."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain = certificate.strip() + "\n" + (ca_chain.strip() + "\n" if ca_chain.strip() else "")
    try:
        with private_file(chain) as cert_path, private_file(private_key) as key_path:
            # An empty password: without one, OpenSSL asks for an encrypted key's pass phrase on the terminal.
            context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, ValueError, OSError, TypeError):
        raise CertificateError("secret fields certificate/private_key are not a matching, unencrypted PEM "
                               "pair") from None
    return context


def days_left(certificate: str, now: float) -> float:
    """Days until the certificate's notAfter: the metric operators alarm on before a rotation is due."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError:
        raise CertificateError("secret field certificate is not a PEM certificate") from None
    return (cert.not_valid_after_utc.timestamp() - now) / 86400


def fingerprint(certificate: str) -> str:
    """SHA-256 over the DER certificate, base64url: RFC 8705's ``x5t#S256`` confirmation value."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(certificate.encode())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(cert.public_bytes(Encoding.DER))
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode("ascii")
