"""Names of the environment variables the functions read, and their defaults.

Kept in one place so the template, ``env.json``, the local runner and the tests agree on the
spelling; the values are parsed and validated in :mod:`token_vending.settings`.
"""

from __future__ import annotations

# --- every function -------------------------------------------------------------------------
CACHE_TABLE_ENV = "CACHE_TABLE_NAME"
"""DynamoDB table holding cached tokens (and leases)."""

LOCAL_MODE_ENV = "TOKEN_VENDING_LOCAL_MODE"
"""``true`` only in local runs and tests: allows ``http://`` token URLs on loopback hosts."""

# --- provider functions (one per connection) ------------------------------------------------
CONNECTION_NAME_ENV = "CONNECTION_NAME"
"""The connection's name (its route, partition key and metric dimension): the catalogue entry it belongs to is
:func:`token_vending.catalogue.connection` of it."""
TOKEN_URL_ENV = "TOKEN_URL"  # noqa: S105 - a variable name, not a secret
"""The token endpoint; absent for a provider whose catalogue entry lists documented ``endpoints``, which
REGION and STAGE choose from (Aria). The settings from here to ASSERTION_AUDIENCE are the environment's values
of a connection's settings: a field of its secret overrides each (:mod:`token_vending.connection_settings`)."""
REGION_ENV = "REGION"
STAGE_ENV = "STAGE"
SECRET_ID_ENV = "SECRET_ID"  # noqa: S105 - a variable name, not a secret
ALLOWED_SCOPES_ENV = "ALLOWED_SCOPES"
"""Space-separated scopes this connection may request (secret field ``scopes``); empty when it takes no scope."""
DEFAULT_SCOPES_ENV = "DEFAULT_SCOPES"
"""Space-separated scopes requested when the caller names none (secret field ``default_scopes``; defaults to the
allowed scopes)."""
AUDIENCE_ENV = "AUDIENCE"
DEFAULT_LIFETIME_ENV = "DEFAULT_TOKEN_LIFETIME"
"""Lifetime assumed when the provider sends neither ``expires_in`` nor a JWT ``exp``."""
TOKEN_LIFETIME_ENV = "TOKEN_LIFETIME"  # noqa: S105 - a variable name, not a secret
"""Overrides the lifetime the provider's catalogue entry promises (the template does not set it; tests do).
``min_ttl`` is bounded by it minus its refresh margin, from configuration alone, so a request gets the same
answer whatever the cache holds."""
REFRESH_MARGIN_SECONDS_ENV = "REFRESH_MARGIN_SECONDS"
REFRESH_MARGIN_RATIO_ENV = "REFRESH_MARGIN_RATIO"
CONNECT_TIMEOUT_ENV = "UPSTREAM_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "UPSTREAM_READ_TIMEOUT"
UPSTREAM_RETRIES_ENV = "UPSTREAM_RETRIES"
LEASE_SECONDS_ENV = "LEASE_SECONDS"
FORCE_REFRESH_INTERVAL_ENV = "FORCE_REFRESH_INTERVAL"
MEMORY_CACHE_SECONDS_ENV = "MEMORY_CACHE_SECONDS"
REFRESH_AHEAD_INTERVAL_ENV = "REFRESH_AHEAD_INTERVAL"
"""Seconds between scheduled refresh-ahead invocations; tokens that would enter the refresh margin
before the next run are renewed now."""
REFRESH_AHEAD_IDLE_HOURS_ENV = "REFRESH_AHEAD_IDLE_HOURS"
"""A scope set no caller asked for during this many hours is no longer renewed ahead: its token is left to
expire (the token API and the provider function mark use on the token item, at most once per quarter of it)."""
RENEWAL_QUEUE_URL_ENV = "RENEWAL_QUEUE_URL"
"""The provider's SQS renewal queue: each new token arms one delayed message that renews it as it reaches its
refresh margin. Empty: no per-token timers (the scheduled run renews by its interval, as ``sam local`` does)."""
UPSTREAM_BUDGETS_ENV = "UPSTREAM_BUDGETS"
"""Comma-separated ``name=requests`` overrides of the connections' hourly token-request budgets (by connection name:
``AriaAu=30,pyng=200``); a connection not named gets the default its documented lifetime gives
(:func:`token_vending.budget.default_budget`)."""
SECRET_MAX_AGE_ENV = "SECRET_MAX_AGE"  # noqa: S105 - a variable name, not a secret
CLIENT_AUTH_ENV = "CLIENT_AUTH"
"""An RFC 7591 auth method name overriding the profile's (``private_key_jwt``, ``tls_client_auth``, ...)."""
SIGNING_KEY_ID_ENV = "SIGNING_KEY_ID"
"""KMS key (ARN, id or alias) that signs ``private_key_jwt`` assertions; empty: the secret's PEM key."""
ASSERTION_AUDIENCE_ENV = "ASSERTION_AUDIENCE"
"""The assertions' ``aud``; empty: the token URL (RFC 7523 3, point 3)."""
CA_BUNDLE_ENV = "UPSTREAM_CA_BUNDLE"
"""PEM file of CAs trusted for the token endpoint instead of the default bundle (a private CA; tests)."""

# --- token API function ---------------------------------------------------------------------
PROVIDER_FUNCTION_ENV = "FUNCTION_{key}"
"""Per connection (``key`` = its key in the template's ``Connections``, ``FUNCTION_InvoiceCloud``,
``FUNCTION_AriaAu``): the name of its deployed function. Written by the template's loop; the route is
:func:`token_vending.catalogue.connection_name` of the key. A connection without one is not deployed (404)."""
PROVIDER_FUNCTION_PREFIX = PROVIDER_FUNCTION_ENV.removesuffix("{key}")
PROVIDERS_ENV = "PROVIDERS"
"""Optional JSON object: route name -> {"function": name or ARN, "lifetime": seconds}, for ``sam local`` and tests
(connections outside the catalogue too); merged over the ``FUNCTION_<Key>`` ones. Other members are ignored: the
token API knows no connection's scopes."""

# --- defaults -------------------------------------------------------------------------------
DEFAULT_MIN_TTL = 60
DEFAULT_REFRESH_MARGIN_SECONDS = 60
DEFAULT_REFRESH_MARGIN_RATIO = 0.1
DEFAULT_TOKEN_LIFETIME = 300
MIN_DEFAULT_TOKEN_LIFETIME = 120
"""A shorter assumed lifetime could not serve a request without parameters (the default ``min_ttl`` of 60 s
plus the 60 s refresh margin): refused as ``misconfigured`` instead of failing every such request."""
DEFAULT_DOCUMENTED_LIFETIME = 3600
DEFAULT_CONNECT_TIMEOUT = 3.05
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_UPSTREAM_RETRIES = 2
DEFAULT_LEASE_SECONDS = 20
MIN_LEASE_SECONDS = 3
"""A fetch ends one second before its lease and is not started with less than one second left: a shorter
lease could never ask the provider (every miss would be a 504), so it is ``misconfigured``."""
DEFAULT_FORCE_REFRESH_INTERVAL = 30
DEFAULT_MEMORY_CACHE_SECONDS = 5
DEFAULT_REFRESH_AHEAD_INTERVAL = 300
DEFAULT_SECRET_MAX_AGE = 300
DEFAULT_REFRESH_AHEAD_IDLE_HOURS = 24
PURGE_AFTER_EXPIRY_SECONDS = 3600
"""The DynamoDB TTL attribute is set this long after ``expires_at``; reads never rely on it."""

# --- the local stack (``make local``) -------------------------------------------------------
LOCAL_TABLE_NAME = "token-vending-local"
"""The local stack's cache table: what ``python -m token_vending.status`` reads unless told otherwise."""
LOCAL_AWS_PORT = 4566
"""The port of the local stack's embedded AWS (DynamoDB, Secrets Manager, SQS) on loopback."""
