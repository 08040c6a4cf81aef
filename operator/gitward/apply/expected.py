"""What each app applied, as fingerprints, and the live fingerprints kept current by watches as the tenant.

The drift check runs every interval for every app, so it must cost close
to nothing: no git, no dry-run, no request. After an apply the operator
remembers, per app, the fingerprint of every object it applied
(:func:`gitward.apply.drift.fingerprint`: the fields gitward's field
manager owns and their values). One watch per (kind, namespace), made as
the namespace's tenant ServiceAccount (the tenant's own RBAC already lets
it list and watch what it deploys; the operator needs no cluster-wide
read), keeps the live fingerprint of every object. Checking an app is then
comparing digests in memory. A listener on each applied object reports a
change as it happens, so a hand edit can be corrected within seconds
rather than at the next interval.

What is remembered is lost with the process: after a restart the first
check of each app is a full one (a dry-run of the applied revision,
:mod:`gitward.reconcile.app`), which also catches what drifted while no
operator was running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gitward.api.refs import ObjectRef
from gitward.apply.drift import ABSENT, Fingerprint, fingerprint
from gitward.kube.objects import Objects
from gitward.kube.watching import ObjectWatches

AppKey = tuple[str, str, str]  # the app's namespace, name and uid


@dataclass(frozen=True, slots=True)
class Expected:
    """The revision an app last applied, and each object's fingerprint right after."""

    commit: str
    fingerprints: Mapping[ObjectRef, Fingerprint]


class Expectations:
    """Per app, what it applied; per namespace, watches of the live objects. Thread-safe."""

    def __init__(
        self,
        reader_for: Callable[[str], Objects],
        *,
        changed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._reader_for = reader_for  # the objects of a namespace, read as its tenant
        self._changed = changed  # called (app namespace, app name) when an applied object changes
        self._apps: dict[AppKey, Expected] = {}
        self._unsubscribe: dict[AppKey, list[Callable[[], None]]] = {}
        self._watches: dict[str, ObjectWatches[Fingerprint]] = {}
        self._lock = threading.Lock()

    def _watches_of(self, namespace: str) -> ObjectWatches[Fingerprint]:
        with self._lock:
            watches = self._watches.get(namespace)
            if watches is None:
                watches = self._watches[namespace] = ObjectWatches(self._reader_for(namespace), fingerprint)
            return watches

    def remember(self, app: AppKey, commit: str, fingerprints: Mapping[ObjectRef, Fingerprint]) -> None:
        """What ``app`` applied now; its objects are watched from here on."""
        subscriptions = []
        for ref, expected in fingerprints.items():
            watches = self._watches_of(ref.namespace)
            subscriptions.append(
                watches.subscribe(_key(ref), ref.name, self._listener(app, watches, ref, expected))
            )
        with self._lock:
            old = self._unsubscribe.pop(app, [])
            self._apps[app] = Expected(commit, dict(fingerprints))
            self._unsubscribe[app] = subscriptions
        for stop in old:
            stop()

    def _listener(
        self, app: AppKey, watches: ObjectWatches[Fingerprint], ref: ObjectRef, expected: Fingerprint
    ) -> Callable[[], None]:
        def changed() -> None:
            if self._changed is None:
                return
            synced, seen = watches.summary(_key(ref), ref.name)
            if synced and _differs(expected, seen):
                self._changed(app[0], app[1])

        return changed

    def forget(self, app: AppKey) -> None:
        """The app is gone (or its revision unknown): stop watching for it."""
        with self._lock:
            self._apps.pop(app, None)
            old = self._unsubscribe.pop(app, [])
        for stop in old:
            stop()

    def get(self, app: AppKey) -> Expected | None:
        """What the app applied, if this process applied it or checked it since it started."""
        with self._lock:
            return self._apps.get(app)

    def differing(self, app: AppKey) -> list[ObjectRef] | None:
        """The app's objects whose live fingerprint differs from the applied one.

        None when that cannot be told from the watches yet (nothing remembered, or a watch not
        synced): the caller then checks in full, or next time.
        """
        expected = self.get(app)
        if expected is None:
            return None
        differ = []
        for ref, fingerprint_then in expected.fingerprints.items():
            synced, seen = self._watches_of(ref.namespace).summary(_key(ref), ref.name)
            if not synced:
                return None
            if _differs(fingerprint_then, seen):
                differ.append(ref)
        return differ

    def close(self) -> None:
        """Stop every watch."""
        with self._lock:
            watches = list(self._watches.values())
        for each in watches:
            each.close()


def _key(ref: ObjectRef) -> tuple[str, str, str]:
    return (ref.api_version, ref.kind, ref.namespace)


def _differs(expected: Fingerprint, seen: Fingerprint | None) -> bool:
    if expected.disabled or (seen is not None and seen.disabled):
        return False  # gitward.dev/reconcile: disabled: the user's, whatever it is
    if expected is ABSENT:
        return seen is not None  # a deletion already reported: only its return is news
    return seen is None or seen.digest != expected.digest
