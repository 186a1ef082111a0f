"""Loopback emulations of the OAuth 2.0 token endpoints this service vends tokens for.

The real providers cannot be reached (or must not be hammered: Autopay warns that too many token requests
"may lead to termination of API access") from a laptop or CI. Each emulator is an HTTP server on 127.0.0.1
running one RFC 6749 token endpoint (:class:`_Endpoint`) that departs from the RFC only where the provider's
catalogue entry says so (its ``emulator=EmulatorRules(...)``, from the provider's document); an entry without
one gets a plain standards server. Tests assert what the provider *received* (``ProviderEmulator.requests``)
and script faults (``enqueue``); ``python -m local.providers`` runs one emulator per catalogue entry.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, cast
from urllib.parse import parse_qs, unquote_plus, urlsplit

if str(_LAYER := Path(__file__).resolve().parents[1] / "layers" / "token_vending") not in sys.path:
    sys.path.append(str(_LAYER))  # as the Lambda runtime's /opt/python: `python -m local.providers` runs alone

from token_vending import catalogue
from token_vending.assertion import ASSERTION_TYPE
from token_vending.numbers import parse_whole
from token_vending.profile import ClientCredentialsProfile, EmulatorRules

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

__all__ = [
    "ASSERTION_TYPE", "DEFAULT_PORTS", "JSON_CONTENT_TYPE", "LOCAL_CREDENTIALS", "OMIT", "PYNG_SCOPES", "ROUTES",
    "EmulatorFleet", "Fault", "ProviderEmulator", "RecordedRequest", "connection_emulator", "decode_jwt",
    "encode_jwt", "local_credentials", "main",
]

_LOG = logging.getLogger(__name__)


def local_credentials(route: str) -> tuple[str, str]:
    """The ``(client_id, client_secret)`` an emulator accepts unless told otherwise: fixed (derived from the
    route) so ``make local`` seeds the local secret store with them. They protect nothing (loopback only)."""
    return f"local-{route}-client", f"local-{route}-secret-{hashlib.sha256(route.encode()).hexdigest()[:8]}"


ROUTES: tuple[str, ...] = tuple(entry.name for entry in catalogue.CATALOGUE)
"""Route names, in the order the fleet assigns ports (``--port-base`` + index)."""
LOCAL_CREDENTIALS: dict[str, tuple[str, str]] = {route: local_credentials(route) for route in ROUTES}
DEFAULT_PORTS: dict[str, int] = {route: 9001 + index for index, route in enumerate(ROUTES)}
PYNG_SCOPES: tuple[str, ...] = catalogue.by_name()["pyng"].emulator.scopes
"""The four scopes the Pyng (B2B Receivables) document lists; each is granted independently."""


class _Omit(enum.Enum):
    """Type of :data:`OMIT`, so mypy can tell the sentinel from real values."""

    OMIT = "OMIT"

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit.OMIT
"""Sentinel for ``expires_in=OMIT``: leave the field out of success responses entirely."""

JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_MAX_BODY: Final = 1024 * 1024
_MAX_ASSERTION_SECONDS: Final = 300
_LOOPBACK_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})
UNDOCUMENTED_LIFETIME: Final = 3600
"""Seconds an emulator's tokens live when neither its rules nor a catalogue entry say (a plain RFC 6749 server's
customary hour)."""
_BODY_MEMBERS: Final = frozenset({"access_token", "token_type", "expires_in", "scope"})


@dataclass(frozen=True)
class RecordedRequest:
    """What an emulator received, kept so tests can assert on the wire contract the client used."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    form: dict[str, list[str]] | None  # when the Content-Type is form-urlencoded and the body decodes
    json: Any | None  # when the Content-Type is JSON and the body parses
    basic_auth: tuple[str, str] | None  # decoded ``Authorization: Basic`` credentials, when well-formed

    def form_value(self, name: str) -> str | None:
        """First value of form field ``name``; a convenience for assertions."""
        values = (self.form or {}).get(name)
        return values[0] if values else None

    @property
    def client_id(self) -> str | None:
        """The client this request names, wherever it put it (``Authorization: Basic``, the form or the JSON
        body); ``None`` when it names none. Which connection asked, for assertions (never a secret)."""
        if self.basic_auth is not None:
            return self.basic_auth[0]
        named = self.form_value("client_id")
        if named is None and isinstance(self.json, dict) and isinstance(self.json.get("client_id"), str):
            named = self.json["client_id"]
        return named


@dataclass
class Fault:
    """One scripted response that replaces normal handling for the next request."""

    status: int = 500
    body: bytes | str | dict[str, Any] | None = None  # dict as JSON, str as UTF-8 text, bytes verbatim, None: empty
    headers: dict[str, str] = field(default_factory=dict)
    """Sent after (and replacing, case-insensitively) the defaults; a ``Content-Length`` here is sent verbatim,
    which lets a test simulate a truncated response."""
    delay: float = 0.0  # seconds before answering (a hang, when longer than the client's read timeout)
    drop: bool = False  # close the connection without any response (after ``delay``)


# -- JSON, JWT and request parsing ---------------------------------------------------------------------


def _json_bytes(value: Any) -> bytes:
    """Compact JSON, as the real token endpoints send it; insertion order of dicts is kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")  # JWS: no padding (RFC 7515 2)


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def encode_jwt(claims: Mapping[str, Any], key: bytes) -> str:
    """An HS256 JWT over ``claims``; the emulators issue real JWTs so clients can read ``exp``."""
    signing_input = f"{_b64url(_json_bytes({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64url(_json_bytes(dict(claims)))}"
    return f"{signing_input}.{_b64url(hmac.new(key, signing_input.encode('ascii'), hashlib.sha256).digest())}"


def decode_jwt(token: str, key: bytes | None = None) -> dict[str, Any]:
    """Claims of a JWT issued by an emulator, its HS256 signature verified when ``key`` is given; ``ValueError``
    for anything else, so tests can assert on the shape of the token as well as its claims."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three dot-separated parts")
    try:
        header, claims = json.loads(_b64url_decode(parts[0])), json.loads(_b64url_decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("JWT header or payload is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):  # ValueError: all malformed tokens alike
        raise ValueError("JWT header and payload must be JSON objects")
    if key is not None:
        if header.get("alg") != "HS256":
            raise ValueError("unexpected JWT alg")
        expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64url_decode(parts[2])):
            raise ValueError("JWT signature mismatch")
    return claims


def _media_type(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    """Decode ``Basic base64(id:secret)``, split on the first colon (RFC 7617) and not form-decoded (the
    documents say plain ``base64(username:password)``); ``None`` for anything missing or malformed."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


def _parse_form(content_type: str | None, body: bytes) -> dict[str, list[str]] | None:
    """Form fields when the body is declared form-urlencoded and decodes as UTF-8, else ``None``."""
    if _media_type(content_type) != _FORM_TYPE:
        return None
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None


def _parse_json(content_type: str | None, body: bytes) -> Any | None:
    """The JSON document when the body is declared JSON and parses, else ``None``."""
    media = _media_type(content_type)
    if media != "application/json" and not media.endswith("+json"):
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


# -- The token endpoint --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """A consistent snapshot of an emulator's credentials and options for one request."""

    client_id: str
    """The primary client: the one ``private_key_jwt`` assertions name."""
    clients: Mapping[str, str]
    """Every registered client: client_id -> client_secret (the primary one included)."""
    options: Mapping[str, Any]
    jwt_key: bytes
    assertion_key: Any  # public key verifying private_key_jwt assertions; None: not accepted
    audience: str  # the aud an assertion must name: this endpoint's URL (RFC 7523 section 3)
    seen_jti: set[str]

    def lifetime(self, default: int) -> int:
        """Seconds between ``iat`` and ``exp`` for JWTs: ``token_lifetime``, else a numeric ``expires_in``."""
        value = self.options.get("token_lifetime", self.options.get("expires_in", default))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        whole = parse_whole(value) if isinstance(value, str) else None
        return default if whole is None else whole

    def known(self, client_id: Any, client_secret: Any) -> str | None:
        """The client if the pair is a registered one (the secret compared in constant time, as a real server
        does), else ``None``."""
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return None
        registered = self.clients.get(client_id)
        if registered is None or not hmac.compare_digest(client_secret.encode(), registered.encode()):
            return None
        return client_id


@dataclass(eq=False)
class _Reply(Exception):
    """What the emulator answers; ``issued`` marks a token. Raised to answer early with an error."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    issued: bool = False
    client_id: str = ""
    """The client a token was issued to."""


class _Endpoint:
    """An RFC 6749 client-credentials token endpoint that departs from the RFC where its rules say so."""

    def __init__(self, rules: EmulatorRules) -> None:
        self.rules = rules

    def error(self, status: int, error: str, description: str, *headers: tuple[str, str]) -> _Reply:
        body = {"error": error, "error_description": description}
        if self.rules.error_shape == "description_first":
            body = {"error_description": description, "error": error}
        elif self.rules.error_shape == "message":
            body = {"message": description}
        return _Reply(status, body, headers)

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        """The checks in the order :class:`EmulatorRules` states, then the token."""
        rules = self.rules
        header_first = rules.auth_first and rules.credentials == "basic"
        client = ""
        if header_first:  # the Authorization header is checked before the body is looked at
            client = self.authenticate(req, {}, settings)
        params = self.parameters(req)
        if rules.auth_first and not header_first:
            client = self.authenticate(req, params, settings)
        if rules.one_auth_method and "authorization" in req.headers and "client_secret" in params:
            raise self.error(400, "invalid_request", "Multiple client authentication methods used")
        grant_type = params.get("grant_type")
        # An empty form value is a missing one; Auth0 takes a JSON "" for a grant type it does not support.
        missing = grant_type is None or (grant_type == "" and rules.credentials != "json")
        if missing and not rules.missing_grant_is_unsupported:
            raise self.error(400, "invalid_request", rules.missing_parameter.format("grant_type"))
        if grant_type != "client_credentials":
            raise self.error(400, *rules.grant_error)
        if rules.json_audience and "audience" not in params:
            raise self.error(400, "invalid_request", rules.missing_parameter.format("audience"))
        if rules.json_audience and params["audience"] != "":
            raise self.error(400, "invalid_request", 'audience must be ""')
        if not rules.auth_first:
            client = self.authenticate(req, params, settings)
        unexpected = sorted(name for name in params if name != "grant_type")
        if rules.only_grant_type and unexpected:
            raise self.error(400, "invalid_request", f"Unexpected parameter(s): {', '.join(unexpected)}")
        scope = self.scope(params, settings)
        return self.success(settings, self.token(settings, scope, client), scope, client)

    def parameters(self, req: RecordedRequest) -> dict[str, Any]:
        """The request parameters. A body that is not a form carries none (what the real servers do) unless
        the server takes JSON; an undecodable form or a repeated parameter (RFC 6749 3.2) is malformed."""
        media = _media_type(req.headers.get("content-type"))
        if self.rules.credentials == "json":
            if media != "application/json":
                raise self.error(400, "invalid_request", "Content-Type must be application/json")
            if not isinstance(req.json, dict):
                raise self.error(400, "invalid_request", "Request body must be a JSON object")
            return req.json
        if media != _FORM_TYPE:
            return {}
        if req.form is None:
            raise self.error(400, "invalid_request", "Malformed form-urlencoded body")
        duplicated = sorted(name for name, values in req.form.items() if len(values) > 1)
        if duplicated:
            raise self.error(400, "invalid_request", f"Duplicated parameter(s): {', '.join(duplicated)}")
        return {name: values[0] for name, values in req.form.items()}

    def authenticate(self, req: RecordedRequest, params: Mapping[str, Any], settings: _Settings) -> str:
        """The client that authenticated where the rules look; else the credential error is raised."""
        rules = self.rules
        if rules.credentials == "basic" or (rules.credentials == "basic_or_form" and "authorization" in req.headers):
            given = req.basic_auth
            if given is not None and rules.basic_decoding == "rfc6749":  # RFC 6749 2.3.1: form-urlencoded parts
                given = (unquote_plus(given[0]), unquote_plus(given[1]))
            client = settings.known(*given) if given is not None else None
        elif rules.credentials != "json" and "client_assertion" in params and settings.assertion_key is not None:
            client = settings.client_id if _assertion_ok(params, settings) else None  # private_key_jwt (Keycloak)
        else:
            client = settings.known(params.get("client_id"), params.get("client_secret"))
        if client is None:
            challenge = rules.www_authenticate == "always" or (
                rules.www_authenticate == "when_basic" and "authorization" in req.headers)
            raise self.error(*rules.credential_error, *([("WWW-Authenticate", "Basic")] if challenge else []))
        return client

    def scope(self, params: Mapping[str, Any], settings: _Settings) -> str | None:
        """The granted scope: the fixed one, else the requested scopes once checked (``None``: no scope)."""
        if "scope" in settings.options:
            return str(settings.options["scope"])
        value = params.get("scope")
        requested = [scope for scope in (value if isinstance(value, str) else "").split(" ") if scope]
        if not requested and self.rules.scope_required:
            raise self.error(400, "invalid_request", self.rules.missing_parameter.format("scope"))
        granted = settings.options.get("granted_scopes")
        if granted is not None and any(scope not in granted for scope in requested):
            raise self.error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed")
        return " ".join(dict.fromkeys(requested)) or None

    def token(self, settings: _Settings, scope: str | None, client_id: str) -> str:
        rules = self.rules
        if rules.token == "hex":  # noqa: S105 - a token kind, not a secret
            return secrets.token_hex(28)
        if rules.token == "opaque":  # noqa: S105
            return f"{rules.token_prefix}{secrets.token_urlsafe(32)}"
        now = int(time.time())
        values: dict[str, Any] = {
            "iat": now, "exp": now + settings.lifetime(rules.expires_in or UNDOCUMENTED_LIFETIME),
            "jti": secrets.token_hex(16),
            "client_id": client_id, "scope": scope or "",
            **{name: settings.options[name] for name, _ in rules.options},
        }
        return encode_jwt({name: _claim(template, values) for name, template in rules.claims}, settings.jwt_key)

    def success(self, settings: _Settings, token: str, scope: str | None, client_id: str) -> _Reply:
        """The success body in the provider's member order; ``OMIT`` (or no scope) leaves a member out."""
        values: dict[str, Any] = {
            "access_token": token, "scope": scope, **dict(self.rules.extra_fields),
            "token_type": settings.options.get("token_type", self.rules.token_type),
            "expires_in": settings.options.get("expires_in", self.rules.expires_in),
        }
        body = {name: values[name] for name in self.rules.response_fields if values[name] not in (None, OMIT)}
        return _Reply(200, body, issued=True, client_id=client_id)


def _claim(template: str, values: Mapping[str, Any]) -> Any:
    """A JWT claim: ``{name}`` alone is that value itself (numbers stay numbers), else the filled-in text."""
    name = template[1:-1]
    return values[name] if template == f"{{{name}}}" and name in values else template.format_map(values)


def _assertion_ok(params: Mapping[str, Any], settings: _Settings) -> bool:
    """RFC 7523 section 3 checks, as an authorization server makes them: type, signature (ES256, RS256 or
    PS256 with the registered key), ``iss`` = ``sub`` = the client, ``aud`` = this endpoint, not expired, a
    short lifetime and a ``jti`` never seen before (replays refused)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if params.get("client_assertion_type", "") != ASSERTION_TYPE:
        return False
    try:
        header_b64, claims_b64, signature_b64 = params["client_assertion"].split(".")
        header, claims = json.loads(_b64url_decode(header_b64)), json.loads(_b64url_decode(claims_b64))
        signature, signing_input = _b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode("ascii")
        key = settings.assertion_key
        if header.get("alg") == "ES256":
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        elif header.get("alg") == "RS256":
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif header.get("alg") == "PS256":
            key.verify(signature, signing_input, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                       hashes.SHA256())
        else:
            return False
    except (ValueError, TypeError, AttributeError, InvalidSignature):
        return False
    client, jti = settings.client_id, claims.get("jti")
    if not (claims.get("iss") == claims.get("sub") == client and params.get("client_id", "") in ("", client)):
        return False
    if claims.get("aud") != settings.audience or not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        return False
    if claims["exp"] - int(claims.get("iat", 0)) > _MAX_ASSERTION_SECONDS:
        return False
    if not isinstance(jti, str) or jti in settings.seen_jti:
        return False
    settings.seen_jti.add(jti)
    return True


def _normalise_option(name: str, value: Any) -> Any:
    """Validate one option early so a typo fails at construction, not as a confusing response."""
    if name == "expires_in" and not (value is OMIT or (isinstance(value, str | int) and not isinstance(value, bool))):
        raise TypeError("expires_in must be an int, a str or OMIT")
    if name == "token_path" and not (isinstance(value, str) and value.startswith("/")):
        raise ValueError("token_path must be a str starting with '/'")
    if name == "token_lifetime" and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError("token_lifetime must be an int")
    if name == "granted_scopes":
        scopes = value.split() if isinstance(value, str) else list(cast("Iterable[str]", value))
        if not all(isinstance(s, str) for s in scopes):
            raise TypeError("granted_scopes must be strings")
        return tuple(scopes)
    if name not in {"expires_in", "token_path", "token_lifetime"} and not isinstance(value, str):
        raise TypeError(f"{name} must be a str")  # token_type, scope and the rules' own options
    return value


# -- HTTP plumbing -------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """Remembers its emulator and its open connections, so :meth:`ProviderEmulator.stop` can cut keep-alive
    connections ("the provider went away", deterministically)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: ProviderEmulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _framing(status: int, description: str) -> _Reply:
    return _Reply(status, {"error": "invalid_request", "error_description": description})


class _Handler(BaseHTTPRequestHandler):
    """Reads and records every request, plays a queued fault or hands it to the token endpoint."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_version = "LocalOAuthEmulator/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default writes every request line (with query strings) to stderr."""

    def do_POST(self) -> None:  # every method goes through one dispatcher: 405/404 and recording are uniform
        self._dispatch()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_POST

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            raise _framing(400, "Invalid Content-Length")
        if length > _MAX_BODY:
            raise _framing(413, "Request body too large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _framing(400, "Invalid chunked encoding") from None
            total += size
            if total > _MAX_BODY:
                raise _framing(413, "Request body too large")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _record(self, body: bytes) -> RecordedRequest:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        split, content_type = urlsplit(self.path), headers.get("content-type")
        return RecordedRequest(
            method=self.command, path=split.path, query=split.query, headers=headers, body=body,
            form=_parse_form(content_type, body), json=_parse_json(content_type, body),
            basic_auth=_parse_basic(headers.get("authorization")))

    def _dispatch(self) -> None:
        emulator, path = self.server.emulator, urlsplit(self.path).path
        try:
            body = self._read_body()
        except _Reply as bad:  # the body cannot be read (bad Content-Length or chunking, too large)
            self._send(bad.status, _json_bytes(bad.body), (), close=True, path=path)
            return
        recorded = self._record(body)
        with emulator._lock:
            emulator.requests.append(recorded)
            fault = emulator._faults.popleft() if emulator._faults else None
        if fault is not None:
            self._play(fault, path)
            return
        try:
            reply = emulator._respond(recorded)
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer, never drop
            _LOG.error("%s: handler raised %s", emulator.route, type(exc).__name__)
            reply = _Reply(500, {"error": "server_error", "error_description": "Emulator handler failed"})
        if reply.issued:
            with emulator._lock:
                emulator.issued.append(reply.body)
                emulator.issued_to[str(reply.body.get("access_token"))] = reply.client_id
        self._send(reply.status, _json_bytes(reply.body), reply.headers, close=False, path=path,
                   client=reply.client_id)

    def _play(self, fault: Fault, path: str) -> None:
        if fault.delay > 0:
            self.server.emulator._stopping.wait(fault.delay)
        if fault.drop:
            _LOG.info("%s %s %s -> dropped", self.server.emulator.route, self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload, content_type = b"", ""
        if isinstance(fault.body, dict):
            payload, content_type = _json_bytes(fault.body), JSON_CONTENT_TYPE
        elif isinstance(fault.body, str):
            payload, content_type = fault.body.encode("utf-8"), "text/plain;charset=UTF-8"
        elif isinstance(fault.body, bytes):
            payload, content_type = fault.body, "application/octet-stream"
        overridden = {name.lower() for name in fault.headers}
        headers = [("Content-Type", content_type)] if content_type and "content-type" not in overridden else []
        headers.extend(fault.headers.items())
        self._send(fault.status, payload, tuple(headers), close="content-length" in overridden, path=path,
                   defaults=False)

    def _send(self, status: int, payload: bytes, headers: tuple[tuple[str, str], ...], *, close: bool, path: str,
              defaults: bool = True, client: str = "") -> None:
        """``client``: the client a token was issued to, logged by its id (which connection asked; never a
        secret)."""
        _LOG.info("%s %s %s -> %d%s", self.server.emulator.route, self.command, path, status,
                  f" (client {client})" if client else "")
        try:
            self.send_response(status)
            if defaults:
                self.send_header("Content-Type", JSON_CONTENT_TYPE)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Pragma", "no-cache")
            for name, value in headers:
                self.send_header(name, value)
            if not any(name.lower() == "content-length" for name, _ in headers):
                self.send_header("Content-Length", str(len(payload)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD" and status >= 200 and status not in (204, 304):
                self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout fired during a scripted delay)
            self.close_connection = True


# -- Emulators -----------------------------------------------------------------------------------------


class ProviderEmulator:
    """One provider's token endpoint on loopback, with request recording and fault injection.

    ``route`` names a catalogue entry or a connection of one (``AriaAu``: an Aria endpoint, its requests logged
    under that name, its default credentials :func:`local_credentials` of it), or is an entry itself (a provider
    not in the catalogue); a route the catalogue does not know may instead be given its ``rules``.
    """

    def __init__(self, route: str | ClientCredentialsProfile, *, port: int = 0, host: str = "127.0.0.1",
                 client_id: str | None = None, client_secret: str | None = None, rules: EmulatorRules | None = None,
                 **options: Any) -> None:
        profile = route if isinstance(route, ClientCredentialsProfile) else catalogue.connection(route)
        if isinstance(route, ClientCredentialsProfile):
            rules = rules or route.emulator
            route = route.name
        elif rules is None:
            if profile is None:
                known = ", ".join(entry.name for entry in catalogue.CATALOGUE)
                raise ValueError(f"unknown route {route!r}; expected one of {known} (or its rules)")
            rules = profile.emulator
        if rules.expires_in is None:  # tokens as long-lived as the entry documents (an hour without an entry)
            rules = replace(rules, expires_in=profile.lifetime if profile is not None else UNDOCUMENTED_LIFETIME)
        valueless = set(rules.response_fields) - _BODY_MEMBERS - {name for name, _ in rules.extra_fields}
        if valueless:
            raise ValueError(f"{route}: response_fields without a value: {', '.join(sorted(valueless))}")
        self.route, self.host, self.rules, self._rules = route, host, rules, _Endpoint(rules)
        self._defaults: dict[str, Any] = {"token_path": rules.path, **dict(rules.options)}
        if rules.scopes:
            self._defaults["granted_scopes"] = rules.scopes
        if rules.fixed_scope:
            self._defaults["scope"] = rules.fixed_scope
        self._options = dict(self._defaults)
        default_id, default_secret = local_credentials(route)
        self._client_id = default_id if client_id is None else client_id
        self._client_secret = default_secret if client_secret is None else client_secret
        self._port, self._lock, self._stopping = port, threading.Lock(), threading.Event()
        self._faults: collections.deque[Fault] = collections.deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._assertion_key: Any = None
        self._seen_jti: set[str] = set()
        self.jwt_key: bytes = secrets.token_bytes(32)
        """HMAC key of the JWTs this emulator issues (Aria, Autopay); see :func:`decode_jwt`."""
        self.requests: list[RecordedRequest] = []
        self.issued: list[dict[str, Any]] = []
        self.issued_to: dict[str, str] = {}
        """Access token -> the client_id it was issued to (which connection's credentials asked)."""
        self._other_clients: dict[str, str] = {}
        self.configure(**options)

    def configure(self, **options: Any) -> None:
        """Change response options at run time (``None`` restores an option's default).

        Every route: ``expires_in`` (int, str such as ``"3600"``, ``OMIT`` to leave it out), ``token_type``,
        ``token_path``, ``token_lifetime`` (JWT ``exp - iat``; defaults to a numeric ``expires_in``). With the
        rules' ``scopes``: ``granted_scopes`` (Pyng); with a ``fixed_scope``: ``scope``; and the rules' own
        ``options`` (Aria: ``issuer``, ``client_no``, ``account_no``; Autopay: ``issuer``).
        """
        unknown = sorted(set(options) - {"expires_in", "token_type", "token_lifetime", *self._defaults})
        if unknown:
            raise TypeError(f"{self.route}: unknown option(s) {', '.join(unknown)}")
        updates = {name: _normalise_option(name, value) for name, value in options.items() if value is not None}
        with self._lock:
            for name in options.keys() - updates.keys():
                if name in self._defaults:
                    self._options[name] = self._defaults[name]
                else:
                    self._options.pop(name, None)
            self._options.update(updates)

    def accept_client_assertions(self, public_key_pem: bytes | None) -> None:
        """Accept ``private_key_jwt`` assertions signed by this key (``None``: secrets only again)."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        with self._lock:
            self._assertion_key = load_pem_public_key(public_key_pem) if public_key_pem else None

    def set_credentials(self, client_id: str, client_secret: str) -> None:
        """Simulate a credential rotation at the provider: only the new pair is accepted from now on (clients
        added with :meth:`add_client` stay registered)."""
        with self._lock:
            self._client_id, self._client_secret = client_id, client_secret

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Register one more client at this provider (another connection's credentials: ``PyngOrg2`` beside
        ``pyng``); its tokens are issued to it (:attr:`issued_to`, and the JWT claims naming the client)."""
        with self._lock:
            self._other_clients[client_id] = client_secret

    @property
    def credentials(self) -> tuple[str, str]:
        """The ``(client_id, client_secret)`` pair currently accepted."""
        with self._lock:
            return self._client_id, self._client_secret

    @property
    def port(self) -> int:  # the real port once started (ephemeral ports resolved), else the requested one
        return self._port

    @property
    def token_path(self) -> str:
        with self._lock:
            return str(self._options["token_path"])

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in _LOOPBACK_WILDCARDS else self.host
        return f"http://[{host}]:{self._port}" if ":" in host else f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The token endpoint URL clients should be configured with."""
        return f"{self.base_url}{self.token_path}"

    @property
    def token_requests(self) -> int:
        return len(self.requests)

    def start(self) -> Self:
        """Serve in a daemon thread. A restarted emulator re-binds the port it had before, so clients
        configured with :attr:`url` reach it again (a provider outage and recovery)."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = server = _Server((self.host, self._port), self)
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulator-{self.route}", daemon=True)
        self._thread.start()
        _LOG.debug("%s emulator listening on %s", self.route, self.url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and end scripted delays early."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._stopping.set()
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def enqueue(self, *faults: Fault) -> None:
        """Script responses for the next requests, one fault per request, first in first out."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests, issued tokens and unplayed faults (options and credentials stay)."""
        with self._lock:
            self.requests.clear()
            self.issued.clear()
            self.issued_to.clear()
            self._faults.clear()

    def _respond(self, request: RecordedRequest) -> _Reply:
        with self._lock:
            settings = _Settings(
                client_id=self._client_id, clients={**self._other_clients, self._client_id: self._client_secret},
                options=dict(self._options),
                jwt_key=self.jwt_key, assertion_key=self._assertion_key,
                audience=f"{self.base_url}{self._options['token_path']}", seen_jti=self._seen_jti)
        if request.path != settings.options["token_path"]:
            return _Reply(404, {"error": "not_found", "error_description": "No such endpoint"})
        if request.method != "POST":
            return _Reply(405, {"error": "method_not_allowed", "error_description": "Use POST"}, (("Allow", "POST"),))
        try:
            return self._rules.evaluate(request, settings)
        except _Reply as refusal:
            return refusal

    def __repr__(self) -> str:
        return f"<ProviderEmulator {self.route} {self.url} {'stopped' if self._server is None else 'running'}>"


def connection_emulator(name: str, settings: Mapping[str, Any] | None = None, *, port: int = 0,
                        host: str = "127.0.0.1", client_id: str | None = None,
                        client_secret: str | None = None) -> ProviderEmulator:
    """The emulator standing for connection ``name``'s endpoint (``AriaAu``: an Aria endpoint). For a provider with
    documented regional endpoints whose tokens name their issuer (Aria's Keycloak realms), the issuer is the realm
    that ``settings``' ``region`` and ``stage`` choose (``https://kauth.prod.aus.ariasystems.net/realms/aria``), so a
    token shows which region issued it."""
    profile = catalogue.connection(name)
    if profile is None:
        known = ", ".join(entry.key for entry in catalogue.CATALOGUE)
        raise ValueError(f"{name!r} is no connection of the catalogue (a key starting with one of {known})")
    options: dict[str, Any] = {}
    chosen = profile.endpoints.get(f"{(settings or {}).get('region')}/{(settings or {}).get('stage')}")
    if chosen and "issuer" in dict(profile.emulator.options):
        options["issuer"] = chosen.split("/protocol/", 1)[0]
    return ProviderEmulator(name, port=port, host=host, client_id=client_id, client_secret=client_secret, **options)


class EmulatorFleet:
    """An emulator per catalogue entry (or per given entry): what ``make local`` and end-to-end tests run."""

    def __init__(self, ports: Mapping[str, int] | None = None, host: str = "127.0.0.1",
                 entries: Iterable[ClientCredentialsProfile] | None = None) -> None:
        self.emulators: dict[str, ProviderEmulator] = {
            entry.name: ProviderEmulator(entry, port=(ports or {}).get(entry.name, 0), host=host)
            for entry in (catalogue.CATALOGUE if entries is None else entries)
        }

    @classmethod
    def of(cls, emulators: Iterable[ProviderEmulator]) -> EmulatorFleet:
        """A fleet of these emulators (one per connection: ``connection_emulator``), by their routes."""
        fleet = cls(entries=())
        fleet.emulators = {emulator.route: emulator for emulator in emulators}
        return fleet

    def __getitem__(self, route: str) -> ProviderEmulator:
        return self.emulators[route]

    def start(self) -> Self:
        """Start every emulator; if one cannot bind, the already started ones are stopped again."""
        try:
            for emulator in self.emulators.values():
                emulator.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for emulator in self.emulators.values():
            emulator.stop()

    def reset(self) -> None:
        for emulator in self.emulators.values():
            emulator.reset()

    def urls(self) -> dict[str, str]:
        return {route: emulator.url for route, emulator in self.emulators.items()}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run an emulator per catalogue entry until SIGINT/SIGTERM (``python -m local.providers``)."""
    routes = [entry.name for entry in catalogue.CATALOGUE]
    parser = argparse.ArgumentParser(prog="python -m local.providers", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port-base", type=int, default=9001,
                        help="first port; routes get consecutive ports in the order " + ", ".join(routes))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # the server threads inherit the mask
    try:
        with EmulatorFleet({route: args.port_base + i for i, route in enumerate(routes)}, host=args.host) as fleet:
            for route, emulator in fleet.emulators.items():
                print(f"{route:<22} {emulator.url}  client_id={emulator.credentials[0]}", flush=True)
            signal.sigwait(stop_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
