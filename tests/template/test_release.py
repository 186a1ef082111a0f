"""Publishing to the AWS Serverless Application Repository (docs/releases.md), checked offline.

``sam publish`` is SAM CLI's vendored ``serverlessrepo.publish_application``: here it runs on template.yaml with
a botocore Stubber for the repository's client, so SAM CLI itself reads the metadata and botocore checks the
CreateApplication request against the service's model; the limits botocore documents but does not enforce
(lengths, patterns) are checked on the request it built. The template a user publishes is the expanded one
without ``AWS::LanguageExtensions`` (docs/releases.md says why): cfn-lint checks it as it would be published.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from tests.template.cfn import (
    CFN_LINT,
    EXPANDED_LINT_IGNORES,
    ROOT,
    TEMPLATE,
    TOOLS_PYTHON,
    load_template,
    require_tool,
    run,
    without_cfn_lint_ignores,
)

if TYPE_CHECKING:
    from pathlib import Path

APPLICATION_ID = "arn:aws:serverlessrepo:us-east-1:123456789012:applications/token-vending-service"
PUBLISH = f"""
import json, sys
import boto3
from botocore.stub import Stubber
from samcli.vendor.serverlessrepo import publish_application

client = boto3.client("serverlessrepo", region_name="us-east-1")
requests = []
client.meta.events.register("provide-client-params.serverlessrepo.CreateApplication",
                            lambda params, **_: requests.append(dict(params)))
stubber = Stubber(client)  # botocore still validates the request against the model; nothing is sent
stubber.add_response("create_application", {{"ApplicationId": "{APPLICATION_ID}"}})
with stubber:
    output = publish_application(open(sys.argv[1]).read(), sar_client=client)
    stubber.assert_no_pending_responses()
json.dump({{"request": requests[0], "actions": output["actions"]}}, sys.stdout)
"""


@pytest.fixture(scope="module")
def create_application() -> dict[str, Any]:
    """The CreateApplication request ``sam publish`` makes of template.yaml (botocore validates its shape)."""
    result = run([require_tool(TOOLS_PYTHON), "-c", PUBLISH, TEMPLATE])
    assert result.returncode == 0, result.stdout + result.stderr
    published: dict[str, Any] = json.loads(result.stdout)
    assert published["actions"] == ["CREATE_APPLICATION"]
    request: dict[str, Any] = published["request"]
    return request


def test_sam_publish_reads_the_applications_metadata(create_application: dict[str, Any]) -> None:
    from token_vending import __version__

    assert create_application["Name"] == "token-vending-service"
    assert create_application["SemanticVersion"] == __version__
    assert create_application["SpdxLicenseId"] == "Apache-2.0"
    # sam package uploads these two files and puts their S3 URLs in their place
    assert create_application["LicenseUrl"] == "LICENSE"
    assert (ROOT / create_application["ReadmeUrl"]).is_file()
    # the published template does not carry the metadata (SAR keeps it beside the template)
    assert "AWS::ServerlessRepo::Application" not in create_application["TemplateBody"]


def test_the_metadata_keeps_the_repositorys_limits(create_application: dict[str, Any]) -> None:
    """The limits of botocore's serverlessrepo model documentation (CreateApplicationRequest), which the
    service enforces when the application is created."""
    assert re.fullmatch(r"[a-zA-Z0-9\-]+", create_application["Name"])
    assert 1 <= len(create_application["Name"]) <= 140
    assert re.fullmatch(r"^[a-z0-9](([a-z0-9]|-(?!-))*[a-z0-9])?$", create_application["Author"])
    assert 1 <= len(create_application["Author"]) <= 127
    assert 1 <= len(create_application["Description"]) <= 256
    assert 1 <= len(create_application["Labels"]) <= 10
    for label in create_application["Labels"]:
        assert re.fullmatch(r"^[a-zA-Z0-9+\-_:\/@]+$", label), label
        assert 1 <= len(label) <= 127
    assert not {"HomePageUrl", "SourceCodeUrl"} & set(create_application), "no placeholder URLs"


def test_the_publishable_template_passes_cfn_lint(tmp_path: Path) -> None:
    """docs/releases.md's way to publish: the expanded template (``python -m local.template``) without the
    AWS::LanguageExtensions transform is a plain SAM template that cfn-lint passes (but EXPANDED_LINT_IGNORES,
    the mappings the expansion leaves unread)."""
    publishable = without_cfn_lint_ignores(load_template())
    assert publishable["Transform"] == ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]
    publishable["Transform"] = ["AWS::Serverless-2016-10-31"]
    text = json.dumps(publishable)
    for construct in ("Fn::ForEach", "Fn::ToJsonString", "Fn::Length", "DefaultValue"):
        assert construct not in text, f"{construct} needs AWS::LanguageExtensions"
    path = tmp_path / "publishable.json"
    path.write_text(text)
    result = run([require_tool(CFN_LINT), "--ignore-checks", *EXPANDED_LINT_IGNORES, "--", path])
    assert result.returncode == 0, f"cfn-lint on the publishable template:\n{result.stdout}\n{result.stderr}"
