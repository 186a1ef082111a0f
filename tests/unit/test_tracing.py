"""Tracing where the time goes: a hit never loads the X-Ray SDK; a miss records its subsegments.

Run in a fresh interpreter set up as Lambda sets one up with ``Tracing: Active`` (``AWS_LAMBDA_FUNCTION_NAME``,
``LAMBDA_TASK_ROOT``, a sampled ``_X_AMZN_TRACE_ID`` per invocation, ``AWS_XRAY_DAEMON_ADDRESS``): the X-Ray SDK
and Powertools keep process-wide state, and what matters is what a fresh environment imports. The datagrams the
SDK sends to the daemon address are received on 127.0.0.1 and read.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

from tests.unit.conftest import REPO_ROOT

LAYER = REPO_ROOT / "layers" / "token_vending"

SCRIPT = textwrap.dedent('''
    import importlib.util, io, json, os, sys, time
    from moto import mock_aws

    with mock_aws():
        import boto3
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName="tokens", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        now = time.time()
        client.put_item(TableName="tokens", Item={
            "pk": {"S": "autopay"}, "sk": {"S": "token#"}, "access_token": {"S": "cached"},
            "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now) + 30000)},
            "fetched_at": {"N": str(now)}, "lifetime": {"N": "36000"}})
        spec = importlib.util.spec_from_file_location("app", sys.argv[1])
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)

        class Context:
            function_name = "TokenApi"; memory_limit_in_mb = 256; aws_request_id = "r"
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:TokenApi"
            def get_remaining_time_in_millis(self): return 20000

        class Payload(io.BytesIO):
            pass

        class Lambda:
            def invoke(self, **_):
                return {"StatusCode": 200, "Payload": Payload(json.dumps({
                    "access_token": "new", "token_type": "Bearer", "expires_in": 900, "provider": "pyng",
                    "expires_at": "2030-01-01T00:00:00Z", "scope": "billing:batches:read"}).encode())}

        def call(provider, trace):
            root = f"1-5759e988-bd862e3fe1be46a994272{trace}"
            os.environ["_X_AMZN_TRACE_ID"] = f"Root={root};Parent=53995c3f42cd8ad8;Sampled=1"
            event = {"resource": "/token/{provider}", "path": f"/token/{provider}", "httpMethod": "GET",
                     "pathParameters": {"provider": provider}, "queryStringParameters": None,
                     "requestContext": {"requestId": trace}}
            return app.handler(event, Context())["statusCode"]

        hit = call("autopay", "001")
        after_hit = "aws_xray_sdk" in sys.modules
        app.api.lambda_client = Lambda()
        miss = call("pyng", "002")
        print(json.dumps({"hit": hit, "xray_after_hit": after_hit, "miss": miss,
                          "xray_after_miss": "aws_xray_sdk" in sys.modules}))
''')


def test_a_hit_loads_no_tracer_and_a_miss_is_traced() -> None:
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(0.2)
    port = daemon.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAYER), str(REPO_ROOT)]),
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_LAMBDA_FUNCTION_NAME": "TokenApi", "LAMBDA_TASK_ROOT": str(REPO_ROOT / "functions" / "token_api"),
           "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{port}", "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
           "CACHE_TABLE_NAME": "tokens", "FUNCTION_Autopay": "autopay-fn", "FUNCTION_Pyng": "pyng-fn",
           "POWERTOOLS_SERVICE_NAME": "token-vending",
           "POWERTOOLS_METRICS_NAMESPACE": "TokenVending"}
    for name in ("POWERTOOLS_TRACE_DISABLED", "PROVIDERS", "AWS_ENDPOINT_URL_DYNAMODB"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO_ROOT / "functions" / "token_api" / "app.py")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"hit": 200, "xray_after_hit": False, "miss": 200, "xray_after_miss": True}
    documents = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            datagram = daemon.recv(65536).decode()
        except TimeoutError:
            continue
        documents.append(json.loads(datagram.split("\n", 1)[1]))
    daemon.close()
    names = {document.get("name") for document in documents}
    assert "## provider function" in names, documents
    traced = next(document for document in documents if document.get("name") == "## provider function")
    assert traced["trace_id"] == "1-5759e988-bd862e3fe1be46a994272002"  # the miss's invocation, not the hit's
    assert traced["annotations"] == {"connection": "pyng"}
