"""A local Lambda service: the Invoke API on loopback, backed by worker processes.

Like ``sam local start-lambda``, but without containers: each execution environment is a separate
Python process with the function's own environment variables and its own memory, so per-environment
state (in-memory caches, warm clients) behaves as in AWS. Concurrent invocations of one function
scale out to more environments, up to ``max_concurrency``; idle ones are reused (warm starts).
"""

from __future__ import annotations

import json
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

from local.http import JsonHandler, serve_in_thread

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

REPO_ROOT = Path(__file__).resolve().parents[1]
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


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

    def invoke(self, name: str, event: Any) -> tuple[bytes, str | None]:
        """Returns (payload, function_error) as the Invoke API would."""
        pool = self.pools[name]
        checked_out = self._checkout(pool)
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
        with pool.condition:
            while not pool.idle and pool.busy >= pool.spec.max_concurrency:
                pool.condition.wait()
            pool.busy += 1
            if pool.idle:
                return pool.idle.pop()
            pool.cold_starts += 1
        try:
            worker = Worker(pool.spec, self.log_stream)
            with pool.condition:
                pool.everyone.append(worker)
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
                match = _INVOKE_PATH.match(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                name = match.group(1) if match else ""
                name = name.rsplit(":", 1)[-1] if name.startswith("arn:") else name
                if not match or name not in service.pools:
                    self.send_json(404, json.dumps({"Type": "User", "message": f"Function not found: {name}"}).encode(),
                               {"x-amzn-ErrorType": "ResourceNotFoundException"})
                    return
                invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                try:
                    event = json.loads(raw) if raw else {}
                except ValueError:
                    message = {"Type": "User", "message": "Could not parse request body into json"}
                    self.send_json(400, json.dumps(message).encode(),
                                   {"x-amzn-ErrorType": "InvalidRequestContentException"})
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

        self._server = serve_in_thread(host, port, Handler)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for pool in self.pools.values():
            with pool.condition:
                everyone, pool.everyone, pool.idle = pool.everyone, [], []
            for worker in everyone:
                worker.stop()
