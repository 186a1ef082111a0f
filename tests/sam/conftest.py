"""``sam local`` fixtures: the real SAM CLI (``.tools/sam``) on the template built for this machine, its
containers reaching the embedded AWS and the provider emulators on the Docker bridge's gateway.

A container engine and the Lambda base image are prerequisites (``make sam-image``, which ``make test`` runs:
``local/sam_image.sh``). Without them these tests are skipped, with the reason in pytest's summary -- except in
CI (``CI=true``), where they fail."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from local.sam_local import (
    SamLocal,
    backend_ports,
    bridge_gateway,
    build,
    engine_problem,
    free_port,
    start_backend,
    write_env_vars,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from local.providers import EmulatorFleet
    from local.stack import LocalStack


@pytest.fixture(scope="session")
def engine() -> str:
    """The bridge gateway's address, once the engine and image are known to be there."""
    problem = engine_problem()
    if problem:
        message = f"sam local needs a container engine and the Lambda base image: {problem} (make sam-image)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bridge_gateway()


@pytest.fixture(scope="session")
def built(engine: str) -> Path:
    return build()


@pytest.fixture(scope="session")
def backend(engine: str) -> Iterator[tuple[LocalStack, EmulatorFleet]]:
    """The embedded AWS and the emulators on free ports of the gateway: a ``make local``, a LocalStack on 4566 or
    another checkout's tests may hold the committed ones."""
    stack, fleet = start_backend(engine)
    yield stack, fleet
    stack.stop()
    fleet.stop()


@pytest.fixture(scope="session")
def lambda_port(engine: str) -> int:
    return free_port(engine)


@pytest.fixture(scope="session")
def sam(built: Path, backend: Any, lambda_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamLocal]:
    """``sam local`` on the built template with ``env.json`` moved to this session's ports; stopped (containers
    removed) at the end of the session."""
    env_file = write_env_vars({**backend_ports(*backend), "lambda": lambda_port},
                              tmp_path_factory.mktemp("sam") / "env.json")
    runner = SamLocal(built, env_vars=env_file)
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def start_lambda(sam: SamLocal, engine: str, lambda_port: int, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``sam local start-lambda`` where the env-vars file sends the token API's invocations."""
    log = (tmp_path_factory.mktemp("sam") / "start-lambda.log").open("w")
    return sam.start("start-lambda", engine, lambda_port, log=log)


@pytest.fixture(scope="session")
def start_api(sam: SamLocal, start_lambda: str, engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = (tmp_path_factory.mktemp("sam") / "start-api.log").open("w")
    return sam.start("start-api", engine, free_port(engine), log=log)
