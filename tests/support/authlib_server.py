"""A standards-based OAuth 2.0 authorization server on 127.0.0.1: Authlib's own, not an emulation.

The provider emulators in ``local/providers.py`` follow each provider's document, quirks included; they were
written here, so they can only agree with our reading of RFC 6749. This server lets a well-kept third-party
implementation decide instead: the token endpoint is Authlib's :class:`AuthorizationServer` with its
:class:`ClientCredentialsGrant`, its client authentication methods (``client_secret_basic``, which decodes HTTP
Basic credentials as RFC 6749 2.3.1 says, and ``client_secret_post``), its scope checks, its error responses and
its bearer token generator. What is written here is only what Authlib leaves to a framework integration: turning
a WSGI request into an ``OAuth2Request``, a response tuple back into WSGI, and the client registry (the
``ClientMixin`` model Authlib asks applications to provide).

It also records every request it received (headers, body) and what it answered, and counts token requests.
Served by ``wsgiref`` in threads: no web framework is needed.

``private_key_jwt`` (RFC 7523 client assertions, OpenID Connect Core 9) is Authlib's own
:class:`JWTBearerClientAssertion` registered under that method name: Authlib (with joserfc) checks the signature
against the client's registered JWK set (the ``kid`` selects the key), ``iss`` = ``sub`` = a registered client,
``aud`` (the token URL unless ``audiences`` says otherwise), ``exp`` (60 s leeway) and that the ``jti`` was not
used before. What is written here is only what Authlib asks the application for: where the client's keys are,
which audiences it answers to, which algorithms it allows (``token_endpoint_auth_signing_alg_values_supported``;
joserfc's default set leaves out PS256) and a store of seen ``jti`` values. ``respond`` may rewrite an answer
after Authlib made it (a provider that echoes what it received, for leak tests).

``api_audience`` makes it an Auth0-style server: a token request must name that API identifier as its
``audience`` (missing: ``invalid_request``; another: 403 ``access_denied``), and ``resources`` the RFC 8707
resource indicators it accepts (any other: ``invalid_target``). Both are checks made with Authlib's own grant
extension hook (``before_create_token_response``, after Authlib authenticated the client and checked the grant
and scopes), answered as Authlib answers its own errors; what each token was issued for is recorded (``issued``).
"""

from __future__ import annotations

import hmac
import json
import secrets
import socketserver
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from requests.structures import CaseInsensitiveDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

TOKEN_PATH = "/token"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class RegisteredClient(ClientMixin):  # type: ignore[misc]
    """One registered confidential client: what Authlib's ``ClientMixin`` asks the application's model for."""

    client_id: str
    client_secret: str
    scopes: frozenset[str] = frozenset()
    auth_methods: frozenset[str] = frozenset({"client_secret_basic", "client_secret_post"})
    """Token endpoint authentication methods this client registered (RFC 7591 ``token_endpoint_auth_method``)."""
    jwks: dict[str, Any] | None = field(default=None, compare=False)
    """The client's registered public keys (RFC 7591 ``jwks``): what ``private_key_jwt`` assertions verify with."""

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this client is registered for, as Authlib's documentation writes it."""
        if not scope:
            return ""
        return str(list_to_scope([s for s in scope_to_list(scope) if s in self.scopes]))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in self.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class _ClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """Authlib's grant, allowing both secret-based methods (its default is ``client_secret_basic`` only) and
    ``private_key_jwt``. Authlib tries them in this order; a request without a client assertion is not
    ``private_key_jwt``'s (it returns no client), so the secret-based answers are unchanged."""

    TOKEN_ENDPOINT_AUTH_METHODS = [  # noqa: RUF012 - Authlib's API
        "client_secret_basic", "client_secret_post", "private_key_jwt"]


PRIVATE_KEY_JWT_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "ES512")
"""The server's ``token_endpoint_auth_signing_alg_values_supported``."""


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """Authlib's RFC 7523 client assertion authentication as the ``private_key_jwt`` method, with the storage
    hooks Authlib leaves to the application."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: StandardsAuthorizationServer, leeway: int = 60) -> None:
        super().__init__(leeway=leeway)
        self.server = server

    def get_audiences(self) -> list[str]:
        return list(self.server.audiences)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        """Each ``jti`` once per client (the store Authlib's documentation keeps in Redis)."""
        with self.server._lock:
            key = (str(claims["sub"]), jti)
            if key in self.server.seen_jti:
                return False
            self.server.seen_jti.add(key)
            return True

    def resolve_client_public_key(self, client: RegisteredClient) -> KeySet:
        if not client.jwks:
            from authlib.oauth2.rfc6749 import InvalidClientError

            raise InvalidClientError(description="The client registered no keys.")
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        """Authlib's own steps (decode and verify with joserfc, then :meth:`verify_claims`), with the algorithms
        this server supports: joserfc's default set is only its "recommended" ones, without PS256."""
        from authlib.oauth2.rfc6749 import InvalidClientError

        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(self.server.signing_algorithms))
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        self.verify_claims(token.claims)
        return dict(token.claims)


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = {}
        for name, value in fields:
            self._datalist.setdefault(name, []).append(value)
        self._data = {name: values[0] for name, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _WsgiOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """What Authlib's Flask integration does with a Flask request, for a bare WSGI one: the form is decoded as
    application/x-www-form-urlencoded (UTF-8, ``+`` as space), the only thing a framework decides here."""

    def __init__(self, method: str, uri: str, headers: CaseInsensitiveDict[str], fields: list[tuple[str, str]]
                 ) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = _FormPayload(fields)

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


@dataclass(frozen=True)
class Incoming:
    """One HTTP request as it reached the server (the WSGI environ, reduced to what a test asserts on)."""

    method: str
    path: str
    uri: str
    headers: CaseInsensitiveDict[str]
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        fields: dict[str, list[str]] = {}
        for name, value in parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True):
            fields.setdefault(name, []).append(value)
        return fields


@dataclass(frozen=True)
class Exchange:
    """A request and the answer Authlib gave it."""

    request: Incoming
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 section 2: a ``resource`` the server does not serve (or is not a valid indicator)."""

    error = "invalid_target"


class AccessDeniedError(OAuth2Error):  # type: ignore[misc]
    """What Auth0 answers a client credentials request for an API it does not know (403 ``access_denied``)."""

    error = "access_denied"
    status_code = 403


def audience_check(api_audience: str | None, resources: frozenset[str] | None) -> Callable[[Any], None]:
    """A grant extension (Authlib calls it with each grant it makes): before the token is created, the request's
    ``audience`` must be ``api_audience`` and each of its ``resource`` parameters one of ``resources``."""

    def check(grant: Any) -> None:
        payload = grant.request.payload
        audience = payload.datalist.get("audience", [])
        if api_audience is not None:
            if not audience or not audience[0]:
                raise InvalidRequestError("Missing 'audience' parameter")
            if len(audience) > 1:
                raise InvalidRequestError("Multiple 'audience' parameters")
            if audience[0] != api_audience:
                raise AccessDeniedError(f"Service not found: {audience[0]}")
        if resources is not None:
            for resource in payload.datalist.get("resource", []):
                if resource not in resources:
                    raise InvalidTargetError(f"Unknown resource: {resource}")

    def extension(grant: Any) -> None:
        grant.register_hook("before_create_token_response", lambda hooked_grant, *_: check(hooked_grant))

    return extension


class StandardsAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's ``AuthorizationServer`` with the few hooks a framework integration must implement."""

    def __init__(self, clients: Iterable[RegisteredClient], *, expires_in: int,
                 signing_algorithms: Iterable[str] = PRIVATE_KEY_JWT_ALGORITHMS,
                 api_audience: str | None = None, resources: frozenset[str] | None = None) -> None:
        registered = {client.client_id: client for client in clients}
        supported = sorted(set().union(*(client.scopes for client in registered.values())))
        super().__init__(scopes_supported=supported)
        self.clients = registered
        self.issued: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.audiences: list[str] = []
        """Audiences a client assertion may name (set to the token URL once the server has its port)."""
        self.signing_algorithms = tuple(signing_algorithms)
        self.seen_jti: set[tuple[str, str]] = set()
        self.register_token_generator("default", BearerTokenGenerator(
            access_token_generator=lambda **_: secrets.token_urlsafe(32), expires_generator=expires_in))
        self.register_grant(_ClientCredentialsGrant, [audience_check(api_audience, resources)])
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(self))

    def query_client(self, client_id: str) -> RegisteredClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        fields = request.payload.datalist
        with self._lock:
            self.issued.append({**token, "client_id": request.client.client_id,
                                "audience": (fields.get("audience") or [None])[0],
                                "resource": list(fields.get("resource", []))})

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's hook for framework signals; nothing listens here."""

    def create_oauth2_request(self, request: Incoming) -> OAuth2Request:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        fields = (parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)
                  if content_type == FORM else [])
        return _WsgiOAuth2Request(request.method, request.uri, request.headers, fields)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]
                        ) -> tuple[int, list[tuple[str, str]], bytes]:
        payload = json.dumps(body) if isinstance(body, dict) else str(body or "")
        return status, list(headers), payload.encode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: the server records what it received instead."""


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@dataclass
class AuthlibTokenServer:
    """A real HTTP token endpoint on 127.0.0.1 (``url``), Authlib deciding every answer; a context manager."""

    clients: list[RegisteredClient]
    expires_in: int = 3600
    audiences: list[str] | None = None
    """What ``private_key_jwt`` assertions may name as ``aud``; ``None``: the token URL."""
    respond: Callable[[Incoming, int, dict[str, Any]], tuple[int, dict[str, Any]]] | None = None
    """Rewrites Authlib's answer (status, JSON body) before it is sent; ``None``: Authlib's answer as it is."""
    api_audience: str | None = None
    """An Auth0-style API identifier every token request must name as its ``audience``; ``None``: not checked."""
    resources: frozenset[str] | None = None
    """The RFC 8707 resource indicators accepted (others: ``invalid_target``); ``None``: not checked."""
    exchanges: list[Exchange] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.authorization = StandardsAuthorizationServer(self.clients, expires_in=self.expires_in,
                                                          api_audience=self.api_audience, resources=self.resources)
        self._httpd = make_server("127.0.0.1", 0, self._app, server_class=_ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}{TOKEN_PATH}"
        self.authorization.audiences = [self.url] if self.audiences is None else list(self.audiences)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="authlib-token-server", daemon=True)

    def __enter__(self) -> AuthlibTokenServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- what it saw ------------------------------------------------------------------------------
    @property
    def token_requests(self) -> int:
        """Requests that reached the token endpoint, whatever Authlib answered."""
        with self._lock:
            return sum(1 for exchange in self.exchanges if exchange.request.path == TOKEN_PATH)

    def received(self) -> list[Incoming]:
        with self._lock:
            return [exchange.request for exchange in self.exchanges]

    def answers(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    @property
    def issued(self) -> list[dict[str, Any]]:
        with self.authorization._lock:
            return list(self.authorization.issued)

    # -- WSGI ---------------------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        request = _incoming(environ, self.url)
        if request.path != TOKEN_PATH or request.method != "POST":
            status, headers, body = 404, [("Content-Type", "application/json")], b'{"error":"not_found"}'
        else:
            status, headers, body = self.authorization.create_token_response(request)
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {"raw": body.decode("utf-8", "replace")}
        if self.respond is not None:
            status, document = self.respond(request, status, document)
            body = json.dumps(document).encode()
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
        with self._lock:
            self.exchanges.append(Exchange(request, status, dict(headers), document))
        start_response(f"{status} {_REASONS.get(status, 'Status')}",
                       [*headers, ("Content-Length", str(len(body)))])
        return iter([body])


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}


def _incoming(environ: dict[str, Any], url: str) -> Incoming:
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").title()] = environ[key]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    path = environ.get("PATH_INFO", "")
    return Incoming(method=environ["REQUEST_METHOD"], path=path, uri=url.removesuffix(TOKEN_PATH) + path,
                    headers=headers, body=body)
