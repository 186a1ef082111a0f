"""How many connections a stack holds: the default five and seven are within every limit, and the documented
maximum is exactly the largest number that is (benchmarks/connections_scale.py measures and explains the limits:
CloudFormation's resources, parameters, outputs and template size, Lambda's 4 KB environment of the token API,
IAM's 10,240 characters of one role's inline policies)."""

from __future__ import annotations

import re

import pytest

from benchmarks.connections_scale import (
    DEFAULT_KEYS,
    DOCUMENTED_KEY_LENGTH,
    LIMITS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_ANY_KEYS,
    Measurement,
    added_keys,
    connection_keys,
    measure,
)
from tests.template.cfn import DEFAULT_KEYS as TEMPLATE_DEFAULT_KEYS
from tests.template.cfn import SEVEN_KEYS, raw_template


def _over(measurement: Measurement) -> list[str]:
    return [f"{limit.source}: {measurement.value(limit):,} > {limit.limit:,}" for limit in LIMITS
            if not measurement.within(limit)]


def test_the_measured_connections_are_the_templates() -> None:
    """The benchmark deploys the template's default connections and keys its pattern admits, of the documented
    length; the longest-key case uses the longest label the pattern allows."""
    assert DEFAULT_KEYS == TEMPLATE_DEFAULT_KEYS
    pattern = raw_template()["Parameters"]["Connections"]["AllowedPattern"]
    for key in added_keys(12):
        assert re.fullmatch(pattern, key), key
        assert len(key) == DOCUMENTED_KEY_LENGTH, key
    for key in added_keys(12, longest=True):
        assert re.fullmatch(pattern, key), key
        assert not re.fullmatch(pattern, key + "0"), f"{key}: not the longest label"
    assert len(set(added_keys(40))) == 40
    assert connection_keys(7)[:5] == list(DEFAULT_KEYS)


@pytest.mark.parametrize("n", [len(DEFAULT_KEYS), len(SEVEN_KEYS)], ids=["five", "seven"])
def test_the_default_and_seven_connections_are_within_every_limit(n: int) -> None:
    for longest in (False, True):
        measurement = measure(n, longest=longest)
        assert measurement.within_all(), _over(measurement)


def test_the_documented_maximum_is_the_largest_within_every_limit() -> None:
    """MAX_CONNECTIONS (keys of DOCUMENTED_KEY_LENGTH characters) fits; one more does not: the resources SAM makes
    per connection pass CloudFormation's 500."""
    assert measure(MAX_CONNECTIONS).within_all(), _over(measure(MAX_CONNECTIONS))
    beyond = measure(MAX_CONNECTIONS + 1)
    assert not beyond.within_all()
    assert any(limit.name == "resources" for limit in LIMITS if not beyond.within(limit)), _over(beyond)


def test_the_maximum_for_any_keys_is_the_largest_within_every_limit() -> None:
    """MAX_CONNECTIONS_ANY_KEYS (every added key with the longest label) fits; one more does not: the token API's
    environment passes Lambda's 4 KB first."""
    assert measure(MAX_CONNECTIONS_ANY_KEYS, longest=True).within_all()
    beyond = measure(MAX_CONNECTIONS_ANY_KEYS + 1, longest=True)
    assert [limit.name for limit in LIMITS if not beyond.within(limit)] == ["api_env_bytes"], _over(beyond)
