"""The local Lambda service answers Invoke as Lambda does, read by boto3 (what the token API function, Step
Functions' ``lambda:invoke`` task and users' scripts call it with): every form of ``FunctionName`` Lambda accepts,
``DryRun``, the function-error flag, and ``ResourceNotFoundException`` for a function that does not exist."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from local.lambda_service import FunctionSpec, LambdaService

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

FUNCTION = '''
CALLS = []

class Refused(Exception):
    pass

def handler(event, context):
    CALLS.append(event)
    if event.get("fail"):
        raise Refused('{"error": "refused"}')
    return {"echo": event, "calls": len(CALLS), "arn": context.invoked_function_arn}
'''


@pytest.fixture(scope="module")
def lambda_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    code = tmp_path_factory.mktemp("fn") / "app.py"
    code.write_text(FUNCTION)
    service = LambdaService([FunctionSpec("EchoFunction", code, {}, timeout=10, max_concurrency=1)])
    port = service.serve("127.0.0.1", 0)
    yield boto3.client("lambda", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing",
                       config=Config(retries={"total_max_attempts": 1}))
    service.stop()


def invoke(client: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = client.invoke(**kwargs)
    body = response["Payload"].read()
    return response, json.loads(body) if body else None


@pytest.mark.parametrize("name", [
    "EchoFunction", "EchoFunction:$LATEST",
    "arn:aws:lambda:us-east-1:123456789012:function:EchoFunction",
    "arn:aws:lambda:us-east-1:123456789012:function:EchoFunction:$LATEST",
    "123456789012:function:EchoFunction", "123456789012:function:EchoFunction:$LATEST",
])
def test_a_function_is_invoked_by_name_arn_or_partial_arn(lambda_client: Any, name: str) -> None:
    response, body = invoke(lambda_client, FunctionName=name, Payload=json.dumps({"n": 1}).encode())
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["echo"] == {"n": 1}


def test_the_latest_qualifier_parameter_is_accepted_and_others_do_not_exist(lambda_client: Any) -> None:
    response, body = invoke(lambda_client, FunctionName="EchoFunction", Qualifier="$LATEST", Payload=b"{}")
    assert response["StatusCode"] == 200
    assert body["echo"] == {}
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException, match="EchoFunction:v7"):
        lambda_client.invoke(FunctionName="EchoFunction", Qualifier="v7", Payload=b"{}")


def test_dry_run_validates_without_running(lambda_client: Any) -> None:
    _, before = invoke(lambda_client, FunctionName="EchoFunction", Payload=b"{}")
    response = lambda_client.invoke(FunctionName="EchoFunction", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204
    assert response["Payload"].read() == b""
    _, after = invoke(lambda_client, FunctionName="EchoFunction", Payload=b"{}")
    assert after["calls"] == before["calls"] + 1, "DryRun ran the function"
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="Nope", InvocationType="DryRun", Payload=b"{}")


def test_a_raised_exception_is_an_unhandled_function_error(lambda_client: Any) -> None:
    response, body = invoke(lambda_client, FunctionName="EchoFunction", Payload=json.dumps({"fail": True}).encode())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Refused"
    assert json.loads(body["errorMessage"]) == {"error": "refused"}


@pytest.mark.parametrize("name", ["Nope", "arn:aws:lambda:us-east-1:123456789012:function:Nope",
                                  "123456789012:function:Nope", "EchoFunction:prod", "not a name!"])
def test_an_unknown_function_is_resource_not_found(lambda_client: Any, name: str) -> None:
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException) as raised:
        lambda_client.invoke(FunctionName=name, Payload=b"{}")
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    assert error["Error"]["Message"].startswith("Function not found: arn:aws:lambda:us-east-1:123456789012:function:")


@pytest.mark.parametrize("payload", [b"{not json", b"[" * 100000])
def test_a_payload_that_is_no_json_is_invalid_request_content(lambda_client: Any, payload: bytes) -> None:
    """Invalid or nested past the parser's depth: the service's 400, never a connection dropped unanswered."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        lambda_client.invoke(FunctionName="EchoFunction", Payload=payload)
    assert refused.value.response["Error"]["Code"] == "InvalidRequestContentException"
