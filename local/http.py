"""What the local API and Lambda servers share: keep-alive JSON answers on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def serve_in_thread(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
