"""``upstream_calls_20_cold`` and its peer ``upstream_calls_20_cold_per_process_cache``."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from benchmarks import REPO_ROOT
from benchmarks.infra import (
    PYNG_SCOPE_KEY,
    LogCapture,
    child_env,
    count_with,
    emf_invocations,
    progress,
    pyng_emulator,
    pyng_spec,
)
from local.lambda_service import Worker
from local.providers import LOCAL_CREDENTIALS

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.infra import LoopbackAws

ENVIRONMENTS = 20
RELEASE_TIMEOUT = 120.0
PRIME_EVENT = {"min_ttl": -1}
"""Refused by request validation (a ``min_ttl`` out of range) after the environment has built its vendor and
before any DynamoDB, Secrets Manager or provider call (a scope the connection does not allow would be refused only
after the cache and the secret were read)."""


def _release_together(count: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in ``count`` threads that all pass one barrier first, so the actions start
    within a millisecond or so of each other."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = action(index)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RELEASE_TIMEOUT)
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError("released actions did not finish in time")
    return results


def upstream_calls_cold(aws: LoopbackAws, environments: int = ENVIRONMENTS) -> int:
    """Token requests the Pyng emulator receives when ``environments`` separate execution environments
    (worker processes running ``functions/provider/app.py (as Pyng)``) miss the same key at the same moment."""
    logs = LogCapture()
    with pyng_emulator() as emulator:
        stack = aws.stack(emulator)
        workers: list[Worker] = []
        try:
            spec = pyng_spec(stack)
            progress(f"cold: starting {environments} Pyng execution environments (worker processes)")
            with ThreadPoolExecutor(max_workers=environments) as pool:
                futures = [pool.submit(Worker, spec, logs) for _ in range(environments)]
            startup_error: BaseException | None = None
            for future in futures:
                if future.exception() is None:
                    workers.append(future.result())
                else:
                    startup_error = startup_error or future.exception()
            if startup_error is not None:
                raise startup_error  # the started ones are stopped below
            for worker in workers:
                reply = worker.invoke(PRIME_EVENT, str(uuid.uuid4()))
                if reply.get("error", {}).get("errorType") != "InvalidRequest":
                    raise RuntimeError(f"priming invocation did not fail validation as expected: {reply}")
            before = emulator.token_requests
            progress(f"cold: releasing {environments} invocations at once (empty table, fresh emulator)")
            replies = _release_together(environments,
                                        lambda index: workers[index].invoke({}, str(uuid.uuid4())))
            calls = emulator.token_requests - before
        finally:
            for worker in workers:
                worker.stop()
            stack.stop()
    failures = [reply if isinstance(reply, Exception) else reply.get("error", {}).get("errorType")
                for reply in replies if isinstance(reply, Exception) or "error" in reply]
    tokens = {reply["result"]["access_token"] for reply in replies
              if isinstance(reply, dict) and isinstance(reply.get("result"), dict)}
    documents = emf_invocations(logs.lines())
    misses = count_with(documents, "CacheMiss")
    progress(f"cold: {calls} upstream call(s); {misses} environment(s) missed the cache, "
             f"{count_with(documents, 'LeaseWait')} waited on the lease, {len(tokens)} distinct token(s) "
             f"served, {len(failures)} failure(s) {failures or ''}")
    if misses < environments:
        progress(f"cold: WARNING only {misses} of {environments} misses coincided (the rest found the token)")
    if failures:
        raise RuntimeError(f"{len(failures)} cold invocation(s) failed: {failures}")
    return calls


def upstream_calls_cold_per_process_cache(environments: int = ENVIRONMENTS) -> int:
    """The same shape with the peer: ``environments`` processes, each with its own memoising client."""
    client_id, client_secret = LOCAL_CREDENTIALS["pyng"]
    with pyng_emulator() as emulator:
        env = child_env({"PEER_TOKEN_URL": emulator.url, "PEER_CLIENT_ID": client_id,
                         "PEER_CLIENT_SECRET": client_secret, "PEER_SCOPE": PYNG_SCOPE_KEY})
        progress(f"cold peer: starting {environments} processes with a per-process token cache")
        processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.peer"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT, text=True, bufsize=1)
                     for _ in range(environments)]
        try:
            for process in processes:
                if process.stdout is None or process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a peer process did not start")

            def go(index: int) -> str:
                process = processes[index]
                assert process.stdin is not None
                assert process.stdout is not None
                process.stdin.write("go\n")
                process.stdin.flush()
                return process.stdout.readline().strip()

            answers = _release_together(environments, go)
            calls = emulator.token_requests
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)
    bad = [answer for answer in answers if answer != "done"]
    progress(f"cold peer: {calls} upstream call(s) from {environments} processes, {len(bad)} failure(s)")
    if bad:
        raise RuntimeError(f"{len(bad)} peer process(es) failed: {bad}")
    return calls
