"""Integration fixtures: DynamoDB Local, moto server (Secrets Manager), loopback provider emulators
and the local Lambda/API stack -- the same stack ``make local`` runs."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from local.providers import LOCAL_CREDENTIALS, EmulatorFleet, local_credentials
from local.stack import DEFAULT_CONNECTIONS, LocalStack, StackConfig, connections_parameter
from tests.support.dynamodb_local import DynamoDBLocal, free_port
from tests.support.fleet import FleetClock, Shared
from tests.support.harness import LogCapture, aws_clients, create_table
from tests.support.signing import signed_get
from token_vending.clients import API_DYNAMODB_CONFIG, DYNAMODB_CONFIG, SECRETS_CONFIG

if TYPE_CHECKING:
    from collections.abc import Iterator

    import requests

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    server = DynamoDBLocal()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def emulators() -> Iterator[EmulatorFleet]:
    with EmulatorFleet() as fleet:
        yield fleet


@pytest.fixture
def make_stack(dynamodb_local: DynamoDBLocal, moto_server: str, emulators: EmulatorFleet
               ) -> Iterator[Any]:
    """Factory: a fresh stack (own table name, own secrets) per call, stopped at teardown."""
    stacks: list[LocalStack] = []

    def factory(**overrides: Any) -> LocalStack:
        logs = LogCapture()
        unique = uuid.uuid4().hex[:8]
        settings: dict[str, Any] = {
            "api_port": 0, "lambda_port": 0, "dynamodb_endpoint": dynamodb_local.endpoint,
            "secrets_endpoint": moto_server, "provider_urls": emulators.urls(), "credentials": dict(LOCAL_CREDENTIALS),
            "table_name": f"tokens-{unique}", "secret_prefix": f"token-vending/test-{unique}", "log_stream": logs,
        }
        if "provider_urls" in overrides:
            settings["provider_urls"] = {**settings["provider_urls"], **overrides.pop("provider_urls")}
        config = StackConfig(**{**settings, **overrides})
        stack = LocalStack(config).start()
        stack.logs = logs  # type: ignore[attr-defined]
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack(make_stack: Any) -> LocalStack:
    return make_stack()


def with_connections(added: dict[str, dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """``make_stack`` overrides deploying the template's default connections and ``added`` (name -> the fields of
    its secret: settings and credentials, ``local_credentials(name)`` unless it names a ``client_id``), as
    configuration alone adds them: the ``Connections`` parameter and the secrets."""
    secrets = {name: {**dict(zip(("client_id", "client_secret"), local_credentials(name), strict=True)), **fields}
               for name, fields in added.items()}
    parameters = {**connections_parameter([*DEFAULT_CONNECTIONS, *added]), **overrides.pop("parameters", {})}
    return {"parameters": parameters, "secrets": {**secrets, **overrides.pop("secrets", {})}, **overrides}


def get_token(stack: LocalStack, provider: str, **params: Any) -> requests.Response:
    """``GET /{stage}/token/{provider}``, SigV4-signed as a caller on AWS signs it."""
    return signed_get(f"{stack.api_url}{provider}", params=params or None, timeout=60)


def table_items(stack: LocalStack) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return list(client.scan(TableName=stack.config.table_name)["Items"])


# --- the in-process fleet model (tests/support/fleet.py) -----------------------------------------------------
@pytest.fixture(scope="module")
def fleet_aws(dynamodb_local: DynamoDBLocal, moto_server: str) -> Iterator[dict[str, Any]]:
    """Clients on loopback with dummy credentials, and one fresh table for this test run."""
    def client(service: str, endpoint: str, config: Any) -> Any:
        return boto3.client(service, endpoint_url=endpoint, config=config, region_name="us-east-1",  # type: ignore[call-overload]
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    dynamodb = client("dynamodb", dynamodb_local.endpoint, DYNAMODB_CONFIG)
    table = f"fleet-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, table)
    yield {
        "dynamodb": dynamodb,
        "api_dynamodb": client("dynamodb", dynamodb_local.endpoint, API_DYNAMODB_CONFIG),
        "secretsmanager": client("secretsmanager", moto_server, SECRETS_CONFIG),
        "table": table,
    }
    dynamodb.delete_table(TableName=table)


@pytest.fixture
def shared(fleet_aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Shared:
    """The wall clock every layer module reads through ``time.time`` becomes the fleet's clock for the test."""
    clock = FleetClock()
    monkeypatch.setattr(time, "time", clock.now)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return Shared(clock=clock, **fleet_aws)


@pytest.fixture(scope="module")
def aws(dynamodb_local: DynamoDBLocal, moto_server: str) -> dict[str, Any]:
    """The provider functions' boto3 clients on loopback (DynamoDB Local, moto for Secrets Manager and KMS)."""
    return aws_clients(dynamodb_local.endpoint, moto_server)
