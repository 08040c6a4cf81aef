"""The operator as a process, end to end: deploy, change, refuse, revert, roll back, auto-roll back, webhook, restart.

`gitward run` watches the real API server; repositories are served over
HTTPS by git http-backend on loopback; commits are signed with real SSH
keys. Every flow is observed only through the cluster: status, records,
Events and the applied objects. Nothing waits a fixed time: a test waits for
the status write, record or metric that proves what it asserts on, and every
"nothing happened" waits first for a reconcile that ran after the action
(``gitward_reconcile_duration_seconds_count`` of the app, on /metrics).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from gitward.api.refs import ObjectRef
from gitward.history.store import list_records
from support.metrics import reconciles, wait_for_reconciles
from support.operator import WEBHOOK_SECRET, OperatorProcess, World, applied, push_payload
from support.pipeline import configmap, deployment
from support.toolpaths import kubectl_binary
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


def push(world: World, files: dict[str, str], *, sign: bool = True, message: str = "change") -> str:
    commit = world.work.commit(files, message=message, sign=world.signer if sign else None)
    world.work.push()
    return commit


def deployed(world: World, files: dict[str, str] | None = None, **spec: str) -> str:
    """Push a first signed commit, create the app, and wait until the commit is applied."""
    first = push(world, files or {"deploy/config.yaml": configmap("settings", v="1")})
    world.create_app(**spec)
    applied(world, first)
    return first


def refused(world: World, reason: str, timeout: float = 60) -> dict:
    return wait_until(lambda: world.ready() if world.ready().get("reason") == reason else None, timeout=timeout,
                      what=f"Ready reason {reason}")  # fmt: skip


def rolled_back(world: World, commit: str, timeout: float = 60) -> dict:
    """Wait until the status write of a rollback to ``commit`` is seen; return that status."""

    def status() -> dict | None:
        current = world.status()
        return current if (current.get("rollback") or {}).get("commit") == commit else None

    return wait_until(status, timeout=timeout, what=f"status.rollback naming {commit[:12]}")


def started_since(operator: OperatorProcess, world: World, timeout: float = 60) -> None:
    """Wait until a reconcile that started after now has finished: the second to finish from here.

    The first may be one already running (started before whatever the caller just did).
    """
    wait_for_reconciles(operator, world, after=reconciles(operator, world), n=2, timeout=timeout)


def finished(operator: OperatorProcess, world: World, timeout: float = 60) -> None:
    """Wait until the reconcile whose status write was just seen has finished (or, if it had, the next one)."""
    wait_for_reconciles(operator, world, after=reconciles(operator, world), n=1, timeout=timeout)


def gitward_cli(operator: OperatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gitward"), *args, "--kubeconfig", str(operator.kubeconfig)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def wake(operator: OperatorProcess, world: World, commit: str) -> None:
    assert operator.webhook(world.webhook_path, push_payload(world, commit), WEBHOOK_SECRET) == 202


def test_deploy_change_and_history(operator, world, kubectl):
    """A signed commit deploys (Ready=True, Deployment Available); a second one makes two records."""
    first = deployed(
        world, {"deploy/app.yaml": deployment("web"), "deploy/config.yaml": configmap("settings", v="1")}
    )
    waited = kubectl("wait", "-n", world.namespace, "--for=condition=Ready", "gitopsapp/web", "--timeout=60s")
    assert "condition met" in waited.stdout
    deployment_status = client.AppsV1Api(world.admin).read_namespaced_deployment_status(
        "web", world.namespace
    )
    assert {c.type: c.status for c in deployment_status.status.conditions}["Available"] == "True"

    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wake(operator, world, second)
    applied(world, second)
    records = world.records()
    assert [(r["spec"]["commit"], r["spec"]["outcome"]) for r in records] == [
        (first, "Applied"),
        (second, "Applied"),
    ]
    assert records[1]["spec"]["signer"] == world.signer.fingerprint
    assert {
        "action": "updated",
        "kind": "ConfigMap",
        "name": "settings",
        "namespace": world.namespace,
        "group": "",
    } in records[1]["spec"]["changes"]
    assert world.configmap("settings") == {"v": "2"}
    events = client.CoreV1Api(world.admin).list_namespaced_event(world.namespace).items
    assert any(e.involved_object.name == "web" and e.reason == "Succeeded" for e in events)
    cli = gitward_cli(operator, "history", "web", "-n", world.namespace)
    assert cli.returncode == 0, cli.stderr
    assert second[:12] in cli.stdout
    status = gitward_cli(operator, "status", "web", "-n", world.namespace, "-o", "json")
    assert status.returncode == 0
    assert '"ready": "True"' in status.stdout
    assert "gitward_reconciles_total" in operator.metrics()
    audit = [
        line
        for line in operator.log.read_text().splitlines()
        if '"event_kind": "audit"' in line and second in line
    ]
    assert audit
    assert '"outcome": "Applied"' in audit[0]
    assert world.server.password not in operator.log.read_text()


def test_a_poll_with_nothing_new_writes_nothing_and_diff_previews(operator, world):
    """Past a whole interval with no new commit, the app is not written; `gitward diff` previews a change."""
    deployed(
        world, {"deploy/config.yaml": configmap("settings", v="1"), "deploy/other.yaml": configmap("other")}
    )
    version = world.app()["metadata"]["resourceVersion"]
    records = len(world.records())
    started_since(operator, world)  # a poll that began after the reads above (the interval is 10s)
    assert world.app()["metadata"]["resourceVersion"] == version
    assert len(world.records()) == records
    world.patch_app({"source": {"interval": "1h"}})
    generation = world.app()["metadata"]["generation"]
    wait_until(
        lambda: world.status().get("observedGeneration") == generation, timeout=30, what="the new spec"
    )
    push(world, {"deploy/config.yaml": configmap("settings", v="2")}, message="edit")
    world.work.git("rm", "-q", "deploy/other.yaml")
    push(world, {"deploy/new.yaml": configmap("new")})
    preview = gitward_cli(operator, "diff", "web", "-n", world.namespace, "--operator-namespace",
                          world.operator_namespace, "--kustomize", f"{kubectl_binary()} kustomize")  # fmt: skip
    assert preview.returncode == 0, preview.stdout + preview.stderr
    lines = {tuple(line.split()[:2]) for line in preview.stdout.splitlines()[1:]}
    assert {("update", "ConfigMap"), ("create", "ConfigMap"), ("prune", "ConfigMap")} <= lines
    assert world.configmap("settings") == {"v": "1"}


def test_suspend_stops_reconciling(operator, world):
    """suspend: true reports Suspended and applies nothing until it is cleared."""
    first = deployed(world)
    world.patch_app({"suspend": True})
    refused(world, "Suspended")
    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wake(operator, world, second)
    started_since(operator, world)  # a reconcile that saw the new commit and the wake-up
    assert world.configmap("settings") == {"v": "1"}
    assert world.status()["lastAppliedRevision"] == first
    world.patch_app({"suspend": False})
    applied(world, second)


def test_unsigned_and_force_push_are_refused_and_change_nothing(operator, world):
    """An unsigned commit is UnsignedCommit with a record; a force-push back is NonFastForward."""
    first = deployed(world)
    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wake(operator, world, second)
    applied(world, second)

    unsigned = push(world, {"deploy/config.yaml": configmap("settings", v="evil")}, sign=False)
    wake(operator, world, unsigned)
    ready = refused(world, "UnsignedCommit")
    finished(operator, world)  # the refusing reconcile is over
    assert unsigned in ready["message"]
    assert world.configmap("settings") == {"v": "2"}
    assert [world.records()[-1]["spec"][key] for key in ("commit", "outcome")] == [unsigned, "Refused"]

    world.work.git("reset", "-q", "--hard", first)
    world.work.push(force=True)
    wake(operator, world, first)
    refused(world, "NonFastForward")
    finished(operator, world)
    assert [world.records()[-1]["spec"][key] for key in ("commit", "outcome")] == [first, "Refused"]
    assert world.configmap("settings") == {"v": "2"}
    assert world.status()["lastAppliedRevision"] == second


def test_a_rewound_status_does_not_move_the_fast_forward_baseline(operator, world):
    """Status is a view: with lastAppliedRevision rewound (as an admin could), a force-push back is still refused."""
    first = deployed(world)
    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wake(operator, world, second)
    applied(world, second)
    world.objects.merge_patch(world.app_ref, {"status": {"lastAppliedRevision": first}}, subresource="status")
    world.work.git("reset", "-q", "--hard", first)
    world.work.push(force=True)
    wake(operator, world, first)
    refused(world, "NonFastForward")
    assert world.configmap("settings") == {"v": "2"}


def test_manifests_written_for_other_tools_deploy_and_say_what_was_left_out(operator, world):
    """A Namespace manifest for the app's own namespace is left out, an Argo CD hook annotation is ignored: both said."""
    namespace = (
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {world.namespace}\n  labels: {{team: a}}\n"
    )
    hook = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hooked\n"
        "  annotations: {argocd.argoproj.io/hook: PostSync}\ndata: {v: '1'}\n"
    )
    deployed(world, {"deploy/namespace.yaml": namespace, "deploy/hook.yaml": hook})
    assert world.configmap("hooked") == {"v": "1"}
    applied_condition = next(c for c in world.status()["conditions"] if c["type"] == "Applied")
    for text in (applied_condition["message"], " ".join(world.records()[-1]["spec"]["notes"])):
        assert f"left out Namespace/{world.namespace}" in text, text
        assert "argocd.argoproj.io/hook" in text, text
    labels = client.CoreV1Api(world.admin).read_namespace(world.namespace).metadata.labels or {}
    assert "team" not in labels


PLAIN_DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: example.invalid/app:1}]
"""


def test_a_compliance_patch_offered_by_diff_makes_a_refused_workload_deploy(operator, world):
    """Refused under restricted, `gitward diff` and the record offer a patch; committed, the workload deploys."""
    deployed(world)
    resources = "resources: [config.yaml, web.yaml]\n"
    push(world, {"deploy/kustomization.yaml": resources, "deploy/web.yaml": PLAIN_DEPLOYMENT})
    wake(operator, world, world.work.head())
    assert "pod security patch" in refused(world, "PolicyViolation")["message"]
    preview = gitward_cli(operator, "diff", "web", "-n", world.namespace, "--operator-namespace",
                          world.operator_namespace, "--kustomize", f"{kubectl_binary()} kustomize")  # fmt: skip
    assert preview.returncode == 1
    instructions, _, patch = preview.stdout.partition("patches:` in the kustomization")
    assert "To comply" in instructions, preview.stdout
    patch = patch.split("\n", 1)[1].strip() + "\n"
    assert "kind: Deployment" in patch, preview.stdout
    assert world.records()[-1]["spec"]["notes"][1].strip().endswith(patch.strip().splitlines()[-1].strip())
    fixed = push(world, {"deploy/pod-security-patch.yaml": patch,
                         "deploy/kustomization.yaml": resources + "patches:\n- path: pod-security-patch.yaml\n"})  # fmt: skip
    wake(operator, world, fixed)
    applied(world, fixed, timeout=120)
    assert world.ready()["status"] == "True"


def test_a_repository_laid_out_like_real_ones_deploys(operator, world):
    """Trailing tabs, an overlay on a sibling base, a builtin transformer from a local file: deployed as written."""
    base = "apiVersion: v1\t\nkind: ConfigMap\t\nmetadata:\n  name: settings\t\ndata:\n  v: '1'\t# why\n"
    files = {
        "base/kustomization.yaml": "resources: [config.yaml]\n",
        "base/config.yaml": base,
        "deploy/kustomization.yaml": "resources: [../base]\ntransformers: [labels.yaml]\n",
        "deploy/labels.yaml": (
            "apiVersion: builtin\nkind: LabelTransformer\nmetadata: {name: team}\nlabels: {team: a}\n"
            "fieldSpecs: [{path: metadata/labels, create: true}]\n"
        ),
    }
    deployed(world, files)
    body = world.objects.get(ObjectRef("", "v1", "ConfigMap", world.namespace, "settings"))
    assert body is not None
    assert body["data"] == {"v": "1"}
    assert body["metadata"]["labels"]["team"] == "a"
    job = (
        "apiVersion: batch/v1\nkind: Job\nmetadata: {generateName: migrate-}\nspec: {template: {spec: {}}}\n"
    )
    commit = push(
        world, {"base/job.yaml": job, "base/kustomization.yaml": "resources: [config.yaml, job.yaml]\n"}
    )
    wake(operator, world, commit)
    message = refused(world, "YAMLRejected")["message"]
    assert "base/job.yaml#0: metadata.generateName is not supported" in message, message
    assert "give it a metadata.name instead" in message


def test_revert_and_rollback_to(operator, world):
    """git revert rolls back like any commit; spec.rollbackTo re-applies a recorded commit and holds there."""
    deployed(world)
    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wake(operator, world, second)
    applied(world, second)

    reverted = world.work.revert(sign=world.signer)
    world.work.push()
    wake(operator, world, reverted)
    applied(world, reverted)
    assert world.configmap("settings") == {"v": "1"}

    rolled = gitward_cli(operator, "rollback", "web", "-n", world.namespace, "--to", second[:10])
    assert rolled.returncode == 0, rolled.stderr
    # The apply comes before the record and the status write: wait for the write, not the ConfigMap.
    status = rolled_back(world, second)
    held = {"commit": second, "heldAtHead": reverted, "released": False}
    assert status["rollback"] == held
    assert world.configmap("settings") == {"v": "2"}
    assert world.records()[-1]["spec"]["trigger"] == "rollback"
    count = len(world.records())
    wake(operator, world, reverted)
    started_since(operator, world)  # a reconcile that saw the wake-up, at the same head
    assert world.configmap("settings") == {"v": "2"}
    assert len(world.records()) == count
    assert world.status()["rollback"] == held

    moved = push(world, {"deploy/config.yaml": configmap("settings", v="3")})
    wake(operator, world, moved)
    applied(world, moved)
    assert world.configmap("settings") == {"v": "3"}
    assert world.status()["rollback"]["released"] is True


def test_an_unhealthy_revision_is_rolled_back_automatically(operator, world):
    """A Deployment that never becomes ready is rolled back to the last healthy revision: Ready=False RolledBack."""
    healthy = deployed(world, {"deploy/app.yaml": deployment("web")}, healthTimeout="5s")
    broken = push(
        world,
        {"deploy/app.yaml": deployment("web", pod_annotations={"gitward.dev/kwok-never-ready": "true"})},
    )
    wake(operator, world, broken)
    ready = refused(world, "RolledBack", timeout=90)
    assert broken[:12] in ready["message"]
    assert world.status()["lastAppliedRevision"] == healthy
    outcomes = [(r["spec"]["commit"], r["spec"]["trigger"], r["spec"]["outcome"]) for r in world.records()]
    assert outcomes[-2:] == [(broken, "webhook", "Failed"), (healthy, "auto-rollback", "RolledBack")]
    template = client.AppsV1Api(world.admin).read_namespaced_deployment("web", world.namespace).spec.template
    assert "gitward.dev/kwok-never-ready" not in (template.metadata.annotations or {})


def test_a_webhook_push_reconciles_well_inside_the_poll_interval(operator, world, capsys):
    """With a one-hour interval, a signed webhook (or the request annotation) applies a new commit in seconds."""
    deployed(world, interval="1h")
    second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
    wait_until(  # the route is shown to the user, and it is the one a Git host would be given
        lambda: world.status().get("webhookPath") == world.webhook_path, timeout=30, what="status.webhookPath"
    )
    assert operator.webhook(world.webhook_path, push_payload(world, second), b"wrong") == 401
    assert operator.webhook(world.webhook_path, push_payload(world, second), None) == 401
    started = time.monotonic()
    wake(operator, world, second)
    applied(world, second, timeout=30)
    latency = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[e2e] webhook -> applied latency: {latency:.2f}s (poll interval 3600s)")  # noqa: T201
    assert latency < 30
    third = push(world, {"deploy/config.yaml": configmap("settings", v="3")})
    world.objects.merge_patch(
        world.app_ref, {"metadata": {"annotations": {"gitward.dev/reconcile-requested-at": str(time.time())}}}
    )
    applied(world, third, timeout=30)


def test_one_webhook_wakes_every_app_of_the_repository(operator, world):
    """Two apps reading one repository (one secret) share one route: one signed push event applies both."""
    first = push(
        world,
        {"deploy/config.yaml": configmap("settings", v="1"), "other/config.yaml": configmap("other", v="1")},
    )
    world.create_app(interval="1h")
    world.create_app("other", interval="1h", path="other")
    for name in ("web", "other"):
        wait_until(
            lambda name=name: world.status(name).get("lastAppliedRevision") == first,
            timeout=60,
            what=f"{name} applied",
        )
        wait_until(
            lambda name=name: world.status(name).get("webhookPath") == world.webhook_path,
            timeout=30,
            what=f"{name} shows its webhook route",
        )
    second = push(
        world,
        {"deploy/config.yaml": configmap("settings", v="2"), "other/config.yaml": configmap("other", v="2")},
    )
    wake(operator, world, second)
    for name in ("web", "other"):
        wait_until(
            lambda name=name: world.status(name).get("lastAppliedRevision") == second,
            timeout=30,
            what=f"{name} applied by the one webhook",
        )
        records = list_records(world.objects, world.namespace, name)
        assert [r["spec"]["trigger"] for r in records if r["spec"]["commit"] == second] == ["webhook"]


def test_a_restarted_operator_resumes_without_duplicates(
    kubeconfig, operator_namespace, tmp_path, world, operator
):
    """Killed mid-way and restarted, the operator applies the new commit once, with no duplicate record."""
    first = deployed(world)
    operator.stop(kill=True)
    try:
        second = push(world, {"deploy/config.yaml": configmap("settings", v="2")})
        with OperatorProcess(
            kubeconfig, operator_namespace, operator.cache_dir, tmp_path / "second.log"
        ) as again:
            # No webhook: the restarted operator finds the new commit on its own (its first reconcile);
            # a wake-up sent once that reconcile is over would be a new, forced attempt of its own.
            applied(world, second)
            finished(again, world)  # the reconcile that applied is over before the kill
            assert [r["spec"]["commit"] for r in world.records()] == [first, second]
            again.stop(kill=True)
        with OperatorProcess(
            kubeconfig, operator_namespace, operator.cache_dir, tmp_path / "third.log"
        ) as third:
            wait_for_reconciles(third, world, after=0)  # a new process counts from 0: its first reconcile
            commits = [r["spec"]["commit"] for r in world.records()]
            assert commits == [first, second]
            assert world.configmap("settings") == {"v": "2"}
    finally:
        operator.start()


def test_deleting_the_app_prunes_what_it_owns(operator, world):
    """The finalizer deletes the app's objects (prune: true), as the tenant, and nothing it does not own."""
    deployed(world)
    client.CoreV1Api(world.admin).create_namespaced_config_map(
        world.namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="human"), data={"keep": "me"})
    )
    inventory = [*world.status()["inventory"], {"group": "", "version": "v1", "kind": "ConfigMap",
                                                "namespace": world.namespace, "name": "human"}]  # fmt: skip
    world.objects.merge_patch(world.app_ref, {"status": {"inventory": inventory}}, subresource="status")
    client.CustomObjectsApi(world.admin).delete_namespaced_custom_object(
        "gitward.dev", "v1alpha1", world.namespace, "gitopsapps", "web"
    )
    wait_until(lambda: world.configmap("settings") is None, timeout=60, what="the ConfigMap to be pruned")
    wait_until(lambda: world.objects.get(world.app_ref) is None, timeout=60, what="the app to be gone")
    assert world.configmap("human") == {"keep": "me"}
