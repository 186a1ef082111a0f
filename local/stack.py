"""The whole service on loopback: embedded AWS, provider emulators, Lambda service and API.

Used by ``make local`` (``python -m local``) and by the integration tests, so the tests exercise
exactly what a developer runs. DynamoDB can be the embedded moto server or any other endpoint
(the tests pass DynamoDB Local's).

The stack runs the connections the template's ``Connections`` parameter gives (``StackConfig.parameters``;
the template's five by default), each with the function, environment, renewal queue and event source the
template gives it, and its secret seeded (``token-vending/local/<name>``): credentials and, for a connection
added by configuration, its settings (``token_url``, ``region``, ``scopes``, ...), exactly the fields a deployed
connection's secret holds. ``make local`` adds :data:`LOCAL_CONNECTIONS`.

Refresh ahead as deployed: ``refresh_ahead_every`` runs the rate schedule (EventBridge Scheduler's payload
``{"refresh_ahead": true}``); ``renewals`` adds the per-token renewal timers -- one SQS queue per provider
function (on the embedded moto server, which honours ``DelaySeconds`` and visibility timeouts; it is started for
SQS even when DynamoDB and Secrets Manager are elsewhere), each function's ``RENEWAL_QUEUE_URL`` and
``AWS_ENDPOINT_URL_SQS`` pointed at it, and Lambda's event source mapping emulated by
:class:`local.lambda_service.SqsEventSource`. Both are off unless asked for (the tests opt in); ``make local``
turns both on. The provider functions, their queues' properties and their event sources (BatchSize 1,
``ReportBatchItemFailures``) are the ones template.yaml deploys; without ``renewals`` ``RENEWAL_QUEUE_URL`` is set
empty, whatever the template's ``!Ref`` to the queue evaluates to locally.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from local.api_gateway import ApiGateway
from local.lambda_service import REPO_ROOT, FunctionSpec, LambdaService, SqsEventSource
from local.sigv4 import Credentials
from local.template import Evaluator, expanded_template, function_env, load_template, provider_functions
from token_vending import constants

if TYPE_CHECKING:
    from collections.abc import Iterable

LOG = logging.getLogger("local")
TABLE_NAME = constants.LOCAL_TABLE_NAME
API_FUNCTION = "TokenApiFunction"
PROVIDER_TIMEOUT = 25
"""The provider functions' timeout (template.yaml's)."""
API_TIMEOUT = 29
RENEWAL_VISIBILITY_TIMEOUT = 6 * PROVIDER_TIMEOUT
"""The renewal queues' visibility timeout unless the template gives one: six times the function's timeout, as AWS
advises for a queue a Lambda event source mapping reads. A renewal that failed is delivered again after it."""
_QUEUE_ATTRIBUTES = ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "MaximumMessageSize",
                     "ReceiveMessageWaitTimeSeconds")
"""The ``AWS::SQS::Queue`` properties that are also ``CreateQueue`` attributes (and matter locally)."""


@dataclass(frozen=True)
class RenewalSource:
    """A provider function's SQS event source (its renewal queue) as template.yaml declares it: the function's
    ``Type: SQS`` event and the queue it names. Before the template has one, the defaults describe it."""

    batch_size: int = 1
    report_batch_item_failures: bool = True
    queue_attributes: dict[str, str] = field(
        default_factory=lambda: {"VisibilityTimeout": str(RENEWAL_VISIBILITY_TIMEOUT)})
    """``CreateQueue`` attributes (strings)."""


@dataclass(frozen=True)
class DeployedProvider:
    """One connection's function as template.yaml deploys it (the loop over ``Connections``)."""

    route: str
    """The connection's name: its route, partition key and metric dimension (``pyng``, ``AriaAu``)."""
    function: str
    """The function's logical ID: its name in the local Lambda service."""
    environment: dict[str, str]
    """Its environment with the parameters' defaults (or the values given), before local overrides."""
    renewal: RenewalSource = field(default_factory=RenewalSource)
    """Its renewal queue and event source mapping (used with ``StackConfig.renewals``)."""

    @property
    def key(self) -> str:
        """The connection's key (its item in ``Connections``): the prefix of its logical IDs."""
        return self.function.removesuffix("Function")

    @property
    def provider(self) -> str:
        """The name of the catalogue entry the connection belongs to (``aria`` for ``AriaAu``)."""
        from token_vending.catalogue import connection

        profile = connection(self.route)
        return profile.provider if profile is not None else self.route

    @property
    def added(self) -> bool:
        """Whether the connection is one added by configuration (not one of the template's own five): it has no
        parameters, so its settings live in its secret."""
        return self.route != self.provider


DeployedConnection = DeployedProvider


def renewal_source(template: dict[str, Any], logical_id: str, evaluate: Evaluator) -> RenewalSource:
    """The function's ``Type: SQS`` event and its queue's properties, evaluated; the defaults when it has none.
    SAM's own default batch size for SQS is 10; the template says 1."""
    events = template["Resources"][logical_id]["Properties"].get("Events") or {}
    for event in events.values():
        if not isinstance(event, dict) or event.get("Type") != "SQS":
            continue
        properties = event.get("Properties") or {}
        queue = properties.get("Queue")
        target = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
        queue_id = target[0] if isinstance(target, list) and target else None
        queue_properties = evaluate(template["Resources"][queue_id].get("Properties") or {}) if isinstance(
            queue_id, str) and queue_id in template["Resources"] else {}
        attributes = {"VisibilityTimeout": str(RENEWAL_VISIBILITY_TIMEOUT),
                      **{name: str(queue_properties[name]) for name in _QUEUE_ATTRIBUTES if name in queue_properties}}
        return RenewalSource(batch_size=int(evaluate(properties.get("BatchSize", 10))),
                             report_batch_item_failures="ReportBatchItemFailures" in (
                                 evaluate(properties.get("FunctionResponseTypes")) or []),
                             queue_attributes=attributes)
    return RenewalSource()


def deployed(parameters: dict[str, str] | None = None) -> tuple[dict[str, DeployedProvider], dict[str, str]]:
    """Every connection's function of template.yaml (name -> it, in ``Connections`` order) and the token API
    function's environment, evaluated with the parameters' defaults (``""`` for a parameter without one, such as
    PyngTokenUrl) or ``parameters`` (``{"Connections": "InvoiceCloud,...,AriaAu"}``)."""
    template = expanded_template(parameters=parameters)
    given = {name: "" for name, spec in template["Parameters"].items() if "Default" not in spec}
    evaluate = Evaluator(template, {**given, **(parameters or {})}, resource_ref=lambda name: name)

    def environment(logical_id: str) -> dict[str, str]:
        return {name: str(value) for name, value in evaluate(function_env(template, logical_id)).items()}

    providers = {route: DeployedProvider(route, logical_id, environment(logical_id),
                                         renewal_source(template, logical_id, evaluate))
                 for route, logical_id in provider_functions(template).items()}
    return providers, environment(API_FUNCTION)


PROVIDERS: tuple[DeployedProvider, ...] = tuple(deployed()[0].values())
"""The connections template.yaml deploys with its defaults (the five default connections), in its order."""
PYNG_SCOPES = next(p.environment["ALLOWED_SCOPES"] for p in PROVIDERS if p.route == "pyng")
"""PyngScopes' default: the four scopes Pyng's document lists."""
DEFAULT_CONNECTIONS: tuple[str, ...] = tuple(provider.key for provider in PROVIDERS)
"""The keys of the template's ``Connections`` default."""

LOCAL_CONNECTIONS: dict[str, dict[str, Any]] = {
    # Aria's Australian region (its documented AUS/Prod realm), served locally by an Aria emulator of its own,
    # whose issuer is that realm's: a token shows which region issued it.
    "AriaAu": {"region": "AUS", "stage": "Prod"},
    # A second Pyng organisation: its own credentials, and read-only scopes.
    "PyngOrg2": {"scopes": "billing:customers:read billing:batches:read", "default_scopes": "billing:batches:read"},
}
"""The connections ``make local`` serves besides the template's defaults: key -> the settings in its secret
(credentials and the local ``token_url`` are added). Adding one is configuration only (``--config``)."""


def connections_parameter(keys: Iterable[str]) -> dict[str, str]:
    """The template parameter that deploys these connections: ``{"Connections": "InvoiceCloud,...,AriaAu"}``."""
    return {"Connections": ",".join(keys)}


LOCAL_PARAMETERS: dict[str, str] = connections_parameter([*DEFAULT_CONNECTIONS, *LOCAL_CONNECTIONS])
"""The parameters of ``make local``'s stack (and of ``env.json`` and ``events/``): the default connections and
:data:`LOCAL_CONNECTIONS`."""

DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


REGION = DUMMY_AWS["AWS_REGION"]
"""The local stack's region: the one its functions run in and callers scope their signatures to."""


def stage_name(parameters: dict[str, str] | None = None) -> str:
    """The API's stage (template parameter ``StageName``): the first path segment of its URLs."""
    return str(Evaluator(load_template(), parameters).ref("StageName"))


def caller_credentials() -> dict[str, Credentials]:
    """The credentials the local gateway accepts signatures from: the ones this process runs with
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), ``testing``/``testing`` when unset."""
    key = os.environ.get("AWS_ACCESS_KEY_ID") or DUMMY_AWS["AWS_ACCESS_KEY_ID"]
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]
    token = os.environ.get("AWS_SESSION_TOKEN") or None
    return {key: Credentials(key, secret, token)}


def secret_name(route: str, prefix: str = "token-vending/local") -> str:
    return f"{prefix}/{route}"


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    api_port: int = 3000
    lambda_port: int = 3001
    aws_port: int = constants.LOCAL_AWS_PORT
    dynamodb_endpoint: str | None = None
    """``None``: the embedded moto server serves DynamoDB too."""
    secrets_endpoint: str | None = None
    """``None``: the embedded moto server."""
    provider_urls: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Connection name -> its whole secret document (credentials and settings: a PEM key, a certificate, a
    ``token_url``, ``region``...), instead of ``credentials``."""
    function_env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every function (e.g. ``MEMORY_CACHE_SECONDS``)."""
    provider_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra environment per connection name."""
    table_name: str = TABLE_NAME
    secret_prefix: str = "token-vending/local"  # noqa: S105 - a name prefix, not a secret
    max_concurrency: int = 8
    log_stream: IO[str] | None = None
    create_resources: bool = True
    client_auth: dict[str, str] = field(default_factory=dict)
    """Connection name -> ``private_key_jwt``: that connection signs client assertions with a KMS key the stack
    creates in the embedded AWS (ECC P-256), as a deployment would with ``<Key>SigningKeyArn`` (a default
    connection: its function's environment) or with a key aliased ``alias/<stack>/<Key>`` named by its secret's
    ``signing_key_id`` (an added one); its secret then holds no ``client_secret``.
    :meth:`LocalStack.signing_public_key` gives the key to register."""
    parameters: dict[str, str] = field(default_factory=dict)
    """Template parameter values other than the defaults (``Connections``, ``PyngDefaultScopes``, ...)."""
    refresh_ahead_every: float | None = None
    """Seconds between local refresh-ahead runs (the template's EventBridge schedule); ``None``: off."""
    renewals: bool = False
    """Per-token renewal timers: an SQS queue per provider function and the event source mapping that invokes it
    (see the module's docstring). ``False``: ``RENEWAL_QUEUE_URL`` is empty, tokens are renewed by the schedule's
    interval (or when callers find them in their margin)."""
    sqs_endpoint: str | None = None
    """Where the renewal queues live; ``None``: the embedded moto server (started for them if need be, on
    ``aws_port``: pass 0 for a free port when DynamoDB and Secrets Manager are external)."""
    callers: dict[str, Credentials] | None = None
    """Access key -> credentials whose SigV4 signatures the API accepts; ``None``: :func:`caller_credentials`."""


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._moto: Any = None
        self.aws_url = ""
        self.sqs_url = ""
        self.renewal_queues: dict[str, str] = {}
        """Connection name -> its renewal queue's URL (empty without ``renewals``)."""
        self.event_sources: list[SqsEventSource] = []
        self.providers: tuple[DeployedProvider, ...] = tuple(deployed(config.parameters)[0].values())
        """The connections' functions this stack runs (template.yaml's, with ``config.parameters``)."""
        self.lambdas: LambdaService | None = None
        self.api: ApiGateway | None = None
        self.stage = stage_name(config.parameters)
        self.api_url = ""
        """The stack's ``ApiUrl`` output as deployed (``http://127.0.0.1:3000/v1/token/``): append a provider."""
        self.stage_url = ""
        """The stage's invoke URL (``http://127.0.0.1:3000/v1``): the API's base, without the resource."""
        self.lambda_url = ""
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> LocalStack:
        config = self.config
        needs_sqs = config.renewals and config.sqs_endpoint is None
        if config.dynamodb_endpoint is None or config.secrets_endpoint is None or needs_sqs:
            from moto.server import ThreadedMotoServer

            werkzeug = logging.getLogger("werkzeug")  # moto's access log: a line per request (queue polls too)
            if werkzeug.level == logging.NOTSET:
                werkzeug.setLevel(logging.WARNING)
            self._moto = ThreadedMotoServer(ip_address=config.host, port=config.aws_port, verbose=False)
            self._moto.start()
            self.aws_url = f"http://{config.host}:{self._moto._server.server_port}"
        self.dynamodb_url = config.dynamodb_endpoint or self.aws_url
        self.secrets_url = config.secrets_endpoint or self.aws_url
        self.sqs_url = (config.sqs_endpoint or self.aws_url) if config.renewals else ""
        self._signing_keys: dict[str, str] = {}
        self._signing_aliases: dict[str, str] = {}
        """Added connection -> the alias ARN its secret's ``signing_key_id`` names."""
        self.create_signing_keys()
        if config.create_resources:
            self.create_table()
            self.seed_secrets()
        if config.renewals:
            self.create_renewal_queues()
        self.lambdas = LambdaService(self.function_specs(), log_stream=config.log_stream)
        lambda_port = self.lambdas.serve(config.host, config.lambda_port)
        self.lambda_url = f"http://{config.host}:{lambda_port}"
        # The token API function reaches provider functions through the Invoke API, as in AWS.
        for spec in self.lambdas.pools.values():
            spec.spec.environment["AWS_ENDPOINT_URL_LAMBDA"] = self.lambda_url
        self.api = ApiGateway(self.lambdas, API_FUNCTION, stage=self.stage, region=REGION,
                              credentials=config.callers if config.callers is not None else caller_credentials())
        api_port = self.api.serve(config.host, config.api_port)
        self.stage_url = f"http://{config.host}:{api_port}/{self.stage}"
        self.api_url = f"{self.stage_url}/token/"
        if config.renewals:
            self.start_event_sources()
        if config.refresh_ahead_every:
            threading.Thread(target=self._schedule, args=(config.refresh_ahead_every,), daemon=True).start()
        return self

    def _schedule(self, every: float) -> None:
        """Invokes every provider function with the schedule's payload, as EventBridge Scheduler does."""
        while not self._stopping.wait(every):
            for provider in self.providers:
                if self.lambdas is not None and not self._stopping.is_set():
                    self.lambdas.invoke(provider.function, {"refresh_ahead": True})

    def stop(self) -> None:
        self._stopping.set()
        if self.api is not None:
            self.api.stop()
        for source in self.event_sources:
            source.stop(timeout=0)  # no new batch; one in progress ends when its environment does
        if self.lambdas is not None:
            self.lambdas.stop()
        for source in self.event_sources:
            source.stop()
        if self._moto is not None:
            self._moto.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- AWS resources ------------------------------------------------------------------------
    def client(self, service: str, config: Any = None) -> Any:
        import boto3

        endpoint = {"dynamodb": self.dynamodb_url, "secretsmanager": self.secrets_url, "kms": self.secrets_url,
                    "lambda": self.lambda_url, "sqs": self.sqs_url}[service]
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",  # type: ignore[call-overload]
                            aws_access_key_id="testing", aws_secret_access_key="testing", config=config)  # noqa: S106

    def create_table(self) -> None:
        """The same key schema and TTL attribute as the template's table."""
        dynamodb = self.client("dynamodb")
        try:
            dynamodb.create_table(
                TableName=self.config.table_name, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}])
        except dynamodb.exceptions.ResourceInUseException:
            return
        dynamodb.get_waiter("table_exists").wait(TableName=self.config.table_name,
                                                 WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
        dynamodb.update_time_to_live(TableName=self.config.table_name,
                                     TimeToLiveSpecification={"Enabled": True, "AttributeName": "purge_at"})

    def renewal_queue_name(self, route: str) -> str:
        """``<table>-<route>-renewals`` in SQS's alphabet, at most 80 characters (unique per stack in tests)."""
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.config.table_name}-{route}-renewals")[-80:]

    def create_renewal_queues(self) -> None:
        """One queue per provider function with the template's properties, as a deployment has (idempotent: an
        existing queue is reused)."""
        sqs = self.client("sqs")
        for provider in self.providers:
            url = sqs.create_queue(QueueName=self.renewal_queue_name(provider.route),
                                   Attributes=provider.renewal.queue_attributes)["QueueUrl"]
            self.renewal_queues[provider.route] = url

    def start_event_sources(self) -> None:
        """Lambda's event source mapping of each renewal queue to its provider function (the template's)."""
        if self.lambdas is None:
            raise RuntimeError("the Lambda service is not running")
        from botocore.config import Config

        # One client for every poller, made here (client creation is not thread-safe); its read timeout
        # outlasts the long poll.
        sqs = self.client("sqs", config=Config(connect_timeout=2, read_timeout=10,
                                                retries={"mode": "standard", "total_max_attempts": 2}))
        for provider in self.providers:
            url = self.renewal_queues[provider.route]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.event_sources.append(SqsEventSource(
                self.lambdas, provider.function, url, arn, sqs, batch_size=provider.renewal.batch_size,
                report_batch_item_failures=provider.renewal.report_batch_item_failures).start())

    def create_signing_keys(self) -> None:
        """One KMS signing key per connection configured for ``private_key_jwt`` (moto serves KMS too). A default
        connection gets it as its ``<Key>SigningKeyArn`` parameter would give it (``CLIENT_AUTH`` and
        ``SIGNING_KEY_ID`` in its environment); an added one as a deployment grants it: a key aliased
        ``alias/<stack>/<Key>`` (the local stack's name is its table's), which its secret's ``client_auth`` and
        ``signing_key_id`` name (:meth:`secret_document`)."""
        by_name = {provider.route: provider for provider in self.providers}
        if not self.config.client_auth:
            return
        kms = self.client("kms")
        for route, method in self.config.client_auth.items():
            if method != "private_key_jwt":
                raise ValueError(f"{route}: only private_key_jwt is supported locally (got {method})")
            key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                                 Description=f"token-vending local {route} client assertions")
            arn = key["KeyMetadata"]["Arn"]
            self._signing_keys[route] = arn
            env = self.config.provider_env.setdefault(route, {})
            env["AWS_ENDPOINT_URL_KMS"] = self.secrets_url
            connection = by_name.get(route)
            if connection is not None and connection.added:
                alias = f"alias/{self.config.table_name}/{connection.key}"
                kms.create_alias(AliasName=alias, TargetKeyId=arn)
                self._signing_aliases[route] = arn.split(":key/")[0] + f":{alias}"
            else:
                env.update({"CLIENT_AUTH": method, "SIGNING_KEY_ID": arn})

    def signing_public_key(self, route: str) -> bytes:
        """The PEM public key of ``route``'s signing key: what a provider registers (the JWKS command prints
        it as a JWK)."""
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            PublicFormat,
            load_der_public_key,
        )

        der = self.client("kms").get_public_key(KeyId=self._signing_keys[route])["PublicKey"]
        return load_der_public_key(der).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def secret_name(self, route: str) -> str:
        return secret_name(route, self.config.secret_prefix)

    def secret_document(self, connection: DeployedProvider) -> dict[str, Any] | None:
        """What the connection's secret holds: its document from ``secrets``, else its ``credentials`` (no
        ``client_secret`` when a KMS key signs for it). An added connection's settings are all in its secret, as
        deployed: its emulator's URL (``provider_urls``) as ``token_url`` unless the document names one, and its
        signing key's alias as ``signing_key_id``. ``None``: nothing to seed."""
        name = connection.route
        document = self.config.secrets.get(name)
        if document is None:
            credentials = self.config.credentials.get(name)
            if credentials is None:
                return None
            document = {"client_id": credentials[0]}
            if self.config.client_auth.get(name) != "private_key_jwt":
                document["client_secret"] = credentials[1]
        document = dict(document)
        if connection.added:
            url = self.config.provider_urls.get(name)
            if url and not document.get("token_url"):
                document["token_url"] = url
            if name in self._signing_aliases:
                document |= {"client_auth": "private_key_jwt", "signing_key_id": self._signing_aliases[name]}
        return document

    def seed_secrets(self) -> None:
        """Each connection's secret (:meth:`secret_document`), created or given a new version."""
        secrets = self.client("secretsmanager")
        for provider in self.providers:
            document = self.secret_document(provider)
            if document is None:
                continue
            value = json.dumps(document)
            try:
                secrets.create_secret(Name=self.secret_name(provider.route), SecretString=value)
            except secrets.exceptions.ResourceExistsException:
                secrets.put_secret_value(SecretId=self.secret_name(provider.route), SecretString=value)

    # -- functions ----------------------------------------------------------------------------
    def common_env(self) -> dict[str, str]:
        return {
            **DUMMY_AWS,
            "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb_url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.secrets_url,
            "CACHE_TABLE_NAME": self.config.table_name,
            "TOKEN_VENDING_LOCAL_MODE": "true",
            "POWERTOOLS_SERVICE_NAME": "token-vending",
            "POWERTOOLS_METRICS_NAMESPACE": "TokenVending",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"),
            **self.config.function_env,
        }

    def renewal_env(self, route: str) -> dict[str, str]:
        """The renewal queue of ``route``'s function; always set, so that without ``renewals`` the function arms
        no timer, whatever the template's value evaluates to locally."""
        queue = self.renewal_queues.get(route, "")
        return {"RENEWAL_QUEUE_URL": queue, **({"AWS_ENDPOINT_URL_SQS": self.sqs_url} if queue else {})}

    def function_specs(self) -> list[FunctionSpec]:
        """The template's functions with its environment, pointed at this stack (tables, secrets, emulators)."""
        common = self.common_env()
        providers, api_env = deployed(self.config.parameters)
        specs = []
        for provider in providers.values():
            # A default connection's token URL is a parameter (its environment); an added one's is in its secret.
            url = None if provider.added else self.config.provider_urls.get(provider.route)
            env = {**provider.environment, **common, "SECRET_ID": self.secret_name(provider.route),
                   **({"TOKEN_URL": url} if url else {}), **self.renewal_env(provider.route),
                   **self.config.provider_env.get(provider.route, {})}
            specs.append(FunctionSpec(provider.function, REPO_ROOT / "functions" / "provider" / "app.py", env,
                                      timeout=PROVIDER_TIMEOUT, max_concurrency=self.config.max_concurrency))
        specs.append(FunctionSpec(API_FUNCTION, REPO_ROOT / "functions" / "token_api" / "app.py",
                                  {**api_env, **common}, timeout=API_TIMEOUT,
                                  max_concurrency=self.config.max_concurrency))
        return specs
