"""``refresh_ahead_upstream_ratio`` and ``waiting_share_steady_state``: the token requests one scope set costs.

Simulated days, real code: one provider's fleet in this process (``tests.support.fleet``: several execution
environments of the provider function and of the token API, DynamoDB Local, Secrets Manager on the moto server, a
scripted provider on 127.0.0.1 issuing tokens of the lifetime under test), with the wall clock (``time.time``)
advanced from event to event. Events, in time order:

* callers: ``GET /token/<provider>`` through the token API every ``lifetime / 10`` seconds (at least 20 s), each
  interval jittered +-50% (seeded);
* renewal timers: what the provider functions arm (``RenewalTimer.arm``) is delivered as the SQS event source
  mapping would, ``DelaySeconds`` (as computed by the product, ceiling, at most 900) plus 0.5 s after it was
  armed, through the function's handler;
* the scheduled run (``{"refresh_ahead": true}``) every 300 s, at a random phase.

Over ``max(24 h, 20 x (lifetime - margin))`` after the first caller's token, the token requests the provider
received per second, times the ideal interval ``lifetime - margin``, is the ratio (1.0 = each token renewed
exactly as it reaches its margin). The worst of the lifetimes 300, 900, 3600 and 86400 s is printed; stderr
shows each. A caller "waited" when its answer needed the provider function (the API was not answered from the
cache): ``waiting_share_steady_state`` is their share of all calls after the first, over every lifetime.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.infra import progress

if TYPE_CHECKING:
    from collections.abc import Iterator

    from benchmarks.infra import LoopbackAws
    from token_vending.renewal import Renewal

LIFETIMES = (300, 900, 3600, 86400)
SCHEDULE_SECONDS = 300
DELIVERY_LATENCY = 0.5
SCOPE = "read"


@dataclass
class LifetimeResult:
    lifetime: int
    ideal_interval: float
    window: float
    requests: int
    calls: int
    waited: int

    @property
    def ratio(self) -> float:
        return self.requests * self.ideal_interval / self.window


@dataclass(order=True)
class _Event:
    at: float
    order: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False, default=None)


@contextmanager
def _patched_clock() -> Iterator[Any]:
    from tests.support.fleet import FleetClock

    clock = FleetClock()
    real = time.time
    time.time = clock.now
    try:
        yield clock
    finally:
        time.time = real


def simulate(aws: LoopbackAws, lifetime: int, *, timers: bool = True, seed: int = 7) -> LifetimeResult:
    """``timers``: per-token renewals on (the deployed default); off, the scheduled run renews by itself."""
    import boto3

    from benchmarks.infra import fresh_table
    from tests.support.fleet import (
        Behaviour,
        FakeContext,
        FakeLambdaClient,
        ScriptedProvider,
        Sink,
        api_event,
        api_pool,
        provider_pool,
        record_renewals,
        sqs_event,
    )
    from tests.support.harness import CREDENTIALS
    from token_vending import constants
    from token_vending.clients import API_DYNAMODB_CONFIG, DYNAMODB_CONFIG, SECRETS_CONFIG
    from token_vending.freshness import RefreshPolicy
    from token_vending.profile import BodyEncoding, ClientAuth, ClientCredentialsProfile, ScopeMode

    rng = random.Random(seed)  # simulation jitter, not security
    _, table = fresh_table(aws)
    dynamodb = boto3.client("dynamodb", endpoint_url=aws.dynamodb_url, config=DYNAMODB_CONFIG, **CREDENTIALS)
    api_dynamodb = boto3.client("dynamodb", endpoint_url=aws.dynamodb_url, config=API_DYNAMODB_CONFIG, **CREDENTIALS)
    secrets = boto3.client("secretsmanager", endpoint_url=aws.secrets_url, config=SECRETS_CONFIG, **CREDENTIALS)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    secret_id = f"token-vending/bench/{name}"
    secrets.create_secret(Name=secret_id, SecretString=json.dumps({"client_id": "bench", "client_secret": secret}))
    policy = RefreshPolicy(constants.DEFAULT_REFRESH_MARGIN_SECONDS, constants.DEFAULT_REFRESH_MARGIN_RATIO)
    ideal = lifetime - policy.margin(lifetime)
    window = max(86400.0, 20 * ideal)
    events: list[_Event] = []
    order = itertools.count()

    def push(at: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(events, _Event(at, next(order), kind, payload))

    with _patched_clock() as clock:
        server = ScriptedProvider(clock, "bench", secret)
        server.behaviour = Behaviour("lifetime", expires_in=lifetime)
        env = {
            constants.CONNECTION_NAME_ENV: name, constants.TOKEN_URL_ENV: server.url,
            constants.SECRET_ID_ENV: secret_id, constants.ALLOWED_SCOPES_ENV: SCOPE,
            constants.TOKEN_LIFETIME_ENV: str(lifetime),
            constants.CACHE_TABLE_ENV: table, constants.LOCAL_MODE_ENV: "true", constants.UPSTREAM_RETRIES_ENV: "0",
            constants.MEMORY_CACHE_SECONDS_ENV: "0", constants.REFRESH_AHEAD_INTERVAL_ENV: str(SCHEDULE_SECONDS),
            constants.RENEWAL_QUEUE_URL_ENV: "https://sqs.us-east-1.amazonaws.com/123456789012/bench" if timers else "",
            constants.PROVIDERS_ENV: json.dumps({name: {"function": f"{name}-function", "lifetime": lifetime}}),
        }
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            logs = Sink()
            profile = ClientCredentialsProfile(name=name, auth=ClientAuth.FORM_BODY, body=BodyEncoding.FORM,
                                               scope=ScopeMode.REQUIRED)
            providers = provider_pool(profile, prefix=name, dynamodb=dynamodb, secretsmanager=secrets, sink=logs,
                                      initial=2)
            lambda_client = FakeLambdaClient(f"{name}-function", providers, 8.0)
            apis = api_pool(prefix=name, dynamodb=api_dynamodb, lambda_client=lambda_client, sink=logs, initial=2)

            def armed(renewal: Renewal, now: float) -> None:
                push(now + renewal.delay(now) + DELIVERY_LATENCY, "renewal", renewal)

            start = clock.now()
            push(start, "call")
            push(start + rng.uniform(0, SCHEDULE_SECONDS), "schedule")
            calls = waited = 0
            first_token_at: float | None = None
            requests_before = 0
            stop_recording = record_renewals(armed)
            try:
                while events:
                    event = heapq.heappop(events)
                    if first_token_at is not None and event.at > first_token_at + window:
                        break
                    clock.advance(max(0.0, event.at - clock.now()))
                    if event.kind == "call":
                        invocations = lambda_client.invocations
                        with apis.environment(0) as api:
                            response = api.target.handle(api_event(name, None))
                        if response["statusCode"] != 200:
                            raise RuntimeError(f"a caller got {response['statusCode']}: {response['body']}")
                        if first_token_at is None:
                            first_token_at = clock.now()
                            requests_before = sum(server.request_count().values())
                        else:
                            calls += 1
                            waited += lambda_client.invocations > invocations
                        period = max(20.0, lifetime / 10)
                        push(clock.now() + period * rng.uniform(0.5, 1.5), "call")
                    elif event.kind == "renewal":
                        with providers.environment(1) as fn:
                            fn.target.handle(sqs_event([event.payload.body()], "bench"), FakeContext(8.0))
                    else:
                        with providers.environment(0) as fn:
                            fn.target.handle({"refresh_ahead": True}, FakeContext(8.0))
                        push(clock.now() + SCHEDULE_SECONDS, "schedule")
            finally:
                stop_recording()
            requests = sum(server.request_count().values()) - requests_before
        finally:
            server.stop()
            from tests.support.fleet import restore_environ

            restore_environ(saved)
    result = LifetimeResult(lifetime=lifetime, ideal_interval=ideal, window=window, requests=requests, calls=calls,
                            waited=waited)
    progress(f"refresh ahead ({'per-token renewals' if timers else 'the 5-minute schedule alone'}), {lifetime} s "
             f"tokens: {requests} token requests in {window / 3600:.0f} simulated h "
             f"(ideal interval {ideal:.0f} s): ratio {result.ratio:.3f}; {waited} of {calls} calls waited")
    return result


def refresh_ahead_figures(aws: LoopbackAws, *, timers: bool = True) -> tuple[float, float]:
    """(worst ``refresh_ahead_upstream_ratio``, waiting share) over :data:`LIFETIMES`."""
    results = [simulate(aws, lifetime, timers=timers) for lifetime in LIFETIMES]
    calls = sum(result.calls for result in results)
    return max(result.ratio for result in results), sum(result.waited for result in results) / max(calls, 1)
