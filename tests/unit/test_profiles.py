"""Each provider folder's profile builds the request its document describes."""

from __future__ import annotations

import base64
import json
import string
from urllib.parse import parse_qs, unquote, unquote_plus

import pytest
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from hypothesis import given
from hypothesis import strategies as st

from token_vending.catalogue import entry
from token_vending.profile import (
    BasicEncoding,
    ClientAuth,
    ClientCredentialsProfile,
    basic_authorization,
    form_urlencode,
)

CREDENTIALS = {"client_id": "id:with colon", "client_secret": "s3cr3t&=+/"}


def profile_of(folder: str) -> ClientCredentialsProfile:
    """The catalogue entry of a provider (the expectations below are the documents' bytes, written out)."""
    found = entry(folder.replace("_", "-"))
    assert found is not None, folder
    return found


def build(folder: str, scope: str = "", audience: str = "") -> tuple[dict[str, str], bytes]:
    return profile_of(folder).build_request(scope=scope, audience=audience, **CREDENTIALS)


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
    assert profile_of(folder).is_credential_error(status, error) is expected


# --- HTTP Basic: RFC 6749 2.3.1 (form-urlencoded parts) or plain RFC 7617, per profile -------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
"""RFC 3986 section 2.3: the characters form-urlencoding leaves as they are."""


def _basic_text(header: str) -> str:
    scheme, _, token = header.partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(token, validate=True).decode()


def test_rfc6749_header_form_urlencodes_each_part_before_joining() -> None:
    header = basic_authorization("urn:acme:svc-1", "p@ss:w+rd/=& a%2Fb sécret-ü", BasicEncoding.RFC6749)
    assert _basic_text(header) == "urn%3Aacme%3Asvc-1:p%40ss%3Aw%2Brd%2F%3D%26%20a%252Fb%20s%C3%A9cret-%C3%BC"
    assert header == ("Basic dXJuJTNBYWNtZSUzQXN2Yy0xOnAlNDBzcyUzQXclMkJyZCUyRiUzRCUyNiUyMGElMjUyRmIlMjBzJUMz"
                      "JUE5Y3JldC0lQzMlQkM=")


def test_rfc7617_header_is_the_plain_utf8_text() -> None:
    header = basic_authorization("urn:acme:svc-1", "p@ss:w+rd/=& a%2Fb sécret-ü", BasicEncoding.RFC7617)
    assert _basic_text(header) == "urn:acme:svc-1:p@ss:w+rd/=& a%2Fb sécret-ü"
    assert header == "Basic dXJuOmFjbWU6c3ZjLTE6cEBzczp3K3JkLz0mIGElMkZiIHPDqWNyZXQtw7w="


def test_rfc6749_is_the_default_encoding() -> None:
    assert basic_authorization("urn:x", "s") == basic_authorization("urn:x", "s", BasicEncoding.RFC6749)
    profile = ClientCredentialsProfile(name="standard", auth=ClientAuth.BASIC_HEADER)
    assert profile.basic_encoding is BasicEncoding.RFC6749
    headers, _ = profile.build_request(client_id="urn:x", client_secret="s", scope="", audience="")
    assert _basic_text(headers["Authorization"]) == "urn%3Ax:s"


def test_both_encodings_agree_on_rfc6749s_own_example() -> None:
    """The header in RFC 6749 2.3.1 and in Pyng's guide: unreserved characters only, so one value."""
    for encoding in BasicEncoding:
        assert basic_authorization("s6BhdRkqt3", "gX1fBat3bV", encoding) == "Basic czZCaGRSa3F0MzpnWDFmQmF0M2JW"


def test_appendix_b_example_with_space_as_percent_20() -> None:
    """RFC 6749 Appendix B encodes U+0020 U+0025 U+0026 U+002B U+00A3 U+20AC as ``+%25%26%2B%C2%A3%E2%82%AC``.
    We write the space as %20: a form decoder reads both alike, a percent-only decoder (Authlib's) only ours."""
    value = " %&+£€"
    appendix_b = "+%25%26%2B%C2%A3%E2%82%AC"
    assert form_urlencode(value) == "%20%25%26%2B%C2%A3%E2%82%AC"
    assert unquote_plus(form_urlencode(value)) == unquote(form_urlencode(value)) == value
    assert unquote_plus(appendix_b) == value
    assert unquote(appendix_b) != value  # why not quote_plus: "+" would reach Authlib as a plus sign


@pytest.mark.parametrize(("folder", "encoding"), [
    ("pyng", BasicEncoding.RFC7617), ("alternative_payments", BasicEncoding.RFC7617)])
def test_seed_basic_providers_keep_what_their_documents_show(folder: str, encoding: BasicEncoding) -> None:
    profile = profile_of(folder)
    assert profile.auth is ClientAuth.BASIC_HEADER
    assert profile.basic_encoding is encoding
    headers, _ = build(folder)
    assert _basic_text(headers["Authorization"]) == "id:with colon:s3cr3t&=+/"


unreserved_text = st.text(alphabet=UNRESERVED, max_size=40)
outside_unreserved = st.characters(codec="utf-8").filter(lambda ch: ch not in UNRESERVED)
"""Any Unicode scalar value but the unreserved ones: reserved and other ASCII, controls, non-ASCII."""


@given(client_id=unreserved_text, client_secret=unreserved_text)
def test_encodings_equal_for_unreserved_credentials(client_id: str, client_secret: str) -> None:
    assert (basic_authorization(client_id, client_secret, BasicEncoding.RFC6749)
            == basic_authorization(client_id, client_secret, BasicEncoding.RFC7617))


@given(client_id=unreserved_text, client_secret=unreserved_text, odd=outside_unreserved,
       in_secret=st.booleans(), at=st.integers(min_value=0, max_value=40))
def test_encodings_differ_once_a_character_is_outside_the_unreserved_set(
        client_id: str, client_secret: str, odd: str, in_secret: bool, at: int) -> None:
    if in_secret:
        client_secret = client_secret[:at] + odd + client_secret[at:]
    else:
        client_id = client_id[:at] + odd + client_id[at:]
    assert (basic_authorization(client_id, client_secret, BasicEncoding.RFC6749)
            != basic_authorization(client_id, client_secret, BasicEncoding.RFC7617))


any_text = st.text(st.characters(codec="utf-8"), min_size=1)


@given(client_id=any_text, client_secret=any_text)
def test_rfc6749_credentials_survive_a_standards_servers_decoding(client_id: str, client_secret: str) -> None:
    """Authlib's own server-side decoder (base64, split at the first ":", percent-decode each part) gets back
    exactly what we sent, colons, percent signs, plus signs, spaces and non-ASCII included; so does a form
    decoder (unquote_plus)."""
    header = basic_authorization(client_id, client_secret, BasicEncoding.RFC6749)
    assert extract_basic_authorization({"Authorization": header}) == (client_id, client_secret)
    encoded_id, _, encoded_secret = _basic_text(header).partition(":")
    assert (unquote_plus(encoded_id), unquote_plus(encoded_secret)) == (client_id, client_secret)


# --- what counts as rejected credentials ----------------------------------------------------------------

def test_keycloak_unauthorized_client_counts_for_aria_only() -> None:
    assert profile_of("aria").is_credential_error(401, "unauthorized_client") is True
    assert profile_of("aria").is_credential_error(400, "invalid_client") is True
    assert profile_of("aria").is_credential_error(400, "invalid_scope") is False
    assert profile_of("invoice_cloud").is_credential_error(400, "unauthorized_client") is False


def test_credential_error_codes_default_to_invalid_client() -> None:
    profile = ClientCredentialsProfile(name="standard", auth=ClientAuth.FORM_BODY)
    assert profile.credential_error_codes == frozenset({"invalid_client"})
    assert profile.is_credential_error(401, "invalid_client") is True
    assert profile.is_credential_error(401, None) is False
    custom = ClientCredentialsProfile(name="standard", auth=ClientAuth.FORM_BODY,
                                      credential_error_codes=frozenset({"access_denied"}))
    assert custom.is_credential_error(400, "access_denied") is True
    assert custom.is_credential_error(400, "invalid_client") is False


# --- a connection's own parameters: audience, RFC 8707 resource, extra parameters --------------------------------

RESOURCES = ("https://api.example.com/billing", "urn:example:ledger?v=2&x=a%20b")
EXTRA = {"organization": "org 1&2=3", "tenant": "t+ü"}


def test_form_body_carries_audience_one_resource_per_uri_and_extra_fields() -> None:
    """RFC 8707 section 2: several ``resource`` parameters, one per URI; the audience and the extra parameters as
    further fields. A standards parser (``parse_qs``, and Authlib's own strict ``url_decode``) reads back exactly
    what the connection's settings say, whatever characters they hold."""
    from authlib.common.urls import url_decode

    profile = entry("oauth2")
    assert profile is not None
    headers, body = profile.build_request(client_id="c", client_secret="s", scope="read write",
                                          audience="https://api.example.com/", resource=RESOURCES,
                                          extra_parameters=EXTRA)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    expected = {"grant_type": ["client_credentials"], "scope": ["read write"],
                "audience": ["https://api.example.com/"], "resource": list(RESOURCES),
                "organization": ["org 1&2=3"], "tenant": ["t+ü"]}
    assert parse_qs(body.decode("ascii"), strict_parsing=True) == expected
    pairs = url_decode(body.decode("ascii"))
    assert [value for name, value in pairs if name == "resource"] == list(RESOURCES)
    assert dict(pairs) == {name: values[-1] for name, values in expected.items()}
    # Without them, nothing is added: an empty audience is not sent unless the provider wants it always.
    _, plain = profile.build_request(client_id="c", client_secret="s", scope="", audience="")
    assert parse_qs(plain.decode()) == {"grant_type": ["client_credentials"]}


def test_json_body_carries_resource_as_a_string_or_a_list_and_extra_members() -> None:
    """Autopay (a JSON body): ``audience`` always (``""`` by default), ``resource`` a string for one URI and a list
    for several, extra parameters as members."""
    profile = profile_of("autopay")
    _, one = profile.build_request(client_id="c", client_secret="s", scope="", audience="",
                                   resource=RESOURCES[:1], extra_parameters={"organization": "o"})
    assert json.loads(one) == {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s",
                               "audience": "", "resource": RESOURCES[0], "organization": "o"}
    _, several = profile.build_request(client_id="c", client_secret="s", scope="", audience="https://a/",
                                       resource=RESOURCES)
    document = json.loads(several)
    assert document["resource"] == list(RESOURCES)
    assert document["audience"] == "https://a/"


@pytest.mark.parametrize("name", ["scope", "client_id", "client_secret", "grant_type", "resource", "audience",
                                  "client_assertion", "client_assertion_type"])
def test_an_extra_parameter_never_replaces_one_the_service_sets(name: str) -> None:
    """The settings refuse these names when the secret is read; the request builder refuses them too, so no path
    can send a second ``client_id`` or a scope the connection does not allow."""
    for profile in (profile_of("pyng"), profile_of("autopay")):
        with pytest.raises(ValueError, match=name):
            profile.build_request(client_id="c", client_secret="s", scope="x", audience="",
                                  extra_parameters={name: "attacker"})


def test_authlibs_server_reads_the_oauth2_entrys_request_with_resources_and_grants_a_token() -> None:
    """The generic ``oauth2`` entry against Authlib's own authorization server (client_secret_basic with RFC 6749
    2.3.1's encoding, its client credentials grant): the request with an audience, two resources and an extra
    parameter is a valid token request, and the server sees every resource."""
    from requests.structures import CaseInsensitiveDict

    from tests.support.authlib_server import Incoming, RegisteredClient, StandardsAuthorizationServer

    profile = entry("oauth2")
    assert profile is not None
    client = RegisteredClient(client_id="urn:acme:svc 1", client_secret="p@ss:w+rd/=&", scopes=frozenset({"read"}))
    server = StandardsAuthorizationServer([client], expires_in=3600)
    headers, body = profile.build_request(client_id=client.client_id, client_secret=client.client_secret,
                                          scope="read", audience="https://api.acme.example", resource=RESOURCES,
                                          extra_parameters={"organization": "org_1"})
    incoming = Incoming(method="POST", path="/token", uri="https://127.0.0.1/token",
                        headers=CaseInsensitiveDict(headers), body=body)
    request = server.create_oauth2_request(incoming)
    assert request.payload.datalist["resource"] == list(RESOURCES)
    assert request.payload.data["audience"] == "https://api.acme.example"
    assert request.payload.data["organization"] == "org_1"
    status, _, answer = server.create_token_response(incoming)
    assert status == 200, answer
    assert json.loads(answer)["scope"] == "read"
    assert server.issued[0]["client_id"] == client.client_id
