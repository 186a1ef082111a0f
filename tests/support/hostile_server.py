"""A raw-socket HTTP/1.1 server on loopback that misbehaves on purpose, one scripted behaviour per request.

The provider emulators in ``local.providers`` are well-mannered ``http.server`` handlers: whatever they send
is framed and sanitised by the standard library, so they cannot cut a body short of its ``Content-Length``,
lie about ``Content-Encoding``, break chunked framing, reset the connection or fail a TLS handshake. This
server writes bytes straight to the socket so the token service meets those transport faults for real.

It records what it receives (every token request, and when each connection started and ended) so a test can
count token requests exactly and measure how many were in flight at once: single flight is a promise about
the provider's view, so it is checked from the provider's side of the socket.

Every wait is bounded (``max_seconds``) and stopping the server ends every wait at once: a test that fails
half-way never leaves a thread trickling bytes into the next test.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_REQUEST_HEAD = 64 * 1024
"""A token request head is a few hundred bytes; anything larger is not one we wait for."""
REQUEST_READ_SECONDS = 5.0
DEFAULT_MAX_SECONDS = 15.0
"""Longest any behaviour keeps a connection open: well past every client timeout the tests configure."""
GARBAGE = b"SSH-2.0-OpenSSH_9.6 this is not a TLS ServerHello\r\n" * 4


@dataclass
class RecordedRequest:
    """One HTTP request as received, with the connection's lifetime (``time.monotonic`` seconds)."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes
    started: float
    ended: float | None = None
    bytes_sent: int = 0
    client_closed: bool = False
    """The client hung up (EOF or a failed write) before the behaviour finished."""


class Connection:
    """What a behaviour works with: the accepted socket, the request read from it and bounded helpers."""

    def __init__(self, sock: socket.socket, request: RecordedRequest, server: HostileServer) -> None:
        self.sock = sock
        self.request = request
        self.server = server
        self.closed = False

    @property
    def echo(self) -> str:
        """What the client sent that must never reach a caller (its Authorization header and form body).

        Hostile answers embed it so the tests can check that no fault path passes provider text on verbatim.
        """
        authorization = self.request.headers.get("authorization", "")
        return f"{authorization} {self.request.body.decode('latin-1')}"

    def send(self, data: bytes) -> bool:
        """``False`` once the client has gone (a write fails); never raises."""
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            self.request.client_closed = True
            return False
        self.request.bytes_sent += len(data)
        return True

    def wait_for_close(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to hang up; ``True`` if it did.

        Readability plus an empty ``recv`` is the client's FIN (or an error, its RST): the moment it gave up,
        which is what makes the recorded end time of a request exact enough to measure overlap.
        """
        end = time.monotonic() + min(seconds, self.server.max_seconds)
        while not self.closed and not self.server.stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                readable, _, _ = select.select([self.sock], [], [], min(left, 0.05))
                if readable and not self.sock.recv(4096):
                    self.request.client_closed = True
                    return True
            except OSError:
                self.request.client_closed = True
                return True
        return self.request.client_closed

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN and drops anything unsent."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


type Behaviour = Callable[[Connection], None]
"""A scripted answer: it owns the connection once the request has been read."""


def head(status: str, headers: list[tuple[str, str]]) -> bytes:
    """A status line and header block exactly as given: nothing added, nothing normalised."""
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def token_document(access_token: str, expires_in: int, scope: str | None) -> bytes:
    document: dict[str, object] = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
    if scope is not None:
        document["scope"] = scope
    return json.dumps(document).encode()


# -- behaviours ------------------------------------------------------------------------------------------
def well_behaved(access_token: str, *, expires_in: int = 900, scope: str | None = None) -> Behaviour:
    """A correct 200 token answer, then close: the provider on a good day."""

    def play(conn: Connection) -> None:
        body = token_document(access_token, expires_in, scope)
        conn.send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store"), ("Connection", "close")]) + body)

    return play


def stall_after_headers(*, content_length: int = 200) -> Behaviour:
    """Headers promise a body that never comes; the connection stays open until the client gives up."""

    def play(conn: Connection) -> None:
        conn.send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(content_length)),
                                  ("Connection", "close")]))
        conn.wait_for_close(conn.server.max_seconds)

    return play


def truncated(status: str, *, keep: float = 0.4, retry_after: int | None = None) -> Behaviour:
    """A body cut short of its ``Content-Length`` (only ``keep`` of it sent), then an orderly close (FIN).

    ``retry_after``: a ``Retry-After`` header, which arrives whole even though the body does not.
    """
    extra = [("Retry-After", str(retry_after))] if retry_after is not None else []

    def play(conn: Connection) -> None:
        if status.startswith("2"):
            body = json.dumps({"access_token": "truncated_token_" + "x" * 64, "token_type": "Bearer",
                               "expires_in": 900, "note": conn.echo}).encode()
        else:
            body = json.dumps({"error": "temporarily_unavailable", "error_description": conn.echo}).encode()
        cut = max(1, int(len(body) * keep))
        conn.send(head(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                ("Connection", "close"), *extra]) + body[:cut])
        time.sleep(0.05)  # let the client read what was sent before the FIN
        conn.close()

    return play


def false_gzip() -> Behaviour:
    """``Content-Encoding: gzip`` on a plain JSON body: the client's decoder must fail, not guess."""

    def play(conn: Connection) -> None:
        body = token_document("plain_not_gzip_token", 900, None)
        conn.send(head("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body))), ("Connection", "close")]) + body)

    return play


def broken_chunked() -> Behaviour:
    """``Transfer-Encoding: chunked`` whose first chunk-size line is not hexadecimal."""

    def play(conn: Connection) -> None:
        body = token_document("chunked_token", 900, None)
        conn.send(head("200 OK", [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"),
                                  ("Connection", "close")])
                  + b"zz; not a size\r\n" + body + b"\r\n0\r\n\r\n")
        time.sleep(0.05)
        conn.close()

    return play


def trickle(*, interval: float = 1.0) -> Behaviour:
    """Valid 200 headers, then the body one byte per ``interval``: every read is quick, the whole is not.

    Stops as soon as the client hangs up (so the recorded end is the moment it gave up) or the body is out.
    """

    def play(conn: Connection) -> None:
        body = token_document("trickled_token", 900, None)
        if not conn.send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                         ("Connection", "close")])):
            return
        for index in range(len(body)):
            if conn.wait_for_close(interval) or not conn.send(body[index:index + 1]):
                return

    return play


def reset_mid_body() -> Behaviour:
    """Headers and part of the body, a pause so the client is reading the body, then a TCP RST."""

    def play(conn: Connection) -> None:
        body = json.dumps({"access_token": "reset_token_" + "y" * 64, "token_type": "Bearer",
                           "expires_in": 900, "note": conn.echo}).encode()
        conn.send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Connection", "close")]) + body[:20])
        time.sleep(0.2)
        conn.reset()

    return play


def oversized_headers(kind: str) -> Behaviour:
    """``many``: 200 header lines (http.client allows 100); ``long``: one 70 KB line (it allows 64 KiB)."""
    if kind not in ("many", "long"):
        raise ValueError(kind)

    def play(conn: Connection) -> None:
        body = token_document("oversized_token", 900, None)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
        if kind == "many":
            headers += [(f"X-Pad-{index}", conn.echo[:40] or "pad") for index in range(200)]
        else:
            headers.append(("X-Pad", ("pad " + conn.echo)[:64] + "p" * 70 * 1024))
        conn.send(head("200 OK", headers) + body)
        conn.wait_for_close(2.0)

    return play


def redirect(location: str) -> Behaviour:
    """A 302 elsewhere: a token request (with its credentials) must never follow it."""

    def play(conn: Connection) -> None:
        conn.send(head("302 Found", [("Location", location), ("Content-Length", "0"), ("Connection", "close")]))

    return play


# -- the server ------------------------------------------------------------------------------------------
@dataclass
class _Counters:
    connections: int = 0
    handshake_failures: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        self.server.owner.serve(self.request)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, owner: HostileServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class HostileServer:
    """Loopback HTTP/1.1 (or HTTPS) server that answers every request with ``behaviour``.

    ``behaviour`` may be replaced between requests (a well-behaved phase, then a hostile one).
    ``tls``: serve TLS with this context (a self-signed certificate the client must refuse).
    ``garbage_handshake``: answer the TLS ClientHello with bytes that are not TLS at all.
    """

    def __init__(self, behaviour: Behaviour, *, tls: ssl.SSLContext | None = None,
                 garbage_handshake: bool = False, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.garbage_handshake = garbage_handshake
        self.max_seconds = max_seconds
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._open: set[socket.socket] = set()
        self._server = _TCPServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hostile-server", daemon=True)

    # -- what the tests read -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/billing/oauth2/token") -> str:
        scheme = "https" if self.tls is not None or self.garbage_handshake else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._counters.requests)

    @property
    def token_requests(self) -> int:
        """HTTP requests fully received (a TLS connection that never got past its handshake is not one)."""
        with self._lock:
            return len(self._counters.requests)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._counters.connections

    @property
    def handshake_failures(self) -> int:
        with self._lock:
            return self._counters.handshake_failures

    @property
    def peak_in_flight(self) -> int:
        """Most connections open at the same time, from accept to close (an upper bound on requests)."""
        with self._lock:
            return self._counters.peak_in_flight

    def wait_idle(self, seconds: float = 5.0) -> bool:
        """Wait (bounded) until no connection is open, so every request's end time is recorded.

        The caller's answer can arrive a moment before this server has noticed the hang-up that produced it.
        """
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self._lock:
                if self._counters.in_flight == 0:
                    return True
            time.sleep(0.02)
        return False

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends every behaviour's wait, closes open connections and the listening socket."""
        self.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()  # would wait forever for a serve_forever that never started
        self._server.server_close()
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection ------------------------------------------------------------------------------------
    def serve(self, sock: socket.socket) -> None:
        started = time.monotonic()
        with self._lock:
            self._counters.connections += 1
            self._counters.in_flight += 1
            self._counters.peak_in_flight = max(self._counters.peak_in_flight, self._counters.in_flight)
            self._open.add(sock)
        record: RecordedRequest | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(REQUEST_READ_SECONDS)
            if self.garbage_handshake:
                self._answer_with_garbage(sock)
                return
            stream: socket.socket = sock
            if self.tls is not None:
                try:
                    stream = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    with self._lock:
                        self._counters.handshake_failures += 1
                    return
            record = _read_request(stream, started)
            if record is None:
                return
            with self._lock:
                self._counters.requests.append(record)
            connection = Connection(stream, record, self)
            try:
                self.behaviour(connection)
            finally:
                connection.close()
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            ended = time.monotonic()
            with self._lock:
                self._counters.in_flight -= 1
                self._open.discard(sock)
                if record is not None:
                    record.ended = ended

    def _answer_with_garbage(self, sock: socket.socket) -> None:
        """Read the ClientHello, answer with non-TLS bytes, wait briefly for the client to give up."""
        with contextlib.suppress(OSError):
            sock.recv(16384)
            sock.sendall(GARBAGE)
            with self._lock:
                self._counters.handshake_failures += 1
            end = time.monotonic() + 2.0
            while time.monotonic() < end and not self.stopping.is_set():
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable and not sock.recv(4096):
                    return


def _read_request(sock: socket.socket, started: float) -> RecordedRequest | None:
    """One request head and its ``Content-Length`` body, all of it (so a later close is a FIN, not a RST)."""
    data = b""
    deadline = time.monotonic() + REQUEST_READ_SECONDS
    try:
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_REQUEST_HEAD or time.monotonic() > deadline:
                return None
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
        raw_head, _, body = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(body) < length:
            if time.monotonic() > deadline:
                return None
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
    except (OSError, ValueError):
        return None
    return RecordedRequest(method=method, path=path, headers=headers, body=body[:length], started=started)
