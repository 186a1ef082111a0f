"""The local API gateway on a loopback socket, in front of a recording stand-in for the Lambda service: URLs of the
deployed shape, SigV4 refusals answered with template.yaml's gateway responses, the proxy event as AWS builds it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
import requests
from botocore.credentials import Credentials as BotoCredentials

from local.api_gateway import ApiGateway
from local.sigv4 import Credentials
from local.template import expanded_template, resources
from tests.support.signing import SigV4

if TYPE_CHECKING:
    from collections.abc import Iterator

CALLER = Credentials("AKIALOCALCALLER", "caller-secret", account_id="111122223333", user_id="AIDACALLER",
                     user_arn="arn:aws:iam::111122223333:user/billing")
SIGNED = SigV4(BotoCredentials(CALLER.access_key, CALLER.secret_key))
ACCESS_DENIED_TYPES = ("MISSING_AUTHENTICATION_TOKEN", "INVALID_SIGNATURE", "ACCESS_DENIED", "EXPIRED_TOKEN")


class RecordingLambdas:
    """What the gateway invokes: records the event, answers 200 with an empty JSON object."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke(self, name: str, event: dict[str, Any]) -> tuple[bytes, bool]:
        self.events.append(event)
        return json.dumps({"statusCode": 200, "body": "{}", "headers": {"Cache-Control": "no-store"}}).encode(), False


@pytest.fixture
def gateway() -> Iterator[tuple[str, RecordingLambdas]]:
    lambdas = RecordingLambdas()
    api = ApiGateway(lambdas, "TokenApiFunction", stage="v1", region="us-east-1",  # type: ignore[arg-type]
                     credentials={CALLER.access_key: CALLER})
    port = api.serve("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}", lambdas
    api.stop()


def test_template_customises_every_refusal_the_gateway_gives() -> None:
    """The refusals below are checked against these: the template's own body for each type."""
    (api,) = resources(expanded_template(), "AWS::Serverless::Api").values()
    for response_type in ACCESS_DENIED_TYPES:
        assert '"error": "access_denied"' in api["Properties"]["GatewayResponses"][response_type][
            "ResponseTemplates"]["application/json"]


def assert_deployed_refusal(response: requests.Response, error_type: str, message: str) -> None:
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["x-amzn-ErrorType"] == error_type
    body = response.json()
    assert body["error"] == "access_denied"
    assert body["error_description"].startswith(message)
    assert body["request_id"] == response.headers["x-amzn-RequestId"]


def test_a_signed_request_reaches_the_function_with_the_deployed_event(
        gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    response = requests.get(f"{url}/v1/token/pyng", params={"scope": "b:read a:write", "min_ttl": "60"},
                            auth=SIGNED, timeout=10)
    assert response.status_code == 200, response.text
    (event,) = lambdas.events
    assert event["resource"] == "/token/{provider}"
    assert event["path"] == "/token/pyng"
    assert event["pathParameters"] == {"provider": "pyng"}
    assert event["queryStringParameters"] == {"scope": "b:read a:write", "min_ttl": "60"}
    context = event["requestContext"]
    assert (context["path"], context["stage"], context["resourcePath"]) == ("/v1/token/pyng", "v1",
                                                                          "/token/{provider}")
    identity = context["identity"]
    assert {key: identity[key] for key in ("accessKey", "accountId", "caller", "user", "userArn")} == {
        "accessKey": "AKIALOCALCALLER", "accountId": "111122223333", "caller": "AIDACALLER", "user": "AIDACALLER",
        "userArn": "arn:aws:iam::111122223333:user/billing"}
    assert context["accountId"] == "111122223333"
    assert event["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIALOCALCALLER/")


@pytest.mark.parametrize("path", ["/token/pyng", "/v2/token/pyng", "/v1/token/", "/v1/token/pyng/extra", "/v1",
                                  "/", "/v1/tokens/pyng"])
def test_any_other_path_is_missing_its_authentication_token(gateway: tuple[str, RecordingLambdas],
                                                            path: str) -> None:
    url, lambdas = gateway
    for auth in (None, SIGNED):
        response = requests.get(f"{url}{path}", auth=auth, timeout=10)
        assert_deployed_refusal(response, "MissingAuthenticationTokenException", "Missing Authentication Token")
    assert lambdas.events == []


def test_another_method_is_missing_its_authentication_token(gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    response = requests.post(f"{url}/v1/token/pyng", auth=SIGNED, timeout=10)
    assert_deployed_refusal(response, "MissingAuthenticationTokenException", "Missing Authentication Token")
    assert lambdas.events == []


def test_unsigned_request_is_refused(gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    assert_deployed_refusal(requests.get(f"{url}/v1/token/pyng", timeout=10),
                            "MissingAuthenticationTokenException", "Missing Authentication Token")
    assert lambdas.events == []


def test_mis_signed_request_is_refused(gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    wrong = SigV4(BotoCredentials(CALLER.access_key, "not-the-secret"))
    response = requests.get(f"{url}/v1/token/pyng", params={"scope": "a b"}, auth=wrong, timeout=10)
    assert_deployed_refusal(response, "InvalidSignatureException",
                            "The request signature we calculated does not match the signature you provided. Check "
                            "your AWS Secret Access Key and signing method. Consult the service documentation for "
                            "details.")
    assert "scope=a%20b" in response.json()["error_description"]  # what API Gateway says it signed
    assert lambdas.events == []


def test_unknown_access_key_is_refused(gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    unknown = SigV4(BotoCredentials("AKIANOBODY", CALLER.secret_key))
    assert_deployed_refusal(requests.get(f"{url}/v1/token/pyng", auth=unknown, timeout=10),
                            "UnrecognizedClientException", "The security token included in the request is invalid.")
    assert lambdas.events == []


@pytest.mark.parametrize("minutes", [-16, 16])
def test_stale_or_early_signature_is_refused(gateway: tuple[str, RecordingLambdas], minutes: int) -> None:
    url, lambdas = gateway
    shifted = datetime.now(UTC) + timedelta(minutes=minutes)
    with mock.patch("botocore.auth.get_current_datetime", return_value=shifted.replace(tzinfo=None)):
        response = requests.get(f"{url}/v1/token/pyng", auth=SIGNED, timeout=10)
    expected = "Signature expired: " if minutes < 0 else "Signature not yet current: "
    assert_deployed_refusal(response, "InvalidSignatureException", expected)
    assert lambdas.events == []


@pytest.mark.parametrize("result", [(b"not json", False), (b'{"errorMessage": "boom"}', True),
                                    (b'{"statusCode": "200"}', False),
                                    (b'{"statusCode": 200, "body": {"access_token": "t"}}', False),
                                    (b'{"statusCode": 200, "body": "{}", "headers": ["Cache-Control"]}', False),
                                    (b'{"statusCode": true, "body": "{}"}', False),
                                    (b'{"statusCode": 99, "body": "{}"}', False)])
def test_a_failed_integration_is_the_deployed_5xx_response(gateway: tuple[str, RecordingLambdas],
                                                           result: tuple[bytes, bool]) -> None:
    url, lambdas = gateway
    with mock.patch.object(lambdas, "invoke", return_value=result):
        response = requests.get(f"{url}/v1/token/pyng", auth=SIGNED, timeout=10)
    assert response.status_code == 502
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
    assert response.json() == {"error": "server_error", "error_description": "Internal server error",
                               "request_id": response.headers["x-amzn-RequestId"]}


@pytest.mark.parametrize("length", ["-1", "abc", "99999999999999999999", "1_0"])
def test_a_malformed_content_length_is_a_bad_request_not_a_hang(gateway: tuple[str, RecordingLambdas],
                                                                length: str) -> None:
    """A length that is no plain number of bytes is answered 400 and the connection closed: never read until the
    client hangs up (``-1``), never a dropped connection without an answer; nothing reaches the function."""
    import socket

    url, lambdas = gateway
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /v1/token/pyng HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert lambdas.events == []


def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``request`` as written and reads the answer until the gateway closes the connection."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"GET /v1/token/pyng?scope=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "invalid_request"),
    (b"GET /v1/token/pyng HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "invalid_request"),
    (b"BREW /v1/token/pyng HTTP/1.1\r\nHost: x\r\n\r\n", 403, "access_denied"),
    (b"TRACE /v1/token/pyng HTTP/1.1\r\nHost: x\r\n\r\n", 403, "access_denied"),
    (b"GET /v1/token/pyng HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "invalid_request"),
], ids=["70KB-url", "70KB-header", "BREW", "TRACE", "bad-length"])
def test_what_the_http_server_refuses_is_a_deployed_gateway_response(
        gateway: tuple[str, RecordingLambdas], request_bytes: bytes, status: int, error: str) -> None:
    """No HTML page from the standard library: JSON in the template's gateway-response shape, ``no-store``; an
    unknown method is ``Missing Authentication Token``, as for any method the API has no route for."""
    url, lambdas = gateway
    code, headers, body = _raw(url, request_bytes)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert (headers["cache-control"], headers["pragma"]) == ("no-store", "no-cache")
    document = json.loads(body)
    assert document["error"] == error
    assert document["request_id"] == headers["x-amzn-requestid"]
    assert "aaaa" not in document["error_description"]  # the caller's input is not echoed
    if status == 403:
        assert document["error_description"] == "Missing Authentication Token"
    assert lambdas.events == []


def test_head_is_missing_its_authentication_token_without_a_body(gateway: tuple[str, RecordingLambdas]) -> None:
    url, lambdas = gateway
    code, headers, body = _raw(url, b"HEAD /v1/token/pyng HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 403
    assert (headers["content-type"], headers["cache-control"]) == ("application/json", "no-store")
    assert int(headers["content-length"]) > 0
    assert body == b""
    assert lambdas.events == []
