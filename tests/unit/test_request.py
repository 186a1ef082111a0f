from __future__ import annotations

from typing import Any

import pytest

from token_vending.exceptions import InvalidRequest
from token_vending.request import check_scopes, fingerprint, parse_request, replaced

ALLOWED = frozenset({"billing:batches:read", "billing:customers:read"})


def parse(params: Any, *, takes_scope: bool = True) -> Any:
    return parse_request(params, provider="pyng", min_ttl_limit=810, takes_scope=takes_scope)


def test_defaults() -> None:
    """No scope named: the empty set, keyed ``""`` (the connection's default scopes, resolved by its function)."""
    request = parse(None)
    assert request.scopes == frozenset()
    assert request.min_ttl == 60
    assert request.force_refresh is False
    assert request.scope_key == ""
    assert parse({"scope": ""}).scope_key == parse({"scope": "   "}).scope_key == ""


def test_the_request_checks_scope_syntax_only() -> None:
    """Which scopes a connection allows is its secret's (or environment's) setting: not the request's business."""
    assert parse({"scope": "billing:admin"}).scope_key == "billing:admin"
    # RFC 6749 scope-token characters include & and =: the function refuses what is not allowed, and form encoding
    # would carry it as one value anyway.
    assert parse({"scope": "a&client_id=x"}).scopes == {"a&client_id=x"}
    with pytest.raises(InvalidRequest):
        check_scopes(frozenset({"a&client_id=x"}), ALLOWED, provider="pyng")


def test_scope_is_normalised_sorted_and_deduplicated() -> None:
    assert parse({"scope": "billing:customers:read  billing:batches:read billing:customers:read"}).scope_key == \
        "billing:batches:read billing:customers:read"


@pytest.mark.parametrize("params", [
    {"scope": "billing:batches:read\r\nX-Injected: 1"},
    {"scope": 5}, {"scope": "x" * 5000}, {"min_ttl": "-5"}, {"min_ttl": "901"}, {"min_ttl": "1.5"},
    {"min_ttl": True}, {"min_ttl": "٣"}, {"force_refresh": "1"}, {"force_refresh": 1}, {"other": "x"}, ["scope"],
])
def test_bad_input_is_invalid_request(params: Any) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(params)
    assert raised.value.status == 400
    assert raised.value.body()["error"] == "invalid_request"


def test_provider_without_scopes_refuses_one() -> None:
    """A provider whose catalogue entry takes no scope (``ScopeMode.OMIT``) refuses any, from the request alone."""
    with pytest.raises(InvalidRequest) as refused:
        parse({"scope": "anything"}, takes_scope=False)
    assert refused.value.description == "this provider takes no scope"
    assert parse({"scope": ""}, takes_scope=False).scope_key == ""
    with pytest.raises(InvalidRequest) as refused:
        check_scopes(frozenset({"anything"}), frozenset(), provider="aria")
    assert refused.value.description == "this provider takes no scope"


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("FALSE", False), (True, True), (False, False)])
def test_force_refresh_values(raw: Any, expected: bool) -> None:
    assert parse({"force_refresh": raw}).force_refresh is expected


def test_force_refresh_may_name_the_refused_token_by_its_fingerprint() -> None:
    request = parse({"force_refresh": fingerprint("the-refused-token")})
    assert request.force_refresh is True
    assert request.refused == fingerprint("the-refused-token")
    assert replaced("another-token", request) is True
    assert replaced("the-refused-token", request) is False
    assert replaced("anything", parse({"force_refresh": "true"})) is False
    for bad in ("ABCDEF12", "abcdef1", "abcdef123", "the-token"):
        with pytest.raises(InvalidRequest, match="fingerprint"):
            parse({"force_refresh": bad})


def test_min_ttl_accepts_integers_and_digit_strings() -> None:
    assert parse({"min_ttl": "810"}).min_ttl == 810  # Pyng: 900 s documented, 90 s margin
    assert parse({"min_ttl": 0}).min_ttl == 0


@pytest.mark.parametrize("raw", [811, "850", 900])
def test_min_ttl_above_documented_lifetime_minus_margin_is_refused_before_any_cache_access(raw: Any) -> None:
    """Issue 8 items 3 and 4: the limit comes from configuration, so the answer never depends on the cache."""
    with pytest.raises(InvalidRequest, match="between 0 and 810"):
        parse({"min_ttl": raw})


def test_default_min_ttl_never_exceeds_the_limit() -> None:
    """Issue 8 item 5: a caller never gets a client error for a parameter it did not send."""
    assert parse_request({}, provider="p", min_ttl_limit=45).min_ttl == 45


def test_a_too_long_scope_is_told_the_limit() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse({"scope": "x" * 10_000})
    assert refused.value.description == "scope is too long: at most 2048 characters"


@pytest.mark.parametrize("raw", ["-1", -1, "901", 5000])
def test_a_min_ttl_out_of_range_is_told_the_range(raw: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse({"min_ttl": raw})
    assert refused.value.description.startswith("min_ttl must be between 0 and 810 seconds for this provider")


@pytest.mark.parametrize("raw", ["abc", "1.5", True])
def test_a_min_ttl_that_is_no_number_is_told_the_range_too(raw: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse({"min_ttl": raw})
    assert refused.value.description.startswith("min_ttl must be a whole number of seconds; between 0 and 810")


def test_a_scope_outside_the_configured_set_names_the_allowed_ones_not_the_request() -> None:
    check_scopes(frozenset({"billing:batches:read"}), ALLOWED, provider="pyng")
    check_scopes(frozenset(), ALLOWED, provider="pyng")
    with pytest.raises(InvalidRequest) as refused:
        check_scopes(parse({"scope": "billing:admin billing:batches:read"}).scopes, ALLOWED, provider="pyng")
    assert refused.value.description == ("scope names 1 scope(s) outside the configured set; this provider allows: "
                                         "billing:batches:read billing:customers:read")
    assert "billing:admin" not in refused.value.description
