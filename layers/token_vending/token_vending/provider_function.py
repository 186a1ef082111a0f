"""Glue for a connection's function: direct-invocation payload in, token body out, errors by class name.

``functions/provider/app.py`` is every connection's function: it declares the Powertools objects at module
level and delegates to one :class:`ProviderFunction` built from the profile of the connection its
``CONNECTION_NAME`` names (:func:`token_vending.catalogue.connection`), so that what differs between connections
is only data: the catalogue entry of its provider, its environment and its secret.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from token_vending.exceptions import InternalError, Misconfigured, TokenVendingError
from token_vending.profile import ScopeMode
from token_vending.request import parse_request
from token_vending.response import token_body
from token_vending.settings import ProviderSettings

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

    from token_vending.connection_settings import ConnectionSettings
    from token_vending.credentials import CredentialStore
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.upstream import UpstreamClient
    from token_vending.vendor import TokenVendor

DEFAULT_BUDGET_MS = 25_000
RESPONSE_RESERVE_SECONDS = 2.0
"""Kept back from the invocation's remaining time: the answer must reach the token API (whose invoke read
timeout is 24 s for a 25 s function) before it gives up, and Lambda must not time the function out."""
REFRESH_AHEAD_EVENT = {"refresh_ahead": True}


def _kms_client(key_id: str = "") -> KMSClient:
    """Only ``private_key_jwt`` with a KMS key needs KMS: its client is made on first use, off the cold path, in
    the Region the key's ARN names (a key or alias ARN of another Region is used there, as it is granted)."""
    import boto3

    from token_vending.clients import KMS_CONFIG

    parts = key_id.split(":")
    region = parts[3] if key_id.startswith("arn:") and len(parts) > 5 and parts[3] else None
    return boto3.client("kms", config=KMS_CONFIG, region_name=region)


def _secrets_client() -> SecretsManagerClient:
    """Made on the first secret read: while the token is cached, a cold start does without it."""
    import boto3

    from token_vending.clients import SECRETS_CONFIG

    return boto3.client("secretsmanager", config=SECRETS_CONFIG)


def _upstream_client(profile: ClientCredentialsProfile, settings: ProviderSettings,
                     connection: ConnectionSettings) -> UpstreamClient:
    """urllib3 and the token request's code are imported on the first miss only; the client is made again when a
    re-read secret changes the connection's settings."""
    from token_vending.upstream import UpstreamClient

    return UpstreamClient(connection.profile(profile), settings, connection,
                          kms=lambda: _kms_client(connection.signing_key_id))


def _sqs_client() -> SQSClient:
    """Only a function that stores a new token arms its renewal: made on first use."""
    import boto3

    from token_vending.clients import SQS_CONFIG

    return boto3.client("sqs", config=SQS_CONFIG)


class ProviderFunction:
    def __init__(self, profile: ClientCredentialsProfile, *, logger: Logger, metrics: Metrics,
                 dynamodb: DynamoDBClient, secretsmanager: SecretsManagerClient | None = None,
                 known: bool = True) -> None:
        """``secretsmanager``: made on the first secret read when not given (a cache hit never needs it)."""
        self.profile = profile
        self.known = known
        self.logger = logger
        self.metrics = metrics
        self.dynamodb = dynamodb
        self.secretsmanager = secretsmanager
        self._vendor: TokenVendor | None = None
        metrics.set_default_dimensions(connection=profile.name)

    @classmethod
    def from_catalogue(cls, name: str, *, logger: Logger, metrics: Metrics, dynamodb: DynamoDBClient,
                       secretsmanager: SecretsManagerClient | None = None) -> ProviderFunction:
        """The function of the connection ``name`` (``CONNECTION_NAME``). A name no catalogue entry has still
        makes a function, whose every invocation is the contract's ``misconfigured`` error (not an init
        failure)."""
        from token_vending.catalogue import connection
        from token_vending.profile import ClientAuth, ClientCredentialsProfile

        profile = connection(name)
        return cls(profile or ClientCredentialsProfile(name=name or "unknown", auth=ClientAuth.FORM_BODY),
                   logger=logger, metrics=metrics, dynamodb=dynamodb, secretsmanager=secretsmanager,
                   known=profile is not None)

    def vendor(self) -> TokenVendor:
        """Built on first use and kept for the life of the execution environment. Only the environment is read
        here: the settings a fetch needs are resolved with the secret, on the first miss."""
        if self._vendor is None:
            from token_vending.cache import TokenCache
            from token_vending.vendor import TokenVendor

            if not self.known:
                from token_vending.constants import CONNECTION_NAME_ENV

                raise Misconfigured(f"setting {CONNECTION_NAME_ENV} names no connection of a catalogue provider",
                                    provider=self.profile.name)
            settings = ProviderSettings.from_env(self.profile.name, profile=self.profile)
            from token_vending.settings import unknown_budget_routes

            unknown = unknown_budget_routes()
            if unknown:  # a typo must not break every connection: warned here, the named one keeps its default
                from token_vending.constants import UPSTREAM_BUDGETS_ENV

                self.logger.warning(f"setting {UPSTREAM_BUDGETS_ENV} names connections no provider has",
                                    extra={"routes": unknown})
            timer = None
            if settings.renewal_queue_url:
                from token_vending.renewal import RenewalTimer

                timer = RenewalTimer(settings.renewal_queue_url, _sqs_client)
            profile = self.profile
            self._vendor = TokenVendor(
                profile=profile, settings=settings,
                cache=TokenCache(settings.cache.table_name, self.dynamodb),
                credentials=lambda: self._credential_store(profile, settings),
                upstream=lambda connection: _upstream_client(profile, settings, connection),
                logger=self.logger, metrics=self.metrics, timer=timer)
        return self._vendor

    def _credential_store(self, profile: ClientCredentialsProfile, settings: ProviderSettings) -> CredentialStore:
        """Made on the first secret read (never while the token is cached): it and its modules stay off the cold
        path of a hit. Each version of the secret is resolved into the connection's settings as it is read."""
        from token_vending.connection_settings import resolve
        from token_vending.credentials import CredentialStore

        def warn(fields: list[str]) -> None:
            from token_vending.exceptions import sanitise

            # By name only: a field's value may be a secret someone parked there.
            self.logger.warning("the secret has fields this service does not read; ignored",
                                extra={"fields": [sanitise(name, 64) for name in fields]})

        return CredentialStore(profile.name, settings.secret_id, settings.secret_max_age,
                               self.secretsmanager or _secrets_client,
                               resolve=lambda document: resolve(settings, document, profile), warn=warn)

    def handle(self, event: Any, context: LambdaContext | None) -> dict[str, Any]:
        """Return the token body, or raise an exception named after the contract's error code.

        ``{"refresh_ahead": true}`` (the schedule's payload) renews tokens near expiry instead and
        returns a summary; an SQS event (the renewal queue's) renews the tokens its messages name and returns
        the batch's failures. Neither ever returns a token.
        """
        # inject_lambda_context(clear_state) drops them: set on every invocation.
        self.logger.append_keys(connection=self.profile.name, provider=self.profile.provider)
        budget_ms = context.get_remaining_time_in_millis() if context is not None else DEFAULT_BUDGET_MS
        deadline = time.monotonic() + budget_ms / 1000 - RESPONSE_RESERVE_SECONDS
        if event == REFRESH_AHEAD_EVENT:
            return self.vendor().refresh_ahead(deadline=deadline)
        if isinstance(event, dict) and "Records" in event:
            from token_vending.renewal import is_sqs_event

            if is_sqs_event(event):
                return self._renew(event, context, deadline)
        try:
            vendor = self.vendor()
            # Scope syntax here; whether the connection allows them is checked on a miss, with its secret.
            request = parse_request(event, provider=self.profile.name,
                                    min_ttl_limit=vendor.policy.min_ttl_limit(vendor.settings.lifetime),
                                    takes_scope=self.profile.scope is not ScopeMode.OMIT)
            token = vendor.vend(request, deadline=deadline)
        except Misconfigured as exc:
            self.logger.error("misconfigured", extra={"error_description": exc.description})
            raise
        except TokenVendingError as exc:
            self.logger.info("request failed", extra={"error": exc.code, "error_description": exc.description})
            raise
        except Exception:
            self.logger.exception("unexpected failure")
            raise InternalError("unexpected failure in the provider function", provider=self.profile.name) from None
        # DEBUG: a hit is the hot path; fetches, waits and failures are logged at INFO and above.
        self.logger.debug("token served", extra={"scope_key": request.scope_key, "expires_at": token.expires_at})
        return token_body(token)

    def _renew(self, event: dict[str, Any], context: LambdaContext | None, deadline: float) -> dict[str, Any]:
        """Renewal timers went off (Powertools' batch utility reports the records that raised: SQS delivers them
        again). A renewal that fails is armed again with a back-off, or, when SQS refuses that too, reported for
        redelivery. A message this code did not write is logged and dropped."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

        from token_vending.renewal import Renewal

        try:
            vendor = self.vendor()
        except TokenVendingError as exc:  # a bad setting: redelivering cannot help until a person fixes it
            self.logger.error("renewals dropped", extra={"error": exc.code, "error_description": exc.description})
            return {"batchItemFailures": []}

        def renew(record: Any) -> str:
            renewal = Renewal.from_body(record.body)
            if renewal is None:
                self.logger.warning("dropped a message that is not a renewal", extra={"message_id": record.message_id})
                return "dropped"
            return vendor.renew(renewal, deadline=deadline)

        # A renewal that raised (failed and not armed again) is reported, even when it is the whole batch: SQS then
        # delivers it again, and the invocation itself does not fail.
        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        response = process_partial_response(event=event, record_handler=renew, processor=processor, context=context)
        return dict(response)
