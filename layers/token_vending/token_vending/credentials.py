"""Client credentials from Secrets Manager, cached by Powertools Parameters, with the connection's settings.

The secret is one JSON document: the credential fields (:data:`ALL_FIELDS`) and the connection's non-secret
settings (:data:`token_vending.connection_settings.SETTING_FIELDS`), resolved over the function's environment as
the document is read. Which credential fields are required follows the resolved client authentication. A field
that is neither is logged by name (never its value) and ignored: secrets may carry notes.

A secret that is read but incomplete (a placeholder, a missing field) or cannot be read (deleted, denied) is the
contract's ``misconfigured``, until a person fixes it. Powertools would keep the incomplete value for
``SecretMaxAge``; instead, each execution environment reads it again :data:`MISCONFIGURED_REREAD_SECONDS` after
finding it wrong, and answers the same error without a read meanwhile: a filled secret is used within seconds, a
broken one costs at most one read per that interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from token_vending.aws_errors import error_code
from token_vending.documents import AmbiguousDocument, json_object
from token_vending.exceptions import Misconfigured, UpstreamUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from mypy_boto3_secretsmanager import SecretsManagerClient

    from token_vending.connection_settings import ConnectionSettings
    from token_vending.profile import ClientAuth

REQUIRED_FIELDS = ("client_id", "client_secret")
OPTIONAL_FIELDS = ("client_secret", "private_key", "certificate", "ca_chain", "kid", "algorithm")
ALL_FIELDS = ("client_id", *OPTIONAL_FIELDS)


def required_fields(auth: ClientAuth, *, kms_signing: bool) -> tuple[str, ...]:
    """The secret's fields an auth method cannot do without (named in ``misconfigured`` when missing)."""
    from token_vending.profile import ClientAuth

    if auth is ClientAuth.PRIVATE_KEY_JWT:
        return ("client_id",) if kms_signing else ("client_id", "private_key")
    if auth is ClientAuth.TLS_CLIENT_AUTH:
        return ("client_id", "certificate", "private_key")
    return REQUIRED_FIELDS


MISCONFIGURED_REREAD_SECONDS = 5.0
"""After the secret was found incomplete or unreadable, it is read again after this long (not ``SecretMaxAge``)."""

MISCONFIGURATION_CODES = frozenset({
    "ResourceNotFoundException", "AccessDeniedException", "AccessDenied", "DecryptionFailure",
    "InvalidRequestException", "InvalidParameterException", "UnrecognizedClientException",
})


@dataclass(frozen=True)
class ClientCredentials:
    """What the provider's secret holds; which fields are required depends on the auth method."""

    client_id: str
    client_secret: str = field(default="", repr=False)
    private_key: str = field(default="", repr=False)
    """PEM: signs ``private_key_jwt`` assertions (without a KMS key), or the ``tls_client_auth`` key."""
    certificate: str = field(default="", repr=False)
    ca_chain: str = field(default="", repr=False)
    kid: str = ""
    algorithm: str = ""
    settings: ConnectionSettings | None = None
    """The connection's settings as resolved with this version of the secret (``None``: read without them)."""

    @property
    def fingerprint(self) -> tuple[str, int]:
        """Tells two versions apart (rotation) without keeping a second copy of the secret around: the credentials
        and the settings they were resolved with (a changed setting may be what makes them work)."""
        return self.client_id, hash((self.client_secret, self.private_key, self.certificate, self.ca_chain,
                                     self.settings))


class CredentialStore:
    def __init__(self, provider: str, secret_id: str, max_age: int,
                 client: SecretsManagerClient | Callable[[], SecretsManagerClient] | None = None,
                 required: tuple[str, ...] = REQUIRED_FIELDS, *,
                 resolve: Callable[[Mapping[str, Any]], ConnectionSettings] | None = None,
                 warn: Callable[[list[str]], None] | None = None) -> None:
        """``client`` may be a factory: the Secrets Manager client (and Powertools' provider) is then made on
        the first read, never while the provider's token is served from the cache. ``resolve`` turns the document
        into the connection's settings (raising ``Misconfigured``), whose client authentication then decides the
        required fields (instead of ``required``); ``warn`` is told the names of fields nobody reads."""
        self.provider = provider
        self.secret_id = secret_id
        self.max_age = max_age
        self.required = required
        self._resolve = resolve
        self._warn = warn
        self._client = client
        self._secrets: SecretsProvider | None = None
        self._refused: tuple[float, str] | None = None
        """When (monotonic) and why the secret was last found incomplete or unreadable."""
        self._parsed: tuple[str, ClientCredentials] | None = None
        """The last document read and what it gave: Powertools hands back the same text until SecretMaxAge, so
        it is resolved (and warned about) once per version, not once per fetch."""

    def _provider(self) -> SecretsProvider:
        if self._secrets is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            client = self._client() if callable(self._client) else self._client
            self._secrets = SecretsProvider(boto3_client=client)
        return self._secrets

    def get(self, *, force_fetch: bool = False) -> ClientCredentials:
        """``force_fetch`` bypasses the cache: used once after the provider says ``invalid_client``. A secret found
        wrong is answered as wrong, without a read, for :data:`MISCONFIGURED_REREAD_SECONDS`, then read again."""
        now = time.monotonic()
        if self._refused is not None:
            found_at, description = self._refused
            if now - found_at < MISCONFIGURED_REREAD_SECONDS:
                raise Misconfigured(description, provider=self.provider)
            force_fetch = True  # the cached value is the wrong one
        try:
            credentials = self._read(force_fetch)
        except Misconfigured as exc:
            self._refused = (now, exc.description)
            raise
        self._refused = None
        return credentials

    def _read(self, force_fetch: bool) -> ClientCredentials:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            raw = self._provider().get(self.secret_id, max_age=self.max_age, force_fetch=force_fetch)
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
        if self._parsed is not None and isinstance(raw, str) and raw == self._parsed[0]:
            return self._parsed[1]
        credentials = self._parse_document(raw)
        if isinstance(raw, str):
            self._parsed = (raw, credentials)
        return credentials

    def _parse_document(self, raw: Any) -> ClientCredentials:
        try:
            document = json_object(raw) if isinstance(raw, str) else None
        except AmbiguousDocument:
            raise Misconfigured("secret names a field twice: which value is meant cannot be known",
                                provider=self.provider) from None
        if document is None:
            raise Misconfigured("secret is not a JSON object", provider=self.provider)
        settings = None
        required = self.required
        if self._resolve is not None:
            from token_vending.connection_settings import unknown_fields

            unknown = unknown_fields(document)
            if unknown and self._warn is not None:
                self._warn(unknown)
            settings = self._resolve(document)
            required = settings.required_fields()
        for name in required:
            value = document.get(name)
            if not isinstance(value, str) or not value.strip():
                raise Misconfigured(f"secret field {name} is missing or empty", provider=self.provider)
        for name in OPTIONAL_FIELDS:
            if not isinstance(document.get(name, ""), str):
                raise Misconfigured(f"secret field {name} is not a string", provider=self.provider)
        return ClientCredentials(**{name: document.get(name, "") for name in ALL_FIELDS}, settings=settings)


def _client_error_code(exc: BaseException) -> str | None:
    """Powertools wraps the botocore error in ``GetParameterError`` without keeping its code."""
    code = error_code(exc)
    if code is not None:
        return code
    text = str(exc)
    for code in MISCONFIGURATION_CODES:
        if code in text:
            return code
    return None
