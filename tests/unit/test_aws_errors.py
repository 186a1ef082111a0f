"""AWS error codes read one way: botocore's own errors (a read timeout: ``response`` is ``None``) are no
``internal_error`` wherever the layer meets them."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from token_vending.aws_errors import error_code
from token_vending.exceptions import Misconfigured, UpstreamUnavailable
from token_vending.upstream import _kms_error


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "Sign")


@pytest.mark.parametrize("exc", [
    ReadTimeoutError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
    ConnectTimeoutError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
    EndpointConnectionError(endpoint_url="https://kms.us-east-1.amazonaws.com"),
])
def test_botocore_s_own_errors_have_no_code_and_are_kms_unavailable(exc: Exception) -> None:
    assert error_code(exc) is None
    error = _kms_error(exc, "aria")
    assert isinstance(error, UpstreamUnavailable)
    assert error.provider_fault is False


def test_a_refused_key_is_misconfigured_naming_the_code() -> None:
    error = _kms_error(client_error("DisabledException"), "aria")
    assert isinstance(error, Misconfigured)
    assert "DisabledException" in error.description


def test_a_wrapped_client_error_keeps_its_code() -> None:
    outer = RuntimeError("wrapped")
    outer.__cause__ = client_error("ResourceNotFoundException")
    assert error_code(outer) == "ResourceNotFoundException"
    odd = client_error("X")
    odd.response = {"Error": "not a mapping"}  # type: ignore[typeddict-item]
    assert error_code(odd) is None
