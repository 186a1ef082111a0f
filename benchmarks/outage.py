"""``outage_attempts_per_hour`` and ``outage_recovery_seconds``: one simulated hour of a provider answering 503.

The fleet is the in-process model of ``tests/support/fleet.py``, as ``tests/integration/test_fleet_invariants.py``
drives it (see ``test_an_outage_backs_off_exponentially_and_a_recovery_resets_it``): ``PROVIDER_ENVIRONMENTS``
execution environments of Pyng's provider function and ``API_ENVIRONMENTS`` of the token API (each with its own
memory cache, lease owner, secret cache, logger and metrics), a fake Lambda service between them, DynamoDB Local
and Secrets Manager on the moto server shared as the real fleet shares them, and ``ScriptedProvider``, a real HTTP
token endpoint on 127.0.0.1 whose behaviour is switched and which counts every token request per scope set. The
wall clock (``time.time``) is ``FleetClock``: real time plus an offset the run advances, so an hour passes in a
minute or two while ``time.monotonic`` and ``time.sleep`` (deadlines, lease polling, retries' back-off) stay real.

Configuration: Pyng's deployed environment (``local.stack.deployed()``: 900 s tokens, refresh margin 90 s,
``UPSTREAM_RETRIES`` 2, ``LEASE_SECONDS`` 20, ``REFRESH_AHEAD_INTERVAL`` 300 s, ...) and its catalogue entry,
but for what the model needs: the scripted provider's URL (plain ``http`` on loopback: local mode), its
form-body client authentication (Pyng's real one is HTTP Basic, which the scripted provider does not check),
and the renewal queue: what the functions arm (``RenewalTimer.arm``) is recorded instead of sent to SQS and
delivered through the provider function's handler as the SQS event source mapping would, ``DelaySeconds`` (as
the product computes it) plus ``DELIVERY_LATENCY`` after it was armed.

One run per ``VARIANTS`` entry (a 503 without ``Retry-After``, and one asking for 1000 s, which the back-off
caps), each with a fresh table, secret and provider:

1. The provider answers normally; one caller caches a token per scope set (``SCOPE_SETS``: the default set and
   ``billing:batches:read``), and the clock moves ``TOKEN_AGE`` (800 s) on: 100 s before the tokens expire, 10 s
   before they enter their margin. The worst hour: the schedule's first run fails at once, and callers need a
   new token as soon as each cool-down lapses, so the back-off runs from the first instant to the last.
2. The provider answers 503 for ``HOUR`` (3600) simulated seconds. Every ``CALLER_INTERVAL`` (2) simulated
   seconds, for each scope set, one caller through the token API and one invoking the provider function directly
   (concurrently, in rotating environments: some wait on another's lease); every ``REFRESH_AHEAD_INTERVAL``
   (300) s, from the first instant, the schedule's ``{"refresh_ahead": true}`` invocation; and the renewal
   timers due by then (delivered with that step's calls). The cached tokens
   are served while they last (stale on error), then callers get 503s. Token requests reaching the provider
   in the hour are counted per scope set (callers, waiters and the schedule together; a first failure's
   retries included).
3. The provider answers normally again, at the end of the hour (wherever the back-off then stands), with the
   same callers and schedule: the simulated seconds until a caller of each scope set is served a token the
   provider issued after that moment.

``outage_attempts_per_hour`` is the most any scope set saw in any variant; ``outage_recovery_seconds`` the
longest recovery. The back-off bounds them: 10 s doubling to a 150 s cap (``token_vending.cooldown.cool_down``),
so about 30 requests an hour and, in the worst phase, 150 s plus one caller interval. stderr shows when each
attempt came (simulated seconds into the hour) and what callers were answered.

Runs as a child interpreter (``python -m benchmarks.outage DYNAMODB_URL MOTO_URL``) because it patches
``time.time`` and the process environment, as the fleet tests do; it answers with one JSON line on stdout.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from benchmarks import REPO_ROOT
from benchmarks.infra import child_env, progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.infra import LoopbackAws
    from tests.support.fleet import FleetClock, Pool, ScriptedProvider

HOUR = 3600.0
CALLER_INTERVAL = 2.0
TOKEN_AGE = 800.0
RECOVERY_LIMIT = 900.0
"""Give up waiting for a fresh token after this many simulated seconds (the figure is then this, and fails)."""
VARIANTS = ("fail_503", "fail_503_retry_after_1000")
"""``tests.support.fleet.BEHAVIOURS`` the provider answers with during the hour."""
DEFAULT_SET = ""
SCOPE_SETS = (DEFAULT_SET, "billing:batches:read")
"""``""``: no ``scope`` parameter, the configured default set (every Pyng scope)."""
PROVIDER_ENVIRONMENTS = 3
API_ENVIRONMENTS = 2
CONTEXT_SECONDS = 25.0
"""A provider invocation's time budget (the template's Timeout)."""
DELIVERY_LATENCY = 0.5
"""Seconds between a renewal message's delay running out and its delivery to the function."""
CLIENT_ID = "bench-outage-client"
FUNCTION_NAME = "PyngFunction"


# -- parent ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OutageResult:
    attempts_per_hour: int
    recovery_seconds: float
    runs: list[dict[str, Any]]


def measure(aws: LoopbackAws) -> OutageResult:
    progress(f"outage: {len(VARIANTS)} simulated hour(s) of 503s ({', '.join(VARIANTS)}), callers every "
             f"{CALLER_INTERVAL:g} s per scope set, then recovery (in a child interpreter)")
    completed = subprocess.run([sys.executable, "-m", "benchmarks.outage", aws.dynamodb_url, aws.secrets_url],
                               env=child_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=None, text=True,
                               timeout=3600, check=False)
    if completed.returncode != 0 or not completed.stdout.strip():
        raise RuntimeError(f"outage child failed ({completed.returncode})")
    runs: list[dict[str, Any]] = json.loads(completed.stdout.strip().splitlines()[-1])
    for run in runs:
        for key, stats in run["scope_sets"].items():
            shown = key or "(default set)"
            progress(f"outage [{run['variant']}] {shown}: {stats['attempts']} token request(s) in the hour at "
                     f"{stats['attempt_times']} s; recovery {stats['recovery']:.1f} s (cool-down left at the "
                     f"switch: {stats['cool_down_left']:.0f} s)")
        progress(f"outage [{run['variant']}]: answers in the hour {run['answers']}; "
                 f"{run['renewals_delivered']} renewal timer(s) delivered; {run['real_seconds']:.0f} real seconds")
    attempts = max(stats["attempts"] for run in runs for stats in run["scope_sets"].values())
    recovery = max(stats["recovery"] for run in runs for stats in run["scope_sets"].values())
    return OutageResult(attempts_per_hour=attempts, recovery_seconds=recovery, runs=runs)


# -- child ----------------------------------------------------------------------------------------
class Fleet:
    """One deployment of Pyng's function and the token API on the fleet model, against a scripted provider."""

    def __init__(self, clock: FleetClock, aws: dict[str, Any]) -> None:
        from local.stack import deployed
        from tests.support.fleet import FakeLambdaClient, ScriptedProvider, Sink, api_pool, provider_pool
        from tests.support.harness import create_table
        from token_vending.catalogue import entry
        from token_vending.profile import ClientAuth

        self.clock = clock
        unique = uuid.uuid4().hex[:8]
        self.table = f"bench-outage-{unique}"
        create_table(aws["admin"], self.table)
        secret = f"s3cret-{uuid.uuid4().hex}"
        secret_id = f"token-vending/bench-outage-{unique}/pyng"
        aws["secretsmanager"].create_secret(Name=secret_id, SecretString=json.dumps(
            {"client_id": CLIENT_ID, "client_secret": secret}))
        self.server: ScriptedProvider = ScriptedProvider(clock, CLIENT_ID, secret)
        providers, api_env = deployed()
        env = {**api_env, **providers["pyng"].environment}
        env = {name: value for name, value in env.items() if not name.startswith("AWS_ENDPOINT_URL")}
        env.update({"TOKEN_URL": self.server.url, "SECRET_ID": secret_id, "CACHE_TABLE_NAME": self.table,
                    "TOKEN_VENDING_LOCAL_MODE": "true", "FUNCTION_Pyng": FUNCTION_NAME,
                    # never contacted: RenewalTimer.arm is replaced while the fleet runs (see arm_renewals)
                    "RENEWAL_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/bench-outage"})
        self._saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        pyng = entry("pyng")
        assert pyng is not None
        profile = dataclasses.replace(pyng, auth=ClientAuth.FORM_BODY)
        self.logs = Sink()
        self.providers: Pool = provider_pool(profile, prefix=f"outage-{unique}", dynamodb=aws["dynamodb"],
                                             secretsmanager=aws["secretsmanager"], sink=self.logs,
                                             initial=PROVIDER_ENVIRONMENTS)
        lambda_client = FakeLambdaClient(FUNCTION_NAME, self.providers, CONTEXT_SECONDS)
        self.apis: Pool = api_pool(prefix=f"outage-{unique}", dynamodb=aws["api_dynamodb"],
                                   lambda_client=lambda_client, sink=self.logs, initial=API_ENVIRONMENTS)
        self.interval = float(env.get("REFRESH_AHEAD_INTERVAL") or 300)
        self.renewals: list[tuple[float, str]] = []
        """(delivery instant, message body) of the armed renewal timers not delivered yet."""
        self._renewals_lock = threading.Lock()
        self._stop_recording = self._arm_renewals()

    def _arm_renewals(self) -> Callable[[], None]:
        """Record what the functions arm instead of sending it to SQS; returns what puts the original back."""
        from tests.support.fleet import record_renewals

        def arm(renewal: Any, now: float) -> None:
            with self._renewals_lock:
                self.renewals.append((now + renewal.delay(now) + DELIVERY_LATENCY, renewal.body()))

        return record_renewals(arm)

    def due_renewals(self, now: float) -> list[str]:
        with self._renewals_lock:
            due = [body for at, body in self.renewals if at <= now]
            self.renewals = [(at, body) for at, body in self.renewals if at > now]
        return due

    def close(self) -> None:
        self._stop_recording()
        self.server.stop()
        from tests.support.fleet import restore_environ

        restore_environ(self._saved)

    # -- calls: (status, token or None, Retry-After or None) ------------------------------------
    def api(self, hint: int, scope: str) -> tuple[int, str | None, str | None]:
        from tests.support.fleet import api_event

        with self.apis.environment(hint) as env:
            response = env.target.handle(api_event("pyng", {"scope": scope} if scope else None))
        status = int(response.get("statusCode", 0))
        body = json.loads(response.get("body") or "null")
        token = body.get("access_token") if status == 200 and isinstance(body, dict) else None
        return status, token, (response.get("headers") or {}).get("Retry-After")

    def direct(self, hint: int, scope: str) -> tuple[int, str | None, str | None]:
        from tests.support.fleet import FakeContext
        from token_vending.exceptions import TokenVendingError

        with self.providers.environment(hint) as env:
            try:
                result = env.target.handle({"scope": scope} if scope else {}, FakeContext(CONTEXT_SECONDS))
            except TokenVendingError as exc:
                retry_after = exc.body().get("retry_after")
                return exc.status, None, None if retry_after is None else str(retry_after)
        return 200, result.get("access_token"), None

    def schedule(self, hint: int) -> dict[str, Any]:
        from tests.support.fleet import FakeContext

        with self.providers.environment(hint) as env:
            summary: dict[str, Any] = env.target.handle({"refresh_ahead": True}, FakeContext(CONTEXT_SECONDS))
        return summary

    def cool_down_left(self, dynamodb: Any, key: str) -> float:
        """Seconds left of the scope set's cool-down (the lease item a failed refresh keeps), 0 if none."""
        item = dynamodb.get_item(TableName=self.table, Key={"pk": {"S": "pyng"}, "sk": {"S": f"lease#{key}"}},
                                 ConsistentRead=True).get("Item") or {}
        until = float(item.get("lease_expires_at", {}).get("N", 0))
        return max(0.0, until - self.clock.now()) if "failure" in item else 0.0

    def deliver(self, hint: int, body: str) -> dict[str, Any]:
        """One renewal message, as the SQS event source mapping delivers it."""
        from tests.support.fleet import FakeContext, sqs_event

        with self.providers.environment(hint) as env:
            result: dict[str, Any] = env.target.handle(sqs_event([body], "bench-outage"), FakeContext(CONTEXT_SECONDS))
        return result

    def issued_after(self, token: str | None, instant: float) -> bool:
        issued = self.server.issued.get(token or "")
        return issued is not None and issued.issued_at >= instant


def scenario(clock: FleetClock, aws: dict[str, Any], variant: str) -> dict[str, Any]:
    from tests.support.fleet import BEHAVIOURS

    started_real = time.monotonic()
    fleet = Fleet(clock, aws)
    answers: collections.Counter[str] = collections.Counter()
    try:
        with ThreadPoolExecutor(max_workers=2 * len(SCOPE_SETS) + 1) as pool:
            for scope in SCOPE_SETS:  # step 1: a token per scope set, then the clock moves on
                status, token, _ = fleet.api(0, scope)
                if status != 200 or token is None:
                    raise RuntimeError(f"priming the {scope or 'default'} scope set failed: {status}")
            clock.advance(TOKEN_AGE)
            fleet.server.behaviour = BEHAVIOURS[variant]
            start = clock.now()
            attempt_times: dict[str, list[float]] = {_key(scope): [] for scope in SCOPE_SETS}
            renewals_delivered = [0]
            step = 0

            def tick(until: float, on_answer: Any) -> float:
                """One caller interval: move the clock to the step's instant, run its calls, note new attempts."""
                nonlocal step
                at = start + step * CALLER_INTERVAL
                clock.advance(max(0.0, at - clock.now()))
                mark = fleet.server.mark()
                calls: list[Future[Any]] = []
                for index, scope in enumerate(SCOPE_SETS):
                    calls.append(pool.submit(fleet.api, step + index, scope))
                    calls.append(pool.submit(fleet.direct, step + index, scope))
                if (step * CALLER_INTERVAL) % fleet.interval < CALLER_INTERVAL / 2:
                    calls.append(pool.submit(fleet.schedule, step))
                for body in fleet.due_renewals(clock.now()):
                    calls.append(pool.submit(fleet.deliver, step, body))
                    renewals_delivered[0] += 1
                results = [call.result(timeout=120) for call in calls]
                fleet.server.wait_idle(timeout=10)
                for key, count in fleet.server.request_count(since=mark).items():
                    attempt_times.setdefault(key, []).extend([round(at - start, 1)] * count)
                for index, scope in enumerate(SCOPE_SETS):
                    for result in results[2 * index:2 * index + 2]:
                        on_answer(scope, result)
                step += 1
                return at - until

            def note(scope: str, result: tuple[int, str | None, str | None]) -> None:
                status, _, retry_after = result
                answers[f"{status}" + ("" if status == 200 or retry_after else " without Retry-After")] += 1

            mark = fleet.server.mark()  # step 2: the hour of 503s
            while tick(start + HOUR, note) < -CALLER_INTERVAL / 2:
                pass
            counts = fleet.server.request_count(since=mark)
            in_hour = {key: [t for t in times if t < HOUR] for key, times in attempt_times.items()}
            fleet.server.behaviour = BEHAVIOURS["normal"]  # step 3: back at the end of the hour
            back = clock.now()
            left = {scope: fleet.cool_down_left(aws["dynamodb"], _key(scope)) for scope in SCOPE_SETS}
            recovered: dict[str, float] = {}

            def fresh(scope: str, result: tuple[int, str | None, str | None]) -> None:
                if scope not in recovered and result[0] == 200 and fleet.issued_after(result[1], back):
                    recovered[scope] = clock.now() - back

            while len(recovered) < len(SCOPE_SETS) and clock.now() - back < RECOVERY_LIMIT:
                tick(back, fresh)
    finally:
        fleet.close()
    scope_sets = {}
    for scope in SCOPE_SETS:
        key = _key(scope)
        scope_sets[scope] = {"attempts": counts.get(key, 0), "attempt_times": in_hour.get(key, []),
                             "recovery": recovered.get(scope, RECOVERY_LIMIT), "cool_down_left": left[scope]}
    return {"variant": variant, "scope_sets": scope_sets, "answers": dict(answers),
            "renewals_delivered": renewals_delivered[0], "real_seconds": time.monotonic() - started_real}


def _key(scope: str) -> str:
    """The cache key of a caller's scope set: the default set is every configured scope, sorted."""
    from local.stack import PYNG_SCOPES

    return " ".join(sorted(set((scope or PYNG_SCOPES).split())))


def child(dynamodb_url: str, moto_url: str) -> list[dict[str, Any]]:
    import boto3

    from tests.support.fleet import FleetClock
    from token_vending.clients import API_DYNAMODB_CONFIG, DYNAMODB_CONFIG, SECRETS_CONFIG

    credentials: dict[str, Any] = {"region_name": "us-east-1", "aws_access_key_id": "testing",
                                   "aws_secret_access_key": "testing"}
    aws = {
        # Creating a table can outlast the functions' 2 s read timeout on a busy machine (a retry then fails).
        "admin": boto3.client("dynamodb", endpoint_url=dynamodb_url, **credentials),
        "dynamodb": boto3.client("dynamodb", endpoint_url=dynamodb_url, config=DYNAMODB_CONFIG, **credentials),
        "api_dynamodb": boto3.client("dynamodb", endpoint_url=dynamodb_url, config=API_DYNAMODB_CONFIG,
                                     **credentials),
        "secretsmanager": boto3.client("secretsmanager", endpoint_url=moto_url, config=SECRETS_CONFIG,
                                       **credentials),
    }
    clock = FleetClock()
    time.time = clock.now  # every layer module reads the wall clock through time.time
    results = []
    for variant in VARIANTS:
        result = scenario(clock, aws, variant)
        progress(f"outage [{variant}]: done in {result['real_seconds']:.0f} real seconds")
        results.append(result)
    return results


def main(argv: list[str]) -> int:
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the fleet prints goes to stderr
    sys.stdout = sys.stderr
    answer.write(json.dumps(child(argv[0], argv[1])) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
