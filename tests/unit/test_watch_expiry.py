"""A watch whose resourceVersion expired (410 Gone) relists and resumes; what it summarizes is never stale.

The API server ends a watch with an ERROR event (410, "too old resource
version") when the version it resumes from has been compacted away;
``Objects.watch`` raises that as an ``APIError``. The watches behind health
and drift must then forget what they knew (callers see "unknown", not a
stale answer), list again and go on, calling their listeners with the new
state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from gitward.kube.objects import APIError
from gitward.kube.watching import ObjectWatches
from support.waiting import wait_until

KEY = ("v1", "ConfigMap", "ns")


class ExpiringObjects:
    """Lists and watches of one namespace: the first watch expires, the next blocks until stopped."""

    def __init__(self) -> None:
        self.lists = 0
        self.watched_from: list[str] = []
        self.value = "before"
        self.expire = threading.Event()
        self.stop = threading.Event()

    def list_at(self, *_: object) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        item = {"metadata": {"name": "cm", "resourceVersion": str(self.lists)}, "data": {"key": self.value}}
        return [item], str(self.lists)

    def watch(self, *_: object, resource_version: str, **__: object) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if len(self.watched_from) == 1:
            self.expire.wait(10)
            raise APIError(410, "too old resource version: 1 (5)")
        self.stop.wait(10)
        return iter(())


def test_an_expired_watch_relists_forgets_in_between_and_calls_listeners_with_the_new_state():
    objects = ExpiringObjects()
    watches: ObjectWatches[str] = ObjectWatches(objects, lambda body: body["data"]["key"])  # type: ignore[arg-type]
    seen: list[str] = []

    def listener() -> None:
        synced, summary = watches.summary(KEY, "cm")
        if synced and summary is not None:
            seen.append(summary)

    stop = watches.subscribe(KEY, "cm", listener)
    try:
        wait_until(lambda: seen == ["before"], timeout=10, what="the first list")
        objects.value = "after"  # changed while the watch is about to expire
        objects.expire.set()
        wait_until(lambda: seen == ["before", "after"], timeout=10, what="the relist after 410 Gone")
        assert objects.lists == 2
        assert objects.watched_from == ["1", "2"]  # resumed from the new list, not the expired version
        assert watches.summary(KEY, "cm") == (True, "after")
    finally:
        stop()
        watches.close()
        objects.stop.set()
