"""How one provider's token endpoint wants to be called: the per-provider facts, as data.

:mod:`token_vending.catalogue` holds one :class:`ClientCredentialsProfile` per provider, built from its
own documentation; the mechanics (HTTP, retries, parsing, caching) live once in this layer.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class ClientAuth(Enum):
    """How the client authenticates, and where its credentials travel."""

    FORM_BODY = "form_body"  # client_id/client_secret as form fields (RFC 6749 2.3.1, second option)
    BASIC_HEADER = "basic_header"  # Authorization: Basic ..., encoded as the profile's basic_encoding says
    JSON_BODY = "json_body"  # client_id/client_secret as JSON members
    PRIVATE_KEY_JWT = "private_key_jwt"  # client_id + a signed RFC 7523 client_assertion: no shared secret
    TLS_CLIENT_AUTH = "tls_client_auth"  # RFC 8705: a client certificate on the TLS connection + client_id

    @classmethod
    def from_method(cls, method: str) -> ClientAuth:
        """From an RFC 7591 ``token_endpoint_auth_method`` name (the ``<Provider>ClientAuth`` parameter)."""
        return AUTH_METHODS[method]


AUTH_METHODS = {
    "client_secret_basic": ClientAuth.BASIC_HEADER,
    "client_secret_post": ClientAuth.FORM_BODY,  # in the profile's body encoding (form or JSON)
    "private_key_jwt": ClientAuth.PRIVATE_KEY_JWT,
    "tls_client_auth": ClientAuth.TLS_CLIENT_AUTH,
}


class BasicEncoding(Enum):
    """How the client id and secret become HTTP Basic credentials (with :attr:`ClientAuth.BASIC_HEADER`).

    RFC 6749 section 2.3.1 has the client id and secret "encoded using the
    application/x-www-form-urlencoded encoding algorithm per Appendix B" before they are joined with ``:``
    and Base64-encoded; a standards server (Authlib, for one) decodes them that way, so an id such as
    ``urn:acme:svc-1`` or a secret holding ``%2F`` only survives if we encode first. Some providers
    document the plain RFC 7617 form instead (``base64(id:secret)``): their profiles say so.
    """

    RFC6749 = "rfc6749"
    """Form-urlencode each part (UTF-8, everything outside RFC 3986's unreserved set as %HH, space as
    %20), then RFC 7617."""
    RFC7617 = "rfc7617"
    """``base64(id:secret)`` of the UTF-8 text, as it is."""


class BodyEncoding(Enum):
    FORM = "application/x-www-form-urlencoded"
    JSON = "application/json"


class ScopeMode(Enum):
    OMIT = "omit"  # the provider takes no scope parameter
    OPTIONAL = "optional"  # sent when a scope set is configured/requested
    REQUIRED = "required"  # the request is refused without one (Pyng)


@dataclass(frozen=True)
class EmulatorRules:
    """How this provider's local emulator answers (``local/providers.py``), from the provider's document.

    Stated apart from the client-side fields on purpose: the emulator checks what the document asks for,
    not what the client was told to send, so a wrong client profile fails against it. The defaults are a
    plain RFC 6749 server: client_secret_basic or client_secret_post, section 5.2 errors, 401
    ``invalid_client`` with ``WWW-Authenticate`` when the client used the Authorization header, opaque
    Bearer tokens for an hour. Checks run in this order: client authentication when ``auth_first`` (a
    Basic-only server reads the header before the body), the body (undecodable or repeated parameters are
    ``invalid_request``), one authentication method, ``grant_type``, ``audience``, client authentication
    otherwise, stray parameters, scope.
    """

    path: str = "/oauth/token"
    """Default token path (run-time option ``token_path``)."""
    credentials: Literal["basic", "form", "json", "basic_or_form"] = "basic_or_form"
    """Where the server reads the client's credentials: the Basic header (read before the body), the form
    body, a JSON body (the request must then be a JSON object) or either the header or the form body (the
    header when one is sent). Form-body servers also take a ``private_key_jwt`` assertion once the
    emulator is given a public key."""
    basic_decoding: Literal["rfc6749", "rfc7617"] = "rfc6749"
    """How Basic credentials are read: RFC 6749 2.3.1 (each part form-urlencoded, so decoded) or RFC 7617's
    plain ``base64(id:secret)`` (what Pyng's and Alternative Payments' documents show)."""
    auth_first: bool = True
    """Client authentication is checked before the grant type (Keycloak and Auth0 check the request
    first)."""
    credential_error: tuple[int, str, str] = (401, "invalid_client", "Client authentication failed")
    """Status, ``error`` and description for missing or wrong credentials."""
    www_authenticate: Literal["when_basic", "always", "never"] = "when_basic"
    """When the credential error carries ``WWW-Authenticate: Basic``: when the request had an Authorization
    header (RFC 6749 5.2), always, or never."""
    error_shape: Literal["rfc6749", "description_first", "message"] = "rfc6749"
    """``rfc6749`` (error, error_description), ``description_first`` (same members, OWIN's order) or
    ``message`` (``{"message": ...}`` only)."""
    missing_parameter: str = "Missing {} parameter"
    """``invalid_request`` description for a required parameter left out (``{}``: its name)."""
    missing_grant_is_unsupported: bool = False
    """A missing ``grant_type`` gets ``grant_error`` rather than ``missing_parameter`` (OWIN does so)."""
    grant_error: tuple[str, str] = ("unsupported_grant_type", "Unsupported grant type")
    """``error`` and description (status 400) for a grant type other than ``client_credentials``."""
    scopes: tuple[str, ...] = ()
    """Scopes the server grants (run-time option ``granted_scopes``): others are ``invalid_scope``. Empty:
    whatever is requested is granted."""
    scope_required: bool = False
    """A request without a scope is refused (``invalid_request``)."""
    fixed_scope: str = ""
    """The ``scope`` every token carries whatever was asked (Aria's ``api``; run-time option ``scope``);
    empty: the requested scopes, and no ``scope`` member without any."""
    token: Literal["opaque", "hex", "jwt"] = "opaque"
    """``opaque`` (``token_prefix`` + 43 random base64url characters), ``hex`` (56 lowercase hex digits) or
    ``jwt`` (HS256 over ``claims``)."""
    token_prefix: str = ""
    token_type: str = "Bearer"
    expires_in: int | None = None
    """Default ``expires_in`` (run-time option), and the JWT lifetime; ``None``: the entry's documented
    ``lifetime`` (what a provider that keeps its word issues)."""
    claims: tuple[tuple[str, str], ...] = (
        ("sub", "{client_id}"), ("iat", "{iat}"), ("exp", "{exp}"), ("jti", "{jti}"))
    """JWT claims in order; ``{client_id}``, ``{scope}``, ``{iat}``, ``{exp}``, ``{jti}`` (a random id) and the
    names of ``options`` are filled in, and a claim that is one placeholder alone keeps its value's type."""
    options: tuple[tuple[str, str], ...] = ()
    """Further run-time options and their defaults, for ``claims`` (Aria's ``issuer``, ``client_no``)."""
    response_fields: tuple[str, ...] = ("access_token", "token_type", "expires_in", "scope")
    """Members of a success body, in the document's order (``scope`` only when there is one): these four
    and the names of ``extra_fields``."""
    extra_fields: tuple[tuple[str, int], ...] = ()
    """Constant numeric members of the success body (Keycloak's ``refresh_expires_in``)."""
    json_audience: bool = False
    """The JSON body must carry ``audience`` equal to ``""`` (Autopay)."""
    only_grant_type: bool = False
    """Any form parameter besides ``grant_type`` is refused (Alternative Payments)."""
    one_auth_method: bool = False
    """A ``client_secret`` in the body alongside an Authorization header is refused (RFC 6749 2.3)."""


RESERVED_PARAMETERS = frozenset({"grant_type", "client_id", "client_secret", "client_assertion",
                                 "client_assertion_type", "scope", "resource", "audience"})
"""Token request parameters the service sets itself: a connection's ``extra_parameters`` may not name them."""


@dataclass(frozen=True)
class ClientCredentialsProfile:
    name: str
    """Route name (``/token/{name}``), DynamoDB partition key and metric dimension. For a catalogue entry, the
    provider's name (and the name of its default connection); for the profile of a connection
    (:func:`token_vending.catalogue.connection`), the connection's name: everything keyed by it is then keyed by
    the connection."""
    auth: ClientAuth
    lifetime: int = 3600
    """The token lifetime the provider's document promises (the shortest it says it grants): ``min_ttl`` is
    bounded by it, from configuration alone."""
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """Documented token URLs by ``<region>/<stage>`` (Aria), chosen with the REGION and STAGE settings when
    no TOKEN_URL is given."""
    emulator: EmulatorRules = EmulatorRules()
    body: BodyEncoding = BodyEncoding.FORM
    scope: ScopeMode = ScopeMode.OMIT
    send_audience: bool = False
    """Send an ``audience`` member even when empty (Autopay: "must always be \"\"")."""
    lifetime_fields: tuple[str, ...] = ("expires_in",)
    """Response members holding the lifetime, in order of preference."""
    basic_encoding: BasicEncoding = BasicEncoding.RFC6749
    """How :attr:`ClientAuth.BASIC_HEADER` encodes the credentials: RFC 6749 2.3.1 unless the provider's
    document shows otherwise (the design's rule)."""
    credential_error_codes: frozenset[str] = frozenset({"invalid_client"})
    """OAuth ``error`` codes that mean "bad credentials" (the secret is re-read once and the request retried):
    RFC 6749's ``invalid_client``, plus whatever else the provider answers a wrong secret with."""
    credential_error_statuses: frozenset[int] = frozenset()
    """HTTP statuses that mean "bad credentials" even when the body has no such code."""
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    template_key: str = ""
    """The template's key when CamelCasing the name gives the wrong one (``oauth2`` -> ``OAuth2``, not
    ``Oauth2``); empty: :attr:`key` derives it from the name."""
    provider: str = ""
    """The catalogue entry's name (``aria`` for the connection ``AriaAu``); empty: :attr:`name` (an entry of the
    catalogue itself). Only for context (logs, the status command): nothing is keyed by it."""

    def __post_init__(self) -> None:
        if not self.provider:
            object.__setattr__(self, "provider", self.name)

    @property
    def key(self) -> str:
        """The template's name for this provider or connection: ``alternative-payments`` ->
        ``AlternativePayments``, ``oauth2`` -> ``OAuth2`` (:attr:`template_key`), ``AriaAu`` -> ``AriaAu``."""
        return self.template_key or "".join(part[:1].upper() + part[1:] for part in self.name.split("-"))

    def build_request(self, *, client_id: str, client_secret: str, scope: str, audience: str,
                      client_assertion: str = "", resource: Sequence[str] = (),
                      extra_parameters: Mapping[str, str] | None = None) -> tuple[dict[str, str], bytes]:
        """Headers and body for one token request, exactly as the provider documents it, plus the connection's
        own parameters: ``audience`` when not empty (always with :attr:`send_audience`), one RFC 8707
        ``resource`` per URI (a JSON string for one, a list for several) and ``extra_parameters`` (which may not
        name a parameter the service sets: :data:`RESERVED_PARAMETERS`)."""
        headers = {"Accept": "application/json", "Content-Type": self.body.value, **self.extra_headers}
        fields: list[tuple[str, str]] = [("grant_type", "client_credentials")]
        if self.auth is ClientAuth.BASIC_HEADER:
            headers["Authorization"] = basic_authorization(client_id, client_secret, self.basic_encoding)
        elif self.auth is ClientAuth.PRIVATE_KEY_JWT:
            from token_vending.assertion import ASSERTION_TYPE  # off the cold path of the other methods

            fields.append(("client_id", client_id))  # RFC 7523 2.2 allows it; Keycloak and Authlib look it up by it
            fields.append(("client_assertion_type", ASSERTION_TYPE))
            fields.append(("client_assertion", client_assertion))
        elif self.auth is ClientAuth.TLS_CLIENT_AUTH:
            fields.append(("client_id", client_id))  # RFC 8705 section 2: the certificate is the credential
        else:
            fields.append(("client_id", client_id))
            fields.append(("client_secret", client_secret))
        if self.scope is ScopeMode.REQUIRED or (self.scope is ScopeMode.OPTIONAL and scope):
            fields.append(("scope", scope))
        if self.send_audience or audience:
            fields.append(("audience", audience))
        extra = dict(extra_parameters or {})
        reserved = RESERVED_PARAMETERS.intersection(extra)
        if reserved:
            raise ValueError(f"extra parameter {min(reserved)} is set by the service")
        if self.body is BodyEncoding.JSON:
            document: dict[str, object] = dict(fields)
            if resource:
                document["resource"] = resource[0] if len(resource) == 1 else list(resource)
            document.update(extra)
            return headers, json.dumps(document, separators=(",", ":")).encode()
        fields.extend(("resource", uri) for uri in resource)
        fields.extend(extra.items())
        # quote_via=quote encodes the space between scopes as %20, as Pyng's example shows.
        return headers, urlencode(fields, quote_via=quote, safe=":").encode("ascii")

    def is_credential_error(self, status: int, error: str | None) -> bool:
        """Whether an answer means our credentials were refused (so a rotated secret is worth re-reading)."""
        return error in self.credential_error_codes or status in self.credential_error_statuses


def form_urlencode(value: str) -> str:
    """One value in RFC 6749 Appendix B's application/x-www-form-urlencoded encoding, as 2.3.1 wants it
    inside HTTP Basic credentials.

    Appendix B: UTF-8 first, then HTML 4.01's escaping (space as ``+``, other characters as ``%HH``).
    ``quote(value, safe="")`` percent-encodes every octet outside RFC 3986's unreserved set
    (``A-Z a-z 0-9 - . _ ~``) and writes space as ``%20`` rather than ``+``: a form decoder reads ``%20``
    as a space just the same, while the many servers that only percent-decode the Basic credentials
    (Authlib's ``extract_basic_authorization`` uses ``urllib.parse.unquote``; authentik too, so that clients
    sending a raw ``+`` keep working) would read ``+`` as a plus sign. ``%20`` is decoded right by both
    kinds; ``+`` by one. Unreserved characters pass through every decoder unchanged, so leaving them as
    they are changes nothing (and keeps the common alphabet identical to the plain form).
    """
    return quote(value, safe="")


def basic_authorization(client_id: str, client_secret: str,
                        encoding: BasicEncoding = BasicEncoding.RFC6749) -> str:
    """The ``Authorization`` header value for HTTP Basic client authentication in the given encoding.

    Module-level so that code recognising echoes of our credentials can build every form we send.
    """
    if encoding is BasicEncoding.RFC6749:
        client_id, client_secret = form_urlencode(client_id), form_urlencode(client_secret)
    token = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
    return f"Basic {token}"
