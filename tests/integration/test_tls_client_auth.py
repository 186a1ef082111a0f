"""RFC 8705 ``tls_client_auth`` against a real mutual-TLS token endpoint on 127.0.0.1.

The provider function is ``token_vending.provider_function.ProviderFunction`` with a throwaway profile named
``mtls``, DynamoDB Local as the cache and Secrets Manager on the moto server, as a deployed function uses them.
The token endpoint (``tests.support.mtls_server``) is Python's ``ssl`` with ``CERT_REQUIRED``: OpenSSL decides
whether our client certificate is acceptable (chain to the CA it trusts, validity period) and refuses the
handshake with its own alert otherwise; only then does the endpoint compare the form's ``client_id`` with the
certificate's subject CN. Its certificates come from a CA generated here (``tests.support.pki``) and the
function trusts that CA through ``UPSTREAM_CA_BUNDLE``, as an operator with a private CA would.

TLS 1.2 and 1.3 are both exercised where they differ: in TLS 1.2 the server refuses our certificate inside the
handshake, so the client's handshake fails with the alert; in TLS 1.3 the client's handshake has already
completed, the request has been sent, and the alert only surfaces when the client reads the answer. Either way
a refused certificate must be ``upstream_rejected`` (``invalid_client``), never a 500 or an outage.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import harness
from tests.support.harness import create_table
from tests.support.mtls_server import MtlsTokenServer
from tests.support.pki import CertificateAuthority, Issued, key_leak_forms, leaks, pem_body
from token_vending.profile import ClientAuth

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


pytestmark = pytest.mark.integration

PROVIDER = "mtls"
CLIENT_ID = "svc-mtls-1"
LIFETIME = 900
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TLS_VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"), pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


# --- the PKI and AWS on loopback ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    bundle: str
    """``UPSTREAM_CA_BUNDLE``: the CA that issued the server's certificate (a public file: only the CA cert)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority("Token Vending Test CA")
    return Pki(ca, CertificateAuthority("Some Other CA"), ca.write_bundle(tmp_path_factory.mktemp("ca") / "ca.pem"))


# --- one deployment and its execution environments (the AWS clients: the integration conftest's ``aws``) -------
class Deployment(harness.Deployment):
    provider = PROVIDER
    auth = ClientAuth.TLS_CLIENT_AUTH
    server: MtlsTokenServer

    def put_certificate(self, issued: Issued, client_id: str = CLIENT_ID) -> None:
        self.put_secret(client_id=client_id, certificate=issued.certificate_pem, private_key=issued.key_pem)

    def item(self, scope_key: str) -> dict[str, Any] | None:
        answer = self.aws["dynamodb"].get_item(TableName=self.table, ConsistentRead=True,
                                               Key={"pk": {"S": PROVIDER}, "sk": {"S": f"token#{scope_key}"}})
        return answer.get("Item")  # type: ignore[no-any-return]


@pytest.fixture
def deploy(aws: dict[str, Any], pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: an mTLS token server (TLS version pinned or not) and an ``mtls`` deployment pointing at it, the
    server's CA trusted through ``UPSTREAM_CA_BUNDLE``; ``env`` adds or overrides settings."""
    servers: list[MtlsTokenServer] = []

    def factory(*, tls_version: ssl.TLSVersion | None = None, env: dict[str, str] | None = None,
                trust: str | None = None) -> Deployment:
        server = MtlsTokenServer(pki.ca, frozenset({CLIENT_ID}), expires_in=LIFETIME,
                                 tls_version=tls_version).__enter__()
        servers.append(server)
        unique = uuid.uuid4().hex[:8]
        deployment = Deployment(aws, server, table=f"tokens-mtls-{unique}", secret_id=f"token-vending/mtls-{unique}")
        create_table(aws["dynamodb"], deployment.table)
        settings = {
            **DUMMY_AWS, "CONNECTION_NAME": PROVIDER, "TOKEN_URL": server.url, "SECRET_ID": deployment.secret_id,
            "CACHE_TABLE_NAME": deployment.table, "ALLOWED_SCOPES": "billing:read billing:write reports:read",
            "DEFAULT_SCOPES": "billing:read", "TOKEN_LIFETIME": str(LIFETIME), "UPSTREAM_RETRIES": "2",
            "UPSTREAM_READ_TIMEOUT": "5", "LEASE_SECONDS": "10", "CLIENT_AUTH": "",
            "UPSTREAM_CA_BUNDLE": pki.bundle if trust is None else trust,
            "POWERTOOLS_SERVICE_NAME": "token-vending", "POWERTOOLS_METRICS_NAMESPACE": "TokenVending",
            **(env or {}),
        }
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                     "AWS_PROFILE", "TOKEN_VENDING_LOCAL_MODE", "SIGNING_KEY_ID", "ASSERTION_AUDIENCE"):
            if name not in settings:
                monkeypatch.delenv(name, raising=False)
        return deployment

    yield factory
    for server in servers:
        server.__exit__(None, None, None)


def assert_token(answer: dict[str, Any], deployment: Deployment, scope: str = "billing:read") -> None:
    """A contract 200 body carrying the token the mTLS server issued last."""
    assert set(answer) == {"provider", "access_token", "token_type", "expires_in", "expires_at", "scope"}, answer
    assert answer["access_token"] == deployment.server.issued[-1]["access_token"]
    assert (answer["provider"], answer["token_type"], answer["scope"]) == (PROVIDER, "Bearer", scope)
    assert LIFETIME - 30 <= answer["expires_in"] <= LIFETIME


def assert_rejected_invalid_client(answer: dict[str, Any]) -> None:
    """502 ``upstream_rejected`` passing on ``invalid_client``: the provider refused our credentials (here: the
    client certificate, in the TLS handshake); not a 500 and not an outage."""
    assert answer.get("errorType") == "UpstreamRejected", answer
    assert (answer["status"], answer["error"], answer["upstream_error"]) == (502, "upstream_rejected",
                                                                             "invalid_client")
    assert answer["provider"] == PROVIDER
    assert "certificate" in answer["error_description"]


def assert_no_key_leak(deployment: Deployment, *issued: Issued) -> None:
    forms = {f"private key of {item.common_name} ({item.sha256[:8]})": key_leak_forms(item.key) for item in issued}
    assert leaks(deployment.outputs.text(), forms) == []


# --- accepted ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
def test_tls_client_auth_accepted_certificate_gets_a_cached_token(deploy: Any, pki: Pki,
                                                                  tls_version: ssl.TLSVersion) -> None:
    deployment = deploy(tls_version=tls_version)
    certificate = pki.ca.client_certificate(CLIENT_ID, days_left=40)
    deployment.put_certificate(certificate)
    first, second = deployment.environment(), deployment.environment()
    answer = first.call({"scope": "billing:read"})
    assert_token(answer, deployment)
    for environment in (first, second, first):  # memory, then DynamoDB, then memory again
        assert environment.call({"scope": "billing:read"})["access_token"] == answer["access_token"]
    assert deployment.server.token_requests == 1
    (received,) = deployment.server.received()
    assert received.tls_version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[tls_version]
    assert received.peer_cn == CLIENT_ID
    # RFC 8705 2: the certificate is the credential; the body names the client and carries no secret.
    assert received.form == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID], "scope": ["billing:read"]}
    assert deployment.server.handshakes[0].peer_sha256 == certificate.sha256
    item = deployment.item("billing:read")
    assert item is not None
    assert item["access_token"] == {"S": answer["access_token"]}
    assert_no_key_leak(deployment, certificate)


def test_tls_client_auth_from_the_client_auth_setting_overrides_the_profile(deploy: Any, pki: Pki) -> None:
    """``CLIENT_AUTH=tls_client_auth`` turns a catalogue entry that says ``client_secret_basic`` into mTLS: the
    secret then needs no ``client_secret`` at all."""
    deployment = deploy(env={"CLIENT_AUTH": "tls_client_auth"})
    deployment.put_certificate(pki.ca.client_certificate(CLIENT_ID, key_type="rsa"))
    assert_token(deployment.environment(ClientAuth.BASIC_HEADER).call(), deployment)
    (received,) = deployment.server.received()
    assert "Authorization" not in received.headers
    assert "client_secret" not in received.form


def test_tls_client_auth_days_left_metric_has_the_certificate_s_remaining_validity(deploy: Any, pki: Pki) -> None:
    deployment = deploy()
    certificate = pki.ca.client_certificate(CLIENT_ID, days_left=33.5)
    deployment.put_certificate(certificate)
    environment = deployment.environment()
    assert_token(environment.call(), deployment)
    (days,) = deployment.outputs.metric("ClientCertificateDaysLeft")
    expected = (certificate.not_after.timestamp() - time.time()) / 86400
    assert abs(days - expected) < 1, (days, expected)
    (document,) = [doc for doc in deployment.outputs.emf if "ClientCertificateDaysLeft" in doc]
    declared = {metric["Name"]: metric for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "ClientCertificateDaysLeft" in declared
    assert document["connection"] == PROVIDER
    # A cache hit uses no certificate: nothing to report.
    environment.call()
    assert len(deployment.outputs.metric("ClientCertificateDaysLeft")) == 1
    assert "expires soon" not in deployment.outputs.logs.getvalue()
    # The scheduled refresh-ahead run reports it even when no token needs renewing.
    summary = environment.call({"refresh_ahead": True})
    assert "access_token" not in summary
    scheduled = deployment.outputs.metric("ClientCertificateDaysLeft")
    assert len(scheduled) == 2
    assert abs(scheduled[1] - expected) < 1


def test_tls_client_auth_certificate_about_to_expire_is_reported_and_still_used(deploy: Any, pki: Pki) -> None:
    deployment = deploy()
    deployment.put_certificate(pki.ca.client_certificate(CLIENT_ID, days_left=3))
    assert_token(deployment.environment().call(), deployment)
    (days,) = deployment.outputs.metric("ClientCertificateDaysLeft")
    assert 2 < days <= 3
    assert "the client certificate expires soon" in deployment.outputs.logs.getvalue()


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
def test_tls_client_auth_certificate_from_an_intermediate_ca_is_accepted_with_its_ca_chain(
        deploy: Any, pki: Pki, tls_version: ssl.TLSVersion) -> None:
    """The server trusts the root only; the secret's ``ca_chain`` (the intermediate) is sent after the
    certificate so the server can build the path. Without it the same certificate is refused (unknown CA)."""
    intermediate = pki.ca.intermediate("Token Vending Issuing CA")
    certificate = intermediate.client_certificate(CLIENT_ID)
    with_chain = deploy(tls_version=tls_version)
    with_chain.put_secret(client_id=CLIENT_ID, certificate=certificate.certificate_pem,
                          private_key=certificate.key_pem, ca_chain=intermediate.certificate_pem)
    assert_token(with_chain.environment().call(), with_chain)
    assert with_chain.server.handshakes[0].peer_sha256 == certificate.sha256
    without_chain = deploy(tls_version=tls_version)
    without_chain.put_certificate(certificate)
    assert_rejected_invalid_client(without_chain.environment().call())
    refused(without_chain, "unable to get local issuer certificate")
    # The whole chain pasted into ``certificate`` (a fullchain.pem) works too; the metric reads the leaf.
    fullchain = deploy(tls_version=tls_version)
    fullchain.put_secret(client_id=CLIENT_ID, certificate=certificate.certificate_pem + intermediate.certificate_pem,
                         private_key=certificate.key_pem)
    assert_token(fullchain.environment().call(), fullchain)
    (days,) = fullchain.outputs.metric("ClientCertificateDaysLeft")
    assert abs(days - (certificate.not_after.timestamp() - time.time()) / 86400) < 1


# --- refused certificates ------------------------------------------------------------------------------------
def refused(deployment: Deployment, certificate_reason: str) -> None:
    """The server saw one handshake per fetch and refused it for the expected reason; no token request."""
    failures = deployment.server.wait_for_handshakes(1)
    assert [handshake.ok for handshake in failures] == [False], failures
    assert certificate_reason in f"{failures[0].reason} {failures[0].verify_message}"
    assert deployment.server.token_requests == 0


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
def test_tls_client_auth_certificate_from_another_ca_is_upstream_rejected(deploy: Any, pki: Pki,
                                                                          tls_version: ssl.TLSVersion) -> None:
    deployment = deploy(tls_version=tls_version)
    foreign = pki.other_ca.client_certificate(CLIENT_ID)
    deployment.put_certificate(foreign)
    environment = deployment.environment()
    assert_rejected_invalid_client(environment.call())
    refused(deployment, "unable to get local issuer certificate")
    # The secret did not change: no second handshake with the same refused certificate; the cool-down answers.
    assert_rejected_invalid_client(environment.call())
    assert_rejected_invalid_client(deployment.environment().call())
    assert deployment.server.connections == 1
    assert deployment.item("billing:read") is None
    assert_no_key_leak(deployment, foreign)


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
def test_tls_client_auth_expired_certificate_is_upstream_rejected(deploy: Any, pki: Pki,
                                                                  tls_version: ssl.TLSVersion) -> None:
    deployment = deploy(tls_version=tls_version)
    expired = pki.ca.client_certificate(CLIENT_ID, days_left=-2)
    deployment.put_certificate(expired)
    assert_rejected_invalid_client(deployment.environment().call())
    refused(deployment, "certificate has expired")
    (days,) = deployment.outputs.metric("ClientCertificateDaysLeft")
    assert -3 < days < -1  # the metric shows the expiry (negative), so the alarm explains the refusal
    assert_no_key_leak(deployment, expired)


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
def test_tls_client_auth_missing_certificate_is_upstream_rejected(deploy: Any, tls_version: ssl.TLSVersion) -> None:
    """A provider that requires a client certificate, called without one (the deployment still says
    ``client_secret_post``): OpenSSL refuses the handshake (TLS 1.3: ``certificate_required``; TLS 1.2:
    ``handshake_failure``, RFC 5246 7.4.6's alert for a missing certificate). The provider refused our
    credentials: ``upstream_rejected`` with ``invalid_client``, not an outage to retry."""
    deployment = deploy(tls_version=tls_version, env={"CLIENT_AUTH": "client_secret_post"})
    deployment.put_secret(client_id=CLIENT_ID, client_secret="s3cret-" + uuid.uuid4().hex)
    answer = deployment.environment().call()
    refused(deployment, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert_rejected_invalid_client(answer)


def test_tls_client_auth_certificate_for_another_client_is_upstream_rejected(deploy: Any, pki: Pki) -> None:
    """A certificate the server's CA issued, but to another subject: the handshake succeeds, the token endpoint
    refuses the ``client_id`` it does not match (RFC 8705 2.1.1) with ``invalid_client`` (HTTP 401)."""
    deployment = deploy()
    deployment.put_certificate(pki.ca.client_certificate("someone-else"))
    answer = deployment.environment().call()
    assert_rejected_invalid_client(answer)
    assert answer["upstream_status"] == 401
    (received,) = deployment.server.received()
    assert (received.status, received.peer_cn, received.form["client_id"]) == (401, "someone-else", [CLIENT_ID])


def test_tls_client_auth_untrusted_server_certificate_is_upstream_unavailable(deploy: Any, pki: Pki,
                                                                             tmp_path: Path) -> None:
    """Server verification as usual: a token endpoint whose certificate does not chain to the trusted CAs is not
    the provider refusing us but a TLS failure (503 ``upstream_unavailable``), and no certificate is blamed."""
    deployment = deploy(trust=pki.other_ca.write_bundle(tmp_path / "other-ca.pem"))
    deployment.put_certificate(pki.ca.client_certificate(CLIENT_ID))
    answer = deployment.environment().call()
    assert answer.get("errorType") == "UpstreamUnavailable", answer
    assert (answer["status"], answer["error"]) == (503, "upstream_unavailable")
    assert deployment.server.token_requests == 0


# --- misconfigured secrets -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "named"), [
    pytest.param({"certificate": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"},
                 "certificate", id="malformed-certificate"),
    pytest.param({"private_key": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n"
                                 "-----END PRIVATE KEY-----\n"}, "private_key", id="truncated-key"),
    pytest.param({"private_key": "other"}, "private_key", id="key-of-another-certificate"),
    pytest.param({"certificate": ""}, "certificate", id="no-certificate"),
    pytest.param({"private_key": ""}, "private_key", id="no-key"),
])
def test_tls_client_auth_unusable_pems_are_misconfigured_naming_the_field(deploy: Any, pki: Pki,
                                                                         fields: dict[str, str], named: str) -> None:
    deployment = deploy()
    good, other = pki.ca.client_certificate(CLIENT_ID), pki.ca.client_certificate(CLIENT_ID)
    secret = {"client_id": CLIENT_ID, "certificate": good.certificate_pem, "private_key": good.key_pem}
    secret.update({name: other.key_pem if value == "other" else value for name, value in fields.items()})
    deployment.put_secret(**secret)
    answer = deployment.environment().call()
    assert answer.get("errorType") == "Misconfigured", answer
    assert (answer["status"], answer["error"]) == (500, "misconfigured")
    assert named in answer["error_description"]
    assert deployment.server.connections == 0
    assert_no_key_leak(deployment, good, other)
    for value in secret.values():
        for line in value.splitlines():
            if len(line) >= 16 and not line.startswith("-----"):
                assert line not in deployment.outputs.text()


CHILD = """
import json, os, sys
from tests.integration.test_tls_client_auth import Deployment
from tests.support.harness import aws_clients
config = json.loads(os.environ["MTLS_CHILD"])
deployment = Deployment(aws_clients(config["dynamodb"], config["moto"]), None, config["table"],  # no server
                        config["secret_id"])
answer = deployment.environment().call()
print(json.dumps({"answer": answer, "outputs": deployment.outputs.text()}))
"""


def call_without_a_terminal(deployment: Deployment) -> tuple[dict[str, Any], str, str]:
    """One invocation by a fresh execution environment in a child process with no controlling terminal and
    no stdin, as on Lambda: OpenSSL's pass-phrase prompt (``load_cert_chain`` without a password) would
    otherwise wait on the terminal of whoever runs the tests. The deployment's settings are inherited."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = {"dynamodb": deployment.aws["dynamodb"].meta.endpoint_url,
              "moto": deployment.aws["secretsmanager"].meta.endpoint_url,
              "table": deployment.table, "secret_id": deployment.secret_id}
    env = {**os.environ, "MTLS_CHILD": json.dumps(config),
           "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "layers", "token_vending")])}
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=root, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60, start_new_session=True, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return result["answer"], result["outputs"], child.stderr


def test_tls_client_auth_encrypted_key_is_misconfigured_without_prompting(deploy: Any, pki: Pki) -> None:
    """A key exported with a pass phrase (a plausible operator mistake): ``misconfigured`` naming
    ``private_key``, like any other unusable PEM -- not ``internal_error``, and without OpenSSL asking a
    terminal for the pass phrase (on a developer's terminal, ``make local`` would wait for it)."""
    from cryptography.hazmat.primitives import serialization

    deployment = deploy()
    certificate = pki.ca.client_certificate(CLIENT_ID)
    encrypted = certificate.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"pass phrase")).decode("ascii")
    deployment.put_secret(client_id=CLIENT_ID, certificate=certificate.certificate_pem, private_key=encrypted)
    answer, outputs, stderr = call_without_a_terminal(deployment)
    assert deployment.server.connections == 0
    assert pem_body(encrypted)[:64] not in outputs + stderr
    assert answer.get("errorType") == "Misconfigured", answer
    assert (answer["status"], answer["error"]) == (500, "misconfigured")
    assert "private_key" in answer["error_description"]
    assert "pass phrase" not in stderr.lower(), "OpenSSL prompted for a pass phrase"


# --- rotation ------------------------------------------------------------------------------------------------
def test_tls_client_auth_renewed_certificate_is_used_without_a_redeploy(deploy: Any, pki: Pki) -> None:
    """With ``SECRET_MAX_AGE=0`` the next fetch reads the secret again: a certificate renewed in Secrets Manager
    is presented by the same execution environment, and the metric follows the new one."""
    deployment = deploy(env={"SECRET_MAX_AGE": "0"})
    old, new = pki.ca.client_certificate(CLIENT_ID, days_left=5), pki.ca.client_certificate(CLIENT_ID, days_left=80)
    deployment.put_certificate(old)
    environment = deployment.environment()
    assert_token(environment.call({"scope": "billing:read"}), deployment)
    deployment.put_certificate(new)
    assert_token(environment.call({"scope": "reports:read"}), deployment, "reports:read")
    assert [handshake.peer_sha256 for handshake in deployment.server.handshakes] == [old.sha256, new.sha256]
    first, second = deployment.outputs.metric("ClientCertificateDaysLeft")
    assert 4 < first <= 5
    assert 79 < second <= 80
    assert_no_key_leak(deployment, old, new)


def test_tls_client_auth_refused_certificate_then_renewed_secret_is_retried_once(deploy: Any, pki: Pki) -> None:
    """The environment still holds an expired certificate (secret cache age not reached); the handshake is
    refused (``invalid_client``), the function re-reads the secret, finds a renewed certificate and retries
    once: one refused and one accepted handshake, one token."""
    deployment = deploy()
    expired, renewed = pki.ca.client_certificate(CLIENT_ID, days_left=-1), pki.ca.client_certificate(CLIENT_ID)
    deployment.put_certificate(expired)
    environment = deployment.environment()
    environment.function.vendor().credentials.get()  # warm: the expired certificate is in this environment
    deployment.put_certificate(renewed)
    assert_token(environment.call(), deployment)
    handshakes = deployment.server.wait_for_handshakes(2)
    assert [(handshake.ok, handshake.peer_sha256) for handshake in handshakes] == [(False, None),
                                                                                   (True, renewed.sha256)]
    assert deployment.server.token_requests == 1
    assert "SecretReloaded" in json.dumps(deployment.outputs.emf)
    assert_no_key_leak(deployment, expired, renewed)


# --- nothing left behind -------------------------------------------------------------------------------------
@contextlib.contextmanager
def files_opened_for_writing(under: str) -> Iterator[list[str]]:
    """Paths under ``under`` opened for writing by this thread while the block runs (a Python audit hook: it
    sees ``open``/``os.open`` wherever they are called, ``tempfile`` included)."""
    opened: list[str] = []
    thread = threading.get_ident()
    active = True
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not active or event != "open" or threading.get_ident() != thread:
            return
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & write_flags)
        if writing and isinstance(path, (str, bytes)):
            text = os.fsdecode(path)
            if os.path.realpath(text).startswith(os.path.realpath(under)):
                opened.append(text)

    _install(hook)
    try:
        yield opened
    finally:
        active = False


_HOOKS: list[Any] = []
_HOOKS_INSTALLED: list[bool] = []


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    for hook in list(_HOOKS):
        hook(event, args)


def _install(hook: Any) -> None:
    """Audit hooks cannot be removed: one is installed per process, dispatching to the current test's."""
    if not _HOOKS_INSTALLED:
        sys.addaudithook(_dispatch)
        _HOOKS_INSTALLED.append(True)
    _HOOKS.clear()
    _HOOKS.append(hook)


def files_holding(directory: str, needles: list[bytes], since: float) -> list[str]:
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            try:
                if os.path.getmtime(path) < since or os.path.getsize(path) > 4 * 1024 * 1024:
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            if any(needle in data for needle in needles):
                found.append(path)
    return found


def open_memfds() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("/memfd:"):
                names.append(target)
    return names


def test_tls_client_auth_pems_are_not_left_on_disk(deploy: Any, pki: Pki) -> None:
    deployment = deploy(env={"SECRET_MAX_AGE": "0"})
    certificate = pki.ca.client_certificate(CLIENT_ID, key_type="rsa")
    deployment.put_certificate(certificate)
    temp = tempfile.gettempdir()
    started = time.time() - 1
    memfds = open_memfds()
    environment = deployment.environment()
    with files_opened_for_writing(temp) as probe, tempfile.NamedTemporaryFile() as control:
        pass
    assert control.name in probe  # the hook does see a temporary file being written
    with files_opened_for_writing(temp) as opened:
        assert_token(environment.call({"scope": "billing:read"}), deployment)
        assert_token(environment.call({"scope": "billing:write"}), deployment, "billing:write")
    assert opened == []
    needles = [pem_body(certificate.key_pem)[:64].encode(), pem_body(certificate.certificate_pem)[64:128].encode()]
    assert files_holding(temp, needles, started) == []
    assert open_memfds() == memfds  # the in-memory files were closed too
    assert_no_key_leak(deployment, certificate)
