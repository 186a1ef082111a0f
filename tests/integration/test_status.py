"""``python -m token_vending.status`` against DynamoDB Local: a fleet in every state, written by the layer's own
code paths (the cache, the budget, the use marks), read back as JSON and as the human table."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tests.support.dynamodb_local import REPO_ROOT
from tests.support.harness import create_table
from token_vending import status
from token_vending.budget import UpstreamBudget
from token_vending.cache import CachedToken, TokenCache
from token_vending.request import fingerprint

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.dynamodb_local import DynamoDBLocal

pytestmark = pytest.mark.integration

DUMMY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def aws_env(dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy credentials and DynamoDB Local as the endpoint boto3 takes from the environment."""
    env = {**DUMMY, "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local.endpoint}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL", *status_settings()):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def status_settings() -> tuple[str, ...]:
    return ("REFRESH_MARGIN_SECONDS", "REFRESH_MARGIN_RATIO", "REFRESH_AHEAD_IDLE_HOURS", "UPSTREAM_BUDGETS")


@pytest.fixture
def table(aws_env: dict[str, str]) -> Iterator[tuple[Any, str]]:
    client = boto3.client("dynamodb", endpoint_url=aws_env["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1")
    name = f"status-{uuid.uuid4().hex[:8]}"
    create_table(client, name)
    yield client, name
    client.delete_table(TableName=name)


def token(provider: str, scope_key: str, *, fetched: float, lifetime: int, used: float = 0.0) -> CachedToken:
    return CachedToken(provider=provider, scope_key=scope_key, access_token=f"tok-{secrets.token_urlsafe(24)}",
                       expires_at=int(fetched) + lifetime, fetched_at=fetched, lifetime=lifetime, used_at=used)


def make_fleet(client: Any, name: str, now: float) -> dict[str, CachedToken]:
    """Pyng (900 s tokens, a 90 s margin): fresh, in margin, expired, and one malformed item; Invoice Cloud cooling
    down after its third failure in a row; Aria renewing (a lease held); Autopay's budget spent; Alternative
    Payments idle (last used 30 h ago)."""
    cache = TokenCache(name, client)
    fleet = {
        "fresh": token("pyng", "billing:customers:read", fetched=now - 100, lifetime=900, used=now - 10),
        "margin": token("pyng", "billing:batches:read", fetched=now - 850, lifetime=900, used=now - 5),
        "expired": token("pyng", "billing:customers:invite", fetched=now - 910, lifetime=900, used=now - 20),
        "cooling": token("invoice-cloud", "", fetched=now - 3500, lifetime=3600, used=now - 60),
        "renewing": token("aria", "api", fetched=now - 3550, lifetime=3600, used=now - 1),
        "budget": token("autopay", "", fetched=now - 600, lifetime=36000, used=now - 300),
        "idle": token("alternative-payments", "", fetched=now - 600, lifetime=3600),
    }
    for item in fleet.values():
        assert cache.put(item)
    assert cache.record_use("alternative-payments", "", now - 30 * 3600)  # its last use, as the token API marks it
    client.put_item(TableName=name, Item={"pk": {"S": "pyng"}, "sk": {"S": "token#billing:batches:submit"},
                                          "access_token": {"S": "tok-malformed-item-without-expiry"}})
    owner = "request-1"
    assert cache.acquire_lease("invoice-cloud", "", owner, 20, now=now - 5).acquired
    cache.record_failure("invoice-cloud", "", owner, now + 40, {"error": "upstream_unavailable",
                                                              "error_description": "provider answered 503"},
                         failures=3)
    assert cache.acquire_lease("aria", "api", "request-2", 20, now=now).acquired
    budget = UpstreamBudget(cache, "autopay", per_hour=2)
    assert budget.spend("renewal", now) is None
    assert budget.spend("renewal", now) is None
    assert budget.spend("renewal", now) is not None  # spent
    return fleet


def rows(document: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(row["connection"], row["scope"]): row for row in document["tokens"]}


def test_every_state_in_json_and_table(table: tuple[Any, str], capsys: pytest.CaptureFixture[str]) -> None:
    client, name = table
    now = float(int(time.time()))  # whole seconds, as expires_at is stored
    fleet = make_fleet(client, name, now)
    settings = status.Settings.from_env({"UPSTREAM_BUDGETS": "autopay=2"})
    document = status.read(client, name, settings, now=now)
    by_key = rows(document)

    fresh = by_key["pyng", "billing:customers:read"]
    assert fresh["state"] == ["fresh"]
    assert fresh["fingerprint"] == fingerprint(fleet["fresh"].access_token)
    assert fresh["time_left_seconds"] == pytest.approx(800, abs=1)
    assert fresh["renewal_due_in_seconds"] == pytest.approx(800 - 90, abs=1)  # Pyng's margin: 10 % of 900 s
    assert fresh["last_use_seconds_ago"] == pytest.approx(10, abs=0.01)
    assert fresh["budget"] == {"spent": 0, "limit": 60, "forced": 0}
    assert by_key["pyng", "billing:batches:read"]["state"] == ["in margin"]
    assert by_key["pyng", "billing:batches:read"]["renewal_due_in_seconds"] < 0
    expired = by_key["pyng", "billing:customers:invite"]
    assert expired["state"] == ["expired"]
    assert expired["time_left_seconds"] == pytest.approx(-10, abs=1)
    malformed = by_key["pyng", "billing:batches:submit"]
    assert malformed["malformed"] == ["token"]
    assert malformed["fingerprint"] is None
    assert "malformed" in malformed["state"]

    cooling = by_key["invoice-cloud", ""]
    assert cooling["state"] == ["in margin", "cooling down"]
    assert cooling["cool_down"]["streak"] == 3
    assert cooling["cool_down"]["error"] == "upstream_unavailable"
    assert cooling["cool_down"]["seconds_left"] == pytest.approx(40, abs=0.01)
    assert cooling["lease"] is None
    renewing = by_key["aria", "api"]
    assert renewing["state"] == ["in margin", "renewing"]
    assert renewing["lease"]["seconds_left"] == pytest.approx(20, abs=0.01)
    assert renewing["cool_down"] is None
    spent = by_key["autopay", ""]
    assert spent["budget"] == {"spent": 2, "limit": 2, "forced": 0}
    assert spent["state"] == ["fresh", "budget spent"]
    idle = by_key["alternative-payments", ""]
    assert idle["state"] == ["fresh", "idle"]
    assert idle["last_use_seconds_ago"] == pytest.approx(30 * 3600, abs=0.01)
    assert document["tokens"][0]["expires_at"]["iso"].endswith("Z")

    lines = status.table_lines(document)
    text = "\n".join(lines)
    assert lines[0].split()[:4] == ["CONNECTION", "PROVIDER", "SCOPE", "SET"]
    line = {(row["connection"], row["scope"]): next(ln for ln in lines if ln.startswith(row["connection"]) and (
        row["scope"] or status.NO_SCOPE) in ln) for row in document["tokens"]}
    assert fingerprint(fleet["fresh"].access_token) in line["pyng", "billing:customers:read"]
    assert "13m20s" in line["pyng", "billing:customers:read"]  # time left
    assert "expired 10s ago" in line["pyng", "billing:customers:invite"]
    assert "40s left, streak 3 (upstream_unavailable)" in line["invoice-cloud", ""]
    assert "20s left" in line["aria", "api"]
    assert "2/2" in line["autopay", ""]
    assert "budget spent" in line["autopay", ""]
    assert "1d06h ago (idle)" in line["alternative-payments", ""]
    assert "malformed (token)" in line["pyng", "billing:batches:submit"]
    header = lines[0]
    for row_line in lines[1:len(document["tokens"]) + 1]:  # aligned: every column starts where its header does
        start = header.index("FINGERPRINT")
        assert row_line[start - 2:start] == "  "
        assert row_line[start] != " "
    for item in fleet.values():
        assert item.access_token not in text
        assert item.access_token not in json.dumps(document)
    assert "tok-malformed-item-without-expiry" not in text + json.dumps(document)

    assert status.main(["--table", name, "--budgets", "autopay=2"]) == 0
    printed = capsys.readouterr().out
    assert "budget spent" in printed
    assert "cooling down" in printed
    assert "idle" in printed


def test_connections_of_one_provider_are_rows_of_their_own(table: tuple[Any, str]) -> None:
    """Two connections of Pyng (``pyng``, ``PyngOrg2``) and of Aria (``aria``, ``AriaAu``) with the same scope
    keys: a row per connection, each with its own token, lease, cool-down and budget (``PyngOrg2=1`` spent, pyng's
    untouched), its provider named beside it, the provider's margin (Pyng's 90 s) for each."""
    client, name = table
    now = float(int(time.time()))
    cache = TokenCache(name, client)
    tokens = {
        "pyng": token("pyng", "", fetched=now - 100, lifetime=900, used=now - 5),
        "PyngOrg2": token("PyngOrg2", "", fetched=now - 850, lifetime=900, used=now - 5),
        "aria": token("aria", "", fetched=now - 60, lifetime=3600, used=now - 1),
        "AriaAu": token("AriaAu", "", fetched=now - 60, lifetime=3600, used=now - 1),
    }
    for item in tokens.values():
        assert cache.put(item)
    assert cache.acquire_lease("aria", "", "request-1", 20, now=now).acquired
    assert cache.acquire_lease("AriaAu", "", "request-2", 20, now=now - 5).acquired
    cache.record_failure("AriaAu", "", "request-2", now + 30, {"error": "upstream_rejected"}, failures=1)
    budget = UpstreamBudget(cache, "PyngOrg2", per_hour=1)
    assert budget.spend("renewal", now) is None
    assert budget.spend("renewal", now) is not None  # spent
    settings = status.Settings.from_env({"UPSTREAM_BUDGETS": "PyngOrg2=1"})
    document = status.read(client, name, settings, now=now)
    by_key = rows(document)
    assert set(by_key) == {("pyng", ""), ("PyngOrg2", ""), ("aria", ""), ("AriaAu", "")}
    assert {key: row["provider"] for key, row in by_key.items()} == {
        ("pyng", ""): "pyng", ("PyngOrg2", ""): "pyng", ("aria", ""): "aria", ("AriaAu", ""): "aria"}
    for connection, item in tokens.items():
        assert by_key[connection, ""]["fingerprint"] == fingerprint(item.access_token)
    assert by_key["pyng", ""]["state"] == ["fresh"]
    assert by_key["pyng", ""]["budget"] == {"spent": 0, "limit": 60, "forced": 0}
    assert by_key["PyngOrg2", ""]["state"] == ["in margin", "budget spent"]  # 50 s left of 900: Pyng's 90 s margin
    assert by_key["PyngOrg2", ""]["budget"] == {"spent": 1, "limit": 1, "forced": 0}
    assert by_key["aria", ""]["state"] == ["fresh", "renewing"]
    assert by_key["aria", ""]["cool_down"] is None
    assert by_key["AriaAu", ""]["state"] == ["fresh", "cooling down"]
    assert by_key["AriaAu", ""]["lease"] is None
    assert by_key["AriaAu", ""]["cool_down"]["error"] == "upstream_rejected"
    lines = status.table_lines(document)
    line = {row["connection"]: next(ln for ln in lines if ln.split()[0] == row["connection"])
            for row in document["tokens"]}
    assert line["PyngOrg2"].split()[:3] == ["PyngOrg2", "pyng", status.NO_SCOPE]
    assert line["AriaAu"].split()[:2] == ["AriaAu", "aria"]
    assert "1/1" in line["PyngOrg2"]
    assert "0/60" in line["pyng"]


def test_entry_point_json_as_a_subprocess(table: tuple[Any, str], aws_env: dict[str, str]) -> None:
    client, name = table
    fleet = make_fleet(client, name, time.time())
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env |= aws_env | {"PYTHONPATH": str(REPO_ROOT / "layers" / "token_vending"), "UPSTREAM_BUDGETS": "autopay=2"}
    done = subprocess.run([sys.executable, "-m", "token_vending.status", "--json", "--table", name],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["table"] == name
    states = {(row["connection"], row["scope"]): row["state"] for row in document["tokens"]}
    assert "cooling down" in states["invoice-cloud", ""]
    assert "budget spent" in states["autopay", ""]
    for item in fleet.values():
        assert item.access_token not in done.stdout + done.stderr


def test_empty_table(table: tuple[Any, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, name = table
    assert status.main(["--table", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == []
    assert status.main(["--table", name]) == 0
    assert "no tokens cached" in capsys.readouterr().out


def test_missing_table_is_a_one_line_error(aws_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--table", "no-such-table"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "token_vending.status: table no-such-table does not exist"


def test_no_credentials(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert status.main(["--table", "anything"]) == 2
    assert "no AWS credentials" in capsys.readouterr().err


def test_watch_redraws_until_ctrl_c(table: tuple[Any, str], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, name = table
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    assert status.main(["--table", name, "--watch", "2", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert naps == [2.0, 2.0]
    assert [json.loads(line)["table"] for line in lines] == [name, name]  # one document per redraw


@pytest.mark.parametrize("with_output", [True, False])
def test_stack_names_its_table(moto_server: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str], with_output: bool) -> None:
    """``--stack``: the stack's CacheTableName output, else its CacheTable resource (CloudFormation on moto)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    template: dict[str, Any] = {"Resources": {status.TABLE_LOGICAL_ID: {"Type": "AWS::DynamoDB::Table", "Properties": {
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                 {"AttributeName": "sk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]}}}}
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    named = f"status-output-{uuid.uuid4().hex[:8]}"  # the output wins over the resource when there is one
    if with_output:
        create_table(dynamodb, named)
        template["Outputs"] = {status.TABLE_OUTPUT: {"Value": named}}
    stack = f"status-{uuid.uuid4().hex[:8]}"
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(template))
    physical = cloudformation.describe_stack_resource(
        StackName=stack, LogicalResourceId=status.TABLE_LOGICAL_ID)["StackResourceDetail"]["PhysicalResourceId"]
    expected = named if with_output else physical
    now = time.time()
    TokenCache(expected, dynamodb).put(token("pyng", "billing:batches:read", fetched=now - 100, lifetime=900))

    assert status.main(["--stack", stack, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["table"] == expected
    assert [row["scope"] for row in document["tokens"]] == ["billing:batches:read"]
    cloudformation.delete_stack(StackName=stack)


def test_missing_stack_is_a_one_line_error(moto_server: str, aws_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    assert status.main(["--stack", "no-such-stack"]) == 2
    assert capsys.readouterr().err.strip() == ("token_vending.status: stack no-such-stack does not exist "
                                                "(or cannot be described)")


def test_the_local_stack_is_read_without_credentials_of_ones_own(aws_env: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A new user runs the command beside ``make local`` in a shell with no AWS credentials: the local stack
    takes any, so its table is read (a deployed one still needs the user's own: the test above)."""
    from token_vending import constants

    client = boto3.client("dynamodb", endpoint_url=aws_env["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1")
    create_table(client, constants.LOCAL_TABLE_NAME)
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        assert status.main(["--json"]) == 0
        assert json.loads(capsys.readouterr().out)["table"] == constants.LOCAL_TABLE_NAME
    finally:
        client.delete_table(TableName=constants.LOCAL_TABLE_NAME)
