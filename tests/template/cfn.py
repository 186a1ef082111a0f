"""Shared by the template tests: reading template.yaml, evaluating its intrinsics, running the tools offline.

Every tool runs from its own virtualenv under ``.tools/`` (or the project's ``.venv``), never Docker,
never AWS, never any non-loopback address. A missing tool is a failure with instructions, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
TOOLS_BIN = ROOT / ".tools" / "sam" / "bin"
SAM = TOOLS_BIN / "sam"
CFN_LINT = TOOLS_BIN / "cfn-lint"
TOOLS_PYTHON = TOOLS_BIN / "python"
TOOLS_HINT = "run `make deps` (or: python3 -m venv .tools/sam && .tools/sam/bin/pip install -r requirements-tools.txt)"

# route name -> (function logical ID, function folder, documented token lifetime: TOKEN_LIFETIME)
PROVIDERS = {
    "invoice-cloud": ("InvoiceCloudFunction", "invoice_cloud", 3600),
    "pyng": ("PyngFunction", "pyng", 900),
    "aria": ("AriaFunction", "aria", 3600),
    "autopay": ("AutopayFunction", "autopay", 36000),
    "alternative-payments": ("AlternativePaymentsFunction", "alternative_payments", 3600),
}
SECRET_PREFIX = {
    "invoice-cloud": "InvoiceCloud",
    "pyng": "Pyng",
    "aria": "Aria",
    "autopay": "Autopay",
    "alternative-payments": "AlternativePayments",
}
TOKEN_API = "TokenApiFunction"
ALL_FUNCTIONS = [TOKEN_API, *(fn for fn, _, _ in PROVIDERS.values())]
# values for the parameters without a default (as samconfig.toml gives them)
REQUIRED_PARAMETER_SAMPLES = {
    "PyngTokenUrl": "https://sample.pyng.com.au/billing/oauth2/token",
    "AutopayTokenUrl": "https://autopay.example.com/oauth/token",
}
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


# --- reading the template ---------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...) into their long form."""


def _construct_cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    key = suffix if suffix in {"Ref", "Condition"} else f"Fn::{suffix}"
    return {key: value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def parse_template(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(text, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    return loaded


@cache
def load_template() -> dict[str, Any]:
    return parse_template(TEMPLATE.read_text())


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def function_env(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's environment as deployed: Globals merged with its own variables."""
    globals_env = template["Globals"]["Function"].get("Environment", {}).get("Variables", {})
    own = template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    return {**globals_env, **own}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def java_like_fullmatch(pattern: str, value: str) -> bool:
    """CloudFormation's AllowedPattern must match the whole value."""
    return re.fullmatch(pattern, value) is not None


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class Evaluator:
    """Evaluates the intrinsic functions this template uses, with parameter defaults (or overrides).

    Values are given as CloudFormation receives them (strings; a CommaDelimitedList as "a,b"), and a
    CommaDelimitedList evaluates to a list, as with CloudFormation. ``!Ref AWS::NoValue`` removes the
    list item or mapping key it stands for.
    """

    def __init__(self, template: dict[str, Any], overrides: dict[str, str] | None = None) -> None:
        self.template = template
        raw = dict(REQUIRED_PARAMETER_SAMPLES)
        raw |= {name: str(spec["Default"]) for name, spec in template["Parameters"].items() if "Default" in spec}
        raw.update(overrides or {})
        lists = {name for name, spec in template["Parameters"].items() if spec["Type"] == "CommaDelimitedList"}
        self.params: dict[str, Any] = {k: v.split(",") if k in lists else v for k, v in raw.items()}
        self.params.update({"AWS::Region": REGION, "AWS::StackName": "token-vending", "AWS::Partition": "aws"})
        self.params.update({"AWS::URLSuffix": "amazonaws.com", "AWS::AccountId": ACCOUNT_ID})

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        assert name in self.template["Resources"], f"!Ref to unknown name {name}"
        return f"{name}-physical-id"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        ((key, arg),) = value.items() if len(value) == 1 else (("", None),)
        if not (key == "Ref" or key.startswith("Fn::") or (key == "Condition" and isinstance(arg, str))):
            return {k: item for k, item in ((k, self(v)) for k, v in value.items()) if item is not NO_VALUE}
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            return f"arn:aws:{arg[0]}:{arg[1]}"
        if key == "Fn::Equals":
            return self(arg[0]) == self(arg[1])
        if key == "Fn::Not":
            return not self(arg[0])
        if key == "Fn::And":
            return all(self(a) for a in arg)
        if key == "Fn::Or":
            return any(self(a) for a in arg)
        if key == "Fn::If":
            return self(arg[1]) if self.condition(arg[0]) else self(arg[2])
        if key == "Fn::Join":
            return arg[0].join(str(v) for v in self(arg[1]))
        if key == "Fn::Split":
            return self(arg[1]).split(arg[0])
        if key == "Fn::Select":
            return self(arg[1])[int(self(arg[0]))]
        if key == "Fn::EachMemberEquals":  # Rules only
            return all(member == self(arg[1]) for member in self(arg[0]))
        if key == "Fn::Contains":  # Rules only
            return self(arg[1]) in self(arg[0])
        if key == "Fn::FindInMap":
            return self.template["Mappings"][arg[0]][self(arg[1])][self(arg[2])]
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self(arg[1]))

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in local:
                    return str(local[name])
                if "." in name:
                    return str(self({"Fn::GetAtt": name.split(".", 1)}))
                return str(self.ref(name))

            return re.sub(r"\$\{([^}!]+)\}", substitute, text)
        return {key: self(arg)}

    def rules_hold(self) -> list[str]:
        """The AssertDescriptions of the template's Rules that these parameter values break."""
        broken = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self(rule["RuleCondition"]):
                continue
            broken += [a["AssertDescription"] for a in rule["Assertions"] if not self(a["Assert"])]
        return broken


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
        with open(os.path.join(os.path.dirname(sys.argv[1]), props.pop("DefinitionUri"))) as f:
            props["Definition"] = json.load(f)
print(json.dumps(transform(tpl, {}, lambda: {})))
"""


@cache
def translate(path: Path = TEMPLATE) -> dict[str, Any]:
    """The CloudFormation SAM would deploy (samtranslator, with placeholder S3 code locations)."""
    result = run([require_tool(TOOLS_PYTHON), "-c", TRANSLATE_SCRIPT, path])
    assert result.returncode == 0, f"SAM translation failed:\n{result.stderr}"
    translated: dict[str, Any] = json.loads(result.stdout)
    return translated


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


def emitted_metric_names() -> set[str]:
    """Metric names the layer really emits (``_count("...")`` and ``add_metric(name="...")``)."""
    source = "\n".join(path.read_text() for path in (ROOT / "layers" / "token_vending").rglob("*.py"))
    return set(re.findall(r'_count\("([A-Za-z]+)"\)', source)) | set(re.findall(r'add_metric\(name="(\w+)"', source))
