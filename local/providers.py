"""Loopback emulations of the five OAuth 2.0 token endpoints this service vends tokens for.

Why this exists: the real providers cannot be reached (or must not be hammered: Autopay warns that
requesting too many tokens "may lead to termination of API access") from a developer laptop or CI.
Each emulator is a real HTTP server on 127.0.0.1 that answers the way the provider's own document
in ``/work/shared/seeds/`` says it does, quirks included (Invoice Cloud's 400 ``invalid_client``,
Pyng's 900 s lifetime and mandatory scope, Aria's Keycloak JWT, Autopay's JSON body with an empty
``audience``, Alternative Payments' lowercase ``bearer`` and 403). Integration tests use the same
servers to assert what the provider *received* (``ProviderEmulator.requests``) and to script faults
(``ProviderEmulator.enqueue``); ``make local`` runs all five with ``python -m local.providers``.

Only the standard library is used so the emulators run in any environment the tests run in.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
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
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, cast
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import FrameType, TracebackType

__all__ = [
    "DEFAULT_PORTS",
    "LOCAL_CREDENTIALS",
    "OMIT",
    "PYNG_SCOPES",
    "ROUTES",
    "EmulatorFleet",
    "Fault",
    "ProviderEmulator",
    "RecordedRequest",
    "decode_jwt",
    "encode_jwt",
    "main",
]

_LOG = logging.getLogger(__name__)

ROUTES: tuple[str, ...] = ("invoice-cloud", "pyng", "aria", "autopay", "alternative-payments")
"""Route names, in the order the fleet assigns ports (``--port-base`` + index)."""

LOCAL_CREDENTIALS: dict[str, tuple[str, str]] = {
    "invoice-cloud": ("local-invoice-cloud-client", "local-invoice-cloud-secret-7f3a91c2"),
    "pyng": ("local-pyng-client", "local-pyng-secret-4b8e0d51"),
    "aria": ("local-aria-client", "local-aria-secret-c09d62fe"),
    "autopay": ("local-autopay-client", "local-autopay-secret-5e17ab38"),
    "alternative-payments": (
        "local-alternative-payments-client",
        "local-alternative-payments-secret-91d0c4e7",
    ),
}
"""Fixed, well-known credentials the emulators accept unless told otherwise.

They are constants (not random) so ``make local`` can seed the local secret store with the same
values the emulators expect. They protect nothing: the emulators only ever listen on loopback.
"""

DEFAULT_PORTS: dict[str, int] = {
    "invoice-cloud": 9001,
    "pyng": 9002,
    "aria": 9003,
    "autopay": 9004,
    "alternative-payments": 9005,
}

PYNG_SCOPES: tuple[str, ...] = (
    "billing:customers:invite",
    "billing:customers:read",
    "billing:batches:submit",
    "billing:batches:read",
)
"""The four scopes the Pyng (B2B Receivables) document lists; each is granted independently."""


class _Omit:
    """Type of :data:`OMIT`; a distinct class so mypy can tell the sentinel from real values."""

    _instance: ClassVar[_Omit | None] = None

    def __new__(cls) -> Self:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cast("Self", cls._instance)

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()
"""Sentinel for ``expires_in=OMIT``: leave the field out of success responses entirely."""

JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_MAX_BODY: Final = 1024 * 1024
_LOOPBACK_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """What an emulator received, kept so tests can assert on the wire contract the client used."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers are joined with ``", "``."""
    body: bytes
    form: dict[str, list[str]] | None
    """Parsed only when the Content-Type is form-urlencoded (``None`` otherwise or if undecodable)."""
    json: Any | None
    """Parsed only when the Content-Type is JSON (``None`` otherwise or if unparsable)."""
    basic_auth: tuple[str, str] | None
    """Decoded ``Authorization: Basic`` credentials when present and well-formed."""

    def form_value(self, name: str) -> str | None:
        """First value of form field ``name``; a convenience for assertions."""
        if self.form is None:
            return None
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class Fault:
    """One scripted response that replaces normal handling for the next request."""

    status: int = 500
    body: bytes | str | dict[str, Any] | None = None
    """``dict`` is sent as JSON, ``str`` as UTF-8 text, ``bytes`` verbatim, ``None`` as an empty body."""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent after (and replacing, case-insensitively) the defaults; a ``Content-Length`` here is
    sent verbatim, which lets a test simulate a truncated response."""
    delay: float = 0.0
    """Seconds to wait before answering (a hang, when longer than the client's read timeout)."""
    drop: bool = False
    """Close the connection without sending any response (after ``delay``)."""


# --------------------------------------------------------------------------------------------
# Shared helpers: JSON, JWT, request parsing
# --------------------------------------------------------------------------------------------


def _json_bytes(value: Any) -> bytes:
    """Compact JSON, as the real token endpoints send it; insertion order of dicts is kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64url(data: bytes) -> str:
    """base64url without padding, as JWS compact serialisation requires (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Inverse of :func:`_b64url`; raises ``ValueError`` on anything that is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def encode_jwt(claims: Mapping[str, Any], key: bytes) -> str:
    """An HS256 JWT over ``claims``; the emulators issue real JWTs so clients can read ``exp``."""
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(dict(claims)))}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def decode_jwt(token: str, key: bytes | None = None) -> dict[str, Any]:
    """Claims of a JWT issued by an emulator; verifies the HS256 signature when ``key`` is given.

    Raises ``ValueError`` for anything that is not a well-formed (and, with ``key``, validly
    signed) JWT, so tests can assert on the shape of the token as well as its claims.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three dot-separated parts")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("JWT header or payload is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        # ValueError (not TypeError): callers treat every malformed token the same way.
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
    """Decode ``Basic base64(id:secret)``; ``None`` for anything missing or malformed.

    The split is on the first colon (RFC 7617: the user-id cannot contain one). The values are not
    form-decoded: the provider documents say plain ``base64(username:password)``.
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _parse_form(content_type: str | None, body: bytes) -> dict[str, list[str]] | None:
    """Form fields when the body is declared form-urlencoded and decodes as UTF-8, else ``None``."""
    if _media_type(content_type) != _FORM_TYPE:
        return None
    try:
        text = body.decode("utf-8")
        return parse_qs(text, keep_blank_values=True, encoding="utf-8", errors="strict")
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


def _same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison, as a real authorisation server would do."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Per-provider rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """A consistent snapshot of an emulator's credentials and options for one request."""

    client_id: str
    client_secret: str
    options: Mapping[str, Any]
    jwt_key: bytes
    assertion_key: Any = None
    """Public key (``cryptography``) that verifies ``private_key_jwt`` assertions; ``None``: not accepted."""
    audience: str = ""
    """The ``aud`` an assertion must name: this endpoint's URL (RFC 7523 section 3)."""
    seen_jti: set[str] = field(default_factory=set)

    def lifetime(self, default: int) -> int:
        """Seconds between ``iat`` and ``exp`` for JWTs: follows ``expires_in`` when it is numeric."""
        explicit = self.options.get("token_lifetime")
        if isinstance(explicit, int):
            return explicit
        value = self.options.get("expires_in", default)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        return default


@dataclass(frozen=True)
class _Reply:
    """What a provider rule decided to answer; ``issued`` marks a successful token response."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    issued: bool = False


class _Reject(Exception):
    """Raised inside a rule to short-circuit with a provider-shaped error reply."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _Rules:
    """Base class of the per-provider rules: defaults plus shared validation helpers.

    Subclasses implement :meth:`evaluate`, raising :class:`_Reject` for errors, and choose the
    error body shape in :meth:`error`. Keeping each provider in its own small class means a quirk
    of one provider cannot leak into another.
    """

    route: ClassVar[str]
    default_path: ClassVar[str]
    default_expires_in: ClassVar[int]
    default_type: ClassVar[str] = "Bearer"
    extra_options: ClassVar[Mapping[str, Any]] = {}

    def handle(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        try:
            return self.evaluate(req, settings)
        except _Reject as rejected:
            return rejected.reply

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        raise NotImplementedError

    # -- error shapes ------------------------------------------------------------------------
    def error(self, status: int, error: str, description: str, *headers: tuple[str, str]) -> _Reject:
        """RFC 6749 section 5.2 error body; providers with another shape override this."""
        return _Reject(_Reply(status, {"error": error, "error_description": description}, headers))

    # -- success -----------------------------------------------------------------------------
    def success(self, settings: _Settings, *fields: tuple[str, Any]) -> _Reply:
        """Success body in the provider's field order, applying the ``expires_in``/``token_type``
        overrides (``OMIT`` drops the field)."""
        body: dict[str, Any] = {}
        overrides = {
            "expires_in": settings.options.get("expires_in", self.default_expires_in),
            "token_type": settings.options.get("token_type", self.default_type),
        }
        for name, value in fields:
            chosen = overrides.get(name, value)
            if chosen is not OMIT:
                body[name] = chosen
        return _Reply(200, body, issued=True)

    # -- form helpers ------------------------------------------------------------------------
    def form_fields(self, req: RecordedRequest) -> dict[str, list[str]]:
        """The form parameters; a non-form body means the server sees no parameters at all
        (what the real servers do), and an undecodable form body is a malformed request."""
        if _media_type(req.headers.get("content-type")) != _FORM_TYPE:
            return {}
        if req.form is None:
            raise self.error(400, "invalid_request", "Malformed form-urlencoded body")
        duplicated = sorted(name for name, values in req.form.items() if len(values) > 1)
        if duplicated:
            # RFC 6749 section 3.2: request parameters MUST NOT be included more than once.
            raise self.error(400, "invalid_request", f"Duplicated parameter(s): {', '.join(duplicated)}")
        return req.form

    @staticmethod
    def param(form: Mapping[str, list[str]], name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    def body_credentials_ok(self, form: Mapping[str, list[str]], settings: _Settings) -> bool:
        """``client_id``/``client_secret`` in the form body (Invoice Cloud, Aria), or -- where the emulator
        was given a public key -- a ``private_key_jwt`` client assertion, as Keycloak accepts one."""
        if self.param(form, "client_assertion") is not None and settings.assertion_key is not None:
            return _assertion_ok(form, settings)
        client_id = self.param(form, "client_id")
        client_secret = self.param(form, "client_secret")
        if client_id is None or client_secret is None:
            return False
        return _same_secret(client_id, settings.client_id) and _same_secret(
            client_secret, settings.client_secret
        )

    @staticmethod
    def basic_credentials_ok(req: RecordedRequest, settings: _Settings) -> bool:
        """``Authorization: Basic`` credentials (Pyng, Alternative Payments)."""
        if req.basic_auth is None:
            return False
        user, password = req.basic_auth
        return _same_secret(user, settings.client_id) and _same_secret(password, settings.client_secret)


ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _assertion_ok(form: Mapping[str, list[str]], settings: _Settings) -> bool:
    """RFC 7523 section 3 checks, as an authorization server makes them: type, signature (ES256, RS256 or
    PS256 with the registered key), ``iss`` = ``sub`` = the client, ``aud`` = this endpoint, not expired, a
    short lifetime and a ``jti`` never seen before (replays refused)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    values = {name: (form.get(name) or [""])[0] for name in ("client_assertion_type", "client_assertion",
                                                               "client_id")}
    if values["client_assertion_type"] != ASSERTION_TYPE:
        return False
    try:
        header_b64, claims_b64, signature_b64 = values["client_assertion"].split(".")
        header = json.loads(_b64url_decode(header_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(signature_b64)
        signing_input = f"{header_b64}.{claims_b64}".encode("ascii")
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
    now = time.time()
    client = settings.client_id
    if not (claims.get("iss") == claims.get("sub") == client and values["client_id"] in ("", client)):
        return False
    if claims.get("aud") != settings.audience or not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
        return False
    if claims["exp"] - int(claims.get("iat", 0)) > 300:
        return False
    jti = claims.get("jti")
    if not isinstance(jti, str) or jti in settings.seen_jti:
        return False
    settings.seen_jti.add(jti)
    return True


class _InvoiceCloud(_Rules):
    """Invoice Cloud Biller API: credentials in the form body; every error is a 400.

    The documented error body lists ``error_description`` before ``error`` (the OWIN OAuth
    server's order), so this emulator keeps that order. As in OWIN, client authentication is
    checked before the grant type.
    """

    route = "invoice-cloud"
    default_path = "/biller/v1/authentication/oauth2/token"
    default_expires_in = 3600

    def error(self, status: int, error: str, description: str, *headers: tuple[str, str]) -> _Reject:
        return _Reject(_Reply(status, {"error_description": description, "error": error}, headers))

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        form = self.form_fields(req)
        if not self.body_credentials_ok(form, settings):
            raise self.error(400, "invalid_client", "Invalid client authentication")
        if self.param(form, "grant_type") != "client_credentials":
            raise self.error(400, "unsupported_grant_type", "The grant type is not supported")
        token = f"ic_{secrets.token_urlsafe(32)}"
        return self.success(settings, ("access_token", token), ("token_type", None), ("expires_in", None))


class _Pyng(_Rules):
    """Pyng B2B Receivables: HTTP Basic client authentication, mandatory ``scope``, 900 s tokens.

    Order follows an RFC 6749 server: client authentication (401 + ``WWW-Authenticate``), then
    grant type, then scope. Credentials in the body are not a substitute for the header, and
    sending both is rejected (RFC 6749 section 2.3: one authentication method per request).
    """

    route = "pyng"
    default_path = "/billing/oauth2/token"
    default_expires_in = 900
    extra_options: ClassVar[Mapping[str, Any]] = {"granted_scopes": PYNG_SCOPES}

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        if not self.basic_credentials_ok(req, settings):
            raise self.error(
                401, "invalid_client", "Client authentication failed", ("WWW-Authenticate", "Basic")
            )
        form = self.form_fields(req)
        if "client_secret" in form:
            raise self.error(400, "invalid_request", "Multiple client authentication methods used")
        grant_type = self.param(form, "grant_type")
        if not grant_type:
            raise self.error(400, "invalid_request", "Missing grant_type parameter")
        if grant_type != "client_credentials":
            raise self.error(400, "unsupported_grant_type", "Unsupported grant type")
        requested = [s for s in (self.param(form, "scope") or "").split(" ") if s]
        if not requested:
            raise self.error(400, "invalid_request", "Missing scope parameter")
        granted = set(settings.options["granted_scopes"])
        if any(scope not in granted for scope in requested):
            raise self.error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed")
        scope = " ".join(dict.fromkeys(requested))
        token = f"pyng_{secrets.token_urlsafe(32)}"
        return self.success(
            settings, ("access_token", token), ("token_type", None), ("expires_in", None), ("scope", scope)
        )


class _Aria(_Rules):
    """Aria Billie Connect: a Keycloak realm token endpoint issuing JWT access tokens.

    Keycloak checks the grant type before authenticating the client and answers 401
    ``invalid_client`` for any unknown client or wrong secret. The JWT carries the claims the
    Aria document lists (``iss`` defaults to the document's literal value) plus ``jti`` so two
    tokens issued in the same second still differ.
    """

    route = "aria"
    default_path = "/realms/aria/protocol/openid-connect/token"
    default_expires_in = 3600
    extra_options: ClassVar[Mapping[str, Any]] = {
        "scope": "api",
        "issuer": "authorization-server",
        "client_no": "7000213",
        "account_no": "12345",
    }

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        form = self.form_fields(req)
        grant_type = self.param(form, "grant_type")
        if not grant_type:
            raise self.error(400, "invalid_request", "Missing form parameter: grant_type")
        if grant_type != "client_credentials":
            raise self.error(400, "unsupported_grant_type", "Unsupported grant_type")
        if not self.body_credentials_ok(form, settings):
            raise self.error(401, "invalid_client", "Invalid client or Invalid client credentials")
        opts = settings.options
        now = int(time.time())
        claims = {
            "exp": now + settings.lifetime(self.default_expires_in),
            "iat": now,
            "jti": secrets.token_hex(16),
            "iss": opts["issuer"],
            "aud": "billie-connect-api",
            "sub": f"service-account-{settings.client_id}",
            "typ": "Bearer",
            "azp": settings.client_id,
            "scope": opts["scope"],
            "client_no": opts["client_no"],
            "account_no": opts["account_no"],
        }
        return self.success(
            settings,
            ("access_token", encode_jwt(claims, settings.jwt_key)),
            ("expires_in", None),
            ("refresh_expires_in", 0),
            ("token_type", None),
            ("not-before-policy", 0),
            ("scope", opts["scope"]),
        )


class _Autopay(_Rules):
    """Autopay: an Auth0-style endpoint taking a JSON body with ``audience`` exactly ``""``.

    Structural problems (not JSON, missing/odd fields, wrong ``audience``) are 400s checked before
    the credentials; wrong or missing credentials are 401 ``access_denied``/``Unauthorized``.
    The document gives no path, so ``/oauth/token`` (Auth0's) is used by default.
    """

    route = "autopay"
    default_path = "/oauth/token"
    default_expires_in = 86400
    extra_options: ClassVar[Mapping[str, Any]] = {
        "scope": "payments:read payments:write",
        "issuer": "https://autopay.local/",
    }

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        if _media_type(req.headers.get("content-type")) != "application/json":
            raise self.error(400, "invalid_request", "Content-Type must be application/json")
        body = req.json
        if not isinstance(body, dict):
            raise self.error(400, "invalid_request", "Request body must be a JSON object")
        grant_type = body.get("grant_type")
        if grant_type is None:
            raise self.error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            raise self.error(400, "unsupported_grant_type", "Unsupported grant type")
        if "audience" not in body:
            raise self.error(400, "invalid_request", "Missing required parameter: audience")
        if body["audience"] != "":
            raise self.error(400, "invalid_request", 'audience must be ""')
        client_id, client_secret = body.get("client_id"), body.get("client_secret")
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and _same_secret(client_id, settings.client_id)
            and _same_secret(client_secret, settings.client_secret)
        ):
            raise self.error(401, "access_denied", "Unauthorized")
        opts = settings.options
        now = int(time.time())
        claims = {
            "iss": opts["issuer"],
            "sub": f"{settings.client_id}@clients",
            "iat": now,
            "exp": now + settings.lifetime(self.default_expires_in),
            "jti": secrets.token_hex(16),
            "scope": opts["scope"],
            "gty": "client-credentials",
            "azp": settings.client_id,
        }
        return self.success(
            settings,
            ("access_token", encode_jwt(claims, settings.jwt_key)),
            ("scope", opts["scope"]),
            ("expires_in", None),
            ("token_type", None),
        )


class _AlternativePayments(_Rules):
    """Alternative Payments: HTTP Basic, a form body with ``grant_type`` only, 403 on bad credentials.

    The OpenAPI document declares the 403 body as an object of strings, so errors here are
    ``{"message": ...}`` with no ``error`` field. Its example token is 56 lowercase hex characters
    and ``token_type`` is the lowercase ``bearer``. Any form parameter other than ``grant_type``
    is refused (400) so a client that leaks credentials or a scope into the body is caught.
    """

    route = "alternative-payments"
    default_path = "/oauth/token"
    default_expires_in = 3600
    default_type = "bearer"

    def error(self, status: int, error: str, description: str, *headers: tuple[str, str]) -> _Reject:
        return _Reject(_Reply(status, {"message": description}, headers))

    def evaluate(self, req: RecordedRequest, settings: _Settings) -> _Reply:
        if not self.basic_credentials_ok(req, settings):
            raise self.error(403, "invalid_client", "Invalid credentials")
        form = self.form_fields(req)
        if self.param(form, "grant_type") != "client_credentials":
            raise self.error(400, "invalid_request", "grant_type must be client_credentials")
        unexpected = sorted(name for name in form if name != "grant_type")
        if unexpected:
            raise self.error(400, "invalid_request", f"Unexpected parameter(s): {', '.join(unexpected)}")
        return self.success(
            settings, ("access_token", secrets.token_hex(28)), ("expires_in", None), ("token_type", None)
        )


_RULES: dict[str, type[_Rules]] = {
    rules.route: rules for rules in (_InvoiceCloud, _Pyng, _Aria, _Autopay, _AlternativePayments)
}
_COMMON_OPTIONS: Final = frozenset({"expires_in", "token_type", "token_path", "token_lifetime"})


def _normalise_option(name: str, value: Any) -> Any:
    """Validate one option early so a typo fails at construction, not as a confusing response."""
    if name == "expires_in":
        if (
            value is OMIT
            or isinstance(value, str)
            or (isinstance(value, int) and not isinstance(value, bool))
        ):
            return value
        raise TypeError("expires_in must be an int, a str or OMIT")
    if name in {"token_type", "scope", "issuer", "client_no", "account_no"}:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str")
        return value
    if name == "token_path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError("token_path must be a str starting with '/'")
        return value
    if name == "token_lifetime":
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("token_lifetime must be an int")
        return value
    if name == "granted_scopes":
        scopes = value.split() if isinstance(value, str) else list(cast("Iterable[str]", value))
        if not all(isinstance(s, str) for s in scopes):
            raise TypeError("granted_scopes must be strings")
        return tuple(scopes)
    raise AssertionError(name)  # pragma: no cover - guarded by the caller


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its emulator and its open connections.

    Open connections are tracked so :meth:`ProviderEmulator.stop` can cut keep-alive
    connections, making "the provider went away" deterministic for tests.
    """

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


class _BadFraming(Exception):
    """The request body cannot be read (bad Content-Length or chunking, too large)."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class _Handler(BaseHTTPRequestHandler):
    """Reads and records every request, plays a queued fault or hands it to the provider rules."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_version = "LocalOAuthEmulator/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default writes every request line (with query strings) to stderr."""

    # Every method goes through one dispatcher so 405/404 and recording are uniform.
    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_POST

    # -- reading -----------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _BadFraming(400, "Invalid Content-Length") from None
        if length < 0:
            raise _BadFraming(400, "Invalid Content-Length")
        if length > _MAX_BODY:
            raise _BadFraming(413, "Request body too large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFraming(400, "Invalid chunked encoding") from None
            total += size
            if total > _MAX_BODY:
                raise _BadFraming(413, "Request body too large")
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
        split = urlsplit(self.path)
        content_type = headers.get("content-type")
        return RecordedRequest(
            method=self.command,
            path=split.path,
            query=split.query,
            headers=headers,
            body=body,
            form=_parse_form(content_type, body),
            json=_parse_json(content_type, body),
            basic_auth=_parse_basic(headers.get("authorization")),
        )

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        emulator = self.server.emulator
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
        except _BadFraming as bad:
            self._send(
                bad.status,
                _json_bytes({"error": "invalid_request", "error_description": bad.description}),
                (),
                close=True,
                path=path,
            )
            return
        recorded = self._record(body)
        emulator._record(recorded)
        fault = emulator._next_fault()
        if fault is not None:
            self._play(fault, path)
            return
        try:
            reply = emulator._respond(recorded)
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer, never drop
            _LOG.error("%s: handler raised %s", emulator.route, type(exc).__name__)
            reply = _Reply(500, {"error": "server_error", "error_description": "Emulator handler failed"})
        if reply.issued:
            emulator._issue(reply.body)
        self._send(reply.status, _json_bytes(reply.body), reply.headers, close=False, path=path)

    def _play(self, fault: Fault, path: str) -> None:
        emulator = self.server.emulator
        if fault.delay > 0:
            emulator._stopping.wait(fault.delay)
        if fault.drop:
            _LOG.info("%s %s %s -> dropped", self.server.emulator.route, self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = fault.body
        if isinstance(body, dict):
            payload, content_type = _json_bytes(body), JSON_CONTENT_TYPE
        elif isinstance(body, str):
            payload, content_type = body.encode("utf-8"), "text/plain;charset=UTF-8"
        elif isinstance(body, bytes):
            payload, content_type = body, "application/octet-stream"
        else:
            payload, content_type = b"", ""
        headers: list[tuple[str, str]] = [("Content-Type", content_type)] if content_type else []
        overridden = {name.lower() for name in fault.headers}
        headers = [(k, v) for k, v in headers if k.lower() not in overridden]
        headers.extend(fault.headers.items())
        self._send(
            fault.status,
            payload,
            tuple(headers),
            close="content-length" in overridden,
            path=path,
            defaults=False,
        )

    # -- writing -----------------------------------------------------------------------------
    def _send(
        self,
        status: int,
        payload: bytes,
        headers: tuple[tuple[str, str], ...],
        *,
        close: bool,
        path: str,
        defaults: bool = True,
    ) -> None:
        _LOG.info("%s %s %s -> %d", self.server.emulator.route, self.command, path, status)
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
        except OSError:
            # The client gave up (e.g. its read timeout fired during a scripted delay).
            self.close_connection = True


# --------------------------------------------------------------------------------------------
# Emulators
# --------------------------------------------------------------------------------------------


class ProviderEmulator:
    """One provider's token endpoint on loopback, with request recording and fault injection."""

    def __init__(
        self,
        route: str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        client_secret: str | None = None,
        **options: Any,
    ) -> None:
        if route not in _RULES:
            raise ValueError(f"unknown route {route!r}; expected one of {', '.join(ROUTES)}")
        self.route = route
        self.host = host
        self._rules_type = _RULES[route]
        self._rules = self._rules_type()
        default_id, default_secret = LOCAL_CREDENTIALS[route]
        self._client_id = default_id if client_id is None else client_id
        self._client_secret = default_secret if client_secret is None else client_secret
        self._options: dict[str, Any] = {"token_path": self._rules_type.default_path}
        self._options.update(self._rules_type.extra_options)
        self._port = port
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._assertion_key: Any = None
        self._seen_jti: set[str] = set()
        self.jwt_key: bytes = secrets.token_bytes(32)
        """HMAC key of the JWTs this emulator issues (Aria, Autopay); see :func:`decode_jwt`."""
        self.requests: list[RecordedRequest] = []
        self.issued: list[dict[str, Any]] = []
        self.configure(**options)

    # -- configuration -----------------------------------------------------------------------
    def configure(self, **options: Any) -> None:
        """Change response options at run time.

        Common: ``expires_in`` (int, str such as ``"3600"``, ``OMIT`` to leave it out, ``None`` to
        restore the provider's default), ``token_type``, ``token_path``, ``token_lifetime`` (JWT
        ``exp - iat``; defaults to a numeric ``expires_in``). Pyng: ``granted_scopes``. Aria:
        ``scope``, ``issuer``, ``client_no``, ``account_no``. Autopay: ``scope``, ``issuer``.
        """
        allowed = _COMMON_OPTIONS | set(self._rules_type.extra_options)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"{self.route}: unknown option(s) {', '.join(unknown)}")
        updates: dict[str, Any] = {}
        removals: list[str] = []
        for name, value in options.items():
            if value is None:
                removals.append(name)
            else:
                updates[name] = _normalise_option(name, value)
        with self._lock:
            for name in removals:
                if name == "token_path":
                    self._options[name] = self._rules_type.default_path
                elif name in self._rules_type.extra_options:
                    self._options[name] = self._rules_type.extra_options[name]
                else:
                    self._options.pop(name, None)
            self._options.update(updates)

    def accept_client_assertions(self, public_key_pem: bytes | None) -> None:
        """Accept ``private_key_jwt`` assertions signed by this key (``None``: secrets only again)."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        with self._lock:
            self._assertion_key = load_pem_public_key(public_key_pem) if public_key_pem else None

    def set_credentials(self, client_id: str, client_secret: str) -> None:
        """Simulate a credential rotation at the provider: only the new pair is accepted from now on."""
        with self._lock:
            self._client_id = client_id
            self._client_secret = client_secret

    @property
    def credentials(self) -> tuple[str, str]:
        """The ``(client_id, client_secret)`` pair currently accepted."""
        with self._lock:
            return self._client_id, self._client_secret

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The real port once started (ephemeral ports are resolved), else the requested one."""
        return self._port

    @property
    def token_path(self) -> str:
        with self._lock:
            return str(self._options["token_path"])

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in _LOOPBACK_WILDCARDS else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The token endpoint URL clients should be configured with."""
        return f"{self.base_url}{self.token_path}"

    @property
    def token_requests(self) -> int:
        return len(self.requests)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Serve in a daemon thread. A restarted emulator re-binds the port it had before, so
        clients configured with :attr:`url` reach it again (a provider outage and recovery)."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self._port), self)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"emulator-{self.route}",
            daemon=True,
        )
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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------------
    def enqueue(self, *faults: Fault) -> None:
        """Script responses for the next requests, one fault per request, first in first out."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests, issued tokens and unplayed faults (options and credentials stay)."""
        with self._lock:
            self.requests.clear()
            self.issued.clear()
            self._faults.clear()

    # -- called by the handler ---------------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _issue(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.issued.append(body)

    def _respond(self, request: RecordedRequest) -> _Reply:
        with self._lock:
            settings = _Settings(
                client_id=self._client_id,
                client_secret=self._client_secret,
                options=dict(self._options),
                jwt_key=self.jwt_key,
                assertion_key=self._assertion_key,
                audience=f"{self.base_url}{self._options['token_path']}",
                seen_jti=self._seen_jti,
            )
        if request.path != settings.options["token_path"]:
            return _Reply(404, {"error": "not_found", "error_description": "No such endpoint"})
        if request.method != "POST":
            return _Reply(
                405, {"error": "method_not_allowed", "error_description": "Use POST"}, (("Allow", "POST"),)
            )
        return self._rules.handle(request, settings)

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<ProviderEmulator {self.route} {self.url} {state}>"


class EmulatorFleet:
    """All five emulators together: what ``make local`` and end-to-end tests run."""

    def __init__(self, ports: Mapping[str, int] | None = None, host: str = "127.0.0.1") -> None:
        ports = ports or {}
        self.emulators: dict[str, ProviderEmulator] = {
            route: ProviderEmulator(route, port=ports.get(route, 0), host=host) for route in ROUTES
        }

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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run all five emulators until SIGINT/SIGTERM (``python -m local.providers``)."""
    parser = argparse.ArgumentParser(prog="python -m local.providers", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORTS[ROUTES[0]],
        help="first port; routes get port-base..port-base+4 in the order " + ", ".join(ROUTES),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    ports = {route: args.port_base + index for index, route in enumerate(ROUTES)}
    fleet = EmulatorFleet(ports, host=args.host)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        fleet.start()
        for route, emulator in fleet.emulators.items():
            print(f"{route:<22} {emulator.url}  client_id={emulator.credentials[0]}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
