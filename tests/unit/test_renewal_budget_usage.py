"""Per-token renewals, use marks and the hourly budget: their messages, settings and DynamoDB writes (moto)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fleet import sqs_event
from tests.unit.conftest import TABLE, load_app
from tests.unit.test_handlers import EVENTS, PROVIDERS, scope_key_of, seed
from token_vending.budget import UpstreamBudget, default_budget
from token_vending.cache import CachedToken, TokenCache
from token_vending.catalogue import CATALOGUE, connection
from token_vending.exceptions import Misconfigured
from token_vending.freshness import RefreshPolicy
from token_vending.renewal import LEAD_SECONDS, MAX_DELAY_SECONDS, Renewal, is_sqs_event
from token_vending.settings import ProviderSettings, unknown_budget_routes
from token_vending.usage import MARK_EVERY, UsageMarks

POLICY = RefreshPolicy(60, 0.1)


def token(**overrides: Any) -> CachedToken:
    now = time.time()
    values: dict[str, Any] = {"provider": "pyng", "scope_key": "a b", "access_token": "t", "expires_at": int(now) + 900,
                              "fetched_at": now, "lifetime": 900}
    return CachedToken(**(values | overrides))


# --- renewals --------------------------------------------------------------------------------------------------
def test_a_renewal_is_due_its_lead_before_the_margin_and_names_its_token() -> None:
    t = token()
    renewal = Renewal.of(t, POLICY)
    assert renewal.due == t.expires_at - 90 - LEAD_SECONDS
    assert renewal.names(t)
    assert not renewal.names(token(fetched_at=t.fetched_at + 1))
    parsed = Renewal.from_body(renewal.body())
    assert parsed is not None
    assert parsed.names(t)  # fetched_at survives the millisecond rounding of the message
    assert (parsed.scope_key, parsed.due) == (renewal.scope_key, renewal.due)
    assert renewal.delay(renewal.due - 5000) == MAX_DELAY_SECONDS  # SQS's longest; re-armed on receipt
    assert renewal.delay(renewal.due - 12.2) == 13
    assert renewal.delay(renewal.due + 3) == 0


def test_a_token_already_inside_its_margin_is_due_at_once_not_in_the_past() -> None:
    t = token(expires_at=int(time.time()) + 20, lifetime=300)  # 20 s left of a 300 s token (margin 60 s)
    assert Renewal.of(t, POLICY).due == t.fetched_at


@settings(max_examples=300)
@given(raw=st.one_of(st.text(), st.binary(), st.none(), st.integers(),
                     st.dictionaries(st.text(), st.one_of(st.text(), st.floats(), st.none())).map(json.dumps)))
def test_any_message_body_parses_without_an_exception_and_only_renewals_parse(raw: Any) -> None:
    parsed = Renewal.from_body(raw)  # never raises: a stray message must not fail the batch
    if parsed is not None:
        document = json.loads(raw)
        assert parsed.scope_key == document["renew"]
        assert parsed.due == float(document["due"])


@pytest.mark.parametrize("body", ['{"renew": "a", "fetched_at": "NaN", "due": 1}', '{"renew": 1}', "[]", "null",
                                  '{"renew": "a", "fetched_at": 1}', '{"renew": "a", "fetched_at": [], "due": 1}',
                                  "[" * 100000, '{"renew": "a", "fetched_at": 1, "due": 1, "x": ' + "[" * 100000])
def test_malformed_renewals_are_none(body: str) -> None:
    assert Renewal.from_body(body) is None


def test_only_sqs_events_are_renewal_batches() -> None:
    event = sqs_event([Renewal("", 1.0, 2.0).body(), "not a renewal"])
    assert is_sqs_event(event)
    assert not is_sqs_event({"Records": [*event["Records"], event["Records"][0] | {"eventSource": "aws:sns"}]})
    assert not is_sqs_event({"Records": []})
    assert not is_sqs_event({"scope": "x"})


def test_a_provider_function_drops_a_message_that_is_not_a_renewal(moto_table: Any, context: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CACHE_TABLE_NAME": TABLE, "CONNECTION_NAME": "pyng", "SECRET_ID": "token-vending/pyng",
                        "TOKEN_URL": "https://provider.invalid/token", "ALLOWED_SCOPES": "a"}.items():
        monkeypatch.setenv(name, value)
    provider = load_app("pyng")
    event = sqs_event(["not a renewal"])
    assert provider.handler(event, context) == {"batchItemFailures": []}
    # A renewal of a token that does not exist does nothing either (and asks no provider).
    event = sqs_event([Renewal("a", 1.0, 2.0).body()])
    assert provider.handler(event, context) == {"batchItemFailures": []}


def throttle(client: Any, operation: str) -> None:
    """Every ``operation`` of ``client`` is throttled, as DynamoDB answers when a partition is hot."""
    from botocore.exceptions import ClientError

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                          operation)

    client.meta.events.register(f"before-call.dynamodb.{operation}", refuse)


@pytest.mark.parametrize("sqs_up", [True, False], ids=["armed again", "redelivered"])
def test_a_renewal_whose_read_is_throttled_is_not_lost(moto_table: Any, context: Any, monkeypatch: pytest.MonkeyPatch,
                                                      sqs_up: bool) -> None:
    """The renewal's one DynamoDB read is throttled: it is armed again with a back-off, or, when SQS refuses that too,
    the batch reports its message so that SQS delivers it again. Never a silent success."""
    from botocore.exceptions import ClientError

    from token_vending.renewal import RenewalTimer

    armed: list[Renewal] = []

    def arm(_timer: RenewalTimer, renewal: Renewal, now: float | None = None) -> None:
        if not sqs_up:
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "SendMessage")
        armed.append(renewal)

    monkeypatch.setattr(RenewalTimer, "arm", arm)
    for name, value in {**provider_env(), "RENEWAL_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/r"}.items():
        monkeypatch.setenv(name, value)
    now = time.time()
    stored = token(scope_key="a", expires_at=int(now) + 100, fetched_at=now - 800, used_at=now)
    TokenCache(TABLE, moto_table).put(stored)
    provider = load_app("pyng")
    throttle(provider.function.dynamodb, "GetItem")
    event = sqs_event([Renewal.of(stored, POLICY).body()])
    failures = provider.handler(event, context)["batchItemFailures"]
    if sqs_up:
        assert failures == []
        [again] = armed
        assert again.names(stored)
        assert again.attempt == 1
        assert now < again.due < stored.expires_at
    else:
        assert failures == [{"itemIdentifier": event["Records"][0]["messageId"]}]


# --- use marks -------------------------------------------------------------------------------------------------
def count_writes(client: Any) -> list[str]:
    writes: list[str] = []
    client.meta.events.register("before-call.dynamodb.UpdateItem", lambda **_: writes.append("UpdateItem"))
    return writes


def test_a_use_is_marked_only_when_the_mark_is_a_quarter_idle_period_old(moto_table: Any) -> None:
    cache = TokenCache(TABLE, moto_table)
    marks = UsageMarks(cache, idle_seconds=3600)
    now = time.time()
    stored = token(used_at=now - 3600 * MARK_EVERY - 1, fetched_at=now - 3000)
    cache.put(stored)  # itself an UpdateItem
    writes = count_writes(moto_table)
    noted = marks.note(stored, now)
    assert noted.used_at == now
    assert writes == ["UpdateItem"]
    assert marks.note(noted, now + 60) is noted  # the environment keeps its mark: no write per hit
    assert writes == ["UpdateItem"]
    item = moto_table.get_item(TableName=TABLE, Key={"pk": {"S": "pyng"}, "sk": {"S": "token#a b"}})["Item"]
    assert float(item["used_at"]["N"]) == pytest.approx(now, abs=0.002)
    assert item["access_token"]["S"] == "t"  # nothing else is touched
    assert marks.in_use(noted, now + 3599)
    assert not marks.in_use(noted, now + 3601)


def test_a_use_mark_never_creates_an_item_nor_moves_back(moto_table: Any) -> None:
    cache = TokenCache(TABLE, moto_table)
    assert not cache.record_use("pyng", "absent", time.time())
    assert "Items" not in moto_table.scan(TableName=TABLE) or not moto_table.scan(TableName=TABLE)["Items"]
    now = time.time()
    cache.put(token(used_at=now))
    assert not cache.record_use("pyng", "a b", now - 100)


def test_storing_a_renewed_token_never_moves_the_use_mark_back(moto_table: Any) -> None:
    """A renewal carries the mark it read before its fetch; a caller's hit marked the set during the fetch (the token
    API's one write). The renewed token is stored and the later mark kept: the set in use is not judged idle."""
    cache = TokenCache(TABLE, moto_table)
    now = time.time()
    old = token(access_token="old", scope="a b", used_at=now - 5000, fetched_at=now - 800)
    assert cache.put(old)
    assert cache.record_use("pyng", "a b", now)  # during the renewal's fetch
    renewed = token(access_token="new", scope=None, used_at=old.used_at, fetched_at=now + 1)
    assert cache.put(renewed)
    stored = cache.get("pyng", "a b", consistent=True)
    assert stored is not None
    assert (stored.access_token, stored.scope, stored.fetched_at) == ("new", None, pytest.approx(now + 1, abs=0.002))
    assert stored.used_at == pytest.approx(now, abs=0.002)
    # A later mark carried by the token is stored; a token fetched earlier than the stored one is not.
    assert cache.put(token(access_token="newer", used_at=now + 50, fetched_at=now + 2))
    assert not cache.put(token(access_token="older", used_at=now + 99, fetched_at=now))
    stored = cache.get("pyng", "a b", consistent=True)
    assert stored is not None
    assert (stored.access_token, stored.used_at) == ("newer", pytest.approx(now + 50, abs=0.002))
    assert cache.put(token(access_token="unmarked", fetched_at=now + 3))  # no mark: the stored one stays
    stored = cache.get("pyng", "a b", consistent=True)
    assert stored is not None
    assert (stored.access_token, stored.used_at) == ("unmarked", pytest.approx(now + 50, abs=0.002))


def test_a_token_api_hit_marks_an_old_mark_once(moto_table: Any, context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("PROVIDERS", json.dumps(PROVIDERS))
    monkeypatch.setenv("MEMORY_CACHE_SECONDS", "0")
    api = load_app("token_api")
    event = json.loads((EVENTS / "api-pyng.json").read_text())
    key = scope_key_of(event["queryStringParameters"]["scope"], "pyng")
    seed(moto_table, "pyng", key, "cached", expires_in=86000)  # fetched 600 s ago, no mark yet
    writes = count_writes(api.api.dynamodb)
    for _ in range(3):
        assert api.handler(event, context)["statusCode"] == 200
    assert writes == []  # the fetch itself is a recent use
    moto_table.update_item(TableName=TABLE, Key={"pk": {"S": "pyng"}, "sk": {"S": f"token#{key}"}},
                           UpdateExpression="SET used_at = :old", ExpressionAttributeValues={":old": {"N": "1000"}})
    for _ in range(3):
        assert api.handler(event, context)["statusCode"] == 200
    assert writes == ["UpdateItem"]


# --- settings and the budget -----------------------------------------------------------------------------------
def provider_env(**extra: str) -> dict[str, str]:
    return {"CACHE_TABLE_NAME": TABLE, "CONNECTION_NAME": "pyng", "TOKEN_URL": "https://provider.invalid/token",
            "SECRET_ID": "s", "ALLOWED_SCOPES": "a", **extra}


def test_the_default_budget_follows_the_documented_lifetime() -> None:
    assert default_budget(300) == 144
    assert default_budget(900) == 60
    assert default_budget(36000) == 60
    for entry in CATALOGUE:
        settings_ = ProviderSettings.from_env(entry.name, provider_env(CONNECTION_NAME=entry.name), profile=entry)
        assert settings_.upstream_budget == default_budget(entry.lifetime)


def test_upstream_budgets_override_by_route_refuse_malformed_lists_and_warn_of_unknown_routes() -> None:
    pyng = next(entry for entry in CATALOGUE if entry.name == "pyng")
    parsed = ProviderSettings.from_env("pyng", provider_env(UPSTREAM_BUDGETS="autopay=30, pyng=200"), profile=pyng)
    assert parsed.upstream_budget == 200
    parsed = ProviderSettings.from_env("pyng", provider_env(UPSTREAM_BUDGETS="autopay=30"), profile=pyng)
    assert parsed.upstream_budget == default_budget(pyng.lifetime)
    for bad in ("pyng", "pyng=0", "pyng=-3", "pyng=ten", "=30", "pyng=1.5"):
        with pytest.raises(Misconfigured) as caught:
            ProviderSettings.from_env("pyng", provider_env(UPSTREAM_BUDGETS=bad), profile=pyng)
        assert "UPSTREAM_BUDGETS" in caught.value.description
    # A route no provider has (a typo) does not break this provider, which keeps its default; it is named.
    typo = provider_env(UPSTREAM_BUDGETS="pyngg=30,autopay=20")
    assert ProviderSettings.from_env("pyng", typo, profile=pyng).upstream_budget == default_budget(pyng.lifetime)
    assert unknown_budget_routes(typo) == ["pyngg"]
    assert unknown_budget_routes(provider_env(UPSTREAM_BUDGETS="pyng=3")) == []
    # Names are connection names: another connection of any provider is known; one that fits none is warned of.
    named = provider_env(UPSTREAM_BUDGETS="AriaAu=30,OAuth2Acme=5,PyngOrg2=9,aria-au=3,Aria=4")
    assert unknown_budget_routes(named) == ["Aria", "aria-au"]
    assert ProviderSettings.from_env("pyng", named, profile=pyng).upstream_budget == default_budget(pyng.lifetime)
    org2 = connection("PyngOrg2")
    assert org2 is not None
    assert ProviderSettings.from_env("PyngOrg2", provider_env(CONNECTION_NAME="PyngOrg2", **{
        "UPSTREAM_BUDGETS": "PyngOrg2=9,pyng=200"}), profile=org2).upstream_budget == 9


def test_idle_hours_are_a_positive_number() -> None:
    pyng = next(entry for entry in CATALOGUE if entry.name == "pyng")
    assert ProviderSettings.from_env("pyng", provider_env(REFRESH_AHEAD_IDLE_HOURS="2"),
                                     profile=pyng).cache.idle_seconds == 7200
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(Misconfigured):
            ProviderSettings.from_env("pyng", provider_env(REFRESH_AHEAD_IDLE_HOURS=bad), profile=pyng)


def test_callers_may_spend_three_quarters_forced_fetches_half_and_renewals_the_rest(moto_table: Any) -> None:
    budget = UpstreamBudget(TokenCache(TABLE, moto_table), "autopay", per_hour=8)
    hour = 3600 * 500000
    assert [budget.spend("forced", now=hour + 1) for _ in range(5)] == [None, None, None, None, 3599]
    assert [budget.spend("miss", now=hour + 2) for _ in range(3)] == [None, None, 3598]  # callers: 6 of 8
    assert [budget.spend("renewal", now=hour + 3) for _ in range(3)] == [None, None, 3597]  # the rest
    assert budget.spend("renewal", now=hour + 3600) is None  # a new hour
    item = moto_table.get_item(TableName=TABLE, Key={"pk": {"S": "autopay"}, "sk": {"S": f"budget#{hour}"}})["Item"]
    assert (item["spent"]["N"], item["forced"]["N"]) == ("8", "4")
    assert int(item["purge_at"]["N"]) == hour + 7200


def test_a_short_token_is_renewed_a_fifth_of_its_useful_life_early_not_every_few_seconds() -> None:
    now = time.time()
    short = token(expires_at=int(now) + 30, fetched_at=now, lifetime=30)  # margin 15 s (half the lifetime)
    assert Renewal.of(short, POLICY).due == short.expires_at - 15 - 3
    long = token(expires_at=int(now) + 3600, fetched_at=now, lifetime=3600)  # margin 360 s
    assert Renewal.of(long, POLICY).due == long.expires_at - 360 - LEAD_SECONDS


def test_a_failed_use_mark_is_not_retried_on_every_hit(moto_table: Any) -> None:
    cache = TokenCache(TABLE, moto_table)
    marks = UsageMarks(cache, idle_seconds=3600)
    writes = count_writes(moto_table)
    now = time.time()
    old = token(used_at=now - 3600, fetched_at=now - 3600)  # not stored: the conditional write fails
    for second in range(5):
        marks.note(old, now + second)  # each hit sees the old mark again (a fresh copy from DynamoDB)
    assert writes == ["UpdateItem"]
    marks.note(old, now + 3600 * MARK_EVERY + 1)  # a quarter idle period later: tried again
    assert writes == ["UpdateItem", "UpdateItem"]


def test_a_lease_item_without_an_expiry_never_blocks_its_key(moto_table: Any) -> None:
    """The token API may set ``used_at`` on any item, so it could create ``{pk, sk, used_at}`` under a lease key: such
    an item must not hold the key forever."""
    moto_table.put_item(TableName=TABLE, Item={"pk": {"S": "pyng"}, "sk": {"S": "lease#a b"}, "used_at": {"N": "1"}})
    lease = TokenCache(TABLE, moto_table).acquire_lease("pyng", "a b", "me", 10)
    assert lease.acquired


def test_a_misconfigured_function_drops_renewals_instead_of_failing_the_batch(
        moto_table: Any, context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redelivery cannot help until a person fixes the setting: SQS would return the message for an hour."""
    for name, value in {"CACHE_TABLE_NAME": TABLE, "CONNECTION_NAME": "pyng", "SECRET_ID": "token-vending/pyng",
                        "TOKEN_URL": "https://provider.example/token", "ALLOWED_SCOPES": "a",
                        "LEASE_SECONDS": "1"}.items():
        monkeypatch.setenv(name, value)  # no fetch fits a one-second lease: misconfigured
    provider = load_app("pyng")
    event = sqs_event([Renewal("a", 1.0, 2.0).body()])
    assert provider.handler(event, context) == {"batchItemFailures": []}
    with pytest.raises(Misconfigured) as raised:
        provider.handler({}, context)  # a caller still gets the contract's error
    assert "LEASE_SECONDS" in raised.value.description
