"""Connections added by configuration: template.yaml expanded with seven connections, checked as the five are.

``Connections`` lists the connections a stack deploys. With the five defaults and two added ones (``AriaAu``: a
second Aria, its AUS region in its secret; ``PyngOrg2``: a second Pyng partner), every connection gets what each
of the five has (function, role, secret, cache partition, renewal queue, log group, invoke policy, schedule, two
alarms, outputs), and least privilege holds between all seven: each function reads only its own secret, its own
partition (LeadingKeys: its own name), its own queue, writes its own log group; an added connection signs (if it
uses private_key_jwt) with the keys of this stack's account and Region that carry its alias
``alias/<stack>/<Key>``. The token API may invoke each connection's function and nothing else. cfn-lint runs on
the expanded template and SAM translates it, as for the five.

And the names: ``Connections``' pattern names exactly the catalogue's keys, a connection's name follows the
layer's rule, the rules refuse what CloudFormation would deploy broken.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from local.template import expanded_template
from tests.template.cfn import (
    ACCOUNT_ID,
    ADDED_KEYS,
    CATALOGUE,
    CFN_LINT,
    DEFAULT_KEYS,
    EXPANDED_LINT_IGNORES,
    REGION,
    SEVEN,
    SEVEN_KEYS,
    TEMPLATE,
    TOKEN_API,
    TOOLS_PYTHON,
    Evaluator,
    as_list,
    connection_name,
    connections,
    environment,
    expanded_with,
    fetch_settings,
    java_like_fullmatch,
    provider_functions,
    provider_of,
    raw_template,
    require_tool,
    resources,
    run,
    translate_with,
    without_cfn_lint_ignores,
)
from tests.template.test_parameter_grants import allowed, sign_context
from tests.template.test_template import (
    check_connection_environment,
    check_connection_resources,
    check_connection_secret,
    check_env_var_names,
    check_function_alarms,
    check_token_api_connections,
)
from token_vending import constants
from token_vending.assertion import KMS_ALGORITHMS
from token_vending.budget import default_budget
from token_vending.exceptions import Misconfigured
from token_vending.settings import ProviderSettings

if TYPE_CHECKING:
    from pathlib import Path

STACK = "token-vending"
"""The stack name the evaluator gives (``AWS::StackName``)."""
TABLE_ARN = "arn:aws:CacheTable:Arn"
PER_CONNECTION = ("Secret", "Function", "FunctionRole", "RenewalQueue", "FunctionLogsPolicy", "FunctionLogGroup",
                  "FunctionInvokePolicy", "FunctionErrorsAlarm", "FunctionThrottlesAlarm")
"""What the loops make for each connection (SAM adds its schedule, role, event source mapping, permissions)."""
OTHER_ACCOUNT = "210987654321"


@pytest.fixture(scope="module")
def seven() -> dict[str, Any]:
    return expanded_with(SEVEN_KEYS)


@pytest.fixture(scope="module")
def translated_seven() -> dict[str, Any]:
    return translate_with(SEVEN_KEYS)


# --- names ---------------------------------------------------------------------------------------------------
def test_the_connections_pattern_names_the_catalogues_keys() -> None:
    """A connection key starts with a catalogue key: the pattern's alternation is the catalogue's keys (the
    generic OAuth2 entry's among them), so a provider added to the catalogue is deployable with a label, and no
    key is offered that the layer cannot find a provider for. UpstreamBudgets names connections the same way."""
    parameters = raw_template()["Parameters"]
    pattern = parameters["Connections"]["AllowedPattern"]
    keys = [entry.key for entry in CATALOGUE]
    defaults, providers = re.fullmatch(r"\^\(([A-Za-z0-9|]+)\|\(([A-Za-z0-9|]+)\)\[A-Za-z0-9\]\{1,40\}\)\$",
                                       pattern).groups()  # type: ignore[union-attr]
    assert defaults.split("|") == list(DEFAULT_KEYS)
    assert providers.split("|") == keys
    assert pattern == f"^({'|'.join(DEFAULT_KEYS)}|({'|'.join(keys)})[A-Za-z0-9]{{1,40}})$"
    assert all(key in parameters["Connections"]["ConstraintDescription"] for key in DEFAULT_KEYS)
    # a name: a default connection's route, or an added connection's key (a catalogue key and a label)
    name = f"({'|'.join(connection_name(key) for key in DEFAULT_KEYS)}|({'|'.join(keys)})[A-Za-z0-9]{{1,40}})"
    pair = f"{name}=[1-9][0-9]{{0,6}}"
    assert parameters["UpstreamBudgets"]["AllowedPattern"] == f"^({pair}(,{pair})*)?$"


def test_connection_names_follow_the_layers_rule() -> None:
    """The tests' key -> name and key -> provider rules are the layer's (catalogue.connection_name and
    catalogue.connection): the five keep their routes, any other key is its own name and belongs to the
    catalogue entry whose key is its longest prefix."""
    from token_vending import catalogue

    assert tuple(catalogue.DEFAULT_CONNECTIONS) == DEFAULT_KEYS
    for key in (*SEVEN_KEYS, "OAuth2Acme", "AutopaySandbox", "AlternativePaymentsEu", "Aria2"):
        name = connection_name(key)
        assert name == catalogue.connection_name(key), key
        profile = catalogue.connection(name)
        assert profile is not None, key
        assert (profile.name, profile.provider) == (name, provider_of(key).name), key
    assert [connection_name(key) for key in DEFAULT_KEYS] == [
        "invoice-cloud", "pyng", "aria", "autopay", "alternative-payments"]
    assert SEVEN["AriaAu"].entry.name == "aria"
    assert SEVEN["PyngOrg2"].entry.name == "pyng"


ACCEPTED = [*SEVEN_KEYS, "OAuth2Acme", "AutopaySandbox", "Aria2", "Pyng" + "x" * 40]
REFUSED = ["", "OAuth2", "pyng", "aria-au", "Paypal", "Aria-Au", "Aria Au", "AriaAu_1", " AriaAu", "Pyng" + "x" * 41,
           "oauth2Acme", "Oauth2Acme"]


def test_the_connections_pattern_takes_keys_only() -> None:
    """Each item: a catalogue key and at most 40 letters or digits (a logical ID part: CloudFormation's loops
    need it alphanumeric); the local expansion refuses what CloudFormation refuses."""
    pattern = raw_template()["Parameters"]["Connections"]["AllowedPattern"]
    for key in ACCEPTED:
        assert java_like_fullmatch(pattern, key), key
    for key in REFUSED:
        assert not java_like_fullmatch(pattern, key), key
        if key != key.strip():  # the expansion strips the spaces around an item, as SAM CLI's does
            continue
        with pytest.raises(ValueError, match="AllowedPattern"):
            expanded_template(TEMPLATE, {"Connections": f"Pyng,{key}"})


def test_the_rules_refuse_what_would_deploy_broken() -> None:
    """The example state machine needs the Pyng connection's function (CloudFormation refuses a reference to a
    resource the template does not declare). A catalogue key alone outside the five (the generic OAuth2's) is
    refused by the pattern (test above): it has no parameters, and needs a label to be named."""
    template = expanded_with(SEVEN_KEYS)
    assert not Evaluator(template).rules_hold()
    assert not Evaluator(template, {"Connections": "Pyng,OAuth2Acme"}).rules_hold()
    assert Evaluator(template, {"Connections": "Aria,AriaAu"}).rules_hold() == [
        "Connections must list Pyng, whose function the example state machine (GetTokenStateMachine) invokes"]


def test_a_duplicate_key_is_refused() -> None:
    """Two items with one key would make one logical ID twice: the expansion refuses it, as CloudFormation does."""
    with pytest.raises(ValueError, match="twice"):
        expanded_template(TEMPLATE, {"Connections": "Pyng,AriaAu,AriaAu"})


# --- the seven, as the five --------------------------------------------------------------------------------------
def test_the_loops_make_every_connections_resources(seven: dict[str, Any]) -> None:
    """Each of the seven gets the five's set of resources and nothing is shared between them; the stack's own
    resources are those of the default stack."""
    assert provider_functions(seven) == {name: connection.function for name, connection in SEVEN.items()}
    default = expanded_with(DEFAULT_KEYS)
    added = set(seven["Resources"]) - set(default["Resources"])
    assert added == {f"{key}{kind}" for key in ADDED_KEYS for kind in PER_CONNECTION}
    assert set(default["Resources"]) <= set(seven["Resources"])


@pytest.mark.parametrize("name", list(SEVEN))
def test_each_of_seven_connections_has_its_own_resources(seven: dict[str, Any], name: str) -> None:
    connection = SEVEN[name]
    check_connection_resources(seven, connection)
    check_connection_environment(seven, connection)
    check_connection_secret(seven, connection)


def test_seven_connections_environments_and_the_token_api(seven: dict[str, Any]) -> None:
    check_env_var_names(seven, SEVEN)
    check_token_api_connections(seven, SEVEN)


def test_seven_connections_alarms_and_outputs(seven: dict[str, Any]) -> None:
    """Two Lambda alarms per function (the token API's and each connection's), and each connection's two
    outputs: its function and the secret in use."""
    check_function_alarms(seven, [TOKEN_API, *(connection.function for connection in SEVEN.values())])
    outputs = seven["Outputs"]
    for connection in SEVEN.values():
        assert {f"{connection.function}Arn", f"{connection.key}SecretArn"} <= set(outputs)
    assert len([name for name in outputs if name.endswith(("FunctionArn", "SecretArn"))]) == 2 * len(SEVEN) + 1


def test_cfn_lint_on_seven_connections(seven: dict[str, Any], tmp_path: Path) -> None:
    """Every check (but EXPANDED_LINT_IGNORES') on the template expanded with seven connections. Its only
    findings: W8003 on an added connection's three conditions, which compare AWS::StackName with itself by design
    (no DefaultConnections row: the pseudo-parameter fallback makes them constant for that connection)."""
    path = tmp_path / "seven.json"
    path.write_text(json.dumps(without_cfn_lint_ignores(seven), indent=1))
    result = run([require_tool(CFN_LINT), "--format", "json", "--ignore-checks", *EXPANDED_LINT_IGNORES, "--", path])
    findings = json.loads(result.stdout or "[]")
    unexpected = [finding for finding in findings if not (
        finding["Rule"]["Id"] == "W8003" and finding["Location"]["Path"][0] == "Conditions"
        and finding["Location"]["Path"][1] in {f"{kind}{key}{suffix}" for key in ADDED_KEYS for kind, suffix in
                                               (("IsDefault", ""), ("Create", "Secret"), ("Has", "SigningKey"))})]
    assert not unexpected, json.dumps(unexpected, indent=1)
    assert {finding["Location"]["Path"][1] for finding in findings} == {
        f"{kind}{key}{suffix}" for key in ADDED_KEYS
        for kind, suffix in (("IsDefault", ""), ("Create", "Secret"), ("Has", "SigningKey"))}


def test_sam_translates_seven_connections(translated_seven: dict[str, Any]) -> None:
    """SAM makes for each connection what it makes for each of the five: its function, its schedule and the
    schedule's role (invoking that function alone), its renewal queue's event source mapping, and no role of its own."""
    functions = resources(translated_seven, "AWS::Lambda::Function")
    assert set(functions) == {TOKEN_API, *(connection.function for connection in SEVEN.values())}
    schedules = resources(translated_seven, "AWS::Scheduler::Schedule")
    assert set(schedules) == {f"{connection.function}RefreshAhead" for connection in SEVEN.values()}
    mappings = resources(translated_seven, "AWS::Lambda::EventSourceMapping")
    assert {m["Properties"]["FunctionName"]["Ref"]: m["Properties"]["EventSourceArn"] for m in mappings.values()} == {
        c.function: {"Fn::GetAtt": [f"{c.key}RenewalQueue", "Arn"]} for c in SEVEN.values()}
    generated = {name for name in resources(translated_seven, "AWS::IAM::Role") if name not in expanded_with(
        SEVEN_KEYS)["Resources"]}
    assert generated == {f"{connection.function}RefreshAheadRole" for connection in SEVEN.values()}
    for connection in SEVEN.values():
        function = functions[connection.function]["Properties"]
        assert function["Role"] == {"Fn::GetAtt": [f"{connection.function}Role", "Arn"]}


# SAM CLI's own implementation of AWS::LanguageExtensions (sam build and sam validate expand with it).
_SAM_CLI_EXPANSION = r"""
import json, sys
from samcli.lib.cfn_language_extensions.api import process_template
from samtranslator.yaml_helper import yaml_parse
out = process_template(yaml_parse(open(sys.argv[1]).read()), parameter_values={"Connections": sys.argv[2]})
print(json.dumps(out))
"""


def test_sam_clis_expansion_agrees(seven: dict[str, Any]) -> None:
    """AWS's own implementation of the transform (SAM CLI's) makes the same resources, conditions and outputs of
    the seven, and names each function's connection, partition and secret as local.template's expansion does:
    the identifier is substituted in the mapping lookups' DefaultValue, an added connection's secret is its own."""
    result = run([require_tool(TOOLS_PYTHON), "-c", _SAM_CLI_EXPANSION, TEMPLATE, ",".join(SEVEN_KEYS)])
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    assert set(theirs["Resources"]) == set(seven["Resources"])
    assert set(theirs["Conditions"]) == set(seven["Conditions"])
    assert set(theirs["Outputs"]) == set(seven["Outputs"])
    for name, connection in SEVEN.items():
        variables = theirs["Resources"][connection.function]["Properties"]["Environment"]["Variables"]
        assert variables[constants.CONNECTION_NAME_ENV] == name
        (policy,) = theirs["Resources"][f"{connection.function}Role"]["Properties"]["Policies"]
        (partition,) = [s for s in policy["PolicyDocument"]["Statement"] if s.get("Sid") == "OwnCachePartition"]
        assert partition["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == [name]
        if not connection.default:  # SAM CLI decides the condition: always the stack's placeholder
            assert variables[constants.SECRET_ID_ENV] == {"Ref": f"{connection.key}Secret"}
            unset = {constants.TOKEN_URL_ENV, constants.CLIENT_AUTH_ENV, constants.SIGNING_KEY_ID_ENV}
            assert not set(variables) & unset


# --- least privilege between the seven ---------------------------------------------------------------------------
def _grants(translated: dict[str, Any], overrides: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Role -> every statement it is given (its own policies and those attached to it), evaluated."""
    evaluate = Evaluator(translated, overrides)
    granted: dict[str, list[dict[str, Any]]] = {}
    for name, resource in translated["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                granted.setdefault(name, []).extend(evaluate(policy["PolicyDocument"])["Statement"])
        elif resource["Type"] == "AWS::IAM::RolePolicy":
            granted.setdefault(props["RoleName"]["Ref"], []).extend(evaluate(props["PolicyDocument"])["Statement"])
        else:
            assert resource["Type"] not in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}, name
    return granted


def _on(statements: list[dict[str, Any]], service: str) -> list[tuple[str, str, str]]:
    """(action, resource, condition) of every grant of one service's actions."""
    return [(action, resource, json.dumps(statement.get("Condition", {}), sort_keys=True))
            for statement in statements for action in as_list(statement["Action"]) if action.startswith(service)
            for resource in as_list(statement["Resource"])]


def alias_statements(key: str) -> list[dict[str, Any]]:
    """What an added connection may do with KMS: sign with (and read the public key of) the keys of this stack's
    account and Region that carry its alias alias/<stack>/<Key>, in the layer's algorithms."""
    keys = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/*"
    carries = {"ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/{STACK}/{key}"}}
    return [
        {"Sid": "SignWithConnectionAlias", "Effect": "Allow", "Action": "kms:Sign", "Resource": keys,
         "Condition": {**carries, "StringEquals": {"kms:SigningAlgorithm": list(KMS_ALGORITHMS.values()),
                                                   "kms:MessageType": "RAW"}}},
        {"Sid": "ReadConnectionAliasPublicKey", "Effect": "Allow", "Action": "kms:GetPublicKey", "Resource": keys,
         "Condition": carries},
    ]


@pytest.mark.parametrize("name", list(SEVEN))
def test_each_of_seven_roles_reaches_only_its_own(translated_seven: dict[str, Any], name: str) -> None:
    """A connection's role, over everything SAM would deploy: its own secret, its own partition (LeadingKeys: its
    own name), its own queue, its own log group; KMS only for an added connection, through its own alias; X-Ray.
    Nothing else, and nobody else's."""
    connection = SEVEN[name]
    key, role = connection.key, f"{connection.function}Role"
    statements = _grants(translated_seven)[role]
    assert _on(statements, "secretsmanager:") == [
        ("secretsmanager:GetSecretValue", f"{key}Secret-physical-id", "{}")]
    partition = json.dumps({"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [name]}}, sort_keys=True)
    assert _on(statements, "dynamodb:") == [
        (action, TABLE_ARN, partition) for action in
        ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query")]
    assert {resource for _, resource, _ in _on(statements, "sqs:")} == {f"arn:aws:{key}RenewalQueue:Arn"}
    assert {resource for _, resource, _ in _on(statements, "logs:")} == {f"arn:aws:{connection.function}LogGroup:Arn"}
    kms = [statement for statement in statements if any(a.startswith("kms:") for a in as_list(statement["Action"]))]
    assert kms == ([] if connection.default else alias_statements(key))
    services = {action.split(":")[0] for statement in statements for action in as_list(statement["Action"])}
    assert services == {"secretsmanager", "dynamodb", "sqs", "logs", "xray"} | ({"kms"} if kms else set())


def test_with_seven_only_the_token_api_invokes_them_and_each_schedule_its_own(
        translated_seven: dict[str, Any]) -> None:
    """lambda:InvokeFunction: the token API on each connection's function (one policy per connection), each
    schedule's role on its own function, the example state machine on the Pyng connection's; no one else."""
    granted = _grants(translated_seven)
    invokes = {role: sorted(resource for action, resource, _ in _on(statements, "lambda:"))
               for role, statements in granted.items() if _on(statements, "lambda:")}
    expected = {f"{TOKEN_API}Role": sorted(f"arn:aws:{c.function}:Arn" for c in SEVEN.values()),
                "GetTokenStateMachineRole": ["arn:aws:PyngFunction:Arn"]}
    expected |= {f"{c.function}RefreshAheadRole": [f"arn:aws:{c.function}:Arn"] for c in SEVEN.values()}
    assert invokes == expected
    attached = {name for name, policy in resources(translated_seven, "AWS::IAM::RolePolicy").items()
                if policy["Properties"]["RoleName"] == {"Ref": f"{TOKEN_API}Role"}}
    assert attached == {f"{TOKEN_API}LogsPolicy", *(f"{c.function}InvokePolicy" for c in SEVEN.values())}


@pytest.mark.parametrize("key", ADDED_KEYS)
def test_an_added_connection_signs_with_the_keys_its_alias_names(translated_seven: dict[str, Any], key: str) -> None:
    """Replayed against the calls the function makes (test_parameter_grants.py's IAM replay): kms:GetPublicKey
    with the alias alias/<stack>/<Key>, then kms:Sign with the key KMS answered, authorised by the alias the key
    carries. Not a key carrying another connection's alias, nor one of another account or Region that carries an
    alias of the same name; the default connections get no KMS grant without <Key>SigningKeyArn."""
    granted = _grants(translated_seven)
    statements = granted[f"{key}FunctionRole"]
    alias = f"alias/{STACK}/{key}"
    mine = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{uuid.uuid4()}"
    assert allowed(statements, "kms:GetPublicKey", mine, {"kms:RequestAlias": alias, "kms:ResourceAliases": [alias]})
    for algorithm in KMS_ALGORITHMS.values():
        assert allowed(statements, "kms:Sign", mine, sign_context([alias, "alias/other"], algorithm)), algorithm
    assert not allowed(statements, "kms:Sign", mine, sign_context([alias], "RSASSA_PKCS1_V1_5_SHA_512"))
    other = next(added for added in ADDED_KEYS if added != key)
    assert not allowed(statements, "kms:Sign", mine, sign_context([f"alias/{STACK}/{other}"]))
    assert not allowed(statements, "kms:GetPublicKey", mine, {"kms:ResourceAliases": [f"alias/{STACK}/{other}"]})
    assert not allowed(statements, "kms:Sign", mine, sign_context([f"alias/other-stack/{key}"]))
    elsewhere = [f"arn:aws:kms:{REGION}:{OTHER_ACCOUNT}:key/{uuid.uuid4()}",
                 f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}:key/{uuid.uuid4()}"]
    for arn in elsewhere:
        assert not allowed(statements, "kms:Sign", arn, sign_context([alias])), arn
        assert not allowed(statements, "kms:GetPublicKey", arn, {"kms:ResourceAliases": [alias]}), arn
    # nobody else may use this alias's keys
    for role, others in granted.items():
        if role != f"{key}FunctionRole":
            assert not allowed(others, "kms:Sign", mine, sign_context([alias])), role


def test_the_default_connections_keep_their_key_parameters(translated_seven: dict[str, Any]) -> None:
    """Next to added connections, a default connection's KMS grant is still its <Key>SigningKeyArn's alone."""
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1a5b2c3d-0000-4000-8000-000000000001"
    granted = _grants(translated_seven, {"PyngClientAuth": "private_key_jwt", "PyngSigningKeyArn": arn})
    with_kms = {role for role, statements in granted.items() if _on(statements, "kms:")}
    assert with_kms == {"PyngFunctionRole", *(f"{key}FunctionRole" for key in ADDED_KEYS)}
    assert {resource for _, resource, _ in _on(granted["PyngFunctionRole"], "kms:")} == {
        arn, f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/*"}


# --- what the layer makes of an added connection -----------------------------------------------------------------
def test_an_added_connections_settings_are_its_secrets(seven: dict[str, Any]) -> None:
    """An added connection's function has no parameter of its own: the layer resolves its settings from its
    secret's fields (AriaAu: the AUS region's documented endpoint; PyngOrg2: its partner's URL and scopes), its
    budget from UpstreamBudgets by its name, and refuses to fetch without a token URL."""
    aria_au, pyng_org2 = SEVEN["AriaAu"], SEVEN["PyngOrg2"]
    env = environment(seven, aria_au.function)
    secret = {"region": "AUS", "stage": "Prod"}
    assert fetch_settings(aria_au, env, secret).token_url == aria_au.entry.endpoints["AUS/Prod"]
    env = environment(seven, pyng_org2.function)
    scopes = "billing:customers:read billing:batches:read"
    settings = fetch_settings(pyng_org2, env, {"token_url": "https://org2.pyng.example/billing/oauth2/token",
                                               "scopes": scopes})
    assert settings.token_url == "https://org2.pyng.example/billing/oauth2/token"
    assert settings.default_scopes == settings.allowed_scopes == frozenset(scopes.split())
    with pytest.raises(Misconfigured, match="token_url"):
        fetch_settings(pyng_org2, env, {"scopes": scopes})
    budgets = {"UpstreamBudgets": "AriaAu=30,pyng=200"}
    for connection, budget in ((aria_au, 30), (SEVEN["pyng"], 200), (SEVEN["aria"], None)):
        deployed = environment(seven, connection.function, budgets)
        assert deployed[constants.UPSTREAM_BUDGETS_ENV] == budgets["UpstreamBudgets"]
        settings = ProviderSettings.from_env(connection.name, deployed, profile=connection.entry)
        assert settings.upstream_budget == (budget or default_budget(connection.lifetime)), connection.name


def test_connections_of_any_provider_in_any_order() -> None:
    """The loops take any keys the pattern allows, in any order (a stack without Pyng is refused by its rule, not
    by the template): three OAuth2 connections and one Autopay, each named by its key."""
    keys = ("OAuth2Acme", "Pyng", "OAuth2Billing", "AutopaySandbox", "OAuth2X")
    template = expanded_with(keys)
    assert provider_functions(template) == {connection_name(key): f"{key}Function" for key in keys}
    for connection in connections(keys).values():
        check_connection_resources(template, connection)
        check_connection_environment(template, connection)
