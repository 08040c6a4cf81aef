"""What an app owns, what a commit would prune, and the guard against pruning everything.

Pure: inventories are lists of :class:`~gitward.api.refs.ObjectRef`.
A commit that renders nothing, or that would delete more than a set share
of what the app owns, is far more often a mistake (a wrong path, a broken
generator, a bad merge) than an intent, so it is refused as ``EmptySource``
unless the app opts in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.errors import Stalled

OWNER_ANNOTATION = "gitward.dev/owner"
MANAGED_LABEL = "gitward.dev/managed-by"


@dataclass(frozen=True, slots=True)
class PruneGuard:
    """How much an app lets one commit delete."""

    allow_empty: bool = False
    max_share: float = 0.5


def _identity(ref: ObjectRef) -> tuple[str, str, str, str]:
    # The version is not part of an object's identity: a move from v1beta1 to v1 is not a prune.
    return (ref.group, ref.kind, ref.namespace, ref.name)


def to_prune(previous: Sequence[ObjectRef], current: Sequence[ObjectRef]) -> list[ObjectRef]:
    """Objects in the previous inventory that the new commit no longer has."""
    keep = {_identity(ref) for ref in current}
    return [ref for ref in previous if _identity(ref) not in keep]


def check_guard(previous: Sequence[ObjectRef], current: Sequence[ObjectRef], guard: PruneGuard) -> None:
    """Refuse a commit that would empty the app, or prune more than ``guard.max_share`` of it."""
    if guard.allow_empty or not previous:
        return
    if not current:
        raise Stalled(
            Reason.EMPTY_SOURCE,
            f"the commit renders no objects and would delete all {len(previous)} the app owns; "
            "set spec.pruneGuard.allowEmpty to allow it",
        )
    pruned = to_prune(previous, current)
    share = len(pruned) / len(previous)
    if share > guard.max_share:
        raise Stalled(
            Reason.EMPTY_SOURCE,
            f"the commit would delete {len(pruned)} of the {len(previous)} objects the app owns "
            f"({share:.0%} > {guard.max_share:.0%}); raise spec.pruneGuard.maxSharePercent to allow it",
        )


def owner_of(app_namespace: str, app_name: str) -> str:
    """The owner annotation value for an app."""
    return f"{app_namespace}/{app_name}"
