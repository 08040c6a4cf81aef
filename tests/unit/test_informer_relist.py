"""The informer's recovery: after a watch too old to resume (410) or broken, a relist of the changes.

The relist announces only what changed and what went; a failing list is tried again.

The API server is a scripted stand-in here (the real one cannot be made to expire a watch on
demand); the integration test covers the informer against the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from gitward.kube import informer as informer_module
from gitward.kube.informer import Informer, Key
from gitward.kube.objects import APIError


def cm(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class Script:
    """Lists and watches answered in turn from a script; the last watch blocks until stopped."""

    def __init__(self, lists: list[list[dict[str, Any]] | Exception], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.listed = 0
        self.done = threading.Event()
        self.quiet = threading.Event()

    def list_at(self, *_: Any) -> tuple[list[dict[str, Any]], str]:
        answer = self.lists[min(self.listed, len(self.lists) - 1)]
        self.listed += 1
        if isinstance(answer, Exception):
            raise answer
        return [dict(item) for item in answer], str(100 + self.listed)

    def watch(self, *_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        if not self.watches:
            self.done.set()
            self.quiet.wait(30)  # a watch with nothing to say, until the test ends it
            return
        for step in self.watches.pop(0):
            if isinstance(step, Exception):
                raise step
            yield step


def announced(script: Script) -> list[tuple[Key, str | None]]:
    """Run an informer over the script until it watches quietly; what it announced (key, version)."""
    seen: list[tuple[Key, str | None]] = []
    informer = Informer(
        script,  # type: ignore[arg-type]
        "v1",
        "ConfigMap",
        lambda key, body: seen.append((key, body and body["metadata"]["resourceVersion"])),
    )
    informer.start()
    try:
        assert script.done.wait(10), "the informer did not get back to watching"
    finally:
        informer.stop()
        script.quiet.set()
    return seen


def test_a_watch_too_old_to_resume_is_followed_by_a_relist_of_only_the_changes(monkeypatch) -> None:
    monkeypatch.setattr(informer_module, "RETRY_CAP", 0.01)
    script = Script(
        lists=[
            [cm("kept", "1"), cm("changed", "1"), cm("deleted", "1")],
            [cm("kept", "1"), cm("changed", "2"), cm("added", "3")],
        ],
        watches=[
            [{"type": "MODIFIED", "object": cm("kept", "1")}, APIError(410, "too old resource version")]
        ],
    )
    seen = announced(script)
    first = [(("ns", "kept"), "1"), (("ns", "changed"), "1"), (("ns", "deleted"), "1")]
    watched = [(("ns", "kept"), "1")]  # the watch's event, as the server sent it
    relisted = [(("ns", "changed"), "2"), (("ns", "added"), "3"), (("ns", "deleted"), None)]
    assert seen == first + watched + relisted
    assert script.listed == 2


def test_a_list_that_fails_is_tried_again_and_a_broken_watch_lists_again(monkeypatch) -> None:
    monkeypatch.setattr(informer_module, "RETRY_CAP", 0.01)
    script = Script(
        lists=[APIError(0, "cannot reach the API server"), [cm("a", "1")], [cm("a", "2")]],
        watches=[[APIError(500, "etcd is unhappy")]],
    )
    seen = announced(script)
    assert seen == [(("ns", "a"), "1"), (("ns", "a"), "2")]
    assert script.listed == 3
