"""How many connections one stack holds: the CloudFormation, Lambda and IAM limits that grow with them, measured.

``.venv/bin/python -m benchmarks.connections_scale`` expands template.yaml with N connections (the five defaults
and N - 5 added ones), translates it with SAM (``samtranslator``, as ``sam deploy`` does after
AWS::LanguageExtensions), evaluates what the stack would deploy and prints, per N, each figure against its limit:

``resources``
    Resources of the processed template, after SAM's transform (CloudFormation: 500 per stack). Each connection
    adds its own and SAM's for it (schedule, schedule role, event source mapping, permissions).
``parameters``, ``outputs``
    Parameters (200 per template) do not grow; outputs (200) grow by two per connection.
``template bytes``
    The processed template as compact JSON (1 MB: a template is read from S3 when larger than the 51,200 bytes
    a request body may carry, and ``sam deploy``'s ``resolve_s3`` always uploads it). template.yaml itself, the
    file uploaded, does not grow with N: its loops expand in CloudFormation.
``API env bytes``
    The token API function's environment (``FUNCTION_<Key>`` per connection, with the function's name), as
    compact JSON: Lambda allows 4 KB for all variables together. Names are CloudFormation's for a function
    without ``FunctionName``: ``<stack>-<LogicalId>-<12 random characters>``, its stack and logical-ID parts
    truncated to keep 64 characters.
``API role policy chars``
    The token API role's inline policies together (its own, its log group's and one ``<Key>FunctionInvokePolicy``
    per connection), without white space, as IAM counts them: 10,240 characters per role.

The documented case (:data:`MAX_CONNECTIONS`) names the stack ``token-vending-prod`` (samconfig.toml's prod
stack), deploys in ``ap-southeast-2`` (a long Region name) with a customer managed key (its grant lengthens the
token API's policy), and gives every added connection a key of :data:`DOCUMENTED_KEY_LENGTH` characters (a
catalogue key and a label: ``AriaT00000000000000007``; AriaAu, PyngOrg2, OAuth2Acme, AlternativePaymentsEu are
shorter), so that its function's name is 64 characters long. With ``--longest-keys`` every added key has the
40-character label the ``Connections`` pattern allows: the worst case, :data:`MAX_CONNECTIONS_ANY_KEYS`. The run
ends with the largest N under every limit, and which limit binds first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from local.template import NO_VALUE, TEMPLATE, Evaluator, expanded_template
from token_vending.catalogue import CATALOGUE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MAX_CONNECTIONS = 36
"""The documented maximum of connections per stack (the five defaults included), with added keys of up to
:data:`DOCUMENTED_KEY_LENGTH` characters: the resources SAM makes per connection (13) against CloudFormation's 500
per stack bind first (with keys of exactly that length, the token API's 4 KB environment too, at the same count).
tests/template/test_connection_scale.py holds it: within every limit, one more is not."""
DOCUMENTED_KEY_LENGTH = 24
"""The added keys' length :data:`MAX_CONNECTIONS` holds for. Longer keys lengthen the token API's environment
(``FUNCTION_<Key>`` and the function's name), which then binds first."""
MAX_CONNECTIONS_ANY_KEYS = 30
"""The maximum whatever the keys (every label of the 40 characters the pattern allows): the token API's environment
against Lambda's 4 KB binds first."""

STACK_NAME = "token-vending-prod"
REGION = "ap-southeast-2"
ACCOUNT_ID = "123456789012"
KMS_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/mrk-1234abcd12ab34cd56ef1234567890ab"
DEFAULT_KEYS = ("InvoiceCloud", "Pyng", "Aria", "Autopay", "AlternativePayments")
LONGEST_LABEL = 40
"""The longest label ``Connections``' AllowedPattern admits after a catalogue key."""


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    unit: str
    source: str


LIMITS = (
    Limit("resources", 500, "resources", "CloudFormation: resources per stack"),
    Limit("parameters", 200, "parameters", "CloudFormation: parameters per template"),
    Limit("outputs", 200, "outputs", "CloudFormation: outputs per template"),
    Limit("template_bytes", 1_048_576, "bytes", "CloudFormation: template size read from S3"),
    Limit("api_env_bytes", 4096, "bytes", "Lambda: all environment variables of a function together"),
    Limit("api_policy_chars", 10_240, "characters", "IAM: inline policies of one role together"),
)
TEMPLATE_BODY_LIMIT = 51_200
"""CloudFormation's limit on a template passed in the request itself (template.yaml is over it: S3 it is)."""


@dataclass(frozen=True)
class Measurement:
    connections: int
    resources: int
    parameters: int
    outputs: int
    template_bytes: int
    api_env_bytes: int
    api_policy_chars: int

    def value(self, limit: Limit) -> int:
        figure: int = getattr(self, limit.name)
        return figure

    def within(self, limit: Limit) -> bool:
        return self.value(limit) <= limit.limit

    def within_all(self) -> bool:
        return all(self.within(limit) for limit in LIMITS)


# --- the connections -------------------------------------------------------------------------------------------
def added_keys(count: int, *, longest: bool = False) -> list[str]:
    """``count`` added connection keys, a catalogue key each in turn, labelled (``T`` and a number) to
    :data:`DOCUMENTED_KEY_LENGTH` characters, or with the 40 characters the pattern allows (``longest``)."""
    keys = []
    for index in range(count):
        provider = CATALOGUE[index % len(CATALOGUE)].key
        length = LONGEST_LABEL if longest else DOCUMENTED_KEY_LENGTH - len(provider)
        keys.append(f"{provider}T{index + 1:0{length - 1}d}")
    return keys


def connection_keys(n: int, *, longest: bool = False) -> list[str]:
    """The five default connections and ``n - 5`` added ones."""
    if n < len(DEFAULT_KEYS):
        raise ValueError(f"at least the {len(DEFAULT_KEYS)} default connections")
    return [*DEFAULT_KEYS, *added_keys(n - len(DEFAULT_KEYS), longest=longest)]


# --- what the stack would deploy -------------------------------------------------------------------------------
def generated_name(logical_id: str, random_length: int = 12, limit: int = 64) -> str:
    """A name CloudFormation generates: ``<stack>-<LogicalId>-<random>``, the stack and logical-ID parts cut so that
    the whole keeps ``limit`` characters (the random part is kept whole)."""
    room = limit - random_length - 2
    stack, logical = STACK_NAME, logical_id
    while len(stack) + len(logical) > room:  # cut the longer part first, as CloudFormation shortens both
        if len(logical) >= len(stack):
            logical = logical[:-1]
        else:
            stack = stack[:-1]
    return f"{stack}-{logical}-{'R' * random_length}"


class Deployed(Evaluator):
    """The translated template evaluated as deployed: physical names and ARNs of realistic length."""

    def __init__(self, template: dict[str, Any]) -> None:
        super().__init__(template, {"KmsKeyArn": KMS_KEY_ARN},
                         pseudo={"AWS::StackName": STACK_NAME, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID})
        self.resource_ref = self._physical

    def _physical(self, logical_id: str) -> str:
        kind = self.template["Resources"][logical_id]["Type"]
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT_ID}/{generated_name(logical_id, 12, 80)}"
        if kind == "AWS::DynamoDB::Table":
            return generated_name(logical_id, 13, 255)
        return generated_name(logical_id)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
            logical_id, attribute = value["Fn::GetAtt"]
            return self._arn(logical_id, attribute)
        return super().__call__(value)

    def _arn(self, logical_id: str, attribute: str) -> str:
        assert attribute == "Arn", f"{logical_id}.{attribute}: only ARNs are modelled"
        kind, name = self.template["Resources"][logical_id]["Type"], self._physical(logical_id)
        prefix = f"arn:aws:{{}}:{REGION}:{ACCOUNT_ID}:"
        arns: dict[str, Callable[[], str]] = {
            "AWS::Lambda::Function": lambda: prefix.format("lambda") + f"function:{name}",
            "AWS::DynamoDB::Table": lambda: prefix.format("dynamodb") + f"table/{name}",
            "AWS::Logs::LogGroup": lambda: prefix.format("logs") + f"log-group:/aws/lambda/{name}:*",
            "AWS::SQS::Queue": lambda: prefix.format("sqs") + name.rsplit("/", 1)[1],
        }
        return arns.get(kind, lambda: prefix.format(kind.split("::")[1].lower()) + name)()


def _compact(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def token_api_env_bytes(translated: dict[str, Any]) -> int:
    """The token API function's environment as deployed, as compact JSON (UTF-8 bytes)."""
    evaluate = Deployed(translated)
    variables = translated["Resources"]["TokenApiFunction"]["Properties"]["Environment"]["Variables"]
    deployed = {name: str(value) for name, value in evaluate(variables).items() if value is not NO_VALUE}
    return len(_compact(deployed).encode())


def token_api_policy_chars(translated: dict[str, Any]) -> int:
    """The token API role's inline policies together, without white space (IAM's count)."""
    evaluate = Deployed(translated)
    role = "TokenApiFunctionRole"
    documents = [policy["PolicyDocument"] for policy in translated["Resources"][role]["Properties"]["Policies"]]
    documents += [resource["Properties"]["PolicyDocument"] for resource in translated["Resources"].values()
                  if resource["Type"] == "AWS::IAM::RolePolicy" and resource["Properties"]["RoleName"] == {"Ref": role}]
    return sum(len(_compact(evaluate(document))) for document in documents)


def translate(keys: Sequence[str]) -> dict[str, Any]:
    """template.yaml with these connections after AWS::LanguageExtensions and SAM's transform."""
    from tests.template.cfn import translate_document

    return translate_document(expanded_template(parameters={"Connections": ",".join(keys)}))


@cache
def measure(n: int, *, longest: bool = False) -> Measurement:
    """Every figure for ``n`` connections."""
    translated = translate(connection_keys(n, longest=longest))
    return Measurement(
        connections=n,
        resources=len(translated["Resources"]),
        parameters=len(translated.get("Parameters", {})),
        outputs=len(translated.get("Outputs", {})),
        template_bytes=len(_compact(translated).encode()),
        api_env_bytes=token_api_env_bytes(translated),
        api_policy_chars=token_api_policy_chars(translated),
    )


def largest_within(holds: Callable[[int], bool], low: int = len(DEFAULT_KEYS), high: int = 100) -> int:
    """The largest n in [low, high] for which ``holds`` (monotone: true, then false for good) is true."""
    if not holds(low):
        return low - 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if holds(middle) else (low, middle - 1)
    return low


# --- the report ------------------------------------------------------------------------------------------------
COLUMNS = (("N", "connections"), ("resources", "resources"), ("params", "parameters"), ("outputs", "outputs"),
           ("template bytes", "template_bytes"), ("API env bytes", "api_env_bytes"),
           ("API role policy chars", "api_policy_chars"))


def table(rows: Sequence[Measurement]) -> str:
    widths = [max(len(title), 10) for title, _ in COLUMNS]
    lines = ["  ".join(title.rjust(width) for (title, _), width in zip(COLUMNS, widths, strict=True))]
    limits = {limit.name: limit.limit for limit in LIMITS}
    lines.append("  ".join(("limit" if name == "connections" else f"{limits[name]:,}").rjust(width)
                           for (_, name), width in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        cells = []
        for (_, name), width in zip(COLUMNS, widths, strict=True):
            value: int = getattr(row, name)
            over = name in limits and value > limits[name]
            cells.append((f"{value:,}" + ("!" if over else "")).rjust(width))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def report(*, longest: bool = False, steps: Sequence[int] = (5, 10, 20, 30, 40, 50, 60)) -> str:
    """The table for ``steps`` and the maxima, as printed."""
    def reach(limit: Limit) -> int:
        return largest_within(lambda n: measure(n, longest=longest).within(limit))

    maxima = {limit.name: reach(limit) for limit in LIMITS}
    overall = largest_within(lambda n: measure(n, longest=longest).within_all())
    binding = [limit for limit in LIMITS if maxima[limit.name] == overall]  # several when they bind together
    shown = sorted({*steps, overall, overall + 1})
    keys = added_keys(1, longest=longest)[0]
    which = "the longest keys" if longest else f"keys of {DOCUMENTED_KEY_LENGTH} characters"
    out = [f"Connections per stack ({which}: added keys like {keys}, stack {STACK_NAME}, {REGION}, customer "
           "managed key); '!' marks a figure over its limit",
           "", table([measure(n, longest=longest) for n in shown]), ""]
    for limit in LIMITS:
        most = maxima[limit.name]
        out.append(f"  {limit.source} ({limit.limit:,} {limit.unit}): up to "
                   f"{most if most < 100 else '100 or more'} connections")
    template_bytes = len(TEMPLATE.read_text().encode())
    first = " and ".join(f"{limit.source} ({limit.limit:,} {limit.unit})" for limit in binding)
    out += ["", f"Largest N within every limit: {overall}; first to bind, at {overall + 1}: {first}.",
            f"template.yaml itself is {template_bytes:,} bytes whatever N (over the {TEMPLATE_BODY_LIMIT:,}-byte "
            "request-body limit: deployed through S3, as sam deploy's resolve_s3 does)."]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connections_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--longest-keys", action="store_true",
                        help="added keys with the longest label the pattern allows (the worst case)")
    args = parser.parse_args(argv)
    print(report(longest=args.longest_keys))
    maximum = MAX_CONNECTIONS_ANY_KEYS if args.longest_keys else MAX_CONNECTIONS
    name = "MAX_CONNECTIONS_ANY_KEYS" if args.longest_keys else "MAX_CONNECTIONS"
    holds = (measure(maximum, longest=args.longest_keys).within_all()
             and not measure(maximum + 1, longest=args.longest_keys).within_all())
    print(f"{name} = {maximum}: {'holds' if holds else 'DOES NOT HOLD (update it)'}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
