"""One emulated Lambda execution environment: loads a function's ``app.py`` once, then serves
invocations read as JSON lines on stdin, answering on the original stdout.

The handler's own output (Powertools' JSON logs, EMF metrics) goes to stderr, as CloudWatch Logs
would receive it, so it can never corrupt the protocol.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LocalContext:
    """The attributes of ``LambdaContext`` that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _deadline: float = 0.0

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(path: str, name: str = "handler") -> Any:
    spec = importlib.util.spec_from_file_location(f"lambda_function_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def error_document(exc: BaseException) -> dict[str, Any]:
    """Shaped like the Lambda Python runtime's error response."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": "",
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def main() -> int:
    path = sys.argv[1]
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    timeout = float(os.environ.get("LOCAL_FUNCTION_TIMEOUT", "30"))
    memory = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"))
    try:
        handler = load_handler(path)
        init_error: dict[str, Any] | None = None
    except Exception as exc:  # noqa: BLE001 - an init failure is reported on every invocation, as Lambda does
        init_error = error_document(exc)
        init_error["errorType"] = "Runtime.ImportModuleError"
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        context = LocalContext(function_name=function_name, memory_limit_in_mb=memory, timeout_seconds=timeout,
                               aws_request_id=message.get("request_id") or str(uuid.uuid4()))
        context._deadline = time.monotonic() + timeout
        if init_error is not None:
            reply: dict[str, Any] = {"error": init_error}
        else:
            try:
                result = handler(message["event"], context)
                reply = {"result": result}
            except Exception as exc:  # noqa: BLE001 - reported to the caller, as Lambda does
                document = error_document(exc)
                document["requestId"] = context.aws_request_id
                reply = {"error": document}
        try:
            protocol.write(json.dumps(reply) + "\n")
        except (TypeError, ValueError) as exc:
            protocol.write(json.dumps({"error": error_document(exc)}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
