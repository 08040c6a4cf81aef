"""Tests in the deployment: a commit's test Jobs run as the tenant after its workloads are healthy.

Against the real control plane and the operator as a process: kwok runs the Jobs' pods (a pod
annotated ``gitward.dev/kwok-exit-code`` fails, with ``gitward.dev/kwok-termination-message`` as
what its kubelet would report from the log's tail). A passing test leaves the revision Healthy
with the result in its record; a failing one is ``TestFailed`` with the Job's condition and a
secret-free log tail in the record, and automatic rollback brings back the last healthy commit.
"""

from __future__ import annotations

import base64
import copy
import uuid
from typing import Any

import pytest
import yaml

from gitward.api.refs import ObjectRef
from support.operator import World, applied
from support.pipeline import RESTRICTED_POD, configmap, deployment
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def hook_job(name: str, *, exit_code: int | None = None, message: str = "") -> str:
    pod = copy.deepcopy(RESTRICTED_POD)
    pod["restartPolicy"] = "Never"
    annotations = {}
    if exit_code is not None:
        annotations = {
            "gitward.dev/kwok-exit-code": str(exit_code),
            "gitward.dev/kwok-termination-message": message,
        }
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "annotations": {"gitward.dev/hook": "test"}},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": annotations}, "spec": pod},
        },
    }
    return yaml.safe_dump(body)


def secret(name: str, **data: str) -> str:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": encoded}
    )


def records(world: World) -> list[dict[str, Any]]:
    return [dict(r["spec"]) for r in world.records()]


def condition(world: World, kind: str) -> dict[str, Any]:
    return next((dict(c) for c in world.status().get("conditions") or () if c["type"] == kind), {})


def job(world: World, name: str) -> dict[str, Any] | None:
    return world.objects.get(ObjectRef("batch", "v1", "Job", world.namespace, name))


def test_passing_tests_make_the_revision_healthy_and_a_failing_one_rolls_it_back(operator, world):
    del operator
    world.patch_tenant({"policy": {"allowPlaintextSecrets": True}})
    token = f"tok-{uuid.uuid4().hex}"
    good = world.work.commit(
        {
            "deploy/settings.yaml": configmap("settings", key="good"),
            "deploy/web.yaml": deployment("web"),
            "deploy/smoke.yaml": hook_job("smoke"),
        },
        sign=world.signer,
    )
    world.work.push()
    world.create_app(healthTimeout="60s")
    applied(world, good)
    wait_until(lambda: world.ready().get("status") == "True", timeout=60, what="Ready after the tests")
    first = records(world)[-1]
    assert (first["commit"], first["outcome"]) == (good, "Applied")
    assert first["tests"] == [{"name": "smoke", "outcome": "Succeeded", "message": "job complete"}]
    ran = job(world, "smoke")
    assert ran is not None
    assert ran["metadata"]["annotations"]["gitward.dev/revision"] == good
    assert "smoke" not in {item["name"] for item in world.status().get("inventory") or ()}

    bad = world.work.commit(
        {
            "deploy/settings.yaml": configmap("settings", key="bad"),
            "deploy/creds.yaml": secret("creds", token=token),
            "deploy/smoke.yaml": hook_job(
                "smoke", exit_code=3, message=f"GET /healthz: 503 (sent Authorization: {token})"
            ),
        },
        sign=world.signer,
    )
    world.work.push()
    wait_until(
        lambda: (
            [r["outcome"] for r in records(world) if r["commit"] == bad] == ["Failed"]
            and records(world)[-1]["outcome"] == "RolledBack"
        ),
        timeout=120,
        what="the failed test's record and the rollback",
    )
    failed = next(r for r in records(world) if r["commit"] == bad)
    assert failed["reason"] == "TestFailed"
    [result] = failed["tests"]
    assert (result["name"], result["outcome"], result["reason"]) == (
        "smoke",
        "Failed",
        "BackoffLimitExceeded",
    )
    assert "container app exited 3" in result["logTail"]
    assert "GET /healthz: 503 (sent Authorization: [redacted])" in result["logTail"]
    rolled = records(world)[-1]
    assert (rolled["commit"], rolled["trigger"], rolled["reason"]) == (good, "auto-rollback", "RolledBack")
    wait_until(
        lambda: world.configmap("settings") == {"key": "good"}, timeout=30, what="the good config back"
    )
    healthy = condition(world, "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "RolledBack")
    assert "failed its tests" in healthy["message"]
    assert world.status()["lastAppliedRevision"] == good
    everything = yaml.safe_dump([world.status(), records(world)])
    assert token not in everything
    assert base64.b64encode(token.encode()).decode() not in everything

    # No inventory lists a test Job: deleting the app deletes its last run too.
    assert job(world, "smoke") is not None
    world.objects.delete(world.app_ref)
    wait_until(lambda: job(world, "smoke") is None, timeout=60, what="the test Job deleted with the app")


def test_a_hook_that_is_not_a_job_is_refused_with_the_rest_of_the_commit(operator, world):
    del operator
    hooked = yaml.safe_load(configmap("check"))
    hooked["metadata"]["annotations"] = {"gitward.dev/hook": "test"}
    commit = world.work.commit(
        {"deploy/web.yaml": deployment("web"), "deploy/check.yaml": yaml.safe_dump(hooked)},
        sign=world.signer,
    )
    world.work.push()
    world.create_app()
    wait_until(lambda: world.ready().get("reason") == "PolicyViolation", timeout=60, what="the refusal")
    assert "gitward.dev/hook: test is for Jobs (batch/v1), not ConfigMap" in world.ready()["message"]
    assert world.status().get("lastAttemptedRevision") == commit
    assert world.objects.get(ObjectRef("apps", "v1", "Deployment", world.namespace, "web")) is None
