"""`make local`'s program as a user runs it: it answers on the API port, serves its connections side by side
(the five, AriaAu and PyngOrg2; more or fewer with ``--config``), and Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from local.lambda_service import REPO_ROOT
from local.providers import decode_jwt, local_credentials
from local.stack import DEFAULT_CONNECTIONS, LOCAL_CONNECTIONS, PYNG_SCOPES
from tests.support.authlib_server import AuthlibTokenServer, RegisteredClient
from tests.support.dynamodb_local import free_port
from tests.support.signing import signed_get

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


def free_run_of_ports(count: int, avoid: set[int]) -> int:
    """A first port such that it and the next ``count - 1`` are all free now (the emulators' ports)."""
    for _ in range(200):
        base = free_port()
        ports = range(base, base + count)
        if avoid.isdisjoint(ports) and all(_bindable(port) for port in ports):
            return base
    raise RuntimeError("no run of free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


SERVED = len(DEFAULT_CONNECTIONS) + len(LOCAL_CONNECTIONS)
"""How many connections (and emulators) ``make local`` serves by default."""


def test_local_service_answers_and_stops_cleanly_on_ctrl_c() -> None:
    api, lam, aws = free_port(), free_port(), free_port()
    base = free_run_of_ports(SERVED, avoid={api, lam, aws})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "token_vending")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--api-port", str(api), "--lambda-port", str(lam), "--aws-port", str(aws),
         "--provider-port-base", str(base)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        response = None
        while time.monotonic() < deadline:
            try:
                response = signed_get(f"http://127.0.0.1:{api}/v1/token/pyng", timeout=30)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        if response is None:
            process.kill()
            pytest.fail(f"the local API never answered:\n{process.communicate(timeout=10)[0]}")
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "Bearer"
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        assert len(children) >= 2  # the token API's and Pyng's execution environments
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert "stopping" in output
    assert f"API             http://127.0.0.1:{api}/v1/token/" in output  # the stack's ApiUrl, as deployed
    # Nothing is left listening or running.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{api}/v1/token/pyng", timeout=5)
    time.sleep(0.5)
    for pid in children:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower(), f"process {pid} outlived the runner"


@pytest.mark.parametrize(("which", "option", "what"), [
    ("api", "--api-port", "API"), ("lambda", "--lambda-port", "Lambda Invoke API"),
    ("aws", "--aws-port", "embedded AWS"), ("emulator", "--provider-port-base", "emulator"),
])
def test_a_port_in_use_is_one_line_naming_it_and_nothing_starts(which: str, option: str, what: str) -> None:
    """A second ``make local`` (or anything else on a port it needs) is told which port, by whom, and how to move
    it: exit 2, no traceback, and nothing left listening on the other ports."""
    ports = {"api": free_port(), "lambda": free_port(), "aws": free_port()}
    ports["emulator"] = free_run_of_ports(SERVED, avoid=set(ports.values()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "token_vending")])}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[which]))
        holder.listen()
        finished = subprocess.run(
            [sys.executable, "-m", "local", "--api-port", str(ports["api"]), "--lambda-port", str(ports["lambda"]),
             "--aws-port", str(ports["aws"]), "--provider-port-base", str(ports["emulator"])],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "in use" in line]
    assert f"port {ports[which]} (" in line
    assert what in line
    assert f"pid {os.getpid()} " in line  # the holder, found in /proc: this test's own process
    assert f"stop it or pass {option}" in line
    assert all(_bindable(port) for port in ports.values() if port != ports[which])


@contextlib.contextmanager
def make_local(*options: str, emulators: int = SERVED) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``python -m local`` on free ports, up (its API answers); yields the process, its ``ApiUrl`` and, once the
    block ends, everything it printed (it is stopped with Ctrl-C's signal)."""
    api, lam, aws = free_port(), free_port(), free_port()
    base = free_run_of_ports(emulators, avoid={api, lam, aws})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "token_vending")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "local", "--api-port", str(api), "--lambda-port", str(lam), "--aws-port", str(aws),
         "--provider-port-base", str(base), *options], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    url = f"http://127.0.0.1:{api}/v1/token/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                signed_get(f"{url}nobody", timeout=30)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    pytest.fail(f"the local API never answered:\n{process.communicate(timeout=10)[0]}")
                time.sleep(0.5)
        yield process, url, printed
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=10)
        printed.extend(output.splitlines())


def test_aria_au_and_pyng_org2_are_served_beside_aria_and_pyng_each_from_its_own_region_and_credentials() -> None:
    """AriaAu's tokens come from an Aria emulator standing for the AUS region (its realm is their issuer), aria's
    from the US one; PyngOrg2's from Pyng with its own client and its own default scope, pyng's with pyng's."""
    with make_local() as (_, url, printed):
        tokens = {}
        for connection in ("aria", "AriaAu", "pyng", "PyngOrg2"):
            response = signed_get(f"{url}{connection}", timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["provider"] == connection
            tokens[connection] = response.json()
        missing = signed_get(f"{url}PyngOrg3", timeout=60)
        assert missing.status_code == 404, missing.text
    aria, aria_au = (decode_jwt(tokens[name]["access_token"]) for name in ("aria", "AriaAu"))
    assert aria["iss"] == "https://kauth.ariasystems.net/realms/aria"  # US/Prod, its documented realm
    assert aria_au["iss"] == "https://kauth.prod.aus.ariasystems.net/realms/aria"  # AUS/Prod
    assert (aria["azp"], aria_au["azp"]) == (local_credentials("aria")[0], local_credentials("AriaAu")[0])
    assert tokens["pyng"]["scope"] == " ".join(sorted(PYNG_SCOPES.split()))
    assert tokens["PyngOrg2"]["scope"] == LOCAL_CONNECTIONS["PyngOrg2"]["default_scopes"]
    assert tokens["pyng"]["access_token"] != tokens["PyngOrg2"]["access_token"]
    text = "\n".join(printed)
    assert "Traceback" not in text
    # The emulators' log: who asked, by client_id (never a secret), each connection its own.
    for connection in ("aria", "AriaAu", "pyng", "PyngOrg2"):
        client_id, secret = local_credentials(connection)
        assert any(line.split()[3:4] == [connection] and line.endswith(f"-> 200 (client {client_id})")
                   for line in printed), connection
        assert secret not in text
    # The connections it serves, with their routes and what stands for each endpoint.
    assert "Connections=InvoiceCloud,Pyng,Aria,Autopay,AlternativePayments,AriaAu,PyngOrg2" in text
    routes = [line.split()[0] for line in printed if line.startswith(f"    {url}")]
    assert routes == [f"{url}{name}" for name in ("invoice-cloud", "pyng", "aria", "autopay", "alternative-payments",
                                                  "AriaAu", "PyngOrg2")]
    assert any(line.startswith(f"    {url}AriaAu ") and "aria, region AUS/Prod" in line for line in printed)


def test_a_config_file_adds_and_removes_connections(tmp_path: Path) -> None:
    """``--config``: an ``OAuth2Acme`` against a real endpoint (Authlib's server, which requires its audience),
    an ``AutopaySandbox`` an emulator stands for (with the credentials the file gives), and ``PyngOrg2: null``
    not served: configuration alone."""
    audience = "https://api.acme.example"
    with AuthlibTokenServer([RegisteredClient("acme-client", "acme-secret", frozenset({"billing:read"}))],
                            api_audience=audience) as server:
        config = tmp_path / "local.json"
        config.write_text(json.dumps({
            "OAuth2Acme": {"token_url": server.url, "client_id": "acme-client", "client_secret": "acme-secret",
                           "audience": audience, "scopes": "billing:read"},
            "AutopaySandbox": {"client_id": "sandbox-client", "client_secret": "sandbox-secret"},
            "PyngOrg2": None,
        }))
        with make_local("--config", str(config), emulators=SERVED + 1) as (_, url, printed):
            acme = signed_get(f"{url}OAuth2Acme", timeout=60)
            sandbox = signed_get(f"{url}AutopaySandbox", timeout=60)
            gone = signed_get(f"{url}PyngOrg2", timeout=60)
        assert acme.status_code == 200, acme.text
        [issued] = server.issued
        assert (issued["access_token"], issued["client_id"], issued["audience"]) == (
            acme.json()["access_token"], "acme-client", audience)
    assert sandbox.status_code == 200, sandbox.text
    assert decode_jwt(sandbox.json()["access_token"])["azp"] == "sandbox-client"
    assert gone.status_code == 404, gone.text
    text = "\n".join(printed)
    assert "Connections=InvoiceCloud,Pyng,Aria,Autopay,AlternativePayments,AriaAu,OAuth2Acme,AutopaySandbox" in text
    assert any(line.startswith(f"    {url}OAuth2Acme ") and server.url in line for line in printed)
    assert "acme-secret" not in text
    assert "sandbox-secret" not in text


@pytest.mark.parametrize(("config", "message"), [
    ({"PyngNope!": {}}, "PyngNope! is no connection"),
    ({"Paypal": {}}, "Paypal is no connection"),
    ({"OAuth2": {}}, "OAuth2 is no connection"),  # a catalogue key outside the five needs a label
    ({"OAuth2Acme": {"token_url": "https://login.example.test/token", "client_id": "c"}},
     "OAuth2Acme (client_secret_basic client authentication) needs 'client_secret'"),
    ({"AriaAu": {"regoin": "AUS"}}, "AriaAu has unknown field 'regoin'"),
    ({"OAuth2Acme": {"resource": 5}}, "OAuth2Acme's resource must be a string or a list of strings"),
    ({"OAuth2" + "A" * 41: {}}, "do not match its AllowedPattern"),
])
def test_a_config_file_mistake_is_one_line_exit_2(tmp_path: Path, config: dict[str, object], message: str) -> None:
    path = tmp_path / "local.json"
    path.write_text(json.dumps(config))
    finished = subprocess.run([sys.executable, "-m", "local", "--config", str(path)], cwd=REPO_ROOT,
                              env={"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'layers' / 'token_vending'}",
                                   "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    [line] = finished.stderr.strip().splitlines()
    assert line.startswith("python -m local: --config: ")
    assert message in line
