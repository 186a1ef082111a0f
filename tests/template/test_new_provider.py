"""A seventh provider, added by following the guide (docs/adding-a-provider.md) literally, in a copy of the repository.

The steps are the guide's own code blocks (a drifting guide fails here). The provider is a standards-based
one: with ``--config``, ``make local`` sends its token requests to Authlib's authorization server
(``tests.support.authlib_server``); without, to the emulator its catalogue entry gives it by default.
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

from local.stack import PROVIDERS
from tests.integration.test_make_local import free_run_of_ports
from tests.support.authlib_server import AuthlibTokenServer, RegisteredClient
from tests.support.dynamodb_local import free_port
from tests.support.signing import signed_get
from tests.template.cfn import CFN_LINT, ROOT, SAM, python313_dir, require_tool, run, tool_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ROUTE, KEY = "acme", "Acme"
GENERATED = {"env.json", f"events/api-{ROUTE}.json", f"events/invoke-{ROUTE}.json"}
BUDGET_LINES, BUDGET_FILES = 50, 5


def readme_steps() -> tuple[str, str, str, str, str]:
    """The catalogue entry, the parameters, the console group, the mapping row and the token API's scope
    settings, as the guide shows them."""
    section = (ROOT / "docs" / "adding-a-provider.md").read_text()
    # The blocks sit in a numbered list: their lines carry its three spaces of indentation.
    blocks = [re.sub(r"^ {3}", "", block, flags=re.M)
              for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S)]
    assert len(blocks) == 5, "the guide's five code blocks (entry, parameters, console group, mapping row, scopes)"
    return blocks[0], blocks[1], blocks[2], blocks[3], blocks[4]


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
    entry, parameters, group, row, api_scopes = readme_steps()
    catalogue = copy / "layers" / "token_vending" / "token_vending" / "catalogue.py"
    text = catalogue.read_text()
    end = text.index("\n)\n", text.index("CATALOGUE:"))
    catalogue.write_text(text[:end + 1] + entry + text[end + 1:])

    template = copy / "template.yaml"
    text = template.read_text()
    at = text.index("  # --- token cache")
    text = text[:at] + parameters + "\n" + text[at:]
    at = text.index("      - Label: {default: Token cache}")  # after the providers' groups
    text = text[:at] + group + text[at:]
    rows = re.search(r"^  Providers:\n(?:    .*\n)+", text, re.M)
    assert rows is not None
    text = text[:rows.end()] + row + text[rows.end():]
    at = text.index("\n", text.index("          DEFAULT_SCOPES_Pyng:")) + 1  # "after DEFAULT_SCOPES_Pyng"
    text = text[:at] + api_scopes + text[at:]
    # "At the end of each of the five loop lists": the collection of every Fn::ForEach over the providers (its
    # identifier is Provider, or Function for the alarms), found by its place in the loop, not by the name of
    # whichever provider happens to be last.
    text, loops = re.subn(r"(Fn::ForEach::\w+:\n\s*- (?:Provider|Function)\n\s*- \[[^\]\n]*)\]", rf"\1, {KEY}]",
                          text)
    assert loops == 5, f"the guide names five loop lists, the template has {loops}"
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


def test_the_change_is_one_entry_and_its_parameters(copy: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    numstat = subprocess.run(["git", "diff", "--cached", "--numstat"], cwd=copy, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    changed = {line.split("\t")[2]: (int(line.split("\t")[0]), int(line.split("\t")[1])) for line in numstat}
    written = {name: counts for name, counts in changed.items() if name not in GENERATED}
    assert set(changed) - set(written) <= GENERATED
    assert set(written) == {"layers/token_vending/token_vending/catalogue.py", "template.yaml"}, changed
    assert written["template.yaml"][1] == 5, "only the five loop lists change; the rest is added"
    assert written["layers/token_vending/token_vending/catalogue.py"][1] == 0
    added = sum(added for added, _ in written.values())
    assert added <= BUDGET_LINES, f"{added} written lines: {written}"
    assert len(changed) <= BUDGET_FILES, f"{len(changed)} files: {sorted(changed)}"


def test_the_example_is_a_short_lived_scoped_private_key_jwt_provider(copy: Path) -> None:
    script = ("from token_vending.catalogue import entry; e = entry('acme'); "
              "print(e.auth.value, e.lifetime, e.scope.value)")
    result = subprocess.run([sys.executable, "-c", script], cwd=copy, env=_env(copy), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    auth, lifetime, scope = result.stdout.split()
    assert (auth, int(lifetime)) == ("private_key_jwt", 300)
    assert scope == "required"
    api_env = _expanded(copy)["Resources"]["TokenApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api_env[f"SCOPES_{KEY}"] == {"Ref": f"{KEY}Scopes"}
    assert api_env[f"DEFAULT_SCOPES_{KEY}"] == {"Ref": f"{KEY}DefaultScopes"}


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
    script = "import json; from local.template import expanded_template; print(json.dumps(expanded_template()))"
    result = subprocess.run([sys.executable, "-c", script], cwd=copy, env=_env(copy), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    expanded: dict[str, Any] = json.loads(result.stdout)
    return expanded


def test_the_expanded_template_has_everything_the_provider_needs(copy: Path) -> None:
    template = _expanded(copy)
    resources = template["Resources"]
    function = resources[f"{KEY}Function"]
    assert function["Properties"]["CodeUri"] == "functions/provider/"
    env = function["Properties"]["Environment"]["Variables"]
    assert env["PROVIDER_NAME"] == ROUTE
    assert env["TOKEN_URL"] == {"Ref": f"{KEY}TokenUrl"}
    assert env["SECRET_ID"] == {"Fn::If": [f"Create{KEY}Secret", {"Ref": f"{KEY}Secret"}, {"Ref": f"{KEY}SecretArn"}]}
    assert function["Properties"]["Events"]["RefreshAhead"]["Type"] == "ScheduleV2"
    assert function["Properties"]["Role"] == {"Fn::GetAtt": [f"{KEY}FunctionRole", "Arn"]}
    # its own renewal queue: the timers' messages, the event that delivers them, the URL it arms them on
    queue = {"Fn::GetAtt": [f"{KEY}RenewalQueue", "Arn"]}
    assert resources[f"{KEY}RenewalQueue"]["Type"] == "AWS::SQS::Queue"
    renewal = function["Properties"]["Events"]["Renewal"]
    assert (renewal["Type"], renewal["Properties"]["Queue"]) == ("SQS", queue)
    assert env["RENEWAL_QUEUE_URL"] == {"Fn::If": ["RefreshAheadEnabled", {"Ref": f"{KEY}RenewalQueue"}, ""]}
    assert env["UPSTREAM_BUDGETS"] == {"Ref": "UpstreamBudgets"}
    statements = resources[f"{KEY}FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements if isinstance(s, dict) and "Sid" in s}
    assert by_sid["ReadOwnSecret"]["Resource"] == env["SECRET_ID"]
    assert by_sid["OwnCachePartition"]["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [ROUTE]}}
    assert "dynamodb:UpdateItem" in by_sid["OwnCachePartition"]["Action"]  # its budget counter and use marks
    assert by_sid["OwnRenewalQueue"]["Resource"] == queue
    assert set(by_sid["OwnRenewalQueue"]["Action"]) == {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                                                        "sqs:GetQueueAttributes"}
    log_group = resources[f"{KEY}FunctionLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{KEY}Function}}"}
    assert resources[f"{KEY}FunctionLogsPolicy"]["Properties"]["RoleName"] == {"Ref": f"{KEY}FunctionRole"}
    secret = resources[f"{KEY}Secret"]
    assert secret["Condition"] == f"Create{KEY}Secret"
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    invoke = resources[f"{KEY}FunctionInvokePolicy"]["Properties"]
    assert invoke["RoleName"] == {"Ref": "TokenApiFunctionRole"}
    assert invoke["PolicyDocument"]["Statement"][0]["Resource"] == {"Fn::GetAtt": [f"{KEY}Function", "Arn"]}
    for metric in ("Errors", "Throttles"):
        alarm = resources[f"{KEY}Function{metric}Alarm"]["Properties"]
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": f"{KEY}Function"}}]
    for name in ("UpstreamFailuresAlarm", "StaleServesAlarm", "RefreshAheadFailuresAlarm", "UpstreamBudgetAlarm"):
        (query,) = resources[name]["Properties"]["Metrics"]
        assert "WHERE" not in query["Expression"].upper(), "the service's alarms cover every provider"
    api_env = resources["TokenApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api_env[f"FUNCTION_{KEY}"] == {"Fn::Sub": f"${{{KEY}Function}}"}
    assert {f"{KEY}FunctionArn", f"{KEY}SecretArn"} <= set(template["Outputs"])
    assert {f"Create{KEY}Secret", f"Has{KEY}SigningKey"} <= set(template["Conditions"])


# --- make local, with and without --config ------------------------------------------------------------------
@contextmanager
def _local(copy: Path, *extra: str) -> Iterator[str]:
    api, lam, aws = free_port(), free_port(), free_port()
    base = free_run_of_ports(len(PROVIDERS) + 1, avoid={api, lam, aws})  # one emulator per provider, in a row
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
def test_make_local_serves_it_from_its_default_emulator(copy: Path) -> None:
    with _local(copy) as url:
        first = signed_get(f"{url}{ROUTE}", timeout=60)
        assert first.status_code == 200, first.text
        assert first.headers["Cache-Control"] == "no-store"
        again = signed_get(f"{url}{ROUTE}", timeout=60)
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
    scopes = frozenset({"billing:read", "billing:write"})  # the guide's AcmeScopes default
    client = RegisteredClient("urn:acme:svc-1", "", scopes, frozenset({"private_key_jwt"}), jwks=jwks)
    with AuthlibTokenServer([client], expires_in=300) as server:
        config = tmp_path / "local.json"
        # no client_auth: the guide's catalogue entry says private_key_jwt (a secret-based one would be refused)
        config.write_text(json.dumps({ROUTE: {"token_url": server.url, "client_id": client.client_id,
                                              "private_key": pem}}))
        with _local(copy, "--config", str(config)) as url:
            first = signed_get(f"{url}{ROUTE}", timeout=60)
            assert first.status_code == 200, first.text
            assert set(first.json()["scope"].split()) == scopes
            assert 240 <= first.json()["expires_in"] <= 300
            again = signed_get(f"{url}{ROUTE}", timeout=60)
            assert again.json()["access_token"] == first.json()["access_token"]
            assert server.token_requests == 1, "the second answer came from the cache"
            (request,) = server.received()
            assert "Authorization" not in request.headers  # no shared secret: a signed assertion (RFC 7523)
            assert request.form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
            assert set(request.form["scope"][0].split()) == scopes
