"""Each provider folder's profile builds the request its document describes."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import pytest

from tests.unit.conftest import load_app

CREDENTIALS = {"client_id": "id:with colon", "client_secret": "s3cr3t&=+/"}


def build(folder: str, scope: str = "", audience: str = "") -> tuple[dict[str, str], bytes]:
    return load_app(folder).PROFILE.build_request(scope=scope, audience=audience, **CREDENTIALS)


def test_invoice_cloud_credentials_in_the_form_body() -> None:
    headers, body = build("invoice_cloud")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in headers
    assert parse_qs(body.decode(), strict_parsing=True) == {
        "grant_type": ["client_credentials"], "client_id": ["id:with colon"], "client_secret": ["s3cr3t&=+/"]}


def test_pyng_basic_header_and_required_scope() -> None:
    headers, body = build("pyng", scope="billing:batches:read billing:customers:read")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"id:with colon:s3cr3t&=+/").decode()
    assert body == b"grant_type=client_credentials&scope=billing:batches:read%20billing:customers:read"


def test_aria_form_body_without_scope_by_default() -> None:
    _, body = build("aria")
    assert set(parse_qs(body.decode())) == {"grant_type", "client_id", "client_secret"}
    _, scoped = build("aria", scope="api")
    assert parse_qs(scoped.decode())["scope"] == ["api"]


def test_autopay_json_body_with_empty_audience() -> None:
    headers, body = build("autopay")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"grant_type": "client_credentials", "client_id": "id:with colon",
                                "client_secret": "s3cr3t&=+/", "audience": ""}


def test_alternative_payments_basic_header_and_grant_type_only() -> None:
    headers, body = build("alternative_payments")
    assert headers["Authorization"].startswith("Basic ")
    assert body == b"grant_type=client_credentials"


@pytest.mark.parametrize(("folder", "status", "error", "expected"), [
    ("autopay", 401, "access_denied", True), ("autopay", 403, None, False),
    ("alternative_payments", 403, None, True), ("pyng", 401, "invalid_client", True),
    ("invoice_cloud", 400, "invalid_grant", False),
])
def test_what_counts_as_rejected_credentials(folder: str, status: int, error: str | None, expected: bool) -> None:
    assert load_app(folder).PROFILE.is_credential_error(status, error) is expected
