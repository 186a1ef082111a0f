"""Aria Systems (Billie Connect) token function.

From Aria's "Obtaining a Bearer Token": a Keycloak realm endpoint (one of 12, by region and stage,
chosen in the template's ``AriaTokenEndpoints`` mapping); ``client_id`` and ``client_secret`` in the
form body; the access token is a JWT whose ``exp`` claim the cache honours (the earlier of ``exp``
and ``expires_in`` wins). Keycloak answers bad credentials with ``401 invalid_client`` or, in several
versions, ``401 unauthorized_client``: both count as rejected credentials.
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
    name="aria",
    auth=ClientAuth.FORM_BODY,
    body=BodyEncoding.FORM,
    scope=ScopeMode.OPTIONAL,
    # Aria's document names no error codes; its endpoints are Keycloak realms, and Keycloak answers a
    # wrong client secret with 401 {"error": "unauthorized_client", "error_description": "Invalid client
    # or Invalid client credentials"} in several versions, not RFC 6749's invalid_client.
    credential_error_codes=frozenset({"invalid_client", "unauthorized_client"}),
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
