"""How few token requests the fleet makes: per-token renewals, idle scope sets, the hourly budget.

Runs on the in-process fleet model of ``test_fleet_invariants`` (several execution environments of one provider
function and of the token API, DynamoDB Local, Secrets Manager on moto, a scripted provider on loopback, a wall
clock the test advances), so hours pass in seconds while every write is real. Renewal timers are delivered by the
test as the SQS event source mapping would deliver them (the standard SQS event, through the function's handler);
what the function arms is recorded instead of sent, because SQS delays run on real time.

Behaviour, not timing: how many token requests the provider received, what callers were answered, what was armed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_fleet_invariants import LIFETIME, Answer, Call, FleetWorld, run
from tests.support.fleet import FakeContext, Shared, sqs_event
from token_vending import constants
from token_vending.profile import ScopeMode
from token_vending.renewal import LEAD_SECONDS, Renewal, RenewalTimer

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

MARGIN = 90
"""max(60 s, 10% of LIFETIME)."""


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> list[Renewal]:
    """What the provider functions arm, in order (instead of SQS, whose delays run on real time)."""
    renewals: list[Renewal] = []
    monkeypatch.setattr(RenewalTimer, "arm", lambda self, renewal, now=None: renewals.append(renewal))
    return renewals


def make_world(shared: Shared, monkeypatch: pytest.MonkeyPatch, **env: str) -> FleetWorld:
    monkeypatch.setenv(constants.RENEWAL_QUEUE_URL_ENV, "https://sqs.us-east-1.amazonaws.com/123456789012/renewals")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    world = FleetWorld(shared, scope_mode=ScopeMode.REQUIRED, default_scopes="read", retries=0)
    for name, value in env.items():  # the world's own settings must not undo the test's
        monkeypatch.setenv(name, value.replace("{name}", world.name))
    return world


@pytest.fixture
def renewing(shared: Shared, monkeypatch: pytest.MonkeyPatch, armed: list[Renewal]) -> Iterator[FleetWorld]:
    world = make_world(shared, monkeypatch, **{constants.REFRESH_AHEAD_IDLE_HOURS_ENV: "1"})
    yield world
    world.close()


def deliver(world: FleetWorld, renewal: Renewal, hint: int = 0) -> dict[str, Any]:
    """The event source mapping's invocation: the standard SQS event with one record."""
    event = sqs_event([renewal.body()])
    with world.providers.environment(hint) as env:
        result: dict[str, Any] = env.target.handle(event, FakeContext(8.0))
    return result


def requests(world: FleetWorld) -> int:
    return sum(world.server.request_count().values())


def outcomes(world: FleetWorld) -> list[str]:
    return [json.loads(line)["outcome"] for line in world.logs.getvalue().splitlines()
            if '"renewal"' in line and '"outcome"' in line]


def test_each_token_is_renewed_once_just_before_its_margin_while_callers_never_wait(
        renewing: FleetWorld, shared: Shared, armed: list[Renewal]) -> None:
    world = renewing
    (first,) = run(world, [Call("api")])
    assert first.status == 200
    assert requests(world) == 1
    assert len(armed) == 1, "one renewal per stored token"
    renewal = armed[0]
    token = first.body["access_token"]
    expires_at = datetime.fromisoformat(first.body["expires_at"].replace("Z", "+00:00")).timestamp()
    assert renewal.due == pytest.approx(expires_at - MARGIN - LEAD_SECONDS, abs=1)
    # Until the renewal is due callers are served the cached token, never asking the provider.
    shared.clock.advance(renewal.due - shared.clock.now() - 30)
    answers = run(world, [Call("api"), Call("api", hint=1), Call("direct")])
    assert {a.status for a in answers} == {200}
    assert requests(world) == 1
    # A timer delivered early (it was re-armed, or SQS was quick) only re-arms itself.
    assert deliver(world, renewal) == {"batchItemFailures": []}
    assert requests(world) == 1
    assert (armed[-1].scope_key, armed[-1].due) == (renewal.scope_key, renewal.due)
    # Due: one token request; the new token arms the next renewal, a lifetime (less margin and lead) later.
    shared.clock.advance(renewal.due - shared.clock.now())
    assert deliver(world, renewal) == {"batchItemFailures": []}
    assert requests(world) == 2
    assert armed[-1] != renewal
    assert armed[-1].due - renewal.due == pytest.approx(LIFETIME - MARGIN - LEAD_SECONDS, abs=2)
    # The old token is still outside its margin, yet the new one is already stored: callers are served from the
    # cache (an environment's memory may hold the old one a few more seconds) and nobody waits on the provider.
    # (A caller naming no scope: the "" key, the default set.)
    stored = shared.dynamodb.get_item(TableName=shared.table, Key={"pk": {"S": world.name}, "sk": {"S": "token#"}})
    assert stored["Item"]["access_token"]["S"] != token
    shared.clock.advance(5)
    answers = run(world, [Call("api"), Call("api", hint=1), Call("direct", hint=2)])
    assert {a.status for a in answers} == {200}
    assert requests(world) == 2
    assert "LeaseWait" not in world.logs.getvalue()
    # The same timer delivered twice (SQS delivers at least once) finds its token replaced: nothing happens.
    deliver(world, renewal, hint=1)
    assert requests(world) == 2
    assert outcomes(world) == ["rearmed", "renewed", "replaced"]


def test_a_scope_set_nobody_uses_is_left_to_expire_and_use_brings_renewal_back(
        renewing: FleetWorld, shared: Shared, armed: list[Renewal]) -> None:
    """RefreshAheadIdleHours = 1: renewals carry the last use over; past an hour without a caller they stop."""
    world = renewing
    (first,) = run(world, [Call("api")])
    assert first.status == 200
    used = shared.clock.now()
    renewed = 0
    while True:
        renewal = armed[-1]
        shared.clock.advance(renewal.due - shared.clock.now())
        deliver(world, renewal)
        if armed[-1].due == renewal.due:
            break
        renewed += 1
    # Renewed while the last use was under an hour old (every 800 s: 4 times), then left alone.
    assert renewed == 4
    assert requests(world) == 5
    assert shared.clock.now() - used >= 3600
    assert outcomes(world)[-1] == "idle"
    # The scheduled run agrees: nothing to renew, nothing to arm.
    (summary,) = run(world, [Call("refresh_ahead")])
    assert summary.body["idle"] == 1
    assert summary.body["armed"] == summary.body["renewed"] == 0
    assert requests(world) == 5
    # The token is served while it lasts; serving it marks the set in use, and renewals resume.
    (served,) = run(world, [Call("api")])
    assert served.status == 200
    assert requests(world) == 5
    shared.clock.advance(armed[-1].due - shared.clock.now())
    deliver(world, armed[-1])
    assert requests(world) == 6
    assert outcomes(world)[-1] == "renewed"


def test_the_scheduled_run_re_arms_lost_renewals_and_renews_late_tokens(
        renewing: FleetWorld, shared: Shared, armed: list[Renewal]) -> None:
    world = renewing
    run(world, [Call("api")])
    lost = armed.pop()  # the send failed, or the message was lost
    # More than 1.5 intervals (450 s) before it is due: the run leaves it alone.
    (summary,) = run(world, [Call("refresh_ahead")])
    assert (summary.body["fresh"], summary.body["armed"]) == (1, 0)
    assert not armed
    # Due before the next run: armed again (the same renewal: a duplicate is harmless).
    shared.clock.advance(lost.due - shared.clock.now() - 200)
    (summary,) = run(world, [Call("refresh_ahead")])
    assert summary.body["armed"] == 1
    assert [(r.scope_key, r.due) for r in armed] == [(lost.scope_key, lost.due)]
    assert requests(world) == 1
    # Past due (its timer lost too): renewed by the run itself.
    armed.clear()
    shared.clock.advance(230)
    (summary,) = run(world, [Call("refresh_ahead")])
    assert summary.body["renewed"] == 1
    assert requests(world) == 2
    assert len(armed) == 1


def test_a_failed_renewal_is_tried_again_when_its_cool_down_lapses_while_the_token_lasts(
        renewing: FleetWorld, shared: Shared, armed: list[Renewal]) -> None:
    world = renewing
    run(world, [Call("api")])
    renewal = armed[-1]
    world.switch("fail_503")
    shared.clock.advance(renewal.due - shared.clock.now())
    assert deliver(world, renewal) == {"batchItemFailures": []}  # handled: not left to SQS's redelivery
    assert requests(world) == 2
    retry = armed[-1]
    assert retry.fetched_at == pytest.approx(renewal.fetched_at, abs=0.002)
    assert retry.attempt == 1
    assert retry.due - shared.clock.now() == pytest.approx(10, abs=2)  # the cool-down (10 s) and the back-off agree
    # Still failing: backing off (the cool-down doubles to 20 s), one token request per try.
    shared.clock.advance(retry.due - shared.clock.now())
    deliver(world, retry)
    assert requests(world) == 3
    assert armed[-1].attempt == 2
    assert armed[-1].due - shared.clock.now() == pytest.approx(20, abs=2)
    # Back: the next try renews; callers never saw an error meanwhile (the token was still valid).
    world.switch("normal")
    shared.clock.advance(armed[-1].due - shared.clock.now())
    deliver(world, armed[-1])
    assert requests(world) == 4
    assert outcomes(world)[-3:] == ["failed", "failed", "renewed"]
    (served,) = run(world, [Call("api")])
    assert served.status == 200


@pytest.fixture
def budgeted(shared: Shared, monkeypatch: pytest.MonkeyPatch, armed: list[Renewal]) -> Iterator[FleetWorld]:
    world = make_world(shared, monkeypatch, **{constants.UPSTREAM_BUDGETS_ENV: "{name}=8"})
    # Start just after an hour begins, so the whole test runs in one budget hour.
    shared.clock.advance(3600 - shared.clock.now() % 3600 + 5)
    yield world
    world.close()


def test_callers_cannot_spend_the_budget_renewals_need(budgeted: FleetWorld, shared: Shared,
                                                      armed: list[Renewal]) -> None:
    """A budget of 8 an hour: callers may spend 6 of it, forced fetches 4 of those; renewals the rest."""
    world = budgeted
    (first,) = run(world, [Call("api")])
    assert first.status == 200
    assert requests(world) == 1
    forced: list[Answer] = []
    for _ in range(5):
        shared.clock.advance(31)  # past ForceRefreshInterval each time
        forced += run(world, [Call("api", force_refresh="true")])
    assert [a.status for a in forced] == [200, 200, 200, 200, 503], [a.describe() for a in forced]
    assert requests(world) == 5
    refused = forced[-1]
    assert refused.body["error"] == "upstream_unavailable"
    hour_left = 3600 - shared.clock.now() % 3600
    assert hour_left - 2 <= int(refused.headers["Retry-After"]) <= hour_left + 1
    # Asking for a min_ttl the fresh token cannot keep forces a fetch just as well: the same share.
    shared.clock.advance(100)
    (long_ttl,) = run(world, [Call("api", min_ttl=810)])
    assert long_ttl.status == 503, long_ttl.describe()
    assert requests(world) == 5
    # Callers that do not force are still served the cached token...
    (served,) = run(world, [Call("api")])
    assert served.status == 200
    assert requests(world) == 5
    # ...misses reach the provider up to the callers' share (6)...
    answers = [run(world, [Call("api", scope=scope)])[0] for scope in ("audit", "write")]
    assert [a.status for a in answers] == [200, 503]
    assert requests(world) == 6
    assert "UpstreamBudgetExhausted" in world.logs.getvalue()
    # ...and the default set's renewal still has the rest of the budget.
    renewal = next(r for r in reversed(armed) if r.scope_key == "")  # the no-scope key: the default set
    shared.clock.advance(renewal.due - shared.clock.now())
    deliver(world, renewal)
    assert requests(world) == 7
    assert outcomes(world)[-1] == "renewed"
    # The next hour has a new budget.
    shared.clock.advance(3600 - shared.clock.now() % 3600 + 1)
    (later,) = run(world, [Call("api", scope="audit write")])
    assert later.status == 200
    assert requests(world) == 8


def test_a_spent_budget_does_not_reset_an_outages_back_off(budgeted: FleetWorld, shared: Shared) -> None:
    """The budget's refusal is not the provider's answer: when the next hour's budget lets callers ask again, the
    back-off goes on where it was (150 s), not from 10 s with retries."""
    world = budgeted
    world.switch("fail_503")
    waits = []
    for _ in range(6):  # the callers' share of a budget of 8
        (answer,) = run(world, [Call("api")])
        assert answer.status == 503
        waits.append(int(answer.headers["Retry-After"]))
        shared.clock.advance(waits[-1] + 1)
    assert waits == [10, 20, 40, 80, 150, 150]
    assert requests(world) == 6
    (refused,) = run(world, [Call("api")])
    assert "budget" in refused.body["error_description"]
    assert requests(world) == 6
    shared.clock.advance(3600 - shared.clock.now() % 3600 + 1)  # a new budget
    (again,) = run(world, [Call("api")])
    assert again.status == 503
    assert requests(world) == 7
    assert int(again.headers["Retry-After"]) == 150
