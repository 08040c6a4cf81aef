"""Manifests written for other tools: a Namespace the tenant owns is left out; other tools' annotations are noted."""

from __future__ import annotations

from gitward.policy.foreign import sort_out
from gitward.render.manifests import Manifest


def manifest(kind: str, name: str, annotations: dict[str, str] | None = None) -> Manifest:
    metadata: dict[str, object] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    return Manifest({"apiVersion": "v1", "kind": kind, "metadata": metadata}, "deploy/x.yaml", 0)


def test_a_namespace_the_tenant_owns_is_left_out_and_said_so():
    """Namespace/team-a (owned) is dropped with a note; Namespace/kube-system is kept for policy to refuse."""
    result = sort_out(
        [manifest("Namespace", "team-a"), manifest("Namespace", "kube-system")], tenant_namespaces=["team-a"]
    )
    assert [m.name for m in result.kept] == ["kube-system"]
    assert len(result.notes) == 1
    assert "Namespace/team-a" in result.notes[0]
    assert "fence" in result.notes[0]


def test_hook_and_ordering_annotations_of_other_tools_are_noted_not_honoured():
    """An Argo CD PostSync hook and a Helm hook are applied like any object; the record names what was ignored."""
    hook = manifest(
        "ConfigMap", "migrate", {"argocd.argoproj.io/hook": "PostSync", "argocd.argoproj.io/sync-wave": "2"}
    )
    helm = manifest("ConfigMap", "helm", {"helm.sh/hook": "pre-install", "team": "a"})
    plain = manifest("ConfigMap", "plain", {"team": "a"})
    result = sort_out([hook, helm, plain], tenant_namespaces=["team-a"])
    assert [m.name for m in result.kept] == ["migrate", "helm", "plain"]
    assert result.notes == (
        "ignored on ConfigMap/migrate (deploy/x.yaml#0): argocd.argoproj.io/hook, argocd.argoproj.io/sync-wave",
        "ignored on ConfigMap/helm (deploy/x.yaml#0): helm.sh/hook",
    )
