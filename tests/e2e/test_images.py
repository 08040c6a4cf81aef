"""The image gate, end to end: the real Distribution registry over TLS with credentials, real cosign, the operator.

The tenant allows one repository of the registry, requires digests and a cosign signature by its
key, and reads the registry's credentials and CA from the operator's namespace. A commit whose
workloads use an unsigned image, an image from a repository the tenant does not allow, a tag
without a digest and an image signed by a key the tenant does not trust is refused whole, every
violation listed; a correctly signed digest is applied, its digest and signer recorded. With
``tags: resolve`` a tag is resolved at apply time and the digest is what reaches the cluster.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitward.api.refs import ObjectRef
from gitward.images.keys import TrustedImageKeys
from support.operator import World, applied
from support.pipeline import deployment
from support.registry import Registry, cosign_keypair, cosign_sign, push_image
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def workload(name: str, image: str) -> str:
    body = yaml.safe_load(deployment(name))
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return yaml.safe_dump(body)


def gate_images(world: World, registry: Registry, public_key: bytes, *, tags: str = "forbid") -> None:
    """The admin's side: the tenant's cosign key, the registry's CA and credentials, and the policy."""
    core = client.CoreV1Api(world.admin)
    ns, suffix = world.operator_namespace, world.id
    core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cosign-{suffix}"), data={"team.pub": public_key.decode()}
        ),
    )
    core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"registry-ca-{suffix}"),
            data={"ca.crt": registry.ca_pem.decode()},
        ),
    )
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}}).encode()
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"registry-{suffix}"),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": base64.b64encode(config).decode()},
        ),
    )
    world.patch_tenant(
        {
            "images": {
                "repositories": [f"{registry.host}/team/*"],
                "tags": tags,
                "verify": {"keysFrom": [{"configMapRef": {"name": f"cosign-{suffix}"}}]},
                "credentialsRef": {"name": f"registry-{suffix}"},
                "caFrom": {"configMapRef": {"name": f"registry-ca-{suffix}"}},
            }
        }
    )  # fmt: skip


def records(world: World) -> list[dict[str, Any]]:
    return [dict(r["spec"]) for r in world.records()]


def refused(world: World, commit: str, reason: str) -> str:
    wait_until(
        lambda: (
            world.status().get("lastAttemptedRevision") == commit and world.ready().get("reason") == reason
        ),
        timeout=90,
        what=f"{commit[:12]} refused with {reason}",
    )
    [record] = [r for r in records(world) if r["commit"] == commit]
    assert (record["outcome"], record["reason"]) == ("Refused", reason)
    return str(world.ready()["message"])


def live_image(world: World, name: str) -> str | None:
    body = world.objects.get(ObjectRef("apps", "v1", "Deployment", world.namespace, name))
    return None if body is None else str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def test_only_a_signed_digest_from_an_allowed_repository_is_applied(operator, world, registry, tmp_path):
    del operator
    key, public = cosign_keypair(tmp_path / "team")
    stranger_key, _ = cosign_keypair(tmp_path / "stranger")
    gate_images(world, registry, public)

    unsigned = push_image(registry, "team/unsigned", "v1")
    foreign = push_image(registry, "other/app", "v1")
    cosign_sign(registry, registry.reference("other/app", foreign), key)
    tagged = push_image(registry, "team/tagged", "v1")
    cosign_sign(registry, registry.reference("team/tagged", tagged), key)
    strangers = push_image(registry, "team/strangers", "v1")
    cosign_sign(registry, registry.reference("team/strangers", strangers), stranger_key)
    good = push_image(registry, "team/web", "v1")
    cosign_sign(registry, registry.reference("team/web", good), key)

    bad = world.work.commit(
        {
            "deploy/a.yaml": workload("a", registry.reference("team/unsigned", unsigned)),
            "deploy/b.yaml": workload("b", registry.reference("other/app", foreign)),
            "deploy/c.yaml": workload("c", f"{registry.host}/team/tagged:v1"),
            "deploy/d.yaml": workload("d", registry.reference("team/strangers", strangers)),
            "deploy/web.yaml": workload("web", registry.reference("team/web", good)),
        },
        sign=world.signer,
    )
    world.work.push()
    world.create_app()
    # Policy first (before any registry is asked: unit-tested with a client that fails on any call):
    # the repository not allowed and the bare tag, together.
    message = refused(world, bad, "ImageNotAllowed")
    assert "2 image violation(s)" in message
    assert (
        "Deployment/b (deploy/b.yaml#0): spec.template.spec.containers[0].image: [ImageNotAllowed]" in message
    )
    assert f"{registry.host}/other/app (from " in message
    assert (
        "Deployment/c (deploy/c.yaml#0): spec.template.spec.containers[0].image: [ImageNotPinned]" in message
    )
    # Then the signatures of every allowed, pinned image, together: none, and a stranger's.
    world.work.git("rm", "-q", "deploy/b.yaml", "deploy/c.yaml")
    unsigned_too = world.work.commit({}, sign=world.signer, message="no foreign image, no tag")
    world.work.push()
    message = refused(world, unsigned_too, "ImageUnsigned")
    assert "2 image violation(s)" in message
    assert (
        f"Deployment/a (deploy/a.yaml#0): spec.template.spec.containers[0].image: [ImageUnsigned] "
        f"{registry.host}/team/unsigned@{unsigned}: no signature"
    ) in message
    assert (
        f"Deployment/d (deploy/d.yaml#0): spec.template.spec.containers[0].image: [ImageUnsigned] "
        f"{registry.host}/team/strangers@{strangers}: signed only by keys the tenant does not trust"
    ) in message
    assert "Deployment/web" not in message
    for said in (message, yaml.safe_dump(records(world))):
        assert registry.password not in said
    for name in ("a", "b", "c", "d", "web"):
        assert live_image(world, name) is None

    world.work.git("rm", "-q", "deploy/a.yaml", "deploy/d.yaml")
    fixed = world.work.commit({}, sign=world.signer, message="only the signed image")
    world.work.push()
    applied(world, fixed, timeout=90)
    assert live_image(world, "web") == registry.reference("team/web", good)
    [record] = [r for r in records(world) if r["commit"] == fixed]
    [used] = record["images"]
    assert (used["image"], used["digest"]) == (registry.reference("team/web", good), good)
    [team_key] = TrustedImageKeys.from_config_maps([{"team.pub": public.decode()}]).fingerprints
    assert used["signer"] == team_key


def test_a_tag_is_resolved_to_its_digest_when_the_tenant_allows_tags(operator, world, registry, tmp_path):
    del operator
    key, public = cosign_keypair(tmp_path / "team")
    gate_images(world, registry, public, tags="resolve")
    digest = push_image(registry, "team/api", "stable")
    cosign_sign(registry, registry.reference("team/api", digest), key)
    commit = world.work.commit(
        {"deploy/api.yaml": workload("api", f"{registry.host}/team/api:stable")}, sign=world.signer
    )
    world.work.push()
    world.create_app()
    applied(world, commit, timeout=90)
    assert live_image(world, "api") == f"{registry.host}/team/api:stable@{digest}"
    [record] = [r for r in records(world) if r["commit"] == commit]
    assert record["images"][0]["digest"] == digest


def test_a_rollback_deploys_the_digest_its_revision_had_not_where_the_tag_points_now(
    operator, world, registry, tmp_path
):
    """A tag moved since: resolving it again would bring back the very image that failed."""
    del operator
    key, public = cosign_keypair(tmp_path / "team")
    gate_images(world, registry, public, tags="resolve")
    first = push_image(registry, "team/api", "stable")
    cosign_sign(registry, registry.reference("team/api", first), key)
    good = world.work.commit(
        {"deploy/api.yaml": workload("api", f"{registry.host}/team/api:stable")}, sign=world.signer
    )
    world.work.push()
    world.create_app(healthTimeout="15s")
    applied(world, good, timeout=90)
    assert live_image(world, "api") == f"{registry.host}/team/api:stable@{first}"

    moved = push_image(registry, "team/api", "stable")
    cosign_sign(registry, registry.reference("team/api", moved), key)
    never_ready = yaml.safe_load(workload("api", f"{registry.host}/team/api:stable"))
    never_ready["spec"]["template"]["metadata"]["annotations"] = {"gitward.dev/kwok-never-ready": "true"}
    bad = world.work.commit({"deploy/api.yaml": yaml.safe_dump(never_ready)}, sign=world.signer)
    world.work.push()
    wait_until(
        lambda: records(world)[-1]["outcome"] == "RolledBack" and records(world)[-1]["commit"] == good,
        timeout=120,
        what="the automatic rollback",
    )
    [failed] = [r for r in records(world) if r["commit"] == bad]
    assert failed["images"][0]["digest"] == moved
    assert live_image(world, "api") == f"{registry.host}/team/api:stable@{first}"
    assert records(world)[-1]["images"][0]["digest"] == first
