"""``import_vs_boto3_ratio``: cold import of a provider function module against ``import boto3``.

Each sample is a fresh interpreter (``python -c PROBE``) that first puts the layer and the function's
folder on ``sys.path`` and imports ``time``/``importlib.util`` (the Lambda runtime has done that much
before it loads a handler), then times one statement with ``time.perf_counter`` and prints the
seconds. Interpreter start-up is therefore excluded on both sides.

* Provider side: ``functions/provider/app.py (as Pyng)`` loaded by path (``spec_from_file_location`` +
  ``exec_module``, as the runtime loads ``app.handler``). That includes everything its module body
  does: importing boto3, Powertools' Logger/Metrics/Tracer (with tracing active, as the template's
  ``Tracing: Active`` gives, so the X-Ray SDK is imported and patches botocore/requests), the layer
  modules it imports, and creating its two boto3 clients (DynamoDB and Secrets Manager).
* boto3 side: ``import boto3`` and nothing else (no client, no session).

Both run with the environment a deployed Pyng function has (runtime variables such as
``AWS_REGION``, ``AWS_LAMBDA_FUNCTION_NAME``, ``LAMBDA_TASK_ROOT``, plus the template's variables),
with dummy credentials. Nothing is sent anywhere: creating a client makes no request. (With
``LAMBDA_TASK_ROOT`` set, the X-Ray SDK touches ``/tmp/.aws-xray/initialized``, as it does in Lambda.) One discarded
warm-up run of each side writes the bytecode caches; then the sides alternate (AB, BA, ...), and the
figure is the ratio of the medians.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from benchmarks import LAYER_DIR, PYNG_APP, REPO_ROOT
from benchmarks.infra import median, progress

if TYPE_CHECKING:
    from collections.abc import Mapping

PROBE = """\
import importlib.util
import sys
import time
sys.path[:0] = [{task_root!r}, {layer!r}]
started = time.perf_counter()
{statement}
elapsed = time.perf_counter() - started
sys.stdout.write(repr(elapsed) + "\\n")
"""

PROVIDER_STATEMENT = """\
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)"""

BOTO3_STATEMENT = "import boto3"


def lambda_environment(base: Mapping[str, str]) -> dict[str, str]:
    """What a deployed Pyng function's process sees (runtime-reserved variables + template variables)."""
    keep = {name: base[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if name in base}
    return {
        **keep,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13", "AWS_LAMBDA_FUNCTION_NAME": "PyngFunction",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand", "LAMBDA_TASK_ROOT": str(PYNG_APP.parent),
        "_HANDLER": "app.handler", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        # template.yaml Globals and the Pyng function's own variables
        "CACHE_TABLE_NAME": "token-vending-cache", "REFRESH_MARGIN_SECONDS": "60", "REFRESH_MARGIN_RATIO": "0.1",
        "MEMORY_CACHE_SECONDS": "5", "POWERTOOLS_SERVICE_NAME": "token-vending",
        "POWERTOOLS_METRICS_NAMESPACE": "TokenVending", "POWERTOOLS_LOG_LEVEL": "INFO",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false", "POWERTOOLS_LOGGER_LOG_EVENT": "false",
        "TOKEN_VENDING_LOCAL_MODE": "false", "AWS_ENDPOINT_URL_DYNAMODB": "",
        "PROVIDER_NAME": "pyng", "TOKEN_URL": "https://pyng.invalid/billing/oauth2/token",
        "SECRET_ID": "token-vending/pyng", "TOKEN_LIFETIME": "900",
    }


def _sample(statement: str, env: Mapping[str, str]) -> float:
    code = PROBE.format(task_root=str(PYNG_APP.parent), layer=str(LAYER_DIR), statement=statement)
    completed = subprocess.run([sys.executable, "-c", code], env=dict(env), cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=120, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"import probe failed: {completed.stderr[-2000:]}")
    return float(completed.stdout.strip().splitlines()[-1])


def import_ratio(base_env: Mapping[str, str], runs: int = 15) -> tuple[float, float, float]:
    """(ratio, provider median seconds, boto3 median seconds)."""
    env = lambda_environment(base_env)
    provider = PROVIDER_STATEMENT.format(path=str(PYNG_APP))
    progress(f"imports: 1 warm-up and {runs} fresh interpreters per side, alternating")
    _sample(provider, env)
    _sample(BOTO3_STATEMENT, env)
    provider_s: list[float] = []
    boto3_s: list[float] = []
    for index in range(runs):
        if index % 2 == 0:
            provider_s.append(_sample(provider, env))
            boto3_s.append(_sample(BOTO3_STATEMENT, env))
        else:
            boto3_s.append(_sample(BOTO3_STATEMENT, env))
            provider_s.append(_sample(provider, env))
    provider_median, boto3_median = median(provider_s), median(boto3_s)
    return provider_median / boto3_median, provider_median, boto3_median
