"""How one provider's token endpoint wants to be called: the per-provider facts, as data.

Each provider function folder declares one :class:`ClientCredentialsProfile` built from its own
documentation; the mechanics (HTTP, retries, parsing, caching) live once in this layer.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from collections.abc import Mapping


class ClientAuth(Enum):
    """Where the client credentials travel."""

    FORM_BODY = "form_body"  # client_id/client_secret as form fields (RFC 6749 2.3.1, second option)
    BASIC_HEADER = "basic_header"  # Authorization: Basic base64(id:secret)
    JSON_BODY = "json_body"  # client_id/client_secret as JSON members


class BodyEncoding(Enum):
    FORM = "application/x-www-form-urlencoded"
    JSON = "application/json"


class ScopeMode(Enum):
    OMIT = "omit"  # the provider takes no scope parameter
    OPTIONAL = "optional"  # sent when a scope set is configured/requested
    REQUIRED = "required"  # the request is refused without one (Pyng)


@dataclass(frozen=True)
class ClientCredentialsProfile:
    name: str
    """Route name (``/token/{name}``) and DynamoDB partition key."""
    auth: ClientAuth
    body: BodyEncoding = BodyEncoding.FORM
    scope: ScopeMode = ScopeMode.OMIT
    send_audience: bool = False
    """Send an ``audience`` member even when empty (Autopay: "must always be \"\"")."""
    lifetime_fields: tuple[str, ...] = ("expires_in",)
    """Response members holding the lifetime, in order of preference."""
    credential_error_statuses: frozenset[int] = frozenset()
    """HTTP statuses that mean "bad credentials" even when the body has no ``invalid_client``."""
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    def build_request(self, *, client_id: str, client_secret: str, scope: str,
                      audience: str) -> tuple[dict[str, str], bytes]:
        """Headers and body for one token request, exactly as the provider documents it."""
        headers = {"Accept": "application/json", "Content-Type": self.body.value, **self.extra_headers}
        fields: dict[str, str] = {"grant_type": "client_credentials"}
        if self.auth is ClientAuth.BASIC_HEADER:
            headers["Authorization"] = basic_authorization(client_id, client_secret)
        else:
            fields["client_id"] = client_id
            fields["client_secret"] = client_secret
        if self.scope is ScopeMode.REQUIRED or (self.scope is ScopeMode.OPTIONAL and scope):
            fields["scope"] = scope
        if self.send_audience:
            fields["audience"] = audience
        if self.body is BodyEncoding.JSON:
            return headers, json.dumps(fields, separators=(",", ":")).encode()
        # quote_via=quote encodes the space between scopes as %20, as Pyng's example shows.
        return headers, urlencode(fields, quote_via=quote, safe=":").encode("ascii")

    def is_credential_error(self, status: int, error: str | None) -> bool:
        return error == "invalid_client" or status in self.credential_error_statuses


def basic_authorization(client_id: str, client_secret: str) -> str:
    """RFC 7617 Basic credentials (UTF-8), as Pyng and Alternative Payments document them."""
    token = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
    return f"Basic {token}"
