from __future__ import annotations

from typing import Any

import pytest

from token_vending.exceptions import InvalidRequest
from token_vending.request import parse_request

ALLOWED = frozenset({"billing:batches:read", "billing:customers:read"})


def parse(params: Any, allowed: frozenset[str] = ALLOWED) -> Any:
    return parse_request(params, provider="pyng", allowed=allowed, default=allowed, max_lifetime=900)


def test_defaults() -> None:
    request = parse(None)
    assert request.scopes == ALLOWED
    assert request.min_ttl == 60
    assert request.force_refresh is False
    assert request.scope_key == "billing:batches:read billing:customers:read"


def test_scope_is_normalised_sorted_and_deduplicated() -> None:
    assert parse({"scope": "billing:customers:read  billing:batches:read billing:customers:read"}).scope_key == \
        "billing:batches:read billing:customers:read"


@pytest.mark.parametrize("params", [
    {"scope": "billing:admin"}, {"scope": "billing:batches:read\r\nX-Injected: 1"}, {"scope": "a&client_id=x"},
    {"scope": 5}, {"scope": "x" * 5000}, {"min_ttl": "-5"}, {"min_ttl": "901"}, {"min_ttl": "1.5"},
    {"min_ttl": True}, {"min_ttl": "٣"}, {"force_refresh": "1"}, {"force_refresh": 1}, {"other": "x"}, ["scope"],
])
def test_bad_input_is_invalid_request(params: Any) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(params)
    assert raised.value.status == 400
    assert raised.value.body()["error"] == "invalid_request"


def test_provider_without_scopes_refuses_one() -> None:
    with pytest.raises(InvalidRequest, match="takes no scope"):
        parse({"scope": "anything"}, allowed=frozenset())


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("FALSE", False), (True, True), (False, False)])
def test_force_refresh_values(raw: Any, expected: bool) -> None:
    assert parse({"force_refresh": raw}).force_refresh is expected


def test_min_ttl_accepts_integers_and_digit_strings() -> None:
    assert parse({"min_ttl": "900"}).min_ttl == 900
    assert parse({"min_ttl": 0}).min_ttl == 0
