"""Shared by the template tests: reading template.yaml, evaluating its intrinsics, running the tools offline.

template.yaml loops over its connections (``Fn::ForEach`` over the ``Connections`` parameter,
AWS::LanguageExtensions): the tests read it expanded as CloudFormation expands it (``local.template``), with the
default connections or with more (:func:`expanded_with`), and each connection's provider is a catalogue entry
(``token_vending.catalogue``), found by the key's longest catalogue-key prefix, not a list of their own.

Every tool runs from its own virtualenv under ``.tools/`` (or the project's ``.venv``), never Docker,
never AWS, never any non-loopback address. A missing tool is a failure with instructions, not a skip.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from local.template import (
    NO_VALUE,
    CfnLoader,
    expand,
    expanded_template,
    function_env,
    parse_template,
    provider_functions,
    resources,
)
from local.template import Evaluator as TemplateEvaluator
from local.template import load_template as load_raw_template
from token_vending.catalogue import CATALOGUE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from token_vending.profile import ClientCredentialsProfile

__all__ = [
    "ACCOUNT_ID", "ADDED_KEYS", "ALL_FUNCTIONS", "CATALOGUE", "CFN_LINT", "CONNECTIONS", "DEFAULT_KEYS",
    "EXPANDED_LINT_IGNORES", "NO_VALUE", "REGION", "REQUIRED_PARAMETER_SAMPLES", "ROOT", "SAM", "SEVEN", "SEVEN_KEYS",
    "TEMPLATE", "TOKEN_API", "TOOLS_PYTHON", "CfnLoader", "Connection", "Evaluator", "as_list", "connection_name",
    "connections", "emitted_metric_names", "environment", "expand", "expanded_with", "fetch_settings", "function_env",
    "is_metrics_insights", "is_search", "java_like_fullmatch", "load_template", "metrics_insights", "parse_template",
    "provider_functions", "provider_of", "python313_dir", "raw_template", "require_tool", "resources", "run",
    "search_expression", "tool_env", "translate", "translate_document", "translate_with", "without_cfn_lint_ignores",
]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
TOOLS_BIN = ROOT / ".tools" / "sam" / "bin"
SAM = TOOLS_BIN / "sam"
CFN_LINT = TOOLS_BIN / "cfn-lint"
TOOLS_PYTHON = TOOLS_BIN / "python"
TOOLS_HINT = "run `make deps` (or: python3 -m venv .tools/sam && .tools/sam/bin/pip install -r requirements-tools.txt)"

TOKEN_API = "TokenApiFunction"
# the token URLs samconfig.toml gives (their parameters default to empty: the secret's token_url then)
REQUIRED_PARAMETER_SAMPLES = {
    "PyngTokenUrl": "https://sample.pyng.com.au/billing/oauth2/token",
    "AutopayTokenUrl": "https://autopay.example.com/oauth/token",
}
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


# --- the connections: the Connections parameter's keys, each a catalogue entry's connection --------------------
def provider_of(key: str) -> ClientCredentialsProfile:
    """The catalogue entry a connection key belongs to: the one whose key is the key's longest prefix (the
    template's ``Connections`` pattern admits nothing else)."""
    prefixes = [entry for entry in CATALOGUE if key.startswith(entry.key)]
    assert prefixes, f"{key} starts with no catalogue key"
    return max(prefixes, key=lambda entry: len(entry.key))


def connection_name(key: str) -> str:
    """A connection's name (route, CONNECTION_NAME, cache partition, metric dimension, budget key): its catalogue
    entry's name for an entry's own key (``InvoiceCloud`` -> ``invoice-cloud``), otherwise the key itself."""
    return next((entry.name for entry in CATALOGUE if entry.key == key), key)


@dataclass(frozen=True)
class Connection:
    """One item of ``Connections`` and the names the template's ``Fn::ForEach`` loops give its resources."""

    key: str
    """The template's key (``InvoiceCloud``, ``AriaAu``): ``<key>Function``, ``<key>Secret``, ``FUNCTION_<key>``, ..."""
    name: str
    """``/token/{name}``, CONNECTION_NAME, the cache partition, the metrics' dimension, the budget's key."""
    entry: ClientCredentialsProfile
    """Its provider's catalogue entry."""

    @property
    def route(self) -> str:
        return self.name

    @property
    def function(self) -> str:
        return f"{self.key}Function"

    @property
    def lifetime(self) -> int:
        return self.entry.lifetime

    @property
    def default(self) -> bool:
        """One of the default connections: parameters of its own (a DefaultConnections row)."""
        return self.key in DEFAULT_KEYS


def connections(keys: Iterable[str]) -> dict[str, Connection]:
    """Name -> connection for these keys, in their order (the loops' order)."""
    return {connection_name(key): Connection(key, connection_name(key), provider_of(key)) for key in keys}


DEFAULT_KEYS: tuple[str, ...] = tuple(
    load_raw_template(TEMPLATE)["Parameters"]["Connections"]["Default"].split(","))
"""``Connections``' default: the five connections every stack had before connections could be added."""
ADDED_KEYS = ("AriaAu", "PyngOrg2")
"""Two added connections (the local stack's): a second Aria (its AUS region) and a second Pyng partner."""
SEVEN_KEYS = (*DEFAULT_KEYS, *ADDED_KEYS)
CONNECTIONS: dict[str, Connection] = connections(DEFAULT_KEYS)
"""Name -> connection, as deployed with the defaults, in ``Connections``' order."""
SEVEN: dict[str, Connection] = connections(SEVEN_KEYS)
"""Name -> connection with the two added ones."""
ALL_FUNCTIONS = [TOKEN_API, *(connection.function for connection in CONNECTIONS.values())]


# --- reading the template ---------------------------------------------------------------------
@cache
def _expanded(keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    return expanded_template(TEMPLATE, None if keys is None else {"Connections": ",".join(keys)})


@cache
def _raw() -> dict[str, Any]:
    return load_raw_template(TEMPLATE)


def load_template() -> dict[str, Any]:
    """template.yaml as CloudFormation hands it to SAM: every ``Fn::ForEach`` expanded (shared: do not modify)."""
    return _expanded()


def expanded_with(keys: Iterable[str]) -> dict[str, Any]:
    """template.yaml expanded with ``Connections`` set to these keys (shared: do not modify)."""
    return _expanded(tuple(keys))


def raw_template() -> dict[str, Any]:
    """template.yaml as written, loops and all (shared: do not modify)."""
    return _raw()


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def java_like_fullmatch(pattern: str, value: str) -> bool:
    """CloudFormation's AllowedPattern must match the whole value."""
    return re.fullmatch(pattern, value) is not None


class Evaluator(TemplateEvaluator):
    """:class:`local.template.Evaluator` with samconfig.toml's values for the parameters without a default.

    Values are given as CloudFormation receives them (strings; a CommaDelimitedList as "a,b"); a
    ``!Ref`` to a resource gives ``<LogicalId>-physical-id``, a ``!GetAtt`` ``arn:aws:<LogicalId>:<Attribute>``.
    """

    def __init__(self, template: dict[str, Any], overrides: dict[str, str] | None = None) -> None:
        known = {name: value for name, value in REQUIRED_PARAMETER_SAMPLES.items() if name in template["Parameters"]}
        expanded_for = _connections_of(template)
        if expanded_for is not None:  # the Connections the template was expanded with, unless told otherwise
            known["Connections"] = ",".join(expanded_for)
        super().__init__(template, {**known, **(overrides or {})})


def _connections_of(template: dict[str, Any]) -> list[str] | None:
    """The keys an expanded template's loops ran over (its connections' functions, in order), or None."""
    if "Connections" not in template.get("Parameters", {}):
        return None
    keys = [logical_id.removesuffix("Function") for logical_id in provider_functions(template).values()]
    return keys or None


def environment(template: dict[str, Any], logical_id: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """A function's environment as deployed with these parameter values (``AWS::NoValue`` names left out)."""
    evaluated = Evaluator(template, overrides)(function_env(template, logical_id))
    return {name: str(value) for name, value in evaluated.items()}


def fetch_settings(connection: Connection, env: Mapping[str, str], secret: Mapping[str, Any] | None = None) -> Any:
    """What the layer makes of a connection's function environment and its secret's setting fields when it reads
    the secret (``token_vending.connection_settings.resolve``, with the connection's profile): token URL,
    client authentication, scopes. Raises the layer's ``Misconfigured`` as the function would."""
    from token_vending.catalogue import connection as connection_profile
    from token_vending.connection_settings import resolve
    from token_vending.settings import ProviderSettings

    profile = connection_profile(connection.name)
    assert profile is not None, f"the catalogue knows no connection named {connection.name}"
    settings = ProviderSettings.from_env(connection.name, env, profile=profile)
    return resolve(settings, dict(secret or {}), profile)


EXPANDED_LINT_IGNORES = ["W7001"]
"""cfn-lint checks not run on the expanded template: W7001 (mapping unused), as the expansion resolves every
Fn::FindInMap with the loop's key, leaving the DefaultConnections and FunctionAlarms mappings unread."""


def without_cfn_lint_ignores(document: dict[str, Any]) -> dict[str, Any]:
    """A copy without the template's cfn-lint Metadata (template-wide and per resource): checks that are off where
    cfn-lint cannot follow the loops run on the expanded template."""
    result = copy.deepcopy(document)
    for holder in [result, *result["Resources"].values()]:
        metadata = holder.get("Metadata", {})
        metadata.pop("cfn-lint", None)
        if "Metadata" in holder and not metadata:
            del holder["Metadata"]
    return result


# --- running the tools ------------------------------------------------------------------------
def require_tool(path: Path, hint: str = TOOLS_HINT) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: {hint}", pytrace=False)
    return path


def tool_env(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAM_"))}
    env.update(
        {
            "SAM_CLI_TELEMETRY": "0",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # dummy: nothing here may reach AWS
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }
    )
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str | Path], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def python313_dir() -> Path:
    """A directory holding a python3.13 executable (sam build's python3.13 workflow needs one on PATH)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted(pyenv_root.glob("versions/3.13*/bin"), reverse=True):
        if (candidate / "python3.13").exists():
            return candidate
    found = shutil.which("python3.13")
    if found and "shims" not in found:
        return Path(found).parent
    if sys.version_info[:2] == (3, 13):
        return Path(sys.executable).parent
    pytest.fail("no python3.13 found (pyenv 3.13.x or on PATH): sam build needs it", pytrace=False)


# --- SAM's own reading of the template (translator, offline) ------------------------------------
# argv: the template to translate (loops expanded: samtranslator does not expand Fn::ForEach), and the
# folder its relative paths (DefinitionUri) are read from.
TRANSLATE_SCRIPT = r"""
import json, os, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse
tpl = yaml_parse(open(sys.argv[1]).read())
for res in tpl["Resources"].values():
    props = res.get("Properties", {})
    for key in ("CodeUri", "ContentUri"):
        if isinstance(props.get(key), str):
            props[key] = "s3://bucket/" + props[key].strip("/")
    if isinstance(props.get("DefinitionUri"), str):  # what `sam deploy` uploads: inline it instead
        with open(os.path.join(sys.argv[2], props.pop("DefinitionUri"))) as f:
            props["Definition"] = json.load(f)
print(json.dumps(transform(tpl, {}, lambda: {})))
"""


def translate_document(document: dict[str, Any], base: Path = ROOT) -> dict[str, Any]:
    """The CloudFormation SAM makes of a template without loops (samtranslator, placeholder S3 code locations)."""
    with tempfile.TemporaryDirectory(prefix="sam-translate-") as folder:
        path = Path(folder) / "template.json"
        path.write_text(json.dumps(document))
        result = run([require_tool(TOOLS_PYTHON), "-c", TRANSLATE_SCRIPT, path, base])
    assert result.returncode == 0, f"SAM translation failed:\n{result.stderr}"
    translated: dict[str, Any] = json.loads(result.stdout)
    return translated


@cache
def translate() -> dict[str, Any]:
    """The CloudFormation SAM would deploy: template.yaml after AWS::LanguageExtensions (its loops expanded,
    as CloudFormation does first), through samtranslator (shared: do not modify)."""
    return translate_document(load_template())


@cache
def translate_with(keys: tuple[str, ...]) -> dict[str, Any]:
    """:func:`translate` with ``Connections`` set to these keys (shared: do not modify)."""
    return translate_document(expanded_with(keys))


# --- CloudWatch Metrics Insights queries (alarms and dashboard widgets) -------------------------------
_INSIGHTS = re.compile(
    r"\s*SELECT\s+(?P<function>AVG|MIN|MAX|SUM|COUNT)\((?P<metric>\w+)\)"
    r"\s+FROM\s+SCHEMA\(\s*\"(?P<namespace>[^\"]+)\"(?P<dimensions>(?:\s*,\s*\w+)*)\s*\)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+GROUP\s+BY\s+(?P<group_by>\w+(?:\s*,\s*\w+)*))?"
    r"\s*",
    re.IGNORECASE | re.DOTALL,
)
_CONDITION = re.compile(r"\s*(\w+)\s*=\s*'([^']*)'\s*")


def is_metrics_insights(expression: str) -> bool:
    return expression.lstrip().upper().startswith("SELECT")


def metrics_insights(expression: str) -> dict[str, Any]:
    """The parts of a Metrics Insights query of the forms this template uses:
    ``SELECT FN(Metric) FROM SCHEMA("Namespace", dim, ...) [WHERE dim = 'v' AND ...] [GROUP BY dim, ...]``.

    Anything else (ORDER BY, LIMIT, other operators, a bare namespace without SCHEMA) is refused: a form the
    checks cannot read must not pass unread."""
    found = _INSIGHTS.fullmatch(expression)
    assert found, f"a Metrics Insights query these tests cannot read: {expression!r}"
    where: dict[str, str] = {}
    if found["where"]:
        for condition in re.split(r"\s+AND\s+", found["where"], flags=re.IGNORECASE):
            pair = _CONDITION.fullmatch(condition)
            assert pair, f"a WHERE condition these tests cannot read: {condition!r} in {expression!r}"
            where[pair[1]] = pair[2]
    return {
        "function": found["function"].upper(),
        "metric": found["metric"],
        "namespace": found["namespace"],
        "schema": [d.strip() for d in found["dimensions"].split(",") if d.strip()],
        "where": where,
        "group_by": [d.strip() for d in (found["group_by"] or "").split(",") if d.strip()],
    }


def is_search(expression: str) -> bool:
    return expression.lstrip().upper().startswith("SEARCH(")


_SEARCH = re.compile(
    r"\s*SEARCH\(\s*'\{(?P<schema>[^}]*)\}(?P<terms>[^']*)'\s*,\s*'(?P<stat>[^']+)'\s*(?:,\s*(?P<period>\d+)\s*)?\)\s*",
    re.IGNORECASE,
)
_TERM = re.compile(r'(?P<name>[\w.:/-]+)="(?P<value>[^"]*)"|"(?P<text>[^"]*)"|(?P<word>\S+)')


def search_expression(expression: str) -> dict[str, Any]:
    """The parts of a CloudWatch ``SEARCH('{Namespace,dim,...} Name="value" "text"', 'Stat', Period)``.

    ``where``: the ``Name="value"`` terms but MetricName (a dimension fixed to one value); ``text``: the quoted
    or bare words, which match any part of any dimension value. Boolean operators and parentheses are refused:
    a form these checks cannot read must not pass unread."""
    found = _SEARCH.fullmatch(expression)
    assert found, f"a SEARCH expression these tests cannot read: {expression!r}"
    namespace, *schema = [part.strip() for part in found["schema"].split(",")]
    where: dict[str, str] = {}
    text: list[str] = []
    for term in _TERM.finditer(found["terms"]):
        if term["name"]:
            where[term["name"]] = term["value"]
        elif term["text"] is not None:
            text.append(term["text"])
        else:
            unreadable = term["word"].upper() in {"AND", "OR", "NOT"} or bool(set(term["word"]) & set("()"))
            assert not unreadable, f"a SEARCH term these tests cannot read: {term['word']!r} in {expression!r}"
            text.append(term["word"])
    return {
        "namespace": namespace.strip('"'),
        "schema": [d.strip('"') for d in schema],
        "metric": where.pop("MetricName", None),
        "where": where,
        "text": text,
        "stat": found["stat"],
        "period": int(found["period"]) if found["period"] else None,
    }


def emitted_metric_names() -> set[str]:
    """Metric names the layer really emits (``_count("...")``, ``count(metrics, "...")`` and
    ``add_metric(name="...")``)."""
    source = "\n".join(path.read_text() for path in (ROOT / "layers" / "token_vending").rglob("*.py"))
    return (set(re.findall(r'_count\("([A-Za-z]+)"\)', source))
            | set(re.findall(r'\bcount\([\w.]+, "([A-Za-z]+)"\)', source))
            | set(re.findall(r'add_metric\(name="(\w+)"', source)))
