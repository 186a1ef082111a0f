"""One release, one version: the layer's ``token_vending.__version__`` is written once, and every place that
cannot read it when it is built or deployed (the caller library's own folder, the template's Serverless
Application Repository metadata, the changelog) is held to it here. The caller library's wheel carries it,
with the metadata PyPI and twine check."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from typing import TYPE_CHECKING

import pytest

import token_vending
import token_vending_client
from local.template import load_template
from tests.unit.conftest import REPO_ROOT

if TYPE_CHECKING:
    from email.message import Message
    from pathlib import Path

# semver.org's own regular expression (section "Is there a suggested regular expression")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
VERSION = token_vending.__version__
CLIENT = REPO_ROOT / "clients" / "python"


def test_the_version_is_semantic() -> None:
    assert SEMVER.fullmatch(VERSION), VERSION


def test_the_caller_library_has_the_services_version() -> None:
    assert token_vending_client.__version__ == VERSION


def test_the_serverless_repo_metadata_has_the_services_version() -> None:
    metadata = load_template()["Metadata"]["AWS::ServerlessRepo::Application"]
    assert metadata["SemanticVersion"] == VERSION


def test_the_changelogs_latest_release_is_this_version() -> None:
    """Keep a Changelog: an ``[Unreleased]`` section, then the releases, newest first."""
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", (REPO_ROOT / "CHANGELOG.md").read_text(),
                          flags=re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    assert headings[1][0] == VERSION
    assert headings[1][1], "a release's heading carries its date"


@pytest.mark.parametrize(("pyproject", "attribute"), [
    (REPO_ROOT / "pyproject.toml", "token_vending.__version__"),
    (CLIENT / "pyproject.toml", "token_vending_client.__version__"),
])
def test_pyprojects_read_the_version_from_the_code(pyproject: Path, attribute: str) -> None:
    """No version literal in a pyproject.toml: setuptools reads the package's ``__version__``."""
    document = tomllib.loads(pyproject.read_text())
    assert "version" not in document["project"]
    assert "version" in document["project"]["dynamic"]
    assert document["tool"]["setuptools"]["dynamic"]["version"] == {"attr": attribute}


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps clients/python``, built from a copy (setuptools writes build/ and egg-info/ next
    to the sources); pip fetches the build backend (setuptools) from the package index."""
    directory = tmp_path_factory.mktemp("wheel")
    source = directory / "source"
    shutil.copytree(CLIENT, source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory),
                    str(source)], check=True, timeout=300)
    [wheel] = directory.glob("token_vending_client-*.whl")
    return wheel


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.BytesParser().parsebytes(archive.read(name))


@pytest.mark.slow
def test_the_client_wheel_holds_the_package_and_its_typing_marker(client_wheel: Path) -> None:
    names = set(zipfile.ZipFile(client_wheel).namelist())
    assert {"token_vending_client/py.typed", "token_vending_client/auth.py", "token_vending_client/client.py",
            "token_vending_client/errors.py"} <= names
    assert client_wheel.name == f"token_vending_client-{VERSION}-py3-none-any.whl"


@pytest.mark.slow
def test_the_client_wheels_metadata(client_wheel: Path) -> None:
    metadata = wheel_metadata(client_wheel)
    assert metadata["Name"] == "token-vending-client"
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"]
    assert "Typing :: Typed" in metadata.get_all("Classifier", [])
    requires = metadata.get_all("Requires-Dist", [])
    assert any(r.startswith("boto3") for r in requires)  # SigV4 signing, and urllib3 with it
    assert any(r.startswith("requests") and 'extra == "requests"' in r for r in requires)
    assert any(r.startswith("httpx") and 'extra == "httpx"' in r for r in requires)
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert description.strip() == (CLIENT / "README.md").read_text().strip()


@pytest.mark.slow
def test_twine_check_passes_the_client_wheel(client_wheel: Path) -> None:
    """What PyPI would refuse (metadata, a README that does not render), twine check refuses first."""
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(client_wheel)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
