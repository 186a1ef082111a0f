"""Shared plumbing: the loopback AWS (DynamoDB Local + moto server), stacks, log capture, EMF parsing.

Everything listens on 127.0.0.1 only; every AWS client is pointed at those endpoints explicitly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmarks import LAYER_DIR, REPO_ROOT
from local.providers import LOCAL_CREDENTIALS, PYNG_SCOPES, ProviderEmulator
from local.stack import DUMMY_AWS, LocalStack, StackConfig

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from local.lambda_service import FunctionSpec
    from tests.support.dynamodb_local import DynamoDBLocal

PYNG_FUNCTION = "PyngFunction"
PYNG_SCOPE_KEY = " ".join(sorted(PYNG_SCOPES))
"""The cache key of a Pyng request without ``scope``: every configured scope, sorted."""


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the figures."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child interpreter: this one's, the layer on PYTHONPATH, dummy AWS identity."""
    return {**os.environ, **DUMMY_AWS,
            "PYTHONPATH": os.pathsep.join([str(LAYER_DIR), str(REPO_ROOT)]),
            "PYTHONUNBUFFERED": "1", **(extra or {})}


class LogCapture(io.StringIO):
    """What execution environments write to stderr (their CloudWatch Logs), kept line by line."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lines: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._lines.extend(text.splitlines())
        return len(text)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def count(self) -> int:
        """Lines so far. (Not ``__len__``: ``Worker`` tests the stream's truth value, and an empty
        capture must still be a capture.)"""
        with self._lock:
            return len(self._lines)


def emf_invocations(lines: Iterable[str]) -> list[set[str]]:
    """Metric names of each EMF document (Powertools' ``log_metrics`` prints one per invocation)."""
    documents: list[set[str]] = []
    for line in lines:
        if '"_aws"' not in line:
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        aws = document.get("_aws") if isinstance(document, dict) else None
        if not isinstance(aws, dict):
            continue
        names = {metric.get("Name") for directive in aws.get("CloudWatchMetrics", [])
                 for metric in directive.get("Metrics", [])}
        documents.append({name for name in names if isinstance(name, str)})
    return documents


def count_with(documents: Iterable[set[str]], *names: str) -> int:
    """How many invocations recorded at least one of ``names``."""
    wanted = set(names)
    return sum(1 for document in documents if document & wanted)


@dataclass
class LoopbackAws:
    """DynamoDB Local (AWS's own emulator, a Java process) and a moto server for Secrets Manager,
    both started fresh for this benchmark run."""

    dynamodb: DynamoDBLocal
    moto: Any
    secrets_url: str

    @classmethod
    def start(cls) -> LoopbackAws:
        from moto.server import ThreadedMotoServer

        from tests.support.dynamodb_local import DynamoDBLocal, free_port

        progress("starting DynamoDB Local and a moto server (Secrets Manager) on 127.0.0.1")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per Secrets Manager request
        dynamodb = DynamoDBLocal()
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        return cls(dynamodb=dynamodb, moto=moto, secrets_url=f"http://127.0.0.1:{port}")

    @property
    def dynamodb_url(self) -> str:
        return self.dynamodb.endpoint

    def stop(self) -> None:
        self.moto.stop()
        self.dynamodb.stop()

    def stack(self, emulator: ProviderEmulator, *, function_env: dict[str, str] | None = None,
              log_stream: LogCapture | None = None, max_concurrency: int = 8, renewals: bool = False) -> LocalStack:
        """A started stack with its own table and secret names, Pyng pointed at ``emulator``; ``renewals``: with
        the per-token renewal timers (an SQS queue per provider on a moto server of the stack's own)."""
        unique = uuid.uuid4().hex[:8]
        config = StackConfig(
            api_port=0, lambda_port=0, dynamodb_endpoint=self.dynamodb_url, secrets_endpoint=self.secrets_url,
            provider_urls={"pyng": emulator.url}, credentials={"pyng": LOCAL_CREDENTIALS["pyng"]},
            function_env=dict(function_env or {}), table_name=f"bench-{unique}",
            secret_prefix=f"token-vending/bench-{unique}", max_concurrency=max_concurrency,
            log_stream=log_stream, renewals=renewals, aws_port=0)
        return LocalStack(config).start()


def fresh_table(aws: LoopbackAws) -> tuple[Any, str]:
    """A DynamoDB client on DynamoDB Local (the provider functions' botocore configuration) and a new table with
    the template's key schema and TTL attribute."""
    import boto3

    from tests.support.harness import CREDENTIALS, create_table
    from token_vending.clients import DYNAMODB_CONFIG

    table = f"bench-{uuid.uuid4().hex[:8]}"
    # botocore's default timeouts: creating a table can outlast the functions' 2 s on a busy machine.
    create_table(boto3.client("dynamodb", endpoint_url=aws.dynamodb_url, **CREDENTIALS), table)
    return boto3.client("dynamodb", endpoint_url=aws.dynamodb_url, config=DYNAMODB_CONFIG, **CREDENTIALS), table


def pyng_spec(stack: LocalStack) -> FunctionSpec:
    """Pyng's execution-environment definition (code path, environment) exactly as the stack builds it."""
    for spec in stack.function_specs():
        if spec.name == PYNG_FUNCTION:
            return spec
    raise LookupError(PYNG_FUNCTION)


@contextlib.contextmanager
def pyng_emulator(**options: Any) -> Iterator[ProviderEmulator]:
    """A fresh Pyng emulator per scenario, so its request counter starts at zero."""
    emulator = ProviderEmulator("pyng", **options).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def seed_token(stack: LocalStack, *, expires_in: int = 3600, lifetime: int = 3600) -> None:
    """A cached Pyng token as a provider function would have written it (see ``token_vending.cache``)."""
    now = time.time()
    stack.client("dynamodb").put_item(TableName=stack.config.table_name, Item={
        "pk": {"S": "pyng"}, "sk": {"S": f"token#{PYNG_SCOPE_KEY}"},
        "access_token": {"S": "pyng_benchmark_" + uuid.uuid4().hex}, "token_type": {"S": "Bearer"},
        "scope": {"S": PYNG_SCOPE_KEY}, "expires_at": {"N": str(int(now + expires_in))},
        "fetched_at": {"N": f"{now - 60:.3f}"}, "lifetime": {"N": str(lifetime)},
        "purge_at": {"N": str(int(now + expires_in + 3600))}})
