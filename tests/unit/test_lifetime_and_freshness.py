from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from token_vending.cache import CachedToken
from token_vending.freshness import RefreshPolicy
from token_vending.lifetime import MAX_SANE_LIFETIME, LifetimeError, jwt_expiry, lifetime_from, parse_expires_in


@pytest.mark.parametrize(("value", "seconds"), [
    (3600, 3600), ("900", 900), (" 86400 ", 86400), (899.9, 899), ("3600.5", 3600), ("1e3", 1000), (1e3, 1000),
    ("0900", 900), ("+60", 60), ("1.5E2", 150), (34560000, 34560000), ("34560000", 34560000),
])
def test_expires_in_integer_or_numeric_string(value: Any, seconds: int) -> None:
    assert parse_expires_in(value) == seconds


@given(st.one_of(st.integers(1, MAX_SANE_LIFETIME), st.floats(1, MAX_SANE_LIFETIME)))
def test_a_number_and_the_same_number_quoted_are_one_lifetime(number: float) -> None:
    """The contract promises numeric strings: whatever JSON number is accepted, its text is accepted alike."""
    assert parse_expires_in(json.dumps(number)) == parse_expires_in(number) == int(number)


@pytest.mark.parametrize("value", [True, "soon", "", "-5", 0, -1, None, [], 10**12, "1e12", "0.5", 0.5, "1_000",
                                   "inf", "nan", "²", "٣٠٠", "0x10", "9" * 5000, float("inf"), float("nan"),
                                   34560001, "34560001"])
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


def test_a_stored_token_beyond_any_sane_lifetime_is_a_miss_not_a_crash() -> None:
    """An item no provider answer can produce any more (an ``exp`` past the year 9999) is replaced, never served:
    serving it would fail every caller when its expiry is written out."""
    from token_vending.cache import token_from_item

    def item(expires_at: int) -> dict[str, Any]:
        return {"access_token": {"S": "t"}, "expires_at": {"N": str(expires_at)}, "fetched_at": {"N": "1000.0"}}

    assert token_from_item("p", "", item(1000 + 3600)) is not None
    assert token_from_item("p", "", item(1000 + MAX_SANE_LIFETIME + 1)) is None
    assert token_from_item("p", "", item(253402300800 * 4)) is None


def test_a_jwt_exp_of_hundreds_of_digits_is_read_as_a_comparable_number() -> None:
    """JSON integers have no size limit; the clock is a float: an ``exp`` of 400 digits must not overflow."""
    import time

    from token_vending.lifetime import beyond_sane_lifetime

    for exp in (10**400, -(10**400)):
        read = jwt_expiry(jwt({"exp": exp}))
        assert read is not None
        assert beyond_sane_lifetime(read, time.time()) == (exp > 0)
