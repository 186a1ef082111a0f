"""``python -m token_vending.status``: an operator's view of every cached token, read from the cache table.

Per connection (the table's partition) and scope set: the connection's provider, the token's fingerprint (never
the token), its time left, when its renewal is due (when it enters its refresh margin), when the scope set was last
used (idle ones are left to expire), a running refresh lease, a failed refresh's cool-down and its back-off streak,
and the connection's token requests this clock hour against its budget. Every judgement is made by the code the
functions use (:class:`RefreshPolicy`, :func:`usage.last_use`, the cache's item readers, the budget's defaults),
read with a paginated ``Scan``.

A separate entry point: no function imports it, so it costs the Lambda cold start nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from token_vending import constants
from token_vending.budget import WINDOW_SECONDS
from token_vending.cache import BUDGET_PREFIX, LEASE_PREFIX, TOKEN_PREFIX, lease_from_item, token_from_item
from token_vending.catalogue import connection as connection_profile
from token_vending.exceptions import Misconfigured
from token_vending.freshness import RefreshPolicy
from token_vending.request import fingerprint
from token_vending.settings import budget_overrides, cache_settings, provider_budget
from token_vending.usage import last_use

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from mypy_boto3_dynamodb import DynamoDBClient

    from token_vending.cache import CachedToken

TABLE_OUTPUT = "CacheTableName"
"""The stack output naming the cache table."""
TABLE_LOGICAL_ID = "CacheTable"
"""The table's logical id in template.yaml: read when the stack has no such output."""
PROJECTED = ("pk", "sk", "access_token", "expires_at", "fetched_at", "lifetime", "used_at",
             "lease_expires_at", "failure", "failures", "spent", "forced")
"""The attributes the view reads (each through a ``#`` name: some are DynamoDB reserved words)."""
NO_SCOPE = "(default)"
"""How the human table shows the ``""`` scope set: a request that named none (the connection's default scopes, or
none for a provider that takes no scope)."""
EXIT_USAGE = 2
LOCAL_CREDENTIALS = "testing"
"""What the local stack (make local) runs with; used to read it when the shell has no credentials."""


class StatusError(Exception):
    """The table cannot be read: one line for the operator, no traceback."""


@dataclass(frozen=True)
class Settings:
    """What the functions' settings say about judging a token (the deployed values are the stack's parameters)."""

    policy: RefreshPolicy
    idle_seconds: float
    env: Mapping[str, str]

    def budget(self, name: str) -> int:
        """The hourly budget of the connection ``name`` (its override, else its provider's default)."""
        profile = connection_profile(name)
        documented = profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME
        return provider_budget(self.env, name, documented)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        # The functions' own reader of REFRESH_MARGIN_*, REFRESH_AHEAD_IDLE_HOURS (the table is named apart here).
        cache = cache_settings({**env, constants.CACHE_TABLE_ENV: "-"}, None)
        budget_overrides(env, None)  # a malformed list is refused now, not on the first connection's row
        return cls(RefreshPolicy(cache.refresh_margin_seconds, cache.refresh_margin_ratio), cache.idle_seconds, env)


@dataclass
class Row:
    """One connection and scope set (or a connection's budget alone, ``scope_key`` ``None``)."""

    connection: str
    """The connection's name: the item's partition key."""
    scope_key: str | None
    token: CachedToken | None = None
    lease: dict[str, Any] | None = None
    malformed: list[str] = field(default_factory=list)


# --- reading -----------------------------------------------------------------------------------------------------
def scan(client: DynamoDBClient, table: str, *, consistent: bool = False) -> Iterator[dict[str, Any]]:
    """Every item, page by page, only the attributes the view reads."""
    names = {f"#a{index}": name for index, name in enumerate(PROJECTED)}
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": ", ".join(names),
                              "ExpressionAttributeNames": names, "ConsistentRead": consistent}
    while True:
        page = _call(lambda: client.scan(**kwargs), f"table {table}")
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _call(call: Any, what: str) -> Any:
    """Run one AWS call; what can go wrong becomes a :class:`StatusError` that says what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    from token_vending.aws_errors import error_code

    try:
        return call()
    except NoCredentialsError:
        raise StatusError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                          "(any values for the local stack)") from None
    except EndpointConnectionError as exc:
        raise StatusError(f"cannot reach {exc.kwargs.get('endpoint_url', 'the endpoint')}: is the stack "
                          "running (make local)?") from None
    except ClientError as exc:
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            raise StatusError(f"{what} does not exist") from None
        if code == "ValidationError" and what.startswith("stack"):
            raise StatusError(f"{what} does not exist (or cannot be described)") from None
        raise StatusError(f"{what}: AWS refused the request ({code})") from None
    except BotoCoreError as exc:
        raise StatusError(f"{what}: {type(exc).__name__}") from None


def stack_table(cloudformation: Any, stack: str) -> str:
    """The stack's ``CacheTableName`` output, or the physical id of its ``CacheTable`` resource."""
    described = _call(lambda: cloudformation.describe_stacks(StackName=stack), f"stack {stack}")
    for output in (described.get("Stacks") or [{}])[0].get("Outputs") or []:
        if output.get("OutputKey") == TABLE_OUTPUT:
            return str(output["OutputValue"])
    resource = _call(lambda: cloudformation.describe_stack_resource(StackName=stack,
                                                                    LogicalResourceId=TABLE_LOGICAL_ID),
                     f"stack {stack}")
    return str(resource["StackResourceDetail"]["PhysicalResourceId"])


def collect(items: Iterator[dict[str, Any]], now: float) -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Token and lease items as rows (one per connection and scope set), and each connection's budget item of the
    current clock hour (``spent``/``forced``; a malformed one has ``malformed``)."""
    rows: dict[tuple[str, str | None], Row] = {}
    budgets: dict[str, dict[str, Any]] = {}
    window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS

    def row(name: str, key: str | None) -> Row:
        return rows.setdefault((name, key), Row(name, key))

    for item in items:
        name = str(item.get("pk", {}).get("S", "?"))
        sort_key = str(item.get("sk", {}).get("S", ""))
        if sort_key.startswith(TOKEN_PREFIX):
            key = sort_key[len(TOKEN_PREFIX):]
            token = token_from_item(name, key, item)
            if token is None:
                row(name, key).malformed.append("token")
            else:
                row(name, key).token = token
        elif sort_key.startswith(LEASE_PREFIX):
            key = sort_key[len(LEASE_PREFIX):]
            if _number(item.get("lease_expires_at")) is None:
                row(name, key).malformed.append("lease")
                continue
            lease = lease_from_item(item, default_expiry=0.0)
            row(name, key).lease = {"expires_at": lease.expires_at, "failure": lease.failure,
                                    "failed": "failure" in item, "failures": lease.failures}
        elif sort_key.startswith(BUDGET_PREFIX):
            if sort_key != f"{BUDGET_PREFIX}{window}":
                continue  # an earlier hour's counter, waiting for its TTL
            spent = _number(item.get("spent"))
            budgets[name] = ({"spent": int(spent), "forced": int(_number(item.get("forced")) or 0)}
                             if spent is not None else {"malformed": True})
        else:
            row(name, sort_key).malformed.append("item")
    for name in budgets:
        if not any(found == name for found, _ in rows):
            row(name, None)
    return sorted(rows.values(), key=lambda r: (r.connection, r.scope_key or "")), budgets


def _number(attribute: Any) -> float | None:
    try:
        return float(attribute["N"])
    except (TypeError, KeyError, ValueError):
        return None


# --- judging -----------------------------------------------------------------------------------------------------
def report(rows: Sequence[Row], budgets: Mapping[str, Mapping[str, Any]], settings: Settings, now: float, *,
           table: str) -> dict[str, Any]:
    """The JSON document: stable keys, ``null`` for what an entry does not have, times as ISO-8601 and epoch
    seconds, durations in seconds (negative: in the past)."""
    window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    return {
        "table": table,
        "now": _time(now),
        "budget_window": {"start": _time(window), "end": _time(window + WINDOW_SECONDS)},
        "tokens": [_entry(row, budgets.get(row.connection), settings, now) for row in rows],
    }


def _entry(row: Row, budget: Mapping[str, Any] | None, settings: Settings, now: float) -> dict[str, Any]:
    token = row.token
    states: list[str] = []
    malformed = list(row.malformed)
    profile = connection_profile(row.connection)
    document: dict[str, Any] = {"connection": row.connection,
                                "provider": profile.provider if profile is not None else None,
                                "scope": row.scope_key, "state": states,
                                "fingerprint": None, "expires_at": None, "time_left_seconds": None,
                                "renewal_due": None, "renewal_due_in_seconds": None, "lifetime_seconds": None,
                                "fetched_at": None, "last_use": None, "last_use_seconds_ago": None,
                                "lease": None, "cool_down": None, "budget": None, "malformed": malformed}
    if token is not None:
        due = settings.policy.enters_margin(token)
        used = last_use(token)
        document |= {"fingerprint": fingerprint(token.access_token), "expires_at": _time(token.expires_at),
                     "time_left_seconds": round(token.remaining(now), 3), "renewal_due": _time(due),
                     "renewal_due_in_seconds": round(due - now, 3), "lifetime_seconds": token.lifetime,
                     "fetched_at": _time(token.fetched_at), "last_use": _time(used),
                     "last_use_seconds_ago": round(now - used, 3)}
        if token.remaining(now) <= 0:
            states.append("expired")
        elif settings.policy.is_fresh(token, 0, now):
            states.append("fresh")
        else:
            states.append("in margin")
        if used < now - settings.idle_seconds:
            states.append("idle")
    lease = row.lease
    if lease is not None:
        left = lease["expires_at"] - now
        if lease["failed"]:
            error = lease["failure"].get("error") if lease["failure"] else None
            document["cool_down"] = {"until": _time(lease["expires_at"]), "seconds_left": round(left, 3),
                                     "active": left > 0, "streak": lease["failures"],
                                     "error": str(error) if error is not None else None}
            if left > 0:
                states.append("cooling down")
        elif left > 0:
            document["lease"] = {"until": _time(lease["expires_at"]), "seconds_left": round(left, 3)}
            states.append("renewing")
    if budget is not None or row.token is not None or row.lease is not None:
        limit = settings.budget(row.connection)
        spent = None if budget is None or budget.get("malformed") else int(budget.get("spent", 0))
        document["budget"] = {"spent": 0 if budget is None else spent, "limit": limit,
                              "forced": 0 if budget is None else budget.get("forced")}
        if budget is not None and budget.get("malformed"):
            malformed.append("budget")
        elif spent is not None and spent >= limit:
            states.append("budget spent")
    if malformed:
        states.append("malformed")
    return document


def _time(epoch: float) -> dict[str, Any]:
    return {"iso": datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "epoch": round(epoch, 3)}


# --- human output ------------------------------------------------------------------------------------------------
COLUMNS = ("CONNECTION", "PROVIDER", "SCOPE SET", "FINGERPRINT", "TIME LEFT", "RENEWAL DUE", "LAST USE", "LEASE",
           "COOL-DOWN", "BUDGET", "STATE")


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``9s``: the two largest units, rounded down."""
    whole = int(abs(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _relative(seconds: float) -> str:
    return f"in {duration(seconds)}" if seconds > 0 else f"{duration(seconds)} ago"


def table_lines(document: Mapping[str, Any]) -> list[str]:
    """The human table: one line per connection and scope set, columns as wide as their widest cell."""
    tokens = document["tokens"]
    if not tokens:
        return [f"{document['table']}: no tokens cached ({document['now']['iso']})"]
    rows = [COLUMNS, *(_cells(token) for token in tokens)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    window = document["budget_window"]
    return [*lines, "", f"{document['table']} at {document['now']['iso']}; budgets count the hour from "
                        f"{window['start']['iso']}"]


def _cells(token: Mapping[str, Any]) -> tuple[str, ...]:
    scope = token["scope"]
    left = token["time_left_seconds"]
    time_left = "-" if left is None else (duration(left) if left > 0 else f"expired {duration(left)} ago")
    due = token["renewal_due_in_seconds"]
    renewal = "-" if due is None else (_relative(due) if due > 0 else f"now ({duration(due)} ago)")
    used = token["last_use_seconds_ago"]
    last = "-" if used is None else _relative(-used) + (" (idle)" if "idle" in token["state"] else "")
    lease = token["lease"]
    leased = "-" if lease is None else f"{duration(lease['seconds_left'])} left"
    cooling = token["cool_down"]
    if cooling is None:
        cool = "-"
    elif cooling["active"]:
        cool = f"{duration(cooling['seconds_left'])} left, streak {cooling['streak']}"
    else:
        cool = f"lapsed, streak {cooling['streak']}"
    if cooling is not None and cooling["error"]:
        cool += f" ({cooling['error']})"
    budget = token["budget"]
    spent = "-" if budget is None else f"{'?' if budget['spent'] is None else budget['spent']}/{budget['limit']}"
    state = ", ".join(token["state"]) + (f" ({', '.join(token['malformed'])})" if token["malformed"] else "")
    return (token["connection"], token["provider"] or "?", NO_SCOPE if scope == "" else (scope or "-"),
            token["fingerprint"] or "-", time_left, renewal, last, leased, cool, spent, state or "-")


# --- command line ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m token_vending.status", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Connection settings (refresh margin, idle hours, budgets) are the functions' defaults unless given "
               "here or in the environment under the functions' own names (REFRESH_MARGIN_SECONDS, "
               "REFRESH_MARGIN_RATIO, REFRESH_AHEAD_IDLE_HOURS, UPSTREAM_BUDGETS); a deployed stack's values are "
               "its parameters (RefreshMarginSeconds, RefreshMarginRatio, RefreshAheadIdleHours, UpstreamBudgets). "
               f"Without --table or --stack: the local stack's table ({constants.LOCAL_TABLE_NAME}) on "
               f"http://127.0.0.1:{constants.LOCAL_AWS_PORT} unless AWS_ENDPOINT_URL_DYNAMODB says otherwise.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--table", help="the cache table's name")
    where.add_argument("--stack", help="a deployed stack's name: its CacheTableName output")
    parser.add_argument("--region", help="AWS region (default: the configured one)")
    parser.add_argument("--consistent", action="store_true", help="strongly consistent reads")
    parser.add_argument("--json", action="store_true", help="one JSON document (per refresh with --watch)")
    parser.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 5) until Ctrl-C")
    parser.add_argument("--refresh-margin-seconds", metavar="SECONDS")
    parser.add_argument("--refresh-margin-ratio", metavar="RATIO")
    parser.add_argument("--idle-hours", metavar="HOURS")
    parser.add_argument("--budgets", metavar="NAME=REQUESTS,...",
                        help="hourly budgets by connection name (UPSTREAM_BUDGETS)")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    for name, value in ((constants.REFRESH_MARGIN_SECONDS_ENV, args.refresh_margin_seconds),
                        (constants.REFRESH_MARGIN_RATIO_ENV, args.refresh_margin_ratio),
                        (constants.REFRESH_AHEAD_IDLE_HOURS_ENV, args.idle_hours),
                        (constants.UPSTREAM_BUDGETS_ENV, args.budgets)):
        if value is not None:
            env[name] = value
    if args.watch is not None and args.watch <= 0:
        return _fail("--watch needs a positive number of seconds")
    try:
        settings = Settings.from_env(env)
        client, table = _connect(args, env)
        while True:
            document = read(client, table, settings, consistent=args.consistent)
            if args.json:
                print(json.dumps(document, indent=None if args.watch else 2, sort_keys=False), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\033[H\033[2J", end="")
                print("\n".join(table_lines(document)), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except StatusError as exc:
        return _fail(str(exc))
    except Misconfigured as exc:
        return _fail(exc.description)
    except KeyboardInterrupt:
        return 0


def read(client: DynamoDBClient, table: str, settings: Settings, *, consistent: bool = False,
         now: float | None = None) -> dict[str, Any]:
    """Scan ``table`` and judge what it holds (the JSON document)."""
    items = list(scan(client, table, consistent=consistent))
    now = time.time() if now is None else now
    rows, budgets = collect(iter(items), now)
    return report(rows, budgets, settings, now, table=table)


def _connect(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[DynamoDBClient, str]:
    import boto3

    region = args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    endpoint = None
    if args.table is None and args.stack is None:
        endpoint = (env.get("AWS_ENDPOINT_URL_DYNAMODB") or env.get("AWS_ENDPOINT_URL")
                    or f"http://127.0.0.1:{constants.LOCAL_AWS_PORT}")
        region = region or "us-east-1"
    try:
        session = boto3.session.Session(region_name=region)
        if endpoint is not None and session.get_credentials() is None:
            # The local stack takes any credentials: a reader of it needs none of its own.
            session = boto3.session.Session(region_name=region, aws_access_key_id=LOCAL_CREDENTIALS,
                                            aws_secret_access_key=LOCAL_CREDENTIALS)
        client = session.client("dynamodb", endpoint_url=endpoint)
        if args.stack is not None:
            return client, stack_table(session.client("cloudformation"), args.stack)
    except Exception as exc:
        if isinstance(exc, StatusError):
            raise
        raise StatusError(f"cannot make an AWS client: {exc}") from None
    return client, args.table or constants.LOCAL_TABLE_NAME


def _fail(message: str) -> int:
    print(f"token_vending.status: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
