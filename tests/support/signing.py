"""SigV4-signed requests to the local API, as a caller on AWS signs them: botocore's ``SigV4Auth``.

``requests.get(url, params=..., auth=SigV4())``: the query ``requests`` built (``urlencode``, a space as ``+``)
is first rewritten in RFC 3986 form (``%20``), which is what botocore signs as written and what API Gateway
canonicalises to, so the signature verifies there as here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.stack import REGION, caller_credentials

if TYPE_CHECKING:
    from requests import PreparedRequest


def local_credentials() -> Credentials:
    """The credentials the local stack accepts by default (the ones this process runs with)."""
    (known,) = caller_credentials().values()
    return Credentials(known.access_key, known.secret_key, known.session_token)


def rfc3986_query(query: str) -> str:
    return "&".join(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
                    for name, value in parse_qsl(query, keep_blank_values=True))


class SigV4(requests.auth.AuthBase):
    """A ``requests`` auth that signs for ``execute-api`` in the local stack's region."""

    def __init__(self, credentials: Credentials | None = None, region: str = REGION,
                 service: str = "execute-api") -> None:
        self.credentials = credentials or local_credentials()
        self.region = region
        self.service = service

    def __call__(self, prepared: PreparedRequest) -> PreparedRequest:
        parts = urlsplit(prepared.url or "")
        prepared.url = urlunsplit(parts._replace(query=rfc3986_query(parts.query)))
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        request = AWSRequest(method=prepared.method, url=prepared.url, data=body or b"")
        SigV4Auth(self.credentials, self.service, self.region).add_auth(request)
        prepared.headers.update(dict(request.headers.items()))
        return prepared


def signed_get(url: str, params: dict[str, Any] | list[tuple[str, str]] | None = None, *, timeout: float = 60,
               **kwargs: Any) -> requests.Response:
    """``GET url`` signed with the local stack's credentials."""
    return requests.get(url, params=params, auth=SigV4(), timeout=timeout, **kwargs)
