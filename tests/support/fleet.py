"""A model of one provider's fleet, in one process: several execution environments of the provider function,
several of the token API, a fake Lambda service between them, a controllable wall clock and a scripted hostile
provider that keeps the ground truth of every token it issued.

Used by ``tests/integration/test_fleet_invariants.py``. Why in one process rather than ``local.stack``: the
invariants are about instants (how many token requests are in flight per cache key, what the clock said when an
answer was served), and about every byte any environment wrote; in-process environments make both observable
exactly, while each environment still has what makes a Lambda environment separate (its own memory cache, lease
owner id, secret cache, logger and metrics) and shares only what the real fleet shares (DynamoDB Local, Secrets
Manager on moto, the provider).

The wall clock (``time.time``) is patched to real time plus an offset that steps advance; ``time.monotonic`` and
``time.sleep`` stay real, so deadlines, lease polling and the memory cache (monotonic) behave as deployed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import math
import os
import secrets
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tests.support.harness import LogCapture

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from token_vending.profile import ClientCredentialsProfile
    from token_vending.renewal import Renewal

REAL_TIME = time.time
"""The real wall clock, kept before any test patches ``time.time``."""


# --- clock ------------------------------------------------------------------------------------------------------
class FleetClock:
    """Wall clock = real time + an offset that only grows: tokens expire, leases and cool-downs lapse when a
    step says so, while real seconds still pass inside a step (a lease of 3 s really lasts 3 s)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return REAL_TIME() + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds


@dataclass
class Shared:
    """What every example shares: the clock, AWS clients on loopback and one table per test run (the integration
    conftest's ``shared`` fixture)."""

    clock: FleetClock
    dynamodb: Any
    api_dynamodb: Any
    secretsmanager: Any
    table: str


def sqs_event(bodies: list[str], queue: str = "renewals") -> dict[str, Any]:
    """The event the SQS event source mapping hands a function for these message bodies."""
    return {"Records": [{"messageId": str(uuid.uuid4()), "receiptHandle": "handle", "body": body,
                         "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                         "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}"} for body in bodies]}


def record_renewals(sink: Callable[[Renewal, float], None]) -> Callable[[], None]:
    """Hand what the provider functions arm to ``sink(renewal, now)`` instead of SQS (whose delays run on real
    time, not a fleet's clock); returns what puts ``RenewalTimer.arm`` back."""
    from token_vending.renewal import RenewalTimer

    original = RenewalTimer.arm

    def arm(_timer: RenewalTimer, renewal: Renewal, now: float | None = None) -> None:
        sink(renewal, time.time() if now is None else now)

    RenewalTimer.arm = arm  # type: ignore[method-assign,assignment]

    def restore() -> None:
        RenewalTimer.arm = original  # type: ignore[method-assign]

    return restore


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put back the environment variables a fleet set: ``saved`` holds their values before (``None``: absent)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- output capture ---------------------------------------------------------------------------------------------
Sink = LogCapture
"""What an environment would send to CloudWatch Logs (logs and EMF lines)."""


# --- DynamoDB faults ---------------------------------------------------------------------------------------------
DYNAMODB_FAULTS = ("throttle", "timeout", "timeout_after_write")
"""``throttle``: ProvisionedThroughputExceededException before the call; ``timeout``: botocore's read timeout before
it; ``timeout_after_write``: the call is made (a write lands) and then times out, so its outcome is unknown."""


class DynamoFaults:
    """Faults of DynamoDB as the provider functions' client sees them, switched on per operation by a step (the
    token API's client and the invariants' reads are left alone). Installed on a client once per world; a fault
    applies while ``active`` names its operation."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.active: dict[str, str] = {}
        """Operation name (``GetItem``, ``PutItem``, ``UpdateItem``, ...) -> fault (one of ``DYNAMODB_FAULTS``)."""
        self.injected = 0
        self._id = f"fleet-faults-{uuid.uuid4().hex}"
        client.meta.events.register("before-call.dynamodb", self._before, unique_id=f"{self._id}-before")
        client.meta.events.register("after-call.dynamodb", self._after, unique_id=f"{self._id}-after")

    def remove(self) -> None:
        self.client.meta.events.unregister("before-call.dynamodb", unique_id=f"{self._id}-before")
        self.client.meta.events.unregister("after-call.dynamodb", unique_id=f"{self._id}-after")

    @contextlib.contextmanager
    def during(self, fault: str, operations: tuple[str, ...]) -> Iterator[None]:
        self.active = dict.fromkeys(operations, fault)
        try:
            yield
        finally:
            self.active = {}

    def _raise(self, fault: str, operation: str) -> None:
        from botocore.exceptions import ClientError, ReadTimeoutError

        self.injected += 1
        if fault == "throttle":
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException",
                                         "Message": "Rate of requests exceeds the allowed throughput."}}, operation)
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1/dynamodb")

    def _before(self, model: Any, **_: Any) -> None:
        fault = self.active.get(model.name)
        if fault in ("throttle", "timeout"):
            self._raise(fault, model.name)

    def _after(self, model: Any, **_: Any) -> None:
        fault = self.active.get(model.name)
        if fault == "timeout_after_write":
            self._raise(fault, model.name)


# --- the scripted provider --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    """What the provider's token endpoint does with the next requests (credentials are checked first)."""

    name: str
    status: int = 200
    delay: float = 0.0
    """Seconds before anything is sent (the client's read timeout is 1 s)."""
    retry_after: str | None = None
    expires_in: int | str | None = 900
    jwt_exp: int | None = None
    """JWT ``exp`` relative to issue time; ``None``: an opaque token."""
    trickle: float = 0.0
    """Seconds over which a 200 body is trickled (each read stays well under the read timeout)."""
    body: str = "token"
    """``token``, ``not_json``, ``no_access_token``, ``crlf``, ``space``, ``narrow``."""
    cut: str = ""
    """``truncated``: the connection ends short of Content-Length; ``reset``: a TCP reset mid-body."""


YEAR_9999 = 253402300799
"""9999-12-31T23:59:59Z: a JWT ``exp`` this far (from now) lies past the year 9999, beyond ``datetime``."""
EXTREME_LIFETIMES = (
    Behaviour("jwt_exp_past_year_9999", expires_in=None, jwt_exp=YEAR_9999),
    Behaviour("jwt_exp_past_year_9999_expires_in_900", expires_in=900, jwt_exp=YEAR_9999),
    Behaviour("expires_in_50_years", expires_in=50 * 365 * 24 * 3600),
    Behaviour("expires_in_0", expires_in=0),
    Behaviour("expires_in_negative", expires_in=-60),
    Behaviour("expires_in_huge_string", expires_in="9" * 40),
    Behaviour("expires_in_huge_number", expires_in=10**30),
)
"""Lifetimes no provider should send: each is capped (``exp`` like ``expires_in``) or refused, never a 500."""

BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in (
    Behaviour("normal"),
    Behaviour("normal_jwt", expires_in=None, jwt_exp=900),
    Behaviour("normal_jwt_and_string_expires_in", expires_in="900", jwt_exp=900),
    Behaviour("slow", delay=0.6),
    Behaviour("slow_past_read_timeout", delay=1.6),
    Behaviour("fail_503", status=503),
    Behaviour("fail_503_retry_after_1", status=503, retry_after="1"),
    Behaviour("fail_503_retry_after_120", status=503, retry_after="120"),
    Behaviour("fail_503_retry_after_1000", status=503, retry_after="1000"),
    Behaviour("fail_500", status=500),
    Behaviour("fail_429", status=429, retry_after="2"),
    Behaviour("fail_429_bare", status=429),
    Behaviour("trickle", trickle=5.0),
    Behaviour("truncated_body", cut="truncated"),
    Behaviour("reset_mid_body", cut="reset"),
    Behaviour("jwt_expired", expires_in=900, jwt_exp=-10),
    Behaviour("jwt_expired_bare", expires_in=None, jwt_exp=-10),
    Behaviour("jwt_20s", expires_in=900, jwt_exp=20),
    Behaviour("jwt_20s_bare", expires_in=None, jwt_exp=20),
    Behaviour("jwt_300_expires_in_3600", expires_in=3600, jwt_exp=300),
    Behaviour("short_40", expires_in=40),
    Behaviour("short_90", expires_in=90),
    Behaviour("short_200", expires_in=200),
    Behaviour("not_json", body="not_json"),
    Behaviour("no_access_token", body="no_access_token"),
    Behaviour("token_crlf", body="crlf"),
    Behaviour("token_space", body="space"),
    Behaviour("narrow_scope", body="narrow"),
    *EXTREME_LIFETIMES,
)}


@dataclass(frozen=True)
class Issued:
    """Ground truth for one token the provider sent."""

    token: str
    scopes: frozenset[str]
    issued_at: float
    true_expiry: float
    """The earlier of issue time + ``expires_in`` and the JWT ``exp``: after it the provider's API refuses it."""
    jwt_exp: int | None
    servable: bool
    """False for a token no client may use (CR/LF or spaces in it): serving one is a violation whatever its expiry."""
    client_id: str = ""
    """The client it was issued to (which connection's credentials asked)."""


@dataclass
class TokenRequestRecord:
    key: str
    started: float
    """``time.monotonic``."""
    outcome: str = ""
    ended: float | None = None
    client_id: str = ""
    """The client_id the request named (whether or not its secret was right)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(exp: int, issued_at: int, scope: str) -> str:
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"exp": exp, "iat": issued_at, "scope": scope,
                                  "jti": secrets.token_hex(8)}).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


class ScriptedProvider:
    """A real threaded HTTP token endpoint on 127.0.0.1 that can be switched between behaviours.

    It checks the client secret (only the current one is accepted; ``clients`` may register more clients: other
    connections of the same provider), keeps the ground truth of every token it issued and to which client, and
    counts token requests per scope set: how many, and how many were in flight at once for one client and scope
    set (more than ``cache_keys`` of that scope set allows is an overlap). A request is in flight from the moment
    its body is read until the last byte of the answer is written or the client hangs up (noticed within ``POLL``
    seconds even while the endpoint stalls or trickles).
    """

    POLL = 0.05
    MAX_HANDLER_SECONDS = 12.0

    def __init__(self, clock: FleetClock, client_id: str, secret: str) -> None:
        self.clock = clock
        self.client_id = client_id
        self.secret = secret
        self.clients: dict[str, str] = {}
        """Further registered clients (client_id -> secret) besides ``client_id``."""
        self.cache_keys: dict[str, int] = {}
        """Scope set -> how many cache keys ask the provider for it (the ``""`` key and the named default set both
        ask for the default scopes): that many of its requests may be in flight at once per client. Else one."""
        self.behaviour = BEHAVIOURS["normal"]
        self.issued: dict[str, Issued] = {}
        self.records: list[TokenRequestRecord] = []
        self.in_flight: dict[tuple[str, str], int] = {}
        """(client_id, scope set) -> token requests in flight."""
        self.max_in_flight: dict[tuple[str, str], int] = {}
        self.overlaps: list[str] = []
        self.invalid_client_answers: list[str] = []
        self.on_request: Callable[[str], None] | None = None
        """Called with the scope key when a token request with good credentials arrives (a step's doings meanwhile)."""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5

            def do_POST(self) -> None:
                provider.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name="scripted-provider")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- observations --------------------------------------------------------------------------------------------
    def request_count(self, since: int = 0, client_id: str | None = None) -> dict[str, int]:
        """Scope set -> token requests since ``since`` (of ``client_id`` alone, if given)."""
        with self.lock:
            counts: dict[str, int] = {}
            for record in self.records[since:]:
                if client_id is None or record.client_id == client_id:
                    counts[record.key] = counts.get(record.key, 0) + 1
            return counts

    def mark(self) -> int:
        with self.lock:
            return len(self.records)

    def invalid_client_since(self, since: int) -> set[str]:
        with self.lock:
            return {r.key for r in self.records[since:] if r.outcome == "invalid_client"}

    def allowed_in_flight(self, key: str) -> int:
        return self.cache_keys.get(key, 1)

    def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight (a hung-up client is noticed within ``POLL``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if not any(self.in_flight.values()):
                    return True
            time.sleep(0.02)
        return False

    # -- serving -------------------------------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(min(length, 65536)).decode("latin-1")
        form = {name: values[0] for name, values in parse_qs(raw, keep_blank_values=True).items()}
        key = " ".join(sorted(set(form.get("scope", "").split())))
        client = form.get("client_id", "")
        behaviour = self.behaviour
        record = TokenRequestRecord(key=key, started=time.monotonic(), client_id=client)
        flight = (client, key)
        with self.lock:
            self.records.append(record)
            self.in_flight[flight] = self.in_flight.get(flight, 0) + 1
            if self.in_flight[flight] > self.allowed_in_flight(key):
                self.overlaps.append(f"{self.in_flight[flight]} token requests of {client!r} in flight for scope "
                                     f"{key!r} (behaviour {behaviour.name})")
            self.max_in_flight[flight] = max(self.max_in_flight.get(flight, 0), self.in_flight[flight])
            registered = {**self.clients, self.client_id: self.secret}
        exchange = _Exchange(self, handler, record)
        try:
            if client not in registered or form.get("client_secret") != registered[client]:
                record.outcome = "invalid_client"
                # Hostile: the description echoes what the client sent, its secret included.
                exchange.answer(401, {"error": "invalid_client",
                                      "error_description": f"client authentication failed for {raw}"})
                return
            if self.on_request is not None:
                self.on_request(key)
            if behaviour.delay and not exchange.pause(behaviour.delay):
                record.outcome = "client_gone"
                return
            if behaviour.status != 200:
                record.outcome = f"http_{behaviour.status}"
                headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
                exchange.answer(behaviour.status, {"error": "temporarily_unavailable"}, headers)
                return
            record.outcome = "issued"
            exchange.answer_bytes(200, self._token_body(behaviour, key, client), trickle=behaviour.trickle,
                                  cut=behaviour.cut)
        finally:
            exchange.leave()

    def _token_body(self, behaviour: Behaviour, key: str, client_id: str = "") -> bytes:
        now = self.clock.now()
        scopes = frozenset(key.split())
        granted = key
        if behaviour.body == "narrow" and len(scopes) > 1:
            granted = sorted(scopes)[0]
            scopes = frozenset({granted})
        jwt_exp = int(now) + behaviour.jwt_exp if behaviour.jwt_exp is not None else None
        token = make_jwt(jwt_exp, int(now), granted) if jwt_exp is not None else f"tok-{secrets.token_urlsafe(24)}"
        servable = True
        if behaviour.body == "crlf":
            token, servable = f"tok-{secrets.token_hex(12)}\r\nX-Injected: {secrets.token_hex(12)}", False
        elif behaviour.body == "space":
            token, servable = f"tok-{secrets.token_hex(12)} {secrets.token_hex(12)}", False
        expiries = []
        if behaviour.expires_in is not None:
            expiries.append(now + int(behaviour.expires_in))
        if jwt_exp is not None:
            expiries.append(float(jwt_exp))
        truth = min(expiries) if expiries else now + 300
        with self.lock:
            self.issued[token] = Issued(token=token, scopes=scopes, issued_at=now, true_expiry=truth,
                                        jwt_exp=jwt_exp, servable=servable, client_id=client_id)
        if behaviour.body == "not_json":
            return f"<html>token: {token}</html>".encode()
        document: dict[str, Any] = {"token_type": "Bearer"}
        if behaviour.body != "no_access_token":
            document["access_token"] = token
        else:
            document["token"] = token
        if behaviour.expires_in is not None:
            document["expires_in"] = behaviour.expires_in
        if granted:
            document["scope"] = granted
        return json.dumps(document).encode()


class _Exchange:
    """One answer, written so that the in-flight count drops exactly when the provider is done with it."""

    def __init__(self, provider: ScriptedProvider, handler: BaseHTTPRequestHandler,
                 record: TokenRequestRecord) -> None:
        self.provider = provider
        self.handler = handler
        self.record = record
        self.sock: socket.socket = handler.connection
        self.left = False
        self.started = time.monotonic()

    def leave(self) -> None:
        if self.left:
            return
        self.left = True
        with self.provider.lock:
            self.record.ended = time.monotonic()
            self.provider.in_flight[self.record.client_id, self.record.key] -= 1

    def client_gone(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        return True

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the client hangs up or the provider stops."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.provider.stopping.is_set() or self.client_gone():
                return False
            if time.monotonic() - self.started > ScriptedProvider.MAX_HANDLER_SECONDS:
                return False
            time.sleep(min(ScriptedProvider.POLL, max(0.0, end - time.monotonic())))
        return True

    def head(self, status: int, length: int, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Content-Type: application/json",
                 f"Content-Length: {length}", "Connection: close", "Cache-Control: no-store"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def answer(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.answer_bytes(status, json.dumps(document).encode(), headers=headers)

    def answer_bytes(self, status: int, body: bytes, headers: dict[str, str] | None = None, *,
                     trickle: float = 0.0, cut: str = "") -> None:
        self.handler.close_connection = True
        if cut == "truncated":  # promise more than is sent, then end the connection (FIN)
            self.leave()
            self.send(self.head(status, len(body) + 64, headers) + body)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return
        if cut == "reset":  # half the body, then RST (SO_LINGER 0)
            self.leave()
            self.send(self.head(status, len(body), headers) + body[:len(body) // 2])
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.close()
            return
        if not trickle:
            self.leave()  # the whole answer goes in one write: done from the provider's point of view
            self.send(self.head(status, len(body), headers) + body)
            return
        if not self.send(self.head(status, len(body), headers)):
            return
        ticks = max(1, math.ceil(trickle / 0.1))
        size = max(1, math.ceil(len(body) / ticks))
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        for index, chunk in enumerate(chunks):
            if index and not self.pause(trickle / len(chunks)):
                return
            if index == len(chunks) - 1:
                self.leave()
            if not self.send(chunk):
                return


_REASONS = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


# --- Lambda -----------------------------------------------------------------------------------------------------
@dataclass
class FakeContext:
    """The LambdaContext attributes the handlers read; the invocation's time budget is fixed at creation."""

    seconds: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "fleet"
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Environment:
    """One execution environment of a function: the handler object, its logger and metrics, busy or idle."""

    def __init__(self, name: str, target: Any, logger: Any, metrics: Any, sink: Sink) -> None:
        self.name = name
        self.target = target
        self.logger = logger
        self.metrics = metrics
        self.sink = sink
        self.busy = False

    def flush_metrics(self) -> None:
        """What ``@metrics.log_metrics`` prints at the end of an invocation, written to this fleet's sink."""
        if self.metrics.metric_set:
            self.sink.write(json.dumps(self.metrics.serialize_metric_set(), separators=(",", ":")) + "\n")
        self.metrics.clear_metrics()


class Pool:
    """Environments of one function. Like Lambda, an environment serves one invocation at a time and a new one
    is started (cold) when all are busy."""

    def __init__(self, factory: Callable[[int], Environment], initial: int) -> None:
        self.factory = factory
        self.lock = threading.Lock()
        self.environments = [factory(i) for i in range(initial)]

    @contextlib.contextmanager
    def environment(self, hint: int = 0) -> Iterator[Environment]:
        with self.lock:
            ordered = self.environments[hint % len(self.environments):] + self.environments[:hint % len(
                self.environments)]
            chosen = next((env for env in ordered if not env.busy), None)
            if chosen is None:
                chosen = self.factory(len(self.environments))
                self.environments.append(chosen)
            chosen.busy = True
        try:
            yield chosen
        finally:
            chosen.flush_metrics()
            with self.lock:
                chosen.busy = False


class FakeLambdaClient:
    """``lambda:Invoke`` RequestResponse, in process: runs the event in an idle provider environment and answers
    as Lambda does: the JSON result, or ``FunctionError: Unhandled`` with the runtime's error document."""

    def __init__(self, function_name: str, pool: Pool, context_seconds: float) -> None:
        self.function_name = function_name
        self.pool = pool
        self.context_seconds = context_seconds
        self.invocations = 0

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        assert FunctionName == self.function_name, FunctionName
        assert InvocationType == "RequestResponse", InvocationType
        self.invocations += 1
        event = json.loads(Payload)
        with self.pool.environment(self.invocations) as env:
            try:
                result = env.target.handle(event, FakeContext(self.context_seconds))
            except Exception as exc:
                document = {"errorType": type(exc).__name__, "errorMessage": str(exc), "requestId": "",
                            "stackTrace": []}
                return {"StatusCode": 200, "FunctionError": "Unhandled",
                        "Payload": io.BytesIO(json.dumps(document).encode())}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


def make_logger(service: str, sink: Sink) -> Any:
    """A Powertools logger of its own (a unique service name: Powertools shares handlers per name) at DEBUG, so
    every line any path could write is captured and scanned."""
    from aws_lambda_powertools import Logger

    handler = logging.StreamHandler(sink)
    logger = Logger(service=service, level="DEBUG", logger_handler=handler)
    logging.getLogger(service).propagate = False  # its sink is its CloudWatch Logs; nothing else sees it
    return logger


def make_metrics() -> Any:
    """``EphemeralMetrics``: ``Metrics`` shares its metric set across every instance of a process, which in
    Lambda is one environment; here each environment must keep its own."""
    from aws_lambda_powertools.metrics import EphemeralMetrics

    return EphemeralMetrics(namespace="TokenVending", service="token-vending")


def provider_pool(profile: ClientCredentialsProfile, *, prefix: str, dynamodb: Any, secretsmanager: Any, sink: Sink,
                  initial: int) -> Pool:
    from token_vending.provider_function import ProviderFunction

    def factory(index: int) -> Environment:
        logger = make_logger(f"{prefix}-provider-{index}", sink)
        metrics = make_metrics()
        function = ProviderFunction(profile, logger=logger, metrics=metrics, dynamodb=dynamodb,
                                    secretsmanager=secretsmanager)
        return Environment(f"provider-{index}", function, logger, metrics, sink)

    return Pool(factory, initial)


def api_pool(*, prefix: str, dynamodb: Any, lambda_client: FakeLambdaClient, sink: Sink, initial: int) -> Pool:
    from token_vending.api import TokenApi

    def factory(index: int) -> Environment:
        logger = make_logger(f"{prefix}-api-{index}", sink)
        metrics = make_metrics()
        api = TokenApi(logger=logger, metrics=metrics, dynamodb=dynamodb, lambda_client=lambda_client)  # type: ignore[arg-type]
        return Environment(f"api-{index}", api, logger, metrics, sink)

    return Pool(factory, initial)


def api_event(provider: str, query: dict[str, str] | None) -> dict[str, Any]:
    """An API Gateway REST proxy event for ``GET /token/{provider}``."""
    return {
        "resource": "/token/{provider}", "path": f"/token/{provider}", "httpMethod": "GET",
        "headers": {"Host": "example.execute-api.us-east-1.amazonaws.com"},
        "pathParameters": {"provider": provider},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "requestContext": {"requestId": str(uuid.uuid4()), "stage": "test"},
        "body": None, "isBase64Encoded": False,
    }
