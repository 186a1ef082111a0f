"""A local stand-in for the REST API: ``GET /token/{provider}`` as an API Gateway proxy event.

Builds the same event API Gateway's Lambda proxy integration sends (REST API, payload format 1.0)
and invokes the token API function through the local Lambda service. SigV4 (``AWS_IAM``) is not
verified locally; everything after authorisation is the same code path as in AWS.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from local.http import JsonHandler, serve_in_thread

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from local.lambda_service import LambdaService

LOG = logging.getLogger("local.api")
RESOURCE = "/token/{provider}"
MISSING_TOKEN = {"message": "Missing Authentication Token"}


def proxy_event(method: str, raw_path: str, headers: dict[str, str], source_ip: str, stage: str = "local"
                ) -> dict[str, Any] | None:
    """The REST API proxy event for a request, or ``None`` when no route matches (API Gateway 403)."""
    parts = urlsplit(raw_path)
    segments = parts.path.split("/")
    if method != "GET" or len(segments) != 3 or segments[1] != "token" or not segments[2]:
        return None
    multi = parse_qs(parts.query, keep_blank_values=True)
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    return {
        "resource": RESOURCE,
        "path": parts.path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {key: [value] for key, value in headers.items()} or None,
        "queryStringParameters": {key: values[-1] for key, values in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"provider": unquote(segments[2])},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local", "resourcePath": RESOURCE, "httpMethod": method,
            "extendedRequestId": request_id, "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{stage}{parts.path}", "accountId": "123456789012", "protocol": "HTTP/1.1",
            "stage": stage, "domainPrefix": "localhost", "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id, "domainName": "localhost", "apiId": "local",
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent"), "caller": None,
                         "user": None, "userArn": None, "accountId": None, "accessKey": None,
                         "cognitoIdentityPoolId": None, "cognitoIdentityId": None,
                         "cognitoAuthenticationType": None, "cognitoAuthenticationProvider": None},
        },
        "body": None,
        "isBase64Encoded": False,
    }


class ApiGateway:
    def __init__(self, lambdas: LambdaService, function_name: str) -> None:
        self.lambdas = lambdas
        self.function_name = function_name
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        gateway = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                started = time.perf_counter()
                headers = {key: value for key, value in self.headers.items()}
                event = proxy_event(self.command, self.path, headers, self.client_address[0])
                if event is None:
                    self.send_json(403, json.dumps(MISSING_TOKEN).encode(),
                               {"x-amzn-ErrorType": "MissingAuthenticationTokenException"})
                    status = 403
                else:
                    status = gateway.respond(event, self)
                LOG.info("%s %s -> %s (%.0f ms)", self.command, urlsplit(self.path).path, status,
                         (time.perf_counter() - started) * 1000)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = serve_in_thread(host, port, Handler)
        return int(self._server.server_address[1])

    def respond(self, event: dict[str, Any], handler: Any) -> int:
        payload, error = self.lambdas.invoke(self.function_name, event)
        try:
            result = json.loads(payload)
            if error or not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
                raise ValueError("malformed proxy result")
            status = int(result["statusCode"])
            body = result.get("body") or ""
            headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        except (ValueError, TypeError):
            # What API Gateway answers when the integration fails or returns a malformed result.
            status, body, headers = 502, json.dumps({"message": "Internal server error"}), {}
        handler.send_json(status, body.encode() if isinstance(body, str) else body, headers)
        return status

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
