"""The loops deploy what the copies deployed, but for changes made on purpose, each one listed here.

``golden/before-the-loops.json`` holds what template.yaml declared before its ``Fn::ForEach`` loops (commit
0241085): the five providers' resources, outputs and conditions, the token API's resources and the names of
every resource, output and parameter. The expanded template is compared with it after the intended changes
below, each written as code that turns the old declaration into the new one: any other difference fails.

And nothing is replaced or orphaned by the change: every old logical ID is still there with its type (a
renamed one would be a new resource, its secret or log group deleted or left behind), each placeholder secret
keeps its Retain policies and its GenerateSecretString (a change there would generate a new value), every
old output and parameter still exists (stacks and scripts read them, samconfig.toml sets them).

``golden/before-connections.json`` says the same of the version before connections could be added (commit
c490cb3, the loops over the five providers): with the default ``Connections`` a stack updated from it keeps
every resource (logical ID, type, condition, deletion and replacement policies, its placeholder secrets'
generation), before and after SAM's transform, and gains or loses none; every output and parameter stays.
"""

from __future__ import annotations

import copy
import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from tests.template.cfn import CONNECTIONS, ROOT, TOKEN_API, load_template, translate

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.template.cfn import Connection

GOLDEN = json.loads((ROOT / "tests" / "template" / "golden" / "before-the-loops.json").read_text())
GOLDEN_KEYS = sorted(name.removesuffix("Secret") for name, resource in GOLDEN["Resources"].items()
                     if resource["Type"] == "AWS::SecretsManager::Secret")
BY_KEY = {connection.key: connection for connection in CONNECTIONS.values()}
PER_PROVIDER = ("Secret", "Function", "FunctionRole", "FunctionLogsPolicy", "FunctionLogGroup")
NO_VALUE = {"Ref": "AWS::NoValue"}
SIGNING_KEY_CLIENT_AUTH = "private_key_jwt"


def test_the_golden_file_holds_the_five_providers() -> None:
    assert set(GOLDEN_KEYS) == {"InvoiceCloud", "Pyng", "Aria", "Autopay", "AlternativePayments"}
    assert set(GOLDEN["Resources"]) == {f"{key}{kind}" for key in GOLDEN_KEYS for kind in PER_PROVIDER}
    assert set(GOLDEN_KEYS) <= set(BY_KEY), "a provider of the golden file left the catalogue"


# --- normalisation: the same value to CloudFormation, written either way (applied to both sides) --------------
def _normalised(node: Any) -> Any:
    """``Fn::Sub [text, {Name: "literal"}]`` is ``Fn::Sub text`` with the literal in place (and ``{Name: !Ref X}``
    is ``${X}`` in place), and a ``Fn::Sub`` with nothing left to substitute is its text: CloudFormation deploys
    the same string."""
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _normalised(value) for key, value in node.items()}
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], list):
        text, variables = node["Fn::Sub"]
        for name, value in variables.items():  # {Arn: !Ref X} is ${X} written in the text
            if isinstance(value, dict) and set(value) == {"Ref"} and isinstance(value["Ref"], str):
                text = text.replace(f"${{{name}}}", f"${{{value['Ref']}}}")
        variables = {name: value for name, value in variables.items()
                     if not (isinstance(value, dict) and set(value) == {"Ref"})}
        literal = {name: value for name, value in variables.items() if isinstance(value, str)}
        for name, value in literal.items():
            text = text.replace(f"${{{name}}}", value)
        rest = {name: value for name, value in variables.items() if name not in literal}
        node = {"Fn::Sub": [text, rest] if rest else text}
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str) and "${" not in node["Fn::Sub"]:
        return node["Fn::Sub"]
    return node


# --- the intended changes, each applied to the old (golden) side ------------------------------------------------
def one_code_folder(old: dict[str, Any], connection: Connection) -> None:
    """Every provider function deploys functions/provider/ (it reads its catalogue entry by PROVIDER_NAME)
    instead of a folder of its own."""
    function = old[f"{connection.key}Function"]["Properties"]
    assert function["CodeUri"] == f"functions/{connection.route.replace('-', '_')}/"
    function["CodeUri"] = "functions/provider/"


def generic_descriptions(old: dict[str, Any], connection: Connection) -> None:
    """The function's and the placeholder secret's descriptions are the loop's, naming the route (they were
    written per connection); the role's is the same text as before."""
    function = old[f"{connection.key}Function"]["Properties"]
    assert function["Description"].startswith("Fetches and caches ")
    function["Description"] = f"Fetches and caches {connection.route} access tokens."
    secret = old[f"{connection.key}Secret"]["Properties"]
    assert "replace client_id and client_secret" in secret["Description"]["Fn::Sub"]
    secret["Description"] = {"Fn::Sub": (
        f"{connection.route} OAuth client credentials for stack ${{AWS::StackName}} (placeholder): replace client_id "
        "and client_secret with the provider's (README, \"Configuration and secrets\").")}


def lifetime_from_the_catalogue(old: dict[str, Any], connection: Connection) -> None:
    """TOKEN_LIFETIME is no longer set: the function takes its catalogue entry's, the very same number."""
    variables = old[f"{connection.key}Function"]["Properties"]["Environment"]["Variables"]
    assert variables.pop("TOKEN_LIFETIME") == str(connection.lifetime), "the documented lifetime changed"


def aria_endpoint_chosen_by_the_function(old: dict[str, Any], connection: Connection) -> None:
    """Aria's 12 endpoints moved from the AriaTokenEndpoints mapping to its catalogue entry: the function gets
    AriaRegion and AriaStage as REGION and STAGE, and no TOKEN_URL."""
    variables = old[f"{connection.key}Function"]["Properties"]["Environment"]["Variables"]
    if connection.route != "aria":
        return
    assert variables["TOKEN_URL"] == {
        "Fn::FindInMap": ["AriaTokenEndpoints", {"Ref": "AriaRegion"}, {"Ref": "AriaStage"}]
    }
    variables |= {"TOKEN_URL": NO_VALUE, "REGION": {"Ref": "AriaRegion"}, "STAGE": {"Ref": "AriaStage"}}


def unset_settings_have_no_value(old: dict[str, Any], connection: Connection) -> None:
    """A setting the provider does not have was empty (or missing); it is now AWS::NoValue (the loop writes
    every setting and the Providers row says which the provider has): absent, which the layer reads as empty."""
    variables = old[f"{connection.key}Function"]["Properties"]["Environment"]["Variables"]
    for name in ("TOKEN_URL", "REGION", "STAGE", "ALLOWED_SCOPES", "DEFAULT_SCOPES", "AUDIENCE"):
        if variables.get(name, "") in ("", NO_VALUE):
            variables[name] = NO_VALUE


def default_scopes_as_given(old: dict[str, Any], connection: Connection) -> None:
    """DEFAULT_SCOPES is the <Key>DefaultScopes parameter itself, not "all of <Key>Scopes when empty" worked
    out in the template: the layer reads an empty DEFAULT_SCOPES as all of ALLOWED_SCOPES."""
    variables = old[f"{connection.key}Function"]["Properties"]["Environment"]["Variables"]
    default = variables["DEFAULT_SCOPES"]
    if isinstance(default, dict) and "Fn::If" in default:
        condition, all_scopes, given = default["Fn::If"]
        assert (condition, all_scopes) == (f"{connection.key}DefaultScopesIsAll", {"Ref": f"{connection.key}Scopes"})
        variables["DEFAULT_SCOPES"] = given


def cfn_lint_metadata(old: dict[str, Any], connection: Connection) -> None:
    """cfn-lint cannot follow the loops' plain-string condition names and Globals: the looped resources switch
    off those checks (the template's Metadata says why; test_template.py lints the expanded template in full)."""
    ignored = {"Secret": ["E3015"], "Function": ["E1028", "W2533"], "FunctionRole": ["E1028"]}
    for kind, checks in ignored.items():
        metadata = old[f"{connection.key}{kind}"].setdefault("Metadata", {})
        metadata["cfn-lint"] = {"config": {"ignore_checks": checks}}


def output_descriptions(outputs: dict[str, Any], connection: Connection) -> None:
    """The outputs' descriptions are the loop's, naming the key (every provider function takes a scope)."""
    function, secret = outputs[f"{connection.key}FunctionArn"], outputs[f"{connection.key}SecretArn"]
    assert "token function (invoke directly with" in function["Description"]
    function["Description"] = (
        f'{connection.key} token function (invoke directly with {{"scope", "min_ttl", "force_refresh"}})')
    assert secret["Description"].startswith("Secret holding the ")
    secret["Description"] = (
        f"Secret holding the {connection.key} client credentials (fill it in if the stack created it)")


def renewal_timers(old: dict[str, Any], connection: Connection) -> None:
    """Per-token renewal timers (issue 10): the function is told its own queue (only with refresh ahead on: empty, it
    arms none) and the providers' hourly budgets, its queue invokes it (one message at a time, failures reported per
    message, on while refresh ahead is), and its role may send to and receive from that queue alone."""
    function = old[f"{connection.key}Function"]["Properties"]
    queue = f"{connection.key}RenewalQueue"
    function["Environment"]["Variables"] |= {
        "RENEWAL_QUEUE_URL": {"Fn::If": ["RefreshAheadEnabled", {"Ref": queue}, ""]},
        "UPSTREAM_BUDGETS": {"Ref": "UpstreamBudgets"},
    }
    assert list(function["Events"]) == ["RefreshAhead"]
    function["Events"]["Renewal"] = {"Type": "SQS", "Properties": {
        "Queue": {"Fn::GetAtt": [queue, "Arn"]}, "BatchSize": 1, "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "Enabled": {"Fn::If": ["RefreshAheadEnabled", True, False]}}}
    (policy,) = old[f"{connection.key}FunctionRole"]["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    (partition,) = [statement for statement in statements if statement.get("Sid") == "OwnCachePartition"]
    statements.insert(statements.index(partition) + 1, {
        "Sid": "OwnRenewalQueue", "Effect": "Allow",
        "Action": ["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
        "Resource": {"Fn::GetAtt": [queue, "Arn"]}})


def budget_and_use_marks_update_the_partition(old: dict[str, Any], connection: Connection) -> None:
    """dynamodb:UpdateItem joins the role's actions on its own partition (still dynamodb:LeadingKeys): the hourly
    budget's counter (ADD spent) and the scope sets' use marks (SET used_at)."""
    (policy,) = old[f"{connection.key}FunctionRole"]["Properties"]["Policies"]
    (partition,) = [s for s in policy["PolicyDocument"]["Statement"] if s.get("Sid") == "OwnCachePartition"]
    assert partition["Action"] == ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    partition["Action"].insert(2, "dynamodb:UpdateItem")


def signing_grants_follow_the_key(old: dict[str, Any], connection: Connection) -> None:
    """A KMS signing key's grants: kms:Sign also in ES384 and ES512 (the key's spec decides the algorithm), and
    an alias ARN grants the keys of the account and Region it names, not this stack's (an alias of another
    account or Region named this stack's alias of the same name)."""
    (policy,) = old[f"{connection.key}FunctionRole"]["Properties"]["Policies"]
    split = {"Fn::Split": [":", {"Fn::Sub": f"${{{connection.key}SigningKeyArn}}:::::"}]}
    named = [{"Fn::Select": [index, split]} for index in range(5)]
    changed = set()
    for statement in policy["PolicyDocument"]["Statement"]:
        grant = statement.get("Fn::If", [None, {}])[1]
        algorithms = grant.get("Condition", {}).get("StringEquals", {}).get("kms:SigningAlgorithm")
        if algorithms is not None:
            assert algorithms == ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256", "ECDSA_SHA_256"]
            algorithms += ["ECDSA_SHA_384", "ECDSA_SHA_512"]
            changed.add(f"{grant['Sid']} algorithms")
        if grant.get("Sid") in ("SignWithAliasedKey", "ReadAliasedPublicKey"):
            assert grant["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*"}
            grant["Resource"] = {"Fn::Join": [":", [*named, "key/*"]]}
            changed.add(f"{grant['Sid']} resource")
    assert changed == {"SignClientAssertions algorithms", "SignWithAliasedKey algorithms",
                       "SignWithAliasedKey resource", "ReadAliasedPublicKey resource"}


def connection_name_and_alias_grants(old: dict[str, Any], connection: Connection) -> None:
    """Connections (issue 20): the function is told CONNECTION_NAME instead of PROVIDER_NAME (the same value, the
    route), and its role gains the two statements an added connection signs with (the keys its alias
    alias/<stack>/<Key> names), which the five never have (IsDefault<Key> is true: AWS::NoValue)."""
    variables = old[f"{connection.key}Function"]["Properties"]["Environment"]["Variables"]
    variables["CONNECTION_NAME"] = variables.pop("PROVIDER_NAME")
    (policy,) = old[f"{connection.key}FunctionRole"]["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert statements[-1]["Sid"] == "XRayTraces"
    key_arn = {"Fn::Sub": "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*"}
    alias_name = {"Fn::Sub": f"alias/${{AWS::StackName}}/{connection.key}"}
    alias = {"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias_name}}
    algorithms = ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_256", "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512"]
    statements[-1:-1] = [
        {"Fn::If": [f"IsDefault{connection.key}", NO_VALUE, {
            "Sid": "SignWithConnectionAlias", "Effect": "Allow", "Action": "kms:Sign", "Resource": key_arn,
            "Condition": {**alias, "StringEquals": {"kms:SigningAlgorithm": algorithms, "kms:MessageType": "RAW"}}}]},
        {"Fn::If": [f"IsDefault{connection.key}", NO_VALUE, {
            "Sid": "ReadConnectionAliasPublicKey", "Effect": "Allow", "Action": "kms:GetPublicKey",
            "Resource": key_arn, "Condition": alias}]},
    ]


RESOURCE_CHANGES: list[Callable[[dict[str, Any], Connection], None]] = [
    one_code_folder,
    generic_descriptions,
    lifetime_from_the_catalogue,
    aria_endpoint_chosen_by_the_function,
    unset_settings_have_no_value,
    default_scopes_as_given,
    cfn_lint_metadata,
    renewal_timers,
    budget_and_use_marks_update_the_partition,
    signing_grants_follow_the_key,
    connection_name_and_alias_grants,
]


def shorter_checkov_comments(old: dict[str, Any], new: dict[str, Any]) -> None:
    """The checkov suppressions' reasons were shortened: the same checks, in the same order, on the same
    resources (test_security.py checks each is still needed and has a reason)."""
    for name, resource in old.items():
        skips = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
        now = new.get(name, {}).get("Metadata", {}).get("checkov", {}).get("skip", [])
        assert [skip["id"] for skip in skips] == [skip["id"] for skip in now], name
        for skip, shorter in zip(skips, now, strict=True):
            assert len(shorter["comment"].split()) >= 8, f"{name}: {shorter['id']} lost its reason"
            skip["comment"] = shorter["comment"]


# --- the providers' resources, conditions and outputs ----------------------------------------------------------
def _old_provider(key: str) -> dict[str, Any]:
    return {f"{key}{kind}": copy.deepcopy(GOLDEN["Resources"][f"{key}{kind}"]) for kind in PER_PROVIDER}


@pytest.mark.parametrize("key", GOLDEN_KEYS)
def test_provider_resources_are_the_old_ones_but_for_the_intended_changes(key: str) -> None:
    connection, template = BY_KEY[key], load_template()
    old = _old_provider(key)
    new = {name: template["Resources"][name] for name in old}
    for change in RESOURCE_CHANGES:
        change(old, connection)
    shorter_checkov_comments(old, new)
    for name in old:
        assert _normalised(new[name]) == _normalised(old[name]), f"{name} differs from the intended changes"


def conditions_tell_added_connections_apart(conditions: dict[str, Any], key: str) -> None:
    """Connections (issue 20): IsDefault<Key> tells a default connection (parameters of its own) from an added one,
    and Create<Key>Secret and Has<Key>SigningKey also hold for an added one as they must (its placeholder secret
    always, no key parameter never): where it has no parameter the reference is AWS::StackName, which no parameter
    value equals. For the five, the same truth values as before: <Key>SecretArn and <Key>SigningKeyArn are empty or
    ARNs, never the stack's name."""
    stack = {"Ref": "AWS::StackName"}
    secret, signing = {"Ref": f"{key}SecretArn"}, {"Ref": f"{key}SigningKeyArn"}
    assert conditions[f"Create{key}Secret"] == {"Fn::Equals": [secret, ""]}
    conditions[f"Create{key}Secret"] = {"Fn::Or": [{"Fn::Equals": [secret, ""]}, {"Fn::Equals": [secret, stack]}]}
    assert conditions[f"Has{key}SigningKey"] == {"Fn::Not": [{"Fn::Equals": [signing, ""]}]}
    conditions[f"Has{key}SigningKey"] = {
        "Fn::Not": [{"Fn::Or": [{"Fn::Equals": [signing, ""]}, {"Fn::Equals": [signing, stack]}]}]}
    conditions[f"IsDefault{key}"] = {"Fn::Not": [{"Fn::Equals": [secret, stack]}]}


@pytest.mark.parametrize("key", GOLDEN_KEYS)
def test_provider_conditions_and_outputs_are_the_old_ones_but_for_the_intended_changes(key: str) -> None:
    connection, template = BY_KEY[key], load_template()
    conditions = {name: copy.deepcopy(value) for name, value in GOLDEN["Conditions"].items() if key in name}
    assert set(conditions) == {f"Create{key}Secret", f"Has{key}SigningKey"}
    conditions_tell_added_connections_apart(conditions, key)
    assert {name: template["Conditions"][name] for name in conditions} == conditions
    outputs = {name: copy.deepcopy(value) for name, value in GOLDEN["Outputs"].items() if name.startswith(key)}
    assert set(outputs) == {f"{key}FunctionArn", f"{key}SecretArn"}
    output_descriptions(outputs, connection)
    assert {name: _normalised(template["Outputs"][name]) for name in outputs} == _normalised(outputs)


# --- the token API and the other shared resources -----------------------------------------------------------
def functions_named_one_by_one(old: dict[str, Any]) -> None:
    """The token API's PROVIDERS JSON (function, scopes, default scopes and lifetime per route) became
    FUNCTION_<Key> per provider, from a loop, and SCOPES_<Key>/DEFAULT_SCOPES_<Key> for a provider with scope
    parameters; the rest is the catalogue's (the same lifetimes). PROVIDERS stays declared, empty, for sam
    local's env.json."""
    variables = old[TOKEN_API]["Properties"]["Environment"]["Variables"]
    text, substitutions = variables["PROVIDERS"]["Fn::Sub"]
    table = json.loads(text)
    assert list(table) == [BY_KEY[key].route for key in BY_KEY if key in GOLDEN_KEYS]
    for route, entry in table.items():
        connection = CONNECTIONS[route]
        assert entry["function"] == f"${{{connection.function}}}"
        assert entry["lifetime"] == connection.lifetime, f"{route}: the documented lifetime changed"
        variables[f"FUNCTION_{connection.key}"] = {"Fn::Sub": entry["function"]}
        if entry["scopes"]:
            (scopes,) = re.fullmatch(r"\$\{(\w+)\}", entry["scopes"]).groups()  # type: ignore[union-attr]
            (default,) = re.fullmatch(r"\$\{(\w+)\}", entry["default_scopes"]).groups()  # type: ignore[union-attr]
            condition, all_scopes, given = substitutions[default]["Fn::If"]
            assert (condition, all_scopes) == (f"{connection.key}DefaultScopesIsAll", {"Ref": scopes})
            variables[f"SCOPES_{connection.key}"] = {"Ref": scopes}
            variables[f"DEFAULT_SCOPES_{connection.key}"] = given  # as given: empty means all
        else:
            assert entry["default_scopes"] == ""
    variables["PROVIDERS"] = ""


def invoke_permission_per_provider(old: dict[str, Any], template: dict[str, Any]) -> None:
    """The token API role's InvokeProviderFunctions statement moved to one <Key>FunctionInvokePolicy per
    provider (a loop cannot add statements to one policy): the same action on the same functions."""
    (policy,) = old[f"{TOKEN_API}Role"]["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    (moved,) = [statement for statement in statements if statement.get("Sid") == "InvokeProviderFunctions"]
    statements.remove(moved)
    assert moved["Action"] == "lambda:InvokeFunction"
    now = []
    for key in GOLDEN_KEYS:
        invoke = template["Resources"][f"{key}FunctionInvokePolicy"]["Properties"]
        assert invoke["RoleName"] == {"Ref": f"{TOKEN_API}Role"}
        (statement,) = invoke["PolicyDocument"]["Statement"]
        assert (statement["Effect"], statement["Action"]) == ("Allow", moved["Action"])
        now.append(statement["Resource"])
    assert sorted(map(json.dumps, now)) == sorted(map(json.dumps, moved["Resource"]))


def token_api_marks_use(old: dict[str, Any]) -> None:
    """The token API, read-only until issue 10, may make one write: SET used_at on a table item (dynamodb:Attributes
    limited to the key and used_at, no return values), marking a scope set in use; its role's description says so."""
    role = old[f"{TOKEN_API}Role"]["Properties"]
    before = "reads the cache, invokes the provider functions"
    after = "reads the cache, marks use, invokes the provider functions"
    assert role["Description"] == {"Fn::Sub": f"token API function of ${{AWS::StackName}}: {before}"}
    role["Description"] = {"Fn::Sub": f"token API function of ${{AWS::StackName}}: {after}"}
    (policy,) = role["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert statements[0]["Sid"] == "ReadCache"
    statements.insert(1, {
        "Sid": "MarkScopeSetUsed", "Effect": "Allow", "Action": "dynamodb:UpdateItem",
        "Resource": {"Fn::GetAtt": ["CacheTable", "Arn"]},
        "Condition": {"ForAllValues:StringEquals": {"dynamodb:Attributes": ["pk", "sk", "used_at"]},
                      "Null": {"dynamodb:Attributes": "false"},
                      "StringEquals": {"dynamodb:ReturnValues": "NONE"}}})


def token_api_knows_no_scopes(old: dict[str, Any]) -> None:
    """Connections (issue 20): the token API no longer knows any connection's scopes (no SCOPES_<Key>,
    DEFAULT_SCOPES_<Key>): it checks scope syntax, each connection's function checks its own scopes."""
    variables = old[TOKEN_API]["Properties"]["Environment"]["Variables"]
    for name in [name for name in variables if name.startswith(("SCOPES_", "DEFAULT_SCOPES_"))]:
        del variables[name]


def test_shared_resources_are_the_old_ones_but_for_the_intended_changes() -> None:
    template = load_template()
    old = copy.deepcopy(GOLDEN["SharedResources"])
    new = {name: copy.deepcopy(template["Resources"][name]) for name in old}
    functions_named_one_by_one(old)
    invoke_permission_per_provider(old, template)
    token_api_marks_use(old)
    token_api_knows_no_scopes(old)
    shorter_checkov_comments(old, new)
    for name in old:
        assert _normalised(new[name]) == _normalised(old[name]), f"{name} differs from the intended changes"


# --- nothing replaced, nothing orphaned ---------------------------------------------------------------------
def test_every_old_logical_id_is_still_there_with_its_type() -> None:
    template = load_template()
    for name, resource in {**GOLDEN["Resources"], **GOLDEN["SharedResources"]}.items():
        assert name in template["Resources"], f"{name} is gone: CloudFormation would delete it"
        assert template["Resources"][name]["Type"] == resource["Type"], f"{name} changed type: replaced"


@pytest.mark.parametrize("key", GOLDEN_KEYS)
def test_each_secret_is_kept_as_it_was(key: str) -> None:
    """Retained on deletion and replacement, under the same condition, generating the same way: no stack update
    deletes, replaces or regenerates a secret someone filled in."""
    old, new = GOLDEN["Resources"][f"{key}Secret"], load_template()["Resources"][f"{key}Secret"]
    assert new["DeletionPolicy"] == new["UpdateReplacePolicy"] == "Retain"
    assert (new["DeletionPolicy"], new["UpdateReplacePolicy"]) == (old["DeletionPolicy"], old["UpdateReplacePolicy"])
    assert new["Condition"] == old["Condition"] == f"Create{key}Secret"
    assert new["Properties"]["GenerateSecretString"] == old["Properties"]["GenerateSecretString"]
    assert new["Properties"]["KmsKeyId"] == old["Properties"]["KmsKeyId"]


def test_every_old_output_and_parameter_is_still_there() -> None:
    template = load_template()
    assert set(GOLDEN["AllOutputs"]) <= set(template["Outputs"]), set(GOLDEN["AllOutputs"]) - set(template["Outputs"])
    assert set(GOLDEN["Parameters"]) <= set(template["Parameters"]), (
        set(GOLDEN["Parameters"]) - set(template["Parameters"]))


def test_resources_removed_and_added_are_the_intended_ones() -> None:
    """Removed: the two alarms over every function's metrics (one Lambda alarm lists at most 10 metrics, and a
    loop cannot add to a list). Added: one Errors and one Throttles alarm per function, and the token API's
    permission to invoke each provider function as a policy of its own; since issue 10 each provider's renewal
    queue and the upstream budget's alarm."""
    now, before = set(load_template()["Resources"]), set(GOLDEN["AllResources"])
    assert before - now == {"FunctionErrorsAlarm", "FunctionThrottlesAlarm"}
    functions = ["TokenApi", *GOLDEN_KEYS]
    added = {f"{key}{kind}" for key in GOLDEN_KEYS for kind in ("FunctionInvokePolicy", "RenewalQueue")}
    added |= {f"{function}Function{metric}Alarm" for function in functions for metric in ("Errors", "Throttles")}
    added |= {"UpstreamBudgetAlarm"}
    for key in set(BY_KEY) - set(GOLDEN_KEYS):  # a provider the catalogue gained since: all of its own
        added |= {f"{key}{kind}" for kind in (*PER_PROVIDER, "FunctionInvokePolicy", "RenewalQueue")}
        added |= {f"{key}Function{metric}Alarm" for metric in ("Errors", "Throttles")}
    assert now - before == added


# --- the version before connections (c490cb3): with the default Connections, the same stack -----------------------
BEFORE_CONNECTIONS = json.loads((ROOT / "tests" / "template" / "golden" / "before-connections.json").read_text())


def test_the_default_connections_keep_every_resource_as_it_was() -> None:
    """Updating a stack of the version before connections with the default Connections replaces, deletes and
    orphans nothing: the same logical IDs of the same types, under the same conditions, with the same deletion
    and replacement policies (Retain for every placeholder secret), and no resource more."""
    template = load_template()
    now = {name: {k: resource[k] for k in ("Type", "Condition", "DeletionPolicy", "UpdateReplacePolicy")
                  if k in resource} for name, resource in template["Resources"].items()}
    assert now == BEFORE_CONNECTIONS["Resources"]
    secrets = {name: resource for name, resource in template["Resources"].items()
               if resource["Type"] == "AWS::SecretsManager::Secret"}
    assert set(secrets) == {f"{key}Secret" for key in GOLDEN_KEYS}
    for name, secret in secrets.items():
        assert (secret["DeletionPolicy"], secret["UpdateReplacePolicy"]) == ("Retain", "Retain"), name
        kept = BEFORE_CONNECTIONS["Secrets"][name]
        assert secret["Properties"]["GenerateSecretString"] == kept["GenerateSecretString"], name
        assert secret["Properties"]["KmsKeyId"] == kept["KmsKeyId"], name


def test_the_default_connections_keep_what_sam_makes_of_them() -> None:
    """The same after SAM's transform: the resources SAM generates (schedules and their roles, event source
    mappings, permissions, the API's stage and deployment) keep their logical IDs and types too."""
    def stable(resources: dict[str, str]) -> dict[str, str]:
        # the API's deployment is named after a hash SAM makes anew on every translation (AlwaysDeploy): a new
        # deployment of the same API on every stack update, by design
        return {re.sub(r"^(TokenVendingApiDeployment)[0-9a-f]{10}$", r"\1", name): kind
                for name, kind in resources.items()}

    translated = {name: resource["Type"] for name, resource in translate()["Resources"].items()}
    assert stable(translated) == stable(BEFORE_CONNECTIONS["TranslatedResources"])


def test_the_default_connections_keep_every_output_parameter_and_condition_name() -> None:
    """Stacks and scripts read the outputs, samconfig.toml sets the parameters: all still there. The conditions
    gained IsDefault<Key> (one per connection) and nothing else."""
    template = load_template()
    assert set(BEFORE_CONNECTIONS["Outputs"]) == set(template["Outputs"])
    assert set(template["Parameters"]) - set(BEFORE_CONNECTIONS["Parameters"]) == {"Connections"}
    assert set(BEFORE_CONNECTIONS["Parameters"]) <= set(template["Parameters"])
    assert set(template["Conditions"]) - set(BEFORE_CONNECTIONS["Conditions"]) == {
        f"IsDefault{key}" for key in GOLDEN_KEYS}
    assert set(BEFORE_CONNECTIONS["Conditions"]) <= set(template["Conditions"])
