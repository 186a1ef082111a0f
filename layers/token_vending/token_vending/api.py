"""Glue for the token API function: ``GET /token/{name}`` over API Gateway's proxy integration.

Cache hits are answered here from DynamoDB; everything else -- misses, forced refreshes, tokens too close
to expiry -- is delegated with ``lambda:Invoke`` to the connection's own function, which alone holds that
connection's credentials and settings (its scopes among them: here only their syntax is checked, and a request
naming none is keyed ``""``, the connection's default scopes). The one write made here marks a scope set in use
(``used_at``), rarely (:mod:`token_vending.usage`).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from token_vending.aws_errors import error_code
from token_vending.cache import CachedToken, CacheUnavailable, TokenCache
from token_vending.exceptions import (
    ERRORS_BY_TYPE,
    InternalError,
    InvalidRequest,
    Misconfigured,
    TokenVendingError,
    UnknownProvider,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from token_vending.freshness import RefreshPolicy
from token_vending.memory import MemoryCache
from token_vending.request import parse_request, replaced
from token_vending.response import api_response, error_response, token_body
from token_vending.serving import serves_refused
from token_vending.settings import ApiSettings
from token_vending.usage import UsageMarks

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient

    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderEntry

_CONNECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
"""What a connection's name looks like (``invoice-cloud``, ``AriaAu``): only such a name is echoed in an error."""
PATH_PARAMETERS = ("provider", "connection", "name")
"""The route's path parameter, by whichever name the API's resource gives it."""


class TokenApi:
    def __init__(self, *, logger: Logger, metrics: Metrics, dynamodb: DynamoDBClient,
                 lambda_client: LambdaClient | None = None) -> None:
        """``lambda_client``: made on the first miss when not given, so that a cold start answered from the
        cache does not pay for a client it never uses."""
        self.logger = logger
        self.metrics = metrics
        self.dynamodb = dynamodb
        self._lambda_client = lambda_client
        self._settings: ApiSettings | None = None
        # Built with the settings, once per execution environment (not per request).
        self.memory: MemoryCache[CachedToken] = MemoryCache(0)
        self.policy = RefreshPolicy(0, 0)
        self.cache: TokenCache | None = None
        self.usage: UsageMarks | None = None

    @property
    def lambda_client(self) -> LambdaClient:
        if self._lambda_client is None:
            import boto3

            from token_vending.clients import LAMBDA_CONFIG

            self._lambda_client = boto3.client("lambda", config=LAMBDA_CONFIG)
        return self._lambda_client

    @lambda_client.setter
    def lambda_client(self, client: LambdaClient) -> None:
        self._lambda_client = client

    def settings(self) -> ApiSettings:
        if self._settings is None:
            settings = ApiSettings.from_env()
            self.memory = MemoryCache(settings.memory_cache_seconds)
            self.policy = RefreshPolicy(settings.refresh_margin_seconds, settings.refresh_margin_ratio)
            self.cache = TokenCache(settings.table_name, self.dynamodb)
            self.usage = UsageMarks(self.cache, settings.idle_seconds)
            self._settings = settings
        return self._settings

    def handle(self, event: Any) -> dict[str, Any]:
        """Always a contract response: no exception escapes to API Gateway."""
        provider: str | None = None
        try:
            settings = self.settings()
            entry = self._provider(event, settings)
            provider = entry.name
            self.logger.append_keys(connection=provider, provider=entry.provider or provider)
            self.metrics.add_dimension(name="connection", value=provider)
            request = parse_request(_query(event, provider), provider=provider, takes_scope=entry.takes_scope,
                                    min_ttl_limit=self.policy.min_ttl_limit(entry.lifetime))
            found = self._cached(request) if not request.force_refresh or request.refused else None
            if request.force_refresh and (found is None or not replaced(found[0].access_token, request)):
                # The caller says this token is bad (or named the one still cached): the provider's function
                # decides, under its force-refresh interval.
                self.memory.discard(f"{request.provider}#{request.scope_key}")
                found = None
            token = None
            if found is not None:
                token, source = found
                self._count(source)
                self._note_use(token)
            body = token_body(token) if token is not None else self._invoke(entry, request)
        except TokenVendingError as exc:
            if exc.provider is None and provider is not None:
                exc.provider = provider
            log = self.logger.error if exc.status >= 500 else self.logger.info
            log("request failed", extra={"error": exc.code, "status": exc.status})
            self._count(f"Error_{exc.code}")
            return error_response(exc)
        except Exception:
            self.logger.exception("unexpected failure")
            return error_response(InternalError("unexpected failure in the token API", provider=provider))
        return api_response(200, body)

    def _provider(self, event: Any, settings: ApiSettings) -> ProviderEntry:
        params = event.get("pathParameters") if isinstance(event, dict) else None
        name = next((params[key] for key in PATH_PARAMETERS if key in params), None) if isinstance(params, dict) \
            else None
        entry = settings.providers.get(name) if isinstance(name, str) else None
        if entry is None:
            shown = name if isinstance(name, str) and _CONNECTION_NAME.match(name) else None
            raise UnknownProvider("no such provider is deployed", provider=shown)
        return entry

    def _cached(self, request: TokenRequest) -> tuple[CachedToken, str] | None:
        """A token fresh for ``request`` and the metric of where it came from (counted only if served). For a
        forced refresh naming the refused token, only the latest stored token will do (a consistent read, not this
        environment's memory): another token than the refused one is then the one that replaced it, not an older
        one."""
        key = f"{request.provider}#{request.scope_key}"
        remembered = self.memory.get(key) if request.refused is None else None
        if remembered is not None and self.policy.is_fresh(remembered, request.min_ttl, time.time()):
            return remembered, "CacheHitMemory"
        if self.cache is None:
            return None
        try:
            cached = self.cache.get(request.provider, request.scope_key, consistent=request.refused is not None)
        except CacheUnavailable as exc:
            # Not fatal here: the provider function has its own fallbacks.
            self.logger.warning("token cache unavailable; delegating", extra={"reason": str(exc)})
            return None
        now = time.time()  # after the read
        if cached is not None and self.policy.is_fresh(cached, request.min_ttl, now):
            self.memory.put(key, cached)
            return cached, "CacheHitDynamoDB"
        if cached is not None and serves_refused(cached, request, now):
            return cached, "CacheHitDynamoDB"  # the refused token's replacement, inside its margin
        return None

    def _note_use(self, token: CachedToken) -> None:
        """``token`` is being served: mark its scope set in use when its mark is old (refresh ahead keeps it)."""
        if self.usage is None:
            return
        noted = self.usage.note(token, time.time())
        if noted is not token:
            self.memory.put(f"{token.provider}#{token.scope_key}", noted)

    def _invoke(self, entry: ProviderEntry, request: TokenRequest) -> dict[str, Any]:
        from token_vending.tracing import subsegment

        with subsegment("## provider function", connection=entry.name):
            return self._invoke_untraced(entry, request)

    def _invoke_untraced(self, entry: ProviderEntry, request: TokenRequest) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

        payload = {"scope": request.scope_key or None, "min_ttl": request.min_ttl,
                   "force_refresh": request.refused or request.force_refresh}
        self._count("ProviderInvoke")
        try:
            response = self.lambda_client.invoke(FunctionName=entry.function, InvocationType="RequestResponse",
                                                 Payload=json.dumps(payload).encode())
            raw = response["Payload"].read()
        except ClientError as exc:
            code = error_code(exc) or ""
            if code in ("TooManyRequestsException", "ServiceException", "ResourceConflictException"):
                raise UpstreamUnavailable("the provider function is busy", retry_after=1,
                                          provider=entry.name) from None
            if code in ("ResourceNotFoundException", "AccessDeniedException"):
                raise Misconfigured(f"the provider function cannot be invoked ({code})",
                                    provider=entry.name) from None
            raise InternalError(f"invoking the provider function failed ({code})", provider=entry.name) from None
        except ReadTimeoutError:
            raise UpstreamTimeout("the provider function did not answer in time", provider=entry.name) from None
        except BotoCoreError as exc:
            raise InternalError(f"invoking the provider function failed ({type(exc).__name__})",
                                provider=entry.name) from None
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        # An error document without the FunctionError flag is still the function's error: `sam local
        # start-lambda` drops the flag when the document has keys beyond errorMessage/errorType/stackTrace
        # (the runtime adds requestId). A token never has errorType.
        if response.get("FunctionError") or (isinstance(document, dict) and "errorType" in document
                                             and "errorMessage" in document and "access_token" not in document):
            raise _function_error(document, entry.name)
        if not isinstance(document, dict) or not isinstance(document.get("access_token"), str):
            raise InternalError("the provider function returned an unexpected result", provider=entry.name)
        return document

    def _count(self, name: str) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


def _function_error(document: Any, provider: str) -> TokenVendingError:
    """Rebuild the contract error from Lambda's ``{"errorType", "errorMessage"}`` document."""
    error_type = document.get("errorType") if isinstance(document, dict) else None
    message = document.get("errorMessage") if isinstance(document, dict) else None
    cls = ERRORS_BY_TYPE.get(error_type) if isinstance(error_type, str) else None
    if cls is None:
        if isinstance(message, str) and "timed out" in message:
            return UpstreamTimeout("the provider function timed out", provider=provider)
        return InternalError("the provider function failed", provider=provider)
    try:
        body = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error_description": message if isinstance(message, str) else ""}
    return cls.from_body(body, provider)


def _query(event: Any, provider: str) -> dict[str, Any]:
    """Single-valued query parameters; a repeated parameter is ambiguous and refused."""
    multi = event.get("multiValueQueryStringParameters") if isinstance(event, dict) else None
    if isinstance(multi, dict):
        for values in multi.values():
            if isinstance(values, list) and len(values) > 1:
                raise InvalidRequest("a query parameter is repeated", provider=provider)
    single = event.get("queryStringParameters") if isinstance(event, dict) else None
    if single is None:
        return {}
    if not isinstance(single, dict):
        raise InvalidRequest("malformed query string", provider=provider)
    return single
