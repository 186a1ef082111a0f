"""The provider catalogue: one entry per provider, every fact about it in one place; and connections.

An entry says how the provider's token endpoint wants to be called (credential placement and encoding,
body encoding, scopes), what its document promises (lifetime, lifetime field names, the errors that mean
bad credentials) and how its local emulator behaves. Everything else derives from it: the one provider
function (it reads its connection's entry by ``CONNECTION_NAME``), the token API's table, the local stack,
``env.json`` and ``events/``; ``template.yaml``'s ``Connections`` pattern names the same keys (a test keeps the
two equal).

A *connection* is one deployed credential set of one provider. Its key (an item of the template's
``Connections``) is a catalogue key followed by a label (``AriaAu``, ``PyngOrg2``, ``OAuth2Acme``), or a
catalogue key alone for the five default connections; its name (route, partition key, metric dimension,
budget key) is the entry's name for those (``invoice-cloud``), otherwise the key itself. :func:`connection`
turns a name into the profile everything is keyed by; :func:`connection_name` turns a key into a name.

Adding a standard RFC 6749 provider needs no entry: ``OAuth2<Label>`` is a connection of the generic ``oauth2``
entry, configured by its secret. Each entry cites the provider's document in ``../shared/seeds``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from token_vending.profile import (
    BasicEncoding,
    BodyEncoding,
    ClientAuth,
    ClientCredentialsProfile,
    EmulatorRules,
    ScopeMode,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

_ARIA_REALM = "realms/aria/protocol/openid-connect/token"

CATALOGUE: tuple[ClientCredentialsProfile, ...] = (
    # Invoice Cloud Biller OAuth 2.0 guide: client_id/client_secret in the form body, no scope, every error
    # a 400 with error_description before error (OWIN); the host is ".com" (the guide also says ".co" once).
    ClientCredentialsProfile(
        name="invoice-cloud",
        auth=ClientAuth.FORM_BODY, body=BodyEncoding.FORM, scope=ScopeMode.OMIT, lifetime=3600,
        emulator=EmulatorRules(
            path="/biller/v1/authentication/oauth2/token", credentials="form",
            credential_error=(400, "invalid_client", "Invalid client authentication"), www_authenticate="never",
            error_shape="description_first", missing_grant_is_unsupported=True,
            grant_error=("unsupported_grant_type", "The grant type is not supported"), token_prefix="ic_",
            response_fields=("access_token", "token_type", "expires_in")),
    ),
    # Pyng (B2B Receivables) authentication guide: "Basic base64(Username:Password)" as it is (RFC 7617, not
    # RFC 6749 2.3.1's form-urlencoded parts), a required space-separated scope (%20), 900 s tokens,
    # 401 invalid_client. The host differs per partner.
    ClientCredentialsProfile(
        name="pyng",
        auth=ClientAuth.BASIC_HEADER, basic_encoding=BasicEncoding.RFC7617, body=BodyEncoding.FORM,
        scope=ScopeMode.REQUIRED, lifetime=900,
        emulator=EmulatorRules(
            path="/billing/oauth2/token", credentials="basic", basic_decoding="rfc7617", www_authenticate="always",
            one_auth_method=True,
            scopes=("billing:customers:invite", "billing:customers:read", "billing:batches:submit",
                    "billing:batches:read"),
            scope_required=True, token_prefix="pyng_", expires_in=900),
    ),
    # Aria "Obtaining a Bearer Token": one of 12 Keycloak realm endpoints (region x stage), form-body
    # credentials, a JWT access token whose exp the cache honours. Keycloak answers a wrong secret with
    # 401 invalid_client or, in several versions, unauthorized_client.
    ClientCredentialsProfile(
        name="aria",
        auth=ClientAuth.FORM_BODY, body=BodyEncoding.FORM, scope=ScopeMode.OPTIONAL, lifetime=3600,
        credential_error_codes=frozenset({"invalid_client", "unauthorized_client"}),
        endpoints={
            "US/Prod": f"https://kauth.ariasystems.net/{_ARIA_REALM}",
            "US/Future": f"https://kauth.future.stage.ariasystems.net/{_ARIA_REALM}",
            "US/Current": f"https://kauth.current.stage.ariasystems.net/{_ARIA_REALM}",
            "AUS/Prod": f"https://kauth.prod.aus.ariasystems.net/{_ARIA_REALM}",
            "AUS/Future": f"https://kauth.future.stage.aus.ariasystems.net/{_ARIA_REALM}",
            "AUS/Current": f"https://kauth.current.stage.aus.ariasystems.net/{_ARIA_REALM}",
            "SGP/Prod": f"https://kauth.prod.sgp.ariasystems.net/{_ARIA_REALM}",
            "SGP/Future": f"https://kauth.future.stage.sgp.ariasystems.net/{_ARIA_REALM}",
            "SGP/Current": f"https://kauth.current.stage.sgp.ariasystems.net/{_ARIA_REALM}",
            "CPH/Prod": f"https://kauth.cph.ariasystems.net/{_ARIA_REALM}",
            "CPH/Future": f"https://kauth.future.stage.cph.ariasystems.net/{_ARIA_REALM}",
            "CPH/Current": f"https://kauth.current.stage.cph.ariasystems.net/{_ARIA_REALM}",
        },
        emulator=EmulatorRules(
            path=f"/{_ARIA_REALM}", credentials="form", auth_first=False,
            credential_error=(401, "invalid_client", "Invalid client or Invalid client credentials"),
            www_authenticate="never", missing_parameter="Missing form parameter: {}",
            grant_error=("unsupported_grant_type", "Unsupported grant_type"), fixed_scope="api", token="jwt",
            claims=(("exp", "{exp}"), ("iat", "{iat}"), ("jti", "{jti}"), ("iss", "{issuer}"),
                    ("aud", "billie-connect-api"), ("sub", "service-account-{client_id}"), ("typ", "Bearer"),
                    ("azp", "{client_id}"), ("scope", "{scope}"), ("client_no", "{client_no}"),
                    ("account_no", "{account_no}")),
            options=(("issuer", "authorization-server"), ("client_no", "7000213"), ("account_no", "12345")),
            response_fields=("access_token", "expires_in", "refresh_expires_in", "token_type",
                             "not-before-policy", "scope"),
            extra_fields=(("refresh_expires_in", 0), ("not-before-policy", 0))),
    ),
    # Autopay API documentation: a JSON body with client_id, client_secret, audience (which "must always be
    # \"\"") and grant_type; tokens live 10-24 h (the shorter is promised); the lifetime is once spelled
    # "expries_in"; a 401 may carry only error_description, so any 401 means rejected credentials.
    # Requesting a token per request "may lead to termination of API access". No documented URL.
    ClientCredentialsProfile(
        name="autopay",
        auth=ClientAuth.JSON_BODY, body=BodyEncoding.JSON, scope=ScopeMode.OMIT, lifetime=36000,
        send_audience=True, lifetime_fields=("expires_in", "expries_in"),
        credential_error_statuses=frozenset({401}),
        emulator=EmulatorRules(
            credentials="json", json_audience=True, auth_first=False,
            credential_error=(401, "access_denied", "Unauthorized"), www_authenticate="never",
            missing_parameter="Missing required parameter: {}",
            fixed_scope="payments:read payments:write", token="jwt", expires_in=86400,
            claims=(("iss", "{issuer}"), ("sub", "{client_id}@clients"), ("iat", "{iat}"), ("exp", "{exp}"),
                    ("jti", "{jti}"), ("scope", "{scope}"), ("gty", "client-credentials"), ("azp", "{client_id}")),
            options=(("issuer", "https://autopay.local/"),),
            response_fields=("access_token", "scope", "expires_in", "token_type")),
    ),
    # Alternative Payments OpenAPI document: "Authorization: Basic Base64Encode(client_id:client_secret)"
    # (RFC 7617 as it is), a form body with grant_type only, a lowercase "bearer", 403 with an object of
    # strings (no OAuth error member) for bad credentials. The document's server is http://.
    ClientCredentialsProfile(
        name="alternative-payments",
        auth=ClientAuth.BASIC_HEADER, basic_encoding=BasicEncoding.RFC7617, body=BodyEncoding.FORM,
        scope=ScopeMode.OMIT, lifetime=3600, credential_error_statuses=frozenset({403}),
        emulator=EmulatorRules(
            credentials="basic", basic_decoding="rfc7617",
            credential_error=(403, "invalid_client", "Invalid credentials"),
            www_authenticate="never", error_shape="message", missing_grant_is_unsupported=True,
            grant_error=("invalid_request", "grant_type must be client_credentials"), only_grant_type=True,
            token="hex", token_type="bearer",
            response_fields=("access_token", "expires_in", "token_type")),
    ),
    # A standard RFC 6749 server (section 2.3.1's client_secret_basic, form-urlencoded parts; section 5
    # answers): no documented URL, so its token URL is a setting (the secret's token_url), as are its scopes,
    # audience, resources and extra parameters. Not a default connection: deployed as OAuth2<Label>.
    ClientCredentialsProfile(
        name="oauth2", template_key="OAuth2",
        auth=ClientAuth.BASIC_HEADER, basic_encoding=BasicEncoding.RFC6749, body=BodyEncoding.FORM,
        scope=ScopeMode.OPTIONAL, lifetime=3600,
        emulator=EmulatorRules(),
    ),
)

KEYS: tuple[str, ...] = tuple(entry.key for entry in CATALOGUE)
"""The catalogue's keys, in order: what a connection key starts with (the template's ``Connections`` pattern)."""
DEFAULT_CONNECTIONS: tuple[str, ...] = ("InvoiceCloud", "Pyng", "Aria", "Autopay", "AlternativePayments")
"""The keys of the connections the template deploys by default (``Connections``), each named as its entry."""
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def by_name() -> Mapping[str, ClientCredentialsProfile]:
    """Entries by route name."""
    return {entry.name: entry for entry in CATALOGUE}


def entry(name: str) -> ClientCredentialsProfile | None:
    """The catalogue entry of a provider's name, or ``None``."""
    return next((candidate for candidate in CATALOGUE if candidate.name == name), None)


def connection(name: str) -> ClientCredentialsProfile | None:
    """The profile of the connection ``name``, or ``None`` when no catalogue entry has it.

    A name equal to an entry's name is that entry (a default connection). Otherwise the name is a connection's key
    verbatim (alphanumeric, as the template's ``Connections`` allows): its provider is the entry whose key is the
    longest prefix of it, and the name must be longer than that key (a key alone is the entry's own connection,
    named as the entry). The profile is that entry with ``name`` replaced by the connection's, so that the
    partition, budget, leases, renewals, metrics, logs and errors are the connection's own.
    """
    found = entry(name)
    if found is not None:
        return found
    if not isinstance(name, str) or not _LABEL.match(name):
        return None
    prefixes = [candidate for candidate in CATALOGUE if name.startswith(candidate.key)]
    if not prefixes:
        return None
    provider = max(prefixes, key=lambda candidate: len(candidate.key))
    if len(name) == len(provider.key):
        return None
    return replace(provider, name=name, template_key=name, provider=provider.name)


def connection_name(key: str) -> str:
    """A connection's name from its key: the catalogue entry's name for an entry's own key (``InvoiceCloud`` ->
    ``invoice-cloud``), otherwise the key itself (``AriaAu``)."""
    return next((candidate.name for candidate in CATALOGUE if candidate.key == key), key)
