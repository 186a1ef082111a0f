"""Typed settings read from the environment, validated once per execution environment.

Parsing is deferred to the first invocation (not import time) so that a bad setting becomes the
contract's ``misconfigured`` error naming the variable, instead of an opaque init failure. The settings only a
fetch needs (token URL, client authentication, scopes, audience...) may also come from the connection's secret:
they are resolved and validated when it is read (:mod:`token_vending.connection_settings`), never on a hit.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from token_vending import constants
from token_vending.exceptions import Misconfigured
from token_vending.numbers import parse_decimal, parse_whole

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


CONNECTION_ENV = (constants.TOKEN_URL_ENV, constants.REGION_ENV, constants.STAGE_ENV,
                  constants.ALLOWED_SCOPES_ENV, constants.DEFAULT_SCOPES_ENV, constants.AUDIENCE_ENV,
                  constants.CLIENT_AUTH_ENV, constants.SIGNING_KEY_ID_ENV, constants.ASSERTION_AUDIENCE_ENV)
"""The environment variables of a connection's settings: defaults under its secret's fields (only the five default
connections have them, from template parameters)."""


@dataclass(frozen=True)
class ProviderSettings:
    """What a connection's function reads from its environment: everything the cache needs, and the environment's
    values of the settings only a fetch needs, kept as they are (:attr:`environment`). Those are resolved with the
    secret's fields, and validated, when the secret is read (:mod:`token_vending.connection_settings`): a hit
    never needs them."""

    provider: str
    """The connection's name."""
    secret_id: str
    default_lifetime: int
    lifetime: int
    connect_timeout: float
    read_timeout: float
    upstream_retries: int
    secret_max_age: int
    cache: CacheSettings
    ca_bundle: str = ""
    upstream_budget: int = 0
    """Token requests an hour this connection may send from the whole deployment (0: no budget)."""
    renewal_queue_url: str = ""
    """The SQS queue of per-token renewal timers; empty: renewal by the scheduled run only."""
    local_mode: bool = False
    """``TOKEN_VENDING_LOCAL_MODE``: plain http token URLs on loopback hosts are allowed."""
    environment: tuple[tuple[str, str], ...] = ()
    """The non-empty values of :data:`CONNECTION_ENV`, unvalidated."""

    def env(self, name: str) -> str:
        """The environment's value of one of :data:`CONNECTION_ENV` (empty when unset)."""
        return next((value for key, value in self.environment if key == name), "")

    @classmethod
    def from_env(cls, provider: str, env: Mapping[str, str] = os.environ, *,
                 profile: ClientCredentialsProfile | None = None) -> ProviderSettings:
        """``provider``: the connection's name; ``profile``: its profile, for its documented lifetime."""
        configured = env.get(constants.CONNECTION_NAME_ENV, provider).strip()
        if configured != provider:
            raise Misconfigured(f"setting {constants.CONNECTION_NAME_ENV} does not match this function",
                                provider=provider)
        documented = profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME
        # AUDIENCE as it is: a value may have meaningful spaces; the others are trimmed.
        raw = {name: env.get(name, "") if name == constants.AUDIENCE_ENV else env.get(name, "").strip()
               for name in CONNECTION_ENV}
        return cls(
            provider=provider,
            secret_id=_require(env, constants.SECRET_ID_ENV, provider),
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
            ca_bundle=env.get(constants.CA_BUNDLE_ENV, "").strip(),
            upstream_budget=provider_budget(env, provider, documented),
            renewal_queue_url=env.get(constants.RENEWAL_QUEUE_URL_ENV, "").strip(),
            local_mode=is_local_mode(env),
            environment=tuple((name, value) for name, value in raw.items() if value),
        )


def budget_overrides(env: Mapping[str, str], provider: str | None) -> dict[str, int]:
    """UPSTREAM_BUDGETS as connection name -> requests an hour; a malformed list is refused (which entry was meant
    cannot be known). Names are not checked here: a typo must not break every connection's misses, so the
    function warns about names no connection can have (:func:`unknown_budget_routes`)."""
    raw = env.get(constants.UPSTREAM_BUDGETS_ENV, "").strip()
    overrides: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = item.partition("=")
        requests = parse_whole(value)
        if not name.strip() or requests is None or requests < 1:
            raise Misconfigured(f"setting {constants.UPSTREAM_BUDGETS_ENV} must be name=requests pairs "
                                "(a whole number of at least 1 in ASCII digits), comma-separated", provider=provider)
        overrides[name.strip()] = requests
    return overrides


def unknown_budget_routes(env: Mapping[str, str] = os.environ) -> list[str]:
    """Names UPSTREAM_BUDGETS gives that no connection can have (most likely typos). A function knows no other
    connection than its own, so a name is unknown only when it fits no catalogue entry at all
    (:func:`token_vending.catalogue.connection` is ``None``)."""
    from token_vending.catalogue import connection

    try:
        names = budget_overrides(env, None)
    except Misconfigured:
        return []
    return sorted(name for name in names if connection(name) is None)


def provider_budget(env: Mapping[str, str], provider: str, documented: int) -> int:
    """This connection's hourly budget: its entry in UPSTREAM_BUDGETS, else the default of its documented
    lifetime."""
    from token_vending.budget import default_budget

    return budget_overrides(env, provider).get(provider) or default_budget(documented)


@dataclass(frozen=True)
class ProviderEntry:
    """What the token API function knows of one deployed connection: no scopes (they are the connection's own
    settings, which its function checks), only what the catalogue says of its provider."""

    name: str
    """The connection's name (the route)."""
    function: str
    lifetime: int
    """The provider's documented lifetime: ``min_ttl`` is bounded by it minus its refresh margin."""
    takes_scope: bool = True
    """``False`` when the provider takes no scope (``ScopeMode.OMIT``): a request naming one is refused."""
    provider: str = ""
    """The catalogue entry's name (empty for a connection outside the catalogue: tests)."""


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
        providers = _deployed_connections(env)
        raw = env.get(constants.PROVIDERS_ENV, "").strip()
        if not raw and not providers:
            raise Misconfigured("no provider function is configured")
        try:
            document = json.loads(raw) if raw else {}
            providers |= {str(name): _entry(str(name), str(entry["function"]), entry.get("lifetime"))
                          for name, entry in document.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise Misconfigured(f"setting {constants.PROVIDERS_ENV} is malformed") from None
        cache = cache_settings(env, None)
        return cls(providers=providers, table_name=cache.table_name,
                   memory_cache_seconds=cache.memory_cache_seconds,
                   refresh_margin_seconds=cache.refresh_margin_seconds,
                   refresh_margin_ratio=cache.refresh_margin_ratio, idle_seconds=cache.idle_seconds)


def _entry(name: str, function: str, lifetime: Any = None) -> ProviderEntry:
    """A deployed connection as the catalogue describes it (``PROVIDERS`` may give a lifetime: tests; a name outside
    the catalogue gets the default lifetime and may name scopes)."""
    from token_vending.catalogue import connection
    from token_vending.profile import ScopeMode

    profile = connection(name)
    documented = profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME
    return ProviderEntry(name=name, function=function,
                         lifetime=int(lifetime) if lifetime is not None else documented,
                         takes_scope=profile is None or profile.scope is not ScopeMode.OMIT,
                         provider=profile.provider if profile is not None else "")


_CONNECTION_KEY = re.compile(r"^[A-Za-z0-9]+$")


def _deployed_connections(env: Mapping[str, str]) -> dict[str, ProviderEntry]:
    """The connections that have a deployed function (``FUNCTION_<Key>``), named by
    :func:`~token_vending.catalogue.connection_name`; a key no catalogue entry prefixes is none of this service's."""
    from token_vending.catalogue import connection, connection_name

    providers: dict[str, ProviderEntry] = {}
    for variable, value in env.items():
        key = variable.removeprefix(constants.PROVIDER_FUNCTION_PREFIX)
        function = value.strip()
        if key == variable or not function or not _CONNECTION_KEY.match(key):
            continue
        name = connection_name(key)
        if connection(name) is not None:
            providers[name] = _entry(name, function)
    return providers
