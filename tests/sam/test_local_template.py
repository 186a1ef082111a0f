"""What ``sam local`` runs is what deploys: the template SAM builds locally is template.yaml with only the
architecture changed (this machine is x86_64, the stack deploys arm64); the env-vars file SAM gets is the committed
``env.json`` with only the local services' ports moved; the Lambda base image is the official one or a stand-in
of the current recipe. None of these needs a container engine."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import subprocess
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from pathlib import Path

from local.lambda_service import REPO_ROOT
from local.sam_local import ENV_JSON, TEMPLATE, committed_ports, env_vars, local_template, ports_free
from local.template import parse_template

pytestmark = pytest.mark.sam


def test_the_local_template_differs_from_template_yaml_only_by_architecture() -> None:
    deployed = parse_template(TEMPLATE.read_text())
    local = parse_template(local_template("x86_64"))
    assert deployed["Globals"]["Function"]["Architectures"] == ["arm64"]
    [layer] = [resource for resource in deployed["Resources"].values()
               if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::LayerVersion"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"

    expected = copy.deepcopy(deployed)
    expected["Globals"]["Function"]["Architectures"] = ["x86_64"]
    for resource in expected["Resources"].values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::LayerVersion":
            resource["Properties"]["CompatibleArchitectures"] = ["x86_64"]
            resource["Metadata"]["BuildArchitecture"] = "x86_64"
    assert local == expected
    # No function or layer sets an architecture of its own that the swap would miss.
    assert "arm64" not in local_template("x86_64")
    assert local_template("arm64") == TEMPLATE.read_text()


def test_env_vars_moves_only_the_ports_of_the_local_services() -> None:
    """Free ports (a LocalStack on 4566, a ``make local`` on 3001) reach the functions through the generated
    env-vars file: each URL keeps its host, path and the service it names; nothing else changes."""
    committed = json.loads(ENV_JSON.read_text())
    assert env_vars(committed_ports()) == committed
    moved = {name: 40000 + index for index, name in enumerate(committed_ports())}
    assert len(set(moved.values())) == len(moved)
    generated = env_vars(moved)

    assert generated["TokenApiFunction"]["AWS_ENDPOINT_URL_LAMBDA"] == f"http://host.docker.internal:{moved['lambda']}"
    for function, variables in committed.items():
        assert generated[function].keys() == variables.keys()
        for name, value in variables.items():
            new = generated[function][name]
            if "host.docker.internal" not in value:
                assert new == value
                continue
            old_url, new_url = urlsplit(value), urlsplit(new)
            assert (new_url.hostname, new_url.path) == (old_url.hostname, old_url.path)
            [service] = [service for service, port in committed_ports().items() if port == old_url.port]
            assert new_url.port == moved[service], (function, name)
    assert generated["PyngFunction"]["TOKEN_URL"].startswith(f"http://host.docker.internal:{moved['pyng']}/")
    assert generated["PyngFunction"]["AWS_ENDPOINT_URL_SECRETS_MANAGER"].endswith(f":{moved['aws']}")


def test_ports_free_sees_a_port_another_program_listens_on() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not ports_free("127.0.0.1", [taken])
    assert ports_free("127.0.0.1", [taken])


@pytest.mark.parametrize(("label", "present"), [
    ("", True),  # the official image: no stand-in label
    ("<no value>", True),
    ("RECIPE", True),  # a stand-in built by this version of local/sam_image.sh
    ("1", False),  # a stand-in built by an earlier version: rebuilt
    ("0123456789abcdef", False),
    (None, False),  # no image
])
def test_image_check_accepts_the_official_image_or_a_current_stand_in(tmp_path: Path, label: str | None,
                                                                     present: bool) -> None:
    script = REPO_ROOT / "local" / "sam_image.sh"
    recipe = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    docker = tmp_path / "docker"
    inspect = "exit 1" if label is None else f"echo '{recipe if label == 'RECIPE' else label}'; exit 0"
    docker.write_text(f'#!/bin/sh\ncase "$1" in info) exit 0;; image) {inspect};; esac\nexit 1\n')
    docker.chmod(0o755)
    completed = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, check=False,
                               env={**os.environ, "DOCKER": str(docker)}, timeout=60)
    assert (completed.returncode == 0) == present, completed.stdout + completed.stderr
