"""An RFC 8705 ``tls_client_auth`` token endpoint on 127.0.0.1: Python's ``ssl`` decides who gets in.

The provider emulators and the Authlib server speak plain HTTP on loopback; mutual TLS needs the real thing: a
TLS server that asks for a client certificate (``verify_mode = CERT_REQUIRED``), verifies it against the CA it
was given (OpenSSL's chain and validity checks, not code written here) and refuses the handshake otherwise with
the alert OpenSSL chooses (unknown CA, expired certificate, certificate required). Only after a verified
handshake does the token endpoint look at the form: ``grant_type=client_credentials`` and a ``client_id`` equal
to the certificate's subject CN (RFC 8705 section 2.1.1 binds the client to a registered subject DN; the CN
stands for it here) and registered with this server.

Every connection is handled in its own thread: accept, handshake (recorded, failures with OpenSSL's reason),
then HTTP/1.1 on the TLS socket. ``tls_version`` pins the protocol, because the two versions fail differently
for the client: in TLS 1.2 the server verifies the client certificate before its Finished, so the client's own
handshake fails with the server's alert; in TLS 1.3 the client's handshake completes first and the server's
alert only arrives when the client reads (after it has sent its request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from types import TracebackType

    from tests.support.pki import CertificateAuthority, Issued

TOKEN_PATH = "/token"


@dataclass(frozen=True)
class Handshake:
    """One TLS handshake as the server saw it."""

    ok: bool
    version: str | None = None
    """``TLSv1.2`` / ``TLSv1.3`` when it succeeded."""
    peer_cn: str | None = None
    """The verified client certificate's subject CN."""
    peer_sha256: str | None = None
    """SHA-256 of the verified client certificate (DER, hex): tells a renewed certificate from the old one."""
    reason: str | None = None
    """OpenSSL's reason when it failed (``CERTIFICATE_VERIFY_FAILED``, ``PEER_DID_NOT_RETURN_A_CERTIFICATE``...)."""
    verify_message: str | None = None
    """OpenSSL's verification message when the certificate was refused (``certificate has expired``...)."""


@dataclass(frozen=True)
class Received:
    """One HTTP request on a verified connection."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]
    peer_cn: str | None
    tls_version: str | None
    status: int
    answer: dict[str, Any]


@dataclass
class MtlsTokenServer:
    """A context manager serving ``https://127.0.0.1:<port>/token`` (``url``).

    ``ca``: the CA whose client certificates are accepted (``client_ca``: another trust anchor instead);
    ``clients``: the registered client ids (a verified certificate with an unregistered CN gets ``invalid_client``).
    """

    ca: CertificateAuthority
    clients: frozenset[str]
    expires_in: int = 900
    tls_version: ssl.TLSVersion | None = None
    client_ca: CertificateAuthority | None = None
    handshakes: list[Handshake] = field(default_factory=list)
    exchanges: list[Received] = field(default_factory=list)
    issued: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.context = self._server_context(self.ca.server_certificate())
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}{TOKEN_PATH}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="mtls-token-server", daemon=True)

    def _server_context(self, server: Issued) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED  # a client certificate is required and verified
        context.load_verify_locations(cadata=(self.client_ca or self.ca).certificate_pem)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_version is not None:
            context.minimum_version = context.maximum_version = self.tls_version
        # ssl loads a certificate chain only from files: the server's own, in a directory removed at once.
        with tempfile.TemporaryDirectory(prefix="mtls-server-") as directory:
            cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
            with open(cert, "w") as out:
                out.write(server.certificate_pem)
            with open(key, "w") as out:
                out.write(server.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def __enter__(self) -> MtlsTokenServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    # -- what it saw ----------------------------------------------------------------------------------------
    @property
    def token_requests(self) -> int:
        """Requests that reached the token endpoint over a verified connection."""
        with self._lock:
            return sum(1 for exchange in self.exchanges if exchange.path == TOKEN_PATH)

    @property
    def handshake_failures(self) -> list[Handshake]:
        with self._lock:
            return [handshake for handshake in self.handshakes if not handshake.ok]

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.handshakes)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.exchanges)

    def wait_for_handshakes(self, count: int, timeout: float = 5.0) -> list[Handshake]:
        """The handshakes once ``count`` are recorded: a refusal is recorded by the connection's thread, which
        may finish after the client has already seen the alert."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.handshakes) >= count:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.handshakes)

    # -- serving --------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connection, args=(sock, address), daemon=True).start()

    def _connection(self, sock: socket.socket, address: Any) -> None:
        sock.settimeout(5)
        try:
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            return
        try:
            tls.do_handshake()
        except ssl.SSLError as exc:
            self._record(Handshake(ok=False, reason=exc.reason, verify_message=getattr(exc, "verify_message", None)))
            tls.close()
            return
        except OSError as exc:
            self._record(Handshake(ok=False, reason=type(exc).__name__))
            tls.close()
            return
        cn = _subject_cn(tls.getpeercert())
        version = tls.version()
        der = tls.getpeercert(binary_form=True)
        self._record(Handshake(ok=True, version=version, peer_cn=cn,
                               peer_sha256=hashlib.sha256(der).hexdigest() if der else None))
        try:
            _Handler(tls, address, self, cn, version)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def _record(self, handshake: Handshake) -> None:
        with self._lock:
            self.handshakes.append(handshake)

    def answer(self, path: str, form: dict[str, list[str]], peer_cn: str | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint's decision for a request on a verified connection."""
        if path != TOKEN_PATH:
            return 404, {"error": "not_found"}
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}
        client_id = form.get("client_id", [None])[0]
        if client_id is None or client_id != peer_cn or client_id not in self.clients:
            return 401, {"error": "invalid_client",
                         "error_description": "the client certificate does not match the client"}
        token = {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer", "expires_in": self.expires_in}
        with self._lock:
            self.issued.append({**token, "client_id": client_id})
        return 200, token


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 on one verified TLS connection (``BaseHTTPRequestHandler`` handles the connection in its
    constructor)."""

    protocol_version = "HTTP/1.1"

    def __init__(self, request: ssl.SSLSocket, address: Any, owner: MtlsTokenServer, peer_cn: str | None,
                 version: str | None) -> None:
        self.owner = owner
        self.peer_cn = peer_cn
        self.tls_version = version
        super().__init__(request, address, None)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: the server records what it received instead."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        form: dict[str, list[str]] = {}
        for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            form.setdefault(name, []).append(value)
        status, answer = self.owner.answer(self.path, form, self.peer_cn)
        with self.owner._lock:
            self.owner.exchanges.append(Received("POST", self.path, dict(self.headers.items()), form,
                                                 self.peer_cn, self.tls_version, status, answer))
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _subject_cn(peer: dict[str, Any] | None) -> str | None:
    """The CN of a verified peer certificate, from ``SSLSocket.getpeercert()``'s nested tuples."""
    for rdn in (peer or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None
