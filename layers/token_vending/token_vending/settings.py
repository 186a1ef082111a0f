"""Typed settings read from the environment, validated once per execution environment.

Parsing is deferred to the first invocation (not import time) so that a bad setting becomes the
contract's ``misconfigured`` error naming the variable, instead of an opaque init failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from token_vending import constants
from token_vending.exceptions import Misconfigured
from token_vending.numbers import parse_decimal, parse_whole
from token_vending.scopes import parse_scope_set

if TYPE_CHECKING:
    from collections.abc import Mapping

    from token_vending.profile import ClientCredentialsProfile

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "host.docker.internal"})
"""Hosts that may be reached over plain http, and only in local/test mode."""


def is_local_mode(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(constants.LOCAL_MODE_ENV, "").strip().lower() == "true"


def _require(env: Mapping[str, str], name: str, provider: str | None) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise Misconfigured(f"setting {name} is missing", provider=provider)
    return value


def _number(env: Mapping[str, str], name: str, default: float, provider: str | None, *,
            minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = parse_decimal(raw)
    if value is None:
        raise Misconfigured(f"setting {name} is not a number", provider=provider)
    if value < minimum:
        raise Misconfigured(f"setting {name} must be a finite number >= {minimum:g}", provider=provider)
    return value


def check_token_url(url: str, *, local_mode: bool, provider: str | None) -> str:
    """Credentials only ever travel over TLS; plain http is a local-emulator convenience."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise Misconfigured(f"setting {constants.TOKEN_URL_ENV} is not a URL", provider=provider) from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and local_mode and host in LOCAL_HOSTS:
        return url
    raise Misconfigured(f"setting {constants.TOKEN_URL_ENV} must be an https:// URL", provider=provider)


@dataclass(frozen=True)
class CacheSettings:
    table_name: str
    refresh_margin_seconds: float
    refresh_margin_ratio: float
    memory_cache_seconds: float
    lease_seconds: float
    force_refresh_interval: float
    refresh_ahead_interval: float
    idle_seconds: float = constants.DEFAULT_REFRESH_AHEAD_IDLE_HOURS * 3600
    """A scope set unused this long is left to expire (``REFRESH_AHEAD_IDLE_HOURS``)."""


def cache_settings(env: Mapping[str, str], provider: str | None) -> CacheSettings:
    return CacheSettings(
        table_name=_require(env, constants.CACHE_TABLE_ENV, provider),
        refresh_margin_seconds=_number(env, constants.REFRESH_MARGIN_SECONDS_ENV,
                                       constants.DEFAULT_REFRESH_MARGIN_SECONDS, provider),
        refresh_margin_ratio=_number(env, constants.REFRESH_MARGIN_RATIO_ENV,
                                     constants.DEFAULT_REFRESH_MARGIN_RATIO, provider),
        memory_cache_seconds=_number(env, constants.MEMORY_CACHE_SECONDS_ENV,
                                     constants.DEFAULT_MEMORY_CACHE_SECONDS, provider),
        lease_seconds=_number(env, constants.LEASE_SECONDS_ENV, constants.DEFAULT_LEASE_SECONDS, provider,
                              minimum=constants.MIN_LEASE_SECONDS),
        force_refresh_interval=_number(env, constants.FORCE_REFRESH_INTERVAL_ENV,
                                       constants.DEFAULT_FORCE_REFRESH_INTERVAL, provider),
        refresh_ahead_interval=_number(env, constants.REFRESH_AHEAD_INTERVAL_ENV,
                                       constants.DEFAULT_REFRESH_AHEAD_INTERVAL, provider),
        idle_seconds=3600 * _number(env, constants.REFRESH_AHEAD_IDLE_HOURS_ENV,
                                    constants.DEFAULT_REFRESH_AHEAD_IDLE_HOURS, provider, minimum=0.01),
    )


@dataclass(frozen=True)
class ProviderSettings:
    """Everything a provider function needs besides its credentials."""

    provider: str
    token_url: str
    secret_id: str
    allowed_scopes: frozenset[str]
    default_scopes: frozenset[str]
    audience: str
    default_lifetime: int
    lifetime: int
    connect_timeout: float
    read_timeout: float
    upstream_retries: int
    secret_max_age: int
    cache: CacheSettings
    client_auth: str = ""
    """An RFC 7591 method name overriding the profile's auth, or empty."""
    signing_key_id: str = ""
    assertion_audience: str = ""
    ca_bundle: str = ""
    upstream_budget: int = 0
    """Token requests an hour this provider may receive from the whole deployment (0: no budget)."""
    renewal_queue_url: str = ""
    """The SQS queue of per-token renewal timers; empty: renewal by the scheduled run only."""

    @classmethod
    def from_env(cls, provider: str, env: Mapping[str, str] = os.environ, *,
                 profile: ClientCredentialsProfile | None = None) -> ProviderSettings:
        """``profile``: the provider's catalogue entry, for its documented lifetime and endpoints."""
        configured = env.get(constants.PROVIDER_NAME_ENV, provider).strip()
        if configured != provider:
            raise Misconfigured(f"setting {constants.PROVIDER_NAME_ENV} does not match this function",
                                provider=provider)
        documented = profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME
        allowed = _scopes(env, constants.ALLOWED_SCOPES_ENV, provider)
        default = _scopes(env, constants.DEFAULT_SCOPES_ENV, provider) or allowed
        if not default <= allowed:
            raise Misconfigured(f"setting {constants.DEFAULT_SCOPES_ENV} is not a subset of "
                                f"{constants.ALLOWED_SCOPES_ENV}", provider=provider)
        return cls(
            provider=provider,
            token_url=check_token_url(_token_url(env, provider, profile), local_mode=is_local_mode(env),
                                      provider=provider),
            secret_id=_require(env, constants.SECRET_ID_ENV, provider),
            allowed_scopes=allowed,
            default_scopes=default,
            audience=env.get(constants.AUDIENCE_ENV, ""),
            default_lifetime=int(_number(env, constants.DEFAULT_LIFETIME_ENV,
                                         constants.DEFAULT_TOKEN_LIFETIME, provider,
                                         minimum=constants.MIN_DEFAULT_TOKEN_LIFETIME)),
            lifetime=int(_number(env, constants.TOKEN_LIFETIME_ENV, documented, provider, minimum=1)),
            connect_timeout=_number(env, constants.CONNECT_TIMEOUT_ENV, constants.DEFAULT_CONNECT_TIMEOUT,
                                    provider, minimum=0.1),
            read_timeout=_number(env, constants.READ_TIMEOUT_ENV, constants.DEFAULT_READ_TIMEOUT, provider,
                                 minimum=0.1),
            upstream_retries=int(_number(env, constants.UPSTREAM_RETRIES_ENV,
                                         constants.DEFAULT_UPSTREAM_RETRIES, provider)),
            secret_max_age=int(_number(env, constants.SECRET_MAX_AGE_ENV, constants.DEFAULT_SECRET_MAX_AGE,
                                       provider)),
            cache=cache_settings(env, provider),
            client_auth=_client_auth(env, provider),
            signing_key_id=env.get(constants.SIGNING_KEY_ID_ENV, "").strip(),
            assertion_audience=env.get(constants.ASSERTION_AUDIENCE_ENV, "").strip(),
            ca_bundle=env.get(constants.CA_BUNDLE_ENV, "").strip(),
            upstream_budget=provider_budget(env, provider, documented),
            renewal_queue_url=env.get(constants.RENEWAL_QUEUE_URL_ENV, "").strip(),
        )


def _token_url(env: Mapping[str, str], provider: str, profile: ClientCredentialsProfile | None) -> str:
    """TOKEN_URL, or the documented endpoint REGION and STAGE choose (Aria's 12 Keycloak realms)."""
    url = env.get(constants.TOKEN_URL_ENV, "").strip()
    if url or profile is None or not profile.endpoints:
        return url or _require(env, constants.TOKEN_URL_ENV, provider)
    choice = f"{env.get(constants.REGION_ENV, '').strip()}/{env.get(constants.STAGE_ENV, '').strip()}"
    if choice not in profile.endpoints:
        raise Misconfigured(f"settings {constants.REGION_ENV} and {constants.STAGE_ENV} name no documented "
                            f"endpoint (one of {', '.join(profile.endpoints)})", provider=provider)
    return profile.endpoints[choice]


def budget_overrides(env: Mapping[str, str], provider: str | None) -> dict[str, int]:
    """UPSTREAM_BUDGETS as route -> requests an hour; a malformed list is refused (which entry was meant cannot be
    known). Routes are not checked against the catalogue here: a typo must not break every provider's misses, so
    the provider function warns about names no provider has (:func:`unknown_budget_routes`)."""
    raw = env.get(constants.UPSTREAM_BUDGETS_ENV, "").strip()
    overrides: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = item.partition("=")
        requests = parse_whole(value)
        if not name.strip() or requests is None or requests < 1:
            raise Misconfigured(f"setting {constants.UPSTREAM_BUDGETS_ENV} must be route=requests pairs "
                                "(a whole number of at least 1 in ASCII digits), comma-separated", provider=provider)
        overrides[name.strip()] = requests
    return overrides


def unknown_budget_routes(env: Mapping[str, str] = os.environ) -> list[str]:
    """Routes UPSTREAM_BUDGETS names that the catalogue does not have (most likely typos)."""
    from token_vending.catalogue import by_name

    try:
        names = budget_overrides(env, None)
    except Misconfigured:
        return []
    return sorted(set(names) - set(by_name()))


def provider_budget(env: Mapping[str, str], provider: str, documented: int) -> int:
    """This provider's hourly budget: its entry in UPSTREAM_BUDGETS, else the default of its documented lifetime."""
    from token_vending.budget import default_budget

    return budget_overrides(env, provider).get(provider) or default_budget(documented)


def _client_auth(env: Mapping[str, str], provider: str) -> str:
    from token_vending.profile import AUTH_METHODS

    method = env.get(constants.CLIENT_AUTH_ENV, "").strip()
    if method and method not in AUTH_METHODS:
        raise Misconfigured(f"setting {constants.CLIENT_AUTH_ENV} must be one of {', '.join(AUTH_METHODS)}",
                            provider=provider)
    return method


def _scopes(env: Mapping[str, str], name: str, provider: str) -> frozenset[str]:
    try:
        return parse_scope_set(env.get(name, ""))
    except ValueError:
        raise Misconfigured(f"setting {name} holds an invalid scope", provider=provider) from None


@dataclass(frozen=True)
class ProviderEntry:
    """What the token API function knows of one deployed provider."""

    name: str
    function: str
    allowed_scopes: frozenset[str]
    default_scopes: frozenset[str]
    lifetime: int


@dataclass(frozen=True)
class ApiSettings:
    providers: dict[str, ProviderEntry]
    table_name: str
    memory_cache_seconds: float
    refresh_margin_seconds: float
    refresh_margin_ratio: float
    idle_seconds: float = constants.DEFAULT_REFRESH_AHEAD_IDLE_HOURS * 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ApiSettings:
        providers = _catalogue_providers(env)
        raw = env.get(constants.PROVIDERS_ENV, "").strip()
        if not raw and not providers:
            raise Misconfigured("no provider function is configured")
        try:
            document = json.loads(raw) if raw else {}
            providers |= {
                str(name): ProviderEntry(
                    name=str(name),
                    function=str(entry["function"]),
                    allowed_scopes=parse_scope_set(str(entry.get("scopes", ""))),
                    default_scopes=(parse_scope_set(str(entry.get("default_scopes", "")))
                                    or parse_scope_set(str(entry.get("scopes", "")))),
                    lifetime=int(entry.get("lifetime", _documented_lifetime(str(name)))),
                )
                for name, entry in document.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError):
            raise Misconfigured(f"setting {constants.PROVIDERS_ENV} is malformed") from None
        cache = cache_settings(env, None)
        return cls(providers=providers, table_name=cache.table_name,
                   memory_cache_seconds=cache.memory_cache_seconds,
                   refresh_margin_seconds=cache.refresh_margin_seconds,
                   refresh_margin_ratio=cache.refresh_margin_ratio, idle_seconds=cache.idle_seconds)


def _documented_lifetime(name: str) -> int:
    """The catalogue's lifetime for a provider of the catalogue (``sam local``'s PROVIDERS names no lifetime)."""
    from token_vending.catalogue import entry

    profile = entry(name)
    return profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME


def _catalogue_providers(env: Mapping[str, str]) -> dict[str, ProviderEntry]:
    """The catalogue's providers that have a deployed function (``FUNCTION_<Key>``), with their scopes."""
    from token_vending.catalogue import CATALOGUE

    providers: dict[str, ProviderEntry] = {}
    for profile in CATALOGUE:
        function = env.get(constants.PROVIDER_FUNCTION_ENV.format(key=profile.key), "").strip()
        if not function:
            continue
        allowed = _scopes(env, constants.PROVIDER_SCOPES_ENV.format(key=profile.key), profile.name)
        default = _scopes(env, constants.PROVIDER_DEFAULT_SCOPES_ENV.format(key=profile.key), profile.name)
        providers[profile.name] = ProviderEntry(name=profile.name, function=function, allowed_scopes=allowed,
                                                default_scopes=default or allowed, lifetime=profile.lifetime)
    return providers
