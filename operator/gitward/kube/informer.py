"""Every object of one kind, cluster-wide, announced as it changes: one list, then one watch.

The operator used to give each GitOpsApp a kopf daemon, and kopf kept each
app's whole body (half of it ``managedFields``) beside a worker, a task and a
queue per object: about 140 KiB per app, most of the operator's memory at a
thousand apps. Here one thread lists the kind, then watches it from the
list's resourceVersion, and hands each new version of an object to
``on_change`` (``None`` once it is deleted). It keeps only each object's
resourceVersion, to tell after a relist what changed and what went while it
was not watching; the caller keeps what it needs of the bodies.

A watch the server ends (its timeout, or 410 Gone: the version is too old) is
followed by a relist: objects whose version is unchanged are not announced
again, and objects missing from it are announced deleted. A watch that fails
is started again after a jittered backoff, at most :data:`RETRY_CAP` seconds,
so after an API server outage it is back within seconds. Nothing here is
fatal: the thread runs until :meth:`Informer.stop`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

from gitward.kube.objects import APIError, Objects

Key = tuple[str, str]  # namespace ("" for cluster-scoped), name
RETRY_CAP = 8.0
WATCH_SECONDS = 300
_GONE = 410
_LOG = logging.getLogger(__name__)


def key_of(body: Mapping[str, Any]) -> Key:
    """The object's (namespace, name)."""
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """List and watch ``kind`` of ``api_version`` everywhere; call ``on_change(key, body | None)`` per change.

    ``on_change`` runs on the informer's thread, one call at a time, in the order the API
    server sent the changes. ``synced`` is set once the first list has been announced.
    """

    def __init__(
        self,
        objects: Objects,
        api_version: str,
        kind: str,
        on_change: Callable[[Key, dict[str, Any] | None], None],
    ) -> None:
        self.objects = objects
        self.api_version = api_version
        self.kind = kind
        self.on_change = on_change
        self.synced = threading.Event()
        self._versions: dict[Key, str] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gitward-informer-{kind}", daemon=True)

    def start(self) -> None:
        """Start listing and watching in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop announcing; the thread ends when its watch does (at most its client timeout)."""
        self._stopping.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                version = self.relist()
                failures = 0
                while not self._stopping.is_set():
                    version = self._watch(version)
            except _Relist:
                continue
            except Exception as error:  # noqa: BLE001 - a broken watch is listed again, never fatal
                failures += 1
                _LOG.warning("watching %s failed (%s); listing again", self.kind, _describe(error))
            delay = min(RETRY_CAP, 2.0 ** min(failures, 8)) * (0.5 + 0.5 * random.random())  # noqa: S311
            self._stopping.wait(delay)

    def relist(self) -> str:
        """List everything; announce what changed since the last list or watch, and what is gone.

        Returns the list's resourceVersion, to watch from.
        """
        items, version = self.objects.list_at(self.api_version, self.kind, None)
        seen: dict[Key, str] = {}
        for item in items:
            key = key_of(item)
            seen[key] = _version(item)
            if self._versions.get(key) != seen[key]:
                self._announce(key, item)
        for key in [key for key in self._versions if key not in seen]:
            self._announce(key, None)
        self.synced.set()
        return version

    def _watch(self, version: str) -> str:
        """One watch from ``version`` until the server ends it; the version to resume from."""
        try:
            for event in self.objects.watch(
                self.api_version, self.kind, None, resource_version=version, seconds=WATCH_SECONDS
            ):
                if self._stopping.is_set():
                    return version
                body = event.get("object") or {}
                kind = event.get("type")
                if kind == "BOOKMARK":
                    version = _version(body) or version
                    continue
                if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(body, dict):
                    continue
                version = _version(body) or version
                self._announce(key_of(body), None if kind == "DELETED" else body)
        except APIError as error:
            if error.status == _GONE:  # too old to resume from: list again, announcing only changes
                raise _Relist from None
            raise
        return version

    def _announce(self, key: Key, body: dict[str, Any] | None) -> None:
        if body is None:
            if self._versions.pop(key, None) is None:
                return
        else:
            self._versions[key] = _version(body)
        try:
            self.on_change(key, body)
        except Exception:  # noqa: BLE001 - a consumer's bug must not end the watch of every app
            _LOG.exception("handling a change of %s %s/%s failed", self.kind, *key)


class _Relist(Exception):  # noqa: N818 - control flow, not an error
    """The watch cannot resume: list again."""


def _describe(error: Exception) -> str:
    if isinstance(error, APIError):
        return f"HTTP {error.status}: {error.message}" if error.status else error.message
    return type(error).__name__
