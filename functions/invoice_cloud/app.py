"""Invoice Cloud (Biller API) token function.

From Invoice Cloud's Biller OAuth 2.0 guide: ``client_id`` and ``client_secret`` travel in the
form-encoded body with ``grant_type=client_credentials``; no scope; bad credentials answer
``400 invalid_client``. The guide names the host once as ``.co`` and once as ``.com``: the
template's default is the ``.com`` one.
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
    name="invoice-cloud",
    auth=ClientAuth.FORM_BODY,
    body=BodyEncoding.FORM,
    scope=ScopeMode.OMIT,
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
