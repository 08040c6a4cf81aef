"""Help to comply: the patch offered for a workload that breaks Pod Security does make it comply."""

from __future__ import annotations

import yaml

from gitward.api.resources import PodSecurityLevel
from gitward.policy import podsecurity
from gitward.policy.comply import _apply, remedies, remedy
from gitward.render.manifests import Manifest


def deployment(**pod) -> Manifest:
    spec = {"containers": [{"name": "web", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}], **pod}
    body = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
    }
    return Manifest(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": body},
        "d.yaml",
        0,
    )


def test_the_patch_for_an_ordinary_workload_makes_it_restricted():
    """A Deployment with no securityContext gets a patch that, merged, leaves no restricted violation."""
    workload = deployment()
    spec = workload.obj["spec"]["template"]["spec"]
    assert podsecurity.violations(spec, PodSecurityLevel.RESTRICTED)
    found = remedy(workload, PodSecurityLevel.RESTRICTED)
    assert found is not None
    assert found.left == ()
    patch = found.patch
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "web")
    fix = patch["spec"]["template"]["spec"]
    assert [c["name"] for c in fix["containers"]] == ["web", "sidecar"]
    assert podsecurity.violations(_apply(spec, fix), PodSecurityLevel.RESTRICTED) == []
    document = yaml.safe_load(found.to_yaml())
    assert document == dict(patch)


def test_what_a_patch_cannot_fix_is_said():
    """A hostPath volume or an image run as root cannot be patched away: the remedy names it."""
    workload = deployment(
        volumes=[{"name": "host", "hostPath": {"path": "/var/run"}}], securityContext={"runAsUser": 0}
    )
    found = remedy(workload, PodSecurityLevel.RESTRICTED)
    assert found is not None
    assert any("hostPath" in item or "host" in item for item in found.left), found.left
    assert "still to change by hand" in found.to_yaml()


def test_compliant_workloads_and_other_kinds_get_no_patch():
    """Nothing is offered where nothing is wrong."""
    ok = deployment(securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}})
    for container in ok.obj["spec"]["template"]["spec"]["containers"]:
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    config = Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "c.yaml", 0)
    assert remedies([ok, config], PodSecurityLevel.RESTRICTED) == []
