"""A sharded, highly available operator: the active replica of a shard is killed, its standby takes over.

Three `gitward run --leader-elect` processes against the test cluster: two
replicas of shard ``s`` (apps labelled ``gitward.dev/shard=s``) and the main
instance (apps without the label), each with its own webhook port, liveness
port and git cache. The replica holding the Lease ``gitward-shard-s`` is
found from the Lease itself (its holderIdentity, which each process logs when
it starts), and SIGKILLed: it cannot release the Lease, so the standby waits
for it to expire and then takes over. A new signed commit pushed after the
kill must be applied by the standby exactly once per app, with one record per
commit and no commit lost, and the main instance must never have reconciled
or recorded an app of shard ``s``. Every wait is on the cluster (the Lease,
status, records) or on a process's own /metrics, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitward.kube.leases import Record
from gitward.shards import Shard
from support.gitservers import free_port
from support.kube import read_lease
from support.metrics import reconcile_count, wait_for_reconciles
from support.operator import OperatorProcess, World, applied, remove
from support.pipeline import configmap
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

SHARD = "s"
LEASE = f"gitward-shard-{SHARD}"
MAIN_LEASE = "gitward-shard-default"
ELECTION = ("--leader-elect", "--lease-duration", "6", "--renew-deadline", "4", "--retry-period", "1")


def log_entries(process: OperatorProcess) -> list[dict[str, Any]]:
    """The structured (JSON) lines of a process's log."""
    entries = []
    for line in process.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


def identity_of(process: OperatorProcess) -> str | None:
    """The holder identity the process logged when it started standing by."""
    for entry in log_entries(process):
        if str(entry.get("event", "")).startswith("leader election: standing by"):
            return str(entry["identity"])
    return None


def audited(process: OperatorProcess, world: World, commit: str) -> int:
    """How many change attempts of ``world``'s app at ``commit`` this process recorded (its audit lines)."""
    return sum(
        1
        for entry in log_entries(process)
        if entry.get("event_kind") == "audit"
        and entry.get("app") == f"{world.namespace}/web"
        and entry.get("commit") == commit
    )


def audits_of(process: OperatorProcess, world: World) -> int:
    return sum(
        1
        for e in log_entries(process)
        if e.get("event_kind") == "audit" and e.get("app") == f"{world.namespace}/web"
    )


def lease(admin: client.ApiClient, namespace: str, name: str) -> Record | None:
    return read_lease(admin, namespace, name)


def push(world: World, value: str) -> str:
    commit = world.work.commit({"deploy/config.yaml": configmap("settings", v=value)}, sign=world.signer)
    world.work.push()
    return commit


def commits_on_record(world: World) -> list[tuple[str, str]]:
    return [(r["spec"]["commit"], r["spec"]["outcome"]) for r in world.records()]


def operator(kubeconfig: Path, namespace: str, root: Path, name: str, *flags: str) -> OperatorProcess:
    """`gitward run --leader-elect` with its own webhook port, liveness port, cache and log."""
    return OperatorProcess(
        kubeconfig, namespace, root / f"cache-{name}", root / f"{name}.log",
        *ELECTION, *flags, "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
    )  # fmt: skip


def alive(process: OperatorProcess) -> bool:
    """Whether the process answers its liveness endpoint (the last flag it was given)."""
    url = process.extra_args[-1]
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback http only
            return bool(response.status == 200)
    except OSError:
        return False


def test_a_killed_leader_is_replaced_by_its_standby_with_no_duplicate_and_no_lost_commit(
    kubeconfig, crds, admin, operator_namespace, git_server, tmp_path
):
    """SIGKILL the shard's leader, push: the standby takes over after expiry and applies it once per app."""
    with contextlib.ExitStack() as stack:
        sharded = [World(tmp_path / f"s{i}", admin, git_server, operator_namespace) for i in range(2)]
        main_world = World(tmp_path / "main", admin, git_server, operator_namespace)
        for world in (*sharded, main_world):
            stack.callback(remove, world)
        first = {world.id: push(world, "1") for world in (*sharded, main_world)}
        for world in sharded:
            world.create_app(labels={"gitward.dev/shard": SHARD})
        main_world.create_app()

        replicas = [
            operator(kubeconfig, operator_namespace, tmp_path, f"s-{i}", "--shard", SHARD) for i in (1, 2)
        ]
        main = operator(kubeconfig, operator_namespace, tmp_path, "main")
        for process in (*replicas, main):
            stack.callback(process.stop)  # also when the test fails
            process.start(wait_serving=False)

        # One replica holds the shard's Lease and serves; the other stands by: alive, serving nothing.
        held = wait_until(lambda: (r := lease(admin, operator_namespace, LEASE)) and r.holder and r,
                          timeout=60, what=f"the Lease {LEASE} to be held")  # fmt: skip
        ids = {wait_until(lambda p=p: identity_of(p), timeout=30, what="an identity"): p for p in replicas}
        assert held.holder in ids
        leader = ids[held.holder]
        standby = next(p for p in replicas if p is not leader)
        wait_until(leader.serving, timeout=60, what="the leader's webhook server")
        main_lease = wait_until(
            lambda: lease(admin, operator_namespace, MAIN_LEASE), timeout=60, what="main's Lease"
        )
        assert main_lease.holder == identity_of(main)

        for world in (*sharded, main_world):
            applied(world, first[world.id])
        for world in sharded:
            assert commits_on_record(world) == [(first[world.id], "Applied")]
        assert not standby.serving()
        assert standby.process is not None
        assert standby.process.poll() is None
        assert alive(standby)  # the kubelet would not restart a healthy standby
        assert lease(admin, operator_namespace, LEASE).holder == held.holder

        leader.stop(kill=True)
        last = lease(admin, operator_namespace, LEASE)  # the killed leader's last renewal: it renews no more
        second = {world.id: push(world, "2") for world in sharded}

        taken = wait_until(
            lambda: (r := lease(admin, operator_namespace, LEASE)) and r.holder == identity_of(standby) and r,
            timeout=30, what="the standby to take the Lease",
        )  # fmt: skip
        for world in sharded:
            applied(world, second[world.id])
        wait_until(standby.serving, timeout=30, what="the new leader's webhook server")

        # The takeover waited for the killed leader's Lease to expire: never two leaders at once.
        assert taken.transitions == last.transitions + 1
        assert taken.acquire_time >= last.renew_time + timedelta(seconds=last.duration)
        for world in sharded:
            # One record per commit, none lost, none twice; each written by the replica leading at the time.
            assert commits_on_record(world) == [(first[world.id], "Applied"), (second[world.id], "Applied")]
            assert (audited(leader, world, first[world.id]), audited(standby, world, first[world.id])) == (
                1,
                0,
            )
            assert (audited(leader, world, second[world.id]), audited(standby, world, second[world.id])) == (
                0,
                1,
            )
            assert world.configmap("settings") == {"v": "2"}

        # The main instance reconciled its own app and never touched shard s's apps.
        wait_until(lambda: reconcile_count(main.metrics(), main_world.namespace) > 0, timeout=30,
                   what="main's own reconcile")  # fmt: skip
        main_metrics, standby_metrics = main.metrics(), standby.metrics()
        for world in sharded:
            assert reconcile_count(main_metrics, world.namespace) == 0
            assert audits_of(main, world) == 0
            assert reconcile_count(standby_metrics, world.namespace) > 0
        assert reconcile_count(standby_metrics, main_world.namespace) == 0
        assert audited(main, main_world, first[main_world.id]) == 1
        assert commits_on_record(main_world) == [(first[main_world.id], "Applied")]
        assert lease(admin, operator_namespace, MAIN_LEASE).holder == identity_of(main)


def test_a_gracefully_stopped_leader_releases_its_lease_and_the_standby_takes_over_at_once(
    kubeconfig, crds, admin, operator_namespace, git_server, tmp_path
):
    """SIGTERM: the leader finishes, releases the Lease and exits 0; the standby leads before any expiry."""
    shard, name = "g", "gitward-shard-g"
    with contextlib.ExitStack() as stack:
        world = World(tmp_path / "g", admin, git_server, operator_namespace)
        stack.callback(remove, world)
        first = push(world, "1")
        world.create_app(labels={"gitward.dev/shard": shard})
        replicas = [
            operator(kubeconfig, operator_namespace, tmp_path, f"g-{i}", "--shard", shard) for i in (1, 2)
        ]
        for process in replicas:
            stack.callback(process.stop)
            process.start(wait_serving=False)
        held = wait_until(lambda: (r := lease(admin, operator_namespace, name)) and r.holder and r,
                          timeout=60, what=f"the Lease {name} to be held")  # fmt: skip
        ids = {wait_until(lambda p=p: identity_of(p), timeout=30, what="an identity"): p for p in replicas}
        leader = ids[held.holder]
        standby = next(p for p in replicas if p is not leader)
        applied(world, first)
        wait_until(
            lambda: any(e.get("event") == "standing by: waiting for the lease" and e.get("holder") == held.holder
                        for e in log_entries(standby)),
            timeout=30, what="the standby to see the leader",
        )  # fmt: skip

        leader.stop()  # SIGTERM
        assert leader.process is not None
        assert leader.process.returncode == 0
        released = [e for e in log_entries(leader) if e.get("event") == "released the lease"]
        assert len(released) == 1
        released_at = datetime.fromisoformat(released[0]["timestamp"])
        taken = wait_until(
            lambda: (r := lease(admin, operator_namespace, name)) and r.holder == identity_of(standby) and r,
            timeout=30, what="the standby to take the released Lease",
        )  # fmt: skip
        # The leader renewed at most a retry period (1s) before releasing, so its Lease would have expired
        # 5s after the release at the earliest: the standby took over before that, from the release.
        assert taken.acquire_time < released_at + timedelta(seconds=5)
        assert taken.transitions == held.transitions + 1

        second = push(world, "2")
        applied(world, second)
        assert commits_on_record(world) == [(first, "Applied"), (second, "Applied")]
        assert (audited(leader, world, second), audited(standby, world, second)) == (0, 1)

        # A replica stopped while it stands by exits 0 and leaves the Lease alone.
        third = operator(kubeconfig, operator_namespace, tmp_path, "g-3", "--shard", shard)
        stack.callback(third.stop)
        third.start(wait_serving=False)
        wait_until(lambda: any(e.get("event") == "standing by: waiting for the lease" for e in log_entries(third)),
                   timeout=30, what="a third replica to stand by")  # fmt: skip
        third.stop()
        assert third.process is not None
        assert third.process.returncode == 0
        assert lease(admin, operator_namespace, name).holder == identity_of(standby)


def test_processes_of_different_shards_leave_each_others_apps_alone(
    kubeconfig, crds, admin, operator_namespace, git_server, tmp_path
):
    """Each app carries only its owner's finalizer, and a poll with nothing new writes nothing to it."""
    with contextlib.ExitStack() as stack:
        worlds = {
            key: World(tmp_path / f"w-{key or 'main'}", admin, git_server, operator_namespace)
            for key in ("s", None)
        }
        commits = {key: push(world, "1") for key, world in worlds.items()}
        for key, world in worlds.items():
            stack.callback(remove, world)
            world.create_app(labels={"gitward.dev/shard": key} if key else None)
        processes = {key: operator(kubeconfig, operator_namespace, tmp_path, f"p-{key or 'main'}",
                                   *(("--shard", key) if key else ())) for key in worlds}  # fmt: skip
        for process in processes.values():
            stack.callback(process.stop)
            process.start()
        for key, world in worlds.items():
            applied(world, commits[key])
        versions = {key: world.app()["metadata"]["resourceVersion"] for key, world in worlds.items()}
        counts = {
            key: reconcile_count(processes[key].metrics(), world.namespace) for key, world in worlds.items()
        }
        for key, world in worlds.items():
            assert world.app()["metadata"]["finalizers"] == [Shard(key=key).finalizer]
        for key, world in worlds.items():  # a poll of each app that began after the versions were read
            wait_for_reconciles(processes[key], world, after=counts[key], n=2)
        for key, world in worlds.items():
            assert world.app()["metadata"]["resourceVersion"] == versions[key], (
                f"{world.namespace}/web was written"
            )
