"""The app scheduler (gitward.runner): when apps are attempted, how wakes and deletions are answered.

The pipeline itself is replaced by a recorder (``Runner._reconcile``), and the API by an
in-memory store of apps; the scheduling, the finalizer and the wake rules are the real ones.
Every wait here is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from gitward import runner as runner_module
from gitward import webhook
from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.api.resources import Trigger
from gitward.errors import Stalled, Waiting
from gitward.kube.objects import APIError
from gitward.reconcile.status import Action, Outcome
from gitward.runner import Runner, compact
from gitward.shards import SHARD_LABEL, Shard

_T = TypeVar("_T")
DEADLINE = 10.0
FINALIZER = Shard().finalizer


class Store:
    """The API server's apps, with resourceVersion preconditions as the server checks them."""

    def __init__(self) -> None:
        self.apps: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.patches: list[tuple[tuple[str, str], dict[str, Any]]] = []
        self.unanswered = 0  # this many patches get no answer (an API server outage)
        self.lock = threading.Lock()

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.version += 1
            body["metadata"]["resourceVersion"] = str(self.version)
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            self.apps[key] = body
            return copy.deepcopy(body)

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        with self.lock:
            found = self.apps.get((ref.namespace, ref.name))
            return copy.deepcopy(found) if found else None

    def merge_patch(self, ref: ObjectRef, patch: dict[str, Any], *, subresource: str = "") -> dict[str, Any]:
        assert not subresource  # the runner writes status only through the pipeline, stubbed here
        key = (ref.namespace, ref.name)
        with self.lock:
            current = self.apps.get(key)
            if current is None:
                raise APIError(404, "not found")
            if self.unanswered:
                self.unanswered -= 1
                raise APIError(0, "cannot reach the API server: ConnectionRefusedError")
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                raise APIError(409, "the object has been modified")
            self.patches.append((key, copy.deepcopy(patch)))
        body = copy.deepcopy(current)
        for field, value in (patch.get("metadata") or {}).items():
            if field == "resourceVersion":
                continue
            if value is None:
                body["metadata"].pop(field, None)
            else:
                body["metadata"][field] = value
        return self.put(body)


class Services:
    """What the runner reads of the pipeline's services."""

    def __init__(self, store: Store) -> None:
        self.operator = store
        self.reader = None

    def now(self) -> str:
        return "2026-11-26T00:00:00Z"


class Pools:
    """The operator's pools: a worker thread per call, as the real ones run them."""

    def __init__(self) -> None:
        self.tenants: list[str | None] = []

    async def run(self, tenant: str | None, call: Callable[[], _T]) -> _T:
        self.tenants.append(tenant)
        return await asyncio.get_running_loop().run_in_executor(None, call)


def app(name: str = "web", *, interval: str = "1h", generation: int = 1, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gitward.dev/v1alpha1",
        "kind": "GitOpsApp",
        "metadata": {"namespace": "team", "name": name, "generation": generation, "uid": "u", **metadata},
        "spec": {
            "tenant": "team-tenant",
            "source": {"url": "https://git.example/r.git", "interval": interval},
        },
    }


class Harness:
    """A runner over the store, its attempts recorded; the loop runs in the test's event loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, shard: Shard | None = None) -> None:
        self.store = Store()
        self.pools = Pools()
        self.attempts: list[tuple[str, Trigger, bool]] = []
        self.requests: list[str] = []  # the request each attempt answered ("" for none)
        self.outcome = Outcome(Action.SKIP, Reason.SUCCEEDED, ready=True)
        self.gate: asyncio.Event | None = None  # while set to an unset event, attempts wait for it
        self.pruned: list[str] = []
        self.pruned_bodies: list[dict[str, Any]] = []
        self.pruned_during_attempt = False
        self.prune_error: Exception | None = None
        self.runner = Runner(
            services=Services(self.store),  # type: ignore[arg-type]
            pools=self.pools,
            routes=webhook.Routes(),
            shard=shard or Shard(),
        )

        async def reconcile(
            _: Runner, body: dict[str, Any], *, trigger: Trigger, force: bool, requested: str = "", **__: Any
        ) -> Outcome:
            self.attempts.append((body["metadata"]["name"], trigger, force))
            self.requests.append(requested)
            if self.gate is not None:
                await self.gate.wait()
            return self.outcome

        def prune(body: dict[str, Any], _: Any) -> None:
            if self.gate is not None and not self.gate.is_set():
                self.pruned_during_attempt = True
            self.pruned_bodies.append(body)
            if self.prune_error is not None:
                raise self.prune_error
            self.pruned.append(body["metadata"]["name"])

        monkeypatch.setattr(Runner, "_reconcile", reconcile)
        monkeypatch.setattr(runner_module.reconcile, "prune_on_delete", prune)

    def announce(self, body: dict[str, Any]) -> None:
        """What the informer does: the stored version, compacted, handed to the runner."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.runner.changed(key, compact(self.store.put(body)))

    def announce_stored(self, name: str = "web") -> None:
        body = self.store.apps[("team", name)]
        self.runner.changed(("team", name), compact(copy.deepcopy(body)))

    async def until(self, what: Callable[[], bool], why: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not what():
            assert loop.time() < deadline, f"timed out waiting until {why}"
            await asyncio.sleep(0.01)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(monkeypatch)


def run(test: Callable[[], Any]) -> None:
    asyncio.run(test())


def test_a_new_app_gets_the_finalizer_and_one_attempt_then_waits_for_its_interval(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.announce(app())
        await harness.until(lambda: len(harness.attempts) == 1, "the first attempt")
        assert harness.store.apps[("team", "web")]["metadata"]["finalizers"] == [FINALIZER]
        # A status write by the attempt comes back from the watch: no spec change, no new attempt.
        harness.announce_stored()
        harness.runner.wake("team", "web", Trigger.WEBHOOK)
        await harness.until(lambda: len(harness.attempts) == 2, "the webhook's attempt")
        assert harness.attempts == [("web", Trigger.POLL, False), ("web", Trigger.WEBHOOK, False)]
        slot = harness.runner.slot("team", "web")
        assert slot.due - asyncio.get_running_loop().time() > 3000  # the next poll is an hour away
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_wake_during_an_attempt_is_answered_right_after_it_and_only_once(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.gate = asyncio.Event()
        harness.announce(app())
        await harness.until(lambda: len(harness.attempts) == 1, "the first attempt")
        assert not harness.runner.wake("team", "other", Trigger.WEBHOOK)  # no such app here
        for _ in range(3):
            assert harness.runner.wake("team", "web", Trigger.WEBHOOK)
        harness.gate.set()
        await harness.until(lambda: len(harness.attempts) == 2, "the attempt the wakes asked for")
        await harness.until(lambda: not harness.runner.slot("team", "web").running, "it to end")
        assert harness.attempts[1] == ("web", Trigger.WEBHOOK, False)
        assert len(harness.attempts) == 2  # three wakes, one attempt
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_spec_change_and_a_request_wake_the_app_and_a_status_change_does_not(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.announce(app())
        await harness.until(lambda: len(harness.attempts) == 1, "the first attempt")
        await harness.until(lambda: not harness.runner.slot("team", "web").running, "it to end")
        stored = harness.store.apps[("team", "web")]
        stored["status"] = {"lastAttemptedRevision": "abc"}
        harness.announce(stored)  # the attempt's own status write
        stored = copy.deepcopy(stored)
        stored["metadata"]["generation"] = 2
        harness.announce(stored)
        await harness.until(lambda: len(harness.attempts) == 2, "the spec change's attempt")
        assert harness.attempts[1] == ("web", Trigger.POLL, False)
        await harness.until(lambda: not harness.runner.slot("team", "web").running, "it to end")
        stored = copy.deepcopy(stored)
        stored["metadata"]["annotations"] = {runner_module.REQUEST_ANNOTATION: "2026-11-26T01:00:00Z"}
        harness.announce(stored)
        await harness.until(lambda: len(harness.attempts) == 3, "the request's attempt")
        assert harness.attempts[2] == ("web", Trigger.POLL, True)
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_deleted_app_is_pruned_after_the_attempt_in_flight_and_then_released(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.announce(app())
        harness.announce(app("witness"))
        await harness.until(lambda: len(harness.attempts) == 2, "the first attempts")
        await harness.until(lambda: not harness.runner.slot("team", "web").running, "it to end")
        await harness.until(lambda: not harness.runner.slot("team", "witness").running, "it to end")
        harness.gate = asyncio.Event()
        harness.runner.wake("team", "web", Trigger.WEBHOOK)
        await harness.until(lambda: len(harness.attempts) == 3, "an attempt in flight")
        deleting = copy.deepcopy(harness.store.apps[("team", "web")])
        deleting["metadata"]["deletionTimestamp"] = "2026-11-26T00:00:01Z"
        harness.announce(deleting)
        # Proof that the loop has handled the deletion: an app woken after it has been attempted.
        # A finalizer started on that pass would have asked for a thread first (tenant None).
        harness.runner.wake("team", "witness", Trigger.WEBHOOK)
        await harness.until(lambda: len(harness.attempts) == 4, "the witness's attempt")
        assert None not in harness.pools.tenants  # nothing pruned or released while web's attempt runs
        # The attempt in flight writes what it applied; the watch has not announced it yet.
        harness.store.apps[("team", "web")]["status"] = {"inventory": [{"kind": "ConfigMap", "name": "new"}]}
        harness.gate.set()
        await harness.until(lambda: harness.pruned == ["web"], "the prune")
        assert not harness.pruned_during_attempt  # the prune waited for the attempt to end
        # ... and pruned what the app's stored status lists, not the watch's older copy.
        assert harness.pruned_bodies[0]["status"]["inventory"] == [{"kind": "ConfigMap", "name": "new"}]
        await harness.until(lambda: ("team", "web") not in harness.runner, "the app to be forgotten")
        assert "finalizers" not in harness.store.apps[("team", "web")]["metadata"]
        assert [name for name, _, _ in harness.attempts].count("web") == 2  # none after the deletion
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_prune_that_must_wait_is_retried_and_one_refused_for_good_still_releases(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        body = app(finalizers=[FINALIZER], deletionTimestamp="2026-11-26T00:00:01Z")
        harness.prune_error = Waiting(Reason.API_UNAVAILABLE, "no answer", retry_after=0.05)
        harness.announce(body)
        await harness.until(lambda: harness.pools.tenants.count(None) >= 2, "a retried prune")
        assert harness.store.apps[("team", "web")]["metadata"]["finalizers"] == [FINALIZER]
        harness.prune_error = Stalled(Reason.APPLY_FORBIDDEN, "the tenant may not delete")
        await harness.until(
            lambda: "finalizers" not in harness.store.apps[("team", "web")]["metadata"], "the release"
        )
        assert harness.attempts == []  # a deleted app is never reconciled
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_an_app_of_another_shard_is_not_run_and_loses_this_shards_finalizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(monkeypatch, shard=Shard(key="a"))
    mine = Shard(key="a").finalizer

    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.announce(app("moved", labels={SHARD_LABEL: "b"}, finalizers=["other/keep", mine]))
        await harness.until(
            lambda: harness.store.apps[("team", "moved")]["metadata"]["finalizers"] == ["other/keep"],
            "this shard's finalizer to be released",
        )
        harness.announce(app("ours", labels={SHARD_LABEL: "a"}))
        await harness.until(lambda: len(harness.attempts) == 1, "the owned app's attempt")
        assert harness.attempts == [("ours", Trigger.POLL, False)]
        assert ("team", "moved") not in harness.runner
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_finalizer_added_by_another_shard_meanwhile_is_kept(harness: Harness) -> None:
    """The finalizer is added with a resourceVersion precondition: a lost race is read again, not overwritten."""
    store = harness.store
    seen_by_the_watch = store.put(app())
    raced = copy.deepcopy(store.apps[("team", "web")])  # another shard writes after the watch saw it
    raced["metadata"]["finalizers"] = ["gitward.dev/finalizer-other"]
    store.put(raced)
    ref = ObjectRef("gitward.dev", "v1alpha1", "GitOpsApp", "team", "web")
    result = harness.runner.with_finalizer(ref, seen_by_the_watch)
    assert result is not None
    assert result["metadata"]["finalizers"] == ["gitward.dev/finalizer-other", FINALIZER]


def test_compact_drops_managed_fields_and_shares_keys_between_apps() -> None:
    # Parsed from JSON, as the watch hands them over: each body has its own copies of every string.
    first, second = (
        compact(
            json.loads(
                json.dumps(
                    {
                        **app(name),
                        "metadata": {
                            **app(name)["metadata"],
                            "managedFields": [{"manager": "kubectl"}],
                            "annotations": {"kopf.gitward.dev/last-handled-configuration": "{}", "keep": "1"},
                        },
                    }
                )
            )
        )
        for name in ("a", "b")
    )
    raw = [json.loads(json.dumps(app(name))) for name in ("a", "b")]
    assert raw[0]["spec"]["tenant"] is not raw[1]["spec"]["tenant"]  # what compact is for
    assert "managedFields" not in first["metadata"]
    assert first["metadata"]["annotations"] == {"keep": "1"}
    key_a = next(k for k in first["spec"]["source"] if k == "interval")
    key_b = next(k for k in second["spec"]["source"] if k == "interval")
    assert key_a is key_b
    assert first["spec"]["tenant"] is second["spec"]["tenant"]
    assert first["metadata"]["namespace"] is second["metadata"]["namespace"]
    long_value = "x" * (runner_module.SHARED_STRING + 1)
    assert compact(json.loads(json.dumps({"a": long_value})))["a"] is not sys.intern(long_value)


def test_a_request_made_with_a_spec_change_or_while_no_process_ran_the_app_forces_its_attempt(
    harness: Harness,
) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        asked = {runner_module.REQUEST_ANNOTATION: "t1"}
        answered = app("answered", annotations=asked)
        answered["status"] = {runner_module.HANDLED_REQUEST: "t1"}
        harness.announce(app("missed", annotations=asked))  # asked while the operator was down
        harness.announce(answered)  # asked, and answered before the restart
        await harness.until(lambda: len(harness.attempts) == 2, "the first attempts")
        by_app = {attempt[0]: attempt for attempt in harness.attempts}
        assert by_app["missed"] == ("missed", Trigger.POLL, True)
        assert by_app["answered"] == ("answered", Trigger.POLL, False)
        assert harness.requests[harness.attempts.index(by_app["missed"])] == "t1"  # recorded in status
        await harness.until(lambda: not harness.runner.slot("team", "answered").running, "it to end")
        both = copy.deepcopy(harness.store.apps[("team", "answered")])
        both["metadata"]["generation"] = 2
        both["metadata"]["annotations"] = {runner_module.REQUEST_ANNOTATION: "t2"}
        harness.announce(both)  # one update: a spec change and a request
        await harness.until(lambda: len(harness.attempts) == 3, "the update's attempt")
        assert harness.attempts[2] == ("answered", Trigger.POLL, True)
        assert harness.requests[2] == "t2"
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_finalizer_the_api_server_did_not_let_go_is_released_on_a_later_try(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "RELEASE_RETRY", 0.05)

    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.store.unanswered = 1  # the release's patch gets no answer once
        harness.announce(app(finalizers=[FINALIZER], deletionTimestamp="2026-11-26T00:00:01Z"))
        await harness.until(lambda: harness.store.unanswered == 0, "the unanswered release")
        assert ("team", "web") in harness.runner  # kept, to try again
        await harness.until(
            lambda: "finalizers" not in harness.store.apps[("team", "web")]["metadata"], "the release"
        )
        await harness.until(lambda: ("team", "web") not in harness.runner, "the app to be forgotten")
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_a_prune_backoff_is_kept_while_the_deleting_app_changes(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.prune_error = Waiting(Reason.API_UNAVAILABLE, "no answer", retry_after=3600)
        body = app(finalizers=[FINALIZER, "other.example/keep"], deletionTimestamp="2026-11-26T00:00:01Z")
        harness.announce(body)
        await harness.until(lambda: len(harness.pruned_bodies) == 1, "the first prune")
        await harness.until(lambda: not harness.runner.slot("team", "web").running, "it to end")
        for number in range(5):  # another controller keeps writing the app
            changed = copy.deepcopy(harness.store.apps[("team", "web")])
            changed["metadata"]["labels"] = {"n": str(number)}
            harness.announce(changed)
        harness.announce(app("witness"))  # proof the loop ran after the changes
        await harness.until(lambda: len(harness.attempts) == 1, "the witness's attempt")
        assert len(harness.pruned_bodies) == 1  # the hour's backoff holds
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)


def test_the_schedule_stays_small_however_often_an_app_is_woken(harness: Harness) -> None:
    async def scenario() -> None:
        loop_task = asyncio.ensure_future(harness.runner.run())
        harness.announce(app())
        await harness.until(lambda: len(harness.attempts) == 1, "the first attempt")
        loop = asyncio.get_running_loop()
        for number in range(300):
            harness.runner.wake_for_drift("team", "web")
            wanted = number + 2
            await harness.until(
                lambda wanted=wanted: (
                    len(harness.attempts) == wanted and not harness.runner.slot("team", "web").running
                ),
                f"drift check {number} to end",
            )
            assert harness.runner.slot("team", "web").due > loop.time() + 60  # back to its hour
        assert len(harness.runner._heap) <= 2 * len(harness.runner) + 65  # noqa: SLF001 - the point
        await harness.runner.stop()
        loop_task.cancel()

    run(scenario)
