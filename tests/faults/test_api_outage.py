"""The Kubernetes API server goes away for 45 s while the operator runs: nothing lost, nothing done twice.

`gitward run` against the session's own control plane, whose kube-apiserver
the test stops (`hack/cluster stop-apiserver`: etcd, the controllers and
kwok keep running) and starts again on the same port, also when the test
fails. Three apps, polled every 10 s:

- ``parked``: a commit whose objects were applied and whose health is being
  awaited when the API server goes (its Deployment cannot be Available for
  30 s, ``minReadySeconds``): the attempt stays parked through the outage
  and completes once the Deployment is reported Available, recorded once;
- ``pushed``: a commit pushed while the API server is down, applied once
  when it is back;
- ``idle``: nothing new: Ready goes back to what it was.

While the API server is down the operator keeps running and its /metrics
count reconciles that ended ``APIUnavailable``. Once it answers again, an app
whose last attempt could not reach it says so first (Ready ``Unknown``,
``APIUnavailable``, "did not answer from <when>") and then what its next
attempt found, within one interval of the recovery; each app's Ready is
followed by list+watch from the test, which resumes after the outage. An app
created after the recovery is reconciled (kopf's watches came back), the
records are exactly one per commit, the cluster holds each app's last commit,
and the operator's log has no crashed or restarted daemon and no traceback.

Every wait is on the cluster, the operator's /metrics or its log, with a
deadline; the outage itself is a deadline loop that checks, each second, that
the API server's port really refuses connections and the operator still runs.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import re
import time

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from support.kube import Outage, ReadyHistory, api_server_stopped, paused
from support.operator import WEBHOOK_SECRET, OperatorProcess, World, applied, push_payload, remove
from support.pipeline import RESTRICTED_POD, configmap
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

OUTAGE = 45.0  # seconds down: past every connect timeout (10 s) and several polls and backoffs of each app
INTERVAL = 10.0  # each app's spec.source.interval
ATTEMPT = 10.0  # what one attempt may take once it starts: a git poll, verify, dry-run, apply, status
MIN_READY = 30  # the in-flight Deployment cannot be Available sooner than this after it was applied
# How long the control plane's own controllers may take, after the outage, to report the Deployment
# Available again (client-go's watch backoff alone can reach 30-60 s); gitward's part is timed separately.
CATCH_UP = 180.0
# What kopf logs when a handler or daemon crashes, is retried, restarted or cancelled, or one of its
# watchers dies; and any traceback at all.
CRASHES = re.compile(
    r"Traceback \(most recent call last\)|Daemon '[^']+' (failed|is cancelled)|failed with an exception"
    r"|failed (temporarily|permanently)|has failed|finished unexpectedly|unrecoverable error|escalating"
    r"|Leaving it orphaned"
)


def deployment(revision: str, *, min_ready: int = 0) -> str:
    pod = copy.deepcopy(RESTRICTED_POD)
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels, "annotations": {"revision": revision}}, "spec": pod}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": labels},
            "template": template,
        },
    }
    return yaml.safe_dump(body)


def settings(value: str) -> str:
    return configmap("settings", v=value)


def push(world: World, files: dict[str, str]) -> str:
    commit = world.work.commit(files, sign=world.signer)
    world.work.push()
    return commit


def on_record(world: World) -> list[tuple[str, str]]:
    return [(r["spec"]["commit"], r["spec"]["outcome"]) for r in world.records()]


def unavailable_reconciles(operator: OperatorProcess) -> float:
    """Reconciles that ended APIUnavailable, whatever they decided (``gitward_reconciles_total``)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
        if sample.name == "gitward_reconciles_total" and sample.labels.get("reason") == "APIUnavailable"
    )


def web_deployment(world: World) -> client.V1Deployment:
    return client.AppsV1Api(world.admin).read_namespaced_deployment("web", world.namespace)


def available(world: World, revision: str) -> bool:
    """The app's Deployment is at ``revision`` and Available, as its controllers report it."""
    found = web_deployment(world)
    status = found.status
    return (
        (found.spec.template.metadata.annotations or {}).get("revision") == revision
        and (status.observed_generation or 0) >= found.metadata.generation
        and status.updated_replicas == status.replicas == status.available_replicas == found.spec.replicas
    )


def since_of(message: str) -> dt.datetime:
    found = re.search(r"did not answer from (\S+?);", message)
    assert found, message
    return dt.datetime.fromisoformat(found.group(1))


def apply_and_park(world: World, operator: OperatorProcess, first: str) -> str:
    """Push a commit whose Deployment cannot be Available for MIN_READY s; return once it is applied.

    The attempt is then parked on its health: its objects are in the cluster, its record and status
    are not written yet.
    """
    files = {"deploy/app.yaml": deployment("2", min_ready=MIN_READY), "deploy/config.yaml": settings("2")}
    second = push(world, files)
    assert operator.webhook(world.webhook_path, push_payload(world, second), WEBHOOK_SECRET) == 202
    wait_until(
        lambda: (web_deployment(world).spec.template.metadata.annotations or {}).get("revision") == "2",
        timeout=60, what="the parked app's new Deployment to be applied",
    )  # fmt: skip
    assert world.status()["lastAppliedRevision"] == first
    assert on_record(world) == [(first, "Applied")]
    return second


def sit_out(outage: Outage, operator: OperatorProcess) -> float:
    """Wait out the outage, checking each second that it is one and that the operator runs.

    Returns the count of reconciles that ended APIUnavailable, read at the end of it.
    """
    unavailable = unavailable_reconciles(operator)
    while time.monotonic() < outage.since + OUTAGE:
        assert outage.refused(), "the API server answered during the outage"
        assert operator.process is not None
        assert operator.process.poll() is None, operator.log.read_text()[-4000:]
        unavailable = unavailable_reconciles(operator)
        time.sleep(1)
    return unavailable


def assert_reported_then_recovered(
    name: str, history: ReadyHistory, outage: Outage, requested: dt.datetime, recovered: dt.datetime
) -> None:
    """Ready after the outage: first Unknown/APIUnavailable since a moment of the outage, last True."""
    readies = history.readies(since=outage.since)
    assert readies, f"{name}: no Ready seen after the outage"
    assert (readies[0]["status"], readies[0]["reason"]) == ("Unknown", "APIUnavailable"), (name, readies)
    assert (readies[-1]["status"], readies[-1]["reason"]) == ("True", "Succeeded"), (name, readies)
    since = since_of(readies[0]["message"])
    # The first attempt that failed may have started just before the API server went.
    assert requested - dt.timedelta(seconds=ATTEMPT) <= since <= recovered, (name, since)


def assert_nothing_crashed(operator: OperatorProcess) -> None:
    """The operator still runs, and its log has no crashed, retried, restarted or cancelled handler."""
    assert operator.process is not None
    assert operator.process.poll() is None
    log = operator.log.read_text(errors="replace").splitlines()
    crashes = [line for line in log if CRASHES.search(line)]
    assert not crashes, "\n".join(crashes[:20])


@pytest.mark.timeout(480)
def test_an_api_server_outage_loses_nothing_duplicates_nothing_and_every_app_reports_and_recovers(
    kubeconfig, crds, admin, operator_namespace, git_server, tmp_path, cluster_state
):
    """45 s without an API server, an apply parked on health: every app reconciled after, once per commit."""
    if cluster_state is None:
        pytest.skip(
            "stops the kube-apiserver of the session's own control plane (hack/cluster); "
            "GITWARD_TEST_KUBECONFIG points at an external cluster, which a test must not stop"
        )
    with contextlib.ExitStack() as stack:
        worlds = {
            name: World(tmp_path / name, admin, git_server, operator_namespace)
            for name in ("parked", "pushed", "idle")
        }
        parked, pushed, idle = worlds.values()
        for world in worlds.values():
            stack.callback(remove, world)
        first = {
            "parked": push(parked, {"deploy/app.yaml": deployment("1"), "deploy/config.yaml": settings("1")}),
            "pushed": push(pushed, {"deploy/config.yaml": settings("1")}),
            "idle": push(idle, {"deploy/config.yaml": settings("1")}),
        }
        for world in worlds.values():
            world.create_app(interval=f"{INTERVAL:.0f}s", healthTimeout="10m")
        operator = OperatorProcess(
            kubeconfig, operator_namespace, tmp_path / "cache", tmp_path / "operator.log"
        )
        stack.callback(operator.stop)  # also when the test fails; the API server is restarted before this
        operator.start()
        for name, world in worlds.items():
            applied(world, first[name], timeout=90)
        histories = {
            name: stack.enter_context(ReadyHistory(admin, world.namespace)) for name, world in worlds.items()
        }

        second = apply_and_park(parked, operator, first["parked"])
        before = unavailable_reconciles(operator)

        requested = dt.datetime.now(dt.UTC)
        with contextlib.ExitStack() as frozen:
            with api_server_stopped(cluster_state) as outage:
                # Pushed while the API server is down (git is up): applied once it is back.
                late = push(pushed, {"deploy/config.yaml": settings("2")})
                after = sit_out(outage, operator)
                assert after > before, "no reconcile ended APIUnavailable while the API server was down"
                # A restarted API server cannot resume a watch from before it went ("410 Gone"), so the
                # test's watches list again; the operator is held still (SIGSTOP) for the few seconds from
                # here until they have, so that they see everything it writes once it answers.
                frozen.enter_context(paused(operator.process))
            wait_until(
                lambda: all(h.listed_since(outage.since) for h in histories.values()),
                timeout=30, what="the test's watches of the apps to list them again",
            )  # fmt: skip
        recovered, recovered_wall = time.monotonic(), dt.datetime.now(dt.UTC)

        # Every app whose attempts failed: Unknown/APIUnavailable first, then what its next attempt found,
        # within one interval of the recovery (plus the time that attempt itself takes).
        def settled() -> bool:
            # Each has written Ready since the outage, and the last one it wrote is True.
            afterwards = [histories[name].readies(since=outage.since) for name in ("pushed", "idle")]
            return pushed.status().get("lastAppliedRevision") == late and all(
                readies and readies[-1]["status"] == "True" for readies in afterwards
            )

        left = recovered + INTERVAL + ATTEMPT - time.monotonic()
        wait_until(settled, timeout=left, what="pushed and idle to be reconciled after the outage")
        for name in ("pushed", "idle"):
            assert_reported_then_recovered(name, histories[name], outage, requested, recovered_wall)

        # The parked attempt resumes with the health watch: it completes once the controllers report the
        # Deployment Available (their own catch-up after the outage), and within one interval of that.
        wait_until(
            lambda: available(parked, "2"), timeout=CATCH_UP, what="the Deployment to be Available again"
        )
        seen_available = time.monotonic()
        applied(parked, second, timeout=INTERVAL + ATTEMPT)
        assert time.monotonic() - seen_available <= INTERVAL + ATTEMPT
        assert parked.ready().get("status") == "True"

        # kopf's watches came back: an app created now gets its daemon and is reconciled.
        newcomer = World(tmp_path / "newcomer", admin, git_server, operator_namespace)
        stack.callback(remove, newcomer)
        newest = push(newcomer, {"deploy/config.yaml": settings("1")})
        newcomer.create_app(interval=f"{INTERVAL:.0f}s")
        applied(newcomer, newest, timeout=60)

        # Nothing lost, nothing twice: one record per commit, and the cluster holds each app's last one.
        assert on_record(parked) == [(first["parked"], "Applied"), (second, "Applied")]
        assert on_record(pushed) == [(first["pushed"], "Applied"), (late, "Applied")]
        assert on_record(idle) == [(first["idle"], "Applied")]
        assert on_record(newcomer) == [(newest, "Applied")]
        assert idle.status()["lastAppliedRevision"] == first["idle"]
        assert (parked.configmap("settings"), pushed.configmap("settings"), idle.configmap("settings")) == (
            {"v": "2"},
            {"v": "2"},
            {"v": "1"},
        )
        assert web_deployment(parked).spec.min_ready_seconds == MIN_READY

        # The operator never stopped, and nothing in it crashed, was retried by kopf or restarted.
        assert_nothing_crashed(operator)
