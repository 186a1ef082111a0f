"""Security controls in template.yaml, and the scanners that watch them.

- Least privilege: each connection's function reads only its own secret, touches only its own cache partition
  and uses only its own renewal queue; the token API function reads the cache, writes nothing but a scope set's
  use mark (``used_at``, IAM's dynamodb:Attributes checked against the layer's own call) and invokes the
  connections' functions (one policy per connection, from the template's loop); no wildcard where a narrower ARN
  exists (X-Ray's two actions have none). The template's loops make the same resources for each of the default
  connections checked here; test_connections.py checks the same with added ones.
- Encryption: the optional customer managed key (KmsKeyArn) reaches the table, the placeholder secrets
  and the functions' policies, and nothing else is granted when it is empty.
- Client assertions: a default connection's KMS signing key (<Key>SigningKeyArn) may be used by that
  connection's function alone, with <Key>ClientAuth private_key_jwt only, for kms:Sign in the layer's
  algorithms and kms:GetPublicKey, and by nobody when it is empty (SAM's translation evaluated for every
  connection alone, all together and none).
- Callers: the API's resource policy for every combination of ApiEndpointType, ApiAllowedAccountIds
  and ApiAllowedVpcEndpointIds, checked by evaluating SAM's translation and by cfn-lint.
- Scanners: checkov on template.yaml with its loops expanded (checkov cannot read Fn::ForEach, and skips what
  it cannot read) and on SAM's translation (no failed check; every suppression is inline in template.yaml,
  with a reason, and still needed); bandit on the code (medium and above).

Everything runs offline: checkov with --skip-download, no API key, no update check, and proxies
pointed at a closed loopback port, so that any attempt to reach the network fails on this machine.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from tests.template.cfn import (
    ACCOUNT_ID,
    ALL_FUNCTIONS,
    CFN_LINT,
    CONNECTIONS,
    EXPANDED_LINT_IGNORES,
    REGION,
    REQUIRED_PARAMETER_SAMPLES,
    ROOT,
    TOKEN_API,
    Evaluator,
    as_list,
    fetch_settings,
    java_like_fullmatch,
    load_template,
    raw_template,
    require_tool,
    resources,
    run,
    tool_env,
    translate,
    without_cfn_lint_ignores,
)
from token_vending.assertion import KMS_ALGORITHMS
from token_vending.exceptions import Misconfigured

CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
CHECKOV_HINT = "run `make deps` (it installs requirements-checkov.txt into .tools/checkov)"
BANDIT_HINT = "run `make deps` (bandit is in requirements-dev.txt)"

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# one asymmetric signing key per provider (another account's for one: the key policy there grants it)
SIGNING_KEYS = {
    route: f"arn:aws:kms:us-east-1:{'210987654321' if route == 'aria' else ACCOUNT_ID}:key/"
    f"{index}a5b2c3d-0000-4000-8000-00000000000{index}"
    for index, route in enumerate(CONNECTIONS, start=1)
}
SIGNING_KEY_CLIENT_AUTH = "private_key_jwt"
"""The only method a KMS signing key is granted with (Has<Provider>SigningKey)."""
KMS_SIGNING_ACTIONS = {"kms:Sign", "kms:GetPublicKey"}
OWN_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng-AbCdEf"
TABLE_ARN = "arn:aws:CacheTable:Arn"  # what the Evaluator makes of !GetAtt CacheTable.Arn
XRAY = {
    "Sid": "XRayTraces",
    "Effect": "Allow",
    "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
    "Resource": "*",
}
# Step Functions needs the sampling actions too, and vended log delivery (the example state machine's
# error log) has no resource-level permissions either: AWS documents '*' for both.
STATE_MACHINE_WILDCARDS = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets",
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
}
RENEWAL_QUEUE_ACTIONS = ["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
"""A provider function's on its own queue: SendMessage (arming a timer) and what Lambda's SQS event source mapping
needs of the execution role (ReceiveMessage, DeleteMessage, GetQueueAttributes; not ChangeMessageVisibility)."""
USE_MARK_ATTRIBUTES = ["pk", "sk", "used_at"]
"""All the token API's one write may name: the table's key and the use mark."""
ACCOUNTS = ["111111111111", "222222222222"]
VPC_ENDPOINTS = ["vpce-0123456789abcdef0", "vpce-0fedcba987654321f"]


def _role(template: dict[str, Any], function: str) -> dict[str, Any]:
    role: dict[str, Any] = template["Resources"][f"{function}Role"]
    return role


def role_statements(template: dict[str, Any], function: str, overrides: dict[str, str]) -> list[dict[str, Any]]:
    """The function role's inline policy statements as deployed with these parameter values."""
    (policy,) = _role(template, function)["Properties"]["Policies"]
    document = Evaluator(template, overrides)(policy["PolicyDocument"])
    assert document["Version"] == "2012-10-17"
    statements: list[dict[str, Any]] = document["Statement"]
    return statements


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate()


# --- least privilege ----------------------------------------------------------------------------
def test_every_function_has_its_own_role_and_nothing_else(template: dict[str, Any]) -> None:
    for function in ALL_FUNCTIONS:
        props = template["Resources"][function]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [f"{function}Role", "Arn"]}
        # SAM's Policies would make SAM generate a role with AWSLambdaBasicExecutionRole (logs on *)
        assert "Policies" not in props
        role = _role(template, function)
        assert role["Type"] == "AWS::IAM::Role"
        role_props = role["Properties"]
        assert set(role_props) == {"Description", "AssumeRolePolicyDocument", "Policies"}, function
        (trust,) = role_props["AssumeRolePolicyDocument"]["Statement"]
        assert trust == {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    assert "Policies" not in template["Globals"]["Function"]
    assert "Role" not in template["Globals"]["Function"]


@pytest.mark.parametrize("signing_key", [False, True], ids=["no-signing-key", "kms-signing-key"])
@pytest.mark.parametrize("kms_key", ["", KMS_KEY], ids=["aws-managed-keys", "customer-managed-key"])
@pytest.mark.parametrize("secret_given", [False, True], ids=["placeholder-secret", "existing-secret"])
def test_provider_roles_reach_only_their_own_secret_and_partition(
    template: dict[str, Any], kms_key: str, secret_given: bool, signing_key: bool
) -> None:
    for route, connection in CONNECTIONS.items():
        function, prefix = connection.function, connection.key
        overrides = {"KmsKeyArn": kms_key} | ({f"{prefix}SecretArn": OWN_SECRET_ARN} if secret_given else {})
        if signing_key:
            overrides |= {f"{prefix}ClientAuth": "private_key_jwt", f"{prefix}SigningKeyArn": SIGNING_KEYS[route]}
        own_secret = OWN_SECRET_ARN if secret_given else f"{prefix}Secret-physical-id"
        expected: list[dict[str, Any]] = [
            {
                "Sid": "ReadOwnSecret",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": own_secret,
            },
            {
                "Sid": "OwnCachePartition",
                "Effect": "Allow",
                # UpdateItem: the hourly budget's counter and the use marks (LeadingKeys: its partition only)
                "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                           "dynamodb:Query"],
                "Resource": TABLE_ARN,
                "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [route]}},
            },
            {
                "Sid": "OwnRenewalQueue",
                "Effect": "Allow",
                # it arms its renewal timers; its event source mapping receives them (Lambda's three actions)
                "Action": RENEWAL_QUEUE_ACTIONS,
                "Resource": f"arn:aws:{prefix}RenewalQueue:Arn",
            },
        ]
        if kms_key:
            expected.append(
                {
                    "Sid": "UseCustomerManagedKey",
                    "Effect": "Allow",
                    "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                    "Resource": kms_key,
                    "Condition": {
                        "StringEquals": {
                            "kms:ViaService": [
                                f"secretsmanager.{REGION}.amazonaws.com",
                                f"dynamodb.{REGION}.amazonaws.com",
                            ]
                        }
                    },
                }
            )
        if signing_key:
            expected += _signing_statements(SIGNING_KEYS[route])
        expected.append(XRAY)
        assert role_statements(template, function, overrides) == expected, function
        # the function is told to read the very secret it may read
        env = Evaluator(template, overrides)(template["Resources"][function]["Properties"]["Environment"])
        assert env["Variables"]["SECRET_ID"] == own_secret


def _signing_statements(key: str) -> list[dict[str, Any]]:
    """What a function that signs its client assertions with ``key`` in KMS may do with it."""
    return [
        {
            "Sid": "SignClientAssertions",
            "Effect": "Allow",
            "Action": "kms:Sign",
            "Resource": key,
            "Condition": {
                "StringEquals": {
                    "kms:SigningAlgorithm": list(KMS_ALGORITHMS.values()),
                    "kms:MessageType": "RAW",
                }
            },
        },
        # kms:GetPublicKey carries no kms:SigningAlgorithm: under the condition above it would be refused
        {"Sid": "ReadSigningPublicKey", "Effect": "Allow", "Action": "kms:GetPublicKey", "Resource": key},
        # An alias ARN: the keys of the alias's own account and Region that carry it (rotation by moving the
        # alias). For a key ARN the condition names "key/...", which no alias is, so these grant nothing.
        {
            "Sid": "SignWithAliasedKey",
            "Effect": "Allow",
            "Action": "kms:Sign",
            "Resource": ":".join(key.split(":")[:5]) + ":key/*",
            "Condition": {
                "ForAnyValue:StringEquals": {"kms:ResourceAliases": key.split(":")[5]},
                "StringEquals": {
                    "kms:SigningAlgorithm": list(KMS_ALGORITHMS.values()),
                    "kms:MessageType": "RAW",
                },
            },
        },
        {
            "Sid": "ReadAliasedPublicKey",
            "Effect": "Allow",
            "Action": "kms:GetPublicKey",
            "Resource": ":".join(key.split(":")[:5]) + ":key/*",
            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": key.split(":")[5]}},
        },
    ]


def test_a_signing_key_alias_grants_the_keys_that_carry_it(translated: dict[str, Any]) -> None:
    """With an alias ARN, the Pyng function may sign with whichever of this account's keys carries the alias
    now: moving the alias to a new key rotates it without a deploy."""
    alias = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:alias/pyng-token-signing"
    evaluate = Evaluator(translated, {"PyngClientAuth": "private_key_jwt", "PyngSigningKeyArn": alias})
    assert not evaluate.rules_hold()
    role = f"{CONNECTIONS['pyng'].function}Role"
    assert _signing_grants(translated, evaluate) == {role: _signing_statements(alias)}
    statements = _signing_grants(translated, evaluate)[role]
    assert statements[2]["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"] == "alias/pyng-token-signing"


def _signing_combinations() -> list[tuple[str, ...]]:
    return [(), *((route,) for route in CONNECTIONS), tuple(CONNECTIONS)]


@pytest.mark.parametrize("signers", _signing_combinations(), ids=lambda s: "+".join(s) or "none")
def test_only_a_signing_keys_own_function_may_sign_with_it(
    translated: dict[str, Any], signers: tuple[str, ...]
) -> None:
    """Over everything SAM would deploy, with these providers signing in KMS: kms:Sign and kms:GetPublicKey
    appear in their roles only, each on its own key alone; nowhere when no key is given; never for the token API."""
    overrides = {"KmsKeyArn": KMS_KEY}
    for route in signers:
        prefix = CONNECTIONS[route].key
        overrides |= {f"{prefix}ClientAuth": SIGNING_KEY_CLIENT_AUTH, f"{prefix}SigningKeyArn": SIGNING_KEYS[route]}
    evaluate = Evaluator(translated, overrides)
    assert not evaluate.rules_hold()
    assert _signing_grants(translated, evaluate) == {
        f"{CONNECTIONS[route].function}Role": _signing_statements(SIGNING_KEYS[route]) for route in signers
    }
    # each function is told to sign with the very key it may use (and no other is told of a key)
    for route, connection in CONNECTIONS.items():
        function = connection.function
        variables = evaluate(translated["Resources"][function]["Properties"]["Environment"])["Variables"]
        assert variables["SIGNING_KEY_ID"] == (SIGNING_KEYS[route] if route in signers else ""), function
        assert variables["CLIENT_AUTH"] == (SIGNING_KEY_CLIENT_AUTH if route in signers else ""), function
    token_api = evaluate(translated["Resources"][TOKEN_API]["Properties"]["Environment"])["Variables"]
    assert "SIGNING_KEY_ID" not in token_api


def _signing_grants(translated: dict[str, Any], evaluate: Evaluator) -> dict[str, list[dict[str, Any]]]:
    """Role -> the statements that let it use a KMS key for signing (kms:Sign, kms:GetPublicKey)."""
    granted: dict[str, list[dict[str, Any]]] = {}
    for name, document in _policy_documents(translated):
        for statement in evaluate(document)["Statement"]:
            actions = set(as_list(statement["Action"]))
            if actions & KMS_SIGNING_ACTIONS:
                assert actions <= KMS_SIGNING_ACTIONS, f"{name}: signing mixed with other actions in {statement}"
                granted.setdefault(name, []).append(statement)
    assert f"{TOKEN_API}Role" not in granted
    return granted


def test_signing_conditions_are_what_the_layer_sends() -> None:
    """The policy's kms:SigningAlgorithm values are the layer's KMS algorithms (RS256, PS256, ES256, ES384,
    ES512), and the layer signs RAW messages: a narrower policy would refuse its own calls, a wider one grant more."""
    assert set(KMS_ALGORITHMS.values()) == {"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256", "ECDSA_SHA_256",
                                            "ECDSA_SHA_384", "ECDSA_SHA_512"}
    calls = []  # every boto3 KMS sign call in the layer: .sign(KeyId=..., ...)
    for path in (ROOT / "layers" / "token_vending" / "token_vending").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sign":
                keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                if "KeyId" in keywords:
                    calls.append((path.name, keywords))
    assert calls, "the layer calls kms:Sign nowhere"
    for where, keywords in calls:
        assert ast.literal_eval(keywords["MessageType"]) == "RAW", where
        algorithm = keywords["SigningAlgorithm"]
        assert isinstance(algorithm, ast.Subscript), where
        assert ast.unparse(algorithm.value) == "KMS_ALGORITHMS", f"{where}: {ast.unparse(algorithm)}"


@pytest.mark.parametrize("catalogue_signs", [False, True], ids=["catalogue-other-method", "catalogue-private-key-jwt"])
@pytest.mark.parametrize("route", list(CONNECTIONS))
def test_a_signing_key_given_is_granted_and_used_only_by_private_key_jwt(
    translated: dict[str, Any], route: str, catalogue_signs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Has<Key>SigningKey follows the key alone: with <Key>ClientAuth empty the catalogue's method applies, and
    an entry whose method is private_key_jwt signs with the key, so it must hold kms:Sign. With any other
    effective method the function refuses the key as misconfigured before anything is signed. No key, no grant,
    whatever the method. (Rules do not refuse the combination: the template's loops cannot write one per
    connection.)"""
    connection = CONNECTIONS[route]
    from token_vending import catalogue
    from token_vending.profile import ClientAuth

    profile = catalogue.entry(route)
    assert profile is not None
    if catalogue_signs:  # an entry added with private_key_jwt as its method (docs/adding-a-provider.md)
        profile = dataclasses.replace(profile, auth=ClientAuth.PRIVATE_KEY_JWT)
    elif profile.auth is ClientAuth.PRIVATE_KEY_JWT:
        profile = dataclasses.replace(profile, auth=ClientAuth.FORM_BODY)
    monkeypatch.setattr(catalogue, "CATALOGUE", tuple(
        profile if candidate.name == route else candidate for candidate in catalogue.CATALOGUE))
    key = {f"{connection.key}SigningKeyArn": SIGNING_KEYS[route]}
    methods = translated["Parameters"][f"{connection.key}ClientAuth"]["AllowedValues"]
    assert {"", SIGNING_KEY_CLIENT_AUTH} <= set(methods)
    for method in methods:
        evaluate = Evaluator(translated, key | {f"{connection.key}ClientAuth": method})
        assert not evaluate.rules_hold()
        assert evaluate.condition(f"Has{connection.key}SigningKey"), method
        assert _signing_grants(translated, evaluate) == {
            f"{connection.function}Role": _signing_statements(SIGNING_KEYS[route])}, method
        # the function deployed so: told of the key, refused (when it reads its secret) unless it signs with it
        variables = evaluate(translated["Resources"][connection.function]["Properties"]["Environment"])["Variables"]
        assert variables["SIGNING_KEY_ID"] == SIGNING_KEYS[route]
        env = {name: str(value) for name, value in variables.items()}
        if method == SIGNING_KEY_CLIENT_AUTH or (method == "" and catalogue_signs):
            assert fetch_settings(connection, env).signing_key_id == SIGNING_KEYS[route]
        else:
            with pytest.raises(Misconfigured, match="SIGNING_KEY_ID needs CLIENT_AUTH private_key_jwt"):
                fetch_settings(connection, env)
    for method in methods:  # no key: nothing granted, whatever the method
        evaluate = Evaluator(translated, {f"{connection.key}ClientAuth": method})
        assert not evaluate.condition(f"Has{connection.key}SigningKey")
        assert _signing_grants(translated, evaluate) == {}
    assert not [name for name, rule in raw_template().get("Rules", {}).items() if "SigningKey" in json.dumps(rule)]


MARK_SCOPE_SET_USED: dict[str, Any] = {
    "Sid": "MarkScopeSetUsed",
    "Effect": "Allow",
    "Action": "dynamodb:UpdateItem",
    "Resource": TABLE_ARN,
    "Condition": {
        # every attribute the request names (key, update and condition expressions) must be one of these...
        "ForAllValues:StringEquals": {"dynamodb:Attributes": USE_MARK_ATTRIBUTES},
        # ...and it must name some: ForAllValues holds for a request without the key at all
        "Null": {"dynamodb:Attributes": "false"},
        # no item comes back (UpdateItem always has ReturnValues: NONE unless asked)
        "StringEquals": {"dynamodb:ReturnValues": "NONE"},
    },
}
"""The token API's only write: SET used_at on an item of the table."""


@pytest.mark.parametrize("kms_key", ["", KMS_KEY], ids=["aws-managed-keys", "customer-managed-key"])
def test_token_api_role_reads_the_cache_marks_use_and_invokes_the_provider_functions(
    template: dict[str, Any], kms_key: str
) -> None:
    expected: list[dict[str, Any]] = [
        {"Sid": "ReadCache", "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": TABLE_ARN},
        MARK_SCOPE_SET_USED,
    ]
    if kms_key:
        expected.append(
            {
                "Sid": "UseCustomerManagedKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",  # reads only: no Encrypt or GenerateDataKey
                "Resource": kms_key,
                "Condition": {"StringEquals": {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}},
            }
        )
    expected.append(XRAY)
    assert role_statements(template, TOKEN_API, {"KmsKeyArn": kms_key}) == expected
    everyone_signs = {f"{connection.key}SigningKeyArn": SIGNING_KEYS[route]
                      for route, connection in CONNECTIONS.items()}
    everyone_signs |= {f"{connection.key}ClientAuth": SIGNING_KEY_CLIENT_AUTH for connection in CONNECTIONS.values()}
    assert role_statements(template, TOKEN_API, {"KmsKeyArn": kms_key} | everyone_signs) == expected
    # lambda:InvokeFunction on each provider function, one policy each (a loop cannot add statements to one)
    attached = {name: policy["Properties"] for name, policy in resources(template, "AWS::IAM::RolePolicy").items()
                if policy["Properties"]["RoleName"] == {"Ref": f"{TOKEN_API}Role"}}
    assert set(attached) == {f"{TOKEN_API}LogsPolicy"} | {f"{p.function}InvokePolicy" for p in CONNECTIONS.values()}
    for connection in CONNECTIONS.values():
        document = Evaluator(template, {"KmsKeyArn": kms_key})(attached[f"{connection.function}InvokePolicy"])
        assert document["PolicyDocument"] == {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction",
                           "Resource": f"arn:aws:{connection.function}:Arn"}],
        }


def test_each_function_writes_only_to_its_own_log_group(template: dict[str, Any]) -> None:
    role_policies = resources(template, "AWS::IAM::RolePolicy")
    invoke = {f"{connection.function}InvokePolicy" for connection in CONNECTIONS.values()}  # the token API's
    assert set(role_policies) == {f"{function}LogsPolicy" for function in ALL_FUNCTIONS} | invoke
    for function in ALL_FUNCTIONS:
        props = role_policies[f"{function}LogsPolicy"]["Properties"]
        assert props["RoleName"] == {"Ref": f"{function}Role"}
        assert props["PolicyDocument"]["Statement"] == [
            {
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],  # no CreateLogGroup: the stack makes it
                "Resource": {"Fn::GetAtt": [f"{function}LogGroup", "Arn"]},
            }
        ]
        group = template["Resources"][f"{function}LogGroup"]["Properties"]
        assert group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{function}}}"}
    assert not resources(template, "AWS::IAM::Policy")
    assert not resources(template, "AWS::IAM::ManagedPolicy")


def _policy_documents(translated: dict[str, Any]) -> list[tuple[str, Any]]:
    """(role, policy document) of every policy: a role's own, and those attached to it by name."""
    documents = []
    for name, resource in translated["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            documents += [(name, policy["PolicyDocument"]) for policy in props.get("Policies", [])]
        elif resource["Type"] == "AWS::IAM::RolePolicy":
            role = props["RoleName"]
            assert set(role) == {"Ref"}, f"{name}: attached to {role}, not to one of the stack's roles"
            documents.append((role["Ref"], props["PolicyDocument"]))
        elif resource["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            documents.append((name, props["PolicyDocument"]))
    return documents


@pytest.mark.parametrize("signing_keys", [False, True], ids=["no-signing-keys", "kms-signing-keys"])
@pytest.mark.parametrize("kms_key", ["", KMS_KEY], ids=["aws-managed-keys", "customer-managed-key"])
def test_no_wildcard_where_a_narrower_arn_exists(translated: dict[str, Any], kms_key: str, signing_keys: bool) -> None:
    """Over everything SAM would deploy: no '*' resource but X-Ray's, no wildcard action, no managed policy
    but API Gateway's account-wide logging role's."""
    overrides = {"KmsKeyArn": kms_key}
    if signing_keys:
        overrides |= {f"{p.key}SigningKeyArn": SIGNING_KEYS[route] for route, p in CONNECTIONS.items()}
        overrides |= {f"{p.key}ClientAuth": SIGNING_KEY_CLIENT_AUTH for p in CONNECTIONS.values()}
    evaluate = Evaluator(translated, overrides)
    for name, document in _policy_documents(translated):
        for statement in evaluate(document)["Statement"]:
            actions = as_list(statement["Action"])
            assert not any("*" in action for action in actions), f"{name}: wildcard action in {statement}"
            assert "NotAction" not in statement, name
            assert "NotResource" not in statement, name
            if "*" in as_list(statement["Resource"]):
                allowed = STATE_MACHINE_WILDCARDS if name == "GetTokenStateMachineRole" else set(XRAY["Action"])
                assert set(actions) <= allowed, f"{name}: '*' resource in {statement}"
            for resource in as_list(statement["Resource"]):
                assert resource, f"{name}: empty resource in {statement}"
    for name, role in resources(translated, "AWS::IAM::Role").items():
        managed = role["Properties"].get("ManagedPolicyArns", [])
        if name == "ApiGatewayCloudWatchRole":
            # API Gateway's account-wide role writes the logs of every API in the account and region
            # (AWS's documented policy for it): there is no narrower ARN.
            assert evaluate(managed) == ["arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"]
        else:
            assert not managed, f"{name}: managed policies {managed}"


def test_only_provider_functions_read_secrets_or_write_the_cache(translated: dict[str, Any]) -> None:
    readers: dict[str, set[str]] = {}
    for name, document in _policy_documents(translated):
        for statement in Evaluator(translated, {"KmsKeyArn": KMS_KEY})(document)["Statement"]:
            for action in as_list(statement["Action"]):
                readers.setdefault(action, set()).add(name)
    provider_roles = {f"{connection.function}Role" for connection in CONNECTIONS.values()}
    assert readers["secretsmanager:GetSecretValue"] == provider_roles
    for write in ("dynamodb:PutItem", "dynamodb:DeleteItem", "kms:Encrypt", "kms:GenerateDataKey"):
        assert readers[write] == provider_roles, write
    assert readers["dynamodb:GetItem"] == provider_roles | {f"{TOKEN_API}Role"}
    # the token API's UpdateItem sets used_at and nothing else: test_token_api_writes_nothing_but_the_use_mark
    assert readers["dynamodb:UpdateItem"] == provider_roles | {f"{TOKEN_API}Role"}
    assert readers["lambda:InvokeFunction"] == {f"{TOKEN_API}Role", "GetTokenStateMachineRole"} | {
        f"{connection.function}RefreshAheadRole" for connection in CONNECTIONS.values()
    }
    assert not any(action.startswith(("dynamodb:Scan", "dynamodb:Batch", "dynamodb:PartiQL", "dynamodb:Transact"))
                   for action in readers)
    for action in RENEWAL_QUEUE_ACTIONS:
        assert readers[action] == provider_roles, action


# Actions that change something (an item, a key's use, a queue, a function, a log): the token API may hold only its
# use mark, its log stream and the provider functions' invocation. Anything not known to read is a write here.
READ_ONLY = {"dynamodb:GetItem", "kms:Decrypt", "xray:PutTraceSegments", "xray:PutTelemetryRecords"}
TOKEN_API_WRITES = {"dynamodb:UpdateItem", "lambda:InvokeFunction", "logs:CreateLogStream", "logs:PutLogEvents"}


@pytest.mark.parametrize("kms_key", ["", KMS_KEY], ids=["aws-managed-keys", "customer-managed-key"])
def test_token_api_writes_nothing_but_the_use_mark(translated: dict[str, Any], kms_key: str) -> None:
    """Over everything SAM would deploy for the token API's role: its only DynamoDB write is UpdateItem, in one
    statement, under MARK_SCOPE_SET_USED's conditions (no other write action, no unconditioned UpdateItem)."""
    evaluate = Evaluator(translated, {"KmsKeyArn": kms_key})
    statements = [statement for name, document in _policy_documents(translated) if name == f"{TOKEN_API}Role"
                  for statement in evaluate(document)["Statement"]]
    actions = {action for statement in statements for action in as_list(statement["Action"])}
    assert actions - READ_ONLY == TOKEN_API_WRITES, actions - READ_ONLY
    (update,) = [s for s in statements if "dynamodb:UpdateItem" in as_list(s["Action"])]
    assert update == MARK_SCOPE_SET_USED
    assert all(s["Effect"] == "Allow" for s in statements)


_EXPRESSION_WORDS = {"SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "BETWEEN", "IN", "attribute_exists",
                     "attribute_not_exists", "attribute_type", "begins_with", "contains", "size", "if_not_exists",
                     "list_append"}


def _attributes_named(request: dict[str, Any]) -> set[str]:
    """dynamodb:Attributes of an UpdateItem request as IAM sees it: the key's attributes and every top-level
    attribute its update and condition expressions name (placeholders ``#n`` resolved, values ``:v`` left out)."""
    names = set(request["Key"])
    aliases = request.get("ExpressionAttributeNames", {})
    for part in ("UpdateExpression", "ConditionExpression"):
        for word in re.findall(r"(?<![:\w.])#?[A-Za-z_][A-Za-z0-9_]*", request.get(part, "")):
            if word not in _EXPRESSION_WORDS:
                names.add(aliases[word] if word.startswith("#") else word)
    return names


def _allowed_by_the_use_mark(request: dict[str, Any]) -> bool:
    """Whether MARK_SCOPE_SET_USED's conditions let this UpdateItem request through."""
    allowed = set(MARK_SCOPE_SET_USED["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"])
    return (_attributes_named(request) <= allowed and request.get("ReturnValues", "NONE") == "NONE"
            and "ReturnValuesOnConditionCheckFailure" not in request)


def test_the_use_mark_the_token_api_writes_is_what_its_policy_allows() -> None:
    """The layer's own requests, recorded: the use mark (TokenCache.record_use, the token API's one write) names only
    pk, sk and used_at and asks nothing back, so IAM lets it through; the hourly budget's counter (provider functions
    only) names other attributes and would be refused, as would any request naming the token itself."""
    from token_vending.cache import TokenCache

    client = MagicMock()
    cache = TokenCache("table", client)
    cache.record_use("pyng", "billing:batches:read", 1_800_000_000.0)
    (use,) = [call.kwargs for call in client.update_item.call_args_list]
    assert _attributes_named(use) == {"pk", "sk", "used_at"}
    assert _allowed_by_the_use_mark(use)
    for forced in (None, 30):
        client.reset_mock()
        cache.spend_budget("pyng", 1_800_000_000, 60, forced_limit=forced, purge_at=1_800_007_200)
        (spend,) = [call.kwargs for call in client.update_item.call_args_list]
        assert not _allowed_by_the_use_mark(spend), spend["UpdateExpression"]
    for hostile in ({"UpdateExpression": "SET access_token = :t"}, {"UpdateExpression": "SET #a = :t",
                                                                    "ExpressionAttributeNames": {"#a": "expires_at"}},
                    {"UpdateExpression": "SET used_at = :t", "ReturnValues": "ALL_OLD"},
                    {"UpdateExpression": "REMOVE used_at", "ConditionExpression": "begins_with(access_token, :x)"}):
        assert not _allowed_by_the_use_mark({**use, **hostile}), hostile


# --- customer managed key -------------------------------------------------------------------------
def test_kms_key_parameter(template: dict[str, Any]) -> None:
    spec = template["Parameters"]["KmsKeyArn"]
    assert spec["Default"] == ""
    pattern = spec["AllowedPattern"]
    for good in ("", KMS_KEY, "arn:aws:kms:eu-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"):
        assert java_like_fullmatch(pattern, good), good
    for bad in (
        "arn:aws:kms:us-east-1:123456789012:alias/token-vending",  # IAM policies need the key's ARN
        "alias/token-vending",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        f" {KMS_KEY}",
    ):
        assert not java_like_fullmatch(pattern, bad), bad
    # operators are told that existing secrets encrypted with a customer managed key need this key
    assert "SecretArn" in spec["Description"]
    assert "same key" in spec["Description"]
    assert template["Conditions"]["UseCustomerManagedKey"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]}


@pytest.mark.parametrize("kms_key", ["", KMS_KEY], ids=["aws-managed-keys", "customer-managed-key"])
def test_table_and_placeholder_secrets_use_the_key(template: dict[str, Any], kms_key: str) -> None:
    evaluate = Evaluator(template, {"KmsKeyArn": kms_key})
    sse = evaluate(template["Resources"]["CacheTable"]["Properties"]["SSESpecification"])
    # SSEEnabled alone: the AWS managed key (aws/dynamodb)
    assert sse == {"SSEEnabled": True} | ({"SSEType": "KMS", "KMSMasterKeyId": kms_key} if kms_key else {})
    secrets = resources(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == {f"{connection.key}Secret" for connection in CONNECTIONS.values()}
    for name, secret in secrets.items():
        props = evaluate(secret["Properties"])
        if kms_key:
            assert props["KmsKeyId"] == kms_key, name
        else:
            assert "KmsKeyId" not in props, name  # aws/secretsmanager


# --- who may call the API --------------------------------------------------------------------------
def _api_body(translated: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = translated["Resources"]["TokenVendingApi"]["Properties"]["Body"]
    return body


def _combinations() -> list[tuple[str, list[str], list[str]]]:
    lists = [[], ACCOUNTS[:1], ACCOUNTS]
    endpoints = [[], VPC_ENDPOINTS[:1], VPC_ENDPOINTS]
    return [
        (endpoint_type, accounts, vpces)
        for endpoint_type, accounts, vpces in itertools.product(["REGIONAL", "PRIVATE"], lists, endpoints)
    ]


def _expected_policy(accounts: list[str], vpces: list[str]) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ThisAccount",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
            "Action": "execute-api:Invoke",
            "Resource": "execute-api:/*",
        }
    ]
    if accounts:
        statements.append(
            {
                "Sid": "AllowedAccounts",
                "Effect": "Allow",
                "Principal": {"AWS": accounts},
                "Action": "execute-api:Invoke",
                "Resource": "execute-api:/*",
            }
        )
    if vpces:
        statements.append(
            {
                "Sid": "OnlyThroughAllowedVpcEndpoints",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": "execute-api:/*",
                "Condition": {"StringNotEquals": {"aws:SourceVpce": vpces}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


@pytest.mark.parametrize(("endpoint_type", "accounts", "vpces"), _combinations())
def test_resource_policy_for_every_parameter_combination(
    translated: dict[str, Any], endpoint_type: str, accounts: list[str], vpces: list[str]
) -> None:
    """What CloudFormation would deploy (SAM's translation, evaluated with these parameter values)."""
    evaluate = Evaluator(
        translated,
        {
            "ApiEndpointType": endpoint_type,
            "ApiAllowedAccountIds": ",".join(accounts),
            "ApiAllowedVpcEndpointIds": ",".join(vpces),
        },
    )
    broken = evaluate.rules_hold()
    if (endpoint_type == "PRIVATE") != bool(vpces):
        # A private API without endpoints could not be called; a regional one is never reached
        # through an endpoint, so the list would deny every caller. CloudFormation refuses both.
        assert broken, f"{endpoint_type} with {vpces} must be refused by the template's Rules"
        return
    assert not broken, broken
    rest_api = evaluate(translated["Resources"]["TokenVendingApi"]["Properties"])
    assert rest_api["EndpointConfiguration"] == {"Types": [endpoint_type]}
    assert rest_api["Body"]["x-amazon-apigateway-policy"] == _expected_policy(accounts, vpces)
    # the route keeps its SigV4 requirement whatever the policy says
    assert rest_api["Body"]["paths"]["/token/{provider}"]["get"]["security"] == [{"AWS_IAM": []}]


def test_rules_refuse_empty_list_entries(translated: dict[str, Any]) -> None:
    for overrides in (
        {"ApiEndpointType": "PRIVATE", "ApiAllowedVpcEndpointIds": f"{VPC_ENDPOINTS[0]},"},
        {"ApiAllowedAccountIds": f"{ACCOUNTS[0]},,{ACCOUNTS[1]}"},
    ):
        assert Evaluator(translated, overrides).rules_hold(), overrides


def test_api_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["ApiEndpointType"]["AllowedValues"] == ["REGIONAL", "PRIVATE"]
    assert params["ApiEndpointType"]["Default"] == "REGIONAL"
    for name, good, bad in (
        ("ApiAllowedAccountIds", ACCOUNTS, ["12345678901", "1234567890123", "arn:aws:iam::123456789012:root", "*"]),
        ("ApiAllowedVpcEndpointIds", VPC_ENDPOINTS, ["vpce-", "vpc-0123456789abcdef0", "vpce-XYZ12345", "*"]),
    ):
        spec = params[name]
        assert spec["Type"] == "CommaDelimitedList"
        assert spec["Default"] == ""  # no extra restriction unless asked
        # CloudFormation applies a CommaDelimitedList's pattern to each entry
        for value in ["", *good]:
            assert java_like_fullmatch(spec["AllowedPattern"], value), (name, value)
        for value in bad:
            assert not java_like_fullmatch(spec["AllowedPattern"], value), (name, value)


def test_resource_policy_reaches_cloudformation_unresolved(
    template: dict[str, Any], translated: dict[str, Any]
) -> None:
    """SAM resolves parameters in Auth.ResourcePolicy at transform time (to their defaults offline, to
    one string for a list); written in the OpenAPI body the policy keeps its !If and !Ref for
    CloudFormation, and every stack update redeploys the API so that a changed policy takes effect."""
    api = template["Resources"]["TokenVendingApi"]["Properties"]
    assert "ResourcePolicy" not in api["Auth"]
    assert api["AlwaysDeploy"] is True
    policy = json.dumps(_api_body(translated)["x-amazon-apigateway-policy"])
    assert '{"Ref": "ApiAllowedAccountIds"}' in policy
    assert '{"Ref": "ApiAllowedVpcEndpointIds"}' in policy


def _variant(template: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The expanded template, every cfn-lint check on (but EXPANDED_LINT_IGNORES), with these defaults."""
    variant = without_cfn_lint_ignores(template)
    for name, value in (REQUIRED_PARAMETER_SAMPLES | values).items():
        variant["Parameters"][name]["Default"] = value
    return variant


@pytest.mark.slow
def test_cfn_lint_accepts_every_valid_combination(template: dict[str, Any], tmp_path: Path) -> None:
    """cfn-lint (which runs SAM's transform) over the template with the parameters' defaults set to
    each valid combination of the security parameters."""
    files = []
    for index, (endpoint_type, accounts, vpces) in enumerate(_combinations()):
        if (endpoint_type == "PRIVATE") != bool(vpces):
            continue
        values = {
            "ApiEndpointType": endpoint_type,
            "ApiAllowedAccountIds": ",".join(accounts),
            "ApiAllowedVpcEndpointIds": ",".join(vpces),
            "KmsKeyArn": KMS_KEY if index % 2 else "",
            "ApiGatewayLoggingRole": "existing" if index % 3 else "create",
        }
        if index % 2:  # one provider signs its client assertions in KMS
            route = list(CONNECTIONS)[index % len(CONNECTIONS)]
            values[f"{CONNECTIONS[route].key}ClientAuth"] = SIGNING_KEY_CLIENT_AUTH
            values[f"{CONNECTIONS[route].key}SigningKeyArn"] = SIGNING_KEYS[route]
        path = tmp_path / f"variant-{index}.json"
        path.write_text(json.dumps(_variant(template, values), indent=1))
        files.append(path)
    assert len(files) == 9
    result = run([require_tool(CFN_LINT), "--ignore-checks", *EXPANDED_LINT_IGNORES, "--", *files])
    assert result.returncode == 0, f"cfn-lint reported problems:\n{result.stdout}\n{result.stderr}"


# --- logging ---------------------------------------------------------------------------------------
# $context variables API Gateway or IAM set. Not: $context.path, query strings, user agent, error
# messages or headers, which a caller shapes (or which carry signatures and tokens).
SAFE_ACCESS_LOG_VARIABLES = {
    "requestId",
    "extendedRequestId",
    "requestTime",
    "httpMethod",
    "resourcePath",
    "stage",
    "protocol",
    "status",
    "responseLength",
    "responseLatency",
    "integrationStatus",
    "integrationLatency",
    "error.responseType",
    "identity.sourceIp",
    "identity.vpceId",
    "identity.accountId",
    "identity.caller",
    "identity.userArn",
    "xrayTraceId",
}


def test_every_gateway_response_forbids_caching(template: dict[str, Any], translated: dict[str, Any]) -> None:
    """docs/contract.md: every response carries Cache-Control: no-store and Pragma: no-cache, API Gateway's own
    error responses included (DEFAULT_4XX and DEFAULT_5XX stand for every type not listed)."""
    declared = template["Resources"]["TokenVendingApi"]["Properties"]["GatewayResponses"]
    responses = _api_body(translated)["x-amazon-apigateway-gateway-responses"]
    assert set(responses) == set(declared)
    assert {"DEFAULT_4XX", "DEFAULT_5XX"} <= set(responses)
    separate = resources(translated, "AWS::ApiGateway::GatewayResponse")
    everything = {name: r.get("responseParameters", {}) for name, r in responses.items()}
    everything |= {name: r["Properties"].get("ResponseParameters", {}) for name, r in separate.items()}
    for name, parameters in everything.items():
        assert parameters.get("gatewayresponse.header.Cache-Control") == "'no-store'", name
        assert parameters.get("gatewayresponse.header.Pragma") == "'no-cache'", name


def test_api_access_and_execution_logs(translated: dict[str, Any]) -> None:
    (stage,) = resources(translated, "AWS::ApiGateway::Stage").values()
    evaluate = Evaluator(translated)
    props = evaluate(stage["Properties"])
    setting = props["AccessLogSetting"]
    # the log group's ARN without the ":*" that !GetAtt adds
    assert setting["DestinationArn"] == (
        f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:TokenVendingApiAccessLogGroup-physical-id"
    )
    group = translated["Resources"]["TokenVendingApiAccessLogGroup"]["Properties"]
    assert group["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
    assert evaluate(group["LogGroupName"]) == "/aws/apigateway/token-vending/access"
    variables = re.findall(r"\$context\.([A-Za-z.]+)", setting["Format"])
    assert set(variables) <= SAFE_ACCESS_LOG_VARIABLES, set(variables) - SAFE_ACCESS_LOG_VARIABLES
    assert "$" not in re.sub(r"\$context\.[A-Za-z.]+", "", setting["Format"])
    # API Gateway writes "-" for an absent value: every variable must sit inside quotes to stay JSON
    line = json.loads(re.sub(r"\$context\.[A-Za-z.]+", "-", setting["Format"]))
    assert {"requestId", "status", "userArn", "sourceIp", "resourcePath", "errorType"} <= set(line)
    assert set(line.values()) == {"-"}
    (method,) = props["MethodSettings"]
    assert method["LoggingLevel"] == "ERROR"
    assert method["DataTraceEnabled"] is False, "full request/response logging would write tokens to logs"
    assert method["CachingEnabled"] is False
    assert "CacheClusterEnabled" not in props
    assert props["TracingEnabled"] is True
    execution = translated["Resources"]["TokenVendingApiExecutionLogGroup"]["Properties"]
    assert evaluate(execution["LogGroupName"]) == "API-Gateway-Execution-Logs_TokenVendingApi-physical-id/v1"
    assert execution["RetentionInDays"] == {"Ref": "LogRetentionInDays"}


@pytest.mark.parametrize("choice", ["create", "existing"])
def test_api_gateway_logging_role(translated: dict[str, Any], choice: str) -> None:
    template = load_template()
    assert template["Parameters"]["ApiGatewayLoggingRole"]["AllowedValues"] == ["create", "existing"]
    assert template["Parameters"]["ApiGatewayLoggingRole"]["Default"] == "create"
    evaluate = Evaluator(translated, {"ApiGatewayLoggingRole": choice})
    created = evaluate.condition("CreateApiGatewayLoggingRole")
    assert created is (choice == "create")
    res = translated["Resources"]
    for name in ("ApiGatewayCloudWatchRole", "ApiGatewayAccountSettings"):
        assert res[name]["Condition"] == "CreateApiGatewayLoggingRole"
        assert res[name]["DeletionPolicy"] == "Retain"  # other APIs log through the account setting
    role = res["ApiGatewayCloudWatchRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert res["ApiGatewayAccountSettings"]["Properties"]["CloudWatchRoleArn"] == {
        "Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]
    }
    # the stage (through its deployment and the REST API) waits for the account setting when created
    ready = evaluate(res["ApiGatewayLoggingReady"]["Metadata"])
    assert ready == {"AccountSettings": "ApiGatewayAccountSettings-physical-id" if created else ""}
    assert res["TokenVendingApi"]["DependsOn"] == "ApiGatewayLoggingReady"
    (stage,) = resources(translated, "AWS::ApiGateway::Stage").values()
    deployment = res[stage["Properties"]["DeploymentId"]["Ref"]]
    assert deployment["Properties"]["RestApiId"] == {"Ref": "TokenVendingApi"}


def test_refresh_ahead_schedules_belong_to_this_stack(translated: dict[str, Any]) -> None:
    """SAM names each schedule after its logical ID; in a group of the stack's own, two stacks (default
    and prod) can live in one account and region. Failed runs are not retried (the next run is)."""
    group = translated["Resources"]["RefreshAheadScheduleGroup"]
    assert group["Type"] == "AWS::Scheduler::ScheduleGroup"
    assert "Name" not in group.get("Properties", {}), "a fixed name would clash between stacks"
    schedules = resources(translated, "AWS::Scheduler::Schedule")
    assert set(schedules) == {f"{connection.function}RefreshAhead" for connection in CONNECTIONS.values()}
    for schedule in schedules.values():
        assert schedule["Properties"]["GroupName"] == {"Ref": "RefreshAheadScheduleGroup"}
        assert schedule["Properties"]["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    configs = resources(translated, "AWS::Lambda::EventInvokeConfig")
    assert {config["Properties"]["FunctionName"]["Ref"] for config in configs.values()} == {
        connection.function for connection in CONNECTIONS.values()
    }
    for config in configs.values():
        assert config["Properties"]["MaximumRetryAttempts"] == 0


# --- checkov ---------------------------------------------------------------------------------------
def checkov_env() -> dict[str, str]:
    env = {k: v for k, v in tool_env().items() if not k.upper().startswith(("BC_", "CKV_", "PRISMA_"))}
    closed = "http://127.0.0.1:9"  # loopback, nothing listens: any network attempt fails here
    env.update(
        {
            "BC_SKIP_MAPPING": "TRUE",
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE",
            "HTTPS_PROXY": closed,
            "HTTP_PROXY": closed,
            "https_proxy": closed,
            "http_proxy": closed,
            "NO_PROXY": "",
            "no_proxy": "",
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def _skips(resource: dict[str, Any]) -> list[dict[str, Any]]:
    skips: list[dict[str, Any]] = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    return skips


def _with_sam_skips(template: dict[str, Any], translated: dict[str, Any]) -> dict[str, Any]:
    """SAM's translation, where each resource SAM generated (TokenVendingApiStage, ...) carries the
    suppressions written in template.yaml on the SAM resource it comes from (TokenVendingApi)."""
    result = copy.deepcopy(translated)
    sources = {name: r for name, r in template["Resources"].items() if r["Type"].startswith("AWS::Serverless::")}
    for name, resource in result["Resources"].items():
        if name in template["Resources"] or _skips(resource):
            continue
        origins = sorted((source for source in sources if name.startswith(source)), key=len)
        if origins and _skips(sources[origins[-1]]):
            resource.setdefault("Metadata", {})["checkov"] = {"skip": _skips(sources[origins[-1]])}
    return result


def _without_skips(document: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    for resource in result["Resources"].values():
        resource.get("Metadata", {}).pop("checkov", None)
    return result


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """One checkov run over: template.yaml with its loops expanded (checkov reads no Fn::ForEach: it would skip
    every looped resource, its Type being unknown to it), SAM's translation, and both without their suppressions.

    Returns the failed checks per file name."""
    checkov = require_tool(CHECKOV, CHECKOV_HINT)
    template, translated = load_template(), translate()
    folder = tmp_path_factory.mktemp("checkov")
    files = {
        "expanded.json": template,
        "translated.json": _with_sam_skips(template, translated),
        "expanded-unsuppressed.json": _without_skips(template),
        "translated-unsuppressed.json": _without_skips(translated),
    }
    for name, document in files.items():
        (folder / name).write_text(json.dumps(document, indent=1))
    result = run(
        [
            checkov,
            "-d",
            folder,
            "--framework",
            "cloudformation",
            "--skip-download",
            "--skip-results-upload",
            "--compact",  # passed checks reported too (not --quiet): they show what was scanned
            "--output",
            "json",
        ],
        env=checkov_env(),
        cwd=folder,
        timeout=600,
    )
    assert result.returncode in {0, 1}, f"checkov crashed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed: dict[str, list[dict[str, Any]]] = {name: [] for name in files}
    scanned: dict[str, set[str]] = {name: set() for name in files}
    for one in reports:
        assert one["check_type"] == "cloudformation"
        assert not one["summary"]["parsing_errors"], one["results"].get("parsing_errors")
        for outcome in ("passed_checks", "failed_checks", "skipped_checks"):
            for check in one["results"].get(outcome, []):
                scanned[Path(check["file_path"]).name].add(check["resource"].split(".")[1])
        for check in one["results"]["failed_checks"]:
            failed[Path(check["file_path"]).name].append(check)
    # checkov skips what it cannot read: every provider's resources must have been scanned
    for name in ("expanded.json", "expanded-unsuppressed.json"):
        for connection in CONNECTIONS.values():
            mine = {connection.function, f"{connection.function}Role", f"{connection.function}LogGroup",
                    f"{connection.key}Secret"}
            assert mine <= scanned[name], f"checkov did not scan {sorted(mine - scanned[name])} in {name}"
    return failed


def _listing(checks: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {c['check_id']} {c['resource']} (lines {c['file_line_range']}): {c['check_name']}"
        for c in sorted(checks, key=lambda c: (c["resource"], c["check_id"]))
    )


def test_checkov_template(checkov_results: dict[str, list[dict[str, Any]]]) -> None:
    failed = checkov_results["expanded.json"]
    assert not failed, (
        "checkov: fix these, or suppress them inline in template.yaml with a reason "
        f"(Metadata: checkov: skip: [{{id, comment}}]):\n{_listing(failed)}"
    )


def test_checkov_sam_translation(checkov_results: dict[str, list[dict[str, Any]]]) -> None:
    """checkov has no SAM framework: the CloudFormation SAM generates is scanned as well."""
    failed = checkov_results["translated.json"]
    assert not failed, (
        "checkov on SAM's translation: fix these, or suppress them on the SAM resource they come from, "
        f"in template.yaml, with a reason:\n{_listing(failed)}"
    )


def test_checkov_suppressions_have_reasons_and_are_needed(
    checkov_results: dict[str, list[dict[str, Any]]],
) -> None:
    template = load_template()
    suppressed = set()
    for name, resource in template["Resources"].items():
        for skip in _skips(resource):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), skip
            assert len(skip.get("comment", "").split()) >= 8, f"{name}: {skip['id']} needs a written reason"
            suppressed.add((resource["Type"], name, skip["id"]))
    found = {
        (check["resource"].split(".")[0], check["resource"].split(".")[1], check["check_id"])
        for check in checkov_results["expanded-unsuppressed.json"]
    }
    assert suppressed == found, (
        f"suppressed but passing (remove): {sorted(suppressed - found)}; failing (fix or suppress): "
        f"{sorted(found - suppressed)}"
    )
    # every finding in the translation is one of those, on a resource generated from that SAM resource
    for check in checkov_results["translated-unsuppressed.json"]:
        name = check["resource"].split(".")[1]
        origins = {origin for _, origin, cid in suppressed if cid == check["check_id"]}
        assert any(name.startswith(origin) for origin in origins), _listing([check])


# --- bandit ----------------------------------------------------------------------------------------
def test_bandit_finds_nothing_of_medium_or_high_severity() -> None:
    bandit = Path(sys.executable).with_name("bandit")
    if not bandit.exists():
        bandit = ROOT / ".venv" / "bin" / "bandit"
    require_tool(bandit, BANDIT_HINT)
    result = run(
        [bandit, "-c", "pyproject.toml", "-r", "layers", "functions", "local", "-ll", "-f", "json", "-q"],
        timeout=300,
    )
    assert result.returncode in {0, 1}, f"bandit failed to run:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    assert not report["errors"], report["errors"]
    findings = [
        f"  {r['filename']}:{r['line_number']} {r['test_id']} {r['issue_severity']}/{r['issue_confidence']}: "
        f"{r['issue_text']}"
        for r in report["results"]
    ]
    assert not findings, "bandit:\n" + "\n".join(findings)
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned (almost) nothing"
