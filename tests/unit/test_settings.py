from __future__ import annotations

import pytest

from token_vending.exceptions import Misconfigured
from token_vending.settings import ProviderSettings

BASE = {"PROVIDER_NAME": "pyng", "TOKEN_URL": "https://sample.pyng.com.au/billing/oauth2/token",
        "SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pyng-AbCdEf",
        "CACHE_TABLE_NAME": "tokens", "ALLOWED_SCOPES": "billing:batches:read billing:customers:read"}


def test_valid_settings() -> None:
    settings = ProviderSettings.from_env("pyng", BASE)
    assert settings.default_scopes == settings.allowed_scopes
    assert settings.lifetime == 3600
    assert settings.cache.lease_seconds == 20


@pytest.mark.parametrize(("overrides", "named"), [
    ({"TOKEN_URL": "http://public-api.alternativepayments.io/oauth/token"}, "TOKEN_URL"),
    ({"TOKEN_URL": "http://127.0.0.1:9002/billing/oauth2/token"}, "TOKEN_URL"),  # not in local mode
    ({"TOKEN_URL": "ftp://x/y"}, "TOKEN_URL"),
    ({"TOKEN_URL": ""}, "TOKEN_URL"),
    ({"SECRET_ID": ""}, "SECRET_ID"),
    ({"CACHE_TABLE_NAME": ""}, "CACHE_TABLE_NAME"),
    ({"DEFAULT_SCOPES": "billing:admin"}, "DEFAULT_SCOPES"),
    ({"ALLOWED_SCOPES": 'bad"scope'}, "ALLOWED_SCOPES"),
    ({"REFRESH_MARGIN_SECONDS": "soon"}, "REFRESH_MARGIN_SECONDS"),
    ({"LEASE_SECONDS": "0"}, "LEASE_SECONDS"),
    ({"LEASE_SECONDS": "2"}, "LEASE_SECONDS"),  # no attempt fits: every miss would be a 504
    ({"DEFAULT_TOKEN_LIFETIME": "119"}, "DEFAULT_TOKEN_LIFETIME"),
    ({"UPSTREAM_READ_TIMEOUT": "nan"}, "UPSTREAM_READ_TIMEOUT"),
    ({"PROVIDER_NAME": "aria"}, "PROVIDER_NAME"),
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


def test_plain_http_only_on_loopback_in_local_mode() -> None:
    local = {**BASE, "TOKEN_VENDING_LOCAL_MODE": "true"}
    for url in ("http://127.0.0.1:9002/t", "http://localhost:9002/t", "http://host.docker.internal:9002/t"):
        assert ProviderSettings.from_env("pyng", {**local, "TOKEN_URL": url}).token_url == url
    with pytest.raises(Misconfigured):
        ProviderSettings.from_env("pyng", {**local, "TOKEN_URL": "http://10.0.0.5/t"})
