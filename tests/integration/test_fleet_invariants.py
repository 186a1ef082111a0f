"""Invariants of the product's promise, checked after every step of a stateful model of one provider's fleet.

A hypothesis ``RuleBasedStateMachine`` drives several execution environments of ONE provider function (each with
its own memory cache, lease owner id, secret cache, logger and metrics, as separate Lambda environments have) and
of the token API (whose fake Lambda client runs the provider function in an idle environment, as Lambda would),
against DynamoDB Local (real conditional writes: single flight relies on them), Secrets Manager on the moto server,
a wall clock the steps advance and a scripted hostile provider on 127.0.0.1 (``tests.support.fleet``).

Rules: a burst of 1-5 concurrent calls (direct ``handle()``, the API's ``GET /token/{provider}``, the scheduled
refresh ahead, or the delivery of every per-token renewal the functions armed, due or not) with a scope set, a
``min_ttl`` (boundary and invalid values included) and ``force_refresh``;
switching the provider's behaviour (slow, failing with and without ``Retry-After``, trickling its body past the
lease, JWTs expired or about to expire whatever ``expires_in`` says, short lifetimes, invalid bodies and tokens);
advancing the clock; rotating the secret (in Secrets Manager and at the provider together, or only at the
provider so the credentials are plainly wrong); renewals going off while DynamoDB throttles or times out the
provider functions' reads and writes (a write that lands and then times out too); a caller's use mark written while
a renewal's token request is at the provider; a forced refresh naming a token since replaced (its fingerprint),
with the provider down or up and the stored token inside its refresh margin or not; lifetimes no provider should
send (a JWT ``exp`` past the year 9999, 50 years, 0, negative, 40-digit numbers and numeric strings).

Invariants, after every step:

1. No token served past its expiry: every 200 carries a token the provider issued for (a superset of) the
   requested scopes whose ground-truth expiry (the earlier of ``expires_in`` and the JWT ``exp``) is at least the
   clock at serve time plus the request's effective ``min_ttl``.
2. Single flight: at most one token request in flight per cache key at any instant, fleet-wide, seen from the
   provider's side of the socket; a burst makes at most one token request per key plus its retries (twice that
   when a rotated secret had to be re-read). The provider sees scope sets, not cache keys: the default set is
   asked for by two keys (``""``, a request naming no scope, and the default set named), so two of its
   requests may be in flight at once, one per key.
3. No ``internal_error``/``InternalError`` for a fault outside the service, and no ``misconfigured`` (nothing is
   misconfigured here); the scheduled refresh ahead never raises.
4. The same request gets the same kind of answer on both interfaces whatever the cache holds: a request the
   contract calls invalid is a 400 ``invalid_request``/``InvalidRequest``, a valid one (and one without
   parameters) never gets a 4xx.
5. No client secret (current, previous or the provider's unknown one) and no whole access token in any log line,
   EMF metric, error body or exception, nor anywhere in a 200 body but its ``access_token``.

6. A scope set in use is never judged idle: no write moves a token item's use mark (``used_at``) back.
7. No renewal lost while its token lives: a renewal delivered whose token is still stored, alive and in use is
   armed again (after a failure, for the provider or for DynamoDB), never dropped.

Every API answer must also be a contract response (JSON error document naming the provider, ``Cache-Control:
no-store``, ``Pragma: no-cache``; a 503 carries ``Retry-After``).

Timings are short and real (lease 3 s, read timeout 1 s, 8 s invocations), the sequences derandomized and
database-less so CI replays the same ones; the whole file runs in a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support.fleet import (
    BEHAVIOURS,
    DYNAMODB_FAULTS,
    EXTREME_LIFETIMES,
    DynamoFaults,
    FakeContext,
    FakeLambdaClient,
    ScriptedProvider,
    Shared,
    Sink,
    api_event,
    api_pool,
    provider_pool,
    record_renewals,
    restore_environ,
    sqs_event,
)
from token_vending import constants
from token_vending.cache import TokenCache
from token_vending.exceptions import ERRORS_BY_TYPE
from token_vending.profile import BodyEncoding, ClientAuth, ClientCredentialsProfile, ScopeMode
from token_vending.request import fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from token_vending.renewal import Renewal


pytestmark = pytest.mark.integration

LIFETIME = 900
"""TOKEN_LIFETIME: what the provider's documents promise (the normal behaviour issues 900 s tokens)."""
MIN_TTL_LIMIT = 810
"""LIFETIME minus its refresh margin max(60, 10% of 900) = 90: the largest valid ``min_ttl``."""
LEASE_SECONDS = 3
"""A fetch must end SAFETY_SECONDS (1 s) before its lease and is not started with under MIN_ATTEMPT_SECONDS (1 s) to
go: with LEASE_SECONDS=2 (accepted by the settings) no fetch ever starts and every miss is a 504. 3 s leaves 2 s:
one read timeout (1 s) plus a connect fits."""
CONTEXT_SECONDS = 8.0
"""Remaining time of each invocation: 6 s of work after the 2 s reserve, so a waiter outlives a lease and can
take over from a holder whose lease lapsed (what single flight must survive)."""
ALLOWED = ("audit", "read", "write")
CLIENT_ID = "fleet-client"
BURST_JOIN_SECONDS = 30.0
CONTRACT_ERROR_TYPES = {"InvalidRequest", "UpstreamRejected", "UpstreamInvalidResponse", "UpstreamUnavailable",
                        "UpstreamTimeout"}
"""Error types a caller may see here: nothing is misconfigured and every fault is outside the service."""
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")
FINGERPRINT = re.compile(r"^[0-9a-f]{8}$")
"""The contract's ``force_refresh=<fingerprint>``: 8 lowercase hex digits of the refused token's SHA-256."""
IDLE_SECONDS = 24 * 3600
"""REFRESH_AHEAD_IDLE_HOURS' default: a scope set used within it is in use (and renewed)."""


# --- requests and answers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One caller's request. ``None`` means the parameter is not sent."""

    interface: str
    """``direct`` (invoke the provider function), ``api`` (GET /token/{provider}), ``refresh_ahead`` (the
    schedule) or ``renewal`` (every renewal the functions armed, delivered as one SQS batch, due or not)."""
    hint: int = 0
    """Which environment to prefer (an idle one is taken if it is busy)."""
    scope: str | None = None
    min_ttl: int | str | None = None
    force_refresh: bool | str | None = None

    def payload(self) -> dict[str, Any]:
        return {name: value for name, value in (("scope", self.scope), ("min_ttl", self.min_ttl),
                                                ("force_refresh", self.force_refresh)) if value is not None}

    def query(self) -> dict[str, str]:
        """The same request as query parameters (API Gateway delivers strings)."""
        def text(value: Any) -> str:
            return ("true" if value else "false") if isinstance(value, bool) else str(value)

        return {name: text(value) for name, value in self.payload().items()}


@dataclass
class Answer:
    call: Call
    started: float
    served_at: float
    status: int
    """HTTP status (API), 200 or the error class's status (direct), 0 for a refresh-ahead summary."""
    body: Any
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    """Everything the caller received, for the leak scan (a 200's access_token removed)."""

    @property
    def code(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None

    def describe(self) -> str:
        shown = dict(self.body) if isinstance(self.body, dict) else self.body
        if isinstance(shown, dict) and "access_token" in shown:
            shown["access_token"] = "<token>"
        return f"{self.call} -> status {self.status} {self.error_type or ''} {shown}"


def scopes_of(call: Call, default: frozenset[str]) -> frozenset[str]:
    if not isinstance(call.scope, str):
        return default
    return frozenset(part for part in call.scope.split(" ") if part) or default


def contract_valid(call: Call) -> bool:
    """The contract's own reading of a request, independent of the service's code: scope a subset of the
    configured set (RFC 6749 syntax), min_ttl an integer 0..limit, force_refresh true/false."""
    if call.scope is not None:
        parts = [part for part in call.scope.split(" ") if part]
        if len(call.scope) > 2048 or any(not SCOPE_TOKEN.match(p) or p not in ALLOWED for p in parts):
            return False
    if call.min_ttl is not None:
        raw = call.min_ttl
        if isinstance(raw, str):
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
                return False
            raw = int(raw)
        if isinstance(raw, bool) or not 0 <= raw <= MIN_TTL_LIMIT:
            return False
    if call.force_refresh is not None and not isinstance(call.force_refresh, bool):
        return call.force_refresh.lower() in ("true", "false") or bool(FINGERPRINT.fullmatch(call.force_refresh))
    return True


def effective_min_ttl(call: Call) -> int:
    """60 s by default (capped by the limit, as request.py does)."""
    return min(constants.DEFAULT_MIN_TTL, MIN_TTL_LIMIT) if call.min_ttl is None else int(call.min_ttl)


# --- the world --------------------------------------------------------------------------------------------------
class FleetWorld:
    """One provider deployed fresh (own partition, own secret, own provider server, own environments)."""

    def __init__(self, shared: Shared, *, scope_mode: ScopeMode, default_scopes: str, retries: int,
                 renewals: bool = False) -> None:
        """``renewals``: the functions arm per-token renewals (collected in ``armed`` instead of sent to SQS,
        whose delays run on real time); a ``renewal`` call delivers them as the event source mapping would."""
        self.shared = shared
        self.clock = shared.clock
        self.name = f"fleet-{uuid.uuid4().hex[:10]}"
        self.function_name = f"{self.name}-function"
        self.retries = retries
        self.default = frozenset(default_scopes.split()) or frozenset(ALLOWED)
        self.secret = f"s3cret-{uuid.uuid4().hex}{uuid.uuid4().hex}"
        self.secrets_seen = {self.secret}
        self.secret_id = f"token-vending/fleet/{self.name}"
        shared.secretsmanager.create_secret(Name=self.secret_id, SecretString=self._secret_document(self.secret))
        self.server = ScriptedProvider(self.clock, CLIENT_ID, self.secret)
        self.default_key = " ".join(sorted(self.default))
        """What the provider is asked for by the ``""`` key (no scope named) and by the default set named."""
        self.server.cache_keys = {self.default_key: 2}
        self.env = {
            constants.CONNECTION_NAME_ENV: self.name,
            constants.TOKEN_URL_ENV: self.server.url,
            constants.SECRET_ID_ENV: self.secret_id,
            constants.ALLOWED_SCOPES_ENV: " ".join(ALLOWED),
            constants.DEFAULT_SCOPES_ENV: default_scopes,
            constants.TOKEN_LIFETIME_ENV: str(LIFETIME),
            constants.CACHE_TABLE_ENV: shared.table,
            constants.LOCAL_MODE_ENV: "true",
            constants.LEASE_SECONDS_ENV: str(LEASE_SECONDS),
            constants.READ_TIMEOUT_ENV: "1",
            constants.CONNECT_TIMEOUT_ENV: "0.5",
            constants.UPSTREAM_RETRIES_ENV: str(retries),
            constants.MEMORY_CACHE_SECONDS_ENV: "5",
            constants.PROVIDERS_ENV: json.dumps({self.name: {"function": self.function_name, "lifetime": LIFETIME}}),
        }
        self.armed: list[Renewal] = []
        self.delivered: list[Renewal] = []
        """The renewals the last ``renewal`` call delivered."""
        self.marks: dict[str, float] = {}
        """Sort key -> the latest use mark known to have been written on that token item (stored or by a step)."""
        self.faults = DynamoFaults(shared.dynamodb)
        self.cache = TokenCache(shared.table, shared.api_dynamodb)
        """Reads (and use marks) as the token API's client makes them: never faulted."""
        self._stop_recording: Callable[[], None] = lambda: None
        if renewals:
            self.env[constants.RENEWAL_QUEUE_URL_ENV] = "https://sqs.us-east-1.amazonaws.com/123456789012/fleet"
            self._stop_recording = record_renewals(lambda renewal, _now: self.armed.append(renewal))
        self._saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        self.profile = ClientCredentialsProfile(name=self.name, auth=ClientAuth.FORM_BODY, body=BodyEncoding.FORM,
                                                scope=scope_mode)
        self.logs = Sink()
        self.received = Sink()
        """What callers received (error bodies, exceptions, 200 bodies without their token)."""
        prefix = self.name
        self.providers = provider_pool(self.profile, prefix=prefix, dynamodb=shared.dynamodb,
                                       secretsmanager=shared.secretsmanager, sink=self.logs, initial=3)
        self.lambda_client = FakeLambdaClient(self.function_name, self.providers, CONTEXT_SECONDS)
        self.apis = api_pool(prefix=prefix, dynamodb=shared.api_dynamodb, lambda_client=self.lambda_client,
                             sink=self.logs, initial=2)

    def close(self) -> None:
        self.faults.remove()
        self._stop_recording()
        self.server.stop()
        restore_environ(self._saved)

    @staticmethod
    def _secret_document(secret: str) -> str:
        return json.dumps({"client_id": CLIENT_ID, "client_secret": secret})

    # -- steps ---------------------------------------------------------------------------------------------------
    def switch(self, name: str) -> None:
        self.server.behaviour = BEHAVIOURS[name]

    def rotate_both(self) -> None:
        """A proper rotation: the new secret is in Secrets Manager when the provider starts to require it."""
        secret = f"s3cret-{uuid.uuid4().hex}{uuid.uuid4().hex}"
        self.secrets_seen.add(secret)
        self.shared.secretsmanager.put_secret_value(SecretId=self.secret_id,
                                                    SecretString=self._secret_document(secret))
        self.secret = secret
        self.server.secret = secret

    def rotate_server_only(self) -> None:
        """The provider now wants a secret nobody told us: our credentials are plainly wrong."""
        secret = f"s3cret-{uuid.uuid4().hex}{uuid.uuid4().hex}"
        self.secrets_seen.add(secret)
        self.server.secret = secret

    def token_items(self) -> dict[str, dict[str, Any]]:
        """Every token item of this provider, read consistently by a client no fault touches."""
        response = self.shared.api_dynamodb.query(
            TableName=self.shared.table, ConsistentRead=True, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": self.name}})
        return {item["sk"]["S"]: item for item in response.get("Items", []) if item["sk"]["S"].startswith("token#")}

    def stored(self, scope_key: str) -> tuple[str, float, int, float] | None:
        """(access token, fetched_at, expires_at, used_at) of the token item, whatever its expiry."""
        item = self.token_items().get(f"token#{scope_key}")
        if item is None:
            return None
        return (item["access_token"]["S"], float(item["fetched_at"]["N"]), int(item["expires_at"]["N"]),
                float(item.get("used_at", {}).get("N", "0")))

    def burst(self, calls: list[Call]) -> list[Answer]:
        """Run the calls at once, each in its own thread (and environment); wait for all of them."""
        answers: list[Answer | None] = [None] * len(calls)
        escaped: list[str] = []
        barrier = threading.Barrier(len(calls))

        def run(index: int, call: Call) -> None:
            barrier.wait(timeout=10)
            try:
                answers[index] = self.call(call)
            except BaseException as exc:  # the API's handler must answer everything; recorded, then asserted
                escaped.append(f"{call}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=run, args=(i, c), daemon=True, name=f"caller-{i}")
                   for i, c in enumerate(calls)]
        for thread in threads:
            thread.start()
        end = time.monotonic() + BURST_JOIN_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        hung = [calls[i] for i, thread in enumerate(threads) if thread.is_alive()]
        assert not hung, f"calls still running after {BURST_JOIN_SECONDS} s: {hung}"
        assert not escaped, f"invariant 3: an exception escaped the token API's handler: {escaped}"
        self.server.wait_idle(timeout=8)
        return [answer for answer in answers if answer is not None]

    def call(self, call: Call) -> Answer:
        started = self.clock.now()
        if call.interface == "api":
            with self.apis.environment(call.hint) as env:
                response = env.target.handle(api_event(self.name, call.query()))
            served_at = self.clock.now()
            try:
                body = json.loads(response.get("body") or "null")
            except ValueError:
                body = response.get("body")
            answer = Answer(call, started, served_at, int(response.get("statusCode", 0)), body,
                            headers=dict(response.get("headers") or {}))
        else:
            if call.interface == "renewal":
                # An empty batch is never delivered: one stray message stands in for none.
                event = sqs_event([renewal.body() for renewal in self.armed] or ["not a renewal"], "fleet")
                self.delivered = list(self.armed)
                self.armed.clear()
            else:
                event = {"refresh_ahead": True} if call.interface == "refresh_ahead" else call.payload()
            with self.providers.environment(call.hint) as env:
                try:
                    result = env.target.handle(event, FakeContext(CONTEXT_SECONDS))
                except Exception as exc:
                    served_at = self.clock.now()
                    error_type = type(exc).__name__
                    cls = ERRORS_BY_TYPE.get(error_type)
                    try:
                        body = json.loads(str(exc))
                    except ValueError:
                        body = str(exc)
                    answer = Answer(call, started, served_at, cls.status if cls else 500, body,
                                    error_type=error_type, text=f"{error_type}: {exc} {exc!r}")
                else:
                    served_at = self.clock.now()
                    status = 0 if call.interface in ("refresh_ahead", "renewal") else 200
                    answer = Answer(call, started, served_at, status, result)
        if not answer.text:
            shown = dict(answer.body) if isinstance(answer.body, dict) else answer.body
            if answer.status == 200 and isinstance(shown, dict):
                shown.pop("access_token", None)
            answer.text = json.dumps(shown) + json.dumps(answer.headers)
        self.received.write(answer.text + "\n")
        return answer


# --- invariants -------------------------------------------------------------------------------------------------
def check_answer(world: FleetWorld, answer: Answer) -> None:
    call = answer.call
    if call.interface == "renewal":
        assert answer.error_type is None, f"invariant 3: a renewal raised: {answer.describe()}"
        assert answer.body == {"batchItemFailures": []}, f"a renewal was left to SQS: {answer.describe()}"
        return
    if call.interface == "refresh_ahead":
        assert answer.error_type is None, f"invariant 3: refresh ahead raised: {answer.describe()}"
        assert isinstance(answer.body, dict), answer.describe()
        assert set(answer.body) == {"renewed", "armed", "fresh", "idle", "failed"}, (
            f"refresh ahead answered {answer.describe()}")
        return
    where = f"[{call.interface}] {answer.describe()}"
    # 3: no internal error, no misconfiguration.
    assert answer.code != "internal_error", f"invariant 3: {where}"
    assert answer.error_type != "InternalError", f"invariant 3: {where}"
    assert answer.code != "misconfigured", f"invariant 3 (nothing is misconfigured): {where}"
    if call.interface == "direct" and answer.error_type is not None:
        assert answer.error_type in CONTRACT_ERROR_TYPES, f"invariant 3: unexpected errorType: {where}"
        assert isinstance(answer.body, dict), where
        assert answer.body.get("provider") == world.name, where
    if call.interface == "api":
        check_contract_response(world, answer)
    # 4: the contract decides validity, not the cache.
    if contract_valid(call):
        assert not 400 <= answer.status < 500, f"invariant 4: a valid request got a 4xx: {where}"
    else:
        assert answer.status == 400, f"invariant 4: an invalid request was not refused: {where}"
        assert answer.code == "invalid_request", f"invariant 4: an invalid request was not invalid_request: {where}"
    # 1: never a token past its expiry (or short of min_ttl), never one the provider did not issue for these scopes.
    if answer.status == 200:
        check_served_token(world, answer)


def check_contract_response(world: FleetWorld, answer: Answer) -> None:
    where = answer.describe()
    headers = answer.headers
    assert headers.get("Cache-Control") == "no-store", f"contract: Cache-Control: {where} {headers}"
    assert headers.get("Pragma") == "no-cache", f"contract: Pragma: {where} {headers}"
    assert isinstance(answer.body, dict), f"contract: body is not a JSON object: {where}"
    if answer.status == 200:
        assert set(answer.body) == {"provider", "access_token", "token_type", "expires_in", "expires_at",
                                    "scope"}, where
        assert answer.body["token_type"] == "Bearer", where
        return
    assert answer.status in (400, 500, 502, 503, 504), f"contract: status {answer.status}: {where}"
    assert {"error", "error_description", "provider"} <= set(answer.body), f"contract: error document: {where}"
    assert answer.body["provider"] == world.name, where
    assert isinstance(answer.body["error_description"], str), where
    if answer.status == 503:
        retry_after = headers.get("Retry-After")
        assert retry_after is not None, f"contract: a 503 without Retry-After: {where}"
        assert retry_after.isdigit(), f"contract: Retry-After {retry_after!r}: {where}"
        assert 1 <= int(retry_after) <= 3600, f"contract: Retry-After {retry_after}: {where}"


def check_served_token(world: FleetWorld, answer: Answer) -> None:
    body = answer.body
    where = f"[{answer.call.interface}] {answer.describe()}"
    token = body.get("access_token")
    issued = world.server.issued.get(token)
    assert issued is not None, f"invariant 1: served a token the provider never issued: {where}"
    assert issued.servable, f"invariant 1: served a token that is not usable (CR/LF or spaces): {where}"
    wanted = scopes_of(answer.call, world.default)
    assert wanted <= issued.scopes, (
        f"invariant 1: served a token issued for {sorted(issued.scopes)} to a request for {sorted(wanted)}: {where}")
    min_ttl = effective_min_ttl(answer.call)
    left = issued.true_expiry - answer.served_at
    assert left >= min_ttl, (
        f"invariant 1: served a token with {left:.1f} s left (true expiry), min_ttl {min_ttl}: {where}")
    if issued.jwt_exp is not None:
        assert issued.jwt_exp - answer.served_at >= min_ttl, f"invariant 1: JWT exp too close: {where}"
    promised = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC).timestamp()
    assert promised <= issued.true_expiry + 1, (
        f"invariant 1: expires_at promises {promised - issued.true_expiry:.0f} s past the true expiry: {where}")
    assert body["expires_in"] <= left + 1, f"invariant 1: expires_in {body['expires_in']} > {left:.0f}: {where}"


def check_burst_bound(world: FleetWorld, mark: int, calls: list[Call]) -> None:
    """Invariant 2, per burst: one token request per key, plus retries; twice that if a rotation was retried."""
    counts = world.server.request_count(since=mark)
    rejected = world.server.invalid_client_since(mark)
    for key, count in counts.items():
        bound = (1 + world.retries) * (2 if key in rejected else 1) * world.server.allowed_in_flight(key)
        assert count <= bound, (f"invariant 2: one burst made {count} token requests for scope {key!r} "
                                f"(bound {bound}; behaviour {world.server.behaviour.name}): {calls}")


def check_single_flight(world: FleetWorld) -> None:
    assert not world.server.overlaps, f"invariant 2 (single flight): {world.server.overlaps}"
    assert all(n <= world.server.allowed_in_flight(key) for (_, key), n in world.server.max_in_flight.items()), (
        world.server.max_in_flight)


def check_use_marks(world: FleetWorld) -> None:
    """A scope set in use is never judged idle: no write moves a token item's use mark (``used_at``) back, neither
    the token a renewal stores (it carries the mark it read before its fetch) nor anything else."""
    for sort_key, item in world.token_items().items():
        used_at = float(item.get("used_at", {}).get("N", "0"))
        known = world.marks.get(sort_key, 0.0)
        assert used_at >= known - 0.002, (
            f"a use mark moved back by {known - used_at:.1f} s on {sort_key!r}: the scope set may be judged idle")
        world.marks[sort_key] = max(known, used_at)


def check_no_renewal_lost(world: FleetWorld) -> None:
    """Every renewal delivered whose token is still the stored one, lives and is in use was armed again (a renewal
    that failed, for the provider or for DynamoDB, is tried again while its token lives)."""
    now = world.clock.now()
    for renewal in world.delivered:
        stored = world.stored(renewal.scope_key)
        if stored is None or not renewal.names(_token_of(world, renewal.scope_key, stored)):
            continue  # gone or replaced: its successor armed its own
        _, fetched_at, expires_at, used_at = stored
        if expires_at - 1 <= now or (used_at or fetched_at) < now - IDLE_SECONDS:
            continue  # expired by now, or idle: left to expire
        assert any(again.scope_key == renewal.scope_key and abs(again.fetched_at - renewal.fetched_at) < 0.0015
                   for again in world.armed), (
            f"a renewal was lost while its token lives ({expires_at - now:.0f} s left): {renewal}")


def _token_of(world: FleetWorld, scope_key: str, stored: tuple[str, float, int, float]) -> Any:
    from token_vending.cache import CachedToken

    return CachedToken(provider=world.name, scope_key=scope_key, access_token=stored[0], fetched_at=stored[1],
                       expires_at=stored[2], used_at=stored[3])


def mark_use(world: FleetWorld, asked: str) -> None:
    """A caller's hit marks the scope set in use now, as the token API writes it (remembered for the invariant):
    every cache key whose token request asks the provider for ``asked`` (the default set: ``""`` too)."""
    now = world.clock.now()
    for scope_key in (asked, "") if asked == world.default_key else (asked,):
        if world.cache.record_use(world.name, scope_key, now):
            sort_key = f"token#{scope_key}"
            world.marks[sort_key] = max(world.marks.get(sort_key, 0.0), now)


def check_no_leaks(world: FleetWorld) -> None:
    """Invariant 5: no secret, no whole token, in anything but a 200's access_token."""
    outputs = {"logs and metrics": world.logs.text(), "answers": world.received.text()}
    forbidden = {f"client secret #{i}": s for i, s in enumerate(sorted(world.secrets_seen))}
    forbidden |= {f"access token {token[:6]}...": token for token in list(world.server.issued)}
    for where, text in outputs.items():
        for what, value in forbidden.items():
            for form in {value, json.dumps(value)[1:-1]}:
                assert form not in text, f"invariant 5: {what} appears in {where}"


# --- the state machine ------------------------------------------------------------------------------------------
SCOPES = st.sampled_from([None, None, None, "read", "write", "read write", "write read", "audit read write", "",
                          "read  write", "admin", "read admin", "read\nwrite"])
MIN_TTLS = st.sampled_from([None, None, None, None, 0, 1, 60, 300, 600, 809, 810, 811, 900, 3600, -1, "abc",
                            "1.5", "", "300"])
FORCE = st.sampled_from([None, None, None, None, False, True, True, "maybe"])
BEHAVIOUR_NAMES = st.sampled_from(["normal", *sorted(set(BEHAVIOURS) - {"normal"})])
"""``normal`` first: hypothesis shrinks towards it."""
CALLS = st.one_of(
    st.builds(Call, interface=st.sampled_from(["direct", "api"]), hint=st.integers(0, 4), scope=SCOPES,
              min_ttl=MIN_TTLS, force_refresh=FORCE),
    st.builds(Call, interface=st.just("direct"), hint=st.integers(0, 4)),
    st.builds(Call, interface=st.just("api"), hint=st.integers(0, 4)),
    st.builds(Call, interface=st.just("refresh_ahead"), hint=st.integers(0, 4)),
    st.builds(Call, interface=st.just("renewal"), hint=st.integers(0, 4)),
)


def machine_for(shared: Shared) -> type[RuleBasedStateMachine]:
    class FleetMachine(RuleBasedStateMachine):
        """Steps a fleet; the invariants above hold after every one."""

        def __init__(self) -> None:
            super().__init__()
            self.world: FleetWorld | None = None

        @initialize(scope_mode=st.sampled_from([ScopeMode.REQUIRED, ScopeMode.OPTIONAL]),
                    default_scopes=st.sampled_from(["read", ""]), retries=st.sampled_from([0, 1]),
                    behaviour=BEHAVIOUR_NAMES)
        def deploy(self, scope_mode: ScopeMode, default_scopes: str, retries: int, behaviour: str) -> None:
            self.world = FleetWorld(shared, scope_mode=scope_mode, default_scopes=default_scopes, retries=retries,
                                    renewals=True)
            self.world.switch(behaviour)

        def _burst(self, calls: list[Call]) -> list[Answer]:
            assert self.world is not None
            mark = self.world.server.mark()
            answers = self.world.burst(calls)
            for answer in answers:
                event(f"{answer.call.interface} {answer.status} {answer.code or ''} "
                      f"({self.world.server.behaviour.name})")
                check_answer(self.world, answer)
            check_burst_bound(self.world, mark, calls)
            return answers

        def _renewals_due(self) -> None:
            """The clock moves to the earliest armed renewal's time, as SQS delays it."""
            assert self.world is not None
            if self.world.armed:
                shared.clock.advance(max(0.0, min(r.due for r in self.world.armed) - shared.clock.now()))

        # Three identical burst rules: hypothesis picks rules uniformly, and bursts are where invariants break.
        @rule(calls=st.lists(CALLS, min_size=1, max_size=5))
        def burst(self, calls: list[Call]) -> None:
            self._burst(calls)

        @rule(calls=st.lists(CALLS, min_size=2, max_size=5))
        def concurrent_burst(self, calls: list[Call]) -> None:
            self._burst(calls)

        @rule(calls=st.lists(CALLS, min_size=1, max_size=3))
        def small_burst(self, calls: list[Call]) -> None:
            self._burst(calls)

        @rule(hint=st.integers(0, 4), concurrent=st.sampled_from([None, "api", "direct"]))
        def renewals_go_off(self, hint: int, concurrent: str | None) -> None:
            """The clock moves to the earliest armed renewal's time (as SQS delays it) and every armed renewal is
            delivered, optionally while a caller asks."""
            assert self.world is not None
            self._renewals_due()
            self._burst([Call("renewal", hint=hint)] + ([Call(concurrent, hint=hint + 1)] if concurrent else []))
            check_no_renewal_lost(self.world)

        @rule(fault=st.sampled_from(DYNAMODB_FAULTS),
              operations=st.sampled_from([("GetItem",), ("PutItem",), ("UpdateItem",),
                                          ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query")]),
              hint=st.integers(0, 4), concurrent=st.sampled_from([None, "api", "direct"]))
        def renewals_under_dynamodb_faults(self, fault: str, operations: tuple[str, ...], hint: int,
                                           concurrent: str | None) -> None:
            """The renewals go off while DynamoDB throttles or times out the provider functions' calls (the renewal's
            consistent read, the lease, the budget, the token's store -- a write that lands and times out too),
            optionally while a caller asks: none is lost while its token lives, and no caller gets more than the
            contract's errors."""
            assert self.world is not None
            self._renewals_due()
            with self.world.faults.during(fault, operations):
                self._burst([Call("renewal", hint=hint)] + ([Call(concurrent, hint=hint + 1)] if concurrent else []))
            check_no_renewal_lost(self.world)

        @rule(hint=st.integers(0, 4))
        def a_use_is_marked_during_a_renewal(self, hint: int) -> None:
            """While a renewal's token request is at the provider, a caller's hit marks the scope set in use (the token
            API's one write): the renewed token must keep that mark (invariant: use marks never move back)."""
            world = self.world
            assert world is not None
            world.server.on_request = lambda key: mark_use(world, key)
            try:
                self._renewals_due()
                self._burst([Call("renewal", hint=hint)])
            finally:
                world.server.on_request = None
            check_no_renewal_lost(world)

        @rule(outage=st.booleans(), interface=st.sampled_from(["direct", "api"]), hint=st.integers(0, 4),
              inside_margin=st.booleans())
        def forced_refresh_naming_a_replaced_token(self, outage: bool, interface: str, hint: int,
                                                   inside_margin: bool) -> None:
            """A caller got a 401 for a token that has since been replaced and names it (its fingerprint), with the
            provider down or up: the stored token is served while it meets min_ttl, inside its refresh margin too,
            and the provider is not asked."""
            world = self.world
            assert world is not None
            stored = world.stored("")  # the call names no scope: the "" key
            if stored is not None and inside_margin:
                shared.clock.advance(max(0.0, stored[2] - shared.clock.now() - 80))  # margin 90 s, min_ttl 60
            behaviour = world.server.behaviour
            if outage:
                world.switch("fail_503")
            usable = stored is not None and stored[2] - shared.clock.now() >= 62
            mark = world.server.mark()
            try:
                (answer,) = self._burst([Call(interface, hint=hint, force_refresh=fingerprint("since replaced"))])
            finally:
                world.server.behaviour = behaviour
            if usable:
                assert stored is not None
                assert answer.status == 200, f"the replacement was not served: {answer.describe()}"
                assert answer.body["access_token"] == stored[0], f"not the stored token: {answer.describe()}"
                assert world.server.request_count(since=mark) == {}, "the provider was asked"

        @rule(name=st.sampled_from([behaviour.name for behaviour in EXTREME_LIFETIMES]),
              interface=st.sampled_from(["direct", "api"]), hint=st.integers(0, 4))
        def extreme_lifetime(self, name: str, interface: str, hint: int) -> None:
            """The provider answers with a lifetime no provider should send (an ``exp`` past the year 9999, 50 years,
            0, negative, a numeric string of 40 digits): once every cached token has expired, callers and the
            scheduled run get a token valid for what they asked or the contract's error, never a 500."""
            assert self.world is not None
            self.world.switch(name)
            shared.clock.advance(LIFETIME + 1)
            self._burst([Call(interface, hint=hint), Call("refresh_ahead", hint=hint + 1)])

        @rule(name=BEHAVIOUR_NAMES, expire=st.booleans())
        def switch_behaviour(self, name: str, expire: bool) -> None:
            """A behaviour only shows when a token is fetched: half the time every cached token expires too."""
            assert self.world is not None
            self.world.switch(name)
            if expire:
                shared.clock.advance(LIFETIME + 1)

        @rule(seconds=st.sampled_from([30, 45, 61, 100, 300, 450, 700, 850, 2000]))
        def advance_clock(self, seconds: int) -> None:
            shared.clock.advance(seconds)

        @rule(everywhere=st.booleans())
        def rotate_secret(self, everywhere: bool) -> None:
            """In Secrets Manager and at the provider together, or only at the provider (wrong credentials)."""
            assert self.world is not None
            if everywhere:
                self.world.rotate_both()
            else:
                self.world.rotate_server_only()

        @invariant()
        def single_flight(self) -> None:
            if self.world is not None:
                check_single_flight(self.world)

        @invariant()
        def use_marks_never_move_back(self) -> None:
            if self.world is not None:
                check_use_marks(self.world)

        @invariant()
        def no_leaks(self) -> None:
            if self.world is not None:
                check_no_leaks(self.world)

        def teardown(self) -> None:
            if self.world is not None:
                self.world.close()

    return FleetMachine


# --- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture
def world(shared: Shared) -> Iterator[FleetWorld]:
    fleet = FleetWorld(shared, scope_mode=ScopeMode.REQUIRED, default_scopes="read", retries=0)
    yield fleet
    fleet.close()


# --- the machine ------------------------------------------------------------------------------------------------
MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("FLEET_EXAMPLES", "100")),
    stateful_step_count=int(os.environ.get("FLEET_STEPS", "25")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)


@pytest.mark.timeout(900)
def test_fleet_invariants_hold_after_every_step(shared: Shared) -> None:
    run_state_machine_as_test(machine_for(shared), settings=MACHINE_SETTINGS)


# --- regressions: concrete sequences ----------------------------------------------------------------------------
def run(world: FleetWorld, calls: list[Call]) -> list[Answer]:
    mark = world.server.mark()
    answers = world.burst(calls)
    for answer in answers:
        check_answer(world, answer)
    check_burst_bound(world, mark, calls)
    check_single_flight(world)
    check_no_leaks(world)
    return answers


def test_a_trickling_provider_never_sees_two_token_requests_at_once(world: FleetWorld) -> None:
    """The body arrives over 5 s, past the 3 s lease: each fetch must end before its lease does, or a waiter takes
    over while the provider is still answering the first. Found by the machine on the code before 57f8665: a burst
    of two callers right after deploying made two token requests (invariant 2)."""
    world.switch("trickle")
    answers = run(world, [Call("direct", hint=i) for i in range(3)] + [Call("api", hint=0)])
    assert {a.status for a in answers} <= {503, 504}, [a.describe() for a in answers]
    assert world.server.request_count() == {"read": 1}


@pytest.mark.parametrize(("behaviour", "min_ttl", "lifetime"), [("short_90", 300, 90),
                                                                 ("jwt_300_expires_in_3600", 600, 300)])
def test_tokens_shorter_than_a_valid_min_ttl_are_refused_alike_cold_and_warm(
        world: FleetWorld, behaviour: str, min_ttl: int, lifetime: int) -> None:
    """The provider's tokens live shorter than documented (900 s): 90 s, or a JWT whose exp (300 s) is earlier than
    its expires_in (3600 s; the exp wins, the provider's API enforces it). A min_ttl the documented lifetime allows
    but no such token meets gets the same 502 cold or warm, direct or through the API, and the provider is asked
    once, not per request. Found by the machine on the code before 57f8665: after a first request with the default
    min_ttl, min_ttl 300 with 200 s tokens became a 400 (invariant 4)."""
    world.switch(behaviour)
    cold = run(world, [Call("direct", min_ttl=min_ttl)])
    served = run(world, [Call("api"), Call("direct", hint=2)])
    assert {a.status for a in served} == {200}, [a.describe() for a in served]
    assert all(a.body["expires_in"] <= lifetime for a in served), [a.describe() for a in served]
    warm = run(world, [Call("api", min_ttl=str(min_ttl)), Call("direct", hint=1, min_ttl=min_ttl)])
    assert {a.code for a in cold + warm} == {"upstream_invalid_response"}, [a.describe() for a in cold + warm]
    assert world.server.request_count() == {"read": 1}


@pytest.mark.parametrize("behaviour", ["jwt_20s", "jwt_20s_bare", "jwt_expired", "token_crlf", "token_space",
                                       "not_json", "truncated_body", "reset_mid_body"])
def test_an_unusable_answer_is_never_served_and_never_a_500(world: FleetWorld, behaviour: str) -> None:
    """Found by the machine on the code before 57f8665 (one step each after deploying): a JWT with 20 s left served
    as good for 899 s because expires_in said 900 (invariant 1), a token with CR/LF in it served (invariant 1), a
    body cut short answered 500 internal_error (invariant 3). Both interfaces, cold cache: a 5xx of the contract,
    one token request for the fleet."""
    world.switch(behaviour)
    answers = run(world, [Call("direct"), Call("api", hint=1)])
    assert {a.code for a in answers} <= {"upstream_invalid_response", "upstream_unavailable", "upstream_timeout"}, [
        a.describe() for a in answers]
    assert world.server.request_count() == {"read": 1}


def test_a_cool_down_503_carries_the_retry_after_really_left(world: FleetWorld, shared: Shared) -> None:
    """The provider asks for 120 s: every caller in the cool-down gets a 503 whose Retry-After is what is left of
    it, and nobody asks the provider again until it lapses. A 429 without Retry-After still gives callers one (the
    machine found a bare 503 on the code before 57f8665): when this service will ask again."""
    world.switch("fail_429_bare")
    bare = run(world, [Call("api"), Call("api", hint=1)])
    assert all(a.status == 503 and 1 <= int(a.headers["Retry-After"]) <= 10 for a in bare), [
        f"{a.describe()} {a.headers}" for a in bare]
    shared.clock.advance(11)  # the 10 s cool-down lapses
    mark = world.server.mark()
    world.switch("fail_503_retry_after_120")
    (first,) = run(world, [Call("api")])
    assert world.server.request_count(since=mark) == {"read": 1}
    assert first.status == 503, first.describe()
    assert int(first.headers["Retry-After"]) >= 119, first.headers
    shared.clock.advance(45)
    later = run(world, [Call("api"), Call("api", hint=1)])
    assert all(a.status == 503 and 70 <= int(a.headers["Retry-After"]) <= 76 for a in later), [
        a.describe() + str(a.headers) for a in later]
    assert world.server.request_count(since=mark) == {"read": 1}


def test_an_outage_backs_off_exponentially_and_a_recovery_resets_it(world: FleetWorld, shared: Shared) -> None:
    """A provider that keeps answering 503 is asked again after 10, 20, 40, 80 s, then every 150 s (the cap, a
    longer Retry-After included), once per cool-down for the whole fleet and, after the first failure, without
    retries; callers get 503s whose Retry-After is the back-off. When it answers again the next try succeeds, and
    a later failure starts over at 10 s."""
    world.switch("fail_503")
    (first,) = run(world, [Call("api")])
    assert first.status == 503, first.describe()
    assert int(first.headers["Retry-After"]) == 10, first.headers
    wait = 10
    for expected in (20, 40, 80, 150, 150):
        shared.clock.advance(wait + 1)
        before = sum(world.server.request_count().values())
        answers = run(world, [Call("api"), Call("direct", hint=1), Call("api", hint=2)])
        assert sum(world.server.request_count().values()) - before == 1, "one attempt, no retries, for the fleet"
        assert {a.status for a in answers} == {503}, [a.describe() for a in answers]
        wait = max(int(a.headers["Retry-After"]) for a in answers if a.headers.get("Retry-After"))
        assert expected - 2 <= wait <= expected, (expected, [a.headers for a in answers])
    world.switch("fail_503_retry_after_1000")
    shared.clock.advance(wait + 1)
    (capped,) = run(world, [Call("api")])
    assert 148 <= int(capped.headers["Retry-After"]) <= 150, capped.headers
    world.switch("normal")
    shared.clock.advance(151)
    (back,) = run(world, [Call("api")])
    assert back.status == 200, back.describe()
    shared.clock.advance(900)  # the token expires and the provider fails again: the back-off starts over
    world.switch("fail_503")
    (again,) = run(world, [Call("api")])
    assert again.status == 503, again.describe()
    assert int(again.headers["Retry-After"]) == 10, again.headers


@pytest.mark.parametrize("fault", DYNAMODB_FAULTS)
def test_dynamodb_faults_are_never_an_internal_error(world: FleetWorld, fault: str) -> None:
    """DynamoDB throttles or times out the provider function's reads: callers of both interfaces get a token (the
    degraded mode), never ``internal_error``. Found by the machine: a read timeout (botocore's ``ReadTimeoutError``,
    whose ``response`` is ``None``) was an ``AttributeError`` while the cache described it, so a 500."""
    with world.faults.during(fault, ("GetItem",)):  # one caller a burst: degraded, each environment fetches once
        answers = run(world, [Call("api", hint=1)]) + run(world, [Call("direct", hint=2)])
    assert {a.status for a in answers} == {200}, [a.describe() for a in answers]
    assert world.faults.injected >= 2


@pytest.mark.parametrize("fault", ["throttle", "timeout_after_write"])
def test_a_renewal_whose_token_cannot_be_stored_is_not_lost(shared: Shared, fault: str) -> None:
    """The renewal's token is fetched but its write is throttled (the old token stays stored) or lands and times out
    (the new one is stored, unknown to the renewal): either way the stored token has a renewal armed."""
    world = FleetWorld(shared, scope_mode=ScopeMode.REQUIRED, default_scopes="read", retries=0, renewals=True)
    try:
        run(world, [Call("direct")])  # no scope named: the "" key
        [renewal] = world.armed
        shared.clock.advance(renewal.due - shared.clock.now())
        with world.faults.during(fault, ("UpdateItem",)):
            run(world, [Call("renewal")])
        assert world.faults.injected
        check_no_renewal_lost(world)
        stored = world.stored("")
        assert stored is not None
        assert any(again.names(_token_of(world, "", stored)) for again in world.armed), (stored, world.armed)
    finally:
        world.close()


@pytest.mark.parametrize("behaviour", [behaviour.name for behaviour in EXTREME_LIFETIMES])
def test_extreme_lifetimes_are_capped_or_refused_never_a_500(world: FleetWorld, behaviour: str) -> None:
    """An ``exp`` past the year 9999, 50 years, 0, negative or 40-digit lifetimes: both interfaces, cold then warm,
    get a token that lives what the provider said (at most) or ``upstream_invalid_response``; one token request."""
    world.switch(behaviour)
    answers = run(world, [Call("api")]) + run(world, [Call("direct", hint=1), Call("api", hint=1)])
    assert {a.code for a in answers if a.status != 200} <= {"upstream_invalid_response"}, [
        a.describe() for a in answers]
    assert sum(world.server.request_count().values()) <= 2, world.server.request_count()


def test_a_use_marked_during_a_renewal_is_kept(shared: Shared) -> None:
    """While the renewal's token request is at the provider a caller's hit marks the scope set in use: the renewed
    token, which carries the mark read before the fetch, must not erase it (the set would be judged idle)."""
    world = FleetWorld(shared, scope_mode=ScopeMode.REQUIRED, default_scopes="read", retries=0, renewals=True)
    try:
        run(world, [Call("direct")])
        check_use_marks(world)
        [renewal] = world.armed
        shared.clock.advance(renewal.due - shared.clock.now())
        world.server.on_request = lambda key: mark_use(world, key)
        run(world, [Call("renewal")])
        assert world.marks["token#"] > renewal.fetched_at + 1
        check_use_marks(world)
    finally:
        world.close()
