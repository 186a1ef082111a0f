"""Client credentials from Secrets Manager, cached by Powertools Parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from token_vending.exceptions import Misconfigured, UpstreamUnavailable

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

MISCONFIGURATION_CODES = frozenset({
    "ResourceNotFoundException", "AccessDeniedException", "AccessDenied", "DecryptionFailure",
    "InvalidRequestException", "InvalidParameterException", "UnrecognizedClientException",
})


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str = field(repr=False)

    @property
    def fingerprint(self) -> tuple[str, int]:
        """Tells two versions apart (rotation) without keeping a second copy of the secret around."""
        return self.client_id, hash(self.client_secret)


class CredentialStore:
    def __init__(self, provider: str, secret_id: str, max_age: int,
                 client: SecretsManagerClient | None = None) -> None:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        self.provider = provider
        self.secret_id = secret_id
        self.max_age = max_age
        self._secrets = SecretsProvider(boto3_client=client)

    def get(self, *, force_fetch: bool = False) -> ClientCredentials:
        """``force_fetch`` bypasses the cache: used once after the provider says ``invalid_client``."""
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            raw = self._secrets.get(self.secret_id, max_age=self.max_age, force_fetch=force_fetch)
        except GetParameterError as exc:
            code = _client_error_code(exc)
            if code in MISCONFIGURATION_CODES:
                # Never the secret's name or ARN: error bodies reach callers, cross-account ones included.
                raise Misconfigured(f"the provider's secret cannot be read ({code})",
                                    provider=self.provider) from None
            raise UpstreamUnavailable(f"Secrets Manager is unavailable ({code or 'error'})",
                                      provider=self.provider, provider_fault=False) from None
        return self._parse(raw)

    def _parse(self, raw: Any) -> ClientCredentials:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            document = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise Misconfigured("secret is not a JSON object", provider=self.provider)
        for name in ("client_id", "client_secret"):
            value = document.get(name)
            if not isinstance(value, str) or not value.strip():
                raise Misconfigured(f"secret field {name} is missing or empty", provider=self.provider)
        return ClientCredentials(document["client_id"], document["client_secret"])


def _client_error_code(exc: BaseException) -> str | None:
    """Powertools wraps the botocore error in ``GetParameterError`` without keeping its code."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if isinstance(code, str):
                return code
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for code in MISCONFIGURATION_CODES:
        if code in text:
            return code
    return None
