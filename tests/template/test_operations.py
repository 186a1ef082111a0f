"""Operations: every alarm and dashboard metric names something the stack creates, and the time budget.

- Alarms and the dashboard are plain strings to CloudWatch: a dimension naming an API, function, stage,
  provider or service that does not exist is accepted at deploy time and then watches nothing, for ever
  (an alarm that can never fire). Every dimension is resolved here, on SAM's translation evaluated with
  the parameter defaults, to a resource the stack really creates or a value the code really emits. A Metrics
  Insights query (``SELECT MIN(Metric) FROM SCHEMA("TokenVending", provider, service)``) names dimension keys
  rather than values: its schema must be a dimension set the namespace publishes, its WHERE values must
  resolve like any other, and the metrics it reads in the service's namespace must be ones the code emits.
- The token API's worst case (its DynamoDB read and its provider invocation, from the botocore Configs in
  ``token_vending.clients``, retries and botocore's back-off included) must end inside its own timeout,
  which must stay within API Gateway's 29 s integration limit.
"""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from tests.template.cfn import (
    ROOT,
    TOKEN_API,
    Evaluator,
    emitted_metric_names,
    is_metrics_insights,
    load_template,
    metrics_insights,
    resources,
    translate,
)

if TYPE_CHECKING:
    from botocore.config import Config

if str(ROOT / "layers" / "token_vending") not in sys.path:
    sys.path.insert(0, str(ROOT / "layers" / "token_vending"))

from token_vending import clients
from token_vending.provider_function import RESPONSE_RESERVE_SECONDS

API_GATEWAY_INTEGRATION_LIMIT = 29
"""API Gateway's maximum integration timeout for a REST API (seconds)."""
STACK_NAME = "stack-under-test"
"""Not the samconfig stack names: a name written into an alarm by hand must not match by coincidence."""
# Dimension sets each namespace publishes that the alarms and the dashboard may use.
DIMENSION_SETS = {
    "AWS/Lambda": [{"FunctionName"}],
    "AWS/ApiGateway": [{"ApiName"}, {"ApiName", "Stage"}],
    "TokenVending": [{"provider", "service"}],  # Powertools EMF: the service dimension plus ours
}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate()


class Stack(Evaluator):
    """The translated template evaluated with parameter defaults under a distinctive stack name."""

    def __init__(self, template: dict[str, Any]) -> None:
        super().__init__(template)
        self.params["AWS::StackName"] = STACK_NAME


def _profile_names() -> set[str]:
    """The provider names the code puts in the ``provider`` dimension (each function's PROFILE name)."""
    names = set()
    for app in (ROOT / "functions").glob("*/app.py"):
        found = re.search(r'PROFILE = \w+\(\s*name="([^"]+)"', app.read_text())
        if found:
            names.add(found.group(1))
    return names


def _what_the_stack_creates(translated: dict[str, Any]) -> dict[str, set[str]]:
    """Dimension name -> the values that name something this stack creates or its code emits."""
    ev = Stack(translated)
    functions = {
        logical_id: fn for logical_id, fn in translated["Resources"].items() if fn["Type"] == "AWS::Lambda::Function"
    }
    envs = {logical_id: ev(fn["Properties"].get("Environment", {}).get("Variables", {}))
            for logical_id, fn in functions.items()}
    api_names = set()
    for api in resources(translated, "AWS::ApiGateway::RestApi").values():
        props = api["Properties"]
        # API Gateway names an API imported from an OpenAPI body after info.title unless Name is given.
        api_names.add(ev(props["Name"]) if "Name" in props else ev(props["Body"]["info"]["title"]))
    stages = {
        ev(stage["Properties"]["StageName"]) for stage in resources(translated, "AWS::ApiGateway::Stage").values()
    }
    routes = set(json.loads(envs[TOKEN_API]["PROVIDERS"]))
    provider_names = {env["PROVIDER_NAME"] for env in envs.values() if "PROVIDER_NAME" in env}
    assert provider_names == routes == _profile_names(), (
        "PROVIDER_NAME of the provider functions, the token API's PROVIDERS routes and the functions' "
        "PROFILE names must agree: they are the provider dimension's values"
    )
    return {
        "FunctionName": {ev({"Ref": logical_id}) for logical_id in functions},
        "ApiName": api_names,
        "Stage": stages,
        "provider": provider_names,
        "service": {env["POWERTOOLS_SERVICE_NAME"] for env in envs.values()},
        "namespace": {env["POWERTOOLS_METRICS_NAMESPACE"] for env in envs.values()},
        "metric": emitted_metric_names(),
    }


Metric = tuple[str, str, str, dict[str, "str | None"]]
"""(label, namespace, metric name, dimensions): a dimension's value is None where a Metrics Insights query
reads every value of it (a SCHEMA dimension its WHERE does not fix)."""


def _check_metric(where: str, namespace: str, dimensions: dict[str, str | None], known: dict[str, set[str]],
                  metric: str | None = None) -> list[str]:
    problems = []
    allowed = {"AWS/Lambda", "AWS/ApiGateway", *known["namespace"]}
    if namespace not in allowed:
        return [f"{where}: namespace {namespace!r} is none of {sorted(allowed)}"]
    sets = DIMENSION_SETS["TokenVending" if namespace in known["namespace"] else namespace]
    if set(dimensions) not in sets:
        problems.append(f"{where}: dimensions {sorted(dimensions)} are not a set {namespace} publishes ({sets})")
    for name, value in dimensions.items():
        if name not in known:
            problems.append(f"{where}: unknown dimension {name}")
        elif value is not None and value not in known[name]:
            problems.append(f"{where}: {name}={value!r} names nothing this stack creates ({sorted(known[name])})")
    if metric is not None and namespace in known["namespace"] and metric not in known["metric"]:
        problems.append(f"{where}: {namespace} metric {metric!r} is never emitted by the code")
    return problems


def _insights_metric(label: str, expression: str) -> Metric:
    """A Metrics Insights query as the one metric (per dimension values) it reads."""
    query = metrics_insights(expression)
    schema = query["schema"]
    for name in [*query["where"], *query["group_by"]]:
        assert name in schema, f"{label}: {name} is not a dimension of SCHEMA{tuple(schema)} in {expression!r}"
    dimensions: dict[str, str | None] = {name: query["where"].get(name) for name in schema}
    return (label, query["namespace"], query["metric"], dimensions)


def _alarm_metrics(props: dict[str, Any]) -> list[Metric]:
    """Every metric an alarm reads: a single metric, a Metrics list, or a Metrics Insights query."""
    found: list[Metric] = []
    if "MetricName" in props:
        dimensions: dict[str, str | None] = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
        found.append(("metric", props["Namespace"], props["MetricName"], dimensions))
    for query in props.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            found.append((query["Id"], metric["Namespace"], metric["MetricName"], dimensions))
        else:
            assert "Expression" in query, f"a metric query with neither MetricStat nor Expression: {query}"
            if is_metrics_insights(query["Expression"]):
                found.append(_insights_metric(query["Id"], query["Expression"]))
    return found


def test_every_alarm_watches_something_the_stack_creates(translated: dict[str, Any]) -> None:
    known = _what_the_stack_creates(translated)
    ev = Stack(translated)
    alarms = resources(translated, "AWS::CloudWatch::Alarm")
    assert alarms, "no alarms"
    problems = []
    for name, alarm in alarms.items():
        metrics = _alarm_metrics(ev(alarm["Properties"]))
        assert metrics, f"{name} reads no metric"
        for label, namespace, metric, dimensions in metrics:
            problems += _check_metric(f"{name} ({label})", namespace, dimensions, known, metric)
    assert not problems, "\n".join(problems)


def _dashboard_metrics(body: dict[str, Any]) -> list[Metric]:
    """(widget title, namespace, metric name, dimensions) of every metric line of a dashboard body.

    A line is [namespace, metric name, dimension name, value, ..., {options}]; "." repeats the value at
    the same position of the line before (CloudWatch's shorthand). An expression line has options only; a
    Metrics Insights expression there is read like an alarm's.
    """
    found: list[Metric] = []
    for widget in body["widgets"]:
        properties = widget.get("properties", {})
        title = properties.get("title", "?")
        previous: list[Any] = []
        for line in properties.get("metrics", []):
            values = [item for item in line if not isinstance(item, dict)]
            assert "..." not in values, "the '...' shorthand is not resolved by this test: write lines out"
            values = [previous[i] if v == "." else v for i, v in enumerate(values)]
            previous = values
            if not values:  # an expression line: options only
                options = next((item for item in line if isinstance(item, dict)), {})
                if is_metrics_insights(options.get("expression", "")):
                    found.append(_insights_metric(title, options["expression"]))
                continue
            namespace, metric, *pairs = values
            assert len(pairs) % 2 == 0, f"{title}: odd dimension list {pairs}"
            found.append((title, namespace, metric, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def test_every_dashboard_metric_is_something_the_stack_creates(translated: dict[str, Any]) -> None:
    known = _what_the_stack_creates(translated)
    ev = Stack(translated)
    (dashboard,) = resources(translated, "AWS::CloudWatch::Dashboard").values()
    body = json.loads(ev(dashboard["Properties"]["DashboardBody"]))
    metrics = _dashboard_metrics(body)
    assert metrics, "the dashboard shows no metric"
    problems = []
    for title, namespace, metric, dimensions in metrics:
        problems += _check_metric(f"dashboard widget {title!r}", namespace, dimensions, known, metric)
    assert not problems, "\n".join(problems)
    # every provider and every function appears on it
    assert {d["provider"] for _, _, _, d in metrics if d.get("provider")} == known["provider"]
    assert {d["FunctionName"] for _, _, _, d in metrics if "FunctionName" in d} == known["FunctionName"]
    # and every metric an alarm watches
    ev_alarms = resources(translated, "AWS::CloudWatch::Alarm").values()
    alarmed = {metric for alarm in ev_alarms for _, _, metric, _ in _alarm_metrics(ev(alarm["Properties"]))}
    shown = {metric for _, _, metric, _ in metrics}
    assert alarmed <= shown, f"alarmed but not on the dashboard: {sorted(alarmed - shown)}"


def test_the_checks_catch_a_misnamed_api() -> None:
    """The resolution above refuses the old alarm's ApiName (the API has no "-api" suffix)."""
    translated = translate()
    known = _what_the_stack_creates(translated)
    assert known["ApiName"] == {STACK_NAME}
    problems = _check_metric("x", "AWS/ApiGateway", {"ApiName": f"{STACK_NAME}-api", "Stage": "v1"}, known)
    assert problems
    assert "names nothing" in problems[0]
    assert _check_metric("x", "AWS/Lambda", {"FunctionName": "TokenApiFunctionRole-physical-id"}, known)
    assert _check_metric("x", "TokenVending", {"provider": "paypal", "service": "token-vending"}, known)
    assert not _check_metric("x", "TokenVending", {"provider": "pyng", "service": "token-vending"}, known)


def test_the_checks_read_metrics_insights_queries() -> None:
    """Metrics Insights: the SCHEMA must be a dimension set the namespace publishes, WHERE values must name
    something, and the metric must be one the code emits; a form the checks cannot read fails."""
    known = _what_the_stack_creates(translate())

    def problems(expression: str) -> list[str]:
        _, namespace, metric, dimensions = _insights_metric("q", expression)
        return _check_metric("q", namespace, dimensions, known, metric)

    good = 'SELECT MIN(ClientCertificateDaysLeft) FROM SCHEMA("TokenVending", provider, service)'
    assert not problems(good)
    assert not problems(good + " WHERE provider = 'pyng' GROUP BY provider")
    assert problems(good.replace(", service", ""))  # EMF never publishes provider alone
    assert problems(good + " WHERE provider = 'paypal'")
    assert problems(good.replace("ClientCertificateDaysLeft", "ClientCertificateDaysRemaining"))
    assert problems(good.replace('"TokenVending"', '"Token-Vending"'))
    with pytest.raises(AssertionError, match="not a dimension"):
        problems(good + " GROUP BY FunctionName")
    with pytest.raises(AssertionError, match="cannot read"):
        problems(good + " ORDER BY MIN() ASC LIMIT 1")


# --- the token API's time budget ------------------------------------------------------------------
def _attempts(config: Config) -> int:
    """Total attempts botocore makes. Its client-config ``max_attempts`` counts *retries* (botocore rewrites it, in
    place, to ``total_max_attempts = max_attempts + 1`` when a client is made), so the layer names
    ``total_max_attempts``; both spellings are read here as botocore reads them."""
    retries = config.retries or {}
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    assert "max_attempts" in retries, "no attempt count: botocore's default would apply"
    return int(retries["max_attempts"]) + 1


def test_the_layers_configs_name_total_attempts() -> None:
    """``max_attempts`` would mean one more attempt than it says (and is rewritten by botocore in place)."""
    from token_vending import clients

    for name in ("DYNAMODB_CONFIG", "API_DYNAMODB_CONFIG", "SECRETS_CONFIG", "LAMBDA_CONFIG", "KMS_CONFIG"):
        retries = getattr(clients, name).retries or {}
        assert "total_max_attempts" in retries, name
        assert "max_attempts" not in retries, name


def _retry_wait_bound(config: Config, service: str) -> float:
    """The longest botocore's standard retry mode can sleep between the attempts ``config`` allows.

    Computed with botocore's own back-off: jitter at its maximum, every error a throttle (the longest
    base), and an ``x-amz-retry-after`` header as large as botocore honours.
    """
    from botocore.retries.standard import ExponentialBackoff

    retries = config.retries or {}
    assert retries.get("mode") == "standard", f"{service}: only the standard retry mode is modelled here"

    class EveryErrorThrottles:
        def is_throttling_error_from_context(self, context: Any) -> bool:  # botocore's signature
            return True

    backoff = ExponentialBackoff(random=lambda: 1.0, service_name=service, throttling_detector=EveryErrorThrottles())
    huge = SimpleNamespace(headers={"x-amz-retry-after": str(10**9)})
    return sum(
        backoff.delay_amount(SimpleNamespace(attempt_number=attempt, http_response=huge))
        for attempt in range(1, _attempts(config))
    )


def _worst_case(config: Config, service: str) -> float:
    """Every attempt takes its whole connect and read timeouts, and every wait between them its longest.

    (A read timeout bounds each socket read, not a whole answer: for these small answers, one or two reads.)
    """
    attempts = _attempts(config)
    return attempts * (float(config.connect_timeout) + float(config.read_timeout)) + _retry_wait_bound(config, service)


def _timeouts(template: dict[str, Any]) -> dict[str, float]:
    default = template["Globals"]["Function"]["Timeout"]
    return {
        logical_id: float(fn["Properties"].get("Timeout", default))
        for logical_id, fn in resources(template, "AWS::Serverless::Function").items()
    }


def test_token_api_worst_case_fits_its_timeout_and_api_gateways_limit() -> None:
    timeouts = _timeouts(load_template())
    token_api_timeout = timeouts.pop(TOKEN_API)
    read = _worst_case(clients.API_DYNAMODB_CONFIG, "dynamodb")
    invoke = _worst_case(clients.LAMBDA_CONFIG, "lambda")
    worst = read + invoke
    wait = _retry_wait_bound(clients.API_DYNAMODB_CONFIG, "dynamodb")
    budget = (
        f"DynamoDB read {read:g} s (API_DYNAMODB_CONFIG: {read - wait:g} s of attempts + up to {wait:g} s of "
        f"botocore back-off between them) + provider invoke {invoke:g} s (LAMBDA_CONFIG) = {worst:g} s"
    )
    assert token_api_timeout <= API_GATEWAY_INTEGRATION_LIMIT, "callers would get API Gateway's 504, not ours"
    assert worst < token_api_timeout, f"{budget}: not inside the token API's {token_api_timeout:g} s timeout"
    # The token API must wait for a provider function's whole working time (it finishes its work
    # RESPONSE_RESERVE_SECONDS before its own timeout), or it gives up on answers that are on their way.
    for logical_id, timeout in timeouts.items():
        working = timeout - RESPONSE_RESERVE_SECONDS
        assert float(clients.LAMBDA_CONFIG.read_timeout) >= working, (
            f"LAMBDA_CONFIG read_timeout {clients.LAMBDA_CONFIG.read_timeout} s < {logical_id}'s working time "
            f"{working:g} s (Timeout {timeout:g} s less {RESPONSE_RESERVE_SECONDS:g} s)"
        )
    assert _attempts(clients.LAMBDA_CONFIG) == 1, "a timed-out invoke must not re-invoke"


def test_worst_case_model_counts_botocores_back_off() -> None:
    """The back-off is botocore's: one retry of a throttled DynamoDB call may wait its base (1 s) plus
    the 5 s botocore adds at most for ``x-amz-retry-after``; no retry, no wait."""
    from botocore.config import Config

    assert _retry_wait_bound(Config(retries={"mode": "standard", "total_max_attempts": 1}), "dynamodb") == 0
    one_retry = _retry_wait_bound(Config(retries={"mode": "standard", "total_max_attempts": 2}), "dynamodb")
    assert one_retry > 1  # more than the jittered base alone
    assert _worst_case(Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 1}),
                       "lambda") == 3
