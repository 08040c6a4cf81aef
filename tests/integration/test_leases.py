"""Leader election on a real coordination.k8s.io/v1 Lease: one holder, standbys wait, takeover only after expiry.

Electors run in this process against the test cluster's API server, with
short durations. A holder that stops renewing is simulated by stopping its
renew thread without releasing (as a killed process would leave the Lease);
a holder that cannot reach the API server by pointing its client at a closed
port. Races are made deterministic by letting the rival write between the
loser's read and its write, so the API server itself answers 409.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from gitward.kube import clients
from gitward.kube.config import ConfigError, Credential, Credentials
from gitward.kube.http import Connection
from gitward.kube.leases import LOST_EXIT_CODE, LeaderElector, Record, Timing
from support.kube import read_lease
from support.waiting import wait_until

pytestmark = pytest.mark.cluster
FAST = Timing(lease_duration=3, renew_deadline=2, retry_period=0.5)


def lease(admin: client.ApiClient, namespace: str, name: str = "gitward-shard-t") -> Record | None:
    return read_lease(admin, namespace, name)


class Electors:
    """Electors for one Lease; every renew thread is stopped at the end, also when the test fails."""

    def __init__(self, api: Connection, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.made: list[LeaderElector] = []
        self.unexpected: list[str] = []  # leases lost by electors whose test did not expect it

    def __call__(
        self, identity: str, *, cls: type[LeaderElector] = LeaderElector, **kwargs: Any
    ) -> LeaderElector:
        kwargs.setdefault("timing", FAST)
        kwargs.setdefault("on_lost", lambda why: self.unexpected.append(f"{identity}: {why}"))
        elector = cls(self.api, namespace=self.namespace, name="gitward-shard-t", identity=identity, **kwargs)
        self.made.append(elector)
        return elector

    def close(self) -> None:
        for elector in self.made:
            elector.stop_renewing()


@pytest.fixture
def electors(kube_api, namespace):
    made = Electors(kube_api, namespace)
    yield made
    made.close()
    assert not made.unexpected, "an elector lost its lease unexpectedly"


def acquire_in_background(elector: LeaderElector) -> tuple[threading.Thread, threading.Event, list[float]]:
    stop, done = threading.Event(), []

    def run() -> None:
        if elector.acquire(stop):
            done.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop, done


def test_one_holds_the_other_waits_and_takes_over_only_after_expiry(admin, namespace, electors):
    """B stands by while A renews past the lease duration; when A stops renewing, B takes over after expiry."""
    lost: list[str] = []
    a, b = electors("a", on_lost=lost.append), electors("b")
    assert a.try_acquire_or_renew()
    a.start_renewing()
    first = lease(admin, namespace)
    assert first is not None
    assert (first.holder, first.duration, first.transitions) == ("a", 3, 0)
    assert first.renew_time is not None

    thread, stop, done = acquire_in_background(b)
    try:
        # A renews: the Lease outlives its first expiry, and B is still waiting.
        wait_until(
            lambda: (r := lease(admin, namespace)) and r.renew_time > first.renew_time + timedelta(seconds=4),
            timeout=15, what="A to renew past its first expiry",
        )  # fmt: skip
        assert not done
        assert lease(admin, namespace).holder == "a"
        assert b.observed_holder == "a"

        a.stop_renewing()  # A goes silent without releasing, as a killed process would
        last = lease(admin, namespace)
        thread.join(timeout=15)
        assert done, "B never acquired the expired lease"
    finally:
        stop.set()
    now = lease(admin, namespace)
    assert (now.holder, now.transitions) == ("b", 1)
    # B took over only once A's last renewal had expired, by the Lease's own clock.
    assert now.acquire_time >= last.renew_time + timedelta(seconds=last.duration)
    assert b.leading
    assert not lost
    assert not a.try_acquire_or_renew()  # A, back, finds B holding it: it knows it lost, and stops
    assert lost == ["the lease names another holder: b"]


def test_a_holder_that_cannot_renew_stops_before_anyone_may_take_over(
    admin, namespace, electors, kube_configuration
):
    """Renewals fail (API server unreachable): on_lost fires at the renew deadline, before the lease expires."""
    timing = Timing(lease_duration=6, renew_deadline=2, retry_period=0.5)
    lost: list[tuple[datetime, str]] = []
    a = electors("a", timing=timing, on_lost=lambda why: lost.append((datetime.now(UTC), why)))
    assert a.try_acquire_or_renew()
    a.start_renewing()
    first = lease(admin, namespace)
    wait_until(lambda: lease(admin, namespace).renew_time > first.renew_time, timeout=5, what="a renewal")
    unreachable = dataclasses.replace(kube_configuration, host="https://127.0.0.1:9")  # nothing listens there
    a.api = clients.api_client(unreachable)
    wait_until(lambda: lost, timeout=10, what="the holder to give up")
    gave_up, why = lost[0]
    assert "no renewal succeeded" in why
    assert not a.leading
    last = lease(admin, namespace)  # its last successful renewal
    assert last.holder == "a"
    # It gave up once the renew deadline had passed since its last renewal, and well before that renewal
    # expired: no standby can take the Lease while it might still be reconciling.
    assert last.renew_time + timedelta(seconds=timing.renew_deadline - 0.05) <= gave_up
    assert gave_up + timedelta(seconds=2) < last.renew_time + timedelta(seconds=last.duration)
    assert not electors("b", timing=timing).try_acquire_or_renew()  # the Lease is still a's for a while
    assert len(lost) == 1


class Failing:
    """The holder's credentials, failing first in the given ways: a plugin's error, or anything at all."""

    def __init__(self, real: Credentials, failures: list[str]) -> None:
        self.real = real
        self.failures = failures
        self.lock = threading.Lock()

    def current(self) -> Credential:
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure == "plugin":
            raise ConfigError("the exec credential plugin 'x' failed (exited, exit code 1): no")
        if failure is not None:
            raise RuntimeError(failure)  # not a failure a request is meant to raise: the thread survives it
        return self.real.current()

    def invalidate(self) -> bool:
        return self.real.invalidate()


def test_a_renewal_that_fails_in_any_way_is_tried_again(admin, namespace, electors, kube_configuration):
    """Credentials that cannot be had (or anything else a request raises) do not end the renew thread."""
    timing = Timing(lease_duration=6, renew_deadline=4, retry_period=0.5)
    lost: list[str] = []
    a = electors("a", timing=timing, on_lost=lost.append)
    assert a.try_acquire_or_renew()
    a.start_renewing()
    failing = Failing(kube_configuration.credentials, ["plugin", "a bug", "plugin"])
    a.api = clients.api_client(dataclasses.replace(kube_configuration, credentials=failing))
    wait_until(lambda: not failing.failures, timeout=10, what="the renewals to fail three times")
    failed_at = lease(admin, namespace).renew_time
    wait_until(
        lambda: lease(admin, namespace).renew_time > failed_at,
        timeout=10,
        what="a renewal after the failures",
    )
    assert a.leading
    assert not lost
    assert all(thread.is_alive() for thread in a._threads)  # noqa: SLF001 - the renew thread and watchdog


def test_a_holder_that_finds_another_holder_gives_up_at_once(admin, namespace, electors):
    """Someone overwrote the holder: the next renewal sees it and calls on_lost without waiting the deadline."""
    lost: list[str] = []
    a = electors("a", on_lost=lost.append)
    assert a.try_acquire_or_renew()
    a.start_renewing()
    client.CoordinationV1Api(admin).patch_namespaced_lease(
        "gitward-shard-t", namespace, {"spec": {"holderIdentity": "intruder"}}
    )
    wait_until(lambda: lost, timeout=5, what="the holder to notice")
    assert "another holder: intruder" in lost[0]
    assert not a.leading
    assert lease(admin, namespace).holder == "intruder"


def test_release_hands_over_at_once(admin, namespace, electors):
    """A graceful stop empties the holder with a 1s duration: a standby takes it at its next try."""
    a, b = electors("a"), electors("b")
    assert a.try_acquire_or_renew()
    a.start_renewing()
    assert not b.try_acquire_or_renew()
    assert a.release()
    released = lease(admin, namespace)
    assert (released.holder, released.duration) == ("", 1)
    assert b.try_acquire_or_renew()
    assert (lease(admin, namespace).holder, lease(admin, namespace).transitions) == ("b", 1)
    assert not a.release()  # not the holder any more: nothing to release


class RacedAfterRead(LeaderElector):
    """Reads the Lease, then lets a rival write before writing itself: the API server must answer 409."""

    rival: LeaderElector | None = None

    def _get(self) -> dict[str, Any] | None:
        found = super()._get()
        if self.rival is not None:
            rival, self.rival = self.rival, None
            assert rival.try_acquire_or_renew()
        return found


def test_a_lost_race_to_create_is_clean(admin, namespace, electors):
    """No Lease yet; both read 'none'; the rival creates it first; the loser's create is a 409, not an error."""
    loser = electors("loser", cls=RacedAfterRead)
    loser.rival = electors("winner")
    assert not loser.try_acquire_or_renew()
    assert not loser.leading
    assert lease(admin, namespace).holder == "winner"


def test_a_lost_race_to_take_an_expired_lease_is_clean(admin, namespace, electors):
    """Both see a released Lease; the rival's write changes its resourceVersion; the loser's replace is a 409."""
    first = electors("first")
    assert first.try_acquire_or_renew()
    assert first.release()
    loser = electors("loser", cls=RacedAfterRead)
    loser.rival = electors("winner")
    assert not loser.try_acquire_or_renew()
    assert not loser.leading
    assert lease(admin, namespace).holder == "winner"
    assert not loser.try_acquire_or_renew()  # and next time it sees the winner, unexpired: it waits


def test_many_candidates_at_once_elect_exactly_one(admin, namespace, electors):
    """Eight threads try the same free Lease at the same moment: one leads, seven lose cleanly."""
    candidates = [electors(f"c{i}") for i in range(8)]
    barrier = threading.Barrier(len(candidates))
    results: dict[str, bool] = {}

    def attempt(elector: LeaderElector) -> None:
        barrier.wait()
        results[elector.identity] = elector.try_acquire_or_renew()

    threads = [threading.Thread(target=attempt, args=(c,)) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [identity for identity, won in results.items() if won]
    assert len(results) == 8
    assert len(winners) == 1
    assert lease(admin, namespace).holder == winners[0]


LOSE_IN_A_PROCESS = """
import dataclasses, sys, time
from gitward.kube import clients
from gitward.kube.http import Connection
from gitward.kube.leases import LeaderElector, Timing
configuration = clients.load_configuration(sys.argv[1])
elector = LeaderElector(clients.api_client(configuration), namespace=sys.argv[2], name="gitward-shard-t",
                        identity="doomed", timing=Timing(3, 2, 0.5))
assert elector.try_acquire_or_renew()
elector.start_renewing()
broken = dataclasses.replace(configuration, host="https://127.0.0.1:9")
elector.api = clients.api_client(broken)
time.sleep(30)
print("still running: leadership was never given up")
"""


def test_by_default_a_lost_lease_ends_the_process_hard(kubeconfig, namespace, admin):
    """With no on_lost given, the process logs and exits non-zero within the renew deadline, running nothing after."""
    started = time.monotonic()
    ended = subprocess.run(
        [sys.executable, "-c", LOSE_IN_A_PROCESS, str(kubeconfig), namespace],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ended.returncode == LOST_EXIT_CODE != 0, ended.stdout + ended.stderr
    assert "leader election lost" in ended.stdout + ended.stderr
    assert "still running" not in ended.stdout
    assert time.monotonic() - started < 20
    assert lease(admin, namespace).holder == "doomed"  # not released: it simply expires
