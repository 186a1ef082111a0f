"""Running the real provider-function code in the test process against AWS on loopback (DynamoDB Local, moto
server): the clients, the table, and execution environments whose logs, EMF documents and answers are kept.
Shared by the tests that need a throwaway provider profile the local stack does not deploy."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import boto3

from token_vending.clients import DYNAMODB_CONFIG, SECRETS_CONFIG
from token_vending.exceptions import TokenVendingError

if TYPE_CHECKING:
    from token_vending.profile import ClientAuth, ClientCredentialsProfile
    from token_vending.provider_function import ProviderFunction

CREDENTIALS: dict[str, Any] = {"region_name": "us-east-1", "aws_access_key_id": "testing",
                               "aws_secret_access_key": "testing"}


def aws_clients(dynamodb_endpoint: str, moto_endpoint: str) -> dict[str, Any]:
    """The functions' boto3 clients (their own botocore configs), pointed at loopback; KMS on moto too."""
    return {
        "dynamodb": boto3.client("dynamodb", endpoint_url=dynamodb_endpoint, config=DYNAMODB_CONFIG, **CREDENTIALS),
        "secretsmanager": boto3.client("secretsmanager", endpoint_url=moto_endpoint, config=SECRETS_CONFIG,
                                       **CREDENTIALS),
        "kms": boto3.client("kms", endpoint_url=moto_endpoint, **CREDENTIALS),
        "moto": moto_endpoint,
    }


def create_table(dynamodb: Any, name: str) -> None:
    """The template's key schema and TTL attribute (as ``local/stack.py`` creates it)."""
    dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    dynamodb.update_time_to_live(TableName=name,
                                 TimeToLiveSpecification={"Enabled": True, "AttributeName": "purge_at"})


def put_secret(secretsmanager: Any, secret_id: str, **fields: str) -> None:
    """Create or update the provider's secret (a JSON object of ``fields``)."""
    value = json.dumps(fields)
    try:
        secretsmanager.create_secret(Name=secret_id, SecretString=value)
    except secretsmanager.exceptions.ResourceExistsException:
        secretsmanager.put_secret_value(SecretId=secret_id, SecretString=value)


class LogCapture(io.StringIO):
    """Thread-safe text sink: what execution environments send to CloudWatch Logs (log and EMF lines)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


@dataclass
class Outputs:
    """Everything a caller or an operator sees of the function: its log lines (DEBUG), its EMF documents and
    the answers of direct invocations (token bodies and error documents)."""

    logs: io.StringIO = field(default_factory=io.StringIO)
    emf: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([self.logs.getvalue(), *(json.dumps(doc) for doc in self.emf), *self.answers])

    def metric(self, name: str) -> list[float]:
        values: list[float] = []
        for doc in self.emf:
            value = doc.get(name)
            values += value if isinstance(value, list) else [] if value is None else [value]
        return values


def powertools(prefix: str, logs: io.StringIO) -> tuple[Any, Any]:
    """A Logger writing to ``logs`` (its CloudWatch Logs) and EphemeralMetrics, as a function's app.py makes them;
    a service name of its own because Powertools shares a logger's handlers per service name."""
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.metrics import EphemeralMetrics

    service = f"{prefix}-{uuid.uuid4().hex[:8]}"
    logger = Logger(service=service, level="DEBUG", logger_handler=logging.StreamHandler(logs))
    logging.getLogger(service).propagate = False
    return logger, EphemeralMetrics(namespace="TokenVending", service="token-vending")


class Environment:
    """One execution environment: the real ``ProviderFunction``, flushing its metrics after every invocation
    as ``@metrics.log_metrics`` would."""

    def __init__(self, function: ProviderFunction, metrics: Any, outputs: Outputs) -> None:
        self.function = function
        self.metrics = metrics
        self.outputs = outputs

    @classmethod
    def start(cls, profile: ClientCredentialsProfile, aws: dict[str, Any], outputs: Outputs) -> Environment:
        from token_vending.provider_function import ProviderFunction

        logger, metrics = powertools(profile.name, outputs.logs)
        function = ProviderFunction(profile, logger=logger, metrics=metrics,
                                    dynamodb=aws["dynamodb"], secretsmanager=aws["secretsmanager"])
        return cls(function, metrics, outputs)

    def call(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """The token body, or the error document (``str(exc)``, Lambda's errorMessage) with its errorType."""
        try:
            answer: dict[str, Any] = self.function.handle(event or {}, None)
        except TokenVendingError as exc:
            answer = {**json.loads(str(exc)), "errorType": type(exc).__name__, "status": exc.status}
        finally:
            if self.metrics.metric_set:
                self.outputs.emf.append(self.metrics.serialize_metric_set())
            self.metrics.clear_metrics()
        self.outputs.answers.append(json.dumps(answer))
        return answer


@dataclass
class Deployment:
    """One provider function deployed against loopback AWS (its table, its secret) and a token server: what the
    integration tests of a client authentication method share. Subclasses name the provider and its default
    method (``provider``, ``auth``) and add what their method needs."""

    provider: ClassVar[str] = "provider"
    auth: ClassVar[ClientAuth | None] = None

    aws: dict[str, Any]
    server: Any
    table: str
    secret_id: str
    outputs: Outputs = field(default_factory=Outputs)

    def environment(self, auth: ClientAuth | None = None) -> Environment:
        """A fresh execution environment with the Logger/Metrics/boto3 wiring of ``functions/provider/app.py``."""
        from token_vending.profile import BodyEncoding, ClientAuth, ClientCredentialsProfile, ScopeMode

        profile = ClientCredentialsProfile(name=self.provider, auth=auth or self.auth or ClientAuth.BASIC_HEADER,
                                           body=BodyEncoding.FORM, scope=ScopeMode.OPTIONAL)
        return Environment.start(profile, self.aws, self.outputs)

    def put_secret(self, **fields: str) -> None:
        put_secret(self.aws["secretsmanager"], self.secret_id, **fields)
