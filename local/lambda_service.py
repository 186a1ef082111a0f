"""A local Lambda service: the Invoke API on loopback, backed by worker processes.

Like ``sam local start-lambda``, but without containers: each execution environment is a separate
Python process with the function's own environment variables and its own memory, so per-environment
state (in-memory caches, warm clients) behaves as in AWS. Concurrent invocations of one function
scale out to more environments, up to ``max_concurrency``; idle ones are reused (warm starts).

:class:`SqsEventSource` is Lambda's SQS event source mapping (the provider functions' renewal queues): it
long-polls a queue, invokes the function with the standard SQS event and deletes what the function did not
report as failed (``ReportBatchItemFailures``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from local.http import JsonHandler, serve_in_thread

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

LOG = logging.getLogger("local.lambda")
REPO_ROOT = Path(__file__).resolve().parents[1]
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
_FUNCTION_NAME = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:[a-z]{2}(?:-gov)?-[a-z]+-\d:)?(?:\d{12}:)?(?:function:)?"
    r"([a-zA-Z0-9_-]+)(?::(\$LATEST|[a-zA-Z0-9_-]+))?$")
"""Invoke's ``FunctionName`` as Lambda's API reference gives it: a name, an ARN or a partial ARN
(``123456789012:function:name``), each with or without a ``:qualifier``."""
ACCOUNT = "123456789012"
REGION = "us-east-1"


def function_name(given: str, qualifier: str | None = None) -> tuple[str, str | None]:
    """``(name, qualifier)`` from Invoke's ``FunctionName`` and ``Qualifier``; ``("", None)`` when ``given`` is
    not a function name in any form Lambda accepts. A qualifier in the name wins, as a conflicting pair is
    Lambda's own error, not a case callers rely on."""
    match = _FUNCTION_NAME.match(given)
    if match is None:
        return "", None
    return match.group(1), match.group(2) or qualifier


def function_arn(name: str, qualifier: str | None = None) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" + (f":{qualifier}" if qualifier else "")


@dataclass
class FunctionSpec:
    name: str
    """The function name callers use (FunctionName in Invoke)."""
    code_path: Path
    environment: dict[str, str]
    timeout: float = 30.0
    memory_mb: int = 256
    max_concurrency: int = 8


class InvocationTimeout(Exception):
    pass


class ServiceStopped(Exception):
    """The service was stopped: no new execution environment is started."""


class Worker:
    """One execution environment."""

    def __init__(self, spec: FunctionSpec, log_stream: IO[str] | None) -> None:
        env = {**os.environ, **spec.environment,
               "AWS_LAMBDA_FUNCTION_NAME": spec.name,
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
               "LOCAL_FUNCTION_TIMEOUT": str(spec.timeout),
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "layers" / "token_vending"), str(REPO_ROOT)]),
               "PYTHONUNBUFFERED": "1"}
        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.worker", str(spec.code_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE if log_stream else None,
            env=env, cwd=REPO_ROOT, text=True, bufsize=1,
            # Ctrl-C reaches only the runner, which stops the workers; a worker whose runner dies
            # reads end-of-file on stdin and exits.
            start_new_session=True)
        self._replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if log_stream is not None:
            threading.Thread(target=self._copy_logs, args=(log_stream,), daemon=True).start()
        self._await(time.monotonic() + 60)  # the "ready" line

    def _read(self) -> None:
        for line in self.process.stdout or ():
            self._replies.put(line)
        self._replies.put("")

    def _copy_logs(self, sink: IO[str]) -> None:
        for line in self.process.stderr or ():
            sink.write(line)

    def _await(self, deadline: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise InvocationTimeout from None
        if not line:
            raise RuntimeError(f"execution environment of {self.spec.name} exited")
        document: dict[str, Any] = json.loads(line)
        return document

    def invoke(self, event: Any, request_id: str) -> dict[str, Any]:
        stdin = self.process.stdin
        if stdin is None:
            raise RuntimeError("execution environment has no stdin")
        stdin.write(json.dumps({"event": event, "request_id": request_id}) + "\n")
        stdin.flush()
        return self._await(time.monotonic() + self.spec.timeout + 1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@dataclass
class _Pool:
    spec: FunctionSpec
    idle: list[Worker] = field(default_factory=list)
    busy: int = 0
    condition: threading.Condition = field(default_factory=threading.Condition)
    cold_starts: int = 0
    everyone: list[Worker] = field(default_factory=list)


class LambdaService:
    """Invokes functions in worker processes; serves the Lambda Invoke HTTP API when started."""

    def __init__(self, functions: list[FunctionSpec], log_stream: IO[str] | None = None) -> None:
        self.pools = {spec.name: _Pool(spec) for spec in functions}
        self.log_stream = log_stream
        self._server: ThreadingHTTPServer | None = None
        self._stopped = threading.Event()

    def invoke(self, name: str, event: Any) -> tuple[bytes, str | None]:
        """Returns (payload, function_error) as the Invoke API would."""
        pool = self.pools[name]
        try:
            checked_out = self._checkout(pool)
        except ServiceStopped:
            return json.dumps({"errorType": "ServiceStopped", "errorMessage": "the Lambda service is stopping"}
                              ).encode(), "Unhandled"
        worker: Worker | None = checked_out
        request_id = str(uuid.uuid4())
        try:
            reply = checked_out.invoke(event, request_id)
        except InvocationTimeout:
            checked_out.stop()
            worker = None
            document = {"errorMessage": f"{request_id} Task timed out after {pool.spec.timeout:.2f} seconds"}
            return json.dumps(document).encode(), "Unhandled"
        except RuntimeError as exc:
            checked_out.stop()
            worker = None
            return json.dumps({"errorType": "Runtime.ExitError", "errorMessage": str(exc)}).encode(), "Unhandled"
        finally:
            self._checkin(pool, worker)
        if "error" in reply:
            return json.dumps(reply["error"]).encode(), "Unhandled"
        return json.dumps(reply["result"]).encode(), None

    def _checkout(self, pool: _Pool) -> Worker:
        """An idle execution environment, or a new one; ``ServiceStopped`` once :meth:`stop` was called (a late
        caller, such as a queue poller or the schedule, must not start processes nobody will stop)."""
        with pool.condition:
            while not pool.idle and pool.busy >= pool.spec.max_concurrency and not self._stopped.is_set():
                pool.condition.wait(timeout=1)
            if self._stopped.is_set():
                raise ServiceStopped
            pool.busy += 1
            if pool.idle:
                return pool.idle.pop()
            pool.cold_starts += 1
        try:
            worker = Worker(pool.spec, self.log_stream)
            with pool.condition:
                stopped = self._stopped.is_set()
                if not stopped:
                    pool.everyone.append(worker)
            if stopped:  # stop() ran while this one started: it did not see it
                worker.stop()
                raise ServiceStopped
            return worker
        except BaseException:
            with pool.condition:
                pool.busy -= 1
                pool.condition.notify()
            raise

    def _checkin(self, pool: _Pool, worker: Worker | None) -> None:
        with pool.condition:
            pool.busy -= 1
            if worker is not None:
                pool.idle.append(worker)
            pool.condition.notify()

    def warm(self, name: str, count: int) -> None:
        """Start ``count`` execution environments ahead of time (tests of many environments)."""
        pool = self.pools[name]
        workers = [Worker(pool.spec, self.log_stream) for _ in range(count)]
        with pool.condition:
            pool.idle.extend(workers)
            pool.everyone.extend(workers)
            pool.cold_starts += count

    def recycle(self) -> None:
        """Drop every idle execution environment: the next invocations start cold."""
        for pool in self.pools.values():
            with pool.condition:
                idle, pool.idle = pool.idle, []
                pool.everyone = [worker for worker in pool.everyone if worker not in idle]
            for worker in idle:
                worker.stop()

    # -- HTTP ---------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        service = self

        class Handler(JsonHandler):

            def do_POST(self) -> None:
                path, _, query = self.path.partition("?")
                match = _INVOKE_PATH.match(path)
                raw = self.read_body()
                if raw is None:
                    return
                if not match:
                    self.send_json(404, json.dumps({"Type": "User", "message": f"Unknown operation: {path}"}
                                                   ).encode(), {"x-amzn-ErrorType": "UnknownOperationException"})
                    return
                qualifiers = parse_qs(query).get("Qualifier")
                name, qualifier = function_name(unquote(match.group(1)), qualifiers[0] if qualifiers else None)
                if name not in service.pools or qualifier not in (None, "$LATEST"):
                    arn = function_arn(name or unquote(match.group(1)), qualifier)
                    self.send_json(404, json.dumps({"Type": "User", "Message": f"Function not found: {arn}"}
                                                   ).encode(), {"x-amzn-ErrorType": "ResourceNotFoundException"})
                    return
                invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                if invocation_type not in ("RequestResponse", "Event", "DryRun"):
                    message = {"Type": "User", "message": f"Invalid invocation type: {invocation_type}"}
                    self.send_json(400, json.dumps(message).encode(),
                                   {"x-amzn-ErrorType": "InvalidParameterValueException"})
                    return
                try:
                    event = json.loads(raw) if raw else {}
                except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
                    message = {"Type": "User", "message": "Could not parse request body into json"}
                    self.send_json(400, json.dumps(message).encode(),
                                   {"x-amzn-ErrorType": "InvalidRequestContentException"})
                    return
                if invocation_type == "DryRun":  # validated, not run
                    self.send_json(204, b"", {})
                    return
                if invocation_type == "Event":
                    threading.Thread(target=service.invoke, args=(name, event), daemon=True).start()
                    self.send_json(202, b"", {})
                    return
                payload, error = service.invoke(name, event)
                headers = {"X-Amz-Executed-Version": "$LATEST"}
                if error:
                    headers["X-Amz-Function-Error"] = error
                self.send_json(200, payload, headers)

        self._server = serve_in_thread(host, port, Handler, what="Lambda Invoke API", option="--lambda-port")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for pool in self.pools.values():
            with pool.condition:
                everyone, pool.everyone, pool.idle = pool.everyone, [], []
                pool.condition.notify_all()
            for worker in everyone:
                worker.stop()


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of the event Lambda's SQS event source mapping sends, from a ``ReceiveMessage`` message."""
    attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        binary = value.get("BinaryValue")
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if isinstance(binary, bytes) else binary,
            "stringListValues": list(value.get("StringListValues") or []),
            "binaryListValues": [base64.b64encode(item).decode() for item in value.get("BinaryListValues") or []],
            "dataType": value.get("DataType"),
        }
    return {
        "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}), "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""), "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_items(payload: bytes, function_error: str | None, message_ids: set[str], *,
                 report_batch_item_failures: bool = True) -> set[str]:
    """The messages of a batch that go back to the queue, as Lambda decides with ``ReportBatchItemFailures``:
    every one when the function failed or its answer is not JSON, or when ``batchItemFailures`` is malformed or
    names a message outside the batch (an empty or null ``itemIdentifier`` included); else the ones it names
    (none for a null answer, an object without the member or an empty list). Without that response type, only a
    function error returns the batch."""
    if function_error:
        return set(message_ids)
    if not report_batch_item_failures:
        return set()
    try:
        document = json.loads(payload) if payload.strip() else None
    except ValueError:
        return set(message_ids)
    if not isinstance(document, dict) or document.get("batchItemFailures") is None:
        return set()
    failures = document["batchItemFailures"]
    if not isinstance(failures, list):
        return set(message_ids)
    named: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in message_ids:
            return set(message_ids)
        named.add(identifier)
    return named


class SqsEventSource:
    """Lambda's SQS event source mapping, for one queue and one function: a thread long-polls the queue (short
    waits, so :meth:`stop` is prompt), invokes the function through ``service`` with the standard SQS event, up
    to ``batch_size`` records, and deletes every message the function does not report as failed; a failed one
    stays, and SQS delivers it again once its visibility timeout has passed. Messages are handled one batch at a
    time (AWS runs several pollers: locally, renewals are few)."""

    def __init__(self, service: LambdaService, function: str, queue_url: str, queue_arn: str, client: Any, *,
                 region: str = "us-east-1", batch_size: int = 1, report_batch_item_failures: bool = True,
                 wait_seconds: int = 1) -> None:
        """``client``: a boto3 SQS client (made by the caller, on one thread: clients are safe to share, their
        creation is not)."""
        self.service = service
        self.function = function
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.client = client
        self.region = region
        self.batch_size = max(1, min(batch_size, 10))  # one ReceiveMessage; Lambda's batching window is not emulated
        self.report_batch_item_failures = report_batch_item_failures
        self.wait_seconds = wait_seconds
        self.delivered = 0
        """Messages deleted after the function handled them."""
        self.redelivered = 0
        """Messages the function reported as failed (or failed with): left to reappear."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SqsEventSource:
        self._thread = threading.Thread(target=self._run, name=f"sqs-{self.function}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; wait up to ``timeout`` for a batch in progress (0: just ask)."""
        self._stopping.set()
        if self._thread is not None and timeout > 0:
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a poller outlives any failure, as Lambda's does
                if self._stopping.is_set():
                    return
                if not failing:
                    LOG.warning("event source %s -> %s: %s: %s (retrying)", self.queue_arn, self.function,
                                type(exc).__name__, exc)
                failing = True
                self._stopping.wait(1)
            else:
                if failing:
                    LOG.info("event source %s -> %s: polling again", self.queue_arn, self.function)
                failing = False

    def poll_once(self) -> int:
        """Receive one batch (waiting up to ``wait_seconds``), invoke the function, delete what succeeded.
        Returns the number of messages received."""
        response = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
        messages = response.get("Messages") or []
        if not messages or self._stopping.is_set():
            return len(messages)  # a batch received while stopping goes back after its visibility timeout
        records = [sqs_record(message, self.queue_arn, self.region) for message in messages]
        payload, error = self.service.invoke(self.function, {"Records": records})
        failed = failed_items(payload, error, {record["messageId"] for record in records},
                              report_batch_item_failures=self.report_batch_item_failures)
        if failed:
            self.redelivered += len(failed)
            LOG.warning("event source %s -> %s: %d of %d message(s) failed%s; they reappear after the visibility "
                        "timeout", self.queue_arn, self.function, len(failed), len(records),
                        f" ({payload[:200].decode(errors='replace')})" if error else "")
        done = [record for record in records if record["messageId"] not in failed]
        if done:
            result = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": record["receiptHandle"]} for index, record in enumerate(done)])
            for failure in result.get("Failed") or []:
                LOG.warning("event source %s: could not delete a handled message (%s); it will be delivered again",
                            self.queue_arn, failure.get("Code"))
            self.delivered += len(done) - len(result.get("Failed") or [])
        return len(messages)
