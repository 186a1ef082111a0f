"""`make local`'s program as a user runs it: it answers on the API port and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from local.lambda_service import REPO_ROOT
from local.stack import PROVIDERS
from tests.support.dynamodb_local import free_port
from tests.support.signing import signed_get

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


def test_local_service_answers_and_stops_cleanly_on_ctrl_c() -> None:
    api, lam, aws = free_port(), free_port(), free_port()
    base = free_run_of_ports(len(PROVIDERS), avoid={api, lam, aws})
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
    ports["emulator"] = free_run_of_ports(len(PROVIDERS), avoid=set(ports.values()))
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
