"""A provider added by following the guide (docs/adding-a-provider.md) literally, in a copy of the repository.

The steps are the guide's own code blocks (a drifting guide fails here): the catalogue entry, and the provider's
key in the template's patterns. A connection of it (``AcmeBilling``) is then configuration: deployed by the
``Connections`` parameter, served by ``make local --config`` from the emulator its catalogue entry gives it, or
from Authlib's authorization server (``tests.support.authlib_server``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.integration.test_make_local import free_run_of_ports
from tests.support.authlib_server import AuthlibTokenServer, RegisteredClient
from tests.support.dynamodb_local import free_port
from tests.support.signing import signed_get
from tests.template.cfn import CFN_LINT, ROOT, SAM, python313_dir, require_tool, run, tool_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PROVIDER, KEY = "acme", "Acme"
CONNECTION = "AcmeBilling"  # a connection of it: its key and a label, its route
CONNECTIONS = f"InvoiceCloud,Pyng,Aria,Autopay,AlternativePayments,{CONNECTION}"
GENERATED = {"env.json"}
BUDGET_LINES, BUDGET_FILES = 20, 4


def readme_steps() -> tuple[str, str]:
    """The catalogue entry and the Connections pattern it leads to, as the guide shows them."""
    section = (ROOT / "docs" / "adding-a-provider.md").read_text()
    # The blocks sit in a numbered list: their lines carry its three spaces of indentation.
    blocks = [re.sub(r"^ {3}", "", block, flags=re.M)
              for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S)]
    assert len(blocks) == 2, "the guide's two code blocks (entry, Connections pattern)"
    return blocks[0], blocks[1]


def _copy_repository(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for installed in (".venv", ".tools", "node_modules"):  # what make installs: not part of the change
        if (ROOT / installed).exists():
            (target / installed).symlink_to(ROOT / installed)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "before"], cwd=target, check=True)


def _follow_the_guide(copy: Path) -> None:
    entry, pattern = readme_steps()
    catalogue = copy / "layers" / "token_vending" / "token_vending" / "catalogue.py"
    text = catalogue.read_text()
    end = text.index("\n)\n", text.index("CATALOGUE:"))
    catalogue.write_text(text[:end + 1] + entry + text[end + 1:])

    template = copy / "template.yaml"
    text = template.read_text()
    assert text.count("|OAuth2)") == 3, "the guide names three places"
    text = text.replace("|OAuth2)", f"|OAuth2|{KEY})")
    assert pattern.strip() in text, "the guide's Connections pattern is what the edit gives"
    template.write_text(text)
    generated = subprocess.run([sys.executable, "-m", "local.generate"], cwd=copy, env=_env(copy),
                               capture_output=True, text=True, check=False)
    assert generated.returncode == 0, generated.stderr


def _env(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(copy / "layers" / "token_vending")])}


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("seventh-provider")
    _copy_repository(target)
    _follow_the_guide(target)
    return target


def test_the_change_is_one_entry_and_its_key(copy: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    numstat = subprocess.run(["git", "diff", "--cached", "--numstat"], cwd=copy, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    changed = {line.split("\t")[2]: (int(line.split("\t")[0]), int(line.split("\t")[1])) for line in numstat}
    written = {name: counts for name, counts in changed.items() if name not in GENERATED}
    assert set(written) == {"layers/token_vending/token_vending/catalogue.py", "template.yaml"}, changed
    assert written["template.yaml"] == (2, 2), "two pattern lines change, nothing is added"
    assert written["layers/token_vending/token_vending/catalogue.py"][1] == 0
    added = sum(added for added, _ in written.values())
    assert added <= BUDGET_LINES, f"{added} written lines: {written}"
    assert len(changed) <= BUDGET_FILES, f"{len(changed)} files: {sorted(changed)}"


def test_the_example_is_a_short_lived_scoped_private_key_jwt_provider(copy: Path) -> None:
    script = ("from token_vending.catalogue import connection; e = connection('AcmeBilling'); "
              "print(e.provider, e.name, e.auth.value, e.lifetime, e.scope.value)")
    result = subprocess.run([sys.executable, "-c", script], cwd=copy, env=_env(copy), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    provider, name, auth, lifetime, scope = result.stdout.split()
    assert (provider, name, auth, int(lifetime), scope) == (PROVIDER, CONNECTION, "private_key_jwt", 300, "required")


def test_sam_validate_and_cfn_lint_pass(copy: Path) -> None:
    env = tool_env(python313_dir())
    linted = run([require_tool(CFN_LINT), "template.yaml"], cwd=copy, env=env)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    validated = run([require_tool(SAM), "validate", "--lint"], cwd=copy, env=env)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_the_suites_pass_with_it(copy: Path) -> None:
    """Nothing else to remember: every template and unit test holds with the seventh provider (but the line
    count, which is about this repository's template, not a grown one)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/template", "tests/unit", "-q", "-p", "no:cacheprovider",
         "--ignore", "tests/template/test_new_provider.py", "--deselect",
         "tests/template/test_template.py::test_the_template_has_no_copies"],
        cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=1500, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def _expanded(copy: Path) -> dict[str, Any]:
    script = ("import json, sys; from local.template import expanded_template; "
              "print(json.dumps(expanded_template(parameters={'Connections': sys.argv[1]})))")
    result = subprocess.run([sys.executable, "-c", script, CONNECTIONS], cwd=copy, env=_env(copy),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    expanded: dict[str, Any] = json.loads(result.stdout)
    return expanded


def test_a_connection_of_it_has_everything_it_needs(copy: Path) -> None:
    template = _expanded(copy)
    resources = template["Resources"]
    function = resources[f"{CONNECTION}Function"]
    assert function["Properties"]["CodeUri"] == "functions/provider/"
    env = function["Properties"]["Environment"]["Variables"]
    assert env["CONNECTION_NAME"] == CONNECTION
    assert env["TOKEN_URL"] == {"Ref": "AWS::NoValue"}, "its token URL is a setting in its secret"
    assert env["SECRET_ID"] == {"Fn::If": [f"Create{CONNECTION}Secret", {"Ref": f"{CONNECTION}Secret"},
                                           {"Ref": "AWS::StackName"}]}
    assert function["Properties"]["Events"]["RefreshAhead"]["Type"] == "ScheduleV2"
    assert function["Properties"]["Role"] == {"Fn::GetAtt": [f"{CONNECTION}FunctionRole", "Arn"]}
    # its own renewal queue: the timers' messages, the event that delivers them, the URL it arms them on
    queue = {"Fn::GetAtt": [f"{CONNECTION}RenewalQueue", "Arn"]}
    assert resources[f"{CONNECTION}RenewalQueue"]["Type"] == "AWS::SQS::Queue"
    renewal = function["Properties"]["Events"]["Renewal"]
    assert (renewal["Type"], renewal["Properties"]["Queue"]) == ("SQS", queue)
    assert env["RENEWAL_QUEUE_URL"] == {"Fn::If": ["RefreshAheadEnabled", {"Ref": f"{CONNECTION}RenewalQueue"}, ""]}
    assert env["UPSTREAM_BUDGETS"] == {"Ref": "UpstreamBudgets"}
    statements = resources[f"{CONNECTION}FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements if isinstance(s, dict) and "Sid" in s}
    assert by_sid["ReadOwnSecret"]["Resource"] == env["SECRET_ID"]
    leading = {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [CONNECTION]}}
    assert by_sid["OwnCachePartition"]["Condition"] == leading
    assert "dynamodb:UpdateItem" in by_sid["OwnCachePartition"]["Action"]  # its budget counter and use marks
    assert by_sid["OwnRenewalQueue"]["Resource"] == queue
    assert set(by_sid["OwnRenewalQueue"]["Action"]) == {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                                                        "sqs:GetQueueAttributes"}
    log_group = resources[f"{CONNECTION}FunctionLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{CONNECTION}Function}}"}
    logs_policy = resources[f"{CONNECTION}FunctionLogsPolicy"]["Properties"]
    assert logs_policy["RoleName"] == {"Ref": f"{CONNECTION}FunctionRole"}
    secret = resources[f"{CONNECTION}Secret"]
    assert secret["Condition"] == f"Create{CONNECTION}Secret"
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    invoke = resources[f"{CONNECTION}FunctionInvokePolicy"]["Properties"]
    assert invoke["RoleName"] == {"Ref": "TokenApiFunctionRole"}
    assert invoke["PolicyDocument"]["Statement"][0]["Resource"] == {"Fn::GetAtt": [f"{CONNECTION}Function", "Arn"]}
    for metric in ("Errors", "Throttles"):
        alarm = resources[f"{CONNECTION}Function{metric}Alarm"]["Properties"]
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": f"{CONNECTION}Function"}}]
    for name in ("UpstreamFailuresAlarm", "StaleServesAlarm", "RefreshAheadFailuresAlarm", "UpstreamBudgetAlarm"):
        (query,) = resources[name]["Properties"]["Metrics"]
        assert "WHERE" not in query["Expression"].upper(), "the service's alarms cover every provider"
    api_env = resources["TokenApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api_env[f"FUNCTION_{CONNECTION}"] == {"Fn::Sub": f"${{{CONNECTION}Function}}"}
    assert {f"{CONNECTION}FunctionArn", f"{CONNECTION}SecretArn"} <= set(template["Outputs"])
    assert {f"Create{CONNECTION}Secret", f"Has{CONNECTION}SigningKey"} <= set(template["Conditions"])


# --- make local, with and without --config ------------------------------------------------------------------
@contextmanager
def _local(copy: Path, *extra: str) -> Iterator[str]:
    api, lam, aws = free_port(), free_port(), free_port()
    base = free_run_of_ports(10, avoid={api, lam, aws})  # one emulator per connection, in a row
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--api-port", str(api), "--lambda-port", str(lam), "--aws-port", str(aws),
         "--provider-port-base", str(base), "--refresh-ahead", "0", *extra],
        cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{api}/v1/token/"  # the stack's ApiUrl
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"make local stopped:\n{process.communicate(timeout=10)[0]}")
            try:
                requests.get(f"{url}unknown", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)


@pytest.mark.integration
def test_make_local_serves_it_from_its_default_emulator(copy: Path, tmp_path: Path) -> None:
    config = tmp_path / "local.json"
    # a connection by configuration, served by its provider's emulator; acme requires a scope, so it needs some
    config.write_text(json.dumps({CONNECTION: {"scopes": "billing:read billing:write"}}))
    with _local(copy, "--config", str(config)) as url:
        first = signed_get(f"{url}{CONNECTION}", timeout=60)
        assert first.status_code == 200, first.text
        assert first.headers["Cache-Control"] == "no-store"
        again = signed_get(f"{url}{CONNECTION}", timeout=60)
        assert again.json()["access_token"] == first.json()["access_token"]


@pytest.mark.integration
def test_make_local_config_sends_it_to_a_standards_server(copy: Path, tmp_path: Path) -> None:
    """The guide's last step for private_key_jwt with a PEM key: the JWKS its command prints (through the copy's
    code) is what the provider registers, and Authlib's server then grants the 5-minute token for the scopes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from joserfc import jwk

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    (tmp_path / "acme-key.pem").write_text(pem)
    printed = subprocess.run([sys.executable, "-m", "token_vending.jwks", "--pem", str(tmp_path / "acme-key.pem")],
                             cwd=copy, env=_env(copy), capture_output=True, text=True, check=False)
    assert printed.returncode == 0, printed.stderr
    jwks = json.loads(printed.stdout)
    (registered,) = jwks["keys"]
    assert "d" not in registered
    assert registered["kid"] == jwk.import_key(pem, "EC").thumbprint()  # RFC 7638, computed by joserfc
    scopes = frozenset({"billing:read", "billing:write"})  # the guide's scopes
    client = RegisteredClient("urn:acme:svc-1", "", scopes, frozenset({"private_key_jwt"}), jwks=jwks)
    with AuthlibTokenServer([client], expires_in=300) as server:
        config = tmp_path / "local.json"
        # no client_auth: the guide's catalogue entry says private_key_jwt (a secret-based one would be refused)
        config.write_text(json.dumps({CONNECTION: {"token_url": server.url, "client_id": client.client_id,
                                                   "private_key": pem, "scopes": " ".join(sorted(scopes))}}))
        with _local(copy, "--config", str(config)) as url:
            first = signed_get(f"{url}{CONNECTION}", timeout=60)
            assert first.status_code == 200, first.text
            assert set(first.json()["scope"].split()) == scopes
            assert 240 <= first.json()["expires_in"] <= 300
            again = signed_get(f"{url}{CONNECTION}", timeout=60)
            assert again.json()["access_token"] == first.json()["access_token"]
            assert server.token_requests == 1, "the second answer came from the cache"
            (request,) = server.received()
            assert "Authorization" not in request.headers  # no shared secret: a signed assertion (RFC 7523)
            assert request.form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
            assert set(request.form["scope"][0].split()) == scopes
