"""Offline checks of the deployment description: template.yaml, samconfig.toml, events/ and env.json.

template.yaml loops over its connections (``Fn::ForEach`` over the ``Connections`` parameter): most checks read
it expanded with the default connections, as CloudFormation deploys it (``load_template``); the loops themselves
are checked against the parameter and the catalogue, and test_connections.py expands it with added connections.

Runs the SAM CLI and cfn-lint from their own virtualenv (``.tools/sam``), never Docker, never AWS.
A missing tool is a failure with instructions, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.template.cfn import (
    ALL_FUNCTIONS,
    CATALOGUE,
    CFN_LINT,
    CONNECTIONS,
    DEFAULT_KEYS,
    EXPANDED_LINT_IGNORES,
    NO_VALUE,
    ROOT,
    SAM,
    TEMPLATE,
    TOKEN_API,
    TOOLS_PYTHON,
    Connection,
    Evaluator,
    emitted_metric_names,
    environment,
    expand,
    fetch_settings,
    function_env,
    is_metrics_insights,
    java_like_fullmatch,
    load_template,
    metrics_insights,
    parse_template,
    provider_functions,
    python313_dir,
    raw_template,
    require_tool,
    resources,
    run,
    tool_env,
    translate,
    without_cfn_lint_ignores,
)
from token_vending import constants
from token_vending.exceptions import Misconfigured
from token_vending.fetch import CERTIFICATE_WARNING_DAYS
from token_vending.profile import AUTH_METHODS, ScopeMode
from token_vending.settings import ApiSettings, ProviderSettings

SAMCONFIG = ROOT / "samconfig.toml"
ENV_JSON = ROOT / "env.json"
EVENTS = ROOT / "events"

PROVIDER_TIMEOUT = 25
TOKEN_API_TIMEOUT = 28
API_GATEWAY_INTEGRATION_LIMIT = 29
TEMPLATE_LINE_BUDGET = 1320
"""template.yaml was 2,504 lines with a copy of every resource per provider; the loops keep it under this (1,090
before the renewal queues, the upstream budget and the use marks of issue 10; 1,188 before connections could be
added: their parameter, mapping, rules, conditions and signing grants)."""
RENEWAL_QUEUE_ACTIONS = ["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]

# The 12 Aria (Billie Connect) token endpoints: the provider document's table, verbatim.
ARIA_DOCUMENT_TABLE = """
https://kauth.ariasystems.net/realms/aria/protocol/openid-connect/token US Prod
https://kauth.future.stage.ariasystems.net/realms/aria/protocol/openid-connect/token US Future
https://kauth.current.stage.ariasystems.net/realms/aria/protocol/openid-connect/token US Current
https://kauth.prod.aus.ariasystems.net/realms/aria/protocol/openid-connect/token AUS Prod
https://kauth.future.stage.aus.ariasystems.net/realms/aria/protocol/openid-connect/token AUS Future
https://kauth.current.stage.aus.ariasystems.net/realms/aria/protocol/openid-connect/token AUS Current
https://kauth.prod.sgp.ariasystems.net/realms/aria/protocol/openid-connect/token SGP Prod
https://kauth.future.stage.sgp.ariasystems.net/realms/aria/protocol/openid-connect/token SGP Future
https://kauth.current.stage.sgp.ariasystems.net/realms/aria/protocol/openid-connect/token SGP Current
https://kauth.cph.ariasystems.net/realms/aria/protocol/openid-connect/token CPH Prod
https://kauth.future.stage.cph.ariasystems.net/realms/aria/protocol/openid-connect/token CPH Future
https://kauth.current.stage.cph.ariasystems.net/realms/aria/protocol/openid-connect/token CPH Current
"""
ARIA_ENDPOINTS = {
    (region, stage): url for url, region, stage in map(str.split, ARIA_DOCUMENT_TABLE.strip().splitlines())
}
PYNG_SCOPES = "billing:customers:invite billing:customers:read billing:batches:submit billing:batches:read"
EMULATOR_PORT_BASE = 9001
"""``make local`` serves the providers' emulators on 9001, 9002, ... in catalogue (template) order."""
LOCAL_AWS = "http://host.docker.internal:4566"
ENV_CONSTANTS = {value for name, value in vars(constants).items() if name.endswith("_ENV")}
# Per-connection names of the token API (FUNCTION_{key}): patterns.
ENV_PATTERNS = {value for value in ENV_CONSTANTS if "{key}" in value}
ENV_NAMES = ENV_CONSTANTS - ENV_PATTERNS
# Names the template may set besides token_vending's own: Powertools settings, and the botocore
# endpoint overrides declared (empty) so that `sam local ... --env-vars env.json` can set them.
EXTERNAL_ENV = re.compile(r"^(POWERTOOLS_[A-Z_]+|AWS_ENDPOINT_URL_(DYNAMODB|SECRETS_MANAGER|LAMBDA))$")
# Names the layer reads that the template does not set (yet): their defaults are right for every connection.
NOT_SET_BY_THE_TEMPLATE = {
    constants.ASSERTION_AUDIENCE_ENV,  # empty: the token URL, as RFC 7523 3 asks
    constants.CA_BUNDLE_ENV,  # empty: the default CA bundle (a private CA's bundle is for tests and local runs)
    constants.TOKEN_LIFETIME_ENV,  # the catalogue entry's documented lifetime (tests override it)
}
# Declared in every function's environment so that env.json can set them under sam local (SAM CLI ignores
# names the template does not declare), and deployed empty: TOKEN_URL (Globals: Aria's comes from REGION
# and STAGE) and the token API's PROVIDERS (the provider table, as SAM CLI does not expand its loop).
DECLARED_FOR_SAM_LOCAL = {constants.TOKEN_URL_ENV, constants.PROVIDERS_ENV}
SIGNING_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# The DefaultConnections mapping's columns: the function setting each parameter feeds (a missing column: not set).
MAPPING_COLUMNS = {
    "TokenUrl": constants.TOKEN_URL_ENV,
    "Scopes": constants.ALLOWED_SCOPES_ENV,
    "DefaultScopes": constants.DEFAULT_SCOPES_ENV,
    "Audience": constants.AUDIENCE_ENV,
    "Region": constants.REGION_ENV,
    "Stage": constants.STAGE_ENV,
    "SecretArn": constants.SECRET_ID_ENV,
    "ClientAuth": constants.CLIENT_AUTH_ENV,
    "SigningKeyArn": constants.SIGNING_KEY_ID_ENV,
}
SETTING_COLUMNS = ("TokenUrl", "Scopes", "DefaultScopes", "Audience", "Region", "Stage")
"""The columns a default connection has only where its provider needs them (the others: every default one)."""
EVERY_ROW = ("Name", "SecretArn", "ClientAuth", "SigningKeyArn")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# --- the tools' own verdicts ------------------------------------------------------------------
def test_sam_validate_lint() -> None:
    """As a developer runs it, from the repository root: samconfig.toml's [default.validate] (lint, and
    language_extensions, which makes SAM CLI expand the loops first) applies."""
    result = run([require_tool(SAM), "validate", "--lint", "--template-file", TEMPLATE], cwd=ROOT)
    assert result.returncode == 0, f"sam validate --lint failed:\n{result.stdout}\n{result.stderr}"
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_cfn_lint() -> None:
    result = run([require_tool(CFN_LINT), "--", TEMPLATE])
    assert result.returncode == 0, f"cfn-lint reported problems:\n{result.stdout}\n{result.stderr}"


def test_cfn_lint_on_the_expanded_template_ignores_nothing(tmp_path: Path) -> None:
    """template.yaml switches checks off where cfn-lint cannot follow its loops (its Metadata says which and
    why): on the template as CloudFormation expands it, every check runs (but EXPANDED_LINT_IGNORES)."""
    ignored = raw_template()["Metadata"]["cfn-lint"]["config"]["ignore_checks"]
    assert set(ignored) <= {"W8001", "E6101"}, "a new template-wide ignore: explain it there, check it here"
    expanded = without_cfn_lint_ignores(load_template())
    path = tmp_path / "expanded.json"
    path.write_text(json.dumps(expanded, indent=1))
    result = run([require_tool(CFN_LINT), "--ignore-checks", *EXPANDED_LINT_IGNORES, "--", path])
    assert result.returncode == 0, f"cfn-lint on the expanded template:\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sam_build(tmp_path: Path) -> None:
    """sam build (python3.13 arm64, no container) with samconfig.toml's build settings (language_extensions
    among them: SAM CLI expands the loops to build every function, and keeps them in the built template)."""
    sam = require_tool(SAM)
    build_dir, cache_dir = tmp_path / "build", tmp_path / "cache"
    started, wall_clock = time.monotonic(), time.time()
    # cwd is the temp dir: a cached build writes its .aws-sam/deps there, not into the repo.
    result = run(
        [
            sam,
            "build",
            "--template-file",
            TEMPLATE,
            "--config-file",
            SAMCONFIG,
            "--build-dir",
            build_dir,
            "--cache-dir",
            cache_dir,
        ],
        cwd=tmp_path,
        env=tool_env(python313_dir()),
        timeout=840,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"sam build failed after {elapsed:.0f}s:\n{result.stdout}\n{result.stderr}"
    print(f"sam build took {elapsed:.1f}s")

    layer = build_dir / "TokenVendingLayer" / "python"
    assert (layer / "token_vending" / "__init__.py").is_file(), "layer lacks the token_vending package"
    assert (layer / "token_vending" / "constants.py").is_file()
    assert (layer / "token_vending" / "catalogue.py").is_file(), "layer lacks the provider catalogue"
    assert (layer / "aws_lambda_powertools").is_dir(), "layer lacks aws_lambda_powertools"
    assert (layer / "urllib3").is_dir(), "layer lacks urllib3 (the upstream client; it comes with botocore)"
    # The built template keeps the loops (CloudFormation expands them at deploy time), with one built
    # CodeUri for the provider functions' loop: every copy deploys the one provider function's code.
    built = expand(parse_template((build_dir / "template.yaml").read_text()))
    sources = {TOKEN_API: ROOT / "functions" / "token_api" / "app.py"}
    sources |= {connection.function: ROOT / "functions" / "provider" / "app.py" for connection in CONNECTIONS.values()}
    assert set(resources(built, "AWS::Serverless::Function")) == set(ALL_FUNCTIONS)
    for logical_id, source in sources.items():
        code_uri = built["Resources"][logical_id]["Properties"]["CodeUri"]
        app = build_dir / code_uri / "app.py"
        assert app.is_file(), f"{logical_id} deploys {code_uri}, built without app.py"
        assert app.read_text() == source.read_text(), f"{logical_id} would deploy other code than {source}"
    # (a developer's own `sam build` may have made it earlier: only what changed during this build counts)
    written = [folder for folder, _, _ in os.walk(ROOT / ".aws-sam") if Path(folder).stat().st_mtime >= wall_clock]
    assert not written, f"sam build wrote into the repository's .aws-sam: {written[:3]}"


# --- SAM's own reading of the template (translator and local provider, offline) ----------------
# `sam local invoke` with SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS=1 (or --language-extensions): SAM CLI expands the
# template's loops of resources; the one inside the token API's environment it leaves as it is.
_SAM_LOCAL_ENV = r"""
import json, sys
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.local.lambdafn.env_vars import EnvironmentVariables
stacks, _ = SamLocalStackProvider.get_stacks(sys.argv[1], language_extensions_enabled=True)
env_file = json.load(open(sys.argv[2]))
out = {}
for fn in SamFunctionProvider(stacks).get_all():
    overrides = dict(env_file.get("Parameters", {}))
    overrides.update(env_file.get(fn.name, {}))
    variables = (fn.environment or {}).get("Variables", {})
    resolved = EnvironmentVariables(fn.name, fn.memory, fn.timeout, fn.handler, fn.logging_config,
                                    variables=variables, shell_env_values={}, override_values=overrides,
                                    aws_creds={}).resolve()
    out[fn.name] = {"env": resolved, "timeout": fn.timeout, "runtime": fn.runtime, "codeuri": fn.codeuri,
                    "architectures": fn.architectures, "layers": [layer.name for layer in fn.layers]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate()


@pytest.fixture(scope="module")
def sam_local_env() -> dict[str, Any]:
    """What `sam local invoke --env-vars env.json` would give each function (SAM CLI's own code)."""
    result = run([require_tool(TOOLS_PYTHON), "-c", _SAM_LOCAL_ENV, TEMPLATE, ENV_JSON])
    assert result.returncode == 0, f"SAM CLI environment resolution failed:\n{result.stderr}"
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def test_translated_api_has_one_iam_route_invoked_without_caller_credentials(
    translated: dict[str, Any],
) -> None:
    apis = resources(translated, "AWS::ApiGateway::RestApi")
    assert list(apis) == ["TokenVendingApi"]
    body = apis["TokenVendingApi"]["Properties"]["Body"]
    assert list(body["paths"]) == ["/token/{provider}"]
    methods = body["paths"]["/token/{provider}"]
    assert list(methods) == ["get"]
    get = methods["get"]
    assert get["security"] == [{"AWS_IAM": []}]
    integration = get["x-amazon-apigateway-integration"]
    assert integration["type"] == "aws_proxy"
    assert "TokenApiFunction.Arn" in integration["uri"]["Fn::Sub"]
    # Callers need execute-api:Invoke only; API Gateway uses the function's resource policy.
    assert "credentials" not in integration
    assert body["components"]["securitySchemes"]["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert set(body["x-amazon-apigateway-gateway-responses"]) >= {"DEFAULT_4XX", "DEFAULT_5XX"}
    stages = resources(translated, "AWS::ApiGateway::Stage")
    assert len(stages) == 1, "one stage only (no extra 'Stage' stage)"
    (stage,) = stages.values()
    assert stage["Properties"]["TracingEnabled"] is True
    permissions = resources(translated, "AWS::Lambda::Permission")
    assert len(permissions) == 1
    (permission,) = permissions.values()
    assert permission["Properties"]["FunctionName"] == {"Ref": TOKEN_API}
    assert permission["Properties"]["Principal"] == "apigateway.amazonaws.com"


def test_translated_roles_are_the_templates_own(translated: dict[str, Any]) -> None:
    """Every function runs with the role written for it (SAM generates none with managed policies)."""
    for logical_id in ALL_FUNCTIONS:
        function = translated["Resources"][logical_id]
        assert function["Properties"]["Role"] == {"Fn::GetAtt": [f"{logical_id}Role", "Arn"]}
        assert translated["Resources"][f"{logical_id}Role"] == load_template()["Resources"][f"{logical_id}Role"]
    roles = resources(translated, "AWS::IAM::Role")
    generated = {name for name in roles if name not in load_template()["Resources"]}
    # SAM generates only the schedules' roles (scheduler.amazonaws.com may invoke that one function)
    assert generated == {f"{connection.function}RefreshAheadRole" for connection in CONNECTIONS.values()}
    for name in generated:
        fn = name.removesuffix("RefreshAheadRole")
        role = roles[name]["Properties"]
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": ["scheduler.amazonaws.com"]}
        assert "ManagedPolicyArns" not in role
        (policy,) = role["Policies"]
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert statement["Action"] == "lambda:InvokeFunction"
        assert statement["Resource"] == {"Fn::GetAtt": [fn, "Arn"]}


# Under sam local, the token API's environment keeps the loop SAM CLI does not expand as a name of its own.
UNEXPANDED_LOOP = re.compile(r"^Fn::ForEach::\w+$")


def test_sam_local_env_with_env_json(sam_local_env: dict[str, Any]) -> None:
    """env.json takes effect under sam local: every value it sets is one the template declares."""
    env_file = json.loads(ENV_JSON.read_text())
    assert set(sam_local_env) == set(ALL_FUNCTIONS)
    for logical_id, info in sam_local_env.items():
        env = info["env"]
        assert info["runtime"] == "python3.13"
        assert info["architectures"] == ["arm64"]
        assert info["layers"] == ["TokenVendingLayer"]
        folder = "token_api" if logical_id == TOKEN_API else "provider"
        assert Path(info["codeuri"]).resolve() == ROOT / "functions" / folder, logical_id
        for key, value in env_file[logical_id].items():
            assert env.get(key) == value, f"{logical_id}: env.json's {key} is not passed through by sam local"
        assert env["TOKEN_VENDING_LOCAL_MODE"] == "true"
        # empty means: no scopes / the profile's client authentication / no KMS key (the secret's PEM signs)
        optional_empty = {"ALLOWED_SCOPES", "DEFAULT_SCOPES", "AUDIENCE", "CLIENT_AUTH", "SIGNING_KEY_ID",
                          constants.UPSTREAM_BUDGETS_ENV}  # no override: every connection's default budget
        if logical_id != TOKEN_API:  # no SQS under sam local: no renewal timers (env.json empties the queue URL)
            assert env[constants.RENEWAL_QUEUE_URL_ENV] == "", logical_id
            optional_empty.add(constants.RENEWAL_QUEUE_URL_ENV)
        if logical_id == TOKEN_API:  # no token URL of its own
            optional_empty.add(constants.TOKEN_URL_ENV)
        empty = {k for k, v in env.items() if v == "" and k not in optional_empty and not UNEXPANDED_LOOP.match(k)}
        assert not empty, f"{logical_id}: sam local would pass empty {sorted(empty)}"
    assert sam_local_env[TOKEN_API]["timeout"] == TOKEN_API_TIMEOUT
    # the token API knows every connection, and which function serves it, from env.json's PROVIDERS
    api = ApiSettings.from_env(sam_local_env[TOKEN_API]["env"])
    assert {route: entry.function for route, entry in api.providers.items()} == {
        route: connection.function for route, connection in CONNECTIONS.items()
    }
    for connection in CONNECTIONS.values():  # and each connection's function finds its endpoint and settings
        settings = fetch_settings(connection, sam_local_env[connection.function]["env"])
        assert settings.token_url == env_file[connection.function][constants.TOKEN_URL_ENV]


def test_sam_local_env_without_env_json_is_still_well_formed(tmp_path: Path) -> None:
    """Template-only values as sam local resolves them (numbers, scopes, Aria's region and stage)."""
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    result = run([require_tool(TOOLS_PYTHON), "-c", _SAM_LOCAL_ENV, TEMPLATE, empty])
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    for logical_id, info in resolved.items():
        env = info["env"]
        for key in ("REFRESH_MARGIN_SECONDS", "REFRESH_MARGIN_RATIO", "MEMORY_CACHE_SECONDS"):
            float(env[key])  # a float default written unquoted would come out empty
        if logical_id != TOKEN_API:
            for key in ("UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_READ_TIMEOUT", "LEASE_SECONDS", "DEFAULT_TOKEN_LIFETIME"):
                float(env[key])
    api = resolved[TOKEN_API]["env"]
    assert not [name for name in api if name.startswith(("SCOPES_", "DEFAULT_SCOPES_"))], "scopes are the functions'"
    pyng = resolved[CONNECTIONS["pyng"].function]["env"]
    assert (pyng[constants.ALLOWED_SCOPES_ENV], pyng[constants.DEFAULT_SCOPES_ENV]) == (PYNG_SCOPES, "")
    aria = resolved[CONNECTIONS["aria"].function]["env"]
    assert (aria[constants.REGION_ENV], aria[constants.STAGE_ENV]) == ("US", "Prod")
    assert aria[constants.TOKEN_URL_ENV] == ""  # the documented endpoint REGION and STAGE choose
    assert fetch_settings(CONNECTIONS["aria"], aria).token_url == (
        ARIA_ENDPOINTS[("US", "Prod")]
    )


_SAM_LOCAL_ROUTES = r"""
import json, sys
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.providers.api_provider import ApiProvider
stacks, _ = SamLocalStackProvider.get_stacks(sys.argv[1], language_extensions_enabled=True)
api = ApiProvider(stacks).api
print(json.dumps({"stage": api.stage_name,
                  "routes": [[sorted(r.methods), r.path, r.function_name] for r in api.routes]}))
"""


def test_sam_local_start_api_sees_the_one_route() -> None:
    """The routes `sam local start-api` would serve (SAM CLI's own reading of the OpenAPI body)."""
    result = run([require_tool(TOOLS_PYTHON), "-c", _SAM_LOCAL_ROUTES, TEMPLATE])
    assert result.returncode == 0, result.stderr
    api = json.loads(result.stdout.strip().splitlines()[-1])
    assert api == {"stage": "v1", "routes": [[["GET"], "/token/{provider}", TOKEN_API]]}


# --- structure -----------------------------------------------------------------------------------
def test_runtime_architecture_and_globals(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.13"
    assert glob["Architectures"] == ["arm64"]
    assert glob["Tracing"] == "Active"
    assert glob["MemorySize"] == 256
    assert glob["Handler"] == "app.handler"
    assert glob["Layers"] == [{"Ref": "TokenVendingLayer"}]
    env = glob["Environment"]["Variables"]
    assert env["CACHE_TABLE_NAME"] == {"Ref": "CacheTable"}
    assert env["POWERTOOLS_SERVICE_NAME"] == "token-vending"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "TokenVending"
    assert env["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    assert template["Parameters"]["LogLevel"]["Default"] == "INFO"
    # tokens must never be copied into X-Ray metadata
    assert env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    assert env[constants.LOCAL_MODE_ENV] == "false"
    assert env[constants.TOKEN_URL_ENV] == "", "declared for sam local; each provider's own replaces it"

    functions = resources(template, "AWS::Serverless::Function")
    assert set(functions) == set(ALL_FUNCTIONS)
    for logical_id, function in functions.items():
        props = function["Properties"]
        for key in ("Runtime", "Architectures", "Layers", "Handler", "Tracing"):
            assert key not in props, f"{logical_id} repeats {key} from Globals"
        # one code folder for every connection: the catalogue entry CONNECTION_NAME leads to says the rest
        folder = "token_api" if logical_id == TOKEN_API else "provider"
        assert props["CodeUri"] == f"functions/{folder}/"
        assert (ROOT / "functions" / folder / "app.py").is_file()
        assert props.get("Timeout", glob["Timeout"]) == (
            TOKEN_API_TIMEOUT if logical_id == TOKEN_API else PROVIDER_TIMEOUT
        )
        assert "FunctionUrlConfig" not in props

    ((layer_id, layer),) = resources(template, "AWS::Serverless::LayerVersion").items()
    assert layer_id == "TokenVendingLayer"
    assert layer["Properties"]["ContentUri"] == "layers/token_vending/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}
    assert (ROOT / "layers" / "token_vending" / "requirements.txt").is_file()


# --- the loops: one list of providers, the catalogue --------------------------------------------------
def _loops(node: Any, path: str = "") -> dict[str, tuple[str, Any]]:
    """Every Fn::ForEach of the raw template: its name -> (where it sits, its collection)."""
    found: dict[str, tuple[str, Any]] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("Fn::ForEach::"):
                found[key.removeprefix("Fn::ForEach::")] = (path, value[1])
            found |= _loops(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found |= _loops(item, f"{path}/{index}")
    return found


def test_every_loop_runs_over_the_connections() -> None:
    """The template's loops (conditions, resources, the token API's environment, outputs, the connections'
    alarms) run over the Connections parameter; the token API's alarms over the metrics alone. The parameter's
    default is the five connections stacks had before connections could be added, each a catalogue key with a
    DefaultConnections row naming its route; the rows are those five."""
    raw = raw_template()
    loops = _loops(raw)
    assert {name: where for name, (where, _) in loops.items()} == {
        "ConnectionConditions": "/Conditions",
        "ConnectionResources": "/Resources",
        "ConnectionFunctions": "/Resources/TokenApiFunction/Properties/Environment/Variables",
        "FunctionAlarms": "/Resources",
        "FunctionMetrics": "/Resources/Fn::ForEach::FunctionAlarms/2",
        "TokenApiFunctionMetrics": "/Resources",
        "ConnectionOutputs": "/Outputs",
    }, "a loop this test does not know: say here what it must run over"
    for name in ("ConnectionConditions", "ConnectionResources", "ConnectionFunctions", "ConnectionOutputs",
                 "FunctionAlarms"):
        assert loops[name][1] == {"Ref": "Connections"}, f"Fn::ForEach::{name} runs over {loops[name][1]}"
    metrics = list(raw["Mappings"]["FunctionAlarms"])
    assert loops["FunctionMetrics"][1] == loops["TokenApiFunctionMetrics"][1] == metrics == ["Errors", "Throttles"]
    parameter = raw["Parameters"]["Connections"]
    assert parameter["Type"] == "CommaDelimitedList"
    assert DEFAULT_KEYS == ("InvoiceCloud", "Pyng", "Aria", "Autopay", "AlternativePayments")
    catalogue_keys = [entry.key for entry in CATALOGUE]
    assert [key for key in catalogue_keys if key in DEFAULT_KEYS] == list(DEFAULT_KEYS), "the catalogue's order"
    rows = raw["Mappings"]["DefaultConnections"]
    assert list(rows) == list(DEFAULT_KEYS), "one DefaultConnections row per default connection, in its order"
    for connection in CONNECTIONS.values():
        assert rows[connection.key]["Name"] == connection.route == connection.entry.name, connection.key
    # and what the loops make: one function per connection, named by its key
    assert provider_functions(load_template()) == {c.route: c.function for c in CONNECTIONS.values()}


def test_the_template_has_no_copies() -> None:
    """The loops replaced five copies of every connection's resources (2,504 lines), and one folder of code
    serves every connection's function."""
    lines = len(TEMPLATE.read_text().splitlines())
    assert lines < TEMPLATE_LINE_BUDGET, f"template.yaml has {lines} lines"
    folders = sorted(path.name for path in (ROOT / "functions").iterdir() if path.is_dir()
                     and not path.name.startswith(("__", ".")))
    assert folders == ["provider", "token_api"]
    assert (ROOT / "functions" / "provider" / "app.py").is_file()


@pytest.mark.parametrize("route", list(CONNECTIONS))
def test_each_connection_has_its_own_resources(template: dict[str, Any], route: str) -> None:
    """What the loops make for one connection, named after its key: its secret (kept when the stack goes), its
    function (its own role, code, name, schedule), a role reading only its own secret and partition, a log
    group named after its function, the token API's permission to invoke it, its alarms and outputs."""
    check_connection_resources(template, CONNECTIONS[route])


def check_connection_resources(template: dict[str, Any], connection: Connection) -> None:
    """test_each_connection_has_its_own_resources for one connection (test_connections.py: added ones too)."""
    route, key, function = connection.name, connection.key, connection.function
    res = template["Resources"]
    secret = res[f"{key}Secret"]
    assert (secret["Type"], secret["Condition"]) == ("AWS::SecretsManager::Secret", f"Create{key}Secret")
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    props = res[function]["Properties"]
    assert res[function]["Type"] == "AWS::Serverless::Function"
    assert props["Role"] == {"Fn::GetAtt": [f"{function}Role", "Arn"]}
    assert props["Environment"]["Variables"][constants.CONNECTION_NAME_ENV] == route
    schedule = props["Events"]["RefreshAhead"]
    assert schedule["Type"] == "ScheduleV2"
    assert schedule["Properties"]["Input"] == '{"refresh_ahead": true}'
    assert schedule["Properties"]["GroupName"] == {"Ref": "RefreshAheadScheduleGroup"}
    queue = f"{key}RenewalQueue"
    assert res[queue]["Type"] == "AWS::SQS::Queue"
    assert props["Events"]["Renewal"]["Properties"]["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert props["Environment"]["Variables"][constants.RENEWAL_QUEUE_URL_ENV] == {
        "Fn::If": ["RefreshAheadEnabled", {"Ref": queue}, ""]}
    (policy,) = res[f"{function}Role"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"] if "Sid" in s}
    assert statements["OwnRenewalQueue"]["Action"] == RENEWAL_QUEUE_ACTIONS
    assert statements["OwnRenewalQueue"]["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
    secret_arn = f"{key}SecretArn" if connection.default else "AWS::StackName"  # an added one: never chosen
    assert statements["ReadOwnSecret"]["Resource"] == {
        "Fn::If": [f"Create{key}Secret", {"Ref": f"{key}Secret"}, {"Ref": secret_arn}]
    }
    leading = statements["OwnCachePartition"]["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"]
    assert leading == [route]
    assert res[f"{function}LogGroup"]["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{function}}}"}
    assert res[f"{function}LogsPolicy"]["Properties"]["RoleName"] == {"Ref": f"{function}Role"}
    invoke = res[f"{function}InvokePolicy"]["Properties"]
    assert invoke["RoleName"] == {"Ref": f"{TOKEN_API}Role"}
    assert invoke["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": {"Fn::GetAtt": [function, "Arn"]}}
    ]
    for metric in ("Errors", "Throttles"):
        alarm = res[f"{function}{metric}Alarm"]["Properties"]
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
    assert {f"{function}Arn", f"{key}SecretArn"} <= set(template["Outputs"])
    assert {f"Create{key}Secret", f"Has{key}SigningKey"} <= set(template["Conditions"])


def test_timeouts_fit(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert TOKEN_API_TIMEOUT < API_GATEWAY_INTEGRATION_LIMIT
    lease = params["LeaseSeconds"]
    assert lease["Default"] == constants.DEFAULT_LEASE_SECONDS
    assert lease["MaxValue"] < PROVIDER_TIMEOUT, "a lease must expire before its holder's function times out"
    connect, read = (float(params[f"Upstream{kind}Timeout"]["Default"]) for kind in ("Connect", "Read"))
    one_attempt = connect + read
    # the whole token request ends before the lease lapses (and before the function's timeout)
    assert one_attempt < lease["Default"], "one whole upstream attempt must fit inside the lease"
    # the token API's own budget (DynamoDB read + provider invoke): tests/template/test_operations.py


def test_renewal_queues(template: dict[str, Any]) -> None:
    """Each provider's renewal timers: a standard queue of its own (per-message DelaySeconds; FIFO queues have none),
    encrypted, keeping a message longer than the longest delay the layer asks for plus redeliveries, with the
    visibility timeout Lambda asks of an event source (at least six times the function's timeout), read one message
    per invocation with failures reported per message. Timers and their mapping run while refresh ahead is on."""
    from token_vending.renewal import MAX_DELAY_SECONDS

    assert MAX_DELAY_SECONDS == 900, "SQS delays a message 15 minutes at most"
    res = template["Resources"]
    assert set(resources(template, "AWS::SQS::Queue")) == {f"{p.key}RenewalQueue" for p in CONNECTIONS.values()}
    for connection in CONNECTIONS.values():
        queue, function = f"{connection.key}RenewalQueue", res[connection.function]["Properties"]
        props = res[queue]["Properties"]
        assert props == {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": 3600, "VisibilityTimeout": 150}
        timeout = function.get("Timeout", template["Globals"]["Function"]["Timeout"])
        assert props["VisibilityTimeout"] >= 6 * timeout
        assert props["MessageRetentionPeriod"] >= MAX_DELAY_SECONDS + 2 * props["VisibilityTimeout"]
        assert function["Events"]["Renewal"] == {"Type": "SQS", "Properties": {
            "Queue": {"Fn::GetAtt": [queue, "Arn"]}, "BatchSize": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "Enabled": {"Fn::If": ["RefreshAheadEnabled", True, False]}}}
    for enabled in ("true", "false"):
        on = {"RefreshAheadEnabled": enabled}
        evaluate = Evaluator(template, on)
        for connection in CONNECTIONS.values():
            events = res[connection.function]["Properties"]["Events"]
            assert evaluate(events["Renewal"]["Properties"]["Enabled"]) is (enabled == "true")
            assert evaluate(events["RefreshAhead"]["Properties"]["State"]) == ("ENABLED" if enabled == "true" else
                                                                                 "DISABLED")
            deployed = environment(template, connection.function, on)
            queue_url = f"{connection.key}RenewalQueue-physical-id" if enabled == "true" else ""  # !Ref: its URL
            assert deployed[constants.RENEWAL_QUEUE_URL_ENV] == queue_url
            settings = ProviderSettings.from_env(connection.route, deployed, profile=connection.entry)
            assert settings.renewal_queue_url == queue_url


def test_translated_renewal_mappings(translated: dict[str, Any]) -> None:
    """SAM makes one event source mapping per provider function, from its own queue, and no role for it (the
    function's role holds the queue permissions: test_security.py)."""
    mappings = resources(translated, "AWS::Lambda::EventSourceMapping")
    assert {m["Properties"]["FunctionName"]["Ref"]: m["Properties"]["EventSourceArn"] for m in mappings.values()} == {
        p.function: {"Fn::GetAtt": [f"{p.key}RenewalQueue", "Arn"]} for p in CONNECTIONS.values()}
    for mapping in mappings.values():
        assert mapping["Properties"]["BatchSize"] == 1
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


UPSTREAM_BUDGETS_GOOD = ["", "autopay=30,pyng=200", "alternative-payments=1", "invoice-cloud=1000000",
                         "pyng=60,aria=120,autopay=10", "AriaAu=30,pyng=200", "PyngOrg2=5", "OAuth2Acme=60"]
UPSTREAM_BUDGETS_BAD = ["pyng=0", "pyng=", "=30", "pyng", "pyng=30,", ",pyng=30", "pyng = 30",
                        "pyng=30;autopay=10", "pyng=-1", "pyng=1.5", "pyng=*", "pyng=12345678", "pyng=30 ",
                        "invoice_cloud=30", "-pyng=30",
                        # a default connection's key is not its name; a name is a route, never a provider alone
                        "Pyng=30", "InvoiceCloud=30", "OAuth2=30", "oauth2=30", "paypal=30", "ariaAu=30",
                        "AriaAu-2=30"]


def test_idle_hours_and_upstream_budgets(template: dict[str, Any]) -> None:
    """RefreshAheadIdleHours reaches every function (the connections' functions renew by it, the token API marks use
    by it); UpstreamBudgets reaches the connections' functions, in a form the layer reads (each pair it lets through is
    the budget of the connection it names; the others keep the default of their provider's documented lifetime), and
    names connections by name: a default one's route, an added one's key. Both sit with the refresh settings."""
    from token_vending.budget import default_budget

    params = template["Parameters"]
    idle = params["RefreshAheadIdleHours"]
    assert (idle["Type"], idle["Default"], idle["MinValue"], idle["MaxValue"]) == (
        "Number", constants.DEFAULT_REFRESH_AHEAD_IDLE_HOURS, 1, 720)
    for hours in (idle["MinValue"], idle["Default"], idle["MaxValue"]):
        given = {"RefreshAheadIdleHours": str(hours)}
        assert ApiSettings.from_env(environment(template, TOKEN_API, given)).idle_seconds == hours * 3600
        for connection in CONNECTIONS.values():
            deployed = environment(template, connection.function, given)
            settings = ProviderSettings.from_env(connection.route, deployed, profile=connection.entry)
            assert settings.cache.idle_seconds == hours * 3600, connection.route
    budgets = params["UpstreamBudgets"]
    assert (budgets["Type"], budgets["Default"]) == ("String", "")
    assert budgets.get("ConstraintDescription")
    for value in UPSTREAM_BUDGETS_BAD:
        assert not java_like_fullmatch(budgets["AllowedPattern"], value), value
    for value in UPSTREAM_BUDGETS_GOOD:
        assert java_like_fullmatch(budgets["AllowedPattern"], value), value
        named = dict(pair.split("=") for pair in value.split(",") if pair)
        assert "UPSTREAM_BUDGETS" not in environment(template, TOKEN_API, {"UpstreamBudgets": value})
        for connection in CONNECTIONS.values():
            deployed = environment(template, connection.function, {"UpstreamBudgets": value})
            assert deployed[constants.UPSTREAM_BUDGETS_ENV] == value
            settings = ProviderSettings.from_env(connection.route, deployed, profile=connection.entry)
            expected = int(named.get(connection.route, 0)) or default_budget(connection.lifetime)
            assert settings.upstream_budget == expected, (value, connection.route)
    for connection in CONNECTIONS.values():  # the documented default: max(60, ceil(12 x 3600 / lifetime))
        assert default_budget(connection.lifetime) == max(60, -(-12 * 3600 // connection.lifetime)), connection.route
    assert "max(60, ceil(12 x 3600 / its provider's documented lifetime))" in " ".join(budgets["Description"].split())
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    (group,) = [group["Parameters"] for group in groups if "RefreshAheadEnabled" in group["Parameters"]]
    at = group.index("RefreshAheadEnabled")
    assert group[at + 1 : at + 3] == ["RefreshAheadIdleHours", "UpstreamBudgets"]


# "<who>'s N s": a timeout or limit named in template.yaml's descriptions or comments.
TIMEOUT_MENTION = re.compile(
    r"(?P<who>token API function|token API|provider functions?|API Gateway)(?:'s|')? (?P<seconds>\d+(?:\.\d+)?) ?s\b"
)


def _template_prose() -> str:
    """template.yaml's text, comments included, with folded lines joined (a phrase may span lines)."""
    return " ".join(line.strip().lstrip("#").strip() for line in TEMPLATE.read_text().splitlines())


def test_timeouts_named_in_the_template_are_the_real_ones(template: dict[str, Any]) -> None:
    """Descriptions and comments that name a function's timeout (or API Gateway's limit) name the real one."""
    default = template["Globals"]["Function"]["Timeout"]
    timeouts = {
        logical_id: fn["Properties"].get("Timeout", default)
        for logical_id, fn in resources(template, "AWS::Serverless::Function").items()
    }
    (provider_timeout,) = {timeouts[connection.function] for connection in CONNECTIONS.values()}
    real = {"token API": timeouts[TOKEN_API], "provider": provider_timeout}
    real["API Gateway"] = API_GATEWAY_INTEGRATION_LIMIT
    prose = _template_prose()
    mentions = list(TIMEOUT_MENTION.finditer(prose))
    assert mentions, "the template names no timeout at all (the pattern no longer matches its wording?)"
    wrong = []
    for mention in mentions:
        who = next(key for key in real if mention["who"].startswith(key))
        if float(mention["seconds"]) != real[who]:
            wrong.append(f"{mention[0]!r} (really {real[who]} s)")
    assert not wrong, "the template names timeouts that are not the real ones: " + "; ".join(wrong)
    # every "N s timeout" / "N s integration limit" is one whose owner the check above knows
    attributed = {mention.start("seconds") for mention in mentions}
    for number in re.finditer(r"(\d+(?:\.\d+)?) ?s (?:timeout|integration limit)", prose):
        context = prose[max(0, number.start() - 60) : number.end()]
        assert number.start(1) in attributed, f"a timeout whose owner this test cannot tell: ...{context}"


def test_default_token_lifetime_can_serve_a_request_without_parameters(template: dict[str, Any]) -> None:
    """A token of DefaultTokenLifetime must keep the default min_ttl outside its refresh margin, whatever
    the margin parameters: else every request without min_ttl fails (the functions call it misconfigured)."""
    from token_vending.freshness import RefreshPolicy

    params = template["Parameters"]
    spec = params["DefaultTokenLifetime"]
    minimum = spec["MinValue"]
    assert minimum == constants.MIN_DEFAULT_TOKEN_LIFETIME
    margins, ratios = params["RefreshMarginSeconds"], params["RefreshMarginRatio"]
    for seconds in (margins["MinValue"], margins["Default"], margins["MaxValue"]):
        for ratio in (ratios["MinValue"], ratios["Default"], ratios["MaxValue"]):
            policy = RefreshPolicy(float(seconds), float(ratio))
            assert policy.min_ttl_limit(minimum) >= constants.DEFAULT_MIN_TTL, (seconds, ratio)
    defaults = RefreshPolicy(float(margins["Default"]), float(ratios["Default"]))
    assert defaults.min_ttl_limit(minimum - 1) < constants.DEFAULT_MIN_TTL, "MinValue is more than needed"
    description = " ".join(spec["Description"].split())
    assert f"At least {minimum}" in description, description
    assert f"min_ttl ({constants.DEFAULT_MIN_TTL} s)" in description, description


def test_exactly_one_api_route_with_iam_auth(template: dict[str, Any]) -> None:
    events = [
        (logical_id, name, event)
        for logical_id, function in resources(template, "AWS::Serverless::Function").items()
        for name, event in function["Properties"].get("Events", {}).items()
    ]
    api_events = [(logical_id, name, event) for logical_id, name, event in events if event["Type"] == "Api"]
    assert len(api_events) == 1, f"exactly one API route expected, got {api_events}"
    ((logical_id, _, event),) = api_events
    assert logical_id == TOKEN_API
    # the other events: one refresh-ahead schedule and one renewal queue per provider function
    others = {(logical_id, name, event["Type"]) for logical_id, name, event in events if event["Type"] != "Api"}
    assert others == {(connection.function, name, kind) for connection in CONNECTIONS.values()
                      for name, kind in (("RefreshAhead", "ScheduleV2"), ("Renewal", "SQS"))}
    assert event["Type"] == "Api"
    assert event["Properties"]["Path"] == "/token/{provider}"
    assert event["Properties"]["Method"].upper() == "GET"
    assert event["Properties"]["RestApiId"] == {"Ref": "TokenVendingApi"}
    assert "Auth" not in event["Properties"], "the route must keep the API's AWS_IAM default"

    assert not resources(template, "AWS::Serverless::HttpApi")
    apis = resources(template, "AWS::Serverless::Api")
    assert list(apis) == ["TokenVendingApi"]
    api = apis["TokenVendingApi"]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    assert api["Auth"]["InvokeRole"] == "NONE"
    assert "DefinitionUri" not in api
    (path,) = api["DefinitionBody"]["paths"]
    assert path == "/token/{provider}"
    assert list(api["DefinitionBody"]["paths"][path]) == ["get"]
    assert api["StageName"] == {"Ref": "StageName"}
    assert template["Parameters"]["StageName"]["Default"] == "v1"
    assert api["TracingEnabled"] is True
    assert api["EndpointConfiguration"] == {"Type": {"Ref": "ApiEndpointType"}}
    assert template["Parameters"]["ApiEndpointType"]["Default"] == "REGIONAL"
    (setting,) = api["MethodSettings"]
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert setting["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}


def test_gateway_responses_are_json(template: dict[str, Any]) -> None:
    responses = template["Resources"]["TokenVendingApi"]["Properties"]["GatewayResponses"]
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "ACCESS_DENIED", "MISSING_AUTHENTICATION_TOKEN"} <= set(responses)
    for name, response in responses.items():
        body = response["ResponseTemplates"]["application/json"]
        # $context.error.messageString arrives already JSON-quoted; $context.requestId does not.
        rendered = body.replace("$context.error.messageString", json.dumps('Missing "Authentication" Token'))
        rendered = rendered.replace("$context.requestId", "c6af9ac6-7b61-11e6-9a41-93e8deadbeef")
        assert "$" not in rendered, f"{name}: unrendered variable in {body}"
        parsed = json.loads(rendered)
        assert set(parsed) >= {"error", "error_description"}, name
        assert re.fullmatch(r"[a-z_]+", parsed["error"]), name
        if "StatusCode" in response:
            assert 400 <= int(response["StatusCode"]) < 600


def test_aria_endpoints_are_the_12_documented_ones(template: dict[str, Any]) -> None:
    """Aria's endpoints live in its catalogue entry (no longer in a template mapping); AriaRegion and
    AriaStage reach its function as REGION and STAGE, and every combination they allow names one of them."""
    aria = CONNECTIONS["aria"]
    flat = {tuple(choice.split("/")): url for choice, url in aria.entry.endpoints.items()}
    assert flat == ARIA_ENDPOINTS
    assert len(set(flat.values())) == 12
    assert all(url.startswith("https://") for url in flat.values())
    assert "AriaTokenEndpoints" not in template["Mappings"]
    assert "AriaTokenUrl" not in template["Parameters"]
    params = template["Parameters"]
    assert params["AriaRegion"]["AllowedValues"] == ["US", "AUS", "SGP", "CPH"]
    assert sorted(params["AriaStage"]["AllowedValues"]) == sorted(["Prod", "Future", "Current"])
    env = function_env(template, aria.function)
    assert env[constants.REGION_ENV] == {"Ref": "AriaRegion"}
    assert env[constants.STAGE_ENV] == {"Ref": "AriaStage"}
    for region in params["AriaRegion"]["AllowedValues"]:
        for stage in params["AriaStage"]["AllowedValues"]:
            deployed = environment(template, aria.function, {"AriaRegion": region, "AriaStage": stage})
            assert constants.TOKEN_URL_ENV not in deployed  # the function picks the endpoint
            assert fetch_settings(aria, deployed).token_url == ARIA_ENDPOINTS[(region, stage)]


def test_token_url_parameters_reject_plain_http(template: dict[str, Any]) -> None:
    """A token URL parameter takes https:// only. Those without a documented URL (Pyng's host differs per partner,
    Autopay's comes from its representative) may be empty: the connection's secret gives it then (token_url), and
    with neither the function refuses to fetch (misconfigured, naming both)."""
    params = template["Parameters"]
    url_params = sorted(name for name in params if name.endswith("TokenUrl"))
    rows = template["Mappings"]["DefaultConnections"].values()
    assert url_params == sorted(row["TokenUrl"] for row in rows if "TokenUrl" in row)
    for name in url_params:
        spec = params[name]
        pattern = spec.get("AllowedPattern")
        assert pattern, f"{name} has no AllowedPattern"
        assert spec.get("ConstraintDescription"), f"{name} has no ConstraintDescription"
        for bad in (
            "http://public-api.alternativepayments.io/oauth/token",
            "http://127.0.0.1:9001/oauth/token",
            "HTTP://example.com/token",
            "ftp://example.com/token",
            "https://",
            " https://example.com/token",
        ):
            assert not java_like_fullmatch(pattern, bad), f"{name} accepts {bad!r}"
        assert java_like_fullmatch(pattern, "https://sample.pyng.com.au/billing/oauth2/token")
        assert java_like_fullmatch(pattern, spec["Default"]), f"{name}'s default breaks its own pattern"
        assert java_like_fullmatch(pattern, "") == (name in ("PyngTokenUrl", "AutopayTokenUrl")), name
    assert params["PyngTokenUrl"]["Default"] == params["AutopayTokenUrl"]["Default"] == ""
    for key in ("Pyng", "Autopay"):  # empty in both places: misconfigured at first use, naming both
        connection = next(c for c in CONNECTIONS.values() if c.key == key)
        deployed = environment(template, connection.function, {f"{key}TokenUrl": ""})
        assert constants.TOKEN_URL_ENV not in deployed or deployed[constants.TOKEN_URL_ENV] == ""
        with pytest.raises(Misconfigured, match="token_url"):
            fetch_settings(connection, deployed)
        given = fetch_settings(connection, deployed, {"token_url": "https://partner.example.com/oauth2/token"})
        assert given.token_url == "https://partner.example.com/oauth2/token"
    assert params["InvoiceCloudTokenUrl"]["Default"] == (
        "https://api.invoicecloud.com/biller/v1/authentication/oauth2/token"
    )
    alternative_payments = params["AlternativePaymentsTokenUrl"]["Default"]
    assert alternative_payments == "https://public-api.alternativepayments.io/oauth/token"
    assert params["AutopayAudience"]["Default"] == ""


def test_parameter_defaults_satisfy_their_constraints(template: dict[str, Any]) -> None:
    for name, spec in template["Parameters"].items():
        if "Default" not in spec:
            continue
        default = spec["Default"]
        if "AllowedPattern" in spec:  # a CommaDelimitedList's pattern applies to each item
            items = str(default).split(",") if spec["Type"] == "CommaDelimitedList" else [str(default)]
            assert all(java_like_fullmatch(spec["AllowedPattern"], item) for item in items), name
        if "AllowedValues" in spec:
            assert default in spec["AllowedValues"], name
        if spec["Type"] == "Number":
            number = float(default)
            assert number >= spec.get("MinValue", number), name
            assert number <= spec.get("MaxValue", number), name


def test_scope_parameters_hold_only_scope_tokens(template: dict[str, Any]) -> None:
    """RFC 6749 scope-tokens, single-space separated: nothing that could break an environment value or
    the token request's form encoding."""
    params = template["Parameters"]
    assert params["PyngScopes"]["Default"] == PYNG_SCOPES
    assert params["PyngDefaultScopes"]["Default"] == ""
    for name in ("PyngScopes", "PyngDefaultScopes"):
        pattern = params[name]["AllowedPattern"]
        for bad in ('a"b', "a\\b", "a  b", " a", "a "):
            assert not java_like_fullmatch(pattern, bad), f"{name} accepts {bad!r}"
        assert java_like_fullmatch(pattern, "billing:batches:read")


def test_connection_functions_environment(template: dict[str, Any]) -> None:
    """Each connection's function is told its name, its own secret, its own parameters (as its DefaultConnections
    row names them, nothing for a missing column) and the shared settings; its lifetime is its provider's catalogue
    entry's. Deployed with the defaults (and samconfig.toml's token URLs), the layer reads a working configuration
    from it."""
    for connection in CONNECTIONS.values():
        check_connection_environment(template, connection)
        deployed = environment(template, connection.function)
        settings = fetch_settings(connection, deployed)
        assert settings.token_url.startswith("https://"), f"{connection.route}: token URL {settings.token_url}"
        if "Scopes" not in template["Mappings"]["DefaultConnections"][connection.key]:
            assert settings.allowed_scopes == settings.default_scopes == frozenset(), connection.route
    pyng = CONNECTIONS["pyng"]
    deployed = environment(template, pyng.function)
    assert deployed[constants.ALLOWED_SCOPES_ENV] == PYNG_SCOPES
    assert deployed[constants.DEFAULT_SCOPES_ENV] == "", "empty: all of ALLOWED_SCOPES (the layer's rule)"
    settings = fetch_settings(pyng, deployed)
    assert settings.default_scopes == settings.allowed_scopes == frozenset(PYNG_SCOPES.split())
    narrower = environment(template, pyng.function, {"PyngDefaultScopes": "billing:batches:read"})
    assert fetch_settings(pyng, narrower).default_scopes == {"billing:batches:read"}
    autopay = environment(template, CONNECTIONS["autopay"].function)
    assert autopay[constants.AUDIENCE_ENV] == "", "Autopay's document: audience must always be \"\""
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    assert defaults["DefaultTokenLifetime"] == constants.DEFAULT_TOKEN_LIFETIME
    assert defaults["RefreshMarginSeconds"] == constants.DEFAULT_REFRESH_MARGIN_SECONDS
    assert float(defaults["RefreshMarginRatio"]) == constants.DEFAULT_REFRESH_MARGIN_RATIO
    assert defaults["ForceRefreshInterval"] == constants.DEFAULT_FORCE_REFRESH_INTERVAL
    assert defaults["MemoryCacheSeconds"] == constants.DEFAULT_MEMORY_CACHE_SECONDS
    assert float(defaults["UpstreamConnectTimeout"]) == constants.DEFAULT_CONNECT_TIMEOUT
    assert float(defaults["UpstreamReadTimeout"]) == constants.DEFAULT_READ_TIMEOUT
    assert defaults["UpstreamRetries"] == constants.DEFAULT_UPSTREAM_RETRIES
    assert defaults["SecretMaxAge"] == constants.DEFAULT_SECRET_MAX_AGE


def check_connection_environment(template: dict[str, Any], connection: Connection) -> None:
    """A connection's function environment as written: its name, its secret, its parameters through its
    DefaultConnections row (an added connection has no row: no parameter, AWS::NoValue) and the shared settings.
    Deployed, the layer reads its name, secret and lifetime from it (test_connections.py: added ones too)."""
    env, key = function_env(template, connection.function), connection.key
    rows = template["Mappings"]["DefaultConnections"]
    row = rows.get(key, {})
    assert bool(row) == connection.default, f"{key}: a DefaultConnections row is what makes a default connection"
    assert env[constants.CONNECTION_NAME_ENV] == connection.name == row.get("Name", key)
    assert constants.TOKEN_LIFETIME_ENV not in env, "the catalogue's documented lifetime applies"
    assert env[constants.SECRET_ID_ENV] == {
        "Fn::If": [f"Create{key}Secret", {"Ref": f"{key}Secret"}, {"Ref": row.get("SecretArn", "AWS::StackName")}]
    }
    assert env[constants.DEFAULT_LIFETIME_ENV] == {"Ref": "DefaultTokenLifetime"}
    assert env[constants.LEASE_SECONDS_ENV] == {"Ref": "LeaseSeconds"}
    assert env[constants.FORCE_REFRESH_INTERVAL_ENV] == {"Ref": "ForceRefreshInterval"}
    assert env[constants.MEMORY_CACHE_SECONDS_ENV] == {"Ref": "MemoryCacheSeconds"}
    assert env[constants.REFRESH_MARGIN_SECONDS_ENV] == {"Ref": "RefreshMarginSeconds"}
    assert env[constants.REFRESH_MARGIN_RATIO_ENV] == {"Ref": "RefreshMarginRatio"}
    assert set(row) <= set(MAPPING_COLUMNS) | {"Name"}, f"{key}: unknown DefaultConnections columns"
    if row:
        assert set(EVERY_ROW) <= set(row), f"{key}: every default connection has {EVERY_ROW}"
    for column, name in MAPPING_COLUMNS.items():
        if column in row:
            assert row[column] in template["Parameters"], f"{key}: {column} names no parameter"
            assert row[column] == f"{key}{column}", f"{key}: {column} names another connection's {row[column]}"
        if column != "SecretArn":
            assert env[name] == {"Ref": row.get(column, "AWS::NoValue")}, (key, name)
    if row:  # what the catalogue entry needs from the template: a URL or the documented endpoints' choice, the
        # audience it must send, scopes only where it takes them
        assert ("TokenUrl" in row) != bool(connection.entry.endpoints), key
        assert ({"Region", "Stage"} & set(row)) == ({"Region", "Stage"} if connection.entry.endpoints else set()), key
        assert ("Audience" in row) == connection.entry.send_audience, key
        assert "Scopes" not in row or connection.entry.scope is not ScopeMode.OMIT, key
    deployed = environment(template, connection.function)
    settings = ProviderSettings.from_env(connection.name, deployed, profile=connection.entry)
    assert settings.lifetime == connection.lifetime
    assert settings.secret_id == f"{key}Secret-physical-id"
    if not row:
        assert not set(deployed) & {MAPPING_COLUMNS[column] for column in SETTING_COLUMNS}, (
            f"{key}: an added connection's settings are its secret's")
        assert deployed[constants.SECRET_ID_ENV] == f"{key}Secret-physical-id"


def test_client_auth_parameters(template: dict[str, Any]) -> None:
    """<Provider>ClientAuth offers exactly the methods the layer knows (or "" for the profile's), and
    <Provider>SigningKeyArn takes only a KMS key ARN (IAM grants kms:Sign on it: an alias or id would not
    match); both default to what the stack did before they existed, and sit in the provider's group."""
    params = template["Parameters"]
    groups = {group["Label"]["default"]: group["Parameters"]
              for group in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]}
    for prefix in (connection.key for connection in CONNECTIONS.values()):
        method = params[f"{prefix}ClientAuth"]
        assert method["Type"] == "String"
        assert method["Default"] == ""
        assert method["AllowedValues"] == ["", *sorted(AUTH_METHODS)]
        key = params[f"{prefix}SigningKeyArn"]
        assert key["Type"] == "String"
        assert key["Default"] == ""
        assert key.get("ConstraintDescription")
        pattern = key["AllowedPattern"]
        for good in ("", SIGNING_KEY, "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-0123456789abcdef0123",
                     "arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                     "arn:aws:kms:eu-west-1:123456789012:alias/token-signing"):  # rotation by moving the alias
            assert java_like_fullmatch(pattern, good), (prefix, good)
        for bad in (
            "alias/token-signing",  # a bare alias: the region and account are not named
            "arn:aws:kms:eu-west-1:123456789012:alias/*",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:123456789012:key/*",
            "arn:aws:kms:*:123456789012:key/1234abcd",
            "arn:aws:kms:eu-west-1:12345678901:key/1234abcd",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x",
            f" {SIGNING_KEY}",
            f"{SIGNING_KEY}\n",
        ):
            assert not java_like_fullmatch(pattern, bad), (prefix, bad)
        [group] = [names for names in groups.values() if f"{prefix}SecretArn" in names]
        assert {f"{prefix}ClientAuth", f"{prefix}SigningKeyArn"} <= set(group), prefix


def test_every_parameter_is_in_one_console_group(template: dict[str, Any]) -> None:
    """The console (and `sam deploy --guided` readers) show parameters by AWS::CloudFormation::Interface group."""
    grouped = [name for group in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
               for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"]), (
        f"ungrouped: {sorted(set(template['Parameters']) - set(grouped))}; "
        f"unknown or repeated: {sorted(n for n in grouped if grouped.count(n) > 1 or n not in template['Parameters'])}"
    )


def test_env_var_names_are_those_of_constants(template: dict[str, Any]) -> None:
    """Every name a function is deployed with is one token_vending reads (or Powertools', or a declared-empty
    endpoint override), and every name the layer reads is set, where it is not left to its default."""
    check_env_var_names(template, CONNECTIONS)


def check_env_var_names(template: dict[str, Any], deployed_connections: dict[str, Connection]) -> None:
    """test_env_var_names_are_those_of_constants with these connections (test_connections.py: added ones too: the
    settings of an added connection are its secret's, it has no parameter to set them)."""
    local_only = {constants.LOCAL_MODE_ENV}
    api_only = {constants.PROVIDERS_ENV} | ENV_PATTERNS
    per_connection = {name for column, name in MAPPING_COLUMNS.items() if column != "TokenUrl"}
    common = ENV_NAMES - api_only - per_connection - NOT_SET_BY_THE_TEMPLATE - {constants.TOKEN_URL_ENV}
    # an added connection's secret, always the stack's placeholder (as a default connection's without <Key>SecretArn)
    always = {constants.SECRET_ID_ENV}
    connection_names = {pattern.format(key=connection.key) for pattern in ENV_PATTERNS
                        for connection in deployed_connections.values()}
    rows = template["Mappings"]["DefaultConnections"]
    functions = [TOKEN_API, *(connection.function for connection in deployed_connections.values())]
    assert set(resources(template, "AWS::Serverless::Function")) == set(functions)
    for logical_id in functions:
        deployed = environment(template, logical_id)  # AWS::NoValue names left out
        names = set(deployed)
        unknown = {n for n in names - ENV_NAMES - connection_names if not EXTERNAL_ENV.match(n)}
        assert not unknown, f"{logical_id} sets names token_vending does not read: {sorted(unknown)}"
        ours = names & (ENV_NAMES | connection_names)
        if logical_id == TOKEN_API:
            assert {constants.MEMORY_CACHE_SECONDS_ENV, constants.CACHE_TABLE_ENV} <= ours
            told = {constants.PROVIDER_FUNCTION_ENV.format(key=c.key) for c in deployed_connections.values()}
            assert told <= ours, f"the token API is not told of {sorted(told - ours)}"
            assert not ours & {constants.SECRET_ID_ENV, constants.CONNECTION_NAME_ENV, constants.SIGNING_KEY_ID_ENV}
            assert not {name for name in names if name.startswith(("SCOPES_", "DEFAULT_SCOPES_"))}, (
                "the token API knows no connection's scopes: each function checks its own")
            for name in DECLARED_FOR_SAM_LOCAL:
                assert deployed[name] == "", f"{name}: declared for sam local, empty when deployed"
        else:
            (connection,) = (c for c in deployed_connections.values() if c.function == logical_id)
            columns = rows.get(connection.key, {})
            expected = common | always | {MAPPING_COLUMNS[column] for column in columns if column != "Name"}
            assert ours - {constants.TOKEN_URL_ENV} == expected - {constants.TOKEN_URL_ENV}, (
                f"{logical_id}: lacks {expected - ours}, has extra {ours - expected}")
            # TOKEN_URL: the connection's own parameter, or none (Aria: REGION and STAGE choose a documented one;
            # an added connection: its secret's token_url, region, stage)
            assert (constants.TOKEN_URL_ENV in ours) == ("TokenUrl" in columns), logical_id
        assert all(deployed[n] == "false" for n in ours & local_only)


def test_token_api_knows_every_connection_as_its_function_does(template: dict[str, Any]) -> None:
    """FUNCTION_<Key> names each connection's function; the token API reads the rest from the catalogue by the
    connection's name (its provider's lifetime, whether it takes a scope), the very name the function is told."""
    check_token_api_connections(template, CONNECTIONS)


def check_token_api_connections(template: dict[str, Any], deployed_connections: dict[str, Connection]) -> None:
    """test_token_api_knows_every_connection_as_its_function_does with these connections (test_connections.py)."""
    env = function_env(template, TOKEN_API)
    assert env[constants.MEMORY_CACHE_SECONDS_ENV] == {"Ref": "MemoryCacheSeconds"}
    told = {name: value for name, value in env.items() if name.startswith(constants.PROVIDER_FUNCTION_ENV[:-5])}
    assert told == {constants.PROVIDER_FUNCTION_ENV.format(key=c.key): {"Fn::Sub": f"${{{c.function}}}"}
                    for c in deployed_connections.values()}
    deployed = environment(template, TOKEN_API)
    assert deployed[constants.PROVIDERS_ENV] == "", "the catalogue and FUNCTION_<Key> say it all when deployed"
    api = ApiSettings.from_env(deployed)
    assert list(api.providers) == list(deployed_connections)
    for name, connection in deployed_connections.items():
        entry = api.providers[name]
        assert entry.function == f"{connection.function}-physical-id"  # what !Ref gives: the function's name
        assert environment(template, connection.function)[constants.CONNECTION_NAME_ENV] == name
        assert entry.lifetime == connection.lifetime
        assert entry.takes_scope == (connection.entry.scope is not ScopeMode.OMIT), name


def test_environment_fits_lambdas_4_kb_limit(template: dict[str, Any]) -> None:
    """Lambda caps a function's environment at 4 KB; function names can be 64 characters long."""

    class LongNames(Evaluator):
        def ref(self, name: str) -> Any:
            return self.params.get(name, NO_VALUE if name == "AWS::NoValue" else "x" * 64)

    budgets = ",".join(f"{route}=1000000" for route in CONNECTIONS)
    ev = LongNames(template, {"PyngScopes": PYNG_SCOPES, "PyngDefaultScopes": PYNG_SCOPES, "UpstreamBudgets": budgets})
    for logical_id in ALL_FUNCTIONS:
        env = {name: str(value) for name, value in ev(function_env(template, logical_id)).items()}
        size = sum(len(name) + len(value) for name, value in env.items())
        assert size < 3500, f"{logical_id}: environment of {size} bytes is close to Lambda's 4 KB limit"


def test_cache_table(template: dict[str, Any]) -> None:
    ((table_id, table),) = resources(template, "AWS::DynamoDB::Table").items()
    assert table_id == "CacheTable"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert sorted(props["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "purge_at", "Enabled": True}
    # encryption at rest: see test_security.py (AWS managed key, or KmsKeyArn's)
    assert props["SSESpecification"]["SSEEnabled"] is True


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:token-vending/pyng-AbCdEf"


def test_secrets_parameters_conditions_and_outputs(template: dict[str, Any]) -> None:
    params, outputs = template["Parameters"], template["Outputs"]
    for connection in CONNECTIONS.values():
        param = params[f"{connection.key}SecretArn"]
        assert param["Default"] == ""
        pattern = param["AllowedPattern"]
        assert java_like_fullmatch(pattern, "")
        assert java_like_fullmatch(pattern, SECRET_ARN)
        assert not java_like_fullmatch(pattern, "token-vending/pyng")
        check_connection_secret(template, connection)
    assert outputs[f"{TOKEN_API}Arn"]["Value"] == {"Fn::GetAtt": [TOKEN_API, "Arn"]}
    assert outputs["CacheTableName"]["Value"] == {"Ref": "CacheTable"}
    api_url = Evaluator(template)(outputs["ApiUrl"]["Value"])
    assert api_url == "https://TokenVendingApi-physical-id.execute-api.us-east-1.amazonaws.com/v1/token/"


def check_connection_secret(template: dict[str, Any], connection: Connection) -> None:
    """A connection's placeholder secret (kept when the stack goes, generated the same way for every connection),
    the condition that creates it, and its outputs: the secret in use and the function. A default connection's is
    created while <Key>SecretArn is empty; an added connection has no such parameter, its placeholder always is
    (test_connections.py)."""
    key, outputs = connection.key, template["Outputs"]
    secret = template["Resources"][f"{key}Secret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Condition"] == f"Create{key}Secret"
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    generate = secret["Properties"]["GenerateSecretString"]
    assert json.loads(generate["SecretStringTemplate"]) == {"client_id": ""}
    assert generate["GenerateStringKey"] == "client_secret"
    description = Evaluator(template)(secret["Properties"]["Description"])
    assert "client_id" in description
    assert "client_secret" in description
    assert description.startswith(f"{connection.name} OAuth client credentials"), description
    given = {f"{key}SecretArn": SECRET_ARN} if connection.default else {}
    for overrides, created in (({}, True), (given, not connection.default)):
        evaluate = Evaluator(template, overrides)
        assert evaluate.condition(f"Create{key}Secret") is created, (key, overrides)
        assert evaluate(outputs[f"{key}SecretArn"]["Value"]) == (f"{key}Secret-physical-id" if created else SECRET_ARN)
        assert evaluate.condition(f"IsDefault{key}") is connection.default, key
    assert outputs[f"{connection.function}Arn"]["Value"] == {"Fn::GetAtt": [connection.function, "Arn"]}
    assert key in outputs[f"{key}SecretArn"]["Description"]


def test_log_groups(template: dict[str, Any]) -> None:
    groups = resources(template, "AWS::Logs::LogGroup")
    names = {g["Properties"]["LogGroupName"]["Fn::Sub"]: g for g in groups.values()}
    assert set(names) == {f"/aws/lambda/${{{fn}}}" for fn in ALL_FUNCTIONS} | {
        "/aws/apigateway/${AWS::StackName}/access",
        "API-Gateway-Execution-Logs_${TokenVendingApi}/${StageName}",
        "/aws/vendedlogs/states/${AWS::StackName}-get-token",
    }
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
    assert template["Parameters"]["LogRetentionInDays"]["Default"] == 30


def test_no_local_test_shortcuts_deployed(template: dict[str, Any]) -> None:
    for logical_id in ALL_FUNCTIONS:
        env = function_env(template, logical_id)
        assert env[constants.LOCAL_MODE_ENV] == "false"
        for name, value in env.items():
            if name.startswith("AWS_ENDPOINT_URL_"):
                assert value == "", f"{logical_id}: {name} must be empty when deployed"
            assert "http://" not in json.dumps(value), f"{logical_id}: {name} holds an http:// URL"


# --- samconfig.toml ------------------------------------------------------------------------------
def _overrides(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', text))


def test_samconfig(template: dict[str, Any]) -> None:
    config = tomllib.loads(SAMCONFIG.read_text())
    assert config["version"] == 0.1
    params = template["Parameters"]
    required = {name for name, spec in params.items() if "Default" not in spec}
    assert not required, "every parameter has a default (Pyng's and Autopay's URLs may be in their secrets)"
    stacks = set()
    for env_name in ("default", "prod"):
        env = config[env_name]
        stacks.add(env["global"]["parameters"]["stack_name"])
        # SAM CLI expands the template's Fn::ForEach loops itself only when asked: for build, validate, deploy
        assert env["build"]["parameters"] == {"cached": True, "parallel": True, "language_extensions": True}
        assert env["validate"]["parameters"] == {"lint": True, "language_extensions": True}
        deploy = env["deploy"]["parameters"]
        assert deploy["language_extensions"] is True
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        assert deploy["resolve_s3"] is True
        assert deploy["region"]
        assert deploy["confirm_changeset"] is (env_name == "prod")
        overrides = _overrides(deploy["parameter_overrides"])
        assert set(overrides) <= set(params), f"{env_name}: unknown parameters {set(overrides) - set(params)}"
        assert overrides["PyngTokenUrl"] == "https://sample.pyng.com.au/billing/oauth2/token"
        assert overrides["AutopayTokenUrl"] == "https://autopay.example.com/oauth/token"
        for name, value in overrides.items():
            spec = params[name]
            items = value.split(",") if spec["Type"] == "CommaDelimitedList" else [value]
            if "AllowedPattern" in spec:
                assert all(java_like_fullmatch(spec["AllowedPattern"], item) for item in items), f"{env_name}: {name}"
            if "AllowedValues" in spec:
                assert value in [str(v) for v in spec["AllowedValues"]], f"{env_name}: {name}={value}"
    assert len(stacks) == 2, "default and prod must deploy different stacks"
    assert config["default"]["local_invoke"]["parameters"]["env_vars"] == "env.json"


# --- events/ and env.json ------------------------------------------------------------------------
def _event_scope(template: dict[str, Any], connection: Any) -> str | None:
    """The scope the sample events ask for: the last of the provider's allowed scopes (deployed defaults)."""
    scopes = environment(template, connection.function).get(constants.ALLOWED_SCOPES_ENV, "").split()
    return scopes[-1] if scopes else None


def test_api_events(template: dict[str, Any]) -> None:
    """One API Gateway proxy event per provider: a request for one allowed scope where the provider has
    scopes, else for a token that lasts at least five minutes."""
    for connection in CONNECTIONS.values():
        route = connection.route
        event = json.loads((EVENTS / f"api-{route}.json").read_text())
        assert event["resource"] == "/token/{provider}"
        assert event["path"] == f"/token/{route}"
        assert event["httpMethod"] == "GET"
        assert event["pathParameters"] == {"provider": route}
        assert event["body"] is None
        assert event["isBase64Encoded"] is False
        qs, mqs = event["queryStringParameters"], event["multiValueQueryStringParameters"]
        scope = _event_scope(template, connection)
        assert qs == ({"scope": scope} if scope else {"min_ttl": "300"}), route
        assert mqs == {k: [v] for k, v in qs.items()}
        assert {k: [v] for k, v in event["headers"].items()} == event["multiValueHeaders"]
        ctx = event["requestContext"]
        assert ctx["resourcePath"] == "/token/{provider}"
        assert ctx["httpMethod"] == "GET"
        assert ctx["path"] == f"/{ctx['stage']}/token/{route}"
        assert ctx["stage"] == "v1"
        assert re.fullmatch(r"[0-9a-f-]{36}", ctx["requestId"])
        identity = ctx["identity"]
        assert identity["userArn"].startswith("arn:aws:sts::")
        assert identity["caller"]
        assert identity["accessKey"]
        assert identity["accountId"]
    assert _event_scope(template, CONNECTIONS["pyng"]) == "billing:batches:read"
    events = [json.loads((EVENTS / f"api-{route}.json").read_text()) for route in CONNECTIONS]
    request_ids = {event["requestContext"]["requestId"] for event in events}
    assert len(request_ids) == len(CONNECTIONS)


def test_invoke_events(template: dict[str, Any]) -> None:
    for connection in CONNECTIONS.values():
        payload = json.loads((EVENTS / f"invoke-{connection.route}.json").read_text())
        expected: dict[str, Any] = {"min_ttl": 60, "force_refresh": False}
        scope = _event_scope(template, connection)
        if scope:
            expected["scope"] = scope
        assert payload == expected, connection.route
    assert json.loads((EVENTS / "invoke-pyng.json").read_text())["scope"] == "billing:batches:read"
    named = {p.name for p in EVENTS.glob("*.json")}
    assert named >= {f"{kind}-{route}.json" for kind in ("api", "invoke") for route in CONNECTIONS}
    for name in named:  # and the local stack's added connections' (AriaAu, PyngOrg2), by their names
        kind, _, route = name.removesuffix(".json").partition("-")
        assert kind in ("api", "invoke"), name
        assert route in CONNECTIONS or (java_like_fullmatch(CONNECTIONS_PATTERN, route) and route not in
                                        {entry.key for entry in CATALOGUE}), f"{name} names no connection"


CONNECTIONS_PATTERN = load_template()["Parameters"]["Connections"]["AllowedPattern"]


def test_env_json_and_events_are_generated_from_the_template_and_catalogue() -> None:
    """`python -m local.generate --check` (make test): env.json and events/ are what template.yaml and the
    catalogue give, so neither can drift from them."""
    result = subprocess.run([sys.executable, "-m", "local.generate", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"stale generated files (run `make generate`):\n{result.stdout}{result.stderr}"


def test_env_json(template: dict[str, Any]) -> None:
    env_file = json.loads(ENV_JSON.read_text())
    assert set(env_file) == set(ALL_FUNCTIONS)
    for logical_id, values in env_file.items():
        assert all(isinstance(v, str) for v in values.values()), logical_id
        undeclared = set(values) - set(function_env(template, logical_id))
        assert not undeclared, f"{logical_id}: sam local ignores names not in the template: {undeclared}"
        assert values[constants.LOCAL_MODE_ENV] == "true"
        assert values[constants.CACHE_TABLE_ENV] == "token-vending-local"
        assert values["AWS_ENDPOINT_URL_DYNAMODB"] == LOCAL_AWS
    for index, connection in enumerate(CONNECTIONS.values()):
        route, key, values = connection.route, connection.key, env_file[connection.function]
        # make local's emulator of this provider (python -m local: one port each, in catalogue order)
        port, path = EMULATOR_PORT_BASE + index, connection.entry.emulator.path
        assert values[constants.TOKEN_URL_ENV] == f"http://host.docker.internal:{port}{path}"
        assert values[constants.SECRET_ID_ENV] == f"token-vending/local/{route}"
        assert values[constants.CONNECTION_NAME_ENV] == route
        assert values["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == LOCAL_AWS
        # as deployed by default: the profile's client authentication, no KMS key (set them to try the others)
        for name, parameter in ((constants.CLIENT_AUTH_ENV, "ClientAuth"), (constants.SIGNING_KEY_ID_ENV,
                                                                            "SigningKeyArn")):
            assert function_env(template, connection.function)[name] == {"Ref": f"{key}{parameter}"}
            assert values[name] == template["Parameters"][f"{key}{parameter}"]["Default"] == "", (route, name)
        # the provider's own settings as deployed with the defaults (its URL aside)
        deployed = environment(template, connection.function)
        own = {MAPPING_COLUMNS[column] for column in (*SETTING_COLUMNS, "ClientAuth", "SigningKeyArn")
               if column != "TokenUrl"}
        assert {k: v for k, v in values.items() if k in own} == {k: v for k, v in deployed.items() if k in own}
        assert constants.TOKEN_LIFETIME_ENV not in values
    api = env_file[TOKEN_API]
    assert api["AWS_ENDPOINT_URL_LAMBDA"] == "http://host.docker.internal:3001"
    # the connection table stands in for FUNCTION_<Key> (sam local does not expand that loop): the same
    # connections and lifetimes as deployed, each served by its function's local name
    local = ApiSettings.from_env(api).providers
    deployed_api = ApiSettings.from_env(environment(template, TOKEN_API)).providers
    assert list(local) == list(deployed_api) == list(CONNECTIONS)
    for route, entry in local.items():
        assert entry.function == CONNECTIONS[route].function
        expected = deployed_api[route]
        assert entry.takes_scope == expected.takes_scope, route
        assert entry.lifetime == expected.lifetime, (
            f"{route}: under sam local the token API bounds min_ttl by a {entry.lifetime} s lifetime, deployed "
            f"by the catalogue's {expected.lifetime} s (env.json's PROVIDERS entry has no lifetime)")


# --- operations: alarms, dashboard, example state machine -----------------------------------------
def test_alarms_watch_metrics_the_code_emits(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    per_function = {f"{function}{metric}Alarm" for function in ALL_FUNCTIONS for metric in ("Errors", "Throttles")}
    assert {"UpstreamFailuresAlarm", "StaleServesAlarm", "RefreshAheadFailuresAlarm", "ApiServerErrorsAlarm",
            "ClientCertificateExpiryAlarm", "UpstreamBudgetAlarm"} | per_function <= set(alarms)
    emitted = emitted_metric_names()
    names = set(CONNECTIONS)
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
        assert props["AlarmActions"] == notify
        assert props["OKActions"] == notify
        for query in props.get("Metrics", []):
            if is_metrics_insights(query.get("Expression", "")):
                # one query over every connection: the metric the code emits, the dimensions EMF writes, and no
                # WHERE that would leave a connection out
                insights = metrics_insights(query["Expression"])
                assert insights["metric"] in emitted, f"{name}: {insights['metric']} is never emitted"
                assert insights["namespace"] == "TokenVending", name
                assert sorted(insights["schema"]) == ["connection", "service"], name
                assert "connection" not in insights["where"], f"{name} leaves connections out"
        stats = [metric["MetricStat"]["Metric"] for metric in props.get("Metrics", []) if "MetricStat" in metric]
        for metric in stats:
            if metric["Namespace"] == "TokenVending":
                assert metric["MetricName"] in emitted, f"{name}: {metric['MetricName']} is never emitted"
        custom = [metric for metric in stats if metric["Namespace"] == "TokenVending"]
        if custom:  # one series per connection, with the dimensions EMF writes
            assert {dict((d["Name"], d["Value"]) for d in m["Dimensions"])["connection"] for m in custom} == names
            assert all({d["Name"] for d in m["Dimensions"]} == {"connection", "service"} for m in custom)


def test_every_function_has_its_own_errors_and_throttles_alarms(template: dict[str, Any]) -> None:
    """Lambda's metrics have only the function name as dimension: one alarm per function and metric, the
    connections' functions' from the loop, and no Lambda alarm on anything else."""
    check_function_alarms(template, ALL_FUNCTIONS)


def check_function_alarms(template: dict[str, Any], functions: list[str]) -> None:
    """test_every_function_has_its_own_errors_and_throttles_alarms for these functions (test_connections.py)."""
    lambda_alarms = {name: alarm["Properties"] for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items()
                     if alarm["Properties"].get("Namespace") == "AWS/Lambda"}
    expected = {}
    for function in functions:
        for metric, threshold in (("Errors", 5), ("Throttles", 1)):
            expected[f"{function}{metric}Alarm"] = (function, metric, threshold)
    assert set(lambda_alarms) == set(expected)
    for name, (function, metric, threshold) in expected.items():
        props = lambda_alarms[name]
        assert props["MetricName"] == metric
        assert props["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}], name
        assert (props["Statistic"], props["Period"], props["EvaluationPeriods"]) == ("Sum", 300, 1)
        assert Evaluator(template)(props["Threshold"]) == str(threshold)
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert props["TreatMissingData"] == "notBreaching"
        description = Evaluator(template)(props["AlarmDescription"])
        assert description.startswith(f"{function} recorded {metric} at least {threshold} times"), description


def test_client_certificate_expiry_alarm(template: dict[str, Any]) -> None:
    """Fires while any provider's client certificate has fewer days left than the functions warn at, whatever
    the providers (one Metrics Insights query, no list to keep up to date), and only then."""
    props = template["Resources"]["ClientCertificateExpiryAlarm"]["Properties"]
    assert "ClientCertificateDaysLeft" in emitted_metric_names(), (
        "the layer (layers/token_vending/token_vending/) emits no ClientCertificateDaysLeft metric"
    )
    (query,) = props["Metrics"]
    insights = metrics_insights(query["Expression"])
    assert (insights["function"], insights["metric"]) == ("MIN", "ClientCertificateDaysLeft")
    assert not insights["where"]
    assert not insights["group_by"], "one aggregated series: the fewest days of any provider"
    assert query["ReturnData"] is True
    assert props["ComparisonOperator"] == "LessThanThreshold"
    assert props["Threshold"] == CERTIFICATE_WARNING_DAYS == 21
    # providers without a certificate emit nothing: no data is not a reason to alarm
    assert props["TreatMissingData"] == "notBreaching"
    # CloudWatch evaluates a Metrics Insights alarm over the last 3 hours at most, in whole minutes
    period = query["Period"]
    assert period % 60 == 0
    assert period * props["EvaluationPeriods"] <= 3 * 3600
    assert props["DatapointsToAlarm"] == 1
    # every period holds a data point while refresh ahead runs (each run reports the certificate)
    longest_interval = max(int(v) for v in template["Parameters"]["RefreshAheadIntervalMinutes"]["AllowedValues"])
    assert period >= longest_interval * 60
    assert "Namespace" not in props
    assert "MetricName" not in props


def test_example_state_machine(template: dict[str, Any]) -> None:
    """The example invokes the Pyng connection's function: Connections must list Pyng (a rule says so before any
    change, as CloudFormation refuses a reference to an undeclared resource even under a false condition)."""
    assert not Evaluator(template).rules_hold()
    without_pyng = ",".join(key for key in DEFAULT_KEYS if key != "Pyng")
    assert Evaluator(template, {"Connections": without_pyng}).rules_hold() == [
        "Connections must list Pyng, whose function the example state machine (GetTokenStateMachine) invokes"]
    machine = template["Resources"]["GetTokenStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "statemachines/get_token.asl.json"
    assert machine["DefinitionSubstitutions"]["TokenFunctionArn"] == {"Fn::GetAtt": ["PyngFunction", "Arn"]}
    assert machine["Logging"]["IncludeExecutionData"] is False  # task results hold the token
    role = template["Resources"]["GetTokenStateMachineRole"]["Properties"]
    [invoke] = [statement for policy in role["Policies"] for statement in policy["PolicyDocument"]["Statement"]
                if statement["Action"] == "lambda:InvokeFunction"]
    assert invoke["Resource"] == {"Fn::GetAtt": ["PyngFunction", "Arn"]}
