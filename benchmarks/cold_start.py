"""``cold_start_ratio``: init plus the first answer of each function, against the least a handler can do.

Three sides, each sample a fresh interpreter (``python -c PROBE``) that first puts the function's folder
(``LAMBDA_TASK_ROOT``) and the layer on ``sys.path`` and imports ``importlib.util``, ``json``, ``os``, ``sys`` and
``time`` (the Lambda runtime has done that much before it loads a handler), builds the event and a context
object, and then times, with ``time.perf_counter``:

1. *init*: loading ``app.py`` by path (``spec_from_file_location`` + ``exec_module``, as the runtime loads
   ``app.handler``): everything the module body does, and
2. *first answer*: one ``handler(event, context)`` call, a cache hit served from DynamoDB (the token is
   pre-seeded in DynamoDB Local; the memory cache of a fresh environment is empty).

Interpreter start-up is excluded on every side. The sides:

* ``api``: ``functions/token_api/app.py`` with ``events/api-pyng.json`` (the API Gateway proxy event of
  ``GET /token/pyng?scope=billing:batches:read`` that ``make generate`` writes for ``sam local``);
* ``provider``: ``functions/provider/app.py`` as Pyng's function (``CONNECTION_NAME=pyng``) with
  ``events/invoke-pyng.json`` (the direct invocation ``{"scope": "billing:batches:read", ...}``);
* ``baseline``: ``benchmarks/baseline_app.py``, one boto3 DynamoDB client made at init with the provider
  function's botocore configuration and endpoint, and the same ``GetItem`` (the token API's configuration
  differs only in timeouts and attempts, which a successful first read never uses).

Environment: what a deployed function's process sees. The template's variables of each function come from
``local.stack.deployed()`` (template.yaml evaluated with its parameters' defaults), overridden only where a
deployment would fill in a value: the table name and DynamoDB endpoint (DynamoDB Local), Pyng's token URL (an
``https://`` URL, never contacted) and secret id. The runtime's own variables are set as Lambda sets them
(``AWS_LAMBDA_FUNCTION_NAME``, ``LAMBDA_TASK_ROOT``, ``AWS_XRAY_DAEMON_ADDRESS``, ...), with dummy credentials.
Tracing is as deployed (``Tracing: Active``), kept from the former ``import_vs_boto3_ratio``
(``benchmarks/imports.py``): no ``POWERTOOLS_TRACE_DISABLED`` (which ``local.stack`` sets), and
``AWS_XRAY_DAEMON_ADDRESS``, ``AWS_XRAY_CONTEXT_MISSING=LOG_ERROR`` and ``LAMBDA_TASK_ROOT`` as Lambda sets them,
so a function that made Powertools' Tracer at init would import the X-Ray SDK and patch botocore there (the
functions make it on their first miss instead, ``token_vending.tracing``: a hit sends nothing); and, as Lambda
does per invocation, ``_X_AMZN_TRACE_ID`` carries a sampled trace header, so whatever the first answer traces is
recorded and sent (UDP to a sink on 127.0.0.1 standing in for the X-Ray daemon; stderr shows how many datagrams
each side sent). The baseline pays none of this: it is the floor. Every other AWS endpoint points at a
closed loopback port, so nothing can reach AWS.

The handlers' stdout (Powertools' JSON logs and EMF metrics, which Lambda ships to CloudWatch) goes to a pipe
the parent reads; each function's EMF document must show ``CacheHitDynamoDB`` (a sample that missed, or any
invocation that failed, fails the figure). One discarded warm-up sample per side writes the bytecode caches, so
every side runs compiled code (whether a deployment ships the layer's own modules compiled, as pip compiles the
dependencies it installs, is not measured here), and DynamoDB Local is warmed
with 1000 reads first (a JVM: its first requests are several times slower). Then ``runs`` rounds, each running
the three sides in a rotating order (api, provider, baseline; provider, baseline, api; ...). Each side's
figure is its median; ``cold_start_ratio`` is the worse of median(api) / median(baseline) and
median(provider) / median(baseline). stderr also shows, as cross-checks on a busy machine, the CPU-time medians
and the median of each round's ratio; and, when the ratio is above ``TARGET_RATIO``, what each function imports
that the baseline does not (:func:`import_profile`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks import LAYER_DIR, PYNG_APP, REPO_ROOT
from benchmarks.infra import emf_invocations, median, progress
from tests.support.dynamodb_local import free_port

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from benchmarks.infra import LoopbackAws

API_APP = REPO_ROOT / "functions" / "token_api" / "app.py"
BASELINE_APP = REPO_ROOT / "benchmarks" / "baseline_app.py"
API_EVENT = REPO_ROOT / "events" / "api-pyng.json"
PROVIDER_EVENT = REPO_ROOT / "events" / "invoke-pyng.json"
SIDES = ("api", "provider", "baseline")
TARGET_RATIO = 1.15
"""Issue 10's target; above it, the run also prints what each side imports (``import_profile``)."""
DYNAMODB_WARMUP = 1000
MARKER = "@@cold-start@@"

PROBE = """\
import importlib.util
import json
import math
import os
import sys
import time
sys.path[:0] = {paths!r}
event = json.loads({event!r})


class Context:
    function_name = {function!r}
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + {function!r}
    aws_request_id = {request_id!r}
    log_group_name = "/aws/lambda/" + {function!r}
    log_stream_name = "cold-start"

    def __init__(self):
        self._deadline = time.monotonic() + {timeout!r}

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


cpu_started = time.process_time()
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
initialised = time.perf_counter()
os.environ["_X_AMZN_TRACE_ID"] = {trace!r}
answer = module.handler(event, Context())
answered = time.perf_counter()
cpu = time.process_time() - cpu_started
sys.stdout.flush()
sys.stdout.write("\\n" + {marker!r} + json.dumps({{"init": initialised - started, "first": answered - initialised,
                                                 "cpu": cpu, "answer": answer}}) + "\\n")
"""


@dataclass(frozen=True)
class Side:
    name: str
    app: Path
    function: str
    timeout: float
    event: dict[str, Any]
    env: dict[str, str]


@dataclass
class Samples:
    init: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU seconds (``time.process_time``) of init plus first answer: less sensitive to a busy machine."""
    xray_datagrams: list[int] = field(default_factory=list)

    @property
    def total(self) -> list[float]:
        return [init + first for init, first in zip(self.init, self.first, strict=True)]


@dataclass(frozen=True)
class ColdStartResult:
    api_s: float
    provider_s: float
    baseline_s: float
    samples: dict[str, Samples]

    @property
    def ratio(self) -> float:
        return max(self.api_s, self.provider_s) / self.baseline_s

    def describe(self) -> str:
        parts = []
        for name, samples in self.samples.items():
            parts.append(f"{name} {median(samples.total) * 1000:.0f} ms (init {median(samples.init) * 1000:.0f} + "
                         f"first answer {median(samples.first) * 1000:.1f}; range "
                         f"{min(samples.total) * 1000:.0f}-{max(samples.total) * 1000:.0f}; X-Ray datagrams "
                         f"{median(samples.xray_datagrams):g})")
        cpu = {name: median(samples.cpu) for name, samples in self.samples.items()}
        baseline = self.samples["baseline"].total
        paired = {name: median(total / floor for total, floor in zip(self.samples[name].total, baseline, strict=True))
                  for name in ("api", "provider")}
        return "; ".join(parts) + (f"; ratios api {self.api_s / self.baseline_s:.3f}, "
                                   f"provider {self.provider_s / self.baseline_s:.3f}; CPU time medians "
                                   f"{', '.join(f'{name} {value * 1000:.0f} ms' for name, value in cpu.items())} "
                                   f"(ratios api {cpu['api'] / cpu['baseline']:.3f}, "
                                   f"provider {cpu['provider'] / cpu['baseline']:.3f}); median of each round's "
                                   f"ratio: api {paired['api']:.3f}, provider {paired['provider']:.3f}")


def runtime_environment(base: Mapping[str, str], *, function: str, task_root: Path, xray: str,
                        closed_endpoint: str) -> dict[str, str]:
    """The variables the Lambda runtime sets (with dummy credentials), and a catch-all endpoint for AWS."""
    keep = {name: base[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if name in base}
    return {
        **keep,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13", "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand", "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "cold-start", "LAMBDA_TASK_ROOT": str(task_root),
        "_HANDLER": "app.handler", "AWS_XRAY_DAEMON_ADDRESS": xray, "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        # Never AWS: any client without its own endpoint below lands on a closed loopback port.
        "AWS_ENDPOINT_URL": closed_endpoint,
    }


def sides(aws: LoopbackAws, table: str, xray: str) -> list[Side]:
    """The three sides, with the deployed environment of each function (see the module docstring)."""
    from local.stack import API_FUNCTION, deployed

    providers, api_env = deployed()
    pyng = providers["pyng"]
    closed = f"http://127.0.0.1:{free_port()}"
    placed = {"CACHE_TABLE_NAME": table, "AWS_ENDPOINT_URL_DYNAMODB": aws.dynamodb_url}

    def env(function: str, app: Path, template_env: Mapping[str, str],
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
        runtime = runtime_environment(os.environ, function=function, task_root=app.parent,
                                      xray=xray, closed_endpoint=closed)
        return {**runtime, **template_env, **placed, **(extra or {})}

    # What a deployment fills in (PyngTokenUrl has no default; the secret's name is the stack's).
    deployment = {"TOKEN_URL": "https://pyng.invalid/billing/oauth2/token", "SECRET_ID": "token-vending/pyng"}
    provider_env = env(pyng.function, PYNG_APP, pyng.environment, deployment)
    direct = json.loads(PROVIDER_EVENT.read_text(encoding="utf-8"))
    return [
        Side("api", API_APP, API_FUNCTION, 28.0, json.loads(API_EVENT.read_text(encoding="utf-8")),
             env(API_FUNCTION, API_APP, api_env)),
        Side("provider", PYNG_APP, pyng.function, 25.0, direct, provider_env),
        Side("baseline", BASELINE_APP, "BaselineFunction", 25.0,
             {"pk": "pyng", "sk": f"token#{scope_key(direct)}"},
             env("BaselineFunction", BASELINE_APP, {})),
    ]


def scope_key(event: Mapping[str, Any]) -> str:
    """The cache key of a request's scope (``token_vending.scopes``: sorted, de-duplicated)."""
    return " ".join(sorted(set(str(event.get("scope", "")).split())))


def probe_code(side: Side) -> str:
    trace = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=1"
    return PROBE.format(paths=[str(side.app.parent), str(LAYER_DIR)], event=json.dumps(side.event),
                        function=side.function, request_id=str(uuid.uuid4()), timeout=side.timeout,
                        path=str(side.app), trace=trace, marker=MARKER)


def sample(side: Side, *, options: tuple[str, ...] = ()) -> tuple[float, float, float, list[str], str]:
    """(init seconds, first-answer seconds, CPU seconds, the handler's stdout lines, stderr) of one fresh
    interpreter."""
    completed = subprocess.run([sys.executable, *options, "-c", probe_code(side)], env=side.env, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120, check=False)
    lines = completed.stdout.splitlines()
    reports = [line[len(MARKER):] for line in lines if line.startswith(MARKER)]
    if completed.returncode != 0 or not reports:
        raise RuntimeError(f"cold start probe ({side.name}) failed ({completed.returncode}): "
                           f"{completed.stderr[-2000:]}{completed.stdout[-1000:]}")
    report = json.loads(reports[-1])
    _check_answer(side, report["answer"], lines)
    return float(report["init"]), float(report["first"]), float(report["cpu"]), lines, completed.stderr


def _check_answer(side: Side, answer: Any, lines: list[str]) -> None:
    if side.name == "api":
        if not isinstance(answer, dict) or answer.get("statusCode") != 200:
            raise RuntimeError(f"the token API's first answer was not a 200: {str(answer)[:300]}")
    elif not isinstance(answer, dict) or not answer.get("access_token"):
        raise RuntimeError(f"the {side.name} side's first answer carries no token: {str(answer)[:300]}")
    if side.name != "baseline":
        documents = emf_invocations(lines)
        if not any("CacheHitDynamoDB" in document for document in documents):
            raise RuntimeError(f"the {side.name} function's first answer was not a DynamoDB hit: {documents}")


def _drain(sink: socket.socket) -> int:
    count = 0
    while True:
        try:
            sink.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def seed(client: Any, table: str, key: str) -> None:
    """A fresh Pyng token (900 s, fetched a minute ago), as a provider function would have stored it."""
    now = time.time()
    client.put_item(TableName=table, Item={
        "pk": {"S": "pyng"}, "sk": {"S": f"token#{key}"},
        "access_token": {"S": "pyng_benchmark_" + uuid.uuid4().hex}, "token_type": {"S": "Bearer"},
        "scope": {"S": key}, "expires_at": {"N": str(int(now + 840))}, "fetched_at": {"N": f"{now - 60:.3f}"},
        "lifetime": {"N": "900"}, "purge_at": {"N": str(int(now + 840 + 3600))}})


def measure(aws: LoopbackAws, runs: int = 15) -> ColdStartResult:
    from benchmarks.infra import fresh_table

    client, table = fresh_table(aws)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        xray = f"127.0.0.1:{sink.getsockname()[1]}"
        chosen = {side.name: side for side in sides(aws, table, xray)}
        key = chosen["baseline"].event["sk"].removeprefix("token#")
        seed(client, table, key)
        progress(f"cold start: {DYNAMODB_WARMUP} warm-up reads of DynamoDB Local, 1 warm-up and {runs} fresh "
                 f"interpreters per side ({', '.join(SIDES)}), rotating order")
        for _ in range(DYNAMODB_WARMUP):
            client.get_item(TableName=table, Key={"pk": {"S": "pyng"}, "sk": {"S": f"token#{key}"}})
        for name in SIDES:
            sample(chosen[name])
        _drain(sink)
        samples = {name: Samples() for name in SIDES}
        for index in range(runs):
            shift = index % len(SIDES)
            for name in SIDES[shift:] + SIDES[:shift]:
                init, first, cpu, _, _ = sample(chosen[name])
                samples[name].init.append(init)
                samples[name].first.append(first)
                samples[name].cpu.append(cpu)
                samples[name].xray_datagrams.append(_drain(sink))
    return ColdStartResult(api_s=median(samples["api"].total), provider_s=median(samples["provider"].total),
                           baseline_s=median(samples["baseline"].total), samples=samples)


def import_profile(aws: LoopbackAws, *, runs: int = 3, top: int = 10) -> dict[str, list[tuple[str, float]]]:
    """What each function imports on its cold path that the baseline does not, by ``python -X importtime``: the
    modules' own import time (``self``, the least of ``runs`` samples: a busy machine only adds), summed per
    top-level package, in ms, largest first. A diagnosis for stderr: importtime's bookkeeping inflates it."""
    from benchmarks.infra import fresh_table

    client, table = fresh_table(aws)
    least: dict[str, dict[str, float]] = {name: {} for name in SIDES}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        chosen = {side.name: side for side in sides(aws, table, f"127.0.0.1:{sink.getsockname()[1]}")}
        seed(client, table, chosen["baseline"].event["sk"].removeprefix("token#"))
        for _ in range(runs):
            for name in SIDES:
                *_, stderr = sample(chosen[name], options=("-X", "importtime"))
                for line in stderr.splitlines():
                    # "import time: self [us] | cumulative | imported package", nested ones indented
                    if not line.startswith("import time:") or line.count("|") != 2 or "[us]" in line:
                        continue
                    own, _, module = line.removeprefix("import time:").split("|")
                    seen = least[name].get(module.strip())
                    least[name][module.strip()] = min(int(own) / 1000, seen if seen is not None else math.inf)
    profile: dict[str, list[tuple[str, float]]] = {}
    for name in ("api", "provider"):
        totals: dict[str, float] = {}
        for module, ms in least[name].items():
            if module not in least["baseline"]:
                package = module.split(".")[0]
                totals[package] = totals.get(package, 0.0) + ms
        profile[name] = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return profile
