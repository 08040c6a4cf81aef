"""Inventory diff, the prune guard, and apply order."""

from __future__ import annotations

import pytest

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.apply.inventory import PruneGuard, check_guard, to_prune
from gitward.apply.order import prune_order, tier
from gitward.errors import Stalled


def cm(name: str, version: str = "v1") -> ObjectRef:
    return ObjectRef("", version, "ConfigMap", "team-a", name)


def test_prune_is_what_left_the_inventory_regardless_of_version():
    """Removed objects are pruned; an apiVersion change is not a removal."""
    previous = [cm("a"), cm("b"), ObjectRef("autoscaling", "v1", "HorizontalPodAutoscaler", "team-a", "web")]
    current = [cm("a"), ObjectRef("autoscaling", "v2", "HorizontalPodAutoscaler", "team-a", "web")]
    assert to_prune(previous, current) == [cm("b")]


def test_an_empty_commit_is_refused_unless_allowed():
    """Rendering nothing while owning something is EmptySource; allowEmpty lets it through."""
    with pytest.raises(Stalled) as refused:
        check_guard([cm("a")], [], PruneGuard())
    assert refused.value.reason is Reason.EMPTY_SOURCE
    check_guard([cm("a")], [], PruneGuard(allow_empty=True))
    check_guard([], [], PruneGuard())


def test_pruning_more_than_the_share_is_refused():
    """Deleting 3 of 4 is over 50%; 2 of 4 is not; a higher share allows more."""
    previous = [cm(n) for n in "abcd"]
    check_guard(previous, [cm("a"), cm("b")], PruneGuard())
    with pytest.raises(Stalled) as refused:
        check_guard(previous, [cm("a")], PruneGuard())
    assert "3 of the 4" in refused.value.message
    check_guard(previous, [cm("a")], PruneGuard(max_share=0.75))


def test_dependencies_are_applied_first_and_pruned_last():
    """ServiceAccounts and ConfigMaps before RBAC, Services, then workloads; prune in reverse."""
    kinds = ["Deployment", "Service", "ConfigMap", "Role", "ServiceAccount"]
    assert sorted(kinds, key=tier) == ["ConfigMap", "ServiceAccount", "Role", "Service", "Deployment"]
    kinds = ["ConfigMap", "Deployment", "Service"]
    assert [kinds[i] for i in prune_order(kinds)] == ["Deployment", "Service", "ConfigMap"]
