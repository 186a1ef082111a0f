"""The local gateway's SigV4 verifier against AWS's published test suite, botocore's signer and tampering.

The vectors (tests/data/aws4_testsuite, see its SOURCE.md) were written by AWS, the signers by botocore: neither by
this project. Each vector's canonical request must be rebuilt byte for byte and its ``Authorization`` accepted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from local import sigv4
from local.sigv4 import Credentials, Request, SignatureRefused

SUITE = Path(__file__).resolve().parents[1] / "data" / "aws4_testsuite"
SUITE_KEY = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
STS_TOKEN = (SUITE / "post-sts-token" / "readme.txt").read_text().split("\n\n")[-1].strip()
UNRECEIVABLE = {
    "get-space": "a space cannot appear in an HTTP request target (RFC 9112 3.2): API Gateway never receives it",
}
VECTORS = sorted(path.parent for path in SUITE.rglob("*.req"))


def parse_req(text: str) -> Request:
    """A vector's ``.req``: request line, header fields (a line starting with white space continues the field
    before it), a blank line, the body."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1].isspace() and headers:
            headers[-1] = (headers[-1][0], f"{headers[-1][1]}\n{line}")
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return Request(method, target, headers, body.encode())


def vector(folder: Path) -> tuple[Request, str, str]:
    name = folder.name
    request = parse_req((folder / f"{name}.req").read_text())
    canonical = (folder / f"{name}.creq").read_text()
    if name == "get-vanilla-with-session-token":  # its .req omits the token its .creq signs
        token = next(line for line in canonical.split("\n") if line.startswith("x-amz-security-token:"))
        request = replace(request, headers=[*request.headers, ("X-Amz-Security-Token", token.split(":", 1)[1])])
    return request, canonical, (folder / f"{name}.authz").read_text().strip()


def suite_credentials(request: Request) -> dict[str, Credentials]:
    token = sigv4._header(request.headers, "x-amz-security-token")
    return {SUITE_KEY.access_key: replace(SUITE_KEY, session_token=token)}


@pytest.mark.parametrize("folder", VECTORS, ids=lambda folder: folder.name)
def test_aws_test_suite_canonical_request_and_signature(folder: Path) -> None:
    if folder.name in UNRECEIVABLE:
        pytest.skip(UNRECEIVABLE[folder.name])
    request, canonical, authorization = vector(folder)
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    payload_hash = canonical.rsplit("\n", 1)[1]
    assert sigv4.canonical_request(request, signed, payload_hash) == canonical
    received = replace(request, headers=[*request.headers, ("Authorization", authorization)])
    if folder.name == "post-sts-header-after":  # the token is added after signing: sent, but not signed
        received = replace(received, headers=[*received.headers, ("X-Amz-Security-Token", STS_TOKEN)])
    known = suite_credentials(received)
    assert sigv4.verify(received, known, "us-east-1", service="service", now=SUITE_TIME) == known["AKIDEXAMPLE"]


def test_the_suite_is_all_there() -> None:
    """Every vector AWS publishes for header signing (botocore's copy): none silently missing."""
    assert len(VECTORS) == 34


@pytest.mark.parametrize("folder", [f for f in VECTORS if f.name not in UNRECEIVABLE], ids=lambda f: f.name)
def test_aws_test_suite_with_a_wrong_secret_is_refused(folder: Path) -> None:
    request, _, authorization = vector(folder)
    received = replace(request, headers=[*request.headers, ("Authorization", authorization)])
    known = {key: replace(value, secret_key="not-the-secret") for key, value in suite_credentials(received).items()}
    with pytest.raises(SignatureRefused) as refused:
        sigv4.verify(received, known, "us-east-1", service="service", now=SUITE_TIME)
    assert refused.value.response_type == "INVALID_SIGNATURE"
    assert refused.value.error_type == "InvalidSignatureException"


# --- botocore's signer, as a caller of the local gateway uses it --------------------------------------------------
LOCAL = Credentials("testing", "testing")
HOST = "127.0.0.1:3000"
# Signing happens at the real time; a stale or early signature is a request verified at another time.


def botocore_signed(url: str, *, credentials: BotoCredentials | None = None, region: str = "us-east-1",
                    service: str = "execute-api", headers: dict[str, str] | None = None,
                    query_auth: bool = False) -> Request:
    request = AWSRequest(method="GET", url=url, headers=headers or {})
    auth_class = SigV4QueryAuth if query_auth else SigV4Auth
    auth = auth_class(credentials or BotoCredentials("testing", "testing"), service, region)
    auth.add_auth(request)
    parts = urlsplit(str(request.url))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    sent = [(name, value) for name, value in request.headers.items()]
    if not any(name.lower() == "host" for name, _ in sent):
        sent.append(("Host", parts.netloc))
    return Request("GET", target, sent)


def token_url(query: dict[str, str] | None = None, path: str = "/v1/token/pyng") -> str:
    return f"http://{HOST}{path}" + (f"?{urlencode(query, quote_via=quote)}" if query else "")


@pytest.mark.parametrize("scope", ["billing:read", "billing:read billing:write", "a/b?c=d&e+f é~ 日本"])
def test_botocore_signed_requests_are_accepted(scope: str) -> None:
    request = botocore_signed(token_url({"scope": scope, "min_ttl": "60"}))
    assert sigv4.verify(request, {"testing": LOCAL}, "us-east-1") == LOCAL


def test_a_presigned_url_is_accepted_until_it_expires() -> None:
    request = botocore_signed(token_url({"scope": "a b"}), query_auth=True)
    assert sigv4.verify(request, {"testing": LOCAL}, "us-east-1") == LOCAL
    with pytest.raises(SignatureRefused, match="Signature expired"):
        sigv4.verify(request, {"testing": LOCAL}, "us-east-1", now=datetime.now(UTC) + timedelta(hours=2))


def test_a_plus_signed_as_itself_is_refused_as_api_gateway_does() -> None:
    """``scope=a+b`` means ``a b`` to API Gateway (canonical ``a%20b``); botocore signs the raw ``a+b``."""
    request = botocore_signed(f"http://{HOST}/v1/token/pyng?scope=a+b")
    with pytest.raises(SignatureRefused) as refused:
        sigv4.verify(request, {"testing": LOCAL}, "us-east-1")
    assert refused.value.response_type == "INVALID_SIGNATURE"
    assert "scope=a%20b" in refused.value.message


def test_a_session_token_is_accepted_when_it_is_the_keys_own() -> None:
    temporary = replace(LOCAL, session_token="session-1")
    request = botocore_signed(token_url(), credentials=BotoCredentials("testing", "testing", "session-1"))
    assert ("X-Amz-Security-Token", "session-1") in request.headers
    assert sigv4.verify(request, {"testing": temporary}, "us-east-1") == temporary
    for known in (LOCAL, replace(LOCAL, session_token="session-2")):
        with pytest.raises(SignatureRefused) as refused:
            sigv4.verify(request, {"testing": known}, "us-east-1")
        assert (refused.value.error_type, refused.value.message) == (
            "UnrecognizedClientException", "The security token included in the request is invalid.")


def refusal(request: Request, *, now: datetime | None = None, region: str = "us-east-1") -> SignatureRefused:
    with pytest.raises(SignatureRefused) as refused:
        sigv4.verify(request, {"testing": LOCAL}, region, now=now)
    return refused.value


def test_unsigned_request_is_missing_its_token() -> None:
    refused = refusal(Request("GET", "/v1/token/pyng", [("Host", HOST)]))
    assert (refused.response_type, refused.error_type, refused.message) == (
        "MISSING_AUTHENTICATION_TOKEN", "MissingAuthenticationTokenException", "Missing Authentication Token")


def test_unknown_access_key_is_unrecognised() -> None:
    refused = refusal(botocore_signed(token_url(), credentials=BotoCredentials("AKIAUNKNOWN", "testing")))
    assert (refused.error_type, refused.message) == (
        "UnrecognizedClientException", "The security token included in the request is invalid.")


def test_wrong_secret_is_a_signature_mismatch() -> None:
    refused = refusal(botocore_signed(token_url(), credentials=BotoCredentials("testing", "wrong")))
    assert refused.response_type == "INVALID_SIGNATURE"
    assert refused.message.startswith(sigv4.SIGNATURE_MISMATCH)


@pytest.mark.parametrize("shift", [timedelta(minutes=-6), timedelta(minutes=-16), timedelta(hours=-3)])
def test_stale_signature_is_expired(shift: timedelta) -> None:
    refused = refusal(botocore_signed(token_url()), now=datetime.now(UTC) - shift)
    assert refused.error_type == "InvalidSignatureException"
    assert refused.message.startswith("Signature expired: ")
    assert refused.message.endswith(" - 5 min.)")


def test_signature_from_the_future_is_not_yet_current() -> None:
    refused = refusal(botocore_signed(token_url()), now=datetime.now(UTC) - timedelta(minutes=6))
    assert refused.message.startswith("Signature not yet current: ")


def test_within_the_skew_is_accepted() -> None:
    for shift in (timedelta(minutes=-4), timedelta(minutes=4)):
        assert sigv4.verify(botocore_signed(token_url()), {"testing": LOCAL}, "us-east-1",
                            now=datetime.now(UTC) + shift)


@pytest.mark.parametrize(("region", "service", "message"), [
    ("eu-west-1", "execute-api", "Credential should be scoped to a valid region, not 'eu-west-1'. "),
    ("us-east-1", "lambda", "Credential should be scoped to correct service: 'execute-api'. "),
])
def test_credential_scope_must_be_this_region_and_service(region: str, service: str, message: str) -> None:
    assert refusal(botocore_signed(token_url(), region=region, service=service)).message == message


def tampered(request: Request, **changes: object) -> Request:
    return replace(request, **changes)  # type: ignore[arg-type]


def test_tampered_requests_are_refused() -> None:
    scope = "billing:read billing:write"
    original = botocore_signed(token_url({"scope": scope}))
    assert sigv4.verify(original, {"testing": LOCAL}, "us-east-1")
    changed_query = tampered(original, target=original.target.replace("write", "admin"))
    changed_path = tampered(original, target=original.target.replace("/pyng", "/aria"))
    other_host = tampered(original, headers=[(n, "evil.example" if n.lower() == "host" else v)
                                             for n, v in original.headers])
    stale = (datetime.now(UTC) - timedelta(minutes=20)).strftime(sigv4.AMZ_DATE)
    shifted = [(n, stale if n.lower() == "x-amz-date" else v) for n, v in original.headers]
    for request in (changed_query, changed_path, other_host, tampered(original, headers=shifted)):
        assert refusal(request).response_type == "INVALID_SIGNATURE"


def test_a_signed_header_added_to_after_signing_is_refused() -> None:
    original = botocore_signed(token_url(), headers={"X-Amz-Target": "one"})
    assert sigv4.verify(original, {"testing": LOCAL}, "us-east-1")
    extra = tampered(original, headers=[*original.headers, ("X-Amz-Target", "two")])
    assert refusal(extra).response_type == "INVALID_SIGNATURE"


@pytest.mark.parametrize("authorization", [
    "Bearer abc",
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/execute-api/aws4_request",
    "AWS4-HMAC-SHA256 garbage",
])
def test_malformed_authorization_is_an_incomplete_signature(authorization: str) -> None:
    refused = refusal(Request("GET", "/v1/token/pyng", [("Host", HOST), ("Authorization", authorization),
                                                          ("X-Amz-Date", datetime.now(UTC).strftime(sigv4.AMZ_DATE))]))
    assert (refused.response_type, refused.error_type) == ("INVALID_SIGNATURE", "IncompleteSignatureException")


def test_a_mismatch_quotes_the_canonical_request_without_the_session_token() -> None:
    """API Gateway's message quotes what it signed; a session token (a credential) is not repeated."""
    token = "IQoJb3JpZ2luX2VjEXAMPLE-session-token"
    request = botocore_signed(token_url(), credentials=BotoCredentials("testing", "wrong", token))
    with pytest.raises(SignatureRefused) as caught:
        sigv4.verify(request, {"testing": replace(LOCAL, session_token=token)}, "us-east-1")
    assert "x-amz-security-token:<redacted>" in caught.value.message
    assert token not in caught.value.message


def test_temporary_credentials_without_their_session_token_are_unrecognised() -> None:
    """A temporary key is valid only with its session token: signed without it, AWS does not know the caller."""
    temporary = replace(LOCAL, session_token="session-1")
    request = botocore_signed(token_url())  # the key and secret alone, no X-Amz-Security-Token
    with pytest.raises(SignatureRefused) as refused:
        sigv4.verify(request, {"testing": temporary}, "us-east-1")
    assert (refused.value.error_type, refused.value.message) == (
        "UnrecognizedClientException", "The security token included in the request is invalid.")


@pytest.mark.parametrize("expires", ["99999999999999999999", "604801", "\u00b2", "-5", "", "1e3", " 60"])
def test_a_presigned_url_with_an_unusable_lifetime_is_refused(expires: str) -> None:
    """``X-Amz-Expires`` is a whole number of seconds up to a week: anything else is refused as incomplete,
    never read as another number nor answered with an exception."""
    request = botocore_signed(token_url({"scope": "a"}), query_auth=True)
    path, _, query = request.target.partition("?")
    pairs = [pair for pair in query.split("&") if not pair.startswith("X-Amz-Expires=")]
    request = replace(request, target=f"{path}?{'&'.join([*pairs, 'X-Amz-Expires=' + quote(expires)])}")
    refused = refusal(request)
    assert (refused.response_type, refused.error_type) == ("INVALID_SIGNATURE", "IncompleteSignatureException")
    assert "X-Amz-Expires" in refused.message


def test_a_presigned_url_lasting_a_week_is_accepted() -> None:
    request = AWSRequest(method="GET", url=token_url({"scope": "a"}))
    SigV4QueryAuth(BotoCredentials("testing", "testing"), "execute-api", "us-east-1", expires=604800).add_auth(request)
    parts = urlsplit(str(request.url))
    received = Request("GET", f"{parts.path}?{parts.query}", [("Host", parts.netloc)])
    assert sigv4.verify(received, {"testing": LOCAL}, "us-east-1", now=datetime.now(UTC) + timedelta(days=6)) == LOCAL
