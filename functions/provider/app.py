"""Every connection's token function: the deployed copies differ only by ``CONNECTION_NAME`` (and the settings
the template gives the default connections).

The function of a connection owns its secret (credentials and settings), its DynamoDB partition and its log group
(each deployed copy has its own role); what its provider's endpoint wants is its entry in
``token_vending.catalogue``.
Invoked directly (``{"scope": ..., "min_ttl": ..., "force_refresh": ...}``) by the token API, Step
Functions or any allowed caller, by its renewal queue and by its refresh-ahead schedule. Powertools' Tracer is
made on the first refresh (``token_vending.tracing``): a cold start answered from the cache does without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics

from token_vending.clients import DYNAMODB_CONFIG
from token_vending.constants import CONNECTION_NAME_ENV
from token_vending.provider_function import ProviderFunction

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
metrics = Metrics()
# The Secrets Manager client is made on the first secret read (never while the token is cached).
function = ProviderFunction.from_catalogue(os.environ.get(CONNECTION_NAME_ENV, "").strip(),
                                           logger=logger, metrics=metrics,
                                           dynamodb=boto3.client("dynamodb", config=DYNAMODB_CONFIG))


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return function.handle(event, context)
