"""Unit-test fixtures: in-process moto (no endpoint overrides), dummy credentials, handler loading by path."""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE = "tokens-unit"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                 "AWS_ENDPOINT_URL_LAMBDA", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "TokenVending")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "token-vending")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")


def load_app(name: str) -> ModuleType:
    """Each function file is app.py: load it by path under a unique module name. ``token_api`` is the token
    API's; any other name is a provider (``invoice_cloud`` or ``invoice-cloud``): the one provider function
    loaded as that provider's deployed copy (``CONNECTION_NAME``, which it reads when loaded)."""
    folder = "token_api" if name == "token_api" else "provider"
    path = REPO_ROOT / "functions" / folder / "app.py"
    spec = importlib.util.spec_from_file_location(f"app_{name}_{uuid.uuid4().hex}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.get("CONNECTION_NAME")
    if folder == "provider":
        os.environ["CONNECTION_NAME"] = name.replace("_", "-")
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("CONNECTION_NAME", None)
        else:
            os.environ["CONNECTION_NAME"] = previous
    return module


class Context:
    function_name = "unit"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:unit"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 20_000


@pytest.fixture
def context() -> Context:
    return Context()


@pytest.fixture
def moto_table() -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        import boto3

        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        yield client
