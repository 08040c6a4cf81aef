"""Waiting for health by watch: no sleeps, no GET per second per workload.

:class:`WatchedHealth` keeps, through :class:`~gitward.kube.watching.ObjectWatches`,
the generation and health of every workload in the namespaces being
deployed to, and wakes a waiter when one of its workloads changes. A
workload counts only once its controller has observed the generation the
apply produced, so a status from before the apply is never taken for the
new one. At the deadline, whatever is still not healthy is read once
directly, so a watch that fell behind can delay a verdict but never make
it wrong.

The operator waits with :meth:`WatchedHealth.wait_async` on its event loop,
so a thousand apps waiting for their Deployments hold no thread and no
tenant slot; :meth:`WatchedHealth.wait` blocks a thread, for the rarer
waits inside a reconcile (an automatic rollback).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.apply import health
from gitward.apply.run import observed
from gitward.errors import Waiting
from gitward.kube.objects import APIError, Objects
from gitward.kube.watching import Key, ObjectWatches

_UNSEEN = health.HealthStatus(health.Health.PROGRESSING, "not seen by the watch yet")
_NOT_YET = health.HealthStatus(health.Health.PROGRESSING, "the applied spec has not been seen yet")
Statuses = dict[ObjectRef, health.HealthStatus]


@dataclass(frozen=True, slots=True)
class Observed:
    """What the watch keeps of a workload: its generation and its health."""

    generation: int
    status: health.HealthStatus


def observe(body: Mapping[str, Any]) -> Observed:
    """The summary of one workload body."""
    return Observed(int((body.get("metadata") or {}).get("generation") or 0), health.assess(body))


def _key(ref: ObjectRef) -> Key:
    return (ref.api_version, ref.kind, ref.namespace)


class WatchedHealth:
    """A :class:`~gitward.apply.run.HealthWaiter` fed by watches."""

    def __init__(self, objects: Objects, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.objects = objects
        self.watches: ObjectWatches[Observed] = ObjectWatches(objects, observe)
        self._clock = clock

    def verdict(self, targets: Mapping[ObjectRef, int]) -> Statuses:
        """What the watches say now about each target."""
        statuses = {}
        for ref, generation in targets.items():
            synced, seen = self.watches.summary(_key(ref), ref.name)
            if not synced:
                statuses[ref] = _UNSEEN
            elif seen is None:
                statuses[ref] = health.HealthStatus(health.Health.MISSING, "not found")
            elif seen.generation < generation:
                statuses[ref] = _NOT_YET
            else:
                statuses[ref] = seen.status
        return statuses

    def _final(self, targets: Mapping[ObjectRef, int]) -> Statuses:
        """The verdict, with anything not healthy read once directly (a lagging watch is not trusted)."""
        statuses = self.verdict(targets)
        for ref, status in statuses.items():
            if status.health is not health.Health.HEALTHY:
                try:
                    statuses[ref] = observed(self.objects.get(ref), targets[ref])
                except APIError as error:
                    if error.status in (0, 429) or error.status >= 500:  # noqa: PLR2004 - HTTP classes
                        # No answer says nothing of the workload: not a HealthTimeout (and a rollback).
                        raise Waiting(
                            Reason.API_UNAVAILABLE,
                            f"reading {ref} for its health: {error.message}",
                            retry_after=15,
                        ) from None
                    statuses[ref] = health.HealthStatus(health.Health.MISSING, error.message)
        return statuses

    def _subscribe(
        self, targets: Mapping[ObjectRef, int], changed: Callable[[], None]
    ) -> list[Callable[[], None]]:
        return [self.watches.subscribe(_key(ref), ref.name, changed) for ref in targets]

    @staticmethod
    def _settled(statuses: Mapping[ObjectRef, health.HealthStatus]) -> bool:
        return health.HealthStatus.settled(statuses.values())

    def wait(self, targets: Mapping[ObjectRef, int], *, timeout: float) -> Statuses:
        """Block until every target is healthy, or until ``timeout`` (the HealthWaiter protocol)."""
        if not targets:
            return {}
        changed = threading.Event()
        unsubscribe = self._subscribe(targets, changed.set)
        deadline = self._clock() + timeout
        try:
            while not self._settled(self.verdict(targets)):
                left = deadline - self._clock()
                if left <= 0:
                    break
                changed.wait(left)
                changed.clear()
        finally:
            for stop in unsubscribe:
                stop()
        return self._final(targets)

    async def wait_async(self, targets: Mapping[ObjectRef, int], *, seconds: float) -> Statuses:
        """:meth:`wait` on the event loop: no thread is held while waiting."""
        if not targets:
            return {}
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def changed_soon() -> None:
            loop.call_soon_threadsafe(changed.set)

        unsubscribe = self._subscribe(targets, changed_soon)
        deadline = self._clock() + seconds
        try:
            while not self._settled(self.verdict(targets)):
                left = deadline - self._clock()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    break
                changed.clear()
        finally:
            for stop in unsubscribe:
                stop()
        statuses = self.verdict(targets)
        if self._settled(statuses):
            return statuses
        return await loop.run_in_executor(None, self._final, targets)

    def close(self) -> None:
        """Stop the watches."""
        self.watches.close()
