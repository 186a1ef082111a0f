"""The example state machine's contract with the provider functions: every path the ASL reads exists in
what a provider function really returns, every error name it matches is one the function really raises,
and the token does not survive past the step that uses it. Also validated by cfn-lint's ASL schema."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.unit.conftest import REPO_ROOT, TABLE, load_app
from token_vending.exceptions import ERRORS_BY_TYPE

if TYPE_CHECKING:
    from pathlib import Path

ASL = REPO_ROOT / "statemachines" / "get_token.asl.json"
SUBSTITUTIONS = {"TokenFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:PyngFunction",
                 "TokenScope": "billing:batches:read"}
CONTRACT_ERRORS = {"InvalidRequest", "Misconfigured", "UpstreamRejected", "UpstreamInvalidResponse",
                   "UpstreamUnavailable", "UpstreamTimeout"}
_PATH = re.compile(r"\$\$?(?:\.[A-Za-z0-9_]+)+")


def definition() -> dict[str, Any]:
    text = ASL.read_text()
    for key, value in SUBSTITUTIONS.items():
        text = text.replace("${" + key + "}", value)
    document: dict[str, Any] = json.loads(text)
    return document


def resolve(path: str, data: Any, context: dict[str, Any]) -> Any:
    """Minimal JSONPath for the ``$.a.b`` and ``$$.Execution.Input`` forms the ASL uses."""
    node = context if path.startswith("$$") else data
    for part in path.lstrip("$").strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{path} does not exist in {sorted(node) if isinstance(node, dict) else node!r}")
        node = node[part]
    return node


def render(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """Evaluates a Parameters/ResultSelector template: ``key.$`` paths and States.Format arguments."""
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                if value.startswith("States.Format("):
                    arguments = [resolve(path, data, context) for path in _PATH.findall(value)]
                    out[key[:-2]] = " ".join(str(argument) for argument in arguments)
                else:
                    out[key[:-2]] = resolve(value, data, context)
            else:
                out[key] = render(value, data, context)
        return out
    return template


def put_result(data: dict[str, Any], result_path: str, result: Any) -> dict[str, Any]:
    merged = json.loads(json.dumps(data))
    parts = result_path.lstrip("$").strip(".").split(".")
    node = merged
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = result
    return merged


@pytest.fixture
def pyng(moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("CONNECTION_NAME", "pyng")
    monkeypatch.setenv("TOKEN_URL", "https://sample.pyng.com.au/billing/oauth2/token")
    monkeypatch.setenv("SECRET_ID", "token-vending/pyng")
    monkeypatch.setenv("ALLOWED_SCOPES", "billing:batches:read billing:customers:read")
    monkeypatch.setenv("TOKEN_LIFETIME", "900")
    import boto3

    # The connection's secret: a miss reads it (its settings) before anything else.
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="token-vending/pyng", SecretString=json.dumps({"client_id": "id", "client_secret": "secret"}))
    now = time.time()
    moto_table.put_item(TableName=TABLE, Item={
        "pk": {"S": "pyng"}, "sk": {"S": "token#billing:batches:read"}, "access_token": {"S": "the-token"},
        "token_type": {"S": "Bearer"}, "expires_at": {"N": str(int(now + 800))}, "fetched_at": {"N": str(now - 100)},
        "lifetime": {"N": "900"}, "purge_at": {"N": str(int(now) + 9999)}})
    return load_app("pyng")


def test_every_path_the_asl_reads_exists_in_what_the_function_returns(pyng: Any, context: Any) -> None:
    asl = definition()
    task = asl["States"][asl["StartAt"]]
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    payload = task["Parameters"]["Payload"]
    body = pyng.handler(payload, context)  # the real function, with the ASL's own payload
    invoke_result = {"ExecutedVersion": "$LATEST", "Payload": body, "StatusCode": 200}
    execution_input = {"batch": "b-1"}
    ctx = {"Execution": {"Input": execution_input}}

    selected = render(task["ResultSelector"], invoke_result, ctx)
    assert selected["access_token"] == "the-token"
    state = put_result(execution_input, task["ResultPath"], selected)
    name = task["Next"]
    while asl["States"][name]["Type"] == "Pass":
        step = asl["States"][name]
        result = render(step["Parameters"], state, ctx)
        state = put_result(state, step["ResultPath"], result) if "ResultPath" in step else result
        name = step["Next"]
    assert asl["States"][name]["Type"] == "Succeed"
    assert "the-token" not in json.dumps(state), "the token must not reach the execution's output"


def test_error_names_in_retry_and_catch_are_the_functions_exception_names(pyng: Any, context: Any) -> None:
    task = definition()["States"]["GetToken"]
    names = {name for rule in task["Retry"] + task["Catch"] for name in rule["ErrorEquals"]}
    ours = {name for name in names if not name.startswith(("States.", "Lambda."))}
    assert ours <= set(ERRORS_BY_TYPE), ours - set(ERRORS_BY_TYPE)
    assert ours >= CONTRACT_ERRORS, CONTRACT_ERRORS - ours
    retried = {name for rule in task["Retry"] for name in rule["ErrorEquals"]}
    assert {"UpstreamUnavailable", "UpstreamTimeout"} <= retried
    assert not retried & {"UpstreamRejected", "Misconfigured", "InvalidRequest", "UpstreamInvalidResponse"}
    assert task["Catch"][-1]["ErrorEquals"] == ["States.ALL"]
    # The name a real failure carries is the one the ASL matches (a scope the connection does not allow: refused
    # once its secret is read, before any lease).
    with pytest.raises(Exception, match="invalid_request") as raised:
        pyng.handler({"scope": "billing:admin"}, context)
    assert type(raised.value).__name__ == "InvalidRequest"
    assert type(raised.value).__name__ in ours


def test_cfn_lint_validates_the_definition(tmp_path: Path) -> None:
    cfn_lint = REPO_ROOT / ".tools" / "sam" / "bin" / "cfn-lint"
    assert cfn_lint.exists(), "run make test (it installs .tools/sam with cfn-lint)"
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "states.amazonaws.com"}}]}}},
            "StateMachine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                "Definition": json.loads(ASL.read_text()),
                "DefinitionSubstitutions": SUBSTITUTIONS,
                "RoleArn": {"Fn::GetAtt": ["Role", "Arn"]}}}}}
    path = tmp_path / "state-machine.json"
    path.write_text(json.dumps(template))
    result = subprocess.run([str(cfn_lint), str(path)], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # cfn-lint really checks the ASL: a broken definition fails.
    broken = json.loads(json.dumps(template))
    broken["Resources"]["StateMachine"]["Properties"]["Definition"]["States"]["GetToken"]["Type"] = "Taks"
    path.write_text(json.dumps(broken))
    result = subprocess.run([str(cfn_lint), str(path)], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode != 0


def test_every_transition_targets_an_existing_state() -> None:
    states = definition()["States"]
    targets = {state["Next"] for state in states.values() if "Next" in state}
    targets |= {rule["Next"] for state in states.values() for rule in state.get("Catch", [])}
    assert targets <= set(states), targets - set(states)
    assert all(state.get("End") or "Next" in state or state["Type"] in ("Succeed", "Fail") for state in states.values())
