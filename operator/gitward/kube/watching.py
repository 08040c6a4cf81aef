"""Summaries of the objects of one kind in one namespace, kept current by a watch.

Health used to be polled: a GET per workload every second until it was
ready, which at a thousand apps was half the operator's busy time. Here
one watch per (kind, namespace) keeps a small summary of every object
(whatever ``summarize`` makes of a body; the body itself is not kept), and
listeners registered for a name are called on each change of it. Watches
start on the first subscription in their namespace and stop once nobody
has listened for :data:`IDLE_SECONDS`, so namespaces nobody deploys to
cost nothing. A watch that ends or fails forgets its summaries (callers
then see "unknown" and wait, or read directly), relists and resumes; it
is never fatal. A watch that failed retries with a jittered backoff of at
most :data:`RETRY_CAP` seconds (an API server that did not answer) or
:data:`REFUSED_CAP` (one that refused it), so after an outage every watch
is back within seconds, and a thousand of them not all in the same one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from gitward.kube.objects import APIError, Objects

T = TypeVar("T")
Key = tuple[str, str, str]  # apiVersion, kind, namespace
IDLE_SECONDS = 120.0
WATCH_SECONDS = 60
RETRY_CAP = 8.0  # seconds, at most, before a watch the API server did not answer is tried again
REFUSED_CAP = 30.0  # ... and one it refused (anything but no answer, 429 or 5xx)
_TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})
_GONE = 410
_LOG = logging.getLogger(__name__)


class _Watch(Generic[T]):
    def __init__(self, owner: ObjectWatches[T], key: Key) -> None:
        self.owner = owner
        self.key = key
        self.summaries: dict[str, T] = {}
        self.synced = False
        self.listeners: dict[str, set[Callable[[], None]]] = {}
        self.idle_since = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"gitward-watch-{key[1]}-{key[2]}", daemon=True)

    def _run(self) -> None:
        failures = 0
        api_version, kind, namespace = self.key
        objects, summarize, lock = self.owner.objects, self.owner.summarize, self.owner.lock
        while not self.owner.stopping.is_set():
            cap = RETRY_CAP
            try:
                items, version = objects.list_at(api_version, kind, namespace)
                with lock:
                    self.summaries = {
                        str(item["metadata"]["name"]): summarize(item)
                        for item in items
                        if item.get("metadata")
                    }
                    self.synced = True
                    everyone = [f for fs in self.listeners.values() for f in fs]
                for listener in everyone:
                    listener()
                failures = 0
                while not self.owner.stopping.is_set():
                    for event in objects.watch(
                        api_version, kind, namespace, resource_version=version, seconds=WATCH_SECONDS
                    ):
                        version = self._apply(event) or version
                    if self._idle():
                        return
            except APIError as error:  # also 410, a version too old: relisted within half a second
                failures += 1
                cap = RETRY_CAP if error.status in _TRANSIENT or error.status == _GONE else REFUSED_CAP
                _LOG.debug("watch of %s in %s ended: %s", kind, namespace, error)
            except Exception:  # noqa: BLE001 - a broken watch is restarted, never fatal
                failures += 1
                cap = REFUSED_CAP
                _LOG.exception("watch of %s in %s failed", kind, namespace)
            with lock:
                self.synced = False
                self.summaries = {}
            if self._idle():
                return
            self.owner.stopping.wait(retry_delay(failures, cap=cap, jitter=random.random()))  # noqa: S311

    def _apply(self, event: Mapping[str, Any]) -> str:
        body = event.get("object") or {}
        metadata = body.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or "")
        if event.get("type") == "BOOKMARK":
            return version
        name = str(metadata.get("name") or "")
        if not name:
            return version
        summary = None if event.get("type") == "DELETED" else self.owner.summarize(body)
        with self.owner.lock:
            if summary is None:
                self.summaries.pop(name, None)
            else:
                self.summaries[name] = summary
            listeners = list(self.listeners.get(name, ()))
        for listener in listeners:
            listener()
        return version

    def _idle(self) -> bool:
        """Whether nobody listened for a while; if so the watch is retired (under the lock)."""
        with self.owner.lock:
            if self.listeners or time.monotonic() - self.idle_since < IDLE_SECONDS:
                return False
            self.owner.watches.pop(self.key, None)
            return True


def retry_delay(failures: int, *, cap: float, jitter: float) -> float:
    """Seconds before a failed watch is listed again: 0.5, 1, 2, 4 ... up to ``cap``, jittered.

    ``failures`` counts the attempts that failed in a row; ``jitter`` is a number in [0, 1) from
    the caller: between half and all of the backoff is waited, so watches that failed together
    come back spread out.
    """
    if failures <= 0:
        return 0.0
    return min(cap, 0.5 * 2.0 ** (failures - 1)) * (0.5 + 0.5 * jitter)


class ObjectWatches(Generic[T]):
    """Watches per (kind, namespace), started on demand, each keeping ``summarize(body)`` per name."""

    def __init__(self, objects: Objects, summarize: Callable[[Mapping[str, Any]], T]) -> None:
        self.objects = objects
        self.summarize = summarize
        self.lock = threading.Lock()
        self.watches: dict[Key, _Watch[T]] = {}
        self.stopping = threading.Event()

    def subscribe(self, key: Key, name: str, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on every change of ``name`` (and on every relist); returns the unsubscribe."""
        with self.lock:
            watch = self.watches.get(key)
            start = watch is None
            if watch is None:
                watch = self.watches[key] = _Watch(self, key)
            watch.listeners.setdefault(name, set()).add(listener)
        if start:
            watch.thread.start()

        def unsubscribe() -> None:
            with self.lock:
                listeners = watch.listeners.get(name)
                if listeners is not None:
                    listeners.discard(listener)
                    if not listeners:
                        del watch.listeners[name]
                if not watch.listeners:
                    watch.idle_since = time.monotonic()

        return unsubscribe

    def summary(self, key: Key, name: str) -> tuple[bool, T | None]:
        """(whether the watch is synced, the summary of ``name`` or None if it does not exist)."""
        with self.lock:
            watch = self.watches.get(key)
            if watch is None or not watch.synced:
                return False, None
            return True, watch.summaries.get(name)

    def close(self) -> None:
        """Stop every watch (each ends within its timeout)."""
        self.stopping.set()
