"""Is an object healthy? A pure function of its body, as in gitops-engine's health package.

Codes are ordered from best to worst; workloads are healthy when the
controller has observed the latest spec and every replica is updated and
available (Deployments, StatefulSets, DaemonSets), Jobs when complete.
Everything else is healthy once it exists.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class Health(enum.IntEnum):
    """Health codes, best first; a larger value is worse."""

    HEALTHY = 0
    PROGRESSING = 1
    DEGRADED = 2
    MISSING = 3

    def is_worse(self, other: Health) -> bool:
        """Whether this code is worse than ``other``."""
        return self > other


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """A health code with a human explanation."""

    health: Health
    message: str = ""
    final: bool = False  # it will not get better by waiting (a failed Job): a wait may end early

    @staticmethod
    def settled(statuses: Iterable[HealthStatus]) -> bool:
        """Whether waiting is over: everything healthy, or something that will not recover."""
        listed = list(statuses)
        return all(s.health is Health.HEALTHY for s in listed) or any(s.final for s in listed)


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or () if isinstance(c, Mapping)}


def _generation_observed(obj: Mapping[str, Any]) -> bool:
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    return generation is None or (observed is not None and observed >= generation)


def _deployment(obj: Mapping[str, Any]) -> HealthStatus:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    progressing = _conditions(status).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return HealthStatus(
            Health.DEGRADED, f"deployment exceeded its progress deadline: {progressing.get('message', '')}"
        )
    if not _generation_observed(obj):
        return HealthStatus(Health.PROGRESSING, "waiting for the controller to observe the new spec")
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    if updated < wanted:
        return HealthStatus(Health.PROGRESSING, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return HealthStatus(Health.PROGRESSING, f"{total - updated} old replicas pending termination")
    if available < updated:
        return HealthStatus(Health.PROGRESSING, f"{available} of {updated} updated replicas available")
    return HealthStatus(Health.HEALTHY, f"{available} of {wanted} replicas available")


def _statefulset(obj: Mapping[str, Any]) -> HealthStatus:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not _generation_observed(obj):
        return HealthStatus(Health.PROGRESSING, "waiting for the controller to observe the new spec")
    wanted = spec.get("replicas", 1)
    ready = status.get("readyReplicas", 0)
    if ready < wanted:
        return HealthStatus(Health.PROGRESSING, f"{ready} of {wanted} replicas ready")
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate" and status.get("updateRevision") != status.get("currentRevision"):
        return HealthStatus(Health.PROGRESSING, "rolling update in progress")
    return HealthStatus(Health.HEALTHY, f"{ready} of {wanted} replicas ready")


def _daemonset(obj: Mapping[str, Any]) -> HealthStatus:
    status = obj.get("status") or {}
    if not _generation_observed(obj):
        return HealthStatus(Health.PROGRESSING, "waiting for the controller to observe the new spec")
    wanted = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    if updated < wanted or available < wanted:
        return HealthStatus(Health.PROGRESSING, f"{updated} updated and {available} available of {wanted}")
    return HealthStatus(Health.HEALTHY, f"{available} of {wanted} pods available")


def _job(obj: Mapping[str, Any]) -> HealthStatus:
    conditions = _conditions(obj.get("status") or {})
    if conditions.get("Failed", {}).get("status") == "True":
        message = f"job failed: {conditions['Failed'].get('message', '')}"
        return HealthStatus(Health.DEGRADED, message, final=True)
    if conditions.get("Complete", {}).get("status") == "True":
        return HealthStatus(Health.HEALTHY, "job complete")
    return HealthStatus(Health.PROGRESSING, "job running")


_CHECKS = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("batch", "Job"): _job,
}


def assess(obj: Mapping[str, Any] | None) -> HealthStatus:
    """The health of one object body (None: it does not exist)."""
    if obj is None:
        return HealthStatus(Health.MISSING, "not found")
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    check = _CHECKS.get((group, str(obj.get("kind", ""))))
    return check(obj) if check else HealthStatus(Health.HEALTHY, "exists")


def needs_waiting(group: str, kind: str) -> bool:
    """Whether this kind has a health check worth waiting for."""
    return (group, kind) in _CHECKS
