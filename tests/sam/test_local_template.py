"""What ``sam local`` runs is what deploys: the template SAM builds locally is template.yaml with only the
architecture changed (this machine is x86_64, the stack deploys arm64)."""

from __future__ import annotations

import copy

import pytest

from local.sam_local import TEMPLATE, local_template
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
