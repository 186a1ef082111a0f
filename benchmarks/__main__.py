"""Benchmarks of the token vending service: ``make bench`` (``.venv/bin/python -m benchmarks``).

Everything runs on 127.0.0.1 and is started fresh by this run: DynamoDB Local (AWS's own emulator,
from ``node_modules``), a moto server for Secrets Manager, the loopback Pyng emulator
(``local.providers``, a fresh one per scenario) and, where a figure needs it, the local stack
(``local.stack``) whose execution environments are separate worker processes
(``local.lambda_service``), each scenario with its own table. The figures are measured one after
another in this one run and printed to stdout at the end, one ``name: value`` line each, in the
order below; progress and diagnostics go to stderr. A figure that could not be measured prints
``nan`` (the reason is on stderr, and the exit status is 1). ``--only NAME`` measures a subset.

``upstream_calls_20_cold``
    Token requests the Pyng emulator receives when 20 separate execution environments (20 worker
    processes, each with its own memory, running ``functions/provider/app.py (as Pyng)``'s handler) miss the same
    key at the same moment, with an empty table. Each environment is initialised (module imported,
    as in Lambda's init phase) and primed with one invocation that request validation refuses
    before any AWS or provider call, so the measured invocations do not drift apart on first-call
    imports; then a barrier releases the 20 measured invocations together. stderr shows how many
    environments really missed (20 when the misses coincided) and how many waited on the lease.

``upstream_calls_20_cold_per_process_cache``
    The peer in the same shape: 20 processes released together, each with a plain per-process
    token cache (``benchmarks.peer``: fetch with ``requests`` and memoise, what requests-auth or
    Authlib's client give), sending Pyng's request (Basic auth, form body, same scope) to a fresh
    emulator.

``hit_vs_getitem_ratio``
    Median time of the Pyng handler serving a DynamoDB hit, called in-process (memory cache off:
    ``MEMORY_CACHE_SECONDS=0``; token pre-seeded in DynamoDB Local), divided by the median time of
    one bare boto3 ``GetItem`` of the same item through a client with the same configuration and
    endpoint. 300 rounds after 1000 warm-up rounds (DynamoDB Local is a JVM and needs them),
    alternating which side goes first. The handler time is everything the handler does:
    Powertools' context injection and tracer decorator (tracing disabled, as outside Lambda),
    request parsing, the ``GetItem``, its JSON log line and EMF metrics (written to a file). See
    ``benchmarks.handler_timing``.

``warm_hit_ms``
    Median time, in milliseconds, of the same in-process handler serving an in-memory hit (memory
    cache at its shipped default of 5 s), 1000 calls after 50 warm-up calls.

``import_vs_boto3_ratio``
    Median cold import time of ``functions/provider/app.py (as Pyng)`` (everything its module body does: boto3,
    Powertools with tracing active as the template's ``Tracing: Active`` gives, the layer modules,
    and creating its two boto3 clients) divided by the median cold time of ``import boto3`` alone
    (no client). Each sample is a fresh interpreter with a deployed function's environment; 15 per
    side, alternating, after one warm-up each. See ``benchmarks.imports``.

``waiting_share_steady_state``
    Share of caller requests (``GET /token/pyng?min_ttl=1`` through the local API) that waited on
    the provider, i.e. whose Pyng invocation missed the cache or blocked on the lease (read from
    that invocation's EMF metrics), over 30 s of steady traffic from 4 callers with 30 s tokens
    (refresh margin 3 s), while a scheduler invokes Pyng with ``{"refresh_ahead": true}`` every
    ``REFRESH_AHEAD_INTERVAL`` = 3 s. ``nan`` if the product code does not know that payload. See
    ``benchmarks.steady``.

``waiting_share_no_refresh_ahead``
    The same run without the scheduler: callers find the token inside its refresh margin, one of
    them refreshes it and the others in flight wait for it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING

from benchmarks.infra import progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.infra import LoopbackAws

HIT_WARMUP = 1000
"""Warm-up rounds before hit_vs_getitem_ratio: DynamoDB Local is a JVM; its GetItem latency keeps
falling (from ~7 ms to ~2 ms on 2 cores) for the first ~1000 requests."""

FIGURES = (
    "upstream_calls_20_cold",
    "upstream_calls_20_cold_per_process_cache",
    "hit_vs_getitem_ratio",
    "warm_hit_ms",
    "import_vs_boto3_ratio",
    "waiting_share_steady_state",
    "waiting_share_no_refresh_ahead",
)


def _format(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if name.startswith("upstream_calls"):
        return str(int(value))
    if name.startswith("waiting_share"):
        return f"{value:.4f}"
    return f"{value:.3f}"


class Run:
    def __init__(self, selected: set[str]) -> None:
        self.selected = selected
        self.values: dict[str, float | None] = {}
        self.failed: list[str] = []
        self._aws: LoopbackAws | None = None

    def wants(self, *names: str) -> bool:
        return any(name in self.selected for name in names)

    def aws(self) -> LoopbackAws:
        if self._aws is None:
            from benchmarks.infra import LoopbackAws

            self._aws = LoopbackAws.start()
        return self._aws

    def measure(self, names: tuple[str, ...], action: Callable[[], tuple[float | None, ...]]) -> None:
        if not self.wants(*names):
            return
        started = time.monotonic()
        try:
            values = action()
        except Exception:  # noqa: BLE001 - one broken figure must not hide the others
            progress(f"{', '.join(names)}: FAILED\n{traceback.format_exc()}")
            self.failed.extend(names)
            values = (None,) * len(names)
        for name, value in zip(names, values, strict=True):
            self.values[name] = value
        progress(f"{', '.join(names)}: done in {time.monotonic() - started:.1f} s")

    def close(self) -> None:
        if self._aws is not None:
            self._aws.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=FIGURES, help="measure only this figure (repeatable)")
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="length of each steady-state run")
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds of hit_vs_getitem_ratio")
    args = parser.parse_args(argv)

    # Figures only on stdout: anything else that writes to fd 1 (libraries, children) lands on stderr.
    figures_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Loopback only, never through a proxy; dummy credentials for every AWS client.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)

    from benchmarks import cold, handler_timing, imports, steady

    run = Run(set(args.only or FIGURES))
    started = time.monotonic()
    skipped: list[str] = []
    try:
        # On a quiet machine first: nothing else is running yet.
        def import_ratio() -> tuple[float]:
            ratio, provider_s, boto3_s = imports.import_ratio(os.environ)
            progress(f"imports: functions/provider/app.py (as Pyng) {provider_s * 1000:.0f} ms, "
                     f"import boto3 {boto3_s * 1000:.0f} ms (medians)")
            return (ratio,)

        run.measure(("import_vs_boto3_ratio",), import_ratio)
        run.measure(("upstream_calls_20_cold",), lambda: (cold.upstream_calls_cold(run.aws()),))
        run.measure(("upstream_calls_20_cold_per_process_cache",),
                    lambda: (cold.upstream_calls_cold_per_process_cache(),))

        def hit_ratio() -> tuple[float]:
            result = handler_timing.measure(run.aws(), "dynamodb", rounds=args.rounds, warmup=HIT_WARMUP)
            progress(f"hit: handler {result['handler_ms']:.3f} ms (p90 {result['handler_p90_ms']:.3f}), "
                     f"GetItem {result['getitem_ms']:.3f} ms (p90 {result['getitem_p90_ms']:.3f}), "
                     f"median paired difference {result['overhead_ms']:.3f} ms; "
                     f"paths {result['measured_paths']}")
            if result["measured_paths"]["CacheHitDynamoDB"] != args.rounds:
                raise RuntimeError(f"not every measured call was a DynamoDB hit: {result['measured_paths']}")
            return (result["handler_ms"] / result["getitem_ms"],)

        def warm_hit() -> tuple[float]:
            result = handler_timing.measure(run.aws(), "memory", rounds=1000, warmup=50)
            progress(f"warm hit: handler {result['handler_ms']:.4f} ms (p90 {result['handler_p90_ms']:.4f}); "
                     f"paths {result['measured_paths']}")
            return (result["handler_ms"],)

        run.measure(("hit_vs_getitem_ratio",), hit_ratio)
        run.measure(("warm_hit_ms",), warm_hit)

        def with_refresh_ahead() -> tuple[float | None]:
            if not steady.refresh_ahead_available():
                progress("waiting_share_steady_state: the product code does not handle {\"refresh_ahead\": true} "
                         "yet (no 'refresh_ahead' in layers/token_vending/token_vending/*.py or "
                         "functions/provider/app.py (as Pyng)); not measured")
                skipped.append("waiting_share_steady_state")
                return (None,)
            result = steady.waiting_share(run.aws(), refresh_ahead=True, duration=args.steady_seconds)
            if result.scheduler_errors or result.scheduler_served_a_token:
                progress(f"waiting_share_steady_state: WARNING {sum(result.scheduler_errors.values())} "
                         f"refresh-ahead invocation(s) failed {dict(result.scheduler_errors)} and "
                         f"{result.scheduler_served_a_token} were served as ordinary token requests")
            return (result.share,)

        run.measure(("waiting_share_steady_state",), with_refresh_ahead)
        run.measure(("waiting_share_no_refresh_ahead",),
                    lambda: (steady.waiting_share(run.aws(), refresh_ahead=False,
                                                  duration=args.steady_seconds).share,))
    finally:
        run.close()
        for name in FIGURES:
            if name in run.values:
                figures_out.write(f"{name}: {_format(name, run.values[name])}\n")
        figures_out.flush()
        progress(f"total {time.monotonic() - started:.1f} s"
                 + (f"; failed: {', '.join(run.failed)}" if run.failed else "")
                 + (f"; not measured: {', '.join(skipped)}" if skipped else ""))
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
