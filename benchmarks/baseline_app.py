"""``cold_start_ratio``'s baseline: the least a Lambda handler can do to answer a token request from the cache.

One boto3 DynamoDB client, made at init with the provider function's own botocore configuration
(``token_vending.clients.DYNAMODB_CONFIG``; the endpoint comes from ``AWS_ENDPOINT_URL_DYNAMODB``, as for the
functions), and one ``GetItem`` of the token item per invocation (eventually consistent, as the functions'
hits read it). No Powertools, no request parsing, no logs, no metrics, no tracing. ``benchmarks.cold_start``
loads it by path in a fresh interpreter, as the Lambda runtime loads ``app.handler``.
"""

from __future__ import annotations

import os
from typing import Any

import boto3

from token_vending.clients import DYNAMODB_CONFIG

client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
TABLE = os.environ["CACHE_TABLE_NAME"]


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    item = client.get_item(TableName=TABLE, Key={"pk": {"S": event["pk"]}, "sk": {"S": event["sk"]}},
                           ConsistentRead=False)["Item"]
    return {"access_token": item["access_token"]["S"], "expires_at": int(item["expires_at"]["N"])}
