"""The informer against the real API server: what it announces, once, in order, and after a relist.

ConfigMaps stand in for GitOpsApps (the informer is the same for any kind); only the
test's own namespace is looked at. Every wait is for an announcement, with a deadline.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client

from gitward.kube.informer import Informer, Key
from gitward.kube.objects import Objects
from support.waiting import wait_until

pytestmark = pytest.mark.cluster


class Announcements:
    """What the informer announced for one namespace: (name, data or None), in order."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.seen: list[tuple[str, dict[str, str] | None]] = []
        self.lock = threading.Lock()

    def __call__(self, key: Key, body: dict[str, Any] | None) -> None:
        if key[0] != self.namespace or key[1] == "kube-root-ca.crt":  # the test's own objects only
            return
        with self.lock:
            self.seen.append((key[1], None if body is None else dict(body.get("data") or {})))

    def copy(self) -> list[tuple[str, dict[str, str] | None]]:
        with self.lock:
            return list(self.seen)


def make(admin: client.ApiClient, namespace: str, name: str, value: str) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"v": value})
    client.CoreV1Api(admin).create_namespaced_config_map(namespace, body)


def test_existing_objects_then_each_change_are_announced_once_in_order(admin, kube_api, namespace):
    make(admin, namespace, "before", "1")
    seen = Announcements(namespace)
    informer = Informer(Objects(kube_api), "v1", "ConfigMap", seen)
    informer.start()
    try:
        assert informer.synced.wait(30), "the first list was not announced"
        assert ("before", {"v": "1"}) in seen.copy()
        core = client.CoreV1Api(admin)
        make(admin, namespace, "after", "1")
        core.patch_namespaced_config_map("after", namespace, {"data": {"v": "2"}})
        core.delete_namespaced_config_map("after", namespace)
        wait_until(lambda: ("after", None) in seen.copy(), timeout=30, what="the deletion's announcement")
        after = [entry for entry in seen.copy() if entry[0] == "after"]
        assert after == [("after", {"v": "1"}), ("after", {"v": "2"}), ("after", None)]
        assert [entry for entry in seen.copy() if entry[0] == "before"] == [("before", {"v": "1"})]
    finally:
        informer.stop()


def test_a_relist_announces_only_what_changed_and_what_went_while_it_was_not_watching(
    admin, kube_api, namespace
):
    for name in ("kept", "changed", "deleted"):
        make(admin, namespace, name, "1")
    seen = Announcements(namespace)
    informer = Informer(Objects(kube_api), "v1", "ConfigMap", seen)  # never started: lists by hand
    informer.relist()
    assert sorted(seen.copy()) == [("changed", {"v": "1"}), ("deleted", {"v": "1"}), ("kept", {"v": "1"})]
    core = client.CoreV1Api(admin)
    core.patch_namespaced_config_map("changed", namespace, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("deleted", namespace)
    before = len(seen.copy())
    informer.relist()
    assert sorted(seen.copy()[before:], key=str) == sorted(
        [("changed", {"v": "2"}), ("deleted", None)], key=str
    )
