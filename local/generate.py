"""``env.json`` and ``events/`` for ``sam local``, generated from template.yaml and the catalogue.

``python -m local.generate`` rewrites them; ``python -m local.generate --check`` (run by ``make test``)
fails when the committed files differ from what the template and catalogue give, so they cannot drift.

They cover the connections template.yaml deploys with :data:`PARAMETERS` (none given: its ``Connections``
default, what ``sam local`` runs), in that order; ``make sam-local`` gives SAM the same parameters and serves an
emulator per connection, on the ports ``make local`` gives them. ``env.json`` points every function at the
embedded AWS of ``make local`` and at the emulators through ``host.docker.internal`` (where ``sam local``
containers reach the host) -- a default connection by its ``TOKEN_URL``, an added one by the ``token_url`` its
secret holds, as deployed -- with the parameters' defaults for everything else but the renewal queue (none:
``RENEWAL_QUEUE_URL`` empty). ``events/`` holds, per connection, an API Gateway proxy event for the
token API function (``api-<name>.json``) and a direct-invocation payload (``invoke-<name>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from typing import Any

from local.stack import (
    API_FUNCTION,
    LOCAL_CONNECTIONS,
    TABLE_NAME,
    DeployedProvider,
    deployed,
    secret_name,
)
from local.template import ROOT
from token_vending.catalogue import connection

DOCKER_HOST = "host.docker.internal"
LOCAL_AWS = f"http://{DOCKER_HOST}:4566"
LAMBDA_SERVICE = f"http://{DOCKER_HOST}:3001"
EMULATOR_PORT_BASE = 9001
ENV_JSON = ROOT / "env.json"
EVENTS = ROOT / "events"
COMMON = {"TOKEN_VENDING_LOCAL_MODE": "true", "CACHE_TABLE_NAME": TABLE_NAME, "AWS_ENDPOINT_URL_DYNAMODB": LOCAL_AWS}
PARAMETERS: dict[str, str] = {}
"""The template parameters ``env.json``, ``events/`` and ``make sam-local`` deploy with: the template's defaults
(its five connections), as ``sam local`` runs template.yaml; ``LOCAL_PARAMETERS`` would add ``make local``'s
AriaAu and PyngOrg2."""
CONNECTIONS: tuple[DeployedProvider, ...] = tuple(deployed(PARAMETERS)[0].values())
"""The connections they cover, in the template's order (their emulators' ports follow it, as with ``make
local``)."""
PROVIDERS = CONNECTIONS
"""What :func:`events` covers (a test may narrow it)."""


def emulator_url(index: int, provider: DeployedProvider, host: str = DOCKER_HOST) -> str:
    """The token URL of the ``index``-th connection's emulator as ``make local`` (``make sam-local``) serves it."""
    profile = connection(provider.route)
    path = profile.emulator.path if profile is not None else "/oauth/token"
    return f"http://{host}:{EMULATOR_PORT_BASE + index}{path}"


def env_json() -> dict[str, dict[str, str]]:
    """What ``sam local invoke --env-vars env.json`` sets, per function logical ID."""
    functions: dict[str, dict[str, str]] = {}
    table: dict[str, dict[str, Any]] = {}
    for index, provider in enumerate(CONNECTIONS):
        settings = {k: v for k, v in provider.environment.items()
                    if k in {"CONNECTION_NAME", "ALLOWED_SCOPES", "DEFAULT_SCOPES", "AUDIENCE", "CLIENT_AUTH",
                             "SIGNING_KEY_ID", "REGION", "STAGE"}}
        functions[provider.function] = {
            **COMMON, "AWS_ENDPOINT_URL_SECRETS_MANAGER": LOCAL_AWS, **settings,
            # An added connection has no TOKEN_URL: its secret's token_url names its emulator (make sam-local).
            **({} if provider.added else {"TOKEN_URL": emulator_url(index, provider)}),
            "SECRET_ID": secret_name(provider.route),
            # No SQS under sam local: no renewal timers (the template's queue URL would name an absent queue);
            # the schedule's payload renews by its interval instead.
            "RENEWAL_QUEUE_URL": "",
        }
        table[provider.route] = {"function": provider.function}
    # The API's table of connections as one declared variable: sam local does not expand the loop in its
    # environment (docs/sam-local-and-step-functions.md). It knows no scopes: each connection's function does.
    api = {**COMMON, "AWS_ENDPOINT_URL_LAMBDA": LAMBDA_SERVICE,
           "PROVIDERS": json.dumps(table, separators=(",", ":"))}
    return {API_FUNCTION: api, **functions}


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def api_event(route: str, index: int, query: dict[str, str] | None) -> dict[str, Any]:
    """A SigV4-signed ``GET /token/{route}`` as API Gateway (REST, proxy integration) passes it."""
    second = f"{index + 1:02d}"
    signature = _digest("signature", route)
    authorization = ("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE7QX3ZTOKN/20261127/us-east-1/execute-api/"
                     f"aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature={signature}")
    agent = "Boto3/1.35.90 md/Botocore#1.35.90 ua/2.0 os/linux lang/python#3.13.0"
    headers = {
        "Accept": "application/json", "Accept-Encoding": "gzip, deflate", "Authorization": authorization,
        "Host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com", "User-Agent": agent,
        "X-Amz-Date": f"20261127T1015{second}Z",
        "X-Amz-Security-Token": "IQoJb3JpZ2luX2VjEXAMPLE-session-token-not-real",
        "X-Amzn-Trace-Id": f"Root=1-6b0958{index + 25:02x}-{_digest('trace', route)[:24]}",
        "X-Forwarded-For": "203.0.113.25", "X-Forwarded-Port": "443", "X-Forwarded-Proto": "https",
    }
    caller = "AROAEXAMPLEROLEID1234:billing-worker"
    return {
        "body": None, "resource": "/token/{provider}", "path": f"/token/{route}", "httpMethod": "GET",
        "isBase64Encoded": False, "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"provider": route}, "stageVariables": None,
        "headers": headers, "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": {
            "accountId": "123456789012", "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com", "domainPrefix": "a1b2c3d4e5",
            "extendedRequestId": f"Bx3kPHd5IAMEXAMPLE{index + 1}=", "httpMethod": "GET",
            "identity": {
                "accessKey": "ASIAEXAMPLE7QX3ZTOKN", "accountId": "123456789012", "caller": caller,
                "cognitoAuthenticationProvider": None, "cognitoAuthenticationType": None,
                "cognitoIdentityId": None, "cognitoIdentityPoolId": None, "principalOrgId": None,
                "sourceIp": "203.0.113.25", "user": caller, "userAgent": agent,
                "userArn": "arn:aws:sts::123456789012:assumed-role/billing-worker-role/billing-worker",
            },
            "path": f"/v1/token/{route}", "protocol": "HTTP/1.1",
            "requestId": str(uuid.UUID(_digest("request", route)[:32])),
            "requestTime": f"27/Nov/2026:10:15:{second} +0000", "requestTimeEpoch": 1795774500000 + 1000 * (index + 1),
            "resourceId": "k2x9pq", "resourcePath": "/token/{provider}", "stage": "v1",
        },
    }


def min_ttl_limit(provider: DeployedProvider) -> int:
    """The largest ``min_ttl`` the provider's function accepts (the layer's own rule: its documented lifetime,
    ``TOKEN_LIFETIME`` if set, less the refresh margin): an event must not ask a short-lived provider for more."""
    from token_vending import constants
    from token_vending.freshness import RefreshPolicy
    from token_vending.settings import cache_settings

    env = provider.environment
    profile = connection(provider.route)
    documented = profile.lifetime if profile is not None else constants.DEFAULT_DOCUMENTED_LIFETIME
    lifetime = int(env.get(constants.TOKEN_LIFETIME_ENV) or documented)
    cache = cache_settings(env, provider.route)
    return RefreshPolicy(cache.refresh_margin_seconds, cache.refresh_margin_ratio).min_ttl_limit(lifetime)


def allowed_scopes(provider: DeployedProvider) -> list[str]:
    """The connection's allowed scopes: its parameter (``ALLOWED_SCOPES``), else what ``make local`` puts in its
    secret (:data:`LOCAL_CONNECTIONS`)."""
    local = LOCAL_CONNECTIONS.get(provider.route, {})
    return str(provider.environment.get("ALLOWED_SCOPES", "") or local.get("scopes", "")).split()


def events() -> dict[str, dict[str, Any]]:
    """File name -> content: a request for one allowed scope where the connection has scopes, else one
    asking for a token that lasts at least five minutes (or as long as the provider's tokens allow)."""
    files: dict[str, dict[str, Any]] = {}
    for index, provider in enumerate(PROVIDERS):
        scopes = allowed_scopes(provider)
        query = {"scope": scopes[-1]} if scopes else {"min_ttl": str(min(300, min_ttl_limit(provider)))}
        files[f"api-{provider.route}.json"] = api_event(provider.route, index, query)
        files[f"invoke-{provider.route}.json"] = {**({"scope": scopes[-1]} if scopes else {}),
                                                  "min_ttl": min(60, min_ttl_limit(provider)), "force_refresh": False}
    return files


def rendered() -> dict[str, str]:
    """Relative path -> file text of everything this module generates."""
    files = {"env.json": json.dumps(env_json(), indent=2) + "\n"}
    files |= {f"events/{name}": json.dumps(content, indent=2) + "\n" for name, content in events().items()}
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    wanted = rendered()
    present = {f"events/{path.name}" for path in EVENTS.glob("*.json")}
    stale = sorted(name for name, text in wanted.items()
                   if not (ROOT / name).exists() or (ROOT / name).read_text() != text)
    extra = sorted(present - set(wanted))
    if args.check:
        if stale or extra:
            print(f"out of date (run `make generate`): {', '.join(stale + extra)}", file=sys.stderr)
            return 1
        return 0
    EVENTS.mkdir(exist_ok=True)
    for name in stale:
        (ROOT / name).write_text(wanted[name])
    for name in extra:
        (ROOT / name).unlink()
    print(f"wrote {len(stale)} file(s), removed {len(extra)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
