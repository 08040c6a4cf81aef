"""The operator's Prometheus metrics, read as evidence that a reconcile ran.

``gitward_reconcile_duration_seconds`` (labels ``namespace``, ``app``) is
observed once at the end of every reconcile of an app, whatever it decided
(skip, hold, deploy, refuse), so its ``_count`` is the number of finished
reconciles of that app in one operator process; a new process starts at 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from support.waiting import wait_until

if TYPE_CHECKING:
    from support.operator import OperatorProcess, World

RECONCILE_HISTOGRAM = "gitward_reconcile_duration_seconds"


def reconcile_count(text: str, namespace: str, app: str = "web") -> int:
    """Finished reconciles of ``namespace/app`` in the Prometheus text ``text`` (0 before the first)."""
    for family in text_string_to_metric_families(text):
        if family.name != RECONCILE_HISTOGRAM:
            continue
        for sample in family.samples:
            if (
                sample.name == f"{RECONCILE_HISTOGRAM}_count"
                and sample.labels.get("namespace") == namespace
                and sample.labels.get("app") == app
            ):
                return int(sample.value)
    return 0


def reconciles(operator: OperatorProcess, world: World, app: str = "web") -> int:
    """Finished reconciles of the world's app in this operator process."""
    return reconcile_count(operator.metrics(), world.namespace, app)


def wait_for_reconciles(
    operator: OperatorProcess, world: World, *, after: int, n: int = 1, timeout: float = 60, app: str = "web"
) -> int:
    """Wait until at least ``n`` reconciles of the app finished since the count was ``after``; return the count.

    Reconciles of one app run one at a time, but the one running when ``after`` was
    read finishes later and counts too. So ``n=1`` proves that a reconcile already
    running (one whose status write was seen) has finished, and ``n=2``, with ``after``
    read once an action is done, proves that a reconcile that started after it finished.
    """

    def enough() -> int | None:
        count = reconciles(operator, world, app)
        return count if count >= after + n else None

    return wait_until(
        enough,
        timeout=timeout,
        what=f"{n} more reconcile(s) of {world.namespace}/{app} after {after} ({RECONCILE_HISTOGRAM}_count)",
    )
