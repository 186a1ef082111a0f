"""The upstream client against a real loopback server: lifetimes (issue 8 item 6), token syntax (item 11), and
the whole-request deadline (item 2), each through ``UpstreamClient.fetch`` as the vendor calls it."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from token_vending.connection_settings import resolve
from token_vending.credentials import ClientCredentials
from token_vending.exceptions import UpstreamInvalidResponse, UpstreamTimeout, UpstreamUnavailable
from token_vending.profile import BodyEncoding, ClientAuth, ClientCredentialsProfile
from token_vending.settings import ProviderSettings
from token_vending.upstream import UpstreamClient, Watchdog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PROFILE = ClientCredentialsProfile(name="unit", auth=ClientAuth.FORM_BODY, body=BodyEncoding.FORM)
CREDENTIALS = ClientCredentials("unit-client", "unit-secret-0123456789")


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """Starts a loopback server whose POST handler is the given function; returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/oauth/token"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def json_answer(document: dict[str, Any]) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps(document).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def client(url: str, **overrides: Any) -> UpstreamClient:
    env = {"CONNECTION_NAME": "unit", "TOKEN_URL": url, "SECRET_ID": "unit", "CACHE_TABLE_NAME": "t",
           "TOKEN_VENDING_LOCAL_MODE": "true", "UPSTREAM_RETRIES": "0", **overrides}
    settings = ProviderSettings.from_env("unit", env)
    return UpstreamClient(PROFILE, settings, resolve(settings, {}, PROFILE))


def fetch(url: str, deadline_in: float = 10.0, **overrides: Any) -> Any:
    return client(url, **overrides).fetch(CREDENTIALS, "", time.monotonic() + deadline_in)


# --- item 6: the earliest stated expiry wins; an expired JWT is refused whatever expires_in says --------
@pytest.mark.parametrize("exp_offset", [-3600, -1, 0, 20, 30])
def test_an_expired_or_expiring_jwt_is_refused_even_with_expires_in(serve: Any, exp_offset: int) -> None:
    token = jwt({"exp": int(time.time()) + exp_offset})
    url = serve(json_answer({"access_token": token, "token_type": "Bearer", "expires_in": 3600}))
    with pytest.raises(UpstreamInvalidResponse, match="JWT exp"):
        fetch(url)


@pytest.mark.parametrize(("exp_in", "expires_in", "lifetime"), [
    (600, 3600, 600),  # JWT exp earlier than expires_in: exp wins
    (7200, 3600, 3600),  # expires_in earlier: it wins
    (900, None, 900),  # only exp
    (None, 1200, 1200),  # not a JWT
])
def test_the_earliest_stated_expiry_wins(serve: Any, exp_in: int | None, expires_in: int | None,
                                         lifetime: int) -> None:
    now = int(time.time())
    token = jwt({"exp": now + exp_in}) if exp_in is not None else "opaque-token"
    document: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
    if expires_in is not None:
        document["expires_in"] = expires_in
    grant = fetch(serve(json_answer(document)))
    assert abs(grant.lifetime - lifetime) <= 1
    assert grant.expires_at <= now + lifetime + 1


def test_without_any_expiry_the_configured_default_applies(serve: Any) -> None:
    grant = fetch(serve(json_answer({"access_token": "opaque", "token_type": "bearer"})),
                  DEFAULT_TOKEN_LIFETIME="420")
    assert grant.lifetime == 420


# --- item 11: RFC 6750 b64token syntax -------------------------------------------------------------------
@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "a b", "tab\there", "quote\"", "ü", "=x", "a,b", ""])
def test_tokens_outside_b64token_syntax_are_refused(serve: Any, token: str) -> None:
    with pytest.raises(UpstreamInvalidResponse, match="access_token"):
        fetch(serve(json_answer({"access_token": token, "token_type": "Bearer", "expires_in": 3600})))


@pytest.mark.parametrize("token", ["abc", "A-Z.a_z~0+9/", "dG9rZW4=", "dG9r==", jwt({"sub": "x"})])
def test_b64token_syntax_is_accepted(serve: Any, token: str) -> None:
    grant = fetch(serve(json_answer({"access_token": token, "token_type": "Bearer", "expires_in": 3600})))
    assert grant.access_token == token


# --- item 2: the deadline bounds the whole request, not each socket read -----------------------------------
def test_a_trickling_body_is_cut_at_the_deadline(serve: Any) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"access_token": "slow", "token_type": "Bearer", "expires_in": 3600}).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:  # one byte every 0.3 s: each read is well inside the 1 s read timeout
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    url = serve(trickle)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        fetch(url, deadline_in=3.0, UPSTREAM_READ_TIMEOUT="1")
    # Ends SAFETY_SECONDS (1 s) before the 3 s deadline, not after the ~20 s the body would take.
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(("at_once", "trickled"), [
    (b"", b"HTTP/1.1 200 OK\r\n"),
    # The status line arrives, then the headers trickle past the deadline: the watchdog's shutdown makes the
    # standard library see an end of headers and an empty body, a "200" that must not be read as an answer.
    (b"HTTP/1.1 200 OK\r\n", b"Content-Type: application/json\r\nContent-Length: 30\r\n\r\n"),
], ids=["status line", "headers"])
def test_an_answer_trickling_past_the_deadline_is_a_timeout(at_once: bytes, trickled: bytes) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(at_once)
            for byte in trickled:
                if stop.wait(0.3):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=serve_one, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/t", deadline_in=3.0, UPSTREAM_READ_TIMEOUT="1")
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 2.5


def test_no_time_left_is_not_a_provider_fault() -> None:
    with pytest.raises(UpstreamTimeout) as caught:
        fetch("http://127.0.0.1:9/never", deadline_in=1.2)
    assert caught.value.provider_fault is False


def test_the_watchdog_shuts_sockets_registered_after_it_fired() -> None:
    left, right = socket.socketpair()
    with left, right, Watchdog(time.monotonic()) as watchdog:
        time.sleep(0.05)
        assert watchdog.fired
        watchdog.register(left)
        assert left.recv(1) == b""  # shut down: reads see end of stream at once


# --- item 1: failures while reading the answer get contract answers, never an internal error -----------------
def raw_answer(head: bytes, body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(head + body)
        handler.wfile.flush()
        handler.close_connection = True

    return answer


def test_a_503_cut_short_keeps_its_status_and_retry_after(serve: Any) -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: 100\r\n\r\n"
    with pytest.raises(UpstreamUnavailable) as caught:
        fetch(serve(raw_answer(head, b'{"error":')))
    assert caught.value.retry_after == 30


@pytest.mark.parametrize(("head", "body", "error"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", b'{"access_token":"x"', UpstreamUnavailable),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n", b'{"access_token":"x"}',
     UpstreamInvalidResponse),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\nnot a chunk\r\n", UpstreamUnavailable),
])
def test_broken_answers_map_to_the_contract(serve: Any, head: bytes, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        fetch(serve(raw_answer(head, body)))
    assert caught.value.provider_fault is True  # type: ignore[attr-defined]


# --- private_key_jwt: what the token endpoint receives --------------------------------------------------------
def test_private_key_jwt_form_carries_a_fresh_verifiable_assertion(serve: Any) -> None:
    from dataclasses import replace
    from urllib.parse import parse_qs

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import ECKey

    from token_vending.profile import ClientAuth

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    received: list[dict[str, list[str]]] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        received.append(parse_qs(handler.body.decode()))  # type: ignore[attr-defined]
        json_answer({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})(handler)

    url = serve(answer)
    settings = ProviderSettings.from_env("unit", {"CONNECTION_NAME": "unit", "TOKEN_URL": url, "SECRET_ID": "s",
                                                  "CACHE_TABLE_NAME": "t", "TOKEN_VENDING_LOCAL_MODE": "true",
                                                  "CLIENT_AUTH": "private_key_jwt"})
    upstream = UpstreamClient(replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT), settings,
                              resolve(settings, {}, replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT)))
    credentials = ClientCredentials("unit-client", private_key=pem)
    for _ in range(2):
        upstream.fetch(credentials, "", time.monotonic() + 10)
    public = ECKey.import_key(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    jtis = set()
    for form in received:
        assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assert form["client_id"] == ["unit-client"]
        assert "client_secret" not in form
        claims = jose_jwt.decode(form["client_assertion"][0], public, algorithms=["ES256"]).claims
        assert claims["aud"] == url
        jtis.add(claims["jti"])
    assert len(jtis) == 2


def test_private_key_jwt_with_a_bad_pem_is_misconfigured_without_echoing_it(serve: Any) -> None:
    from dataclasses import replace

    from token_vending.exceptions import Misconfigured
    from token_vending.profile import ClientAuth

    url = serve(json_answer({}))
    settings = ProviderSettings.from_env("unit", {"CONNECTION_NAME": "unit", "TOKEN_URL": url, "SECRET_ID": "s",
                                                  "CACHE_TABLE_NAME": "t", "TOKEN_VENDING_LOCAL_MODE": "true"})
    upstream = UpstreamClient(replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT), settings,
                              resolve(settings, {}, replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT)))
    with pytest.raises(Misconfigured, match="private_key") as caught:
        upstream.fetch(ClientCredentials("c", private_key="-----BEGIN PRIVATE KEY-----\nQUJD\n"), "",
                       time.monotonic() + 10)
    assert "QUJD" not in str(caught.value)


# --- conflicting framing and ambiguous documents ------------------------------------------
def test_two_different_content_lengths_are_a_malformed_answer_not_an_outage(serve: Any) -> None:
    body = json.dumps({"access_token": "x" * 20, "expires_in": 3600}).encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Content-Length: {len(body) + 5}\r\nConnection: close\r\n\r\n").encode()
    with pytest.raises(UpstreamInvalidResponse):
        fetch(serve(raw_answer(head, body)))


@pytest.mark.parametrize("member", ["access_token", "expires_in", "token_type", "scope"])
def test_a_token_answer_with_a_duplicated_member_is_refused(serve: Any, member: str) -> None:
    values = {"access_token": ('"first-token-aaaa"', '"second-token-bbb"'), "expires_in": ("3600", "60"),
              "token_type": ('"Bearer"', '"Bearer"'), "scope": ('"a"', '"b"')}[member]
    body = (f'{{"access_token": "the-token-1234", "expires_in": 900, "{member}": {values[0]}, '
            f'"{member}": {values[1]}}}').encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with pytest.raises(UpstreamInvalidResponse, match="duplicate"):
        fetch(serve(raw_answer(head, body)))


@pytest.mark.parametrize("value", ["²", "٣", "1_0", "3e1", "-1", "9" * 5000])
def test_a_retry_after_that_is_no_plain_number_is_ignored(serve: Any, value: str) -> None:
    head = (f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {value}\r\nContent-Length: 2\r\n\r\n").encode()
    with pytest.raises(UpstreamUnavailable) as caught:
        fetch(serve(raw_answer(head, b"{}")))
    assert caught.value.retry_after is None


@pytest.mark.parametrize("exp_in", [401 * 24 * 3600, 50 * 365 * 24 * 3600, 10**12, 1e300])
def test_a_jwt_exp_beyond_any_sane_lifetime_is_refused_alone(serve: Any, exp_in: float) -> None:
    with pytest.raises(UpstreamInvalidResponse, match="out of range"):
        fetch(serve(json_answer({"access_token": jwt({"exp": time.time() + exp_in})})))


def test_a_far_jwt_exp_beside_a_stated_expires_in_is_ignored(serve: Any) -> None:
    grant = fetch(serve(json_answer({"access_token": jwt({"exp": 253402300800 * 2}), "expires_in": 900})))
    assert 890 <= grant.expires_at - time.time() <= 900


@pytest.mark.parametrize("payload", [b"[" * 12000, b"[" * 6000 + b"]" * 6000])
def test_a_jwt_whose_claims_nest_too_deep_is_read_as_an_opaque_token(serve: Any, payload: bytes) -> None:
    """Claims nested deeper than the JSON parser recurses (unclosed, so only the depth is ever read) are no
    claims to schedule by, not an internal error."""
    claims = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    token = f"eyJhbGciOiJub25lIn0.{claims}.c2ln"
    grant = fetch(serve(json_answer({"access_token": token, "token_type": "Bearer", "expires_in": 900})))
    assert (grant.access_token, grant.lifetime) == (token, 900)


# A key on a curve cryptography cannot load (secp112r1, made by openssl ecparam -genkey): the operator's mistake,
# answered as misconfiguration, not an UnsupportedAlgorithm escaping as internal_error.
SECP112R1_KEY = """-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDtLq7pbekgdXxBALeTFjoAcGBSuBBAAGoSADHgAEjXFkGNFPDNA0MZ8e
E0V8zQBKOfFaAmVigJmziw==
-----END EC PRIVATE KEY-----
"""


def test_private_key_jwt_with_a_pem_on_an_unsupported_curve_is_misconfigured(serve: Any) -> None:
    from dataclasses import replace

    from token_vending.exceptions import Misconfigured
    from token_vending.profile import ClientAuth

    settings = ProviderSettings.from_env("unit", {"CONNECTION_NAME": "unit", "TOKEN_URL": serve(json_answer({})),
                                                  "SECRET_ID": "s", "CACHE_TABLE_NAME": "t",
                                                  "TOKEN_VENDING_LOCAL_MODE": "true"})
    upstream = UpstreamClient(replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT), settings,
                              resolve(settings, {}, replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT)))
    with pytest.raises(Misconfigured, match="curve"):
        upstream.fetch(ClientCredentials("c", private_key=SECP112R1_KEY), "", time.monotonic() + 10)


def test_private_key_jwt_kms_follows_the_algorithm_the_secret_names_now(serve: Any) -> None:
    """The secret is read again (SecretMaxAge): an operator who changes its ``algorithm`` (RS256 -> PS256, as the
    provider now requires) has the next assertion signed with it, not the one the first read named."""
    from dataclasses import replace
    from urllib.parse import parse_qs

    import boto3
    from moto import mock_aws

    from token_vending.profile import ClientAuth

    received: list[str] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        received.append(parse_qs(handler.body.decode())["client_assertion"][0])  # type: ignore[attr-defined]
        json_answer({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})(handler)

    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        settings = ProviderSettings.from_env("unit", {
            "CONNECTION_NAME": "unit", "TOKEN_URL": serve(answer), "SECRET_ID": "s", "CACHE_TABLE_NAME": "t",
            "TOKEN_VENDING_LOCAL_MODE": "true", "CLIENT_AUTH": "private_key_jwt", "SIGNING_KEY_ID": key_id})
        upstream = UpstreamClient(replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT), settings,
                              resolve(settings, {}, replace(PROFILE, auth=ClientAuth.PRIVATE_KEY_JWT)), kms=lambda: kms)
        for algorithm in ("RS256", "PS256", ""):
            upstream.fetch(ClientCredentials("unit-client", algorithm=algorithm), "", time.monotonic() + 10)
    headers = [json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) for token in received]
    assert [header["alg"] for header in headers] == ["RS256", "PS256", "RS256"]


def test_a_jwt_exp_of_hundreds_of_digits_is_refused_alone_and_ignored_beside_expires_in(serve: Any) -> None:
    """A JSON integer has no size limit: an ``exp`` of 400 digits is a lifetime out of range, not an overflow."""
    with pytest.raises(UpstreamInvalidResponse, match="out of range"):
        fetch(serve(json_answer({"access_token": jwt({"exp": 10**400})})))
    grant = fetch(serve(json_answer({"access_token": jwt({"exp": 10**400}), "expires_in": 900})))
    assert grant.lifetime == 900
    with pytest.raises(UpstreamInvalidResponse, match="JWT exp"):
        fetch(serve(json_answer({"access_token": jwt({"exp": -(10**400)}), "expires_in": 900})))



def test_a_member_named_twice_inside_a_member_never_read_does_not_refuse_the_token(serve: Any) -> None:
    """Only the answer's own members are read: a duplicate inside another object (an extension the service never
    reads) leaves nothing ambiguous, and refusing the token for it would be an outage for nothing."""
    body = b'{"access_token": "the-token-1234", "expires_in": 900, "ext": {"a": 1, "a": 2, "b": [{"c": 1, "c": 2}]}}'
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    grant = fetch(serve(raw_answer(head, body)))
    assert (grant.access_token, grant.lifetime) == ("the-token-1234", 900)


def test_a_refusal_with_a_nested_duplicate_keeps_its_error_code(serve: Any) -> None:
    from token_vending.exceptions import UpstreamRejected

    body = b'{"error": "invalid_scope", "error_description": "no", "details": {"k": 1, "k": 2}}'
    head = f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with pytest.raises(UpstreamRejected) as caught:
        fetch(serve(raw_answer(head, body)))
    assert caught.value.upstream_error == "invalid_scope"
