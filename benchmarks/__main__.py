"""Benchmarks of the token vending service: ``make bench`` (``.venv/bin/python -m benchmarks``).

Everything runs on 127.0.0.1 and is started fresh by this run: DynamoDB Local (AWS's own emulator,
from ``node_modules``), a moto server for Secrets Manager, the loopback Pyng emulator
(``local.providers``, a fresh one per scenario) and, where a figure needs it, the local stack
(``local.stack``) whose execution environments are separate worker processes
(``local.lambda_service``), each scenario with its own table. The figures are measured one after
another in this one run and printed to stdout at the end, one ``name: value`` line each, in the
order below (the order of the ``run.measure`` calls in :func:`plan`); progress and diagnostics go to
stderr. A figure that could not be measured prints ``nan`` (the reason is on stderr, and the exit
status is 1). ``--only NAME`` measures a subset (with the figures measured alongside it).

``cold_start_api_ms``, ``cold_start_provider_ms``, ``cold_start_baseline_ms``, ``cold_start_ratio``
    Init plus the first answer, in milliseconds (medians), of the token API function
    (``functions/token_api/app.py``, API Gateway proxy event ``events/api-pyng.json``: ``GET /token/pyng``)
    and of Pyng's provider function (``functions/provider/app.py`` with ``CONNECTION_NAME=pyng``, direct
    invocation ``events/invoke-pyng.json``), each first answer a DynamoDB hit (token pre-seeded in DynamoDB
    Local), each sample a fresh interpreter with the function's deployed environment (the template's variables
    from ``local.stack.deployed()``, the runtime's, tracing active as ``Tracing: Active`` gives: a sampled
    trace header, the X-Ray daemon address; the functions make Powertools' Tracer on their first miss, so a
    hit imports no X-Ray SDK); and of a baseline handler that makes one boto3 DynamoDB client (same
    configuration and endpoint) and does the same ``GetItem``. Interpreter start-up excluded. 25 samples per
    side (with fewer, one noisy spell on 2 shared cores moves the medians) after one warm-up each, in rotating
    order. ``cold_start_ratio`` is the worse
    of api / baseline and provider / baseline. See ``benchmarks.cold_start``.

``upstream_calls_20_cold``
    Token requests the Pyng emulator receives when 20 separate execution environments (20 worker
    processes, each with its own memory, running ``functions/provider/app.py`` as Pyng's handler) miss the
    same key at the same moment, with an empty table. Each environment is initialised (module imported,
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
    Powertools' context injection and metrics decorator (no tracer on a hit: ``token_vending.tracing``),
    request parsing, the ``GetItem``, its JSON log line and EMF metrics (written to a file). See
    ``benchmarks.handler_timing``.

``warm_hit_ms``
    Median time, in milliseconds, of the same in-process handler serving an in-memory hit (memory
    cache at its shipped default of 5 s), 1000 calls after 50 warm-up calls.

``outage_attempts_per_hour``, ``outage_recovery_seconds``
    Token requests per scope set that reach a provider answering 503 during one simulated hour (callers
    through the token API and directly every 2 simulated seconds from several execution environments, the
    waiters among them, the scheduled refresh-ahead run and the renewal timers together; the cached token
    expiring 100 s into the hour), the most of any scope set, with and without ``Retry-After`` (1000 s, which
    the back-off caps); and the simulated seconds from the provider answering again (at the end of the hour)
    to the first caller served a token fetched after that, the longest. The fleet is the in-process model of
    ``tests/support/fleet.py`` with Pyng's deployed settings; the wall clock is simulated. See
    ``benchmarks.outage``.

``waiting_share_steady_state``
    Share of caller requests (``GET /token/pyng?min_ttl=1`` through the local API) that waited on
    the provider, i.e. whose Pyng invocation missed the cache or blocked on the lease (read from
    that invocation's EMF metrics), over 30 s of steady traffic from 4 callers with 30 s tokens
    (refresh margin 3 s), with refresh ahead as deployed: per-token renewal timers on Pyng's SQS queue
    (moto, the local event source mapping) and a scheduler invoking Pyng with ``{"refresh_ahead": true}``
    every ``REFRESH_AHEAD_INTERVAL`` = 3 s. ``nan`` if the product code does not know that payload. See
    ``benchmarks.steady``.

``waiting_share_no_refresh_ahead``
    The same run without refresh ahead (no timers, no scheduler): callers find the token inside its refresh
    margin, one of them refreshes it and the others in flight wait for it.

``refresh_ahead_upstream_ratio``, ``refresh_ahead_waiting_share``
    Token requests per scope set over simulated days (at least 24 h and 20 renewals) with refresh ahead as
    deployed (per-token renewal timers and the 5-minute schedule), times the ideal interval ``lifetime -
    margin`` per second: 1.0 renews each token exactly as it reaches its margin. The worst of token
    lifetimes 300, 900, 3600 and 86400 s; and the share of callers (through the token API, every tenth of a
    lifetime) that needed the provider function. Real code on the in-process fleet model with DynamoDB Local
    and a simulated wall clock. See ``benchmarks.refresh``.

``refresh_ahead_upstream_ratio_schedule_only``
    The peer: the same simulation without renewal timers, the 5-minute schedule renewing by itself what would
    enter the margin before its next run (what the service did before).

A new figure is one more ``run.measure((NAME, ...), action)`` call in :func:`plan` (``action`` returns
one value per name; an ``int`` prints as an integer, a float with ``digits`` decimals, 3 unless given;
raising ``NotMeasured`` prints ``nan`` without failing the run) and its paragraph here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.infra import progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.infra import LoopbackAws

HIT_WARMUP = 1000
"""Warm-up rounds before hit_vs_getitem_ratio: DynamoDB Local is a JVM; its GetItem latency keeps
falling (from ~7 ms to ~2 ms on 2 cores) for the first ~1000 requests."""


class NotMeasured(Exception):
    """The figure does not apply to this code (the reason is the message): ``nan``, not a failure."""


@dataclass(frozen=True)
class Measure:
    names: tuple[str, ...]
    action: Callable[[], tuple[float | int | None, ...]]
    digits: tuple[int, ...]


class Run:
    """The figures of one run: :meth:`measure` declares them in printing order; :meth:`execute` measures the
    selected ones, one after another."""

    def __init__(self) -> None:
        self.plan: list[Measure] = []
        self.values: dict[str, float | int | None] = {}
        self.digits: dict[str, int] = {}
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self._aws: LoopbackAws | None = None

    @property
    def names(self) -> list[str]:
        return [name for measure in self.plan for name in measure.names]

    def aws(self) -> LoopbackAws:
        if self._aws is None:
            from benchmarks.infra import LoopbackAws

            self._aws = LoopbackAws.start()
        return self._aws

    def measure(self, names: tuple[str, ...], action: Callable[[], tuple[float | int | None, ...]], *,
                digits: int | tuple[int, ...] = 3) -> None:
        """Declare figures ``names``, measured together by ``action`` (one value per name); a float prints with
        ``digits`` decimals (one number for all, or one per name)."""
        duplicates = set(names) & set(self.names)
        if duplicates:
            raise ValueError(f"figures declared twice: {sorted(duplicates)}")
        per_name = (digits,) * len(names) if isinstance(digits, int) else digits
        if len(per_name) != len(names):
            raise ValueError(f"{len(per_name)} digits for {len(names)} figures")
        self.plan.append(Measure(names, action, per_name))

    def execute(self, selected: set[str]) -> None:
        for measure in self.plan:
            if selected.isdisjoint(measure.names):
                continue
            label = ", ".join(measure.names)
            started = time.monotonic()
            values: tuple[float | int | None, ...]
            try:
                values = measure.action()
                if len(values) != len(measure.names):
                    raise RuntimeError(f"{len(values)} value(s) for {len(measure.names)} figure(s)")
            except NotMeasured as exc:
                progress(f"{label}: not measured: {exc}")
                self.skipped.extend(measure.names)
                values = (None,) * len(measure.names)
            except Exception:  # noqa: BLE001 - one broken figure must not hide the others
                progress(f"{label}: FAILED\n{traceback.format_exc()}")
                self.failed.extend(measure.names)
                values = (None,) * len(measure.names)
            for name, value, digits in zip(measure.names, values, measure.digits, strict=True):
                self.values[name] = value
                self.digits[name] = digits
            progress(f"{label}: done in {time.monotonic() - started:.1f} s")

    def lines(self) -> list[str]:
        return [f"{name}: {_format(self.values[name], self.digits[name])}" for name in self.names
                if name in self.values]

    def close(self) -> None:
        if self._aws is not None:
            self._aws.stop()


def _format(value: float | int | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def plan(run: Run, args: argparse.Namespace) -> None:
    """Every figure, in printing order. The cold starts come first, on a quiet machine: nothing else is
    running yet (DynamoDB Local idles)."""
    from benchmarks import cold, cold_start, handler_timing, outage, refresh, steady

    def cold_starts() -> tuple[float, float, float, float]:
        result = cold_start.measure(run.aws(), runs=args.cold_runs)
        progress(f"cold start: {result.describe()}")
        if result.ratio > cold_start.TARGET_RATIO:
            for side, packages in cold_start.import_profile(run.aws()).items():
                shown = ", ".join(f"{package} {ms:.1f}" for package, ms in packages)
                progress(f"cold start: above {cold_start.TARGET_RATIO}; what {side} imports that the baseline "
                         f"does not (python -X importtime, own ms per package): {shown}")
        return result.api_s * 1000, result.provider_s * 1000, result.baseline_s * 1000, result.ratio

    run.measure(("cold_start_api_ms", "cold_start_provider_ms", "cold_start_baseline_ms", "cold_start_ratio"),
                cold_starts, digits=(1, 1, 1, 3))
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

    def outage_figures() -> tuple[int, float]:
        result = outage.measure(run.aws())
        return result.attempts_per_hour, result.recovery_seconds

    run.measure(("outage_attempts_per_hour", "outage_recovery_seconds"), outage_figures, digits=1)

    def with_refresh_ahead() -> tuple[float]:
        if not steady.refresh_ahead_available():
            raise NotMeasured("the product code does not handle {\"refresh_ahead\": true} yet (no "
                              "'refresh_ahead' in layers/token_vending/token_vending/*.py or "
                              "functions/provider/app.py)")
        result = steady.waiting_share(run.aws(), refresh_ahead=True, duration=args.steady_seconds)
        if result.scheduler_errors or result.scheduler_served_a_token:
            progress(f"waiting_share_steady_state: WARNING {sum(result.scheduler_errors.values())} "
                     f"refresh-ahead invocation(s) failed {dict(result.scheduler_errors)} and "
                     f"{result.scheduler_served_a_token} were served as ordinary token requests")
        return (result.share,)

    run.measure(("waiting_share_steady_state",), with_refresh_ahead, digits=4)
    run.measure(("waiting_share_no_refresh_ahead",),
                lambda: (steady.waiting_share(run.aws(), refresh_ahead=False, duration=args.steady_seconds).share,),
                digits=4)
    run.measure(("refresh_ahead_upstream_ratio", "refresh_ahead_waiting_share"),
                lambda: refresh.refresh_ahead_figures(run.aws()), digits=(3, 4))
    run.measure(("refresh_ahead_upstream_ratio_schedule_only",),
                lambda: (refresh.refresh_ahead_figures(run.aws(), timers=False)[0],))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="measure only this figure and those measured with it (repeatable)")
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="length of each steady-state run")
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds of hit_vs_getitem_ratio")
    parser.add_argument("--cold-runs", type=int, default=25, help="fresh interpreters per side of cold_start_*")
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

    run = Run()
    plan(run, args)
    unknown = sorted(set(args.only or ()) - set(run.names))
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(run.names)}")
    started = time.monotonic()
    try:
        run.execute(set(args.only or run.names))
    finally:
        run.close()
        for line in run.lines():
            figures_out.write(line + "\n")
        figures_out.flush()
        progress(f"total {time.monotonic() - started:.1f} s"
                 + (f"; failed: {', '.join(run.failed)}" if run.failed else "")
                 + (f"; not measured: {', '.join(run.skipped)}" if run.skipped else ""))
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
