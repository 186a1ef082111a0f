"""Alternative Payments token function.

From Alternative Payments' OpenAPI document: HTTP Basic client authentication; a form body with
``grant_type=client_credentials`` only; ``token_type`` is a lowercase ``bearer`` (normalised to
``Bearer`` like every provider's); invalid credentials answer ``403`` with an object of strings and
no OAuth ``error`` member, so a 403 counts as rejected credentials. The document's server is
``http://``: the template only accepts ``https://`` token URLs.
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
    name="alternative-payments",
    auth=ClientAuth.BASIC_HEADER,
    # The OpenAPI document says "Authorization: Basic Base64Encode(client_id:client_secret)": the plain
    # RFC 7617 form, not RFC 6749 2.3.1's form-urlencoded parts.
    basic_encoding=BasicEncoding.RFC7617,
    body=BodyEncoding.FORM,
    scope=ScopeMode.OMIT,
    credential_error_statuses=frozenset({403}),
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
