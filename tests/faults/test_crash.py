"""Crash consistency: the operator SIGKILLed between apply and record, against the real control plane.

The window is made wide on purpose, without any hook in the product: commit
B adds a ConfigMap and a Deployment whose pods can only be scheduled on a
node with a label no node has yet, so the apply is done and the health
wait runs for as long as the test likes. The operator is killed there: the
objects are in the cluster, no record and no status say so, except the
``status.applying`` note the apply step wrote before it began. A new
operator then converges:

- the same commit still at the head: B completes, one record for it;
- commit C pushed while no operator ran (B's objects gone from git): C is
  applied, what B had added is pruned although no inventory ever listed
  it, and B is recorded once as ``Failed``/``Interrupted``.

No duplicate and no missing record, the right inventory, the right prune.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitward.api.refs import ObjectRef
from support.operator import OperatorProcess, World, applied
from support.pipeline import configmap, deployment
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

NODE = "kwok-node-0"


@pytest.fixture
def node_label(admin, world) -> Iterator[str]:
    """A label no node has until the test sets it (removed afterwards, also when the test fails)."""
    key = f"gitward.dev/test-{world.id}"
    yield key
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(admin).patch_node(NODE, {"metadata": {"labels": {key: None}}})


@contextlib.contextmanager
def running(kubeconfig: Path, namespace: str, root: Path, name: str) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, namespace, root / "cache", root / f"{name}.log")
    with process:
        yield process


def pinned_deployment(label: str) -> str:
    body = yaml.safe_load(deployment("slow"))
    body["spec"]["template"]["spec"]["nodeSelector"] = {label: "yes"}
    return yaml.safe_dump(body)


def outcomes(world: World) -> list[tuple[str, str, str]]:
    return [(r["spec"]["commit"], r["spec"]["outcome"], r["spec"]["reason"]) for r in world.records()]


def names(refs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["kind"], r["name"]) for r in refs}


def exists(world: World, kind: str, name: str) -> bool:
    group, version = ("apps", "v1") if kind == "Deployment" else ("", "v1")
    return world.objects.get(ObjectRef(group, version, kind, world.namespace, name)) is not None


def kill_during_the_health_wait(world: World, process: OperatorProcess, commit: str) -> None:
    """Wait until B is applied (its objects exist, status.applying names it), then SIGKILL the operator."""
    wait_until(
        lambda: (
            exists(world, "Deployment", "slow")
            and (world.status().get("applying") or {}).get("commit") == commit
        ),
        timeout=60,
        what="commit B applied and waiting for health",
    )
    process.stop(kill=True)
    status = world.status()
    assert status["lastAppliedRevision"] != commit  # nothing but the note says B was applied
    assert names(status["applying"]["inventory"]) == {("ConfigMap", "extra"), ("Deployment", "slow")}
    assert commit not in {c for c, _, _ in outcomes(world)}


def start_world(world: World, label: str) -> tuple[str, str]:
    base = {"deploy/base.yaml": configmap("base")}
    first = world.work.commit(base, sign=world.signer)
    world.work.push()
    world.create_app(healthTimeout="3m", pruneGuard={"maxSharePercent": 100})
    applied(world, first)
    second = world.work.commit(
        {"deploy/extra.yaml": configmap("extra"), "deploy/slow.yaml": pinned_deployment(label)},
        sign=world.signer,
    )
    world.work.push()
    return first, second


def test_killed_between_apply_and_record_the_same_commit_completes_with_one_record(
    kubeconfig, operator_namespace, world, node_label, admin, tmp_path
):
    with running(kubeconfig, operator_namespace, tmp_path, "first") as process:
        first, second = start_world(world, node_label)
        kill_during_the_health_wait(world, process, second)

    client.CoreV1Api(admin).patch_node(NODE, {"metadata": {"labels": {node_label: "yes"}}})
    with running(kubeconfig, operator_namespace, tmp_path, "second"):
        applied(world, second, timeout=120)
        status = world.status()
    assert "applying" not in status
    assert names(status["inventory"]) == {
        ("ConfigMap", "base"),
        ("ConfigMap", "extra"),
        ("Deployment", "slow"),
    }
    assert outcomes(world) == [(first, "Applied", "Succeeded"), (second, "Applied", "Succeeded")]


def test_killed_between_apply_and_record_a_later_commit_prunes_what_the_interrupted_apply_added(
    kubeconfig, operator_namespace, world, node_label, tmp_path
):
    with running(kubeconfig, operator_namespace, tmp_path, "first") as process:
        first, second = start_world(world, node_label)
        kill_during_the_health_wait(world, process, second)

    # While no operator runs, B is replaced: its objects leave git.
    world.work.git("rm", "-q", "deploy/extra.yaml", "deploy/slow.yaml")
    third = world.work.commit(message="back to the base", sign=world.signer)
    world.work.push()
    with running(kubeconfig, operator_namespace, tmp_path, "second"):
        applied(world, third, timeout=120)
        status = world.status()
    assert "applying" not in status
    assert names(status["inventory"]) == {("ConfigMap", "base")}
    assert not exists(world, "ConfigMap", "extra")
    wait_until(lambda: not exists(world, "Deployment", "slow"), timeout=30, what="the Deployment pruned")
    assert outcomes(world) == [
        (first, "Applied", "Succeeded"),
        (second, "Failed", "Interrupted"),
        (third, "Applied", "Succeeded"),
    ]
    third_changes = {(c["kind"], c["name"], c["action"]) for c in world.records()[-1]["spec"]["changes"]}
    assert {("ConfigMap", "extra", "pruned"), ("Deployment", "slow", "pruned")} <= third_changes
