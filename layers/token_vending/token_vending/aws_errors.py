"""The error code of a failed AWS call, read one way everywhere.

A ``ClientError`` carries AWS's answer in ``response``; botocore's own errors do not, and some of them (a read
timeout) carry ``response = None``. Code that reads ``exc.response["Error"]["Code"]`` directly turns a timeout
into an ``AttributeError`` and so into an ``internal_error``: every reader goes through :func:`error_code`.
"""

from __future__ import annotations


def error_code(exc: BaseException) -> str | None:
    """AWS's error code (``ThrottlingException``, ``ConditionalCheckFailedException``, ...), or ``None`` when
    the call failed without an answer from AWS. Follows ``__cause__``/``__context__`` for wrappers (Powertools'
    ``GetParameterError`` keeps the botocore error only as its cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        error = response.get("Error") if isinstance(response, dict) else None
        code = error.get("Code") if isinstance(error, dict) else None
        if isinstance(code, str) and code:
            return code
        current = current.__cause__ or current.__context__
    return None
