"""The example state machine (statemachines/get_token.asl.json) executed by a real ASL interpreter -- moto's,
in-process, with ``execute_state_machine`` -- whose ``lambda:invoke`` task calls the real Pyng provider function
behind the local Lambda service (the stack ``make local`` runs), which asks the Pyng emulator.

What a workflow relies on: the token reaches the step that uses it and is gone from the execution's output and
from every history event after that step; ``UpstreamUnavailable`` is retried until the provider answers;
``UpstreamRejected`` and ``InvalidRequest`` are caught by name and their contract error body is read as docs/contract.md
says. Retry waits are shortened in a definition derived from the real one (:func:`quick_definition`)."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from local.providers import Fault
from tests.unit.test_state_machine import ASL, SUBSTITUTIONS

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/token-vending-sfn"
SCOPE = SUBSTITUTIONS["TokenScope"]


def quick_definition(**substitutions: str) -> dict[str, Any]:
    """The real definition with the template's substitutions (or ``substitutions``), every Retry's first wait cut
    to one second and its jitter dropped; the back-off rate and attempts are kept, so the retries still have to
    outlast the provider function's cool-down (10 s after an outage)."""
    text = ASL.read_text()
    for key, value in {**SUBSTITUTIONS, **substitutions}.items():
        text = text.replace("${" + key + "}", value)
    definition: dict[str, Any] = json.loads(text)
    for state in definition["States"].values():
        for rule in state.get("Retry", []):
            rule["IntervalSeconds"] = 1
            rule.pop("JitterStrategy", None)
    return definition


@pytest.fixture
def sfn(make_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """moto's Step Functions, executing ASL, whose Lambda task reaches the local Lambda service."""
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STEPFUNCTIONS"):
        monkeypatch.delenv(name, raising=False)
    # The stack is made inside: mock_aws starts from empty backends, which the session's moto server (same
    # process) shares, so the stack's secrets must be written after it starts.
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        stack = make_stack(provider_env={"pyng": {"UPSTREAM_RETRIES": "0"}})
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", stack.lambda_url)
        client = boto3.client("stepfunctions", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        yield client, stack


def execute(client: Any, execution_input: dict[str, Any], timeout: float = 120, **substitutions: str
            ) -> tuple[dict[str, Any], list[Any]]:
    machine = client.create_state_machine(name=f"get-token-{uuid.uuid4().hex[:8]}", roleArn=ROLE,
                                          definition=json.dumps(quick_definition(**substitutions))
                                          )["stateMachineArn"]
    arn = client.start_execution(stateMachineArn=machine, name=uuid.uuid4().hex,
                                 input=json.dumps(execution_input))["executionArn"]
    deadline = time.monotonic() + timeout
    while (execution := client.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution did not finish"
        time.sleep(0.2)
    events = client.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    return execution, events


def entered(events: list[Any]) -> list[str]:
    return [event["stateEnteredEventDetails"]["name"] for event in events if "stateEnteredEventDetails" in event]


def test_the_token_reaches_the_step_that_uses_it_and_no_further(sfn: tuple[Any, Any], emulators: Any) -> None:
    client, _ = sfn
    execution, events = execute(client, {"batch": "b-42"})
    assert execution["status"] == "SUCCEEDED", execution
    [issued] = emulators["pyng"].issued
    token = issued["access_token"]
    output = json.loads(execution["output"])
    assert output["input"] == {"batch": "b-42"}
    assert output["token_expires_at"]
    assert token not in execution["output"]
    # The step that uses it has it, in the header it builds...
    used = next(event["stateExitedEventDetails"] for event in events
                if event.get("stateExitedEventDetails", {}).get("name") == "UseToken")
    assert json.loads(used["output"])["request"] == {"authorization": f"Bearer {token}"}
    # ...and nothing after it: the next state's input is that step's output (the placeholder Pass echoes the
    # header it builds; a real task writes its own result instead), and from there on no event carries it.
    forget = next(index for index, event in enumerate(events)
                  if event.get("stateEnteredEventDetails", {}).get("name") == "ForgetToken")
    assert token in events[forget]["stateEnteredEventDetails"]["input"]
    after = events[forget + 1:]
    assert len(after) >= 3
    assert token not in json.dumps(after, default=str)
    assert entered(events) == ["GetToken", "UseToken", "ForgetToken", "Done"]


def failures(events: list[Any]) -> list[dict[str, Any]]:
    """The task failures of the history (the Lambda task's error and cause, as a Catch or Retry sees them)."""
    return [event["taskFailedEventDetails"] for event in events if "taskFailedEventDetails" in event]


def test_an_outage_is_retried_until_the_provider_answers(sfn: tuple[Any, Any], emulators: Any) -> None:
    client, _ = sfn
    emulators["pyng"].enqueue(Fault(status=503))
    execution, events = execute(client, {"batch": "b-43"})
    assert execution["status"] == "SUCCEEDED", execution
    failed = failures(events)
    assert failed
    assert {failure["error"] for failure in failed} == {"UpstreamUnavailable"}
    assert entered(events) == ["GetToken", "UseToken", "ForgetToken", "Done"]
    # The retries inside the function's cool-down were answered by it: the provider was asked twice.
    assert emulators["pyng"].token_requests == 2
    [issued] = emulators["pyng"].issued
    assert issued["access_token"] not in execution["output"]


def read_contract_error(execution: dict[str, Any]) -> dict[str, Any]:
    """As docs/contract.md says: the failed execution's cause is the contract error body."""
    body: dict[str, Any] = json.loads(execution["cause"])
    return body


@pytest.mark.parametrize(("case", "error", "code"), [
    ("rejected", "UpstreamRejected", "upstream_rejected"),
    ("invalid", "InvalidRequest", "invalid_request"),
])
def test_a_refusal_is_caught_by_name_with_the_contract_body(sfn: tuple[Any, Any], emulators: Any, case: str,
                                                            error: str, code: str) -> None:
    client, _ = sfn
    substitutions = {}
    if case == "rejected":
        emulators["pyng"].set_credentials("someone-else", "another-secret")
    else:
        substitutions["TokenScope"] = "billing:admin"  # not one of PyngScopes
    execution, events = execute(client, {"batch": "b-44"}, **substitutions)
    assert execution["status"] == "FAILED"
    assert entered(events) == ["GetToken", "ReadError", "TokenFailed"], "caught by name, not retried"
    [failed] = failures(events)
    assert failed["error"] == error
    # The execution's error is the exception's name, its cause the contract body (no stack trace, no paths).
    assert execution["error"] == error
    body = read_contract_error(execution)
    assert body["error"] == code
    assert body["provider"] == "pyng"
    assert "stackTrace" not in execution["cause"]
    if case == "rejected":
        assert body["upstream_error"] == "invalid_client"
        assert emulators["pyng"].token_requests == 1
    else:
        assert emulators["pyng"].token_requests == 0
    # Inside a workflow, the caught error's Cause takes two parses: Lambda's error document, then its errorMessage.
    document = json.loads(failed["cause"])
    assert isinstance(document["errorMessage"], str)
    assert json.loads(document["errorMessage"]) == body
