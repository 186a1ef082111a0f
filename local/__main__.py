"""``make local``: the whole service on loopback, without Docker or an AWS account.

* API (``GET /v1/token/{provider}``, SigV4-signed)  http://127.0.0.1:3000/v1/token/ (the stack's ApiUrl)
* Lambda Invoke API (like ``sam local start-lambda``)  http://127.0.0.1:3001
* embedded AWS: DynamoDB + Secrets Manager + SQS (moto)  http://127.0.0.1:4566
* provider token endpoint emulators                http://127.0.0.1:9001, 9002, ... (one per provider)

Refresh ahead runs as deployed, on by default: the schedule invokes every provider function with
``{"refresh_ahead": true}`` every 300 s (``--refresh-ahead SECONDS``, 0 for off), and each new token arms its
own renewal timer: an SQS message delayed to 10 s before the token's refresh margin, on that provider's queue
in the embedded AWS (``<table>-<provider>-renewals``, with the template's queue properties: a failed renewal
is delivered again after the 150 s visibility timeout), which an emulated event source mapping (the template's:
BatchSize 1, ReportBatchItemFailures) hands to the provider function.
``--no-renewals`` keeps the schedule alone (it then renews by its interval); the timers follow
``--refresh-ahead`` unless ``--renewals``/``--no-renewals`` says otherwise. A scope set nobody asked for
during ``REFRESH_AHEAD_IDLE_HOURS`` (24, set it in the environment) is left to expire.

Real provider endpoints can be used instead of an emulator: ``--config local.json`` with
``{"pyng": {"token_url": "https://...", "client_id": "...", "client_secret": "..."}}``. An entry takes
``token_url``, ``client_auth`` (``client_secret_basic``, ``client_secret_post``, ``private_key_jwt``,
``tls_client_auth``; else the catalogue entry's) and any field of the provider's secret (``client_secret``,
``private_key`` as PEM, ``certificate``, ``ca_chain``, ``kid``, ``algorithm``); an unknown key or a field the
method needs and the entry lacks is refused in one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from local.http import PortInUse, check_ports
from local.providers import LOCAL_CREDENTIALS, ProviderEmulator
from local.stack import DUMMY_AWS, PROVIDERS, REGION, LocalStack, StackConfig, caller_credentials
from token_vending import constants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=3000)
    parser.add_argument("--lambda-port", type=int, default=3001)
    parser.add_argument("--aws-port", type=int, default=constants.LOCAL_AWS_PORT)
    parser.add_argument("--provider-port-base", type=int, default=9001,
                        help="port of the first provider's emulator (the next ones follow, in template order)")
    parser.add_argument("--config", type=Path, help="JSON file with real provider URLs and credentials")
    parser.add_argument("--client-auth", action="append", default=[], metavar="PROVIDER=private_key_jwt",
                        help="sign that provider's client assertions with a KMS key in the embedded AWS "
                             "(its emulator verifies them); repeatable")
    parser.add_argument("--refresh-ahead", type=float, default=300.0, metavar="SECONDS",
                        help="interval of the local refresh-ahead schedule (default 300; 0: off)")
    parser.add_argument("--renewals", action=argparse.BooleanOptionalAction, default=None,
                        help="per-token renewal timers: an SQS queue per provider and its event source mapping "
                             "(default: on whenever refresh ahead is)")
    args = parser.parse_args(argv)
    renewals = bool(args.refresh_ahead) if args.renewals is None else args.renewals
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log

    try:
        overrides = read_config(args.config) if args.config else {}
        for route, entry in overrides.items():
            if route in {provider.route for provider in PROVIDERS}:
                real_provider(route, entry)  # refused here, before any port is checked or anything started
    except ConfigError as exc:
        print(f"python -m local: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(overrides) - {provider.route for provider in PROVIDERS})
    if unknown:
        parser.error(f"--config names providers the template does not deploy: {', '.join(unknown)}")
    client_auth = dict(item.split("=", 1) for item in args.client_auth)
    ports = {args.api_port: ("API", "--api-port"), args.lambda_port: ("Lambda Invoke API", "--lambda-port"),
             args.aws_port: ("embedded AWS", "--aws-port")}
    for index, provider in enumerate(PROVIDERS):
        if not overrides.get(provider.route):
            ports.setdefault(args.provider_port_base + index,
                             (f"{provider.route}'s emulator", "--provider-port-base"))
    try:
        check_ports(args.host, ports)  # before anything starts: nothing half-started is left behind
    except PortInUse as exc:
        print(f"python -m local: {exc}", file=sys.stderr)
        return 2
    urls: dict[str, str] = {}
    credentials: dict[str, tuple[str, str]] = {}
    emulators: list[ProviderEmulator] = []
    secrets: dict[str, dict[str, str]] = {}
    provider_env: dict[str, dict[str, str]] = {}
    for index, provider in enumerate(PROVIDERS):
        real = overrides.get(provider.route)
        if real:
            urls[provider.route], secrets[provider.route], method = real_provider(provider.route, real)
            if method:
                provider_env[provider.route] = {constants.CLIENT_AUTH_ENV: method}
            continue
        port = args.provider_port_base + index
        emulator = ProviderEmulator(provider.route, host=args.host, port=port).start()
        emulators.append(emulator)
        urls[provider.route] = emulator.url
        credentials[provider.route] = LOCAL_CREDENTIALS[provider.route]
        if _signs_by_default(provider.route):  # as --client-auth ROUTE=private_key_jwt: a local KMS key signs
            client_auth.setdefault(provider.route, "private_key_jwt")

    stack = LocalStack(StackConfig(host=args.host, api_port=args.api_port, lambda_port=args.lambda_port,
                                   aws_port=args.aws_port, provider_urls=urls, credentials=credentials,
                                   secrets=secrets, provider_env=provider_env,
                                   refresh_ahead_every=args.refresh_ahead or None, renewals=renewals,
                                   client_auth=client_auth,
                                   function_env={"REFRESH_AHEAD_INTERVAL": str(int(args.refresh_ahead or 300)),
                                                 **_passed_through()}))
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        try:
            stack.start()
        except PortInUse as exc:  # taken since the check: still one line, and everything started is stopped
            print(f"python -m local: {exc}", file=sys.stderr)
            return 2
        by_route = {emulator.route: emulator for emulator in emulators}
        for route in client_auth:
            if route in by_route:  # the emulator checks assertions against the key it was registered with
                by_route[route].accept_client_assertions(stack.signing_public_key(route))
        print(f"\nToken vending service running locally (Ctrl-C to stop)\n"
              f"  API             {stack.api_url}{{provider}}  (ApiUrl; AWS_IAM: SigV4 for execute-api, {REGION})\n"
              f"  Lambda Invoke   {stack.lambda_url}  (AWS_ENDPOINT_URL_LAMBDA)\n"
              f"  embedded AWS    {stack.aws_url}  (DynamoDB table {stack.config.table_name}, secrets "
              f"token-vending/local/<provider>)\n"
              f"  providers       {', '.join(f'{r}={u}' for r, u in urls.items())}\n"
              f"  refresh ahead   {_refresh_ahead(args.refresh_ahead, stack)}\n\n"
              f"  try: curl -s --aws-sigv4 \"aws:amz:{REGION}:execute-api\" --user {_user()}{_token_header()} "
              f"{stack.api_url}pyng\n",
              file=sys.stderr, flush=True)
        stopped.wait()
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        stack.stop()
        for emulator in emulators:
            emulator.stop()
    return 0


class ConfigError(Exception):
    """``--config`` cannot be used as written; the message is one line naming the provider and the field."""


def read_config(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: cannot be read as JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"--config {path}: must be a JSON object of provider -> settings")
    return document


def _signs_by_default(route: str) -> bool:
    """Whether ``route``'s catalogue entry authenticates with ``private_key_jwt`` (its emulator then verifies
    assertions signed by the key the local stack creates, as with ``--client-auth``)."""
    from token_vending.catalogue import entry
    from token_vending.profile import ClientAuth

    profile = entry(route)
    return profile is not None and profile.auth is ClientAuth.PRIVATE_KEY_JWT


def real_provider(route: str, entry: Any) -> tuple[str, dict[str, str], str]:
    """A ``--config`` entry as (token URL, the provider's secret document, the client authentication method if
    the entry names one). Its keys are ``token_url``, ``client_auth`` (an RFC 7591 method name, else the catalogue
    entry's) and the secret's own fields (:data:`~token_vending.credentials.ALL_FIELDS`); an unknown key or a
    field the method cannot do without is refused, naming it (never its value)."""
    from token_vending.catalogue import entry as catalogue_entry
    from token_vending.credentials import ALL_FIELDS, required_fields
    from token_vending.profile import AUTH_METHODS, ClientAuth

    if not isinstance(entry, dict):
        raise ConfigError(f"--config: {route} must be an object of settings")
    known = ("token_url", "client_auth", *ALL_FIELDS)
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise ConfigError(f"--config: {route} has unknown field {unknown[0]!r} (known: {', '.join(known)})")
    for name, value in entry.items():
        if not isinstance(value, str):
            raise ConfigError(f"--config: {route}'s {name} must be a string")
    method = entry.get("client_auth", "")
    if method and method not in AUTH_METHODS:
        raise ConfigError(f"--config: {route}'s client_auth must be one of {', '.join(AUTH_METHODS)}")
    profile = catalogue_entry(route)
    auth = AUTH_METHODS[method] if method else profile.auth if profile is not None else ClientAuth.FORM_BODY
    needed = ("token_url", *required_fields(auth, kms_signing=False))
    missing = [name for name in needed if not entry.get(name)]
    if missing:
        named = method or next((name for name, value in AUTH_METHODS.items() if value is auth), auth.value)
        raise ConfigError(f"--config: {route} ({named} client authentication) needs {missing[0]!r}")
    document = {name: entry[name] for name in ALL_FIELDS if entry.get(name)}
    return entry["token_url"], document, method


def _user() -> str:
    """curl's ``--user`` for the credentials the API accepts; never a secret other than the dummy one."""
    (known,) = caller_credentials().values()
    if (known.access_key, known.secret_key) == (DUMMY_AWS["AWS_ACCESS_KEY_ID"], DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]):
        return f"{known.access_key}:{known.secret_key}"
    return '"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"'


def _token_header() -> str:
    """With temporary credentials (``AWS_SESSION_TOKEN``), their session token: the API refuses the key without it."""
    (known,) = caller_credentials().values()
    return ' -H "X-Amz-Security-Token: $AWS_SESSION_TOKEN"' if known.session_token else ""


def _passed_through() -> dict[str, str]:
    """Settings a developer may set in the environment for every function (``REFRESH_AHEAD_IDLE_HOURS``)."""
    return {name: os.environ[name] for name in ("REFRESH_AHEAD_IDLE_HOURS",) if name in os.environ}


def _refresh_ahead(every: float, stack: LocalStack) -> str:
    schedule = f"schedule every {every:g} s" if every else "no schedule"
    timers = (f"per-token renewal timers (SQS queues {stack.config.table_name}-<provider>-renewals)"
              if stack.renewal_queues else "no renewal timers")
    return f"{schedule}; {timers}"


if __name__ == "__main__":
    raise SystemExit(main())
