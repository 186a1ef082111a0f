"""A local stand-in for the REST API: ``GET /{stage}/token/{provider}``, ``AWS_IAM`` auth, the Lambda proxy event.

What a caller can tell apart from API Gateway is done as API Gateway does it: the URL has the deployed shape (the
stage is the first path segment); every other path or method gets ``Missing Authentication Token``; the SigV4
signature is verified from the request as received (:mod:`local.sigv4`) with the credentials the stack knows;
refusals are the gateway responses template.yaml deploys (status, headers, body, rendered from the template, plus
the ``x-amzn-ErrorType`` and ``x-amzn-RequestId`` headers API Gateway adds); and the proxy event (REST API,
payload format 1.0) carries the verified caller in ``requestContext.identity``. What it cannot do (IAM policy and
resource policy evaluation, throttling), docs/local-run.md says.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from local.http import JsonHandler, serve_in_thread
from local.sigv4 import Credentials, Request, SignatureRefused, verify
from local.template import expanded_template, resources

if TYPE_CHECKING:
    from collections.abc import Mapping
    from http.server import ThreadingHTTPServer

    from local.lambda_service import LambdaService

LOG = logging.getLogger("local.api")
RESOURCE = "/token/{provider}"
_DEFAULT_TEMPLATE = '{"message":$context.error.messageString}'
"""API Gateway's own body of a gateway response that the API does not customise."""


@dataclass(frozen=True)
class GatewayResponse:
    """One ``GatewayResponses`` entry of the API as deployed."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    template: str = _DEFAULT_TEMPLATE

    def render(self, response_type: str, message: str, request_id: str, error_type: str, status: int
               ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body; ``status`` is the type's own, unless the API customised it."""
        body = (self.template.replace("$context.error.messageString", json.dumps(message))
                .replace("$context.error.message", json.dumps(message)[1:-1])
                .replace("$context.error.responseType", response_type)
                .replace("$context.requestId", request_id))
        headers = {**self.headers, "x-amzn-RequestId": request_id, "x-amzn-ErrorType": error_type}
        return self.status or status, headers, body.encode()


def gateway_responses(template: Mapping[str, Any] | None = None) -> dict[str, GatewayResponse]:
    """The REST API's ``GatewayResponses`` of template.yaml: static header values (``'no-store'``) unquoted, the
    ``application/json`` template as written."""
    template = template if template is not None else expanded_template()
    (api,) = resources(template, "AWS::Serverless::Api").values()
    found = {}
    for response_type, spec in (api["Properties"].get("GatewayResponses") or {}).items():
        headers = (spec.get("ResponseParameters") or {}).get("Headers") or {}
        found[response_type] = GatewayResponse(
            status=int(spec["StatusCode"]) if "StatusCode" in spec else None,
            headers={name: str(value).strip("'") for name, value in headers.items()},
            template=(spec.get("ResponseTemplates") or {}).get("application/json", _DEFAULT_TEMPLATE))
    return found


def route(method: str, path: str, stage: str) -> str | None:
    """The ``{provider}`` of ``GET /{stage}/token/{provider}``; ``None`` where the API has no method."""
    segments = path.split("/")
    if method != "GET" or len(segments) != 4 or segments[:3] != ["", stage, "token"] or not segments[3]:
        return None
    return segments[3]


def proxy_event(method: str, target: str, headers: list[tuple[str, str]], source_ip: str, caller: Credentials,
                *, stage: str, provider: str, request_id: str | None = None) -> dict[str, Any]:
    """The REST API proxy event of a verified request: ``path`` without the stage, ``requestContext.path`` with
    it, the caller's IAM identity in ``requestContext.identity``."""
    path, _, query = target.partition("?")
    multi = parse_qs(query, keep_blank_values=True)
    request_id = request_id or str(uuid.uuid4())
    now = datetime.now(UTC)
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    user_agent = next((value for name, value in headers if name.lower() == "user-agent"), None)
    return {
        "resource": RESOURCE,
        "path": path.removeprefix(f"/{stage}"),
        "httpMethod": method,
        "headers": {name: values[-1] for name, values in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {key: values[-1] for key, values in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"provider": unquote(provider)},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local", "resourcePath": RESOURCE, "httpMethod": method,
            "extendedRequestId": request_id, "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": path, "accountId": caller.account_id, "protocol": "HTTP/1.1",
            "stage": stage, "domainPrefix": "localhost", "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id, "domainName": "localhost", "apiId": "local",
            "identity": {"sourceIp": source_ip, "userAgent": user_agent, "accessKey": caller.access_key,
                         "accountId": caller.account_id, "caller": caller.user_id, "user": caller.user_id,
                         "userArn": caller.user_arn, "principalOrgId": None,
                         "cognitoIdentityPoolId": None, "cognitoIdentityId": None,
                         "cognitoAuthenticationType": None, "cognitoAuthenticationProvider": None},
        },
        "body": None,
        "isBase64Encoded": False,
    }


def missing_authentication_token() -> SignatureRefused:
    """API Gateway's answer to a method or path the API has no route for, signed or not."""
    return SignatureRefused("MISSING_AUTHENTICATION_TOKEN", "MissingAuthenticationTokenException",
                            "Missing Authentication Token")


def _proxy_result(result: Any) -> bool:
    """Whether a function's result is a proxy response API Gateway can send: an HTTP status code (a number, not a
    boolean), a string body (or none) and an object of headers (or none); anything else is its 502."""
    if not isinstance(result, dict):
        return False
    status, body, headers = result.get("statusCode"), result.get("body"), result.get("headers")
    return (isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599
            and (body is None or isinstance(body, str)) and (headers is None or isinstance(headers, dict)))


class ApiGateway:
    def __init__(self, lambdas: LambdaService, function_name: str, *, stage: str, region: str,
                 credentials: Mapping[str, Credentials],
                 responses: Mapping[str, GatewayResponse] | None = None) -> None:
        self.lambdas = lambdas
        self.function_name = function_name
        self.stage = stage
        self.region = region
        self.credentials = dict(credentials)
        self.responses = dict(responses) if responses is not None else gateway_responses()
        self._server: ThreadingHTTPServer | None = None

    def gateway_response(self, response_type: str, status: int, message: str, error_type: str, request_id: str
                         ) -> tuple[int, dict[str, str], bytes]:
        """The deployed gateway response of a type (``DEFAULT_4XX``/``DEFAULT_5XX`` where it is not customised)."""
        fallback = "DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX"
        response = self.responses.get(response_type) or self.responses.get(fallback) or GatewayResponse()
        return response.render(response_type, message, request_id, error_type, status)

    def authorise(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> tuple[
            str, Credentials]:
        """The route's ``{provider}`` and the verified caller, or :class:`SignatureRefused`: the method must exist
        (else ``Missing Authentication Token``, whatever the signature), then the signature must verify."""
        provider = route(method, target.partition("?")[0], self.stage)
        if provider is None:
            raise missing_authentication_token()
        return provider, verify(Request(method, target, headers, body), self.credentials, self.region)

    def serve(self, host: str, port: int) -> int:
        gateway = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                started = time.perf_counter()
                request_id = str(uuid.uuid4())
                headers = list(self.headers.items())
                body = self.read_body()
                if body is None:
                    return
                # http.server decodes the request line as ISO-8859-1; its bytes are UTF-8 (percent-encoded if the
                # client follows RFC 3986).
                target = self.path.encode("latin-1", "replace").decode("utf-8", "replace")
                try:
                    provider, caller = gateway.authorise(self.command, target, headers, body)
                except SignatureRefused as refused:
                    status, response_headers, response = gateway.gateway_response(
                        refused.response_type, 403, refused.message, refused.error_type, request_id)
                    self.send_json(status, response, response_headers)
                    outcome = f"{status} {refused.error_type}"
                else:
                    event = proxy_event(self.command, target, headers, self.client_address[0], caller,
                                        stage=gateway.stage, provider=provider, request_id=request_id)
                    outcome = str(gateway.respond(event, self, request_id))
                LOG.info("%s %s -> %s (%.0f ms)", self.command, target.partition("?")[0], outcome,
                         (time.perf_counter() - started) * 1000)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

            def error_response(self, code: int, message: str) -> tuple[int, dict[str, str], bytes]:
                """The deployed gateway response of what the standard library refuses: a method the API has no
                route for (HEAD, TRACE, an unknown verb: the library's 501) is ``Missing Authentication Token``
                as any other; a request line or header too long (414, 431) or unparsable (400) keeps its status
                through ``DEFAULT_4XX``."""
                request_id = str(uuid.uuid4())
                if code == HTTPStatus.NOT_IMPLEMENTED:
                    refused = missing_authentication_token()
                    return gateway.gateway_response(refused.response_type, 403, refused.message,
                                                    refused.error_type, request_id)
                error_type = "InternalServerErrorException" if code >= 500 else "BadRequestException"
                return gateway.gateway_response("DEFAULT_5XX" if code >= 500 else "DEFAULT_4XX", code, message,
                                                error_type, request_id)

        self._server = serve_in_thread(host, port, Handler, what="API", option="--api-port")
        return int(self._server.server_address[1])

    def respond(self, event: dict[str, Any], handler: Any, request_id: str) -> int:
        payload, error = self.lambdas.invoke(self.function_name, event)
        try:
            result = json.loads(payload)
            if error or not _proxy_result(result):
                raise ValueError("malformed proxy result")
            status = int(result["statusCode"])
            body = result.get("body") or ""
            headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        except (ValueError, TypeError, RecursionError):
            # What API Gateway answers when the function fails or returns a malformed proxy result: 502
            # "Internal server error", through the API's DEFAULT_5XX gateway response.
            status, headers, raw = self.gateway_response("DEFAULT_5XX", 502, "Internal server error",
                                                         "InternalServerErrorException", request_id)
            handler.send_json(status, raw, headers)
            return status
        handler.send_json(status, body.encode(), headers)
        return status

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
