"""The running local gateway (the stack ``make local`` runs) accepts what API Gateway accepts and refuses what it
refuses: requests signed three independent ways (botocore, ``curl --aws-sigv4``, the caller library) for every scope
set of a provider with several scopes and with reserved and non-ASCII characters in query values; tampered requests
refused with the deployed gateway response."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from unittest import mock
from urllib.parse import quote

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from local.stack import PYNG_SCOPES, REGION
from tests.support.signing import local_credentials, signed_get
from token_vending_client import InvalidRequest, get_token
from token_vending_client import client as client_module

if TYPE_CHECKING:
    from collections.abc import Callable

    from local.stack import LocalStack

pytestmark = pytest.mark.integration
SCOPE_SETS = [" ".join(chosen) for size in range(len(PYNG_SCOPES.split()) + 1)
              for chosen in itertools.combinations(PYNG_SCOPES.split(), size)]
HOSTILE_SCOPES = ["billing:batches:read é", "a/b?c=d&e=f+g%20h", "日本語 ~!*'()[]", "x;y,z@$ \t"]
"""Values the token API refuses (400 ``invalid_request``): an answer from the function, so the signature verified."""


def botocore_get(stack: LocalStack, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = signed_get(f"{stack.api_url}pyng", params=query, timeout=60)
    return response.status_code, response.json()


def curl_get(stack: LocalStack, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """curl 7.88 signs the query as written: it is written in canonical form (sorted, RFC 3986)."""
    credentials = local_credentials()
    encoded = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    command = ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", "--aws-sigv4",
               f"aws:amz:{REGION}:execute-api", "--user", f"{credentials.access_key}:{credentials.secret_key}",
               f"{stack.api_url}pyng" + (f"?{encoded}" if encoded else "")]
    if credentials.token:
        command[1:1] = ["-H", f"X-Amz-Security-Token: {credentials.token}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=90).stdout
    body, _, status = output.rpartition("\n")
    return int(status), json.loads(body)


def library_get(stack: LocalStack, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    client_module._SOURCES.clear()
    credentials = local_credentials()
    session = boto3.Session(aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                            aws_session_token=credentials.token, region_name=REGION)
    try:
        token = get_token("pyng", api_url=stack.stage_url, scope=query.get("scope", ""), session=session)
    except InvalidRequest as error:
        return 400, {"error": error.code}
    return 200, {"access_token": token.access_token, "scope": token.scope}


SIGNERS: dict[str, Callable[[LocalStack, dict[str, str]], tuple[int, dict[str, Any]]]] = {
    "botocore": botocore_get, "curl": curl_get, "caller_library": library_get}


@pytest.fixture(scope="module", autouse=True)
def _curl() -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is required (it is one of the three independent signers)")


@pytest.mark.parametrize("signer", SIGNERS)
def test_every_scope_set_signed_independently_is_accepted(stack: LocalStack, signer: str) -> None:
    sign = SIGNERS[signer]
    assert len(SCOPE_SETS) == 16
    for scopes in SCOPE_SETS:
        status, body = sign(stack, {"scope": scopes} if scopes else {})
        assert status == 200, (scopes, body)
        assert body["access_token"]
        if scopes:
            assert sorted(body["scope"].split()) == sorted(scopes.split()), scopes


@pytest.mark.parametrize("signer", SIGNERS)
def test_reserved_and_non_ascii_query_values_reach_the_function(stack: LocalStack, signer: str) -> None:
    for scope in HOSTILE_SCOPES:
        status, body = SIGNERS[signer](stack, {"scope": scope})
        assert (status, body["error"]) == (400, "invalid_request"), (scope, body)


# --- tampering: signed by botocore, changed on the way --------------------------------------------------------------
def signed_headers(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url, headers=extra or {})
    SigV4Auth(local_credentials(), "execute-api", REGION).add_auth(request)
    return dict(request.headers.items())


def assert_refused(response: requests.Response, error_type: str, message: str) -> None:
    assert response.status_code == 403, response.text
    assert (response.headers["Cache-Control"], response.headers["Pragma"]) == ("no-store", "no-cache")
    assert response.headers["x-amzn-ErrorType"] == error_type
    body = response.json()
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["error"] == "access_denied"
    assert body["error_description"].startswith(message)


MISMATCH = "The request signature we calculated does not match the signature you provided."


def test_tampered_requests_are_refused_with_the_deployed_response(stack: LocalStack, emulators: Any) -> None:
    query = "scope=billing%3Abatches%3Aread%20billing%3Acustomers%3Aread"
    url = f"{stack.api_url}pyng?{query}"
    headers = signed_headers(url, {"X-Amz-Target": "read"})
    assert requests.get(url, headers=headers, timeout=60).status_code == 200  # untouched: accepted
    before = emulators["pyng"].token_requests
    cases = {
        "query value": (url.replace("customers%3Aread", "customers%3Ainvite"), headers),
        "path": (url.replace("/pyng?", "/aria?"), headers),
        "signed header": (url, {**headers, "X-Amz-Target": "write"}),
        "host": (url, {**headers, "Host": "abc123.execute-api.us-east-1.amazonaws.com"}),
    }
    for name, (target, sent) in cases.items():
        response = requests.get(target, headers=sent, timeout=60)
        assert response.status_code == 403, name
        assert_refused(response, "InvalidSignatureException", MISMATCH)
    stale = (datetime.now(UTC) - timedelta(minutes=16)).strftime("%Y%m%dT%H%M%SZ")
    assert_refused(requests.get(url, headers={**headers, "X-Amz-Date": stale}, timeout=60),
                   "InvalidSignatureException", "Signature expired: ")
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=20)):
        old = signed_headers(url)
    assert_refused(requests.get(url, headers=old, timeout=60), "InvalidSignatureException", "Signature expired: ")
    assert emulators["pyng"].token_requests == before, "no refused request reached a provider"


def test_unsigned_and_unknown_key_requests_are_refused(stack: LocalStack) -> None:
    url = f"{stack.api_url}pyng"
    assert_refused(requests.get(url, timeout=60), "MissingAuthenticationTokenException",
                   "Missing Authentication Token")
    unknown = subprocess.run(["curl", "-sS", "-i", "--aws-sigv4", f"aws:amz:{REGION}:execute-api", "--user",
                              "AKIANOBODY:testing", url], capture_output=True, text=True, check=True, timeout=90)
    assert unknown.stdout.startswith("HTTP/1.1 403")
    assert "x-amzn-ErrorType: UnrecognizedClientException" in unknown.stdout
    assert "The security token included in the request is invalid." in unknown.stdout


def test_the_url_has_the_deployed_shape(stack: LocalStack) -> None:
    """``ApiUrl`` is ``<base>/<stage>/token/``; without the stage there is no such method."""
    assert stack.api_url == f"{stack.stage_url}/token/"
    assert stack.stage_url.endswith("/v1")
    without_stage = stack.api_url.replace("/v1/", "/")
    assert_refused(signed_get(f"{without_stage}pyng", timeout=60), "MissingAuthenticationTokenException",
                   "Missing Authentication Token")
