from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from token_vending.cache import CachedToken
from token_vending.freshness import RefreshPolicy
from token_vending.lifetime import LifetimeError, jwt_expiry, lifetime_from, parse_expires_in


@pytest.mark.parametrize(("value", "seconds"), [(3600, 3600), ("900", 900), (" 86400 ", 86400), (899.9, 899)])
def test_expires_in_integer_or_numeric_string(value: Any, seconds: int) -> None:
    assert parse_expires_in(value) == seconds


@pytest.mark.parametrize("value", [True, "soon", "", "-5", 0, -1, None, [], "1e3", 10**12])
def test_unusable_expires_in_is_refused(value: Any) -> None:
    with pytest.raises(LifetimeError):
        parse_expires_in(value)


def test_autopay_spelling_is_read_after_the_correct_one() -> None:
    fields = ("expires_in", "expries_in")
    assert lifetime_from({"expries_in": 7200}, fields) == 7200
    assert lifetime_from({"expires_in": 60, "expries_in": 7200}, fields) == 60
    assert lifetime_from({}, fields) is None


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


def test_jwt_exp_is_read_without_verification() -> None:
    assert jwt_expiry(jwt({"exp": 1640995200, "iat": 1640991600})) == 1640995200
    assert jwt_expiry(jwt({"iat": 1})) is None
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.%%%.c") is None
    assert jwt_expiry(jwt({"exp": "tomorrow"})) is None


def token(expires_in: float, lifetime: int, now: float = 1_000_000.0) -> CachedToken:
    return CachedToken(provider="p", scope_key="", access_token="t", expires_at=int(now + expires_in),
                       fetched_at=now - (lifetime - expires_in), lifetime=lifetime)


def test_refresh_margin_is_max_of_seconds_and_ratio_capped_at_half_lifetime() -> None:
    policy = RefreshPolicy(60, 0.1)
    assert policy.margin(3600) == 360
    assert policy.margin(300) == 60
    assert policy.margin(90) == 45  # a very short-lived token is not refreshed on every call


def test_fresh_and_usable() -> None:
    policy = RefreshPolicy(60, 0.1)
    now = 1_000_000.0
    assert policy.is_fresh(token(1000, 3600), 60, now)
    assert not policy.is_fresh(token(300, 3600), 60, now)  # inside the 360 s margin
    assert policy.is_usable(token(300, 3600), 60, now)  # still good enough when the refresh fails
    assert not policy.is_fresh(token(1000, 3600), 1200, now)  # min_ttl not met
    assert not policy.is_usable(token(-1, 3600), 0, now)
