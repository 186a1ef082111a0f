"""Transport faults on real loopback sockets: what a caller of ``GET /token/pyng`` gets when the provider's
token endpoint misbehaves below HTTP semantics.

The provider emulators cannot produce these faults (``http.server`` frames every answer correctly), so the pyng
provider is pointed at :class:`tests.support.hostile_server.HostileServer`, which writes raw bytes: a stall after
the headers, a body cut short, a lying ``Content-Encoding``, broken chunked framing, a body trickled a byte a
second, a TCP reset, oversized headers, a redirect, and TLS handshakes that fail.

For every fault the contract (DESIGN.md) fixes the answer, and the cache semantics fix what happens next:

* the contract's status and error code, never 500 ``internal_error``, the contract's error document, no secret;
* exactly the expected number of token requests at the provider (``UPSTREAM_RETRIES=0`` makes it exact);
* the cool-down: a second call right away asks the provider nothing and gets the same error (a 503 with a
  ``Retry-After`` no later than the cool-down);
* one ``UpstreamFailure`` metric and its suffixed kind;
* the whole exchange bounded by the lease, seen from the provider's side of the socket (when it hung up).

Timings are short on purpose (lease 3 s, read timeout 2 s, connect timeout 1 s) so the file runs in well under
two minutes; each case gets its own stack, hence its own table, cache and cool-down.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from local.providers import LOCAL_CREDENTIALS
from local.stack import PYNG_SCOPES
from tests.integration.conftest import get_token, table_items
from tests.integration.test_metrics import emf
from tests.support import hostile_server as hostile
from tests.support.hostile_server import HostileServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import requests

    from local.stack import LocalStack
    from tests.support.hostile_server import Behaviour

pytestmark = pytest.mark.integration

PROVIDER = "pyng"
CLIENT_ID, CLIENT_SECRET = LOCAL_CREDENTIALS[PROVIDER]
LEASE_SECONDS = 3.0
FAST = {"LEASE_SECONDS": str(int(LEASE_SECONDS)), "UPSTREAM_READ_TIMEOUT": "2", "UPSTREAM_CONNECT_TIMEOUT": "1",
        "UPSTREAM_RETRIES": "0"}
"""Each single read (2 s) fits in the lease (3 s); a trickled whole does not."""
DEFAULT_RETRIES = {key: value for key, value in FAST.items() if key not in ("UPSTREAM_RETRIES", "LEASE_SECONDS")}
"""The default retries (2) with the default lease (20 s), so retries really can happen and are seen bounded."""
COOL_DOWN_SECONDS = 10
"""docs/cache-semantics.md: a failed refresh is remembered for 10 s (timeouts, 5xx, invalid answers)."""
HANG_UP_SLACK = 1.5
"""Scheduling slack on a 2-core machine between the lease's end and the provider seeing the client hang up."""
ERROR_KEYS = {"error", "error_description", "provider"}
INTEGER = re.compile(r"^[0-9]+$")


# -- servers -------------------------------------------------------------------------------------------
@pytest.fixture
def serve() -> Iterator[Callable[..., HostileServer]]:
    """Factory: hostile servers started now and stopped at teardown (ending any wait they are in)."""
    with ExitStack() as stack:
        yield lambda behaviour, **options: stack.enter_context(HostileServer(behaviour, **options))


@pytest.fixture
def decoy(serve: Callable[..., HostileServer]) -> HostileServer:
    """A well-behaved server that must never be contacted: where redirects point."""
    return serve(hostile.well_behaved("decoy_token", scope=PYNG_SCOPES))


@pytest.fixture(scope="module")
def self_signed_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a freshly made self-signed certificate for 127.0.0.1.

    Valid in every respect except that no trusted authority signed it: the provider function verifies against
    botocore's CA bundle and must refuse it, before any credential is sent.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256()))
    folder: Path = tmp_path_factory.mktemp("self-signed")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


# -- the matrix ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One transport fault and the contract's answer to it."""

    behaviour: Callable[[str], Behaviour]
    """Builds the behaviour; given the decoy's URL (only the redirect uses it)."""
    status: int
    error: str
    requests: tuple[int, int] = (1, 1)
    """Token requests the provider may see for the first call (inclusive range)."""
    env: dict[str, str] = field(default_factory=lambda: dict(FAST))
    tls: str | None = None
    """``garbage``: the server answers the ClientHello with non-TLS bytes; ``self_signed``: untrusted cert."""
    retry_after: tuple[int, int] = (1, COOL_DOWN_SECONDS)
    """Bounds of a 503's ``Retry-After`` on the first call: the cool-down, or the provider's own value."""


TIMEOUT = (504, "upstream_timeout")
UNAVAILABLE = (503, "upstream_unavailable")
INVALID = (502, "upstream_invalid_response")

CASES: dict[str, Case] = {
    "stall_after_headers": Case(lambda _: hostile.stall_after_headers(), *TIMEOUT),
    "truncated_200": Case(lambda _: hostile.truncated("200 OK"), *UNAVAILABLE),
    "truncated_503": Case(lambda _: hostile.truncated("503 Service Unavailable"), *UNAVAILABLE),
    "truncated_503_default_retries": Case(lambda _: hostile.truncated("503 Service Unavailable"), *UNAVAILABLE,
                                          requests=(1, 3), env=DEFAULT_RETRIES),
    "truncated_503_retry_after_30": Case(lambda _: hostile.truncated("503 Service Unavailable", retry_after=30),
                                         *UNAVAILABLE, retry_after=(COOL_DOWN_SECONDS + 1, 30)),
    "false_gzip": Case(lambda _: hostile.false_gzip(), *INVALID),
    "broken_chunked": Case(lambda _: hostile.broken_chunked(), *UNAVAILABLE),
    "trickle": Case(lambda _: hostile.trickle(), *TIMEOUT),
    "reset_mid_body": Case(lambda _: hostile.reset_mid_body(), *UNAVAILABLE),
    "oversized_200_headers": Case(lambda _: hostile.oversized_headers("many"), *UNAVAILABLE),
    "oversized_70kb_header": Case(lambda _: hostile.oversized_headers("long"), *UNAVAILABLE),
    "redirect": Case(hostile.redirect, *INVALID),
    "tls_garbage_server_hello": Case(lambda _: hostile.well_behaved("never_sent"), *UNAVAILABLE, requests=(0, 0),
                                     tls="garbage"),
    "tls_self_signed": Case(lambda _: hostile.well_behaved("never_sent"), *UNAVAILABLE, requests=(0, 0),
                            tls="self_signed"),
}


def start_case(case: Case, serve: Callable[..., HostileServer], decoy: HostileServer,
               request: pytest.FixtureRequest) -> HostileServer:
    options: dict[str, Any] = {}
    if case.tls == "garbage":
        options["garbage_handshake"] = True
    elif case.tls == "self_signed":
        options["tls"] = request.getfixturevalue("self_signed_tls")
    return serve(case.behaviour(decoy.url("/elsewhere/oauth2/token")), **options)


# -- checks --------------------------------------------------------------------------------------------
def secrets_seen(server: HostileServer) -> list[str]:
    """The client secret, its HTTP Basic encoding, and the Authorization value the provider actually received."""
    found = [CLIENT_SECRET, base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()]
    for received in server.requests:
        authorization = received.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            found.append(authorization.split(" ", 1)[1])
    return found


def assert_contract_error(response: requests.Response, status: int, error: str, server: HostileServer,
                          retry_after: tuple[int, int] = (1, COOL_DOWN_SECONDS)) -> None:
    """The contract's error answer: status, code, document shape, no secret, and never our own fault; a 503
    says when to come back, a positive whole number of seconds within ``retry_after``."""
    assert response.status_code != 500, response.text
    assert (response.status_code, response.json().get("error")) == (status, error), response.text
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) >= ERROR_KEYS, body
    assert all(isinstance(body[key], str) for key in ERROR_KEYS), body
    assert body["provider"] == PROVIDER
    assert response.headers.get("Cache-Control") == "no-store"
    seen = response.text + " ".join(f"{name}: {value}" for name, value in response.headers.items())
    for secret in secrets_seen(server):
        assert secret not in seen
    if status == 503:
        retry_after_header = response.headers.get("Retry-After")
        assert retry_after_header is not None, response.headers
        assert INTEGER.match(retry_after_header), retry_after_header
        assert retry_after[0] <= int(retry_after_header) <= retry_after[1], retry_after_header


def assert_one_failure_counted(stack: LocalStack, error: str) -> None:
    metrics = emf(stack)
    assert metrics[("UpstreamFailure", PROVIDER)] == 1, metrics
    assert metrics[(f"UpstreamFailure_{error}", PROVIDER)] == 1, metrics
    assert not [name for name, _ in metrics if "internal_error" in name], metrics


def assert_no_secret_logged(stack: LocalStack, server: HostileServer) -> None:
    logs = stack.logs.text()  # type: ignore[attr-defined]
    for secret in secrets_seen(server):
        assert secret not in logs


def assert_hung_up_within_lease(server: HostileServer, lease_seconds: float) -> None:
    """Seen from the provider: every request ended (the client hung up or the server finished) within the
    lease. A fetch that outlives its lease lets a second environment send a second token request."""
    assert server.wait_idle(), "a connection is still open"
    for received in server.requests:
        assert received.ended is not None
        assert received.ended - received.started <= lease_seconds + HANG_UP_SLACK, (
            received.ended - received.started, received.bytes_sent)


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_transport_fault_gets_the_contract_answer_then_a_cool_down(
        make_stack: Any, serve: Callable[..., HostileServer], decoy: HostileServer, request: pytest.FixtureRequest,
        name: str) -> None:
    case = CASES[name]
    server = start_case(case, serve, decoy, request)
    stack = make_stack(provider_urls={PROVIDER: server.url()}, provider_env={PROVIDER: case.env})

    first = get_token(stack, PROVIDER)
    assert_contract_error(first, case.status, case.error, server, case.retry_after)
    low, high = case.requests
    assert low <= server.token_requests <= high, server.token_requests
    asked = server.token_requests
    if case.tls is not None:
        assert server.connections == 1  # one connection, refused at the handshake: nothing was retried
        assert server.handshake_failures == 1
    else:
        assert {(received.method, received.path) for received in server.requests} == {
            ("POST", "/billing/oauth2/token")}
        assert server.connections == asked
    assert_hung_up_within_lease(server, float(case.env.get("LEASE_SECONDS", "20")))

    # The cool-down: asked again at once, the service answers as before without asking the provider.
    connections = server.connections
    second = get_token(stack, PROVIDER)
    assert_contract_error(second, case.status, case.error, server, (1, case.retry_after[1]))  # the time left
    assert server.token_requests == asked
    assert server.connections == connections

    assert_one_failure_counted(stack, case.error)
    assert_no_secret_logged(stack, server)
    assert decoy.connections == 0  # a redirect is never followed; nothing else goes anywhere either


def test_trickle_with_three_callers_is_one_request_never_two_in_flight(
        make_stack: Any, serve: Callable[..., HostileServer]) -> None:
    """Single flight against a provider whose every read is quick but whose answer never ends.

    Without a bound on the whole request the holder's fetch outlives its lease, a waiting environment takes
    the lease over and sends a second token request while the first is still open.
    """
    server = serve(hostile.trickle())
    stack = make_stack(provider_urls={PROVIDER: server.url()}, provider_env={PROVIDER: FAST}, max_concurrency=3)
    stack.lambdas.warm("TokenApiFunction", 3)
    stack.lambdas.warm("PyngFunction", 3)
    start = threading.Barrier(3)

    def call(_: int) -> requests.Response:
        start.wait(timeout=30)
        return get_token(stack, PROVIDER)

    with ThreadPoolExecutor(max_workers=3) as pool:
        responses = list(pool.map(call, range(3)))

    assert server.token_requests == 1
    assert server.peak_in_flight == 1
    for response in responses:
        assert_contract_error(response, *TIMEOUT, server)
    assert_hung_up_within_lease(server, LEASE_SECONDS)

    after = get_token(stack, PROVIDER)  # the cool-down still holds
    assert_contract_error(after, *TIMEOUT, server)
    assert server.token_requests == 1
    assert_one_failure_counted(stack, TIMEOUT[1])
    assert emf(stack)[("LeaseWait", PROVIDER)] >= 1  # the callers really overlapped: single flight, not cool-down


def age_cached_token(stack: LocalStack, seconds: int) -> None:
    """Move the cached token ``seconds`` into its life: the way to put a valid token inside its refresh margin.

    A fresh token can never start inside the margin (the margin is at most half the lifetime) and ``min_ttl``
    cannot help (a token too short for one request's ``min_ttl`` is also unusable for it), so, as in
    test_metrics, the item is aged in the table.
    """
    [item] = [item for item in table_items(stack)
              if item["pk"]["S"] == PROVIDER and item["sk"]["S"].startswith("token#")]
    stack.client("dynamodb").update_item(
        TableName=stack.config.table_name, Key={"pk": item["pk"], "sk": item["sk"]},
        UpdateExpression="SET expires_at = expires_at - :age, fetched_at = fetched_at - :age",
        ExpressionAttributeValues={":age": {"N": str(seconds)}})


@pytest.mark.parametrize("name", ["stall_after_headers", "reset_mid_body", "false_gzip", "trickle"])
def test_a_still_valid_cached_token_is_served_when_the_refresh_meets_a_fault(
        make_stack: Any, serve: Callable[..., HostileServer], decoy: HostileServer, request: pytest.FixtureRequest,
        name: str) -> None:
    """Stale on error: the refresh fails, the cached token still meets ``min_ttl``, the caller gets it (200).

    TLS faults are not in this list: the good phase would need a certificate the function trusts.
    """
    case = CASES[name]
    server = serve(hostile.well_behaved("good_pyng_token", expires_in=900, scope=PYNG_SCOPES))
    stack = make_stack(provider_urls={PROVIDER: server.url()}, provider_env={PROVIDER: FAST},
                       function_env={"MEMORY_CACHE_SECONDS": "0"})  # so each call reads the aged item
    fetched = get_token(stack, PROVIDER)
    assert fetched.status_code == 200, fetched.text
    token = fetched.json()["access_token"]
    age_cached_token(stack, 850)  # 900 s token, 90 s margin: about 50 s left, inside the margin
    server.behaviour = case.behaviour(decoy.url("/elsewhere/oauth2/token"))

    for _ in range(2):  # the refresh that meets the fault, then one during its cool-down
        stale = get_token(stack, PROVIDER, min_ttl=30)
        assert stale.status_code == 200, stale.text
        assert stale.json()["access_token"] == token
        assert 30 <= stale.json()["expires_in"] <= 50
        assert stale.headers.get("Cache-Control") == "no-store"
    assert server.token_requests == 2  # the good fetch and the one failed refresh

    strict = get_token(stack, PROVIDER, min_ttl=60)  # the cached token cannot keep 60 s: the error, at once
    assert_contract_error(strict, case.status, case.error, server)
    assert server.token_requests == 2

    metrics = emf(stack)
    assert metrics[("UpstreamFailure", PROVIDER)] == 1, metrics
    assert metrics[(f"UpstreamFailure_{case.error}", PROVIDER)] == 1, metrics
    assert metrics[("StaleServed", PROVIDER)] >= 2, metrics
    assert_no_secret_logged(stack, server)
    assert decoy.connections == 0
