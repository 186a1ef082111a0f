"""``waiting_share_steady_state`` (refresh-ahead on) and ``waiting_share_no_refresh_ahead`` (off).

One run shape, measured twice: the whole local service (API Gateway emulation, the token API and
Pyng functions in worker processes, DynamoDB Local, moto's Secrets Manager) with the Pyng emulator
handing out short tokens (``expires_in=30``, the shortest the service accepts; refresh margin
``max(2 s, 10 %)`` = 3 s, so without refresh-ahead a caller meets the margin inside the 30 s run). A first request
caches a token (not counted); then ``CALLERS`` threads call ``GET /token/pyng?min_ttl=1`` back to back
for ``duration`` seconds. With refresh-ahead on, as deployed: each new token arms its renewal on Pyng's SQS
renewal queue (moto; the stack's event source mapping invokes the Pyng function when it is due, 10 s before
the margin), and a scheduler thread also invokes a separate Pyng execution environment with
``{"refresh_ahead": true}`` every ``REFRESH_AHEAD_INTERVAL`` (3 s), at a fixed rate as an EventBridge
``rate()`` schedule would (the safety net; stderr shows how many renewals each made).

A caller request *waited on the provider* when the Pyng function invocation it caused (through the
token API's ``lambda:Invoke``) missed the cache and refreshed or blocked on the lease: Powertools' EMF
document of that invocation carries ``CacheMiss`` (and ``LeaseWait`` when blocked). The token API
and Pyng functions write their logs to one captured stream; the scheduler's environment writes to a
separate one, so its own refreshes are never counted. Requests the token API answered itself, and
delegated requests the Pyng function answered from DynamoDB, did not wait. The share is waiting
caller requests / all caller requests.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from benchmarks import LAYER_DIR, PYNG_APP
from benchmarks.infra import (
    PYNG_FUNCTION,
    LogCapture,
    count_with,
    emf_invocations,
    progress,
    pyng_emulator,
    pyng_spec,
)
from local.lambda_service import Worker
from local.stack import API_FUNCTION
from tests.support.signing import SigV4

if TYPE_CHECKING:
    from benchmarks.infra import LoopbackAws

TOKEN_SECONDS = 30
REFRESH_AHEAD_INTERVAL = 3.0
CALLERS = 4
FUNCTION_ENV = {
    "REFRESH_MARGIN_SECONDS": "2",
    "REFRESH_MARGIN_RATIO": "0.1",
    "REFRESH_AHEAD_INTERVAL": f"{REFRESH_AHEAD_INTERVAL:g}",
}
REFRESH_AHEAD_PAYLOAD = {"refresh_ahead": True}


def refresh_ahead_available() -> bool:
    """Whether the product code knows the ``refresh_ahead`` payload yet (a source check, as a human
    would grep); the run also checks what the scheduled invocations actually answer."""
    sources = [*sorted((LAYER_DIR / "token_vending").glob("*.py")), PYNG_APP]
    return any("refresh_ahead" in path.read_text(encoding="utf-8") for path in sources)


@dataclass
class SteadyResult:
    requests: int = 0
    waited: int = 0
    lease_waits: int = 0
    delegated: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    upstream_calls: int = 0
    scheduler_runs: int = 0
    scheduler_renewals: int = 0
    scheduler_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    scheduler_served_a_token: int = 0

    @property
    def share(self) -> float:
        return self.waited / self.requests if self.requests else float("nan")

    def describe(self) -> str:
        text = (f"{self.requests} caller requests, {self.waited} waited on the provider "
                f"({self.lease_waits} on the lease), {self.delegated} delegated to the Pyng function, "
                f"statuses {dict(self.statuses)}, "
                f"{self.upstream_calls} upstream call(s) in the window")
        if self.scheduler_runs:
            text += (f"; scheduler: {self.scheduler_runs} run(s), {self.scheduler_renewals} renewal(s), "
                     f"errors {dict(self.scheduler_errors)}")
        return text


def _await_pyng_miss(logs: LogCapture, timeout: float = 10.0) -> None:
    """Wait until the priming request's Pyng invocation has reached the captured log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_with(emf_invocations(logs.lines()), "CacheMiss"):
            return
        time.sleep(0.05)
    raise RuntimeError("the priming request's Pyng invocation never logged its cache miss")


def waiting_share(aws: LoopbackAws, *, refresh_ahead: bool, duration: float) -> SteadyResult:
    label = "steady (refresh-ahead)" if refresh_ahead else "steady (no refresh-ahead)"
    logs = LogCapture()
    scheduler_logs = LogCapture()
    result = SteadyResult()
    with pyng_emulator(expires_in=TOKEN_SECONDS) as emulator:
        # Refresh ahead as deployed: the per-token renewal timers and the schedule; without it, neither.
        stack = aws.stack(emulator, function_env=FUNCTION_ENV, log_stream=logs, max_concurrency=CALLERS,
                          renewals=refresh_ahead)
        scheduler: Worker | None = None
        try:
            assert stack.lambdas is not None
            progress(f"{label}: warming {CALLERS} token API and {CALLERS} Pyng execution environments")
            stack.lambdas.warm(API_FUNCTION, CALLERS)
            stack.lambdas.warm(PYNG_FUNCTION, CALLERS)
            if refresh_ahead:
                scheduler = Worker(pyng_spec(stack), scheduler_logs)
            url = f"{stack.api_url}pyng"
            params = {"min_ttl": "1"}
            first = requests.get(url, params=params, auth=SigV4(), timeout=30)
            if first.status_code != 200:
                raise RuntimeError(f"priming request failed: {first.status_code} {first.text[:300]}")
            _await_pyng_miss(logs)
            mark = logs.count()
            upstream_before = emulator.token_requests
            stop = threading.Event()
            lock = threading.Lock()
            replies: list[dict[str, Any]] = []

            def schedule(worker: Worker) -> None:
                started = time.monotonic()
                runs = 0
                while not stop.is_set():
                    try:
                        reply = worker.invoke(REFRESH_AHEAD_PAYLOAD, str(uuid.uuid4()))
                    except Exception as exc:  # noqa: BLE001 - counted as a failed run, the schedule goes on
                        reply = {"error": {"errorType": type(exc).__name__}}
                    replies.append(reply)
                    runs += 1
                    stop.wait(max(0.0, started + runs * REFRESH_AHEAD_INTERVAL - time.monotonic()))

            def call(end: float) -> None:
                statuses: collections.Counter[int] = collections.Counter()
                with requests.Session() as session:
                    session.auth = SigV4()
                    while time.monotonic() < end:
                        try:
                            statuses[session.get(url, params=params, timeout=30).status_code] += 1
                        except requests.RequestException:
                            statuses[0] += 1  # no HTTP answer at all; shows up in the statuses line
                with lock:
                    result.statuses.update(statuses)

            progress(f"{label}: {CALLERS} callers for {duration:g} s")
            end = time.monotonic() + duration
            threads = [threading.Thread(target=call, args=(end,), daemon=True) for _ in range(CALLERS)]
            if scheduler is not None:
                threads.append(threading.Thread(target=schedule, args=(scheduler,), daemon=True))
            for thread in threads:
                thread.start()
            for thread in threads[:CALLERS]:
                thread.join(duration + 60)
            stop.set()
            for thread in threads[CALLERS:]:
                thread.join(60)
            result.upstream_calls = emulator.token_requests - upstream_before
            time.sleep(1.0)  # the last log lines cross the workers' stderr pipes
            documents = emf_invocations(logs.lines()[mark:])
        finally:
            if scheduler is not None:
                scheduler.stop()
            stack.stop()
    result.requests = sum(result.statuses.values())
    result.waited = count_with(documents, "CacheMiss", "LeaseWait")
    result.lease_waits = count_with(documents, "LeaseWait")
    result.delegated = count_with(documents, "ProviderInvoke")
    result.scheduler_runs = len(replies)
    result.scheduler_renewals = count_with(emf_invocations(scheduler_logs.lines()), "UpstreamRequest")
    for reply in replies:
        answer = reply.get("result")
        if "error" in reply:
            result.scheduler_errors[str(reply["error"].get("errorType"))] += 1
        elif isinstance(answer, dict) and "access_token" in answer:
            result.scheduler_served_a_token += 1
        elif isinstance(answer, dict) and isinstance(answer.get("failed"), int) and answer["failed"] > 0:
            result.scheduler_errors["failed renewals"] += answer["failed"]
    progress(f"{label}: {result.describe()}")
    unanswered = {status: count for status, count in result.statuses.items() if status != 200}
    if unanswered:
        progress(f"{label}: WARNING {sum(unanswered.values())} caller request(s) got no token: {unanswered}")
    return result
