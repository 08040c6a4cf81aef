"""Every GitOpsApp this process owns, reconciled by one scheduler over one shared watch.

Each app used to have a kopf daemon: a task and its coroutines, kopf's
per-object worker, queue and handler state, and the app's whole body
(``managedFields`` included) kept by kopf beside it. At a thousand apps that
was about 140 KiB each, most of the operator's memory. Here one
:class:`~gitward.kube.informer.Informer` watches every GitOpsApp and a
:class:`Runner` keeps a small :class:`Slot` per app: the app's body without
``managedFields`` (keys interned, shared by every app), when it is next due,
and its backoff. An attempt is a task only while it runs or parks for
health; an app between polls is a heap entry.

What the daemon did is kept: an app is reconciled, then again after its
interval (plus up to 10% jitter) or as soon as a spec change, an on-demand
request (the annotation ``gitward.dev/reconcile-requested-at``), a push
webhook or drift wakes it; a wake that arrives during an attempt is
answered right after it. A refused commit is not retried in a hot loop, a
transient failure backs off up to the interval, and nothing an attempt
raises ends the app's schedule. The pipeline runs in the operator's own
pools, so the event loop stays free for the watch and the webhook.

The finalizer is this process's own too: it is added on an app's first
attempt (one name per shard, :attr:`gitward.shards.Shard.finalizer`), and
when the app is deleted its objects are pruned (``prune: true``) after the
attempt in flight, if any, has ended, and only then is it released. An app
that leaves this shard loses this shard's finalizer, so it never blocks a
deletion that its new owner handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from gitward import logs, metrics, shards, webhook
from gitward.api import resources
from gitward.api.conditions import Condition, ConditionType, Reason, Status, merge_conditions
from gitward.api.refs import ObjectRef
from gitward.api.resources import Trigger, parse_duration
from gitward.apply.waiting import WatchedHealth
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.kube.informer import Key
from gitward.kube.objects import APIError, Objects
from gitward.reconcile import app as reconcile
from gitward.reconcile.decide import next_delay, step_of
from gitward.reconcile.state import Services
from gitward.reconcile.status import Action, Outcome
from gitward.source import urls

REQUEST_ANNOTATION = "gitward.dev/reconcile-requested-at"
HANDLED_REQUEST = "lastHandledRequest"  # status: the request annotation's value last answered
HANDLED_REQUEST_LENGTH = 128  # its maxLength in the CRD; a longer value is compared cut to it
GROUP, VERSION = resources.GROUP, resources.VERSION
API_VERSION = f"{GROUP}/{VERSION}"
KIND = resources.APP.kind
RELEASE_RETRY = 5.0  # seconds before a finalizer the API server did not let go is tried again
_STOP_GRACE = 30.0  # seconds attempts in flight may take to finish when the operator stops
_CONFLICT, _NOT_FOUND = 409, 404
# Annotations kopf wrote while it ran the apps; nothing reads them now, so a copy is not kept.
_DROPPED_ANNOTATION_PREFIX = "kopf.gitward.dev/"
SHARED_STRING = 40  # values up to this length are interned: types, reasons, statuses, names
_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)


class Pool(Protocol):
    """What the runner needs of the operator's threads (``handlers.Pools``)."""

    async def run(self, tenant: str | None, call: Callable[[], _T]) -> _T:
        """Run ``call`` in a worker thread within ``tenant``'s slots (``None``: the pool's bound only)."""
        ...


@dataclass(slots=True, eq=False)
class Slot:
    """One app: its latest body and its schedule."""

    namespace: str
    name: str
    body: dict[str, Any]  # as the watch last announced it, compacted (see :func:`compact`)
    interval: float
    due: float = 0.0  # monotonic time of the next attempt
    failures: int = 0  # attempts in a row that asked to be retried
    wrote: bool = True  # the last attempt wrote the app (or none ran yet): read it from the API
    unreachable_since: str = ""  # when attempts began to find the API server unreachable
    running: bool = False
    gone: bool = False  # deleted, or no longer this shard's: no further attempt
    woken: bool = False  # a wake is pending
    trigger: Trigger = Trigger.POLL
    force: bool = False
    woken_at: float = float("-inf")  # monotonic time of the first pending wake
    requested: str = ""  # the request annotation a pending forced attempt answers

    @property
    def key(self) -> Key:
        """(namespace, name)."""
        return self.namespace, self.name

    @property
    def deleting(self) -> bool:
        """Whether the app is being deleted."""
        return bool((self.body.get("metadata") or {}).get("deletionTimestamp"))


def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """The app as the runner keeps it: no ``managedFields`` or kopf's annotations, and shared strings.

    A thousand apps have the same keys and mostly the same short values; parsed
    from JSON, each had its own copies of them.
    """
    metadata = dict(body.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping):
        metadata["annotations"] = {
            key: value for key, value in annotations.items() if not key.startswith(_DROPPED_ANNOTATION_PREFIX)
        }
    shared: dict[str, Any] = _interned({**body, "metadata": metadata})
    return shared


def _interned(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, dict):
        return {sys.intern(str(key)): _interned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interned(item) for item in value]
    if isinstance(value, str) and len(value) <= SHARED_STRING:
        return sys.intern(value)
    return value


def interval_of(body: Mapping[str, Any]) -> float:
    """The app's ``spec.source.interval`` in seconds (a minute if unreadable)."""
    try:
        return parse_duration(str(((body.get("spec") or {}).get("source") or {}).get("interval") or "1m"))
    except ValueError:
        return 60.0


def _metadata(body: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = body.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _request(body: Mapping[str, Any]) -> str:
    return str((_metadata(body).get("annotations") or {}).get(REQUEST_ANNOTATION) or "")[
        :HANDLED_REQUEST_LENGTH
    ]


def _handled_request(body: Mapping[str, Any]) -> str:
    return str((body.get("status") or {}).get(HANDLED_REQUEST) or "")


class Runner:
    """The scheduler: every owned app's slot, a heap of when each is due, and the attempts in flight."""

    def __init__(
        self,
        *,
        services: Services,
        pools: Pool,
        routes: webhook.Routes,
        shard: shards.Shard,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self.pools = pools
        self.routes = routes
        self.shard = shard
        self.finalizer = shard.finalizer
        self.clock = clock
        self._slots: dict[Key, Slot] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._releasing: set[Key] = set()  # apps of another shard whose finalizer is being taken off
        self._stopping = False

    @property
    def operator(self) -> Objects:
        """The operator's own API client."""
        return self.services.operator

    def slot(self, namespace: str, name: str) -> Slot | None:
        """The app's slot, if this process runs it."""
        return self._slots.get((namespace, name))

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    # -- changes from the watch (on the event loop) --------------------------------------------------------

    def changed(self, key: Key, body: dict[str, Any] | None) -> None:
        """The watch announced a new version of an app (``None``: it was deleted)."""
        if self._stopping:
            return
        slot = self._slots.get(key)
        if body is None:
            if slot is not None:
                self._forget(slot)
            return
        metadata = _metadata(body)
        finalizers = list(metadata.get("finalizers") or ())
        if not self.shard.owns(key[0], key[1], metadata.get("labels") or {}):
            if slot is not None:
                self._forget(slot)
            if self.finalizer in finalizers and key not in self._releasing:
                self._spawn(self._release_for_good(key))  # it moved to another shard: never block it
            return
        deleting = bool(metadata.get("deletionTimestamp"))
        if slot is None:
            if deleting and self.finalizer not in finalizers:
                return  # being deleted, and nothing of this process's holds it
            slot = Slot(key[0], key[1], body, interval_of(body))
            self._slots[key] = slot
            requested = _request(body)
            if not deleting and requested and requested != _handled_request(body):
                # Asked for while no process ran the app (a restart, a failover): answered now.
                self.wake(*key, Trigger.POLL, force=True, request=requested)
            else:
                self._schedule(slot, self.clock())
            return
        previous, slot.body = slot.body, body
        if deleting:
            if not _metadata(previous).get("deletionTimestamp"):
                self._due_now(slot)  # once: a prune told to wait keeps its backoff
            return
        requested = _request(body)
        asked = bool(requested) and requested != _request(previous)  # on demand
        if asked or _metadata(previous).get("generation") != metadata.get("generation"):
            # A spec change is reconciled now, not at the next poll; a request forces the attempt.
            self.wake(*key, Trigger.POLL, force=asked, request=requested if asked else "")

    def wake(
        self, namespace: str, name: str, trigger: Trigger, *, force: bool = False, request: str = ""
    ) -> bool:
        """Ask for an attempt now; False if this process runs no such app.

        Only the on-demand annotation forces a new attempt at a head already
        attempted; a webhook or a spec change just looks now, so a push event
        for a commit that is already applied changes nothing and records nothing.
        ``request`` is the annotation's value, recorded in status once answered.
        """
        slot = self._slots.get((namespace, name))
        if slot is None or slot.deleting:
            return False
        slot.trigger, slot.force = trigger, slot.force or force
        slot.requested = request or slot.requested
        if not slot.woken:
            slot.woken, slot.woken_at = True, self.clock()
        self._due_now(slot)
        return True

    def wake_for_drift(self, namespace: str, name: str) -> None:
        """An object the app applied changed: check for drift now.

        Nothing new is expected from git, so the head checked within the interval will do (a
        webhook's or a request's trigger and freshness, if one is pending, are kept).
        """
        slot = self._slots.get((namespace, name))
        if slot is None or slot.deleting:
            return
        slot.woken = True
        self._due_now(slot)

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start each app's attempt when it is due, until :meth:`stop`."""
        while not self._stopping:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                slot = self._slots.get(key)
                if slot is None or slot.running or slot.due != due:
                    continue  # superseded by a later schedule, or running (it reschedules itself)
                slot.running = True
                self._spawn(self._cycle(slot))
            self._kick.clear()
            timeout = max(0.0, self._heap[0][0] - self.clock()) if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)

    async def stop(self) -> None:
        """Start nothing new; let attempts in flight finish for a while, then cancel them."""
        self._stopping = True
        self._kick.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE)
            for task in pending:
                task.cancel()

    def _schedule(self, slot: Slot, when: float) -> None:
        slot.due = when
        heapq.heappush(self._heap, (when, next(self._order), slot.key))
        if len(self._heap) > 2 * len(self._slots) + 64:
            # Each wake leaves the app's earlier entry behind until its time; rebuilt from the
            # slots (one entry each, running ones none: they reschedule themselves), it stays small.
            self._heap = [
                (each.due, next(self._order), each.key) for each in self._slots.values() if not each.running
            ]
            heapq.heapify(self._heap)
        self._kick.set()

    def _due_now(self, slot: Slot) -> None:
        """Attempt the app now; one running now is attempted again as soon as it ends (``woken``)."""
        if not slot.running:
            self._schedule(slot, self.clock())

    def _spawn(self, work: Any) -> None:  # noqa: ANN401 - a coroutine
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, slot: Slot) -> None:
        slot.gone = True
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        self.routes.forget(slot.key)

    # -- one app -------------------------------------------------------------------------------------------

    async def _cycle(self, slot: Slot) -> None:
        """One attempt (or the finalizer, for an app being deleted), then the app's next time."""
        trigger, force, woken_at, requested = Trigger.POLL, False, float("-inf"), ""
        if slot.woken:
            trigger, force, woken_at, requested = slot.trigger, slot.force, slot.woken_at, slot.requested
            slot.woken, slot.trigger, slot.force, slot.woken_at = False, Trigger.POLL, False, float("-inf")
            slot.requested = ""
        finalizing = slot.deleting
        try:
            if finalizing:
                delay = await self._finalize(slot)
            else:
                delay = await self._poll(slot, trigger, force=force, woken_at=woken_at, requested=requested)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - nothing an attempt raises ends the app's schedule
            _LOG.exception("reconcile of %s/%s failed", slot.namespace, slot.name)
            delay = 30.0
        finally:
            slot.running = False
        if slot.gone or self._stopping:
            return
        if slot.woken or (slot.deleting and not finalizing):
            delay = 0.0  # a wake during the attempt is answered now; so is a deletion
        self._schedule(slot, self.clock() + delay)

    async def _poll(
        self, slot: Slot, trigger: Trigger, *, force: bool, woken_at: float, requested: str
    ) -> float:
        """One reconcile of the app; seconds until the next."""
        namespace, name = slot.key
        services = self.services
        ref = ObjectRef(GROUP, VERSION, KIND, namespace, name)
        started = time.perf_counter()
        attempted_at = services.now()
        try:
            if self.finalizer not in (_metadata(slot.body).get("finalizers") or ()):
                current = await self.pools.run(
                    namespace, functools.partial(self.with_finalizer, ref, slot.body)
                )
            elif slot.wrote or slot.unreachable_since:
                # The watch's copy follows an attempt that wrote nothing for free (a push to a
                # repository that a thousand apps read wakes them all); after one that wrote status,
                # or could not reach the API server (the watch may still be catching up), the app
                # is read from the API, so a decision never rests on a status older than the
                # operator's own last write.
                current = await self.pools.run(namespace, functools.partial(self.operator.get, ref))
            else:
                current = slot.body  # only read: the watch replaces it, never changes it in place
            if current is None:
                self._forget(slot)
                return 0.0
            if _metadata(current).get("deletionTimestamp"):
                slot.body = compact(current)
                return 0.0  # the finalizer runs next
            slot.interval = interval_of(current)
            # Woken (webhook, request, spec change): only a head checked since then will do.
            fresher_than = max(woken_at, self.clock() - slot.interval)
            outcome = await self._attempt(
                current,
                unreachable_since=slot.unreachable_since,
                trigger=trigger,
                force=force,
                fresher_than=fresher_than,
                requested=requested,
            )
        except (GitwardError, APIError) as error:  # status could not be written: retry with backoff
            logs.audit().bind(app=f"{namespace}/{name}").warning("reconcile error", error=str(error))
            reason = error.reason if isinstance(error, GitwardError) else Reason.API_UNAVAILABLE
            outcome = Outcome(Action.DEPLOY, reason, ready=False, retry_after=15)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the schedule outlives anything a reconcile raises
            _LOG.exception("reconcile of %s/%s failed", namespace, name)
            logs.audit().bind(app=f"{namespace}/{name}").warning(
                "reconcile error", error=type(error).__name__
            )
            outcome = Outcome(Action.DEPLOY, Reason.RECONCILE_ERROR, ready=False, retry_after=30)
        observe(namespace, name, outcome, time.perf_counter() - started)
        slot.wrote = outcome.action is not Action.SKIP or bool(slot.unreachable_since)
        slot.unreachable_since = (slot.unreachable_since or attempted_at) if unreachable(outcome) else ""
        slot.failures = slot.failures + 1 if outcome.retry_after is not None else 0
        jitter = random.random()  # noqa: S311 - spreads polls apart, not cryptography
        return retry_delay(
            interval=slot.interval, retry_after=outcome.retry_after, failures=slot.failures, jitter=jitter
        )

    def with_finalizer(self, ref: ObjectRef, known: Mapping[str, Any]) -> dict[str, Any] | None:
        """The app with this shard's finalizer added, as stored; None if it is gone.

        The patch is made on ``known`` (the watch's copy), with its resourceVersion as a
        precondition; only if someone wrote the app since is it read again and the patch retried.
        """
        app: Mapping[str, Any] | None = known
        for _ in range(5):
            if app is None:
                return None
            metadata = _metadata(app)
            finalizers = list(metadata.get("finalizers") or ())
            if self.finalizer in finalizers or metadata.get("deletionTimestamp"):
                return dict(app)
            patch = {
                "metadata": {
                    "finalizers": [*finalizers, self.finalizer],
                    # A precondition: another shard's finalizer added meanwhile is not overwritten.
                    "resourceVersion": metadata.get("resourceVersion"),
                }
            }
            try:
                return self.operator.merge_patch(ref, patch)
            except APIError as error:
                if error.status == _NOT_FOUND:
                    return None
                if error.status != _CONFLICT:
                    raise
            app = self.operator.get(ref)
        raise Waiting(Reason.API_UNAVAILABLE, f"{ref}: the finalizer could not be added", retry_after=5)

    async def _finalize(self, slot: Slot) -> float:
        """Prune what the deleted app owns (``prune: true``), then release its finalizer; 0 once done.

        The app is read afresh: an attempt that ended just now may have applied objects that the
        watch's copy of its status does not list yet.
        """
        ref = ObjectRef(GROUP, VERSION, KIND, *slot.key)
        try:
            body = await self.pools.run(None, functools.partial(self.operator.get, ref))
        except APIError as error:
            _LOG.warning("reading %s/%s to prune it failed: %s; retrying", *slot.key, error.message)
            return 15.0
        if body is None or self.finalizer not in (_metadata(body).get("finalizers") or ()):
            self._forget(slot)
            return 0.0
        try:
            await self.pools.run(None, functools.partial(reconcile.prune_on_delete, body, self.services))
        except Waiting as error:
            _LOG.warning("pruning %s/%s waits: %s", slot.namespace, slot.name, error)
            return float(error.retry_after or 15)
        except Stalled as error:  # refused for good: pruning more would not help, so let it go
            _LOG.warning("not pruning for %s/%s: %s", slot.namespace, slot.name, error)
        except (GitwardError, APIError) as error:
            _LOG.warning("pruning %s/%s failed: %s; retrying", slot.namespace, slot.name, error)
            return 30.0
        if not await self._release_finalizer(slot.key):
            return RELEASE_RETRY  # pruned; the next try finds nothing owned left and only releases
        self._forget(slot)
        return 0.0

    async def _release_for_good(self, key: Key) -> None:
        """Release this shard's finalizer from an app another shard owns, retrying until it is off."""
        self._releasing.add(key)
        try:
            delay = 1.0
            while not self._stopping and not await self._release_finalizer(key):
                await asyncio.sleep(delay)  # a backoff between API requests, not a wait for a condition
                delay = min(60.0, delay * 2)
        finally:
            self._releasing.discard(key)

    async def _release_finalizer(self, key: Key) -> bool:
        """Take this shard's finalizer off the app (read afresh, written with a precondition).

        True once it is off (or the app is gone); False if the API server did not let it be taken
        off now, for the caller to try again.
        """
        ref = ObjectRef(GROUP, VERSION, KIND, *key)

        def release() -> bool:
            for _ in range(5):
                app = self.operator.get(ref)
                finalizers = list(_metadata(app or {}).get("finalizers") or ())
                if app is None or self.finalizer not in finalizers:
                    return True
                kept = [name for name in finalizers if name != self.finalizer]
                version = _metadata(app).get("resourceVersion")
                patch = {"metadata": {"finalizers": kept or None, "resourceVersion": version}}
                try:
                    self.operator.merge_patch(ref, patch)
                except APIError as error:
                    if error.status == _NOT_FOUND:
                        return True
                    if error.status != _CONFLICT:
                        raise
                else:
                    return True
            return False  # someone else kept writing it

        try:
            return await self.pools.run(None, release)
        except APIError as error:
            _LOG.warning("releasing the finalizer of %s/%s failed: %s", *key, error.message)
            return False

    async def _attempt(
        self,
        app: dict[str, Any],
        *,
        unreachable_since: str,
        trigger: Trigger,
        force: bool,
        fresher_than: float,
        requested: str = "",
    ) -> Outcome:
        """One attempt; the first after the API server did not answer writes Ready ``Unknown`` first.

        The previous attempt could not write the app's status, so nothing in it can be trusted to be
        current: Ready says so (``APIUnavailable``, since when) until this attempt completes and writes
        its own. An attempt that finds nothing new writes no condition; the Ready from before the outage
        is then put back.
        """
        if not unreachable_since:
            return await self._reconcile(
                app, trigger=trigger, force=force, fresher_than=fresher_than, requested=requested
            )
        services = self.services
        metadata = _metadata(app)
        ref = ObjectRef(
            GROUP, VERSION, KIND, str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
        )
        replaced = ready_of(app)
        conditions = unknown_since(
            list((app.get("status") or {}).get("conditions") or ()),
            unreachable_since,
            generation=_int_or_none(metadata.get("generation")),
            now=services.now(),
        )
        patch = {"status": {"conditions": conditions}}
        app = await self.pools.run(
            ref.namespace, functools.partial(self.operator.merge_patch, ref, patch, subresource="status")
        )
        marker = ready_of(app) or {}
        outcome = await self._reconcile(
            app, trigger=trigger, force=force, fresher_than=fresher_than, requested=requested
        )
        if unreachable(outcome) or replaced is None:
            return outcome

        def put_back() -> Outcome:
            stored = self.operator.get(ref)
            if stored is None:
                return outcome
            restored = restored_ready(
                list((stored.get("status") or {}).get("conditions") or ()),
                marker,
                replaced,
                now=services.now(),
            )
            if restored is None:
                return outcome
            self.operator.merge_patch(ref, {"status": {"conditions": restored}}, subresource="status")
            return replace(
                outcome, reason=Reason(str(replaced["reason"])), ready=replaced.get("status") == Status.TRUE
            )

        return await self.pools.run(ref.namespace, put_back)

    async def _reconcile(
        self, app: dict[str, Any], *, trigger: Trigger, force: bool, fresher_than: float, requested: str = ""
    ) -> Outcome:
        """One attempt: the pipeline in the tenant's slots; a health wait parked on the event loop."""
        services = self.services
        metadata = _metadata(app)
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        slots = f"tenant:{(app.get('spec') or {}).get('tenant') or ''}"

        def begin() -> tuple[tuple[bytes, str, str] | None, Outcome | reconcile.Parked]:
            # The webhook route's inputs are read in the same hop as the attempt (the secret comes
            # from a watched cache); the route table itself is the event loop's, so it is updated there.
            found = webhook_route(app, services)
            path = webhook.route_path(webhook.route_token(found[0], found[1])) if found else None
            started = reconcile.begin(
                app,
                services,
                trigger=trigger,
                force=force,
                fresher_than=fresher_than,
                park=True,
                status_extra={"webhookPath": path, **({HANDLED_REQUEST: requested} if requested else {})},
            )
            return found, started

        found, result = await self.pools.run(slots, begin)
        if key in self._slots:  # not deleted meanwhile: a forgotten app keeps no route
            if found is None:
                self.routes.forget(key)
            else:
                secret, repository, branch = found
                self.routes.register(key, secret=secret, repository=repository, branch=branch)
        while isinstance(result, reconcile.Parked):
            # No thread and no tenant slot is held while the workloads become healthy.
            assert isinstance(services.health, WatchedHealth)  # noqa: S101 - wired in startup
            seen = await services.health.wait_async(result.targets, seconds=result.timeout)
            # Finishing (a record, an Event, a status patch) takes no tenant slot: behind a tenant's
            # queue of new attempts it would wait for all of them, and 1000 apps' health, seen at
            # once, would be recorded a minute late. The reconcile pool still bounds it.
            result = await self.pools.run(None, functools.partial(reconcile.resume, result, seen))
        return result


def webhook_route(body: Mapping[str, Any], services: Services) -> tuple[bytes, str, str] | None:
    """The app's webhook route inputs (secret, repository, branch), or None if it has no usable one."""
    spec = body.get("spec") or {}
    secret_name = ((spec.get("webhook") or {}).get("secretRef") or {}).get("name")
    source = spec.get("source") or {}
    if not secret_name or not source.get("url") or not source.get("branch"):
        return None
    namespace = str(_metadata(body).get("namespace") or "")
    try:
        repository = urls.parse(str(source["url"])).identity
        secret = services.reader.secret_data(namespace, str(secret_name)).get("token")
    except (GitwardError, APIError):
        return None
    return (secret, repository, str(source["branch"])) if secret else None


def retry_delay(*, interval: float, retry_after: float | None, failures: int, jitter: float) -> float:
    """Seconds until the next attempt: :func:`next_delay`, with a retry's backoff jittered too.

    A poll is already spread over up to 10% past the interval. A retry is "equal jitter": between
    half and all of the backoff, so apps that failed together (an API server outage fails every app at
    once) do not all come back in the same second, and none later than its interval.
    """
    delay = next_delay(interval=interval, retry_after=retry_after, failures=failures, jitter=jitter)
    if retry_after is None:
        return delay
    return delay * (0.5 + 0.5 * jitter)


def unreachable(outcome: Outcome) -> bool:
    """Whether an attempt ended as the API server did not answer (a skip only echoes the stored Ready)."""
    return outcome.reason is Reason.API_UNAVAILABLE and outcome.action not in (Action.SKIP, Action.HOLD)


def unknown_since(
    conditions: Sequence[Mapping[str, Any]], since: str, *, generation: int | None, now: str
) -> list[dict[str, object]]:
    """The app's conditions with Ready ``Unknown``, ``APIUnavailable``: unknown since ``since``."""
    message = (
        f"the Kubernetes API server did not answer from {since}; the app's state is unknown "
        "until a reconcile completes"
    )
    ready = Condition(ConditionType.READY, Status.UNKNOWN, Reason.API_UNAVAILABLE, message, generation)
    return merge_conditions(conditions, [ready], now=now)


def restored_ready(
    conditions: Sequence[Mapping[str, Any]],
    marker: Mapping[str, Any],
    replaced: Mapping[str, Any],
    *,
    now: str,
) -> list[dict[str, object]] | None:
    """The conditions with ``replaced`` back as Ready, if Ready is still ``marker``; else None.

    After an outage Ready was set ``Unknown`` (``marker``) before the attempt. An attempt that
    decided nothing changed (skip, hold) writes no condition, so the Ready it found before the
    outage (``replaced``) stands again, with a new transition time if its status differs. An
    attempt that wrote its own Ready, or a ``replaced`` that was itself ``APIUnavailable`` (it says
    nothing more), leaves the conditions as they are.
    """
    ready = next((c for c in conditions if c.get("type") == ConditionType.READY), None)
    if ready is None or any(ready.get(key) != marker.get(key) for key in ("status", "reason", "message")):
        return None
    if replaced.get("reason") == Reason.API_UNAVAILABLE:
        return None
    try:
        condition = Condition(
            ConditionType.READY,
            Status(str(replaced.get("status"))),
            Reason(str(replaced.get("reason"))),
            str(replaced.get("message") or ""),
            _int_or_none(replaced.get("observedGeneration")),
        )
    except ValueError:  # a Ready someone else wrote: nothing gitward can stand behind
        return None
    return merge_conditions(conditions, [condition], now=now)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def ready_of(app: Mapping[str, Any]) -> dict[str, Any] | None:
    """The app's Ready condition, if it has one."""
    for condition in (app.get("status") or {}).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == ConditionType.READY:
            return dict(condition)
    return None


def observe(namespace: str, name: str, outcome: Outcome, seconds: float) -> None:
    """Count and time one attempt."""
    metrics.RECONCILE_SECONDS.labels(namespace, name).observe(seconds)
    metrics.RECONCILES.labels(str(outcome.action), str(outcome.reason)).inc()
    verifying = step_of(outcome.reason) is ConditionType.SOURCE_VERIFIED
    if outcome.action is not Action.SKIP and verifying and outcome.reason is not Reason.SUCCEEDED:
        metrics.VERIFICATION_FAILURES.labels(str(outcome.reason)).inc()
    if outcome.ready and outcome.action is Action.DEPLOY:
        metrics.LAST_APPLIED.labels(namespace, name).set_to_current_time()
