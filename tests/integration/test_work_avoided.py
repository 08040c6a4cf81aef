"""Only necessary work, against the real control plane: what a deploy no longer does.

- Health comes from a watch: a Deployment becomes healthy without a GET per
  second, a stale status from before the apply is never taken for the new
  one, and a Deployment that never gets ready still times out.
- An object the dry-run shows would not change is not written.
- The fence is written when it changes, not on every deploy.
- An app's records are listed once per process, not twice per deploy.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.api.resources import ChangeAction, Trigger
from gitward.apply.waiting import WatchedHealth
from gitward.errors import GitwardError
from gitward.history import store
from gitward.history.records import Attempt, Outcome, chain_breaks, last_applied
from gitward.kube import clients
from gitward.kube.objects import Objects
from support.pipeline import Harness, configmap, deployment

pytestmark = pytest.mark.cluster


class CountingObjects(Objects):
    """Objects that count the requests they make by (method, dry-run), against the real API server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[tuple[str, bool]] = Counter()
        self.paths: Counter[tuple[str, str]] = Counter()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        dry = ("dryRun", "All") in (kwargs.get("query") or [])
        self.calls[(method, dry)] += 1
        self.paths[(method, path)] += 1
        return super()._call(method, path, **kwargs)


@pytest.fixture
def harness(tmp_path, kube_api, kube_configuration, namespace, crds) -> Harness:
    made = Harness(tmp_path, api=kube_api, configuration=kube_configuration, namespace=namespace)
    made.operator = CountingObjects(kube_api)
    tenants: dict[str, CountingObjects] = {}

    def as_tenant(ns: str, account: str) -> Objects:
        if (ns, account) not in tenants:
            tenants[(ns, account)] = CountingObjects(
                clients.impersonating(kube_configuration, clients.ServiceAccountRef(ns, account))
            )
        return tenants[(ns, account)]

    made.as_tenant = as_tenant  # type: ignore[method-assign]
    made.tenants = tenants  # type: ignore[attr-defined]
    return made


def tenant_calls(harness: Harness) -> Counter[tuple[str, bool]]:
    total: Counter[tuple[str, bool]] = Counter()
    for objects in harness.tenants.values():  # type: ignore[attr-defined]
        total += objects.calls
        objects.calls.clear()
    return total


def test_health_by_watch_needs_no_polling(harness):
    watched = WatchedHealth(harness.operator)
    try:
        harness.push({"deploy/web.yaml": deployment("web", replicas=2), "deploy/c.yaml": configmap("c")})
        harness.operator.paths.clear()
        first = harness.deploy(health=watched)
        assert first.unhealthy is None
        ref = ObjectRef("apps", "v1", "Deployment", harness.namespace, "web")
        assert first.run.health[ref].health.name == "HEALTHY"
        # The operator's reads of the Deployment: one LIST to start the watch, then only the watch.
        # (A poller would have made a GET per second until the pods were ready.)
        reads = sum(n for (method, path), n in harness.operator.paths.items() if "/deployments" in path)
        assert reads == 1, harness.operator.paths
    finally:
        watched.close()


def test_a_status_from_before_the_apply_is_not_taken_for_the_new_one(harness):
    watched = WatchedHealth(harness.operator)
    try:
        harness.push({"deploy/web.yaml": deployment("web")})
        assert harness.deploy(health=watched).unhealthy is None
        # The new pod template never gets ready; the watch still holds the old, healthy status
        # when the wait starts, at the old generation.
        harness.app_spec["healthTimeout"] = "4s"
        harness.push(
            {"deploy/web.yaml": deployment("web", pod_annotations={"gitward.dev/kwok-never-ready": "true"})}
        )
        second = harness.deploy(health=watched)
        assert second.unhealthy is not None
        assert second.unhealthy.reason is Reason.HEALTH_TIMEOUT
        assert "Deployment.apps" in second.unhealthy.message
    finally:
        watched.close()


def test_unchanged_objects_are_not_written(harness):
    harness.push({"deploy/a.yaml": configmap("a", v="1"), "deploy/b.yaml": configmap("b", v="1")})
    harness.deploy()
    tenant_calls(harness)
    harness.push({"deploy/a.yaml": configmap("a", v="2")})  # b stays as it was
    second = harness.deploy()
    actions = {c.ref.name: c.action for c in second.result.changes}
    assert actions == {"a": ChangeAction.UPDATED, "b": ChangeAction.UNCHANGED}
    calls = tenant_calls(harness)
    assert calls[("PATCH", True)] == 2  # both dry-run: the dry-run is what shows b would not change
    assert calls[("PATCH", False)] == 1  # only a is written


def test_the_fence_is_written_when_it_changes_not_on_every_deploy(harness, admin):
    fences: dict[str, str] = {}
    harness.push({"deploy/a.yaml": configmap("a", v="1")})
    harness.deploy(fences=fences)
    assert harness.namespace in fences
    # Before the fence counts as written, the tenant's new Role is seen to be in effect (a
    # dry-run in the moment before was refused as ApplyForbidden, for good).
    reviews = [path for (method, path) in harness.operator.paths if path.endswith("/subjectaccessreviews")]
    assert reviews, harness.operator.paths
    harness.operator.calls.clear()
    harness.push({"deploy/a.yaml": configmap("a", v="2")})
    harness.deploy(fences=fences)
    writes = {k: n for k, n in harness.operator.calls.items() if k[0] in {"PATCH", "POST", "PUT", "DELETE"}}
    assert writes == {}, f"the operator wrote {writes} for an unchanged fence"
    # A tenant change (a new quota) is written at the next deploy.
    harness.tenant_spec["isolation"]["resourceQuota"] = {"hard": {"pods": "21", "configmaps": "200"}}
    harness.push({"deploy/a.yaml": configmap("a", v="3")})
    harness.deploy(fences=fences)
    quota = harness.operator.get(ObjectRef("", "v1", "ResourceQuota", harness.namespace, "gitward-quota"))
    assert quota is not None
    assert quota["spec"]["hard"]["pods"] == "21"


def test_an_apps_records_are_listed_once_and_the_chain_stays_whole(kube_api, namespace, crds):
    """The history cache: one LIST per app per process, the same chain, trimming and baseline as without it."""
    objects = CountingObjects(kube_api)
    history = store.History()
    # Records are owned by their app: without a real one, the garbage collector would delete them.
    app = objects.create(
        {
            "apiVersion": "gitward.dev/v1alpha1",
            "kind": "GitOpsApp",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"tenant": "t", "source": {"url": "https://git.example/r.git", "branch": "main"}},
        }
    )
    assert app is not None
    uid = app["metadata"]["uid"]

    def attempt(commit: str, started: str = "2026-11-25T10:00:00Z") -> Attempt:
        return Attempt(
            app_namespace=namespace, app_name="web", app_uid=uid, tenant="t", commit=commit,
            trigger=Trigger.POLL, outcome=Outcome.APPLIED, reason=Reason.SUCCEEDED, message="ok",
            started_at=started, finished_at=started, generation=1,
        )  # fmt: skip

    commits = [f"{i:040x}" for i in range(1, 6)]
    for index, commit in enumerate(commits):
        store.record(
            objects, attempt(commit, started=f"2026-11-25T10:00:0{index}Z"), history_limit=3, history=history
        )
    lists = sum(
        n
        for (method, path), n in objects.paths.items()
        if method == "GET" and path.endswith("gitopsrevisions")
    )
    assert lists == 1  # five records written, the app's records listed once
    live = store.list_records(objects, namespace, "web")
    assert [r["spec"]["commit"] for r in live] == commits[-3:]  # trimmed to the limit, as without the cache
    assert chain_breaks(live) == []
    cached = history.records(objects, namespace, "web", uid)
    assert [r["metadata"]["name"] for r in cached] == [r["metadata"]["name"] for r in live]
    assert last_applied(cached) == last_applied(live) == commits[-1]
    # A new app of the same name (another uid) does not inherit what the cache knew.
    objects.paths.clear()
    history.records(objects, namespace, "web", "another-uid")
    assert sum(n for (method, _), n in objects.paths.items() if method == "GET") == 1


def test_a_fence_broken_by_hand_is_written_again_after_the_dry_run_fails(harness):
    """The fence memo is not trusted past a failure: a Role deleted by an admin comes back."""
    fences: dict[str, str] = {}
    harness.push({"deploy/a.yaml": configmap("a", v="1")})
    harness.deploy(fences=fences)
    role = ObjectRef("rbac.authorization.k8s.io", "v1", "Role", harness.namespace, "gitward-tenant")
    assert harness.operator.delete(role)
    harness.push({"deploy/a.yaml": configmap("a", v="2")})
    with pytest.raises(GitwardError) as refused:
        harness.deploy(fences=fences)  # the tenant may do nothing now, and the memo said "written"
    assert refused.value.reason is Reason.APPLY_FORBIDDEN
    assert harness.namespace not in fences
    deployed = harness.deploy(fences=fences)
    assert {c.ref.name: c.action for c in deployed.result.changes} == {"a": ChangeAction.UPDATED}
    assert harness.operator.get(role) is not None
