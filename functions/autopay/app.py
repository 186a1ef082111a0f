"""Autopay token function.

From Autopay's API documentation: the body is JSON (``Content-Type: application/json``) with
``client_id``, ``client_secret``, ``audience`` (which "must always be \\"\\"") and ``grant_type``;
tokens live 10-24 h; requesting a token per request "may lead to termination of API access", which
is why this service caches and single-flights. The document once spells the lifetime ``expries_in``:
both spellings are read, the correct one first. Bad credentials answer ``401`` whose body may carry
only ``error_description``: any 401 counts as rejected credentials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer

from token_vending.clients import DYNAMODB_CONFIG, SECRETS_CONFIG
from token_vending.profile import BodyEncoding, ClientAuth, ClientCredentialsProfile, ScopeMode
from token_vending.provider_function import ProviderFunction

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

PROFILE = ClientCredentialsProfile(
    name="autopay",
    auth=ClientAuth.JSON_BODY,
    body=BodyEncoding.JSON,
    scope=ScopeMode.OMIT,
    send_audience=True,
    lifetime_fields=("expires_in", "expries_in"),
    credential_error_statuses=frozenset({401}),
)

logger = Logger()
tracer = Tracer(patch_modules=("botocore",))  # not requests: it is imported only on a cache miss
metrics = Metrics()
function = ProviderFunction(PROFILE, logger=logger, metrics=metrics,
                            dynamodb=boto3.client("dynamodb", config=DYNAMODB_CONFIG),
                            secretsmanager=boto3.client("secretsmanager", config=SECRETS_CONFIG))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)  # the response holds the token
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return function.handle(event, context)
