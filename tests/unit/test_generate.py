"""``python -m local.generate``: the events it writes are requests the provider's function accepts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from local import generate
from local.stack import PROVIDERS
from token_vending import catalogue
from token_vending.exceptions import InvalidRequest
from token_vending.request import parse_request


def test_a_short_lived_provider_s_events_ask_for_no_more_than_its_tokens_keep(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    """Tokens documented at 300 s keep at most 240 s outside the 60 s refresh margin: the generated events ask for
    that, not the five minutes a longer-lived provider's events ask for (the function would refuse them)."""
    template = next(provider for provider in PROVIDERS if not provider.environment.get("ALLOWED_SCOPES"))
    short = replace(catalogue.entry(template.route), lifetime=300)  # type: ignore[type-var]
    monkeypatch.setattr(catalogue, "CATALOGUE", tuple(short if entry.name == template.route else entry
                                                      for entry in catalogue.CATALOGUE))
    monkeypatch.setattr(generate, "PROVIDERS", (template,))
    assert generate.min_ttl_limit(template) == 240
    events = generate.events()
    api = events[f"api-{template.route}.json"]["queryStringParameters"]
    invoke = events[f"invoke-{template.route}.json"]
    for params in (api, invoke):
        request = parse_request(params, provider=template.route,
                                min_ttl_limit=240)
        assert request.min_ttl <= 240
    assert api["min_ttl"] == "240"
    with pytest.raises(InvalidRequest):  # what was written before: more than such a provider can promise
        parse_request({"min_ttl": "300"}, provider=template.route,
                      min_ttl_limit=240)


def test_a_long_lived_provider_s_events_ask_for_five_minutes() -> None:
    for provider in PROVIDERS:
        if not provider.environment.get("ALLOWED_SCOPES"):
            assert generate.events()[f"api-{provider.route}.json"]["queryStringParameters"] == {"min_ttl": "300"}
