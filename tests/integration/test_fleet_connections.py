"""Fleet invariants across several connections of ONE provider at once, checked after every step.

Three connections of the generic ``oauth2`` entry (``OAuth2Fleet<id>``, ``...Org2``, ``...Org3``: the catalogue's
``connection()`` of each, as ``functions/provider/app.py`` makes them) with their own secrets (their own client,
token URL and scopes, ``client_secret_post``), all at the same scripted provider, which tells them apart by their
client_id alone. Each connection has its own execution environments; the token API's environments route to all
three (``PROVIDERS``, as ``sam local`` gives it). DynamoDB Local, Secrets Manager on moto and the fleet's wall
clock are shared (``tests.support.fleet``). One connection has a tiny hourly budget (``UPSTREAM_BUDGETS``).

Rules: bursts of 1-5 concurrent calls spread over the connections (direct invocations of a connection's function or
``GET /token/{name}``; scope sets, ``force_refresh``), the provider's behaviour switched (slow, failing, short
lifetimes), the clock advanced, one connection's secret rotated (at the provider and in its secret), and the
renewals each function armed delivered, each to the function whose queue it was armed on.

Invariants, after every step:

1. No cross-connection answer: every 200 a connection's caller gets carries a token the provider issued to that
   connection's client, for (a superset of) the requested scopes, lasting the request's ``min_ttl``; every error
   names that connection; nothing is ``internal_error`` or ``misconfigured``.
2. Single flight per connection and cache key: at most one token request of one client in flight per scope set
   (two for the default set: the ``""`` key and the set named), fleet-wide, seen from the provider's side.
3. Every stored token item sits in its connection's partition and holds a token issued to that connection's
   client; every renewal armed on a connection's queue names a scope set of that connection and is delivered to
   that connection's function, which never reports it failed.
4. A spent budget is only ever the tiny-budget connection's.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support.fleet import (
    BEHAVIOURS,
    FakeContext,
    FakeLambdaClient,
    ScriptedProvider,
    Shared,
    Sink,
    api_event,
    api_pool,
    provider_pool,
    restore_environ,
    sqs_event,
)
from token_vending import constants
from token_vending.catalogue import connection
from token_vending.exceptions import ERRORS_BY_TYPE

if TYPE_CHECKING:
    from collections.abc import Iterator

    from token_vending.renewal import Renewal

pytestmark = pytest.mark.integration

LIFETIME = 900
LEASE_SECONDS = 3
CONTEXT_SECONDS = 8.0
ALLOWED = ("audit", "read", "write")
DEFAULT = "read"
LABELS = ("", "Org2", "Org3")
TINY_BUDGET = 2
"""The hourly budget of the last connection: its callers may spend one request an hour (3/4 of 2)."""
BEHAVIOUR_NAMES = ("normal", "slow", "fail_503", "fail_429", "short_90", "normal_jwt", "jwt_300_expires_in_3600")


@dataclass(frozen=True)
class Call:
    connection: int
    """Index into the world's connections."""
    interface: str
    """``direct`` (the connection's function) or ``api`` (``GET /token/{name}``)."""
    hint: int = 0
    scope: str | None = None
    force_refresh: bool = False

    def payload(self) -> dict[str, Any]:
        return {**({"scope": self.scope} if self.scope is not None else {}),
                **({"force_refresh": True} if self.force_refresh else {})}


class LambdaRouter:
    """``lambda:Invoke`` for the token API: each connection's function name to its own environments."""

    def __init__(self, clients: dict[str, FakeLambdaClient]) -> None:
        self.clients = clients

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        return self.clients[FunctionName].invoke(FunctionName=FunctionName, InvocationType=InvocationType,
                                                 Payload=Payload)


class ConnectionsWorld:
    """Three connections of ``oauth2`` deployed fresh at one scripted provider."""

    def __init__(self, shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
        from token_vending.renewal import RenewalTimer
        from token_vending.settings import ProviderSettings

        self.shared = shared
        self.clock = shared.clock
        base = f"OAuth2Fleet{uuid.uuid4().hex[:8]}"
        self.names = [f"{base}{label}" for label in LABELS]
        self.clients = {name: f"{name}-client" for name in self.names}
        self.secrets = {name: f"s3cret-{uuid.uuid4().hex}" for name in self.names}
        self.secrets_seen = set(self.secrets.values())
        self.server = ScriptedProvider(self.clock, self.clients[self.names[0]], self.secrets[self.names[0]])
        self.server.clients = {self.clients[name]: self.secrets[name] for name in self.names[1:]}
        self.server.cache_keys = {DEFAULT: 2}
        self.secret_ids = {name: f"token-vending/fleet/{name}" for name in self.names}
        for name in self.names:
            shared.secretsmanager.create_secret(Name=self.secret_ids[name], SecretString=self._document(name))
        self.functions = {name: f"{name}Function" for name in self.names}
        self.envs = {name: {constants.CONNECTION_NAME_ENV: name, constants.SECRET_ID_ENV: self.secret_ids[name],
                            constants.RENEWAL_QUEUE_URL_ENV: f"https://sqs.us-east-1.amazonaws.com/123456789012/{name}"}
                     for name in self.names}
        common = {
            constants.TOKEN_LIFETIME_ENV: str(LIFETIME), constants.CACHE_TABLE_ENV: shared.table,
            constants.LOCAL_MODE_ENV: "true", constants.LEASE_SECONDS_ENV: str(LEASE_SECONDS),
            constants.READ_TIMEOUT_ENV: "1", constants.CONNECT_TIMEOUT_ENV: "0.5",
            constants.UPSTREAM_RETRIES_ENV: "0", constants.MEMORY_CACHE_SECONDS_ENV: "5",
            constants.UPSTREAM_BUDGETS_ENV: f"{self.names[-1]}={TINY_BUDGET}",
            constants.PROVIDERS_ENV: json.dumps({name: {"function": self.functions[name], "lifetime": LIFETIME}
                                                 for name in self.names}),
        }
        self._saved = {name: os.environ.get(name) for name in common}
        os.environ.update(common)
        # One process stands for every connection's environments: each reads its own name, secret and queue.
        original = ProviderSettings.from_env.__func__  # type: ignore[attr-defined]
        envs = self.envs

        def from_env(cls: type[ProviderSettings], provider: str, env: Any = os.environ, **kwargs: Any) -> Any:
            return original(cls, provider, {**env, **envs.get(provider, {})}, **kwargs)

        monkeypatch.setattr(ProviderSettings, "from_env", classmethod(from_env))
        self.armed: list[tuple[str, Renewal]] = []
        """(the queue a renewal was armed on, the renewal), in order."""
        monkeypatch.setattr(RenewalTimer, "arm",
                            lambda timer, renewal, now=None: self.armed.append((timer.queue_url, renewal)))
        self.logs = Sink()
        self.pools = {name: provider_pool(connection(name), prefix=name, dynamodb=shared.dynamodb,  # type: ignore[arg-type]
                                          secretsmanager=shared.secretsmanager, sink=self.logs, initial=2)
                      for name in self.names}
        router = LambdaRouter({self.functions[name]: FakeLambdaClient(self.functions[name], self.pools[name],
                                                                      CONTEXT_SECONDS) for name in self.names})
        self.apis = api_pool(prefix=base, dynamodb=shared.api_dynamodb, lambda_client=router,  # type: ignore[arg-type]
                             sink=self.logs, initial=2)
        self.answers: list[tuple[Call, int, Any, dict[str, str]]] = []

    def close(self) -> None:
        self.server.stop()
        restore_environ(self._saved)

    def _document(self, name: str) -> str:
        return json.dumps({"client_id": self.clients[name], "client_secret": self.secrets[name],
                           "token_url": self.server.url, "client_auth": "client_secret_post",
                           "scopes": " ".join(ALLOWED), "default_scopes": DEFAULT})

    # -- steps ---------------------------------------------------------------------------------------------------
    def rotate(self, index: int) -> None:
        """A proper rotation of one connection's secret: in Secrets Manager, then at the provider."""
        name = self.names[index]
        self.secrets[name] = f"s3cret-{uuid.uuid4().hex}"
        self.secrets_seen.add(self.secrets[name])
        self.shared.secretsmanager.put_secret_value(SecretId=self.secret_ids[name], SecretString=self._document(name))
        if index == 0:
            self.server.secret = self.secrets[name]
        else:
            self.server.clients[self.clients[name]] = self.secrets[name]

    def burst(self, calls: list[Call]) -> None:
        barrier = threading.Barrier(len(calls))
        escaped: list[str] = []

        def run(call: Call) -> None:
            barrier.wait(timeout=10)
            try:
                self.answers.append((call, *self.call(call)))
            except BaseException as exc:
                escaped.append(f"{call}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), f"calls still running: {calls}"
        assert not escaped, escaped
        self.server.wait_idle(timeout=8)

    def call(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        name = self.names[call.connection]
        if call.interface == "api":
            query = {key: ("true" if value is True else str(value)) for key, value in call.payload().items()}
            with self.apis.environment(call.hint) as env:
                response = env.target.handle(api_event(name, query))
            return int(response["statusCode"]), json.loads(response["body"]), dict(response.get("headers") or {})
        with self.pools[name].environment(call.hint) as env:
            try:
                return 200, env.target.handle(call.payload(), FakeContext(CONTEXT_SECONDS)), {}
            except Exception as exc:
                cls = ERRORS_BY_TYPE.get(type(exc).__name__)
                body = json.loads(str(exc)) if cls is not None else {"error": "internal_error", "raised": repr(exc)}
                return (cls.status if cls else 500), body, {}

    def deliver_renewals(self) -> None:
        """Every armed renewal, due now, each in an SQS batch to the function of the queue it was armed on."""
        if not self.armed:
            return
        self.clock.advance(max(0.0, max(renewal.due for _, renewal in self.armed) - self.clock.now()))
        armed, self.armed = self.armed, []
        for queue, renewal in armed:
            name = queue.rsplit("/", 1)[-1]
            assert name in self.names, f"a renewal armed on a queue of no connection: {queue}"
            with self.pools[name].environment(0) as env:
                answer = env.target.handle(sqs_event([renewal.body()], name), FakeContext(CONTEXT_SECONDS))
            assert answer == {"batchItemFailures": []}, f"{name}'s renewal {renewal} was left to SQS: {answer}"

    def token_items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for name in self.names:
            response = self.shared.api_dynamodb.query(
                TableName=self.shared.table, ConsistentRead=True, KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": name}})
            items += [item for item in response.get("Items", []) if item["sk"]["S"].startswith("token#")]
        return items


# --- invariants -------------------------------------------------------------------------------------------------
def check_answers(world: ConnectionsWorld) -> None:
    answers, world.answers = world.answers, []
    for call, status, body, _headers in answers:
        name = world.names[call.connection]
        where = f"{name} {call} -> {status} {json.dumps(body)[:300] if status != 200 else ''}"
        assert isinstance(body, dict), where
        if status != 200:
            assert body.get("error") not in ("internal_error", "misconfigured"), f"invariant 1: {where}"
            assert body.get("provider") == name, f"invariant 1: an error naming another connection: {where}"
            if "budget" in str(body.get("error_description", "")):
                assert call.connection == len(world.names) - 1, f"invariant 4: another's budget spent: {where}"
            continue
        token = body.get("access_token")
        issued = world.server.issued.get(token)
        assert issued is not None, f"invariant 1: a token the provider never issued: {where}"
        assert issued.client_id == world.clients[name], (
            f"invariant 1: {name}'s caller got a token issued to {issued.client_id}: {where}")
        wanted = frozenset((call.scope or DEFAULT).split())
        assert wanted <= issued.scopes, f"invariant 1: issued for {sorted(issued.scopes)}: {where}"
        assert issued.true_expiry - world.clock.now() >= constants.DEFAULT_MIN_TTL - 1, f"invariant 1: {where}"
        if call.interface == "api":
            assert body["provider"] == name, where


def check_single_flight(world: ConnectionsWorld) -> None:
    assert not world.server.overlaps, f"invariant 2: {world.server.overlaps}"


def check_items(world: ConnectionsWorld) -> None:
    by_client = {client: name for name, client in world.clients.items()}
    for item in world.token_items():
        issued = world.server.issued.get(item["access_token"]["S"])
        assert issued is not None, f"invariant 3: a stored token the provider never issued: {item['pk']}"
        assert by_client.get(issued.client_id) == item["pk"]["S"], (
            f"invariant 3: {item['pk']['S']}'s partition holds a token of {issued.client_id}")
    for queue, renewal in world.armed:
        assert renewal.scope_key == "" or set(renewal.scope_key.split()) <= set(ALLOWED), (queue, renewal)


def check_no_leaks(world: ConnectionsWorld) -> None:
    text = world.logs.text()
    for secret in world.secrets_seen:
        assert secret not in text, "a client secret in the logs"
    for token in list(world.server.issued):
        assert token not in text, "a whole token in the logs"


# --- the machine ------------------------------------------------------------------------------------------------
SCOPES = st.sampled_from([None, None, "read", "write", "audit read", "read write audit"])
CALLS = st.builds(Call, connection=st.integers(0, len(LABELS) - 1), interface=st.sampled_from(["direct", "api"]),
                  hint=st.integers(0, 3), scope=SCOPES, force_refresh=st.sampled_from([False, False, False, True]))


def machine_for(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> type[RuleBasedStateMachine]:
    class ConnectionsMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.world: ConnectionsWorld | None = None

        @initialize()
        def deploy(self) -> None:
            self.world = ConnectionsWorld(shared, monkeypatch)

        @rule(calls=st.lists(CALLS, min_size=1, max_size=5))
        def burst(self, calls: list[Call]) -> None:
            assert self.world is not None
            self.world.burst(calls)
            check_answers(self.world)

        @rule(calls=st.lists(CALLS, min_size=2, max_size=5))
        def concurrent_burst(self, calls: list[Call]) -> None:
            self.burst(calls)

        @rule(name=st.sampled_from(BEHAVIOUR_NAMES), expire=st.booleans())
        def switch_behaviour(self, name: str, expire: bool) -> None:
            assert self.world is not None
            self.world.server.behaviour = BEHAVIOURS[name]
            if expire:
                shared.clock.advance(LIFETIME + 1)

        @rule(seconds=st.sampled_from([31, 100, 700, 3600]))
        def advance_clock(self, seconds: int) -> None:
            shared.clock.advance(seconds)

        @rule(index=st.integers(0, len(LABELS) - 1))
        def rotate_a_secret(self, index: int) -> None:
            assert self.world is not None
            self.world.rotate(index)

        @rule()
        def renewals_go_off(self) -> None:
            assert self.world is not None
            self.world.deliver_renewals()

        @invariant()
        def single_flight(self) -> None:
            if self.world is not None:
                check_single_flight(self.world)

        @invariant()
        def items_are_their_connections(self) -> None:
            if self.world is not None:
                check_items(self.world)

        @invariant()
        def no_leaks(self) -> None:
            if self.world is not None:
                check_no_leaks(self.world)

        def teardown(self) -> None:
            if self.world is not None:
                self.world.close()

    return ConnectionsMachine


MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("FLEET_CONNECTION_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("FLEET_STEPS", "20")),
    deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink], report_multiple_bugs=False,
)


@pytest.mark.timeout(900)
def test_connections_of_one_provider_keep_to_themselves_after_every_step(shared: Shared,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run_state_machine_as_test(machine_for(shared, monkeypatch), settings=MACHINE_SETTINGS)


# --- a concrete sequence ----------------------------------------------------------------------------------------
@pytest.fixture
def world(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionsWorld]:
    fleet = ConnectionsWorld(shared, monkeypatch)
    yield fleet
    fleet.close()


def test_a_burst_over_three_connections_is_one_request_per_connection_and_key(world: ConnectionsWorld) -> None:
    """Twelve concurrent callers, four per connection, same scope key (none named): one token request per
    connection, each with its own client, and every caller served its own connection's token."""
    world.server.behaviour = BEHAVIOURS["slow"]  # the requests overlap at the provider, if anything lets them
    calls = [Call(index % 3, "api" if index % 2 else "direct", hint=index) for index in range(12)]
    started = time.monotonic()
    world.burst(calls)
    check_answers(world)
    check_single_flight(world)
    check_items(world)
    assert time.monotonic() - started < 20
    for name in world.names:
        assert world.server.request_count(client_id=world.clients[name]) == {DEFAULT: 1}, name
    assert {queue.rsplit("/", 1)[-1] for queue, _ in world.armed} == set(world.names)
    world.deliver_renewals()
    check_items(world)
    for name in world.names:
        assert world.server.request_count(client_id=world.clients[name]) == {DEFAULT: 2}, name
