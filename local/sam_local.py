"""``make sam-local``: the real ``sam local start-api`` (and ``start-lambda``) on this template, with the embedded
AWS and the provider emulators of ``make local``, reachable from SAM's containers.

What runs where:

* the connections ``env.json`` and ``events/`` describe (:data:`local.generate.PARAMETERS`: the template's
  defaults; SAM is given any other value, ``--parameter-overrides``), an emulator each;
* the embedded AWS (moto: DynamoDB table ``token-vending-local``, secrets ``token-vending/local/<connection>``) on
  port 4566 and the emulators on 9001, 9002, ... (one per connection, in that order) listen on the Docker
  bridge's gateway (172.17.0.1 by default), never on the outward interface: containers reach them as
  ``host.docker.internal`` (``--add-host host.docker.internal:host-gateway``), as the committed ``env.json`` says;
* ``sam local start-lambda`` on the gateway's port 3001: the token API function's ``AWS_ENDPOINT_URL_LAMBDA``
  (``env.json``) sends its provider invocations there, so they run in SAM's containers too;
* when one of those ports is taken (``make local``, a LocalStack on 4566, another checkout's tests), every
  service gets a free port instead, and SAM is given ``.aws-sam-local/env.json``: the committed ``env.json`` with
  only those ports changed (:func:`env_vars`). The tests always use free ports.
* ``sam local start-api`` on http://127.0.0.1:3000 (``--api-port``).

SAM runs the template built for this machine's architecture: :func:`local_template` is template.yaml with the
architecture (``Architectures``, ``CompatibleArchitectures``, ``BuildArchitecture``) changed and nothing else;
template.yaml deploys arm64. The Lambda base image comes from ``local/sam_image.sh`` (the official one, or an
offline stand-in). Containers stay warm (``--warm-containers LAZY``): a first request to a function takes
seconds, the next ones milliseconds. ``sam local start-api`` does not check SigV4 signatures.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from local.lambda_service import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from local.providers import EmulatorFleet
    from local.stack import LocalStack

SAM = REPO_ROOT / ".tools" / "sam" / "bin" / "sam"
TEMPLATE = REPO_ROOT / "template.yaml"
LOCAL_TEMPLATE = REPO_ROOT / ".aws-sam-local.template.yaml"
"""The derived template sits beside template.yaml: its ``CodeUri``/``ContentUri`` are relative to it."""
BUILD_DIR = REPO_ROOT / ".aws-sam-local" / "build"
CACHE_DIR = REPO_ROOT / ".aws-sam-local" / "cache"
ENV_JSON = REPO_ROOT / "env.json"
ENV_VARS = REPO_ROOT / ".aws-sam-local" / "env.json"
"""The env-vars file SAM is given: ``env.json`` with the ports this run's services listen on."""
IMAGE_SCRIPT = REPO_ROOT / "local" / "sam_image.sh"
AWS_PORT = 4566
LAMBDA_PORT = 3001
EMULATOR_PORT_BASE = 9001
DOCKER_HOST = "host.docker.internal"
_DOCKER_HOST_PORT = re.compile(rf"(?<=//{re.escape(DOCKER_HOST)}:)(\d+)\b")
_ARCHITECTURE_LINE = re.compile(r"^(\s*(?:Architectures|CompatibleArchitectures): \[)arm64(\])|"
                                r"(BuildArchitecture: )arm64\b", re.MULTILINE)


def local_architecture() -> str:
    """Lambda's name for this machine's architecture."""
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


def local_template(architecture: str | None = None) -> str:
    """template.yaml with only its architecture changed to ``architecture`` (this machine's by default)."""
    architecture = architecture or local_architecture()

    def swap(match: re.Match[str]) -> str:
        if match.group(3):
            return f"{match.group(3)}{architecture}"
        return f"{match.group(1)}{architecture}{match.group(2)}"

    return _ARCHITECTURE_LINE.sub(swap, TEMPLATE.read_text())


def sam_env() -> dict[str, str]:
    """SAM CLI's environment: no telemetry, the template's loops expanded, python3.13 on PATH for ``sam build``,
    dummy credentials (nothing reaches AWS)."""
    env = dict(os.environ)
    try:  # pyenv's 3.13.0 if present (as the Makefile), else what PATH has
        python: str | None = subprocess.run(["pyenv", "which", "python3.13"], capture_output=True, text=True,
                                            check=True, env={**env, "PYENV_VERSION": "3.13.0"}).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        python = shutil.which("python3.13")
    if python:
        env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"SAM_CLI_TELEMETRY": "0", "SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS": "1",
                "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", "testing"),
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1")})
    env.pop("AWS_ENDPOINT_URL", None)
    return env


def engine_problem() -> str | None:
    """Why ``sam local`` cannot run here (no engine, no image), or ``None``."""
    if not SAM.exists():
        return f"{SAM} is missing (make deps)"
    result = subprocess.run(["bash", str(IMAGE_SCRIPT), "--check"], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip() or "sam_image.sh --check"


def ensure_engine() -> None:
    """A running engine and the base image (``local/sam_image.sh``: installs, starts, builds as needed)."""
    subprocess.run(["bash", str(IMAGE_SCRIPT)], check=True)


def bridge_gateway() -> str:
    """The Docker bridge's gateway address: where containers reach the host (``host-gateway``)."""
    try:
        output = subprocess.run(["docker", "network", "inspect", "bridge"], capture_output=True, text=True,
                                check=True, timeout=30).stdout
        for config in json.loads(output)[0]["IPAM"]["Config"]:
            if config.get("Gateway"):
                return str(config["Gateway"])
            if config.get("Subnet"):
                return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        pass
    return "172.17.0.1"


def parameter_overrides() -> list[str]:
    """SAM CLI's option giving the template the parameters ``env.json`` was generated with (none by default)."""
    from local.generate import PARAMETERS

    if not PARAMETERS:
        return []
    return ["--parameter-overrides", " ".join(f"{name}={value}" for name, value in PARAMETERS.items())]


def build(architecture: str | None = None) -> Path:
    """``sam build`` of :func:`local_template` (cached between runs) with :func:`parameter_overrides`; returns the
    built template."""
    LOCAL_TEMPLATE.write_text(local_template(architecture))
    subprocess.run([str(SAM), "build", "--template-file", str(LOCAL_TEMPLATE), "--build-dir", str(BUILD_DIR),
                    "--cache-dir", str(CACHE_DIR), "--cached", "--parallel", *parameter_overrides()],
                   check=True, cwd=REPO_ROOT, env=sam_env(), stdout=sys.stderr)
    return BUILD_DIR / "template.yaml"


def committed_ports() -> dict[str, int]:
    """The ports ``env.json`` names: ``aws``, ``lambda`` and each connection's name (9001, 9002, ... in the order of
    the connections)."""
    from local.generate import CONNECTIONS

    return {"aws": AWS_PORT, "lambda": LAMBDA_PORT,
            **{provider.route: EMULATOR_PORT_BASE + index for index, provider in enumerate(CONNECTIONS)}}


def ports_free(host: str, ports: Iterable[int]) -> bool:
    """Whether every port can be bound on ``host`` now (a LocalStack on 0.0.0.0:4566 takes 172.17.0.1:4566 too)."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no owner
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def env_vars(ports: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """The committed ``env.json`` with every ``host.docker.internal`` port moved to the one the service listens on
    in this run (``ports`` as :func:`committed_ports` names them); nothing else changes. A port no local service
    has is an error rather than a function left pointing at whatever else listens there."""
    moved = {committed: ports[name] for name, committed in committed_ports().items()}

    def repoint(match: re.Match[str]) -> str:
        port = int(match.group(1))
        if port not in moved:
            raise ValueError(f"{ENV_JSON.name} names {DOCKER_HOST}:{port}, which no local service listens on")
        return str(moved[port])

    committed: dict[str, dict[str, str]] = json.loads(ENV_JSON.read_text())
    return {function: {name: _DOCKER_HOST_PORT.sub(repoint, value) for name, value in variables.items()}
            for function, variables in committed.items()}


def write_env_vars(ports: Mapping[str, int], path: Path = ENV_VARS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(env_vars(ports), indent=2) + "\n")
    return path


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"no port in {url}")
    return port


def start_backend(host: str, ports: Mapping[str, int] | None = None) -> tuple[LocalStack, EmulatorFleet]:
    """The embedded AWS (table and secrets as ``env.json`` names them) and the connections' emulators on ``host``,
    on ``ports`` (named as :func:`committed_ports` names them; free ports where not given). An added connection's
    secret names its emulator as SAM's containers reach it (``host.docker.internal``), as its settings; a default
    connection's ``TOKEN_URL`` is ``env.json``'s. :func:`backend_ports` says where they listen."""
    from local.generate import CONNECTIONS, PARAMETERS
    from local.providers import EmulatorFleet, connection_emulator, local_credentials
    from local.stack import LOCAL_CONNECTIONS, LocalStack, StackConfig

    ports = ports or {}
    fleet = EmulatorFleet.of(connection_emulator(
        provider.route, LOCAL_CONNECTIONS.get(provider.route) or provider.environment, host=host,
        port=ports.get(provider.route, 0)) for provider in CONNECTIONS).start()
    try:
        secrets: dict[str, dict[str, Any]] = {}
        for provider in CONNECTIONS:
            client_id, client_secret = local_credentials(provider.route)
            emulator = fleet[provider.route]
            secrets[provider.route] = {"client_id": client_id, "client_secret": client_secret}
            if provider.added:
                secrets[provider.route] |= {**LOCAL_CONNECTIONS.get(provider.route, {}),
                                            "token_url": f"http://{DOCKER_HOST}:{emulator.port}{emulator.token_path}"}
        stack = LocalStack(StackConfig(host=host, aws_port=ports.get("aws", 0), api_port=0, lambda_port=0,
                                       provider_urls=fleet.urls(), secrets=secrets,
                                       parameters=dict(PARAMETERS))).start()
    except BaseException:
        fleet.stop()
        raise
    return stack, fleet


def backend_ports(stack: LocalStack, fleet: EmulatorFleet) -> dict[str, int]:
    """Where the embedded AWS (``aws``) and each connection's emulator (by name) listen."""
    return {"aws": _port(stack.aws_url), **{route: _port(url) for route, url in fleet.urls().items()}}


def _sam_containers() -> set[str]:
    """SAM's Lambda containers that run this checkout's build (SAM bind-mounts a function's built code from
    :data:`BUILD_DIR`): another checkout's tests or ``make sam-local`` started theirs, not ours to remove."""
    listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", "label=sam.cli.container.type=lambda"],
                            capture_output=True, text=True, check=False, timeout=60).stdout.split()
    if not listed:
        return set()
    # One that went away between the two commands is missing from the output (and inspect exits 1).
    inspected = subprocess.run(["docker", "inspect", "--format", "{{.Id}} {{json .Mounts}}",
                                *listed], capture_output=True, text=True, check=False, timeout=60).stdout
    build = BUILD_DIR.resolve()
    ours = set()
    for line in inspected.splitlines():
        container, _, mounts = line.partition(" ")
        if any(Path(mount.get("Source", "/")).resolve().is_relative_to(build) for mount in json.loads(mounts or "[]")):
            ours.add(container)
    return ours


@dataclass
class SamLocal:
    """``sam local start-api``/``start-lambda`` processes on a built template; :meth:`stop` ends them and removes
    the containers they left."""

    template: Path
    env_vars: Path = ENV_JSON
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    _before: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._before = _sam_containers()

    def options(self) -> list[str]:
        return ["--template", str(self.template), "--env-vars", str(self.env_vars), "--skip-pull-image",
                "--add-host", f"{DOCKER_HOST}:host-gateway", *parameter_overrides()]

    def invoke(self, function: str, event: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``sam local invoke``: the function's result on stdout (its logs on stderr)."""
        return subprocess.run([str(SAM), "local", "invoke", function, "--event", str(event), *self.options()],
                              capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=sam_env(),
                              timeout=timeout)

    def start(self, command: str, host: str, port: int, log: Any = None, timeout: float = 120) -> str:
        """``sam local <command>`` (``start-api``/``start-lambda``) on ``host``:``port``, warm containers; returns
        its URL once it accepts connections."""
        process = subprocess.Popen(
            [str(SAM), "local", command, "--host", host, "--port", str(port), "--warm-containers", "LAZY",
             *self.options()],
            cwd=REPO_ROOT, env=sam_env(), stdout=log or sys.stderr, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"sam local {command} exited with {process.returncode}")
            try:
                socket.create_connection((host, port), timeout=1).close()
                return f"http://{host}:{port}"
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"sam local {command} did not listen on {host}:{port}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # SAM stops its warm containers on Ctrl-C
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
        left = _sam_containers() - self._before
        if left:
            subprocess.run(["docker", "rm", "-f", *sorted(left)], capture_output=True, check=False, timeout=120)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.sam_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=None,
                        help="port of sam local start-api on 127.0.0.1 (default 3000, or a free one if taken)")
    args = parser.parse_args(argv)
    api_port = args.api_port
    if api_port is None:  # make local serves 127.0.0.1:3000 too
        api_port = 3000 if ports_free("127.0.0.1", [3000]) else free_port("127.0.0.1")
    ensure_engine()
    template = build()
    gateway = bridge_gateway()
    committed = committed_ports()
    fixed = ports_free(gateway, committed.values())
    stack, fleet = start_backend(gateway, committed if fixed else None)
    lambda_port = LAMBDA_PORT if fixed else free_port(gateway)
    env_file = write_env_vars({**backend_ports(stack, fleet), "lambda": lambda_port})
    sam = SamLocal(template, env_vars=env_file)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        lambda_url = sam.start("start-lambda", gateway, lambda_port)
        api_url = sam.start("start-api", "127.0.0.1", api_port)
        print(f"\nsam local running (Ctrl-C to stop)\n"
              f"  API (sam local start-api)        {api_url}/token/{{provider}}  (no SigV4 check)\n"
              f"  Lambda (sam local start-lambda)  {lambda_url}\n"
              f"  embedded AWS                     {stack.aws_url}\n"
              f"  connections                      {', '.join(f'{r}={u}' for r, u in fleet.urls().items())}\n"
              f"  env vars (sam local --env-vars)  {env_file.relative_to(REPO_ROOT)}"
              f"{'' if fixed else '  (ports taken: free ones chosen, not those of env.json)'}\n\n"
              f"  try: curl -s {api_url}/token/pyng   (the first request to a function starts its container)\n",
              file=sys.stderr, flush=True)
        stopped.wait()
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        sam.stop()
        stack.stop()
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
