"""``make local``: the whole service on loopback, without Docker or an AWS account.

* API (``GET /v1/token/{connection}``, SigV4-signed)  http://127.0.0.1:3000/v1/token/ (the stack's ApiUrl)
* Lambda Invoke API (like ``sam local start-lambda``)  http://127.0.0.1:3001
* embedded AWS: DynamoDB + Secrets Manager + SQS (moto)  http://127.0.0.1:4566
* token endpoint emulators                         http://127.0.0.1:9001, 9002, ... (one per connection)

Connections: the template's five (``invoice-cloud``, ``pyng``, ``aria``, ``autopay``, ``alternative-payments``)
plus ``AriaAu`` (Aria's AUS region: an Aria emulator of its own, whose tokens name that region's realm as their
issuer) and ``PyngOrg2`` (a second Pyng organisation with its own credentials and scopes), side by side: the
template's ``Connections`` parameter, each connection with its own function, secret, partition and renewal queue.
The program prints them with their routes when it is up.

``--config local.json`` changes them, as configuration alone changes a deployment: an object of connection ->
its secret's fields. A connection is a name the stack serves (``pyng``, ``AriaAu``) or a new key: a catalogue
key followed by a label (``AutopaySandbox``, ``OAuth2Acme``; the longest catalogue key it starts with names its
provider); ``null`` stops serving one. An entry takes the secret's fields: credentials (``client_id``,
``client_secret``, ``private_key`` as PEM, ``certificate``, ``ca_chain``, ``kid``, ``algorithm``) and settings
(``token_url``, ``client_auth``, ``region``, ``stage``, ``scopes``, ``default_scopes``, ``audience``,
``resource``, ``extra_parameters``, ...). With ``token_url`` the connection calls that endpoint with the entry's
credentials (a field the method needs and the entry lacks is refused); without, an emulator of its provider
stands for the endpoint, accepting the entry's ``client_id``/``client_secret`` (or local ones). An unknown key
or field is refused in one line, exit 2::

    {"pyng": {"token_url": "https://pyng.example/billing/oauth2/token", "client_id": "...", "client_secret": "..."},
     "AriaAu": {"stage": "Future"},
     "OAuth2Acme": {"audience": "https://api.acme.example", "scopes": "billing:read"},
     "PyngOrg2": null}

Refresh ahead runs as deployed, on by default: the schedule invokes every connection's function with
``{"refresh_ahead": true}`` every 300 s (``--refresh-ahead SECONDS``, 0 for off), and each new token arms its
own renewal timer: an SQS message delayed to 10 s before the token's refresh margin, on that connection's queue
in the embedded AWS (``<table>-<connection>-renewals``, with the template's queue properties: a failed renewal
is delivered again after the 150 s visibility timeout), which an emulated event source mapping (the template's:
BatchSize 1, ReportBatchItemFailures) hands to the connection's function.
``--no-renewals`` keeps the schedule alone (it then renews by its interval); the timers follow
``--refresh-ahead`` unless ``--renewals``/``--no-renewals`` says otherwise. A scope set nobody asked for
during ``REFRESH_AHEAD_IDLE_HOURS`` (24, set it in the environment) is left to expire.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.http import PortInUse, check_ports
from local.providers import ProviderEmulator, connection_emulator, local_credentials
from local.stack import (
    DEFAULT_CONNECTIONS,
    DUMMY_AWS,
    LOCAL_CONNECTIONS,
    REGION,
    LocalStack,
    StackConfig,
    caller_credentials,
    connections_parameter,
    deployed,
)
from token_vending import constants
from token_vending.connection_settings import SETTING_FIELDS
from token_vending.credentials import ALL_FIELDS as CREDENTIAL_FIELDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=3000)
    parser.add_argument("--lambda-port", type=int, default=3001)
    parser.add_argument("--aws-port", type=int, default=constants.LOCAL_AWS_PORT)
    parser.add_argument("--provider-port-base", type=int, default=9001,
                        help="port of the first connection's emulator (the next ones follow, in the order of the "
                             "connections)")
    parser.add_argument("--config", type=Path,
                        help="JSON file of connections and their secret's fields (real endpoints, credentials, "
                             "settings, added connections)")
    parser.add_argument("--client-auth", action="append", default=[], metavar="CONNECTION=private_key_jwt",
                        help="sign that connection's client assertions with a KMS key in the embedded AWS "
                             "(its emulator verifies them); repeatable")
    parser.add_argument("--refresh-ahead", type=float, default=300.0, metavar="SECONDS",
                        help="interval of the local refresh-ahead schedule (default 300; 0: off)")
    parser.add_argument("--renewals", action=argparse.BooleanOptionalAction, default=None,
                        help="per-token renewal timers: an SQS queue per connection and its event source mapping "
                             "(default: on whenever refresh ahead is)")
    args = parser.parse_args(argv)
    renewals = bool(args.refresh_ahead) if args.renewals is None else args.renewals
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log

    try:  # refused here, before any port is checked or anything started
        connections = plan_connections(read_config(args.config) if args.config else {})
        client_auth = dict(_client_auth_option(item, connections) for item in args.client_auth)
    except ConfigError as exc:
        print(f"python -m local: {exc}", file=sys.stderr)
        return 2
    ports = {args.api_port: ("API", "--api-port"), args.lambda_port: ("Lambda Invoke API", "--lambda-port"),
             args.aws_port: ("embedded AWS", "--aws-port")}
    for index, served in enumerate(connections):
        if served.emulated:
            ports.setdefault(args.provider_port_base + index, (f"{served.name}'s emulator", "--provider-port-base"))
    try:
        check_ports(args.host, ports)  # before anything starts: nothing half-started is left behind
    except PortInUse as exc:
        print(f"python -m local: {exc}", file=sys.stderr)
        return 2

    config = StackConfig(host=args.host, api_port=args.api_port, lambda_port=args.lambda_port,
                         aws_port=args.aws_port, parameters=connections_parameter(c.key for c in connections),
                         refresh_ahead_every=args.refresh_ahead or None, renewals=renewals,
                         client_auth=client_auth,
                         function_env={"REFRESH_AHEAD_INTERVAL": str(int(args.refresh_ahead or 300)),
                                       **_passed_through()})
    emulators: dict[str, ProviderEmulator] = {}
    try:
        for index, served in enumerate(connections):
            if served.emulated:
                emulator = served.emulator(host=args.host, port=args.provider_port_base + index).start()
                emulators[served.name] = emulator
                config.provider_urls[served.name] = emulator.url
                if _signs_by_default(served) and served.name not in client_auth:
                    client_auth[served.name] = "private_key_jwt"  # as --client-auth NAME=private_key_jwt
            else:
                config.provider_urls[served.name] = served.token_url
                if served.client_auth and not served.added:  # <Key>ClientAuth, as the parameter would give it
                    config.provider_env[served.name] = {constants.CLIENT_AUTH_ENV: served.client_auth}
            config.secrets[served.name] = served.secret(
                kms_signing=client_auth.get(served.name) == "private_key_jwt",
                emulator_url=config.provider_urls[served.name] if served.emulated else "")
    except BaseException:
        for emulator in emulators.values():
            emulator.stop()
        raise
    stack = LocalStack(config)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        try:
            stack.start()
        except PortInUse as exc:  # taken since the check: still one line, and everything started is stopped
            print(f"python -m local: {exc}", file=sys.stderr)
            return 2
        for name in client_auth:
            if name in emulators:  # the emulator checks assertions against the key it was registered with
                emulators[name].accept_client_assertions(stack.signing_public_key(name))
        print(f"\nToken vending service running locally (Ctrl-C to stop)\n"
              f"  API             {stack.api_url}{{connection}}  (ApiUrl; AWS_IAM: SigV4 for execute-api, "
              f"{REGION})\n"
              f"  Lambda Invoke   {stack.lambda_url}  (AWS_ENDPOINT_URL_LAMBDA)\n"
              f"  embedded AWS    {stack.aws_url}  (DynamoDB table {stack.config.table_name}, secrets "
              f"{stack.config.secret_prefix}/<connection>)\n"
              f"  refresh ahead   {_refresh_ahead(args.refresh_ahead, stack)}\n"
              f"  connections     ({len(connections)}: Connections={config.parameters['Connections']})\n"
              f"{_connection_lines(connections, stack, emulators)}\n"
              f"  try: curl -s --aws-sigv4 \"aws:amz:{REGION}:execute-api\" --user {_user()}{_token_header()} "
              f"{stack.api_url}pyng\n",
              file=sys.stderr, flush=True)
        stopped.wait()
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        stack.stop()
        for emulator in emulators.values():
            emulator.stop()
    return 0


class ConfigError(Exception):
    """``--config`` cannot be used as written; the message is one line naming the connection and the field."""


KNOWN_FIELDS: tuple[str, ...] = ("token_url", "client_auth",
                                 *(name for name in SETTING_FIELDS if name not in ("token_url", "client_auth")),
                                 *CREDENTIAL_FIELDS)
"""What a ``--config`` entry may hold: the fields of a connection's secret."""


def read_config(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: cannot be read as JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"--config {path}: must be a JSON object of connection -> its secret's fields")
    return document


@dataclass
class Served:
    """One connection ``make local`` serves: its name and key, and the fields of its secret that configuration
    gives (``entry``); an emulator stands for its endpoint unless the entry names a ``token_url``."""

    name: str
    key: str
    entry: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    """Its function's environment as deployed (the five default connections' parameters: ``REGION``...)."""

    @property
    def added(self) -> bool:
        """A connection of its own key (not one named as its catalogue entry): its settings are in its secret."""
        return self.name == self.key

    @property
    def emulated(self) -> bool:
        return not self.entry.get("token_url")

    @property
    def token_url(self) -> str:
        return str(self.entry.get("token_url", ""))

    @property
    def client_auth(self) -> str:
        return str(self.entry.get("client_auth", ""))

    @property
    def provider(self) -> str:
        from token_vending.catalogue import connection

        profile = connection(self.name)
        return profile.provider if profile is not None else self.name

    def credentials(self) -> tuple[str, str]:
        """The client the emulator registers: the entry's, else the local pair derived from the name."""
        default_id, default_secret = local_credentials(self.name)
        return (str(self.entry.get("client_id") or default_id), str(self.entry.get("client_secret") or default_secret))

    def settings(self) -> dict[str, Any]:
        """The entry's setting fields (``token_url`` and ``client_auth`` included)."""
        return {name: value for name, value in self.entry.items() if name in SETTING_FIELDS}

    def emulator(self, *, host: str, port: int) -> ProviderEmulator:
        client_id, client_secret = self.credentials()
        region = {"region": self.environment.get(constants.REGION_ENV, ""),
                  "stage": self.environment.get(constants.STAGE_ENV, ""), **self.settings()}
        return connection_emulator(self.name, region, host=host, port=port, client_id=client_id,
                                   client_secret=client_secret)

    def secret(self, *, kms_signing: bool, emulator_url: str = "") -> dict[str, Any]:
        """Its secret: for a real endpoint the entry (:func:`real_provider`'s document, and for an added
        connection its ``token_url`` and ``client_auth`` too: it has no parameters); for an emulated one the
        emulator's client (no ``client_secret`` when a KMS key signs: the stack names the key) and the entry's
        settings, with the emulator's URL as ``token_url`` where the environment's would not do: for an added
        connection (it has none) and where ``region`` or ``stage`` choose a documented endpoint (they win over
        the environment's URL)."""
        if not self.emulated:
            _, real, method = real_provider(self.name, self.entry)
            if self.added:
                return {"token_url": self.token_url, **({"client_auth": method} if method else {}), **real}
            return real
        client_id, client_secret = self.credentials()
        settings = self.settings()
        if settings.get("client_auth") == "private_key_jwt":
            del settings["client_auth"]  # the stack's KMS key signs: it sets the method with the key
        document: dict[str, Any] = {"client_id": client_id, **({} if kms_signing else {"client_secret": client_secret}),
                                    **settings}
        if emulator_url and (self.added or "region" in settings or "stage" in settings):
            document["token_url"] = emulator_url
        return document


def plan_connections(config: dict[str, Any]) -> list[Served]:
    """The connections to serve, in order: the template's default ones, :data:`LOCAL_CONNECTIONS`, then those
    ``config`` adds; ``config`` entries replace or extend their fields (``null``: not served). Every entry is
    checked here (names, fields, types, a real endpoint's credentials), so a mistake is one line before anything
    starts."""
    from token_vending.catalogue import KEYS, connection, connection_name

    keys: dict[str, str] = {}
    """Connection name -> its key."""
    planned: dict[str, dict[str, Any] | None] = {}
    for key in DEFAULT_CONNECTIONS:
        keys[connection_name(key)] = key
        planned[connection_name(key)] = {}
    for key, settings in LOCAL_CONNECTIONS.items():
        keys[key] = key
        planned[key] = dict(settings)
    for given, entry in config.items():
        name = connection_name(given)  # a catalogue key (``Pyng``) names its entry's connection (``pyng``)
        profile = connection(name)
        if profile is None or (profile.name == profile.provider and name not in planned):  # ``OAuth2``: no label
            raise ConfigError(f"--config: {given} is no connection: a name the stack serves "
                              f"({', '.join(planned)}) or a new key, one of {', '.join(KEYS)} followed by a label "
                              "(AriaAu, OAuth2Acme)")
        keys[name] = profile.key
        if entry is None:
            planned[name] = None
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"--config: {name} must be an object of its secret's fields (or null)")
        _check_entry(name, entry)
        planned[name] = {**(planned.get(name) or {}), **entry}
    served = [Served(name, keys[name], entry) for name, entry in planned.items() if entry is not None]
    if not served:
        raise ConfigError("--config: leaves no connection to serve")
    parameters = connections_parameter(item.key for item in served)
    try:
        environments = {name: connection.environment for name, connection in deployed(parameters)[0].items()}
    except ValueError as exc:  # the Connections pattern (a label of at most 40 characters)
        raise ConfigError(f"--config: {exc}") from None
    for item in served:
        item.environment = environments[item.name]
        if not item.emulated:
            real_provider(item.name, item.entry)
        elif item.client_auth and item.client_auth not in ("private_key_jwt", "client_secret_basic",
                                                           "client_secret_post"):
            raise ConfigError(f"--config: {item.name} ({item.client_auth} client authentication) needs 'token_url' "
                              "(an emulator takes a client secret or a private_key_jwt assertion)")
    return served


def _check_entry(name: str, entry: dict[str, Any]) -> None:
    """Known fields of the right JSON types (the layer checks their values when it reads the secret)."""
    from token_vending.profile import AUTH_METHODS

    unknown = sorted(set(entry) - set(KNOWN_FIELDS))
    if unknown:
        raise ConfigError(f"--config: {name} has unknown field {unknown[0]!r} (known: {', '.join(KNOWN_FIELDS)})")
    for field_name, value in entry.items():
        if field_name == "resource":
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            kind = "a string or a list of strings"
        elif field_name == "extra_parameters":
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            kind = "an object of strings"
        else:
            ok, kind = isinstance(value, str), "a string"
        if not ok:
            raise ConfigError(f"--config: {name}'s {field_name} must be {kind}")
    method = entry.get("client_auth", "")
    if method and method not in AUTH_METHODS:
        raise ConfigError(f"--config: {name}'s client_auth must be one of {', '.join(AUTH_METHODS)}")


def _client_auth_option(item: str, connections: list[Served]) -> tuple[str, str]:
    """``--client-auth NAME=private_key_jwt`` for a served connection."""
    name, _, method = item.partition("=")
    if name not in {served.name for served in connections} or method != "private_key_jwt":
        raise ConfigError(f"--client-auth {item}: give CONNECTION=private_key_jwt for a connection served "
                          f"({', '.join(served.name for served in connections)})")
    return name, method


def _signs_by_default(served: Served) -> bool:
    """Whether the connection authenticates with ``private_key_jwt`` (its catalogue entry's method, or its
    entry's ``client_auth``): its emulator then verifies assertions signed by the key the local stack creates,
    as with ``--client-auth``."""
    from token_vending.catalogue import connection
    from token_vending.profile import ClientAuth

    if served.client_auth:
        return served.client_auth == "private_key_jwt"
    profile = connection(served.name)
    return profile is not None and profile.auth is ClientAuth.PRIVATE_KEY_JWT


def real_provider(route: str, entry: Any) -> tuple[str, dict[str, Any], str]:
    """A ``--config`` entry with a real endpoint as (token URL, the connection's secret document but for
    ``token_url`` and ``client_auth``, the client authentication method if the entry names one). Its keys are the
    secret's fields (:data:`KNOWN_FIELDS`); an unknown key or a field the method cannot do without is refused,
    naming it (never its value)."""
    from token_vending.catalogue import connection
    from token_vending.credentials import required_fields
    from token_vending.profile import AUTH_METHODS, ClientAuth

    if not isinstance(entry, dict):
        raise ConfigError(f"--config: {route} must be an object of settings")
    _check_entry(route, entry)
    method = entry.get("client_auth", "")
    profile = connection(route)
    auth = AUTH_METHODS[method] if method else profile.auth if profile is not None else ClientAuth.FORM_BODY
    needed = ("token_url", *required_fields(auth, kms_signing=False))
    missing = [name for name in needed if not entry.get(name)]
    if missing:
        named = method or next((name for name, value in AUTH_METHODS.items() if value is auth), auth.value)
        raise ConfigError(f"--config: {route} ({named} client authentication) needs {missing[0]!r}")
    document = {name: value for name, value in entry.items()
                if name not in ("token_url", "client_auth") and value not in ("", [], {})}
    return entry["token_url"], document, method


def _connection_lines(connections: list[Served], stack: LocalStack, emulators: dict[str, ProviderEmulator]) -> str:
    """One line per connection: its route, its provider, and what stands for its endpoint (the emulator's URL and
    client, or the real URL)."""
    lines = []
    width = max(len(served.name) for served in connections)
    for served in connections:
        emulator = emulators.get(served.name)
        where = (f"emulator {emulator.url} (client_id {emulator.credentials[0]})" if emulator is not None
                 else served.token_url)
        region = served.settings().get("region") or served.environment.get(constants.REGION_ENV)
        stage = served.settings().get("stage") or served.environment.get(constants.STAGE_ENV)
        regional = f", region {region}/{stage}" if region and stage else ""
        lines.append(f"    {stack.api_url}{served.name:<{width}}  {served.provider}{regional}: {where}")
    return "\n".join(lines)


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
    timers = (f"per-token renewal timers (SQS queues {stack.config.table_name}-<connection>-renewals)"
              if stack.renewal_queues else "no renewal timers")
    return f"{schedule}; {timers}"


if __name__ == "__main__":
    raise SystemExit(main())
