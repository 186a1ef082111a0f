"""``make deploy``: guided the first time, then from samconfig.toml, with the project's own SAM CLI.

``make -n`` prints the commands without running them (no AWS account is reached).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM = ".tools/sam/bin/sam"


def _dry_run(*args: str, cwd: Path = ROOT, **env: str) -> list[str]:
    completed = subprocess.run(["make", "-n", "-o", ".tools/sam/.installed", *args], cwd=cwd, check=True,
                               capture_output=True, text=True, env={**os.environ, **env})
    return [line for line in completed.stdout.splitlines() if SAM in line]


@pytest.mark.parametrize("environment", ["default", "prod"])
def test_a_configured_environment_deploys_from_samconfig(environment: str) -> None:
    build, deploy = _dry_run("deploy", f"ENV={environment}")
    assert build.endswith(f"{SAM} build --config-env {environment}")
    assert deploy.endswith(f"{SAM} deploy --config-env {environment}")
    assert "--guided" not in deploy
    assert "SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS=1" in build  # Fn::ForEach


def test_a_new_environment_is_guided_and_saved_under_its_name() -> None:
    build, deploy = _dry_run("deploy", "ENV=staging")
    assert build.rstrip().endswith(f"{SAM} build")
    assert deploy.endswith(f"{SAM} deploy --guided --config-env staging")


def test_a_fresh_clone_without_a_stack_name_is_guided(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "samconfig.toml").write_text('version = 0.1\n[default.build.parameters]\ncached = true\n')
    _, deploy = _dry_run("deploy", cwd=tmp_path)
    assert deploy.endswith(f"{SAM} deploy --guided --config-env default")


def test_the_dummy_local_credentials_never_reach_a_deploy() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}
    completed = subprocess.run(["make", "-n", "-o", ".tools/sam/.installed", "deploy"], cwd=ROOT, check=True,
                               capture_output=True, text=True, env=env)
    for line in completed.stdout.splitlines():
        if SAM in line:
            assert line.startswith("env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY"), line


def test_delete_names_the_environment() -> None:
    (delete,) = _dry_run("delete", "ENV=prod")
    assert delete.endswith(f"{SAM} delete --config-env prod")
