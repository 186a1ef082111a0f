"""template.yaml as CloudFormation reads it: short tags, ``Fn::ForEach`` expansion, intrinsic functions.

The local stack, the generator of ``env.json`` and ``events/`` and the template tests all take what a
function is deployed with from here, so none of them lists the connections or their settings again.

:func:`expand` follows the ``AWS::LanguageExtensions`` rules the template relies on: a loop's identifier is
replaced in keys and in every string of its body, ``Ref`` to the identifier becomes the item, loops nest
and may sit anywhere (the token API's environment has one), a loop's collection is a list or a ``Ref`` to a
``CommaDelimitedList`` parameter (its value as deployed: the default unless given, each item checked against
the parameter's ``AllowedPattern`` as CloudFormation does), ``Fn::FindInMap`` with literal keys (and
``DefaultValue``) is resolved, and ``Ref``/``Fn::GetAtt`` whose target is a resolvable function
(``{"Fn::Sub": "${Connection}Secret"}``, a ``Fn::FindInMap``) become plain references. Other parameters and
the conditions are left alone: :class:`Evaluator` evaluates them with chosen parameter values.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
FOREACH = "Fn::ForEach::"
PROVIDER_CODE = "functions/provider/"
"""The ``CodeUri`` of every connection's function (the token API's is ``functions/token_api/``)."""
CONNECTION_NAME = "CONNECTION_NAME"
"""The variable that tells a connection's function its name (``token_vending.constants.CONNECTION_NAME_ENV``)."""


class CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...) into their long form."""


def _construct_cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise TypeError(f"unexpected YAML node {node!r}")
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    key = suffix if suffix in {"Ref", "Condition"} else f"Fn::{suffix}"
    return {key: value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def parse_template(text: str) -> dict[str, Any]:
    # CfnLoader is a SafeLoader subclass (it only adds CloudFormation's short tags).
    loaded: dict[str, Any] = yaml.load(text, Loader=CfnLoader)  # noqa: S506  # nosec B506
    return loaded


@cache
def _load(path: Path) -> dict[str, Any]:
    return parse_template(path.read_text())


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as written (loops unexpanded); a fresh copy on every call."""
    return copy.deepcopy(_load(path))


def expanded_template(path: Path = TEMPLATE, parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The template with every ``Fn::ForEach`` expanded (a fresh copy on every call), its loops over a
    ``CommaDelimitedList`` parameter (``Connections``) run over ``parameters``' value for it (as CloudFormation
    receives it: ``"a,b"``), else the parameter's default. Other parameters in ``parameters`` are ignored here."""
    return expand(load_template(path), parameters)


# --- Fn::ForEach -------------------------------------------------------------------------------------
def list_parameters(template: Mapping[str, Any], parameters: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """The value of every ``CommaDelimitedList`` parameter that has one (given, else its default), as the list a
    ``Ref`` to it gives. An item its ``AllowedPattern`` refuses is refused here too (CloudFormation checks each
    item): ``ValueError``. Items are stripped of surrounding spaces, as SAM CLI's expansion does."""
    given = dict(parameters or {})
    values: dict[str, list[str]] = {}
    for name, spec in template.get("Parameters", {}).items():
        if spec.get("Type") != "CommaDelimitedList" or (name not in given and "Default" not in spec):
            continue
        items = [item.strip() for item in str(given.get(name, spec.get("Default"))).split(",")]
        pattern = spec.get("AllowedPattern")
        refused = [item for item in items if pattern is not None and re.fullmatch(pattern, item) is None]
        if refused:
            raise ValueError(f"{name}: {refused} do not match its AllowedPattern {pattern}")
        values[name] = items
    return values


def expand(template: dict[str, Any], parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``template`` with its loops expanded; ``parameters`` as for :func:`expanded_template`."""
    expanded = dict(template)
    mappings = template.get("Mappings", {})
    lists = list_parameters(template, parameters)
    for section in ("Conditions", "Resources", "Outputs"):
        if section in template:
            expanded[section] = _expand(template[section], {}, mappings, lists)
    return expanded


def _substitute(text: str, bindings: Mapping[str, str]) -> str:
    for identifier, item in bindings.items():
        text = text.replace(f"${{{identifier}}}", item).replace(f"&{{{identifier}}}", re.sub(r"\W|_", "", item))
    return text


def _expand(node: Any, bindings: Mapping[str, str], mappings: Mapping[str, Any],
            lists: Mapping[str, list[str]]) -> Any:
    if isinstance(node, str):
        return _substitute(node, bindings)
    if isinstance(node, list):
        return [_expand(item, bindings, mappings, lists) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"} and isinstance(node["Ref"], str) and node["Ref"] in bindings:
        return bindings[node["Ref"]]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith(FOREACH):
            identifier, collection, body = value
            items = _expand(collection, bindings, mappings, lists)
            if isinstance(items, dict) and set(items) == {"Ref"} and items["Ref"] in lists:
                items = lists[items["Ref"]]
            if not isinstance(items, list):
                raise TypeError(f"{key}: the collection must be a list or a Ref to a CommaDelimitedList parameter")
            for item in items:
                for generated, fragment in _expand(body, {**bindings, identifier: str(item)}, mappings, lists).items():
                    if generated in out:
                        raise ValueError(f"{key} generates {generated} twice")
                    out[generated] = fragment
        else:
            out[_substitute(key, bindings)] = _expand(value, bindings, mappings, lists)
    return _resolve(out, mappings)


def _literal(value: Any) -> str | None:
    """A string known at transform time: a plain string or a ``Fn::Sub`` without references left."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        text: str = value["Fn::Sub"]
        return None if "${" in text else text
    return None


def _resolve(node: dict[str, Any], mappings: Mapping[str, Any]) -> Any:
    if set(node) == {"Fn::FindInMap"}:
        args = node["Fn::FindInMap"]
        keys = [key for key in (_literal(arg) for arg in args[:3]) if key is not None]
        if len(keys) == 3:
            default = args[3]["DefaultValue"] if len(args) > 3 else None
            found = mappings.get(keys[0], {}).get(keys[1], {}).get(keys[2])
            if found is not None:
                return copy.deepcopy(found)
            if default is None:
                raise KeyError(f"Fn::FindInMap {keys} finds nothing and has no DefaultValue")
            return copy.deepcopy(default)
    if set(node) == {"Ref"} and not isinstance(node["Ref"], str):
        name = _literal(node["Ref"])
        if name is not None:
            return {"Ref": name}
    if set(node) == {"Fn::GetAtt"} and isinstance(node["Fn::GetAtt"], list):
        target = _literal(node["Fn::GetAtt"][0])
        if target is not None:
            return {"Fn::GetAtt": [target, *node["Fn::GetAtt"][1:]]}
    return node


# --- reading the expanded template -----------------------------------------------------------------
def resources(template: Mapping[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def function_env(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's environment as deployed: Globals merged with its own variables."""
    globals_env = template["Globals"]["Function"].get("Environment", {}).get("Variables", {})
    own = template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    return {**globals_env, **own}


def provider_functions(template: Mapping[str, Any]) -> dict[str, str]:
    """Connection name (``CONNECTION_NAME``, its route) -> logical ID (``<Key>Function``) of every connection's
    function of an expanded template, in template order (the order of ``Connections``)."""
    found: dict[str, str] = {}
    for logical_id, resource in resources(template, "AWS::Serverless::Function").items():
        if resource["Properties"].get("CodeUri") == PROVIDER_CODE:
            found[str(resource["Properties"]["Environment"]["Variables"][CONNECTION_NAME])] = logical_id
    return found


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class Evaluator:
    """Evaluates the intrinsic functions this template uses, with parameter defaults (or overrides).

    Values are given as CloudFormation receives them (strings; a CommaDelimitedList as "a,b"), and a
    CommaDelimitedList evaluates to a list, as with CloudFormation. ``!Ref AWS::NoValue`` removes the
    list item or mapping key it stands for. ``resource_ref`` names what a ``!Ref`` to a resource gives
    (``<LogicalId>-physical-id`` unless told otherwise; the local stack uses the logical ID itself).
    """

    def __init__(self, template: Mapping[str, Any], overrides: Mapping[str, str] | None = None, *,
                 pseudo: Mapping[str, str] | None = None,
                 resource_ref: Callable[[str], str] = lambda name: f"{name}-physical-id") -> None:
        self.template = template
        self.resource_ref = resource_ref
        raw = {name: str(spec["Default"]) for name, spec in template["Parameters"].items() if "Default" in spec}
        raw.update(overrides or {})
        lists = {name for name, spec in template["Parameters"].items() if spec["Type"] == "CommaDelimitedList"}
        self.params: dict[str, Any] = {k: v.split(",") if k in lists else v for k, v in raw.items()}
        self.params.update({"AWS::Region": "us-east-1", "AWS::StackName": "token-vending", "AWS::Partition": "aws",
                            "AWS::URLSuffix": "amazonaws.com", "AWS::AccountId": "123456789012", **(pseudo or {})})

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        if name not in self.template["Resources"]:
            raise KeyError(f"!Ref to unknown name {name}")
        return self.resource_ref(name)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        key: str = next(iter(value)) if len(value) == 1 else ""
        arg: Any = value[key] if key else None
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
            row = self.template["Mappings"][self(arg[0])].get(self(arg[1]), {})
            found = row.get(self(arg[2]))
            return self(arg[3]["DefaultValue"]) if found is None and len(arg) > 3 else found
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


if __name__ == "__main__":  # ``python -m local.template``: the expanded template as JSON (``make scan``)
    import json
    import sys

    json.dump(expanded_template(), sys.stdout, indent=1)
