"""Hostile input, end to end: each attack on the running operator is refused with its reason, and nobody else notices.

Every attacker is a tenant with push rights to its own repository on the
loopback HTTPS git server; the operator runs as a process (`gitward run`)
against the real control plane. While the attacks run (while the webhook
port is flooded, and while a tenant with many apps on a git server that
answers after 20 s holds every reconcile slot it may have), a victim
tenant's signed commit is deployed in its normal time and the operator
process is never restarted. The operator runs with few workers
(`--reconcile-workers 6 --tenant-concurrency 2`), so that without the
per-tenant bound the slow tenant alone would take every thread. For each
attack: the reason the issue names, a Refused record, and nothing written
to the attacker's namespace.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

import pytest

from support.gitservers import HttpsGitServer
from support.hostile import ATTACK_CONFIGMAP, ATTACKS
from support.operator import WEBHOOK_SECRET, OperatorProcess, World, push_payload
from support.pipeline import SNAPSHOT_KINDS, configmap
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

WORKERS, TENANT_SLOTS = 6, 2
SLOW_APPS = 10
SLOW_SECONDS = 20.0


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--reconcile-workers", str(WORKERS), "--tenant-concurrency", str(TENANT_SLOTS))


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow-git")
    (root / "srv").mkdir()
    with HttpsGitServer(root / "srv", root / "tls") as server:
        yield server


def snapshot(world: World) -> set[tuple[str, str, str]]:
    return {
        (kind, item["metadata"]["name"], item["metadata"]["resourceVersion"])
        for api_version, kind in SNAPSHOT_KINDS
        for item in world.objects.list(api_version, kind, world.namespace)
    }


def ready_reason(world: World) -> str:
    return str(world.ready().get("reason", ""))


HALF_REQUEST = b"POST /hook/" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{"


class WebhookFlood:
    """Unauthenticated and malformed requests, and half-open connections, against the webhook port, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}
        self.requests = 0
        self._threads = [threading.Thread(target=self._requests), threading.Thread(target=self._slow_clients)]

    def _post(self, path: str, headers: dict[str, str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, body=b"{}", headers=headers)
            status = connection.getresponse().status
        except OSError:
            status = 0
        finally:
            connection.close()
        self.answers[status] = self.answers.get(status, 0) + 1
        self.requests += 1

    def _requests(self) -> None:
        # Never the victim's own route: whoever knows a route's token may spend its rate limit (by design;
        # the route then falls back to polling), so the flood guesses routes instead, as an outsider must.
        paths = [
            "/hook/..%2F..%2Fapi%2Fv1%2Fsecrets",
            "/hook/" + "0" * 64,  # well-formed, no such route
            "/hook/" + "F" * 64,
            "/hook/" + "a" * 300,
            "/hook/%00%2e%2e",
            "/hooks/kube-system/..%2F..%2F..%2Fapi%2Fv1%2Fnamespaces%3Fwatch%3Dtrue",  # the old route: gone
        ]
        while not self.stop.is_set() and self.requests < 3000:
            for path in paths:
                self._post(path, {"X-Hub-Signature-256": "sha256=" + "0" * 64})

    def _slow_clients(self) -> None:
        """Connections that send half a request and hold it open: they must cost a socket, not a thread."""
        sockets = []
        try:
            for _ in range(64):
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                conn.sendall(HALF_REQUEST)
                sockets.append(conn)
            self.stop.wait(120)
        finally:
            for conn in sockets:
                conn.close()

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@dataclass
class Battlefield:
    victim: World
    attackers: dict[str, World]
    snapshots: dict[str, set[tuple[str, str, str]]]
    baseline_seconds: float
    under_attack_seconds: float
    flood: WebhookFlood
    operator_pid: int
    slow: World


def _push_and_time(operator: OperatorProcess, world: World, value: str) -> float:
    """Push a signed change and wake the app by webhook; seconds until the change is applied."""
    commit = world.work.commit({"deploy/config.yaml": configmap("settings", v=value)}, sign=world.signer)
    world.work.push()
    started = time.monotonic()
    assert operator.webhook(world.webhook_path, push_payload(world, commit), WEBHOOK_SECRET) == 202
    wait_until(
        lambda: world.status().get("lastAppliedRevision") == commit, timeout=120, what=f"{value} applied"
    )
    return time.monotonic() - started


@pytest.fixture(scope="module")
def battlefield(
    operator, git_server, slow_server, admin, operator_namespace, crds, tmp_path_factory
) -> Iterator[Battlefield]:
    worlds: list[World] = []

    def new_world(server: HttpsGitServer = git_server) -> World:
        created = World(tmp_path_factory.mktemp("world"), admin, server, operator_namespace)
        worlds.append(created)
        return created

    try:
        victim = new_world()
        first = victim.work.commit({"deploy/config.yaml": configmap("settings", v="0")}, sign=victim.signer)
        victim.work.push()
        victim.create_app(interval="1h")
        wait_until(
            lambda: victim.status().get("lastAppliedRevision") == first, timeout=120, what="victim deployed"
        )
        baseline = _push_and_time(operator, victim, "1")
        assert operator.process is not None
        pid = operator.process.pid

        attackers = {name: new_world() for name in ATTACKS}
        for name, world in attackers.items():
            ATTACKS[name].push(world, git_server)
            if name != "malformed-commit":
                world.work.push()
        snapshots = {name: snapshot(world) for name, world in attackers.items()}
        slow = new_world(slow_server)
        slow.work.commit({"deploy/config.yaml": configmap("settings", v="slow")}, sign=slow.signer)
        slow.work.push()
        # One repository per app: apps reading one repository share one remote check (by design),
        # so ten distinct sources are what can ask the slow server for more than the tenant's slots.
        for index in range(SLOW_APPS):
            slow.work.bare_remote(f"slow-{index}", slow_server.root / f"team/{slow.id}-{index}.git")
            slow.work.push(f"slow-{index}")
        slow_server.delay = SLOW_SECONDS
        for index in range(SLOW_APPS):
            slow.create_app(
                f"slow-{index}", interval="10s", url=slow_server.url(f"team/{slow.id}-{index}.git")
            )
        wait_until(
            lambda: slow_server.in_flight >= TENANT_SLOTS, timeout=60, what="the slow tenant's slots taken"
        )
        with WebhookFlood(operator.port) as flood:
            for world in attackers.values():
                world.create_app(interval="10s")
            under_attack = _push_and_time(operator, victim, "2")
            for name, world in attackers.items():
                wait_until(
                    lambda world=world, name=name: ready_reason(world) == ATTACKS[name].reason,
                    timeout=180,
                    what=f"{name} refused with {ATTACKS[name].reason} (now {ready_reason(world)!r})",
                )
        yield Battlefield(victim, attackers, snapshots, baseline, under_attack, flood, pid, slow)
    finally:
        for world in worlds:
            with contextlib.suppress(Exception):
                world.cleanup()


def test_the_victim_deploys_in_its_normal_time_while_every_attack_runs(battlefield):
    """A second tenant's signed commit is applied as fast under attack as before it (within 10 s, or 5x)."""
    allowed = max(10.0, 5 * battlefield.baseline_seconds)
    assert battlefield.under_attack_seconds <= allowed, (
        battlefield.baseline_seconds,
        battlefield.under_attack_seconds,
    )


def test_one_tenant_never_holds_more_than_its_slots(battlefield, slow_server):
    """Ten apps of one tenant on a server that answers after 20 s never had more than 2 requests in flight."""
    assert slow_server.max_in_flight == TENANT_SLOTS


def test_the_operator_process_was_never_restarted(battlefield, operator):
    """The same process served throughout, and no app's daemon died of what it read."""
    assert operator.process is not None
    assert operator.process.poll() is None
    assert operator.process.pid == battlefield.operator_pid
    log = operator.log.read_text(errors="replace")
    assert "failed with an exception" not in log
    assert "Traceback" not in log


def test_the_webhook_flood_was_answered_without_any_lookup_escaping(battlefield):
    """Every flooding request got a 4xx (never a 5xx, never a hang), and there were many of them."""
    answers = battlefield.flood.answers
    assert battlefield.flood.requests >= 50
    assert all(400 <= status < 500 for status in answers), answers


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_is_refused_with_its_reason_and_nothing_is_written(battlefield, name):
    """The Ready condition and a Refused record name the cause; the attacker's namespace is untouched."""
    world = battlefield.attackers[name]
    attack = ATTACKS[name]
    ready = world.ready()
    assert ready["status"] == "False"
    assert ready["reason"] == attack.reason
    assert re.search(re.escape(attack.message), ready["message"], re.IGNORECASE), ready["message"]
    records = world.records()
    assert [r["spec"]["reason"] for r in records] == [attack.reason]
    assert records[0]["spec"]["outcome"] == "Refused"
    assert snapshot(world) == battlefield.snapshots[name]
    assert world.configmap(ATTACK_CONFIGMAP) is None


def test_a_kustomize_remote_reference_reaches_no_server(battlefield, git_server):
    """kustomize never connected anywhere: the git server saw no request for the repository named remotely."""
    assert not [path for _, path, _ in git_server.requests if "outside.git" in path]


def test_a_refused_head_is_not_fetched_again_until_it_moves(battlefield, git_server, operator):
    """After SourceRejected, further polls look at the head (ls-refs) but never fetch it again."""
    world = battlefield.attackers["malformed-commit"]
    repo_path = f"/{world.repo_name}/"

    def fetches() -> int:
        return sum(
            1 for _, path, command in git_server.requests if path.startswith(repo_path) and command == "fetch"
        )

    def looks() -> int:
        return sum(
            1
            for _, path, command in git_server.requests
            if path.startswith(repo_path) and command == "ls-refs"
        )

    fetched, looked = fetches(), looks()
    wait_until(lambda: looks() >= looked + 2, timeout=60, what="two more polls of the refused head")
    assert fetches() == fetched
    assert len(world.records()) == 1
