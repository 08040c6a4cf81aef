"""The per-poll reads (tenant, trusted-key ConfigMaps, git Secrets), cached and kept fresh by watches.

Every reconcile needs the app's tenant, the tenant's key ConfigMaps and
the app's git Secret. Read from the API on every poll, that is three GETs
per app per interval for data that almost never changes. Here each is read
once and then served from memory for as long as a watch on it is live:

- ConfigMaps and Secrets: one watch per namespace read from (the
  operator's namespace for keys; each app namespace for Secrets), started
  on the first read there. Every event drops that object from the cache,
  so the next read fetches it again. Nothing is cached in a namespace
  whose watch is not live, and when a watch ends (expired, disconnected)
  everything cached from that namespace is dropped before it restarts, so
  a change can never be missed, only re-read.
- Tenants: kopf already watches GitOpsTenants; the operator calls
  :meth:`CachedReader.tenant_changed` from that handler. Until the first
  event arrives tenants are not cached.

Cached Secret data stays in this process's memory, where the uncached
reader held it for a reconcile anyway; it is never logged.

A watch that fails is started again after a jittered backoff: at most
:data:`RETRY_CAP` seconds when the API server did not answer (or answered
429 or 5xx), so after an outage reads are cached again within seconds;
up to :data:`REFUSED_CAP` when it refused the watch (no permission there:
reads stay uncached, never wrong). Every request has a client-side
timeout, so a connection the API server left hanging cannot keep a watch
"live" on events that no longer come.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from urllib3.exceptions import HTTPError

from gitward.kube.http import Connection
from gitward.kube.objects import APIError, fetch, path_segment, stream_events
from gitward.kube.reads import KubeReader

_LOG = logging.getLogger(__name__)
_WATCH_SECONDS = 300
_CONNECT_SECONDS = 10
RETRY_CAP = 8.0  # seconds, at most, before a watch the API server did not answer is started again
REFUSED_CAP = float(_WATCH_SECONDS)  # ... and one it refused
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


class _NamespaceWatch:
    """One watch on a kind (``configmaps``, ``secrets``) in a namespace; ``live`` while events are flowing."""

    def __init__(
        self, api: Connection, namespace: str, plural: str, on_event: Callable[[str, str], None]
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.plural = plural
        self.on_event = on_event
        self.live = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"gitward-watch-{namespace}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop after the next event, or when the server ends the watch (as the old client's Watch did)."""
        self.stopping.set()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            cap = RETRY_CAP
            try:
                for _ in self._events():
                    failures = 0
                    if self.stopping.is_set():
                        break
                else:
                    failures = 0  # the server ended the watch at its timeout: it was established
            except Exception as error:  # noqa: BLE001 - a broken watch is restarted, never fatal
                failures += 1
                cap = RETRY_CAP if _transient(error) else REFUSED_CAP
                _LOG.debug("watch in %s ended: %s", self.namespace, type(error).__name__)
            self.live.clear()
            self.on_event(self.namespace, "")  # drop everything from this namespace before trusting it again
            # A watch that is refused (no permission there) backs off: reads stay uncached, never wrong.
            self.stopping.wait(retry_delay(failures, cap=cap, jitter=random.random()))  # noqa: S311

    def _events(self) -> Iterator[None]:
        path = f"/api/v1/namespaces/{path_segment(self.namespace, 'namespace')}/{self.plural}"
        listing = fetch(self.api, "GET", path, query=[("limit", "1")], timeout=(_CONNECT_SECONDS, 60))
        version = str((listing.json_object().get("metadata") or {}).get("resourceVersion") or "")
        stream = stream_events(
            self.api,
            path,
            query=[
                ("watch", "true"),
                ("resourceVersion", version),
                ("timeoutSeconds", str(_WATCH_SECONDS)),
                ("allowWatchBookmarks", "true"),
            ],
            # The server ends the watch after _WATCH_SECONDS; a connection it left hanging is given up
            # soon after, rather than kept "live" for ever on events that no longer come.
            timeout=(_CONNECT_SECONDS, _WATCH_SECONDS + 30),
        )
        self.live.set()
        for event in stream:
            obj = event.get("object") or {}
            name = str((obj.get("metadata") or {}).get("name") or "") if isinstance(obj, dict) else ""
            if event.get("type") != "BOOKMARK" and name:
                self.on_event(self.namespace, name)
            yield None


def _transient(error: Exception) -> bool:
    """No answer from the API server (a transport error), or one that says to come back: 429, 5xx."""
    if isinstance(error, APIError):
        return not error.status or error.status in _TRANSIENT
    return isinstance(error, HTTPError | OSError)


def retry_delay(failures: int, *, cap: float, jitter: float) -> float:
    """Seconds before a watch starts again: 1 s after it ended, doubled per failure in a row, up to ``cap``.

    Jittered (between half and all of it, from ``jitter`` in [0, 1)), so the watches of every
    namespace, broken by one outage, do not all come back in the same second.
    """
    return min(cap, 2.0 ** min(failures, 16)) * (0.5 + 0.5 * jitter)


class CachedReader(KubeReader):
    """A :class:`KubeReader` whose reads are served from memory while a watch keeps them fresh."""

    def __init__(self, api: Connection, *, operator_namespace: str) -> None:
        super().__init__(api, operator_namespace=operator_namespace)
        self._lock = threading.Lock()
        self._tenants: dict[str, Mapping[str, Any]] = {}
        self._tenants_watched = False
        self._config_maps: dict[tuple[str, str], Mapping[str, str]] = {}
        self._secrets: dict[tuple[str, str], Mapping[str, bytes]] = {}
        self._watches: dict[tuple[str, str], _NamespaceWatch] = {}
        self.reads = 0  # reads that went to the API server (for tests and metrics)

    # Tenants: invalidated by the operator's kopf handler on GitOpsTenant events
    def tenant_changed(self, name: str) -> None:
        """A GitOpsTenant changed (or the watch on them restarted): read it again next time."""
        with self._lock:
            self._tenants_watched = True
            self._tenants.pop(name, None)

    def tenant(self, name: str) -> Mapping[str, Any]:
        """The tenant, from memory once the tenant watch has spoken."""
        with self._lock:
            cached = self._tenants.get(name)
            watched = self._tenants_watched
        if cached is not None:
            return cached
        body = super().tenant(name)
        self.reads += 1
        if watched:
            with self._lock:
                self._tenants[name] = body
        return body

    def key_config_map(self, name: str) -> Mapping[str, str]:
        """A trusted-key ConfigMap's data, from memory while the watch on the operator's namespace is live."""
        key = (self.operator_namespace, name)
        live = self._watch("configmaps", self.operator_namespace)
        with self._lock:
            cached = self._config_maps.get(key)
        if cached is not None and live.live.is_set():
            return cached
        data = super().key_config_map(name)
        self.reads += 1
        if live.live.is_set():
            with self._lock:
                self._config_maps[key] = data
        return data

    def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:
        """A Secret's data, from memory while the watch on its namespace is live."""
        key = (namespace, name)
        live = self._watch("secrets", namespace)
        with self._lock:
            cached = self._secrets.get(key)
        if cached is not None and live.live.is_set():
            return cached
        data = super().secret_data(namespace, name)
        self.reads += 1
        if live.live.is_set():
            with self._lock:
                self._secrets[key] = data
        return data

    def _watch(self, kind: str, namespace: str) -> _NamespaceWatch:
        with self._lock:
            found = self._watches.get((kind, namespace))
            if found is not None:
                return found
            on_event = self._config_map_event if kind == "configmaps" else self._secret_event
            started = _NamespaceWatch(self.api, namespace, kind, on_event)
            self._watches[(kind, namespace)] = started
        started.start()
        started.live.wait(timeout=2.0)  # the first read in a namespace may wait for its watch, briefly
        return started

    def _config_map_event(self, namespace: str, name: str) -> None:
        with self._lock:
            _drop(self._config_maps, namespace, name)

    def _secret_event(self, namespace: str, name: str) -> None:
        with self._lock:
            _drop(self._secrets, namespace, name)

    def close(self) -> None:
        """Stop every watch."""
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for started in watches:
            started.stop()


def _drop(cache: dict[tuple[str, str], Any], namespace: str, name: str) -> None:
    """Drop one object, or (with an empty name) everything from the namespace."""
    for key in [k for k in cache if k[0] == namespace and (not name or k[1] == name)]:
        del cache[key]
