"""Pyng (B2B Receivables) token function.

From Pyng's authentication guide: HTTP Basic client authentication with the partner's API
credentials; a form body with ``grant_type`` and a *required* space-separated ``scope`` (request only
the scopes the integration uses; they are granted per partner at onboarding); tokens live 900 s;
bad credentials answer ``401 invalid_client``. The host differs per partner, so the token URL has no
default in the template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer

from token_vending.clients import DYNAMODB_CONFIG, SECRETS_CONFIG
from token_vending.profile import BasicEncoding, BodyEncoding, ClientAuth, ClientCredentialsProfile, ScopeMode
from token_vending.provider_function import ProviderFunction

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

PROFILE = ClientCredentialsProfile(
    name="pyng",
    auth=ClientAuth.BASIC_HEADER,
    # The guide's header table says literally "Basic base64(Username:Password)": no RFC 6749 2.3.1
    # form-urlencoding of the parts. (Its example, RFC 6749's s6BhdRkqt3:gX1fBat3bV, cannot tell: both
    # encodings agree on credentials made of unreserved characters.)
    basic_encoding=BasicEncoding.RFC7617,
    body=BodyEncoding.FORM,
    scope=ScopeMode.REQUIRED,
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
