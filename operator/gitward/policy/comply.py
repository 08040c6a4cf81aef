"""Help to comply: for a workload that breaks the tenant's Pod Security level, the patch that fixes it.

"Restricted by default" is right for a security product, and should cost a
user minutes, not an afternoon. For each refused workload this builds a
kustomize strategic-merge patch that sets what the level requires and
can be set without knowing the application (``runAsNonRoot``,
``seccompProfile: RuntimeDefault``, ``allowPrivilegeEscalation: false``,
dropping ALL capabilities, not privileged), checks that the patched pod
spec would pass, and says what is left that only a person can change (an
image that runs as root, a hostPath volume). Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from gitward.api.resources import PodSecurityLevel
from gitward.policy import podsecurity
from gitward.policy.kinds import POD_SPEC_PATHS, kind_key
from gitward.render.manifests import Manifest

_CONTAINER_GROUPS = ("initContainers", "containers")


@dataclass(frozen=True, slots=True)
class Remedy:
    """The patch for one workload, and what it cannot fix."""

    manifest: Manifest
    patch: Mapping[str, Any]
    left: tuple[str, ...]

    def to_yaml(self) -> str:
        """The patch as a YAML document, with a comment naming the workload and anything left to do."""
        header = f"# {self.manifest.describe}: makes it comply"
        if self.left:
            header += "; still to change by hand: " + "; ".join(self.left)
        return header + "\n" + yaml.safe_dump(dict(self.patch), sort_keys=False)


def _nest(path: Sequence[str], leaf: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def _container_fix(container: Mapping[str, Any], level: PodSecurityLevel) -> dict[str, Any]:
    context: dict[str, Any] = {"privileged": False}
    if level is PodSecurityLevel.RESTRICTED:
        context.update(
            allowPrivilegeEscalation=False,
            capabilities={"drop": ["ALL"]},
            runAsNonRoot=True,
            seccompProfile={"type": "RuntimeDefault"},
        )
    existing = container.get("securityContext") or {}
    if isinstance(existing, Mapping) and existing.get("seccompProfile", {}).get("type") == "Localhost":
        context.pop("seccompProfile", None)
    return {"name": container.get("name"), "securityContext": context}


def _apply(spec: Mapping[str, Any], fix: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec as the API server would merge the patch (containers by name, maps recursively)."""
    merged = copy.deepcopy(dict(spec))
    for key, value in fix.items():
        if key in _CONTAINER_GROUPS:
            by_name = {c.get("name"): c for c in value}
            merged[key] = [
                _merge(container, by_name.get(container.get("name"), {}))
                for container in merged.get(key) or ()
            ]
        elif isinstance(value, Mapping):
            merged[key] = _merge(merged.get(key) or {}, value)
        else:
            merged[key] = value
    return merged


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def remedy(manifest: Manifest, level: PodSecurityLevel) -> Remedy | None:
    """The patch that makes ``manifest`` comply with ``level``; None if it already does or is no workload."""
    key = kind_key(manifest.api_version, manifest.kind)
    path = POD_SPEC_PATHS.get(key)
    if path is None:
        return None
    spec: Any = manifest.obj
    for step in path:
        spec = spec.get(step) if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not podsecurity.violations(spec, level):
        return None
    fix: dict[str, Any] = {}
    if level is PodSecurityLevel.RESTRICTED:
        fix["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    for group in _CONTAINER_GROUPS:
        containers = [c for c in spec.get(group) or () if isinstance(c, Mapping)]
        if containers:
            fix[group] = [_container_fix(c, level) for c in containers]
    left = tuple(podsecurity.violations(_apply(spec, fix), level))
    patch = {
        "apiVersion": manifest.api_version,
        "kind": manifest.kind,
        "metadata": {"name": manifest.name},
        **_nest(path, fix),
    }
    return Remedy(manifest=manifest, patch=patch, left=left)


def remedies(manifests: Sequence[Manifest], level: PodSecurityLevel) -> list[Remedy]:
    """A patch for every workload in ``manifests`` that breaks ``level``."""
    return [found for manifest in manifests if (found := remedy(manifest, level)) is not None]


INSTRUCTIONS = (
    "To comply, commit these patches (for example as pod-security-patch.yaml) and list the file under "
    "`patches:` in the kustomization of source.path (with plain YAML, add a kustomization.yaml that lists "
    "your files under `resources:`)."
)
