"""The DynamoDB token cache and its refresh lease.

Items live in the provider's own partition (``pk`` = route name, so IAM can confine each provider
function with ``dynamodb:LeadingKeys``); the sort key tells tokens from leases:

* ``token#<scope key>``: ``access_token``, ``token_type``, ``scope``, ``expires_at``, ``fetched_at``,
  ``lifetime`` and the TTL attribute ``purge_at``.
* ``lease#<scope key>``: ``owner`` and ``lease_expires_at``; taken with one conditional ``PutItem``
  (absent OR lapsed), the way Powertools' idempotency layer takes its in-progress record.
* ``budget#<hour>``: ``spent``, the token requests of that clock hour (:mod:`token_vending.budget`).

A token item also carries ``used_at``, when a caller last used its scope set (carried over to the token that
replaces it): refresh ahead leaves scope sets nobody uses to expire. It is the one attribute the token API may
write (:meth:`TokenCache.record_use`).

DynamoDB deletes expired items lazily (up to days later), so every read checks ``expires_at`` itself.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from token_vending.aws_errors import error_code
from token_vending.constants import PURGE_AFTER_EXPIRY_SECONDS
from token_vending.lifetime import beyond_sane_lifetime

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TOKEN_PREFIX = "token#"  # noqa: S105 - a sort-key prefix, not a secret
LEASE_PREFIX = "lease#"
BUDGET_PREFIX = "budget#"


class CacheUnavailable(Exception):
    """DynamoDB could not be read or written (throttled, unreachable, denied)."""


@dataclass(frozen=True)
class CachedToken:
    provider: str
    scope_key: str
    access_token: str = ""
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    scope: str | None = None
    expires_at: int = 0
    fetched_at: float = 0.0
    lifetime: int = 0
    used_at: float = 0.0
    """When a caller last used this scope set, as far as the item knows (0: never recorded)."""

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def __repr__(self) -> str:  # never let a whole token reach a log through repr()
        return (f"CachedToken(provider={self.provider!r}, scope_key={self.scope_key!r}, "
                f"expires_at={self.expires_at}, fetched_at={self.fetched_at:.3f})")


@dataclass(frozen=True)
class LeaseResult:
    acquired: bool
    expires_at: float
    """When the lease lapses (ours or the holder's)."""
    failure: dict[str, Any] | None = None
    """Set when the lease is a failed refresh's cool-down: the error body to answer with until it lapses."""
    failures: int = 0
    """Consecutive failed refreshes of this key before this lease (read from the lapsed cool-down it replaced):
    what the next cool-down backs off from. A successful refresh deletes the item, which resets it."""


def _error_types() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


class TokenCache:
    def __init__(self, table_name: str, client: DynamoDBClient) -> None:
        self.table_name = table_name
        self.client = client

    def get(self, provider: str, scope_key: str, *, consistent: bool = False,
            now: float | None = None) -> CachedToken | None:
        """The cached token, or ``None`` when absent, malformed or already expired."""
        try:
            response = self.client.get_item(
                TableName=self.table_name, Key=_key(provider, TOKEN_PREFIX + scope_key),
                ConsistentRead=consistent)
        except _error_types() as exc:
            raise CacheUnavailable(_describe(exc)) from None
        item = response.get("Item")
        if not item:
            return None
        token = token_from_item(provider, scope_key, item)
        if token is None or token.expires_at <= (time.time() if now is None else now):
            return None
        return token

    def list_tokens(self, provider: str) -> list[CachedToken]:
        """Every token item of one provider (one partition), expired or not: what refresh-ahead renews."""
        tokens: list[CachedToken] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": provider}, ":prefix": {"S": TOKEN_PREFIX}},
            "ConsistentRead": True,
        }
        try:
            while True:
                page = self.client.query(**kwargs)
                for item in page.get("Items", []):
                    token = token_from_item(provider, item["sk"]["S"][len(TOKEN_PREFIX):], item)
                    if token is not None:
                        tokens.append(token)
                if "LastEvaluatedKey" not in page:
                    return tokens
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except _error_types() as exc:
            raise CacheUnavailable(_describe(exc)) from None

    def put(self, token: CachedToken) -> bool:
        """Store unless a token fetched later is already there; ``False`` when that one was kept.

        Never moves the scope set's use mark back: the token carries the mark read before its fetch, and a caller's
        hit may have written a later one meanwhile (the token API's ``SET used_at``), which is then kept. One
        ``UpdateItem`` (a ``PutItem`` would replace the mark); a second one, without the mark, only when a later mark
        is there. A token without a mark (``used_at`` 0) leaves the stored one as it is."""
        names = {"#access": "access_token", "#type": "token_type", "#expires": "expires_at", "#fetched": "fetched_at",
                 "#lifetime": "lifetime", "#purge": "purge_at", "#scope": "scope", "#used": "used_at"}
        values: dict[str, Any] = {
            ":access": {"S": token.access_token}, ":type": {"S": token.token_type},
            ":expires": {"N": str(token.expires_at)}, ":fetched": {"N": f"{token.fetched_at:.3f}"},
            ":lifetime": {"N": str(token.lifetime)},
            ":purge": {"N": str(token.expires_at + PURGE_AFTER_EXPIRY_SECONDS)},
        }
        sets = ["#access = :access", "#type = :type", "#expires = :expires", "#fetched = :fetched",
                "#lifetime = :lifetime", "#purge = :purge"]
        if token.scope is not None:
            values[":scope"] = {"S": token.scope}
            sets.append("#scope = :scope")
        later = "attribute_not_exists(#fetched) OR #fetched <= :fetched"
        if token.used_at:
            values[":used"] = {"N": f"{token.used_at:.3f}"}
            marked = self._update_token(token, [*sets, "#used = :used"], names, values,
                                        f"({later}) AND (attribute_not_exists(#used) OR #used <= :used)")
            if marked is not None:
                return marked
            del values[":used"]  # a later mark is there: store the token and keep that mark
        return self._update_token(token, sets, names, values, later) is True

    def _update_token(self, token: CachedToken, sets: list[str], names: dict[str, str], values: dict[str, Any],
                      condition: str) -> bool | None:
        """``True`` when written; ``False`` when a later-fetched token is there; ``None`` when only the use mark's
        condition failed (a later mark is there)."""
        expression = "SET " + ", ".join(sets) + ("" if token.scope is not None else " REMOVE #scope")
        named = set(re.findall(r"#\w+", f"{expression} {condition}"))  # DynamoDB refuses unused names
        used = {key: value for key, value in names.items() if key in named}
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(token.provider, TOKEN_PREFIX + token.scope_key),
                UpdateExpression=expression, ConditionExpression=condition, ExpressionAttributeNames=used,
                ExpressionAttributeValues=values, ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except _error_types() as exc:
            if not _is_condition_failure(exc):
                raise CacheUnavailable(_describe(exc)) from None
            old = _response(exc).get("Item") or {}
            return None if _number(old.get("fetched_at"), float("-inf")) <= round(token.fetched_at, 3) else False
        return True

    def record_use(self, provider: str, scope_key: str, now: float) -> bool:
        """Mark the scope set used at ``now`` on its token item (never creating one, never moving it back).
        The only write the token API makes; its role may set ``used_at`` and nothing else. Best effort:
        ``False`` when not written (no item, a later mark, or DynamoDB refused)."""
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(provider, TOKEN_PREFIX + scope_key),
                UpdateExpression="SET used_at = :now",
                ConditionExpression="attribute_exists(sk) AND (attribute_not_exists(used_at) OR used_at < :now)",
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}},
                ReturnValues="NONE")  # named: the token API's policy requires dynamodb:ReturnValues NONE
        except _error_types():
            return False
        return True

    def spend_budget(self, provider: str, window: int, limit: int, *, forced_limit: int | None = None,
                     purge_at: int) -> bool:
        """Count one token request in the hour starting at ``window``; ``False`` when ``limit`` is reached or, for a
        forced refresh (``forced_limit`` given), when forced refreshes reached theirs. Raises
        :class:`CacheUnavailable` when DynamoDB cannot count."""
        update = "ADD spent :one SET purge_at = :purge"
        condition = "(attribute_not_exists(spent) OR spent < :limit)"
        values: dict[str, Any] = {":one": {"N": "1"}, ":limit": {"N": str(limit)}, ":purge": {"N": str(purge_at)}}
        if forced_limit is not None:
            update = "ADD spent :one, forced :one SET purge_at = :purge"
            condition += " AND (attribute_not_exists(forced) OR forced < :forced_limit)"
            values[":forced_limit"] = {"N": str(forced_limit)}
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(provider, f"{BUDGET_PREFIX}{window}"),
                UpdateExpression=update, ConditionExpression=condition, ExpressionAttributeValues=values)
        except _error_types() as exc:
            if _is_condition_failure(exc):
                return False
            raise CacheUnavailable(_describe(exc)) from None
        return True

    def acquire_lease(self, provider: str, scope_key: str, owner: str, seconds: float,
                      now: float | None = None) -> LeaseResult:
        """One conditional write: take the lease if nobody holds it or the holder's has lapsed."""
        now = time.time() if now is None else now
        expires = now + seconds
        try:
            response = self.client.put_item(
                TableName=self.table_name,
                Item={**_key(provider, LEASE_PREFIX + scope_key), "owner": {"S": owner},
                      "lease_expires_at": {"N": f"{expires:.3f}"},
                      "purge_at": {"N": str(int(expires) + PURGE_AFTER_EXPIRY_SECONDS)}},
                # A lease item without an expiry (written by nothing here) must not block the key forever.
                ConditionExpression="attribute_not_exists(pk) OR attribute_not_exists(lease_expires_at) "
                                    "OR lease_expires_at < :now",
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}},
                ReturnValues="ALL_OLD", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except _error_types() as exc:
            if _is_condition_failure(exc):
                old = _response(exc).get("Item") or {}
                return lease_from_item(old, default_expiry=now + seconds)
            raise CacheUnavailable(_describe(exc)) from None
        # A lapsed cool-down we replaced tells how many refreshes failed in a row before ours.
        previous = response.get("Attributes") or {}
        streak = int(_number(previous.get("failures"), 0)) if "failure" in previous else 0
        return LeaseResult(acquired=True, expires_at=expires, failures=streak)

    def get_lease(self, provider: str, scope_key: str) -> LeaseResult | None:
        """The current lease (consistent read), or ``None`` when nobody holds one."""
        try:
            response = self.client.get_item(TableName=self.table_name, Key=_key(provider, LEASE_PREFIX + scope_key),
                                            ConsistentRead=True)
        except _error_types() as exc:
            raise CacheUnavailable(_describe(exc)) from None
        item = response.get("Item")
        return lease_from_item(item, default_expiry=0.0) if item else None

    def record_failure(self, provider: str, scope_key: str, owner: str, until: float,
                       error: dict[str, Any], *, failures: int = 1) -> None:
        """Turn our lease into a cool-down: until ``until`` nobody calls the provider for this key, and
        callers get ``error`` (or a still-valid cached token) at once instead of waiting or retrying.
        ``failures`` counts the refreshes that failed in a row, this one included (the next back-off)."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={**_key(provider, LEASE_PREFIX + scope_key), "owner": {"S": owner},
                      "lease_expires_at": {"N": f"{until:.3f}"}, "failure": {"S": json.dumps(error)},
                      "failures": {"N": str(failures)},
                      "purge_at": {"N": str(int(until) + PURGE_AFTER_EXPIRY_SECONDS)}},
                ConditionExpression="#owner = :owner", ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}})
        except _error_types():
            pass  # best effort: without the record the lease simply lapses

    def release_lease(self, provider: str, scope_key: str, owner: str) -> None:
        """Best effort: a lease we fail to delete lapses by itself."""
        try:
            self.client.delete_item(
                TableName=self.table_name, Key=_key(provider, LEASE_PREFIX + scope_key),
                ConditionExpression="#owner = :owner", ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}})
        except _error_types():
            pass


def lease_from_item(item: dict[str, Any], default_expiry: float) -> LeaseResult:
    failure: dict[str, Any] | None = None
    raw = item.get("failure", {}).get("S")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        failure = parsed if isinstance(parsed, dict) else None
    return LeaseResult(acquired=False, expires_at=_number(item.get("lease_expires_at"), default=default_expiry),
                       failure=failure, failures=int(_number(item.get("failures"), 0)))


def _key(provider: str, sort_key: str) -> dict[str, Any]:
    return {"pk": {"S": provider}, "sk": {"S": sort_key}}


def _number(attribute: Any, default: float) -> float:
    try:
        return float(attribute["N"])
    except (TypeError, KeyError, ValueError):
        return default


def token_from_item(provider: str, scope_key: str, item: dict[str, Any]) -> CachedToken | None:
    try:
        token = item["access_token"]["S"]
        expires_at = int(item["expires_at"]["N"])
        fetched_at = float(item["fetched_at"]["N"])
        lifetime = int(item.get("lifetime", {}).get("N", expires_at - int(fetched_at)))
    except (KeyError, TypeError, ValueError):
        return None  # a malformed item is treated as a miss and overwritten by the next refresh
    if beyond_sane_lifetime(expires_at, fetched_at):
        return None  # no provider answer is stored so; such an item is replaced, never served
    scope = item.get("scope", {}).get("S")
    return CachedToken(provider=provider, scope_key=scope_key, access_token=token,
                       token_type=item.get("token_type", {}).get("S", "Bearer"), scope=scope,
                       expires_at=expires_at, fetched_at=fetched_at, lifetime=lifetime,
                       used_at=_number(item.get("used_at"), 0.0))


def _response(exc: Exception) -> dict[str, Any]:
    """The error's parsed response: a ``ClientError``'s, or ``{}`` for botocore's own errors (a read timeout has
    ``response`` ``None``)."""
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _is_condition_failure(exc: Exception) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


def _describe(exc: Exception) -> str:
    return error_code(exc) or type(exc).__name__
