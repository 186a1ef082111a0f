"""Hostile input, property-based: whatever a caller sends, the handlers answer with the contract.

Two entry points take caller-controlled data:

* the token API function (API Gateway proxy events): it must always return a contract response and
  hand a provider function nothing but a normalised subset of the provider's configured scopes,
  an integer ``min_ttl`` and a boolean ``force_refresh``;
* a provider function (direct invocation with any JSON value): it must return the token body or
  raise one of the contract's named exceptions, and the provider's token endpoint (a real HTTP
  server on 127.0.0.1 here) must receive nothing but ``grant_type`` and configured scope values.

Examples are derandomised and no example database is used, so CI runs the same examples every time.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import TABLE, load_app
from token_vending.catalogue import CATALOGUE
from token_vending.exceptions import InvalidRequest
from token_vending.profile import ScopeMode
from token_vending.request import check_scopes
from token_vending.scopes import parse_scope_set

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.unit.conftest import Context

# -- configuration under test ---------------------------------------------------------------------
PYNG_SCOPES = ("billing:customers:invite", "billing:customers:read", "billing:batches:submit",
               "billing:batches:read")
ROUTES = tuple(entry.name for entry in CATALOGUE)
PROVIDERS: dict[str, dict[str, Any]] = {
    entry.name: {"function": f"{entry.name}-function", "lifetime": entry.lifetime} for entry in CATALOGUE}
"""The token API's table: functions and lifetimes; the scopes are the connections' own settings."""
ALLOWED: dict[str, frozenset[str]] = {entry.name: frozenset(PYNG_SCOPES if entry.name == "pyng" else ())
                                      for entry in CATALOGUE}
"""What each connection's function allows (its settings): the stand-in functions refuse the rest."""
TAKES_NO_SCOPE = frozenset(entry.name for entry in CATALOGUE if entry.scope is ScopeMode.OMIT)
CLIENT_ID = "hostile-client-id"
CLIENT_SECRET = "hostile-client-secret-3c1f"

# -- the contract ---------------------------------------------------------------------------------
API_STATUSES = frozenset({200, 400, 404, 500, 502, 503, 504})
CODES_BY_STATUS = {
    400: {"invalid_request"}, 404: {"unknown_provider"}, 500: {"misconfigured", "internal_error"},
    502: {"upstream_rejected", "upstream_invalid_response"}, 503: {"upstream_unavailable"},
    504: {"upstream_timeout"},
}
CONTRACT_CODES = frozenset({"invalid_request", "unknown_provider", "misconfigured", "upstream_rejected",
                            "upstream_invalid_response", "upstream_unavailable", "upstream_timeout"})
ERROR_KEYS = frozenset({"error", "error_description", "provider"})
ERROR_EXTRA_KEYS = frozenset({"upstream_error", "upstream_status", "retry_after"})
TOKEN_KEYS = frozenset({"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"})
PROVIDER_EXCEPTIONS = frozenset({"InvalidRequest", "Misconfigured", "UpstreamRejected", "UpstreamInvalidResponse",
                                 "UpstreamUnavailable", "UpstreamTimeout", "InternalError"})
PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
"""What a connection's name looks like (``invoice-cloud``, ``AriaAu``): the only caller text an answer may repeat (the
route of a 404)."""
MARKER = "ZZECHO"
"""Planted in caller input: the contract's responses never echo caller text back."""

HOSTILE = settings(
    deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)
API_EXAMPLES = 5000
API_ANSWER_EXAMPLES = 2000
PROVIDER_EXAMPLES = 3000
"""10,000 generated events in total (about 50 s on two cores)."""

# -- strategies -----------------------------------------------------------------------------------
NASTY_STRINGS = [
    "", " ", "  ", "\n", "\r\n", "\t", "\x00", "\x1b[31m", "\x7f", "\u2028", "\u202e", "\ufeff", "\u200b",
    "..", "../", "../../../../etc/passwd", "..%2F..%2F", "%2e%2e%2f", "%2F", "%252F", "/", "\\", "..\\..\\",
    "%", "%%", "%00", "%0a", "%0d%0a", "&", "=", "&&==", "?", "#", ";", "+", "'", '"', "`", "''", '"";',
    "a=b&c=d", "scope=billing:admin", "${jndi:ldap://127.0.0.1/a}", "{{7*7}}", "<script>alert(1)</script>",
    "'; DROP TABLE tokens; --", "null", "None", "true", "false", "0", "-1", "1e309", "NaN", "[]", "{}",
    f"{MARKER}", f"{MARKER}\r\nX-Injected: 1", f"bad secret {MARKER}", "ñ", "\uff50\uff59\uff4e\uff47", "日本語", "🔑",
    "A" * 2049, "B" * 70_000, f"{MARKER}-" * 3000,
]
PATH_SAMPLES = [
    *ROUTES, "PYNG", "Pyng", "pyng ", " pyng", "pyng\n", "pyng\x00", "pyng/", "/pyng", "pyng/../aria",
    "pyng%2F..%2Faria", "..%2Fpyng", "../pyng", "pyng%00", "pyng?scope=billing:admin", "pyng#", "pyng;aria",
    "invoice_cloud", "alternative_payments", "token_api", "token-api", "pyng\u200b", "\u202epyng", "aria.",
    "unknown", "a" * 63, "a" * 64, "-pyng", f"{MARKER}", "__proto__", "constructor", "toString",
]
SCOPE_SAMPLES = [
    *PYNG_SCOPES, " ".join(PYNG_SCOPES), " ".join(reversed(PYNG_SCOPES)), "billing:batches:read " * 2,
    "billing:admin", "billing:batches:read billing:admin", "billing:batches:read\nbilling:admin",
    "billing:batches:read\r\nbilling:batches:submit", "billing:batches:read\tbilling:batches:submit",
    "billing:batches:read+billing:batches:submit", "billing:batches:read%20billing:batches:submit",
    "billing:batches:read&scope=billing:admin", "billing:batches:read&grant_type=password",
    "billing:batches:read=1", "billing:batches:read%", '"billing:batches:read"', "'billing:batches:read'",
    "billing:batches:read\\", "  billing:batches:read  ", "billing:batches:read\x00", "BILLING:BATCHES:READ",
    "billing:batches:read\u00a0billing:batches:submit", "billing:batches:read\u3000", "billing:*", "*",
    " ".join(PYNG_SCOPES * 8), " ".join(["billing:batches:read"] * 33), " ".join(["billing:batches:read"] * 32),
    "billing:batches:read " + "x" * 129, "billing:batches:read " * 400, f"billing:batches:read {MARKER}",
]
MIN_TTL_SAMPLES = [
    "0", "1", "59", "60", "899", "900", "901", "3600", "3601", "86400", "86401", "-1", "+60", " 60", "60 ",
    "060", "60.0", "6e1", "0x3c", "999999999", "9999999999", "١٢٣", "²", "٣", "60\n", "", "true", "null",
    0, 1, 60, 900, 901, 3600, 86400, 86401, -1, 2**31, 2**63, -(2**63), 10**100, 60.0, 60.5, float("inf"),
    float("nan"), True, False,
]
FORCE_SAMPLES = [
    True, False, "true", "false", "TRUE", "False", "tRuE", "1", "0", "yes", "on", "", "true\n", " true",
    "\uff54\uff52\uff55\uff45", "true&false", 1, 0, 1.0, None, [], {}, ["true"], {"true": True},
]

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
nasty_text = st.one_of(st.sampled_from(NASTY_STRINGS), text)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), nasty_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(nasty_text, inner, max_size=3), max_leaves=5)
"""Any JSON value (and a few that JSON cannot carry: NaN, infinities, huge integers)."""
odd_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(nasty_text, scalars, max_size=3))
"""A cheaper, shallow kind of ``json_values`` for the many places a parameter value is drawn."""
scope_lists = st.lists(st.sampled_from([*PYNG_SCOPES, "billing:admin", "", " ", MARKER]), max_size=40)
scope_separators = st.sampled_from([" ", "  ", "\n", "\t", "+", "%20", "&", ",", "&scope="])
scope_values = st.one_of(
    st.lists(st.sampled_from(PYNG_SCOPES), max_size=6).map(" ".join),
    st.builds(lambda scopes, separator: separator.join(scopes), scope_lists, scope_separators),
    st.sampled_from(SCOPE_SAMPLES), st.from_regex(r"[a-z:%&=+\n\r\t\"' ./\\-]{0,40}", fullmatch=True), nasty_text,
    odd_values,
)
ODD_DIGITS = "\u00b2\u00b3\u00b9\u2070\u2074\u2460\u2468\u0661\u0662\uff10\uff11"
unicode_digits = st.text(st.one_of(st.sampled_from(ODD_DIGITS), st.characters(categories=["Nd", "No"])),
                         min_size=1, max_size=4)
"""Digits beyond ASCII: ``"\u00b2".isdigit()`` is true, yet ``int("\u00b2")`` raises."""
min_ttl_values = st.one_of(st.sampled_from(MIN_TTL_SAMPLES), st.integers(min_value=-100, max_value=100_000),
                           st.integers().map(str), st.from_regex(r"[0-9 +\-.e]{0,12}", fullmatch=True), unicode_digits,
                           odd_values)
force_values = st.one_of(st.sampled_from(FORCE_SAMPLES), odd_values)
parameter_names = st.one_of(st.sampled_from(["scope", "min_ttl", "force_refresh", "Scope", "scope ", "scope[]",
                                             "scope\x00", "grant_type", "client_secret", "audience", MARKER]),
                            nasty_text)
query_parameters = st.fixed_dictionaries(
    {}, optional={"scope": scope_values, "min_ttl": min_ttl_values, "force_refresh": force_values},
)
hostile_by_name = {"scope": scope_values, "min_ttl": min_ttl_values, "force_refresh": force_values}
well_formed = st.fixed_dictionaries({}, optional={
    "min_ttl": st.integers(min_value=0, max_value=900).map(str), "force_refresh": st.sampled_from(["true", "false"])})


@st.composite
def one_bad_parameter(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed parameters but one, so the odd value is what the validation meets first."""
    name = draw(st.sampled_from(sorted(hostile_by_name)))
    return {**draw(well_formed), name: draw(hostile_by_name[name])}


query_with_extras = st.builds(lambda base, extra: {**extra, **base}, query_parameters,
                              st.dictionaries(parameter_names, odd_values, max_size=3))


json_or_none = st.one_of(st.none(), json_values)
repeats = st.lists(nasty_text, min_size=1, max_size=3)
odd_multi = st.dictionaries(parameter_names, st.one_of(st.lists(odd_values, max_size=3), odd_values), max_size=3)
EVENT_FIELDS = ("resource", "path", "httpMethod", "headers", "pathParameters", "queryStringParameters",
                "multiValueQueryStringParameters", "requestContext", "body", "isBase64Encoded")
mutations = st.lists(st.tuples(st.sampled_from(EVENT_FIELDS), st.booleans(), json_values), max_size=3)


@st.composite
def api_events(draw: st.DrawFn) -> Any:
    """Mostly API Gateway proxy events (most of them for a deployed route, so that requests get past
    routing), with odd values in every field; now and then not an object at all."""
    if draw(st.integers(0, 19)) == 19:
        return draw(json_values)
    pick = draw(st.integers(0, 9))
    provider = draw(st.sampled_from(ROUTES) if pick < 6 else st.sampled_from(PATH_SAMPLES) if pick < 8
                    else nasty_text if pick == 8 else json_values)
    pick = draw(st.integers(0, 9))
    path_parameters = ({"provider": provider} if pick < 8 else {"provider": provider, "proxy": "x"} if pick == 8
                       else draw(json_or_none))
    pick = draw(st.integers(0, 9))
    single = draw(one_bad_parameter() if pick < 4 else query_parameters if pick < 6 else query_with_extras if pick < 8
                  else json_or_none)
    pick = draw(st.integers(0, 9))
    if not isinstance(single, dict) or pick >= 8:
        multi = draw(json_or_none if pick % 2 else odd_multi)
    elif pick < 6:  # as API Gateway builds it
        multi = {key: [value] for key, value in single.items()} or None
    else:  # a repeated parameter
        extra = draw(repeats)
        multi = {key: [value, *extra] for key, value in single.items()} or {"scope": ["a", *extra]}
    event: dict[str, Any] = {
        "resource": "/token/{provider}", "path": f"/token/{provider}", "httpMethod": "GET",
        "headers": {"Host": "localhost"}, "pathParameters": path_parameters,
        "queryStringParameters": single, "multiValueQueryStringParameters": multi,
        "requestContext": {"requestId": "req-1", "resourcePath": "/token/{provider}", "httpMethod": "GET"},
        "body": None, "isBase64Encoded": False,
    }
    # Any field may be missing or replaced by a value of any type.
    if draw(st.integers(0, 9)) >= 7:
        for name, delete, value in draw(mutations):
            if delete:
                event.pop(name, None)
            else:
                event[name] = value
    return event


valid_scopes = st.lists(st.sampled_from(PYNG_SCOPES), max_size=5).map(" ".join)


@st.composite
def invoke_payloads(draw: st.DrawFn) -> Any:
    """Direct-invocation payloads: JSON values of every type, the right keys with odd values, and a
    share of well-formed requests (some forcing a refresh, so that the token endpoint is reached)."""
    pick = draw(st.integers(0, 15))
    if pick < 4:
        return draw(one_bad_parameter())
    if pick < 7:
        return draw(query_parameters)
    if pick < 10:
        return draw(query_with_extras)
    if pick < 13:
        return draw(json_values)
    if pick == 13:
        return {"scope": draw(valid_scopes), "min_ttl": draw(min_ttl_values), "force_refresh": draw(force_values)}
    return {"scope": draw(valid_scopes), "min_ttl": draw(st.integers(min_value=0, max_value=900)),
            "force_refresh": pick == 15}


# -- checks ---------------------------------------------------------------------------------------
def _check_scope_value(scope: Any, route: str, *, allowed_only: bool = True) -> None:
    """``None`` or a sorted, de-duplicated, space-joined set of scope-tokens: a subset of the connection's allowed
    scopes where its function decides (``allowed_only``), any valid ones where the token API passes them on."""
    if scope is None:
        return
    assert isinstance(scope, str)
    scopes = scope.split(" ")
    assert scopes
    assert parse_scope_set(scope) == set(scopes), scope
    if allowed_only:
        assert set(scopes) <= ALLOWED[route], scope
    assert scopes == sorted(set(scopes)), scope


def _check_error_body(body: Any, status: int, codes: frozenset[str]) -> None:
    assert isinstance(body, dict), body
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | ERROR_EXTRA_KEYS, body
    assert body["error"] in codes, body
    assert body["error"] in CODES_BY_STATUS[status], body
    description = body["error_description"]
    assert isinstance(description, str)
    assert len(description) <= 200
    assert PRINTABLE.match(description), description
    provider = body["provider"]
    assert provider is None or (isinstance(provider, str) and PROVIDER_NAME.match(provider)), provider


def _check_api_response(response: Any, codes: frozenset[str], *, caller_text: bool = True
                        ) -> tuple[int, dict[str, Any]]:
    assert isinstance(response, dict), response
    status = response["statusCode"]
    assert type(status) is int
    assert status in API_STATUSES, status
    headers = response["headers"]
    assert headers["Cache-Control"] == "no-store"
    assert headers["Pragma"] == "no-cache"
    assert headers["Content-Type"] == "application/json"
    assert all(isinstance(key, str) and isinstance(value, str) and PRINTABLE.match(value)
               for key, value in headers.items()), headers
    assert isinstance(response["body"], str)
    body = json.loads(response["body"])
    if caller_text:  # caller input is never echoed back (a provider's own description may be), but a route's name
        shown = {**body, "provider": None} if status == 404 and isinstance(body, dict) else body
        assert MARKER not in json.dumps(shown)
    if status == 200:
        assert isinstance(body, dict)
        assert set(body) == TOKEN_KEYS, body
    else:
        _check_error_body(body, status, codes)
        if "Retry-After" in headers:
            assert headers["Retry-After"].isdigit()
    return status, body


# -- token API function ---------------------------------------------------------------------------
def _token_body(route: str, token: str, scope: str | None) -> dict[str, Any]:
    return {"provider": route, "access_token": token, "token_type": "Bearer", "expires_in": 800,
            "expires_at": "2030-01-01T00:00:00Z", "scope": scope}


class RecordingLambda:
    """Stands in for the Lambda client: records every invocation; answers with a valid token body,
    or with whatever ``answer`` says."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer: Any = None

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if callable(self.answer):
            return self.answer(kwargs)  # type: ignore[no-any-return]
        route = next(name for name, entry in PROVIDERS.items() if entry["function"] == kwargs["FunctionName"])
        payload = json.loads(kwargs["Payload"])
        try:  # as the connection's function checks them, once its settings are read
            check_scopes(parse_scope_set(payload.get("scope") or ""), ALLOWED[route], provider=route)
        except InvalidRequest as exc:
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": io.BytesIO(json.dumps(
                {"errorType": "InvalidRequest", "errorMessage": str(exc)}).encode())}
        body = _token_body(route, f"fresh-{route}-{len(self.calls)}", payload.get("scope"))
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": io.BytesIO(json.dumps(body).encode())}


@pytest.fixture
def token_api(moto_table: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CACHE_TABLE_NAME", TABLE)
    monkeypatch.setenv("PROVIDERS", json.dumps(PROVIDERS))
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    # Cache hits for pyng's whole scope set and for a request naming none (the "" key), so both answering paths
    # are exercised.
    for key in (" ".join(sorted(PYNG_SCOPES)), ""):
        moto_table.put_item(TableName=TABLE, Item={
            "pk": {"S": "pyng"}, "sk": {"S": "token#" + key},
            "access_token": {"S": "cached-pyng"}, "token_type": {"S": "Bearer"}, "expires_at": {"N": "4102444800"},
            "fetched_at": {"N": "1700000000"}, "lifetime": {"N": "900"}, "purge_at": {"N": "4102448400"}})
    app = load_app("token_api")
    app.api.lambda_client = RecordingLambda()
    return app


def _check_invocation(call: dict[str, Any]) -> str:
    routes = [name for name, entry in PROVIDERS.items() if entry["function"] == call.get("FunctionName")]
    assert len(routes) == 1, call.get("FunctionName")
    route = routes[0]
    assert set(call) == {"FunctionName", "InvocationType", "Payload"}
    assert call["InvocationType"] == "RequestResponse"
    payload = json.loads(call["Payload"])
    assert isinstance(payload, dict)
    assert set(payload) == {"scope", "min_ttl", "force_refresh"}, payload
    _check_scope_value(payload["scope"], route, allowed_only=False)  # the token API checks syntax only
    if route in TAKES_NO_SCOPE:
        assert payload["scope"] is None
    assert type(payload["min_ttl"]) is int
    assert 0 <= payload["min_ttl"] <= PROVIDERS[route]["lifetime"]
    assert type(payload["force_refresh"]) is bool
    return route


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_token_api_answers_any_event_with_the_contract(token_api: Any, context: Context) -> None:
    fake: RecordingLambda = token_api.api.lambda_client
    outcomes: dict[int, int] = {}

    @settings(HOSTILE, max_examples=API_EXAMPLES)
    @given(event=api_events())
    def run(event: Any) -> None:
        before = len(fake.calls)
        response = token_api.handler(event, context)
        # Backends are healthy here: a 5xx can only be the handler failing on the input itself.
        status, body = _check_api_response(response, CONTRACT_CODES)
        assert status in (200, 400, 404), body
        outcomes[status] = outcomes.get(status, 0) + 1
        new = fake.calls[before:]
        assert len(new) <= 1
        for call in new:
            route = _check_invocation(call)
            scope = json.loads(call["Payload"])["scope"]
            if scope is not None and not set(scope.split()) <= ALLOWED[route]:
                assert (status, body["error"]) == (400, "invalid_request"), body  # the function refused it
                continue
            assert status == 200
            assert body["access_token"] == f"fresh-{route}-{len(fake.calls)}"
        if status == 200 and not new:
            assert body["access_token"] == "cached-pyng"

    run()
    # The generator really reaches every answer, including delegation to provider functions.
    assert outcomes.get(200, 0) > 100, outcomes
    assert outcomes.get(400, 0) > 100, outcomes
    assert outcomes.get(404, 0) > 100, outcomes
    assert len(fake.calls) > 100


def _function_answer(document: Any, *, function_error: str | None = None, raw: bytes | None = None
                     ) -> dict[str, Any]:
    payload = raw if raw is not None else json.dumps(document).encode()
    answer: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(payload)}
    if function_error is not None:
        answer["FunctionError"] = function_error
    return answer


error_types = st.one_of(st.sampled_from([*sorted(PROVIDER_EXCEPTIONS), "UnknownProvider", "KeyError",
                                         "Sandbox.Timedout", "Runtime.ExitError", "TokenVendingError"]),
                        nasty_text, json_values)
error_messages = st.one_of(
    st.builds(json.dumps, st.dictionaries(
        st.sampled_from(["error", "error_description", "provider", "upstream_error", "upstream_status",
                         "retry_after", "access_token"]), json_values, max_size=5)),
    st.sampled_from(["Task timed out after 25.00 seconds", "not json", "{}", "[]", "null"]), nasty_text, json_values,
)
function_answers = st.one_of(
    st.builds(lambda error_type, message: _function_answer(
        {"errorType": error_type, "errorMessage": message, "stackTrace": [f"{MARKER} frame"]},
        function_error="Unhandled"), error_types, error_messages),
    st.builds(_function_answer, json_values),
    st.builds(lambda document: _function_answer(document, function_error="Handled"), json_values),
    st.builds(lambda raw: _function_answer(None, raw=raw), st.binary(max_size=64)),
)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_token_api_survives_any_provider_function_answer(token_api: Any, context: Context) -> None:
    """The provider function's answer is hostile too: every outcome is still a contract response."""
    fake: RecordingLambda = token_api.api.lambda_client
    event = {"resource": "/token/{provider}", "pathParameters": {"provider": "aria"},
             "queryStringParameters": {"force_refresh": "true"}, "requestContext": {"requestId": "req-2"}}

    @settings(HOSTILE, max_examples=API_ANSWER_EXAMPLES)
    @given(answer=function_answers)
    def run(answer: dict[str, Any]) -> None:
        fake.answer = lambda _: answer
        status, body = _check_api_response(token_api.handler(event, context),
                                           CONTRACT_CODES | {"internal_error"}, caller_text=False)
        if status == 200:
            assert isinstance(body["access_token"], str)
        else:
            assert body["provider"] == "aria"

    run()


# -- a provider function --------------------------------------------------------------------------
class TokenEndpoint:
    """A provider token endpoint on 127.0.0.1 that records every request and issues a token."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with endpoint._lock:
                    endpoint.requests.append((self.command, self.path, dict(self.headers.items()), body))
                    token = f"issued-{len(endpoint.requests)}"
                    endpoint.issued.append(token)
                scope = next(iter(parse_qs(body.decode("ascii", "replace")).get("scope", [])), None)
                answer = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 900,
                                     **({"scope": scope} if scope else {})}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_PUT = do_DELETE = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def pyng_function(moto_table: Any, token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="token-vending/hostile/pyng", SecretString=json.dumps({"client_id": CLIENT_ID,
                                                                   "client_secret": CLIENT_SECRET}))
    for name, value in {
        "CACHE_TABLE_NAME": TABLE, "CONNECTION_NAME": "pyng", "TOKEN_URL": token_endpoint.url,
        "TOKEN_VENDING_LOCAL_MODE": "true", "SECRET_ID": "token-vending/hostile/pyng",
        "ALLOWED_SCOPES": " ".join(PYNG_SCOPES), "TOKEN_LIFETIME": "900", "UPSTREAM_RETRIES": "0",
        # Every forced refresh reaches the token endpoint: a token fetched a moment ago does not
        # absorb the next forced refresh.
        "FORCE_REFRESH_INTERVAL": "0", "POWERTOOLS_LOG_LEVEL": "WARNING",
        # ... and the hourly budget (whose forced share would answer 503 after 30) does not stop them.
        "UPSTREAM_BUDGETS": "pyng=1000000",
    }.items():
        monkeypatch.setenv(name, value)
    return load_app("pyng")


def _check_token_request(request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, path, headers, body = request
    assert method == "POST"
    assert path == "/oauth2/token"
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert headers.get("Authorization") == f"Basic {expected}"
    assert headers.get("Content-Type") == "application/x-www-form-urlencoded"
    text_body = body.decode("ascii")  # a non-ASCII byte would already be caller data
    assert MARKER not in text_body
    form = parse_qs(text_body, keep_blank_values=True, strict_parsing=True)
    assert set(form) == {"grant_type", "scope"}, form
    assert form["grant_type"] == ["client_credentials"]
    assert len(form["scope"]) == 1
    _check_scope_value(form["scope"][0], "pyng")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_provider_function_answers_any_payload_with_a_token_or_a_named_error(
        pyng_function: Any, token_endpoint: TokenEndpoint, context: Context) -> None:
    outcomes: dict[str, int] = {}

    @settings(HOSTILE, max_examples=PROVIDER_EXAMPLES)
    @given(payload=invoke_payloads())
    def run(payload: Any) -> None:
        before = len(token_endpoint.requests)
        error: Exception | None = None
        try:
            body = pyng_function.handler(payload, context)
        except Exception as exc:
            error = exc
        if error is not None:
            name = type(error).__name__
            assert name in PROVIDER_EXCEPTIONS, f"{name}: {error!r} for {payload!r}"
            document = json.loads(str(error))  # what the token API parses back out of errorMessage
            _check_error_body(document, {"InvalidRequest": 400, "Misconfigured": 500, "InternalError": 500,
                                         "UpstreamRejected": 502, "UpstreamInvalidResponse": 502,
                                         "UpstreamUnavailable": 503, "UpstreamTimeout": 504}[name],
                              CONTRACT_CODES | {"internal_error"})
            assert MARKER not in str(error)
            # Secrets Manager, DynamoDB and the token endpoint are healthy: only the request can be wrong.
            assert name == "InvalidRequest", f"{name}: {error!r} for {payload!r}"
            outcomes[name] = outcomes.get(name, 0) + 1
        else:
            assert isinstance(body, dict)
            assert set(body) == TOKEN_KEYS, body
            assert body["provider"] == "pyng"
            assert body["access_token"] in token_endpoint.issued
            _check_scope_value(body["scope"], "pyng")
            outcomes["token"] = outcomes.get("token", 0) + 1
        new = token_endpoint.requests[before:]
        assert len(new) <= 1
        for request in new:
            _check_token_request(request)

    run()
    # Hostile payloads get named errors; well-formed ones reach the provider and get tokens.
    assert outcomes.get("token", 0) > 100, outcomes
    assert outcomes.get("InvalidRequest", 0) > 100, outcomes
    assert set(outcomes) <= {"token", "InvalidRequest"}, outcomes
    assert len(token_endpoint.requests) > 50
    for request in token_endpoint.requests:
        _check_token_request(request)
