"""Settings: the environment's (read when the function is built) and a connection's (its secret's fields over the
environment, resolved and validated when the secret is read)."""

from __future__ import annotations

from typing import Any

import pytest

from token_vending.catalogue import connection, entry
from token_vending.connection_settings import SETTING_FIELDS, resolve, unknown_fields
from token_vending.credentials import ALL_FIELDS
from token_vending.exceptions import Misconfigured
from token_vending.profile import ClientAuth, ClientCredentialsProfile
from token_vending.settings import ProviderSettings

BASE = {"CONNECTION_NAME": "pyng", "TOKEN_URL": "https://sample.pyng.com.au/billing/oauth2/token",
        "SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pyng-AbCdEf",
        "CACHE_TABLE_NAME": "tokens", "ALLOWED_SCOPES": "billing:batches:read billing:customers:read"}
PYNG = entry("pyng")
ARIA = entry("aria")
assert PYNG is not None
assert ARIA is not None


def resolved(env: dict[str, str], secret: dict[str, Any] | None = None, *,
             profile: ClientCredentialsProfile = PYNG) -> Any:
    settings = ProviderSettings.from_env(profile.name, {**env, "CONNECTION_NAME": profile.name}, profile=profile)
    return resolve(settings, secret or {}, profile)


def test_valid_settings() -> None:
    settings = ProviderSettings.from_env("pyng", BASE, profile=PYNG)
    assert settings.lifetime == 900
    assert settings.cache.lease_seconds == 20
    fetch = resolve(settings, {}, PYNG)
    assert fetch.default_scopes == fetch.allowed_scopes == {"billing:batches:read", "billing:customers:read"}
    assert fetch.token_url == BASE["TOKEN_URL"]
    assert fetch.auth is ClientAuth.BASIC_HEADER


@pytest.mark.parametrize(("overrides", "named"), [
    ({"SECRET_ID": ""}, "SECRET_ID"),
    ({"CACHE_TABLE_NAME": ""}, "CACHE_TABLE_NAME"),
    ({"REFRESH_MARGIN_SECONDS": "soon"}, "REFRESH_MARGIN_SECONDS"),
    ({"LEASE_SECONDS": "0"}, "LEASE_SECONDS"),
    ({"LEASE_SECONDS": "2"}, "LEASE_SECONDS"),  # no attempt fits: every miss would be a 504
    ({"DEFAULT_TOKEN_LIFETIME": "119"}, "DEFAULT_TOKEN_LIFETIME"),
    ({"UPSTREAM_READ_TIMEOUT": "nan"}, "UPSTREAM_READ_TIMEOUT"),
    ({"CONNECTION_NAME": "aria"}, "CONNECTION_NAME"),
    # Digits only in ASCII: str.isdigit() and float() accept others that int() refuses or misreads.
    ({"UPSTREAM_BUDGETS": "pyng=²"}, "UPSTREAM_BUDGETS"),
    ({"UPSTREAM_BUDGETS": "pyng=٣٠"}, "UPSTREAM_BUDGETS"),
    ({"UPSTREAM_BUDGETS": "pyng=1_000"}, "UPSTREAM_BUDGETS"),
    ({"UPSTREAM_BUDGETS": "pyng=" + "9" * 5000}, "UPSTREAM_BUDGETS"),
    ({"LEASE_SECONDS": "٣٠"}, "LEASE_SECONDS"),
    ({"LEASE_SECONDS": "2_0"}, "LEASE_SECONDS"),
    ({"REFRESH_MARGIN_SECONDS": "inf"}, "REFRESH_MARGIN_SECONDS"),
])
def test_bad_settings_are_misconfigured_naming_the_variable(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(Misconfigured) as raised:
        ProviderSettings.from_env("pyng", {**BASE, **overrides})
    assert named in raised.value.description
    assert raised.value.status == 500


@pytest.mark.parametrize(("overrides", "message"), [
    ({"TOKEN_URL": "http://public-api.alternativepayments.io/oauth/token"},
     "setting TOKEN_URL must be an https:// URL"),
    ({"TOKEN_URL": "http://127.0.0.1:9002/billing/oauth2/token"},  # not in local mode
     "setting TOKEN_URL must be an https:// URL"),
    ({"TOKEN_URL": "ftp://x/y"}, "setting TOKEN_URL must be an https:// URL"),
    ({"TOKEN_URL": ""}, "setting TOKEN_URL is missing (or secret field token_url)"),
    ({"DEFAULT_SCOPES": "billing:admin"},
     "setting DEFAULT_SCOPES is not a subset of the allowed scopes (setting ALLOWED_SCOPES)"),
    ({"ALLOWED_SCOPES": 'bad"scope'}, "setting ALLOWED_SCOPES holds an invalid scope"),
    ({"ALLOWED_SCOPES": ""},
     "setting ALLOWED_SCOPES is missing (or secret field scopes): the provider requires a scope"),
    ({"CLIENT_AUTH": "client_secret_jwt"}, "setting CLIENT_AUTH must be one of client_secret_basic, "),
    ({"SIGNING_KEY_ID": "alias/x"}, "setting SIGNING_KEY_ID needs CLIENT_AUTH private_key_jwt"),
])
def test_the_environments_connection_settings_are_validated_when_the_secret_is_read(overrides: dict[str, str],
                                                                                     message: str) -> None:
    """The environment is read when the function is built (a bad TOKEN_URL does not stop a hit); the connection's
    settings are checked with the secret, naming the variable."""
    settings = ProviderSettings.from_env("pyng", {**BASE, **overrides}, profile=PYNG)
    with pytest.raises(Misconfigured) as raised:
        resolve(settings, {}, PYNG)
    assert raised.value.description.startswith(message), raised.value.description


def test_plain_http_only_on_loopback_in_local_mode() -> None:
    local = {**BASE, "TOKEN_VENDING_LOCAL_MODE": "true"}
    for url in ("http://127.0.0.1:9002/t", "http://localhost:9002/t", "http://host.docker.internal:9002/t"):
        assert resolved({**local, "TOKEN_URL": url}).token_url == url
    with pytest.raises(Misconfigured):
        resolved({**local, "TOKEN_URL": "http://10.0.0.5/t"})


# --- the secret's fields ---------------------------------------------------------------------------------------
def test_a_secret_field_overrides_the_environment() -> None:
    secret = {"token_url": "https://partner.example/oauth2/token", "scopes": "a b c", "default_scopes": "a",
              "client_auth": "client_secret_post", "audience": "https://api.example/", "assertion_audience": "x"}
    fetch = resolved(BASE, secret)
    assert fetch.token_url == "https://partner.example/oauth2/token"
    assert fetch.allowed_scopes == {"a", "b", "c"}
    assert fetch.default_scopes == {"a"}
    assert fetch.auth is ClientAuth.FORM_BODY
    assert fetch.client_auth == "client_secret_post"
    assert fetch.audience == "https://api.example/"
    assert fetch.assertion_audience == "x"
    assert fetch.profile(PYNG).auth is ClientAuth.FORM_BODY
    # An empty value in the secret counts as absent: the environment's stands.
    fallback = resolved(BASE, {"token_url": "", "scopes": "", "resource": [], "extra_parameters": {}})
    assert fallback.token_url == BASE["TOKEN_URL"]
    assert fallback.allowed_scopes == {"billing:batches:read", "billing:customers:read"}


def test_a_connection_without_environment_takes_everything_from_its_secret() -> None:
    """``OAuth2Acme``: only its name and secret id in the environment, an Auth0-style audience in the secret."""
    acme = connection("OAuth2Acme")
    assert acme is not None
    env = {"SECRET_ID": "s", "CACHE_TABLE_NAME": "t"}
    with pytest.raises(Misconfigured) as raised:
        resolved(env, profile=acme)
    assert raised.value.description == "setting TOKEN_URL is missing (or secret field token_url)"
    assert raised.value.provider == "OAuth2Acme"
    fetch = resolved(env, {"token_url": "https://acme.example/oauth/token", "audience": "https://api.acme.example",
                           "resource": ["https://api.acme.example/", "urn:acme:billing"],
                           "extra_parameters": {"organization": "org_123"}}, profile=acme)
    assert fetch.auth is ClientAuth.BASIC_HEADER
    assert fetch.allowed_scopes == fetch.default_scopes == frozenset()
    assert fetch.resource == ("https://api.acme.example/", "urn:acme:billing")
    assert fetch.extra_parameters == (("organization", "org_123"),)
    assert resolved(env, {"token_url": "https://acme.example/t", "resource": "urn:x:y"}, profile=acme).resource == (
        "urn:x:y",)


def test_region_and_stage_in_the_secret_choose_a_documented_endpoint() -> None:
    """``AriaAu``: Aria's AUS realm, chosen by the secret; the default connection by its environment."""
    aria_au = connection("AriaAu")
    assert aria_au is not None
    env = {"SECRET_ID": "s", "CACHE_TABLE_NAME": "t", "REGION": "US", "STAGE": "Prod"}
    assert resolved(env, profile=ARIA).token_url == ARIA.endpoints["US/Prod"]
    assert resolved(env, {"region": "AUS"}, profile=aria_au).token_url == ARIA.endpoints["AUS/Prod"]
    assert resolved({**env, "TOKEN_URL": "https://kc.example/t"}, {"region": "AUS", "stage": "Future"},
                    profile=aria_au).token_url == ARIA.endpoints["AUS/Future"]
    assert resolved(env, {"token_url": "https://kc.example/t", "region": "AUS"},
                    profile=aria_au).token_url == "https://kc.example/t"
    with pytest.raises(Misconfigured) as raised:
        resolved(env, {"region": "MARS"}, profile=aria_au)
    assert raised.value.description.startswith("secret fields region and stage name no documented endpoint (one of ")
    assert "MARS" not in raised.value.description
    with pytest.raises(Misconfigured) as raised:
        resolved({"SECRET_ID": "s", "CACHE_TABLE_NAME": "t"}, profile=aria_au)
    assert raised.value.description.startswith("settings REGION and STAGE (or secret fields region and stage) name "
                                               "no documented endpoint")


@pytest.mark.parametrize(("secret", "message"), [
    ({"token_url": "http://partner.example/t"}, "secret field token_url must be an https:// URL"),
    ({"token_url": "https://"}, "secret field token_url must be an https:// URL"),
    ({"token_url": 5}, "secret field token_url must be a string"),
    ({"token_url": "http://[::1/t"}, "secret field token_url is not a URL"),
    ({"scopes": "a b\"c"}, "secret field scopes holds an invalid scope"),
    ({"scopes": ["a"]}, "secret field scopes must be a string"),
    ({"default_scopes": "billing:admin"},
     "secret field default_scopes is not a subset of the allowed scopes (setting ALLOWED_SCOPES)"),
    ({"scopes": "a", "default_scopes": "b"},
     "secret field default_scopes is not a subset of the allowed scopes (secret field scopes)"),
    ({"client_auth": "none"}, "secret field client_auth must be one of client_secret_basic, client_secret_post, "),
    ({"signing_key_id": "alias/k"}, "secret field signing_key_id needs client_auth private_key_jwt"),
    ({"audience": 1}, "secret field audience must be a string"),
    ({"resource": "api.example.com"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": "https://api.example/#x"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": ["https://api.example/", "/relative"]},
     "secret field resource must be absolute URIs without a fragment"),
    ({"resource": "https://api.example/a b"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": "https://api.example/<x>"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": "https://api.example/ü"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": "https:"}, "secret field resource must be absolute URIs without a fragment"),
    ({"resource": {"uri": "https://api.example/"}}, "secret field resource must be a string or a list of strings"),
    ({"resource": ["https://api.example/", 3]}, "secret field resource must be a string or a list of strings"),
    ({"extra_parameters": {"scope": "admin"}},
     "secret field extra_parameters.scope is set by the service and cannot be overridden"),
    ({"extra_parameters": {"client_secret": "x"}},
     "secret field extra_parameters.client_secret is set by the service and cannot be overridden"),
    ({"extra_parameters": {"resource": "x"}},
     "secret field extra_parameters.resource is set by the service and cannot be overridden"),
    ({"extra_parameters": {"audience": "x"}},
     "secret field extra_parameters.audience is set by the service and cannot be overridden"),
    ({"extra_parameters": {"n": 1}}, "secret field extra_parameters must be a JSON object of strings"),
    ({"extra_parameters": "a=b"}, "secret field extra_parameters must be a JSON object of strings"),
    ({"extra_parameters": {"": "x"}}, "secret field extra_parameters names a parameter without a name"),
])
def test_a_bad_secret_field_is_misconfigured_naming_the_field_not_its_value(secret: dict[str, Any],
                                                                            message: str) -> None:
    with pytest.raises(Misconfigured) as raised:
        resolved(BASE, secret)
    assert raised.value.description.startswith(message), raised.value.description
    assert raised.value.provider == "pyng"
    for value in secret.values():
        for shown in value.values() if isinstance(value, dict) else [value]:
            if isinstance(shown, str) and len(shown) > 2 and shown not in message:
                assert shown not in raised.value.description


def test_reserved_extra_parameters_are_the_ones_the_service_sets() -> None:
    from token_vending.profile import RESERVED_PARAMETERS

    assert {"grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type", "scope",
            "resource", "audience"} == RESERVED_PARAMETERS
    for name in RESERVED_PARAMETERS:
        with pytest.raises(Misconfigured) as raised:
            resolved(BASE, {"extra_parameters": {name: "x"}})
        assert raised.value.description == (f"secret field extra_parameters.{name} is set by the service and "
                                            "cannot be overridden")


def test_unknown_fields_are_the_ones_neither_credentials_nor_settings() -> None:
    assert unknown_fields({"client_id": "i", "client_secret": "s", "token_url": "u", "note": "x", "Scopes": "y"}) == [
        "Scopes", "note"]
    assert unknown_fields(dict.fromkeys([*ALL_FIELDS, *SETTING_FIELDS], "")) == []
