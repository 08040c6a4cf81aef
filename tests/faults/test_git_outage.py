"""The git server goes down, or hangs: the app keeps running its last verified revision, and says since when.

`gitward run` against the test cluster, with its git timeout cut to a few
seconds (``--budget-ceiling gitSeconds=3``: the wall clock of one git command
is the operator's timeout capped by the tenant's budget, and the ceiling caps
every tenant's), and its own HTTPS git server, which the test stops and
starts again on the same port, or makes hang (accept, read the request,
never answer). While the server does not answer, SourceVerified and Ready
are False with ``SourceUnavailable`` and a message that says since when;
that message, and so the app, is not written again at each failed poll; the
workloads are not touched and no GitOpsRevision is recorded. A commit
pushed during the outage is applied once when the server is back.

Every wait is on the cluster (status, records) or on the operator's
/metrics (the app's finished reconciles, reconciles by reason), never a
fixed sleep; every server the test starts is stopped by the test, also when
it fails.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitward.api.refs import ObjectRef
from support.gitservers import OutageHttpsGitServer
from support.metrics import reconciles
from support.operator import OperatorProcess, World, applied
from support.pipeline import configmap, deployment
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

INTERVAL = "10s"  # the shortest the CRD allows
GIT_SECONDS = 3
UNAVAILABLE = "SourceUnavailable"
SINCE = re.compile(
    r"^the git server has not answered since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): git ls-remote "
)


@pytest.fixture(scope="module")
def operator(kubeconfig, crds, operator_namespace, tmp_path_factory) -> Iterator[OperatorProcess]:
    root = tmp_path_factory.mktemp("outage-operator")
    process = OperatorProcess(
        kubeconfig,
        operator_namespace,
        root / "cache",
        root / "operator.log",
        "--budget-ceiling",
        f"gitSeconds={GIT_SECONDS}s",
    )
    with process:
        yield process


@pytest.fixture
def server(tmp_path) -> Iterator[OutageHttpsGitServer]:
    """This test's own git server: it goes down and comes back without disturbing other tests."""
    (tmp_path / "srv").mkdir()
    with OutageHttpsGitServer(tmp_path / "srv", tmp_path / "tls") as started:
        yield started


@pytest.fixture
def world(tmp_path, admin, server, operator_namespace, crds) -> Iterator[World]:
    created = World(tmp_path / "world", admin, server, operator_namespace)
    yield created
    created.cleanup()


def push(world: World, value: str) -> str:
    commit = world.work.commit(
        {"deploy/config.yaml": configmap("settings", v=value), "deploy/app.yaml": deployment("web")},
        message=f"v{value}",
        sign=world.signer,
    )
    world.work.push()  # to the bare repository on disk: the server need not be up
    return commit


def deployed(world: World, operator: OperatorProcess) -> str:
    """The first commit, applied and Ready; returns it."""
    first = push(world, "1")
    world.create_app(interval=INTERVAL)
    applied(world, first)
    wait_until(lambda: world.ready().get("status") == "True", timeout=60, what="Ready=True")
    assert operator.process is not None
    assert operator.process.poll() is None
    return first


def condition(world: World, kind: str) -> dict[str, Any]:
    return next((dict(c) for c in world.status().get("conditions") or () if c["type"] == kind), {})


def workloads(world: World) -> dict[str, str]:
    """The resourceVersion of each object the app applied: any write to one changes it."""
    versions = {}
    for kind, group in (("ConfigMap", ""), ("Deployment", "apps")):
        name = "settings" if kind == "ConfigMap" else "web"
        body = world.objects.get(ObjectRef(group, "v1", kind, world.namespace, name))
        assert body is not None, f"{kind} {name}"
        versions[kind] = body["metadata"]["resourceVersion"]
    return versions


def on_record(world: World) -> list[tuple[str, str]]:
    return [(r["spec"]["commit"], r["spec"]["outcome"]) for r in world.records()]


def unavailable_reconciles(operator: OperatorProcess) -> int:
    """Finished reconciles (of any app of this operator) that ended SourceUnavailable."""
    for family in text_string_to_metric_families(operator.metrics()):
        if family.name == "gitward_reconciles":
            return int(
                sum(
                    s.value
                    for s in family.samples
                    if s.labels.get("reason") == UNAVAILABLE and s.name.endswith("_total")
                )
            )
    return 0


def unavailable(world: World) -> dict[str, Any]:
    """Wait until Ready says SourceUnavailable; return the Ready condition."""
    return wait_until(
        lambda: (ready := world.ready()).get("reason") == UNAVAILABLE and ready,
        timeout=60,
        what=f"Ready reason {UNAVAILABLE}",
    )


def since_of(message: str) -> dt.datetime:
    found = SINCE.match(message)
    assert found, message
    return dt.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def assert_steady_outage(
    world: World,
    operator: OperatorProcess,
    ready: dict[str, Any],
    *,
    checked: Callable[[], bool] | None = None,
) -> None:
    """Two more failed polls ran to the end (and ``checked``), and none wrote the app again.

    A poll within an interval of the last remote check reuses its failure (one check per window);
    ``checked`` can ask for proof that new checks reached the server too.
    """
    version = world.app()["metadata"]["resourceVersion"]
    verified = condition(world, "SourceVerified")
    # Read after the status write was seen: the reconcile that wrote it may not be counted yet, so
    # two more prove that one whole poll started after it and finished (support.metrics explains).
    app_count, failed_count = reconciles(operator, world), unavailable_reconciles(operator)
    wait_until(
        lambda: (
            reconciles(operator, world) >= app_count + 2
            and unavailable_reconciles(operator) >= failed_count + 2
            and (checked is None or checked())
        ),
        timeout=90,
        what="two more failed polls of the app",
    )
    assert world.ready() == ready
    assert condition(world, "SourceVerified") == verified
    assert world.app()["metadata"]["resourceVersion"] == version, "a failed poll wrote the app again"


def test_a_git_server_that_goes_down_leaves_the_app_at_its_last_verified_revision(operator, world, server):
    """Down: SourceUnavailable since the first failure, nothing written; back: the commit pushed meanwhile, once."""
    first = deployed(world, operator)
    before = workloads(world)
    assert on_record(world) == [(first, "Applied")]

    stopped_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    server.stop()  # connection refused on the app's URL
    ready = unavailable(world)
    seen_at = dt.datetime.now(dt.UTC)
    verified = condition(world, "SourceVerified")
    assert ready["status"] == "False"
    assert (verified["status"], verified["reason"], verified["message"]) == (
        "False",
        UNAVAILABLE,
        ready["message"],
    )
    assert stopped_at <= since_of(ready["message"]) <= seen_at
    assert f"127.0.0.1 port {server.port}" in ready["message"]  # git's own words: nothing listens there
    assert world.status()["lastAppliedRevision"] == first

    assert_steady_outage(world, operator, ready)
    assert workloads(world) == before
    assert world.configmap("settings") == {"v": "1"}
    assert on_record(world) == [(first, "Applied")]

    second = push(world, "2")  # while the server is down
    server.start()  # same port, same certificate
    applied(world, second)
    wait_until(lambda: world.ready().get("status") == "True", timeout=60, what="Ready=True again")
    assert condition(world, "SourceVerified")["status"] == "True"
    assert world.configmap("settings") == {"v": "2"}
    assert on_record(world) == [(first, "Applied"), (second, "Applied")]


def test_a_git_server_that_never_answers_is_cut_off_at_the_git_timeout(operator, world, server):
    """Hung: gitward's git timeout ends each poll as SourceUnavailable, the same message every time."""
    first = deployed(world, operator)
    before = workloads(world)

    hung_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    server.hang()  # accepts, reads the request, never answers
    ready = unavailable(world)
    seen_at = dt.datetime.now(dt.UTC)
    assert ready["status"] == "False"
    assert ready["message"].endswith(f": timed out after {GIT_SECONDS}s"), ready["message"]
    assert hung_at <= since_of(ready["message"]) <= seen_at
    assert condition(world, "SourceVerified")["reason"] == UNAVAILABLE

    # Two more remote checks reached the server and got no answer, and the message did not move.
    hung = server.count("hung")
    assert_steady_outage(world, operator, ready, checked=lambda: server.count("hung") >= hung + 2)
    assert workloads(world) == before
    assert on_record(world) == [(first, "Applied")]

    second = push(world, "2")
    server.answer()
    applied(world, second)
    wait_until(lambda: world.ready().get("status") == "True", timeout=60, what="Ready=True again")
    assert on_record(world) == [(first, "Applied"), (second, "Applied")]


def test_a_git_server_that_comes_back_with_nothing_new_makes_the_app_ready_again(operator, world, server):
    """Down, then back at the same head: Ready=True again at that commit, with no new record."""
    first = deployed(world, operator)
    before = workloads(world)
    server.fail(503)
    ready = unavailable(world)
    assert "returned error: 503" in ready["message"]
    served = server.count("ls-refs")
    server.answer()
    wait_until(
        lambda: server.count("ls-refs") > served, timeout=60, what="a poll that reached the server again"
    )
    wait_until(lambda: world.ready().get("status") == "True", timeout=60, what="Ready=True again")
    assert condition(world, "SourceVerified")["status"] == "True"
    assert world.status()["lastAppliedRevision"] == first
    assert workloads(world) == before
    assert on_record(world) == [(first, "Applied")]
