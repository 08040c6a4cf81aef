"""SOPS-encrypted Secrets, end to end: the real sops and age, the real control plane, the operator as a process.

The tenant's age identity is a Secret in the operator's namespace (``spec.decryption``). A Secret
encrypted the way Flux users encrypt it (``--encrypted-regex '^(data|stringData)$'``) is decrypted
at apply and readable in the cluster; one encrypted for another tenant's key is ``DecryptionFailed``
and nothing of that commit is written. The plaintext is searched for, and must be absent, in the
app's status, its records, the namespace's Events, the operator's log and every CLI command's output.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitward.api.refs import ObjectRef
from support.operator import OperatorProcess, World, applied
from support.pipeline import configmap, deployment
from support.sops import age_keypair, sops_encrypt
from support.toolpaths import kubectl_binary, sops_binary
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def encrypted_secret(name: str, recipient: str, **values: str) -> str:
    plain = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": values,
    }
    return sops_encrypt(yaml.safe_dump(plain), recipient)


def trust_age_key(world: World, identity: str) -> str:
    """The tenant's age identity, as the admin stores it, and the tenant pointed at it."""
    name = f"sops-{world.id}"
    client.CoreV1Api(world.admin).create_namespaced_secret(
        world.operator_namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={"identity.agekey": base64.b64encode(f"{identity}\n".encode()).decode()},
        ),
    )
    world.patch_tenant({"decryption": {"provider": "sops", "secretRef": {"name": name}}})
    return name


def cli(operator: OperatorProcess, *args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "gitward"), *args, "--kubeconfig", str(operator.kubeconfig)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    return done.stdout + done.stderr


def everything_said(operator: OperatorProcess, world: World) -> str:
    """Status, records, Events, the operator's log and the CLI's output, as one text to search."""
    events = client.CoreV1Api(world.admin).list_namespaced_event(world.namespace).items
    said: list[Any] = [
        world.status(),
        [r["spec"] for r in world.records()],
        [(e.reason, e.message) for e in events],
    ]
    text = yaml.safe_dump(said) + operator.log.read_text(errors="replace")
    for args in (
        ("status", "web", "-n", world.namespace, "-o", "yaml"),
        ("history", "web", "-n", world.namespace, "-o", "yaml"),
        ("diff", "web", "-n", world.namespace, "--operator-namespace", world.operator_namespace,
         "--kustomize", f"{kubectl_binary()} kustomize", "--sops", sops_binary()),
    ):  # fmt: skip
        said_by_cli = cli(operator, *args)
        assert "usage:" not in said_by_cli, said_by_cli
        assert "Traceback" not in said_by_cli, said_by_cli
        assert any(sign in said_by_cli for sign in ("name: web", "seq: 1", "REFUSED", "Secret ")), said_by_cli
        text += said_by_cli
    return text


def test_an_encrypted_secret_is_applied_and_one_for_another_key_is_refused_without_a_trace(operator, world):
    identity, recipient = age_keypair()
    _, stranger = age_keypair()
    trust_age_key(world, identity)
    plaintext = f"s3cr3t-{uuid.uuid4().hex}"
    first = world.work.commit(
        {
            "deploy/web.yaml": deployment("web"),
            "deploy/db.yaml": encrypted_secret("db", recipient, password=plaintext),
        },
        sign=world.signer,
    )
    world.work.push()
    world.create_app()
    applied(world, first)
    stored = world.objects.get(ObjectRef("", "v1", "Secret", world.namespace, "db"))
    assert stored is not None
    assert base64.b64decode(stored["data"]["password"]).decode() == plaintext
    assert "sops" not in stored
    assert world.ready()["status"] == "True"
    # While the head is the decryptable commit, `gitward diff` renders and dry-runs the plaintext too.
    said = everything_said(operator, world)
    assert plaintext not in said
    assert base64.b64encode(plaintext.encode()).decode() not in said

    other = f"0th3r-{uuid.uuid4().hex}"
    refused = world.work.commit(
        {
            "deploy/db.yaml": encrypted_secret("db", stranger, password=other),
            "deploy/extra.yaml": configmap("extra"),
        },
        sign=world.signer,
    )
    world.work.push()
    wait_until(
        lambda: (
            world.status().get("lastAttemptedRevision") == refused
            and world.ready().get("reason") == "DecryptionFailed"
        ),
        timeout=60,
        what="the refusal of the Secret encrypted for another key",
    )
    message = world.ready()["message"]
    assert "Secret/db (deploy/db.yaml#0): it was encrypted for " + stranger[:20] in message
    assert "the tenant's key (" + recipient + ") is not among them" in message
    assert world.configmap("extra") is None
    assert world.status()["lastAppliedRevision"] == first
    [record] = [r["spec"] for r in world.records() if r["spec"]["commit"] == refused]
    assert (record["outcome"], record["reason"]) == ("Refused", "DecryptionFailed")

    said = everything_said(operator, world)
    assert plaintext not in said
    assert base64.b64encode(plaintext.encode()).decode() not in said
    assert identity not in said


def test_an_encrypted_manifest_without_a_tenant_key_is_refused(operator, world):
    _, recipient = age_keypair()
    commit = world.work.commit(
        {"deploy/db.yaml": encrypted_secret("db", recipient, password="never-seen")}, sign=world.signer
    )
    world.work.push()
    world.create_app()
    wait_until(lambda: world.ready().get("reason") == "DecryptionFailed", timeout=60, what="the refusal")
    assert "no decryption key" in world.ready()["message"]
    assert world.status().get("lastAttemptedRevision") == commit
    assert world.objects.get(ObjectRef("", "v1", "Secret", world.namespace, "db")) is None
