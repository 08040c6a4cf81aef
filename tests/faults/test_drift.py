"""Drift and field conflicts, against the real control plane and the operator as a process.

Objects gitward applied are edited (an Update by ``kubectl-edit``), scaled
(the scale subresource) and deleted by hand; with ``driftPolicy: correct``
each is put back as the tenant and recorded (trigger ``drift``, the object,
field and field manager), with ``report`` it is recorded once and the
``Drifted`` condition says so while nothing is changed. Objects and fields
the user marks as theirs are left alone. A field another manager owns is a
``FieldConflict`` naming it, until ``spec.force`` takes it over. Every wait
is on the cluster (objects, status, records, Events) or the operator's
metrics, with a deadline.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from support.metrics import reconciles, wait_for_reconciles
from support.operator import OperatorProcess, World, applied
from support.pipeline import configmap, deployment
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def annotated(manifest: str, **annotations: str) -> str:
    body = yaml.safe_load(manifest)
    body["metadata"]["annotations"] = {**(body["metadata"].get("annotations") or {}), **annotations}
    return yaml.safe_dump(body)


def specs(world: World) -> list[dict[str, Any]]:
    return [dict(r["spec"]) for r in world.records()]


def drift_records(world: World) -> list[dict[str, Any]]:
    return [s for s in specs(world) if s["trigger"] == "drift"]


def condition(world: World, kind: str) -> dict[str, Any]:
    return next((dict(c) for c in world.status().get("conditions") or () if c["type"] == kind), {})


def edit_configmap(world: World, name: str, value: str, manager: str = "kubectl-edit") -> None:
    client.CoreV1Api(world.admin).patch_namespaced_config_map(
        name, world.namespace, {"data": {"key": value}}, field_manager=manager
    )


def configmap_value(world: World, name: str) -> str | None:
    data = world.configmap(name)
    return None if data is None else data.get("key")


def replicas(world: World, name: str = "web") -> int:
    scale = client.AppsV1Api(world.admin).read_namespaced_deployment_scale(name, world.namespace)
    return int(scale.spec.replicas)


def scale(world: World, count: int, name: str = "web") -> None:
    client.AppsV1Api(world.admin).patch_namespaced_deployment_scale(
        name, world.namespace, {"spec": {"replicas": count}}, field_manager="kubectl-scale"
    )


def metric(operator: OperatorProcess, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_drift_is_corrected_as_the_tenant_and_recorded_with_field_and_manager(operator, world):
    commit = world.work.commit(
        {
            "deploy/settings.yaml": configmap("settings", key="from-git"),
            "deploy/web.yaml": deployment("web"),
        },
        sign=world.signer,
    )
    world.work.push()
    world.create_app(interval="1m")  # corrections come from the watch, not from the next poll
    applied(world, commit)

    edit_configmap(world, "settings", "by-hand")
    wait_until(lambda: configmap_value(world, "settings") == "from-git", timeout=60, what="edit undone")
    edited = wait_until(lambda: drift_records(world), timeout=30, what="the edit's drift record")
    assert edited[0]["commit"] == commit
    assert (edited[0]["outcome"], edited[0]["reason"]) == ("Applied", "DriftCorrected")
    assert edited[0]["drift"] == [
        {
            "group": "",
            "kind": "ConfigMap",
            "namespace": world.namespace,
            "name": "settings",
            "action": "modified",
            "fields": ["data.key"],
            "managers": ["kubectl-edit (Update)"],
        }
    ]
    assert [c["name"] for c in edited[0]["changes"] if c["action"] == "updated"] == ["settings"]

    scale(world, 3)
    wait_until(lambda: len(drift_records(world)) == 2, timeout=60, what="the scale's drift record")
    assert replicas(world) == 1
    scaled = drift_records(world)[1]["drift"]
    assert [(d["kind"], d["fields"], d["managers"]) for d in scaled] == [
        ("Deployment", ["spec.replicas"], ["kubectl-scale (Update)"])
    ]

    client.CoreV1Api(world.admin).delete_namespaced_config_map("settings", world.namespace)
    wait_until(lambda: len(drift_records(world)) == 3, timeout=60, what="the deletion's drift record")
    assert configmap_value(world, "settings") == "from-git"
    deleted = drift_records(world)[2]
    assert [(d["kind"], d["name"], d["action"]) for d in deleted["drift"]] == [
        ("ConfigMap", "settings", "deleted")
    ]
    assert [c["action"] for c in deleted["changes"] if c["name"] == "settings"] == ["created"]

    drifted = condition(world, "Drifted")
    assert (drifted["status"], drifted["reason"]) == ("False", "DriftCorrected")
    assert world.ready()["status"] == "True"
    events = client.CoreV1Api(world.admin).list_namespaced_event(world.namespace).items
    assert sum(1 for e in events if e.reason == "DriftCorrected" and e.involved_object.name == "web") == 3
    assert metric(operator, "gitward_drift_total", namespace=world.namespace, action="corrected") == 3
    # One record per finding: the initial deploy and three corrections, nothing else.
    assert [(s["trigger"], s["outcome"]) for s in specs(world)] == [("poll", "Applied")] + [
        ("drift", "Applied")
    ] * 3


def test_reported_drift_is_recorded_once_and_what_the_user_keeps_is_left_alone(operator, world):
    commit = world.work.commit(
        {
            "deploy/settings.yaml": configmap("settings", key="from-git"),
            "deploy/mine.yaml": configmap("mine", key="from-git"),
            "deploy/web.yaml": annotated(deployment("web"), **{"gitward.dev/ignore-fields": "spec.replicas"}),
            "deploy/api.yaml": deployment("api"),
            "deploy/gone.yaml": configmap("gone", key="from-git"),
        },
        sign=world.signer,
    )
    world.work.push()
    world.create_app(interval="10s", driftPolicy="report")
    applied(world, commit)

    # The user's: an object they took over by annotation, a field the manifest leaves to them.
    client.CoreV1Api(world.admin).patch_namespaced_config_map(
        "mine",
        world.namespace,
        {"metadata": {"annotations": {"gitward.dev/reconcile": "disabled"}}, "data": {"key": "theirs"}},
        field_manager="kubectl-edit",
    )
    scale(world, 2)
    edit_configmap(world, "settings", "by-hand")

    reported = wait_until(lambda: drift_records(world), timeout=60, what="the drift report")
    assert (reported[0]["outcome"], reported[0]["reason"]) == ("Drifted", "Drifted")
    assert [(d["name"], d["fields"]) for d in reported[0]["drift"]] == [("settings", ["data.key"])]
    drifted = condition(world, "Drifted")
    assert (drifted["status"], drifted["reason"]) == ("True", "Drifted")
    assert "settings data.key by kubectl-edit (Update)" in drifted["message"]

    # Nothing was changed, and the report is not repeated at each poll (two polls, proven by metrics).
    wait_for_reconciles(operator, world, after=reconciles(operator, world), n=2, timeout=45)
    assert len(drift_records(world)) == 1
    assert configmap_value(world, "settings") == "by-hand"
    assert configmap_value(world, "mine") == "theirs"
    assert replicas(world) == 2
    assert metric(operator, "gitward_drift_total", namespace=world.namespace, action="reported") == 1

    edit_configmap(world, "settings", "from-git")  # put back by hand
    wait_until(
        lambda: condition(world, "Drifted").get("reason") == "InSync", timeout=60, what="Drifted=False"
    )
    assert condition(world, "Drifted")["status"] == "False"
    assert len(drift_records(world)) == 1

    # Scaled and deleted by hand: reported (each finding once), neither scaled back nor recreated.
    scale(world, 3, name="api")
    wait_until(lambda: len(drift_records(world)) == 2, timeout=60, what="the scale's report")
    assert [(d["name"], d["fields"], d["managers"]) for d in drift_records(world)[1]["drift"]] == [
        ("api", ["spec.replicas"], ["kubectl-scale (Update)"])
    ]
    client.CoreV1Api(world.admin).delete_namespaced_config_map("gone", world.namespace)
    wait_until(lambda: len(drift_records(world)) == 3, timeout=60, what="the deletion's report")
    assert ("gone", "deleted") in {(d["name"], d["action"]) for d in drift_records(world)[2]["drift"]}
    wait_for_reconciles(operator, world, after=reconciles(operator, world), n=2, timeout=45)
    assert len(drift_records(world)) == 3
    assert replicas(world, "api") == 3
    assert world.configmap("gone") is None
    assert condition(world, "Drifted")["status"] == "True"
    assert [s["outcome"] for s in specs(world)] == ["Applied", "Drifted", "Drifted", "Drifted"]


def test_a_field_another_manager_owns_is_a_conflict_until_spec_force(operator, world):
    first = world.work.commit(
        {"deploy/settings.yaml": configmap("settings", key="from-git")}, sign=world.signer
    )
    world.work.push()
    world.create_app(interval="10s")
    applied(world, first)

    # A second field manager applies a field of its own: not gitward's, so not drift.
    other = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"extra": "x"},
    }
    world.objects.apply(
        {**other, "metadata": {"name": "settings", "namespace": world.namespace}}, field_manager="other-tool"
    )
    # The next commit sets that field too: the other manager owns it, so it is refused, naming it.
    second = world.work.commit(
        {"deploy/settings.yaml": configmap("settings", key="from-git", extra="from-git")}, sign=world.signer
    )
    world.work.push()
    refused = wait_until(
        lambda: next((s for s in specs(world) if s["commit"] == second), None), timeout=60, what="the refusal"
    )
    assert (refused["outcome"], refused["reason"]) == ("Refused", "FieldConflict")
    ready = wait_until(
        lambda: world.ready() if world.ready().get("reason") == "FieldConflict" else None,
        timeout=30,
        what="Ready=False FieldConflict",
    )
    assert 'conflict with "other-tool"' in ready["message"]
    assert ".data.extra" in ready["message"]
    assert world.configmap("settings") == {"key": "from-git", "extra": "x"}

    world.patch_app({"force": True})
    applied(world, second)
    assert world.configmap("settings") == {"key": "from-git", "extra": "from-git"}
    assert [(s["commit"], s["outcome"], s["reason"]) for s in specs(world)] == [
        (first, "Applied", "Succeeded"),
        (second, "Refused", "FieldConflict"),
        (second, "Applied", "Succeeded"),
    ]
