"""Operations: every alarm and dashboard metric names something the stack creates, and the time budget.

- Alarms and the dashboard are plain strings to CloudWatch: a dimension naming an API, function, stage,
  connection or service that does not exist is accepted at deploy time and then watches nothing, for ever
  (an alarm that can never fire). Every dimension is resolved here, on SAM's translation (of the template
  with its loops expanded) evaluated with the parameter defaults, to a resource the stack really creates or a
  value the code really emits. A Metrics Insights query (``SELECT MIN(Metric) FROM SCHEMA("TokenVending",
  connection, service)``) and a SEARCH expression (``SEARCH('{TokenVending,connection,service}
  MetricName="UpstreamLatency"', 'p99', 300)``) name dimension keys rather than values: the schema must be a
  dimension set the namespace publishes, fixed values must resolve like any other, the metrics they read must
  be ones the code (or the AWS service) emits, and over the service's namespace they must read every connection
  (no WHERE, term or text that would leave one out: a connection added to Connections is watched unasked).
- The token API's worst case (its DynamoDB read and its provider invocation, from the botocore Configs in
  ``token_vending.clients``, retries and botocore's back-off included) must end inside its own timeout,
  which must stay within API Gateway's 29 s integration limit.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from tests.template.cfn import (
    CONNECTIONS,
    TOKEN_API,
    Evaluator,
    emitted_metric_names,
    is_metrics_insights,
    is_search,
    load_template,
    metrics_insights,
    resources,
    search_expression,
    translate,
)
from token_vending import clients
from token_vending.provider_function import RESPONSE_RESERVE_SECONDS
from token_vending.settings import ApiSettings

if TYPE_CHECKING:
    from botocore.config import Config

API_GATEWAY_INTEGRATION_LIMIT = 29
"""API Gateway's maximum integration timeout for a REST API (seconds)."""
STACK_NAME = "stack-under-test"
"""Not the samconfig stack names: a name written into an alarm by hand must not match by coincidence."""
# Dimension sets each namespace publishes that the alarms and the dashboard may use.
DIMENSION_SETS = {
    "AWS/Lambda": [{"FunctionName"}],
    "AWS/ApiGateway": [{"ApiName"}, {"ApiName", "Stage"}],
    "TokenVending": [{"connection", "service"}],  # Powertools EMF: the service dimension plus ours
}
# Metrics the AWS services publish that the alarms and the dashboard may read (the service's own come from the code).
AWS_METRICS = {
    "AWS/Lambda": {"Errors", "Throttles", "Invocations", "Duration", "ConcurrentExecutions"},
    "AWS/ApiGateway": {"Count", "4XXError", "5XXError", "Latency", "IntegrationLatency"},
}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translate()


class Stack(Evaluator):
    """The translated template evaluated with parameter defaults under a distinctive stack name."""

    def __init__(self, template: dict[str, Any]) -> None:
        super().__init__(template)
        self.params["AWS::StackName"] = STACK_NAME


def _connection_names() -> set[str]:
    """The names the code puts in the ``connection`` dimension: each connection function's own (its
    CONNECTION_NAME, the profile's name), the token API's the route requested: the deployed connections'."""
    return set(CONNECTIONS)


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
    routes = set(ApiSettings.from_env({k: str(v) for k, v in envs[TOKEN_API].items()}).providers)
    names = {env["CONNECTION_NAME"] for env in envs.values() if "CONNECTION_NAME" in env}
    assert names == routes == _connection_names(), (
        "CONNECTION_NAME of the connections' functions, the token API's routes (FUNCTION_<Key>) and the "
        "connections' names must agree: they are the connection dimension's values"
    )
    # CloudFormation names a function without FunctionName "<stack>-<LogicalId>-<suffix>": a SEARCH may find
    # the stack's functions by that prefix
    named = sorted(logical_id for logical_id, fn in functions.items() if "FunctionName" in fn["Properties"])
    return {
        "FunctionName": {ev({"Ref": logical_id}) for logical_id in functions},
        "FunctionNamePrefix": set() if named else {f"{STACK_NAME}-"},
        "ApiName": api_names,
        "Stage": stages,
        "connection": names,
        "service": {env["POWERTOOLS_SERVICE_NAME"] for env in envs.values()},
        "namespace": {env["POWERTOOLS_METRICS_NAMESPACE"] for env in envs.values()},
        "metric": emitted_metric_names(),
    }


class Metric(NamedTuple):
    """What an alarm or a dashboard line reads."""

    label: str
    namespace: str
    name: str
    dimensions: dict[str, str | None]
    """A value is None where a Metrics Insights query or a SEARCH reads every value of the dimension (one of its
    schema's that it does not fix)."""
    text: tuple[str, ...] = ()
    """A SEARCH's free-text terms: they match any part of any dimension value."""
    query: bool = False
    """A Metrics Insights query or a SEARCH: over the service's namespace, it must read every connection."""


def _check(where: str, read: Metric, known: dict[str, set[str]]) -> list[str]:
    problems = _check_metric(where, read.namespace, read.dimensions, known, read.name, read.text)
    if read.query and read.namespace in known["namespace"] and read.dimensions.get("connection") is not None:
        problems.append(f"{where}: reads connection={read.dimensions['connection']!r} only; a query over the "
                        "service's metrics must read every connection (those added later too)")
    return problems


def _check_metric(where: str, namespace: str, dimensions: dict[str, str | None], known: dict[str, set[str]],
                  metric: str | None = None, text: tuple[str, ...] = ()) -> list[str]:
    problems = []
    allowed = {"AWS/Lambda", "AWS/ApiGateway", *known["namespace"]}
    if namespace not in allowed:
        return [f"{where}: namespace {namespace!r} is none of {sorted(allowed)}"]
    ours = namespace in known["namespace"]
    sets = DIMENSION_SETS["TokenVending" if ours else namespace]
    if set(dimensions) not in sets:
        problems.append(f"{where}: dimensions {sorted(dimensions)} are not a set {namespace} publishes ({sets})")
    for name, value in dimensions.items():
        if name not in known:
            problems.append(f"{where}: unknown dimension {name}")
        elif value is not None and value not in known[name]:
            problems.append(f"{where}: {name}={value!r} names nothing this stack creates ({sorted(known[name])})")
    if metric is not None and ours and metric not in known["metric"]:
        problems.append(f"{where}: {namespace} metric {metric!r} is never emitted by the code")
    if metric is not None and not ours and metric not in AWS_METRICS[namespace]:
        problems.append(f"{where}: {namespace} publishes no metric {metric!r} ({sorted(AWS_METRICS[namespace])})")
    for term in text:
        # Free text matches any part of any dimension value: over the service's namespace it would leave connections
        # out; over Lambda's only the prefix every function of this stack carries (and only its) is allowed.
        if namespace == "AWS/Lambda" and dimensions == {"FunctionName": None} and term in known["FunctionNamePrefix"]:
            continue
        problems.append(f"{where}: search text {term!r} may leave out what it should watch, or add what it should not")
    return problems


def _insights_metric(label: str, expression: str) -> Metric:
    """A Metrics Insights query as the one metric (per dimension values) it reads."""
    query = metrics_insights(expression)
    schema = query["schema"]
    for name in [*query["where"], *query["group_by"]]:
        assert name in schema, f"{label}: {name} is not a dimension of SCHEMA{tuple(schema)} in {expression!r}"
    dimensions: dict[str, str | None] = {name: query["where"].get(name) for name in schema}
    return Metric(label, query["namespace"], query["metric"], dimensions, query=True)


def _search_metric(label: str, expression: str) -> Metric:
    """A SEARCH expression as the one metric (per dimension values) it finds."""
    search = search_expression(expression)
    schema = search["schema"]
    for name in search["where"]:
        assert name in schema, f"{label}: {name} is not a dimension of {{{search['namespace']},...}} in {expression!r}"
    assert search["metric"], f"{label}: a SEARCH without MetricName reads whatever the namespace holds: {expression!r}"
    dimensions: dict[str, str | None] = {name: search["where"].get(name) for name in schema}
    return Metric(label, search["namespace"], search["metric"], dimensions, tuple(search["text"]), query=True)


def _expression_metric(label: str, expression: str) -> Metric | None:
    """A query's expression read as the metric it reads; None for math over other queries' ids."""
    if is_metrics_insights(expression):
        return _insights_metric(label, expression)
    if is_search(expression):
        return _search_metric(label, expression)
    unreadable = "SEARCH(" in expression.upper() or "SELECT " in expression.upper()
    assert not unreadable, f"{label}: a SEARCH or query inside an expression these tests cannot read: {expression!r}"
    return None


def _alarm_metrics(props: dict[str, Any]) -> list[Metric]:
    """Every metric an alarm reads: a single metric, a Metrics list, a Metrics Insights query or a SEARCH."""
    found: list[Metric] = []
    if "MetricName" in props:
        dimensions: dict[str, str | None] = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
        found.append(Metric("metric", props["Namespace"], props["MetricName"], dimensions))
    for query in props.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            found.append(Metric(query["Id"], metric["Namespace"], metric["MetricName"], dimensions))
        else:
            assert "Expression" in query, f"a metric query with neither MetricStat nor Expression: {query}"
            read = _expression_metric(query["Id"], query["Expression"])
            if read is not None:
                found.append(read)
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
        for read in metrics:
            problems += _check(f"{name} ({read.label})", read, known)
    assert not problems, "\n".join(problems)
    # every function this stack creates has its own Errors and Throttles alarms (Lambda's only dimension is the
    # function's name: one alarm each, from the template's loop)
    watched = {(read.name, read.dimensions.get("FunctionName")) for alarm in alarms.values()
               for read in _alarm_metrics(ev(alarm["Properties"])) if read.namespace == "AWS/Lambda"}
    for function in known["FunctionName"]:
        assert {("Errors", function), ("Throttles", function)} <= watched, f"{function} has no Errors/Throttles alarm"


def _dashboard_metrics(body: dict[str, Any]) -> list[Metric]:
    """(widget title, namespace, metric name, dimensions, search text) of every metric line of a dashboard body.

    A line is [namespace, metric name, dimension name, value, ..., {options}]; "." repeats the value at
    the same position of the line before (CloudWatch's shorthand). An expression line has options only; a
    Metrics Insights query or a SEARCH there is read like an alarm's.
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
                read = _expression_metric(title, options.get("expression", ""))
                if read is not None:
                    found.append(read)
                continue
            namespace, metric, *pairs = values
            assert len(pairs) % 2 == 0, f"{title}: odd dimension list {pairs}"
            found.append(Metric(title, namespace, metric, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def test_every_dashboard_metric_is_something_the_stack_creates(translated: dict[str, Any]) -> None:
    known = _what_the_stack_creates(translated)
    ev = Stack(translated)
    (dashboard,) = resources(translated, "AWS::CloudWatch::Dashboard").values()
    body = json.loads(ev(dashboard["Properties"]["DashboardBody"]))
    metrics = _dashboard_metrics(body)
    assert metrics, "the dashboard shows no metric"
    problems = []
    for read in metrics:
        problems += _check(f"dashboard widget {read.label!r}", read, known)
    assert not problems, "\n".join(problems)
    # every connection appears on it: the service's metrics are read over every connection (GROUP BY connection
    # or a SEARCH, none fixes one), so a connection added to Connections appears unasked
    ours = [read for read in metrics if read.namespace in known["namespace"]]
    assert ours, "the dashboard shows none of the service's metrics"
    assert all(read.query and read.dimensions["connection"] is None for read in ours), "a widget shows some connections"
    # and every function: Lambda's metrics found by the prefix every function of this stack carries
    by_function = {read.name for read in metrics if read.namespace == "AWS/Lambda"
                   and read.dimensions == {"FunctionName": None} and set(read.text) == known["FunctionNamePrefix"]}
    assert {"Errors", "Throttles"} <= by_function, "the dashboard does not show every function's errors and throttles"
    # and every metric an alarm watches
    ev_alarms = resources(translated, "AWS::CloudWatch::Alarm").values()
    alarmed = {read.name for alarm in ev_alarms for read in _alarm_metrics(ev(alarm["Properties"]))}
    shown = {read.name for read in metrics}
    assert alarmed <= shown, f"alarmed but not on the dashboard: {sorted(alarmed - shown)}"


def test_upstream_budget_alarm(translated: dict[str, Any]) -> None:
    """Any connection's budget refusal in a 5-minute period alarms (one Metrics Insights query over every connection,
    as UpstreamFailuresAlarm and StaleServesAlarm), and the dashboard shows the refusals per connection."""
    assert "UpstreamBudgetExhausted" in emitted_metric_names()
    ev = Stack(translated)
    alarms = resources(translated, "AWS::CloudWatch::Alarm")
    props = ev(alarms["UpstreamBudgetAlarm"]["Properties"])
    (query,) = props["Metrics"]
    insights = metrics_insights(query["Expression"])
    assert (insights["function"], insights["metric"], insights["where"], insights["group_by"]) == (
        "SUM", "UpstreamBudgetExhausted", {}, [])
    assert (query["Period"], query["ReturnData"]) == (300, True)
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (1, 1, "notBreaching")
    like = ev(alarms["StaleServesAlarm"]["Properties"])
    assert (props.get("AlarmActions"), props.get("OKActions")) == (like.get("AlarmActions"), like.get("OKActions"))
    (dashboard,) = resources(translated, "AWS::CloudWatch::Dashboard").values()
    shown = [read for read in _dashboard_metrics(json.loads(ev(dashboard["Properties"]["DashboardBody"])))
             if read.name == "UpstreamBudgetExhausted"]
    assert shown, "the dashboard does not show the budget refusals"
    assert all(read.dimensions["connection"] is None for read in shown)


def test_the_checks_catch_a_misnamed_api() -> None:
    """The resolution above refuses the old alarm's ApiName (the API has no "-api" suffix)."""
    translated = translate()
    known = _what_the_stack_creates(translated)
    assert known["ApiName"] == {STACK_NAME}
    problems = _check_metric("x", "AWS/ApiGateway", {"ApiName": f"{STACK_NAME}-api", "Stage": "v1"}, known)
    assert problems
    assert "names nothing" in problems[0]
    assert _check_metric("x", "AWS/Lambda", {"FunctionName": "TokenApiFunctionRole-physical-id"}, known)
    assert not _check_metric("x", "AWS/Lambda", {"FunctionName": "PyngFunction-physical-id"}, known, "Errors")
    assert _check_metric("x", "TokenVending", {"connection": "paypal", "service": "token-vending"}, known)
    assert not _check_metric("x", "TokenVending", {"connection": "pyng", "service": "token-vending"}, known)


def test_the_checks_read_metrics_insights_queries() -> None:
    """Metrics Insights: the SCHEMA must be a dimension set the namespace publishes, WHERE values must name
    something, the metric must be one the code emits, and no connection may be left out; a form the checks
    cannot read fails."""
    known = _what_the_stack_creates(translate())

    def problems(expression: str) -> list[str]:
        return _check("q", _insights_metric("q", expression), known)

    good = 'SELECT MIN(ClientCertificateDaysLeft) FROM SCHEMA("TokenVending", connection, service)'
    assert not problems(good)
    assert not problems(good + " GROUP BY connection")
    assert not problems(good + " WHERE service = 'token-vending' GROUP BY connection")
    assert problems(good + " WHERE connection = 'pyng' GROUP BY connection")  # the other connections left out
    assert problems(good.replace(", service", ""))  # EMF never publishes connection alone
    assert problems(good + " WHERE connection = 'paypal'")
    assert problems(good + " WHERE service = 'other-service'")
    assert problems(good.replace("ClientCertificateDaysLeft", "ClientCertificateDaysRemaining"))
    assert problems(good.replace('"TokenVending"', '"Token-Vending"'))
    with pytest.raises(AssertionError, match="not a dimension"):
        problems(good + " GROUP BY FunctionName")
    with pytest.raises(AssertionError, match="cannot read"):
        problems(good + " ORDER BY MIN() ASC LIMIT 1")


def test_the_checks_read_search_expressions() -> None:
    """SEARCH: the schema must be a dimension set the namespace publishes, the metric one the code (or the AWS
    service) emits; over the service's namespace nothing may leave a connection out, over Lambda's only this stack's
    function-name prefix may narrow it; a form the checks cannot read fails."""
    known = _what_the_stack_creates(translate())

    def problems(expression: str) -> list[str]:
        return _check("s", _search_metric("s", expression), known)

    latency = "SEARCH('{TokenVending,connection,service} MetricName=\"UpstreamLatency\"', 'p99', 300)"
    assert not problems(latency)
    assert problems(latency.replace("UpstreamLatency", "UpstreamLatencyMs"))  # never emitted
    assert problems(latency.replace("{TokenVending,connection,service}", "{TokenVending,connection}"))
    assert problems(latency.replace('"UpstreamLatency"', '"UpstreamLatency" connection="pyng"'))  # one connection
    assert problems(latency.replace('"UpstreamLatency"', '"UpstreamLatency" "pyng"'))  # text: some connections
    assert problems(latency.replace('"UpstreamLatency"', '"UpstreamLatency" connection="paypal"'))
    errors = f"SEARCH('{{AWS/Lambda,FunctionName}} MetricName=\"Errors\" \"{STACK_NAME}-\"', 'Sum', 300)"
    assert not problems(errors)
    assert problems(errors.replace(f"{STACK_NAME}-", "token-vending-"))  # another stack's functions
    assert problems(errors.replace("Errors", "Error"))  # Lambda publishes no such metric
    assert problems(errors.replace('MetricName="Errors"', 'MetricName="Errors" FunctionName="elsewhere"'))
    with pytest.raises(AssertionError, match="without MetricName"):
        problems("SEARCH('{TokenVending,connection,service}', 'Sum', 300)")
    with pytest.raises(AssertionError, match="cannot read"):
        problems("SEARCH('{TokenVending,connection,service} MetricName=\"A\" OR MetricName=\"B\"', 'Sum', 300)")


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

    for name in ("DYNAMODB_CONFIG", "API_DYNAMODB_CONFIG", "SECRETS_CONFIG", "LAMBDA_CONFIG", "KMS_CONFIG",
                 "SQS_CONFIG"):
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
