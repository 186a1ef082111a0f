"""The real SAM CLI on this template: ``sam local invoke`` with the committed ``events/`` and ``env.json``,
``sam local start-lambda`` called with boto3, and ``sam local start-api`` answering the token contract for every
provider, from containers that reach the embedded AWS and the provider emulators (conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
from botocore.config import Config

from local.generate import CONNECTIONS
from local.lambda_service import REPO_ROOT
from local.sam_local import SamLocal, local_architecture
from local.stack import API_FUNCTION
from token_vending.request import fingerprint

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.sam, pytest.mark.slow]

EVENTS = REPO_ROOT / "events"
ROUTES = [provider.route for provider in CONNECTIONS]
"""The connections ``env.json`` and ``events/`` cover, which SAM deploys."""
FUNCTIONS = {provider.route: provider.function for provider in CONNECTIONS}


def issued(backend: Any, route: str) -> set[str]:
    return {token["access_token"] for token in backend[1][route].issued}


def result(completed: Any) -> Any:
    """The function's result: ``sam local invoke`` prints it as the last line of stdout."""
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("route", ROUTES)
def test_sam_local_invoke_runs_each_provider_function_with_its_event(sam: SamLocal, backend: Any, route: str
                                                                      ) -> None:
    body = result(sam.invoke(FUNCTIONS[route], EVENTS / f"invoke-{route}.json"))
    assert body["provider"] == route
    assert body["access_token"] in issued(backend, route), "not the token the emulator issued"
    assert body["expires_in"] > 60


def test_sam_local_invoke_runs_the_token_api_with_an_api_gateway_event(sam: SamLocal, backend: Any,
                                                                       start_lambda: str) -> None:
    """The API function invokes the provider function through ``sam local start-lambda`` (``env.json``)."""
    response = result(sam.invoke(API_FUNCTION, EVENTS / "api-pyng.json"))
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"])["access_token"] in issued(backend, "pyng")


def lambda_client(url: str) -> Any:
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(read_timeout=120, retries={"total_max_attempts": 1}))


def test_start_lambda_invokes_a_provider_function_by_name(start_lambda: str, backend: Any) -> None:
    response = lambda_client(start_lambda).invoke(FunctionName="AriaFunction", Payload=b"{}")
    assert response["StatusCode"] == 200
    body = json.loads(response["Payload"].read())
    assert body["access_token"] in issued(backend, "aria")


@pytest.mark.parametrize("name", ["arn:aws:lambda:us-east-1:123456789012:function:AriaFunction",
                                  "arn:aws:lambda:us-east-1:123456789012:function:AriaFunction:$LATEST"])
def test_start_lambda_invokes_a_provider_function_by_arn(start_lambda: str, backend: Any, name: str) -> None:
    """What Step Functions' ``lambda:invoke`` task sends (the state machine names its function by ARN)."""
    response = lambda_client(start_lambda).invoke(FunctionName=name, Payload=b"{}")
    assert response["StatusCode"] == 200
    assert json.loads(response["Payload"].read())["access_token"] in issued(backend, "aria")


def test_start_lambda_returns_an_error_without_the_function_error_flag(start_lambda: str) -> None:
    """SAM 1.170 drops ``X-Amz-Function-Error`` when the error document has keys besides errorMessage, errorType and
    stackTrace -- Lambda's Python runtime adds requestId. The document is there; the token API reads it as the
    error it is (next test)."""
    response = lambda_client(start_lambda).invoke(FunctionName="PyngFunction",
                                                  Payload=json.dumps({"scope": "billing:admin"}).encode())
    document = json.loads(response["Payload"].read())
    assert document["errorType"] == "InvalidRequest"
    assert json.loads(document["errorMessage"])["error"] == "invalid_request"
    assert "FunctionError" not in response


def get(api: str, path: str, **params: str) -> requests.Response:
    return requests.get(f"{api}{path}", params=params or None, timeout=120)


def query(route: str) -> dict[str, str]:
    """The query of ``events/api-<route>.json``."""
    return json.loads((EVENTS / f"api-{route}.json").read_text())["queryStringParameters"] or {}


@pytest.mark.parametrize("route", ROUTES)
def test_start_api_serves_a_token_for_every_provider(start_api: str, backend: Any, route: str) -> None:
    response = get(start_api, f"/token/{route}", **query(route))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == route
    assert body["access_token"] in issued(backend, route)
    assert response.headers["Cache-Control"] == "no-store"


def test_start_api_forced_refresh_replaces_the_named_token(start_api: str, backend: Any) -> None:
    stack, fleet = backend
    now = time.time()
    stack.client("dynamodb").put_item(TableName=stack.config.table_name, Item={
        "pk": {"S": "invoice-cloud"}, "sk": {"S": "token#"}, "access_token": {"S": "refused-by-the-api"},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now + 3000))},
        "fetched_at": {"N": f"{now - 600:.3f}"}, "lifetime": {"N": "3600"}, "purge_at": {"N": str(int(now + 9999))}})
    before = fleet["invoice-cloud"].token_requests
    response = get(start_api, "/token/invoice-cloud", force_refresh=fingerprint("refused-by-the-api"))
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] in issued(backend, "invoice-cloud") - {"refused-by-the-api"}
    assert fleet["invoice-cloud"].token_requests == before + 1


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("/token/nobody", {}, 404, "unknown_provider"),
    ("/token/pyng", {"scope": "billing:admin"}, 400, "invalid_request"),
    ("/token/pyng", {"min_ttl": "soon"}, 400, "invalid_request"),
])
def test_start_api_answers_contract_errors(start_api: str, path: str, params: dict[str, str], status: int,
                                           code: str) -> None:
    response = get(start_api, path, **params)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_start_api_reports_a_provider_refusal_through_start_lambda(start_api: str, backend: Any) -> None:
    """The provider function's UpstreamRejected reaches the caller as 502 upstream_rejected, although
    ``start-lambda`` drops the error flag."""
    emulator = backend[1]["pyng"]
    good = emulator.credentials
    emulator.set_credentials("someone-else", "another-secret")
    try:
        response = get(start_api, "/token/pyng", scope="billing:customers:invite")  # a scope set not cached
    finally:
        emulator.set_credentials(*good)
    assert response.status_code == 502, response.text
    body = response.json()
    assert (body["error"], body["upstream_error"]) == ("upstream_rejected", "invalid_client")


def test_stop_removes_only_the_containers_running_this_checkouts_build(engine: str, built: Path, tmp_path: Path
                                                                        ) -> None:
    """Another checkout's tests or ``make sam-local`` may run SAM containers meanwhile: stopping ours leaves
    theirs alone (and removes ours, started or not)."""
    image = os.environ.get("SAM_LOCAL_BASE_IMAGE", f"public.ecr.aws/lambda/python:3.13-{local_architecture()}")

    def create(code: Path) -> str:
        return subprocess.run(["docker", "create", "--label", "sam.cli.container.type=lambda", "--mount",
                               f"type=bind,source={code},target=/var/task,readonly", image],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    def exists(container: str) -> bool:
        return subprocess.run(["docker", "container", "inspect", container], capture_output=True,
                              check=False, timeout=60).returncode == 0

    runner = SamLocal(built)
    ours, theirs = create(built.parent / "PyngFunction"), create(tmp_path)
    try:
        runner.stop()
        assert not exists(ours)
        assert exists(theirs)
    finally:
        subprocess.run(["docker", "rm", "-f", ours, theirs], capture_output=True, check=False, timeout=60)
