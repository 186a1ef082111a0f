"""Fault tests against real servers on loopback: DynamoDB unreachable or throttled, a lease holder that
dies mid-refresh, Retry-After honoured within the invocation's time, and a load test."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from local.providers import Fault
from tests.integration.conftest import get_token, table_items

pytestmark = pytest.mark.integration


THROTTLED = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "Rate of requests exceeds the allowed throughput."}).encode()


class FakeDynamoDB:
    """A DynamoDB endpoint on loopback whose answers ``answer`` decides; it throttles every call."""

    def __init__(self) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = outer.answer(dict(self.headers.items()), raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, bytes]:
        self.calls += 1
        return 400, THROTTLED

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("failure", ["unreachable", "throttled"])
def test_dynamodb_failure_degrades_to_one_fetch_per_environment(make_stack: Any, emulators: Any,
                                                                 failure: str) -> None:
    throttling = FakeDynamoDB() if failure == "throttled" else None
    endpoint = throttling.endpoint if throttling else "http://127.0.0.1:9"
    try:
        stack = make_stack(dynamodb_endpoint=endpoint, create_resources=False, max_concurrency=1)
        stack.seed_secrets()
        tokens = {get_token(stack, "pyng").json()["access_token"] for _ in range(3)}
    finally:
        if throttling:
            throttling.stop()
    assert len(tokens) == 1  # the one execution environment kept its token in memory
    assert emulators["pyng"].token_requests == 1
    assert "CacheUnavailable" in stack.logs.text()
    if throttling:
        assert throttling.calls > 0


def test_a_lease_holder_killed_mid_refresh_is_taken_over(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(function_env={"LEASE_SECONDS": "3"})
    emulators["pyng"].enqueue(Fault(status=200, delay=30))  # the first holder hangs on the provider
    first: list[Any] = []
    holder = threading.Thread(target=lambda: first.append(get_token(stack, "pyng")), daemon=True)
    holder.start()
    deadline = time.monotonic() + 20
    while emulators["pyng"].token_requests == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulators["pyng"].token_requests == 1
    assert [item for item in table_items(stack) if item["sk"]["S"].startswith("lease#")]
    [pool] = [pool for name, pool in stack.lambdas.pools.items() if name == "PyngFunction"]
    for worker in list(pool.everyone):
        worker.process.kill()  # the holder dies with its lease still in the table
    started = time.monotonic()
    response = get_token(stack, "pyng")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 15  # waited for the lease to lapse (3 s), then took over
    assert emulators["pyng"].token_requests == 2
    holder.join(timeout=30)


def test_retry_after_is_honoured_within_the_invocation(stack: Any, emulators: Any) -> None:
    emulators["invoice-cloud"].enqueue(Fault(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    response = get_token(stack, "invoice-cloud")
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0
    assert emulators["invoice-cloud"].token_requests == 2


@pytest.mark.slow
def test_load_1000_requests_from_50_callers_with_a_cold_cache(make_stack: Any, emulators: Any) -> None:
    stack = make_stack(max_concurrency=10)
    routes = ["invoice-cloud", "pyng", "aria", "autopay", "alternative-payments"]

    def call(index: int) -> int:
        return get_token(stack, routes[index % len(routes)]).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(call, range(1000)))
    assert statuses.count(200) == 1000
    for route in routes:
        assert emulators[route].token_requests == 1, route


class FailingWrites(FakeDynamoDB):
    """Forwards to DynamoDB Local but throttles the token's write (an UpdateItem naming ``access_token``): the table
    fails right after a fetch."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        super().__init__()

    def answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        if headers.get("X-Amz-Target", "").endswith((".PutItem", ".UpdateItem")) and b'"access_token"' in raw:
            return super().answer(headers, raw)
        forward = urllib.request.Request(self.upstream, data=raw, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(forward, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def test_a_token_whose_write_fails_is_served_and_kept_not_fetched_again(make_stack: Any, emulators: Any,
                                                                        dynamodb_local: Any) -> None:
    proxy = FailingWrites(dynamodb_local.endpoint)
    try:
        stack = make_stack(dynamodb_endpoint=proxy.endpoint, max_concurrency=1)
        tokens = {get_token(stack, "aria").json()["access_token"] for _ in range(3)}
    finally:
        proxy.stop()
    assert proxy.calls >= 1
    assert len(tokens) == 1
    assert emulators["aria"].token_requests == 1
