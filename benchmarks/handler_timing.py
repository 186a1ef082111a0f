"""``hit_vs_getitem_ratio`` and ``warm_hit_ms``: the Pyng handler timed in-process.

The parent (:func:`measure`) prepares a fresh table with a seeded token and runs this module as a
child interpreter (``python -m benchmarks.handler_timing MODE ROUNDS WARMUP``) with the environment a
Pyng execution environment gets from the local stack. The child loads ``functions/provider/app.py (as Pyng)`` by
path, as the Lambda runtime does, and calls ``handler(event, context)`` directly: no worker protocol,
no HTTP in front. What the handler writes to stdout (Powertools' JSON logs and EMF metrics, which
Lambda ships to CloudWatch) goes to a line-buffered file, so that cost is in the measurement; the EMF
documents are then read back to check which path every measured call took. The child answers with
one JSON line on its original stdout.

Modes:

* ``dynamodb``: ``MEMORY_CACHE_SECONDS=0``, so every call is served by a DynamoDB ``GetItem``
  (``CacheHitDynamoDB``). Alternated round by round (AB, BA, AB, ...) with one bare ``GetItem`` of
  the same item through a separate boto3 client built with the functions' own ``DYNAMODB_CONFIG``
  and endpoint, so both sides see the same DynamoDB Local at the same moments.
* ``memory``: the memory cache as configured by default, so calls after the first are
  ``CacheHitMemory``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from benchmarks import PYNG_APP, REPO_ROOT
from benchmarks.infra import (
    PYNG_SCOPE_KEY,
    child_env,
    emf_invocations,
    median,
    progress,
    pyng_emulator,
    pyng_spec,
    seed_token,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.infra import LoopbackAws


# -- parent ---------------------------------------------------------------------------------------
def measure(aws: LoopbackAws, mode: str, *, rounds: int, warmup: int) -> dict[str, Any]:
    with pyng_emulator() as emulator:
        stack = aws.stack(emulator)
        try:
            seed_token(stack)
            spec = pyng_spec(stack)
            env = child_env({**spec.environment, "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                             "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                             "LOCAL_FUNCTION_TIMEOUT": str(spec.timeout)})
            if mode == "dynamodb":
                env["MEMORY_CACHE_SECONDS"] = "0"
            else:
                env.pop("MEMORY_CACHE_SECONDS", None)  # the shipped default
            progress(f"handler ({mode}): {warmup} warm-up and {rounds} measured rounds in a child interpreter")
            completed = subprocess.run(
                [sys.executable, "-m", "benchmarks.handler_timing", mode, str(rounds), str(warmup)],
                env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
            if completed.returncode != 0 or not completed.stdout.strip():
                raise RuntimeError(f"handler timing child failed ({completed.returncode}): "
                                   f"{completed.stderr[-2000:]}")
            result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
            if emulator.token_requests:
                raise RuntimeError(f"the {mode} hit benchmark called the provider {emulator.token_requests} time(s)")
        finally:
            stack.stop()
    return result


# -- child ----------------------------------------------------------------------------------------
def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - started) / 1e6


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def child(mode: str, rounds: int, warmup: int) -> dict[str, Any]:
    from local.worker import LocalContext, load_handler

    handler = load_handler(str(PYNG_APP))
    timeout = float(os.environ.get("LOCAL_FUNCTION_TIMEOUT", "25"))

    def timed_invoke() -> float:
        context = LocalContext(function_name=os.environ["AWS_LAMBDA_FUNCTION_NAME"], memory_limit_in_mb=256,
                               timeout_seconds=timeout)
        context._deadline = time.monotonic() + timeout
        started = time.perf_counter_ns()
        body = handler({"scope": PYNG_SCOPE_KEY}, context)  # the seeded scope set (no scope is the "" key)
        elapsed = (time.perf_counter_ns() - started) / 1e6
        if not body.get("access_token"):
            raise RuntimeError("the handler returned no token")
        return elapsed

    result: dict[str, Any] = {"mode": mode}
    if mode == "dynamodb":
        import boto3

        from token_vending.clients import DYNAMODB_CONFIG

        # Same configuration and endpoint (AWS_ENDPOINT_URL_DYNAMODB) as the function's own client.
        client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
        table = os.environ["CACHE_TABLE_NAME"]
        key = {"pk": {"S": "pyng"}, "sk": {"S": f"token#{PYNG_SCOPE_KEY}"}}

        def get_item() -> None:
            if "Item" not in client.get_item(TableName=table, Key=key, ConsistentRead=False):
                raise RuntimeError("the seeded item is missing")

        for _ in range(warmup):
            timed_invoke()
            get_item()
        handler_ms: list[float] = []
        getitem_ms: list[float] = []
        for index in range(rounds):
            if index % 2 == 0:
                handler_ms.append(timed_invoke())
                getitem_ms.append(_timed(get_item))
            else:
                getitem_ms.append(_timed(get_item))
                handler_ms.append(timed_invoke())
        result["getitem_ms"] = median(getitem_ms)
        result["overhead_ms"] = median(h - g for h, g in zip(handler_ms, getitem_ms, strict=True))
        result["getitem_p90_ms"] = _percentile(getitem_ms, 0.9)
    else:
        for _ in range(warmup):
            timed_invoke()
        handler_ms = [timed_invoke() for _ in range(rounds)]
    result["handler_ms"] = median(handler_ms)
    result["handler_p90_ms"] = _percentile(handler_ms, 0.9)
    return result


def main(argv: list[str]) -> int:
    mode, rounds, warmup = argv[0], int(argv[1]), int(argv[2])
    if mode not in ("dynamodb", "memory"):
        raise SystemExit(f"unknown mode {mode}")
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    with tempfile.TemporaryDirectory(prefix="bench-handler-") as folder:
        log_path = os.path.join(folder, "handler-stdout.log")
        with open(log_path, "w", buffering=1) as handler_stdout:
            os.dup2(handler_stdout.fileno(), 1)
            sys.stdout = handler_stdout
            result = child(mode, rounds, warmup)
            sys.stdout = sys.__stdout__
        with open(log_path) as logged:
            documents = emf_invocations(logged)
    measured = documents[-rounds:]
    result["measured_paths"] = {name: sum(1 for document in measured if name in document)
                                for name in ("CacheHitMemory", "CacheHitDynamoDB", "CacheMiss")}
    answer.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
