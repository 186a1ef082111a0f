"""Signature Version 4 verification as API Gateway does it for ``AWS_IAM`` methods, from the request as received.

A pure function (:func:`verify`) of the request, the known credentials, the region and the time: the local gateway
calls it before it builds the proxy event, and the tests call it directly with AWS's published test vectors.

What is checked, in API Gateway's order: an ``Authorization`` header (or the query-string form's ``X-Amz-*``
parameters) is present and complete; the credential scope names the date of ``X-Amz-Date``, this region,
``execute-api`` and ``aws4_request``; the date is within five minutes of now (API Gateway's window: its refusals
say ``(... - 5 min.)``), or before ``X-Amz-Expires`` for a presigned URL; the access key is known; a security
token comes with a temporary key (only with one) and is the one issued with it; and the signature is the one
this side computes over the canonical request rebuilt per the SigV4 documentation (path normalised and
URI-encoded as for every service but S3, query decoded and re-encoded per RFC 3986 and sorted, signed headers
lowercased and trimmed, payload hash).

A ``+`` in the query is a space, as API Gateway reads it (the canonical form is ``%20``): a signer that signs
the ``+`` itself (``%2B``) is refused there, and so it is here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_plus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "execute-api"
TERMINATOR = "aws4_request"
MAX_SKEW = timedelta(minutes=5)
"""How far ``X-Amz-Date`` may be from now (either way)."""
MAX_EXPIRES = 604800
"""The longest a presigned URL may last (a week, in seconds), as AWS's signers and services allow."""
AMZ_DATE = "%Y%m%dT%H%M%SZ"
UNRESERVED = "-_.~"
"""RFC 3986's unreserved characters besides letters and digits: never percent-encoded in a canonical request."""

# API Gateway's own message strings (what ``$context.error.messageString`` holds).
MISSING_TOKEN = "Missing Authentication Token"  # noqa: S105 - a message, not a secret
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")
INVALID_TOKEN = "The security token included in the request is invalid."  # noqa: S105 - a message, not a secret


@dataclass(frozen=True)
class Credentials:
    """An access key the gateway knows, and the IAM identity it belongs to (what the proxy event's
    ``requestContext.identity`` says of a verified caller)."""

    access_key: str
    secret_key: str
    session_token: str | None = None
    """``None``: long-term credentials; any ``X-Amz-Security-Token`` sent with them is refused."""
    account_id: str = "123456789012"
    user_id: str = "AIDALOCALCALLER000000"
    user_arn: str = "arn:aws:iam::123456789012:user/local-caller"


class SignatureRefused(Exception):
    """API Gateway's refusal: the gateway response type, the ``x-amzn-ErrorType`` header and the message."""

    def __init__(self, response_type: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.response_type = response_type
        self.error_type = error_type
        self.message = message


def _missing() -> SignatureRefused:
    return SignatureRefused("MISSING_AUTHENTICATION_TOKEN", "MissingAuthenticationTokenException", MISSING_TOKEN)


def _incomplete(message: str) -> SignatureRefused:
    return SignatureRefused("INVALID_SIGNATURE", "IncompleteSignatureException", message)


def _invalid(message: str) -> SignatureRefused:
    return SignatureRefused("INVALID_SIGNATURE", "InvalidSignatureException", message)


def _unrecognised() -> SignatureRefused:
    # API Gateway does not document which gateway response an unknown key maps to; both candidates (ACCESS_DENIED,
    # INVALID_SIGNATURE) default to 403 and this template gives them the same body.
    return SignatureRefused("INVALID_SIGNATURE", "UnrecognizedClientException", INVALID_TOKEN)


@dataclass(frozen=True)
class Request:
    """A request as the gateway received it: ``target`` is the request line's path and query, undecoded (the
    request line's bytes as UTF-8: ``//a`` is a path, not an authority);
    ``headers`` keeps repeated fields and their order."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""


# --- the canonical request -------------------------------------------------------------------------------------
def _uri_encode(text: str, safe: str = UNRESERVED) -> str:
    return quote(text, safe=safe)


def normalise_path(path: str) -> str:
    """RFC 3986 dot-segment removal, with empty segments dropped as AWS does for every service but S3."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    trailing = "/" if kept and (path.endswith("/")) else ""
    return "/" + "/".join(kept) + trailing


def canonical_uri(path: str) -> str:
    """The path as received, normalised, then URI-encoded (``/`` kept): a path that arrived percent-encoded is
    encoded a second time, as the SigV4 documentation asks of every service but S3."""
    return _uri_encode(normalise_path(path or "/"), safe=UNRESERVED + "/")


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The query's parameters, decoded as API Gateway reads them (``+`` is a space), in order."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    """Each name and value URI-encoded per RFC 3986 (UTF-8; ``%20`` for a space), sorted by name, then value."""
    encoded = sorted((_uri_encode(name), _uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _trim(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value`` lines of the signed headers: names lowercased, values trimmed with inner runs of white space
    collapsed, repeated fields joined with ``,`` in the order received."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.strip().lower(), []).append(_trim(value))
    return "".join(f"{name}:{','.join(values.get(name, []))}\n" for name in signed)


def canonical_request(request: Request, signed: Sequence[str], payload_hash: str, *,
                      exclude: str | None = None) -> str:
    """The canonical request; ``exclude`` leaves a query parameter out (``X-Amz-Signature`` of a presigned URL)."""
    path, _, query = request.target.partition("?")
    pairs = [(name, value) for name, value in query_pairs(query) if name != exclude]
    return "\n".join([request.method.upper(), canonical_uri(path), canonical_query(pairs),
                      canonical_headers(request.headers, signed), ";".join(signed), payload_hash])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# --- what the caller sent ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Signed:
    credential: str
    signed_headers: list[str]
    signature: str
    amz_date: str
    security_token: str | None
    expires: int | None
    """Seconds a presigned URL lasts; ``None`` for the header form."""
    exclude: str | None


_AUTH_PARAM = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    found = [value for key, value in headers if key.strip().lower() == name]
    return ",".join(found) if found else None


def _from_header(authorization: str, request: Request) -> _Signed:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete("Authorization header requires 'Credential' parameter. Authorization header requires "
                          "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter.")
    params: dict[str, str] = {}
    for item in rest.split(","):
        match = _AUTH_PARAM.fullmatch(item)
        if match is None:
            raise _incomplete("Invalid key=value pair (missing equal-sign) in Authorization header.")
        params[match.group(1)] = match.group(2)
    missing = [f"Authorization header requires '{name}' parameter."
               for name in ("Credential", "Signature", "SignedHeaders") if not params.get(name)]
    amz_date = _header(request.headers, "x-amz-date")
    if amz_date is None:
        missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if missing:
        raise _incomplete(" ".join(missing))
    return _Signed(params["Credential"], params["SignedHeaders"].split(";"), params["Signature"], str(amz_date),
                   _header(request.headers, "x-amz-security-token"), None, None)


def _from_query(query: dict[str, str], request: Request) -> _Signed:
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise _incomplete("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    missing = [f"AWS query-string parameters must include '{name}'."
               for name in ("X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date")
               if not query.get(name)]
    if missing:
        raise _incomplete(" ".join(missing) + " Re-examine the query-string parameters.")
    expires = query.get("X-Amz-Expires")
    seconds = int(expires) if expires is not None and re.fullmatch(r"[0-9]{1,7}", expires, re.ASCII) else None
    if expires is not None and (seconds is None or seconds > MAX_EXPIRES):
        # Not a number of seconds up to a week: refused as a malformed query-string signature, never read as
        # another number (a superscript digit, a value no date arithmetic can hold).
        raise _incomplete(f"X-Amz-Expires must be a whole number of seconds from 0 to {MAX_EXPIRES} (a week). "
                          "Re-examine the query-string parameters.")
    return _Signed(query["X-Amz-Credential"], query["X-Amz-SignedHeaders"].split(";"), query["X-Amz-Signature"],
                   query["X-Amz-Date"], query.get("X-Amz-Security-Token"),
                   MAX_EXPIRES if seconds is None else seconds, "X-Amz-Signature")


def _check_time(amz_date: str, expires: int | None, now: datetime) -> None:
    try:
        signed_at = datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete(f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See "
                          "http://en.wikipedia.org/wiki/ISO_8601") from None
    now = now.astimezone(UTC).replace(microsecond=0)
    if signed_at > now + MAX_SKEW:
        raise _invalid(f"Signature not yet current: {amz_date} is still later than "
                       f"{(now + MAX_SKEW).strftime(AMZ_DATE)} ({now.strftime(AMZ_DATE)} + 5 min.)")
    if expires is not None:
        if signed_at + timedelta(seconds=expires) < now:
            raise _invalid(f"Signature expired: {amz_date} is now earlier than "
                           f"{(now - timedelta(seconds=expires)).strftime(AMZ_DATE)} "
                           f"({now.strftime(AMZ_DATE)} - {expires} sec.)")
    elif signed_at < now - MAX_SKEW:
        raise _invalid(f"Signature expired: {amz_date} is now earlier than "
                       f"{(now - MAX_SKEW).strftime(AMZ_DATE)} ({now.strftime(AMZ_DATE)} - 5 min.)")


def verify(request: Request, credentials: Mapping[str, Credentials], region: str, *, service: str = SERVICE,
           now: datetime | None = None) -> Credentials:
    """The credentials that signed ``request``, or :class:`SignatureRefused` with API Gateway's answer."""
    query = dict(query_pairs(request.target.partition("?")[2]))
    authorization = _header(request.headers, "authorization")
    if authorization is not None:
        signed = _from_header(authorization, request)
    elif "X-Amz-Algorithm" in query:
        signed = _from_query(query, request)
    else:
        raise _missing()

    scope_parts = signed.credential.split("/")
    if len(scope_parts) != 5:
        raise _incomplete(f"Credential should have at least 5 slash-separated parts, not {len(scope_parts)}. "
                          if len(scope_parts) < 5 else "Credential should have exactly 5 slash-separated parts.")
    access_key, date, scope_region, scope_service, terminator = scope_parts
    if terminator != TERMINATOR:
        raise _incomplete(f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not "
                          f"'{terminator}'.")
    if signed.amz_date[:8] != date:
        raise _invalid(f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                       f"'{date}' != '{signed.amz_date[:8]}', from '{signed.amz_date}'.")
    if scope_service != service:
        raise _invalid(f"Credential should be scoped to correct service: '{service}'. ")
    if scope_region != region:
        raise _invalid(f"Credential should be scoped to a valid region, not '{scope_region}'. ")
    _check_time(signed.amz_date, signed.expires, now or datetime.now(UTC))

    known = credentials.get(access_key)
    if known is None:
        raise _unrecognised()
    # Temporary credentials are valid only with the session token issued with them, and long-term ones with none.
    if (signed.security_token is None) != (known.session_token is None) or (
            signed.security_token is not None and known.session_token is not None
            and not hmac.compare_digest(signed.security_token.encode(), known.session_token.encode())):
        raise _unrecognised()
    if "host" not in signed.signed_headers:
        raise _incomplete("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")

    payload_hash = hashlib.sha256(request.body).hexdigest()
    canonical = canonical_request(request, signed.signed_headers, payload_hash, exclude=signed.exclude)
    to_sign = string_to_sign(signed.amz_date, "/".join(scope_parts[1:]), canonical)
    expected = hmac.new(signing_key(known.secret_key, date, region, service), to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
        raise _invalid(f"{SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
                       f"'{_redacted(canonical, signed.security_token)}'\n\n"
                       f"The String-to-Sign should have been\n'{to_sign}'\n")
    return known


def _redacted(canonical: str, token: str | None) -> str:
    """API Gateway quotes the canonical request back; a session token in it is not repeated in a response."""
    return canonical.replace(token, "<redacted>") if token else canonical
