"""Manifests written for other tools: what gitward leaves out, and which of their annotations it ignores.

Real repositories carry objects and annotations meant for another
deployer. Decided here, purely, so the record can say so:

- A ``Namespace`` manifest naming one of the tenant's own namespaces is
  left out, not refused: the namespace and its labels are the fence's,
  which the operator writes from the tenant's spec, so nothing in the
  manifest can change them. A Namespace the tenant does not own is still
  refused by policy (cluster-scoped).
- Hook and ordering annotations of Argo CD, Helm, kapp and Flux are not
  honoured (gitward has its own apply order, by kind); the object is
  applied as any other, and the record lists the annotations ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gitward.render.manifests import Manifest

FOREIGN_ANNOTATIONS = (
    "argocd.argoproj.io/hook",
    "argocd.argoproj.io/hook-delete-policy",
    "argocd.argoproj.io/sync-wave",
    "argocd.argoproj.io/sync-options",
    "helm.sh/hook",
    "helm.sh/hook-weight",
    "helm.sh/hook-delete-policy",
    "kapp.k14s.io/change-group",
    "kapp.k14s.io/change-rule",
    "kustomize.toolkit.fluxcd.io/prune",
    "kustomize.toolkit.fluxcd.io/ssa",
)


@dataclass(frozen=True, slots=True)
class Sorted:
    """The manifests to apply, and what a record should say was left out or ignored."""

    kept: tuple[Manifest, ...]
    notes: tuple[str, ...]


def sort_out(manifests: Sequence[Manifest], *, tenant_namespaces: Sequence[str]) -> Sorted:
    """Leave out Namespace manifests of the tenant's own namespaces; note other tools' annotations."""
    kept: list[Manifest] = []
    notes: list[str] = []
    for manifest in manifests:
        if (
            manifest.api_version == "v1"
            and manifest.kind == "Namespace"
            and manifest.name in tenant_namespaces
        ):
            notes.append(f"left out {manifest.describe}: the namespace belongs to the tenant's fence")
            continue
        annotations = (manifest.obj.get("metadata") or {}).get("annotations") or {}
        ignored = sorted(key for key in annotations if key in FOREIGN_ANNOTATIONS)
        if ignored:
            notes.append(f"ignored on {manifest.describe}: {', '.join(ignored)}")
        kept.append(manifest)
    return Sorted(kept=tuple(kept), notes=tuple(notes))
