"""The order objects are applied in: what others depend on first.

ServiceAccounts, ConfigMaps, Secrets and RBAC before the workloads that
mount or run as them; Services before workloads; autoscalers, disruption
budgets and ingresses last. Objects in the same tier are independent and
may be applied concurrently. Prune goes in reverse.
"""

from __future__ import annotations

from collections.abc import Sequence

_TIERS: dict[str, int] = {
    "NetworkPolicy": 0,
    "ServiceAccount": 1,
    "ConfigMap": 1,
    "Secret": 1,
    "PersistentVolumeClaim": 1,
    "Role": 2,
    "RoleBinding": 3,
    "Service": 4,
    "Deployment": 5,
    "StatefulSet": 5,
    "DaemonSet": 5,
    "ReplicaSet": 5,
    "Job": 5,
    "CronJob": 5,
    "Pod": 5,
    "HorizontalPodAutoscaler": 6,
    "PodDisruptionBudget": 6,
    "Ingress": 6,
}
_UNKNOWN_TIER = 5


def tier(kind: str) -> int:
    """The tier of a kind; unknown kinds go with the workloads."""
    return _TIERS.get(kind, _UNKNOWN_TIER)


def prune_order(kinds: Sequence[str]) -> list[int]:
    """Indexes of ``kinds`` in prune order: workloads before what they use."""
    return sorted(range(len(kinds)), key=lambda i: -tier(kinds[i]))
