"""What the local API and Lambda servers share: keep-alive JSON answers on loopback."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from token_vending.numbers import parse_whole

MAX_BODY = 10 * 1024 * 1024
"""API Gateway's largest request payload (10 MB): a longer declared body is refused before it is read."""


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""What every refusal carries, as the deployed API's gateway responses do."""


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the servers log what matters themselves."""

    def read_body(self) -> bytes | None:
        """The request body by its ``Content-Length``; ``None`` after answering 400 (and closing) when the length
        is not a plain number of bytes within :data:`MAX_BODY`, as AWS's front doors refuse such framing: a
        negative length would read until the client hangs up, a non-number would drop the connection unanswered."""
        raw = self.headers.get("Content-Length")
        length = parse_whole(raw) if raw is not None else 0
        if length is None or length > MAX_BODY or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(400)
            return None
        return self.rfile.read(length) if length else b""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every refusal the standard library makes (414 request line too long, 431 header too large, 501 unknown
        method, 400 unparsable request) in JSON with ``no-store`` instead of its HTML page, through
        :meth:`error_response`. ``message`` is not used: it may quote the request (the caller's input); the
        status's own phrase is. The connection is closed, as the standard library does: the request may not be
        framed."""
        phrase = self.responses.get(code, ("Error",))[0]
        status, headers, body = self.error_response(int(code), phrase)
        self.close_connection = True
        self.send_json(status, body, {**headers, "Connection": "close"})

    def error_response(self, code: int, message: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of a refusal the standard library makes; the API overrides it with the
        deployed gateway responses."""
        return code, {**NO_STORE}, json.dumps({"message": message}).encode()

    def send_json(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the body it does not carry
            self.wfile.write(body)


class PortInUse(Exception):
    """A port the local stack means to listen on is taken; the message is the one line a developer reads."""

    def __init__(self, host: str, port: int, what: str, option: str) -> None:
        holder = port_holder(port)
        by = f" by {holder}" if holder else ""
        super().__init__(f"port {port} ({what}) on {host} is in use{by} (another `make local`?): stop it or pass "
                         f"{option}")
        self.port = port


def check_ports(host: str, ports: dict[int, tuple[str, str]]) -> None:
    """Raises :class:`PortInUse` for the first of ``ports`` (port -> what listens there, the option that moves
    it) that cannot be bound now, before anything is started: a second ``make local`` is told which port, rather
    than dying half-started or leaving a stale listener to answer. Port 0 (any free port) is skipped."""
    for port, (what, option) in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError:
                raise PortInUse(host, port, what, option) from None


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on ``port``, when this user may see it (Linux's
    ``/proc``); ``None`` otherwise: the message then names the port alone."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (process / "fd").iterdir()):
                command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {process.name} ({command[:80]})"
        except OSError:
            continue
    return None


def serve_in_thread(host: str, port: int, handler: type[BaseHTTPRequestHandler], *, what: str = "a local server",
                    option: str = "another port") -> ThreadingHTTPServer:
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(host, port, what, option) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
