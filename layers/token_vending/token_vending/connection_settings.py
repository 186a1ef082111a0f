"""A connection's fetch settings: the non-secret fields of its secret over its function's environment.

Why resolved when the secret is read: a connection added by configuration has no environment of its own beyond its
name (only the five default connections have template parameters), so its token URL, scopes, client
authentication, audience, resources and extra parameters live beside its credentials, in the same JSON document.
A field there overrides the environment's value; an empty string, list or object counts as absent. Only a fetch
needs these settings, so a hit never reads the secret, and a bad value is the contract's ``misconfigured`` naming
the field (``secret field token_url ...``) or the variable (``setting TOKEN_URL ...``) from the first miss on, and
again on each re-read -- never the value, which an error body would carry to callers.

Imported on the first secret read only: it stays off the cold path of a hit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from token_vending import constants
from token_vending.exceptions import Misconfigured
from token_vending.profile import AUTH_METHODS, RESERVED_PARAMETERS, ClientAuth, ScopeMode
from token_vending.scopes import parse_scope_set, scope_key
from token_vending.settings import LOCAL_HOSTS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from token_vending.profile import ClientCredentialsProfile
    from token_vending.settings import ProviderSettings

SETTING_FIELDS: dict[str, str | None] = {
    "token_url": constants.TOKEN_URL_ENV,
    "region": constants.REGION_ENV,
    "stage": constants.STAGE_ENV,
    "scopes": constants.ALLOWED_SCOPES_ENV,
    "default_scopes": constants.DEFAULT_SCOPES_ENV,
    "client_auth": constants.CLIENT_AUTH_ENV,
    "signing_key_id": constants.SIGNING_KEY_ID_ENV,
    "assertion_audience": constants.ASSERTION_AUDIENCE_ENV,
    "audience": constants.AUDIENCE_ENV,
    "resource": None,
    "extra_parameters": None,
}
"""The secret's setting fields and the environment variable each overrides (``None``: the secret only)."""

ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+$")
"""RFC 3986 4.3 ``absolute-URI`` (a scheme, then URI characters: unreserved, reserved but ``#``, and ``%``): what
RFC 8707 section 2 wants of a ``resource``, which "MUST NOT include a fragment component"."""


@dataclass(frozen=True)
class ConnectionSettings:
    """The settings one fetch needs, resolved and validated (:func:`resolve`)."""

    token_url: str
    auth: ClientAuth
    """The client authentication in effect: the catalogue entry's, or the one ``client_auth`` names."""
    client_auth: str = ""
    """The RFC 7591 method name overriding the entry's, or empty."""
    signing_key_id: str = ""
    """The KMS key that signs ``private_key_jwt`` assertions; empty: the secret's PEM ``private_key``."""
    assertion_audience: str = ""
    audience: str = ""
    resource: tuple[str, ...] = ()
    """RFC 8707 resource indicators: one ``resource`` parameter each."""
    extra_parameters: tuple[tuple[str, str], ...] = ()
    """Further form fields, or JSON members for a JSON body, in the secret's order."""
    allowed_scopes: frozenset[str] = frozenset()
    default_scopes: frozenset[str] = frozenset()
    """Requested when the caller names no scope (the ``""`` cache key); a subset of :attr:`allowed_scopes`."""

    def required_fields(self) -> tuple[str, ...]:
        """The secret's credential fields this authentication cannot do without."""
        from token_vending.credentials import required_fields

        return required_fields(self.auth, kms_signing=bool(self.signing_key_id))

    def profile(self, profile: ClientCredentialsProfile) -> ClientCredentialsProfile:
        """``profile`` as this connection calls its endpoint (its authentication overridden, if it is)."""
        return profile if profile.auth is self.auth else replace(profile, auth=self.auth)

    def scope(self, scopes: frozenset[str], *, provider: str) -> str:
        """The ``scope`` parameter of a request for ``scopes``: the default scopes when it names none, else the
        named ones, each of which must be allowed (``invalid_request`` naming the allowed ones, as the request's
        own checks do)."""
        if not scopes:
            return scope_key(self.default_scopes)
        from token_vending.request import check_scopes

        check_scopes(scopes, self.allowed_scopes, provider=provider)
        return scope_key(scopes)


def unknown_fields(document: Mapping[str, Any]) -> list[str]:
    """Fields of the secret that are neither credentials nor settings (notes, typos): warned about by name only."""
    from token_vending.credentials import ALL_FIELDS

    return sorted(name for name in document if name not in SETTING_FIELDS and name not in ALL_FIELDS)


class _Source:
    """One setting's value and where it came from, for the error that names it."""

    def __init__(self, settings: ProviderSettings, document: Mapping[str, Any], field: str) -> None:
        self.field = field
        self.variable = SETTING_FIELDS[field]
        self.provider = settings.provider
        raw = document.get(field)
        self.in_secret = raw is not None and raw not in ("", [], {})
        self.raw: Any = raw if self.in_secret else (settings.env(self.variable) if self.variable else "")

    @property
    def name(self) -> str:
        """``secret field x`` or ``setting X``, whichever gave the value."""
        if self.in_secret or self.variable is None:
            return f"secret field {self.field}"
        return f"setting {self.variable}"

    @property
    def missing(self) -> str:
        """How to name the setting when neither place gives it."""
        if self.variable is None:
            return f"secret field {self.field} is missing"
        return f"setting {self.variable} is missing (or secret field {self.field})"

    def fail(self, problem: str) -> Misconfigured:
        return Misconfigured(f"{self.name} {problem}", provider=self.provider)

    def text(self) -> str:
        if not isinstance(self.raw, str):
            raise self.fail("must be a string")
        return self.raw if self.field == "audience" else self.raw.strip()

    def scopes(self) -> frozenset[str]:
        try:
            return parse_scope_set(self.text())
        except ValueError:
            raise self.fail("holds an invalid scope") from None


def resolve(settings: ProviderSettings, document: Mapping[str, Any],
            profile: ClientCredentialsProfile) -> ConnectionSettings:
    """The connection's fetch settings from its secret's ``document`` over ``settings.environment``; raises
    :class:`Misconfigured` naming the first bad or missing one."""

    def source(field: str) -> _Source:
        return _Source(settings, document, field)

    name = settings.provider
    client_auth = source("client_auth")
    method = client_auth.text()
    if method and method not in AUTH_METHODS:
        raise client_auth.fail(f"must be one of {', '.join(AUTH_METHODS)}")
    auth = ClientAuth.from_method(method) if method else profile.auth
    signing = source("signing_key_id")
    signing_key_id = signing.text()
    if signing_key_id and auth is not ClientAuth.PRIVATE_KEY_JWT:
        # The template grants kms:Sign only with private_key_jwt: a key alone is a mistake to name.
        raise signing.fail("needs client_auth private_key_jwt" if signing.in_secret else
                           f"needs {constants.CLIENT_AUTH_ENV} private_key_jwt (or secret field client_auth)")
    allowed_source, default_source = source("scopes"), source("default_scopes")
    allowed = allowed_source.scopes()
    default = default_source.scopes() or allowed
    if not default <= allowed:
        raise default_source.fail(f"is not a subset of the allowed scopes ({allowed_source.name})")
    if profile.scope is ScopeMode.REQUIRED and not default:
        raise Misconfigured(f"{allowed_source.missing}: the provider requires a scope", provider=name)
    return ConnectionSettings(
        token_url=_token_url(settings, profile, source),
        auth=auth,
        client_auth=method,
        signing_key_id=signing_key_id,
        assertion_audience=source("assertion_audience").text(),
        audience=source("audience").text(),
        resource=_resource(source("resource")),
        extra_parameters=_extra_parameters(source("extra_parameters")),
        allowed_scopes=allowed,
        default_scopes=default,
    )


def _token_url(settings: ProviderSettings, profile: ClientCredentialsProfile,
               source: Callable[[str], _Source]) -> str:
    """``token_url``; else the documented endpoint ``region`` and ``stage`` choose (Aria's Keycloak realms). The
    secret's fields come first: a region or stage named there wins over the environment's TOKEN_URL."""
    url, region, stage = source("token_url"), source("region"), source("stage")
    chosen = url.text()
    regional = region.in_secret or stage.in_secret
    if profile.endpoints and not url.in_secret and (regional or not chosen):
        choice = f"{region.text()}/{stage.text()}"
        if choice not in profile.endpoints:
            names = "secret fields region and stage" if regional else (
                f"settings {constants.REGION_ENV} and {constants.STAGE_ENV} (or secret fields region and stage)")
            raise Misconfigured(f"{names} name no documented endpoint (one of {', '.join(profile.endpoints)})",
                                provider=settings.provider)
        return profile.endpoints[choice]
    if not chosen:
        raise Misconfigured(url.missing, provider=settings.provider)
    return check_token_url(chosen, local_mode=settings.local_mode, source=url)


def check_token_url(url: str, *, local_mode: bool, source: _Source) -> str:
    """Credentials only ever travel over TLS; plain http is a local-emulator convenience."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise source.fail("is not a URL") from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and local_mode and host in LOCAL_HOSTS:
        return url
    raise source.fail("must be an https:// URL")


def _resource(source: _Source) -> tuple[str, ...]:
    """A string or a list of strings: RFC 8707 absolute URIs without a fragment."""
    raw = source.raw
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if values is None or not all(isinstance(value, str) for value in values):
        raise source.fail("must be a string or a list of strings")
    uris = tuple(value.strip() for value in values if value.strip())
    if not all(ABSOLUTE_URI.match(uri) for uri in uris):
        raise source.fail("must be absolute URIs without a fragment")
    return uris


def _extra_parameters(source: _Source) -> tuple[tuple[str, str], ...]:
    """A JSON object of strings; the names the service sets itself are refused."""
    raw = source.raw
    if raw == "":
        return ()
    if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
        raise source.fail("must be a JSON object of strings")
    for parameter in raw:
        if not parameter:
            raise source.fail("names a parameter without a name")
        if parameter in RESERVED_PARAMETERS:
            raise Misconfigured(f"secret field extra_parameters.{parameter} is set by the service and cannot be "
                                "overridden", provider=source.provider)
    return tuple(raw.items())
