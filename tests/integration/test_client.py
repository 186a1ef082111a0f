"""The caller library against the local service (the stack ``make local`` runs): through the API and by
invoking the provider function directly (its wheel: tests/unit/test_release.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests

from local.providers import local_credentials
from tests.integration.conftest import with_connections
from token_vending_client import InvalidRequest, TokenVendingAuth, UnknownProvider, UpstreamRejected, get_token
from token_vending_client import client as client_module

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration
SCOPE = "billing:batches:read"


@pytest.fixture(autouse=True)
def fresh_sources() -> Iterator[None]:
    client_module._SOURCES.clear()
    yield
    client_module._SOURCES.clear()


@pytest.fixture
def session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")


def test_both_ways_in_vend_the_same_cached_token(stack: Any, emulators: Any, session: boto3.Session,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", stack.lambda_url)
    via_api = get_token("pyng", api_url=stack.stage_url, scope=SCOPE, session=session)
    via_function = get_token("pyng", function_name="PyngFunction", scope=SCOPE, session=session)
    assert via_api.access_token == via_function.access_token == emulators["pyng"].issued[0]["access_token"]
    assert via_api.scope == SCOPE
    assert emulators["pyng"].token_requests == 1


def test_the_api_url_output_and_a_scope_set(stack: Any, emulators: Any, session: boto3.Session) -> None:
    """The stack's ``ApiUrl`` output as given (``{base}/token/``) and two scopes (a space in the query)."""
    scope = f"{SCOPE} billing:customers:read"
    token = get_token("pyng", api_url=stack.api_url, scope=scope, session=session)
    assert token.access_token == emulators["pyng"].issued[0]["access_token"]
    assert token.scope is not None
    assert set(token.scope.split()) == set(scope.split())


def test_errors_by_name_on_both_ways_in(stack: Any, emulators: Any, session: boto3.Session,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", stack.lambda_url)
    for way in ({"api_url": stack.stage_url}, {"function_name": "PyngFunction"}):
        with pytest.raises(InvalidRequest):
            get_token("pyng", scope="billing:admin", session=session, **way)
    with pytest.raises(UnknownProvider):
        get_token("nobody", api_url=stack.stage_url, session=session)
    emulators["autopay"].set_credentials("other", "other")
    with pytest.raises(UpstreamRejected) as caught:
        get_token("autopay", function_name="AutopayFunction", session=session)
    assert caught.value.upstream_error == "access_denied"


def test_auth_on_a_request(stack: Any, emulators: Any, session: boto3.Session) -> None:
    """The token the service vends is the one the request carries (here to the local API itself, which
    refuses it, a bearer token not being a SigV4 signature: what matters is the header)."""
    seen: list[str] = []

    def record(response: requests.Response, **_: Any) -> None:
        seen.append(response.request.headers["Authorization"])

    auth = TokenVendingAuth("aria", api_url=stack.stage_url, session=session)
    requests.get(f"{stack.api_url}aria", auth=auth, hooks={"response": record}, timeout=30)
    assert seen == [f"Bearer {emulators['aria'].issued[0]['access_token']}"]


def test_a_connection_added_by_configuration_is_a_route_like_any_other(make_stack: Any, emulators: Any,
                                                                       session: boto3.Session,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``AriaAu`` (Aria's AUS region, added by configuration) beside ``aria``: its name is the route, its function
    ``AriaAuFunction``; each way in vends AriaAu's own token, never aria's."""
    emulators["aria"].add_client(*local_credentials("AriaAu"))
    stack = make_stack(**with_connections({"AriaAu": {"region": "AUS", "stage": "Prod",
                                                      "token_url": emulators["aria"].url}}))
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", stack.lambda_url)
    aria = get_token("aria", api_url=stack.stage_url, session=session)
    via_api = get_token("AriaAu", api_url=stack.stage_url, session=session)
    via_function = get_token("AriaAu", function_name="AriaAuFunction", session=session)
    assert via_api.provider == "AriaAu"
    assert via_api.access_token == via_function.access_token != aria.access_token
    assert emulators["aria"].issued_to[via_api.access_token] == local_credentials("AriaAu")[0]
    assert emulators["aria"].issued_to[aria.access_token] == local_credentials("aria")[0]
    with pytest.raises(UnknownProvider):
        get_token("AriaNz", api_url=stack.stage_url, session=session)  # a name no connection of this stack has
