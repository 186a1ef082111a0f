"""The caller library (clients/python) against loopback servers: a token API that checks the request is
SigV4-signed and counts what it serves, and a target API that answers 401 once."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import boto3
import httpx
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import token_vending_client
from token_vending_client import (
    AccessDenied,
    InvalidRequest,
    TokenVendingAuth,
    UpstreamTimeout,
    UpstreamUnavailable,
    get_token,
)
from token_vending_client import client as client_module
from token_vending_client.client import api_base, identity, normalise_scope

if TYPE_CHECKING:
    from collections.abc import Iterator


SECRETS = {"testing": "testing"}
"""The secret access keys the fake API knows, by access key id (and ``secret_for`` the ``AKIATEST`` ones)."""
ROUTE = re.compile(r"/v1/token/[A-Za-z0-9-]+")
"""The fake API's one route, at stage ``v1`` (``{provider}``: a connection's name, ``pyng`` or ``AriaAu``): API
Gateway answers any other path 403."""


def secret_for(access_key: str) -> str | None:
    return SECRETS.get(access_key) or (f"secret-of-{access_key}" if access_key.startswith("AKIATEST") else None)


def credentials_session(access_key: str, region: str = "eu-west-1") -> boto3.Session:
    """A new boto3 session with the credentials ``access_key`` names, as code that makes one per call does."""
    return boto3.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_for(access_key),
                         region_name=region)
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                            r"execute-api/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
                            r"Signature=(?P<signature>[0-9a-f]{64})")


def _rfc3986(value: str) -> str:
    return quote(value, safe="-_.~")


def signature_verifies(method: str, raw_path: str, headers: Any) -> bool:
    """API Gateway's check of a SigV4 signature, on the request as received.

    As AWS does, the query is canonicalised from what arrived: each name and value percent-decoded (``+``
    is a literal plus, not a space), RFC 3986 re-encoded, sorted. The signature is then recomputed with
    botocore's signer over those pieces and the headers the caller says it signed, at its own timestamp.
    """
    match = _AUTHORIZATION.fullmatch(headers.get("Authorization", ""))
    secret = secret_for(match["key"]) if match is not None else None
    if match is None or secret is None:
        return False
    path, _, query = raw_path.partition("?")
    pairs = sorted((_rfc3986(unquote(name)), _rfc3986(unquote(value)))
                   for name, _, value in (pair.partition("=") for pair in query.split("&") if pair))
    canonical_query = "&".join(f"{name}={value}" for name, value in pairs)
    url = f"http://{headers['Host']}{path}" + (f"?{canonical_query}" if canonical_query else "")
    request = AWSRequest(method=method, url=url,
                         headers={name: headers.get(name, "") for name in match["signed"].split(";")})
    request.context["timestamp"] = headers.get("X-Amz-Date", "")
    if not request.context["timestamp"].startswith(match["date"]):
        return False
    signer = SigV4Auth(Credentials(match["key"], secret, headers.get("X-Amz-Security-Token")),
                       "execute-api", match["region"])
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return hmac.compare_digest(expected, match["signature"])


@dataclass
class FakeTokenApi:
    """``GET /v1/token/{provider}`` as API Gateway and the service answer it; ``errors`` are played first.

    ``cannot_refresh``: a forced refresh serves the current token again, as the service does within its
    force-refresh interval.
    """

    served: list[dict[str, list[str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    """The path of every request served (without the query)."""
    authorizations: list[str] = field(default_factory=list)
    errors: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    cannot_refresh: bool = False
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not ROUTE.fullmatch(urlsplit(path).path):
            with self.lock:
                self.rejected.append(path)
            return 403, {"message": "Missing Authentication Token"}, {}
        if not signature_verifies("GET", path, headers):
            with self.lock:
                self.rejected.append(path)
            return 403, {"message": "The request signature we calculated does not match the signature you "
                                    "provided."}, {}
        query = parse_qs(urlsplit(path).query)
        with self.lock:
            self.served.append(query)
            self.paths.append(urlsplit(path).path)
            self.authorizations.append(headers.get("Authorization", ""))
            if self.errors:
                return self.errors.pop(0)
            if not (self.cannot_refresh and "force_refresh" in query and self.counter):
                self.counter += 1
            number = self.counter
        provider = urlsplit(path).path.rsplit("/", 1)[-1]
        return 200, {"provider": provider, "access_token": f"vended-token-{number}", "token_type": "Bearer",
                     "expires_in": 900, "expires_at": "2026-11-23T10:00:00Z",
                     "scope": query.get("scope", [None])[0]}, {}


@dataclass
class TargetApi:
    """The API a caller really calls: 401 for the tokens in ``refuse``, else 200 echoing the token."""

    refuse: set[str] = field(default_factory=set)
    seen: list[tuple[str, bytes]] = field(default_factory=list)


Apis = tuple[FakeTokenApi, TargetApi]


def serve(handler_for: Any) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            handler_for(self)

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


@pytest.fixture(autouse=True)
def fresh_sources() -> Iterator[None]:
    client_module._SOURCES.clear()
    yield
    client_module._SOURCES.clear()


@pytest.fixture
def token_api() -> Iterator[tuple[FakeTokenApi, str]]:
    fake = FakeTokenApi()
    server, url = serve(lambda handler: reply(handler, *fake.answer(handler.path, handler.headers)))
    yield fake, f"{url}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def target() -> Iterator[tuple[TargetApi, str]]:
    fake = TargetApi()

    def handle(handler: BaseHTTPRequestHandler) -> None:
        token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        fake.seen.append((token, body))
        if token in fake.refuse:
            reply(handler, 401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        else:
            reply(handler, 200, {"token": token}, {})

    server, url = serve(handle)
    yield fake, url
    server.shutdown()
    server.server_close()


@pytest.fixture
def session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1")


def test_get_token_signs_with_sigv4_and_keeps_the_token(token_api: Any, session: boto3.Session) -> None:
    fake, url = token_api
    first = get_token("pyng", api_url=url, scope="b a a", min_ttl=300, session=session)
    again = get_token("pyng", api_url=url, scope="a b", min_ttl=300, session=session)
    assert first is again  # same provider and normalised scope set: kept in memory
    assert len(fake.served) == 1
    assert fake.served[0] == {"scope": ["a b"], "min_ttl": ["300"]}
    assert fake.authorizations[0].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/execute-api/aws4_request" in fake.authorizations[0]
    assert first.access_token == "vended-token-1"
    assert 890 <= first.expires_in <= 900


SCOPES = ("billing:read", "a+b", "x&y=z", "path/to%41", "urn:x:y", "zahlungen:lesen:ü", "支払い")
"""Scopes with reserved characters (``+ & = / % :``) and non-ASCII ones."""


def test_every_scope_set_is_signed_as_api_gateway_verifies_it(token_api: Any, session: boto3.Session) -> None:
    fake, url = token_api
    sets = [" ".join(chosen) for size in range(1, len(SCOPES) + 1) for chosen in itertools.combinations(SCOPES, size)]
    for scope in sets:
        get_token("pyng", api_url=url, scope=scope, min_ttl=120, session=session)
    assert fake.rejected == []
    assert [query["scope"] for query in fake.served] == [[normalise_scope(scope)] for scope in sets]
    # a forced refresh (the boolean and the fingerprint) too
    get_token("pyng", api_url=url, scope="a+b x&y=z", force_refresh=True, session=session)
    assert fake.rejected == []
    assert fake.served[-1]["force_refresh"] == ["true"]


def test_an_unsigned_or_missigned_request_is_refused_by_the_fake(token_api: Any) -> None:
    """The verifier is not a rubber stamp: a signature over ``urlencode``'s ``a+b`` does not verify."""
    fake, url = token_api
    request = AWSRequest(method="GET", url=f"{url}/token/pyng?min_ttl=60&scope=a+b")
    SigV4Auth(Credentials("testing", "testing"), "execute-api", "eu-west-1").add_auth(request)
    response = requests.get(str(request.url), headers=dict(request.headers.items()), timeout=10)
    assert response.status_code == 403
    good = AWSRequest(method="GET", url=f"{url}/token/pyng?min_ttl=60&scope=a%2Bb")
    SigV4Auth(Credentials("testing", "testing"), "execute-api", "eu-west-1").add_auth(good)
    assert requests.get(str(good.url), headers=dict(good.headers.items()), timeout=10).status_code == 200
    assert fake.served == [{"min_ttl": ["60"], "scope": ["a+b"]}]


def test_a_token_that_no_longer_lasts_min_ttl_is_replaced(token_api: Any, session: boto3.Session) -> None:
    fake, url = token_api
    get_token("pyng", api_url=url, session=session)
    assert get_token("pyng", api_url=url, session=session, min_ttl=899).access_token == "vended-token-1"
    assert get_token("pyng", api_url=url, session=session, min_ttl=901).access_token == "vended-token-2"
    assert len(fake.served) == 2


def test_one_fetch_at_a_time_per_provider_and_scope_set(token_api: Any, session: boto3.Session) -> None:
    fake, url = token_api
    with ThreadPoolExecutor(16) as pool:
        tokens = set(pool.map(lambda _: get_token("aria", api_url=url, session=session).access_token, range(64)))
    assert tokens == {"vended-token-1"}
    assert len(fake.served) == 1


@pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after"), [
    (503, {"error": "upstream_unavailable", "error_description": "down", "retry_after": 7}, {"Retry-After": "7"},
     UpstreamUnavailable, 7),
    (504, {"error": "upstream_timeout", "error_description": "slow"}, {}, UpstreamTimeout, None),
    (400, {"error": "invalid_request", "error_description": "bad scope"}, {}, InvalidRequest, None),
    (403, {"message": "Missing Authentication Token"}, {}, AccessDenied, None),
])
def test_errors_carry_their_contract_names(token_api: Any, session: boto3.Session, status: int,
                                           body: dict[str, Any], headers: dict[str, str], error: type[Exception],
                                           retry_after: int | None) -> None:
    fake, url = token_api
    fake.errors.append((status, body, headers))
    with pytest.raises(error) as caught:
        get_token("pyng", api_url=url, session=session)
    assert caught.value.retry_after == retry_after  # type: ignore[attr-defined]
    assert caught.value.status == status  # type: ignore[attr-defined]


REFUSED_1 = hashlib.sha256(b"vended-token-1").hexdigest()[:8]
"""What the library sends as force_refresh after a 401 for vended-token-1: its fingerprint."""


def test_requests_a_401_forces_one_refresh_and_one_retry(token_api: Any, target: Any,
                                                         session: boto3.Session) -> None:
    fake, url = token_api
    api, target_url = target
    auth = TokenVendingAuth("pyng", api_url=url, session=session)
    assert requests.get(target_url, auth=auth, timeout=10).json() == {"token": "vended-token-1"}
    api.refuse.add("vended-token-1")  # revoked at the provider
    response = requests.post(target_url, data=b"payload", auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"token": "vended-token-2"}
    # exactly one forced, naming the refused token (so a replacement someone else forced is served instead)
    assert [query.get("force_refresh") for query in fake.served] == [None, [REFUSED_1]]
    assert [token for token, _ in api.seen] == ["vended-token-1", "vended-token-1", "vended-token-2"]
    assert api.seen[-1][1] == b"payload"  # the retry carries the same body
    assert [r.status_code for r in response.history] == [401]


def test_requests_a_second_401_is_returned_not_retried_again(token_api: Any, target: Any,
                                                             session: boto3.Session) -> None:
    fake, url = token_api
    api, target_url = target
    api.refuse.update({"vended-token-1", "vended-token-2"})
    response = requests.get(target_url, auth=TokenVendingAuth("pyng", api_url=url, session=session), timeout=10)
    assert response.status_code == 401
    assert len(api.seen) == 2
    assert len(fake.served) == 2


def test_httpx_a_401_forces_one_refresh_and_one_retry(token_api: Any, target: Any,
                                                      session: boto3.Session) -> None:
    fake, url = token_api
    api, target_url = target
    api.refuse.add("vended-token-1")
    with httpx.Client(auth=TokenVendingAuth("pyng", api_url=url, session=session)) as http:
        response = http.post(target_url, content=b"payload")
    assert response.status_code == 200
    assert response.json() == {"token": "vended-token-2"}
    assert [query.get("force_refresh") for query in fake.served] == [None, [REFUSED_1]]
    assert [body for _, body in api.seen] == [b"payload", b"payload"]


def test_httpx_async_client(token_api: Any, target: Any, session: boto3.Session) -> None:
    import asyncio

    fake, url = token_api
    api, target_url = target
    api.refuse.add("vended-token-1")

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(auth=TokenVendingAuth("pyng", api_url=url, session=session)) as http:
            return await http.get(target_url)

    response = asyncio.run(call())
    assert response.json() == {"token": "vended-token-2"}
    assert len(fake.served) == 2


def test_a_burst_of_401s_makes_one_forced_refresh(token_api: Any, target: Any, session: boto3.Session) -> None:
    fake, url = token_api
    api, target_url = target
    auth = TokenVendingAuth("pyng", api_url=url, session=session)
    requests.get(target_url, auth=auth, timeout=10)
    api.refuse.add("vended-token-1")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: requests.get(target_url, auth=auth, timeout=10).status_code, range(8)))
    assert statuses == [200] * 8
    assert sum(1 for query in fake.served if query.get("force_refresh")) == 1


def test_no_token_in_reprs_or_logs(token_api: Any, target: Any, session: boto3.Session,
                                   caplog: pytest.LogCaptureFixture) -> None:
    _fake, url = token_api
    api, target_url = target
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("token_vending_client")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        auth = TokenVendingAuth("pyng", api_url=url, session=session)
        api.refuse.add("vended-token-1")
        requests.get(target_url, auth=auth, timeout=10)
        token = get_token("pyng", api_url=url, session=session)
    finally:
        logger.removeHandler(handler)
    for text in (repr(auth), repr(token), str(token), stream.getvalue(), caplog.text,
                 repr(client_module._SOURCES)):
        assert "vended-token" not in text
    assert token_vending_client.get_token is get_token


CONNECTIONS = ("pyng", "PyngOrg2", "AriaAu", "alternative-payments", "OAuth2Acme")
"""Connection names: a default connection's route, or an added connection's key verbatim (capitals, digits)."""


def test_a_connection_name_is_the_route_as_given(token_api: Any, target: Any, session: boto3.Session) -> None:
    """A connection added by configuration is named by its key (``AriaAu``): the library sends the name as the
    route verbatim (nothing lower-cased or refused), and each connection has a token of its own."""
    fake, url = token_api
    _api, target_url = target
    tokens = {name: get_token(name, api_url=url, session=session) for name in CONNECTIONS}
    assert fake.rejected == []
    assert fake.paths == [f"/v1/token/{name}" for name in CONNECTIONS]
    assert {name: token.provider for name, token in tokens.items()} == {name: name for name in CONNECTIONS}
    assert len({token.access_token for token in tokens.values()}) == len(CONNECTIONS)
    auth = TokenVendingAuth("AriaAu", api_url=url, session=session)
    assert requests.get(target_url, auth=auth, timeout=10).json() == {"token": tokens["AriaAu"].access_token}
    assert len(fake.served) == len(CONNECTIONS)  # AriaAu's token kept, not pyng's or anyone else's


def test_exactly_one_way_in() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVendingAuth("pyng", session=object())


# -- api_url: the stack's ApiUrl output as given ----------------------------------------------------------

@pytest.mark.parametrize("form", ["{base}/token/", "{base}/token", "{base}/", "{base}"])
def test_the_api_url_output_or_its_base_reaches_the_route(token_api: Any, target: Any, session: boto3.Session,
                                                          form: str) -> None:
    fake, base = token_api
    _api, target_url = target
    url = form.format(base=base)
    assert get_token("pyng", api_url=url, session=session).access_token == "vended-token-1"
    auth = TokenVendingAuth("pyng", api_url=url, session=session)
    assert requests.get(target_url, auth=auth, timeout=10).json() == {"token": "vended-token-1"}
    assert fake.rejected == []
    assert len(fake.served) == 1


def test_every_form_of_the_api_url_shares_one_token(token_api: Any, session: boto3.Session) -> None:
    fake, base = token_api
    for url in (f"{base}/token/", f"{base}/token", f"{base}/", base):
        get_token("pyng", api_url=url, session=session)
    assert len(fake.served) == 1
    assert len(client_module._SOURCES) == 1


@pytest.mark.parametrize(("given", "base"), [
    ("https://abc123.execute-api.eu-west-1.amazonaws.com/v1/token/",
     "https://abc123.execute-api.eu-west-1.amazonaws.com/v1"),
    ("https://abc123.execute-api.eu-west-1.amazonaws.com/v1", "https://abc123.execute-api.eu-west-1.amazonaws.com/v1"),
    ("http://127.0.0.1:3000/v1/token/", "http://127.0.0.1:3000/v1"),
    ("http://127.0.0.1:3000/", "http://127.0.0.1:3000"),
])
def test_api_base(given: str, base: str) -> None:
    assert api_base(given) == base


@pytest.mark.parametrize("url", ["abc123.execute-api.eu-west-1.amazonaws.com/v1",
                                 "https://abc123.execute-api.eu-west-1.amazonaws.com/v1/token/?scope=a",
                                 "ftp://host/v1"])
def test_an_api_url_that_is_no_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(ValueError, match="ApiUrl output"):
        TokenVendingAuth("pyng", api_url=url, session=object())


# -- one token source per identity, a bounded number of them ---------------------------------------------

def test_a_thousand_sessions_with_the_same_credentials_share_one_token(token_api: Any) -> None:
    fake, url = token_api
    tokens = {get_token("pyng", api_url=url, session=credentials_session("AKIATEST1")).access_token
              for _ in range(1000)}
    assert tokens == {"vended-token-1"}
    assert len(fake.served) == 1
    assert len(client_module._SOURCES) == 1


def test_sessions_with_other_credentials_get_their_own_token(token_api: Any, target: Any) -> None:
    """Sessions made and dropped one after another (their ``id()`` reused): each identity its own token."""
    fake, url = token_api
    _api, target_url = target
    keys = [f"AKIATEST{number}" for number in range(40)]
    tokens = [get_token("pyng", api_url=url, session=credentials_session(key)).access_token for key in keys]
    assert tokens == [f"vended-token-{number}" for number in range(1, 41)]
    assert [authorization.split("/")[0] for authorization in fake.authorizations] == [
        f"AWS4-HMAC-SHA256 Credential={key}" for key in keys]
    # and again, through auth= with new sessions: no new fetch, each its own token
    seen = [requests.get(target_url, auth=TokenVendingAuth("pyng", api_url=url, session=credentials_session(key)),
                         timeout=10).json()["token"] for key in keys]
    assert seen == tokens
    assert len(fake.served) == 40


def test_the_number_of_token_sources_is_bounded(token_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = token_api
    monkeypatch.setattr(client_module, "MAX_SOURCES", 8)
    kept = credentials_session("AKIATEST-kept")
    get_token("pyng", api_url=url, session=kept)
    for number in range(30):
        get_token("pyng", api_url=url, session=credentials_session(f"AKIATEST{number}"))
        get_token("pyng", api_url=url, session=kept)  # recently used: stays
        assert len(client_module._SOURCES) <= 8
    assert len(fake.served) == 31
    get_token("pyng", api_url=url, session=credentials_session("AKIATEST0"))  # dropped long ago: asked again
    assert len(fake.served) == 32


def test_the_identity_is_the_credentials_and_the_target_never_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    api = "https://abc123.execute-api.eu-west-1.amazonaws.com/v1"
    one, same = credentials_session("AKIATEST1"), credentials_session("AKIATEST1")
    assert identity(one, api) == identity(same, api)
    assert identity(one, None) == identity(same, None)
    # the API's host names the signing region; a direct invocation goes to the session's region
    elsewhere = credentials_session("AKIATEST1", region="us-west-2")
    assert identity(one, api) == identity(elsewhere, api)
    assert identity(one, None) != identity(elsewhere, None)
    assert identity(one, "http://127.0.0.1:3000/v1") != identity(elsewhere, "http://127.0.0.1:3000/v1")
    # same key id, another secret or session token: not the same identity
    other_secret = boto3.Session(aws_access_key_id="AKIATEST1", aws_secret_access_key="another",
                                 region_name="eu-west-1")
    with_token = boto3.Session(aws_access_key_id="AKIATEST1", aws_secret_access_key=secret_for("AKIATEST1"),
                               aws_session_token="session-token", region_name="eu-west-1")
    assert len({identity(one, api), identity(other_secret, api), identity(with_token, api)}) == 3
    before = identity(one, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:3001")
    assert identity(one, None) != before
    text = repr([identity(session, api) for session in (one, other_secret, with_token)])
    assert "secret-of-AKIATEST1" not in text
    assert "another" not in text
    assert "session-token" not in text


# -- a 401 the service cannot answer with another token ---------------------------------------------------

@pytest.fixture
def refused_and_not_replaceable(token_api: Any, target: Any) -> Apis:
    fake, _ = token_api
    api, _ = target
    fake.cannot_refresh = True
    api.refuse.add("vended-token-1")
    return fake, api


def assert_the_401_was_returned_not_retried(fake: FakeTokenApi, api: TargetApi, response: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == 401
    assert [token for token, _ in api.seen] == ["vended-token-1"]  # never sent again with the refused token
    assert [query.get("force_refresh") for query in fake.served] == [None, [REFUSED_1]]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.name == "token_vending_client"
    assert "pyng" in warning.getMessage()
    assert REFUSED_1 in warning.getMessage()
    assert "vended-token" not in caplog.text


def test_requests_the_refused_token_handed_back_is_not_resent(token_api: Any, target: Any, session: boto3.Session,
                                                               refused_and_not_replaceable: Apis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    _, url = token_api
    _, target_url = target
    response = requests.post(target_url, data=b"payload", auth=TokenVendingAuth("pyng", api_url=url, session=session),
                             timeout=10)
    assert response.history == []
    assert_the_401_was_returned_not_retried(*refused_and_not_replaceable, response, caplog)


def test_httpx_the_refused_token_handed_back_is_not_resent(token_api: Any, target: Any, session: boto3.Session,
                                                            refused_and_not_replaceable: Apis,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    _, url = token_api
    _, target_url = target
    with httpx.Client(auth=TokenVendingAuth("pyng", api_url=url, session=session)) as http:
        response = http.post(target_url, content=b"payload")
    assert_the_401_was_returned_not_retried(*refused_and_not_replaceable, response, caplog)


def test_httpx_async_the_refused_token_handed_back_is_not_resent(token_api: Any, target: Any,
                                                                  session: boto3.Session,
                                                                  refused_and_not_replaceable: Apis,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    _, url = token_api
    _, target_url = target

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(auth=TokenVendingAuth("pyng", api_url=url, session=session)) as http:
            return await http.post(target_url, content=b"payload")

    response = asyncio.run(call())
    assert_the_401_was_returned_not_retried(*refused_and_not_replaceable, response, caplog)


@pytest.mark.parametrize("url", [
    "https://abc123defg.execute-api.ap-southeast-2.amazonaws.com/v1/token/",
    "https://abc123defg-vpce-0123456789abcdef0.execute-api.ap-southeast-2.amazonaws.com/v1/token/",
    "https://vpce-0123456789abcdef0-abcdefgh.execute-api.ap-southeast-2.vpce.amazonaws.com/v1/token/",
    "https://abc123defg.execute-api.ap-southeast-2.amazonaws.com.cn/v1/token/",
])
def test_a_private_api_is_signed_for_the_region_its_host_names(url: str) -> None:
    """A private API reached through its VPC endpoint's host names: signed for that Region, not the session's."""
    from token_vending_client.client import signing_region

    assert signing_region(boto3.Session(region_name="eu-west-1"), url) == "ap-southeast-2"
    assert signing_region(boto3.Session(region_name="eu-west-1"), "https://api.example.com/v1/token/") == "eu-west-1"
