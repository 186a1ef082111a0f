"""A parameter that names an AWS resource is granted exactly that resource, or refused at deploy time.

For every value that passes ``<Provider>SigningKeyArn``'s and ``<Provider>SecretArn``'s ``AllowedPattern``
(hypothesis draws them from the patterns themselves), the provider function's deployed policy is replayed
against the very calls the function makes with it:

- a KMS key ARN: ``kms:GetPublicKey`` and ``kms:Sign`` with that ARN;
- a KMS alias ARN: ``kms:GetPublicKey`` with the alias, then ``kms:Sign`` with the key ARN KMS answered with
  (``KeyId`` of GetPublicKey: a key of the alias's own account and Region, as KMS keeps an alias and its key
  together), authorised by the alias the key carries (``kms:ResourceAliases``) as AWS documents, since an
  alias ARN in a policy's ``Resource`` names the alias, never its key;
- a secret ARN: ``secretsmanager:GetSecretValue`` with that ARN, which must be the full one (Secrets Manager
  authorises the secret's full ARN, its name and a hyphen and six characters).

The replay is a small evaluator of the IAM policy language's parts these policies use (Allow, actions, ARN
globbing segment by segment, StringEquals, ForAnyValue:StringEquals); any other operator fails the test rather
than being skipped.
"""

from __future__ import annotations

import fnmatch
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.template.cfn import ACCOUNT_ID, CONNECTIONS, REGION, Evaluator, as_list, java_like_fullmatch, load_template
from token_vending.assertion import KMS_ALGORITHMS

ROUTE = "pyng"
PREFIX = CONNECTIONS[ROUTE].key
FUNCTION = CONNECTIONS[ROUTE].function
TEMPLATE = load_template()
SIGNING_KEY_PATTERN = TEMPLATE["Parameters"][f"{PREFIX}SigningKeyArn"]["AllowedPattern"]
SECRET_PATTERN = TEMPLATE["Parameters"][f"{PREFIX}SecretArn"]["AllowedPattern"]
OTHER_ACCOUNT = "210987654321"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def passing(pattern: str) -> st.SearchStrategy[str]:
    """Non-empty values the pattern accepts as CloudFormation would (whole value, Java-like semantics)."""
    return st.from_regex(pattern, fullmatch=True).filter(
        lambda value: bool(value) and java_like_fullmatch(pattern, value))


# --- the replay -------------------------------------------------------------------------------------------------
def _arn_matches(pattern: str, arn: str) -> bool:
    """IAM's ARN matching: segment by segment (the sixth, the resource, keeps its colons), * and ? in each."""
    want, have = pattern.split(":", 5), arn.split(":", 5)
    if pattern == "*":
        return True
    return len(want) == len(have) == 6 and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have, strict=True))


def _condition_holds(condition: dict[str, Any], context: dict[str, Any]) -> bool:
    for operator, tests in condition.items():
        for key, values in tests.items():
            allowed = {str(value) for value in as_list(values)}
            if operator == "StringEquals":
                present = context.get(key)
                if present is None or isinstance(present, list) or present not in allowed:
                    return False
            elif operator == "ForAnyValue:StringEquals":
                if not set(as_list(context.get(key, []))) & allowed:
                    return False
            else:
                raise AssertionError(f"the replay does not know {operator}: teach it before trusting it")
    return True


def allowed(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, Any]) -> bool:
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if action not in as_list(statement["Action"]):
            continue
        if not any(_arn_matches(pattern, resource) for pattern in as_list(statement["Resource"])):
            continue
        if _condition_holds(statement.get("Condition", {}), context):
            return True
    return False


def deployed(overrides: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The function role's statements and the function's environment, deployed with these parameters."""
    evaluate = Evaluator(TEMPLATE, overrides)
    (policy,) = TEMPLATE["Resources"][f"{FUNCTION}Role"]["Properties"]["Policies"]
    statements = evaluate(policy["PolicyDocument"])["Statement"]
    variables = evaluate(TEMPLATE["Resources"][FUNCTION]["Properties"]["Environment"])["Variables"]
    return statements, variables


def signing(arn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return deployed({f"{PREFIX}ClientAuth": "private_key_jwt", f"{PREFIX}SigningKeyArn": arn})


def sign_context(aliases: list[str], algorithm: str = "ECDSA_SHA_256") -> dict[str, Any]:
    return {"kms:SigningAlgorithm": algorithm, "kms:MessageType": "RAW", "kms:ResourceAliases": aliases}


def key_of(alias_arn: str, account: str | None = None) -> str:
    """The ARN of a key in the alias's partition and Region (its account unless another is named)."""
    arn, partition, service, region, owner, _ = alias_arn.split(":", 5)
    return ":".join([arn, partition, service, region, account or owner, f"key/{uuid.uuid4()}"])


# --- <Provider>SigningKeyArn -----------------------------------------------------------------------------------
@PROPERTY
@given(passing(SIGNING_KEY_PATTERN))
def test_a_signing_key_arn_that_passes_its_pattern_is_granted_for_the_calls_made_with_it(arn: str) -> None:
    statements, variables = signing(arn)
    assert variables["SIGNING_KEY_ID"] == arn
    resource = arn.split(":", 5)[5]
    if resource.startswith("key/"):
        # GetPublicKey and Sign name the key ARN itself (GetPublicKey answers with it as KeyId)
        assert allowed(statements, "kms:GetPublicKey", arn, {"kms:ResourceAliases": []})
        for algorithm in KMS_ALGORITHMS.values():
            assert allowed(statements, "kms:Sign", arn, sign_context([], algorithm)), algorithm
        assert not allowed(statements, "kms:Sign", arn, sign_context([], "RSASSA_PKCS1_V1_5_SHA_512"))
        assert not allowed(statements, "kms:Sign", key_of(arn), sign_context([]))  # no other key
        return
    assert resource.startswith("alias/")
    alias = resource
    key = key_of(arn)  # where the alias points now, or after it moves: always in the alias's account and Region
    assert allowed(statements, "kms:GetPublicKey", key, {"kms:RequestAlias": alias, "kms:ResourceAliases": [alias]})
    for algorithm in KMS_ALGORITHMS.values():
        assert allowed(statements, "kms:Sign", key, sign_context([alias, "alias/other"], algorithm)), algorithm
    assert not allowed(statements, "kms:Sign", key, sign_context(["alias/other"]))  # a key without the alias
    elsewhere = OTHER_ACCOUNT if arn.split(":")[4] != OTHER_ACCOUNT else ACCOUNT_ID
    # the same alias name in another account (this stack's own, when the alias is another account's): not granted
    assert not allowed(statements, "kms:Sign", key_of(arn, elsewhere), sign_context([alias]))
    assert not allowed(statements, "kms:GetPublicKey", key_of(arn, elsewhere), {"kms:ResourceAliases": [alias]})


@pytest.mark.parametrize("account", [ACCOUNT_ID, OTHER_ACCOUNT])
def test_a_signing_key_alias_of_another_account_or_region_is_granted_there_not_here(account: str) -> None:
    """The alias ARN names its account and Region: its keys there are granted, not this stack's keys that
    carry an alias of the same name."""
    arn = f"arn:aws:kms:eu-west-1:{account}:alias/token-signing"
    statements, _ = signing(arn)
    theirs = f"arn:aws:kms:eu-west-1:{account}:key/{uuid.uuid4()}"
    ours = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{uuid.uuid4()}"
    assert allowed(statements, "kms:Sign", theirs, sign_context(["alias/token-signing"]))
    assert not allowed(statements, "kms:Sign", ours, sign_context(["alias/token-signing"]))
    assert not allowed(statements, "kms:GetPublicKey", ours, {"kms:ResourceAliases": ["alias/token-signing"]})


# --- <Provider>SecretArn ---------------------------------------------------------------------------------------
@PROPERTY
@given(passing(SECRET_PATTERN))
def test_a_secret_arn_that_passes_its_pattern_is_granted_exactly_and_is_the_full_arn(arn: str) -> None:
    statements, variables = deployed({f"{PREFIX}SecretArn": arn})
    assert variables["SECRET_ID"] == arn
    assert allowed(statements, "secretsmanager:GetSecretValue", arn, {})
    name, suffix = arn.split(":secret:", 1)[1].rsplit("-", 1)
    assert name
    assert len(suffix) == 6
    assert suffix.isalnum()
    assert not allowed(statements, "secretsmanager:GetSecretValue", f"{arn[:-6]}zzzzzz", {})


@pytest.mark.parametrize("arn", [
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng",  # a name alone: IAM would deny its reads
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng-*",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng-??????",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng-AbCdE",
])
def test_a_secret_arn_without_its_suffix_is_refused_at_deploy_time(arn: str) -> None:
    assert not java_like_fullmatch(SECRET_PATTERN, arn)
    full = "arn:aws:secretsmanager:us-east-1:123456789012:secret:billing/pyng-AbCdEf"
    assert java_like_fullmatch(SECRET_PATTERN, full)
