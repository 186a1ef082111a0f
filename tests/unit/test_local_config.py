"""``python -m local --config``: every secret field a provider can need, and a clear refusal of anything else."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from local.__main__ import KNOWN_FIELDS, ConfigError, real_provider
from local.lambda_service import REPO_ROOT
from token_vending.credentials import ALL_FIELDS

if TYPE_CHECKING:
    from pathlib import Path

URL = "https://login.example.test/oauth/token"


def test_every_secret_field_reaches_the_secret() -> None:
    entry = {"token_url": URL, "client_auth": "private_key_jwt",
             **{name: f"value of {name}" for name in ALL_FIELDS}}
    url, document, method = real_provider("pyng", entry)
    assert (url, method) == (URL, "private_key_jwt")
    assert document == {name: f"value of {name}" for name in ALL_FIELDS}


def test_a_pem_key_is_enough_for_private_key_jwt() -> None:
    _, document, _ = real_provider("pyng", {"token_url": URL, "client_auth": "private_key_jwt", "client_id": "c",
                                            "private_key": "-----BEGIN PRIVATE KEY-----\n..."})
    assert set(document) == {"client_id", "private_key"}


@pytest.mark.parametrize(("entry", "message"), [
    ({"token_url": URL, "client_id": "c"}, "pyng (client_secret_basic client authentication) needs 'client_secret'"),
    ({"token_url": URL, "client_id": "c", "client_auth": "private_key_jwt"},
     "pyng (private_key_jwt client authentication) needs 'private_key'"),
    ({"token_url": URL, "client_id": "c", "client_auth": "tls_client_auth", "private_key": "k"},
     "pyng (tls_client_auth client authentication) needs 'certificate'"),
    ({"client_id": "c", "client_secret": "s"}, "needs 'token_url'"),
    ({"token_url": URL, "client_id": "c", "client_secret": "s", "clientSecret": "s"},
     "pyng has unknown field 'clientSecret'"),
    ({"token_url": URL, "client_id": "c", "client_secret": "s", "client_auth": "magic"},
     "pyng's client_auth must be one of"),
    ({"token_url": URL, "client_id": 5, "client_secret": "s"}, "pyng's client_id must be a string"),
])
def test_an_incomplete_or_unknown_entry_is_refused_naming_the_field(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^--config: ") as refused:
        real_provider("pyng", entry)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_command_refuses_an_incomplete_entry_in_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "local.json"
    config.write_text(json.dumps({"pyng": {"token_url": URL, "client_id": "c", "client_secret_": "s3cr3t"}}))
    finished = subprocess.run([sys.executable, "-m", "local", "--config", str(config)], cwd=REPO_ROOT,
                              env={"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'layers' / 'token_vending'}",
                                   "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip() == ("python -m local: --config: pyng has unknown field 'client_secret_' (known: "
                                       f"{', '.join(KNOWN_FIELDS)})")
    assert KNOWN_FIELDS[:2] == ("token_url", "client_auth")
    assert set(ALL_FIELDS) < set(KNOWN_FIELDS)
    assert "s3cr3t" not in finished.stderr


def test_the_whole_document_is_the_provider_s_secret() -> None:
    """What ``--config`` read is what the provider function finds in Secrets Manager: the PEM key as written."""
    from moto.server import ThreadedMotoServer

    from local.stack import LocalStack, StackConfig

    _, document, _ = real_provider("pyng", {"token_url": URL, "client_auth": "private_key_jwt", "client_id": "c",
                                            "private_key": "-----BEGIN PRIVATE KEY-----\nMIG...\n", "kid": "k1"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        stack = LocalStack(StackConfig(secrets={"pyng": document}, credentials={"pyng": ("other", "other")}))
        host, port = server.get_host_and_port()
        stack.dynamodb_url = stack.secrets_url = f"http://{host}:{port}"
        stack.seed_secrets()
        stored = stack.client("secretsmanager").get_secret_value(SecretId=stack.secret_name("pyng"))
    finally:
        server.stop()
    assert json.loads(stored["SecretString"]) == document
