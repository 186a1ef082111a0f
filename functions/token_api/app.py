"""Token API function: ``GET /token/{name}`` behind API Gateway (AWS_IAM), one route per connection.

Answers cache hits itself (DynamoDB) and delegates misses and forced refreshes to the connection's own function
with ``lambda:Invoke``; it never sees a client secret, nor a connection's settings. Powertools' Tracer is made on
the first miss (``token_vending.tracing``): a cold start answered from the cache does without the X-Ray SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics

from token_vending.api import TokenApi
from token_vending.clients import API_DYNAMODB_CONFIG

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
metrics = Metrics()
# The Lambda client is made on the first miss: a cold start answered from the cache does without it.
api = TokenApi(logger=logger, metrics=metrics, dynamodb=boto3.client("dynamodb", config=API_DYNAMODB_CONFIG))


@logger.inject_lambda_context(clear_state=True, correlation_id_path="requestContext.requestId")
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return api.handle(event)
